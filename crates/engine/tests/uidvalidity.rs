//! A renumbered folder (UIDVALIDITY change) is re-read and re-mapped by Message-ID *and*
//! content: nothing is stored twice, and a message that only shares another's Message-ID is
//! stored, never taken for it. Uses a private Dovecot so its mail storage can be reset or a
//! folder deleted under it.

mod common;
use common::eventually;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::{EmailServerProfile, Endpoint};
use serversync_model::{MailboxId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::{Dovecot, TEST_PASSWORD, TestEnv};
use serversync_vault::{MasterKey, sha256_hex};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
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
            .and_then(|c| c.into_imap())
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
    let cursor = store
        .get_cursor(m.id, "INBOX")
        .await
        .unwrap()
        .and_then(|c| c.into_imap())
        .unwrap();
    assert_eq!(cursor.uid_validity, Some(v2));
}

/// The folder deleted and created again under the running engine.
const FOLDER: &str = "Projects";

/// A message sent yesterday (relative to the run, so "process email from" never skips it).
fn dated(id: Option<&str>, subject: &str) -> Vec<u8> {
    let date = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc2822();
    let mid = id
        .map(|i| format!("Message-ID: <{i}>\r\n"))
        .unwrap_or_default();
    format!(
        "{mid}From: ann@example.test\r\nTo: {CAROL}\r\nSubject: {subject}\r\nDate: {date}\r\n\r\nbody of {subject}\r\n"
    )
    .into_bytes()
}

/// `DELETE folder` over a plain IMAP connection (the sync session has no such command: the
/// product never deletes a folder).
async fn delete_folder(port: u16, folder: &str) {
    let sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    for (tag, command) in [
        ("a", format!("LOGIN \"{CAROL}\" \"{TEST_PASSWORD}\"")),
        ("b", format!("DELETE \"{folder}\"")),
        ("c", "LOGOUT".to_string()),
    ] {
        w.write_all(format!("{tag} {command}\r\n").as_bytes())
            .await
            .unwrap();
        loop {
            line.clear();
            assert!(r.read_line(&mut line).await.unwrap() > 0, "closed");
            if let Some(status) = line.strip_prefix(&format!("{tag} ")) {
                assert!(status.starts_with("OK"), "{command}: {line}");
                break;
            }
        }
    }
}

/// The folder's UIDVALIDITY and its messages (UID, raw bytes).
async fn folder_contents(port: u16) -> (u32, Vec<(u32, Vec<u8>)>) {
    let mut s = imap(port).await;
    let validity = s.examine(FOLDER, false).await.unwrap().uid_validity;
    let uids: Vec<u32> = s
        .uid_list(1)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.uid)
        .collect();
    let mut out = Vec::new();
    let mut fetch = s.fetch_bodies(&uids, 1 << 20).await.unwrap();
    while let Some(m) = fetch.next().await.unwrap() {
        out.push((m.uid, m.body));
    }
    drop(fetch);
    let _ = s.logout().await;
    (validity, out)
}

async fn folder_items(store: &Store, m: MailboxId) -> Vec<MailItem> {
    store
        .list_items(m, None, 1000)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.value)
        .filter(|i| matches!(&i.source, ItemSource::Imap { folder, .. } if folder == FOLDER))
        .collect()
}

/// Content hashes with how often each occurs.
fn counted<'a>(hashes: impl Iterator<Item = &'a str>) -> BTreeMap<&'a str, usize> {
    let mut out = BTreeMap::new();
    for h in hashes {
        *out.entry(h).or_insert(0) += 1;
    }
    out
}

/// A tracked folder is deleted and created again while the engine runs, and filled with the
/// messages it had (the same bytes, as a client restoring them would) plus distinct messages
/// that reuse their Message-IDs — broken senders do this — and a third copy of a message held
/// twice. After "sync now", every message on the server has exactly one item under its new
/// UID: the earlier items were re-mapped (same item, new UID) by Message-ID and content, the
/// others stored as new; each item's trace says which.
async fn a_recreated_folder_loses_no_message_that_shares_a_message_id(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-recreated")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let port = dovecot.info().imap_port;
    let (_guard, url): (Box<dyn std::any::Any + Send>, String) = match backend {
        Backend::Sqlite => (
            Box::new(()),
            format!("sqlite://{}", dir.path().join("r.db").display()),
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
    let twin = dated(Some("twin@example.test"), "twin");
    let before = vec![
        dated(Some("shared@example.test"), "first"),
        dated(Some("solo@example.test"), "solo"),
        dated(None, "no id"),
        twin.clone(),
        twin.clone(),
    ];
    let mut s = imap(port).await;
    s.create_folder_if_missing(FOLDER).await.unwrap();
    for raw in &before {
        s.append(FOLDER, &[], None, raw).await.unwrap();
    }
    let _ = s.logout().await;

    let mut m = common::imap_mailbox(
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
    m.extra_folders = vec![FOLDER.into()];
    store.update(&m, None).await.unwrap();
    // Extra folders are read every hour, or on "sync now": the folder is recreated between.
    let mut p = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap()
        .value;
    p.advanced.min_polling_interval_minutes = 60;
    store.update(&p, None).await.unwrap();
    let config = EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(Arc::new(TlsTrust::system_only().unwrap()))
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(store.clone(), config).run(stop.clone()));
    eventually!(
        30,
        "the folder's five messages are stored",
        folder_items(&store, m.id).await.len() == 5
    );
    let (v1, first) = folder_contents(port).await;
    // The folder is recreated only once its first reading is over (its cursor committed):
    // deleted while being read, it would fail that round, and the retry's back-off outlast
    // the wait below.
    let first_last = first.iter().map(|(uid, _)| *uid).max();
    eventually!(
        30,
        "the folder's first reading is committed",
        store
            .get_cursor(m.id, FOLDER)
            .await
            .unwrap()
            .and_then(|c| c.into_imap())
            .is_some_and(|c| c.uid_validity == Some(v1) && c.last_uid == first_last)
    );
    let earlier: Vec<MailItem> = folder_items(&store, m.id).await;

    delete_folder(port, FOLDER).await;
    let mut s = imap(port).await;
    assert!(s.create_folder_if_missing(FOLDER).await.unwrap());
    let after = vec![
        // Appended before the message whose Message-ID it reuses.
        dated(Some("shared@example.test"), "second, same Message-ID"),
        before[0].clone(),
        dated(Some("shared@example.test"), "third, same Message-ID"),
        before[1].clone(),
        dated(Some("solo@example.test"), "solo, other content"),
        before[2].clone(),
        dated(None, "no id, other content"),
        before[3].clone(),
        before[4].clone(),
        twin.clone(),
    ];
    for raw in &after {
        s.append(FOLDER, &[], None, raw).await.unwrap();
    }
    let _ = s.logout().await;
    let (v2, on_server) = folder_contents(port).await;
    assert_ne!(v1, v2, "the recreated folder has a new UIDVALIDITY");
    assert_eq!(on_server.len(), after.len());
    let last_uid = on_server.iter().map(|(uid, _)| *uid).max();

    let mut now = store.fetch::<Mailbox>(&m.id.to_string()).await.unwrap();
    now.value.telemetry.sync_requested_at = Some(chrono::Utc::now());
    store.update(&now.value, Some(now.version)).await.unwrap();
    eventually!(
        60,
        "the recreated folder is read to its last message",
        store
            .get_cursor(m.id, FOLDER)
            .await
            .unwrap()
            .and_then(|c| c.into_imap())
            .is_some_and(|c| c.uid_validity == Some(v2) && c.last_uid == last_uid)
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();

    let items = folder_items(&store, m.id).await;
    let shown: Vec<String> = items
        .iter()
        .map(|i| format!("{} {:?} {:?}", i.source_key, i.message_id, i.subject))
        .collect();
    // Exactly one item per message on the server, under its new UID, with its content.
    let mut keys: Vec<&str> = items.iter().map(|i| i.source_key.as_str()).collect();
    keys.sort_unstable();
    let mut expected: Vec<String> = on_server
        .iter()
        .map(|(uid, _)| format!("imap:{FOLDER}:{v2}:{uid}"))
        .collect();
    expected.sort_unstable();
    assert_eq!(
        keys, expected,
        "one item per message on the server: {shown:#?}"
    );
    let server_hashes: Vec<String> = on_server.iter().map(|(_, raw)| sha256_hex(raw)).collect();
    assert_eq!(
        counted(items.iter().map(|i| i.raw_sha256.as_str())),
        counted(server_hashes.iter().map(String::as_str)),
        "every message stored exactly once, none twice: {shown:#?}"
    );
    assert!(
        items.iter().all(|i| i.decision == ItemDecision::Stored),
        "{shown:#?}"
    );
    // The five earlier items were re-mapped (the same items, now under their new UIDs); the
    // other five were stored as new. Each trace says how.
    for item in &items {
        let was_earlier = earlier.iter().any(|e| e.id == item.id);
        let trace = item.trace.join(" | ");
        if was_earlier {
            assert!(
                trace.contains(&format!(
                    "re-mapped: the UIDVALIDITY of {FOLDER} changed from {v1} to {v2}"
                )) && trace.contains("found by the same"),
                "{}: {trace}",
                item.source_key
            );
        } else {
            assert!(
                item.trace[0].starts_with(&format!(
                    "re-mapping after the UIDVALIDITY of {FOLDER} changed to {v2}: no message stored before has"
                )) && item.trace[0].ends_with("stored as a new message"),
                "{}: {trace}",
                item.source_key
            );
        }
    }
    assert_eq!(
        items
            .iter()
            .filter(|i| earlier.iter().any(|e| e.id == i.id))
            .count(),
        5,
        "{shown:#?}"
    );
    let second = items
        .iter()
        .find(|i| i.subject.as_deref() == Some("second, same Message-ID"))
        .expect("the second message with a reused Message-ID is stored");
    assert!(
        second.trace[0].contains("have this Message-ID"),
        "{:?}",
        second.trace
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_folder_loses_no_message_that_shares_a_message_id_sqlite() {
    a_recreated_folder_loses_no_message_that_shares_a_message_id(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_folder_loses_no_message_that_shares_a_message_id_postgres() {
    a_recreated_folder_loses_no_message_that_shares_a_message_id(Backend::Postgres).await
}
