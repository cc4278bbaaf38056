//! The fault-injection suite (issue #8): the engine against real servers while the network,
//! the mail server, the database server or the database's disk fails under it. Each test ends
//! with what a user would check: every message on the server stored exactly once, none marked
//! read, no email delivered twice, the mailbox's status and alerts right, and everything
//! recovered without anyone stepping in.
//!
//! - `imap_sync_through_network_faults`: refused connections, connections closed at once, then
//!   cuts mid-response, resets and killed connections during a 400-message initial sync
//!   through a [`FaultProxy`] (IMAPS: TLS passes through the proxy).
//! - `smtp_send_through_network_faults`: emails sent through the proxy to Postfix with cuts
//!   near the end of the session (around the reply to DATA), resets, drops and refusals.
//! - `dovecot_restart_mid_sync`, `postgres_restart_mid_sync`: the server crashes or restarts
//!   after the first committed batch of a 2,000-message sync.
//! - `disk_full_under_sqlite`: the SQLite database on a small tmpfs fills up mid-sync; space is
//!   freed and the sync completes.
//!
//! Repeated `kill -9` of the whole process is in `crates/cli/tests/workers.rs`.

mod common;
use common::eventually;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::alert::Alert;
use serversync_model::crm::{EmailActivity, EmailStatus};
use serversync_model::mailbox::{Mailbox, RunStatus};
use serversync_model::profile::Endpoint;
use serversync_model::settings::EmailSettings;
use serversync_model::{FailureStep, MailboxId, Secret};
use serversync_store::Store;
use serversync_testkit::{Dovecot, Fault, FaultProxy, Postgres, TEST_PASSWORD, TestEnv, TlsFiles};
use serversync_vault::MasterKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CAROL: &str = "carol@example.test";

// ---- Setup ----

/// A scratch directory under /tmp (the servers' unprivileged users must reach into it).
fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap()
}

/// A private Dovecot whose carol has `n` messages of about `size` bytes in her Inbox, written
/// straight into the Maildir (fast; Dovecot gives them UIDs 1..=n on first sight). Returns
/// their Message-IDs.
fn private_dovecot(dir: &Path, n: usize, size: usize) -> (Dovecot, Vec<String>) {
    let dovecot = Dovecot::start(&dir.join("dovecot")).unwrap();
    let info = dovecot.info();
    let maildir = info.maildir(CAROL);
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let filler = "All work and no play makes Jack a dull boy. ".repeat(2);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!(
            "fault-{i:05}-{}@example.test",
            uuid::Uuid::new_v4().simple()
        );
        let mut raw = format!(
            "Message-ID: <{id}>\r\nFrom: ann@example.test\r\nTo: {CAROL}\r\nSubject: fault test {i}\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\n"
        );
        while raw.len() < size {
            raw.push_str(&filler);
            raw.push_str("\r\n");
        }
        std::fs::write(
            maildir
                .join("new")
                .join(format!("1700000000.M{i}P1.faults")),
            raw,
        )
        .unwrap();
        ids.push(id);
    }
    serversync_testkit::util::chown_recursive(&info.mail_root, info.mail_uid, info.mail_gid)
        .unwrap();
    (dovecot, ids)
}

/// Trusts the private Dovecot's test CA (its certificate is for `localhost`).
fn trust_for(dir: &Path) -> Arc<TlsTrust> {
    let tls = TlsFiles::ensure(&dir.join("dovecot").join("tls")).unwrap();
    Arc::new(TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap())
}

fn config(trust: Arc<TlsTrust>) -> EngineConfig {
    EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(trust)
    }
}

async fn open_store(url: &str) -> Store {
    Store::open(url, MasterKey::generate().unwrap())
        .await
        .unwrap()
}

/// Carol's mailbox reading `incoming`, with a retry policy fit for a test: a second between
/// tries and enough tries that a transient outage never disables it.
async fn carol_mailbox(store: &Store, incoming: Endpoint) -> Mailbox {
    let m = common::imap_mailbox(store, incoming, CAROL, TEST_PASSWORD).await;
    retry_every_second(store, &m).await;
    m
}

async fn retry_every_second(store: &Store, m: &Mailbox) {
    let s = store
        .fetch::<EmailSettings>(&m.org_id.to_string())
        .await
        .unwrap();
    let mut settings = s.value;
    settings.retry.interval_seconds = 1;
    settings.retry.max_attempts = 100;
    store.update(&settings, Some(s.version)).await.unwrap();
}

fn plain(port: u16) -> Endpoint {
    Endpoint {
        location: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
    }
}

fn run_engine(
    store: &Store,
    config: &EngineConfig,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(store.clone(), config.clone()).run(stop.clone()));
    (stop, task)
}

async fn stop_engine((stop, task): (CancellationToken, tokio::task::JoinHandle<()>)) {
    assert!(!task.is_finished(), "the engine is still running");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the engine stops within 30 s")
        .expect("the engine did not panic");
}

// ---- What a user checks ----

async fn mailbox(store: &Store, id: MailboxId) -> Mailbox {
    store.fetch::<Mailbox>(&id.to_string()).await.unwrap().value
}

/// Messages stored for the mailbox (all decisions).
async fn stored_count(store: &Store, id: MailboxId) -> i64 {
    store
        .count_items(id)
        .await
        .map(|c| c.iter().map(|(_, n)| n).sum())
        .unwrap_or(-1)
}

/// The Message-IDs of every item stored for the mailbox, with how often each was stored.
async fn stored_ids(store: &Store, id: MailboxId) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut after = None;
    loop {
        let page = store.list_items(id, after.as_deref(), 500).await.unwrap();
        for s in page.items {
            *out.entry(s.value.message_id.unwrap_or_default())
                .or_default() += 1;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

/// (messages, how many carry \Seen) in carol's Inbox, asked of the server directly.
async fn server_inbox(port: u16) -> (usize, usize) {
    let mut s = SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(CAROL, Secret::new(TEST_PASSWORD)),
        &ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    s.examine("INBOX", false).await.unwrap();
    let list = s.uid_list(1).await.unwrap();
    let _ = s.logout().await;
    let seen = list.iter().filter(|m| m.has_flag("\\Seen")).count();
    (list.len(), seen)
}

async fn alerts_for(store: &Store, m: &Mailbox) -> Vec<Alert> {
    store
        .list_all::<Alert>(Some(m.org_id), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.value)
        .filter(|a| a.mailbox_id == Some(m.id))
        .collect()
}

/// Waits until every message is stored and the mailbox is healthy again, then checks the
/// invariants: each of `ids` stored exactly once and nothing else, the cursor at the last UID,
/// nothing marked read on the server, incoming still enabled, not postponed, no alert.
async fn assert_synced_exactly_once(
    store: &Store,
    m: &Mailbox,
    ids: &[String],
    imap_port: u16,
    bound_secs: u64,
) {
    eventually!(
        bound_secs,
        format!(
            "all {} messages stored (have {}; incoming {:?}, last error {:?}, storage full {:?})",
            ids.len(),
            stored_count(store, m.id).await,
            mailbox(store, m.id).await.incoming,
            mailbox(store, m.id).await.telemetry.last_error,
            store.storage_full()
        ),
        stored_count(store, m.id).await >= ids.len() as i64
    );
    eventually!(
        60,
        "the cursor reaches the last message and the mailbox is healthy again",
        {
            let cursor = store.get_cursor(m.id, "INBOX").await.ok().flatten();
            let now = mailbox(store, m.id).await;
            cursor.and_then(|c| c.into_imap()).and_then(|c| c.last_uid) == Some(ids.len() as u32)
                && now.incoming.status == RunStatus::Success
                && now.telemetry.postponed_until.is_none()
                && now.telemetry.transient_failure_count == 0
        }
    );
    let stored = stored_ids(store, m.id).await;
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let missing: Vec<_> = ids.iter().filter(|i| !stored.contains_key(*i)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert_eq!(stored.len(), ids.len(), "nothing else stored");
    assert_eq!(
        server_inbox(imap_port).await,
        (ids.len(), 0),
        "every message still on the server, none marked read"
    );
    let now = mailbox(store, m.id).await;
    assert!(now.incoming.enabled, "still enabled: nobody had to step in");
    let alerts = alerts_for(store, m).await;
    assert!(
        alerts.is_empty(),
        "a transient outage raises no alert: {alerts:?}"
    );
}

// ---- a. IMAP through the fault proxy ----

/// Refused, then closed at once (the status names the failing step, no alert, not disabled);
/// then three cuts mid-response, a reset and a killed connection during the initial sync of
/// 400 messages over IMAPS through the proxy. Afterwards every message is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imap_sync_through_network_faults() {
    let started = Instant::now();
    const N: usize = 400;
    let dir = scratch("ss-faults-net");
    let (dovecot, ids) = private_dovecot(dir.path(), N, 4000);
    let info = dovecot.info().clone();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], info.imaps_port)))
        .await
        .unwrap();
    let store = open_store(&format!("sqlite://{}", dir.path().join("f.db").display())).await;
    // IMAPS through the proxy: only the port differs, the certificate is still checked.
    let m = carol_mailbox(
        &store,
        Endpoint {
            location: "localhost".into(),
            port: proxy.port(),
            tls: TlsMode::Implicit,
        },
    )
    .await;

    // Nothing listens: the failure is recorded with its step, retried, nobody alerted.
    proxy.set(Fault::Refuse);
    let engine = run_engine(&store, &config(trust_for(dir.path())));
    eventually!(
        60,
        "the refused connection is recorded on the mailbox",
        mailbox(&store, m.id)
            .await
            .telemetry
            .last_error
            .is_some_and(|e| e.step == Some(FailureStep::TcpConnect))
    );
    let refused = mailbox(&store, m.id).await;
    let err = refused.telemetry.last_error.clone().unwrap();
    println!("refused: {:?} {} — {}", err.step, err.code, err.message);
    assert_eq!(refused.incoming.status, RunStatus::Failure);
    assert!(
        refused.incoming.enabled,
        "a transient failure does not disable"
    );
    assert!(alerts_for(&store, &m).await.is_empty());

    // Accepted and closed at once: a failure after connecting, also named.
    proxy.set(Fault::Drop);
    eventually!(
        60,
        "the closed connection is recorded on the mailbox",
        mailbox(&store, m.id)
            .await
            .telemetry
            .last_error
            .is_some_and(|e| e.at > err.at && e.step != Some(FailureStep::TcpConnect))
    );
    let dropped = mailbox(&store, m.id).await.telemetry.last_error.unwrap();
    println!(
        "closed at once: {:?} {} — {}",
        dropped.step, dropped.code, dropped.message
    );
    assert!(dropped.step.is_some(), "the failing step is named");
    assert!(
        mailbox(&store, m.id).await.incoming.enabled,
        "a connection closed during the handshake is retried, not a reason to disable"
    );
    assert_eq!(stored_count(&store, m.id).await, 0);

    // The server is reachable again, slowly; the sync starts and is cut three times.
    let slow = Fault::Delay(Duration::from_millis(5));
    proxy.set(slow);
    for (i, n) in [150_000u64, 90_000, 120_000].into_iter().enumerate() {
        let cuts = proxy.stats().cuts;
        proxy.set(Fault::CutAfter(n));
        eventually!(
            120,
            format!("cut {} happens", i + 1),
            proxy.stats().cuts > cuts
        );
        proxy.set(slow);
        println!(
            "cut {} after {n} bytes: {} stored",
            i + 1,
            stored_count(&store, m.id).await
        );
    }
    // Reset: the live connection at its next chunk, or the next one at once.
    let faulted = proxy.stats().faulted;
    proxy.set(Fault::Reset);
    eventually!(
        120,
        "a connection is reset",
        proxy.stats().faulted > faulted
    );
    proxy.set(slow);
    println!("reset: {} stored", stored_count(&store, m.id).await);
    // A live connection killed (RST) whatever it is doing.
    let faulted = proxy.stats().faulted;
    eventually!(120, "a live connection is killed", {
        if proxy.stats().open > 0 {
            proxy.kill_connections();
        }
        proxy.stats().faulted > faulted
    });
    println!("killed: {} stored", stored_count(&store, m.id).await);
    proxy.set(Fault::Pass);

    assert_synced_exactly_once(&store, &m, &ids, info.imap_port, 180).await;
    stop_engine(engine).await;
    println!(
        "proxy: {:?}; {N} messages exactly once in {:?}",
        proxy.stats(),
        started.elapsed()
    );
}

// ---- c. Dovecot restart mid-sync ----

/// Waits until the first batch of the sync is committed and returns how many messages are
/// stored then, asserting the sync is not finished (the fault lands mid-sync).
async fn wait_mid_sync(store: &Store, id: MailboxId, n: usize) -> i64 {
    eventually!(
        120,
        "the first batch is committed",
        store
            .get_cursor(id, "INBOX")
            .await
            .ok()
            .flatten()
            .and_then(|c| c.into_imap())
            .and_then(|c| c.last_uid)
            .is_some()
    );
    let stored = stored_count(store, id).await;
    assert!(
        stored < n as i64,
        "the fault must land mid-sync: {stored} of {n} already stored"
    );
    stored
}

/// Dovecot is killed (SIGKILL) after the first committed batch of a 2,000-message sync and
/// started again: the sync picks up from its cursor, every message exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dovecot_restart_mid_sync() {
    let started = Instant::now();
    const N: usize = 2000;
    let dir = scratch("ss-faults-dovecot");
    let (mut dovecot, ids) = private_dovecot(dir.path(), N, 2000);
    let port = dovecot.info().imap_port;
    let store = open_store(&format!("sqlite://{}", dir.path().join("f.db").display())).await;
    let m = carol_mailbox(&store, plain(port)).await;
    let engine = run_engine(&store, &config(trust_for(dir.path())));
    let at = wait_mid_sync(&store, m.id, N).await;
    dovecot.kill();
    println!("Dovecot killed with {at} of {N} stored");
    dovecot.restart().unwrap();
    assert_synced_exactly_once(&store, &m, &ids, port, 240).await;
    stop_engine(engine).await;
    println!("{N} messages exactly once in {:?}", started.elapsed());
}

// ---- d. PostgreSQL restart mid-sync ----

/// The engine's PostgreSQL (a private cluster) is stopped after the first committed batch of
/// a 2,000-message sync and started again a few seconds later: the engine carries on by
/// itself, every message exactly once, the cursor and leases intact, and new mail still comes
/// in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_sync() {
    let started = Instant::now();
    const N: usize = 2000;
    let dir = scratch("ss-faults-pg");
    let (dovecot, mut ids) = private_dovecot(dir.path(), N, 2000);
    let port = dovecot.info().imap_port;
    let mut pg = Postgres::start(&dir.path().join("pg")).unwrap();
    let store = open_store(&pg.info().admin_url.clone()).await;
    let m = carol_mailbox(&store, plain(port)).await;
    let engine = run_engine(&store, &config(trust_for(dir.path())));
    let at = wait_mid_sync(&store, m.id, N).await;
    pg.stop().unwrap();
    println!("PostgreSQL stopped with {at} of {N} stored");
    // The outage lasts a few seconds; the engine is not told when it ends.
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start_again().unwrap();
    assert_synced_exactly_once(&store, &m, &ids, port, 240).await;
    let seen = mailbox(&store, m.id).await.telemetry.last_error;
    println!("the outage as the mailbox recorded it: {seen:?}");

    // Still working: a new message arrives (IDLE on a fresh connection) and is stored once.
    let late = format!("late-{}@example.test", uuid::Uuid::new_v4().simple());
    let mut s = SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(CAROL, Secret::new(TEST_PASSWORD)),
        &ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    let raw = format!(
        "Message-ID: <{late}>\r\nFrom: ann@example.test\r\nTo: {CAROL}\r\nSubject: late\r\n\r\nlate\r\n"
    );
    s.append("INBOX", &[], None, raw.as_bytes()).await.unwrap();
    let _ = s.logout().await;
    ids.push(late);
    assert_synced_exactly_once(&store, &m, &ids, port, 60).await;
    stop_engine(engine).await;
    println!(
        "{} messages exactly once in {:?}",
        ids.len(),
        started.elapsed()
    );
}

// ---- e. A full disk under SQLite ----

/// A tmpfs mounted for the test, unmounted (lazily, so a failing test cannot leave it busy)
/// when dropped.
struct Tmpfs {
    path: std::path::PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_kb: u64) -> Tmpfs {
        assert!(
            serversync_testkit::util::is_root(),
            "disk_full_under_sqlite mounts a small tmpfs and must run as root (scripts/test.sh in CI does)"
        );
        std::fs::create_dir_all(path).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_kb}k,mode=0755"),
                "tmpfs",
            ])
            .arg(path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Fills the file system holding `path` completely (a filler file written until ENOSPC), then
/// gives `leave` bytes back. Returns the filler's path.
fn fill_disk(dir: &Path, leave: u64) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    // Bounded by the tmpfs size.
    while let Ok(n) = f.write(&chunk) {
        if n == 0 {
            break;
        }
        written += n as u64;
    }
    f.set_len(written.saturating_sub(leave)).unwrap();
    f.sync_all().unwrap();
    path
}

/// The SQLite database lives on a 32 MB tmpfs that a filler file has nearly filled; a
/// 300-message sync (through a passing proxy that counts connections) runs out of space
/// part-way. The engine keeps running, loses nothing, says why (`Store::storage_full`, which
/// `/readyz` reports) and does not reconnect every tick; once the filler is deleted the sync
/// completes, exactly once, and the state clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_under_sqlite() {
    let started = Instant::now();
    const N: usize = 300;
    let dir = scratch("ss-faults-disk");
    let (dovecot, ids) = private_dovecot(dir.path(), N, 4000);
    let port = dovecot.info().imap_port;
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    // Room to spare once the filler is gone: the WAL grows past its checkpoint size while the
    // test keeps reading.
    let fs = Tmpfs::mount(&dir.path().join("db"), 32 * 1024);
    let store = open_store(&format!("sqlite://{}", fs.path.join("f.db").display())).await;
    let m = carol_mailbox(&store, plain(proxy.port())).await;
    let filler = fill_disk(&fs.path, 400 * 1024);
    let config = config(trust_for(dir.path()));
    let engine = run_engine(&store, &config);
    eventually!(
        120,
        "the store reports the full disk",
        store.storage_full().is_some()
    );
    let full = store.storage_full().unwrap();
    println!(
        "disk full with {} of {N} stored: {}",
        stored_count(&store, m.id).await,
        full.message
    );
    // SQLite's words, or the pack file's (raw messages are written beside the database).
    assert!(
        full.message.contains("database or disk is full")
            || full.message.contains("No space left on device"),
        "{}",
        full.message
    );
    // While it is full: no crash loop (the worker waits the retry interval, 1 s here, instead
    // of reconnecting on every 100 ms tick), nothing disabled, nobody alerted.
    let before = proxy.stats().accepted;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reconnects = proxy.stats().accepted - before;
    println!("connections to the mail server in 5 s while the disk is full: {reconnects}");
    assert!(
        reconnects < 20,
        "not a reconnection per tick (50 ticks): {reconnects}"
    );
    assert!(store.storage_full().is_some(), "still full");
    assert!(
        stored_count(&store, m.id).await < N as i64,
        "the disk filled up mid-sync"
    );
    let now = mailbox(&store, m.id).await;
    assert!(
        now.incoming.enabled,
        "a full disk does not disable the mailbox"
    );
    assert!(alerts_for(&store, &m).await.is_empty());
    // Space is freed; nobody touches serversync.
    std::fs::remove_file(&filler).unwrap();
    assert_synced_exactly_once(&store, &m, &ids, port, 180).await;
    assert_eq!(store.storage_full(), None, "the state clears by itself");
    stop_engine(engine).await;
    println!("{N} messages exactly once in {:?}", started.elapsed());
}

// ---- b. SMTP through the fault proxy ----

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

/// The raw messages in bob's INBOX whose Message-ID is `mid` (shared Dovecot, IMAPS).
async fn delivered(mid: &str, trust: &Arc<TlsTrust>) -> usize {
    let env = TestEnv::from_env();
    let mut s = SyncSession::connect(
        &ServerAddr::new("localhost", env.imaps_port(), TlsMode::Implicit),
        &Login::password(BOB, Secret::new(env.password.clone())),
        &ConnectOptions::new(trust.clone())
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    s.examine("INBOX", false).await.unwrap();
    let n = s.uid_search_header("Message-ID", mid).await.unwrap().len();
    let _ = s.logout().await;
    n
}

/// Emails from alice to bob through the proxy to Postfix's submission port (STARTTLS, AUTH),
/// one at a time: one clean send measures how many bytes the server sends in a session; then
/// cuts at several points of the session's last bytes (around the reply to DATA and QUIT), a
/// reset, a period of closed connections and one of refused connections. Every email ends sent
/// (and is delivered exactly once) or "outcome unknown" (delivered at most once, never sent
/// again); the mailbox recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_send_through_network_faults() {
    let started = Instant::now();
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let proxy = FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], env.submission_port())))
        .await
        .unwrap();
    let store = open_store(&format!("sqlite://{}", dir.path().join("o.db").display())).await;
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&env.ca_cert]).unwrap());
    let config = config(trust.clone());
    let (m, caller) = common::sending_mailbox(
        &store,
        ALICE,
        &env.password,
        env.imaps_port(),
        Endpoint {
            location: "localhost".into(),
            port: proxy.port(),
            tls: TlsMode::StartTls,
        },
    )
    .await;
    retry_every_second(&store, &m).await;
    let admin = Engine::new(store.clone(), config.clone()).admin();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let compose = |n: usize| {
        let (admin, caller) = (admin.clone(), caller.clone());
        let subject = format!("Fault {run} #{n}");
        async move {
            admin
                .compose_email(
                    &caller,
                    m.org_id,
                    common::email(m.id, BOB, &subject, "Sent through a faulty network."),
                )
                .await
                .unwrap()
        }
    };
    let done =
        |a: &EmailActivity| !matches!(a.status, EmailStatus::PendingSend | EmailStatus::Sending);
    let activity = |id: String| {
        let store = store.clone();
        async move { store.fetch::<EmailActivity>(&id).await.unwrap().value }
    };
    let engine = run_engine(&store, &config);
    let mut emails = Vec::new();

    // A clean send: how many bytes the server sends in one session.
    let a = compose(0).await;
    eventually!(
        60,
        "the first email is sent",
        done(&activity(a.id.to_string()).await)
    );
    eventually!(30, "its connection is closed", proxy.stats().open == 0);
    let session = proxy.stats().to_client;
    assert_eq!(activity(a.id.to_string()).await.status, EmailStatus::Sent);
    println!("a clean session: {session} bytes from the server");
    emails.push(a.id);

    // Cuts in the session's last bytes: around the reply to DATA (outcome unknown, never sent
    // again) or to QUIT (sent); earlier cuts are retried.
    for (i, back) in [20u64, 45, 70, 110, 160, 300].into_iter().enumerate() {
        eventually!(30, "no connection open", proxy.stats().open == 0);
        let cuts = proxy.stats().cuts;
        proxy.set(Fault::CutAfter(session.saturating_sub(back)));
        let a = compose(i + 1).await;
        eventually!(
            90,
            format!("email {} is done", i + 1),
            done(&activity(a.id.to_string()).await)
        );
        let now = activity(a.id.to_string()).await;
        println!(
            "cut {back} bytes before the end ({}): {:?} after {} attempt(s) {}",
            if proxy.stats().cuts > cuts {
                "cut"
            } else {
                "the session was shorter: not cut"
            },
            now.status,
            now.delivery_attempts,
            now.send_error.as_deref().unwrap_or("")
        );
        proxy.set(Fault::Pass);
        emails.push(a.id);
    }

    // Reset, then closed at once, then refused: each until a connection was refused, then the
    // network is back and the email goes out.
    for (n, fault) in [(7, Fault::Reset), (8, Fault::Drop), (9, Fault::Refuse)] {
        eventually!(30, "no connection open", proxy.stats().open == 0);
        let failures = mailbox(&store, m.id)
            .await
            .telemetry
            .last_error
            .map(|e| e.at);
        proxy.set(fault);
        let a = compose(n).await;
        eventually!(
            60,
            format!("{fault:?}: the mailbox records the failure"),
            mailbox(&store, m.id)
                .await
                .telemetry
                .last_error
                .is_some_and(|e| Some(e.at) > failures)
        );
        let failed = mailbox(&store, m.id).await;
        let err = failed.telemetry.last_error.clone().unwrap();
        println!("{fault:?}: {:?} {} — {}", err.step, err.code, err.message);
        assert!(err.step.is_some(), "the failing step is named");
        if fault == Fault::Refuse {
            assert_eq!(err.step, Some(FailureStep::TcpConnect));
        }
        assert!(
            failed.outgoing.enabled,
            "a transient failure does not disable"
        );
        assert_eq!(
            activity(a.id.to_string()).await.status,
            EmailStatus::PendingSend,
            "the email waits for the network"
        );
        proxy.set(Fault::Pass);
        eventually!(
            60,
            format!("email {n} is sent"),
            done(&activity(a.id.to_string()).await)
        );
        assert_eq!(activity(a.id.to_string()).await.status, EmailStatus::Sent);
        emails.push(a.id);
    }

    // Sent ones arrive exactly once; "outcome unknown" ones at most once and are not retried.
    let mut unknown = (0, 0);
    for id in &emails {
        let a = activity(id.to_string()).await;
        let mid = a.message_id.clone().unwrap();
        match a.status {
            EmailStatus::Sent => {
                eventually!(
                    60,
                    format!("{mid} is delivered"),
                    delivered(&mid, &trust).await >= 1
                );
            }
            EmailStatus::OutcomeUnknown => {
                let why = a.send_error.clone().unwrap_or_default();
                assert!(why.contains("not sent again"), "{why}");
                unknown.0 += 1;
            }
            other => panic!("email {id} ended {other:?}: {:?}", a.send_error),
        }
    }
    // Give Postfix's queue a moment for anything still on its way, then count.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for id in &emails {
        let a = activity(id.to_string()).await;
        let mid = a.message_id.clone().unwrap();
        let n = delivered(&mid, &trust).await;
        match a.status {
            EmailStatus::Sent => assert_eq!(n, 1, "{mid} delivered exactly once"),
            _ => {
                assert!(n <= 1, "{mid} delivered {n} times");
                unknown.1 += n;
            }
        }
    }
    let after = mailbox(&store, m.id).await;
    assert!(after.outgoing.enabled);
    assert_eq!(after.outgoing.status, RunStatus::Success, "healthy again");
    assert!(
        alerts_for(&store, &m).await.is_empty(),
        "no alert for a transient outage"
    );
    stop_engine(engine).await;
    println!(
        "{} emails: {} outcome unknown ({} of those delivered); proxy {:?}; {:?}",
        emails.len(),
        unknown.0,
        unknown.1,
        proxy.stats(),
        started.elapsed()
    );
}
