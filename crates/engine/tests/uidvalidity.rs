//! A renumbered Inbox (UIDVALIDITY change) is re-read and re-mapped by Message-ID (or content,
//! for messages without one): nothing is stored twice. Uses a private Dovecot so its mail
//! storage can be reset under it.

mod common;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::item::MailItem;
use serversync_model::profile::Endpoint;
use serversync_model::{MailboxId, Secret};
use serversync_store::Store;
use serversync_testkit::{Dovecot, TEST_PASSWORD};
use serversync_vault::MasterKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CAROL: &str = "carol@example.test";

async fn imap(port: u16) -> SyncSession {
    let trust = Arc::new(TlsTrust::system_only().unwrap());
    SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(CAROL, Secret::new(TEST_PASSWORD)),
        &ConnectOptions::new(trust)
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap()
}

async fn append(port: u16, messages: &[String]) -> u32 {
    let mut s = imap(port).await;
    for m in messages {
        s.append("INBOX", &[], None, m.as_bytes()).await.unwrap();
    }
    let v = s.examine("INBOX", false).await.unwrap().uid_validity;
    let _ = s.logout().await;
    v
}

fn message(id: Option<&str>, subject: &str) -> String {
    let mid = id
        .map(|i| format!("Message-ID: <{i}>\r\n"))
        .unwrap_or_default();
    format!(
        "{mid}From: ann@example.test\r\nTo: {CAROL}\r\nSubject: {subject}\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\nbody of {subject}\r\n"
    )
}

async fn sync_until(
    store: &Store,
    config: &EngineConfig,
    mailbox: MailboxId,
    done: impl Fn(usize, u32) -> bool,
) {
    let engine = Engine::new(store.clone(), config.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let items = store
            .list_items(mailbox, None, 1000)
            .await
            .unwrap()
            .items
            .len();
        let changes = store
            .get_cursor(mailbox, "INBOX")
            .await
            .unwrap()
            .map_or(u32::MAX, |c| c.uid_validity_changes);
        if done(items, changes) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sync did not get there within 60 s ({items} items)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uidvalidity_reset_stores_nothing_twice() {
    let dir = tempfile::Builder::new()
        .prefix("ss-uidvalidity")
        .tempdir_in("/tmp")
        .unwrap();
    let mut dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let port = dovecot.info().imap_port;
    let first: Vec<String> = (0..3)
        .map(|i| message(Some(&format!("m{i}@example.test")), &format!("m{i}")))
        .chain([message(None, "no id")])
        .collect();
    let v1 = append(port, &first).await;

    let db = tempfile::tempdir().unwrap();
    let store = Store::open(
        &format!("sqlite://{}", db.path().join("u.db").display()),
        MasterKey::generate().unwrap(),
    )
    .await
    .unwrap();
    let config = EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(Arc::new(TlsTrust::system_only().unwrap()))
    };
    let m = common::imap_mailbox(
        &store,
        Endpoint {
            location: "127.0.0.1".into(),
            port,
            tls: TlsMode::None,
        },
        CAROL,
        TEST_PASSWORD,
    )
    .await;

    sync_until(&store, &config, m.id, |items, _| items == 4).await;

    // Reset the mail storage's UID list under Dovecot: the Inbox gets a new UIDVALIDITY.
    dovecot.stop().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let maildir = dovecot.info().maildir(CAROL);
    for entry in std::fs::read_dir(&maildir).unwrap() {
        let name = entry
            .as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.starts_with("dovecot-uidlist") || name.starts_with("dovecot.index") {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
    }
    dovecot.restart().unwrap();
    let v2 = append(
        port,
        &[message(Some("after-reset@example.test"), "after reset")],
    )
    .await;
    assert_ne!(v1, v2, "the Inbox was renumbered");

    sync_until(&store, &config, m.id, |items, changes| {
        items >= 5 && changes == 0
    })
    .await;
    let items: Vec<MailItem> = store
        .list_items(m.id, None, 1000)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.value)
        .collect();
    let ids: Vec<Option<&str>> = items.iter().map(|i| i.message_id.as_deref()).collect();
    assert_eq!(
        items.len(),
        5,
        "four old messages once each, plus the new one: {ids:?}"
    );
    assert!(ids.contains(&Some("after-reset@example.test")));
    let cursor = store.get_cursor(m.id, "INBOX").await.unwrap().unwrap();
    assert_eq!(cursor.uid_validity, Some(v2));
}
