//! SMTP: connecting ([`connect`]: greeting, EHLO, STARTTLS), authenticating
//! ([`SmtpConnection::login`]), envelope commands, and the probe ([`probe`]) that sends
//! nothing.
//!
//! A small client of our own rather than lettre's `AsyncSmtpConnection`: lettre's connect
//! folds DNS, TCP, TLS, greeting and EHLO into one call, and its STARTTLS uses lettre's own
//! TLS parameters rather than our [`crate::TlsTrust`], so neither the failing step nor the
//! certificate problem could be told exactly. Replies keep their enhanced status codes.

pub mod parse;

use std::net::SocketAddr;

use serversync_model::profile::TlsMode;
use serversync_model::{ErrorKind, FailureStep};

use crate::error::{ConnectError, Result};
use crate::imap::parse::shorten;
use crate::login::{Login, b64, bearer_initial, bearer_mechanism, decode_challenge, sasl_plain};
use crate::net::{ConnectOptions, ServerAddr, Wire, establish};
use crate::probe::{ProbeReport, StepLog};

pub use parse::Reply;
use parse::{Phase, ReplyParser, auth_mechanisms, classify, ehlo_capabilities};

/// Longest reply line accepted (RFC 5321 says 512; be lenient).
const MAX_LINE: usize = 8 * 1024;

/// How to send a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// `AUTH PLAIN` when offered, else `AUTH LOGIN`.
    #[default]
    Auto,
    /// `AUTH PLAIN` with an initial response (RFC 4616, RFC 4954).
    Plain,
    /// `AUTH LOGIN` (user name and password in two base64 steps).
    Login,
}

/// A connected SMTP server after EHLO (and STARTTLS, when asked).
#[derive(Debug)]
pub struct SmtpConnection {
    wire: Wire,
    greeting: String,
    hello_name: String,
    capabilities: Vec<String>,
}

/// Connects: DNS → TCP → TLS (implicit) → greeting → EHLO → STARTTLS + EHLO (when
/// `addr.tls` is [`TlsMode::StartTls`]).
pub async fn connect(addr: &ServerAddr, opts: &ConnectOptions) -> Result<SmtpConnection> {
    connect_logged(addr, opts, &mut StepLog::new()).await
}

/// [`connect`], recording each step in `log`.
pub async fn connect_logged(
    addr: &ServerAddr,
    opts: &ConnectOptions,
    log: &mut StepLog,
) -> Result<SmtpConnection> {
    let mut wire = establish(addr, opts, log).await?;
    let hello_name = match &opts.hello_name {
        Some(name) => name.clone(),
        None => address_literal(wire.local_addr()),
    };
    let greeting = log
        .run(
            FailureStep::Protocol,
            "greeting",
            read_greeting(&mut wire),
            |_| "greeting received".to_string(),
        )
        .await?;
    let mut capabilities = log
        .run(
            FailureStep::Protocol,
            format!("EHLO {hello_name}"),
            ehlo(&mut wire, &hello_name),
            |c| c.join(", "),
        )
        .await?;
    if addr.tls == TlsMode::StartTls {
        wire = log
            .run(
                FailureStep::Tls,
                "STARTTLS",
                starttls(wire, &capabilities, addr, opts),
                |w| w.tls_summary().unwrap_or_default(),
            )
            .await?;
        log.presented(wire.certificate(), &addr.pinned);
        // What the server announced before TLS must not be trusted (RFC 3207 §4.2).
        capabilities = log
            .run(
                FailureStep::Protocol,
                format!("EHLO {hello_name} (after STARTTLS)"),
                ehlo(&mut wire, &hello_name),
                |c| c.join(", "),
            )
            .await?;
    }
    Ok(SmtpConnection {
        wire,
        greeting: greeting.display(),
        hello_name,
        capabilities,
    })
}

/// `[192.0.2.7]` / `[IPv6:2001:db8::7]` (RFC 5321 §4.1.3), or `[127.0.0.1]` if unknown.
fn address_literal(local: Option<SocketAddr>) -> String {
    match local {
        Some(SocketAddr::V4(a)) => format!("[{}]", a.ip()),
        Some(SocketAddr::V6(a)) => format!("[IPv6:{}]", a.ip()),
        None => "[127.0.0.1]".into(),
    }
}

async fn read_reply(wire: &mut Wire, step: FailureStep, what: &str) -> Result<Reply> {
    let mut parser = ReplyParser::new();
    loop {
        let line = wire.read_line(step, what, MAX_LINE).await?;
        match parser.push_line(&line) {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => {}
            Err(why) => {
                return Err(ConnectError::protocol(format!(
                    "garbled answer to {what} ({why}): the server does not speak SMTP as expected"
                )));
            }
        }
    }
}

async fn send(wire: &mut Wire, step: FailureStep, what: &str, line: &[u8]) -> Result<Reply> {
    wire.send_line(step, what, line).await?;
    read_reply(wire, step, what).await
}

async fn read_greeting(wire: &mut Wire) -> Result<Reply> {
    let line = wire
        .read_line(FailureStep::Protocol, "the SMTP greeting", MAX_LINE)
        .await?;
    // The greeting's words stay in the debug log (see imap::read_greeting).
    tracing::debug!(greeting = %shorten(&String::from_utf8_lossy(&line), 200), "SMTP greeting");
    let mut parser = ReplyParser::new();
    let mut reply = parser.push_line(&line).map_err(|_| {
        ConnectError::protocol(
            "this port does not speak SMTP (the greeting is not an SMTP greeting): check the \
             port and protocol",
        )
    })?;
    while reply.is_none() {
        let line = wire
            .read_line(FailureStep::Protocol, "the SMTP greeting", MAX_LINE)
            .await?;
        reply = parser.push_line(&line).map_err(|why| {
            ConnectError::protocol(format!("garbled SMTP greeting ({why}): check the server"))
        })?;
    }
    let reply = reply.expect("loop ends with a reply");
    if reply.code != 220 {
        let mut e = refusal(Phase::Greeting, "the connection", &reply, None);
        e.message = format!(
            "the server refused the connection in its greeting (reply {}): it may be busy or \
             refusing connections from this host; try again later",
            reply.code
        );
        return Err(e);
    }
    Ok(reply)
}

async fn ehlo(wire: &mut Wire, hello_name: &str) -> Result<Vec<String>> {
    let what = "EHLO";
    let reply = send(
        wire,
        FailureStep::Protocol,
        what,
        format!("EHLO {hello_name}").as_bytes(),
    )
    .await?;
    if reply.code != 250 {
        return Err(refusal(Phase::Ehlo, what, &reply, None));
    }
    Ok(ehlo_capabilities(&reply))
}

async fn starttls(
    mut wire: Wire,
    capabilities: &[String],
    addr: &ServerAddr,
    opts: &ConnectOptions,
) -> Result<Wire> {
    if !has(capabilities, "STARTTLS") {
        return Err(ConnectError::new(
            FailureStep::Tls,
            ErrorKind::Config,
            format!(
                "the server does not offer STARTTLS on port {}: use implicit TLS (usually port \
                 465) or enable STARTTLS on the server",
                addr.port
            ),
        ));
    }
    let reply = send(&mut wire, FailureStep::Tls, "STARTTLS", b"STARTTLS").await?;
    if reply.code != 220 {
        return Err(refusal(Phase::StartTls, "STARTTLS", &reply, None));
    }
    wire.start_tls(addr, opts).await
}

fn has(capabilities: &[String], keyword: &str) -> bool {
    capabilities.iter().any(|c| {
        c.split_ascii_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(keyword))
    })
}

/// How the envelope of a mail transaction went ([`SmtpConnection::envelope`]).
#[derive(Debug)]
pub enum Envelope {
    /// Every recipient accepted and `DATA` answered 354: send the message with
    /// [`SmtpConnection::message`].
    Ready,
    /// A recipient was not accepted: its index among those given and the server's reply. The
    /// transaction is abandoned; `reusable` says whether the connection can carry the next
    /// one (it was reset) or was closed.
    RecipientRefused {
        index: usize,
        reply: Reply,
        reusable: bool,
    },
    /// `DATA` was refused (the connection can carry the next transaction).
    DataRefused(Reply),
}

/// `MAIL FROM`'s reply when it is 250, else the refusal as an error.
fn sender_accepted(address: &str, reply: Reply) -> Result<Reply> {
    if reply.code != 250 {
        return Err(refusal(
            Phase::MailFrom,
            &format!("MAIL FROM:<{address}>"),
            &reply,
            None,
        ));
    }
    Ok(reply)
}

/// Whether an address can go between `<` and `>` on a command line as it is.
fn fits_in_angle_brackets(address: &str) -> bool {
    !address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
}

fn rcpt_to_line(address: &str) -> Result<String> {
    if !fits_in_angle_brackets(address) {
        return Err(ConnectError::new(
            FailureStep::Permission,
            ErrorKind::Permanent,
            format!("the recipient address {address:?} is not a valid address"),
        ));
    }
    Ok(format!("RCPT TO:<{address}>"))
}

impl SmtpConnection {
    /// EHLO keywords with parameters as last announced (`SIZE 52428800`, `AUTH PLAIN LOGIN`…).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Whether an EHLO keyword was announced (`PIPELINING`, `DSN`, `SMTPUTF8`…).
    pub fn has_extension(&self, keyword: &str) -> bool {
        has(&self.capabilities, keyword)
    }

    /// The mechanisms of the `AUTH` keyword.
    pub fn auth_mechanisms(&self) -> Vec<String> {
        auth_mechanisms(&self.capabilities)
    }

    /// The greeting, e.g. `220 localhost ESMTP Postfix`.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// The name sent with EHLO.
    pub fn hello_name(&self) -> &str {
        &self.hello_name
    }

    pub fn is_tls(&self) -> bool {
        self.wire.is_tls()
    }

    /// The mechanism [`login`](Self::login) will use: `AUTH PLAIN`, else `AUTH LOGIN` for a
    /// password; `AUTH XOAUTH2` (else `AUTH OAUTHBEARER`) for a token. An error when the
    /// server offers none of them.
    pub fn login_method(&self, login: &Login) -> Result<&'static str> {
        self.method_for(login, AuthMethod::Auto)
    }

    fn method_for(&self, login: &Login, choice: AuthMethod) -> Result<&'static str> {
        let mechs = self.auth_mechanisms();
        let offered = |m: &str| mechs.iter().any(|o| o == m);
        match (login, choice) {
            (Login::Password { .. }, AuthMethod::Plain) => return Ok("AUTH PLAIN"),
            (Login::Password { .. }, AuthMethod::Login) => return Ok("AUTH LOGIN"),
            _ => {}
        }
        match login {
            Login::Password { .. } if offered("PLAIN") => Ok("AUTH PLAIN"),
            Login::Password { .. } if offered("LOGIN") => Ok("AUTH LOGIN"),
            Login::XOAuth2 { .. } if bearer_mechanism(offered) == Some("XOAUTH2") => {
                Ok("AUTH XOAUTH2")
            }
            Login::XOAuth2 { .. } if bearer_mechanism(offered).is_some() => Ok("AUTH OAUTHBEARER"),
            _ if mechs.is_empty() && !self.wire.is_tls() => Err(ConnectError::new(
                FailureStep::Tls,
                ErrorKind::Config,
                "the server offers no authentication on an unencrypted connection: use STARTTLS \
                 or implicit TLS",
            )),
            _ if mechs.is_empty() => Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                "the server does not offer authentication (no AUTH in its EHLO answer): check \
                 the port (submission is 587 or 465) or configure the profile without \
                 credentials",
            )),
            _ => Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                format!(
                    "the server offers no authentication mechanism serversync can use for this \
                     login (it offers {}): use {} or check the server",
                    mechs.join(" "),
                    if matches!(login, Login::XOAuth2 { .. }) {
                        "password authentication"
                    } else {
                        "an OAuth token"
                    }
                ),
            )),
        }
    }

    /// `AUTH PLAIN` / `AUTH LOGIN` / `AUTH XOAUTH2`; 535 means the credentials were rejected.
    pub async fn login(&mut self, login: &Login) -> Result<()> {
        self.login_using(login, AuthMethod::Auto).await
    }

    /// [`login`](Self::login) with the password mechanism chosen; ignored for XOAUTH2.
    pub async fn login_using(&mut self, login: &Login, choice: AuthMethod) -> Result<()> {
        let method = self.method_for(login, choice)?;
        let what = format!("{method} as {}", login.username());
        let step = FailureStep::Authentication;
        let mut ack: &[u8] = b"";
        let mut reply = match login {
            Login::Password { username, password } if method == "AUTH PLAIN" => {
                let line = format!("AUTH PLAIN {}", sasl_plain(username, password.expose()));
                self.send_secret(&what, line.as_bytes(), login).await?
            }
            Login::Password { username, password } => {
                let first = send(&mut self.wire, step, &what, b"AUTH LOGIN").await?;
                if first.code != 334 {
                    first
                } else {
                    let second = self
                        .send_secret(&what, b64(username).as_bytes(), login)
                        .await?;
                    if second.code != 334 {
                        second
                    } else {
                        self.send_secret(&what, b64(password.expose()).as_bytes(), login)
                            .await?
                    }
                }
            }
            Login::XOAuth2 {
                username,
                access_token,
            } => {
                let mechanism = method.trim_start_matches("AUTH ");
                let (initial, a) = bearer_initial(mechanism, username, access_token.expose());
                ack = a;
                let line = format!("{method} {initial}");
                self.send_secret(&what, line.as_bytes(), login).await?
            }
        };
        if reply.code == 334 {
            // A challenge after the credentials: the error report of a failed XOAUTH2 or
            // OAUTHBEARER (or a server that wants more); acknowledge it (an empty line, `AQ==`
            // for OAUTHBEARER) to get the final reply.
            let said = login.redact(&decode_challenge(&reply.lines.join(" ")));
            reply = self.send_secret(&what, ack, login).await?;
            if let Some(first) = reply.lines.first_mut() {
                first.push_str(&format!(" ({said})"));
            }
        }
        if reply.code != 235 {
            return Err(refusal(Phase::Auth, &what, &reply, Some(login)));
        }
        Ok(())
    }

    async fn send_secret(&mut self, what: &str, line: &[u8], login: &Login) -> Result<Reply> {
        send(&mut self.wire, FailureStep::Authentication, what, line)
            .await
            .map_err(|mut e| {
                e.message = login.redact(&e.message);
                e
            })
    }

    /// `MAIL FROM:<address>` (with `SMTPUTF8` for a non-ASCII address). A refusal is a
    /// Permission failure: the account may not send as this sender.
    pub async fn mail_from(&mut self, address: &str) -> Result<Reply> {
        let line = self.mail_from_line(address)?;
        let reply = send(
            &mut self.wire,
            FailureStep::Permission,
            "MAIL FROM",
            line.as_bytes(),
        )
        .await?;
        sender_accepted(address, reply)
    }

    fn mail_from_line(&self, address: &str) -> Result<String> {
        if !fits_in_angle_brackets(address) {
            return Err(ConnectError::new(
                FailureStep::Permission,
                ErrorKind::Config,
                format!("the sender address {address:?} is not a valid address: fix it"),
            ));
        }
        let mut line = format!("MAIL FROM:<{address}>");
        if !address.is_ascii() {
            if !self.has_extension("SMTPUTF8") {
                return Err(ConnectError::new(
                    FailureStep::Permission,
                    ErrorKind::Config,
                    format!(
                        "the sender address {address} is not ASCII and the server does not \
                         support SMTPUTF8: use an ASCII address"
                    ),
                ));
            }
            line.push_str(" SMTPUTF8");
        }
        Ok(line)
    }

    /// `RCPT TO:<address>`. Returns the reply whatever its code, so the caller can tell a
    /// refused recipient (5xx) from a passing problem (4xx).
    pub async fn rcpt_to(&mut self, address: &str) -> Result<Reply> {
        let line = rcpt_to_line(address)?;
        send(
            &mut self.wire,
            FailureStep::Protocol,
            "RCPT TO",
            line.as_bytes(),
        )
        .await
    }

    /// `DATA` and the message (dot-stuffed, CR LF line ends), ending with `.`. Returns the
    /// server's final reply whatever its code (250: accepted for delivery). A refused `DATA`
    /// command (not 354) is returned as it is, without sending the message.
    pub async fn data(&mut self, message: &[u8]) -> Result<Reply> {
        let go = send(&mut self.wire, FailureStep::Protocol, "DATA", b"DATA").await?;
        if go.code != 354 {
            return Ok(go);
        }
        self.message(message).await
    }

    /// The envelope of one mail transaction: `MAIL FROM`, a `RCPT TO` for each recipient and
    /// `DATA`. When the server announced PIPELINING (RFC 2920) they go in one write and the
    /// replies are read after, one round trip instead of two or more; otherwise one at a
    /// time, stopping at the first recipient not accepted. A refused sender is an error, as
    /// with [`SmtpConnection::mail_from`] (the connection stays in step). After `DATA` was
    /// answered 354 the caller sends the message with [`SmtpConnection::message`], or drops
    /// the connection to abandon it: without its final dot nothing is delivered. When pipelined
    /// `DATA` was answered 354 although the sender or a recipient was refused, this closes the
    /// connection itself: it must not be used again.
    pub async fn envelope(&mut self, from: &str, recipients: &[String]) -> Result<Envelope> {
        let mail = self.mail_from_line(from)?;
        let rcpt_lines = recipients
            .iter()
            .map(|r| rcpt_to_line(r))
            .collect::<Result<Vec<_>>>()?;
        let (mut rcpts, data) = if self.has_extension("PIPELINING") {
            let mut batch = Vec::with_capacity(64 * (rcpt_lines.len() + 2));
            for line in std::iter::once(&mail).chain(&rcpt_lines) {
                batch.extend_from_slice(line.as_bytes());
                batch.extend_from_slice(b"\r\n");
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.wire
                .send_raw(FailureStep::Protocol, "the envelope", &batch)
                .await?;
            let mail_reply =
                read_reply(&mut self.wire, FailureStep::Permission, "MAIL FROM").await?;
            let mut rcpts = Vec::with_capacity(recipients.len());
            for _ in recipients {
                rcpts.push(read_reply(&mut self.wire, FailureStep::Protocol, "RCPT TO").await?);
            }
            let data = read_reply(&mut self.wire, FailureStep::Protocol, "DATA").await?;
            let refused = mail_reply.code != 250 || rcpts.iter().any(|r| !r.is_positive());
            if refused && data.code == 354 {
                // The server waits for a message that will not be sent. A lone dot would
                // deliver an empty message to the recipients it accepted: closing the
                // connection abandons the transaction.
                self.wire.shutdown().await;
            }
            sender_accepted(from, mail_reply)?;
            (rcpts, data)
        } else {
            self.mail_from(from).await?;
            for (index, line) in rcpt_lines.iter().enumerate() {
                let reply = send(
                    &mut self.wire,
                    FailureStep::Protocol,
                    "RCPT TO",
                    line.as_bytes(),
                )
                .await?;
                if !reply.is_positive() {
                    let reusable = self.rset().await.is_ok();
                    return Ok(Envelope::RecipientRefused {
                        index,
                        reply,
                        reusable,
                    });
                }
            }
            let data = send(&mut self.wire, FailureStep::Protocol, "DATA", b"DATA").await?;
            (Vec::new(), data)
        };
        if let Some(index) = rcpts.iter().position(|r| !r.is_positive()) {
            let reusable = data.code != 354 && self.rset().await.is_ok();
            return Ok(Envelope::RecipientRefused {
                index,
                reply: rcpts.swap_remove(index),
                reusable,
            });
        }
        Ok(if data.code == 354 {
            Envelope::Ready
        } else {
            Envelope::DataRefused(data)
        })
    }

    /// The message (dot-stuffed, CR LF line ends, ending with `.`) after `DATA` was answered
    /// 354; returns the server's final reply whatever its code (250: accepted for delivery).
    pub async fn message(&mut self, message: &[u8]) -> Result<Reply> {
        let body = dot_stuff(message);
        self.wire
            .send_raw(FailureStep::Protocol, "the message", &body)
            .await?;
        read_reply(&mut self.wire, FailureStep::Protocol, "the message").await
    }

    /// `RSET`: abandons the current mail transaction.
    pub async fn rset(&mut self) -> Result<()> {
        self.expect_250("RSET").await
    }

    /// `NOOP`.
    pub async fn noop(&mut self) -> Result<()> {
        self.expect_250("NOOP").await
    }

    async fn expect_250(&mut self, command: &str) -> Result<()> {
        let reply = self.command(command).await?;
        if reply.code != 250 {
            return Err(refusal(Phase::Command, command, &reply, None));
        }
        Ok(())
    }

    /// Sends one command line (never one carrying a secret) and returns the reply,
    /// whatever its code.
    pub async fn command(&mut self, line: &str) -> Result<Reply> {
        let what = line.split(' ').next().unwrap_or(line).to_string();
        send(
            &mut self.wire,
            FailureStep::Protocol,
            &what,
            line.as_bytes(),
        )
        .await
    }

    /// `QUIT`, then closes. A server that hangs up without its 221 is fine.
    pub async fn quit(mut self) -> Result<()> {
        match self.command("QUIT").await {
            Ok(reply) if reply.code == 221 || reply.is_positive() => {}
            Ok(reply) => return Err(refusal(Phase::Command, "QUIT", &reply, None)),
            Err(e) if e.kind == ErrorKind::Transient => {}
            Err(e) => return Err(e),
        }
        self.wire.shutdown().await;
        Ok(())
    }
}

/// The error for a negative reply in `phase`, with the server's words (enhanced status code
/// included) and the fix.
fn refusal(phase: Phase, what: &str, reply: &Reply, login: Option<&Login>) -> ConnectError {
    let (step, kind) = classify(phase, reply);
    let said = reply.display();
    let said = match login {
        Some(l) => l.redact(&said),
        None => said,
    };
    let fix = match (step, kind) {
        (_, ErrorKind::Auth) if matches!(login, Some(Login::XOAuth2 { .. })) => {
            "check the access token, its scopes and that it belongs to this user"
        }
        (_, ErrorKind::Auth) => {
            "check the user name and password (some providers require an app password)"
        }
        (_, ErrorKind::Throttled) => "the server is limiting this sender: try again later",
        (_, ErrorKind::Transient) => "the server is temporarily unavailable: try again later",
        (FailureStep::Tls, _) => "use STARTTLS or implicit TLS, as the server requires",
        (FailureStep::Authentication, ErrorKind::Config) if phase == Phase::MailFrom => {
            "the server requires authentication: configure credentials"
        }
        (FailureStep::Authentication, _) => {
            "check the authentication settings (mechanism) against the server's"
        }
        (FailureStep::Permission, ErrorKind::Config) => "check the sender address",
        (FailureStep::Permission, _) => {
            "the account may not send as this sender: use the account's own address or grant \
             it send-as rights"
        }
        _ => "check the server and protocol settings",
    };
    ConnectError::new(
        step,
        kind,
        format!("{what} refused: server said \"{said}\": {fix}"),
    )
}

/// Tests that `login` may send as `mail_from` without sending anything:
/// DNS → TCP → TLS (implicit, or STARTTLS after EHLO) → EHLO → AUTH → `MAIL FROM:<mail_from>`
/// → RSET → QUIT. No recipient is given and no DATA is sent. `login` is `None` for servers
/// that relay without authentication.
pub async fn probe(
    addr: &ServerAddr,
    login: Option<&Login>,
    mail_from: &str,
    opts: &ConnectOptions,
) -> ProbeReport {
    let mut log = StepLog::new();
    let mut capabilities = Vec::new();
    let result = probe_steps(addr, login, mail_from, opts, &mut log, &mut capabilities).await;
    log.finish(capabilities, result)
}

async fn probe_steps(
    addr: &ServerAddr,
    login: Option<&Login>,
    mail_from: &str,
    opts: &ConnectOptions,
    log: &mut StepLog,
    capabilities: &mut Vec<String>,
) -> Result<()> {
    let mut conn = connect_logged(addr, opts, log).await?;
    *capabilities = conn.capabilities().to_vec();
    match login {
        Some(login) => {
            let action = match conn.login_method(login) {
                Ok(m) => format!("{m} as {}", login.username()),
                Err(_) => format!("AUTH as {}", login.username()),
            };
            log.run(
                FailureStep::Authentication,
                action,
                conn.login(login),
                |_| "authenticated".into(),
            )
            .await?;
        }
        None => log.note(
            FailureStep::Authentication,
            "AUTH",
            "skipped: no credentials configured",
        ),
    }
    log.run(
        FailureStep::Permission,
        format!("MAIL FROM:<{mail_from}>"),
        conn.mail_from(mail_from),
        Reply::display,
    )
    .await?;
    log.run(FailureStep::Protocol, "RSET", conn.rset(), |_| {
        "transaction abandoned: nothing was sent".into()
    })
    .await?;
    log.run(FailureStep::Protocol, "QUIT", conn.quit(), |_| {
        "closed".into()
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_literals() {
        assert_eq!(
            address_literal(Some("192.0.2.7:1234".parse().unwrap())),
            "[192.0.2.7]"
        );
        assert_eq!(
            address_literal(Some("[2001:db8::7]:25".parse().unwrap())),
            "[IPv6:2001:db8::7]"
        );
    }

    #[test]
    fn refusals_keep_the_enhanced_code() {
        let reply = Reply {
            code: 535,
            enhanced: Some("5.7.8".into()),
            lines: vec!["5.7.8 Error: authentication failed: authentication failure".into()],
        };
        let login = Login::password("carol@example.test", serversync_model::Secret::new("pw"));
        let e = refusal(
            Phase::Auth,
            "AUTH PLAIN as carol@example.test",
            &reply,
            Some(&login),
        );
        assert_eq!(
            (e.step, e.kind),
            (FailureStep::Authentication, ErrorKind::Auth)
        );
        assert!(e.message.contains("535 5.7.8"), "{e}");
    }
}

/// The message as sent after `DATA`: every line ending in CR LF, lines starting with `.`
/// doubled (RFC 5321 4.5.2), and the final `.` line.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    for line in message.split_inclusive(|&b| b == b'\n') {
        let text = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        if text.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod dot_stuff_tests {
    use super::dot_stuff;

    #[test]
    fn stuffs_dots_and_normalizes_line_ends() {
        assert_eq!(
            dot_stuff(b"Subject: x\r\n\r\n.hidden\nplain\n"),
            b"Subject: x\r\n\r\n..hidden\r\nplain\r\n.\r\n".to_vec()
        );
        assert_eq!(dot_stuff(b"no end"), b"no end\r\n.\r\n".to_vec());
    }
}
