//! The admin center: server-rendered pages at `/`, served by `serversync serve` next to the
//! REST API (issue #7).
//!
//! - **Sign-in** with an organization, an email address and a password (`serversync admin
//!   users set-password`; failures are throttled per address and per client, logged and
//!   audited by the engine), or an API token (the first administrator's is in the file named
//!   at the first start). A successful sign-in creates a *session token* — expiring after
//!   [`SESSION_HOURS`], ended by sign-out, a new password or disabling the user — kept only
//!   in an `HttpOnly; Secure; SameSite=Strict` cookie.
//! - **CSRF**: every form and htmx request carries a token derived from the session token
//!   (HMAC), checked before any handler on every request but GET and HEAD
//!   (`session::csrf_guard`), besides the SameSite cookie.
//! - **Reads** go straight to [`serversync_engine::Admin`] with the session's caller;
//!   **writes** go through the REST API in-process (the same JSON, validation and privilege
//!   checks), and a 422's field problems are shown next to the fields they name.
//! - **Assets** (htmx, the style sheet) are vendored and compiled in: nothing is fetched from
//!   elsewhere, and the pages work offline.

mod api;
mod charts;
mod names;
mod pages;
mod session;

use axum::Router;
use axum::routing::{MethodRouter, get, post};
use serversync_engine::Admin;
use std::net::IpAddr;
use std::sync::Arc;

pub use session::SESSION_HOURS;

/// What every page handler gets.
#[derive(Clone)]
pub struct Web {
    admin: Admin,
    /// The REST API router, called in-process for writes.
    api: Router,
    /// Reverse proxies whose `X-Forwarded-For` names the client (for the sign-in throttle).
    trusted_proxies: Arc<Vec<IpAddr>>,
}

/// The admin center's routes, given the engine's admin service and the REST API router.
pub fn router(admin: Admin, api: Router) -> Router {
    router_behind(admin, api, Vec::new())
}

/// [`router`], for a server behind the reverse proxies `trusted_proxies`: a request from one
/// of them is taken to come from the last address in `X-Forwarded-For` that is not a trusted
/// proxy. Serve it with `into_make_service_with_connect_info::<SocketAddr>()` so the peer is
/// known.
pub fn router_behind(admin: Admin, api: Router, trusted_proxies: Vec<IpAddr>) -> Router {
    let web = Web {
        admin,
        api,
        trusted_proxies: Arc::new(trusted_proxies),
    };
    let mut r = Router::new()
        .route("/", get(pages::dashboard::page))
        .route("/login", get(session::login_page))
        .route("/orgs", get(pages::orgs::list))
        .route("/profiles", get(pages::profiles::list))
        .route("/profiles/new", get(pages::profiles::new_form))
        .route("/profiles/{id}", get(pages::profiles::edit_form))
        .route("/settings", get(pages::settings::form))
        .route("/mailboxes", get(pages::mailboxes::list))
        .route("/mailboxes/{id}", get(pages::mailboxes::detail))
        .route("/mailboxes/{id}/links", get(pages::mailboxes::links))
        .route("/items/{id}", get(pages::records::item))
        .route("/activities", get(pages::records::activities))
        .route("/activities/{id}", get(pages::records::activity))
        .route("/outgoing", get(pages::records::outgoing))
        .route("/queue-items", get(pages::records::queue_items))
        .route("/records/{kind}/{id}", get(pages::records::record))
        .route("/alerts", get(pages::monitor::alerts))
        .route("/jobs", get(pages::monitor::jobs))
        .route("/jobs/table", get(pages::monitor::jobs_table))
        .route("/audit", get(pages::monitor::audit))
        .route("/tokens", get(pages::tokens::list))
        .route("/assets/htmx.min.js", get(pages::assets::htmx))
        .route("/assets/app.css", get(pages::assets::css));
    for (path, handler) in posts() {
        r = r.route(path, handler);
    }
    // Every request but GET and HEAD passes the CSRF check, whatever its route.
    r.layer(axum::middleware::from_fn(session::csrf_guard))
        .with_state(web)
}

/// Every POST route of the admin center: the router adds them from here, so the CSRF test
/// (`tests/csrf.rs`) covers each one, including any added later.
fn posts() -> Vec<(&'static str, MethodRouter<Web>)> {
    vec![
        ("/login", post(session::login)),
        ("/logout", post(session::logout)),
        ("/orgs/select", post(pages::orgs::select)),
        ("/profiles", post(pages::profiles::create)),
        ("/profiles/{id}", post(pages::profiles::update)),
        (
            "/profiles/{id}/default",
            post(pages::profiles::make_default),
        ),
        (
            "/profiles/{id}/test-enable",
            post(pages::profiles::test_enable),
        ),
        ("/profiles/{id}/pin", post(pages::profiles::pin)),
        ("/settings", post(pages::settings::save)),
        ("/mailboxes/bulk", post(pages::mailboxes::bulk)),
        ("/mailboxes/{id}", post(pages::mailboxes::update)),
        ("/mailboxes/{id}/sync-now", post(pages::mailboxes::sync_now)),
        ("/tokens/{id}/revoke", post(pages::tokens::revoke)),
        ("/activities/{id}/send", post(pages::records::send_again)),
    ]
}

/// The paths of the admin center's POST routes (`{id}` where a record's id goes).
pub fn post_paths() -> Vec<&'static str> {
    posts().into_iter().map(|(p, _)| p).collect()
}

/// Routes that take a POST without a session, so without a CSRF token: signing in. They are
/// refused when the browser says the request comes from another site (`Sec-Fetch-Site`).
pub const POSTS_WITHOUT_SESSION: &[&str] = &["/login"];
