//! What a mail server's TLS certificate says, as shown to a person in a test report, and the
//! SHA-256 fingerprints a profile pins.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The end-entity certificate a server presented (parsed from its DER; every text field is
/// bounded and stripped of control characters, since a server chooses it).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// The subject's distinguished name, e.g. `CN=mail.example.com, O=Example`.
    pub subject: String,
    /// The issuer's distinguished name (the same as the subject when self-signed).
    pub issuer: String,
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// The DNS names and IP addresses the certificate is for (subject alternative names).
    #[serde(default)]
    pub names: Vec<String>,
    /// SHA-256 of the certificate's DER, upper-case hex in colon-separated pairs: the value a
    /// profile pins.
    pub sha256: String,
    /// Issuer and subject are the same name.
    pub self_signed: bool,
}

/// A SHA-256 fingerprint in the canonical form (`AB:CD:…`, 32 pairs), from hex with or without
/// colons or spaces, in any case; `None` when it is not 32 bytes of hex.
pub fn normalize_sha256(s: &str) -> Option<String> {
    let hex: String = s
        .chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let upper = hex.to_ascii_uppercase();
    Some(
        upper
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// `bytes` as a canonical fingerprint.
pub fn format_sha256(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalize() {
        let canonical = format_sha256(&[0xab; 32]);
        assert_eq!(canonical.len(), 95);
        assert_eq!(
            normalize_sha256(&"ab".repeat(32)).as_deref(),
            Some(canonical.as_str())
        );
        assert_eq!(
            normalize_sha256(&canonical.to_lowercase()).as_deref(),
            Some(canonical.as_str())
        );
        assert_eq!(normalize_sha256("ab:cd"), None);
        assert_eq!(normalize_sha256(&"zz".repeat(32)), None);
    }
}
