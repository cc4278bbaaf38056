//! End to end over a private Dovecot, on SQLite and PostgreSQL: the same message in two users'
//! Inboxes is synchronized by both mailboxes' workers and becomes one email activity linked to
//! both mailboxes, with its parties resolved.

mod common;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::crm::{Contact, EmailActivity, PartyRole, RecordRef};
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::org::User;
use serversync_model::profile::Endpoint;
use serversync_model::settings::TrackingFilter;
use serversync_model::{ContactId, MailboxId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::{Dovecot, TEST_PASSWORD, TestEnv};
use serversync_vault::MasterKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn append(port: u16, user: &str, raw: &[u8]) {
    let mut s = SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(user, Secret::new(TEST_PASSWORD)),
        &ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    s.append("INBOX", &[], None, raw).await.unwrap();
    let _ = s.logout().await;
}

async fn run(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-tracking")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let port = dovecot.info().imap_port;
    let (_db, url): (Box<dyn std::any::Any + Send>, String) = match backend {
        Backend::Sqlite => (
            Box::new(()),
            format!("sqlite://{}", dir.path().join("t.db").display()),
        ),
        Backend::Postgres => {
            let db = TestEnv::from_env().pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db), url)
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let endpoint = Endpoint {
        location: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
    };

    // Alice's mailbox (owned by the bootstrap administrator) and Bob's, both tracking all email.
    let mut alice_mb =
        common::imap_mailbox(&store, endpoint, "alice@example.test", TEST_PASSWORD).await;
    alice_mb.tracking = TrackingFilter::AllEmail;
    alice_mb.process_email_from = Some(chrono::Utc::now() - chrono::Duration::days(3650));
    store.update(&alice_mb, None).await.unwrap();
    let now = chrono::Utc::now();
    let bob = User::new(alice_mb.org_id, "Bob", "bob@example.test", now);
    store.insert(&bob).await.unwrap();
    let mut bob_mb = alice_mb.clone();
    bob_mb.id = MailboxId::new();
    bob_mb.regarding = MailboxRegarding::User(bob.id);
    bob_mb.owner_id = bob.id;
    bob_mb.email = "bob@example.test".into();
    bob_mb.name = "Bob".into();
    store.insert(&bob_mb).await.unwrap();
    let ann = Contact {
        id: ContactId::new(),
        org_id: alice_mb.org_id,
        full_name: "Ann Customer".into(),
        emails: vec!["ann@customer.test".into()],
        account_id: None,
        company: None,
        job_title: None,
        phones: Vec::new(),
        owner_id: alice_mb.owner_id,
        created_at: now,
    };
    store.insert(&ann).await.unwrap();

    let message_id = format!("{}@customer.test", uuid::Uuid::new_v4());
    let raw = format!(
        "Message-ID: <{message_id}>\r\nFrom: Ann Customer <ann@customer.test>\r\nTo: alice@example.test\r\nCc: bob@example.test\r\nSubject: Quote request\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\nPlease send a quote.\r\n"
    );
    append(port, "alice@example.test", raw.as_bytes()).await;
    append(port, "bob@example.test", raw.as_bytes()).await;

    let config = EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(Arc::new(TlsTrust::system_only().unwrap()))
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(store.clone(), config).run(stop.clone()));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let activity = loop {
        let found: Vec<EmailActivity> = store
            .list_all::<EmailActivity>(Some(alice_mb.org_id), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.value)
            .filter(|a| a.message_id.as_deref() == Some(message_id.as_str()))
            .collect();
        assert!(found.len() <= 1, "one activity per message: {found:?}");
        if let Some(a) = found.first()
            && a.mailbox_ids.len() == 2
        {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no activity linked to both mailboxes within 60 s: {found:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "{backend:?}: appended → one activity linked to both mailboxes in {:?}",
        started.elapsed()
    );
    assert!(activity.mailbox_ids.contains(&alice_mb.id));
    assert!(activity.mailbox_ids.contains(&bob_mb.id));
    assert_eq!(activity.subject, "Quote request");
    let from = activity
        .parties
        .iter()
        .find(|p| p.role == PartyRole::From)
        .unwrap();
    assert_eq!(from.resolved, Some(RecordRef::Contact(ann.id)));
    let cc = activity
        .parties
        .iter()
        .find(|p| p.role == PartyRole::Cc)
        .unwrap();
    assert_eq!(cc.resolved, Some(RecordRef::User(bob.id)));
    // Both items say what became of them (each item's trace is written right after the
    // activity, so wait for it, bounded).
    for m in [&alice_mb, &bob_mb] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let items = store.list_items(m.id, None, 10).await.unwrap().items;
            assert_eq!(items.len(), 1);
            let trace = items[0].value.trace.join("\n");
            if trace.contains(&activity.id.to_string()) {
                break;
            }
            assert!(Instant::now() < deadline, "{}: {trace}", m.email);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The worker's telemetry follows right after the batch is committed.
    while store
        .fetch::<Mailbox>(&bob_mb.id.to_string())
        .await
        .unwrap()
        .value
        .telemetry
        .last_sync_start
        .is_none()
    {
        assert!(Instant::now() < deadline, "telemetry of the round recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_activity_for_a_message_in_two_mailboxes_sqlite() {
    run(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_activity_for_a_message_in_two_mailboxes_postgres() {
    run(Backend::Postgres).await
}
