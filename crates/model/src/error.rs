//! Error vocabulary shared by every layer: what kind of failure it is (so the retry policy can
//! decide), which connection step failed (so the admin knows what to fix), and field-level
//! validation errors (so the API and UI can point at the field).

use serde::{Deserialize, Serialize};
use std::fmt;

/// How a failure should be treated. Every crate's error type maps onto one of these.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Network trouble, timeouts, server busy: try again later.
    Transient,
    /// The server asked us to slow down; retry no sooner than it said.
    Throttled,
    /// Credentials rejected.
    Auth,
    /// Authenticated but not allowed (missing impersonation right, folder access…).
    Permission,
    /// The configuration is wrong or unsupported; a person must change it.
    Config,
    /// Will fail the same way every time (for example a 5xx for one message).
    Permanent,
    /// A defect in serversync itself.
    Bug,
}

impl ErrorKind {
    /// Whether retrying later can succeed without a person changing something.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Transient | ErrorKind::Throttled)
    }
}

/// The step of talking to a mail server that failed, in the order they happen.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureStep {
    Dns,
    TcpConnect,
    Tls,
    Authentication,
    Permission,
    Protocol,
}

impl FailureStep {
    pub fn label(self) -> &'static str {
        match self {
            FailureStep::Dns => "DNS lookup",
            FailureStep::TcpConnect => "TCP connect",
            FailureStep::Tls => "TLS handshake / certificate",
            FailureStep::Authentication => "authentication",
            FailureStep::Permission => "permission / capability",
            FailureStep::Protocol => "protocol",
        }
    }
}

impl fmt::Display for FailureStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// One invalid field: a stable machine code, the field's path, and a message that names the fix.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationError {
    pub code: String,
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(code: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.field, self.message, self.code)
    }
}

/// All problems found in one object; validation reports every one, not just the first.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    pub fn push(&mut self, code: &str, field: &str, message: impl Into<String>) {
        self.0.push(ValidationError::new(code, field, message));
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }
    pub fn codes(&self) -> Vec<&str> {
        self.0.iter().map(|e| e.code.as_str()).collect()
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}
