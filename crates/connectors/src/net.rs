//! Where a server is and how to reach it: DNS lookup, TCP connect and TLS handshake as three
//! separately classified steps, the [`MailStream`] they produce, and the line-oriented
//! `Wire` the three text protocols share.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use serversync_model::profile::TlsMode;
use serversync_model::{ErrorKind, FailureStep};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::error::{ConnectError, Result, human_duration, io_failure, timed_out, tls_failure};
use crate::policy::NetworkPolicy;
use crate::probe::StepLog;
use crate::tls::TlsTrust;
use serversync_model::certificate::CertificateInfo;

/// Default bound on each step (DNS, TCP, TLS, every command's answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A mail server's address and transport security.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServerAddr {
    /// Host name or IP address; also the name the certificate is checked against.
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    /// SHA-256 fingerprints of certificates accepted as they are (the profile's
    /// `pinned_certificates`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<String>,
}

impl ServerAddr {
    pub fn new(host: impl Into<String>, port: u16, tls: TlsMode) -> Self {
        Self {
            host: host.into(),
            port,
            tls,
            pinned: Vec::new(),
        }
    }

    /// The same server, accepting certificates with these SHA-256 fingerprints as they are.
    pub fn with_pinned(mut self, pinned: Vec<String>) -> Self {
        self.pinned = pinned;
        self
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tls = match self.tls {
            TlsMode::Implicit => "implicit TLS",
            TlsMode::StartTls => "STARTTLS",
            TlsMode::None => "no TLS",
        };
        write!(f, "{}:{} ({tls})", self.host, self.port)
    }
}

/// How to connect: the bound on each step, the trusted certificate authorities and where
/// connections may go.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Bounds each step separately: the DNS lookup, the TCP connect (all addresses
    /// together), the TLS handshake, and the wait for each answer of the server.
    pub timeout: Duration,
    pub trust: Arc<TlsTrust>,
    /// Which resolved addresses may be connected to (checked right before the connect).
    pub policy: Arc<NetworkPolicy>,
    /// The name SMTP `EHLO` announces; `None` sends the address literal of the local end of
    /// the connection (e.g. `[192.0.2.7]`), which RFC 5321 allows for hosts without a name.
    pub hello_name: Option<String>,
}

impl ConnectOptions {
    /// [`DEFAULT_TIMEOUT`], the address-literal EHLO name and the default (production)
    /// [`NetworkPolicy`]: public addresses only.
    pub fn new(trust: Arc<TlsTrust>) -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            trust,
            policy: Arc::new(NetworkPolicy::default()),
            hello_name: None,
        }
    }

    pub fn with_policy(mut self, policy: impl Into<Arc<NetworkPolicy>>) -> Self {
        self.policy = policy.into();
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A connection to a mail server: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl MailStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, MailStream::Tls(_))
    }

    /// The certificate the server presented (TLS only).
    pub fn certificate(&self) -> Option<CertificateInfo> {
        match self {
            MailStream::Plain(_) => None,
            MailStream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| crate::certificate::describe(c)),
        }
    }

    /// The DER bytes of the certificate the server presented (TLS only): what a channel
    /// binding (`tls-server-end-point`) is computed from.
    pub fn certificate_der(&self) -> Option<Vec<u8>> {
        match self {
            MailStream::Plain(_) => None,
            MailStream::Tls(s) => s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        }
    }

    /// Protocol version and cipher suite, e.g. `TLSv1_3 / TLS13_AES_256_GCM_SHA384`.
    pub fn tls_summary(&self) -> Option<String> {
        match self {
            MailStream::Plain(_) => None,
            MailStream::Tls(s) => {
                let conn = s.get_ref().1;
                Some(format!(
                    "{} / {}",
                    conn.protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                    conn.negotiated_cipher_suite()
                        .map(|c| format!("{:?}", c.suite()))
                        .unwrap_or_default()
                ))
            }
        }
    }
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The DNS step: resolves `host:port` (an IP address resolves to itself) through the
/// system resolver, or at the policy's nameserver when one is configured.
pub async fn resolve(addr: &ServerAddr, opts: &ConnectOptions) -> Result<Vec<SocketAddr>> {
    let (host, timeout) = (addr.host.trim(), opts.timeout);
    if host.is_empty() {
        return Err(ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Config,
            "no server host name is configured: set the server location",
        ));
    }
    if let Some(nameserver) = opts.policy.nameserver() {
        return crate::dns::addresses(host, addr.port, nameserver, timeout).await;
    }
    let lookup = tokio::net::lookup_host((host, addr.port));
    let found = match tokio::time::timeout(timeout, lookup).await {
        Err(_) => {
            return Err(ConnectError::new(
                FailureStep::Dns,
                ErrorKind::Transient,
                format!(
                    "looking up {host} took longer than {}: check this machine's DNS resolver; \
                     try again later",
                    human_duration(timeout)
                ),
            ));
        }
        Ok(Err(e)) => return Err(classify_dns_error(host, &e)),
        Ok(Ok(found)) => found.collect::<Vec<_>>(),
    };
    if found.is_empty() {
        return Err(ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Config,
            format!("{host} has no IP address: check the server host name"),
        ));
    }
    Ok(found)
}

/// getaddrinfo's errors reach us only as text (`failed to lookup address information: …`).
pub(crate) fn classify_dns_error(host: &str, e: &io::Error) -> ConnectError {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let temporary = lower.contains("temporary failure")
        || lower.contains("try again")
        || lower.contains("timed out")
        || lower.contains("non-recoverable");
    if temporary {
        ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Transient,
            format!(
                "looking up {host} failed for now ({text}): check this machine's DNS resolver; \
                 try again later"
            ),
        )
    } else {
        ConnectError::new(
            FailureStep::Dns,
            ErrorKind::Config,
            format!("the host name {host} does not exist ({text}): check the server host name"),
        )
    }
}

/// The TCP step: tries the resolved addresses in order within one `timeout`.
pub async fn connect_tcp(
    addr: &ServerAddr,
    targets: &[SocketAddr],
    timeout: Duration,
) -> Result<TcpStream> {
    let attempt = async {
        let mut errors = Vec::new();
        for target in targets {
            match TcpStream::connect(target).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => errors.push((*target, e)),
            }
        }
        Err(errors)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(errors)) => {
            let refused = errors
                .iter()
                .all(|(_, e)| e.kind() == io::ErrorKind::ConnectionRefused);
            let list = errors
                .iter()
                .map(|(t, e)| format!("{t}: {e}"))
                .collect::<Vec<_>>()
                .join("; ");
            let message = if refused {
                format!(
                    "connection to {}:{} refused ({list}): check the port and that the server \
                     is running and reachable from here",
                    addr.host, addr.port
                )
            } else {
                format!(
                    "cannot connect to {}:{} ({list}): check the host, port, routing and \
                     firewalls; try again later",
                    addr.host, addr.port
                )
            };
            Err(ConnectError::new(
                FailureStep::TcpConnect,
                ErrorKind::Transient,
                message,
            ))
        }
        Err(_) => Err(ConnectError::new(
            FailureStep::TcpConnect,
            ErrorKind::Transient,
            format!(
                "connecting to {}:{} timed out after {}: check the host, port and firewalls \
                 (a firewall that drops packets looks like this); try again later",
                addr.host,
                addr.port,
                human_duration(timeout)
            ),
        )),
    }
}

/// The TLS step: handshake over `tcp`, certificate checked against `addr.host` (or accepted
/// by one of `addr.pinned`).
pub async fn tls_handshake(
    tcp: TcpStream,
    addr: &ServerAddr,
    opts: &ConnectOptions,
) -> Result<MailStream> {
    let host = addr.host.as_str();
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        ConnectError::new(
            FailureStep::Tls,
            ErrorKind::Config,
            format!("{host} is not a valid TLS server name: use a DNS name or an IP address"),
        )
    })?;
    let (config, check) = opts.trust.for_connection(&addr.pinned);
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout(opts.timeout, connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => {
            if let Some((cert, true)) = check.take_presented() {
                tracing::info!(
                    server = %addr,
                    sha256 = %crate::certificate::describe(&cert).sha256,
                    "certificate accepted by the profile's pinned fingerprint"
                );
            }
            Ok(MailStream::Tls(Box::new(tls)))
        }
        Ok(Err(e)) => {
            let presented = check
                .take_presented()
                .map(|(c, _)| crate::certificate::describe(&c));
            Err(tls_failure(host, &e, presented))
        }
        Err(_) => Err(timed_out(
            FailureStep::Tls,
            "the TLS handshake",
            opts.timeout,
        )),
    }
}

/// DNS → TCP → (implicit TLS), each recorded in `log`.
pub(crate) async fn establish(
    addr: &ServerAddr,
    opts: &ConnectOptions,
    log: &mut StepLog,
) -> Result<Wire> {
    let targets = log
        .run(
            FailureStep::Dns,
            format!("resolve {}", addr.host),
            resolve(addr, opts),
            |found| {
                found
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        )
        .await?;
    let tcp = log
        .run(
            FailureStep::TcpConnect,
            format!("connect to port {}", addr.port),
            async {
                let permitted =
                    opts.policy
                        .permitted(&addr.host, &targets, addr.tls == TlsMode::None)?;
                connect_tcp(addr, &permitted, opts.timeout).await
            },
            |s| {
                s.peer_addr()
                    .map(|a| format!("connected to {a}"))
                    .unwrap_or_else(|_| "connected".into())
            },
        )
        .await?;
    let stream = match addr.tls {
        TlsMode::Implicit => {
            let stream = log
                .run(
                    FailureStep::Tls,
                    "TLS handshake",
                    tls_handshake(tcp, addr, opts),
                    |s| s.tls_summary().unwrap_or_default(),
                )
                .await?;
            log.presented(stream.certificate(), &addr.pinned);
            stream
        }
        TlsMode::StartTls | TlsMode::None => MailStream::Plain(tcp),
    };
    Ok(Wire::new(stream, opts.timeout))
}

/// A buffered connection that reads CRLF-terminated lines and exact byte counts, each read
/// bounded by the timeout.
#[derive(Debug)]
pub(crate) struct Wire {
    io: BufReader<MailStream>,
    timeout: Duration,
}

impl Wire {
    pub(crate) fn new(stream: MailStream, timeout: Duration) -> Self {
        Self {
            io: BufReader::new(stream),
            timeout,
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        self.io.get_ref().is_tls()
    }

    pub(crate) fn tls_summary(&self) -> Option<String> {
        self.io.get_ref().tls_summary()
    }

    pub(crate) fn certificate(&self) -> Option<CertificateInfo> {
        self.io.get_ref().certificate()
    }

    /// The local end of the connection (for SMTP's EHLO address literal).
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        match self.io.get_ref() {
            MailStream::Plain(s) => s.local_addr().ok(),
            MailStream::Tls(s) => s.get_ref().0.local_addr().ok(),
        }
    }

    /// One line without its CR LF (or bare LF); `None` on a clean end of stream. Lines
    /// longer than `max` bytes are an error.
    pub(crate) async fn read_line_opt(
        &mut self,
        step: FailureStep,
        what: &str,
        max: usize,
    ) -> Result<Option<Vec<u8>>> {
        let timeout = self.timeout;
        let read = async {
            let mut line = Vec::new();
            loop {
                let buf = self.io.fill_buf().await?;
                if buf.is_empty() {
                    return if line.is_empty() {
                        Ok(None)
                    } else {
                        Err(io::Error::from(io::ErrorKind::UnexpectedEof))
                    };
                }
                if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    line.extend_from_slice(&buf[..pos]);
                    self.io.consume(pos + 1);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return Ok(Some(line));
                }
                let n = buf.len();
                line.extend_from_slice(buf);
                self.io.consume(n);
                if line.len() > max {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Err(_) => Err(timed_out(step, what, timeout)),
            Ok(Ok(line)) => match line {
                Some(l) if l.len() > max => Err(line_too_long(what, max)),
                other => Ok(other),
            },
            Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => Err(line_too_long(what, max)),
            Ok(Err(e)) => Err(io_failure(step, what, &e)),
        }
    }

    /// One line; the end of the stream is an error.
    pub(crate) async fn read_line(
        &mut self,
        step: FailureStep,
        what: &str,
        max: usize,
    ) -> Result<Vec<u8>> {
        match self.read_line_opt(step, what, max).await? {
            Some(line) => Ok(line),
            None => Err(io_failure(
                step,
                what,
                &io::Error::from(io::ErrorKind::UnexpectedEof),
            )),
        }
    }

    /// Exactly `n` bytes (an IMAP literal).
    pub(crate) async fn read_exact(
        &mut self,
        step: FailureStep,
        what: &str,
        n: usize,
    ) -> Result<Vec<u8>> {
        let mut buf = vec![0; n];
        match tokio::time::timeout(self.timeout, self.io.read_exact(&mut buf)).await {
            Err(_) => Err(timed_out(step, what, self.timeout)),
            Ok(Err(e)) => Err(io_failure(step, what, &e)),
            Ok(Ok(_)) => Ok(buf),
        }
    }

    /// Writes `line` and CR LF, and flushes.
    pub(crate) async fn send_line(
        &mut self,
        step: FailureStep,
        what: &str,
        line: &[u8],
    ) -> Result<()> {
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line);
        data.extend_from_slice(b"\r\n");
        self.send_raw(step, what, &data).await
    }

    /// Writes `data` as it is, and flushes.
    pub(crate) async fn send_raw(
        &mut self,
        step: FailureStep,
        what: &str,
        data: &[u8],
    ) -> Result<()> {
        let stream = self.io.get_mut();
        let write = async {
            stream.write_all(data).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Err(_) => Err(timed_out(step, what, self.timeout)),
            Ok(Err(e)) => Err(io_failure(step, what, &e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Upgrades a plain connection to TLS after the server accepted STARTTLS/STLS. Data the
    /// server sent after its "go ahead" (before the handshake) is refused: it would be
    /// injected into the protected session (CVE-2011-0411 style).
    pub(crate) async fn start_tls(self, addr: &ServerAddr, opts: &ConnectOptions) -> Result<Wire> {
        if !self.io.buffer().is_empty() {
            return Err(ConnectError::new(
                FailureStep::Tls,
                ErrorKind::Permanent,
                "the server sent data after accepting STARTTLS, before the TLS handshake \
                 (possible command injection): refusing; check the server or the network path",
            ));
        }
        let timeout = self.timeout;
        match self.io.into_inner() {
            MailStream::Plain(tcp) => Ok(Wire::new(tls_handshake(tcp, addr, opts).await?, timeout)),
            MailStream::Tls(_) => Err(ConnectError::new(
                FailureStep::Tls,
                ErrorKind::Bug,
                "STARTTLS on a connection that is already TLS",
            )),
        }
    }

    /// The stream, for handing to another client library; refuses if buffered data would
    /// be lost.
    pub(crate) fn into_stream(self) -> Result<MailStream> {
        if !self.io.buffer().is_empty() {
            return Err(ConnectError::protocol(
                "the server sent unexpected data before authentication: check the server",
            ));
        }
        Ok(self.io.into_inner())
    }

    /// Best-effort close (TLS close_notify, TCP FIN), bounded by a short timeout.
    pub(crate) async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.get_mut().shutdown()).await;
    }
}

fn line_too_long(what: &str, max: usize) -> ConnectError {
    ConnectError::protocol(format!(
        "the server's answer to {what} has a line longer than {max} bytes: the server is not \
         speaking the expected protocol on this port, or the answer is too large"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_errors_distinguish_missing_names_from_temporary_failures() {
        let missing = classify_dns_error(
            "nonexistent.invalid",
            &io::Error::other("failed to lookup address information: Name or service not known"),
        );
        assert_eq!(
            (missing.step, missing.kind),
            (FailureStep::Dns, ErrorKind::Config)
        );
        assert!(missing.message.contains("check the server host name"));
        let temp = classify_dns_error(
            "mail.example.com",
            &io::Error::other(
                "failed to lookup address information: Temporary failure in name resolution",
            ),
        );
        assert_eq!(
            (temp.step, temp.kind),
            (FailureStep::Dns, ErrorKind::Transient)
        );
    }

    #[test]
    fn server_addr_display() {
        let a = ServerAddr::new("imap.example.com", 993, TlsMode::Implicit);
        assert_eq!(a.to_string(), "imap.example.com:993 (implicit TLS)");
    }
}
