//! The pruner on SQLite and PostgreSQL: one worker at a time under the lease `pruner` (two
//! workers never prune the same rows, and neither fails), a pass stops at once when asked,
//! and engines prune by themselves what is past retention — a tracked message's raw copy once
//! the tracker made its activity, never an untracked one's. Ages are written into the database
//! relative to the run.

use serversync_engine::intake::{IntakeOutcome, take_in};
use serversync_engine::retention::{self, RESOURCE, RetentionConfig};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::audit::Actor;
use serversync_model::item::{ItemSource, MailItem};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{Organization, User};
use serversync_model::settings::{EmailSettings, IncomingMethod, TrackingFilter};
use serversync_store::{Backend, NewAuditEntry, Store};
use serversync_testkit::{TestEnv, days_ago_ms, execute_sql};
use serversync_vault::MasterKey;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_secs(30);

async fn open(backend: Backend) -> (Box<dyn std::any::Any>, String, Store) {
    let (guard, url) = match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("p.db").display());
            (Box::new(d) as Box<dyn std::any::Any>, url)
        }
        Backend::Postgres => {
            let db = TestEnv::from_env().pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db) as Box<dyn std::any::Any>, url)
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    (guard, url, store)
}

/// `n` audit entries written `days` days ago.
async fn old_audit(store: &Store, url: &str, n: usize, days: i64) {
    for i in 0..n {
        store
            .append_audit(NewAuditEntry {
                org_id: None,
                actor: Actor::System("test".into()),
                action: format!("old{i}"),
                entity: "thing".into(),
                entity_id: i.to_string(),
                before: None,
                after: None,
            })
            .await
            .unwrap();
    }
    execute_sql(
        url,
        &format!(
            "UPDATE audit_log SET at = {} WHERE action LIKE 'old%'",
            days_ago_ms(days)
        ),
    )
    .await
    .unwrap();
}

async fn audit_count(store: &Store) -> usize {
    store.list_audit(None, 0, 1000).await.unwrap().len()
}

/// Only the audit log, in batches of 2, without pauses.
fn audit_only() -> RetentionConfig {
    RetentionConfig {
        batch: 2,
        pause: Duration::ZERO,
        webhook_log: None,
        change_feed: None,
        audit: Some(Duration::from_secs(86_400)),
        raw_messages: None,
        expired_sessions: None,
        ..RetentionConfig::default()
    }
}

async fn two_workers_prune_under_one_lease(backend: Backend) {
    let (_guard, url, store) = open(backend).await;
    old_audit(&store, &url, 7, 2).await;
    let config = audit_only();
    let stop = CancellationToken::new();
    let (a, b) = tokio::join!(
        retention::run_once(&store, "worker-a", TTL, &config, &stop),
        retention::run_once(&store, "worker-b", TTL, &config, &stop),
    );
    let (a, b) = (a.expect("no error"), b.expect("no error"));
    let done: Vec<_> = [&a, &b].into_iter().flatten().collect();
    assert_eq!(done.len(), 1, "one pass, by one worker: {a:?} {b:?}");
    assert_eq!(done[0].audit, 7, "every old entry, removed once");
    assert!(!done[0].stopped);
    assert_eq!(audit_count(&store).await, 0);
    // The lease is kept for the interval: no worker starts another pass before it is due.
    let holder = store.get_lease(RESOURCE).await.unwrap().unwrap();
    let winner = if a.is_some() { "worker-a" } else { "worker-b" };
    assert_eq!(holder.owner, winner);
    assert!(holder.until > chrono::Utc::now() + chrono::Duration::minutes(50));
    old_audit(&store, &url, 1, 2).await;
    for w in ["worker-a", "worker-b"] {
        assert_eq!(
            retention::run_once(&store, w, TTL, &config, &stop)
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(audit_count(&store).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_prune_under_one_lease_sqlite() {
    two_workers_prune_under_one_lease(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_prune_under_one_lease_postgres() {
    two_workers_prune_under_one_lease(Backend::Postgres).await
}

/// A pass asked to stop ends before its next batch and gives the lease back, so another worker
/// can prune at once.
#[tokio::test]
async fn a_pass_stops_when_asked() {
    let (_guard, url, store) = open(Backend::Sqlite).await;
    old_audit(&store, &url, 5, 2).await;
    let config = audit_only();
    let stop = CancellationToken::new();
    stop.cancel();
    let r = retention::run_once(&store, "worker-a", TTL, &config, &stop)
        .await
        .unwrap()
        .unwrap();
    assert!(r.stopped);
    assert_eq!(r.total(), 0);
    assert_eq!(audit_count(&store).await, 5);
    let r = retention::run_once(&store, "worker-b", TTL, &config, &CancellationToken::new())
        .await
        .unwrap()
        .expect("the lease was given back");
    assert_eq!((r.audit, r.stopped), (5, false));
}

async fn engines_prune_tracked_raw_copies(backend: Backend) {
    let (_guard, url, store) = open(backend).await;
    let now = chrono::Utc::now();
    let org = Organization::new("acme", "Acme", now);
    store.insert(&org).await.unwrap();
    let mut settings = EmailSettings::new(org.id);
    settings.require_approved_users = false;
    store.insert(&settings).await.unwrap();
    let user = User::new(org.id, "Una", "una@acme.test", now);
    store.insert(&user).await.unwrap();
    let mut mb = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(user.id),
        user.id,
        "Una",
        "una@acme.test",
        &settings,
        now,
    );
    mb.incoming_method = IncomingMethod::EmailRouter;
    mb.approval = ApprovalStatus::Approved;
    mb.tracking = TrackingFilter::AllEmail;
    store.insert(&mb).await.unwrap();
    let quo = User::new(org.id, "Quo", "quo@acme.test", now);
    store.insert(&quo).await.unwrap();
    let mut quiet = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(quo.id),
        quo.id,
        "Quo",
        "quo@acme.test",
        &settings,
        now,
    );
    quiet.incoming_method = IncomingMethod::EmailRouter;
    quiet.approval = ApprovalStatus::Approved;
    quiet.tracking = TrackingFilter::None;
    store.insert(&quiet).await.unwrap();

    let attachment = b"attached bytes";
    let raw = format!(
        "Message-ID: <old@acme.test>\r\nFrom: zed@else.test\r\nTo: una@acme.test\r\nSubject: old news\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64_of(attachment)
    );
    let mut stored: Vec<MailItem> = Vec::new();
    for m in [&mb, &quiet] {
        let out = take_in(
            &store,
            m,
            &settings,
            None,
            ItemSource::Router { via: "test".into() },
            raw.as_bytes(),
            now,
        )
        .await
        .unwrap();
        let IntakeOutcome::Recorded(item) = out else {
            panic!("recorded")
        };
        stored.push(*item);
    }
    // Both were stored 100 days ago; only `mb`'s is tracked as an activity.
    execute_sql(
        &url,
        &format!("UPDATE mail_items SET created_at = {}", days_ago_ms(100)),
    )
    .await
    .unwrap();

    let config = |tick| EngineConfig {
        tick: Duration::from_millis(tick),
        retention: RetentionConfig {
            interval: Duration::from_millis(200),
            raw_messages: Some(Duration::from_secs(90 * 86_400)),
            ..RetentionConfig::default()
        },
        ..EngineConfig::new(std::sync::Arc::new(
            serversync_connectors::TlsTrust::system_only().unwrap(),
        ))
    };
    let stop = CancellationToken::new();
    let engines: Vec<_> = [10, 15]
        .into_iter()
        .map(|tick| tokio::spawn(Engine::new(store.clone(), config(tick)).run(stop.clone())))
        .collect();
    let item = |i: usize| {
        let (store, id) = (store.clone(), stored[i].id);
        async move {
            store
                .fetch::<MailItem>(&id.to_string())
                .await
                .unwrap()
                .value
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while item(0).await.raw_kept {
        assert!(
            std::time::Instant::now() < deadline,
            "the tracked message's raw copy is removed: {:?}",
            item(0).await.trace
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for e in engines {
        tokio::time::timeout(Duration::from_secs(15), e)
            .await
            .expect("engines stop promptly")
            .unwrap();
    }
    let tracked = item(0).await;
    assert!(
        tracked
            .trace
            .iter()
            .any(|l| l.starts_with("tracked as activity")),
        "{:?}",
        tracked.trace
    );
    assert!(
        tracked
            .trace
            .last()
            .unwrap()
            .starts_with("raw message removed"),
        "{:?}",
        tracked.trace
    );
    let untracked = item(1).await;
    assert!(untracked.trace.iter().any(|l| l.starts_with("not tracked")));
    assert!(untracked.raw_kept, "not tracked as an activity: kept");
    assert_eq!(
        store
            .get_blob(&untracked.raw_sha256)
            .await
            .unwrap()
            .as_deref(),
        Some(raw.as_bytes()),
        "the raw copy the untracked item keeps is still there"
    );
    assert_eq!(
        store
            .get_blob(&tracked.attachments[0].sha256)
            .await
            .unwrap()
            .as_deref(),
        Some(&attachment[..])
    );
}

fn base64_of(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engines_prune_tracked_raw_copies_sqlite() {
    engines_prune_tracked_raw_copies(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engines_prune_tracked_raw_copies_postgres() {
    engines_prune_tracked_raw_copies(Backend::Postgres).await
}
