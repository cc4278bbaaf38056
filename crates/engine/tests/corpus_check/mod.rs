//! What the engine must make of each message of the seeded corpus
//! (`serversync_testkit::corpus`), shared by the intake, IMAP and POP3 corpus tests. The
//! mailbox is expected to have the corpus's attachment limit and a "process email from" date
//! within the last 30 days.

#![allow(dead_code)]

use serversync_model::item::{ItemDecision, MailItem};
use serversync_store::Store;
use serversync_testkit::corpus::message_id;
use std::collections::HashMap;

/// The decision each corpus message gets.
pub fn expected(name: &str) -> ItemDecision {
    match name {
        "too-old" => ItemDecision::Skipped,
        "no-headers-at-all" => ItemDecision::Failed,
        _ => ItemDecision::Stored,
    }
}

/// Corpus messages without a Message-ID.
pub fn has_message_id(name: &str) -> bool {
    !matches!(name, "no-headers-at-all" | "binary-garbage")
}

/// Asserts that `items` (by corpus name) hold exactly what a user should find for each corpus
/// message: its decision with a reason, its header fields and bodies decoded, attachments kept
/// or dropped per the limit, and unreadable mail kept raw.
pub async fn check(store: &Store, corpus: &[(&str, Vec<u8>)], items: &HashMap<&str, MailItem>) {
    assert_eq!(items.len(), corpus.len(), "every message accounted for");
    for (name, _) in corpus {
        let it = items.get(name).unwrap_or_else(|| panic!("{name}: no item"));
        assert_eq!(it.decision, expected(name), "{name}: {:?}", it.trace);
        assert!(!it.trace.is_empty(), "{name}: every item says why");
        if has_message_id(name) {
            assert_eq!(it.message_id, Some(message_id(name)), "{name}");
        }
    }
    let raw = |n: &str| &corpus.iter().find(|(name, _)| *name == n).unwrap().1;
    let body = |n: &str| {
        items[n]
            .text_body
            .as_deref()
            .map(str::trim)
            .map(str::to_owned)
    };
    assert_eq!(items["plain"].subject.as_deref(), Some("Hello"));
    assert_eq!(items["plain"].from.as_deref(), Some("ann@example.test"));
    assert_eq!(
        store
            .get_blob(&items["plain"].raw_sha256)
            .await
            .unwrap()
            .as_ref(),
        Some(raw("plain")),
        "the raw message is kept as received"
    );
    assert_eq!(items["reply"].in_reply_to, Some(message_id("plain")));
    assert_eq!(items["reply"].references, [message_id("plain")]);
    assert_eq!(
        items["encoded-words"].subject.as_deref(),
        Some("Привет und Grüße")
    );
    assert_eq!(body("iso-8859-1").as_deref(), Some("Grüße aus Köln"));
    assert_eq!(body("windows-1252").as_deref(), Some("Café € 10"));
    assert_eq!(items["shift-jis"].subject.as_deref(), Some("見積もり"));
    assert_eq!(body("shift-jis").as_deref(), Some("こんにちは"));
    assert_eq!(items["iso-2022-jp"].subject.as_deref(), Some("こんにちは"));
    assert_eq!(body("iso-2022-jp").as_deref(), Some("こんにちは"));

    let att = &items["attachments"];
    assert_eq!(att.attachments.len(), 2, "{:?}", att.attachments);
    let small = att
        .attachments
        .iter()
        .find(|a| a.file_name.as_deref() == Some("small.pdf"))
        .unwrap();
    assert_eq!(
        store.get_blob(&small.sha256).await.unwrap().as_deref(),
        Some(&b"%PDF-1.4\n"[..])
    );
    let big = att
        .attachments
        .iter()
        .find(|a| a.file_name.as_deref() == Some("big.bin"))
        .unwrap();
    assert!(
        big.dropped_reason
            .as_deref()
            .is_some_and(|r| r.contains("attachment size limit")),
        "{big:?}"
    );
    assert!(
        store.get_blob(&big.sha256).await.unwrap().is_none(),
        "bytes above the limit are dropped"
    );
    assert!(!att.raw_kept);

    assert!(items["broken-mime"].trace.iter().any(|t| t == "stored"));
    assert_eq!(
        items["no-separator"].subject.as_deref(),
        Some("no separator")
    );
    assert!(
        items["too-old"]
            .trace
            .iter()
            .any(|t| t.contains("before the \"process email from\" date")),
        "{:?}",
        items["too-old"].trace
    );
    let failed = &items["no-headers-at-all"];
    assert!(
        failed.trace[0].starts_with("failed: cannot be parsed"),
        "{failed:?}"
    );
    assert!(failed.raw_kept);
    assert_eq!(
        store.get_blob(&failed.raw_sha256).await.unwrap().as_ref(),
        Some(raw("no-headers-at-all")),
        "malformed mail is kept raw"
    );
    let garbage = &items["binary-garbage"];
    assert_eq!(
        store.get_blob(&garbage.raw_sha256).await.unwrap().as_ref(),
        Some(raw("binary-garbage")),
        "garbage is kept byte for byte"
    );
}

/// A fresh store on `backend`, and what keeps its database alive.
pub async fn open_store(
    backend: serversync_store::Backend,
) -> (Box<dyn std::any::Any + Send>, Store) {
    let (guard, url): (Box<dyn std::any::Any + Send>, String) = match backend {
        serversync_store::Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("c.db").display());
            (Box::new(d), url)
        }
        serversync_store::Backend::Postgres => {
            let db = serversync_testkit::TestEnv::from_env()
                .pg_database()
                .await
                .unwrap();
            let url = db.url().to_owned();
            (Box::new(db), url)
        }
    };
    let store = Store::open(&url, serversync_vault::MasterKey::generate().unwrap())
        .await
        .unwrap();
    (guard, store)
}

/// Gives the mailbox's organization the corpus's attachment limit and the mailbox a
/// "process email from" date 30 days back.
pub async fn configure(store: &Store, mailbox: serversync_model::MailboxId) {
    use serversync_model::mailbox::Mailbox;
    use serversync_model::settings::EmailSettings;
    let mut m = store
        .fetch::<Mailbox>(&mailbox.to_string())
        .await
        .unwrap()
        .value;
    m.process_email_from = Some(chrono::Utc::now() - chrono::Duration::days(30));
    store.update(&m, None).await.unwrap();
    let mut s = store
        .fetch::<EmailSettings>(&m.org_id.to_string())
        .await
        .unwrap()
        .value;
    s.max_attachment_kb = serversync_testkit::corpus::ATTACHMENT_LIMIT_KB;
    store.update(&s, None).await.unwrap();
}

/// APPENDs the corpus to `user`'s INBOX on a plain-text IMAP port, unflagged (`too-old` with
/// an INTERNALDATE in 2001); returns each message's UID, in corpus order.
pub async fn append_corpus(port: u16, user: &str, corpus: &[(&str, Vec<u8>)]) -> Vec<u32> {
    use serversync_connectors::imap::sync::{InternalDate, SyncSession};
    use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
    let mut s = SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(
            user,
            serversync_model::Secret::new(serversync_testkit::TEST_PASSWORD),
        ),
        &ConnectOptions::new(std::sync::Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    let mut uids = Vec::new();
    for (name, raw) in corpus {
        let date = (*name == "too-old").then_some(InternalDate {
            timestamp: 978_307_205, // 2001-01-01T00:00:05Z
            offset_minutes: 0,
        });
        let uid = s
            .append("INBOX", &[], date, raw)
            .await
            .unwrap_or_else(|e| panic!("APPEND {name}: {e}"))
            .expect("Dovecot answers APPENDUID");
        uids.push(uid.uid);
    }
    let _ = s.logout().await;
    uids
}

/// Runs an engine until `done` holds for the mailbox's items (60 s at most), then stops it.
pub async fn sync_until(
    store: &Store,
    config: &serversync_engine::EngineConfig,
    mailbox: serversync_model::MailboxId,
    what: &str,
    done: impl Fn(&[MailItem]) -> bool,
) -> Vec<MailItem> {
    use std::time::{Duration, Instant};
    let engine = serversync_engine::Engine::new(store.clone(), config.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let items = loop {
        let mut items: Vec<MailItem> = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .list_items(mailbox, after.as_deref(), 1000)
                .await
                .unwrap();
            items.extend(page.items.into_iter().map(|s| s.value));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        if done(&items) {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not there within 60 s ({} items; mailbox {:?})",
            items.len(),
            store
                .fetch::<serversync_model::mailbox::Mailbox>(&mailbox.to_string())
                .await
                .unwrap()
                .value
                .telemetry
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("the engine stops within 20 s")
        .unwrap();
    items
}

/// The engine settings the corpus tests run with: fast ticks and a short lease.
pub fn engine_config() -> serversync_engine::EngineConfig {
    use std::time::Duration;
    serversync_engine::EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..serversync_engine::EngineConfig::new(std::sync::Arc::new(
            serversync_connectors::TlsTrust::system_only().unwrap(),
        ))
    }
}
