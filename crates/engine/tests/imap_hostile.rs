//! The IMAP worker against a scripted hostile server (a TCP listener on 127.0.0.1 speaking
//! just enough IMAP): a message body for a UID the client did not ask for never moves the
//! folder's cursor, and an answer over the client's limits fails the mailbox with a protocol
//! error naming the limit.

mod common;
use common::eventually;

use serversync_connectors::TlsTrust;
use serversync_engine::{Engine, EngineConfig};
use serversync_model::ErrorKind;
use serversync_model::MailboxId;
use serversync_model::item::{ItemSource, MailItem};
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::{Endpoint, TlsMode};
use serversync_store::Store;
use serversync_vault::MasterKey;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const USER: &str = "carol@example.test";

/// How the scripted server misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Hostility {
    /// Every body fetch also answers with a message for UID 4294967295, never asked for.
    UnaskedUid,
    /// The listing announces a literal of a gigabyte.
    HugeLiteral,
}

/// The folder's messages (UID, raw bytes), shared with the test.
type Messages = Arc<Mutex<Vec<(u32, Vec<u8>)>>>;

fn dated(id: &str) -> Vec<u8> {
    let date = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc2822();
    format!(
        "Message-ID: <{id}>\r\nFrom: ann@example.test\r\nTo: {USER}\r\nSubject: {id}\r\nDate: {date}\r\n\r\nbody of {id}\r\n"
    )
    .into_bytes()
}

/// `1`, `1:5`, `3:*`, comma-separated.
fn in_set(set: &str, uid: u32) -> bool {
    set.split(',').any(|part| match part.split_once(':') {
        Some((lo, "*")) => uid >= lo.parse().unwrap(),
        Some((lo, hi)) => (lo.parse().unwrap()..=hi.parse().unwrap()).contains(&uid),
        None => part.parse() == Ok(uid),
    })
}

fn fetch_line(seq: usize, uid: u32, raw: &[u8], body: bool) -> Vec<u8> {
    let date = (chrono::Utc::now() - chrono::Duration::days(1)).format("%d-%b-%Y %H:%M:%S +0000");
    let mut out = format!(
        "* {seq} FETCH (UID {uid} RFC822.SIZE {} INTERNALDATE \"{date}\" FLAGS ()",
        raw.len()
    )
    .into_bytes();
    if body {
        out.extend_from_slice(format!(" BODY[]<0> {{{}}}\r\n", raw.len()).as_bytes());
        out.extend_from_slice(raw);
    }
    out.extend_from_slice(b")\r\n");
    out
}

/// Serves every connection until the test ends.
async fn serve(listener: TcpListener, messages: Messages, hostility: Hostility) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            return;
        };
        let messages = messages.clone();
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"* OK scripted server ready\r\n").await?;
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                let mut words = line.trim_end().splitn(3, ' ');
                let tag = words.next().unwrap_or("*").to_string();
                let command = words.next().unwrap_or("").to_ascii_uppercase();
                let rest = words.next().unwrap_or("").to_string();
                let mut out = Vec::new();
                match command.as_str() {
                    "CAPABILITY" => out.extend_from_slice(b"* CAPABILITY IMAP4rev1\r\n"),
                    "SELECT" | "EXAMINE" => {
                        let m = messages.lock().unwrap();
                        let next = m.iter().map(|(u, _)| u + 1).max().unwrap_or(1);
                        out.extend_from_slice(
                            format!(
                                "* {} EXISTS\r\n* OK [UIDVALIDITY 7] v\r\n* OK [UIDNEXT {next}] n\r\n",
                                m.len()
                            )
                            .as_bytes(),
                        );
                    }
                    "UID" => {
                        let set = rest.split(' ').nth(1).unwrap_or("");
                        let body = rest.contains("BODY.PEEK[]");
                        if !body && hostility == Hostility::HugeLiteral {
                            w.write_all(b"* 1 FETCH (UID 1 BODY[HEADER] {1000000000}\r\n")
                                .await?;
                            w.write_all(&[b'x'; 1 << 20]).await?;
                            return Ok(());
                        }
                        let m = messages.lock().unwrap().clone();
                        for (i, (uid, raw)) in m.iter().enumerate() {
                            if in_set(set, *uid) {
                                out.extend(fetch_line(i + 1, *uid, raw, body));
                                if body && hostility == Hostility::UnaskedUid {
                                    out.extend(fetch_line(
                                        i + 1,
                                        u32::MAX,
                                        &dated("unasked@example.test"),
                                        true,
                                    ));
                                }
                            }
                        }
                    }
                    "LOGOUT" => {
                        w.write_all(format!("* BYE bye\r\n{tag} OK done\r\n").as_bytes())
                            .await?;
                        return Ok(());
                    }
                    _ => {}
                }
                let done = match command.as_str() {
                    "LOGIN" => "OK [CAPABILITY IMAP4rev1] logged in",
                    "SELECT" => "OK [READ-WRITE] selected",
                    _ => "OK done",
                };
                out.extend_from_slice(format!("{tag} {done}\r\n").as_bytes());
                w.write_all(&out).await?;
            }
        });
    }
}

struct Setup {
    store: Store,
    mailbox: MailboxId,
    messages: Messages,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _db: tempfile::TempDir,
}

async fn start(hostility: Hostility, messages: Vec<(u32, Vec<u8>)>) -> Setup {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages: Messages = Arc::new(Mutex::new(messages));
    tokio::spawn(serve(listener, messages.clone(), hostility));
    let db = tempfile::tempdir().unwrap();
    let store = Store::open(
        &format!("sqlite://{}", db.path().join("h.db").display()),
        MasterKey::generate().unwrap(),
    )
    .await
    .unwrap();
    let m = common::imap_mailbox(
        &store,
        Endpoint {
            location: "127.0.0.1".into(),
            port,
            tls: TlsMode::None,
        },
        USER,
        "pw",
    )
    .await;
    let config = EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(Arc::new(TlsTrust::system_only().unwrap()))
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(store.clone(), config).run(stop.clone()));
    Setup {
        store,
        mailbox: m.id,
        messages,
        stop,
        task,
        _db: db,
    }
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

async fn last_uid(store: &Store, m: MailboxId) -> Option<u32> {
    store
        .get_cursor(m, "INBOX")
        .await
        .unwrap()
        .and_then(|c| c.into_imap())
        .and_then(|c| c.last_uid)
}

impl Setup {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_for_a_uid_not_asked_for_never_moves_the_cursor() {
    let s = start(
        Hostility::UnaskedUid,
        vec![
            (1, dated("one@example.test")),
            (2, dated("two@example.test")),
        ],
    )
    .await;
    eventually!(
        30,
        "the two messages are read and the cursor committed",
        last_uid(&s.store, s.mailbox).await.is_some()
            && items(&s.store, s.mailbox).await.len() >= 2
    );
    assert_eq!(
        last_uid(&s.store, s.mailbox).await,
        Some(2),
        "the cursor stays on the UIDs asked for"
    );
    // Later mail is still read: the folder did not skip to UID 4294967295.
    s.messages
        .lock()
        .unwrap()
        .push((3, dated("three@example.test")));
    eventually!(
        30,
        "the next message is read",
        last_uid(&s.store, s.mailbox).await == Some(3)
    );
    let stored: Vec<(u32, Option<String>)> = items(&s.store, s.mailbox)
        .await
        .into_iter()
        .map(|i| match i.source {
            ItemSource::Imap { uid, .. } => (uid, i.message_id),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        stored,
        [
            (1, Some("one@example.test".into())),
            (2, Some("two@example.test".into())),
            (3, Some("three@example.test".into())),
        ]
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_literal_over_the_limit_fails_the_mailbox_naming_the_limit() {
    let s = start(Hostility::HugeLiteral, vec![(1, dated("one@example.test"))]).await;
    eventually!(
        30,
        "the mailbox records the failure",
        s.store
            .fetch::<Mailbox>(&s.mailbox.to_string())
            .await
            .unwrap()
            .value
            .telemetry
            .last_error
            .is_some()
    );
    let m = s
        .store
        .fetch::<Mailbox>(&s.mailbox.to_string())
        .await
        .unwrap()
        .value;
    let e = m.telemetry.last_error.unwrap();
    assert_eq!(e.kind, ErrorKind::Permanent, "{e:?}");
    assert!(
        e.message
            .contains("announces 1000000000 bytes of literals in one response, over the limit"),
        "{}",
        e.message
    );
    assert!(
        !m.incoming.enabled,
        "a permanent failure disables incoming email"
    );
    assert!(items(&s.store, s.mailbox).await.is_empty());
    s.stop().await;
}
