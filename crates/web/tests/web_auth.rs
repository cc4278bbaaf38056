//! The admin center over HTTP (in-process, no browser): sign-in, sessions, API tokens and the
//! audit log (issue #14), on SQLite and PostgreSQL.

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request};
use http_body_util::BodyExt;
use serversync_engine::Admin;
use serversync_store::{Backend, Store};
use serversync_testkit::{PgDatabase, TestEnv};
use serversync_vault::MasterKey;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use tower::ServiceExt;

/// Log lines written while tests run.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

#[allow(dead_code)]
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

struct Site {
    app: Router,
    store: Store,
    admin: Admin,
    /// The installation administrator's API token.
    token: String,
    _db: Db,
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

const CLIENT: [u8; 4] = [198, 51, 100, 7];

impl Site {
    async fn start(backend: Backend) -> Site {
        Self::start_with(backend, Default::default()).await
    }

    async fn start_with(backend: Backend, auth: serversync_engine::AuthConfig) -> Site {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_writer(|| LogWriter)
            .with_ansi(false)
            .try_init();
        let (url, db) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                (
                    format!("sqlite://{}", dir.path().join("s.db").display()),
                    Db::Sqlite(dir),
                )
            }
            Backend::Postgres => {
                let db = TestEnv::from_env().pg_database().await.unwrap();
                (db.url().to_owned(), Db::Postgres(db))
            }
        };
        let store = Store::open(&url, MasterKey::generate().unwrap())
            .await
            .unwrap();
        let admin = Admin::with_auth(store.clone(), Default::default(), auth);
        let (_, token) = admin.bootstrap().await.unwrap().expect("fresh store");
        let api = serversync_api::router(serversync_api::AppState {
            store: store.clone(),
            metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
                .build_recorder()
                .handle(),
            admin: admin.clone(),
            metrics_token: None,
        });
        let app = serversync_web::router(admin.clone(), api.clone()).merge(api);
        Site {
            app,
            store,
            admin,
            token,
            _db: db,
        }
    }

    /// A request from `client`, with the session cookie when given and a form body when given.
    async fn send(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        form: Option<&[(&str, &str)]>,
        client: IpAddr,
    ) -> Resp {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let body = match form {
            Some(f) => {
                req = req.header("content-type", "application/x-www-form-urlencoded");
                Body::from(serde_urlencoded::to_string(f).unwrap())
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).unwrap();
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(client, 40000)));
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// A REST API call with a bearer token; returns status and JSON.
    async fn api(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(body.map(|b| Body::from(b.to_string())).unwrap_or_default())
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// [`Site::api`] as the installation administrator, which must succeed.
    async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> serde_json::Value {
        let (status, v) = self.api(&self.token, method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// A user of organization `org` with `roles` and an admin center password; returns its id.
    async fn user(
        &self,
        org: &str,
        name: &str,
        email: &str,
        roles: &[&str],
        password: &str,
    ) -> String {
        let u = self
            .ok(
                "POST",
                &format!("/api/v1/orgs/{org}/users"),
                Some(serde_json::json!({"full_name": name, "email": email, "roles": roles})),
            )
            .await;
        let id = u["user"]["id"].as_str().unwrap().to_owned();
        self.ok(
            "PATCH",
            &format!("/api/v1/orgs/{org}/users/{id}"),
            Some(serde_json::json!({"password": password})),
        )
        .await;
        id
    }

    /// Signs in with a password from `client`.
    async fn sign_in(&self, org: &str, email: &str, password: &str, client: IpAddr) -> Resp {
        self.send(
            "POST",
            "/login",
            None,
            Some(&[("org", org), ("email", email), ("password", password)]),
            client,
        )
        .await
    }

    async fn get(&self, path: &str, cookie: &str) -> Resp {
        self.send("GET", path, Some(cookie), None, CLIENT.into())
            .await
    }

    /// The session cookie of the administrator of another organization ("acme"), made now.
    async fn other_org_admin(&self) -> String {
        self.ok(
            "POST",
            "/api/v1/orgs",
            Some(serde_json::json!({"name": "acme", "display_name": "Acme"})),
        )
        .await;
        self.user(
            "acme",
            "Olga Other",
            "olga@acme.test",
            &["system_administrator"],
            "olga's long password",
        )
        .await;
        let r = self
            .sign_in(
                "acme",
                "olga@acme.test",
                "olga's long password",
                CLIENT.into(),
            )
            .await;
        session_cookie(&r).unwrap_or_else(|| panic!("{} {}", r.status, r.body))
    }

    /// A mailbox of the first organization's first user ("ann@example.com"), stored, with
    /// the appointments, contacts and tasks method `act`.
    async fn user_mailbox(
        &self,
        act: serversync_model::settings::ActMethod,
    ) -> serversync_model::mailbox::Mailbox {
        use serversync_model::mailbox::{Mailbox, MailboxRegarding};
        use serversync_model::org::{Organization, User};
        use serversync_model::settings::EmailSettings;
        let org = self
            .store
            .list_all::<Organization>(None, &[])
            .await
            .unwrap()
            .remove(0)
            .value;
        let user = self
            .store
            .list_all::<User>(Some(org.id), &[])
            .await
            .unwrap()
            .remove(0)
            .value;
        let mut m = Mailbox::new_with_defaults(
            org.id,
            MailboxRegarding::User(user.id),
            user.id,
            "Ann",
            "ann@example.com",
            &EmailSettings::new(org.id),
            chrono::Utc::now(),
        );
        m.act_method = act;
        self.store.insert(&m).await.unwrap();
        m
    }

    /// Signs in with an API token; returns the session cookie (`ss_session=…`).
    async fn sign_in_with_token(&self, token: &str) -> String {
        let r = self
            .send(
                "POST",
                "/login",
                None,
                Some(&[("token", token)]),
                CLIENT.into(),
            )
            .await;
        session_cookie(&r)
            .unwrap_or_else(|| panic!("token sign-in failed: {} {}", r.status, r.body))
    }
}

fn session_cookie(r: &Resp) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("ss_session=") && !c.starts_with("ss_session=;"))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

macro_rules! both {
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run($backend: Backend) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(Backend::Postgres).await
            }
        }
    };
}

/// The entity ids of the audit rows of a page, in the order shown.
fn audit_ids(html: &str) -> Vec<String> {
    html.split("<td class=\"muted\">")
        .skip(1)
        .filter_map(|s| s.split("</td>").next())
        .map(str::to_owned)
        .collect()
}

/// The link to the next (older) page of the audit log.
fn older_link(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\"")?;
    let start = html[..at].rfind("href=\"")? + 6;
    let end = start + html[start..].find('"')?;
    Some(html[start..end].replace("&amp;", "&"))
}

both!(the_audit_page_shows_the_newest_first_and_pages, |backend| {
    let s = Site::start(backend).await;
    let org = s
        .store
        .list_all::<serversync_model::org::Organization>(None, &[])
        .await
        .unwrap()
        .remove(0)
        .value;
    let cookie = s.sign_in_with_token(&s.token).await;
    for i in 0..1100 {
        s.store
            .append_audit(serversync_store::NewAuditEntry {
                org_id: Some(org.id),
                actor: serversync_model::audit::Actor::System("test".into()),
                action: "probe".into(),
                entity: "probe".into(),
                entity_id: format!("probe-{i:04}"),
                before: None,
                after: None,
            })
            .await
            .unwrap();
    }
    let mut path = "/audit".to_owned();
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    loop {
        let r = s.get(&path, &cookie).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        let ids = audit_ids(&r.body);
        if pages == 0 {
            assert_eq!(
                ids.first().map(String::as_str),
                Some("probe-1099"),
                "the newest entry comes first"
            );
        }
        assert!(
            !ids.is_empty() && ids.len() <= 100,
            "{path}: {} rows",
            ids.len()
        );
        seen.extend(ids);
        pages += 1;
        assert!(pages < 50, "the pages do not end");
        match older_link(&r.body) {
            Some(next) => path = next,
            None => break,
        }
    }
    let probes: Vec<&String> = seen.iter().filter(|i| i.starts_with("probe-")).collect();
    let expected: Vec<String> = (0..1100).rev().map(|i| format!("probe-{i:04}")).collect();
    assert_eq!(
        probes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        expected.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "every entry once, newest first"
    );
    // The bootstrap's own entries come last, on the last page.
    assert!(seen.len() > 1100, "{}", seen.len());
    assert!(!logs().contains(&s.token), "the token is never logged");
    let _ = &s.admin;
});

/// The CSRF token of a page's forms.
fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"_csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 20;
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

/// Whether the session cookie still opens the admin center.
async fn signed_in(s: &Site, cookie: &str) -> bool {
    let r = s.get("/", cookie).await;
    match r.status {
        200 => true,
        303 if r.location() == "/login" => false,
        other => panic!("GET / answered {other}: {}", r.body),
    }
}

both!(password_sign_in_names_the_organization, |backend| {
    let s = Site::start(backend).await;
    s.ok(
        "POST",
        "/api/v1/orgs",
        Some(serde_json::json!({"name": "acme", "display_name": "Acme"})),
    )
    .await;
    // The same address in two organizations, each with its own password.
    s.user(
        "default",
        "Pat Default",
        "pat@example.test",
        &["basic_user"],
        "default pat password",
    )
    .await;
    s.user(
        "acme",
        "Pat Acme",
        "pat@example.test",
        &["basic_user"],
        "acme pat password",
    )
    .await;
    let client: IpAddr = CLIENT.into();

    let r = s
        .sign_in("acme", "pat@example.test", "acme pat password", client)
        .await;
    let cookie = session_cookie(&r).unwrap_or_else(|| panic!("{} {}", r.status, r.body));
    let page = s.get("/", &cookie).await;
    assert!(
        page.body.contains("Pat Acme") && !page.body.contains("Pat Default"),
        "{}",
        page.body
    );

    let r = s
        .sign_in(
            "default",
            "pat@example.test",
            "default pat password",
            client,
        )
        .await;
    let cookie = session_cookie(&r).unwrap_or_else(|| panic!("{} {}", r.status, r.body));
    let page = s.get("/", &cookie).await;
    assert!(
        page.body.contains("Pat Default") && !page.body.contains("Pat Acme"),
        "{}",
        page.body
    );

    // One organization's password does not open the other's user; an unknown organization
    // gets the same answer as a wrong password.
    let wrong = s
        .sign_in("default", "pat@example.test", "acme pat password", client)
        .await;
    let unknown = s
        .sign_in("nope", "pat@example.test", "acme pat password", client)
        .await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, 401, "{}", r.body);
        assert!(session_cookie(r).is_none());
        assert!(
            r.body
                .contains("organization, the email address or the password is wrong"),
            "{}",
            r.body
        );
    }
});

both!(
    failed_sign_ins_are_throttled_logged_and_audited,
    |backend| {
        // Five failures per address, eight per client; a first wait long enough that the
        // test never races it.
        let s = Site::start_with(
            backend,
            serversync_engine::AuthConfig {
                throttle: serversync_engine::ThrottleConfig {
                    free_failures_per_address: 5,
                    free_failures_per_client: 8,
                    first_delay: std::time::Duration::from_secs(600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await;
        let lee = s
            .user(
                "default",
                "Lee",
                "lee@example.test",
                &["basic_user"],
                "lee's right password",
            )
            .await;
        let a: IpAddr = [203, 0, 113, 10].into();
        let b: IpAddr = [203, 0, 113, 11].into();
        for _ in 0..5 {
            let r = s
                .sign_in("default", "lee@example.test", "lee's wrong password", a)
                .await;
            assert_eq!(r.status, 401, "{}", r.body);
        }
        // After five failures the address waits, whoever asks and whatever the password: no
        // password is checked meanwhile.
        for client in [a, b] {
            let r = s
                .sign_in(
                    "default",
                    "lee@example.test",
                    "lee's right password",
                    client,
                )
                .await;
            assert_eq!(r.status, 429, "{}", r.body);
            assert!(session_cookie(&r).is_none());
            let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=600).contains(&wait), "{wait}");
            assert!(r.body.contains("Too many failed sign-ins"), "{}", r.body);
        }
        // Each failure is logged (address, client, reason) and audited; no password anywhere.
        let log = logs();
        let failures: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("sign-in failed") && l.contains("lee@example.test"))
            .collect();
        assert_eq!(failures.len(), 5, "{log}");
        assert!(
            failures
                .iter()
                .all(|l| l.contains("203.0.113.10") && l.contains("wrong password")),
            "{failures:?}"
        );
        assert!(!log.contains("lee's wrong password") && !log.contains("lee's right password"));
        let audit = s
            .ok("GET", "/api/v1/orgs/default/audit?limit=1000", None)
            .await;
        let entries: Vec<&serde_json::Value> = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "sign_in_failed" && e["entity_id"] == lee.as_str())
            .collect();
        assert_eq!(entries.len(), 5, "{audit}");
        assert_eq!(
            entries[0]["after"]["client_ip"], "203.0.113.10",
            "{}",
            entries[0]
        );
        assert!(!audit.to_string().contains("password\":\"lee"), "{audit}");

        // Another client trying many addresses is slowed down too (per client address).
        let c: IpAddr = [203, 0, 113, 12].into();
        let mut throttled = false;
        for i in 0..9 {
            let r = s
                .sign_in("default", &format!("nobody{i}@example.test"), "guess", c)
                .await;
            if r.status == 429 {
                throttled = true;
                assert_eq!(i, 8, "throttled before its eight free failures");
                break;
            }
            assert_eq!(r.status, 401, "{}", r.body);
        }
        assert!(throttled, "nine failures from one client are not throttled");
    }
);

both!(
    sessions_end_when_the_password_changes_or_the_user_is_disabled,
    |backend| {
        let s = Site::start(backend).await;
        let max = s
            .user(
                "default",
                "Max",
                "max@example.test",
                &["basic_user"],
                "max's first password",
            )
            .await;
        let client: IpAddr = CLIENT.into();
        let mut sessions = Vec::new();
        for _ in 0..2 {
            let r = s
                .sign_in(
                    "default",
                    "max@example.test",
                    "max's first password",
                    client,
                )
                .await;
            sessions.push(session_cookie(&r).unwrap_or_else(|| panic!("{} {}", r.status, r.body)));
        }
        let api_token = s
            .ok(
                "POST",
                &format!("/api/v1/orgs/default/users/{max}/tokens"),
                Some(serde_json::json!({"name": "max's script"})),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        for c in &sessions {
            assert!(signed_in(&s, c).await);
        }

        // A new password ends every session (API tokens are separate credentials and stay).
        s.ok(
            "PATCH",
            &format!("/api/v1/orgs/default/users/{max}"),
            Some(serde_json::json!({"password": "max's second password"})),
        )
        .await;
        for c in &sessions {
            assert!(
                !signed_in(&s, c).await,
                "a session outlived the password change"
            );
        }
        let me = format!("/api/v1/orgs/default/users/{max}");
        assert_eq!(s.api(&api_token, "GET", &me, None).await.0, 200);
        let old = s
            .sign_in(
                "default",
                "max@example.test",
                "max's first password",
                client,
            )
            .await;
        assert_eq!(old.status, 401);
        let r = s
            .sign_in(
                "default",
                "max@example.test",
                "max's second password",
                client,
            )
            .await;
        let session = session_cookie(&r).unwrap_or_else(|| panic!("{} {}", r.status, r.body));
        assert!(signed_in(&s, &session).await);

        // Disabling the user revokes every token and session: enabling it again does not bring
        // them back.
        s.ok("PATCH", &me, Some(serde_json::json!({"disabled": true})))
            .await;
        assert!(!signed_in(&s, &session).await);
        assert_eq!(s.api(&api_token, "GET", &me, None).await.0, 401);
        s.ok("PATCH", &me, Some(serde_json::json!({"disabled": false})))
            .await;
        assert!(
            !signed_in(&s, &session).await,
            "a session came back with the user"
        );
        assert_eq!(
            s.api(&api_token, "GET", &me, None).await.0,
            401,
            "a token came back with the user"
        );
        let tokens = s
            .ok(
                "GET",
                &format!("/api/v1/orgs/default/tokens?user_id={max}"),
                None,
            )
            .await;
        let items = tokens["items"].as_array().unwrap();
        assert!(
            items.len() >= 4 && items.iter().all(|t| t["revoked"] == true),
            "{tokens}"
        );
    }
);

both!(the_admin_center_lists_and_revokes_tokens, |backend| {
    let s = Site::start(backend).await;
    let bea = s
        .user(
            "default",
            "Bea",
            "bea@example.test",
            &["basic_user"],
            "bea's password here",
        )
        .await;
    let minted = s
        .ok(
            "POST",
            &format!("/api/v1/orgs/default/users/{bea}/tokens"),
            Some(serde_json::json!({"name": "bea-cli"})),
        )
        .await;
    let (bea_token, bea_token_id) = (
        minted["token"].as_str().unwrap().to_owned(),
        minted["id"].as_str().unwrap().to_owned(),
    );
    let me = format!("/api/v1/orgs/default/users/{bea}");
    assert_eq!(s.api(&bea_token, "GET", &me, None).await.0, 200);

    let cookie = s.sign_in_with_token(&s.token).await;
    let page = s.get("/tokens", &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    for shown in [
        "bea-cli",
        "bea@example.test",
        minted["prefix"].as_str().unwrap(),
        "bootstrap",
    ] {
        assert!(page.body.contains(shown), "{shown}: {}", page.body);
    }
    assert!(!page.body.contains(&bea_token));
    let form = format!("/tokens/{bea_token_id}/revoke");
    assert!(page.body.contains(&form), "{}", page.body);
    let r = s
        .send(
            "POST",
            &form,
            Some(&cookie),
            Some(&[("_csrf", &csrf(&page.body))]),
            CLIENT.into(),
        )
        .await;
    assert_eq!(
        (r.status, r.location().starts_with("/tokens")),
        (303, true),
        "{}",
        r.body
    );
    assert_eq!(s.api(&bea_token, "GET", &me, None).await.0, 401);
    let page = s.get("/tokens", &cookie).await;
    assert!(
        !page.body.contains("bea-cli"),
        "only live tokens by default"
    );
    let page = s.get("/tokens?all=true", &cookie).await;
    let row = page
        .body
        .split("<tr")
        .find(|r| r.contains("bea-cli"))
        .unwrap_or_else(|| panic!("{}", page.body));
    assert!(row.contains("revoked") && !row.contains("/revoke"), "{row}");
    // Without the CSRF token nothing is revoked.
    let own = s.ok("GET", "/api/v1/orgs/default/tokens", None).await;
    let root_token = own["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "bootstrap")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s
        .send(
            "POST",
            &format!("/tokens/{root_token}/revoke"),
            Some(&cookie),
            Some(&[("_csrf", "forged")]),
            CLIENT.into(),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(s.api(&s.token, "GET", &me, None).await.0, 200);
});

// The dashboard's item counts go through `Admin::items_since`: a user without "read
// mailboxes" counts only its own mailbox's items, not the organization's (it read them all
// from the store before).
both!(
    the_dashboard_counts_only_the_items_the_user_may_read,
    |backend| {
        let s = Site::start(backend).await;
        s.user(
            "default",
            "Bob Basic",
            "bob@example.test",
            &["basic_user"],
            "bob's long password",
        )
        .await;
        s.user(
            "default",
            "Dave Basic",
            "dave@example.test",
            &["basic_user"],
            "dave's long password",
        )
        .await;
        let root = s.admin.authenticate(&s.token).await.unwrap();
        let org = root.user.org_id;
        let settings = s.admin.settings(org).await.unwrap().value;
        let mailboxes = s
            .admin
            .list_mailboxes(&root, org, &Default::default(), None, 100)
            .await
            .unwrap()
            .items;
        let mailbox = |email: &str| {
            mailboxes
                .iter()
                .find(|m| m.value.email == email)
                .unwrap()
                .value
                .clone()
        };
        let items = [
            ("bob@example.test", 1),
            ("dave@example.test", 2),
            ("dave@example.test", 3),
        ];
        for (to, uid) in items {
            let raw = format!(
                "From: carol@example.test\r\nTo: {to}\r\nSubject: Item {uid}\r\n\
             Message-ID: <dash-{uid}@example.test>\r\n\r\nHello\r\n"
            );
            serversync_engine::intake::take_in(
                &s.store,
                &mailbox(to),
                &settings,
                None,
                serversync_model::item::ItemSource::Imap {
                    folder: "INBOX".into(),
                    uid_validity: 1,
                    uid,
                },
                raw.as_bytes(),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        }

        let r = s
            .sign_in(
                "default",
                "bob@example.test",
                "bob's long password",
                CLIENT.into(),
            )
            .await;
        let cookie = session_cookie(&r).unwrap_or_else(|| panic!("{} {}", r.status, r.body));
        let page = s.get("/", &cookie).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body
                .contains("1 mailboxes · 1 items in the last 24 hours, 0 failed."),
            "{}",
            page.body
        );

        let cookie = s.sign_in_with_token(&s.token).await;
        let page = s.get("/", &cookie).await;
        assert!(
            page.body.contains(&format!(
                "{} mailboxes · 3 items in the last 24 hours, 0 failed.",
                mailboxes.len()
            )),
            "{}",
            page.body
        );
    }
);

// The mailbox page shows the third direction's recent decisions (the two-way syncer keeps them
// on the mailbox; here they are put there directly).
both!(
    the_mailbox_page_shows_appointment_sync_decisions,
    |backend| {
        use serversync_model::mailbox::{Mailbox, MailboxRegarding};
        use serversync_model::org::{Organization, User};
        use serversync_model::settings::{ActMethod, EmailSettings};
        let s = Site::start(backend).await;
        let org = s
            .store
            .list_all::<Organization>(None, &[])
            .await
            .unwrap()
            .remove(0)
            .value;
        let user = s
            .store
            .list_all::<User>(Some(org.id), &[])
            .await
            .unwrap()
            .remove(0)
            .value;
        let settings = EmailSettings::new(org.id);
        let now = chrono::Utc::now();
        let mut m = Mailbox::new_with_defaults(
            org.id,
            MailboxRegarding::User(user.id),
            user.id,
            "Ann",
            "ann@example.com",
            &settings,
            now,
        );
        m.act_method = ActMethod::ServerSideSync;
        s.store.insert(&m).await.unwrap();
        let cookie = s.sign_in_with_token(&s.token).await;
        let page = s.get(&format!("/mailboxes/{}", m.id), &cookie).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.contains("No changes synchronized yet."),
            "{}",
            page.body
        );

        let stored = s.store.fetch::<Mailbox>(&m.id.to_string()).await.unwrap();
        let mut m = stored.value;
        m.telemetry
            .items_sync
            .get_or_insert_with(Default::default)
            .record(
                now,
                &[
                    "contact \"Ann Lee\": phones written to the server".to_owned(),
                    "contact \"Ann Lee\": conflict on company; the server's value kept".to_owned(),
                ],
            );
        s.store.update(&m, Some(stored.version)).await.unwrap();
        let page = s.get(&format!("/mailboxes/{}", m.id), &cookie).await;
        let table = page
            .body
            .split("id=\"act-decisions\"")
            .nth(1)
            .expect("the decisions table");
        let conflict = table.find("conflict on company").expect("the conflict");
        let phones = table.find("phones written").expect("the write");
        assert!(conflict < phones, "newest first: {table}");
    }
);

// A mailbox's synchronized appointments, contacts and tasks: each link with its record (a
// contact's name linking to its page), the last change's way and the server item, and the
// conflicts the synchronization reported. Another organization's administrator gets 404.
both!(
    the_links_page_shows_synchronized_items_and_conflicts,
    |backend| {
        use serversync_model::alert::{Alert, Severity};
        use serversync_model::settings::ActMethod;
        use serversync_model::sync::{RemoteLink, SyncDirection};
        use serversync_model::webhook::RecordType;
        let s = Site::start(backend).await;
        let m = s.user_mailbox(ActMethod::ServerSideSync).await;
        let (org_id, user_id) = (m.org_id, m.owner_id);
        let cookie = s.sign_in_with_token(&s.token).await;
        let path = format!("/mailboxes/{}/links", m.id);
        let page = s.get(&path, &cookie).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(
            page.body.contains("No item synchronized yet."),
            "{}",
            page.body
        );

        // The records the links point at.
        let now = chrono::Utc::now();
        let contact = serversync_model::crm::Contact {
            id: serversync_model::ContactId::new(),
            org_id,
            full_name: "Ann Lee".into(),
            emails: vec!["ann@fabrikam.example".into()],
            account_id: None,
            company: None,
            job_title: None,
            phones: Vec::new(),
            owner_id: user_id,
            created_at: now,
        };
        s.store.insert(&contact).await.unwrap();
        let appointment = serversync_model::crm::Appointment {
            id: serversync_model::ActivityId::new(),
            org_id,
            subject: "Quarterly review".into(),
            location: None,
            description: None,
            starts_at: now + chrono::Duration::days(2),
            ends_at: now + chrono::Duration::days(2) + chrono::Duration::hours(1),
            all_day: false,
            organizer: None,
            attendees: Vec::new(),
            owner_id: user_id,
            regarding: None,
            state: serversync_model::crm::ActivityState::Open,
            ical_uid: None,
            time_zone: None,
            recurrence: None,
            created_at: now,
            updated_at: now,
        };
        s.store.insert(&appointment).await.unwrap();
        let contact_id = contact.id.to_string();
        for (kind, id, field, title, remote, direction) in [
            (
                RecordType::Contact,
                contact_id.clone(),
                "full_name",
                "Ann Lee",
                "/dav/ann/contacts/ann-lee.vcf",
                SyncDirection::FromServer,
            ),
            (
                RecordType::Appointment,
                appointment.id.to_string(),
                "subject",
                "Quarterly review",
                "AAMkQuarterly",
                SyncDirection::ToServer,
            ),
        ] {
            let mut values = serde_json::Map::new();
            values.insert(field.into(), title.into());
            s.store
                .put_remote_link(
                    &RemoteLink {
                        org_id,
                        mailbox_id: m.id,
                        record_type: kind,
                        record_id: id,
                        remote_id: remote.into(),
                        version_tag: Some("\"1\"".into()),
                        synced_hash: "0".repeat(64),
                        synced_values: values,
                        direction,
                    },
                    serversync_store::Expected::Any,
                )
                .await
                .unwrap();
        }
        let mut alert = Alert::new(
        org_id,
        Severity::Warning,
        "sync_conflict",
        "contact \"Ann Lee\": company changed on both sides (CRM: CRM Corp, server: Server Corp); the server's value kept".into(),
        vec![user_id],
    );
        alert.mailbox_id = Some(m.id);
        s.store.insert(&alert).await.unwrap();

        let page = s.get(&path, &cookie).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let links = page
            .body
            .split("id=\"links\"")
            .nth(1)
            .expect("the links table");
        assert!(
            links.contains(&format!(
                "<a href=\"/records/contact/{contact_id}\">Ann Lee</a>"
            )),
            "{links}"
        );
        for needle in [
            "Quarterly review",
            "AAMkQuarterly",
            "server → CRM",
            "CRM → server",
        ] {
            assert!(links.contains(needle), "{needle}: {links}");
        }
        let conflicts = page
            .body
            .split("id=\"conflicts\"")
            .nth(1)
            .expect("the conflicts");
        assert!(
            conflicts.contains("CRM Corp") && conflicts.contains("Server Corp"),
            "{conflicts}"
        );
        let mailbox_page = s.get(&format!("/mailboxes/{}", m.id), &cookie).await;
        assert!(
            mailbox_page.body.contains(&format!("href=\"{path}\"")),
            "{}",
            mailbox_page.body
        );

        let olga = s.other_org_admin().await;
        let r = s.get(&path, &olga).await;
        assert_eq!(r.status, 404, "{}", r.body);
        assert!(!r.body.contains("Quarterly review"));
    }
);

// The mailbox page shows its newest alerts, however many it has had.
both!(the_mailbox_page_shows_the_newest_alerts, |backend| {
    use serversync_model::alert::{Alert, Severity};
    let s = Site::start(backend).await;
    let m = s
        .user_mailbox(serversync_model::settings::ActMethod::None)
        .await;
    let (org_id, user_id) = (m.org_id, m.owner_id);
    for n in 0..520 {
        let mut a = Alert::new(
            org_id,
            Severity::Warning,
            "connection_failed",
            format!("failure number {n:04}"),
            vec![user_id],
        );
        a.mailbox_id = Some(m.id);
        s.store.insert(&a).await.unwrap();
    }
    let cookie = s.sign_in_with_token(&s.token).await;
    let page = s.get(&format!("/mailboxes/{}", m.id), &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let newest = page
        .body
        .find("failure number 0519")
        .expect("the newest alert");
    let next = page
        .body
        .find("failure number 0518")
        .expect("the one before");
    assert!(newest < next, "newest first");
    assert!(
        !page.body.contains("failure number 0499"),
        "only the newest are shown"
    );
    let link = format!("/alerts?mailbox={}", m.id);
    assert!(page.body.contains(&link), "{}", page.body);
    let all = s.get(&link, &cookie).await;
    assert_eq!(all.status, 200, "{}", all.body);
    let newest = all
        .body
        .find("failure number 0519")
        .expect("the newest alert");
    let older = all.body.find("failure number 0100").expect("an older one");
    assert!(newest < older, "newest first");
    assert!(!all.body.contains("failure number 0019"), "the latest 500");
});

// The email settings page sets the organization's two-way conflict policy.
both!(the_settings_page_sets_the_conflict_policy, |backend| {
    use serversync_model::merge::ConflictPolicy;
    use serversync_model::org::Organization;
    use serversync_model::settings::EmailSettings;
    let s = Site::start(backend).await;
    let org = s
        .store
        .list_all::<Organization>(None, &[])
        .await
        .unwrap()
        .remove(0)
        .value;
    let cookie = s.sign_in_with_token(&s.token).await;
    let page = s.get("/settings", &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    let select = page
        .body
        .split("name=\"conflict_policy\"")
        .nth(1)
        .and_then(|rest| rest.split("</select>").next())
        .expect("the conflict policy select");
    assert!(
        select.contains("<option value=\"latest_change_wins\" selected>"),
        "the default is the latest change: {select}"
    );
    assert!(select.contains("value=\"crm_wins\"") && select.contains("value=\"server_wins\""));
    let r = s
        .send(
            "POST",
            "/settings",
            Some(&cookie),
            Some(&[
                ("_csrf", &csrf(&page.body)),
                ("conflict_policy", "crm_wins"),
            ]),
            CLIENT.into(),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let stored = s
        .store
        .fetch::<EmailSettings>(&org.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(stored.conflict_policy, ConflictPolicy::CrmWins);
    let page = s.get("/settings", &cookie).await;
    assert!(
        page.body.contains("<option value=\"crm_wins\" selected>"),
        "{}",
        page.body
    );
});

/// The text of the table cell after the row header `th` (the first one on the page).
fn cell_after(html: &str, th: &str) -> String {
    let head = format!("<th scope=\"row\">{th}</th><td>");
    let rest = html
        .split(&head)
        .nth(1)
        .unwrap_or_else(|| panic!("no row {th}: {html}"));
    rest.split("</td>").next().unwrap().to_owned()
}

/// The mailbox of a new user Ann of the default organization, tested and enabled
/// `watched_for` ago; returns it and the organization's settings.
async fn watched_mailbox(
    s: &Site,
    watched_for: chrono::Duration,
) -> (
    serversync_model::mailbox::Mailbox,
    serversync_model::settings::EmailSettings,
) {
    use serversync_model::mailbox::Mailbox;
    s.user(
        "default",
        "Ann Watched",
        "ann@example.test",
        &["basic_user"],
        "ann's long password",
    )
    .await;
    let root = s.admin.authenticate(&s.token).await.unwrap();
    let org = root.user.org_id;
    let settings = s.admin.settings(org).await.unwrap().value;
    let stored = s
        .admin
        .list_mailboxes(&root, org, &Default::default(), None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|m| m.value.email == "ann@example.test")
        .expect("ann's mailbox");
    let mut m: Mailbox = stored.value;
    m.approval = serversync_model::mailbox::ApprovalStatus::Approved;
    m.tracking = serversync_model::settings::TrackingFilter::AllEmail;
    m.test_completed_on = Some(chrono::Utc::now() - watched_for);
    s.store.update(&m, Some(stored.version)).await.unwrap();
    (m, settings)
}

/// Takes a message in through the real intake, received by the server at `received_at`.
async fn take_in(
    s: &Site,
    m: &serversync_model::mailbox::Mailbox,
    settings: &serversync_model::settings::EmailSettings,
    uid: u32,
    from: &str,
    subject: &str,
    received_at: chrono::DateTime<chrono::Utc>,
) {
    let raw = format!(
        "From: {from}\r\nTo: {}\r\nSubject: {subject}\r\nMessage-ID: <m{uid}-{}@example.test>\r\n\
         Date: {}\r\n\r\nHello\r\n",
        m.email,
        m.id,
        received_at.to_rfc2822()
    );
    serversync_engine::intake::take_in(
        &s.store,
        m,
        settings,
        None,
        serversync_model::item::ItemSource::Imap {
            folder: "INBOX".into(),
            uid_validity: 1,
            uid,
        },
        raw.as_bytes(),
        received_at,
    )
    .await
    .unwrap();
}

// Arrival latency counts only mail that arrived while the mailbox was watched: the first
// synchronization's history (received years ago, taken in now) is left out and said so, and
// the figures read in human units.
both!(the_latency_counts_only_live_arrivals, |backend| {
    let s = Site::start(backend).await;
    let (m, settings) = watched_mailbox(&s, chrono::Duration::hours(1)).await;
    let now = chrono::Utc::now();
    // History: received three years and two years ago, before the mailbox was watched.
    for (uid, days) in [(1, 3 * 365), (2, 2 * 365)] {
        take_in(
            &s,
            &m,
            &settings,
            uid,
            "old@example.test",
            "Old",
            now - chrono::Duration::days(days),
        )
        .await;
    }
    let cookie = s.sign_in_with_token(&s.token).await;
    let page = s.get("/", &cookie).await;
    assert!(
        page.body
            .contains("No live arrival stored in the last 24 hours."),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("2 older messages taken in by a first synchronization are not counted."),
        "{}",
        page.body
    );
    // Live: received three seconds before it was taken in.
    for uid in 3..6 {
        take_in(
            &s,
            &m,
            &settings,
            uid,
            "new@example.test",
            "New",
            chrono::Utc::now() - chrono::Duration::seconds(3),
        )
        .await;
    }
    let page = s.get("/", &cookie).await;
    assert_eq!(cell_after(&page.body, "Messages"), "3", "{}", page.body);
    for p in ["p50", "p95", "p99"] {
        let shown = cell_after(&page.body, p);
        let secs: f64 = shown
            .strip_suffix(" s")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{p} reads {shown:?}, not seconds"));
        assert!((3.0..60.0).contains(&secs), "{p}: {shown}");
    }
});

/// How many rows the table with `id` has in its body.
fn rows_of(html: &str, id: &str) -> usize {
    html.split(&format!("id=\"{id}\""))
        .nth(1)
        .and_then(|t| t.split("</tbody>").next())
        .and_then(|t| t.split("<tbody>").nth(1))
        .map(|t| t.matches("<tr>").count())
        .unwrap_or(0)
}

/// The first `href` of a link whose target starts with `prefix`.
fn link_to(html: &str, prefix: &str) -> String {
    let at = html
        .find(&format!("href=\"{prefix}"))
        .unwrap_or_else(|| panic!("no link to {prefix}…: {html}"));
    let rest = &html[at + 6..];
    rest[..rest.find('"').unwrap()].replace("&amp;", "&")
}

/// Whether `html` shows a UUID as text (outside of attribute values).
fn shows_a_uuid(html: &str) -> Option<String> {
    let text: String = html
        .split('<')
        .filter_map(|t| t.split_once('>').map(|(_, after)| after))
        .collect::<Vec<_>>()
        .join(" ");
    text.split(|c: char| !(c.is_ascii_hexdigit() || c == '-'))
        .find(|w| w.len() == 36 && w.matches('-').count() == 4)
        .map(str::to_owned)
}

// The mailbox page lists items a page at a time with filters, one line each with the trace on
// demand and records named instead of ids; a click leads from an item to its activity, from
// the activity to the item and the sender's record; the outgoing queue shows a waiting email
// with its reason and a failed one with the server's reply, and "send again" (by the sender)
// puts it back in pending send. Another organization's administrator gets 404 for every one
// of these pages and for "send again".
both!(the_crm_pages_link_items_activities_and_records, |backend| {
    use serversync_model::crm::{Contact, Direction, EmailActivity, EmailStatus};
    use serversync_model::{ActivityId, ContactId};
    let s = Site::start(backend).await;
    let (m, settings) = watched_mailbox(&s, chrono::Duration::hours(1)).await;
    let carl = Contact {
        id: ContactId::new(),
        org_id: m.org_id,
        full_name: "Carl Contact".into(),
        emails: vec!["carl@example.test".into()],
        account_id: None,
        company: None,
        job_title: None,
        phones: Vec::new(),
        owner_id: m.owner_id,
        created_at: chrono::Utc::now(),
    };
    s.store.insert(&carl).await.unwrap();
    let now = chrono::Utc::now();
    // 28 messages of history from Carl, two live ones from a stranger.
    for uid in 1..=28 {
        let at = now - chrono::Duration::days(3 * 365) + chrono::Duration::days(uid as i64);
        take_in(
            &s,
            &m,
            &settings,
            uid,
            "carl@example.test",
            &format!("History {uid}"),
            at,
        )
        .await;
    }
    for uid in 29..=30 {
        take_in(
            &s,
            &m,
            &settings,
            uid,
            "stranger@example.test",
            &format!("Live {uid}"),
            chrono::Utc::now(),
        )
        .await;
    }
    while serversync_engine::records::run_once(
        &s.store,
        "web-test",
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap()
        > 0
    {}

    let cookie = s.sign_in_with_token(&s.token).await;
    let mailbox = format!("/mailboxes/{}", m.id);
    let page = s.get(&mailbox, &cookie).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(rows_of(&page.body, "items-table"), 25, "pages of 25");
    assert!(
        page.body.contains("Live 30") && !page.body.contains("History 5<"),
        "newest first"
    );
    assert!(
        page.body
            .contains("<details><summary>tracked as activity <a href=\"/activities/"),
        "{}",
        page.body
    );
    assert!(page.body.contains(">Ann Watched</a>"), "the user by name");
    if let Some(id) = shows_a_uuid(&page.body) {
        panic!("the page shows the id {id}");
    }
    let older = s
        .get(&link_to(&page.body, &format!("{mailbox}?before=")), &cookie)
        .await;
    assert_eq!(rows_of(&older.body, "items-table"), 5, "{}", older.body);
    assert!(older.body.contains("History 1<") && !older.body.contains("rel=\"next\""));
    let strangers = s
        .get(&format!("{mailbox}?from=stranger%40example.test"), &cookie)
        .await;
    assert_eq!(rows_of(&strangers.body, "items-table"), 2);
    let by_domain = s
        .get(
            &format!("{mailbox}?from=example.test&decision=stored"),
            &cookie,
        )
        .await;
    assert_eq!(rows_of(&by_domain.body, "items-table"), 25);
    let failed = s.get(&format!("{mailbox}?decision=failed"), &cookie).await;
    assert!(
        failed.body.contains("No message matches."),
        "{}",
        failed.body
    );
    let day =
        (now - chrono::Duration::days(3 * 365) + chrono::Duration::days(3)).format("%Y-%m-%d");
    let one_day = s
        .get(&format!("{mailbox}?since={day}&until={day}"), &cookie)
        .await;
    assert_eq!(rows_of(&one_day.body, "items-table"), 1, "{}", one_day.body);
    assert!(one_day.body.contains("History 3<"));

    // Item → activity → item and the sender's record.
    let activity = link_to(&strangers.body, "/activities/");
    let a_page = s.get(&activity, &cookie).await;
    assert_eq!(a_page.status, 200, "{}", a_page.body);
    let item = link_to(&a_page.body, "/items/");
    let i_page = s.get(&item, &cookie).await;
    assert_eq!(i_page.status, 200, "{}", i_page.body);
    assert!(
        i_page.body.contains("id=\"item-activity\"")
            && i_page.body.contains(&format!("href=\"{activity}\""))
    );
    let from_carl = s.get("/activities?from=carl%40example.test", &cookie).await;
    assert_eq!(
        rows_of(&from_carl.body, "activities"),
        0,
        "the table has a class, not an id"
    );
    assert_eq!(from_carl.body.matches("<a href=\"/activities/").count(), 25);
    let carl_activity = link_to(&from_carl.body, "/activities/");
    let c_page = s.get(&carl_activity, &cookie).await;
    let record = format!("/records/contact/{}", carl.id);
    assert!(
        c_page
            .body
            .contains(&format!("<a href=\"{record}\">Carl Contact</a>")),
        "{}",
        c_page.body
    );
    let r_page = s.get(&record, &cookie).await;
    assert_eq!(r_page.status, 200, "{}", r_page.body);
    assert!(
        r_page.body.contains("Contact Carl Contact") && r_page.body.contains("History 28"),
        "{}",
        r_page.body
    );
    let by_subject = s.get("/activities?subject=history+27", &cookie).await;
    assert_eq!(
        by_subject.body.matches("<a href=\"/activities/").count(),
        1,
        "{}",
        by_subject.body
    );
    let by_id = s
        .get(
            &format!("/activities?message_id=%3Cm12-{}%40example.test%3E", m.id),
            &cookie,
        )
        .await;
    assert!(
        by_id.body.contains("History 12<")
            && by_id.body.matches("<a href=\"/activities/").count() == 1,
        "{}",
        by_id.body
    );

    // The outgoing queue: one email waiting, one refused by the server.
    let aid: ActivityId = carl_activity
        .trim_start_matches("/activities/")
        .parse()
        .unwrap();
    let base = s
        .admin
        .email_activity(
            &s.admin.authenticate(&s.token).await.unwrap(),
            m.org_id,
            aid,
        )
        .await
        .unwrap();
    let outgoing = |subject: &str, status: EmailStatus, error: Option<&str>| {
        let mut a: EmailActivity = base.clone();
        a.id = ActivityId::new();
        a.subject = subject.into();
        a.direction = Direction::Outgoing;
        a.status = status;
        a.message_id = Some(format!("{}@out.example.test", a.id));
        a.conversation_id = None;
        a.item_ids = Vec::new();
        a.received_at = None;
        a.send_after = Some(chrono::Utc::now() + chrono::Duration::days(2));
        a.send_error = error.map(str::to_owned);
        a.delivery_attempts = u32::from(error.is_some()) * 3;
        a
    };
    let waiting = outgoing("Waits for later", EmailStatus::PendingSend, None);
    let refused = outgoing(
        "Refused by the server",
        EmailStatus::Failed,
        Some("550 5.1.1 <nobody@example.test>: Recipient address rejected"),
    );
    s.store.insert(&waiting).await.unwrap();
    s.store.insert(&refused).await.unwrap();
    let ann = s
        .sign_in(
            "default",
            "ann@example.test",
            "ann's long password",
            CLIENT.into(),
        )
        .await;
    let ann = session_cookie(&ann).unwrap_or_else(|| panic!("{} {}", ann.status, ann.body));
    let out = s.get("/outgoing", &ann).await;
    assert_eq!(out.status, 200, "{}", out.body);
    let pending = out
        .body
        .split("id=\"pending\"")
        .nth(1)
        .unwrap()
        .split("</section>")
        .next()
        .unwrap();
    let row = pending
        .split("<tr>")
        .find(|r| r.contains("Waits for later"))
        .expect("the waiting email");
    assert!(
        row.contains("the mailbox ann@example.test has no email server profile"),
        "a reason: {row}"
    );
    let failed = out
        .body
        .split("id=\"failed\"")
        .nth(1)
        .unwrap()
        .split("</section>")
        .next()
        .unwrap();
    assert!(
        failed.contains("Refused by the server")
            && failed
                .contains("550 5.1.1 &#60;nobody@example.test&#62;: Recipient address rejected"),
        "{failed}"
    );

    // Another organization's administrator finds none of it.
    let olga = s.other_org_admin().await;
    for path in [
        mailbox.clone(),
        activity.clone(),
        item.clone(),
        record.clone(),
        format!("/records/user/{}", m.owner_id),
        format!("/activities/{}", refused.id),
    ] {
        let r = s.get(&path, &olga).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(
            !r.body.contains("Carl") && !r.body.contains("Refused"),
            "{path}"
        );
    }
    let out = s.get("/outgoing", &olga).await;
    assert!(!out.body.contains("Refused by the server"));
    let page = s.get("/outgoing", &olga).await;
    let r = s
        .send(
            "POST",
            &format!("/activities/{}/send", refused.id),
            Some(&olga),
            Some(&[("_csrf", &csrf(&page.body))]),
            CLIENT.into(),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let still = s
        .store
        .fetch::<EmailActivity>(&refused.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(still.status, EmailStatus::Failed);

    // Send again, by its sender.
    let out = s.get("/outgoing", &ann).await;
    let r = s
        .send(
            "POST",
            &format!("/activities/{}/send", refused.id),
            Some(&ann),
            Some(&[("_csrf", &csrf(&out.body))]),
            CLIENT.into(),
        )
        .await;
    assert_eq!(
        (r.status, r.location().starts_with("/outgoing?done=")),
        (303, true),
        "{}",
        r.body
    );
    let again = s
        .store
        .fetch::<EmailActivity>(&refused.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(
        (again.status, again.send_error),
        (EmailStatus::PendingSend, None)
    );
    let out = s.get("/outgoing", &ann).await;
    let failed = out
        .body
        .split("id=\"failed\"")
        .nth(1)
        .unwrap()
        .split("</section>")
        .next()
        .unwrap();
    assert!(!failed.contains("Refused by the server"), "{failed}");
});
