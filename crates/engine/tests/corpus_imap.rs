//! The seeded corpus (`serversync_testkit::corpus`) synchronized over IMAP from a private
//! Dovecot, on SQLite and PostgreSQL: every message accounted for once, with the expected
//! decision and reason, and none of them marked read on the server.

mod common;
mod corpus_check;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_model::Secret;
use serversync_model::item::{ItemSource, MailItem};
use serversync_model::profile::Endpoint;
use serversync_store::Backend;
use serversync_testkit::corpus::corpus;
use serversync_testkit::{Dovecot, TEST_PASSWORD};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const CAROL: &str = "carol@example.test";

async fn run(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-corpus-imap")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let port = dovecot.info().imap_port;
    let corpus = corpus();
    let uids = corpus_check::append_corpus(port, CAROL, &corpus).await;

    let (_db, store) = corpus_check::open_store(backend).await;
    let m = common::imap_mailbox(
        &store,
        Endpoint {
            location: "127.0.0.1".into(),
            port,
            tls: TlsMode::None,
        },
        CAROL,
        TEST_PASSWORD,
    )
    .await;
    corpus_check::configure(&store, m.id).await;

    let config = corpus_check::engine_config();
    let items = corpus_check::sync_until(&store, &config, m.id, "the corpus over IMAP", |items| {
        items.len() >= corpus.len()
    })
    .await;

    // Each item maps to the corpus message APPENDed under its UID; none twice.
    let name_of: HashMap<u32, &str> = uids
        .iter()
        .copied()
        .zip(corpus.iter().map(|(n, _)| *n))
        .collect();
    let mut by_name: HashMap<&str, MailItem> = HashMap::new();
    for it in items {
        let ItemSource::Imap { folder, uid, .. } = &it.source else {
            panic!("an IMAP item: {:?}", it.source)
        };
        assert_eq!(folder, "INBOX");
        let name = name_of
            .get(uid)
            .unwrap_or_else(|| panic!("item for an unknown UID {uid}"));
        assert!(by_name.insert(name, it).is_none(), "{name} recorded twice");
    }
    let keys: HashSet<&str> = by_name.values().map(|i| i.source_key.as_str()).collect();
    assert_eq!(keys.len(), corpus.len());
    corpus_check::check(&store, &corpus, &by_name).await;

    // Nothing was marked read on the server, and nothing removed.
    let mut imap = SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(CAROL, Secret::new(TEST_PASSWORD)),
        &ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    imap.examine("INBOX", false).await.unwrap();
    let meta = imap.uid_list(1).await.unwrap();
    assert_eq!(
        meta.len(),
        corpus.len(),
        "every message still on the server"
    );
    for x in &meta {
        assert!(
            !x.has_flag("\\Seen"),
            "{} was marked read: {:?}",
            name_of[&x.uid],
            x.flags
        );
    }
    let _ = imap.logout().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_over_imap_sqlite() {
    run(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_over_imap_postgres() {
    run(Backend::Postgres).await
}
