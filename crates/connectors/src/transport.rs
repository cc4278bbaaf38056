//! The mail transport and sent-folder connector roles: what the engine sends mail through
//! and where it keeps the copy of what it sent, whatever the protocol behind them.
//!
//! Each role is a closed enum with one variant per connector and one `match` per method, so
//! the engine names no protocol client. Today:
//!
//! - [`MailTransport`]: SMTP ([`smtp::SmtpConnection`]). One [`MailTransport::submit`] is
//!   one mail transaction (the envelope pipelined when the server offers it, then the
//!   message); its [`Submission`] says what became of the message and whether the
//!   connection carries the next one.
//! - [`SentFolder`]: for SMTP the copy of sent mail is kept on the incoming server, over IMAP
//!   ([`imap::sync::SyncSession`]): `APPEND` with `\Seen`, and `UID SEARCH HEADER Message-ID`
//!   to find a message a worker may have sent before it died.
//!
//! - Exchange (EWS, [`EwsClient`]): `CreateItem` with the MIME content and
//!   `MessageDisposition=SendAndSaveCopy`, so the server keeps the copy in Sent Items itself;
//!   the Sent folder role finds a Message-ID there with `FindItem` on `InternetMessageId`.
//!
//! - Exchange Online (Microsoft Graph, [`GraphClient`]): `sendMail` with the MIME message,
//!   which Exchange Online saves in Sent Items; the Sent folder role finds a Message-ID there
//!   by `internetMessageId`.

use serversync_model::profile::{IncomingProtocol, OutgoingProtocol};
use serversync_model::{ErrorKind, FailureStep};

use crate::error::ConnectError;
use crate::ews::ops::{self, Disposition, FolderRef};
use crate::ews::{self, EwsClient};
use crate::graph::{GraphClient, SendOutcome};
use crate::imap::sync::SyncSession;
use crate::login::Login;
use crate::net::ConnectOptions;
use crate::server::Server;
use crate::smtp;
use std::time::Duration;

/// Waits for a throttled send at most this many times before handing the email back to be
/// sent later.
const THROTTLED_WAITS: u32 = 3;
/// The longest single wait for a throttled send.
const MAX_THROTTLED_WAIT: Duration = Duration::from_secs(60);

fn wrong_server(what: &str) -> ConnectError {
    ConnectError::new(
        FailureStep::Protocol,
        ErrorKind::Config,
        format!("the profile's {what} server is not of its protocol's kind: check the profile"),
    )
}

fn not_available(what: &str) -> ConnectError {
    ConnectError::new(
        FailureStep::Protocol,
        ErrorKind::Config,
        format!("the {what} connector is not available in this version yet"),
    )
}

/// Where a mail transport sends mail: connected and signed in.
// One per connection, moved rarely: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum MailTransport {
    Smtp(smtp::SmtpConnection),
    Ews(EwsTransport),
    Graph(GraphClient),
}

/// Sending through Exchange Web Services.
#[derive(Debug)]
pub struct EwsTransport {
    client: EwsClient,
    /// Throttled sends waited out since the last [`MailTransport::take_waits`].
    waits: Vec<String>,
}

/// What the server did with a submitted message (see [`MailTransport::submit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submission {
    /// Accepted for delivery; the connection carries the next message.
    Sent,
    /// Refused (a recipient, or the message) before it was accepted: nothing was delivered.
    Refused {
        /// `{what} refused: server said "{reply}"`, `what` being `RCPT TO:<address>` or
        /// `the message`.
        reason: String,
        /// What was refused.
        at: RefusedAt,
        /// The server's reply as it said it (code, enhanced status code, text).
        reply: String,
        /// A passing refusal (4xx): the same message may be accepted later.
        transient: bool,
        /// The connection can carry the next message (else it was closed).
        reusable: bool,
    },
    /// The connection broke, or the server answered unexpectedly, after the message was
    /// handed over: it may have been delivered. The connection is not used again.
    Unknown { reason: String },
}

/// What a server refused in a [`Submission::Refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedAt {
    /// The recipient at this index among those given.
    Recipient(usize),
    /// Taking a message at all (SMTP `DATA`), after every recipient was accepted.
    Data,
    /// The message it was given.
    Message,
}

impl MailTransport {
    /// Whether `protocol` has a mail transport connector in this version.
    pub fn available(protocol: OutgoingProtocol) -> bool {
        match protocol {
            OutgoingProtocol::Smtp | OutgoingProtocol::Ews | OutgoingProtocol::Graph => true,
        }
    }

    /// Connects to `server` and signs in with `login` when one is given (Exchange signs in
    /// with its first request).
    pub async fn connect(
        protocol: OutgoingProtocol,
        server: &Server,
        login: Option<&Login>,
        opts: &ConnectOptions,
    ) -> Result<MailTransport, ConnectError> {
        match (protocol, server) {
            (OutgoingProtocol::Smtp, Server::Mail(addr)) => {
                let mut c = smtp::connect(addr, opts).await?;
                if let Some(login) = login {
                    c.login(login).await?;
                }
                Ok(MailTransport::Smtp(c))
            }
            (OutgoingProtocol::Ews, Server::Ews(t)) => {
                let login = login.ok_or_else(|| {
                    ConnectError::new(
                        FailureStep::Authentication,
                        ErrorKind::Config,
                        "Exchange needs credentials to send: enter them in the profile or the mailbox",
                    )
                })?;
                Ok(MailTransport::Ews(EwsTransport {
                    client: ews::open(t, login, opts).await?,
                    waits: Vec::new(),
                }))
            }
            (OutgoingProtocol::Graph, Server::Graph(t)) => {
                let login = login.ok_or_else(|| {
                    ConnectError::new(
                        FailureStep::Authentication,
                        ErrorKind::Config,
                        "Microsoft Graph needs the application's token to send",
                    )
                })?;
                Ok(MailTransport::Graph(
                    GraphClient::connect(t, login, opts, &mut crate::StepLog::new()).await?,
                ))
            }
            _ => Err(wrong_server("outgoing")),
        }
    }

    /// Submits one message from `from` to `rcpts`. `Err` when the sender is refused or the
    /// connection fails before any recipient was given: the problem is the mailbox's, not
    /// this message's, and the connection is not used again.
    pub async fn submit(
        &mut self,
        from: &str,
        rcpts: &[String],
        message: &[u8],
    ) -> Result<Submission, ConnectError> {
        match self {
            MailTransport::Smtp(c) => smtp_submit(c, from, rcpts, message).await,
            MailTransport::Ews(t) => ews_submit(t, rcpts, message).await,
            MailTransport::Graph(c) => graph_submit(c, rcpts, message).await,
        }
    }

    /// Whether the server keeps a copy of what is sent itself (Exchange does); when it does
    /// not (SMTP), the copy is saved to a [`SentFolder`].
    pub fn keeps_sent_copy(&self) -> bool {
        match self {
            MailTransport::Smtp(_) => false,
            MailTransport::Ews(_) | MailTransport::Graph(_) => true,
        }
    }

    /// The throttling the last submissions waited out (`waited 5 s: Exchange asked…`), for
    /// the email's trace; emptied by the call.
    pub fn take_waits(&mut self) -> Vec<String> {
        match self {
            MailTransport::Smtp(_) => Vec::new(),
            MailTransport::Ews(t) => std::mem::take(&mut t.waits),
            MailTransport::Graph(c) => c.take_waits(),
        }
    }

    /// Says goodbye (SMTP `QUIT`) and closes; errors are ignored.
    pub async fn close(self) {
        match self {
            MailTransport::Smtp(c) => {
                let _ = c.quit().await;
            }
            MailTransport::Ews(_) | MailTransport::Graph(_) => {}
        }
    }
}

/// One message through Microsoft Graph: `sendMail` with the MIME message (a `Bcc` field added
/// for envelope recipients its header does not name), saved in Sent Items by Exchange Online.
/// Throttling is waited out by the client, and its waits go into the trace.
async fn graph_submit(
    c: &mut GraphClient,
    rcpts: &[String],
    message: &[u8],
) -> Result<Submission, ConnectError> {
    match c.send_mime(&with_bcc(message, rcpts)).await {
        SendOutcome::Sent => Ok(Submission::Sent),
        SendOutcome::NotSent(e) => Err(e),
        SendOutcome::Unknown(e) => Ok(Submission::Unknown {
            reason: e.to_string(),
        }),
        SendOutcome::Refused(e)
            if matches!(
                e.step,
                FailureStep::Authentication | FailureStep::Permission
            ) || matches!(e.kind, ErrorKind::Auth | ErrorKind::Config) =>
        {
            // The mailbox's problem (token, consent, mailbox gone), not this email's.
            Err(e)
        }
        SendOutcome::Refused(e) => Ok(Submission::Refused {
            reason: format!(
                "the message refused: Microsoft Graph said \"{}\"",
                e.message
            ),
            at: RefusedAt::Message,
            reply: e.message.clone(),
            transient: e.is_transient(),
            reusable: true,
        }),
    }
}

/// One message through Exchange: `CreateItem` with `SendAndSaveCopy` into Sent Items. The
/// recipients are the message's own (To, Cc, and a `Bcc` field added for envelope recipients
/// the header does not name; Exchange sends Bcc without showing it). Throttling is waited out
/// up to [`THROTTLED_WAITS`] times.
async fn ews_submit(
    t: &mut EwsTransport,
    rcpts: &[String],
    message: &[u8],
) -> Result<Submission, ConnectError> {
    let mime = with_bcc(message, rcpts);
    let body = ops::create_item_body(
        &mime,
        Disposition::SendAndSaveCopy,
        &FolderRef::SENT_ITEMS,
        t.client.acting(),
    );
    let mut waited = 0;
    loop {
        let refusal = match t.client.send_operation("CreateItem", &body).await {
            ews::Sent::Answered(Ok(answer)) => {
                match answer
                    .messages()
                    .first()
                    .map(|m| ews::check(m, "CreateItem"))
                {
                    Some(Ok(())) => return Ok(Submission::Sent),
                    Some(Err(e)) => e,
                    None => {
                        return Ok(Submission::Unknown {
                            reason: "the CreateItem answer has no response message".into(),
                        });
                    }
                }
            }
            ews::Sent::Answered(Err(e)) => e,
            ews::Sent::NotSent(e) => return Err(e),
            ews::Sent::NoAnswer(e) => {
                return Ok(Submission::Unknown {
                    reason: e.to_string(),
                });
            }
        };
        if refusal.kind == ErrorKind::Throttled && waited < THROTTLED_WAITS {
            waited += 1;
            let wait = refusal
                .retry_after()
                .unwrap_or(Duration::from_secs(5))
                .min(MAX_THROTTLED_WAIT);
            t.waits.push(format!(
                "throttled, waited {} ms as Exchange asked: {}",
                wait.as_millis(),
                refusal.message
            ));
            tokio::time::sleep(wait).await;
            continue;
        }
        if matches!(
            refusal.step,
            FailureStep::Authentication | FailureStep::Permission
        ) || matches!(refusal.kind, ErrorKind::Auth | ErrorKind::Config)
        {
            // The mailbox's problem (sign-in, rights, mailbox gone), not this email's.
            return Err(refusal);
        }
        return Ok(Submission::Refused {
            reason: format!("the message refused: Exchange said \"{}\"", refusal.message),
            at: RefusedAt::Message,
            reply: refusal.message.clone(),
            transient: refusal.is_transient(),
            reusable: true,
        });
    }
}

/// `message` with a `Bcc` field naming the `rcpts` its To, Cc and Bcc fields do not.
fn with_bcc(message: &[u8], rcpts: &[String]) -> Vec<u8> {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| message.windows(2).position(|w| w == b"\n\n"))
        .unwrap_or(message.len());
    let header = String::from_utf8_lossy(&message[..end]).to_ascii_lowercase();
    let mut named = String::new();
    let mut in_field = false;
    for line in header.lines() {
        if line.starts_with([' ', '\t']) {
            if in_field {
                named.push_str(line);
            }
            continue;
        }
        in_field = ["to:", "cc:", "bcc:"].iter().any(|f| line.starts_with(f));
        if in_field {
            named.push(' ');
            named.push_str(line);
        }
    }
    let hidden: Vec<&str> = rcpts
        .iter()
        .map(String::as_str)
        .filter(|r| !named.contains(&r.to_ascii_lowercase()))
        .collect();
    if hidden.is_empty() {
        return message.to_vec();
    }
    let mut out = format!("Bcc: {}\r\n", hidden.join(", ")).into_bytes();
    out.extend_from_slice(message);
    out
}

fn smtp_refused(what: &str, at: RefusedAt, r: &smtp::Reply, reusable: bool) -> Submission {
    let reply = r.display();
    Submission::Refused {
        reason: format!("{what} refused: server said \"{reply}\""),
        at,
        reply,
        transient: r.is_transient_negative(),
        reusable,
    }
}

/// One SMTP mail transaction: MAIL FROM, RCPT TO and DATA in one round trip when the server
/// pipelines, then the message.
async fn smtp_submit(
    c: &mut smtp::SmtpConnection,
    from: &str,
    rcpts: &[String],
    message: &[u8],
) -> Result<Submission, ConnectError> {
    match c.envelope(from, rcpts).await? {
        smtp::Envelope::Ready => {}
        smtp::Envelope::RecipientRefused {
            index,
            reply,
            reusable,
        } => {
            return Ok(smtp_refused(
                &format!("RCPT TO:<{}>", rcpts[index]),
                RefusedAt::Recipient(index),
                &reply,
                reusable,
            ));
        }
        smtp::Envelope::DataRefused(reply) => {
            return Ok(smtp_refused("the message", RefusedAt::Data, &reply, true));
        }
    }
    Ok(match c.message(message).await {
        Ok(reply) if reply.code == 250 => Submission::Sent,
        Ok(reply) if reply.is_positive() => Submission::Unknown {
            reason: format!("unexpected reply {}", reply.display()),
        },
        Ok(reply) => smtp_refused("the message", RefusedAt::Message, &reply, true),
        Err(e) => Submission::Unknown {
            reason: e.to_string(),
        },
    })
}

/// The folder where the copy of sent mail is kept (for SMTP, on the incoming IMAP server),
/// connected and signed in.
#[derive(Debug)]
pub enum SentFolder {
    Imap(ImapSentFolder),
    /// Exchange's Sent Items.
    Ews(EwsClient),
    /// Exchange Online's Sent Items, over Microsoft Graph.
    Graph(GraphClient),
}

/// The Sent folder over IMAP.
#[derive(Debug)]
pub struct ImapSentFolder {
    session: SyncSession,
    folder: String,
    /// `CREATE` was sent (when the folder was missing) on this connection.
    created: bool,
}

impl SentFolder {
    /// Whether a mailbox whose incoming server speaks `protocol` has a Sent folder connector.
    pub fn available(protocol: IncomingProtocol) -> bool {
        match protocol {
            IncomingProtocol::Imap | IncomingProtocol::Ews | IncomingProtocol::Graph => true,
            IncomingProtocol::Pop3 => false,
        }
    }

    /// Connects to `addr` and signs in with `login`, for the folder named `folder`. Nothing
    /// is changed on the server until the first [`SentFolder::save`], which creates the folder
    /// when it is missing; [`SentFolder::contains`] only reads.
    /// Exchange keeps its own Sent Items, whatever `folder` says.
    pub async fn open(
        protocol: IncomingProtocol,
        server: &Server,
        login: &Login,
        opts: &ConnectOptions,
        folder: &str,
    ) -> Result<SentFolder, ConnectError> {
        match (protocol, server) {
            (IncomingProtocol::Imap, Server::Mail(addr)) => Ok(SentFolder::Imap(ImapSentFolder {
                session: SyncSession::connect(addr, login, opts).await?,
                folder: folder.to_owned(),
                created: false,
            })),
            (IncomingProtocol::Ews, Server::Ews(t)) => {
                Ok(SentFolder::Ews(ews::open(t, login, opts).await?))
            }
            (IncomingProtocol::Pop3, _) => Err(not_available("POP3 Sent folder")),
            (IncomingProtocol::Graph, Server::Graph(t)) => Ok(SentFolder::Graph(
                GraphClient::connect(t, login, opts, &mut crate::StepLog::new()).await?,
            )),
            _ => Err(wrong_server("incoming")),
        }
    }

    /// Saves the copy of a sent message, marked as read (IMAP `APPEND` with `\Seen`), creating
    /// the folder first when it is missing.
    pub async fn save(&mut self, message: &[u8]) -> Result<(), ConnectError> {
        match self {
            SentFolder::Imap(s) => {
                if !s.created {
                    s.session.create_folder_if_missing(&s.folder).await?;
                    s.created = true;
                }
                s.session
                    .append(&s.folder, &["\\Seen"], None, message)
                    .await?;
                Ok(())
            }
            SentFolder::Ews(c) => {
                ops::create_item(c, message, Disposition::SaveOnly, &FolderRef::SENT_ITEMS).await?;
                Ok(())
            }
            // sendMail saved it already; Graph has no way to add a sent message as such.
            SentFolder::Graph(_) => Ok(()),
        }
    }

    /// Whether [`SentFolder::save_all`] stores these messages in one command: over IMAP
    /// when the server offers MULTIAPPEND (RFC 3502) with non-synchronizing literals and
    /// they are at most 8 MiB together (a server limits what one command holds).
    pub fn can_save_all(&self, messages: &[&[u8]]) -> bool {
        match self {
            SentFolder::Imap(s) => {
                messages.iter().map(|m| m.len()).sum::<usize>() <= 8 << 20
                    && s.session.can_append_all(messages)
            }
            SentFolder::Ews(_) | SentFolder::Graph(_) => false,
        }
    }

    /// Saves the copies of several sent messages, marked as read, like [`SentFolder::save`]
    /// for each: in one MULTIAPPEND (one round trip; all are stored or none) when
    /// [`SentFolder::can_save_all`], else one after another.
    pub async fn save_all(&mut self, messages: &[&[u8]]) -> Result<(), ConnectError> {
        if let SentFolder::Imap(s) = self
            && messages.len() > 1
            && s.session.can_append_all(messages)
        {
            if !s.created {
                s.session.create_folder_if_missing(&s.folder).await?;
                s.created = true;
            }
            return s.session.append_all(&s.folder, &["\\Seen"], messages).await;
        }
        for m in messages {
            self.save(m).await?;
        }
        Ok(())
    }

    /// Whether a message with this Message-ID (without angle brackets) is in the folder
    /// (IMAP `EXAMINE`, read-only, and `UID SEARCH HEADER Message-ID`).
    pub async fn contains(&mut self, message_id: &str) -> Result<bool, ConnectError> {
        match self {
            SentFolder::Imap(s) => {
                s.session.examine(&s.folder, false).await?;
                let found = s
                    .session
                    .uid_search_header("Message-ID", message_id)
                    .await?;
                Ok(!found.is_empty())
            }
            SentFolder::Ews(c) => {
                let found =
                    ops::find_by_message_id(c, &FolderRef::SENT_ITEMS, &format!("<{message_id}>"))
                        .await?;
                Ok(!found.is_empty())
            }
            SentFolder::Graph(c) => c.sent_contains(&format!("<{message_id}>")).await,
        }
    }

    /// Signs out (IMAP `LOGOUT`) and closes; errors are ignored.
    pub async fn close(self) {
        match self {
            SentFolder::Imap(s) => {
                let _ = s.session.logout().await;
            }
            SentFolder::Ews(_) | SentFolder::Graph(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protocol_but_pop3_has_its_roles() {
        assert!(MailTransport::available(OutgoingProtocol::Smtp));
        assert!(MailTransport::available(OutgoingProtocol::Ews));
        assert!(MailTransport::available(OutgoingProtocol::Graph));
        assert!(SentFolder::available(IncomingProtocol::Graph));
        assert!(SentFolder::available(IncomingProtocol::Imap));
        assert!(!SentFolder::available(IncomingProtocol::Pop3));
        assert!(SentFolder::available(IncomingProtocol::Ews));
    }

    #[test]
    fn envelope_recipients_missing_from_the_header_become_bcc() {
        let msg = b"From: a@x\r\nTo: Bob <bob@x>,\r\n Carol <carol@x>\r\nSubject: hi\r\n\r\nbody to: dave@x\r\n";
        let rcpts = vec![
            "bob@x".to_owned(),
            "Carol@X".to_owned(),
            "dave@x".to_owned(),
        ];
        let out = with_bcc(msg, &rcpts);
        assert!(
            out.starts_with(b"Bcc: dave@x\r\nFrom: a@x"),
            "{}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(with_bcc(msg, &rcpts[..2]), msg.to_vec());
    }

    #[tokio::test]
    async fn a_server_of_another_kind_is_refused_before_connecting() {
        let addr = Server::Mail(crate::ServerAddr::new(
            "mail.example.com",
            587,
            crate::TlsMode::StartTls,
        ));
        let opts =
            ConnectOptions::new(std::sync::Arc::new(crate::TlsTrust::system_only().unwrap()));
        let e = MailTransport::connect(OutgoingProtocol::Graph, &addr, None, &opts)
            .await
            .unwrap_err();
        assert_eq!((e.step, e.kind), (FailureStep::Protocol, ErrorKind::Config));
        assert!(e.message.contains("not of its protocol's kind"), "{e}");
    }

    #[test]
    fn a_refusal_quotes_the_server() {
        let r = smtp::Reply {
            code: 450,
            enhanced: Some("4.2.0".into()),
            lines: vec!["4.2.0 mailbox busy".into()],
        };
        let Submission::Refused {
            reason, transient, ..
        } = smtp_refused("the message", RefusedAt::Message, &r, true)
        else {
            panic!("not a refusal")
        };
        assert!(transient);
        assert_eq!(
            reason,
            format!("the message refused: server said \"{}\"", r.display())
        );
    }
}
