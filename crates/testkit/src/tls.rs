//! A throwaway certificate authority and a server certificate for `localhost` / 127.0.0.1
//! (and [`DNS_TEST_HOST`], a name only the tests' own DNS server knows), made with the
//! openssl command-line tool.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use crate::util::{mkdir, run_capture, system_program, write_file};

/// Name the server certificate is issued for (use it as the TLS server name).
pub const TLS_SERVER_NAME: &str = "localhost";

/// A second name of the server certificate, for tests whose host names come from the test
/// DNS server ([`crate::dnsmasq`]) rather than the system's.
pub const DNS_TEST_HOST: &str = "exchange.serversync.test";

/// PEM files of the test CA and the server certificate signed by it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate to trust (PEM).
    pub ca_cert: PathBuf,
    /// Server certificate (PEM, leaf only), valid for `localhost`, [`DNS_TEST_HOST`] and
    /// 127.0.0.1.
    pub server_cert: PathBuf,
    /// Server private key (PEM, mode 0600).
    pub server_key: PathBuf,
}

impl TlsFiles {
    /// Generates a CA and a server certificate into `dir`, or reuses them if already there.
    pub fn ensure(dir: &Path) -> Result<TlsFiles> {
        let files = TlsFiles {
            ca_cert: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        };
        if files.ca_cert.exists() && files.server_cert.exists() && files.server_key.exists() {
            return Ok(files);
        }
        mkdir(dir, 0o755)?;
        let openssl = system_program("openssl")?;
        let ca_key = dir.join("ca.key");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        run_capture(
            Command::new(&openssl)
                .args(["req", "-x509", "-new", "-nodes", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:P-256", "-days", "3650"])
                .args(["-subj", "/O=serversync tests/CN=serversync test CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&files.ca_cert),
            "openssl (test CA)",
        )?;
        run_capture(
            Command::new(&openssl)
                .args(["req", "-new", "-nodes", "-newkey", "ec"])
                .args(["-pkeyopt", "ec_paramgen_curve:P-256"])
                .args(["-subj", "/O=serversync tests/CN=localhost"])
                .arg("-keyout")
                .arg(&files.server_key)
                .arg("-out")
                .arg(&csr),
            "openssl (server key)",
        )?;
        write_file(
            &ext,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=DNS:localhost,DNS:exchange.serversync.test,IP:127.0.0.1\n",
            0o644,
        )?;
        run_capture(
            Command::new(&openssl)
                .args(["x509", "-req", "-days", "3650", "-sha256", "-set_serial"])
                .arg(format!("0x{}", uuid::Uuid::new_v4().simple()))
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&files.ca_cert)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&files.server_cert),
            "openssl (server certificate)",
        )?;
        write_file(
            &files.ca_cert,
            &std::fs::read_to_string(&files.ca_cert)?,
            0o644,
        )?;
        write_file(
            &files.server_cert,
            &std::fs::read_to_string(&files.server_cert)?,
            0o644,
        )?;
        std::fs::set_permissions(
            &files.server_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        Ok(files)
    }
}

/// Reads the PEM certificates in `ca_cert`.
pub fn load_ca(ca_cert: &Path) -> Result<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(ca_cert)
        .with_context(|| format!("reading {}", ca_cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", ca_cert.display()))
}

/// A rustls client configuration (aws-lc-rs) trusting only the test CA, certificate checks on.
pub fn client_config(ca_cert: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_ca(ca_cert)? {
        roots
            .add(cert)
            .context("adding the test CA to a root store")?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("rustls protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
