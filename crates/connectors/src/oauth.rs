//! OAuth 2.0 access tokens for mail servers (RFC 6749): the client-credentials grant and the
//! refresh-token grant against a token endpoint, through the shared [`crate::http`] client,
//! and a [`TokenProvider`] caching tokens until shortly before they expire.
//!
//! Every failure is a [`ConnectError`] at step `authentication` (getting a token is part of
//! signing in): a refusal by the endpoint (`invalid_grant`, `invalid_client`, …) is of kind
//! `Auth` and quotes the server's `error` and `error_description`; an unreachable endpoint or
//! a 5xx is `Transient`; an address the network policy refuses is `Config`. Secrets (client
//! secret, refresh token, access token) are [`Secret`]s: never in an error, a log or `Debug`.

use crate::error::ConnectError;
use crate::http;
use crate::policy::NetworkPolicy;
use crate::tls::TlsTrust;
use aws_lc_rs::digest;
use serversync_model::{ErrorKind, FailureStep, Secret};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Google's token endpoint (Gmail OAuth).
pub const GOOGLE_TOKEN_ENDPOINT: &str = "https://oauth2.googleapis.com/token";

/// A token is used only while it has at least this long left; a token issued for less is
/// used once.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// The lifetime assumed when the endpoint does not say (`expires_in` is only RECOMMENDED).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// How a token is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// `grant_type=client_credentials`: the application's own token (server to server).
    ClientCredentials { scope: Option<String> },
    /// `grant_type=refresh_token`: a token for the account that consented, from the refresh
    /// token issued then (Gmail: one per mailbox).
    RefreshToken {
        refresh_token: Secret,
        scope: Option<String>,
    },
}

/// One token request: where, which client, which grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The token endpoint's `https://` URL.
    pub endpoint: String,
    pub client_id: String,
    /// Sent in the form body (`client_secret_post`, what Google expects).
    pub client_secret: Option<Secret>,
    /// A certificate and its private key (PEM, RSA): the client signs in with a
    /// `private_key_jwt` assertion (RFC 7523) instead of a secret — what Microsoft Entra ID
    /// calls a certificate credential.
    pub client_certificate: Option<Secret>,
    pub grant: Grant,
}

impl TokenRequest {
    /// The cache key: a digest of everything the token depends on, so a changed secret,
    /// refresh token or endpoint never reuses a token obtained with the old one.
    fn key(&self) -> [u8; 32] {
        let mut d = digest::Context::new(&digest::SHA256);
        let mut field = |s: &str| {
            d.update(&(s.len() as u64).to_be_bytes());
            d.update(s.as_bytes());
        };
        field(&self.endpoint);
        field(&self.client_id);
        field(self.client_secret.as_ref().map_or("", |s| s.expose()));
        field(self.client_certificate.as_ref().map_or("", |s| s.expose()));
        match &self.grant {
            Grant::ClientCredentials { scope } => {
                field("client_credentials");
                field(scope.as_deref().unwrap_or(""));
            }
            Grant::RefreshToken {
                refresh_token,
                scope,
            } => {
                field("refresh_token");
                field(refresh_token.expose());
                field(scope.as_deref().unwrap_or(""));
            }
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(d.finish().as_ref());
        key
    }

    fn form(&self) -> Result<Vec<(&'static str, String)>, ConnectError> {
        let mut form = vec![("client_id", self.client_id.clone())];
        if let Some(pem) = &self.client_certificate {
            form.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
            form.push((
                "client_assertion",
                client_assertion(pem.expose(), &self.endpoint, &self.client_id)?,
            ));
        } else if let Some(s) = &self.client_secret {
            form.push(("client_secret", s.expose().to_owned()));
        }
        let scope = match &self.grant {
            Grant::ClientCredentials { scope } => {
                form.push(("grant_type", "client_credentials".to_owned()));
                scope
            }
            Grant::RefreshToken {
                refresh_token,
                scope,
            } => {
                form.push(("grant_type", "refresh_token".to_owned()));
                form.push(("refresh_token", refresh_token.expose().to_owned()));
                scope
            }
        };
        if let Some(s) = scope {
            form.push(("scope", s.clone()));
        }
        Ok(form)
    }

    fn what(&self) -> &'static str {
        match self.grant {
            Grant::ClientCredentials { .. } => "the client credentials",
            Grant::RefreshToken { .. } => "the refresh token",
        }
    }
}

/// RFC 7523's client assertion type.
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long a client assertion is valid.
const ASSERTION_LIFETIME: i64 = 600;

/// A `private_key_jwt` client assertion for `client_id` at `audience` (the token endpoint),
/// signed RS256 by the private key in `pem`, naming its certificate by thumbprint (`x5t`,
/// SHA-1 as Entra ID has long read it, and `x5t#S256`).
pub fn client_assertion(
    pem: &str,
    audience: &str,
    client_id: &str,
) -> Result<String, ConnectError> {
    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str| {
        ConnectError::new(
            FailureStep::Authentication,
            ErrorKind::Config,
            format!(
                "the client certificate {what}: enter the certificate and its RSA private key \
                 (PEM, unencrypted), as uploaded to the app registration"
            ),
        )
        .with_code("invalid_client_certificate")
    };
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| bad("has no CERTIFICATE block"))?;
    let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| bad("has no PRIVATE KEY block"))?
    {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        _ => return Err(bad("key is not an RSA key")),
    }
    .map_err(|_| bad("key is not a usable RSA key"))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert.as_ref());
    let sha256 = digest::digest(&digest::SHA256, cert.as_ref());
    let header = serde_json::json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t": b64.encode(sha1.as_ref()),
        "x5t#S256": b64.encode(sha256.as_ref()),
    });
    let now = chrono::Utc::now().timestamp();
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| bad("could not be used (no randomness)"))?;
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": b64.encode(jti),
        "nbf": now,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME,
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let mut signature = vec![0u8; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| bad("key could not sign"))?;
    Ok(format!("{signing_input}.{}", b64.encode(signature)))
}

/// An access token and how long it is valid from when it was received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: Secret,
    pub lifetime: Duration,
}

/// Reads a token endpoint's answer (RFC 6749 §5.1, §5.2): the token, or the failure at step
/// `authentication` with the server's `error` and `error_description`.
pub fn parse_token_response(
    status: u16,
    body: &[u8],
    what: &str,
) -> Result<AccessToken, ConnectError> {
    #[derive(serde::Deserialize)]
    struct Answer {
        access_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<serde_json::Value>,
        error: Option<String>,
        error_description: Option<String>,
    }
    let step = FailureStep::Authentication;
    let answer: Option<Answer> = serde_json::from_slice(body).ok();
    if (200..300).contains(&status) {
        let Some(a) = answer else {
            return Err(ConnectError::new(
                step,
                ErrorKind::Permanent,
                "the token endpoint's answer is not the JSON of a token: check the token \
                 endpoint URL",
            ));
        };
        let Some(token) = a.access_token.filter(|t| !t.is_empty()) else {
            return Err(ConnectError::new(
                step,
                ErrorKind::Permanent,
                "the token endpoint answered without an access_token: check the token endpoint \
                 URL",
            ));
        };
        if let Some(t) = &a.token_type
            && !t.eq_ignore_ascii_case("bearer")
        {
            return Err(ConnectError::new(
                step,
                ErrorKind::Permanent,
                format!("the token endpoint issued a {t:?} token; mail servers take bearer tokens"),
            ));
        }
        // A number, or a number in a string (some servers send "3600").
        let lifetime = match a.expires_in {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            _ => None,
        }
        .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        return Ok(AccessToken {
            token: Secret::new(token),
            lifetime,
        });
    }
    let (error, description) = answer
        .map(|a| (a.error, a.error_description))
        .unwrap_or_default();
    // Entra ID's descriptions run on with trace and correlation ids: the first line says it.
    let description = description.map(|d| d.lines().next().unwrap_or_default().to_owned());
    if let Some(e) = description.as_deref().and_then(entra_refusal) {
        return Err(e);
    }
    let said = match (error, description) {
        (Some(e), Some(d)) => format!("{} ({})", one_line(&e), one_line(&d)),
        (Some(e), None) => one_line(&e),
        (None, Some(d)) => one_line(&d),
        (None, None) => format!("HTTP {status}"),
    };
    let (kind, fix) = match status {
        400 | 401 | 403 => (
            ErrorKind::Auth,
            match what {
                "the refresh token" => {
                    "the mailbox's consent was revoked or has expired: sign in to the mailbox \
                     again to issue a new refresh token, and check the client id and secret"
                }
                _ => "check the client id and secret and the application's permissions",
            },
        ),
        429 => (
            ErrorKind::Throttled,
            "the token endpoint is limiting requests: try again later",
        ),
        500..=599 => (
            ErrorKind::Transient,
            "the token endpoint is temporarily unavailable: try again later",
        ),
        _ => (ErrorKind::Permanent, "check the token endpoint URL"),
    };
    Err(ConnectError::new(
        step,
        kind,
        format!("the token endpoint refused {what}: {said}: {fix}"),
    ))
}

/// What Microsoft Entra ID's `AADSTS` code in a refusal means, with its own code and fix; the
/// server's text is quoted. `None` for a description without a known code.
fn entra_refusal(description: &str) -> Option<ConnectError> {
    let d = description.trim_start();
    let code: String = d
        .strip_prefix("AADSTS")?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let (kind, ours, fix) = match code.as_str() {
        "90002" | "900023" | "90072" => (
            ErrorKind::Config,
            "tenant_not_found",
            "check the profile's directory (tenant) id: it is the tenant of the mailboxes, a GUID or a domain such as contoso.onmicrosoft.com",
        ),
        "700016" => (
            ErrorKind::Config,
            "application_not_found",
            "the application is not known in this tenant: check the application (client) id, and for mailboxes of another tenant have that tenant's global or Exchange administrator consent to the application",
        ),
        "7000215" => (
            ErrorKind::Auth,
            "invalid_client_secret",
            "the client secret is wrong: enter the secret's value (not its id) from the app registration's Certificates & secrets page",
        ),
        "7000222" => (
            ErrorKind::Auth,
            "client_secret_expired",
            "the client secret has expired: create a new one in the app registration and enter it in the profile",
        ),
        "700027" | "700023" => (
            ErrorKind::Auth,
            "invalid_client_assertion",
            "the certificate's signed assertion was refused: upload the profile's certificate to the app registration, or check the server's clock",
        ),
        "53003" | "50076" | "50079" | "50158" | "50074" => (
            ErrorKind::Config,
            "mfa_not_supported",
            "conditional access or multi-factor authentication blocks the application; server-side synchronization signs in without a person and cannot complete it: exclude the application's service principal from the policy",
        ),
        "65001" | "500011" => (
            ErrorKind::Config,
            "consent_missing",
            "grant admin consent to the application in the tenant (Mail.ReadWrite and Mail.Send application permissions)",
        ),
        "1002012" | "70011" => (
            ErrorKind::Config,
            "invalid_scope",
            "the requested scope is refused: check the profile's cloud (authority)",
        ),
        _ => return None,
    };
    Some(
        ConnectError::new(
            FailureStep::Authentication,
            kind,
            format!(
                "Microsoft Entra ID refused the token request: {}: {fix}",
                one_line(d)
            ),
        )
        .with_code(ours),
    )
}

/// A tenant's cloud as Microsoft Entra ID's OpenID metadata describes it
/// (`<authority>/<tenant>/v2.0/.well-known/openid-configuration`, which any cloud's
/// authority answers for any tenant): where its tokens come from, and Microsoft Graph's root
/// in that cloud (`https://` and its `msgraph_host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraCloud {
    pub token_endpoint: String,
    pub graph_root: String,
}

/// Reads the OpenID metadata answer for `tenant`; a refusal (an unknown tenant is HTTP 400
/// with `AADSTS90002`) fails at step `authentication` like a token request.
pub fn parse_openid_metadata(
    status: u16,
    body: &[u8],
    tenant: &str,
) -> Result<EntraCloud, ConnectError> {
    #[derive(serde::Deserialize)]
    struct Metadata {
        token_endpoint: Option<String>,
        msgraph_host: Option<String>,
    }
    if !(200..300).contains(&status) {
        return match parse_token_response(status, body, "the tenant's metadata") {
            Err(e) => Err(e),
            Ok(_) => Err(ConnectError::new(
                FailureStep::Authentication,
                ErrorKind::Permanent,
                format!("Microsoft Entra ID answered HTTP {status} for the tenant {tenant}"),
            )),
        };
    }
    let bad = |what: &str| {
        ConnectError::new(
            FailureStep::Authentication,
            ErrorKind::Permanent,
            format!(
                "Microsoft Entra ID's metadata for the tenant {} has no usable {what}: choose \
                 the profile's authority (cloud) instead of automatic",
                one_line(tenant)
            ),
        )
    };
    let m: Metadata = serde_json::from_slice(body).map_err(|_| bad("JSON"))?;
    let token_endpoint = m
        .token_endpoint
        .filter(|t| t.starts_with("https://"))
        .ok_or_else(|| bad("token_endpoint"))?;
    let host = m
        .msgraph_host
        .map(|h| h.trim().trim_end_matches('/').to_owned())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@', '?', '#']))
        .ok_or_else(|| bad("msgraph_host"))?;
    Ok(EntraCloud {
        token_endpoint,
        graph_root: format!("https://{host}"),
    })
}

/// Asks `authority` (`https://login.microsoftonline.com`, or a test server) for `tenant`'s
/// cloud (no cache).
pub async fn entra_cloud(
    trust: &TlsTrust,
    policy: &Arc<NetworkPolicy>,
    timeout: Duration,
    authority: &str,
    tenant: &str,
) -> Result<EntraCloud, ConnectError> {
    let step = FailureStep::Authentication;
    let url = format!(
        "{}/{}/v2.0/.well-known/openid-configuration",
        authority.trim().trim_end_matches('/'),
        url::form_urlencoded::byte_serialize(tenant.trim().as_bytes()).collect::<String>()
    );
    let client = entra_client(trust, policy, timeout)?;
    let fail = |e: reqwest::Error| {
        ConnectError::new(
            step,
            ErrorKind::Transient,
            format!(
                "asking Microsoft Entra ID for the tenant's cloud ({url}): {}",
                http::describe(&e)
            ),
        )
    };
    let response = client
        .get(&url)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(fail)?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(fail)?;
    parse_openid_metadata(status, &body, tenant)
}

/// The HTTP client for token endpoints and their metadata.
fn entra_client(
    trust: &TlsTrust,
    policy: &Arc<NetworkPolicy>,
    timeout: Duration,
) -> Result<reqwest::Client, ConnectError> {
    http::client(
        trust,
        policy.clone(),
        http::TOKEN_ENDPOINTS,
        concat!("serversync/", env!("CARGO_PKG_VERSION")),
        timeout,
    )
    .map_err(|e| {
        ConnectError::new(
            FailureStep::Authentication,
            ErrorKind::Bug,
            format!("cannot set up the HTTP client: {}", http::describe(&e)),
        )
    })
}

/// Server text for a one-line message, bounded.
fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    s.trim().to_string()
}

/// Asks the token endpoint once (no cache).
pub async fn request_token(
    client: &reqwest::Client,
    policy: &NetworkPolicy,
    req: &TokenRequest,
) -> Result<AccessToken, ConnectError> {
    let step = FailureStep::Authentication;
    let url = reqwest::Url::parse(&req.endpoint)
        .ok()
        .filter(|u| u.scheme() == "https" && u.host_str().is_some())
        .ok_or_else(|| {
            ConnectError::new(
                step,
                ErrorKind::Config,
                "the token endpoint must be an https:// URL: check the profile's OAuth settings",
            )
        })?;
    if let Some((ip, class)) = http::refused_ip(policy, &url) {
        return Err(ConnectError::new(
            step,
            ErrorKind::Config,
            format!(
                "the token endpoint {ip} is {class}, and this installation does not {}: {}",
                http::TOKEN_ENDPOINTS.refused,
                http::TOKEN_ENDPOINTS.fix
            ),
        ));
    }
    let host = url.host_str().unwrap_or_default().to_string();
    let response = client
        .post(url)
        .header("Accept", "application/json")
        .form(&req.form()?)
        .send()
        .await
        .map_err(|e| {
            // Refused by the policy's resolver: a configuration problem, not a transient one.
            let text = http::describe(&e);
            let kind = if text.contains("network.allow_ranges") {
                ErrorKind::Config
            } else {
                ErrorKind::Transient
            };
            ConnectError::new(
                step,
                kind,
                format!("requesting a token from {host}: {text}"),
            )
        })?;
    let status = response.status().as_u16();
    let body = response.bytes().await.map_err(|e| {
        ConnectError::new(
            step,
            ErrorKind::Transient,
            format!("reading the token from {host}: {}", http::describe(&e)),
        )
    })?;
    parse_token_response(status, &body, req.what())
}

struct Cached {
    token: Secret,
    valid_until: Instant,
}

/// Access tokens by request, reused until [`REFRESH_MARGIN`] before they expire. Share one
/// per process: each mailbox's or profile's request is its own key.
pub struct TokenProvider {
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    margin: Duration,
}

impl Default for TokenProvider {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.cache.lock().map_or(0, |c| c.len());
        f.debug_struct("TokenProvider")
            .field("cached", &n)
            .finish_non_exhaustive()
    }
}

impl TokenProvider {
    pub fn new() -> Self {
        Self {
            cache: Mutex::new(HashMap::new()),
            margin: REFRESH_MARGIN,
        }
    }

    /// A token for `req`: the cached one while it has more than the margin left, else a new
    /// one from the endpoint (through an HTTP client built on `trust` and `policy`).
    pub async fn token(
        &self,
        trust: &TlsTrust,
        policy: &Arc<NetworkPolicy>,
        timeout: Duration,
        req: &TokenRequest,
    ) -> Result<Secret, ConnectError> {
        self.token_with(req, || async {
            let client = entra_client(trust, policy, timeout)?;
            request_token(&client, policy, req).await
        })
        .await
    }

    /// [`token`](Self::token) with the request made by `fetch` (what tests replace).
    pub async fn token_with<F, Fut>(
        &self,
        req: &TokenRequest,
        fetch: F,
    ) -> Result<Secret, ConnectError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<AccessToken, ConnectError>>,
    {
        let key = req.key();
        let now = Instant::now();
        if let Some(c) = self.lock().get(&key)
            && now < c.valid_until
        {
            return Ok(c.token.clone());
        }
        let fresh = fetch().await?;
        let received = Instant::now();
        let usable = fresh.lifetime.saturating_sub(self.margin);
        let mut cache = self.lock();
        cache.retain(|_, c| c.valid_until > received);
        if !usable.is_zero() {
            cache.insert(
                key,
                Cached {
                    token: fresh.token.clone(),
                    valid_until: received + usable,
                },
            );
        }
        Ok(fresh.token)
    }

    /// Drops the cached token of `req`: the server refused it (revoked or expired early), so
    /// the next [`token`](Self::token) asks the endpoint again.
    pub fn forget(&self, req: &TokenRequest) {
        self.lock().remove(&req.key());
    }

    /// Drops `token` wherever it is cached: a mail server refused it, so the request it came
    /// from asks the endpoint again next time.
    pub fn forget_token(&self, token: &Secret) {
        self.lock().retain(|_, c| c.token != *token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn req(refresh: &str) -> TokenRequest {
        TokenRequest {
            endpoint: "https://oauth.example/token".into(),
            client_id: "client".into(),
            client_secret: Some(Secret::new("client-secret")),
            client_certificate: None,
            grant: Grant::RefreshToken {
                refresh_token: Secret::new(refresh),
                scope: None,
            },
        }
    }

    async fn get(
        p: &TokenProvider,
        r: &TokenRequest,
        n: &AtomicUsize,
        lifetime: u64,
    ) -> Result<String, ConnectError> {
        p.token_with(r, || async {
            let i = n.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(AccessToken {
                token: Secret::new(format!("token-{i}")),
                lifetime: Duration::from_secs(lifetime),
            })
        })
        .await
        .map(|s| s.expose().to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn reuses_a_token_until_the_margin_before_it_expires() {
        let p = TokenProvider::new();
        let n = AtomicUsize::new(0);
        let r = req("rt");
        assert_eq!(get(&p, &r, &n, 3600).await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(3600 - 300 - 1)).await;
        assert_eq!(get(&p, &r, &n, 3600).await.unwrap(), "token-1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(get(&p, &r, &n, 3600).await.unwrap(), "token-2");
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_shorter_than_the_margin_is_used_once() {
        let p = TokenProvider::new();
        let n = AtomicUsize::new(0);
        let r = req("rt");
        assert_eq!(get(&p, &r, &n, 60).await.unwrap(), "token-1");
        assert_eq!(get(&p, &r, &n, 60).await.unwrap(), "token-2");
    }

    #[tokio::test(start_paused = true)]
    async fn forget_and_other_keys_fetch_anew() {
        let p = TokenProvider::new();
        let n = AtomicUsize::new(0);
        let (a, b) = (req("rt-a"), req("rt-b"));
        assert_eq!(get(&p, &a, &n, 3600).await.unwrap(), "token-1");
        assert_eq!(get(&p, &b, &n, 3600).await.unwrap(), "token-2");
        assert_eq!(get(&p, &a, &n, 3600).await.unwrap(), "token-1");
        p.forget(&a);
        assert_eq!(get(&p, &a, &n, 3600).await.unwrap(), "token-3");
        // A token a server refused is dropped by its value.
        p.forget_token(&Secret::new("token-3"));
        assert_eq!(get(&p, &a, &n, 3600).await.unwrap(), "token-4");
        assert_eq!(get(&p, &a, &n, 3600).await.unwrap(), "token-4");
        assert_eq!(get(&p, &b, &n, 3600).await.unwrap(), "token-2");
        // A changed client secret is another key.
        let mut c = a.clone();
        c.client_secret = Some(Secret::new("rotated"));
        assert_eq!(get(&p, &c, &n, 3600).await.unwrap(), "token-5");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_not_cached() {
        let p = TokenProvider::new();
        let n = AtomicUsize::new(0);
        let r = req("rt");
        let e = p
            .token_with(&r, || async {
                Err(parse_token_response(
                    400,
                    br#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
                    "the refresh token",
                )
                .unwrap_err())
            })
            .await
            .unwrap_err();
        assert_eq!(e.step, FailureStep::Authentication);
        assert_eq!(get(&p, &r, &n, 3600).await.unwrap(), "token-1");
    }

    #[test]
    fn token_answers() {
        let t = parse_token_response(
            200,
            br#"{"access_token":"ya29.x","token_type":"Bearer","expires_in":3599}"#,
            "the refresh token",
        )
        .unwrap();
        assert_eq!(t.token.expose(), "ya29.x");
        assert_eq!(t.lifetime, Duration::from_secs(3599));
        let t =
            parse_token_response(200, br#"{"access_token":"a","expires_in":"60"}"#, "x").unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(60));
        let t = parse_token_response(200, br#"{"access_token":"a"}"#, "x").unwrap();
        assert_eq!(t.lifetime, DEFAULT_LIFETIME);
        assert!(!format!("{t:?}").contains("\"a\""), "{t:?}");

        let e = parse_token_response(
            400,
            br#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            "the refresh token",
        )
        .unwrap_err();
        assert_eq!(e.step, FailureStep::Authentication);
        assert_eq!(e.kind, ErrorKind::Auth);
        assert!(
            e.message
                .contains("invalid_grant (Token has been expired or revoked.)"),
            "{e}"
        );
        let e = parse_token_response(
            401,
            br#"{"error":"invalid_client"}"#,
            "the client credentials",
        )
        .unwrap_err();
        assert!(e.message.contains("invalid_client"), "{e}");
        let e = parse_token_response(503, b"<html>down</html>", "x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.message.contains("HTTP 503"), "{e}");
        let e = parse_token_response(200, br#"{"token_type":"bearer"}"#, "x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Permanent);
        let e = parse_token_response(200, br#"{"access_token":"a","token_type":"mac"}"#, "x")
            .unwrap_err();
        assert!(e.message.contains("bearer"), "{e}");
    }

    #[test]
    fn openid_metadata_gives_the_token_endpoint_and_graph_root() {
        let us = br#"{"token_endpoint":"https://login.microsoftonline.us/t1/oauth2/v2.0/token","cloud_instance_name":"microsoftonline.us","msgraph_host":"graph.microsoft.us"}"#;
        assert_eq!(
            parse_openid_metadata(200, us, "t1").unwrap(),
            EntraCloud {
                token_endpoint: "https://login.microsoftonline.us/t1/oauth2/v2.0/token".into(),
                graph_root: "https://graph.microsoft.us".into(),
            }
        );
        let unknown = br#"{"error":"invalid_tenant","error_description":"AADSTS90002: Tenant 'nope' not found. Check to make sure you have the correct tenant ID."}"#;
        let e = parse_openid_metadata(400, unknown, "nope").unwrap_err();
        assert_eq!(e.code.as_deref(), Some("tenant_not_found"), "{e}");
        let odd = br#"{"token_endpoint":"https://x/t/oauth2/v2.0/token","msgraph_host":"evil.example/path"}"#;
        let e = parse_openid_metadata(200, odd, "t").unwrap_err();
        assert!(e.message.contains("msgraph_host"), "{e}");
    }

    #[test]
    fn entra_refusals_name_their_cause() {
        let body = |code: &str, text: &str| {
            format!(
                r#"{{"error":"invalid_client","error_description":"AADSTS{code}: {text}\r\nTrace ID: 0b1c\r\nCorrelation ID: 9f2e\r\nTimestamp: 2026-12-05 10:00:00Z","error_codes":[{code}]}}"#
            )
        };
        for (status, code, ours, kind) in [
            (400, "90002", "tenant_not_found", ErrorKind::Config),
            (400, "700016", "application_not_found", ErrorKind::Config),
            (401, "7000215", "invalid_client_secret", ErrorKind::Auth),
            (401, "7000222", "client_secret_expired", ErrorKind::Auth),
            (400, "53003", "mfa_not_supported", ErrorKind::Config),
            (400, "50076", "mfa_not_supported", ErrorKind::Config),
        ] {
            let e = parse_token_response(status, body(code, "text").as_bytes(), "x").unwrap_err();
            assert_eq!(e.code.as_deref(), Some(ours), "{code}");
            assert_eq!(
                (e.step, e.kind),
                (FailureStep::Authentication, kind),
                "{code}"
            );
            assert!(e.message.contains(&format!("AADSTS{code}: text")), "{e}");
            assert!(!e.message.contains("Trace ID"), "{e}");
        }
        // An unknown code keeps the general wording.
        let e = parse_token_response(400, body("12345", "other").as_bytes(), "x").unwrap_err();
        assert_eq!(e.code, None);
        assert!(e.message.contains("AADSTS12345"), "{e}");
    }

    #[test]
    fn the_form_carries_the_grant_and_debug_hides_secrets() {
        let r = req("the-refresh-token");
        let form = r.form().unwrap();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| *a == k && b == v);
        assert!(has("grant_type", "refresh_token"));
        assert!(has("refresh_token", "the-refresh-token"));
        assert!(has("client_secret", "client-secret"));
        let dbg = format!("{r:?}");
        assert!(
            !dbg.contains("the-refresh-token") && !dbg.contains("client-secret"),
            "{dbg}"
        );
        let cc = TokenRequest {
            grant: Grant::ClientCredentials {
                scope: Some("https://mail.example/.default".into()),
            },
            ..r
        };
        let form = cc.form().unwrap();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| *a == k && b == v);
        assert!(has("grant_type", "client_credentials"));
        assert!(has("scope", "https://mail.example/.default"));
        assert!(!form.iter().any(|(k, _)| *k == "refresh_token"));
    }
}
