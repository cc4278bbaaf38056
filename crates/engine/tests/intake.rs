//! The intake pipeline over a corpus of real-world message shapes, on SQLite and PostgreSQL:
//! every message is accounted for — stored, skipped or failed, each with its reason — and
//! nothing is stored twice.

use serversync_engine::intake::{IntakeOutcome, take_in};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::settings::EmailSettings;
use serversync_model::{OrgId, UserId};
use serversync_store::{Backend, Store};
use serversync_testkit::TestEnv;
use serversync_vault::MasterKey;

fn msg(headers: &str, body: &str) -> Vec<u8> {
    format!("{headers}\r\n\r\n{body}").into_bytes()
}

/// (name, raw message, expected decision)
fn corpus() -> Vec<(&'static str, Vec<u8>, ItemDecision)> {
    let big = "QUFB".repeat(1024); // 3 KB of base64 → 3 KB attachment, over a 2 KB limit
    let mut v = vec![
        (
            "plain",
            msg(
                "Message-ID: <plain@example.test>\r\nFrom: Ann <ann@example.test>\r\nTo: bob@example.test\r\nSubject: Hello\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000",
                "Hi Bob",
            ),
            ItemDecision::Stored,
        ),
        (
            "reply",
            msg(
                "Message-ID: <reply@example.test>\r\nFrom: bob@example.test\r\nTo: ann@example.test\r\nSubject: Re: Hello\r\nIn-Reply-To: <plain@example.test>\r\nReferences: <plain@example.test>\r\nDate: Mon, 2 Nov 2026 10:00:00 +0000",
                "Hi Ann",
            ),
            ItemDecision::Stored,
        ),
        (
            "encoded-words",
            msg(
                "Message-ID: <enc@example.test>\r\nFrom: =?ISO-8859-1?Q?J=F6rg?= <joerg@example.test>\r\nTo: bob@example.test\r\nSubject: =?UTF-8?B?0J/RgNC40LLQtdGC?= =?ISO-8859-1?Q?_und_Gr=FC=DFe?=\r\nDate: Mon, 2 Nov 2026 11:00:00 +0000",
                "x",
            ),
            ItemDecision::Stored,
        ),
        (
            "windows-1252",
            {
                let mut m = b"Message-ID: <cp1252@example.test>\r\nFrom: a@example.test\r\nTo: b@example.test\r\nSubject: cp1252\r\nDate: Mon, 2 Nov 2026 12:00:00 +0000\r\nContent-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
                m.extend_from_slice(b"Caf\xe9 \x80 10\r\n");
                m
            },
            ItemDecision::Stored,
        ),
        (
            "iso-2022-jp",
            {
                let mut m = b"Message-ID: <jis@example.test>\r\nFrom: a@example.test\r\nTo: b@example.test\r\nSubject: =?ISO-2022-JP?B?GyRCJDMkcyRLJEEkTxsoQg==?=\r\nDate: Mon, 2 Nov 2026 12:30:00 +0000\r\nContent-Type: text/plain; charset=ISO-2022-JP\r\n\r\n".to_vec();
                m.extend_from_slice(b"\x1b$B$3$s$K$A$O\x1b(B\r\n");
                m
            },
            ItemDecision::Stored,
        ),
        (
            "attachments",
            msg(
                "Message-ID: <att@example.test>\r\nFrom: a@example.test\r\nTo: b@example.test\r\nSubject: files\r\nDate: Mon, 2 Nov 2026 13:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX",
                &format!(
                    "--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename=small.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XX\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=big.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n{big}\r\n--XX--\r\n"
                ),
            ),
            ItemDecision::Stored,
        ),
        (
            "broken-mime",
            msg(
                "Message-ID: <broken@example.test>\r\nFrom: a@example.test\r\nSubject: broken\r\nDate: Mon, 2 Nov 2026 14:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=NEVER",
                "--OTHER\r\nno closing boundary",
            ),
            ItemDecision::Stored,
        ),
        (
            "no-headers-at-all",
            b"\r\n\r\n   \r\n".to_vec(),
            ItemDecision::Failed,
        ),
        ("empty", Vec::new(), ItemDecision::Failed),
        (
            "too-old",
            msg(
                "Message-ID: <old@example.test>\r\nFrom: a@example.test\r\nSubject: old\r\nDate: Mon, 1 Jan 2001 00:00:00 +0000",
                "old",
            ),
            ItemDecision::Skipped,
        ),
    ];
    v.push((
        "binary-garbage",
        (0u8..=255).cycle().take(4096).collect(),
        ItemDecision::Stored,
    ));
    v
}

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
    settings.max_attachment_kb = 2;
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

    let corpus = corpus();
    for (i, (name, raw, expected)) in corpus.iter().enumerate() {
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
        assert_eq!(out.decision(), Some(*expected), "{name}: {out:?}");
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
    assert_eq!(items.len(), corpus.len(), "every message accounted for");
    let by_name = |n: &str| {
        let i = corpus.iter().position(|(name, ..)| *name == n).unwrap();
        items
            .iter()
            .find(|it| it.source_key == format!("imap:INBOX:7:{}", i + 1))
            .unwrap()
    };
    for it in &items {
        assert!(!it.trace.is_empty(), "every item says why: {it:?}");
    }
    assert_eq!(
        by_name("reply").in_reply_to.as_deref(),
        Some("plain@example.test")
    );
    assert_eq!(
        by_name("encoded-words").subject.as_deref(),
        Some("Привет und Grüße")
    );
    assert_eq!(
        by_name("windows-1252").text_body.as_deref().map(str::trim),
        Some("Café € 10")
    );
    assert_eq!(
        by_name("iso-2022-jp").subject.as_deref(),
        Some("こんにちは")
    );
    assert_eq!(
        by_name("iso-2022-jp").text_body.as_deref().map(str::trim),
        Some("こんにちは")
    );
    let att = by_name("attachments");
    assert_eq!(att.attachments.len(), 2);
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
            .unwrap()
            .contains("attachment size limit"),
        "{big:?}"
    );
    assert!(
        store.get_blob(&big.sha256).await.unwrap().is_none(),
        "bytes above the limit are dropped"
    );
    assert!(!att.raw_kept);
    assert!(by_name("broken-mime").trace.iter().any(|t| t == "stored"));
    for failed in ["no-headers-at-all", "empty"] {
        let it = by_name(failed);
        assert!(
            it.trace[0].starts_with("failed: cannot be parsed"),
            "{it:?}"
        );
        assert!(it.raw_kept);
        let raw = &corpus.iter().find(|(n, ..)| *n == failed).unwrap().1;
        assert_eq!(
            store.get_blob(&it.raw_sha256).await.unwrap().as_deref(),
            Some(raw.as_slice()),
            "malformed mail is kept raw"
        );
    }
    assert!(by_name("too-old").trace[0].contains("before the \"process email from\" date"));
    assert_eq!(
        store
            .get_blob(&by_name("plain").raw_sha256)
            .await
            .unwrap()
            .as_deref(),
        Some(corpus[0].1.as_slice())
    );

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
