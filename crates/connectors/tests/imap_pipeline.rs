//! Pipelined body fetches (`FetchOptions::pipeline_depth` > 1) under stress, against a
//! private Dovecot (so thousands of messages and concurrent writers disturb no other test):
//! messages of varied sizes (empty bodies to 400 KB, sizes around buffer and TLS record
//! boundaries), small batches, several commands in flight, a slow consumer, another session
//! changing flags and appending mail while the fetch runs. Every requested message must come
//! back exactly once, byte-exact, and `missing()` must be empty.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serversync_connectors::imap::sync::{FetchOptions, FetchPart, SyncSession};
use serversync_connectors::{ConnectOptions, Login, Secret, ServerAddr, TlsMode, TlsTrust};
use serversync_testkit::{Dovecot, TEST_PASSWORD};

const USER: &str = "alice@example.test";

struct Server {
    dir: std::path::PathBuf,
    dovecot: Dovecot,
    opts: ConnectOptions,
}

impl Server {
    fn start() -> Server {
        let dir =
            std::path::PathBuf::from(format!("/tmp/ss-pipe-{}", uuid::Uuid::new_v4().simple()));
        let dovecot = Dovecot::start(&dir.join("dovecot")).unwrap();
        let ca = dir.join("dovecot").join("tls").join("ca.crt");
        let trust = TlsTrust::with_extra_ca_files([&ca]).expect("trusting the private CA");
        let opts = ConnectOptions::new(Arc::new(trust))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed())
            .with_timeout(Duration::from_secs(30));
        Server { dir, dovecot, opts }
    }

    fn addr(&self, tls: bool) -> ServerAddr {
        let info = self.dovecot.info();
        if tls {
            ServerAddr::new("localhost", info.imaps_port, TlsMode::Implicit)
        } else {
            ServerAddr::new("127.0.0.1", info.imap_port, TlsMode::None)
        }
    }

    fn remove(mut self) {
        self.dovecot.stop().unwrap();
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    async fn session(&self, tls: bool) -> SyncSession {
        let login = Login::password(USER, Secret::new(TEST_PASSWORD));
        SyncSession::connect(&self.addr(tls), &login, &self.opts)
            .await
            .expect("connect + login")
    }
}

/// A message of exactly `len` bytes (at least its header), identifiable by `i`.
fn message(i: usize, len: usize) -> Vec<u8> {
    let mut m = format!(
        "From: a@example.test\r\nTo: b@example.test\r\nSubject: m{i}\r\nMessage-ID: \
         <m{i}@example.test>\r\n\r\n"
    )
    .into_bytes();
    let mut x = (i as u32).wrapping_mul(2_654_435_761) | 1;
    while m.len() < len {
        if m.len() % 78 == 76 {
            m.extend_from_slice(b"\r\n");
            continue;
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Printable, with IMAP-looking traps now and then.
        let b = match x % 97 {
            0 => b'{',
            1 => b'}',
            2 => b')',
            3 => b'*',
            n => b' ' + (n % 94) as u8,
        };
        m.push(b);
    }
    m
}

/// Sizes that exercise the reader: tiny, around the 16 KB TLS record and the 128 KB read
/// buffer, large.
fn size_of(i: usize) -> usize {
    const SIZES: [usize; 12] = [
        120, 700, 4_000, 16_383, 16_384, 16_385, 40_000, 131_071, 131_072, 131_073, 250_000,
        400_000,
    ];
    let base = SIZES[i % SIZES.len()];
    base + (i * 7919) % 13
}

async fn seed(server: &Server, folder: &str, n: usize) -> HashMap<u32, Vec<u8>> {
    let mut s = server.session(false).await;
    assert!(s.create_folder_if_missing(folder).await.unwrap());
    s.logout().await.unwrap();
    let mut tasks = Vec::new();
    for part in 0..4 {
        let mut s = server.session(false).await;
        let folder = folder.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = HashMap::new();
            for i in (part..n).step_by(4) {
                let m = message(i, size_of(i));
                let uid = s.append(&folder, &[], None, &m).await.unwrap().unwrap().uid;
                out.insert(uid, m);
            }
            s.logout().await.unwrap();
            out
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Fetches `uids` and checks every message came back once, byte-exact (or cut at
/// `max_bytes`). Returns a description of what went wrong, if anything.
async fn fetch_and_check(
    s: &mut SyncSession,
    uids: &[u32],
    originals: &HashMap<u32, Vec<u8>>,
    opts: FetchOptions,
    slow: bool,
) -> Result<usize, String> {
    let mut fetch = s
        .fetch_bodies_with(uids, opts)
        .await
        .map_err(|e| e.to_string())?;
    let mut seen: HashMap<u32, usize> = HashMap::new();
    let mut problems = Vec::new();
    let mut n = 0usize;
    while let Some(m) = fetch.next().await.map_err(|e| e.to_string())? {
        n += 1;
        *seen.entry(m.uid).or_default() += 1;
        if slow && n.is_multiple_of(16) {
            // A consumer that stores each message (the engine) reads slowly.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let Some(orig) = originals.get(&m.uid) else {
            problems.push(format!("uid {} was not requested", m.uid));
            continue;
        };
        let expected: &[u8] = match opts.part {
            FetchPart::Full => &orig[..orig.len().min(opts.max_bytes)],
            FetchPart::Header => {
                let end = orig.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                &orig[..end]
            }
        };
        if m.body != expected {
            problems.push(format!(
                "uid {}: {} bytes, expected {}",
                m.uid,
                m.body.len(),
                expected.len()
            ));
        }
        if m.size != orig.len() as u64 {
            problems.push(format!("uid {}: size {} of {}", m.uid, m.size, orig.len()));
        }
    }
    let missing = fetch.missing();
    drop(fetch);
    if !missing.is_empty() {
        problems.push(format!(
            "{} missing: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ));
    }
    let dups: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    if !dups.is_empty() {
        problems.push(format!("delivered twice: {dups:?}"));
    }
    if n != uids.len() && missing.is_empty() {
        problems.push(format!("{n} delivered of {}", uids.len()));
    }
    if problems.is_empty() {
        Ok(n)
    } else {
        Err(problems.join("; "))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_fetches_under_load_return_every_message() {
    const N: usize = 2400;
    let server = Server::start();
    let folder = "Stress";
    let t = Instant::now();
    let originals = seed(&server, folder, N).await;
    println!("seeded {N} messages in {:?}", t.elapsed());
    let mut uids: Vec<u32> = originals.keys().copied().collect();
    uids.sort_unstable();

    // Another session keeps changing flags and appending mail while the fetches run, so
    // the server interleaves unsolicited FETCH/EXISTS with the answers.
    let stop = Arc::new(AtomicBool::new(false));
    let disturber = {
        let mut s = server.session(false).await;
        let stop = stop.clone();
        let uids = uids.clone();
        tokio::spawn(async move {
            s.select(folder, true).await.unwrap();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                let u = uids[(i * 7) % uids.len()];
                let add = i.is_multiple_of(2);
                s.uid_store_flags(&[u, u + 1], add, &["\\Flagged", "$Busy"])
                    .await
                    .unwrap();
                if i.is_multiple_of(50) {
                    s.append(folder, &[], None, &message(1_000_000 + i, 3000))
                        .await
                        .unwrap();
                }
                i += 1;
            }
            s.logout().await.unwrap();
        })
    };

    let mut failures = Vec::new();
    let mut rounds = 0;
    for round in 0..2 {
        for tls in [true, false] {
            let mut s = server.session(tls).await;
            // Read-write with CONDSTORE, as the engine opens folders.
            s.select(folder, true).await.unwrap();
            for (batch_size, pipeline_depth, max_bytes, part, slow) in [
                (1, 4, 64 << 20, FetchPart::Full, false),
                (3, 2, 64 << 20, FetchPart::Full, true),
                (5, 3, 64 << 20, FetchPart::Full, false),
                (7, 4, 100_000, FetchPart::Full, false),
                (50, 2, 64 << 20, FetchPart::Full, true),
                (100, 4, 64 << 20, FetchPart::Full, false),
                (2, 3, 64 << 20, FetchPart::Header, false),
            ] {
                let opts = FetchOptions {
                    max_bytes,
                    batch_size,
                    pipeline_depth,
                    part,
                };
                let t = Instant::now();
                let r = fetch_and_check(&mut s, &uids, &originals, opts, slow).await;
                rounds += 1;
                let label = format!(
                    "round {round} tls {tls} batch {batch_size} depth {pipeline_depth} \
                     max {max_bytes} {part:?} slow {slow}"
                );
                match r {
                    Ok(n) => println!("{label}: {n} in {:?}", t.elapsed()),
                    Err(e) => {
                        println!("{label}: FAILED: {e}");
                        failures.push(format!("{label}: {e}"));
                        // The session may be unusable after an error: start over.
                        break;
                    }
                }
            }
            let _ = s.logout().await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    disturber.await.unwrap();
    server.remove();
    assert!(
        failures.is_empty(),
        "{} of {rounds} fetches failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
