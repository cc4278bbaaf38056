//! The admin center's CSRF protection: every state-changing POST of a signed-in session without
//! its CSRF token, or with a wrong one, is refused (403) and changes nothing. The routes come
//! from `serversync_web::post_paths()`, the list the router itself is built from, so a POST
//! route added later is covered without touching this test.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use serversync_engine::Admin;
use serversync_model::auth::ApiToken;
use serversync_model::job::Job;
use serversync_model::mailbox::Mailbox;
use serversync_model::org::{Organization, User};
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::EmailSettings;
use serversync_store::Store;
use serversync_vault::MasterKey;
use tower::ServiceExt;

struct App {
    app: Router,
    store: Store,
    token: String,
    _dir: tempfile::TempDir,
}

impl App {
    async fn start() -> App {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = Store::open(&url, MasterKey::generate().unwrap())
            .await
            .unwrap();
        let admin = Admin::new(store.clone(), Default::default());
        let (_, token) = admin.bootstrap().await.unwrap().unwrap();
        let api = serversync_api::router(serversync_api::AppState {
            store: store.clone(),
            metrics: PrometheusBuilder::new().build_recorder().handle(),
            admin: admin.clone(),
            metrics_token: None,
        });
        App {
            app: serversync_web::router(admin, api.clone()).merge(api),
            store,
            token,
            _dir: dir,
        }
    }

    async fn send(&self, req: Request<Body>) -> (Response<()>, String) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, ()),
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    async fn api(&self, method: &str, path: &str, body: Value) -> Value {
        let req = Request::builder()
            .method(method)
            .uri(format!("/api/v1/orgs/default{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let (resp, body) = self.send(req).await;
        assert!(resp.status().is_success(), "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A form POST; `cookie` is the session's, `extra` more headers.
    async fn post(
        &self,
        path: &str,
        cookie: &str,
        form: &str,
        extra: &[(&str, &str)],
    ) -> (Response<()>, String) {
        let mut req = Request::post(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        self.send(req.body(Body::from(form.to_owned())).unwrap())
            .await
    }

    /// Signs in with the administrator's token; returns the session cookie.
    async fn sign_in(&self) -> String {
        let (resp, body) = self
            .post("/login", "", &format!("token={}", self.token), &[])
            .await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{body}");
        let set = resp.headers()[header::SET_COOKIE].to_str().unwrap();
        set.split(';').next().unwrap().to_owned()
    }

    /// The session's CSRF token, as a page shows it.
    async fn csrf(&self, cookie: &str) -> String {
        let req = Request::get("/settings")
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        let (_, page) = self.send(req).await;
        page.split("name=\"_csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a form with the CSRF token")
            .to_owned()
    }

    /// Every record a POST of the admin center could change, with its version, and the audit
    /// log.
    async fn state(&self) -> String {
        let s = &self.store;
        let mut out = Vec::new();
        macro_rules! versions {
            ($($t:ty),*) => {$(
                for r in s.list_all::<$t>(None, &[]).await.unwrap() {
                    out.push(format!("{} {} v{}", stringify!($t), serde_json::to_string(&r.value).unwrap(), r.version));
                }
            )*};
        }
        versions!(
            Organization,
            User,
            EmailServerProfile,
            EmailSettings,
            Mailbox,
            Job,
            ApiToken
        );
        out.push(format!(
            "audit {}",
            s.list_audit(None, 0, 1000).await.unwrap().len()
        ));
        out.join("\n")
    }
}

/// A plausible form for each route (a route added later gets an empty one: the CSRF check
/// comes before any field is read).
fn form(path: &str, profile: &str, mailbox: &str) -> String {
    match path {
        "/orgs/select" => "org=default".into(),
        "/profiles" => {
            "server_type=imap_smtp&name=Injected&incoming.location=evil.test&incoming.port=993"
                .into()
        }
        "/profiles/{id}" => "server_type=imap_smtp&name=Renamed".into(),
        "/settings" => format!("default_profile_id={profile}&require_approved_users=false"),
        "/mailboxes/bulk" => format!("ids={mailbox}&action=approve"),
        "/mailboxes/{id}" => "incoming_method=email_router".into(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn every_state_changing_post_needs_the_session_csrf_token() {
    let app = App::start().await;
    let profile = app
        .api(
            "POST",
            "/profiles",
            json!({"name": "P", "server_type": "imap_smtp",
                "incoming": {"location": "localhost", "port": 993, "tls": "implicit"},
                "outgoing": {"location": "localhost", "port": 587, "tls": "start_tls"}}),
        )
        .await;
    let profile = profile["id"].as_str().unwrap().to_owned();
    let user = app
        .api(
            "POST",
            "/users",
            json!({"full_name": "Carol", "email": "carol@example.test"}),
        )
        .await;
    let mailbox = user["mailbox"]["id"].as_str().unwrap().to_owned();
    let cookie = app.sign_in().await;
    let csrf = app.csrf(&cookie).await;
    let wrong = "0".repeat(csrf.len());

    let paths = serversync_web::post_paths();
    assert!(
        paths.len() >= 10,
        "the admin center's POST routes: {paths:?}"
    );
    let with_session: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| !serversync_web::POSTS_WITHOUT_SESSION.contains(p))
        .collect();
    assert_eq!(
        paths.len() - with_session.len(),
        1,
        "only signing in goes without a session: {:?}",
        serversync_web::POSTS_WITHOUT_SESSION
    );
    let url = |p: &str| {
        let id = if p.starts_with("/profiles/") {
            &profile
        } else {
            &mailbox
        };
        p.replace("{id}", id)
    };

    for path in &with_session {
        let fields = form(path, &profile, &mailbox);
        let join = |extra: &str| {
            [fields.as_str(), extra]
                .into_iter()
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
                .join("&")
        };
        let attempts = [
            ("without a token", join(""), vec![]),
            ("with an empty token", join("_csrf="), vec![]),
            (
                "with a wrong token",
                join(&format!("_csrf={wrong}")),
                vec![],
            ),
            (
                "with a wrong token in the htmx header",
                join(&format!("_csrf={csrf}")),
                vec![("x-csrf-token", wrong.as_str())],
            ),
        ];
        for (how, body, headers) in attempts {
            let before = app.state().await;
            let (resp, text) = app.post(&url(path), &cookie, &body, &headers).await;
            assert_eq!(
                resp.status(),
                StatusCode::FORBIDDEN,
                "POST {path} {how}: {text}"
            );
            assert!(text.contains("CSRF"), "POST {path} {how}: {text}");
            assert!(
                resp.headers().get(header::SET_COOKIE).is_none(),
                "POST {path} {how} set a cookie"
            );
            assert_eq!(
                app.state().await,
                before,
                "POST {path} {how} changed something"
            );
        }
    }

    // The same requests with the session's token get through (signing out last): the refusals
    // above were the CSRF check's, not a missing record or field.
    let mut last = with_session.clone();
    last.sort_by_key(|p| *p == "/logout");
    for path in last {
        let body = [form(path, &profile, &mailbox), format!("_csrf={csrf}")]
            .into_iter()
            .filter(|f| !f.is_empty())
            .collect::<Vec<_>>()
            .join("&");
        let (resp, text) = app.post(&url(path), &cookie, &body, &[]).await;
        assert_ne!(resp.status(), StatusCode::FORBIDDEN, "POST {path}: {text}");
        if path != "/logout" {
            assert_ne!(
                resp.headers().get(header::LOCATION).map(|l| l.as_bytes()),
                Some(&b"/login"[..]),
                "POST {path}: still signed in"
            );
        }
    }
    let (resp, _) = app
        .send(
            Request::get("/")
                .header(header::COOKIE, &cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.headers()[header::LOCATION], "/login", "signed out");
}

/// Signing in has no session to derive a token from; a sign-in the browser says comes from
/// another site is refused (no session is created for the attacker's account).
#[tokio::test]
async fn signing_in_from_another_site_is_refused() {
    let app = App::start().await;
    let before = app.state().await;
    let (resp, text) = app
        .post(
            "/login",
            "",
            &format!("token={}", app.token),
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{text}");
    assert!(resp.headers().get(header::SET_COOKIE).is_none());
    assert_eq!(app.state().await, before, "no session token was created");
    let (resp, text) = app
        .post(
            "/login",
            "",
            &format!("token={}", app.token),
            &[("sec-fetch-site", "same-origin")],
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "{text}");
}
