//! Microsoft Graph change notifications end to end: serversync (store, engine and API
//! served on 127.0.0.1) with an Exchange Online mailbox, against the Graph test double, which
//! validates the notification URL, posts notifications and lifecycle events there as Graph
//! does. Shows: the worker subscribes to the Inbox (the handshake passes), a message delivered
//! while the subscription is live is stored, a notification that is not the subscription's
//! wakes nothing, a removed subscription is created again, and the routes answer hostile
//! input with a 4xx naming the field.

use axum::body::Body;
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use serversync_connectors::{NetworkPolicy, TlsTrust};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::item::MailItem;
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::Organization;
use serversync_model::profile::{
    AuthenticationType, EmailServerProfile, OAuthAuthority, OAuthSettings, ServerType,
};
use serversync_model::settings::{ActMethod, EmailSettings, IncomingMethod, OutgoingMethod};
use serversync_model::{MailboxId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::graph::{GraphConfig, GraphDouble, csdl_path};
use serversync_testkit::tls::TlsFiles;
use serversync_vault::MasterKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const TENANT: &str = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
const APP: &str = "0a1b2c3d-1111-4222-8333-944455566677";
const SECRET: &str = "kQ8~app-secret-value";
const ALICE: &str = "alice@contoso.test";

async fn mailbox(store: &Store, admin: serversync_model::UserId) -> Mailbox {
    let org = store
        .list_all::<Organization>(None, &[])
        .await
        .unwrap()
        .remove(0)
        .value;
    let now = chrono::Utc::now();
    let mut p = EmailServerProfile::new(org.id, "EO", ServerType::ExchangeOnline, admin, now);
    p.authentication = AuthenticationType::ServerToServer;
    p.auto_discover = true;
    p.oauth = Some(OAuthSettings {
        tenant_id: Some(TENANT.into()),
        client_id: APP.into(),
        client_secret: Some(
            store
                .put_secret(Some(org.id), &Secret::new(SECRET))
                .await
                .unwrap(),
        ),
        authority: OAuthAuthority::Public,
        token_endpoint: None,
        client_certificate: None,
    });
    p.validate(false).unwrap();
    store.insert(&p).await.unwrap();
    let settings = store
        .fetch::<EmailSettings>(&org.id.to_string())
        .await
        .unwrap()
        .value;
    let mut m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(admin),
        admin,
        "Alice",
        ALICE,
        &settings,
        now,
    );
    m.profile_id = Some(p.id);
    m.approval = ApprovalStatus::Approved;
    m.incoming_method = IncomingMethod::ServerSideSync;
    m.outgoing_method = OutgoingMethod::None;
    m.act_method = ActMethod::None;
    m.incoming.enabled = true;
    store.insert(&m).await.unwrap();
    m
}

async fn reread(store: &Store, id: MailboxId) -> Mailbox {
    store.fetch::<Mailbox>(&id.to_string()).await.unwrap().value
}

/// Polls `f` every 50 ms for up to a minute.
async fn until<T, F: std::future::Future<Output = Option<T>>>(what: &str, f: impl Fn() -> F) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "{what}: not within a minute");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(app: &axum::Router, path: &str, body: &str) -> (u16, String, String) {
    let req = axum::http::Request::builder()
        .method("POST")
        .uri(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8_lossy(&bytes).into_owned())
}

async fn notifications(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = GraphDouble::start(
        &tls,
        GraphConfig {
            csdl: Some(csdl_path()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    double.add_tenant(TENANT, "contoso.test");
    double.add_app(TENANT, APP, SECRET, &["Mail.ReadWrite", "Mail.Send"]);
    double.add_mailbox(TENANT, ALICE);

    let (url, _db): (String, Box<dyn std::any::Any>) = match backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("s.db").display()),
            Box::new(()),
        ),
        Backend::Postgres => {
            let db = serversync_testkit::TestEnv::from_env()
                .pg_database()
                .await
                .unwrap();
            (db.url().to_owned(), Box::new(db))
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let config = EngineConfig {
        network: Arc::new(NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        graph_url: Some(double.graph_url()),
        login_url: Some(double.login_url()),
        notification_url: Some(public.clone()),
        ..EngineConfig::new(Arc::new(
            TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap(),
        ))
    };
    let engine = Engine::new(store.clone(), config);
    let admin = engine.admin();
    let (user, _) = admin.bootstrap().await.unwrap().expect("fresh store");
    let m = mailbox(&store, user.id).await;
    let app = serversync_api::router(serversync_api::AppState {
        store: store.clone(),
        metrics: PrometheusBuilder::new().build_recorder().handle(),
        admin,
        metrics_token: None,
    });
    let stop = CancellationToken::new();
    let served = app.clone();
    let server_stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, served)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
            .unwrap();
    });
    let task = tokio::spawn(engine.run(stop.clone()));

    // The worker subscribes; Graph's handshake reached our route.
    let first = until("the subscription", || async {
        let sub = reread(&store, m.id).await.telemetry.graph_subscription?;
        (!sub.id.is_empty()).then_some(sub)
    })
    .await;
    assert_eq!(first.error, None);
    let subs = double.subscriptions();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].id, first.id);
    assert_eq!(
        subs[0].notification_url,
        format!("{public}/api/v1/graph/notifications/{}", m.id)
    );
    assert!(subs[0].resource.contains("mailFolders('inbox')/messages"));
    assert_ne!(
        subs[0].client_state.as_deref(),
        Some(first.client_state_sha256.as_str()),
        "the secret itself is not kept"
    );

    // New mail while the subscription is live is stored.
    double.deliver(
        ALICE,
        "inbox",
        b"From: bob@example.net\r\nTo: alice@contoso.test\r\nSubject: notified\r\nMessage-ID: <n1@example.net>\r\n\r\nhi\r\n",
        false,
    );
    until("the notified message stored", || async {
        let items = store
            .list_all::<MailItem>(Some(m.org_id), &[])
            .await
            .unwrap();
        (items.len() == 1).then_some(())
    })
    .await;

    // Graph removes the subscription and says so: a new one is made.
    double.fire_lifecycle(&first.id, "subscriptionRemoved");
    double.drop_subscription(&first.id);
    let second = until("a new subscription", || async {
        let sub = reread(&store, m.id).await.telemetry.graph_subscription?;
        (!sub.id.is_empty() && sub.id != first.id).then_some(sub)
    })
    .await;
    assert!(double.subscriptions().iter().any(|s| s.id == second.id));

    // Hostile input: the handshake echoes only a bounded printable token, a body that is not
    // a notification is a 400 naming the field, a forged one is accepted and ignored.
    let path = format!("/api/v1/graph/notifications/{}", m.id);
    let (status, ct, body) = post(&app, &format!("{path}?validationToken=abc%20123"), "").await;
    assert_eq!((status, body.as_str()), (200, "abc 123"));
    assert!(ct.starts_with("text/plain"), "{ct}");
    let long = "x".repeat(5000);
    let (status, _, body) = post(&app, &format!("{path}?validationToken={long}"), "").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("validationToken"), "{body}");
    let (status, ct, body) = post(&app, &path, "{\"not\":\"graph\"}").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        ct.contains("problem+json") && body.contains("\"value\""),
        "{body}"
    );
    let forged = format!(
        r#"{{"value":[{{"subscriptionId":"{}","clientState":"guessed","changeType":"created"}}]}}"#,
        second.id
    );
    let before = reread(&store, m.id).await.telemetry.sync_requested_at;
    let (status, _, _) = post(&app, &path, &forged).await;
    assert_eq!(status, 202);
    assert_eq!(
        reread(&store, m.id).await.telemetry.sync_requested_at,
        before
    );
    let (status, _, _) = post(&app, "/api/v1/graph/notifications/not-a-mailbox", &forged).await;
    assert_eq!(status, 202, "nothing is told to a sender that is not Graph");
    let huge = format!("{{\"value\":[\"{}\"]}}", "x".repeat(2 << 20));
    let (status, _, _) = post(&app, &path, &huge).await;
    assert_eq!(status, 413);

    stop.cancel();
    task.await.unwrap();
    assert!(
        double.schema_violations().is_empty(),
        "{:#?}",
        double.schema_violations()
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_notifications_sqlite() {
    notifications(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_notifications_postgres() {
    notifications(Backend::Postgres).await
}
