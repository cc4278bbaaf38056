//! [`TlsTrust`]: which certificate authorities serversync trusts when it connects to a mail
//! server. Certificate checks are always on; there is no "accept invalid certificates" switch.
//!
//! The trust anchors are the system's (loaded with `rustls-native-certs`: the distribution's
//! CA bundle, `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus extra CA certificates from PEM files or
//! bytes, for servers with a private CA (the installation's `tls.extra_ca_files`; the tests
//! trust the test CA this way). The rustls configuration uses the aws-lc-rs provider with its
//! safe defaults (TLS 1.2 and 1.3, current cipher suites); in FIPS mode (`tls.fips`, only in a
//! build with the `fips` feature) the FIPS-validated aws-lc module and only FIPS-approved
//! suites, key exchanges and signature algorithms.
//!
//! Each mail connection gets its own `CertCheck` verifier around the shared webpki one: it
//! keeps the end-entity certificate the server presented (for the test report and for a
//! readable error) and accepts a certificate whose SHA-256 fingerprint the profile pins,
//! exactly that certificate and whatever its chain, name or dates. The handshake signature is
//! still verified, so only the holder of the pinned certificate's key gets through.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serversync_model::certificate::normalize_sha256;

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
    #[error(
        "tls.fips = true needs a serversync built with the `fips` feature (the FIPS-validated \
         aws-lc module): rebuild with `cargo build --release --features fips`, or set tls.fips = \
         false"
    )]
    FipsNotBuilt,
}

/// The trust anchors and the rustls client configuration built from them. Cheap to share
/// (`Arc` it into [`crate::ConnectOptions`]).
#[derive(Clone)]
pub struct TlsTrust {
    config: Arc<ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
    system_roots: usize,
    extra: Vec<String>,
    fips: bool,
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTrust")
            .field("system_roots", &self.system_roots)
            .field("extra", &self.extra)
            .field("fips", &self.fips)
            .finish()
    }
}

impl TlsTrust {
    /// A builder that starts with the system's trust anchors.
    pub fn builder() -> TlsTrustBuilder {
        TlsTrustBuilder {
            system_roots: true,
            extra: Vec::new(),
            fips: false,
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

    /// Whether connections use the FIPS-validated module with FIPS-approved algorithms only.
    pub fn fips(&self) -> bool {
        self.fips
    }

    /// Whether this build carries the FIPS-validated module (the `fips` feature).
    pub fn fips_available() -> bool {
        cfg!(feature = "fips")
    }

    /// A configuration for one connection: the certificate checks of
    /// [`TlsTrust::client_config`], plus `pins` (SHA-256 fingerprints accepted as they are),
    /// with the presented certificate kept in the returned [`CertCheck`].
    pub(crate) fn for_connection(&self, pins: &[String]) -> (Arc<ClientConfig>, Arc<CertCheck>) {
        let pins: Vec<[u8; 32]> = pins.iter().filter_map(|p| parse_pin(p)).collect();
        let check = Arc::new(CertCheck {
            inner: self.verifier.clone(),
            pinned: !pins.is_empty(),
            pins,
            seen: Mutex::new(None),
        });
        let mut config = (*self.config).clone();
        config.dangerous().set_certificate_verifier(check.clone());
        if check.pinned {
            // A session accepted by a pin must not be resumed by a connection without it.
            config.resumption = rustls::client::Resumption::disabled();
        }
        (Arc::new(config), check)
    }
}

fn parse_pin(pin: &str) -> Option<[u8; 32]> {
    let hex = normalize_sha256(pin)?.replace(':', "");
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The verifier of one connection: webpki's checks, or a pinned fingerprint; remembers the
/// end-entity certificate the server presented.
#[derive(Debug)]
pub(crate) struct CertCheck {
    inner: Arc<WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
    pinned: bool,
    seen: Mutex<Option<(CertificateDer<'static>, bool)>>,
}

impl CertCheck {
    /// The certificate the server presented, and whether a pin accepted it; taken, so a
    /// connection that lives on (an idle mailbox's) does not keep a copy.
    pub(crate) fn take_presented(&self) -> Option<(CertificateDer<'static>, bool)> {
        self.seen.lock().ok()?.take()
    }
}

impl ServerCertVerifier for CertCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = crate::certificate::sha256(end_entity);
        let pinned = self.pins.contains(&digest);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((end_entity.clone().into_owned(), pinned));
        }
        if pinned {
            return Ok(ServerCertVerified::assertion());
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Builds a [`TlsTrust`]; see [`TlsTrust::builder`].
#[derive(Debug)]
pub struct TlsTrustBuilder {
    system_roots: bool,
    extra: Vec<(String, CertificateDer<'static>)>,
    fips: bool,
}

impl TlsTrustBuilder {
    /// Do not trust the system's anchors: only the extra CA certificates (for a
    /// deployment that pins its own CA).
    pub fn without_system_roots(mut self) -> Self {
        self.system_roots = false;
        self
    }

    /// FIPS mode: the FIPS-validated module and FIPS-approved algorithms only. Building fails
    /// with [`TrustError::FipsNotBuilt`] without the `fips` feature.
    pub fn fips(mut self, on: bool) -> Self {
        self.fips = on;
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
        let provider = Arc::new(provider(self.fips)?);
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TrustError::Rustls(e.to_string()))?;
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError::Rustls(e.to_string()))?
            .with_webpki_verifier(verifier.clone())
            .with_no_client_auth();
        if self.fips && !config.fips() {
            return Err(TrustError::Rustls(
                "the TLS configuration is not in FIPS mode".into(),
            ));
        }
        Ok(TlsTrust {
            config: Arc::new(config),
            verifier,
            system_roots,
            extra,
            fips: self.fips,
        })
    }
}

#[cfg(feature = "fips")]
fn provider(fips: bool) -> Result<CryptoProvider, TrustError> {
    Ok(if fips {
        rustls::crypto::default_fips_provider()
    } else {
        rustls::crypto::aws_lc_rs::default_provider()
    })
}

#[cfg(not(feature = "fips"))]
fn provider(fips: bool) -> Result<CryptoProvider, TrustError> {
    if fips {
        return Err(TrustError::FipsNotBuilt);
    }
    Ok(rustls::crypto::aws_lc_rs::default_provider())
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

    #[test]
    fn fips_mode_needs_the_fips_build() {
        let built = TlsTrust::builder().fips(true).build();
        if TlsTrust::fips_available() {
            let trust = built.unwrap();
            assert!(trust.fips() && trust.client_config().fips());
        } else {
            assert!(matches!(built, Err(TrustError::FipsNotBuilt)));
        }
        assert!(!TlsTrust::system_only().unwrap().fips());
    }

    #[test]
    fn pins_parse_from_any_hex_form() {
        let pin = parse_pin(&"ab".repeat(32)).unwrap();
        assert_eq!(pin, [0xab; 32]);
        assert_eq!(parse_pin("ab:cd"), None);
    }
}
