//! [`ConnectError`]: every failure of talking to a mail server, with the step that failed,
//! the kind the retry policy reads, and a one-line message that names the fix.
//!
//! The helpers here classify what the network and TLS layers report; each protocol module
//! classifies its own server answers (IMAP response codes, POP3 RESP-CODES, SMTP replies).

use std::io;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serversync_model::certificate::CertificateInfo;
use serversync_model::{ErrorKind, FailureStep};

/// A failure of one step of talking to a mail server.
///
/// `Display` gives one line: the step's label, what happened and what to do about it, e.g.
/// `TLS handshake / certificate: certificate for localhost is not trusted (unknown issuer):
/// install the server's CA or fix its certificate`. Messages never contain a password or a
/// token: server answers quoted in them are passed through [`crate::Login::redact`] first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{step}: {message}")]
pub struct ConnectError {
    /// The step that failed (what the administrator looks at first).
    pub step: FailureStep,
    /// How the retry policy treats it.
    pub kind: ErrorKind,
    /// What happened and the fix, without the step's label.
    pub message: String,
    /// For a refused TLS certificate: what the server presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Box<CertificateInfo>>,
    /// A code more specific than the step's (`impersonation_denied`,
    /// `unsupported_exchange_version`, …), where the server's answer names the cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// How long the server asked to be left alone (throttling), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ConnectError {
    pub fn new(step: FailureStep, kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            step,
            kind,
            message: message.into(),
            certificate: None,
            code: None,
            retry_after_ms: None,
        }
    }

    /// With a code more specific than the step's.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// With the delay the server asked for.
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after_ms = Some(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// The delay the server asked for, if it named one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_ms.map(Duration::from_millis)
    }

    /// Whether trying again later can succeed without a person changing something.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// A protocol violation by the server (garbled or unexpected answer).
    pub(crate) fn protocol(message: impl Into<String>) -> Self {
        Self::new(FailureStep::Protocol, ErrorKind::Permanent, message)
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ConnectError> = std::result::Result<T, E>;

/// "30 s", "1.5 s", "250 ms".
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// No answer within the timeout while doing `what`.
pub(crate) fn timed_out(step: FailureStep, what: &str, timeout: Duration) -> ConnectError {
    ConnectError::new(
        step,
        ErrorKind::Transient,
        format!(
            "no answer to {what} within {}: the server is slow or unreachable; try again later \
             or raise the connection timeout",
            human_duration(timeout)
        ),
    )
}

/// An I/O error on an established connection while doing `what`.
pub(crate) fn io_failure(step: FailureStep, what: &str, e: &io::Error) -> ConnectError {
    let message = match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => format!(
            "the server closed the connection during {what}: try again later; if it keeps \
             happening, check the server's logs"
        ),
        io::ErrorKind::TimedOut => format!(
            "the connection timed out during {what}: try again later or raise the connection timeout"
        ),
        _ => format!("network error during {what} ({e}): try again later"),
    };
    ConnectError::new(step, ErrorKind::Transient, message)
}

/// Classifies a failed TLS handshake with `host` (the name the certificate is checked
/// against); `cert` is the certificate the server presented, if it got that far.
pub(crate) fn tls_failure(
    host: &str,
    e: &io::Error,
    cert: Option<CertificateInfo>,
) -> ConnectError {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(err) => {
            let (kind, message) = classify_tls_error(host, err, cert.as_ref());
            let mut e = ConnectError::new(FailureStep::Tls, kind, message);
            if matches!(err, rustls::Error::InvalidCertificate(_)) {
                e.certificate = cert.map(Box::new);
            }
            e
        }
        None => {
            let mut err = io_failure(FailureStep::Tls, "the TLS handshake", e);
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) {
                // Transient: a cut network or a busy server ends handshakes like this too, and
                // a mailbox that worked must not be disabled for a blip; a real mismatch keeps
                // failing and the retry policy disables it with an alert after its attempts.
                err.message = "the server closed the connection during the TLS handshake: check \
                               that this port speaks TLS (the TLS mode matches the port) and that \
                               the server accepts TLS 1.2 or newer"
                    .into();
            }
            err
        }
    }
}

/// The kind and message for a rustls error (pure; unit-tested). Certificate problems are
/// phrased for a person, with what the certificate says when the server presented one.
pub(crate) fn classify_tls_error(
    host: &str,
    err: &rustls::Error,
    cert: Option<&CertificateInfo>,
) -> (ErrorKind, String) {
    use rustls::{CertificateError, Error as E};
    let day = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| format!(" on {}", t.format("%Y-%m-%d")))
            .unwrap_or_default()
    };
    let pin_hint = "pin its SHA-256 fingerprint on the email server profile (test and enable \
                    shows the certificate; only if you are sure it is your server's)";
    let msg = match err {
        E::InvalidCertificate(cert_err) => match (cert_err, cert) {
            (CertificateError::Expired | CertificateError::ExpiredContext { .. }, c) => format!(
                "the server's certificate for {host} expired{}: renew the certificate on the \
                 server (or check this machine's clock)",
                day(c.and_then(|c| c.not_after))
            ),
            (CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }, c) => {
                format!(
                    "the server's certificate for {host} is valid only from{}: check the clocks \
                     of this machine and the server",
                    day(c.and_then(|c| c.not_before))
                )
            }
            (_, Some(c)) if c.self_signed => format!(
                "the server's certificate for {host} is self-signed ({}; SHA-256 {}), so no \
                 trusted authority vouches for it: if this is your own server, {pin_hint}, or \
                 install a certificate from a trusted CA on the server; if you did not expect \
                 a self-signed certificate, someone may be intercepting the connection",
                c.subject, c.sha256
            ),
            (CertificateError::UnknownIssuer, c) => format!(
                "the server's certificate for {host} was issued by {}, an authority this \
                 installation does not trust: install a certificate from a public CA on the \
                 server, have the installation's administrator add the CA \
                 (tls.extra_ca_files), or {pin_hint}",
                c.map(|c| c.issuer.as_str())
                    .filter(|i| !i.is_empty())
                    .unwrap_or("an unknown issuer")
            ),
            (
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
                c,
            ) => {
                let names = c
                    .map(|c| c.names.join(", "))
                    .filter(|n| !n.is_empty())
                    .map(|n| format!(" (it is for {n})"))
                    .unwrap_or_default();
                format!(
                    "the server's certificate is not valid for the name {host}{names}: enter a \
                     server location the certificate lists, or get a certificate for {host}"
                )
            }
            (CertificateError::Revoked, _) => format!(
                "the server's certificate for {host} has been revoked: the server needs a new \
                 certificate"
            ),
            (CertificateError::UnknownRevocationStatus, _) => format!(
                "the revocation status of the server's certificate for {host} is unknown: fix \
                 the server's certificate chain"
            ),
            (other, _) => {
                let why = if format!("{other:?}").contains("CaUsedAsEndEntity") {
                    "it is a certificate authority's certificate, not a server certificate"
                } else {
                    "it is malformed, or uses a signature algorithm or feature that is not \
                     supported"
                };
                format!(
                    "the server's certificate for {host} cannot be used ({why}): install a \
                     proper server certificate on the server, or {pin_hint}"
                )
            }
        },
        E::AlertReceived(alert) => format!(
            "the server aborted the TLS handshake ({alert:?}): check that it supports TLS 1.2 or \
             newer with current cipher suites"
        ),
        E::InvalidMessage(_)
        | E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. } => {
            "the server did not answer with TLS: check the TLS mode for this port (implicit TLS \
             vs STARTTLS) and the port number"
                .to_string()
        }
        E::PeerIncompatible(why) => format!(
            "the server's TLS is incompatible ({why:?}): it must support TLS 1.2 or newer with \
             current cipher suites"
        ),
        E::NoCertificatesPresented => {
            "the server presented no certificate: fix the server's TLS configuration".to_string()
        }
        E::PeerMisbehaved(why) => format!(
            "the server broke the TLS protocol ({why:?}): fix the server's TLS configuration"
        ),
        other => format!("TLS failed ({other}): check the server's TLS configuration"),
    };
    (ErrorKind::Config, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError, Error as E};

    #[test]
    fn tls_errors_are_config_and_name_the_fix() {
        let cases: Vec<(E, &str)> = vec![
            (
                E::InvalidCertificate(CertificateError::UnknownIssuer),
                "certificate for localhost was issued by an unknown issuer, an authority this installation does not trust",
            ),
            (
                E::InvalidCertificate(CertificateError::NotValidForName),
                "not valid for the name localhost",
            ),
            (
                E::InvalidCertificate(CertificateError::Expired),
                "expired: renew the certificate",
            ),
            (
                E::AlertReceived(AlertDescription::ProtocolVersion),
                "aborted the TLS handshake",
            ),
            (
                E::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "did not answer with TLS: check the TLS mode",
            ),
        ];
        for (err, expected) in cases {
            let (kind, msg) = classify_tls_error("localhost", &err, None);
            assert_eq!(kind, ErrorKind::Config, "{err:?}");
            assert!(msg.contains(expected), "{err:?}: {msg}");
        }
    }

    #[test]
    fn display_names_step_and_fix() {
        let (kind, message) = classify_tls_error(
            "localhost",
            &E::InvalidCertificate(CertificateError::UnknownIssuer),
            None,
        );
        let e = ConnectError::new(FailureStep::Tls, kind, message);
        assert!(
            e.to_string().starts_with(
                "TLS handshake / certificate: the server's certificate for localhost was issued \
                 by an unknown issuer"
            ),
            "{e}"
        );
    }

    #[test]
    fn io_errors_are_transient() {
        let e = io_failure(
            FailureStep::Protocol,
            "LOGIN",
            &io::Error::from(io::ErrorKind::UnexpectedEof),
        );
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.message.contains("closed the connection during LOGIN"));
        let t = timed_out(FailureStep::Protocol, "CAPA", Duration::from_millis(1500));
        assert!(t.message.contains("within 1.5 s"), "{t}");
        assert_eq!(human_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(human_duration(Duration::from_millis(20)), "20 ms");
    }
}
