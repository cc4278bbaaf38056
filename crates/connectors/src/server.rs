//! [`Server`]: where a profile's connector connects — a mail server's address (IMAP, POP3,
//! SMTP), an Exchange endpoint (a fixed EWS URL, or one Autodiscover finds) or Microsoft
//! Graph (Exchange Online). Every role
//! ([`crate::source::MailSource`], [`crate::transport::MailTransport`],
//! [`crate::transport::SentFolder`], the probes) is opened with one, and the sign-in
//! ([`crate::Login`]) beside it.

use crate::ServerAddr;
use crate::ews::{Acting, EwsSettings, autodiscover};
pub use crate::graph::GraphTarget;
use crate::login::Login;
use serversync_model::profile::AuthProtocol;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    /// A mail server: host, port, TLS mode and pinned certificates.
    Mail(ServerAddr),
    /// Exchange Web Services.
    Ews(EwsTarget),
    /// Microsoft Graph, for one Exchange Online mailbox.
    Graph(GraphTarget),
}

/// An Exchange endpoint and how to act on the mailbox there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EwsTarget {
    /// The EWS URL; `None`: find it with Autodiscover.
    pub url: Option<String>,
    /// The mailbox's address (what Autodiscover looks up).
    pub email: String,
    pub protocol: AuthProtocol,
    pub acting: Acting,
    pub autodiscover: autodiscover::Options,
    /// SHA-256 fingerprints of certificates accepted as they are.
    pub pinned: Vec<String>,
}

impl EwsTarget {
    /// The client settings for `url` and `login`.
    pub fn settings(&self, url: &str, login: &Login) -> EwsSettings {
        EwsSettings {
            url: url.to_owned(),
            protocol: self.protocol,
            login: login.clone(),
            acting: self.acting.clone(),
            pinned: self.pinned.clone(),
        }
    }
}

impl Server {
    /// `host:port`, or the EWS URL (`autodiscover for <email>` until one is known), for
    /// reports.
    pub fn describe(&self) -> String {
        match self {
            Server::Mail(a) => format!("{}:{}", a.host, a.port),
            Server::Ews(t) => t
                .url
                .clone()
                .unwrap_or_else(|| format!("autodiscover for {}", t.email)),
            Server::Graph(t) => format!("{} for {}", t.graph_url, t.mailbox),
        }
    }
}
