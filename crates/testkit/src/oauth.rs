//! A local OAuth 2.0 authorization server for tests: a token endpoint over HTTPS (the test CA's
//! `localhost` certificate) issuing bearer tokens by the refresh-token and client-credentials
//! grants, and an RFC 7662 introspection endpoint over plain HTTP on 127.0.0.1 for Dovecot's
//! `oauth2` passdb (`introspection_mode = post`). Tests issue refresh tokens, expire the access
//! tokens issued so far, revoke a refresh token, set the lifetime of new tokens and count the
//! grants the endpoint answered.
//!
//! HTTP/1.1 is spoken by hand (one request per connection, `Connection: close`): the two
//! endpoints need nothing more, and the testkit stays free of an HTTP server framework.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::tls::{TLS_SERVER_NAME, TlsFiles};
use crate::util::HOST;

/// Google's answer to a revoked or expired refresh token (`error_description`).
pub const REVOKED_DESCRIPTION: &str = "Token has been expired or revoked.";

#[derive(Debug, Default)]
struct State {
    client_id: String,
    client_secret: String,
    /// refresh token → (user, revoked)
    refresh: HashMap<String, (String, bool)>,
    /// access token → (user, active)
    access: HashMap<String, (String, bool)>,
    /// The user client-credentials tokens are for; `None`: that grant is refused.
    service_user: Option<String>,
    expires_in: u64,
    refresh_grants: usize,
    client_credentials_grants: usize,
    introspections: usize,
    issued: u64,
    /// The `scope` of each client-credentials grant.
    scopes: Vec<String>,
}

/// A running OAuth server; its tasks end when it is dropped.
#[derive(Debug)]
pub struct OAuthServer {
    token_url: String,
    introspection_url: String,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl OAuthServer {
    /// Starts both endpoints on free ports of 127.0.0.1 (inside a tokio runtime). Clients
    /// authenticate with `client_id` and `client_secret` in the form body. New access tokens
    /// live an hour until [`set_expires_in`](Self::set_expires_in).
    pub async fn start(tls: &TlsFiles, client_id: &str, client_secret: &str) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(&tls.server_cert)
            .context("reading the server certificate")?
            .collect::<Result<Vec<_>, _>>()
            .context("reading the server certificate")?;
        let key =
            PrivateKeyDer::from_pem_file(&tls.server_key).context("reading the server key")?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let state = Arc::new(Mutex::new(State {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            expires_in: 3600,
            ..State::default()
        }));
        let token_listener = TcpListener::bind((HOST, 0)).await?;
        let intro_listener = TcpListener::bind((HOST, 0)).await?;
        let token_url = format!(
            "https://{TLS_SERVER_NAME}:{}/token",
            token_listener.local_addr()?.port()
        );
        let introspection_url = format!(
            "http://{HOST}:{}/introspect",
            intro_listener.local_addr()?.port()
        );
        let s = state.clone();
        let token_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = token_listener.accept().await {
                let (acceptor, s) = (acceptor.clone(), s.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, &s).await;
                    }
                });
            }
        });
        let s = state.clone();
        let intro_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = intro_listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(tcp, &s).await;
                });
            }
        });
        Ok(OAuthServer {
            token_url,
            introspection_url,
            state,
            tasks: vec![token_task, intro_task],
        })
    }

    /// The token endpoint, `https://localhost:PORT/token`.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The introspection endpoint for Dovecot, `http://127.0.0.1:PORT/introspect`.
    pub fn introspection_url(&self) -> &str {
        &self.introspection_url
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new refresh token for `user` (as if the user had consented).
    pub fn issue_refresh_token(&self, user: &str) -> String {
        let token = format!("1//rt-{}", uuid::Uuid::new_v4().simple());
        self.state()
            .refresh
            .insert(token.clone(), (user.to_string(), false));
        token
    }

    /// Revokes a refresh token: the endpoint refuses it with `invalid_grant`, and the access
    /// tokens issued from it stay valid until they expire (as Google does).
    pub fn revoke_refresh_token(&self, token: &str) {
        if let Some(r) = self.state().refresh.get_mut(token) {
            r.1 = true;
        }
    }

    /// Every access token issued so far expires now (introspection answers `active: false`).
    pub fn expire_access_tokens(&self) {
        for a in self.state().access.values_mut() {
            a.1 = false;
        }
    }

    /// The `expires_in` of new access tokens, in seconds.
    pub fn set_expires_in(&self, seconds: u64) {
        self.state().expires_in = seconds;
    }

    /// Allows the client-credentials grant, issuing tokens for `user`.
    /// The `scope` each client-credentials grant asked for, in order.
    pub fn scopes(&self) -> Vec<String> {
        self.state().scopes.clone()
    }

    /// The user an access token was issued to, while it is active.
    pub fn token_owner(&self, token: &str) -> Option<String> {
        self.state()
            .access
            .get(token)
            .filter(|(_, active)| *active)
            .map(|(user, _)| user.clone())
    }

    pub fn allow_client_credentials(&self, user: &str) {
        self.state().service_user = Some(user.to_string());
    }

    /// Refresh-token grants answered with a token.
    pub fn refresh_grants(&self) -> usize {
        self.state().refresh_grants
    }

    /// Client-credentials grants answered with a token.
    pub fn client_credentials_grants(&self) -> usize {
        self.state().client_credentials_grants
    }

    /// Introspection requests (one per sign-in Dovecot checked).
    pub fn introspections(&self) -> usize {
        self.state().introspections
    }
}

/// Reads one request, answers it, closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    state: &Mutex<State>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = &buf[head_end..buf.len().min(head_end + length)];
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, json) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if path.starts_with("/token") {
            token(&mut s, &form)
        } else if path.starts_with("/introspect") {
            s.introspections += 1;
            let answer = form
                .get("token")
                .and_then(|t| s.access.get(t))
                .filter(|(_, active)| *active)
                .map(|(user, _)| serde_json::json!({"active": true, "username": user}))
                .unwrap_or_else(|| serde_json::json!({"active": false}));
            (200, answer)
        } else {
            (404, serde_json::json!({"error": "not_found"}))
        }
    };
    let body = json.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        _ => "Not Found",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    io.write_all(response.as_bytes()).await?;
    io.flush().await?;
    let _ = io.shutdown().await;
    Ok(())
}

fn token(s: &mut State, form: &HashMap<String, String>) -> (u16, serde_json::Value) {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    if field("client_id") != s.client_id || field("client_secret") != s.client_secret {
        return (
            401,
            serde_json::json!({"error": "invalid_client", "error_description": "The OAuth client was not found."}),
        );
    }
    let user = match field("grant_type") {
        "refresh_token" => match s.refresh.get(field("refresh_token")) {
            Some((user, false)) => {
                s.refresh_grants += 1;
                user.clone()
            }
            _ => {
                return (
                    400,
                    serde_json::json!({"error": "invalid_grant", "error_description": REVOKED_DESCRIPTION}),
                );
            }
        },
        "client_credentials" => match &s.service_user {
            Some(user) => {
                s.client_credentials_grants += 1;
                s.scopes.push(field("scope").to_owned());
                user.clone()
            }
            None => {
                return (
                    400,
                    serde_json::json!({"error": "unauthorized_client", "error_description": "The client may not use the client credentials grant."}),
                );
            }
        },
        other => {
            return (
                400,
                serde_json::json!({"error": "unsupported_grant_type", "error_description": format!("grant_type {other:?}")}),
            );
        }
    };
    s.issued += 1;
    let access = format!("ya29.test-{}-{}", s.issued, uuid::Uuid::new_v4().simple());
    s.access.insert(access.clone(), (user, true));
    (
        200,
        serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": s.expires_in}),
    )
}
