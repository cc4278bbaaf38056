//! The intake pipeline over the seeded corpus of real-world message shapes
//! (`serversync_testkit::corpus`), on SQLite and PostgreSQL: every message is accounted for —
//! stored, skipped or failed, each with its reason — and nothing is stored twice.

mod corpus_check;

use serversync_engine::intake::{IntakeOutcome, take_in};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::settings::EmailSettings;
use serversync_model::{OrgId, UserId};
use serversync_store::{Backend, Store};
use serversync_testkit::TestEnv;
use serversync_testkit::corpus::{ATTACHMENT_LIMIT_KB, corpus};
use serversync_vault::MasterKey;
use std::collections::HashMap;

async fn run(backend: Backend) {
    let env = TestEnv::from_env();
    let (_guard, url) = match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("i.db").display());
            (Box::new(d) as Box<dyn std::any::Any>, url)
        }
        Backend::Postgres => {
            let db = env.pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db) as Box<dyn std::any::Any>, url)
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let org = OrgId::new();
    let mut settings = EmailSettings::new(org);
    settings.max_attachment_kb = ATTACHMENT_LIMIT_KB;
    let now = chrono::Utc::now();
    let mut mailbox = Mailbox::new_with_defaults(
        org,
        MailboxRegarding::User(UserId::new()),
        UserId::new(),
        "Bob",
        "bob@example.test",
        &settings,
        now,
    );
    mailbox.approval = ApprovalStatus::Approved;
    mailbox.process_email_from = Some(now - chrono::Duration::days(30));

    let mut corpus = corpus();
    // Not one a server would store, but one intake must survive.
    corpus.push(("empty", Vec::new()));
    for (i, (name, raw)) in corpus.iter().enumerate() {
        let received = if *name == "too-old" {
            now - chrono::Duration::days(365)
        } else {
            now
        };
        let source = ItemSource::Imap {
            folder: "INBOX".into(),
            uid_validity: 7,
            uid: i as u32 + 1,
        };
        let expected = match *name {
            "empty" => ItemDecision::Failed,
            n => corpus_check::expected(n),
        };
        let out = take_in(
            &store,
            &mailbox,
            &settings,
            None,
            source.clone(),
            raw,
            received,
        )
        .await
        .unwrap();
        assert_eq!(out.decision(), Some(expected), "{name}: {out:?}");
        // Fetched again after a crash: recorded once.
        assert_eq!(
            take_in(&store, &mailbox, &settings, None, source, raw, received)
                .await
                .unwrap(),
            IntakeOutcome::Duplicate,
            "{name}"
        );
    }

    let items: Vec<MailItem> = store
        .list_items(mailbox.id, None, 1000)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| s.value)
        .collect();
    let mut by_name: HashMap<&str, MailItem> = items
        .into_iter()
        .map(|it| {
            let uid = it.source_key.rsplit(':').next().unwrap();
            let i: usize = uid.parse().unwrap();
            (corpus[i - 1].0, it)
        })
        .collect();
    let empty = by_name.remove("empty").unwrap();
    assert!(
        empty.trace[0].starts_with("failed: cannot be parsed"),
        "{empty:?}"
    );
    corpus.pop();
    corpus_check::check(&store, &corpus, &by_name).await;

    // An unapproved mailbox: kept, skipped, and the reason says why.
    mailbox.approval = ApprovalStatus::PendingApproval;
    let out = take_in(
        &store,
        &mailbox,
        &settings,
        None,
        ItemSource::Router {
            via: "deliver".into(),
        },
        &corpus[0].1,
        now,
    )
    .await
    .unwrap();
    let IntakeOutcome::Recorded(it) = out else {
        panic!("recorded")
    };
    assert_eq!(it.decision, ItemDecision::Skipped);
    assert!(
        it.trace.last().unwrap().contains("not approved"),
        "{:?}",
        it.trace
    );
    // The router keys by content: the same message handed in again is kept once.
    let again = take_in(
        &store,
        &mailbox,
        &settings,
        None,
        ItemSource::Router { via: "lmtp".into() },
        &corpus[0].1,
        now,
    )
    .await
    .unwrap();
    assert_eq!(again, IntakeOutcome::Duplicate);
}

#[tokio::test]
async fn corpus_is_fully_accounted_for_sqlite() {
    run(Backend::Sqlite).await
}

#[tokio::test]
async fn corpus_is_fully_accounted_for_postgres() {
    run(Backend::Postgres).await
}
