//! Upgrading a database the previous release left (migrations up to 0018, rows written the way
//! that release wrote them: items and email activities with their bodies inline in their
//! documents, the whole trace in the item's document, every change row with a copy of its
//! record), on SQLite and PostgreSQL: after `Store::open` every item, activity, change and blob
//! reads back the same, and the bodies have moved into blobs (the documents are small). Also:
//! the data migration stopped after a batch leaves a readable database and resumes; run again
//! from the start it changes nothing.

use serversync_model::crm::{Direction, EmailActivity, EmailStatus};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::webhook::{ChangeOp, RecordType};
use serversync_model::{ActivityId, ItemId, MailboxId, OrgId, UserId, wire_name};
use serversync_store::{Backend, Store};
use serversync_testkit::execute_sql;
use serversync_vault::{MasterKey, sha256_hex};
use std::time::Duration;

mod common;
use common::Db;

macro_rules! both {
    ($name:ident, |$backend:ident, $url:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run($backend: Backend) {
                let db = Db::new($backend).await;
                let $url = db.url();
                $body
            }
            #[tokio::test]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }
            #[tokio::test]
            async fn postgres() {
                run(Backend::Postgres).await
            }
        }
    };
}

/// Runs SQL on the database behind the store's back; how many rows it touched.
async fn sql(url: &str, statement: &str) -> u64 {
    execute_sql(url, statement).await.unwrap()
}

/// How many rows of `table` match `cond` (counted by a no-op update, which both backends
/// report).
async fn count(url: &str, table: &str, set: &str, cond: &str) -> u64 {
    sql(
        url,
        &format!("UPDATE {table} SET {set} = {set} WHERE {cond}"),
    )
    .await
}

/// A SQL string literal.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn opt(s: Option<&str>) -> String {
    s.map_or("NULL".into(), q)
}

/// A SQL byte-string literal for the backend.
fn bytes(backend: Backend, b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    match backend {
        Backend::Sqlite => format!("X'{hex}'"),
        Backend::Postgres => format!("decode('{hex}', 'hex')"),
    }
}

/// A database as the previous release (migrations up to 0018) creates it.
async fn previous_release(url: &str) {
    let old = Store::connect(url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    old.migrate_schema_to(18).await.unwrap();
    old.close().await;
}

/// A long body with what needs escaping in JSON and SQL.
fn body(kind: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("{kind} line {i}: \"quoted\", it's ünïcödé <b>&amp;</b>\n"))
        .collect()
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

fn item(org: OrgId, mailbox: MailboxId, n: u32, raw: &[u8]) -> MailItem {
    let source = ItemSource::Imap {
        folder: "INBOX".into(),
        uid_validity: 7,
        uid: n,
    };
    let sha = sha256_hex(raw);
    let at = chrono::DateTime::from_timestamp_millis(1_700_000_000_000 + i64::from(n)).unwrap();
    MailItem {
        id: ItemId::new(),
        org_id: org,
        mailbox_id: mailbox,
        source_key: source.key(&sha),
        source,
        message_id: Some(format!("m{n}@example.com")),
        subject: Some(format!("Message {n}")),
        from: Some(format!("Sender{n}@Example.com")),
        to: vec!["owner@example.com".into()],
        cc: Vec::new(),
        in_reply_to: None,
        references: Vec::new(),
        sent_at: Some(at),
        received_at: at,
        size: raw.len() as u64,
        raw_sha256: sha,
        raw_kept: true,
        text_body: Some(body(&format!("text {n}"), 300)),
        html_body: (n % 2 == 1).then(|| body(&format!("<p>html {n}</p>"), 300)),
        attachments: Vec::new(),
        decision: ItemDecision::Stored,
        trace: vec![
            format!("fetched uid {n}"),
            "stored: no filter applies".into(),
        ],
        created_at: at,
    }
}

fn activity(item: &MailItem) -> EmailActivity {
    EmailActivity {
        id: ActivityId::new(),
        org_id: item.org_id,
        subject: item.subject.clone().unwrap_or_default(),
        text_body: item.text_body.clone(),
        html_body: item.html_body.clone(),
        direction: Direction::Incoming,
        status: EmailStatus::Received,
        owner_id: UserId::new(),
        parties: vec![],
        attachments: vec![],
        regarding: None,
        tracking_token: None,
        message_id: item.message_id.clone(),
        in_reply_to: None,
        references: vec![],
        content_key: None,
        conversation_id: item.message_id.clone(),
        mailbox_ids: vec![item.mailbox_id],
        item_ids: vec![item.id],
        sent_at: item.sent_at,
        received_at: Some(item.received_at),
        send_after: None,
        delivery_attempts: 0,
        send_error: None,
        router_claim: None,
        send_trace: Vec::new(),
        created_at: item.created_at,
        updated_at: item.created_at,
    }
}

/// Writes an item with its raw message the way the previous release's `insert_items` and
/// `commit_tracking` did: the whole record — bodies, whole trace — in the document.
async fn old_item(
    url: &str,
    backend: Backend,
    item: &MailItem,
    raw: &[u8],
    tracked: Option<ActivityId>,
) {
    sql(
        url,
        &format!(
            "INSERT INTO blobs (sha256, size, data, created_at, attachment) VALUES ({}, {}, {}, 0, FALSE)",
            q(&item.raw_sha256),
            raw.len(),
            bytes(backend, raw)
        ),
    )
    .await;
    let doc = serde_json::to_string(item).unwrap();
    sql(
        url,
        &format!(
            "INSERT INTO mail_items (id, org_id, doc, version, created_at, updated_at, mailbox_id, source_key, message_id, decision, raw_sha256, raw_kept, from_addr, received_ms, tracked_at, activity_id) \
             VALUES ({}, {}, {}, {}, {c}, {c}, {}, {}, {}, {}, {}, TRUE, {}, {}, {}, {})",
            q(&item.id.to_string()),
            q(&item.org_id.to_string()),
            q(&doc),
            if tracked.is_some() { 2 } else { 1 },
            q(&item.mailbox_id.to_string()),
            q(&item.source_key),
            opt(item.message_id.as_deref()),
            q(&wire_name(&item.decision)),
            q(&item.raw_sha256),
            opt(item.from.as_ref().map(|f| f.to_lowercase()).as_deref()),
            ms(item.received_at),
            if tracked.is_some() { c_str(item) } else { "NULL".into() },
            opt(tracked.map(|a| a.to_string()).as_deref()),
            c = ms(item.created_at),
        ),
    )
    .await;
}

fn c_str(item: &MailItem) -> String {
    (ms(item.created_at) + 1).to_string()
}

/// Writes an email activity row (with its mailbox links) as the previous release's generic
/// insert or update did, at `version`.
async fn old_activity(url: &str, a: &EmailActivity, version: i64) {
    let doc = serde_json::to_string(a).unwrap();
    sql(
        url,
        &format!("DELETE FROM activities WHERE id = {}", q(&a.id.to_string())),
    )
    .await;
    sql(
        url,
        &format!(
            "INSERT INTO activities (id, org_id, doc, version, created_at, updated_at, kind, status, owner_id, message_id, regarding_id, conversation_id, tracking_token, subject_key, occurred_at, from_addr, send_mailbox, due_at) \
             VALUES ({}, {}, {}, {version}, {c}, {c}, 'email', {}, {}, {}, NULL, {}, NULL, {}, {}, NULL, NULL, NULL)",
            q(&a.id.to_string()),
            q(&a.org_id.to_string()),
            q(&doc),
            q(&wire_name(&a.status)),
            q(&a.owner_id.to_string()),
            opt(a.message_id.as_deref()),
            opt(a.conversation_id.as_deref()),
            q(&serversync_model::track::normalize_subject(&a.subject)),
            ms(a.received_at.unwrap()),
            c = ms(a.created_at),
        ),
    )
    .await;
    sql(
        url,
        &format!(
            "DELETE FROM activity_mailboxes WHERE activity_id = {}",
            q(&a.id.to_string())
        ),
    )
    .await;
    for m in &a.mailbox_ids {
        sql(
            url,
            &format!(
                "INSERT INTO activity_mailboxes (activity_id, mailbox_id, org_id) VALUES ({}, {}, {})",
                q(&a.id.to_string()),
                q(&m.to_string()),
                q(&a.org_id.to_string())
            ),
        )
        .await;
    }
}

/// A change row as the previous release wrote it: with a copy of the record's document.
async fn old_change(url: &str, a: &EmailActivity, op: ChangeOp, version: i64) {
    sql(
        url,
        &format!(
            "INSERT INTO changes (org_id, record_type, record_id, op, version, at, doc, origin) VALUES ({}, 'email_activity', {}, {}, {version}, {}, {}, 'tracker')",
            q(&a.org_id.to_string()),
            q(&a.id.to_string()),
            q(&wire_name(&op)),
            ms(a.created_at),
            q(&serde_json::to_string(a).unwrap()),
        ),
    )
    .await;
}

/// What the previous release left: `n` items (the odd ones with an HTML body too), the first
/// two tracked as activities — the first linked to a second mailbox later (an update), the
/// second deleted since — and the rest untracked; the change rows of all that.
struct Previous {
    org: OrgId,
    mailbox: MailboxId,
    items: Vec<MailItem>,
    raws: Vec<Vec<u8>>,
    /// The activity that exists (as updated) and the deleted one.
    kept: EmailActivity,
    deleted: EmailActivity,
}

async fn write_previous(url: &str, backend: Backend, n: u32) -> Previous {
    let org = OrgId::new();
    let mailbox = MailboxId::new();
    let mut items = Vec::new();
    let mut raws = Vec::new();
    for i in 1..=n {
        let mut it = item(org, mailbox, i, &[]);
        let raw = format!(
            "Message-ID: <m{i}@example.com>\r\nSubject: Message {i}\r\n\r\n{}",
            it.text_body.as_deref().unwrap()
        )
        .into_bytes();
        it.raw_sha256 = sha256_hex(&raw);
        it.source_key = it.source.key(&it.raw_sha256);
        it.size = raw.len() as u64;
        items.push(it);
        raws.push(raw);
    }
    let mut kept = activity(&items[0]);
    let deleted = activity(&items[1]);
    for (k, it) in items.iter_mut().enumerate() {
        let tracked = match k {
            0 => Some(kept.id),
            1 => Some(deleted.id),
            _ => None,
        };
        if let Some(a) = tracked {
            it.trace.push(format!("tracked as new email activity {a}"));
        }
        old_item(url, backend, it, &raws[k], tracked).await;
    }
    // The kept activity: created, then seen by a second mailbox (an update).
    old_activity(url, &kept, 1).await;
    old_change(url, &kept, ChangeOp::Created, 1).await;
    kept.mailbox_ids.push(MailboxId::new());
    old_activity(url, &kept, 2).await;
    old_change(url, &kept, ChangeOp::Updated, 2).await;
    // The deleted one: created, then deleted (its row gone, its changes with their documents).
    old_change(url, &deleted, ChangeOp::Created, 1).await;
    old_change(url, &deleted, ChangeOp::Deleted, 1).await;
    Previous {
        org,
        mailbox,
        items,
        raws,
        kept,
        deleted,
    }
}

/// Everything reads back as the previous release wrote it.
async fn reads_back(store: &Store, p: &Previous) {
    for it in &p.items {
        let got = store
            .get::<MailItem>(&it.id.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got.value, it, "item {}", it.id);
    }
    let listed = store.list_items(p.mailbox, None, 1000).await.unwrap();
    let listed: Vec<MailItem> = listed.items.into_iter().map(|s| s.value).collect();
    assert_eq!(listed, p.items);
    let untracked = store.untracked_items(p.org, 1000).await.unwrap();
    assert_eq!(untracked, p.items[2..].to_vec());
    let got = store
        .get::<EmailActivity>(&p.kept.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.value, p.kept);
    assert_eq!(got.version, 2);
    assert!(
        store
            .get::<EmailActivity>(&p.deleted.id.to_string())
            .await
            .unwrap()
            .is_none()
    );
    let changes = store.changes_after(p.org, 0, 100).await.unwrap();
    let seen: Vec<(RecordType, String, ChangeOp, i64)> = changes
        .iter()
        .map(|c| (c.record_type, c.record_id.clone(), c.op, c.version))
        .collect();
    let kept = p.kept.id.to_string();
    let deleted = p.deleted.id.to_string();
    assert_eq!(
        seen,
        vec![
            (
                RecordType::EmailActivity,
                kept.clone(),
                ChangeOp::Created,
                1
            ),
            (RecordType::EmailActivity, kept, ChangeOp::Updated, 2),
            (
                RecordType::EmailActivity,
                deleted.clone(),
                ChangeOp::Created,
                1
            ),
            (RecordType::EmailActivity, deleted, ChangeOp::Deleted, 1),
        ]
    );
    let kept_json = serde_json::to_value(&p.kept).unwrap();
    let deleted_json = serde_json::to_value(&p.deleted).unwrap();
    // The kept activity's changes carry the record as it is now (its second mailbox too).
    assert_eq!(changes[1].record, kept_json);
    assert!(
        changes[0].record == kept_json
            || changes[0].record
                == serde_json::to_value({
                    let mut v1 = p.kept.clone();
                    v1.mailbox_ids.truncate(1);
                    v1
                })
                .unwrap()
    );
    assert_eq!(changes[2].record, deleted_json);
    assert_eq!(changes[3].record, deleted_json);
    for (it, raw) in p.items.iter().zip(&p.raws) {
        assert_eq!(
            store.get_blob(&it.raw_sha256).await.unwrap().as_deref(),
            Some(&raw[..])
        );
    }
}

/// The bodies are blobs now, referenced from small documents, and the feed's rows of records
/// that exist keep no copy.
async fn moved(url: &str, store: &Store, p: &Previous) {
    let n = p.items.len() as u64;
    assert_eq!(
        count(url, "mail_items", "version", "length(doc) < 1500").await,
        n
    );
    assert_eq!(
        count(url, "mail_items", "version", "doc LIKE '%line 1:%'").await,
        0
    );
    assert_eq!(
        count(url, "mail_items", "version", "text_sha256 IS NOT NULL").await,
        n
    );
    let odd = p.items.iter().filter(|i| i.html_body.is_some()).count() as u64;
    assert_eq!(
        count(url, "mail_items", "version", "html_sha256 IS NOT NULL").await,
        odd
    );
    assert_eq!(
        count(url, "activities", "version", "length(doc) < 1500").await,
        1
    );
    assert_eq!(
        count(url, "activities", "version", "text_sha256 IS NOT NULL").await,
        1
    );
    for it in &p.items {
        let text = it.text_body.as_deref().unwrap();
        assert_eq!(
            store
                .get_blob(&sha256_hex(text.as_bytes()))
                .await
                .unwrap()
                .as_deref(),
            Some(text.as_bytes())
        );
    }
    // The kept activity's two rows read the record; the deleted one's keep their documents.
    assert_eq!(count(url, "changes", "version", "doc = ''").await, 2);
    assert_eq!(
        count(
            url,
            "changes",
            "version",
            &format!("doc <> '' AND record_id = {}", q(&p.deleted.id.to_string()))
        )
        .await,
        2
    );
}

both!(previous_release_upgrades, |backend, url| {
    previous_release(&url).await;
    let p = write_previous(&url, backend, 5).await;
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    reads_back(&store, &p).await;
    moved(&url, &store, &p).await;

    // Marking an item tracked now writes its trace's tail, never its document.
    let it = &p.items[2];
    let lease = store
        .acquire_lease(
            &format!("tracker:{}", p.org),
            "test",
            Duration::from_secs(60),
        )
        .await
        .unwrap()
        .unwrap();
    let store = store.with_origin(serversync_model::webhook::ChangeOrigin::Tracker);
    let a = activity(it);
    store
        .commit_tracking(
            &lease,
            &[serversync_store::EntityWrite::insert(&a).unwrap()],
            &[(
                it.id,
                Some(a.id),
                vec!["tracked later as new activity".into()],
            )],
        )
        .await
        .unwrap();
    assert_eq!(
        count(&url, "mail_items", "version", "doc LIKE '%tracked later%'").await,
        0
    );
    let got = store
        .get::<MailItem>(&it.id.to_string())
        .await
        .unwrap()
        .unwrap()
        .value;
    let mut want = it.clone();
    want.trace.push("tracked later as new activity".into());
    assert_eq!(got, want);
    // The new activity shares the item's body blobs and its change row reads it.
    assert_eq!(
        count(&url, "activities", "version", "length(doc) < 1500").await,
        2
    );
    let changes = store.changes_after(p.org, 4, 100).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].record, serde_json::to_value(&a).unwrap());
    // Deleted: the delete row keeps the whole last document, bodies included.
    assert!(
        store
            .delete::<EmailActivity>(&a.id.to_string(), None)
            .await
            .unwrap()
    );
    let changes = store.changes_after(p.org, 4, 100).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0].record, serde_json::to_value(&a).unwrap());
    assert_eq!(changes[1].op, ChangeOp::Deleted);
    assert_eq!(changes[1].record, serde_json::to_value(&a).unwrap());
});

both!(interrupted_migration_resumes, |backend, url| {
    previous_release(&url).await;
    let p = write_previous(&url, backend, 7).await;
    // The new schema, then one batch of two rows only, as if the process were killed after it.
    let store = Store::connect(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    store.migrate_schema_to(i64::MAX).await.unwrap();
    assert!(!store.migrate_data_batch(2).await.unwrap());
    assert_eq!(
        count(&url, "mail_items", "version", "text_sha256 IS NOT NULL").await,
        2
    );
    // Half moved, half not: everything reads the same.
    reads_back(&store, &p).await;
    store.close().await;
    // Started again: resumes and finishes.
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    reads_back(&store, &p).await;
    moved(&url, &store, &p).await;
    let blobs = count(&url, "blobs", "size", "TRUE").await;
    // Run again from the start: nothing left to move, nothing changes.
    sql(&url, "DELETE FROM data_migrations").await;
    store.migrate().await.unwrap();
    assert!(store.migrate_data_batch(2).await.unwrap());
    assert_eq!(count(&url, "blobs", "size", "TRUE").await, blobs);
    reads_back(&store, &p).await;
    moved(&url, &store, &p).await;
});
