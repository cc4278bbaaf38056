//! The IMAP worker against a private Dovecot: extra tracked folders on the polling interval,
//! "sync now", failed messages moved to Undeliverable, reconnection after the server goes
//! away, and a profile's connection limit shared by mailboxes and workers.

mod common;
use common::eventually;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::item::{ItemDecision, MailItem};
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::profile::{AuthenticationType, EmailServerProfile, Endpoint};
use serversync_model::{MailboxId, QueueId, Secret};
use serversync_store::Store;
use serversync_testkit::{Dovecot, TEST_PASSWORD};
use serversync_vault::MasterKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CAROL: &str = "carol@example.test";

async fn imap(port: u16) -> SyncSession {
    SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(CAROL, Secret::new(TEST_PASSWORD)),
        &ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap()
}

async fn append(port: u16, folder: &str, raw: &[u8]) {
    let mut s = imap(port).await;
    s.create_folder_if_missing(folder).await.unwrap();
    s.append(folder, &[], None, raw).await.unwrap();
    let _ = s.logout().await;
}

/// (message count, how many carry \Seen) of a folder.
async fn folder_state(port: u16, folder: &str) -> (usize, usize) {
    let mut s = imap(port).await;
    if s.create_folder_if_missing(folder).await.unwrap() {
        let _ = s.logout().await;
        return (0, 0);
    }
    s.examine(folder, false).await.unwrap();
    let list = s.uid_list(1).await.unwrap();
    let _ = s.logout().await;
    let seen = list.iter().filter(|m| m.has_flag("\\Seen")).count();
    (list.len(), seen)
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}>\r\nFrom: ann@example.test\r\nTo: {CAROL}\r\nSubject: {id}\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\nbody of {id}\r\n"
    )
    .into_bytes()
}

async fn items(store: &Store, m: MailboxId) -> Vec<MailItem> {
    store
        .list_items(m, None, 1000)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.value)
        .collect()
}

async fn has_item(store: &Store, m: MailboxId, message_id: &str) -> bool {
    items(store, m)
        .await
        .iter()
        .any(|i| i.message_id.as_deref() == Some(message_id))
}

struct Setup {
    _dir: tempfile::TempDir,
    dovecot: Dovecot,
    store: Store,
    config: EngineConfig,
}

async fn setup(name: &str) -> Setup {
    let dir = tempfile::Builder::new()
        .prefix(&format!("ss-{name}"))
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let store = Store::open(
        &format!("sqlite://{}", dir.path().join("w.db").display()),
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
    Setup {
        _dir: dir,
        dovecot,
        store,
        config,
    }
}

fn endpoint(port: u16) -> Endpoint {
    Endpoint {
        location: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
    }
}

async fn edit_profile(store: &Store, m: &Mailbox, f: impl FnOnce(&mut EmailServerProfile)) {
    let mut p = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap()
        .value;
    f(&mut p);
    store.update(&p, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_folders_poll_sync_now_and_undeliverable() {
    let s = setup("folders").await;
    let port = s.dovecot.info().imap_port;
    append(port, "INBOX", &message("inbox-1@example.test")).await;
    append(port, "Sales", &message("sales-1@example.test")).await;
    append(port, "Sales", &message("sales-2@example.test")).await;
    let mut m = common::imap_mailbox(&s.store, endpoint(port), CAROL, TEST_PASSWORD).await;
    m.extra_folders = vec!["Sales".into()];
    s.store.update(&m, None).await.unwrap();
    edit_profile(&s.store, &m, |p| {
        p.advanced.min_polling_interval_minutes = 60;
        p.advanced.move_failed_to_undeliverable = true;
    })
    .await;

    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(s.store.clone(), s.config.clone()).run(stop.clone()));
    eventually!(
        30,
        "the Inbox and the extra folder are read",
        items(&s.store, m.id).await.len() == 3
    );
    let sales: Vec<_> = items(&s.store, m.id)
        .await
        .into_iter()
        .filter(|i| {
            i.message_id
                .as_deref()
                .is_some_and(|x| x.starts_with("sales"))
        })
        .collect();
    assert_eq!(sales.len(), 2);
    assert!(
        sales
            .iter()
            .all(|i| matches!(&i.source, serversync_model::item::ItemSource::Imap { folder, .. } if folder == "Sales"))
    );

    // A message that cannot be processed is recorded as failed, then moved to Undeliverable.
    append(port, "INBOX", b"\r\n\r\n   \r\n").await;
    eventually!(
        20,
        "the unparseable message is recorded as failed",
        items(&s.store, m.id)
            .await
            .iter()
            .any(|i| i.decision == ItemDecision::Failed)
    );
    eventually!(
        20,
        "the failed message is moved to Undeliverable",
        folder_state(port, "Undeliverable").await.0 == 1
    );
    assert_eq!(
        folder_state(port, "INBOX").await.0,
        1,
        "only the good one stays"
    );

    // The extra folder is polled on the profile's interval (60 minutes), not while idling...
    append(port, "Sales", &message("sales-late@example.test")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !has_item(&s.store, m.id, "sales-late@example.test").await,
        "the minimum polling interval is honoured"
    );
    // ...unless someone asks to synchronize now.
    let mut now = s.store.fetch::<Mailbox>(&m.id.to_string()).await.unwrap();
    now.value.telemetry.sync_requested_at = Some(chrono::Utc::now());
    s.store.update(&now.value, Some(now.version)).await.unwrap();
    let asked = Instant::now();
    eventually!(
        15,
        "sync now reads the extra folder",
        has_item(&s.store, m.id, "sales-late@example.test").await
    );
    println!("sync now → stored in {:?}", asked.elapsed());

    for folder in ["INBOX", "Sales", "Undeliverable"] {
        assert_eq!(
            folder_state(port, folder).await.1,
            0,
            "no \\Seen in {folder}"
        );
    }
    let after = s
        .store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(after.telemetry.items_failed, 1);
    assert!(after.telemetry.items_processed >= 5);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}

/// The profile's tracked folders are synchronized for every mailbox of the profile, merged
/// with the mailbox's own extra folders (a folder named in both is read once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_tracked_folders_are_synced_with_the_mailbox_extra_folders() {
    let s = setup("tracked").await;
    let port = s.dovecot.info().imap_port;
    append(port, "INBOX", &message("t-inbox@example.test")).await;
    append(port, "Sales", &message("t-sales@example.test")).await;
    append(port, "Projects", &message("t-projects@example.test")).await;
    append(port, "Ignored", &message("t-ignored@example.test")).await;
    let mut m = common::imap_mailbox(&s.store, endpoint(port), CAROL, TEST_PASSWORD).await;
    m.extra_folders = vec!["Sales".into()];
    s.store.update(&m, None).await.unwrap();
    edit_profile(&s.store, &m, |p| {
        p.advanced.tracked_folders = vec!["Projects".into(), "Sales".into()];
    })
    .await;

    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(s.store.clone(), s.config.clone()).run(stop.clone()));
    eventually!(
        30,
        "the Inbox, the mailbox's extra folder and the profile's tracked folder are read",
        items(&s.store, m.id).await.len() >= 3
    );
    // Each once; the folder nobody tracks is not read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut folders: Vec<String> = items(&s.store, m.id)
        .await
        .into_iter()
        .map(|i| match i.source {
            serversync_model::item::ItemSource::Imap { folder, .. } => folder,
            other => panic!("{other:?}"),
        })
        .collect();
    folders.sort();
    assert_eq!(folders, ["INBOX", "Projects", "Sales"]);
    for id in ["t-inbox", "t-sales", "t-projects"] {
        assert!(has_item(&s.store, m.id, &format!("{id}@example.test")).await);
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_when_the_server_goes_away() {
    let mut s = setup("reconnect").await;
    let port = s.dovecot.info().imap_port;
    let m = common::imap_mailbox(&s.store, endpoint(port), CAROL, TEST_PASSWORD).await;
    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(s.store.clone(), s.config.clone()).run(stop.clone()));
    eventually!(
        30,
        "the initial sync commits a cursor",
        s.store.get_cursor(m.id, "INBOX").await.unwrap().is_some()
    );
    // The server crashes while the worker idles, and comes back.
    s.dovecot.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    s.dovecot.restart().unwrap();
    append(port, "INBOX", &message("after-crash@example.test")).await;
    eventually!(
        30,
        "mail arriving after the restart is stored",
        has_item(&s.store, m.id, "after-crash@example.test").await
    );
    let after = s
        .store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(
        after.telemetry.postponed_until, None,
        "a dropped connection is re-opened, not postponed by the retry policy"
    );
    assert!(after.incoming.enabled);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_connection_limit_is_shared_by_mailboxes_and_workers() {
    let s = setup("slots").await;
    let port = s.dovecot.info().imap_port;
    // Three mailboxes signing in with the profile's account, one connection allowed.
    let first = common::imap_mailbox(&s.store, endpoint(port), CAROL, TEST_PASSWORD).await;
    let secret = s
        .store
        .put_secret(Some(first.org_id), &Secret::new(TEST_PASSWORD))
        .await
        .unwrap();
    edit_profile(&s.store, &first, |p| {
        p.authentication = AuthenticationType::CredentialsSpecifiedInProfile;
        p.username = Some(CAROL.into());
        p.password = Some(secret);
        p.advanced.max_concurrent_connections = 1;
    })
    .await;
    let mut mailboxes = vec![first.id];
    for n in 2..=3 {
        let mut m = first.clone();
        m.id = MailboxId::new();
        m.email = format!("shared{n}@example.test");
        m.regarding = MailboxRegarding::Queue(QueueId::new());
        s.store.insert(&m).await.unwrap();
        mailboxes.push(m.id);
    }
    s.dovecot
        .info()
        .deliver(CAROL, &message("shared@example.test"))
        .unwrap();

    let stop = CancellationToken::new();
    let engines: Vec<_> = (0..2)
        .map(|_| tokio::spawn(Engine::new(s.store.clone(), s.config.clone()).run(stop.clone())))
        .collect();
    // Watch the server's side: how many connections are open at once, sampled every 5 ms.
    let sampler = common::ConnectionSampler::start(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = 0;
        for id in &mailboxes {
            if has_item(&s.store, *id, "shared@example.test").await {
                done += 1;
            }
        }
        if done == mailboxes.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every mailbox gets its turn on the one connection ({done} of 3 within 60 s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Polling, not idling: a new message is picked up by the next round. Delivered into the
    // Maildir, not over IMAP: an APPEND connection of the test's own would be counted.
    s.dovecot
        .info()
        .deliver(CAROL, &message("shared-2@example.test"))
        .unwrap();
    for id in &mailboxes {
        eventually!(
            30,
            "each mailbox polls again",
            has_item(&s.store, *id, "shared-2@example.test").await
        );
    }
    let most = sampler.most();
    println!("most connections open at once: {most}");
    assert_eq!(
        most, 1,
        "the workers' connections were seen, never more than the profile's one at once"
    );
    stop.cancel();
    for e in engines {
        tokio::time::timeout(Duration::from_secs(20), e)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_recorded_from_its_header_and_left_on_the_server() {
    let s = setup("large").await;
    let port = s.dovecot.info().imap_port;
    let m = common::imap_mailbox(&s.store, endpoint(port), CAROL, TEST_PASSWORD).await;
    // A 1 KB attachment limit: messages over 1 KB + 1 MB are not read in full.
    let mut settings = s
        .store
        .fetch::<serversync_model::settings::EmailSettings>(&m.org_id.to_string())
        .await
        .unwrap()
        .value;
    settings.max_attachment_kb = 1;
    s.store.update(&settings, None).await.unwrap();
    let big = format!(
        "Message-ID: <big@example.test>\r\nFrom: ann@example.test\r\nTo: {CAROL}\r\nSubject: big\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\nContent-Type: text/plain\r\n\r\n{}\r\n",
        "x".repeat(76).repeat(20_000).as_str()
    );
    append(port, "INBOX", big.as_bytes()).await;
    append(port, "INBOX", &message("small@example.test")).await;

    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(s.store.clone(), s.config.clone()).run(stop.clone()));
    eventually!(
        30,
        "both messages are accounted for",
        items(&s.store, m.id).await.len() == 2
    );
    let all = items(&s.store, m.id).await;
    let big_item = all
        .iter()
        .find(|i| i.message_id.as_deref() == Some("big@example.test"))
        .unwrap();
    assert_eq!(big_item.decision, ItemDecision::Skipped);
    assert_eq!(
        big_item.subject.as_deref(),
        Some("big"),
        "header fields kept"
    );
    assert!(
        big_item.size > 1_500_000,
        "its real size: {}",
        big_item.size
    );
    let trace = big_item.trace.join("\n");
    assert!(
        trace.contains("over the limit") && trace.contains("left on the server"),
        "{trace}"
    );
    let small = all
        .iter()
        .find(|i| i.message_id.as_deref() == Some("small@example.test"))
        .unwrap();
    assert_eq!(small.decision, ItemDecision::Stored);
    assert_eq!(
        folder_state(port, "INBOX").await,
        (2, 0),
        "both stay, unread"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
}
