//! IMAP: connecting ([`connect`]), authenticating ([`ImapConnection::login`]) and the
//! read-only connectivity probe ([`probe`]).
//!
//! Everything up to and including authentication speaks the protocol directly (a small
//! line reader plus the pure parser in [`parse`]), because the exact classification of a
//! failure depends on details async-imap does not expose: RFC 5530 response codes such as
//! `[AUTHENTICATIONFAILED]`, `[UNAVAILABLE]` or `[LIMIT]` (async-imap reports them only as
//! text), `* BYE` before the connection closes, what happens inside STARTTLS. After
//! authentication the raw [`ImapSession`] runs simple commands (EXAMINE, LOGOUT, any
//! command whose answers fit in memory); for synchronization it becomes a
//! [`sync::SyncSession`] (SELECT with CONDSTORE/QRESYNC, pipelined `BODY.PEEK[]` fetches,
//! IDLE, APPEND, MOVE) on the same connected, TLS-secured [`crate::net::MailStream`].

pub mod parse;
pub mod sync;

use serversync_model::profile::TlsMode;
use serversync_model::{ErrorKind, FailureStep};

use crate::error::{ConnectError, Result};
use crate::login::{Login, bearer_initial, bearer_mechanism, decode_challenge, sasl_plain};
use crate::net::{ConnectOptions, ServerAddr, Wire, establish};
use crate::probe::{ProbeReport, StepLog};

pub use parse::{MailboxInfo, ResponseCode, Status, StatusResponse, Untagged};
use parse::{Phase, ResponseLine, classify, literal_len, parse_line, shorten};
pub use sync::SyncSession;

/// Longest response line we accept (literals are counted separately).
const MAX_LINE: usize = 1 << 20;
/// Largest literal we read into memory.
const MAX_LITERAL: usize = 64 << 20;

/// A connected IMAP server, not yet authenticated: greeting read, TLS established as the
/// [`ServerAddr`] asked (implicit, or STARTTLS on a plain port), capabilities known.
#[derive(Debug)]
pub struct ImapConnection {
    wire: Wire,
    tags: Tags,
    greeting: String,
    preauth: bool,
    capabilities: Vec<String>,
}

/// How to send a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordMethod {
    /// `AUTHENTICATE PLAIN` when the server offers `AUTH=PLAIN`, else `LOGIN`.
    #[default]
    Auto,
    /// The `LOGIN` command (quoted strings, or literals for 8-bit characters).
    Login,
    /// `AUTHENTICATE PLAIN` (RFC 4616), with SASL-IR when offered.
    AuthenticatePlain,
}

/// An authenticated IMAP session.
#[derive(Debug)]
pub struct ImapSession {
    wire: Wire,
    tags: Tags,
    capabilities: Vec<String>,
}

/// The answer to one command: untagged responses in order and the final tagged status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImapReply {
    pub untagged: Vec<Untagged>,
    pub done: StatusResponse,
}

/// Connects: DNS → TCP → TLS (implicit) → greeting → CAPABILITY → STARTTLS + CAPABILITY
/// (when `addr.tls` is [`TlsMode::StartTls`]).
pub async fn connect(addr: &ServerAddr, opts: &ConnectOptions) -> Result<ImapConnection> {
    connect_logged(addr, opts, &mut StepLog::new()).await
}

/// [`connect`], recording each step in `log`.
pub async fn connect_logged(
    addr: &ServerAddr,
    opts: &ConnectOptions,
    log: &mut StepLog,
) -> Result<ImapConnection> {
    let mut wire = establish(addr, opts, log).await?;
    let mut tags = Tags::default();
    let greeting = log
        .run(
            FailureStep::Protocol,
            "greeting",
            read_greeting(&mut wire),
            |g| greeting_detail(g.status == Status::Preauth),
        )
        .await?;
    let preauth = greeting.status == Status::Preauth;
    let mut capabilities = log
        .run(
            FailureStep::Protocol,
            "CAPABILITY",
            capability(&mut wire, &mut tags),
            |c| c.join(" "),
        )
        .await?;
    if addr.tls == TlsMode::StartTls {
        wire = log
            .run(
                FailureStep::Tls,
                "STARTTLS",
                starttls(wire, &mut tags, &capabilities, preauth, addr, opts),
                |w| w.tls_summary().unwrap_or_default(),
            )
            .await?;
        log.presented(wire.certificate(), &addr.pinned);
        // Capabilities announced before TLS must not be trusted (RFC 9051 §6.2.1).
        capabilities = log
            .run(
                FailureStep::Protocol,
                "CAPABILITY (after STARTTLS)",
                capability(&mut wire, &mut tags),
                |c| c.join(" "),
            )
            .await?;
    }
    Ok(ImapConnection {
        wire,
        tags,
        greeting: greeting.display(),
        preauth,
        capabilities,
    })
}

/// What a probe reports for a greeting: that there was one, not what it said.
pub(crate) fn greeting_detail(preauth: bool) -> String {
    if preauth {
        "greeting received (pre-authenticated)".into()
    } else {
        "greeting received".into()
    }
}

async fn read_greeting(wire: &mut Wire) -> Result<StatusResponse> {
    let line = wire
        .read_line(FailureStep::Protocol, "the IMAP greeting", MAX_LINE)
        .await?;
    // What the server says in its greeting stays in the debug log: reports and errors go to
    // tenants, and must not relay the banner of whatever service answers on that port.
    tracing::debug!(greeting = %shorten(&String::from_utf8_lossy(&line), 200), "IMAP greeting");
    match parse_line(&line) {
        Ok(ResponseLine::Untagged(Untagged::Status(st))) => match st.status {
            Status::Ok | Status::Preauth => Ok(st),
            Status::Bye => {
                let mut e = refusal(Phase::Greeting, "the connection", &st, None);
                e.message = "the server closed the connection in its greeting (BYE): it may be \
                             busy or refusing connections from this host; try again later"
                    .into();
                Err(e)
            }
            Status::No | Status::Bad => Err(ConnectError::protocol(
                "the server's greeting is not OK: check the port and the server",
            )),
        },
        _ => Err(ConnectError::protocol(
            "this port does not speak IMAP (the greeting is not an IMAP greeting): check the \
             port and protocol",
        )),
    }
}

async fn starttls(
    mut wire: Wire,
    tags: &mut Tags,
    capabilities: &[String],
    preauth: bool,
    addr: &ServerAddr,
    opts: &ConnectOptions,
) -> Result<Wire> {
    if preauth {
        return Err(ConnectError::new(
            FailureStep::Tls,
            ErrorKind::Config,
            "the server pre-authenticated the connection (PREAUTH), so STARTTLS is impossible: \
             use implicit TLS or fix the server",
        ));
    }
    if !has(capabilities, "STARTTLS") {
        return Err(ConnectError::new(
            FailureStep::Tls,
            ErrorKind::Config,
            format!(
                "the server does not offer STARTTLS on port {}: use implicit TLS (usually port \
                 993) or enable STARTTLS on the server",
                addr.port
            ),
        ));
    }
    let reply = run(&mut wire, tags, FailureStep::Tls, "STARTTLS", "STARTTLS").await?;
    if reply.done.status != Status::Ok {
        return Err(refusal(Phase::StartTls, "STARTTLS", &reply.done, None));
    }
    wire.start_tls(addr, opts).await
}

impl ImapConnection {
    /// Capabilities as last announced (after STARTTLS, if any).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    /// Case-insensitive capability test (`AUTH=PLAIN`, `STARTTLS`, …).
    pub fn has_capability(&self, name: &str) -> bool {
        has(&self.capabilities, name)
    }

    /// The greeting, e.g. `OK Dovecot ready.`.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// Whether the server greeted with PREAUTH (already authenticated).
    pub fn is_preauthenticated(&self) -> bool {
        self.preauth
    }

    pub fn is_tls(&self) -> bool {
        self.wire.is_tls()
    }

    async fn capability(&mut self) -> Result<Vec<String>> {
        capability(&mut self.wire, &mut self.tags).await
    }

    /// The mechanism [`login`](Self::login) will use, e.g. `AUTHENTICATE PLAIN`.
    pub fn login_method(&self, login: &Login) -> &'static str {
        self.method_for(login, PasswordMethod::Auto)
    }

    fn method_for(&self, login: &Login, choice: PasswordMethod) -> &'static str {
        if self.preauth {
            return "PREAUTH";
        }
        match (login, choice) {
            (Login::XOAuth2 { .. }, _) => {
                match bearer_mechanism(|m| self.has_capability(&format!("AUTH={m}"))) {
                    Some("OAUTHBEARER") => "AUTHENTICATE OAUTHBEARER",
                    _ => "AUTHENTICATE XOAUTH2",
                }
            }
            (Login::Password { .. }, PasswordMethod::Login) => "LOGIN",
            (Login::Password { .. }, PasswordMethod::AuthenticatePlain) => "AUTHENTICATE PLAIN",
            (Login::Password { .. }, PasswordMethod::Auto) if self.has_capability("AUTH=PLAIN") => {
                "AUTHENTICATE PLAIN"
            }
            (Login::Password { .. }, PasswordMethod::Auto) => "LOGIN",
        }
    }

    /// Authenticates: `AUTHENTICATE PLAIN` when offered (any characters, one round trip
    /// with SASL-IR), else `LOGIN`; `AUTHENTICATE XOAUTH2` for a token. A pre-authenticated
    /// connection is returned as it is. Refusals are classified by their RFC 5530 code.
    pub async fn login(self, login: &Login) -> Result<ImapSession> {
        self.login_using(login, PasswordMethod::Auto).await
    }

    /// [`login`](Self::login) with the password method chosen (for servers whose
    /// `AUTHENTICATE` misbehaves); ignored for XOAUTH2.
    pub async fn login_using(
        mut self,
        login: &Login,
        choice: PasswordMethod,
    ) -> Result<ImapSession> {
        if !self.preauth {
            self.check_login_allowed(login)?;
            let method = self.method_for(login, choice);
            let done = match login {
                Login::Password { username, password } if method == "AUTHENTICATE PLAIN" => {
                    self.authenticate(
                        "PLAIN",
                        &sasl_plain(username, password.expose()),
                        b"",
                        login,
                    )
                    .await?
                }
                Login::Password { username, password } => {
                    let args = [username.as_bytes(), password.expose().as_bytes()];
                    self.login_command(&args).await?
                }
                Login::XOAuth2 {
                    username,
                    access_token,
                } => {
                    let mechanism = method.trim_start_matches("AUTHENTICATE ");
                    let (initial, ack) = bearer_initial(mechanism, username, access_token.expose());
                    self.authenticate(mechanism, &initial, ack, login).await?
                }
            };
            if done.status != Status::Ok {
                return Err(refusal(
                    Phase::Login,
                    &format!("{method} as {}", login.username()),
                    &done,
                    Some(login),
                ));
            }
            self.capabilities = match done.capabilities() {
                Some(caps) => caps,
                None => self.capability().await?,
            };
        }
        Ok(ImapSession {
            wire: self.wire,
            tags: self.tags,
            capabilities: self.capabilities,
        })
    }

    fn check_login_allowed(&self, login: &Login) -> Result<()> {
        if !self.wire.is_tls() && self.has_capability("LOGINDISABLED") {
            return Err(ConnectError::new(
                FailureStep::Tls,
                ErrorKind::Config,
                "the server refuses to log in without TLS (LOGINDISABLED): use implicit TLS or \
                 STARTTLS",
            ));
        }
        if matches!(login, Login::XOAuth2 { .. })
            && bearer_mechanism(|m| self.has_capability(&format!("AUTH={m}"))).is_none()
        {
            return Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Config,
                "the server offers neither XOAUTH2 nor OAUTHBEARER (no AUTH=XOAUTH2 or \
                 AUTH=OAUTHBEARER capability): use password authentication or check the server",
            ));
        }
        Ok(())
    }

    /// `AUTHENTICATE <mech>` with its initial response; a failed XOAUTH2 or OAUTHBEARER
    /// answers with a JSON challenge, acknowledged with `ack` (empty for XOAUTH2, `AQ==` for
    /// OAUTHBEARER) before the final NO; its decoded text joins the refusal.
    async fn authenticate(
        &mut self,
        mechanism: &str,
        initial: &str,
        ack: &[u8],
        login: &Login,
    ) -> Result<StatusResponse> {
        let step = FailureStep::Authentication;
        let what = format!("AUTHENTICATE {mechanism}");
        let tag = self.tags.next();
        let sasl_ir = self.has_capability("SASL-IR");
        let mut sent_initial = sasl_ir;
        let command = if sasl_ir {
            format!("{tag} AUTHENTICATE {mechanism} {initial}")
        } else {
            format!("{tag} AUTHENTICATE {mechanism}")
        };
        self.wire.send_line(step, &what, command.as_bytes()).await?;
        let mut server_said = None;
        let mut budget = sync::limits::Budget::default();
        loop {
            match read_response(&mut self.wire, step, &what, &mut budget).await? {
                ResponseLine::Continuation(text) => {
                    if sent_initial {
                        server_said = Some(login.redact(&decode_challenge(&text)));
                        self.wire.send_line(step, &what, ack).await?;
                    } else {
                        self.wire.send_line(step, &what, initial.as_bytes()).await?;
                        sent_initial = true;
                    }
                }
                ResponseLine::Tagged { tag: t, mut status } if t == tag => {
                    if let Some(said) = server_said
                        && status.status != Status::Ok
                    {
                        status.text = format!("{} ({said})", status.text);
                    }
                    return Ok(status);
                }
                ResponseLine::Untagged(Untagged::Status(st)) if st.status == Status::Bye => {
                    return Err(refusal(Phase::Login, &what, &st, Some(login)));
                }
                ResponseLine::Untagged(_) => {}
                ResponseLine::Tagged { tag: t, .. } => {
                    return Err(unexpected_tag(&t, &tag));
                }
            }
        }
    }

    /// `LOGIN user password`, as quoted strings or, for characters a quoted string cannot
    /// carry, synchronizing literals.
    async fn login_command(&mut self, args: &[&[u8]]) -> Result<StatusResponse> {
        let step = FailureStep::Authentication;
        let what = "LOGIN";
        let tag = self.tags.next();
        let mut pending = format!("{tag} LOGIN").into_bytes();
        for arg in args {
            pending.push(b' ');
            if let Some(quoted) = quote(arg) {
                pending.extend_from_slice(&quoted);
                continue;
            }
            pending.extend_from_slice(format!("{{{}}}", arg.len()).as_bytes());
            self.wire.send_line(step, what, &pending).await?;
            pending.clear();
            let mut budget = sync::limits::Budget::default();
            loop {
                match read_response(&mut self.wire, step, what, &mut budget).await? {
                    ResponseLine::Continuation(_) => break,
                    ResponseLine::Tagged { tag: t, status } if t == tag => return Ok(status),
                    ResponseLine::Tagged { tag: t, .. } => return Err(unexpected_tag(&t, &tag)),
                    ResponseLine::Untagged(_) => {}
                }
            }
            pending.extend_from_slice(arg);
        }
        self.wire.send_line(step, what, &pending).await?;
        let reply = collect(&mut self.wire, &tag, step, what).await?;
        Ok(reply.done)
    }
}

impl ImapSession {
    /// Capabilities after authentication (what the session can use: IDLE, CONDSTORE, …).
    pub fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    pub fn has_capability(&self, name: &str) -> bool {
        has(&self.capabilities, name)
    }

    /// Runs one command (without tag) and returns all its answers, whatever the status.
    /// For commands whose answers fit in memory; never for a command carrying a secret.
    pub async fn command(&mut self, command: &str) -> Result<ImapReply> {
        let what = command.split(' ').next().unwrap_or(command).to_string();
        run(
            &mut self.wire,
            &mut self.tags,
            FailureStep::Protocol,
            &what,
            command,
        )
        .await
    }

    /// `EXAMINE mailbox`: opens it read-only (nothing changes on the server, not even
    /// `\Recent`). A refusal is a Permission failure (kind from its response code).
    pub async fn examine(&mut self, mailbox: &str) -> Result<MailboxInfo> {
        let name = quote(mailbox.as_bytes()).ok_or_else(|| {
            ConnectError::new(
                FailureStep::Permission,
                ErrorKind::Config,
                format!("the folder name {mailbox:?} cannot be sent as an IMAP quoted string"),
            )
        })?;
        let what = format!("EXAMINE {mailbox}");
        let command = format!("EXAMINE {}", String::from_utf8_lossy(&name));
        let reply = run(
            &mut self.wire,
            &mut self.tags,
            FailureStep::Permission,
            &what,
            &command,
        )
        .await?;
        if reply.done.status != Status::Ok {
            return Err(refusal(Phase::Examine, &what, &reply.done, None));
        }
        Ok(MailboxInfo::from_responses(&reply.untagged, &reply.done))
    }

    /// `LOGOUT`, then closes the connection. A server that closes without answering is
    /// fine.
    pub async fn logout(mut self) -> Result<()> {
        let tag = self.tags.next();
        let what = "LOGOUT";
        self.wire
            .send_line(
                FailureStep::Protocol,
                what,
                format!("{tag} LOGOUT").as_bytes(),
            )
            .await?;
        loop {
            match self
                .wire
                .read_line_opt(FailureStep::Protocol, what, MAX_LINE)
                .await
            {
                Ok(None) => break,
                Ok(Some(line)) => {
                    if let Ok(ResponseLine::Tagged { tag: t, .. }) = parse_line(&line)
                        && t == tag
                    {
                        break;
                    }
                }
                Err(e) if e.kind == ErrorKind::Transient => break,
                Err(e) => return Err(e),
            }
        }
        self.wire.shutdown().await;
        Ok(())
    }
}

async fn capability(wire: &mut Wire, tags: &mut Tags) -> Result<Vec<String>> {
    let reply = run(
        wire,
        tags,
        FailureStep::Protocol,
        "CAPABILITY",
        "CAPABILITY",
    )
    .await?;
    if reply.done.status != Status::Ok {
        return Err(refusal(Phase::Capability, "CAPABILITY", &reply.done, None));
    }
    let mut caps = Vec::new();
    for u in &reply.untagged {
        if let Untagged::Capability(c) = u {
            caps.extend(c.iter().cloned());
        }
    }
    if caps.is_empty()
        && let Some(c) = reply.done.capabilities()
    {
        caps = c;
    }
    if caps.is_empty() {
        return Err(ConnectError::protocol(
            "the server answered CAPABILITY without listing capabilities: check the server",
        ));
    }
    Ok(caps)
}

/// Sends `command` (never one carrying a secret) with a new tag and collects the answers
/// up to the tagged status.
async fn run(
    wire: &mut Wire,
    tags: &mut Tags,
    step: FailureStep,
    what: &str,
    command: &str,
) -> Result<ImapReply> {
    let tag = tags.next();
    wire.send_line(step, what, format!("{tag} {command}").as_bytes())
        .await?;
    collect(wire, &tag, step, what).await
}

async fn collect(wire: &mut Wire, tag: &str, step: FailureStep, what: &str) -> Result<ImapReply> {
    let mut untagged = Vec::new();
    let mut bye: Option<StatusResponse> = None;
    let mut budget = sync::limits::Budget::default();
    loop {
        let line = match read_response(wire, step, what, &mut budget).await {
            Ok(line) => line,
            Err(e) => {
                // A server that says BYE and hangs up: its reason is the better message.
                return Err(match bye {
                    Some(st) if e.kind == ErrorKind::Transient => {
                        refusal(Phase::Command, what, &st, None)
                    }
                    _ => e,
                });
            }
        };
        match line {
            ResponseLine::Tagged { tag: t, status } if t == tag => {
                return Ok(ImapReply {
                    untagged,
                    done: status,
                });
            }
            ResponseLine::Tagged { tag: t, .. } => return Err(unexpected_tag(&t, tag)),
            ResponseLine::Continuation(text) => {
                return Err(ConnectError::protocol(format!(
                    "the server asked for more input during {what} (\"+ {}\"): check the server",
                    shorten(&text, 100)
                )));
            }
            ResponseLine::Untagged(u) => {
                if let Untagged::Status(st) = &u
                    && st.status == Status::Bye
                {
                    bye = Some(st.clone());
                }
                untagged.push(u);
            }
        }
    }
}

/// Reads one response line with its literals and parses it, counting it against the
/// command's `budget` for untagged answers.
async fn read_response(
    wire: &mut Wire,
    step: FailureStep,
    what: &str,
    budget: &mut sync::limits::Budget,
) -> Result<ResponseLine> {
    let mut line = wire.read_line(step, what, MAX_LINE).await?;
    let mut total = line.len();
    while let Some(n) = literal_len(&line) {
        total += n;
        if n > MAX_LITERAL || total > MAX_LITERAL {
            return Err(ConnectError::protocol(format!(
                "the answer to {what} is larger than {} MiB",
                MAX_LITERAL >> 20
            )));
        }
        let literal = wire.read_exact(step, what, n).await?;
        line.extend_from_slice(b"\r\n");
        line.extend_from_slice(&literal);
        let rest = wire.read_line(step, what, MAX_LINE).await?;
        total += rest.len();
        line.extend_from_slice(&rest);
    }
    if !budget.spend(total) {
        return Err(ConnectError::protocol(format!(
            "the server sent more than the limit of {} MiB of untagged responses to one {what} \
             (a server does not send that much for one command): check the server",
            sync::limits::MAX_UNTAGGED_BYTES >> 20
        )));
    }
    parse_line(&line).map_err(|why| {
        ConnectError::protocol(format!(
            "garbled answer to {what} ({why}): the server does not speak IMAP as expected"
        ))
    })
}

/// The error for a refusal (NO/BAD/BYE) in `phase`, with the server's words and the fix.
fn refusal(phase: Phase, what: &str, st: &StatusResponse, login: Option<&Login>) -> ConnectError {
    let (step, kind) = classify(phase, st.status, st.code_name());
    let said = st.display();
    let said = match login {
        Some(l) => l.redact(&said),
        None => said,
    };
    let xoauth = matches!(login, Some(Login::XOAuth2 { .. }));
    let fix = match (kind, st.code_name()) {
        (_, Some("PRIVACYREQUIRED")) => "the server requires TLS: use implicit TLS or STARTTLS",
        (ErrorKind::Auth, Some("EXPIRED")) => "the password or token has expired: renew it",
        (ErrorKind::Auth, _) if xoauth => {
            "check the access token, its scopes and that it belongs to this user"
        }
        (ErrorKind::Auth, _) => "check the user name and password",
        (ErrorKind::Permission, _) if phase == Phase::Login => {
            "the account may not log in (disabled or not allowed): ask the mail administrator"
        }
        (ErrorKind::Permission, _) => "give the account access to this folder",
        (ErrorKind::Config, Some("NONEXISTENT")) => "check the folder name",
        (ErrorKind::Config, _) if phase == Phase::StartTls => {
            "enable STARTTLS on the server or use implicit TLS"
        }
        (ErrorKind::Config, _) => "check the server settings",
        (ErrorKind::Throttled, _) => {
            "the server is limiting this account's connections or requests: try again later \
             and lower the maximum concurrent connections"
        }
        (ErrorKind::Transient, _) => "the server is temporarily unavailable: try again later",
        (ErrorKind::Bug, _) => "serversync sent a command the server did not accept: report this",
        (ErrorKind::Permanent, _) => {
            "the server does not accept this as expected: check the server and protocol settings"
        }
    };
    ConnectError::new(
        step,
        kind,
        format!("{what} refused: server said \"{said}\": {fix}"),
    )
}

fn unexpected_tag(got: &str, want: &str) -> ConnectError {
    ConnectError::protocol(format!(
        "the server answered with tag {got} while {want} was pending: the server does not speak \
         IMAP as expected"
    ))
}

fn has<S: AsRef<str>>(capabilities: impl IntoIterator<Item = S>, name: &str) -> bool {
    capabilities
        .into_iter()
        .any(|c| c.as_ref().eq_ignore_ascii_case(name))
}

/// An IMAP quoted string, or `None` when the value needs a literal (CR, LF, NUL or 8-bit).
fn quote(value: &[u8]) -> Option<Vec<u8>> {
    if value
        .iter()
        .any(|&b| b == b'\r' || b == b'\n' || b == 0 || b >= 0x80)
    {
        return None;
    }
    let mut out = Vec::with_capacity(value.len() + 2);
    out.push(b'"');
    for &b in value {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
    Some(out)
}

#[derive(Debug, Default)]
struct Tags(u32);

impl Tags {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("A{:04}", self.0)
    }
}

/// Tests that `login` can connect, authenticate and open INBOX read-only:
/// DNS → TCP → TLS (implicit or STARTTLS) → CAPABILITY → LOGIN / AUTHENTICATE →
/// `EXAMINE INBOX` → LOGOUT. Nothing changes on the server.
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
    let conn = connect_logged(addr, opts, log).await?;
    *capabilities = conn.capabilities().to_vec();
    let mut session = if conn.is_preauthenticated() {
        log.note(
            FailureStep::Authentication,
            "login",
            "skipped: the server pre-authenticated the connection (PREAUTH)",
        );
        conn.login(login).await?
    } else {
        let method = conn.login_method(login);
        log.run(
            FailureStep::Authentication,
            format!("{method} as {}", login.username()),
            conn.login(login),
            |s| {
                format!(
                    "authenticated; capabilities: {}",
                    s.capabilities().join(" ")
                )
            },
        )
        .await?
    };
    *capabilities = session.capabilities().to_vec();
    log.run(
        FailureStep::Permission,
        "EXAMINE INBOX",
        session.examine("INBOX"),
        |info| {
            let mut parts = vec![format!("{} messages", info.exists.unwrap_or(0))];
            if let Some(v) = info.uid_validity {
                parts.push(format!("UIDVALIDITY {v}"));
            }
            if let Some(m) = info.highest_modseq {
                parts.push(format!("HIGHESTMODSEQ {m}"));
            }
            parts.push(
                if info.read_only {
                    "read-only"
                } else {
                    "read-write"
                }
                .into(),
            );
            parts.join(", ")
        },
    )
    .await?;
    log.run(FailureStep::Protocol, "LOGOUT", session.logout(), |_| {
        "logged out".into()
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_model::Secret;

    #[test]
    fn quoting() {
        assert_eq!(quote(b"a\"b\\c").unwrap(), b"\"a\\\"b\\\\c\"");
        assert_eq!(quote(b"INBOX").unwrap(), b"\"INBOX\"");
        assert!(quote("pässword".as_bytes()).is_none());
        assert!(quote(b"line\nbreak").is_none());
    }

    #[test]
    fn refusal_messages_name_the_fix_and_hide_the_password() {
        let login = Login::password("bob@example.test", Secret::new("s3cr3t-pw"));
        let st = StatusResponse {
            status: Status::No,
            code: Some(ResponseCode {
                name: "AUTHENTICATIONFAILED".into(),
                args: String::new(),
            }),
            text: "Authentication failed for s3cr3t-pw".into(),
        };
        let e = refusal(Phase::Login, "LOGIN as bob@example.test", &st, Some(&login));
        assert_eq!(
            (e.step, e.kind),
            (FailureStep::Authentication, ErrorKind::Auth)
        );
        assert!(!e.to_string().contains("s3cr3t-pw"), "{e}");
        assert!(
            e.to_string().contains("check the user name and password"),
            "{e}"
        );

        let bye = StatusResponse {
            status: Status::No,
            code: Some(ResponseCode {
                name: "LIMIT".into(),
                args: String::new(),
            }),
            text: "Too many connections".into(),
        };
        let e = refusal(Phase::Login, "LOGIN", &bye, None);
        assert_eq!(e.kind, ErrorKind::Throttled);
    }
}
