//! Webhook delivery end to end, on SQLite and PostgreSQL: a real HTTP receiver (axum on
//! 127.0.0.1) that checks every signature, goes down and comes back on the same port, and fails
//! on purpose; the engine's main loop delivers.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serversync_connectors::NetworkPolicy;
use serversync_engine::webhooks::WebhookInput;
use serversync_engine::{Admin, Engine, EngineConfig, WebhookConfig};
use serversync_model::alert::Alert;
use serversync_model::auth::Caller;
use serversync_model::crm::{Account, Contact, Lead};
use serversync_model::webhook::{Change, WebhookState};
use serversync_model::{AccountId, ContactId, LeadId, OrgId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::{PgDatabase, TestEnv};
use serversync_vault::MasterKey;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec-test-0123456789abcdef";

enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Db {
    async fn new(backend: Backend) -> Db {
        match backend {
            Backend::Sqlite => Db::Sqlite(tempfile::tempdir().unwrap()),
            Backend::Postgres => Db::Postgres(TestEnv::from_env().pg_database().await.unwrap()),
        }
    }
    fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}", dir.path().join("serversync.db").display()),
            Db::Postgres(db) => db.url().to_owned(),
        }
    }
}

// ---- the receiver ------------------------------------------------------------------------------

#[derive(Default)]
struct Received {
    /// Every request that passed the signature check, in arrival order.
    raw: Vec<Change>,
    bad_signatures: usize,
    /// Answer 500 to everything.
    failing: bool,
}

type Shared = Arc<Mutex<Received>>;

async fn hook(State(r): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let ts = h("x-serversync-timestamp");
    let mut signed = format!("{ts}.").into_bytes();
    signed.extend_from_slice(&body);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
    let expected: String = aws_lc_rs::hmac::sign(&key, &signed)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut r = r.lock().unwrap();
    if h("x-serversync-signature") != format!("sha256={expected}") {
        r.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    if r.failing {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let change: Change = serde_json::from_slice(&body).expect("the body is a change event");
    assert_eq!(h("x-serversync-event-id"), change.event_id);
    r.raw.push(change);
    StatusCode::NO_CONTENT
}

/// An HTTP receiver that can be stopped and started again on the same port.
struct Receiver {
    addr: SocketAddr,
    state: Shared,
    running: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiver {
            addr: listener.local_addr().unwrap(),
            state: Shared::default(),
            running: None,
        };
        r.serve(listener);
        r
    }
    fn url(&self) -> String {
        format!("http://{}/hooks/crm", self.addr)
    }
    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let app = axum::Router::new()
            .route("/hooks/crm", axum::routing::post(hook))
            .with_state(self.state.clone());
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await
                .unwrap();
        });
        self.running = Some((stop, task));
    }
    async fn stop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("receiver stops")
                .unwrap();
        }
    }
    async fn restart(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("same port again");
        self.serve(listener);
    }
    fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }
    /// Events received, each once (deduplicated by event id), in arrival order.
    fn events(&self) -> Vec<Change> {
        let r = self.state.lock().unwrap();
        let mut seen = BTreeSet::new();
        r.raw
            .iter()
            .filter(|c| seen.insert(c.event_id.clone()))
            .cloned()
            .collect()
    }
    fn bad_signatures(&self) -> usize {
        self.state.lock().unwrap().bad_signatures
    }
}

// ---- setup -------------------------------------------------------------------------------------

struct Setup {
    _db: Db,
    store: Store,
    admin: Admin,
    caller: Caller,
    org: OrgId,
    stop: CancellationToken,
    engine: tokio::task::JoinHandle<()>,
}

async fn setup(backend: Backend, webhooks: WebhookConfig) -> Setup {
    // The receivers are on this machine.
    setup_with(backend, webhooks, NetworkPolicy::loopback_allowed()).await
}

async fn setup_with(backend: Backend, webhooks: WebhookConfig, network: NetworkPolicy) -> Setup {
    let db = Db::new(backend).await;
    let store = Store::open(&db.url(), MasterKey::generate().unwrap())
        .await
        .unwrap();
    let trust = Arc::new(serversync_connectors::TlsTrust::system_only().unwrap());
    let engine = Engine::new(
        store.clone(),
        EngineConfig {
            network: Arc::new(network),
            tick: Duration::from_millis(100),
            lease_ttl: Duration::from_secs(6),
            webhooks,
            ..EngineConfig::new(trust)
        },
    );
    let admin = engine.admin();
    let (user, token) = admin.bootstrap().await.unwrap().unwrap();
    let caller = admin.authenticate(&token).await.unwrap();
    let stop = CancellationToken::new();
    let engine = tokio::spawn(engine.run(stop.clone()));
    Setup {
        _db: db,
        store,
        admin,
        caller,
        org: user.org_id,
        stop,
        engine,
    }
}

impl Setup {
    async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.engine)
            .await
            .expect("engine stops")
            .unwrap();
    }
    /// Creates `n` records of every kind, updates each contact and deletes each lead.
    async fn write_records(&self, n: usize, tag: &str) {
        for i in 0..n {
            let now = chrono::Utc::now();
            let owner = self.caller.user.id;
            let mut c = Contact {
                id: ContactId::new(),
                org_id: self.org,
                full_name: format!("{tag} contact {i}"),
                emails: vec![],
                account_id: None,
                company: None,
                job_title: None,
                phones: Vec::new(),
                owner_id: owner,
                created_at: now,
            };
            self.admin.create_record(&self.caller, &c).await.unwrap();
            let a = Account {
                id: AccountId::new(),
                org_id: self.org,
                name: format!("{tag} account {i}"),
                emails: vec![],
                owner_id: owner,
                created_at: now,
            };
            self.admin.create_record(&self.caller, &a).await.unwrap();
            let l = Lead {
                id: LeadId::new(),
                org_id: self.org,
                full_name: format!("{tag} lead {i}"),
                company: None,
                emails: vec![],
                owner_id: owner,
                created_at: now,
            };
            self.admin.create_record(&self.caller, &l).await.unwrap();
            c.full_name.push_str(" (renamed)");
            self.store.update(&c, Some(1)).await.unwrap();
            assert!(
                self.store
                    .delete::<Lead>(&l.id.to_string(), None)
                    .await
                    .unwrap()
            );
        }
    }
    /// The whole feed after `after`.
    async fn feed(&self, mut after: i64) -> Vec<Change> {
        let mut out = Vec::new();
        loop {
            let page = self
                .store
                .changes_after(self.org, after, 100)
                .await
                .unwrap();
            let Some(last) = page.last() else { return out };
            after = last.seq;
            out.extend(page);
        }
    }
}

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn seqs(v: &[Change]) -> Vec<i64> {
    v.iter().map(|c| c.seq).collect()
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

// ---- tests -------------------------------------------------------------------------------------

both!(
    a_receiver_that_was_down_gets_every_event_once_in_order,
    |backend| {
        let s = setup(
            backend,
            WebhookConfig {
                poll: Duration::from_millis(50),
                retry_base: Duration::from_millis(50),
                retry_max: Duration::from_millis(400),
                max_failures: 10_000,
                ..WebhookConfig::default()
            },
        )
        .await;
        // Something before the endpoint exists: not sent.
        s.write_records(1, "old").await;
        let mut rx = Receiver::start().await;
        let (ep, st) = s
            .admin
            .create_webhook(
                &s.caller,
                s.org,
                WebhookInput {
                    url: Some(rx.url()),
                    description: Some("CRM mirror".into()),
                    secret: Some(Secret::new(SECRET)),
                    record_types: None,
                },
            )
            .await
            .unwrap();
        let start = st.cursor;
        assert_eq!(start, s.store.latest_change_seq(s.org).await.unwrap());

        s.write_records(2, "live").await;
        let live = s.feed(start).await.len();
        eventually("the live events arrive", async || rx.events().len() == live).await;

        // The receiver goes down while records keep changing.
        rx.stop().await;
        s.write_records(5, "outage").await;
        let wanted = s.feed(start).await;
        eventually("failed attempts are logged", async || {
            let log = s
                .admin
                .webhook_deliveries(&s.caller, s.org, ep.value.id, 0, 1000)
                .await
                .unwrap();
            log.iter().filter(|d| !d.ok).count() >= 3
        })
        .await;
        let (_, st) = s
            .admin
            .webhook(&s.caller, s.org, ep.value.id)
            .await
            .unwrap();
        assert_eq!(st.state, WebhookState::Active, "retrying, not paused");
        assert!(st.consecutive_failures >= 1);
        assert!(
            st.last_error.as_deref().unwrap_or("").contains("connect"),
            "{:?}",
            st.last_error
        );
        assert_eq!(rx.events().len(), live, "nothing arrives while it is down");

        // Back on the same port: everything that happened meanwhile arrives, once, in order.
        rx.restart().await;
        eventually("all events arrive after the receiver is back", async || {
            rx.events().len() == wanted.len()
        })
        .await;
        let got = rx.events();
        assert_eq!(
            seqs(&got),
            seqs(&wanted),
            "every event exactly once, in feed order, no gaps"
        );
        // The feed keeps no copy of a record: an event carries the record as read when it is
        // sent. The live events went out while their records were still being changed (a
        // contact created, then renamed); those of the outage went out after every write.
        assert_eq!(
            got[live..],
            wanted[live..],
            "the events carry the records as written"
        );
        let raw = rx.state.lock().unwrap().raw.clone();
        assert!(
            raw.windows(2).all(|w| w[0].seq <= w[1].seq),
            "never out of order on the wire"
        );
        assert_eq!(
            rx.bad_signatures(),
            0,
            "every request was signed with the endpoint's secret"
        );
        assert!(got.iter().any(|c| c.event_type == "lead.deleted"));

        // The cursor and the log are written right after each answer: wait for the last one.
        let last = wanted.last().unwrap().seq;
        eventually("the cursor reaches the last event", async || {
            let (_, st) = s
                .admin
                .webhook(&s.caller, s.org, ep.value.id)
                .await
                .unwrap();
            (st.cursor, st.consecutive_failures) == (last, 0)
        })
        .await;
        let log = s
            .admin
            .webhook_deliveries(&s.caller, s.org, ep.value.id, 0, 1000)
            .await
            .unwrap();
        assert_eq!(
            log.iter().filter(|d| d.ok).count(),
            raw.len(),
            "each successful POST is in the delivery log"
        );
        let failed = log.iter().find(|d| !d.ok).unwrap();
        assert!(failed.status.is_none() && failed.error.is_some());
        s.shutdown().await;
        rx.stop().await;
    }
);

both!(
    an_endpoint_that_keeps_failing_is_paused_with_an_alert_and_loses_nothing,
    |backend| {
        let s = setup(
            backend,
            WebhookConfig {
                poll: Duration::from_millis(50),
                retry_base: Duration::from_millis(20),
                retry_max: Duration::from_millis(100),
                max_failures: 3,
                ..WebhookConfig::default()
            },
        )
        .await;
        let mut rx = Receiver::start().await;
        rx.set_failing(true);
        let (ep, st) = s
            .admin
            .create_webhook(
                &s.caller,
                s.org,
                WebhookInput {
                    url: Some(rx.url()),
                    description: None,
                    secret: Some(Secret::new(SECRET)),
                    record_types: None,
                },
            )
            .await
            .unwrap();
        let start = st.cursor;
        s.write_records(2, "first").await;
        let id = ep.value.id;
        eventually("the endpoint is paused", async || {
            s.store.webhook_status(id).await.unwrap().unwrap().state == WebhookState::Paused
        })
        .await;
        let log = s
            .admin
            .webhook_deliveries(&s.caller, s.org, id, 0, 100)
            .await
            .unwrap();
        let first = s.feed(start).await[0].event_id.clone();
        assert_eq!(
            log.iter()
                .map(|d| (d.event_id.clone(), d.attempt, d.status, d.ok))
                .collect::<Vec<_>>(),
            (1..=3)
                .map(|a| (first.clone(), a, Some(500), false))
                .collect::<Vec<_>>(),
            "three attempts at the first event, each logged, then paused"
        );
        // The alert is written right after the pause.
        let paused_alert = async || -> Option<Alert> {
            let all = s.store.list_all::<Alert>(Some(s.org), &[]).await.unwrap();
            all.into_iter()
                .map(|a| a.value)
                .find(|a| a.code == "webhook_paused")
        };
        eventually("an alert for the administrators", async || {
            paused_alert().await.is_some()
        })
        .await;
        let alert = paused_alert().await.unwrap();
        assert!(alert.recipients.contains(&s.caller.user.id));
        assert!(alert.message.contains(&id.to_string()) && alert.message.contains("resume"));

        // While paused nothing is sent, and changes keep accumulating.
        rx.set_failing(false);
        s.write_records(2, "while paused").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(rx.events().is_empty());
        assert_eq!(
            s.store.webhook_status(id).await.unwrap().unwrap().cursor,
            start,
            "the cursor never moved"
        );

        let (_, st) = s.admin.resume_webhook(&s.caller, s.org, id).await.unwrap();
        assert_eq!(
            (st.state, st.consecutive_failures),
            (WebhookState::Active, 0)
        );
        let wanted = s.feed(start).await;
        eventually("everything arrives after resume", async || {
            rx.events().len() == wanted.len()
        })
        .await;
        assert_eq!(seqs(&rx.events()), seqs(&wanted));
        s.shutdown().await;
        rx.stop().await;
    }
);

both!(
    a_record_type_filter_sends_only_those_and_moves_past_the_rest,
    |backend| {
        let s = setup(
            backend,
            WebhookConfig {
                poll: Duration::from_millis(50),
                ..WebhookConfig::default()
            },
        )
        .await;
        let mut rx = Receiver::start().await;
        let (ep, st) = s
            .admin
            .create_webhook(
                &s.caller,
                s.org,
                WebhookInput {
                    url: Some(rx.url()),
                    description: None,
                    secret: Some(Secret::new(SECRET)),
                    record_types: Some(vec![serversync_model::webhook::RecordType::Lead]),
                },
            )
            .await
            .unwrap();
        s.write_records(3, "f").await;
        let wanted: Vec<Change> = s
            .feed(st.cursor)
            .await
            .into_iter()
            .filter(|c| c.record_type == serversync_model::webhook::RecordType::Lead)
            .collect();
        assert_eq!(wanted.len(), 6);
        let last = s.store.latest_change_seq(s.org).await.unwrap();
        let id = ep.value.id;
        eventually("leads arrive and the cursor passes the rest", async || {
            rx.events().len() == wanted.len()
                && s.store.webhook_status(id).await.unwrap().unwrap().cursor == last
        })
        .await;
        assert_eq!(seqs(&rx.events()), seqs(&wanted));
        s.shutdown().await;
        rx.stop().await;
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_name_that_resolves_to_loopback_gets_nothing_by_default() {
    // Plain HTTP allowed (to keep the receiver simple), addresses as in production.
    let s = setup_with(
        Backend::Sqlite,
        WebhookConfig {
            poll: Duration::from_millis(50),
            retry_base: Duration::from_millis(50),
            retry_max: Duration::from_millis(100),
            max_failures: 10_000,
            ..WebhookConfig::default()
        },
        NetworkPolicy::default().with_http_webhooks(true),
    )
    .await;
    let rx = Receiver::start().await;
    // A name passes the check when it is saved; what it resolves to is checked at delivery.
    let url = format!("http://localhost:{}/hooks/crm", rx.addr.port());
    let (ep, _) = s
        .admin
        .create_webhook(
            &s.caller,
            s.org,
            WebhookInput {
                url: Some(url),
                secret: Some(Secret::new(SECRET)),
                ..WebhookInput::default()
            },
        )
        .await
        .unwrap();
    s.write_records(1, "internal").await;
    eventually("a refused delivery attempt", async || {
        let log = s
            .admin
            .webhook_deliveries(&s.caller, s.org, ep.value.id, 0, 10)
            .await
            .unwrap();
        log.first().is_some_and(|d| {
            let e = d.error.as_deref().unwrap_or_default();
            assert!(!d.ok && d.status.is_none(), "{d:?}");
            assert!(
                e.contains("localhost resolves to") && e.contains("a loopback address"),
                "{e}"
            );
            true
        })
    })
    .await;
    assert!(rx.events().is_empty() && rx.bad_signatures() == 0);
    // Written as an address, it is refused when saved.
    let err = s
        .admin
        .create_webhook(
            &s.caller,
            s.org,
            WebhookInput {
                url: Some(rx.url()),
                secret: Some(Secret::new(SECRET)),
                ..WebhookInput::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a loopback address"), "{err}");
    s.shutdown().await;
}
