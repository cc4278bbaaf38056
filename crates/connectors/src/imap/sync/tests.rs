//! [`SyncSession`] against scripted fake servers: the failure classification and the
//! corner cases a real Dovecot does not produce on demand (drops, BYE, garbage, servers
//! without LITERAL+, a server that never answers DONE).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serversync_model::profile::TlsMode;
use serversync_model::{ErrorKind, FailureStep, Secret};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::tls::TlsTrust;

struct Peer {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Peer {
    async fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).await.unwrap();
        l.trim_end_matches(['\r', '\n']).to_string()
    }

    async fn send(&mut self, s: &str) {
        self.w.write_all(s.as_bytes()).await.unwrap();
    }

    /// Reads a command line containing `needle`; returns its tag.
    async fn expect(&mut self, needle: &str) -> String {
        let l = self.line().await;
        assert!(l.contains(needle), "expected {needle:?}, got {l:?}");
        l.split(' ').next().unwrap().to_string()
    }

    async fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        self.r.read_exact(&mut b).await.unwrap();
        b
    }

    /// Writes `chunk` again and again, up to `max` bytes, until the client stops taking them
    /// (a write blocked for five seconds: it reads no more) or goes away. Bytes written.
    async fn flood(&mut self, chunk: &[u8], max: usize) -> usize {
        let mut written = 0;
        while written < max {
            match tokio::time::timeout(Duration::from_secs(5), self.w.write_all(chunk)).await {
                Ok(Ok(())) => written += chunk.len(),
                _ => break,
            }
        }
        written
    }
}

const CAPS: &str = "IMAP4rev1 IDLE LITERAL+ MOVE UIDPLUS CONDSTORE";

/// A session with a fake server that logs in with `caps` and then runs `script`.
async fn session<F, Fut, T>(caps: &'static str, script: F) -> (SyncSession, JoinHandle<T>)
where
    F: FnOnce(Peer) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let (r, w) = sock.into_split();
        let mut p = Peer {
            r: BufReader::new(r),
            w,
        };
        p.send("* OK fake ready\r\n").await;
        let tag = p.expect("CAPABILITY").await;
        p.send(&format!("* CAPABILITY {caps}\r\n{tag} OK done\r\n"))
            .await;
        let tag = p.expect("LOGIN").await;
        p.send(&format!("{tag} OK [CAPABILITY {caps}] logged in\r\n"))
            .await;
        script(p).await
    });
    let opts = ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
        .with_policy(crate::NetworkPolicy::loopback_allowed())
        .with_timeout(Duration::from_secs(3));
    let addr = ServerAddr::new("127.0.0.1", port, TlsMode::None);
    let login = Login::password("u", Secret::new("p"));
    let s = SyncSession::connect(&addr, &login, &opts).await.unwrap();
    (s, server)
}

async fn select_ok(p: &mut Peer) {
    let tag = p.expect("SELECT").await;
    p.send(&format!(
        "* 3 EXISTS\r\n* OK [UIDVALIDITY 42] x\r\n* OK [UIDNEXT 10] x\r\n\
         * OK [HIGHESTMODSEQ 77] x\r\n{tag} OK [READ-WRITE] selected\r\n"
    ))
    .await;
}

#[tokio::test]
async fn select_refusals_are_permission_failures_classified_by_code() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        for answer in [
            "NO [NOPERM] no access",
            "NO no",
            "NO [NONEXISTENT] none",
            "NO gone",
        ] {
            let tag = p.expect(" \"A\" (CONDSTORE)").await;
            p.send(&format!("{tag} {answer}\r\n")).await;
            if answer == "NO no" {
                // Without a code, LIST decides: the folder exists, so it is forbidden.
                let tag = p.expect("LIST \"\" \"A\"").await;
                p.send(&format!("* LIST () \"/\" A\r\n{tag} OK listed\r\n"))
                    .await;
            }
            if answer == "NO gone" {
                let tag = p.expect("LIST \"\" \"A\"").await;
                p.send(&format!("{tag} OK listed\r\n")).await;
            }
        }
        select_ok(&mut p).await;
    })
    .await;
    let e = s.select("A", true).await.unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Permission, ErrorKind::Permission)
    );
    assert!(e.message.contains("NOPERM"), "{e}");
    let e = s.select("A", true).await.unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Permission, ErrorKind::Permission)
    );
    let e = s.examine("A", true).await.unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Permission, ErrorKind::Config)
    );
    let e = s.select("A", true).await.unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Permission, ErrorKind::Config)
    );
    assert!(e.message.contains("does not exist"), "{e}");
    // A refusal does not end the session.
    let st = s.select("A", true).await.unwrap();
    assert_eq!(
        st,
        FolderStatus {
            name: "A".into(),
            uid_validity: 42,
            uid_next: Some(10),
            exists: 3,
            highest_modseq: Some(77),
            read_only: false,
        }
    );
    server.await.unwrap();
}

#[tokio::test]
async fn garbled_answers_are_protocol_errors_and_end_the_session() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let _tag = p.expect("UID FETCH 1:*").await;
        p.send("* 1 FETCH (UID one)\r\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    s.select("A", true).await.unwrap();
    let e = s.uid_list(1).await.unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Protocol, ErrorKind::Permanent)
    );
    assert!(e.message.contains("garbled"), "{e}");
    let again = s.noop().await.unwrap_err();
    assert_eq!(again, e);
    server.await.unwrap();
}

#[tokio::test]
async fn a_connection_dropped_mid_message_is_transient() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let _tag = p.expect("UID FETCH 1:2 (UID RFC822.SIZE").await;
        p.send("* 1 FETCH (UID 1 RFC822.SIZE 100 BODY[]<0> {100}\r\nonly part")
            .await;
        // Dropping the peer closes the connection.
    })
    .await;
    s.select("A", true).await.unwrap();
    let mut fetch = s.fetch_bodies(&[1, 2], 1000).await.unwrap();
    let e = fetch.next().await.unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Protocol, ErrorKind::Transient)
    );
    assert!(e.message.contains("closed the connection"), "{e}");
    drop(fetch);
    server.await.unwrap();
}

#[tokio::test]
async fn uid_list_leaves_out_the_last_message_below_from() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let tag = p
            .expect("UID FETCH 10:* (UID RFC822.SIZE INTERNALDATE FLAGS MODSEQ)")
            .await;
        p.send(&format!(
            "* 3 FETCH (UID 9 RFC822.SIZE 5 INTERNALDATE \"01-Jan-2020 00:00:00 +0000\" FLAGS () MODSEQ (5))\r\n\
             * 2 FETCH (FLAGS (\\Seen) UID 8)\r\n{tag} OK done\r\n"
        ))
        .await;
    })
    .await;
    s.select("A", true).await.unwrap();
    assert!(s.uid_list(10).await.unwrap().is_empty());
    // The unsolicited flag change was kept as an event.
    assert_eq!(
        s.take_events(),
        vec![MailboxEvent::Flags {
            seq: 2,
            uid: Some(8),
            flags: vec!["\\Seen".into()],
            modseq: None
        }]
    );
    server.await.unwrap();
}

#[tokio::test]
async fn idle_reports_exists_bye_and_timeouts_within_bounds() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        // 1: new mail after 200 ms.
        let tag = p.expect("IDLE").await;
        p.send("+ idling\r\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        p.send("* 4 EXISTS\r\n").await;
        assert_eq!(p.line().await, "DONE");
        p.send(&format!("{tag} OK idle done\r\n")).await;
        // 2: nothing happens (a keep-alive only).
        let tag = p.expect("IDLE").await;
        p.send("+ idling\r\n* OK Still here\r\n").await;
        assert_eq!(p.line().await, "DONE");
        p.send(&format!("{tag} OK idle done\r\n")).await;
        // 3: the server never answers DONE.
        let _tag = p.expect("IDLE").await;
        p.send("+ idling\r\n").await;
        assert_eq!(p.line().await, "DONE");
        tokio::time::sleep(Duration::from_secs(4)).await;
    })
    .await;
    s.select("A", true).await.unwrap();
    let t = Instant::now();
    assert_eq!(
        s.idle(Duration::from_secs(10)).await.unwrap(),
        IdleEvent::Exists(4)
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(s.exists(), Some(4));

    let t = Instant::now();
    assert_eq!(
        s.idle(Duration::from_millis(700)).await.unwrap(),
        IdleEvent::Timeout
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(1700),
        "{took:?}"
    );

    let t = Instant::now();
    let e = s.idle(Duration::from_millis(500)).await.unwrap_err();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1600), "{took:?}");
    assert_eq!(e.kind, ErrorKind::Transient, "{e}");
    assert!(s.failure().is_some());
    server.await.unwrap();
}

#[tokio::test]
async fn idle_returns_closed_on_bye_and_at_once_for_queued_events() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let tag = p.expect("NOOP").await;
        p.send(&format!("* 5 EXISTS\r\n{tag} OK done\r\n")).await;
        let tag = p.expect("UID SEARCH").await;
        p.send(&format!("* 6 EXISTS\r\n* SEARCH 3\r\n{tag} OK done\r\n"))
            .await;
        let _tag = p.expect("IDLE").await;
        p.send("+ idling\r\n").await;
        p.send("* BYE [UNAVAILABLE] shutting down\r\n").await;
    })
    .await;
    s.select("A", true).await.unwrap();
    assert_eq!(s.noop().await.unwrap(), vec![MailboxEvent::Exists(5)]);
    assert_eq!(
        s.uid_search_header("Message-ID", "<a@b>").await.unwrap(),
        [3]
    );
    // The EXISTS seen during SEARCH makes IDLE return at once, without a command.
    assert_eq!(
        s.idle(Duration::from_secs(5)).await.unwrap(),
        IdleEvent::Exists(6)
    );
    let ev = s.idle(Duration::from_secs(5)).await.unwrap();
    assert!(
        matches!(&ev, IdleEvent::Closed(r) if r.contains("UNAVAILABLE")),
        "{ev:?}"
    );
    assert_eq!(
        s.idle(Duration::from_secs(5)).await.unwrap(),
        ev,
        "stays closed"
    );
    let e = s.noop().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    server.await.unwrap();
}

#[tokio::test]
async fn synchronizing_literals_without_literal_plus() {
    let (mut s, server) = session("IMAP4rev1 UIDPLUS", |mut p| async move {
        let tag = p.expect("APPEND \"Sent\" (\\Seen) {5}").await;
        p.send("+ go ahead\r\n").await;
        assert_eq!(p.bytes(7).await, b"hello\r\n");
        p.send(&format!("{tag} OK [APPENDUID 7 9] appended\r\n"))
            .await;
        let tag = p.expect("APPEND \"Sent\" {5}").await;
        p.send(&format!("{tag} NO [OVERQUOTA] mailbox full\r\n"))
            .await;
        let tag = p.expect("APPEND \"Gone\" {5}").await;
        p.send(&format!("{tag} NO [TRYCREATE] no such folder\r\n"))
            .await;
        let tag = p.expect("NOOP").await;
        p.send(&format!("{tag} OK fine\r\n")).await;
    })
    .await;
    let uid = s.append("Sent", &["\\Seen"], None, b"hello").await.unwrap();
    assert_eq!(
        uid,
        Some(AppendUid {
            uid_validity: 7,
            uid: 9
        })
    );
    let e = s.append("Sent", &[], None, b"hello").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e}");
    let e = s.append("Gone", &[], None, b"hello").await.unwrap_err();
    assert_eq!(
        (e.step, e.kind),
        (FailureStep::Permission, ErrorKind::Config),
        "{e}"
    );
    s.noop().await.unwrap();
    let e = s
        .append("Sent", &["bad flag"], None, b"x")
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Bug);
    server.await.unwrap();
}

#[tokio::test]
async fn a_cancelled_call_leaves_the_session_refusing_further_use() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let _ = p.expect("NOOP").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    })
    .await;
    s.select("A", true).await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(100), s.noop()).await;
    assert!(r.is_err());
    let e = s.noop().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Bug, "{e}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_dropped_fetch_is_drained_before_the_next_command() {
    let (mut s, server) = session(CAPS, |mut p| async move {
        select_ok(&mut p).await;
        let t1 = p.expect("UID FETCH 1:2 ").await;
        let t2 = p.expect("UID FETCH 3:4 ").await;
        for (tag, uids) in [(t1, [1, 2]), (t2, [3, 4])] {
            for uid in uids {
                p.send(&format!(
                    "* {uid} FETCH (UID {uid} RFC822.SIZE 3 FLAGS () BODY[]<0> {{3}}\r\nab{uid})\r\n"
                ))
                .await;
            }
            p.send(&format!("{tag} OK done\r\n")).await;
        }
        let tag = p.expect("NOOP").await;
        p.send(&format!("{tag} OK fine\r\n")).await;
    })
    .await;
    s.select("A", true).await.unwrap();
    let opts = FetchOptions {
        batch_size: 2,
        pipeline_depth: 2,
        ..FetchOptions::default()
    };
    let mut fetch = s.fetch_bodies_with(&[1, 2, 3, 4], opts).await.unwrap();
    let first = fetch.next().await.unwrap().unwrap();
    assert_eq!((first.uid, first.body.as_slice()), (1, &b"ab1"[..]));
    drop(fetch);
    s.noop().await.unwrap();
    server.await.unwrap();
}

mod hostile;
