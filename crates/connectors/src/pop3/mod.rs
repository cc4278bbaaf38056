//! POP3: a small client of our own on tokio ([`Client`]) and the connectivity probe
//! ([`probe`]). No maintained crate speaks POP3 over tokio + rustls; the protocol is small,
//! and owning it gives exact classification of RESP-CODES (RFC 2449/3206).
//!
//! The client never deletes by itself: only [`Client::dele`] marks a message, and the server
//! removes marked messages only at [`Client::quit`] (RFC 1939 UPDATE state).

pub mod parse;

use serversync_model::Timestamp;
use serversync_model::profile::TlsMode;
use serversync_model::{ErrorKind, FailureStep, Secret};

use crate::error::{ConnectError, Result};
use crate::imap::parse::shorten;
use crate::login::{Login, decode_challenge, sasl_plain, sasl_xoauth2};
use crate::net::{ConnectOptions, ServerAddr, Wire, establish};
use crate::probe::{ProbeReport, StepLog};

use parse::{
    AuthLine, MultilineDecoder, MultilineError, Phase, Pop3Status, classify, parse_auth_line,
    parse_scan_line, parse_stat, parse_status, parse_uidl_line,
};

/// Longest status line accepted (RFC 2449 allows 512 octets; be lenient).
const MAX_STATUS_LINE: usize = 8 * 1024;
/// Default bound on one RETR/TOP body.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// The maildrop's message count and total size (STAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub count: u32,
    pub size: u64,
}

/// One line of LIST: message number and size in octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanListing {
    pub number: u32,
    pub size: u64,
}

/// One line of UIDL: message number and its unique id (stable across sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidListing {
    pub number: u32,
    pub uid: String,
}

/// A POP3 connection.
#[derive(Debug)]
pub struct Client {
    wire: Wire,
    greeting: String,
    /// `None` when the server does not support CAPA.
    capabilities: Option<Vec<String>>,
    max_message_size: usize,
}

impl Client {
    /// Connects: DNS → TCP → TLS (implicit) → greeting → CAPA → STLS + CAPA (when
    /// `addr.tls` is [`TlsMode::StartTls`]).
    pub async fn connect(addr: &ServerAddr, opts: &ConnectOptions) -> Result<Client> {
        Self::connect_logged(addr, opts, &mut StepLog::new()).await
    }

    /// [`connect`](Self::connect), recording each step in `log`.
    pub async fn connect_logged(
        addr: &ServerAddr,
        opts: &ConnectOptions,
        log: &mut StepLog,
    ) -> Result<Client> {
        let mut wire = establish(addr, opts, log).await?;
        let greeting = log
            .run(
                FailureStep::Protocol,
                "greeting",
                read_greeting(&mut wire),
                |_| "greeting received".to_string(),
            )
            .await?;
        let mut capabilities = log
            .run(FailureStep::Protocol, "CAPA", capa(&mut wire), capa_detail)
            .await?;
        if addr.tls == TlsMode::StartTls {
            wire = log
                .run(
                    FailureStep::Tls,
                    "STLS",
                    stls(wire, capabilities.as_deref(), addr, opts),
                    |w| w.tls_summary().unwrap_or_default(),
                )
                .await?;
            log.presented(wire.certificate(), &addr.pinned);
            // Capabilities announced before TLS must not be trusted (RFC 2595 §4).
            capabilities = log
                .run(
                    FailureStep::Protocol,
                    "CAPA (after STLS)",
                    capa(&mut wire),
                    capa_detail,
                )
                .await?;
        }
        Ok(Client {
            wire,
            greeting: greeting.display(),
            capabilities,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        })
    }

    /// The greeting, e.g. `+OK Dovecot ready.`.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    pub fn is_tls(&self) -> bool {
        self.wire.is_tls()
    }

    /// CAPA lines as last announced; empty when the server does not support CAPA.
    pub fn capabilities(&self) -> &[String] {
        self.capabilities.as_deref().unwrap_or(&[])
    }

    /// Whether a capability's keyword was announced (`UIDL`, `TOP`, `STLS`, `SASL`…).
    pub fn has_capability(&self, keyword: &str) -> bool {
        self.capabilities().iter().any(|c| {
            c.split_ascii_whitespace()
                .next()
                .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
        })
    }

    /// The SASL mechanisms of the `SASL` capability.
    pub fn sasl_mechanisms(&self) -> Vec<String> {
        self.capabilities()
            .iter()
            .filter_map(|c| {
                let mut words = c.split_ascii_whitespace();
                words
                    .next()
                    .filter(|k| k.eq_ignore_ascii_case("SASL"))
                    .map(|_| words.map(str::to_ascii_uppercase).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    }

    /// Bounds the size of one RETR/TOP body (default [`DEFAULT_MAX_MESSAGE_SIZE`]).
    pub fn set_max_message_size(&mut self, bytes: usize) {
        self.max_message_size = bytes;
    }

    /// `CAPA`; `None` when the server answers `-ERR` (it predates RFC 2449).
    pub async fn capa(&mut self) -> Result<Option<Vec<String>>> {
        let caps = capa(&mut self.wire).await?;
        self.capabilities = caps.clone();
        Ok(caps)
    }

    /// What [`login`](Self::login) will use: `AUTH PLAIN` when the server lists it under
    /// SASL, else `USER/PASS`; `AUTH XOAUTH2` for a token.
    pub fn login_method(&self, login: &Login) -> &'static str {
        match login {
            Login::XOAuth2 { .. } => "AUTH XOAUTH2",
            Login::Password { .. } if self.sasl_mechanisms().iter().any(|m| m == "PLAIN") => {
                "AUTH PLAIN"
            }
            Login::Password { .. } => "USER/PASS",
        }
    }

    /// Authenticates with the method [`login_method`](Self::login_method) names.
    pub async fn login(&mut self, login: &Login) -> Result<()> {
        match (login, self.login_method(login)) {
            (Login::Password { username, password }, "AUTH PLAIN") => {
                self.auth_plain(username, password).await
            }
            (Login::Password { username, password }, _) => self.user_pass(username, password).await,
            (
                Login::XOAuth2 {
                    username,
                    access_token,
                },
                _,
            ) => self.auth_xoauth2(username, access_token).await,
        }
    }

    /// `USER` / `PASS` (RFC 1939).
    pub async fn user_pass(&mut self, username: &str, password: &Secret) -> Result<()> {
        let login = Login::password(username, password.clone());
        self.check_plaintext_allowed()?;
        check_arg(username, "user name")?;
        check_arg(password.expose(), "password")?;
        let what = format!("USER {username}");
        let st = self
            .command(
                FailureStep::Authentication,
                &what,
                format!("USER {username}").as_bytes(),
            )
            .await?;
        if !st.ok {
            return Err(refusal(Phase::Login, &what, &st, Some(&login)));
        }
        let mut line = b"PASS ".to_vec();
        line.extend_from_slice(password.expose().as_bytes());
        let st = self
            .command(FailureStep::Authentication, "PASS", &line)
            .await
            .map_err(|e| redact_err(e, &login))?;
        if !st.ok {
            return Err(refusal(
                Phase::Login,
                &format!("PASS for {username}"),
                &st,
                Some(&login),
            ));
        }
        Ok(())
    }

    /// `AUTH PLAIN` with an initial response (RFC 5034).
    pub async fn auth_plain(&mut self, username: &str, password: &Secret) -> Result<()> {
        let login = Login::password(username, password.clone());
        self.check_plaintext_allowed()?;
        self.auth("PLAIN", &sasl_plain(username, password.expose()), &login)
            .await
    }

    /// `AUTH XOAUTH2` with an OAuth 2.0 access token.
    pub async fn auth_xoauth2(&mut self, username: &str, token: &Secret) -> Result<()> {
        let login = Login::xoauth2(username, token.clone());
        if !self.sasl_mechanisms().iter().any(|m| m == "XOAUTH2") {
            return Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                "the server does not offer XOAUTH2 (not in its SASL capability): use password \
                 authentication or check the server",
            ));
        }
        self.auth("XOAUTH2", &sasl_xoauth2(username, token.expose()), &login)
            .await
    }

    /// Refuses to send a password in the clear when the server (with CAPA) offers no
    /// login at all: that usually means it wants TLS first.
    fn check_plaintext_allowed(&self) -> Result<()> {
        if self.wire.is_tls()
            || self.capabilities.is_none()
            || self.has_capability("USER")
            || !self.sasl_mechanisms().is_empty()
        {
            return Ok(());
        }
        Err(ConnectError::new(
            FailureStep::Tls,
            ErrorKind::Config,
            "the server offers no login without TLS: use implicit TLS (POP3S) or STLS",
        ))
    }

    async fn auth(&mut self, mechanism: &str, initial: &str, login: &Login) -> Result<()> {
        let step = FailureStep::Authentication;
        let what = format!("AUTH {mechanism}");
        let line = format!("AUTH {mechanism} {initial}");
        self.wire.send_line(step, &what, line.as_bytes()).await?;
        let mut server_said = None;
        loop {
            let line = self
                .wire
                .read_line(step, &what, MAX_STATUS_LINE)
                .await
                .map_err(|e| redact_err(e, login))?;
            match parse_auth_line(&line) {
                Ok(AuthLine::Continuation(text)) => {
                    if server_said.is_some() {
                        return Err(ConnectError::protocol(format!(
                            "the server keeps asking during {what}: check the server"
                        )));
                    }
                    // A challenge after the initial response: the error report of a failed
                    // XOAUTH2 (JSON); acknowledge it to get the final -ERR.
                    server_said = Some(login.redact(&decode_challenge(&text)));
                    self.wire.send_line(step, &what, b"").await?;
                }
                Ok(AuthLine::Status(st)) if st.ok => return Ok(()),
                Ok(AuthLine::Status(mut st)) => {
                    if let Some(said) = server_said {
                        st.text = format!("{} ({said})", st.text);
                    }
                    return Err(refusal(
                        Phase::Login,
                        &format!("{what} as {}", login.username()),
                        &st,
                        Some(login),
                    ));
                }
                Err(why) => return Err(garbled(&what, &why, Some(login))),
            }
        }
    }

    /// `STAT`: message count and total size. A refusal is a Permission failure (the
    /// maildrop cannot be read).
    pub async fn stat(&mut self) -> Result<Stat> {
        let st = self
            .command(FailureStep::Permission, "STAT", b"STAT")
            .await?;
        if !st.ok {
            return Err(refusal(Phase::Stat, "STAT", &st, None));
        }
        let (count, size) = parse_stat(&st.text).ok_or_else(|| {
            garbled(
                "STAT",
                &format!("\"{}\" is not \"count size\"", st.text),
                None,
            )
        })?;
        Ok(Stat { count, size })
    }

    /// `LIST`: every message's number and size.
    pub async fn list(&mut self) -> Result<Vec<ScanListing>> {
        let body = self.listing("LIST").await?;
        lines(&body)
            .map(|l| {
                parse_scan_line(l)
                    .map(|(number, size)| ScanListing { number, size })
                    .ok_or_else(|| garbled("LIST", &bad_line(l), None))
            })
            .collect()
    }

    /// `UIDL`: every message's number and unique id.
    pub async fn uidl(&mut self) -> Result<Vec<UidListing>> {
        let body = self.listing("UIDL").await?;
        lines(&body)
            .map(|l| {
                parse_uidl_line(l)
                    .map(|(number, uid)| UidListing { number, uid })
                    .ok_or_else(|| garbled("UIDL", &bad_line(l), None))
            })
            .collect()
    }

    /// `UIDL n`: one message's unique id.
    pub async fn uidl_one(&mut self, number: u32) -> Result<String> {
        let what = format!("UIDL {number}");
        let st = self.checked(&what).await?;
        parse_uidl_line(st.text.as_bytes())
            .map(|(_, uid)| uid)
            .ok_or_else(|| garbled(&what, &bad_line(st.text.as_bytes()), None))
    }

    /// `RETR n`: the whole message, dot-unstuffed, lines ending in CR LF.
    pub async fn retr(&mut self, number: u32) -> Result<Vec<u8>> {
        let what = format!("RETR {number}");
        self.checked(&what).await?;
        let max = self.max_message_size;
        self.read_multiline(FailureStep::Protocol, &what, max).await
    }

    /// `TOP n lines`: the headers and the first `lines` lines of the body.
    pub async fn top(&mut self, number: u32, lines: u32) -> Result<Vec<u8>> {
        let what = format!("TOP {number} {lines}");
        self.checked(&what).await?;
        let max = self.max_message_size;
        self.read_multiline(FailureStep::Protocol, &what, max).await
    }

    /// `DELE n`: marks a message for deletion at QUIT.
    pub async fn dele(&mut self, number: u32) -> Result<()> {
        self.checked(&format!("DELE {number}")).await.map(drop)
    }

    /// `RSET`: unmarks every message marked for deletion.
    pub async fn rset(&mut self) -> Result<()> {
        self.checked("RSET").await.map(drop)
    }

    /// `NOOP`.
    pub async fn noop(&mut self) -> Result<()> {
        self.checked("NOOP").await.map(drop)
    }

    /// `QUIT`: the server now removes messages marked with DELE, and closes.
    pub async fn quit(mut self) -> Result<()> {
        let st = self.command(FailureStep::Protocol, "QUIT", b"QUIT").await?;
        if !st.ok {
            // -ERR to QUIT: some marked messages could not be removed (RFC 1939 §6).
            return Err(refusal(Phase::Command, "QUIT", &st, None));
        }
        self.wire.shutdown().await;
        Ok(())
    }

    async fn listing(&mut self, command: &str) -> Result<Vec<u8>> {
        self.checked(command).await?;
        let max = self.max_message_size;
        self.read_multiline(FailureStep::Protocol, command, max)
            .await
    }

    /// Sends a command (no secret in it) and requires `+OK`.
    async fn checked(&mut self, command: &str) -> Result<Pop3Status> {
        let st = self
            .command(FailureStep::Protocol, command, command.as_bytes())
            .await?;
        if !st.ok {
            return Err(refusal(Phase::Command, command, &st, None));
        }
        Ok(st)
    }

    async fn command(&mut self, step: FailureStep, what: &str, line: &[u8]) -> Result<Pop3Status> {
        command(&mut self.wire, step, what, line).await
    }

    async fn read_multiline(
        &mut self,
        step: FailureStep,
        what: &str,
        max: usize,
    ) -> Result<Vec<u8>> {
        read_multiline(&mut self.wire, step, what, max).await
    }
}

async fn read_greeting(wire: &mut Wire) -> Result<Pop3Status> {
    let line = wire
        .read_line(FailureStep::Protocol, "the POP3 greeting", MAX_STATUS_LINE)
        .await?;
    // The greeting's words stay in the debug log (see imap::read_greeting).
    tracing::debug!(greeting = %shorten(&String::from_utf8_lossy(&line), 200), "POP3 greeting");
    match parse_status(&line) {
        Ok(st) if st.ok => Ok(st),
        Ok(st) => {
            let mut e = refusal(Phase::Greeting, "the connection", &st, None);
            e.message = "the server refused the connection in its greeting (-ERR): it may be \
                         busy or refusing connections from this host; try again later"
                .into();
            Err(e)
        }
        Err(_) => Err(ConnectError::protocol(
            "this port does not speak POP3 (the greeting is not a POP3 greeting): check the \
             port and protocol",
        )),
    }
}

async fn capa(wire: &mut Wire) -> Result<Option<Vec<String>>> {
    let st = command(wire, FailureStep::Protocol, "CAPA", b"CAPA").await?;
    if !st.ok {
        return Ok(None);
    }
    let body = read_multiline(wire, FailureStep::Protocol, "CAPA", 64 * 1024).await?;
    Ok(Some(
        String::from_utf8_lossy(&body)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    ))
}

/// Sends a line, reads the status line.
async fn command(
    wire: &mut Wire,
    step: FailureStep,
    what: &str,
    line: &[u8],
) -> Result<Pop3Status> {
    wire.send_line(step, what, line).await?;
    let answer = wire.read_line(step, what, MAX_STATUS_LINE).await?;
    parse_status(&answer).map_err(|why| garbled(what, &why, None))
}

async fn read_multiline(
    wire: &mut Wire,
    step: FailureStep,
    what: &str,
    max: usize,
) -> Result<Vec<u8>> {
    let mut decoder = MultilineDecoder::new(max);
    loop {
        // A single line may be as long as the whole limit (some messages have very long
        // lines); the decoder bounds the total.
        let line = wire.read_line(step, what, max.saturating_add(2)).await?;
        match decoder.push_line(&line) {
            Ok(true) => break,
            Ok(false) => {}
            Err(MultilineError::TooLarge(limit)) => {
                return Err(ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Permanent,
                    format!(
                        "the answer to {what} is larger than the limit of {limit} bytes: raise \
                         the maximum message size or skip this message"
                    ),
                ));
            }
            Err(MultilineError::Unterminated) => {}
        }
    }
    decoder
        .finish()
        .map_err(|_| ConnectError::protocol(format!("unterminated answer to {what}")))
}

async fn stls(
    mut wire: Wire,
    capabilities: Option<&[String]>,
    addr: &ServerAddr,
    opts: &ConnectOptions,
) -> Result<Wire> {
    if let Some(caps) = capabilities
        && !caps.iter().any(|c| c.eq_ignore_ascii_case("STLS"))
    {
        return Err(ConnectError::new(
            FailureStep::Tls,
            ErrorKind::Config,
            format!(
                "the server does not offer STLS on port {}: use implicit TLS (POP3S, usually \
                 port 995) or enable STLS on the server",
                addr.port
            ),
        ));
    }
    wire.send_line(FailureStep::Tls, "STLS", b"STLS").await?;
    let line = wire
        .read_line(FailureStep::Tls, "STLS", MAX_STATUS_LINE)
        .await?;
    let st = parse_status(&line).map_err(|why| garbled("STLS", &why, None))?;
    if !st.ok {
        return Err(refusal(Phase::Stls, "STLS", &st, None));
    }
    wire.start_tls(addr, opts).await
}

fn capa_detail(caps: &Option<Vec<String>>) -> String {
    match caps {
        Some(c) => c.join(", "),
        None => "the server does not support CAPA".into(),
    }
}

fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

fn bad_line(line: &[u8]) -> String {
    format!(
        "malformed line \"{}\"",
        shorten(&String::from_utf8_lossy(line), 100)
    )
}

fn check_arg(value: &str, what: &str) -> Result<()> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(ConnectError::new(
            FailureStep::Authentication,
            ErrorKind::Config,
            format!("the {what} contains a line break or NUL, which POP3 cannot carry: fix it"),
        ));
    }
    Ok(())
}

fn redact_err(mut e: ConnectError, login: &Login) -> ConnectError {
    e.message = login.redact(&e.message);
    e
}

fn garbled(what: &str, why: &str, login: Option<&Login>) -> ConnectError {
    let msg =
        format!("garbled answer to {what} ({why}): the server does not speak POP3 as expected");
    ConnectError::protocol(match login {
        Some(l) => l.redact(&msg),
        None => msg,
    })
}

/// The error for a `-ERR` in `phase`, with the server's words and the fix.
fn refusal(phase: Phase, what: &str, st: &Pop3Status, login: Option<&Login>) -> ConnectError {
    let (step, kind) = classify(phase, st.code.as_deref());
    let said = st.display();
    let said = match login {
        Some(l) => l.redact(&said),
        None => said,
    };
    let fix = match (kind, st.code.as_deref()) {
        (ErrorKind::Auth, _) if matches!(login, Some(Login::XOAuth2 { .. })) => {
            "check the access token, its scopes and that it belongs to this user"
        }
        (ErrorKind::Auth, _) => "check the user name and password",
        (ErrorKind::Transient, Some("IN-USE")) => {
            "the maildrop is locked by another POP3 session: try again later"
        }
        (ErrorKind::Transient, _) => "the server is temporarily unavailable: try again later",
        (ErrorKind::Throttled, _) => {
            "the server limits how often this account may log in (LOGIN-DELAY): poll less often"
        }
        (ErrorKind::Permission, _) => {
            "the account may not read its maildrop: ask the mail administrator"
        }
        (ErrorKind::Config, _) if phase == Phase::Stls => {
            "enable STLS on the server or use implicit TLS (POP3S)"
        }
        (ErrorKind::Config, _) => "check the server settings",
        (ErrorKind::Permanent, Some("SYS/PERM")) => {
            "the server reports a permanent problem with this account: ask the mail administrator"
        }
        _ => "check the server and protocol settings",
    };
    ConnectError::new(
        step,
        kind,
        format!("{what} refused: server said \"{said}\": {fix}"),
    )
}

/// Tests that `login` can connect, authenticate and read the maildrop:
/// DNS → TCP → TLS (implicit or STLS) → CAPA → login → STAT → QUIT. Never DELE: nothing
/// changes on the server.
pub async fn probe(addr: &ServerAddr, login: &Login, opts: &ConnectOptions) -> ProbeReport {
    let mut log = StepLog::new();
    let mut capabilities = Vec::new();
    let result = probe_steps(addr, login, opts, &mut log, &mut capabilities).await;
    log.finish(capabilities, result)
}

async fn probe_steps(
    addr: &ServerAddr,
    login: &Login,
    opts: &ConnectOptions,
    log: &mut StepLog,
    capabilities: &mut Vec<String>,
) -> Result<()> {
    let mut client = Client::connect_logged(addr, opts, log).await?;
    *capabilities = client.capabilities().to_vec();
    let method = client.login_method(login);
    log.run(
        FailureStep::Authentication,
        format!("{method} as {}", login.username()),
        client.login(login),
        |_| "authenticated".into(),
    )
    .await?;
    log.run(FailureStep::Permission, "STAT", client.stat(), |s| {
        format!("{} messages, {} bytes", s.count, s.size)
    })
    .await?;
    log.run(FailureStep::Protocol, "QUIT", client.quit(), |_| {
        "signed off".into()
    })
    .await?;
    Ok(())
}

/// When the server received the message: the date of the topmost `Received:` field (added by
/// the last hop, the receiving server), else the `Date:` field, else now. POP3 has no
/// INTERNALDATE; this is what "process email from" is compared with.
pub fn received_at(raw: &[u8]) -> Timestamp {
    header_date(raw, "received", true)
        .or_else(|| header_date(raw, "date", false))
        .unwrap_or_else(chrono::Utc::now)
}

/// The date in the first header field called `name` (case-insensitive, unfolded): its whole
/// value, or what follows its last `;` (`Received:`).
fn header_date(raw: &[u8], name: &str, after_semicolon: bool) -> Option<Timestamp> {
    let head = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw, |end| &raw[..end]);
    let text = String::from_utf8_lossy(head);
    let mut value: Option<String> = None;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((field, rest)) = line.split_once(':')
                    && field.trim().eq_ignore_ascii_case(name)
                {
                    value = Some(rest.to_owned());
                }
            }
        }
    }
    let value = value?;
    let date = if after_semicolon {
        value.rsplit_once(';')?.1
    } else {
        value.as_str()
    };
    // Drop a trailing comment such as "(UTC)", which the RFC 2822 parser refuses.
    let date = match date.find('(') {
        Some(i) => &date[..i],
        None => date,
    };
    chrono::DateTime::parse_from_rfc2822(date.trim())
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod received_tests {
    use super::*;

    #[test]
    fn received_at_prefers_the_topmost_received_field() {
        let raw = b"Received: from a by mx.example.test\r\n\tfor <b@example.test>; Tue, 3 Nov 2026 10:00:00 +0100 (CET)\r\n\
Received: from b by c; Mon, 2 Nov 2026 10:00:00 +0000\r\nDate: Sun, 1 Nov 2026 10:00:00 +0000\r\n\r\nbody";
        assert_eq!(received_at(raw).to_rfc3339(), "2026-11-03T09:00:00+00:00");
        let raw = b"Subject: x\r\nDATE: Sun, 1 Nov 2026 10:00:00 +0000\r\n\r\nReceived: no; Mon, 2 Nov 2026 10:00:00 +0000\r\n";
        assert_eq!(received_at(raw).to_rfc3339(), "2026-11-01T10:00:00+00:00");
        let before = chrono::Utc::now();
        assert!(received_at(b"Received: garbage\r\n\r\n") >= before);
        assert!(received_at(b"") >= before);
    }
}
