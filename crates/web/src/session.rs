//! Sign-in, sign-out, the session cookie and CSRF tokens.

use crate::Web;
use crate::pages::{Page, render};
use askama::Template;
use axum::Form;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serversync_engine::AdminError;
use serversync_model::auth::Caller;
use serversync_model::org::Organization;
use std::net::{IpAddr, SocketAddr};

/// How long a web session lasts.
pub const SESSION_HOURS: i64 = 12;
const COOKIE: &str = "ss_session";
/// The organization an installation administrator chose (not a secret: access is checked).
const ORG_COOKIE: &str = "ss_org";

/// The signed-in user of a request.
pub struct Session {
    pub token: String,
    pub caller: Caller,
    pub org: Organization,
    /// The CSRF token every form and htmx request must carry.
    pub csrf: String,
}

/// The answer to a request that failed the CSRF check.
pub fn csrf_refused() -> Response {
    (
        axum::http::StatusCode::FORBIDDEN,
        "The form has expired or did not come from this site (CSRF check): reload the page and try again.",
    )
        .into_response()
}

/// Largest form the admin center reads.
const FORM_LIMIT: usize = 1 << 20;

/// The CSRF check of every request but GET and HEAD, whatever its route, before any handler
/// runs: with a session cookie, the request must carry the session's CSRF token — in the
/// `x-csrf-token` header (htmx) or the `_csrf` form field — else 403 and nothing happens.
/// Without a session cookie a request has no authority to abuse (the handlers send it to the
/// sign-in page), except signing in ([`crate::POSTS_WITHOUT_SESSION`]). Any request the browser
/// marks as coming from another site (`Sec-Fetch-Site: cross-site`) is refused, sign-in too.
pub async fn csrf_guard(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    if req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
    {
        return csrf_refused();
    }
    let Some(token) = cookie(req.headers(), COOKIE) else {
        return next.run(req).await;
    };
    if crate::POSTS_WITHOUT_SESSION.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("The form is larger than {FORM_LIMIT} bytes."),
        )
            .into_response();
    };
    let sent = match parts.headers.get("x-csrf-token") {
        Some(h) => h.to_str().unwrap_or_default().to_owned(),
        None => serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|f| f.into_iter().find(|(k, _)| k == "_csrf"))
            .map(|(_, v)| v)
            .unwrap_or_default(),
    };
    if sent.is_empty() || !constant_time_eq(sent.as_bytes(), csrf_for(&token).as_bytes()) {
        return csrf_refused();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn csrf_for(token: &str) -> String {
    serversync_vault::hmac_sha256_hex(token.as_bytes(), b"serversync web csrf")[..32].to_owned()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty() && v.len() < 512)
}

impl FromRequestParts<Web> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        let to_login = || {
            if parts.headers.contains_key("hx-request") {
                // htmx follows this header with a full page load.
                let mut r = ().into_response();
                r.headers_mut()
                    .insert("hx-redirect", HeaderValue::from_static("/login"));
                r
            } else {
                Redirect::to("/login").into_response()
            }
        };
        let Some(token) = cookie(&parts.headers, COOKIE) else {
            return Err(to_login());
        };
        let Ok(caller) = web.admin.authenticate(&token).await else {
            return Err(to_login());
        };
        // The organization chosen on the Organizations page, if the user may open it.
        let chosen = match cookie(&parts.headers, ORG_COOKIE) {
            Some(o) => web.admin.org_for(&caller, &o).await.ok(),
            None => None,
        };
        let org = match chosen {
            Some(o) => o,
            None => web
                .admin
                .org_for(&caller, &caller.user.org_id.to_string())
                .await
                .map_err(|_| to_login())?,
        };
        Ok(Session {
            csrf: csrf_for(&token),
            token,
            caller,
            org,
        })
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    page: Page,
    error: Option<String>,
    /// What was typed, shown again after a failure.
    org: String,
    email: String,
}

pub async fn login_page() -> Response {
    render(&LoginPage {
        page: Page::anonymous("Sign in"),
        error: None,
        org: "default".into(),
        email: String::new(),
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    org: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    token: String,
}

/// Where a request came from: the TCP peer, or — when the peer is one of
/// `server.trusted_proxies` — the last address in `X-Forwarded-For` that is not a trusted
/// proxy.
pub struct ClientAddr(pub Option<IpAddr>);

impl FromRequestParts<Web> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        Ok(ClientAddr(peer.map(|p| {
            client_ip(p, &parts.headers, &web.trusted_proxies)
        })))
    }
}

fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    let canonical = |ip: IpAddr| ip.to_canonical();
    let trusted_hop = |ip: IpAddr| trusted.iter().any(|t| canonical(*t) == canonical(ip));
    if !trusted_hop(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted_hop(ip) => client = ip,
            Ok(ip) => return ip,
            Err(_) => break,
        }
    }
    client
}

/// Signs in with an organization, email address and password, or an API token: a new session
/// token goes into the cookie.
pub async fn login(
    State(web): State<Web>,
    ClientAddr(client): ClientAddr,
    Form(f): Form<LoginForm>,
) -> Response {
    let failed = |status: StatusCode, msg: &str| {
        let mut r = render(&LoginPage {
            page: Page::anonymous("Sign in"),
            error: Some(msg.to_owned()),
            org: f.org.trim().to_owned(),
            email: f.email.trim().to_owned(),
        });
        *r.status_mut() = status;
        r
    };
    let token = f.token.trim();
    let caller = if !token.is_empty() {
        match web.admin.authenticate(token).await {
            Ok(c) => c,
            Err(_) => {
                return failed(
                    StatusCode::UNAUTHORIZED,
                    "This token is not valid (unknown, revoked or expired): check it, or create a new one with `serversync admin token create`.",
                );
            }
        }
    } else if !f.org.trim().is_empty() && !f.email.trim().is_empty() && !f.password.is_empty() {
        match web
            .admin
            .authenticate_password(&f.org, &f.email, &f.password, client)
            .await
        {
            Ok(c) => c,
            Err(AdminError::Throttled { retry_after }) => {
                let secs = retry_after.as_secs().max(1);
                let mut r = failed(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!(
                        "Too many failed sign-ins for this address or from this computer: try again in {secs} seconds."
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
                return r;
            }
            Err(AdminError::Busy) => {
                let mut r = failed(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is checking many sign-ins at once: try again in a moment.",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            Err(_) => {
                return failed(
                    StatusCode::UNAUTHORIZED,
                    "The organization, the email address or the password is wrong (or no password is set: `serversync admin users set-password`).",
                );
            }
        }
    } else {
        return failed(
            StatusCode::UNAUTHORIZED,
            "Enter your organization, email address and password, or an API token.",
        );
    };
    let session = match web
        .admin
        .create_session(&caller, chrono::Duration::hours(SESSION_HOURS))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            return failed(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("The session could not be created: {e}"),
            );
        }
    };
    let mut r = Redirect::to("/").into_response();
    let cookie = format!(
        "{COOKIE}={session}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_HOURS * 3600
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn logout(State(web): State<Web>, s: Session) -> Response {
    let _ = web.admin.end_session(&s.token).await;
    let mut r = Redirect::to("/login").into_response();
    for gone in [
        "ss_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        "ss_org=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
    ] {
        r.headers_mut()
            .append(header::SET_COOKIE, HeaderValue::from_static(gone));
    }
    r
}

/// The cookie that opens organization `org` (checked on every request).
pub fn org_cookie(org: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{ORG_COOKIE}={org}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_HOURS * 3600
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_peer_unless_the_peer_is_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("198.51.100.9, 203.0.113.5"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        let proxies = [ip("10.0.0.1"), ip("10.0.0.2")];
        // A peer that is no proxy: its forwarded-for header is the client's to forge.
        assert_eq!(client_ip(ip("192.0.2.7"), &h, &proxies), ip("192.0.2.7"));
        // Through trusted proxies: the last address they did not add themselves.
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &proxies), ip("203.0.113.5"));
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &h, &proxies),
            ip("203.0.113.5")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &proxies),
            ip("10.0.0.1")
        );
    }
}
