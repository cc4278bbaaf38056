//! A hostile server: huge literals, endless untagged responses, an over-long line, thousands
//! of VANISHED, a listing larger than the window, a message the client did not ask for. Each
//! fails the session with a protocol error naming the limit, or is ignored; what the client
//! took in stays within the limit (the server counts what it could write before the client
//! stopped reading).

use super::*;
use crate::imap::sync::limits::{
    LIST_WINDOW, MAX_EVENTS, MAX_LINE, MAX_LITERALS, MAX_UNTAGGED_BYTES,
};

/// Socket buffers on the loopback: bytes a server can write that the client never read.
const BUFFERED: usize = 16 << 20;

fn protocol_error(e: &ConnectError, names: &str) {
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Protocol, ErrorKind::Permanent),
        "{e}"
    );
    assert!(e.message.contains(names), "{e}");
}

#[tokio::test]
async fn a_literal_over_the_size_asked_for_fails_before_it_is_read() {
    const ANNOUNCED: usize = 256 << 20;
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let _tag = p.expect("UID FETCH 1 (UID RFC822.SIZE").await;
        p.send(&format!(
            "* 1 FETCH (UID 1 RFC822.SIZE {ANNOUNCED} BODY[]<0> {{{ANNOUNCED}}}\r\n"
        ))
        .await;
        p.flood(&[b'x'; 64 * 1024], ANNOUNCED).await
    })
    .await;
    s.select("A", true).await.unwrap();
    // The client asked for at most 100,000 bytes of the message.
    let mut fetch = s.fetch_bodies(&[1], 100_000).await.unwrap();
    let e = fetch.next().await.unwrap_err();
    protocol_error(
        &e,
        "announces 268435456 bytes of literals in one response, over the limit",
    );
    drop(fetch);
    drop(s);
    let written = server.await.unwrap();
    assert!(written < BUFFERED, "the client read {written} bytes of it");
}

#[tokio::test]
async fn more_literals_in_one_response_than_the_limit_fail() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let tag = p.expect("UID FETCH 1 (UID RFC822.SIZE").await;
        let mut answer = String::from("* 1 FETCH (UID 1");
        for i in 0..1000 {
            answer.push_str(&format!(" BODY[{i}] {{1}}\r\nx"));
        }
        answer.push_str(&format!(")\r\n{tag} OK done\r\n"));
        p.send(&answer).await;
        0
    })
    .await;
    s.select("A", true).await.unwrap();
    let mut fetch = s.fetch_bodies(&[1], 100_000).await.unwrap();
    let e = fetch.next().await.unwrap_err();
    protocol_error(
        &e,
        &format!("more than the limit of {MAX_LITERALS} literals"),
    );
    drop(fetch);
    server.await.unwrap();
}

#[tokio::test]
async fn endless_untagged_responses_fail_the_command_at_the_limit() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let tag = p.expect("NOOP").await;
        let line = format!("* OK {}\r\n", "still working ".repeat(70));
        // Four times the limit, then the end of the answer (which the client must not need).
        let chunk = line.repeat(64);
        let written = p.flood(chunk.as_bytes(), 4 * MAX_UNTAGGED_BYTES).await;
        let _ = p.w.write_all(format!("{tag} OK done\r\n").as_bytes()).await;
        written
    })
    .await;
    s.select("A", true).await.unwrap();
    let e = s.noop().await.unwrap_err();
    protocol_error(
        &e,
        "more than the limit of 64 MiB of untagged responses to one NOOP",
    );
    drop(s);
    let written = server.await.unwrap();
    assert!(
        written < MAX_UNTAGGED_BYTES + BUFFERED,
        "the client took {written} bytes of untagged responses"
    );
}

#[tokio::test]
async fn a_line_over_the_limit_fails_at_the_limit() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let _tag = p.expect("NOOP").await;
        p.send("* OK ").await;
        p.flood(&[b'x'; 64 * 1024], 256 << 20).await
    })
    .await;
    s.select("A", true).await.unwrap();
    let e = s.noop().await.unwrap_err();
    protocol_error(
        &e,
        &format!("longer than the limit of {} MiB", MAX_LINE >> 20),
    );
    drop(s);
    let written = server.await.unwrap();
    assert!(
        written < MAX_LINE + BUFFERED,
        "the client took {written} bytes of one line"
    );
}

/// Merging each VANISHED into the growing set took ~N² steps: over ten minutes for this N in
/// a debug build (without yielding, so no timer can stop it: the client runs on its own
/// thread, and the test gives up on it). Merged at once, it is one sort.
#[test]
fn thousands_of_vanished_are_merged_at_once_and_unsolicited_ones_summarized() {
    const N: u32 = 200_000;
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(vanished_exchange(N));
        let _ = done.send(());
    });
    match result.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{N} VANISHED were not taken in within 120 s")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the client failed (its panic is above)")
        }
    }
}

async fn vanished_exchange(n: u32) {
    let (mut s, server) = session(
        "IMAP4rev1 IDLE QRESYNC CONDSTORE",
        move |mut p| async move {
            let tag = p.expect("ENABLE QRESYNC").await;
            p.send(&format!("* ENABLED QRESYNC\r\n{tag} OK enabled\r\n"))
                .await;
            let tag = p.expect("(QRESYNC (42 70))").await;
            let mut answer = String::from(
                "* 3 EXISTS\r\n* OK [UIDVALIDITY 42] x\r\n* OK [HIGHESTMODSEQ 77] x\r\n",
            );
            // One VANISHED per expunged message, none adjacent to another.
            for i in 0..n {
                answer.push_str(&format!("* VANISHED (EARLIER) {}\r\n", 2 * i + 1));
            }
            answer.push_str(&format!("{tag} OK [READ-WRITE] selected\r\n"));
            p.send(&answer).await;
            let tag = p.expect("NOOP").await;
            let mut answer = String::new();
            for i in 0..(2 * MAX_EVENTS as u32) {
                answer.push_str(&format!("* VANISHED {}\r\n", 2 * i + 1));
            }
            answer.push_str(&format!("* 9 EXISTS\r\n{tag} OK done\r\n"));
            p.send(&answer).await;
        },
    )
    .await;
    let resync = s.select_qresync("A", Some((42, 70)), false).await.unwrap();
    assert_eq!(resync.vanished.len(), u64::from(n));
    assert!(resync.vanished.contains(2 * n - 1) && !resync.vanished.contains(2));
    // Unsolicited: the queue keeps that something vanished and the latest EXISTS, not 20,000
    // entries.
    assert_eq!(
        s.noop().await.unwrap(),
        vec![MailboxEvent::Overflow, MailboxEvent::Exists(9)]
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_listing_keeps_the_lowest_uids_within_its_window() {
    let total = LIST_WINDOW as u32 + 20_000;
    let (mut s, server) = session(CAPS, move |mut p| async move {
        select_ok(&mut p).await;
        let tag = p.expect("UID FETCH 1:*").await;
        // Highest first: the window must keep the lowest, whatever the order.
        let mut answer = String::new();
        for uid in (1..=total).rev() {
            answer.push_str(&format!(
                "* {uid} FETCH (UID {uid} RFC822.SIZE 10 FLAGS (\\Seen))\r\n"
            ));
        }
        answer.push_str(&format!("{tag} OK done\r\n"));
        p.send(&answer).await;
        0
    })
    .await;
    s.select("A", true).await.unwrap();
    let listing = s.uid_listing(1).await.unwrap();
    assert!(listing.more);
    assert_eq!(listing.messages.len(), LIST_WINDOW);
    assert_eq!(listing.messages[0].uid, 1);
    assert_eq!(
        listing.messages.last().map(|m| m.uid),
        Some(LIST_WINDOW as u32)
    );
    server.await.unwrap();
}

#[tokio::test]
async fn a_message_the_client_did_not_ask_for_is_dropped() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let tag = p.expect("UID FETCH 1:2 (UID RFC822.SIZE").await;
        for uid in [1u32, u32::MAX, 2, 1] {
            p.send(&format!(
                "* 1 FETCH (UID {uid} RFC822.SIZE 3 FLAGS () BODY[]<0> {{3}}\r\nab{})\r\n",
                uid % 10
            ))
            .await;
        }
        p.send(&format!("{tag} OK done\r\n")).await;
        0
    })
    .await;
    s.select("A", true).await.unwrap();
    let mut fetch = s.fetch_bodies(&[1, 2], 1000).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = fetch.next().await.unwrap() {
        got.push(m.uid);
    }
    assert_eq!(
        got,
        [1, 2],
        "UID 4294967295 was not asked for, UID 1 came twice"
    );
    assert!(fetch.missing().is_empty());
    drop(fetch);
    server.await.unwrap();
}
