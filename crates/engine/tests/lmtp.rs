//! The LMTP listener over a real TCP socket, on SQLite and PostgreSQL: what an MTA sees (one
//! reply per recipient, 550 for unknown ones, 552 for oversize mail, 500s for garbage) and
//! what ends up stored (one item per accepted mailbox, raw bytes exactly as sent, duplicates
//! kept once).

use serversync_engine::lmtp::{LmtpConfig, serve};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::Domain;
use serversync_model::settings::{EmailSettings, IncomingMethod};
use serversync_model::{OrgId, UserId};
use serversync_store::{Backend, Store};
use serversync_testkit::TestEnv;
use serversync_vault::MasterKey;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const LIMIT: u64 = 64 * 1024;

/// A minimal LMTP client that reads replies with a deadline.
struct Client {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> (Client, String) {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        let mut c = Client {
            r: BufReader::new(r),
            w,
        };
        let greeting = c.reply().await;
        (c, greeting)
    }

    async fn send(&mut self, data: &[u8]) {
        self.w.write_all(data).await.unwrap();
    }

    /// One complete (possibly multi-line) reply; all its lines joined with '\n'.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut line))
                .await
                .expect("a reply within 20 s")
                .unwrap();
            assert!(n > 0, "connection closed; so far: {all:?}");
            let line = line.trim_end();
            all.push_str(line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
            all.push('\n');
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// True when the server closed the connection (EOF) within the deadline.
    async fn closed(&mut self) -> bool {
        let mut rest = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(20), self.r.read_line(&mut rest)).await,
            Ok(Ok(0))
        )
    }
}

fn stuff(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out.extend_from_slice(b".\r\n");
    out
}

async fn router_mailbox(
    store: &Store,
    org: OrgId,
    settings: &EmailSettings,
    email: &str,
    method: IncomingMethod,
) -> Mailbox {
    let mut m = Mailbox::new_with_defaults(
        org,
        MailboxRegarding::User(UserId::new()),
        UserId::new(),
        email,
        email,
        settings,
        chrono::Utc::now(),
    );
    m.incoming_method = method;
    m.approval = ApprovalStatus::Approved;
    store.insert(&m).await.unwrap();
    m
}

/// Assigns `domain` to `org`, as the installation administrator does.
async fn assign(store: &Store, org: OrgId, domain: &str) {
    store
        .insert(&Domain {
            domain: domain.into(),
            org_id: org,
            assigned_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
}

async fn items(store: &Store, m: &Mailbox) -> Vec<MailItem> {
    store
        .list_items(m.id, None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.value)
        .collect()
}

async fn start(store: &Store, config: LmtpConfig) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, store.clone(), config, stop.clone()));
    (addr, stop)
}

/// A fresh store on `backend`, with what keeps its database alive.
async fn open_store(backend: Backend) -> (Box<dyn std::any::Any>, Store) {
    let (guard, url) = match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("l.db").display());
            (Box::new(d) as Box<dyn std::any::Any>, url)
        }
        Backend::Postgres => {
            let db = TestEnv::from_env().pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db) as Box<dyn std::any::Any>, url)
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    (guard, store)
}

async fn run(backend: Backend) {
    let (_guard, store) = open_store(backend).await;
    let org = OrgId::new();
    let settings = EmailSettings::new(org);
    store.insert(&settings).await.unwrap();
    assign(&store, org, "router.test").await;
    let ann = router_mailbox(
        &store,
        org,
        &settings,
        "ann@router.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    let ben = router_mailbox(
        &store,
        org,
        &settings,
        "ben@router.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    let synced = router_mailbox(
        &store,
        org,
        &settings,
        "sam@router.test",
        IncomingMethod::ServerSideSync,
    )
    .await;

    let (addr, stop) = start(
        &store,
        LmtpConfig {
            hostname: "lmtp.test".into(),
            max_message_bytes: LIMIT,
            idle_timeout: Duration::from_secs(60),
            ..LmtpConfig::default()
        },
    )
    .await;
    let (mut c, greeting) = Client::connect(addr).await;
    assert!(greeting.starts_with("220 lmtp.test"), "{greeting}");
    let lhlo = c.cmd("LHLO mta.test").await;
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SIZE 65536",
    ] {
        assert!(lhlo.contains(ext), "{lhlo}");
    }

    // One pipelined transaction: two router mailboxes, an unknown address, and a mailbox
    // that syncs by IMAP instead of taking router mail.
    let original = b"Message-ID: <lmtp-1@router.test>\r\nFrom: Zed <zed@elsewhere.test>\r\nTo: ann@router.test, ben@router.test\r\nSubject: dots\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n. \r\nlast line\r\n".to_vec();
    c.send(b"MAIL FROM:<zed@elsewhere.test> BODY=8BITMIME SIZE=300\r\nRCPT TO:<Ann@Router.test>\r\nRCPT TO:<nobody@router.test>\r\nRCPT TO:<ben@router.test>\r\nRCPT TO:<sam@router.test>\r\nDATA\r\n").await;
    assert!(c.reply().await.starts_with("250 2.1.0"));
    assert!(c.reply().await.starts_with("250 2.1.5"));
    let unknown = c.reply().await;
    assert!(
        unknown.starts_with("550 5.1.1") && unknown.contains("nobody@router.test"),
        "{unknown}"
    );
    assert!(c.reply().await.starts_with("250 2.1.5"));
    let not_router = c.reply().await;
    assert!(
        not_router.starts_with("550 5.2.1") && not_router.contains("server_side_sync"),
        "{not_router}"
    );
    assert!(c.reply().await.starts_with("354"));
    c.send(&stuff(&original)).await;
    let (r1, r2) = (c.reply().await, c.reply().await);
    assert!(
        r1.starts_with("250 2.0.0 <Ann@Router.test>"),
        "one reply per accepted recipient, in order: {r1}"
    );
    assert!(r2.starts_with("250 2.0.0 <ben@router.test>"), "{r2}");
    // Nothing more was sent: the next reply is NOOP's.
    assert!(c.cmd("NOOP").await.starts_with("250"));

    for m in [&ann, &ben] {
        let got = items(&store, m).await;
        assert_eq!(got.len(), 1, "one item for {}", m.email);
        let it = &got[0];
        assert_eq!(it.source, ItemSource::Router { via: "lmtp".into() });
        assert_eq!(it.decision, ItemDecision::Stored, "{:?}", it.trace);
        assert!(it.trace[0].contains("via lmtp"), "{:?}", it.trace);
        assert_eq!(it.message_id.as_deref(), Some("lmtp-1@router.test"));
        assert_eq!(
            store.get_blob(&it.raw_sha256).await.unwrap().as_deref(),
            Some(original.as_slice()),
            "dot-stuffing round-trips exactly"
        );
    }
    assert!(items(&store, &synced).await.is_empty());

    // The same message again (an MTA retrying after a lost reply): 250, kept once.
    c.send(b"MAIL FROM:<zed@elsewhere.test>\r\nRCPT TO:<ann@router.test>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        assert!(!c.reply().await.starts_with('5'));
    }
    c.send(&stuff(&original)).await;
    let dup = c.reply().await;
    assert!(
        dup.starts_with("250") && dup.contains("already delivered"),
        "{dup}"
    );
    assert_eq!(items(&store, &ann).await.len(), 1, "stored once");

    // Garbage gets 500-series replies and the connection stays usable.
    for (input, expect) in [
        (&b"FROB the widget\r\n"[..], "500 5.5.1"),
        (b"\x00\xff\xfe\r\n", "500 5.5.1"),
        (b"\r\n", "500 5.5.2"),
        (b"HELO mta.test\r\n", "500 5.5.1"),
        (b"RCPT TO:<ann@router.test>\r\n", "503 5.5.1"),
        (b"DATA\r\n", "503 5.5.1"),
        (b"MAIL FROM:zed@elsewhere.test\r\n", "501"),
        (b"MAIL FROM:<zed@elsewhere.test> FANCY=1\r\n", "555"),
        (b"RSET\r\n", "250"),
        (b"VRFY ann\r\n", "502"),
    ] {
        c.send(input).await;
        let r = c.reply().await;
        assert!(r.starts_with(expect), "{input:?}: {r}");
    }
    let mut long = vec![b'A'; 10_000];
    long.extend_from_slice(b"\r\n");
    c.send(&long).await;
    let r = c.reply().await;
    assert!(r.starts_with("500 5.5.2") && r.contains("too long"), "{r}");
    assert!(c.cmd("NOOP").await.starts_with("250 2.0.0"));

    // Too large: refused at MAIL when SIZE says so, per recipient after DATA otherwise.
    let r = c
        .cmd(&format!(
            "MAIL FROM:<zed@elsewhere.test> SIZE={}",
            LIMIT + 1
        ))
        .await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    c.send(b"MAIL FROM:<zed@elsewhere.test>\r\nRCPT TO:<ann@router.test>\r\nRCPT TO:<ben@router.test>\r\nDATA\r\n").await;
    for _ in 0..4 {
        assert!(!c.reply().await.starts_with('5'));
    }
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..2000 {
        big.extend_from_slice(&[b'x'; 78]);
        big.extend_from_slice(b"\r\n");
    }
    c.send(&stuff(&big)).await;
    for _ in 0..2 {
        let r = c.reply().await;
        assert!(r.starts_with("552 5.3.4") && r.contains("65536"), "{r}");
    }
    // One single endless line is bounded the same way.
    c.send(b"MAIL FROM:<>\r\nRCPT TO:<ann@router.test>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        assert!(!c.reply().await.starts_with('5'));
    }
    c.send(&vec![b'y'; 200_000]).await;
    c.send(b"\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("552 5.3.4"));
    assert_eq!(items(&store, &ann).await.len(), 1);
    assert_eq!(items(&store, &ben).await.len(), 1);
    assert!(c.cmd("QUIT").await.starts_with("221"));
    assert!(c.closed().await);

    // Shutdown: an idle client is told 421 and the listener stops.
    let (mut idle, _) = Client::connect(addr).await;
    assert!(idle.cmd("LHLO mta.test").await.starts_with("250"));
    stop.cancel();
    assert!(idle.reply().await.starts_with("421 4.3.2"));
    assert!(idle.closed().await);
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "the listener closes after shutdown");
    store.close().await;
}

#[tokio::test]
async fn lmtp_delivers_per_recipient_sqlite() {
    run(Backend::Sqlite).await
}

#[tokio::test]
async fn lmtp_delivers_per_recipient_postgres() {
    run(Backend::Postgres).await
}

/// Idle clients are disconnected, and connections beyond the limit are told 421.
#[tokio::test]
async fn lmtp_bounds_idle_clients_and_connections() {
    let d = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", d.path().join("l.db").display());
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let (addr, stop) = start(
        &store,
        LmtpConfig {
            max_connections: 1,
            idle_timeout: Duration::from_secs(2),
            ..LmtpConfig::default()
        },
    )
    .await;
    let (mut first, greeting) = Client::connect(addr).await;
    assert!(greeting.starts_with("220"));
    let (mut second, busy) = Client::connect(addr).await;
    assert!(busy.starts_with("421 4.3.2"), "{busy}");
    assert!(second.closed().await);
    // The first one says nothing: after the idle timeout it is told so and closed.
    let started = std::time::Instant::now();
    let r = first.reply().await;
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(first.closed().await);
    // Its slot is free again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_c, g) = Client::connect(addr).await;
        if g.starts_with("220") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot freed: {g}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
}

/// A store failure after the recipients were accepted: 451 per recipient (the MTA keeps the
/// message and retries), and the connection answers on.
#[tokio::test]
async fn lmtp_defers_when_the_store_fails() {
    let d = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", d.path().join("l.db").display());
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let org = OrgId::new();
    let settings = EmailSettings::new(org);
    store.insert(&settings).await.unwrap();
    assign(&store, org, "router.test").await;
    router_mailbox(
        &store,
        org,
        &settings,
        "ann@router.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    let (addr, stop) = start(&store, LmtpConfig::default()).await;
    let (mut c, _) = Client::connect(addr).await;
    assert!(c.cmd("LHLO mta.test").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<zed@elsewhere.test>")
            .await
            .starts_with("250")
    );
    assert!(c.cmd("RCPT TO:<ann@router.test>").await.starts_with("250"));
    assert!(c.cmd("DATA").await.starts_with("354"));
    // The database goes away before the message is complete.
    store.close().await;
    c.send(b"Subject: lost?\r\n\r\nno\r\n.\r\n").await;
    let r = c.reply().await;
    assert!(
        r.starts_with("451 4.3.0 <ann@router.test>") && r.contains("try again later"),
        "{r}"
    );
    let r = c.cmd("MAIL FROM:<zed@elsewhere.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<ann@router.test>").await;
    assert!(
        r.starts_with("451 4.3.0"),
        "a lookup failure is temporary too: {r}"
    );
    stop.cancel();
}

/// Two organizations claim the same address (security issue #14, item 2). acme holds the
/// domain acme.test; evil has router mailboxes for ceo@acme.test (which acme has too) and
/// cfo@acme.test (which acme has not). The Email Router delivers ceo@ to acme only — evil's
/// claim neither receives it nor makes it bounce — refuses cfo@ (acme has no such mailbox),
/// and refuses an address whose domain no organization holds, saying why.
async fn two_organizations(backend: Backend) {
    let (_guard, store) = open_store(backend).await;
    let (acme, evil) = (OrgId::new(), OrgId::new());
    let (acme_settings, evil_settings) = (EmailSettings::new(acme), EmailSettings::new(evil));
    store.insert(&acme_settings).await.unwrap();
    store.insert(&evil_settings).await.unwrap();
    // evil's mailboxes are older: a lookup across organizations would meet them first.
    let evil_ceo = router_mailbox(
        &store,
        evil,
        &evil_settings,
        "ceo@acme.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    let evil_cfo = router_mailbox(
        &store,
        evil,
        &evil_settings,
        "cfo@acme.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    let acme_ceo = router_mailbox(
        &store,
        acme,
        &acme_settings,
        "ceo@acme.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    assign(&store, acme, "acme.test").await;
    router_mailbox(
        &store,
        evil,
        &evil_settings,
        "ann@nowhere.test",
        IncomingMethod::EmailRouter,
    )
    .await;

    let (addr, stop) = start(&store, LmtpConfig::default()).await;
    let (mut c, _) = Client::connect(addr).await;
    assert!(c.cmd("LHLO mta.test").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<zed@elsewhere.test>")
            .await
            .starts_with("250")
    );
    let ceo = c.cmd("RCPT TO:<CEO@acme.test>").await;
    assert!(
        ceo.starts_with("250 2.1.5"),
        "acme's mail is not bounced: {ceo}"
    );
    let cfo = c.cmd("RCPT TO:<cfo@acme.test>").await;
    assert!(
        cfo.starts_with("550 5.1.1"),
        "evil gets nothing in acme's domain: {cfo}"
    );
    let nowhere = c.cmd("RCPT TO:<ann@nowhere.test>").await;
    assert!(
        nowhere.starts_with("550 5.1.2") && nowhere.contains("not assigned"),
        "{nowhere}"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&stuff(
        b"Message-ID: <board@acme.test>\r\nSubject: board minutes\r\n\r\nconfidential\r\n",
    ))
    .await;
    let done = c.reply().await;
    assert!(done.starts_with("250 2.0.0 <CEO@acme.test>"), "{done}");
    assert!(c.cmd("QUIT").await.starts_with("221"));
    stop.cancel();

    assert_eq!(items(&store, &acme_ceo).await.len(), 1, "delivered to acme");
    assert!(items(&store, &evil_ceo).await.is_empty(), "never to evil");
    assert!(items(&store, &evil_cfo).await.is_empty());
}

#[tokio::test]
async fn lmtp_delivers_only_to_the_organization_holding_the_domain_sqlite() {
    two_organizations(Backend::Sqlite).await
}

#[tokio::test]
async fn lmtp_delivers_only_to_the_organization_holding_the_domain_postgres() {
    two_organizations(Backend::Postgres).await
}

/// Sends LHLO, MAIL and one RCPT per address, then DATA, and checks the replies.
async fn open_data(c: &mut Client, to: &[&str]) {
    assert!(c.cmd("LHLO mta.test").await.starts_with("250"));
    assert!(
        c.cmd("MAIL FROM:<zed@elsewhere.test>")
            .await
            .starts_with("250")
    );
    for a in to {
        let r = c.cmd(&format!("RCPT TO:<{a}>")).await;
        assert!(r.starts_with("250"), "{r}");
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
}

/// Sizes of the files this process has open in `dir` (the spool's temporary files have no
/// name left, but /proc still shows where they are and how large).
fn open_files_in(dir: &std::path::Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for e in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir))
            && let Ok(m) = std::fs::metadata(e.path())
        {
            sizes.push(m.len());
        }
    }
    sizes
}

/// Many large deliveries at once: above the spool threshold each message goes to a temporary
/// file while it arrives (the bytes are on disk, not in memory), every one is stored exactly
/// as sent, and the files are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lmtp_spools_large_messages_to_temporary_files() {
    const CLIENTS: usize = 6;
    const BODY: usize = 1 << 20;
    let (_d, store) = open_store(Backend::Sqlite).await;
    let org = OrgId::new();
    let settings = EmailSettings::new(org);
    store.insert(&settings).await.unwrap();
    assign(&store, org, "router.test").await;
    let ann = router_mailbox(
        &store,
        org,
        &settings,
        "ann@router.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().canonicalize().unwrap();
    let config = LmtpConfig {
        max_message_bytes: 8 << 20,
        spool_threshold_bytes: 64 * 1024,
        spool_dir: spool_dir.clone(),
        ..LmtpConfig::default()
    };
    let (stats, memory) = (config.stats.clone(), config.memory.clone());
    let (addr, stop) = start(&store, config).await;

    let mut clients = Vec::new();
    let mut messages = Vec::new();
    for i in 0..CLIENTS {
        let (mut c, _) = Client::connect(addr).await;
        open_data(&mut c, &["ann@router.test"]).await;
        let mut m = format!(
            "Message-ID: <big-{i}@router.test>\r\nFrom: zed@elsewhere.test\r\nTo: ann@router.test\r\nSubject: big {i}\r\n\r\n"
        )
        .into_bytes();
        while m.len() < BODY {
            m.extend_from_slice(format!("{i:02} {}\r\n", "z".repeat(72)).as_bytes());
        }
        // All but the end: the server has the message in progress.
        c.send(&stuff(&m)[..m.len()]).await;
        clients.push(c);
        messages.push(m);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let files = open_files_in(&spool_dir);
        if files.len() == CLIENTS && files.iter().all(|&n| n >= BODY as u64) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every message in progress is in a temporary file in the spool directory: {files:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stats.spooling_now(), CLIENTS);
    assert_eq!(memory.in_use(), 0, "nothing is held for processing yet");

    for (c, m) in clients.iter_mut().zip(&messages) {
        c.send(&stuff(m)[m.len()..]).await;
    }
    for c in &mut clients {
        let r = c.reply().await;
        assert!(r.starts_with("250 2.0.0 <ann@router.test>"), "{r}");
    }
    let got = items(&store, &ann).await;
    assert_eq!(got.len(), CLIENTS);
    for m in &messages {
        let sha = serversync_vault::sha256_hex(m);
        let it = got
            .iter()
            .find(|i| i.raw_sha256 == sha)
            .expect("stored exactly as sent");
        assert_eq!(it.decision, ItemDecision::Stored, "{:?}", it.trace);
        assert_eq!(
            store.get_blob(&sha).await.unwrap().as_deref(),
            Some(m.as_slice())
        );
    }
    assert_eq!(stats.messages_spooled(), CLIENTS as u64);
    assert_eq!(stats.spooling_now(), 0);
    assert!(
        open_files_in(&spool_dir).is_empty(),
        "temporary files closed"
    );
    assert_eq!(memory.in_use(), 0, "the memory reserved was given back");
    stop.cancel();
}

/// While the memory budget for messages in progress is taken (by other deliveries), a further
/// message is not read into memory: its recipients get 452 and the MTA retries later; once
/// there is room, the same message is delivered.
#[tokio::test]
async fn lmtp_defers_when_the_memory_budget_is_full() {
    let (_d, store) = open_store(Backend::Sqlite).await;
    let org = OrgId::new();
    let settings = EmailSettings::new(org);
    store.insert(&settings).await.unwrap();
    assign(&store, org, "router.test").await;
    let ann = router_mailbox(
        &store,
        org,
        &settings,
        "ann@router.test",
        IncomingMethod::EmailRouter,
    )
    .await;
    let config = LmtpConfig {
        memory: serversync_engine::lmtp::MemoryBudget::new(1 << 20),
        memory_wait: Duration::ZERO,
        ..LmtpConfig::default()
    };
    let (stats, memory) = (config.stats.clone(), config.memory.clone());
    let (addr, stop) = start(&store, config).await;
    let others = memory.try_reserve(1 << 20).expect("the whole budget");
    assert_eq!(memory.in_use(), memory.limit());

    let message = b"Message-ID: <budget@router.test>\r\nSubject: wait\r\n\r\nhello\r\n";
    let (mut c, _) = Client::connect(addr).await;
    open_data(&mut c, &["ann@router.test", "ann@router.test"]).await;
    c.send(&stuff(message)).await;
    for _ in 0..2 {
        let r = c.reply().await;
        assert!(
            r.starts_with("452 4.3.1 <ann@router.test>") && r.contains("try again later"),
            "{r}"
        );
    }
    assert!(items(&store, &ann).await.is_empty());
    assert_eq!(stats.deferred_for_memory(), 1);
    assert_eq!(stats.messages_parsed(), 0, "not read into memory");

    drop(others);
    c.send(b"MAIL FROM:<zed@elsewhere.test>\r\nRCPT TO:<ann@router.test>\r\nDATA\r\n")
        .await;
    for _ in 0..3 {
        assert!(!c.reply().await.starts_with('4'));
    }
    c.send(&stuff(message)).await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(items(&store, &ann).await.len(), 1);
    stop.cancel();
}

/// A message for several recipients is parsed once; each recipient gets its own item with the
/// same content.
#[tokio::test]
async fn lmtp_parses_a_message_once_for_all_recipients() {
    let (_d, store) = open_store(Backend::Sqlite).await;
    let org = OrgId::new();
    let settings = EmailSettings::new(org);
    store.insert(&settings).await.unwrap();
    assign(&store, org, "router.test").await;
    let mut boxes = Vec::new();
    for name in ["ann", "ben", "cal"] {
        boxes.push(
            router_mailbox(
                &store,
                org,
                &settings,
                &format!("{name}@router.test"),
                IncomingMethod::EmailRouter,
            )
            .await,
        );
    }
    let config = LmtpConfig::default();
    let stats = config.stats.clone();
    let (addr, stop) = start(&store, config).await;
    let message = b"Message-ID: <once@router.test>\r\nFrom: zed@elsewhere.test\r\nTo: ann@router.test, ben@router.test, cal@router.test\r\nSubject: once\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nthe body\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQFBgcICQ==\r\n--b--\r\n";
    let (mut c, _) = Client::connect(addr).await;
    open_data(
        &mut c,
        &["ann@router.test", "ben@router.test", "cal@router.test"],
    )
    .await;
    c.send(&stuff(message)).await;
    for _ in 0..3 {
        let r = c.reply().await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
    }
    assert_eq!(
        stats.messages_parsed(),
        1,
        "parsed once for three recipients"
    );
    let mut got = Vec::new();
    for m in &boxes {
        let mut i = items(&store, m).await;
        assert_eq!(i.len(), 1, "one item for {}", m.email);
        got.push(i.remove(0));
    }
    let first = &got[0];
    assert_eq!(first.attachments.len(), 1);
    assert_eq!(first.text_body.as_deref().map(str::trim), Some("the body"));
    for it in &got[1..] {
        assert_ne!(it.id, first.id);
        assert_eq!(it.raw_sha256, first.raw_sha256);
        assert_eq!(it.subject, first.subject);
        assert_eq!(it.message_id, first.message_id);
        assert_eq!(it.text_body, first.text_body);
        assert_eq!(it.attachments, first.attachments);
    }
    assert_eq!(
        store
            .get_blob(&first.attachments[0].sha256)
            .await
            .unwrap()
            .as_deref(),
        Some(&[0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9][..])
    );
    stop.cancel();
}
