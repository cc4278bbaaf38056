//! [`TlsTrust`]: which certificate authorities serversync trusts when it connects to a mail
//! server. Certificate checks are always on; there is no "accept invalid certificates" switch.
//!
//! The trust anchors are the system's (loaded with `rustls-native-certs`: the distribution's
//! CA bundle, `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus extra CA certificates from PEM files or
//! bytes, for servers with a private CA (the installation's `tls.extra_ca_files`; the tests
//! trust the test CA this way). The rustls configuration uses the aws-lc-rs provider with its
//! safe defaults (TLS 1.2 and 1.3, current cipher suites).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A problem building a [`TlsTrust`] (a configuration problem: nothing was connected yet).
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading CA certificate file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: not a PEM certificate ({reason})")]
    Pem { origin: String, reason: String },
    #[error("{origin}: holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    Empty { origin: String },
    #[error("{origin}: invalid CA certificate: {reason}")]
    Invalid { origin: String, reason: String },
    #[error(
        "no trust anchors: the system CA store is empty or unreadable ({details}) and no extra \
         CA certificate is configured; install the system CA bundle (ca-certificates) or \
         configure tls.extra_ca_files"
    )]
    NoTrustAnchors { details: String },
    #[error("building the TLS configuration: {0}")]
    Rustls(String),
}

/// The trust anchors and the rustls client configuration built from them. Cheap to share
/// (`Arc` it into [`crate::ConnectOptions`]).
#[derive(Clone)]
pub struct TlsTrust {
    config: Arc<ClientConfig>,
    system_roots: usize,
    extra: Vec<String>,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTrust")
            .field("system_roots", &self.system_roots)
            .field("extra", &self.extra)
            .finish()
    }
}

impl TlsTrust {
    /// A builder that starts with the system's trust anchors.
    pub fn builder() -> TlsTrustBuilder {
        TlsTrustBuilder {
            system_roots: true,
            extra: Vec::new(),
        }
    }

    /// Only the system's trust anchors: a server with a private or self-signed CA fails at
    /// the TLS step.
    pub fn system_only() -> Result<TlsTrust, TrustError> {
        Self::builder().build()
    }

    /// The system's trust anchors plus the CA certificates in these PEM files.
    pub fn with_extra_ca_files<P: AsRef<Path>>(
        files: impl IntoIterator<Item = P>,
    ) -> Result<TlsTrust, TrustError> {
        let mut builder = Self::builder();
        for file in files {
            builder = builder.add_pem_file(file.as_ref())?;
        }
        builder.build()
    }

    /// The rustls client configuration (aws-lc-rs, certificate and name checks on).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// How many system trust anchors were loaded.
    pub fn system_root_count(&self) -> usize {
        self.system_roots
    }

    /// Where the extra CA certificates came from (file paths or labels), one entry per
    /// certificate.
    pub fn extra_sources(&self) -> &[String] {
        &self.extra
    }
}

/// Builds a [`TlsTrust`]; see [`TlsTrust::builder`].
#[derive(Debug)]
pub struct TlsTrustBuilder {
    system_roots: bool,
    extra: Vec<(String, CertificateDer<'static>)>,
}

impl TlsTrustBuilder {
    /// Do not trust the system's anchors: only the extra CA certificates (for a
    /// deployment that pins its own CA).
    pub fn without_system_roots(mut self) -> Self {
        self.system_roots = false;
        self
    }

    /// Adds every certificate in a PEM file.
    pub fn add_pem_file(self, path: &Path) -> Result<Self, TrustError> {
        let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.add_pem(&bytes, &path.display().to_string())
    }

    /// Adds every certificate in PEM text; `origin` names it in errors (a path or a label).
    pub fn add_pem(mut self, pem: &[u8], origin: &str) -> Result<Self, TrustError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TrustError::Pem {
                origin: origin.to_string(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TrustError::Empty {
                origin: origin.to_string(),
            });
        }
        // Reject unparsable certificates now, with the file named, not at connect time.
        for cert in &certs {
            RootCertStore::empty()
                .add(cert.clone())
                .map_err(|e| TrustError::Invalid {
                    origin: origin.to_string(),
                    reason: e.to_string(),
                })?;
        }
        self.extra
            .extend(certs.into_iter().map(|c| (origin.to_string(), c)));
        Ok(self)
    }

    pub fn build(self) -> Result<TlsTrust, TrustError> {
        let mut roots = RootCertStore::empty();
        let mut system_roots = 0;
        if self.system_roots {
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            system_roots = added;
            if added == 0 {
                let details = if loaded.errors.is_empty() {
                    "no certificates found".to_string()
                } else {
                    loaded
                        .errors
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                if self.extra.is_empty() {
                    return Err(TrustError::NoTrustAnchors { details });
                }
                tracing::warn!(%details, "no system trust anchors loaded; trusting only the extra CA certificates");
            }
        } else if self.extra.is_empty() {
            return Err(TrustError::NoTrustAnchors {
                details: "system trust anchors switched off".into(),
            });
        }
        let mut extra = Vec::with_capacity(self.extra.len());
        for (origin, cert) in self.extra {
            roots.add(cert).map_err(|e| TrustError::Invalid {
                origin: origin.clone(),
                reason: e.to_string(),
            })?;
            extra.push(origin);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError::Rustls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsTrust {
            config: Arc::new(config),
            system_roots,
            extra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_files_without_certificates() {
        let err = TlsTrust::builder()
            .add_pem(b"not a certificate\n", "inline")
            .unwrap_err();
        assert!(matches!(err, TrustError::Empty { .. }), "{err}");
        let err = TlsTrust::builder()
            .add_pem_file(Path::new("/nonexistent/ca.pem"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn no_anchors_at_all_is_an_error() {
        let err = TlsTrust::builder()
            .without_system_roots()
            .build()
            .unwrap_err();
        assert!(matches!(err, TrustError::NoTrustAnchors { .. }), "{err}");
    }
}
