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
//! Exchange (EWS) and Microsoft Graph have no connector in this version:
//! [`MailTransport::available`] and [`SentFolder::available`] say so before connecting.

use serversync_model::profile::{IncomingProtocol, OutgoingProtocol};
use serversync_model::{ErrorKind, FailureStep};

use crate::error::ConnectError;
use crate::imap::sync::SyncSession;
use crate::login::Login;
use crate::net::{ConnectOptions, ServerAddr};
use crate::smtp;

fn not_available(what: &str) -> ConnectError {
    ConnectError::new(
        FailureStep::Protocol,
        ErrorKind::Config,
        format!("the {what} connector is not available in this version yet"),
    )
}

/// Where a mail transport sends mail: connected and signed in.
#[derive(Debug)]
pub enum MailTransport {
    Smtp(smtp::SmtpConnection),
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
            OutgoingProtocol::Smtp => true,
            OutgoingProtocol::Ews | OutgoingProtocol::Graph => false,
        }
    }

    /// Connects to `addr` and signs in with `login` when one is given.
    pub async fn connect(
        protocol: OutgoingProtocol,
        addr: &ServerAddr,
        login: Option<&Login>,
        opts: &ConnectOptions,
    ) -> Result<MailTransport, ConnectError> {
        match protocol {
            OutgoingProtocol::Smtp => {
                let mut c = smtp::connect(addr, opts).await?;
                if let Some(login) = login {
                    c.login(login).await?;
                }
                Ok(MailTransport::Smtp(c))
            }
            OutgoingProtocol::Ews => Err(not_available("Exchange (EWS)")),
            OutgoingProtocol::Graph => Err(not_available("Microsoft Graph")),
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
        }
    }

    /// Whether the server keeps a copy of what is sent itself (Exchange does); when it does
    /// not (SMTP), the copy is saved to a [`SentFolder`].
    pub fn keeps_sent_copy(&self) -> bool {
        match self {
            MailTransport::Smtp(_) => false,
        }
    }

    /// Says goodbye (SMTP `QUIT`) and closes; errors are ignored.
    pub async fn close(self) {
        match self {
            MailTransport::Smtp(c) => {
                let _ = c.quit().await;
            }
        }
    }
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
            IncomingProtocol::Imap => true,
            IncomingProtocol::Pop3 | IncomingProtocol::Ews | IncomingProtocol::Graph => false,
        }
    }

    /// Connects to `addr` and signs in with `login`, for the folder named `folder`. Nothing
    /// is changed on the server until the first [`SentFolder::save`], which creates the folder
    /// when it is missing; [`SentFolder::contains`] only reads.
    pub async fn open(
        protocol: IncomingProtocol,
        addr: &ServerAddr,
        login: &Login,
        opts: &ConnectOptions,
        folder: &str,
    ) -> Result<SentFolder, ConnectError> {
        match protocol {
            IncomingProtocol::Imap => Ok(SentFolder::Imap(ImapSentFolder {
                session: SyncSession::connect(addr, login, opts).await?,
                folder: folder.to_owned(),
                created: false,
            })),
            IncomingProtocol::Pop3 => Err(not_available("POP3 Sent folder")),
            IncomingProtocol::Ews => Err(not_available("Exchange (EWS)")),
            IncomingProtocol::Graph => Err(not_available("Microsoft Graph")),
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
        }
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
        }
    }

    /// Signs out (IMAP `LOGOUT`) and closes; errors are ignored.
    pub async fn close(self) {
        match self {
            SentFolder::Imap(s) => {
                let _ = s.session.logout().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_smtp_and_imap_are_available() {
        assert!(MailTransport::available(OutgoingProtocol::Smtp));
        assert!(!MailTransport::available(OutgoingProtocol::Ews));
        assert!(!MailTransport::available(OutgoingProtocol::Graph));
        assert!(SentFolder::available(IncomingProtocol::Imap));
        assert!(!SentFolder::available(IncomingProtocol::Pop3));
        assert!(!SentFolder::available(IncomingProtocol::Ews));
    }

    #[tokio::test]
    async fn exchange_is_refused_before_connecting() {
        let addr = ServerAddr::new("mail.example.com", 587, crate::TlsMode::StartTls);
        let opts =
            ConnectOptions::new(std::sync::Arc::new(crate::TlsTrust::system_only().unwrap()));
        let e = MailTransport::connect(OutgoingProtocol::Graph, &addr, None, &opts)
            .await
            .unwrap_err();
        assert_eq!((e.step, e.kind), (FailureStep::Protocol, ErrorKind::Config));
        assert!(e.message.contains("not available in this version yet"));
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
