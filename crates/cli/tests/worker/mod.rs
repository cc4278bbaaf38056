//! What the `serve` process tests share: a `serversync serve` worker that can be killed with
//! SIGKILL, a database on either backend, and counts of what a mailbox stored.

#![allow(dead_code)]

use serversync_engine::Admin;
use serversync_model::MailboxId;
use serversync_model::org::{Organization, User};
use serversync_model::settings::EmailSettings;
use serversync_store::{Backend, Store};
use serversync_testkit::TestEnv;
use serversync_vault::MasterKey;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_serversync");
/// Short leases so a killed worker's mailboxes are free again soon.
pub const LEASE_TTL_SECONDS: u64 = 3;

/// A running `serversync serve` whose log is collected in the background.
pub struct Worker {
    child: Child,
}

impl Worker {
    pub fn start(dir: &Path, url: &str, key: &MasterKey) -> Worker {
        Worker::start_with(dir, url, key, "")
    }

    /// Like [`Worker::start`], with `extra` (TOML sections) appended to the config file.
    pub fn start_with(dir: &Path, url: &str, key: &MasterKey, extra: &str) -> Worker {
        let config = dir.join("serversync.toml");
        std::fs::write(
            &config,
            format!("[engine]\ntick_ms = 100\nlease_ttl_seconds = {LEASE_TTL_SECONDS}\n{extra}"),
        )
        .unwrap();
        let mut child = Command::new(BIN)
            .args(["--config"])
            .arg(&config)
            .args(["--data-dir"])
            .arg(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("SERVERSYNC_DATABASE_URL", url)
            .env("SERVERSYNC_MASTER_KEY", key.to_base64())
            .env("SERVERSYNC_LOG", "warn")
            .env_remove("DATABASE_URL")
            .env_remove("SERVERSYNC_LMTP_LISTEN")
            .env(
                "SERVERSYNC_TLS_EXTRA_CA_FILES",
                &TestEnv::from_env().ca_cert,
            )
            // The test servers are on this machine.
            .env("SERVERSYNC_NETWORK_ALLOW_RANGES", "127.0.0.0/8,::1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
            }
        });
        Worker { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to release leases or finish anything.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn terminate(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "serve stops within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// On a fresh store: the first administrator, the bootstrap organization and its email
/// settings.
pub async fn bootstrap(store: &Store) -> (User, Organization, EmailSettings) {
    let (admin, _) = Admin::new(store.clone(), Default::default())
        .bootstrap()
        .await
        .unwrap()
        .expect("fresh store");
    let org = store
        .list_all::<Organization>(None, &[])
        .await
        .unwrap()
        .remove(0)
        .value;
    let settings = store
        .fetch::<EmailSettings>(&org.id.to_string())
        .await
        .unwrap()
        .value;
    (admin, org, settings)
}

/// Message-IDs stored for a mailbox, with how often each occurs.
pub async fn stored(store: &Store, m: MailboxId) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_items(m, after.as_deref(), 1000).await.unwrap();
        for i in &page.items {
            *out.entry(i.value.message_id.clone().unwrap_or_default())
                .or_insert(0) += 1;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return out,
        }
    }
}

pub async fn total(store: &Store, m: MailboxId) -> i64 {
    store
        .count_items(m)
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum()
}

/// A database for the test on `backend`, kept alive by the returned guard.
pub async fn database(backend: Backend, dir: &Path) -> (Box<dyn std::any::Any + Send>, String) {
    match backend {
        Backend::Sqlite => (
            Box::new(()),
            format!("sqlite://{}", dir.join("serversync.db").display()),
        ),
        Backend::Postgres => {
            let db = TestEnv::from_env().pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db), url)
        }
    }
}

/// Syncs `expected` (Message-IDs) into mailbox `m` with `serve` killed by SIGKILL `kills`
/// times, each once the store holds a random number of messages in the next stretch, then
/// restarted to the end; asserts every message is stored exactly once and returns where the
/// kills landed.
pub async fn sync_through_kills(
    dir: &Path,
    url: &str,
    key: &MasterKey,
    store: &Store,
    m: MailboxId,
    expected: &[String],
    kills: usize,
) -> Vec<i64> {
    sync_through_kills_with(dir, url, key, store, m, expected, kills, "").await
}

/// [`sync_through_kills`] with `extra` appended to each worker's config ([`Worker::start_with`]).
#[allow(clippy::too_many_arguments)]
pub async fn sync_through_kills_with(
    dir: &Path,
    url: &str,
    key: &MasterKey,
    store: &Store,
    m: MailboxId,
    expected: &[String],
    kills: usize,
    extra: &str,
) -> Vec<i64> {
    let messages = expected.len();
    let stretch = messages / (kills + 1);
    let mut killed_at = Vec::new();
    for k in 0..kills {
        let worker = Worker::start_with(dir, url, key, extra);
        let random = uuid::Uuid::new_v4().as_u128() as usize % stretch;
        let target = (k * stretch + random) as i64;
        let deadline = Instant::now() + Duration::from_secs(120);
        let at = loop {
            let n = total(store, m).await;
            if n >= target {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "the sync did not reach {target} messages within 120 s (at {n})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        worker.kill9();
        killed_at.push(at);
    }
    assert!(
        killed_at.iter().all(|n| (*n as usize) < messages),
        "every kill landed during the sync: {killed_at:?}"
    );

    let worker = Worker::start_with(dir, url, key, extra);
    let deadline = Instant::now() + Duration::from_secs(180);
    while total(store, m).await < messages as i64 {
        assert!(
            Instant::now() < deadline,
            "the sync did not finish within 180 s of the last restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a duplicate every chance to show up before stopping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.terminate();

    let got = stored(store, m).await;
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    let want: std::collections::HashSet<&str> = expected.iter().map(String::as_str).collect();
    let have: std::collections::HashSet<&str> = got.keys().map(String::as_str).collect();
    assert_eq!(have, want, "exactly the {messages} messages on the server");
    assert_eq!(total(store, m).await, messages as i64);
    killed_at
}
