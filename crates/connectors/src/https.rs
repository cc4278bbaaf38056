//! One HTTP/1.1 connection to an HTTPS endpoint (EWS, Autodiscover, Microsoft Graph): hyper's
//! client connection over our own [`MailStream`], so DNS, TCP and TLS are the same classified
//! steps as for IMAP, the network policy is checked on the resolved address, every request on the
//! connection shares one TLS session (which NTLM needs: its three legs authenticate the
//! connection), and the server's certificate is at hand for the channel binding.

use crate::error::{io_failure, timed_out};
use crate::net::{self, MailStream};
use crate::probe::StepLog;
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Result, ServerAddr, TlsMode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Where a request goes: the server and the path, from an `http(s)://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: ServerAddr,
    /// Path and query, `/EWS/Exchange.asmx`.
    pub path: String,
    /// The `Host` header: the host, with the port when it is not the scheme's default.
    pub host_header: String,
}

impl Target {
    /// Reads an `https://` URL (`http://` only where the network policy allows plain
    /// connections, e.g. test servers on loopback).
    pub fn parse(url: &str) -> std::result::Result<Target, String> {
        let u = url::Url::parse(url.trim()).map_err(|e| format!("{url} is not a URL: {e}"))?;
        let tls = match u.scheme() {
            "https" => TlsMode::Implicit,
            "http" => TlsMode::None,
            other => return Err(format!("{url}: the scheme must be https, not {other}")),
        };
        let host = u
            .host_str()
            .ok_or_else(|| format!("{url} has no host name"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = u.port_or_known_default().unwrap_or(443);
        let host_header = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_owned(),
        };
        let mut path = u.path().to_owned();
        if let Some(q) = u.query() {
            path = format!("{path}?{q}");
        }
        Ok(Target {
            addr: ServerAddr::new(host, port, tls),
            path,
            host_header,
        })
    }

    /// The URL again (for reports).
    pub fn url(&self) -> String {
        format!("{}{}", self.origin(), self.path)
    }

    /// Scheme, host and port: `https://mail.contoso.com` (an OAuth token's audience).
    pub fn origin(&self) -> String {
        let scheme = if self.addr.tls == TlsMode::None {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.host_header)
    }
}

/// The code of an answer over the size its request allowed.
pub const TOO_LARGE: &str = "answer_too_large";

/// A response read in full.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// Every value of header `name`.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_owned)
            .collect()
    }
}

/// An open connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    task: tokio::task::JoinHandle<()>,
    certificate: Option<Vec<u8>>,
    timeout: Duration,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// DNS → TCP → TLS to `addr` (each step recorded in `log`), then HTTP/1.1 on it.
    pub async fn open(addr: &ServerAddr, opts: &ConnectOptions, log: &mut StepLog) -> Result<Conn> {
        let stream: MailStream = net::establish(addr, opts, log).await?.into_stream()?;
        let certificate = stream.certificate_der();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| http_failure("the HTTP connection", &e))?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTPS connection ended");
            }
        });
        Ok(Conn {
            sender,
            task,
            certificate,
            timeout: opts.timeout,
        })
    }

    /// Whether the server has not closed the connection.
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }

    /// The server's certificate (DER), for a channel binding.
    pub fn certificate(&self) -> Option<&[u8]> {
        self.certificate.as_deref()
    }

    /// Sends `req` and reads the whole response, at most `max_body` bytes of body, within the
    /// connection's timeout (`what` names the request in errors).
    pub async fn send(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
        max_body: usize,
        what: &str,
    ) -> Result<Response> {
        let timeout = self.timeout;
        self.send_within(req, max_body, what, timeout).await
    }

    /// [`Conn::send`] within `timeout` instead of the connection's (a request whose answer
    /// grows with what the server holds, such as a whole collection's listing).
    pub async fn send_within(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
        max_body: usize,
        what: &str,
        timeout: Duration,
    ) -> Result<Response> {
        let work = async {
            self.sender
                .ready()
                .await
                .map_err(|e| http_failure(what, &e))?;
            let resp = self
                .sender
                .send_request(req)
                .await
                .map_err(|e| http_failure(what, &e))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        ConnectError::new(
                            FailureStep::Protocol,
                            ErrorKind::Permanent,
                            format!(
                                "the answer to {what} is larger than {} MB: ask for fewer items at once",
                                max_body / (1024 * 1024)
                            ),
                        )
                        .with_code(TOO_LARGE)
                    } else {
                        match e.downcast_ref::<hyper::Error>() {
                            Some(h) => http_failure(what, h),
                            None => ConnectError::new(
                                FailureStep::Protocol,
                                ErrorKind::Transient,
                                format!("reading the answer to {what} failed: {e}"),
                            ),
                        }
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(FailureStep::Protocol, what, timeout)),
        }
    }

    /// Sends `req` and hands back the response head and its body as it arrives, for long
    /// answers read piece by piece (streaming notifications). Only the head is bounded by the
    /// connection's timeout.
    pub async fn send_streaming(
        &mut self,
        req: hyper::Request<Full<Bytes>>,
        what: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>> {
        let timeout = self.timeout;
        let work = async {
            self.sender
                .ready()
                .await
                .map_err(|e| http_failure(what, &e))?;
            self.sender
                .send_request(req)
                .await
                .map_err(|e| http_failure(what, &e))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(FailureStep::Protocol, what, timeout)),
        }
    }
}

/// A failure of the HTTP exchange itself (not an answer of the server).
pub(crate) fn http_failure(what: &str, e: &hyper::Error) -> ConnectError {
    if let Some(io) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>())
    {
        return io_failure(FailureStep::Protocol, what, io);
    }
    if e.is_closed() || e.is_incomplete_message() || e.is_canceled() {
        return ConnectError::new(
            FailureStep::Protocol,
            ErrorKind::Transient,
            format!(
                "the server closed the connection during {what}: try again later; if it keeps \
                 happening, check the server's logs"
            ),
        );
    }
    if e.is_parse() {
        return ConnectError::new(
            FailureStep::Protocol,
            ErrorKind::Permanent,
            format!(
                "the answer to {what} is not HTTP ({e}): check that the URL points at the \
                 right server"
            ),
        );
    }
    ConnectError::new(
        FailureStep::Protocol,
        ErrorKind::Transient,
        format!("HTTP error during {what}: {e}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_targets() {
        let t = Target::parse("https://mail.contoso.com/EWS/Exchange.asmx").unwrap();
        assert_eq!(
            (t.addr.host.as_str(), t.addr.port, t.addr.tls),
            ("mail.contoso.com", 443, TlsMode::Implicit)
        );
        assert_eq!(t.host_header, "mail.contoso.com");
        assert_eq!(t.url(), "https://mail.contoso.com/EWS/Exchange.asmx");
        let t = Target::parse("http://127.0.0.1:8080/a?b=1").unwrap();
        assert_eq!((t.addr.port, t.addr.tls), (8080, TlsMode::None));
        assert_eq!(
            (t.host_header.as_str(), t.path.as_str()),
            ("127.0.0.1:8080", "/a?b=1")
        );
        let t = Target::parse("https://[::1]:8443/EWS/Exchange.asmx").unwrap();
        assert_eq!(t.addr.host, "::1");
        assert!(Target::parse("ftp://x/").unwrap_err().contains("scheme"));
        assert!(Target::parse("mail.contoso.com").is_err());
    }
}
