//! Retention on SQLite and PostgreSQL: each kind of row is removed once past its retention and
//! kept otherwise; the change feed keeps what an endpoint has not delivered; a raw copy goes
//! only for a tracked message, and its blob only when nothing else needs it. Ages are made by
//! writing timestamps relative to the run directly into the database.

use serversync_model::audit::Actor;
use serversync_model::auth::{ApiToken, TokenKind, WEB_SESSION};
use serversync_model::crm::{Contact, Direction, EmailActivity, EmailStatus};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::org::Organization;
use serversync_model::webhook::WebhookEndpoint;
use serversync_model::{
    ActivityId, ContactId, ItemId, MailboxId, OrgId, Secret, TokenId, UserId, WebhookId,
};
use serversync_store::{Backend, NewAuditEntry, NewDelivery, Store};
use serversync_testkit::{days_ago_ms, execute_sql};
use serversync_vault::{MasterKey, sha256_hex};
use std::time::Duration;

mod common;
use common::Db;

macro_rules! both {
    ($name:ident, |$store:ident, $url:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run(backend: Backend) {
                let db = Db::new(backend).await;
                let $url = db.url();
                let $store = Store::open(&$url, MasterKey::generate().unwrap())
                    .await
                    .unwrap();
                assert_eq!($store.backend(), backend);
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

fn now() -> serversync_model::Timestamp {
    chrono::Utc::now()
}

fn days_ago(days: i64) -> serversync_model::Timestamp {
    now() - chrono::Duration::days(days)
}

/// Runs SQL on the store's database behind its back (to age rows).
async fn sql(url: &str, statement: &str) -> u64 {
    execute_sql(url, statement).await.unwrap()
}

async fn org(store: &Store, name: &str) -> OrgId {
    let o = Organization::new(name, name, now());
    store.insert(&o).await.unwrap();
    o.id
}

fn contact(org: OrgId, name: &str) -> Contact {
    Contact {
        id: ContactId::new(),
        org_id: org,
        full_name: name.into(),
        emails: vec![],
        account_id: None,
        company: None,
        job_title: None,
        phones: Vec::new(),
        owner_id: UserId::new(),
        created_at: now(),
    }
}

async fn webhook(store: &Store, org: OrgId) -> WebhookId {
    let secret_id = store
        .put_secret(Some(org), &Secret::new("signing"))
        .await
        .unwrap();
    let ep = WebhookEndpoint {
        id: WebhookId::new(),
        org_id: org,
        url: "http://127.0.0.1:9/hook".into(),
        description: "test".into(),
        secret_id,
        record_types: vec![],
        created_at: now(),
    };
    store.create_webhook(&ep, None).await.unwrap();
    ep.id
}

/// Moves an endpoint's cursor to `seq`, as its delivery worker does after a delivery.
async fn delivered(store: &Store, hook: WebhookId, seq: i64) {
    let resource = format!("webhook:{hook}");
    let lease = store
        .acquire_lease(&resource, "test", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    store.webhook_advance(&lease, hook, seq).await.unwrap();
    store.release_lease(&lease).await.unwrap();
}

async fn seqs(store: &Store, org: OrgId) -> Vec<i64> {
    store
        .changes_after(org, 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect()
}

both!(
    webhook_log_and_audit_entries_go_after_their_retention,
    |store, url| {
        let o = org(&store, "log").await;
        let hook = webhook(&store, o).await;
        for (event, seq) in [("old", 1), ("new", 2)] {
            store
                .record_delivery(&NewDelivery {
                    webhook_id: hook,
                    event_id: event.into(),
                    seq,
                    attempt: 1,
                    ok: true,
                    status: Some(200),
                    error: None,
                    duration_ms: 5,
                })
                .await
                .unwrap();
        }
        let aged = sql(
            &url,
            &format!(
                "UPDATE webhook_deliveries SET at = {} WHERE event_id = 'old'",
                days_ago_ms(31)
            ),
        )
        .await;
        assert_eq!(aged, 1);
        assert_eq!(
            store
                .prune_webhook_deliveries(days_ago(30), 100)
                .await
                .unwrap(),
            1
        );
        let left = store.list_deliveries(hook, 0, 100).await.unwrap();
        assert_eq!(
            left.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>(),
            ["new"]
        );
        assert_eq!(
            store
                .prune_webhook_deliveries(days_ago(30), 100)
                .await
                .unwrap(),
            0
        );

        for action in ["old", "recent"] {
            store
                .append_audit(NewAuditEntry {
                    org_id: Some(o),
                    actor: Actor::System("test".into()),
                    action: action.into(),
                    entity: "thing".into(),
                    entity_id: "1".into(),
                    before: None,
                    after: None,
                })
                .await
                .unwrap();
        }
        sql(
            &url,
            &format!(
                "UPDATE audit_log SET at = {} WHERE action = 'old'",
                days_ago_ms(366)
            ),
        )
        .await;
        assert_eq!(store.prune_audit(days_ago(365), 100).await.unwrap(), 1);
        let left = store.list_audit(Some(o), 0, 100).await.unwrap();
        assert!(left.iter().all(|a| a.action != "old"), "{left:?}");
        assert!(left.iter().any(|a| a.action == "recent"));

        // In batches: at most `limit` per call.
        for i in 0..5 {
            store
                .append_audit(NewAuditEntry {
                    org_id: Some(o),
                    actor: Actor::System("test".into()),
                    action: format!("batch{i}"),
                    entity: "thing".into(),
                    entity_id: "1".into(),
                    before: None,
                    after: None,
                })
                .await
                .unwrap();
        }
        sql(
            &url,
            &format!(
                "UPDATE audit_log SET at = {} WHERE action LIKE 'batch%'",
                days_ago_ms(400)
            ),
        )
        .await;
        assert_eq!(store.prune_audit(days_ago(365), 2).await.unwrap(), 2);
        assert_eq!(store.prune_audit(days_ago(365), 2).await.unwrap(), 2);
        assert_eq!(store.prune_audit(days_ago(365), 2).await.unwrap(), 1);
    }
);

both!(
    the_change_feed_keeps_what_an_endpoint_has_not_delivered,
    |store, url| {
        let a = org(&store, "with-hooks").await;
        let fast = webhook(&store, a).await;
        let slow = webhook(&store, a).await;
        for n in ["c1", "c2", "c3", "c4"] {
            store.insert(&contact(a, n)).await.unwrap();
        }
        let s = seqs(&store, a).await;
        assert_eq!(s.len(), 4);
        // c1..c3 are past the horizon; c4 is recent.
        sql(
            &url,
            &format!(
                "UPDATE changes SET at = {} WHERE org_id = '{a}' AND seq <= {}",
                days_ago_ms(40),
                s[2]
            ),
        )
        .await;
        delivered(&store, fast, s[3]).await;
        delivered(&store, slow, s[0]).await;
        assert_eq!(store.prune_changes(a, days_ago(30), 100).await.unwrap(), 1);
        assert_eq!(
            seqs(&store, a).await,
            &s[1..],
            "only what both endpoints delivered goes"
        );
        // Paused endpoints count too: nothing undelivered goes.
        assert!(
            store
                .set_webhook_state(slow, serversync_model::webhook::WebhookState::Paused)
                .await
                .unwrap()
        );
        assert_eq!(store.prune_changes(a, days_ago(30), 100).await.unwrap(), 0);
        delivered(&store, slow, s[3]).await;
        assert_eq!(store.prune_changes(a, days_ago(30), 100).await.unwrap(), 2);
        assert_eq!(
            seqs(&store, a).await,
            &s[3..],
            "delivered but within the horizon: kept"
        );

        // Without endpoints the horizon alone decides; other organizations are not touched.
        let b = org(&store, "no-hooks").await;
        store.insert(&contact(b, "old")).await.unwrap();
        store.insert(&contact(b, "new")).await.unwrap();
        let sb = seqs(&store, b).await;
        sql(
            &url,
            &format!(
                "UPDATE changes SET at = {} WHERE seq = {}",
                days_ago_ms(31),
                sb[0]
            ),
        )
        .await;
        assert_eq!(store.prune_changes(a, days_ago(30), 100).await.unwrap(), 0);
        assert_eq!(store.prune_changes(b, days_ago(30), 100).await.unwrap(), 1);
        assert_eq!(seqs(&store, b).await, &sb[1..]);
        // A new endpoint still starts after the newest change, removed or not.
        sql(
            &url,
            &format!(
                "UPDATE changes SET at = {} WHERE org_id = '{b}'",
                days_ago_ms(31)
            ),
        )
        .await;
        assert_eq!(store.prune_changes(b, days_ago(30), 100).await.unwrap(), 1);
        store.insert(&contact(b, "later")).await.unwrap();
        let hook = webhook(&store, b).await;
        let later = seqs(&store, b).await;
        assert_eq!(later.len(), 1);
        assert_eq!(
            store.webhook_status(hook).await.unwrap().unwrap().cursor,
            later[0]
        );
    }
);

fn item(
    org: OrgId,
    mailbox: MailboxId,
    key: &str,
    raw: &[u8],
    attachment: Option<&[u8]>,
) -> MailItem {
    let source = ItemSource::Pop3 { uidl: key.into() };
    let sha = sha256_hex(raw);
    MailItem {
        id: ItemId::new(),
        org_id: org,
        mailbox_id: mailbox,
        source_key: source.key(&sha),
        source,
        message_id: Some(format!("{key}@test")),
        subject: Some(key.into()),
        from: None,
        to: Vec::new(),
        cc: Vec::new(),
        in_reply_to: None,
        references: Vec::new(),
        sent_at: None,
        received_at: now(),
        size: raw.len() as u64,
        raw_sha256: sha,
        raw_kept: true,
        text_body: Some("body".into()),
        html_body: None,
        attachments: attachment
            .map(|a| serversync_model::item::ItemAttachment {
                file_name: Some("a.bin".into()),
                content_type: "application/octet-stream".into(),
                size: a.len() as u64,
                sha256: sha256_hex(a),
                dropped_reason: None,
            })
            .into_iter()
            .collect(),
        decision: ItemDecision::Stored,
        trace: vec!["stored".into()],
        created_at: now(),
    }
}

fn activity(org: OrgId, item: &MailItem) -> EmailActivity {
    EmailActivity {
        id: ActivityId::new(),
        org_id: org,
        subject: item.subject.clone().unwrap_or_default(),
        text_body: item.text_body.clone(),
        html_body: None,
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
        conversation_id: None,
        mailbox_ids: vec![item.mailbox_id],
        item_ids: vec![item.id],
        sent_at: None,
        received_at: Some(item.received_at),
        send_after: None,
        delivery_attempts: 0,
        send_error: None,
        router_claim: None,
        send_trace: Vec::new(),
        created_at: now(),
        updated_at: now(),
    }
}

/// Stores `item` with its raw message (and attachment), then has the tracker's commit mark it
/// tracked — as a new activity when `as_activity`, else "not tracked".
async fn store_and_track(
    store: &Store,
    item: &MailItem,
    raw: &[u8],
    attachment: Option<&[u8]>,
    as_activity: bool,
) -> Option<ActivityId> {
    let att_sha = attachment.map(sha256_hex);
    let mut blobs: Vec<(&str, &[u8])> = vec![(item.raw_sha256.as_str(), raw)];
    if let (Some(s), Some(a)) = (&att_sha, attachment) {
        blobs.push((s.as_str(), a));
    }
    store.insert_item(item, &blobs).await.unwrap();
    let lease = store
        .acquire_lease(
            &format!("tracker:{}", item.org_id),
            "test",
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap();
    let (writes, finished) = if as_activity {
        let a = activity(item.org_id, item);
        let line = format!("tracked as activity {} (test)", a.id);
        (
            vec![serversync_store::EntityWrite::insert(&a).unwrap()],
            vec![(item.id, Some(a.id), vec![line])],
        )
    } else {
        (
            vec![],
            vec![(item.id, None, vec!["not tracked: test".to_owned()])],
        )
    };
    store
        .commit_tracking(&lease, &writes, &finished)
        .await
        .unwrap();
    store.release_lease(&lease).await.unwrap();
    finished[0].1
}

async fn doc(store: &Store, id: ItemId) -> MailItem {
    store
        .get::<MailItem>(&id.to_string())
        .await
        .unwrap()
        .unwrap()
        .value
}

async fn age_items(url: &str, ids: &[ItemId], days: i64) {
    for id in ids {
        sql(
            url,
            &format!(
                "UPDATE mail_items SET created_at = {} WHERE id = '{id}'",
                days_ago_ms(days)
            ),
        )
        .await;
    }
}

both!(
    raw_copies_go_only_for_tracked_messages_past_retention,
    |store, url| {
        let o = org(&store, "raw").await;
        let mb = MailboxId::new();
        let note = "raw message removed: test retention";
        let attachment = b"attachment bytes".as_slice();

        // Tracked as an activity, old: its raw copy goes, the attachment stays.
        let old_raw = b"Subject: old\r\n\r\nold".as_slice();
        let old = item(o, mb, "old", old_raw, Some(attachment));
        store_and_track(&store, &old, old_raw, Some(attachment), true).await;
        // Tracked, recent: kept.
        let recent_raw = b"Subject: recent\r\n\r\nrecent".as_slice();
        let recent = item(o, mb, "recent", recent_raw, None);
        store_and_track(&store, &recent, recent_raw, None, true).await;
        // Old but not tracked as an activity: kept.
        let untracked_raw = b"Subject: untracked\r\n\r\nfiltered".as_slice();
        let untracked = item(o, mb, "untracked", untracked_raw, None);
        store_and_track(&store, &untracked, untracked_raw, None, false).await;
        // Old, tracked, but its activity was deleted since: kept.
        let orphan_raw = b"Subject: orphan\r\n\r\norphan".as_slice();
        let orphan = item(o, mb, "orphan", orphan_raw, None);
        let gone = store_and_track(&store, &orphan, orphan_raw, None, true)
            .await
            .unwrap();
        assert!(
            store
                .delete::<EmailActivity>(&gone.to_string(), None)
                .await
                .unwrap()
        );
        // The same raw bytes in two mailboxes: the old item's copy goes, the blob stays for the
        // recent one.
        let shared_raw = b"Subject: shared\r\n\r\nshared".as_slice();
        let shared_old = item(o, mb, "shared-old", shared_raw, None);
        store_and_track(&store, &shared_old, shared_raw, None, true).await;
        let shared_new = item(o, MailboxId::new(), "shared-new", shared_raw, None);
        store_and_track(&store, &shared_new, shared_raw, None, true).await;
        // Raw bytes that are also an attachment elsewhere (a forwarded message): the blob stays.
        let fwd_raw = b"Subject: forwarded\r\n\r\nforwarded".as_slice();
        let fwd = item(o, mb, "fwd", fwd_raw, None);
        store_and_track(&store, &fwd, fwd_raw, None, true).await;
        store
            .put_blobs(&[(&sha256_hex(fwd_raw), fwd_raw)])
            .await
            .unwrap();

        age_items(
            &url,
            &[old.id, untracked.id, orphan.id, shared_old.id, fwd.id],
            100,
        )
        .await;
        assert_eq!(
            store
                .prune_raw_copies(days_ago(90), 100, note)
                .await
                .unwrap(),
            3
        );
        assert_eq!(
            store
                .prune_raw_copies(days_ago(90), 100, note)
                .await
                .unwrap(),
            0,
            "once"
        );

        let o1 = doc(&store, old.id).await;
        assert!(!o1.raw_kept);
        assert_eq!(o1.trace.last().map(String::as_str), Some(note));
        assert_eq!(
            o1.text_body.as_deref(),
            Some("body"),
            "the rest of the item stays"
        );
        assert_eq!(
            store.get_blob(&old.raw_sha256).await.unwrap(),
            None,
            "its blob is gone"
        );
        assert_eq!(
            store
                .get_blob(&sha256_hex(attachment))
                .await
                .unwrap()
                .as_deref(),
            Some(attachment)
        );
        for (kept, raw) in [
            (&recent, recent_raw),
            (&untracked, untracked_raw),
            (&orphan, orphan_raw),
        ] {
            assert!(doc(&store, kept.id).await.raw_kept, "{:?}", kept.subject);
            assert_eq!(
                store.get_blob(&kept.raw_sha256).await.unwrap().as_deref(),
                Some(raw)
            );
        }
        assert!(!doc(&store, shared_old.id).await.raw_kept);
        assert!(doc(&store, shared_new.id).await.raw_kept);
        assert_eq!(
            store
                .get_blob(&shared_new.raw_sha256)
                .await
                .unwrap()
                .as_deref(),
            Some(shared_raw)
        );
        assert!(!doc(&store, fwd.id).await.raw_kept);
        assert_eq!(
            store.get_blob(&fwd.raw_sha256).await.unwrap().as_deref(),
            Some(fwd_raw)
        );

        // Once the last copy is past retention, the shared blob goes too.
        age_items(&url, &[shared_new.id], 100).await;
        assert_eq!(
            store
                .prune_raw_copies(days_ago(90), 100, note)
                .await
                .unwrap(),
            1
        );
        assert_eq!(store.get_blob(&shared_new.raw_sha256).await.unwrap(), None);
    }
);

// On SQLite a raw message is kept in a pack file (see the store's `packs`): removing it frees
// its range of the file (a hole punched), so the disk space comes back.
#[tokio::test]
async fn a_removed_raw_message_gives_its_pack_space_back() {
    use std::os::unix::fs::MetadataExt;
    let db = Db::new(Backend::Sqlite).await;
    let url = db.url();
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let o = org(&store, "packs").await;
    let raw = b"Subject: big\r\n\r\n".repeat(128 * 1024);
    let big = item(o, MailboxId::new(), "big", &raw, None);
    store_and_track(&store, &big, &raw, None, true).await;
    let allocated = || -> u64 {
        db.pack_files()
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().blocks() * 512)
            .sum()
    };
    let before = allocated();
    assert!(before >= raw.len() as u64, "{before} bytes in packs");

    age_items(&url, &[big.id], 100).await;
    let note = "raw message removed: test retention";
    assert_eq!(
        store
            .prune_raw_copies(days_ago(90), 100, note)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.get_blob(&big.raw_sha256).await.unwrap(), None);
    let after = allocated();
    assert!(
        before - after >= raw.len() as u64 - 8192,
        "{before} bytes allocated before, {after} after removing {} bytes",
        raw.len()
    );
}

both!(expired_web_sessions_go, |store, url| {
    let _ = &url;
    let o = org(&store, "sessions").await;
    let token = |name: &str, expires: Option<serversync_model::Timestamp>| ApiToken {
        id: TokenId::new(),
        org_id: o,
        user_id: UserId::new(),
        name: name.into(),
        token_hash: sha256_hex(TokenId::new().to_string().as_bytes()),
        prefix: "x".into(),
        created_at: days_ago(30),
        expires_at: expires,
        revoked: false,
        revoked_at: None,
        kind: if name == WEB_SESSION {
            TokenKind::Session
        } else {
            TokenKind::Api
        },
    };
    let long_expired = token(WEB_SESSION, Some(days_ago(2)));
    let just_expired = token(WEB_SESSION, Some(now() - chrono::Duration::hours(1)));
    let live = token(WEB_SESSION, Some(now() + chrono::Duration::hours(11)));
    let api = token("cli", Some(days_ago(10)));
    let forever = token("cli", None);
    for t in [&long_expired, &just_expired, &live, &api, &forever] {
        store.insert(t).await.unwrap();
    }
    assert_eq!(store.prune_sessions(days_ago(1), 100).await.unwrap(), 1);
    let left: Vec<TokenId> = store
        .list_all::<ApiToken>(Some(o), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.value.id)
        .collect();
    assert!(!left.contains(&long_expired.id));
    for t in [&just_expired, &live, &api, &forever] {
        assert!(left.contains(&t.id), "{} kept", t.name);
    }
});

both!(the_database_size_is_reported, |store, url| {
    let _ = &url;
    let before = store.database_size().await.unwrap();
    assert_eq!(before.backend, store.backend());
    assert!(before.bytes > 0);
    // 2 MiB that do not compress (xorshift).
    let mut x = 0x9E37_79B9_7F4A_7C15_u64;
    let data: Vec<u8> = (0..2 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    store
        .put_blobs(&[(&sha256_hex(&data), &data)])
        .await
        .unwrap();
    let after = store.database_size().await.unwrap();
    assert!(
        after.bytes >= before.bytes + (1 << 20),
        "{before:?} → {after:?}"
    );
    match store.backend() {
        Backend::Sqlite => {
            let file = url.strip_prefix("sqlite://").unwrap();
            let wal = std::fs::metadata(format!("{file}-wal")).map_or(0, |m| m.len());
            assert_eq!(after.wal_bytes, Some(wal), "the write-ahead log counts");
            assert!(after.bytes >= wal);
            assert!(after.free_bytes.is_some());
        }
        Backend::Postgres => assert_eq!(after.wal_bytes, None),
    }
});

/// Applies the migrations before retention's (0015) to the database at `url`.
async fn migrate_before_retention(url: &str, backend: Backend) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    });
    let mut m = sqlx::migrate::Migrator::new(dir).await.unwrap();
    m.migrations = m
        .migrations
        .iter()
        .filter(|x| x.version < 15)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    match backend {
        Backend::Sqlite => {
            let opts = url
                .parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            m.run(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            m.run(&pool).await.unwrap();
            pool.close().await;
        }
    }
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

// An installation upgraded to retention: what existing rows say (the item's raw_kept and
// trace, attachments in documents, a session's expiry) is carried into the new columns, so
// the pruner removes exactly what it would have, had the rows been written since.
#[tokio::test]
async fn an_upgrade_carries_what_retention_needs_sqlite() {
    upgrade(Backend::Sqlite).await
}

#[tokio::test]
async fn an_upgrade_carries_what_retention_needs_postgres() {
    upgrade(Backend::Postgres).await
}

async fn upgrade(backend: Backend) {
    let db = Db::new(backend).await;
    let url = db.url();
    migrate_before_retention(&url, backend).await;
    let o = OrgId::new();
    let mb = MailboxId::new();
    let old = days_ago_ms(100);
    let raw_only = b"Subject: tracked\r\n\r\nraw only".as_slice();
    let forwarded = b"Subject: fwd\r\n\r\nalso an attachment".as_slice();
    let not_kept = b"Subject: too big\r\n\r\nnot kept".as_slice();
    // Tracked as an activity (in its trace), raw kept: its raw copy may go.
    let mut tracked = item(o, mb, "tracked", raw_only, None);
    let act = activity(o, &tracked);
    tracked.trace.push(format!(
        "tracked as activity {} (user x: all email)",
        act.id
    ));
    // Tracked, but its raw bytes are an attachment of another activity.
    let mut fwd = item(o, mb, "fwd", forwarded, None);
    let fwd_act = activity(o, &fwd);
    fwd.trace.push(format!(
        "tracked as activity {} (user x: all email)",
        fwd_act.id
    ));
    let mut holder = activity(o, &fwd);
    holder.attachments.push(serversync_model::crm::Attachment {
        id: serversync_model::AttachmentId::new(),
        file_name: "fwd.eml".into(),
        content_type: "message/rfc822".into(),
        size: forwarded.len() as u64,
        sha256: sha256_hex(forwarded),
        dropped_reason: None,
    });
    // Its raw copy was never kept.
    let mut dropped = item(o, mb, "dropped", not_kept, None);
    dropped.raw_kept = false;
    let act_d = activity(o, &dropped);
    dropped.trace.push(format!(
        "tracked as activity {} (user x: all email)",
        act_d.id
    ));
    // Not tracked.
    let mut filtered = item(o, mb, "filtered", b"Subject: f\r\n\r\nf", None);
    filtered
        .trace
        .push("not tracked: the filter said no (user x)".into());

    for (it, raw) in [
        (&tracked, Some(raw_only)),
        (&fwd, Some(forwarded)),
        (&dropped, None),
        (&filtered, Some(b"Subject: f\r\n\r\nf".as_slice())),
    ] {
        let doc = serde_json::to_string(it).unwrap();
        sql(&url, &format!(
            "INSERT INTO mail_items (id, org_id, doc, version, created_at, updated_at, mailbox_id, source_key, message_id, decision, raw_sha256, tracked_at) \
             VALUES ({}, {}, {}, 1, {old}, {old}, {}, {}, {}, 'stored', {}, {old})",
            quoted(&it.id.to_string()), quoted(&o.to_string()), quoted(&doc), quoted(&mb.to_string()),
            quoted(&it.source_key), quoted(it.message_id.as_deref().unwrap()), quoted(&it.raw_sha256),
        )).await;
        if let Some(raw) = raw {
            let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let data = match backend {
                Backend::Sqlite => format!("X'{hex}'"),
                Backend::Postgres => format!("'\\x{hex}'::bytea"),
            };
            sql(&url, &format!(
                "INSERT INTO blobs (sha256, size, data, created_at) VALUES ({}, {}, {data}, {old})",
                quoted(&it.raw_sha256), raw.len()
            )).await;
        }
    }
    for a in [&act, &fwd_act, &holder, &act_d] {
        sql(&url, &format!(
            "INSERT INTO activities (id, org_id, doc, version, created_at, updated_at, kind, status, owner_id) \
             VALUES ({}, {}, {}, 1, {old}, {old}, 'email', 'received', {})",
            quoted(&a.id.to_string()), quoted(&o.to_string()),
            quoted(&serde_json::to_string(a).unwrap()), quoted(&a.owner_id.to_string()),
        )).await;
    }
    let session = ApiToken {
        id: TokenId::new(),
        org_id: o,
        user_id: UserId::new(),
        name: WEB_SESSION.into(),
        token_hash: "0".repeat(64),
        prefix: "x".into(),
        created_at: days_ago(3),
        expires_at: Some(days_ago(2)),
        revoked: false,
        revoked_at: None,
        kind: TokenKind::Session,
    };
    sql(&url, &format!(
        "INSERT INTO api_tokens (id, org_id, doc, version, created_at, updated_at, user_id, token_hash) \
         VALUES ({}, {}, {}, 1, {old}, {old}, {}, {})",
        quoted(&session.id.to_string()), quoted(&o.to_string()),
        quoted(&serde_json::to_string(&session).unwrap()), quoted(&session.user_id.to_string()),
        quoted(&session.token_hash),
    )).await;

    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let note = "raw message removed: test";
    assert_eq!(
        store
            .prune_raw_copies(days_ago(90), 100, note)
            .await
            .unwrap(),
        2
    );
    assert!(!doc(&store, tracked.id).await.raw_kept);
    assert_eq!(store.get_blob(&tracked.raw_sha256).await.unwrap(), None);
    assert!(!doc(&store, fwd.id).await.raw_kept);
    assert_eq!(
        store.get_blob(&fwd.raw_sha256).await.unwrap().as_deref(),
        Some(forwarded),
        "an attachment of an activity stays"
    );
    assert_eq!(
        doc(&store, dropped.id).await.trace,
        dropped.trace,
        "had no raw copy"
    );
    assert!(doc(&store, filtered.id).await.raw_kept, "not tracked: kept");
    assert!(
        store
            .get_blob(&filtered.raw_sha256)
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.prune_sessions(days_ago(1), 100).await.unwrap(), 1);
}
