//! The IMAP synchronization primitives ([`imap::sync::SyncSession`]) against the real
//! Dovecot of the test environment. Every test works in its own folder (`T-<uuid>`), so
//! tests stay independent although all users share the one Dovecot.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serversync_connectors::imap::sync::{
    FetchOptions, FetchPart, FetchedMessage, IdleEvent, InternalDate, MoveMethod, SyncSession,
};
use serversync_connectors::{ErrorKind, FailureStep, ServerAddr, TlsMode};

fn imaps() -> ServerAddr {
    addr(env().imaps_port(), TlsMode::Implicit)
}

async fn session(user: &str) -> SyncSession {
    SyncSession::connect(&imaps(), &login(user), &opts())
        .await
        .expect("IMAPS connect + login")
}

/// A private folder for one test, created.
async fn private_folder(s: &mut SyncSession) -> String {
    let name = format!("T-{}", uuid::Uuid::new_v4().simple());
    assert!(s.create_folder_if_missing(&name).await.unwrap());
    assert!(!s.create_folder_if_missing(&name).await.unwrap());
    name
}

/// An RFC 5322 message with CRLF line ends.
fn message(message_id: &str, subject: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: \
         {subject}\r\nMessage-ID: {message_id}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n\
         Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(body);
    m
}

/// `len` bytes of 8-bit content in CRLF lines: every byte value except NUL, CR and LF
/// (which IMAP literals carry unchanged), with IMAP-looking traps (`{5}`, `)`, `* OK`).
fn eight_bit_body(len: usize, seed: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let mut col = 0;
    while out.len() < len {
        if out.len() % 4096 == 0 {
            out.extend_from_slice(b"* OK [ALERT] {5}\r\n)\r\n");
        }
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let b = (x % 256) as u8;
        if b == 0 || b == b'\r' || b == b'\n' {
            continue;
        }
        out.push(b);
        col += 1;
        if col == 76 {
            out.extend_from_slice(b"\r\n");
            col = 0;
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

fn mid(tag: &str) -> String {
    format!("<{tag}-{}@example.test>", uuid::Uuid::new_v4().simple())
}

async fn collect(s: &mut SyncSession, uids: &[u32], opts: FetchOptions) -> Vec<FetchedMessage> {
    let mut fetch = s.fetch_bodies_with(uids, opts).await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = fetch.next().await.unwrap() {
        out.push(m);
    }
    assert!(fetch.missing().is_empty(), "missing {:?}", fetch.missing());
    out
}

#[tokio::test]
async fn select_reports_the_folder_state_and_uid_list_returns_exactly_the_newer_messages() {
    let mut s = session(ALICE).await;
    assert!(s.is_tls());
    let folder = private_folder(&mut s).await;
    let date = InternalDate::parse("02-Mar-2024 10:20:30 +0100").unwrap();
    let mut uids = Vec::new();
    let mut sizes = Vec::new();
    for i in 0..3 {
        let m = message(&mid("list"), &format!("list {i}"), b"hello\r\n");
        sizes.push(m.len() as u64);
        let appended = s.append(&folder, &[], Some(date), &m).await.unwrap();
        uids.push(appended.expect("Dovecot has UIDPLUS: APPENDUID").uid);
    }
    assert!(uids.windows(2).all(|w| w[0] < w[1]), "{uids:?}");

    let st = s.select(&folder, true).await.unwrap();
    println!("SELECT {folder}: {st:?}");
    assert!(st.uid_validity > 0);
    assert_eq!(st.uid_next, Some(uids[2] + 1));
    assert_eq!(st.exists, 3);
    assert!(st.highest_modseq.is_some_and(|m| m > 0), "{st:?}");
    assert!(!st.read_only);

    let all = s.uid_list(1).await.unwrap();
    assert_eq!(all.iter().map(|m| m.uid).collect::<Vec<_>>(), uids);
    for (meta, size) in all.iter().zip(&sizes) {
        assert_eq!(meta.size, *size);
        // Dovecot keeps the moment, not the zone it was given in.
        assert_eq!(
            meta.internal_date.map(|d| d.timestamp),
            Some(date.timestamp)
        );
        assert!(meta.modseq.is_some(), "{meta:?}");
        assert!(!meta.has_flag("\\Seen"));
    }
    let newer = s.uid_list(uids[1]).await.unwrap();
    assert_eq!(newer.iter().map(|m| m.uid).collect::<Vec<_>>(), uids[1..]);
    // `n:*` with n above the last UID still returns the last message: it is left out.
    assert!(s.uid_list(uids[2] + 1).await.unwrap().is_empty());
    assert!(s.uid_list(uids[2] + 1000).await.unwrap().is_empty());

    let ro = s.examine(&folder, true).await.unwrap();
    assert!(ro.read_only);
    assert_eq!(ro.uid_validity, st.uid_validity);
    assert_eq!(ro.highest_modseq, st.highest_modseq);
    s.logout().await.unwrap();
    // Without CONDSTORE asked (Dovecot still reports HIGHESTMODSEQ for a folder whose
    // MODSEQs are tracked, which RFC 7162 allows; MODSEQs are then listed too).
    let mut fresh = session(ALICE).await;
    let plain = fresh.examine(&folder, false).await.unwrap();
    assert_eq!((plain.uid_validity, plain.exists), (st.uid_validity, 3));
    let listed = fresh.uid_list(1).await.unwrap();
    assert!(
        listed
            .iter()
            .all(|m| m.modseq.is_some() == plain.highest_modseq.is_some())
    );
    fresh.logout().await.unwrap();
}

#[tokio::test]
async fn fetch_bodies_is_byte_exact_in_uid_order_and_never_sets_seen() {
    let mut s = session(ALICE).await;
    let folder = private_folder(&mut s).await;
    let mut originals = vec![
        message(&mid("small"), "small", b"just text\r\n"),
        message(&mid("8bit"), "8-bit", &eight_bit_body(10_000, 1)),
        message(&mid("big"), "two megabytes", &eight_bit_body(2 << 20, 2)),
        message(
            &mid("utf8"),
            "Grüße 🚀",
            "Ümlaute und ✓ in UTF-8\r\n".as_bytes(),
        ),
    ];
    originals.extend(
        (0..20).map(|i| message(&mid("n"), &format!("n{i}"), &eight_bit_body(3000, i + 10))),
    );
    let mut uids = Vec::new();
    for m in &originals {
        uids.push(s.append(&folder, &[], None, m).await.unwrap().unwrap().uid);
    }
    // Read-write on purpose: BODY.PEEK must not set \Seen even where it could.
    s.select(&folder, true).await.unwrap();
    // Asked in a shuffled order, delivered in UID order.
    let mut asked = uids.clone();
    asked.reverse();
    asked.swap(3, 10);
    let t = Instant::now();
    let got = collect(&mut s, &asked, FetchOptions::default()).await;
    println!(
        "fetched {} messages (one of 2 MB) in {:?}",
        got.len(),
        t.elapsed()
    );
    assert_eq!(got.iter().map(|m| m.uid).collect::<Vec<_>>(), uids);
    for (m, original) in got.iter().zip(&originals) {
        assert!(!m.truncated, "uid {}", m.uid);
        assert_eq!(m.size, original.len() as u64, "uid {}", m.uid);
        assert!(
            m.body == *original,
            "uid {} differs from what was appended",
            m.uid
        );
        assert!(!m.has_flag("\\Seen"));
        assert!(m.internal_date.is_some() && m.modseq.is_some());
    }

    // Batching variants give the same. FIXME: pipelined variants (depth > 1) were reported to
    // miss messages intermittently under load (see `FetchOptions::default`); not reproduced
    // (tests/imap_pipeline.rs stresses depth 2-4), but not asserted here until the cause of
    // the original report is known.
    for (batch_size, pipeline_depth) in [(1, 1), (7, 1), (1000, 1)] {
        let opts = FetchOptions {
            batch_size,
            pipeline_depth,
            ..FetchOptions::default()
        };
        let again = collect(&mut s, &uids, opts).await;
        // Flags and MODSEQ may legitimately move between two fetches (\Recent is per
        // session, the server may bump modification sequences): compare what was read.
        let key = |v: &[FetchedMessage]| {
            v.iter()
                .map(|m| (m.uid, m.size, m.truncated, m.body.clone()))
                .collect::<Vec<_>>()
        };
        assert!(
            key(&again) == key(&got),
            "batch {batch_size} depth {pipeline_depth}: different messages"
        );
    }

    let metas = s.uid_list(1).await.unwrap();
    assert_eq!(metas.len(), originals.len());
    assert!(
        metas.iter().all(|m| !m.has_flag("\\Seen")),
        "a fetch set \\Seen: {metas:?}"
    );
    // Another session sees no \Seen either (not just our cached view).
    let mut other = session(ALICE).await;
    other.examine(&folder, false).await.unwrap();
    assert!(
        other
            .uid_list(1)
            .await
            .unwrap()
            .iter()
            .all(|m| !m.has_flag("\\Seen"))
    );
    other.logout().await.unwrap();
    s.logout().await.unwrap();
}

#[tokio::test]
async fn the_size_limit_truncates_and_reports_it() {
    let mut s = session(ALICE).await;
    let folder = private_folder(&mut s).await;
    let big = message(&mid("big"), "big", &eight_bit_body(300_000, 3));
    let small = message(&mid("small"), "small", b"small\r\n");
    let exact = message(&mid("exact"), "exact", &eight_bit_body(9_000, 4));
    let mut uids = Vec::new();
    for m in [&big, &small, &exact] {
        uids.push(s.append(&folder, &[], None, m).await.unwrap().unwrap().uid);
    }
    s.examine(&folder, true).await.unwrap();
    let limit = exact.len();
    let got = collect(
        &mut s,
        &uids,
        FetchOptions {
            max_bytes: limit,
            ..FetchOptions::default()
        },
    )
    .await;
    assert_eq!(got.len(), 3);
    let (b, sm, ex) = (&got[0], &got[1], &got[2]);
    assert!(b.truncated);
    assert_eq!(b.size, big.len() as u64);
    assert_eq!(b.body, big[..limit]);
    assert_eq!(
        b.header(),
        Some(&big[..big.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4])
    );
    assert!(!sm.truncated && sm.body == small);
    assert!(
        !ex.truncated && ex.body == exact,
        "exactly at the limit is complete"
    );

    // The whole header of a truncated message, on its own.
    let headers = collect(
        &mut s,
        &[b.uid],
        FetchOptions {
            part: FetchPart::Header,
            ..FetchOptions::default()
        },
    )
    .await;
    assert_eq!(Some(headers[0].body.as_slice()), b.header());
    s.logout().await.unwrap();
}

#[tokio::test]
async fn idle_returns_exists_promptly_and_times_out_when_nothing_happens() {
    let mut s = session(ALICE).await;
    let folder = private_folder(&mut s).await;
    s.append(
        &folder,
        &[],
        None,
        &message(&mid("before"), "before", b"x\r\n"),
    )
    .await
    .unwrap();
    s.select(&folder, true).await.unwrap();
    assert_eq!(s.exists(), Some(1));

    // Nothing happens: Timeout, within the bound.
    let t = Instant::now();
    assert_eq!(
        s.idle(Duration::from_secs(2)).await.unwrap(),
        IdleEvent::Timeout
    );
    let took = t.elapsed();
    println!("IDLE with nothing happening returned after {took:?} (max_wait 2 s)");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A second connection appends while we idle.
    let folder2 = folder.clone();
    let appender = tokio::spawn(async move {
        let mut other = session(ALICE).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let start = Instant::now();
        let uid = other
            .append(
                &folder2,
                &[],
                None,
                &message(&mid("idle"), "idle", b"new\r\n"),
            )
            .await
            .unwrap()
            .unwrap()
            .uid;
        let appended = Instant::now();
        other.logout().await.unwrap();
        (start, appended, uid)
    });
    let t = Instant::now();
    let event = s.idle(Duration::from_secs(20)).await.unwrap();
    let returned = Instant::now();
    let (append_start, append_done, uid) = appender.await.unwrap();
    assert_eq!(event, IdleEvent::Exists(2));
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let from_start = returned.saturating_duration_since(append_start);
    let from_done = returned.saturating_duration_since(append_done);
    println!(
        "IDLE latency: EXISTS {from_start:?} after the APPEND was sent ({from_done:?} after \
         its OK)"
    );
    assert!(from_start < Duration::from_secs(5), "{from_start:?}");
    let new = s.uid_list(uid).await.unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].uid, uid);

    // Still usable for another round.
    assert_eq!(
        s.idle(Duration::from_millis(500)).await.unwrap(),
        IdleEvent::Timeout
    );
    s.logout().await.unwrap();
}

#[tokio::test]
async fn append_search_by_message_id_and_move_to_undeliverable() {
    let mut s = session(CAROL).await;
    let folder = private_folder(&mut s).await;
    let wanted = mid("wanted");
    let mut uids = Vec::new();
    for id in [mid("a"), wanted.clone(), mid("b")] {
        let m = message(&id, "search", b"body\r\n");
        uids.push(
            s.append(&folder, &["$Test"], None, &m)
                .await
                .unwrap()
                .unwrap()
                .uid,
        );
    }
    let st = s.select(&folder, true).await.unwrap();
    assert_eq!(
        s.uid_search_header("Message-ID", &wanted).await.unwrap(),
        [uids[1]]
    );
    assert!(
        s.uid_search_header("Message-ID", &mid("nowhere"))
            .await
            .unwrap()
            .is_empty()
    );
    // Non-ASCII search values go as a UTF-8 literal.
    assert!(
        s.uid_search_header("Subject", "Grüße")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.uid_list(1).await.unwrap()[0].has_flag("$Test"));

    // The Undeliverable folder (shared by runs of this test only).
    let created = s.create_folder_if_missing("Undeliverable").await.unwrap();
    println!("Undeliverable created now: {created}");
    assert!(!s.create_folder_if_missing("Undeliverable").await.unwrap());
    let moved = s
        .uid_move_or_copy(&[uids[1]], "Undeliverable", false)
        .await
        .unwrap();
    assert_eq!(moved.method, MoveMethod::Moved, "Dovecot offers MOVE");
    assert_eq!(moved.uid_map.len(), 1);
    assert_eq!(moved.uid_map[0].0, uids[1]);
    let new_uid = moved.uid_map[0].1;
    assert!(
        s.uid_search_header("Message-ID", &wanted)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.exists(), Some(2));
    assert_eq!(
        s.uid_list(1)
            .await
            .unwrap()
            .iter()
            .map(|m| m.uid)
            .collect::<Vec<_>>(),
        [uids[0], uids[2]]
    );
    // Our own MOVE's expunge is not reported back as an outside change.
    assert!(s.take_events().is_empty());

    let und = s.select("Undeliverable", true).await.unwrap();
    assert_eq!(moved.dest_uid_validity, Some(und.uid_validity));
    assert_eq!(
        s.uid_search_header("Message-ID", &wanted).await.unwrap(),
        [new_uid]
    );
    assert!(st.uid_validity > 0);
    s.logout().await.unwrap();
}

#[tokio::test]
async fn folders_with_non_ascii_names_and_refusals_are_classified() {
    let mut s = session(BOB).await;
    let name = format!("T-{} Entwürfe & 日本", uuid::Uuid::new_v4().simple());
    assert!(s.create_folder_if_missing(&name).await.unwrap());
    assert!(!s.create_folder_if_missing(&name).await.unwrap());
    let m = message(&mid("utf7"), "utf7", b"x\r\n");
    let uid = s
        .append(&name, &["\\Seen"], None, &m)
        .await
        .unwrap()
        .unwrap()
        .uid;
    let st = s.select(&name, false).await.unwrap();
    assert_eq!((st.exists, st.name.as_str()), (1, name.as_str()));
    let metas = s.uid_list(1).await.unwrap();
    assert_eq!(metas[0].uid, uid);
    assert!(metas[0].has_flag("\\Seen"), "APPEND keeps the flags given");

    let missing = format!("T-{}-missing", uuid::Uuid::new_v4().simple());
    let e = s.select(&missing, true).await.unwrap_err();
    println!("SELECT of a missing folder: {e}");
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Permission, ErrorKind::Config),
        "{e}"
    );
    assert!(s.selected().is_none());
    let e = s.append(&missing, &[], None, &m).await.unwrap_err();
    println!("APPEND to a missing folder: {e}");
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Permission, ErrorKind::Config),
        "{e}"
    );
    let e = s.uid_list(1).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Bug, "no folder selected: {e}");
    // None of these ended the session.
    s.noop().await.unwrap();
    s.logout().await.unwrap();
}

#[tokio::test]
async fn qresync_reports_vanished_and_changed_messages_since_a_modseq() {
    let mut s = session(ALICE).await;
    let folder = private_folder(&mut s).await;
    let mut uids = Vec::new();
    for i in 0..4 {
        let m = message(&mid("q"), &format!("q{i}"), b"x\r\n");
        uids.push(s.append(&folder, &[], None, &m).await.unwrap().unwrap().uid);
    }
    s.logout().await.unwrap();

    let mut s = session(ALICE).await;
    assert!(s.enable_qresync().await.unwrap(), "Dovecot offers QRESYNC");
    let first = s.select_qresync(&folder, None, false).await.unwrap();
    let known = (
        first.status.uid_validity,
        first.status.highest_modseq.unwrap(),
    );
    assert!(first.vanished.is_empty() && first.changed.is_empty());
    // Changes: one message gone, one flagged.
    let other = format!("{folder}-other");
    s.create_folder_if_missing(&other).await.unwrap();
    s.uid_move_or_copy(&[uids[0]], &other, false).await.unwrap();
    s.uid_store_flags(&[uids[2]], true, &["\\Flagged"])
        .await
        .unwrap();
    let changes = s.changed_since(known.1).await.unwrap();
    assert_eq!(changes.changed.len(), 1);
    assert_eq!(changes.changed[0].uid, uids[2]);
    assert!(changes.changed[0].flags.iter().any(|f| f == "\\Flagged"));
    assert!(changes.vanished.as_ref().unwrap().contains(uids[0]));
    s.logout().await.unwrap();

    let mut s = session(ALICE).await;
    let resync = s.select_qresync(&folder, Some(known), true).await.unwrap();
    println!(
        "QRESYNC: vanished {} changed {:?}",
        resync.vanished, resync.changed
    );
    assert!(!resync.uid_validity_changed);
    assert!(resync.vanished.contains(uids[0]));
    assert_eq!(
        resync.changed.iter().map(|c| c.uid).collect::<Vec<_>>(),
        [uids[2]]
    );
    assert!(resync.status.highest_modseq.unwrap() > known.1);
    s.logout().await.unwrap();

    // A different UIDVALIDITY is reported, not silently resynced.
    let mut s = session(ALICE).await;
    let reset = s
        .select_qresync(&folder, Some((known.0.wrapping_add(1), known.1)), true)
        .await
        .unwrap();
    assert!(reset.uid_validity_changed);
    assert!(reset.vanished.is_empty() && reset.changed.is_empty());
    s.logout().await.unwrap();
}

/// CPU time of the current thread (Linux), where the single-threaded test runtime does
/// all the client's work.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[tokio::test]
async fn throughput_of_fetching_a_thousand_20k_messages() {
    const N: usize = 1000;
    let mut s = session(SUPPORT).await;
    let folder = private_folder(&mut s).await;
    let body = eight_bit_body(20_000, 7);
    // Seed over 4 connections at once.
    let t = Instant::now();
    let mut seeders = Vec::new();
    for part in 0..4 {
        let folder = folder.clone();
        let body = body.clone();
        seeders.push(tokio::spawn(async move {
            let mut s = session(SUPPORT).await;
            for i in 0..N / 4 {
                let m = message(&mid("tp"), &format!("tp {part}/{i}"), &body);
                s.append(&folder, &[], None, &m).await.unwrap();
            }
            s.logout().await.unwrap();
        }));
    }
    for seeder in seeders {
        seeder.await.unwrap();
    }
    let seeded = t.elapsed();
    println!(
        "seeded {N} messages of ~20 KB with APPEND over 4 connections in {seeded:?} ({:.0} msg/s)",
        N as f64 / seeded.as_secs_f64()
    );
    s.examine(&folder, true).await.unwrap();
    let t = Instant::now();
    let metas = s.uid_list(1).await.unwrap();
    println!("uid_list of {} messages: {:?}", metas.len(), t.elapsed());
    assert_eq!(metas.len(), N);
    let uids: Vec<u32> = metas.iter().map(|m| m.uid).collect();
    for (batch_size, pipeline_depth) in [(100, 2), (100, 1), (500, 2), (1000, 1)] {
        let t = Instant::now();
        let cpu = thread_cpu();
        let mut fetch = s
            .fetch_bodies_with(
                &uids,
                FetchOptions {
                    batch_size,
                    pipeline_depth,
                    ..FetchOptions::default()
                },
            )
            .await
            .unwrap();
        let (mut n, mut bytes) = (0usize, 0usize);
        while let Some(m) = fetch.next().await.unwrap() {
            n += 1;
            bytes += m.body.len();
        }
        let took = t.elapsed();
        let cpu = thread_cpu().zip(cpu).map(|(after, before)| after - before);
        assert_eq!(n, N);
        println!(
            "fetch_bodies over TLS, batch {batch_size}, depth {pipeline_depth}: {N} messages \
             ({:.1} MB) in {took:?}: {:.0} msg/s, {:.1} MB/s; client CPU (TLS + parsing) {}",
            bytes as f64 / 1e6,
            N as f64 / took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64(),
            cpu.map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "unknown".into())
        );
    }
    s.logout().await.unwrap();
}

#[tokio::test]
async fn a_fetch_dropped_midway_leaves_the_session_usable() {
    let mut s = session(ALICE).await;
    let folder = private_folder(&mut s).await;
    for i in 0..30 {
        let m = message(&mid("drop"), &format!("d{i}"), &eight_bit_body(5000, i));
        s.append(&folder, &[], None, &m).await.unwrap();
    }
    s.examine(&folder, true).await.unwrap();
    let uids: Vec<u32> = s.uid_list(1).await.unwrap().iter().map(|m| m.uid).collect();
    {
        let mut fetch = s
            .fetch_bodies_with(
                &uids,
                FetchOptions {
                    batch_size: 5,
                    pipeline_depth: 3,
                    ..FetchOptions::default()
                },
            )
            .await
            .unwrap();
        let first = fetch.next().await.unwrap().unwrap();
        assert_eq!(first.uid, uids[0]);
    }
    assert_eq!(s.uid_list(1).await.unwrap().len(), 30);
    let all = collect(&mut s, &uids, FetchOptions::default()).await;
    assert_eq!(all.len(), 30);
    s.logout().await.unwrap();
}

/// Several Sent copies in one MULTIAPPEND (RFC 3502; Dovecot offers it with LITERAL+): every
/// message is stored byte for byte, in order, each with `\Seen`; a missing folder refuses the
/// whole command and stores nothing, and the session stays usable.
#[tokio::test]
async fn append_all_stores_every_message_with_its_flags_in_one_command() {
    let mut s = session(CAROL).await;
    let folder = private_folder(&mut s).await;
    let ids: Vec<String> = (0..5).map(|i| mid(&format!("multi{i}"))).collect();
    let messages: Vec<Vec<u8>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            message(
                id,
                &format!("multi {i}"),
                &eight_bit_body(300 * (i + 1), i as u32),
            )
        })
        .collect();
    let all: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    assert!(
        s.can_append_all(&all),
        "Dovecot offers MULTIAPPEND and LITERAL+: {:?}",
        s.capabilities().collect::<Vec<_>>()
    );
    s.append_all(&folder, &["\\Seen"], &all).await.unwrap();

    s.select(&folder, true).await.unwrap();
    assert_eq!(s.exists(), Some(5));
    let listed = s.uid_list(1).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert!(listed.iter().all(|m| m.has_flag("\\Seen")), "{listed:?}");
    let uids: Vec<u32> = listed.iter().map(|m| m.uid).collect();
    let got = collect(&mut s, &uids, FetchOptions::default()).await;
    for (m, want) in got.iter().zip(&messages) {
        assert!(
            m.body == *want,
            "message {} differs from what was appended",
            m.uid
        );
    }
    for id in &ids {
        assert_eq!(
            s.uid_search_header("Message-ID", id).await.unwrap().len(),
            1
        );
    }

    // A folder that does not exist: the server refuses the command, nothing is stored.
    let missing = format!("T-missing-{}", uuid::Uuid::new_v4().simple());
    let e = s.append_all(&missing, &["\\Seen"], &all).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Config, "{e}");
    assert_eq!(s.exists(), Some(5));
    assert!(s.create_folder_if_missing(&missing).await.unwrap());
    s.select(&missing, true).await.unwrap();
    assert_eq!(s.exists(), Some(0), "all or nothing");
    s.logout().await.unwrap();
}
