//! What a connectivity probe reports: every step it ran, in order, with its outcome and
//! duration, the server's capabilities, and the failure (if any) classified by step; and
//! [`incoming`] and [`outgoing`], which probe a profile's server by its protocol.

use std::future::Future;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serversync_model::FailureStep;
use serversync_model::certificate::{CertificateInfo, normalize_sha256};
use serversync_model::profile::{IncomingProtocol, OutgoingProtocol};

use crate::error::ConnectError;
use crate::ews;
use crate::login::Login;
use crate::net::ConnectOptions;
use crate::server::Server;

/// Probes the incoming server (the mail source) of `protocol`: [`crate::imap::probe`],
/// [`crate::pop3::probe`] or [`crate::ews::probe::probe`]. `None` when the protocol has no
/// connector in this version, or the server is not of its kind.
pub async fn incoming(
    protocol: IncomingProtocol,
    server: &Server,
    login: &Login,
    opts: &ConnectOptions,
) -> Option<ProbeReport> {
    match (protocol, server) {
        (IncomingProtocol::Imap, Server::Mail(addr)) => {
            Some(crate::imap::probe(addr, login, opts).await)
        }
        (IncomingProtocol::Pop3, Server::Mail(addr)) => {
            Some(crate::pop3::probe(addr, login, opts).await)
        }
        (IncomingProtocol::Ews, Server::Ews(t)) => {
            Some(crate::ews::probe::probe(t, login, opts, ews::probe::Direction::Incoming).await)
        }
        (IncomingProtocol::Graph, Server::Graph(t)) => Some(
            crate::graph::probe::probe(t, login, opts, crate::graph::probe::Direction::Incoming)
                .await,
        ),
        _ => None,
    }
}

/// Probes the outgoing server (the mail transport) of `protocol` for sending as `sender`:
/// [`crate::smtp::probe`] or [`crate::ews::probe::probe`]. `None` when the protocol has no
/// connector in this version, or the server is not of its kind.
pub async fn outgoing(
    protocol: OutgoingProtocol,
    server: &Server,
    login: Option<&Login>,
    sender: &str,
    opts: &ConnectOptions,
) -> Option<ProbeReport> {
    match (protocol, server) {
        (OutgoingProtocol::Smtp, Server::Mail(addr)) => {
            Some(crate::smtp::probe(addr, login, sender, opts).await)
        }
        (OutgoingProtocol::Ews, Server::Ews(t)) => Some(match login {
            Some(login) => {
                crate::ews::probe::probe(t, login, opts, ews::probe::Direction::Outgoing).await
            }
            None => StepLog::new().finish(
                Vec::new(),
                Err(ConnectError::new(
                    FailureStep::Authentication,
                    serversync_model::ErrorKind::Config,
                    "Exchange needs credentials to send: enter them in the profile or the mailbox",
                )),
            ),
        }),
        (OutgoingProtocol::Graph, Server::Graph(t)) => Some(match login {
            Some(login) => {
                crate::graph::probe::probe(t, login, opts, crate::graph::probe::Direction::Outgoing)
                    .await
            }
            None => StepLog::new().finish(
                Vec::new(),
                Err(ConnectError::new(
                    FailureStep::Authentication,
                    serversync_model::ErrorKind::Config,
                    "Microsoft Graph needs the application's token to send",
                )),
            ),
        }),
        _ => None,
    }
}

/// One step of a probe (`resolve imap.example.com`, `TLS handshake`, `EXAMINE INBOX`, …).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// The class of step; on failure, the step the error was classified as.
    pub step: FailureStep,
    /// What was done, in protocol terms (never contains a secret).
    pub action: String,
    pub ok: bool,
    /// On success what was found (addresses, TLS version, counts…); on failure the error
    /// message.
    pub detail: String,
    pub duration_ms: u64,
}

/// The result of `imap::probe`, `pop3::probe` or `smtp::probe`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub steps: Vec<StepOutcome>,
    /// The server's capabilities as it announced them after authentication where it did
    /// (IMAP `CAPABILITY`, POP3 `CAPA`, SMTP `EHLO` keywords with their parameters).
    pub capabilities: Vec<String>,
    /// The first failure; `None` when every step succeeded.
    pub failure: Option<ConnectError>,
    /// The certificate the server presented (accepted, or refused: then also in `failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateInfo>,
    /// The certificate was accepted because the profile pins its fingerprint.
    #[serde(default)]
    pub certificate_pinned: bool,
    /// The endpoint reached, where the server was found rather than configured (the EWS
    /// URL Autodiscover found, or the one configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
}

impl ProbeReport {
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The step that failed, if one did.
    pub fn failed_step(&self) -> Option<FailureStep> {
        self.failure.as_ref().map(|f| f.step)
    }

    /// Whether the server announced a capability (case-insensitive; `SIZE` matches
    /// `SIZE 52428800`, `AUTH=PLAIN` matches exactly).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| {
            c.eq_ignore_ascii_case(name)
                || c.split_whitespace()
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case(name))
        })
    }
}

/// Records steps as they run. The connection functions take one so a probe can show the
/// steps they perform inside (DNS, TCP, TLS, greeting, STARTTLS…); callers that do not need
/// them pass a fresh `StepLog` and drop it.
#[derive(Debug, Default)]
pub struct StepLog {
    steps: Vec<StepOutcome>,
    certificate: Option<CertificateInfo>,
    certificate_pinned: bool,
}

impl StepLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs one step, timing it; `detail` describes a success.
    pub async fn run<T, F>(
        &mut self,
        step: FailureStep,
        action: impl Into<String>,
        fut: F,
        detail: impl FnOnce(&T) -> String,
    ) -> Result<T, ConnectError>
    where
        F: Future<Output = Result<T, ConnectError>>,
    {
        let action = action.into();
        let started = Instant::now();
        let result = fut.await;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (step, ok, detail) = match &result {
            Ok(value) => (step, true, detail(value)),
            Err(e) => (e.step, false, e.message.clone()),
        };
        tracing::debug!(?step, %action, ok, duration_ms, %detail, "connection step");
        self.steps.push(StepOutcome {
            step,
            action,
            ok,
            detail,
            duration_ms,
        });
        result
    }

    /// Records a step that needed no work (e.g. login skipped on a pre-authenticated IMAP
    /// connection).
    pub fn note(
        &mut self,
        step: FailureStep,
        action: impl Into<String>,
        detail: impl Into<String>,
    ) {
        self.steps.push(StepOutcome {
            step,
            action: action.into(),
            ok: true,
            detail: detail.into(),
            duration_ms: 0,
        });
    }

    pub fn steps(&self) -> &[StepOutcome] {
        &self.steps
    }

    /// Records the certificate a server presented in a successful handshake; `pins` are the
    /// fingerprints the connection accepted as they are.
    pub(crate) fn presented(&mut self, cert: Option<CertificateInfo>, pins: &[String]) {
        if let Some(c) = cert {
            self.certificate_pinned = pins
                .iter()
                .any(|p| normalize_sha256(p).as_deref() == Some(c.sha256.as_str()));
            self.certificate = Some(c);
        }
    }

    pub(crate) fn finish(
        self,
        capabilities: Vec<String>,
        result: Result<(), ConnectError>,
    ) -> ProbeReport {
        let failure = result.err();
        let certificate = self.certificate.or_else(|| {
            failure
                .as_ref()
                .and_then(|f| f.certificate.as_deref().cloned())
        });
        ProbeReport {
            steps: self.steps,
            capabilities,
            failure,
            certificate,
            certificate_pinned: self.certificate_pinned,
            endpoint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_model::ErrorKind;

    #[tokio::test]
    async fn records_success_and_failure_with_the_error_step() {
        let mut log = StepLog::new();
        let ok: Result<u32, ConnectError> = log
            .run(FailureStep::Protocol, "CAPA", async { Ok(3) }, |n| {
                format!("{n} caps")
            })
            .await;
        assert_eq!(ok.unwrap(), 3);
        let err: Result<(), ConnectError> = log
            .run(
                FailureStep::Authentication,
                "LOGIN",
                async {
                    Err(ConnectError::new(
                        FailureStep::Tls,
                        ErrorKind::Config,
                        "needs TLS",
                    ))
                },
                |_| String::new(),
            )
            .await;
        let report = log.finish(vec!["IDLE".into(), "SIZE 100".into()], err);
        assert!(!report.is_ok());
        assert_eq!(report.failed_step(), Some(FailureStep::Tls));
        assert_eq!(report.steps.len(), 2);
        assert!(report.steps[0].ok && report.steps[0].detail == "3 caps");
        assert_eq!(report.steps[1].step, FailureStep::Tls);
        assert!(!report.steps[1].ok);
        assert!(report.has_capability("idle") && report.has_capability("SIZE"));
        assert!(!report.has_capability("CONDSTORE"));
    }
}
