//! The seeded corpus (`serversync_testkit::corpus`) synchronized over POP3 from a private
//! Dovecot, on SQLite and PostgreSQL: every message accounted for once — also after the engine
//! restarts and reads the maildrop again — the mail stays on the server, and "sync now" starts
//! a round without waiting for the poll interval. A forward mailbox with "delete after
//! processing" gets what it stored deleted from the server, and keeps what it skipped there.

mod common;
mod corpus_check;

use serversync_connectors::pop3::Client;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::Engine;
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::{EmailServerProfile, Endpoint, IncomingProtocol, ServerType};
use serversync_model::{MailboxId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::corpus::{corpus, message_id};
use serversync_testkit::{Dovecot, TEST_PASSWORD};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CAROL: &str = "carol@example.test";

async fn pop3(port: u16) -> Client {
    let mut c = Client::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    c.login(&Login::password(CAROL, Secret::new(TEST_PASSWORD)))
        .await
        .unwrap();
    c
}

/// The maildrop's UIDLs, in message-number order (= the order the messages were appended).
async fn uidls(port: u16) -> Vec<String> {
    let mut c = pop3(port).await;
    let l = c.uidl().await.unwrap();
    c.quit().await.unwrap();
    l.into_iter().map(|l| l.uid).collect()
}

async fn stat_count(port: u16) -> u32 {
    let mut c = pop3(port).await;
    let n = c.stat().await.unwrap().count;
    c.quit().await.unwrap();
    n
}

/// A mailbox for carol on the private Dovecot's POP3 port (a POP3/SMTP profile), configured
/// for the corpus.
async fn pop3_mailbox(store: &Store, dovecot: &Dovecot) -> Mailbox {
    let m = common::imap_mailbox(
        store,
        Endpoint {
            location: "127.0.0.1".into(),
            port: dovecot.info().imap_port,
            tls: TlsMode::None,
        },
        CAROL,
        TEST_PASSWORD,
    )
    .await;
    let mut p = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap()
        .value;
    p.server_type = ServerType::Pop3Smtp;
    p.incoming_protocol = IncomingProtocol::Pop3;
    p.incoming = Some(Endpoint {
        location: "127.0.0.1".into(),
        port: dovecot.info().pop3_port,
        tls: TlsMode::None,
    });
    p.validate(false).expect("a valid POP3/SMTP profile");
    store.update(&p, None).await.unwrap();
    corpus_check::configure(store, m.id).await;
    m
}

async fn items(store: &Store, mailbox: MailboxId) -> Vec<MailItem> {
    store
        .list_items(mailbox, None, 1000)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.value)
        .collect()
}

fn uidl_of(it: &MailItem) -> &str {
    match &it.source {
        ItemSource::Pop3 { uidl } => uidl,
        other => panic!("a POP3 item: {other:?}"),
    }
}

/// Maps items to corpus names by UIDL; panics on an item recorded twice.
fn by_name<'a>(
    uidls: &[String],
    corpus: &[(&'a str, Vec<u8>)],
    items: Vec<MailItem>,
) -> HashMap<&'a str, MailItem> {
    let name_of: HashMap<&str, &str> = uidls
        .iter()
        .map(String::as_str)
        .zip(corpus.iter().map(|(n, _)| *n))
        .collect();
    let mut out = HashMap::new();
    for it in items {
        let name = *name_of
            .get(uidl_of(&it))
            .unwrap_or_else(|| panic!("item for an unknown UIDL {}", uidl_of(&it)));
        assert!(out.insert(name, it).is_none(), "{name} recorded twice");
    }
    out
}

/// Polls `check` every 50 ms until it holds, for at most `secs` seconds.
async fn eventually<F, Fut>(secs: u64, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn extra(name: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{}>\r\nFrom: ann@example.test\r\nTo: {CAROL}\r\nSubject: {name}\r\nDate: {}\r\n\r\n{name}\r\n",
        message_id(name),
        chrono::Utc::now().to_rfc2822()
    )
    .into_bytes()
}

async fn non_destructive(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-corpus-pop3")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let (imap_port, pop3_port) = (dovecot.info().imap_port, dovecot.info().pop3_port);
    let corpus = corpus();
    corpus_check::append_corpus(imap_port, CAROL, &corpus).await;
    let listed = uidls(pop3_port).await;
    assert_eq!(listed.len(), corpus.len());

    let (_db, store) = corpus_check::open_store(backend).await;
    let m = pop3_mailbox(&store, &dovecot).await;
    let config = corpus_check::engine_config();

    // First round.
    let got = corpus_check::sync_until(&store, &config, m.id, "the corpus over POP3", |items| {
        items.len() >= corpus.len()
    })
    .await;
    corpus_check::check(&store, &corpus, &by_name(&listed, &corpus, got)).await;
    assert_eq!(
        stat_count(pop3_port).await as usize,
        corpus.len(),
        "the mail is still on the server"
    );

    // A restarted engine reads the maildrop again: only the one new message is taken in.
    corpus_check::append_corpus(
        imap_port,
        CAROL,
        &[("after-restart", extra("after-restart"))],
    )
    .await;
    let engine = Engine::new(store.clone(), config.clone());
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    let has = |mid: String| {
        let store = store.clone();
        move || {
            let (store, mid) = (store.clone(), mid.clone());
            async move {
                items(&store, m.id)
                    .await
                    .iter()
                    .any(|i| i.message_id.as_deref() == Some(mid.as_str()))
            }
        }
    };
    eventually(
        60,
        "the message appended before the restart",
        has(message_id("after-restart")),
    )
    .await;

    // "Sync now" starts a round at once, not after the 60 s poll interval.
    corpus_check::append_corpus(imap_port, CAROL, &[("sync-now", extra("sync-now"))]).await;
    let mut mb = store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    mb.telemetry.sync_requested_at = Some(chrono::Utc::now());
    store.update(&mb, None).await.unwrap();
    let asked = Instant::now();
    eventually(
        30,
        "the message after sync now",
        has(message_id("sync-now")),
    )
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "picked up by sync now, not by the poll: {:?}",
        asked.elapsed()
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the engine stops within 20 s")
        .unwrap();

    let all = items(&store, m.id).await;
    assert_eq!(all.len(), corpus.len() + 2, "nothing taken in twice");
    let mut keys: Vec<&str> = all.iter().map(|i| i.source_key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), all.len());
    assert_eq!(
        stat_count(pop3_port).await as usize,
        corpus.len() + 2,
        "nothing deleted from the server"
    );
    let after = store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(after.telemetry.items_processed, corpus.len() as u64 + 2);
    assert!(after.telemetry.last_successful_sync.is_some());
}

async fn delete_after_processing(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-pop3-dele")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let (imap_port, pop3_port) = (dovecot.info().imap_port, dovecot.info().pop3_port);
    let corpus = corpus();
    corpus_check::append_corpus(imap_port, CAROL, &corpus).await;
    let listed = uidls(pop3_port).await;

    let (_db, store) = corpus_check::open_store(backend).await;
    let m = pop3_mailbox(&store, &dovecot).await;
    let mut mb = store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    mb.is_forward_mailbox = true;
    mb.delete_after_processing = true;
    mb.validate()
        .expect("a forward mailbox may delete after processing");
    store.update(&mb, None).await.unwrap();

    let engine = Engine::new(store.clone(), corpus_check::engine_config());
    let stop = CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    // Only what was skipped (before the "process email from" date) stays on the server.
    let skipped = corpus
        .iter()
        .filter(|(n, _)| corpus_check::expected(n) == ItemDecision::Skipped)
        .count();
    eventually(60, "stored mail deleted from the server", || async {
        items(&store, m.id).await.len() == corpus.len()
            && stat_count(pop3_port).await as usize <= skipped
    })
    .await;
    assert_eq!(
        stat_count(pop3_port).await as usize,
        skipped,
        "skipped mail is never deleted"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the engine stops within 20 s")
        .unwrap();

    let got = items(&store, m.id).await;
    corpus_check::check(&store, &corpus, &by_name(&listed, &corpus, got)).await;
    let left = uidls(pop3_port).await;
    let too_old = corpus.iter().position(|(n, _)| *n == "too-old").unwrap();
    assert_eq!(left, [listed[too_old].clone()], "the skipped message stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_over_pop3_sqlite() {
    non_destructive(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_over_pop3_postgres() {
    non_destructive(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_processing_sqlite() {
    delete_after_processing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_after_processing_postgres() {
    delete_after_processing(Backend::Postgres).await
}
