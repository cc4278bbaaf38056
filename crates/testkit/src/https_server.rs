//! The HTTPS serving both protocol doubles (EWS, Microsoft Graph) share: the test CA's
//! `localhost` certificate, and an axum app served by hyper HTTP/1.1 per TLS connection, each
//! connection with its own state `C` in the request extensions (NTLM authenticates a
//! connection), which a fault can use to drop it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tower_service::Service as _;

use crate::tls::TlsFiles;

/// A connection's state: made when the TLS handshake is done, dropped with the connection.
pub(crate) trait Connection: Default + Send + Sync + 'static {
    /// Notified to close the connection at once (a dropped-connection fault).
    fn kill(&self) -> &Notify;
}

/// A TLS acceptor with `tls`'s `localhost` certificate (HTTP/1.1 only), and the leaf
/// certificate's DER (for NTLM's channel binding).
pub(crate) fn acceptor(tls: &TlsFiles) -> Result<(tokio_rustls::TlsAcceptor, Vec<u8>)> {
    let certs = CertificateDer::pem_file_iter(&tls.server_cert)
        .context("reading the server certificate")?
        .collect::<Result<Vec<_>, _>>()
        .context("reading the server certificate")?;
    let leaf = certs.first().context("no server certificate")?.to_vec();
    let key = PrivateKeyDer::from_pem_file(&tls.server_key).context("reading the server key")?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(config)), leaf))
}

/// Serves `app` on every connection `listener` accepts until the returned sender is dropped
/// (or sends): TLS handshake and each request head within `header_timeout`, keep-alive.
pub(crate) fn serve<C: Connection>(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    header_timeout: Duration,
) -> (JoinHandle<()>, watch::Sender<bool>) {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app, mut stop) = (acceptor.clone(), app.clone(), shutdown_rx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(Ok(tls)) = tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await
                else {
                    return;
                };
                let conn = Arc::new(C::default());
                let c = conn.clone();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let mut req = req.map(Body::new);
                    req.extensions_mut().insert(c.clone());
                    let mut app = app.clone();
                    async move { app.call(req).await }
                });
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true);
                let serve = http.serve_connection(TokioIo::new(tls), svc);
                tokio::select! {
                    _ = serve => {}
                    _ = conn.kill().notified() => {}
                    _ = stop.changed() => {}
                }
            });
        }
    });
    (task, shutdown)
}
