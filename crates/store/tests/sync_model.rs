//! The data model of two-way synchronization, on SQLite and PostgreSQL: typed folder cursors
//! (and rows of the earlier shape after migrating), item sources of every protocol, remote
//! links, and the origin of change-feed rows.

use serversync_model::crm::{ActivityState, Appointment, Contact};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::org::{Organization, User};
use serversync_model::settings::EmailSettings;
use serversync_model::sync::{
    FolderCursor, ImapCursor, RemoteLink, ServerTokenCursor, SyncDirection,
};
use serversync_model::webhook::{ChangeOp, ChangeOrigin, RecordType};
use serversync_model::{ActivityId, ContactId, ItemId, MailboxId, OrgId, UserId};
use serversync_store::{Backend, Expected, ItemInsert, Store, StoreError};
use serversync_vault::MasterKey;
use std::time::Duration;

mod common;
use common::Db;

macro_rules! both {
    ($name:ident, |$backend:ident, $db:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run($backend: Backend) {
                let $db = Db::new($backend).await;
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

async fn open(db: &Db) -> Store {
    Store::open(&db.url(), MasterKey::generate().unwrap())
        .await
        .unwrap()
}

fn now() -> serversync_model::Timestamp {
    chrono::Utc::now()
}

/// An organization with a user mailbox; returns (org, mailbox).
async fn org_with_mailbox(store: &Store, name: &str) -> (OrgId, MailboxId) {
    let org = Organization::new(name, name, now());
    store.insert(&org).await.unwrap();
    let u = User::new(org.id, "Ada", &format!("ada@{name}.test"), now());
    store.insert(&u).await.unwrap();
    let m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(u.id),
        u.id,
        &u.full_name,
        &u.email,
        &EmailSettings::new(org.id),
        now(),
    );
    store.insert(&m).await.unwrap();
    (org.id, m.id)
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

fn appointment(org: OrgId) -> Appointment {
    let start = now() + chrono::Duration::days(1);
    Appointment {
        id: ActivityId::new(),
        org_id: org,
        subject: "Review".into(),
        location: None,
        description: None,
        starts_at: start,
        ends_at: start + chrono::Duration::hours(1),
        all_day: false,
        organizer: None,
        attendees: vec![],
        owner_id: UserId::new(),
        regarding: None,
        state: ActivityState::Open,
        ical_uid: Some("uid-1@example.test".into()),
        time_zone: None,
        recurrence: None,
        created_at: now(),
        updated_at: now(),
    }
}

fn link(org: OrgId, mailbox: MailboxId, t: RecordType, record: &str, remote: &str) -> RemoteLink {
    RemoteLink {
        org_id: org,
        mailbox_id: mailbox,
        record_type: t,
        record_id: record.into(),
        remote_id: remote.into(),
        version_tag: Some("\"etag-1\"".into()),
        synced_hash: "0".repeat(64),
        synced_values: Default::default(),
        direction: SyncDirection::ToServer,
    }
}

/// Runs the migrations before 0016 on an empty database, writes rows as the previous
/// version did (an untagged cursor, a change without origin), and returns the cursor's
/// mailbox and the change's organization.
async fn previous_schema_with_rows(db: &Db, backend: Backend) -> (MailboxId, OrgId) {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(match backend {
        Backend::Sqlite => "migrations/sqlite",
        Backend::Postgres => "migrations/postgres",
    });
    let old = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.as_str() < "0016" {
            std::fs::copy(e.path(), old.path().join(&name)).unwrap();
        }
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    assert!(
        migrator.iter().all(|m| m.version < 16) && migrator.iter().any(|m| m.version == 15),
        "the previous schema is 0001‥0015"
    );
    let (mailbox, org) = (MailboxId::new(), OrgId::new());
    let cursor = r#"{"uid_validity":7,"last_uid":42,"highest_modseq":9001,"sync_token":null,"last_received_at":null,"uid_validity_changes":0}"#;
    macro_rules! fill {
        ($pool:expr) => {{
            let pool = $pool;
            migrator.run(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO folder_state (mailbox_id, folder, doc, epoch, updated_at) VALUES ($1, 'INBOX', $2, 1, 0)",
            )
            .bind(mailbox.to_string())
            .bind(cursor)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO changes (org_id, record_type, record_id, op, version, at, doc) VALUES ($1, 'contact', 'c1', 'created', 1, 0, '{}')",
            )
            .bind(org.to_string())
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }};
    }
    match db {
        Db::Sqlite(dir) => fill!(
            sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join("serversync.db"))
                    .create_if_missing(true)
            )
            .await
            .unwrap()
        ),
        Db::Postgres(pg) => fill!(sqlx::PgPool::connect(pg.url()).await.unwrap()),
    }
    (mailbox, org)
}

/// The stored JSON of a cursor, as the database holds it.
async fn raw_cursor(db: &Db, mailbox: MailboxId) -> String {
    let sql = "SELECT doc FROM folder_state WHERE mailbox_id = $1 AND folder = 'INBOX'";
    match db {
        Db::Sqlite(dir) => {
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.path().join("serversync.db")),
            )
            .await
            .unwrap();
            let doc = sqlx::query_scalar(sql)
                .bind(mailbox.to_string())
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            doc
        }
        Db::Postgres(pg) => {
            let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
            let doc = sqlx::query_scalar(sql)
                .bind(mailbox.to_string())
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            doc
        }
    }
}

both!(
    cursor_and_change_rows_of_the_previous_schema_read_after_migrating,
    |backend, db| {
        let (mailbox, org) = previous_schema_with_rows(&db, backend).await;
        let store = open(&db).await;

        let c = store.get_cursor(mailbox, "INBOX").await.unwrap();
        assert_eq!(
            c,
            Some(FolderCursor::Imap(ImapCursor {
                uid_validity: Some(7),
                last_uid: Some(42),
                highest_modseq: Some(9001),
                ..Default::default()
            }))
        );
        let feed = store.changes_after(org, 0, 10).await.unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].origin, ChangeOrigin::System, "{feed:?}");

        // The next write under the lease stores the typed form, which reads back the same.
        let lease = store
            .acquire_lease(&format!("mailbox:{mailbox}"), "w", Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let mut next = c.unwrap().into_imap().unwrap();
        next.last_uid = Some(43);
        store
            .put_cursor(&lease, mailbox, "INBOX", &next)
            .await
            .unwrap();
        let raw = raw_cursor(&db, mailbox).await;
        assert!(raw.contains(r#""kind":"imap""#), "{raw}");
        assert_eq!(
            store.get_cursor(mailbox, "INBOX").await.unwrap(),
            Some(FolderCursor::Imap(next))
        );
    }
);

both!(token_and_pop3_cursors_round_trip, |backend, db| {
    let _ = backend;
    let store = open(&db).await;
    let m = MailboxId::new();
    let lease = store
        .acquire_lease(&format!("mailbox:{m}"), "w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let delta = FolderCursor::ServerToken(ServerTokenCursor {
        token: "https://graph.microsoft.com/v1.0/me/calendar/events/delta?$deltatoken=Zx9".into(),
    });
    store
        .put_cursor(&lease, m, "calendar", &delta)
        .await
        .unwrap();
    store
        .put_cursor(&lease, m, "INBOX", FolderCursor::Pop3)
        .await
        .unwrap();
    assert_eq!(store.get_cursor(m, "calendar").await.unwrap(), Some(delta));
    assert_eq!(
        store.get_cursor(m, "INBOX").await.unwrap(),
        Some(FolderCursor::Pop3)
    );
});

both!(items_of_every_source_round_trip, |backend, db| {
    let _ = backend;
    let store = open(&db).await;
    let (org, m) = org_with_mailbox(&store, "contoso").await;
    let sources = [
        ItemSource::Ews {
            folder: "Inbox".into(),
            item_id: "AAMkADAwATM0MDAAMS1iNjIzLTg0ZTAtMDACLTAwCgBGAAAD+/x=".into(),
        },
        ItemSource::Graph {
            folder: "inbox".into(),
            id: "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0AEDxzNmYjvk2Nc".into(),
        },
        ItemSource::Pop3 { uidl: "u-1".into() },
    ];
    for (i, source) in sources.iter().enumerate() {
        let sha = format!("{i:064x}");
        let key = source.key(&sha);
        let item = MailItem {
            id: ItemId::new(),
            org_id: org,
            mailbox_id: m,
            source: source.clone(),
            source_key: key.clone(),
            message_id: Some(format!("m{i}@example.test")),
            subject: Some("s".into()),
            from: None,
            to: vec![],
            cc: vec![],
            in_reply_to: None,
            references: vec![],
            sent_at: None,
            received_at: now(),
            size: 3,
            raw_sha256: sha,
            raw_kept: true,
            text_body: None,
            html_body: None,
            attachments: vec![],
            decision: ItemDecision::Stored,
            trace: vec![],
            created_at: now(),
        };
        let blobs: [(&str, &[u8]); 1] = [(item.raw_sha256.as_str(), b"abc")];
        let r = store.insert_item(&item, &blobs).await.unwrap();
        assert!(matches!(r, ItemInsert::Inserted), "{key}: {r:?}");
        // The same source key again is the same message: nothing is written.
        let again = MailItem {
            id: ItemId::new(),
            ..item.clone()
        };
        let r = store.insert_item(&again, &blobs).await.unwrap();
        assert!(matches!(r, ItemInsert::Duplicate), "{key}: {r:?}");
    }
    let stored = store.list_items(m, None, 100).await.unwrap().items;
    let mut keys: Vec<(String, ItemSource)> = stored
        .into_iter()
        .map(|i| (i.value.source_key, i.value.source))
        .collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(),
        [
            "ews:AAMkADAwATM0MDAAMS1iNjIzLTg0ZTAtMDACLTAwCgBGAAAD+/x=",
            "graph:AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0AEDxzNmYjvk2Nc",
            "pop3:u-1"
        ]
    );
    assert_eq!(keys[0].1, sources[0]);
    assert_eq!(keys[1].1, sources[1]);
});

both!(
    remote_links_one_per_record_and_per_remote_id,
    |backend, db| {
        let _ = backend;
        let store = open(&db).await;
        let (org, m) = org_with_mailbox(&store, "contoso").await;
        let (_, m2) = {
            // A second mailbox of the same organization.
            let u = User::new(org, "Bea", "bea@contoso.test", now());
            store.insert(&u).await.unwrap();
            let mb = Mailbox::new_with_defaults(
                org,
                MailboxRegarding::User(u.id),
                u.id,
                &u.full_name,
                &u.email,
                &EmailSettings::new(org),
                now(),
            );
            store.insert(&mb).await.unwrap();
            (org, mb.id)
        };
        let appt = appointment(org);
        store.insert(&appt).await.unwrap();
        let c = contact(org, "Carla");
        store.insert(&c).await.unwrap();
        let appt_id = appt.id.to_string();

        let l = link(org, m, RecordType::Appointment, &appt_id, "AAMk-1");
        let first = store.put_remote_link(&l, Expected::New).await.unwrap();
        assert_eq!(first.version, 1);
        assert_eq!(first.value, l);
        // New again: the record already has a link in this mailbox.
        let e = store.put_remote_link(&l, Expected::New).await.unwrap_err();
        assert!(
            matches!(&e, StoreError::Conflict { detail, .. } if detail.contains("already has a link")),
            "{e}"
        );

        // Updated from the version read; a writer holding the old version is refused.
        let pulled = RemoteLink {
            version_tag: Some("\"etag-2\"".into()),
            synced_hash: "1".repeat(64),
            synced_values: Default::default(),
            direction: SyncDirection::FromServer,
            ..l.clone()
        };
        let second = store
            .put_remote_link(&pulled, Expected::Version(1))
            .await
            .unwrap();
        assert_eq!(second.version, 2);
        assert_eq!(second.created_at, first.created_at);
        let e = store
            .put_remote_link(&l, Expected::Version(1))
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::VersionMismatch { expected: 1, .. }),
            "{e}"
        );
        let got = store
            .get_remote_link(org, m, &appt_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.value.clone(), got.version), (pulled.clone(), 2));
        let by_remote = store
            .get_remote_link_by_remote_id(org, m, "AAMk-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_remote.value, pulled);
        assert!(
            store
                .get_remote_link_by_remote_id(org, m2, "AAMk-1")
                .await
                .unwrap()
                .is_none()
        );

        // Another record of the same mailbox cannot take the same remote id…
        let e = store
            .put_remote_link(
                &link(org, m, RecordType::Contact, &c.id.to_string(), "AAMk-1"),
                Expected::New,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
        let e = store
            .put_remote_link(
                &link(org, m, RecordType::Contact, &c.id.to_string(), "AAMk-1"),
                Expected::Any,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Conflict { .. }), "{e}");
        // …but another mailbox can, and the record can be linked there too.
        store
            .put_remote_link(
                &link(org, m2, RecordType::Appointment, &appt_id, "AAMk-1"),
                Expected::New,
            )
            .await
            .unwrap();
        let any = store
            .put_remote_link(
                &link(org, m, RecordType::Contact, &c.id.to_string(), "card-7.vcf"),
                Expected::Any,
            )
            .await
            .unwrap();
        assert_eq!(any.version, 1);
        let replaced = store
            .put_remote_link(
                &link(org, m, RecordType::Contact, &c.id.to_string(), "card-8.vcf"),
                Expected::Any,
            )
            .await
            .unwrap();
        assert_eq!(replaced.version, 2);

        // Listing a mailbox pages in record order and sees only that mailbox.
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = store
                .list_remote_links(org, m, after.as_deref(), 1)
                .await
                .unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.value.record_id.clone());
            seen.extend(page.into_iter().map(|s| s.value.remote_id));
        }
        let mut want = [
            ("AAMk-1", appt_id.clone()),
            ("card-8.vcf", c.id.to_string()),
        ];
        want.sort_by(|a, b| a.1.cmp(&b.1));
        assert_eq!(seen, want.iter().map(|w| w.0).collect::<Vec<_>>());

        // A bad field is refused before anything is written, naming the field.
        let e = store
            .put_remote_link(
                &RemoteLink {
                    synced_hash: "not a hash".into(),
                    synced_values: Default::default(),
                    ..link(org, m, RecordType::Task, "x", "y")
                },
                Expected::Any,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::Invalid { errors, .. } if errors.0[0].field == "synced_hash"),
            "{e}"
        );
        // The record must be of the type named.
        let e = store
            .put_remote_link(
                &link(org, m, RecordType::Task, &appt_id, "task-1"),
                Expected::New,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::NotFound { entity: "task", .. }),
            "{e}"
        );

        // Delete: only at the version given, when given.
        assert!(
            !store
                .delete_remote_link(org, m, &appt_id, Some(1))
                .await
                .unwrap()
        );
        assert!(
            store
                .delete_remote_link(org, m, &appt_id, Some(2))
                .await
                .unwrap()
        );
        assert!(
            store
                .get_remote_link(org, m, &appt_id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            !store
                .delete_remote_link(org, m, &appt_id, None)
                .await
                .unwrap()
        );
        let e = store
            .put_remote_link(&pulled, Expected::Version(2))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        // The remote id is free again in that mailbox.
        store
            .put_remote_link(
                &link(org, m, RecordType::Appointment, &appt_id, "AAMk-1"),
                Expected::New,
            )
            .await
            .unwrap();
    }
);

both!(
    remote_links_stay_within_their_organization,
    |backend, db| {
        let _ = backend;
        let store = open(&db).await;
        let (a, ma) = org_with_mailbox(&store, "contoso").await;
        let (b, mb) = org_with_mailbox(&store, "fabrikam").await;
        let ca = contact(a, "Carla");
        store.insert(&ca).await.unwrap();
        let cb = contact(b, "Bert");
        store.insert(&cb).await.unwrap();

        // A's mailbox with B's record, B's mailbox with A's record: refused, naming what is not
        // the organization's.
        let e = store
            .put_remote_link(
                &link(a, ma, RecordType::Contact, &cb.id.to_string(), "r1"),
                Expected::Any,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::NotFound { entity: "contact", id } if *id == cb.id.to_string()),
            "{e}"
        );
        let e = store
            .put_remote_link(
                &link(a, mb, RecordType::Contact, &ca.id.to_string(), "r1"),
                Expected::New,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StoreError::NotFound { entity: "mailbox", id } if *id == mb.to_string()),
            "{e}"
        );
        // Naming the other organization does not help either.
        let e = store
            .put_remote_link(
                &link(b, mb, RecordType::Contact, &ca.id.to_string(), "r1"),
                Expected::New,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                &e,
                StoreError::NotFound {
                    entity: "contact",
                    ..
                }
            ),
            "{e}"
        );

        store
            .put_remote_link(
                &link(a, ma, RecordType::Contact, &ca.id.to_string(), "r1"),
                Expected::New,
            )
            .await
            .unwrap();
        // B sees none of A's links, and cannot change or delete them.
        let ca_id = ca.id.to_string();
        assert!(
            store
                .get_remote_link(b, ma, &ca_id)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .get_remote_link_by_remote_id(b, ma, "r1")
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .list_remote_links(b, ma, None, 100)
                .await
                .unwrap()
                .is_empty()
        );
        let e = store
            .put_remote_link(
                &link(b, ma, RecordType::Contact, &ca_id, "stolen"),
                Expected::Version(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        assert!(!store.delete_remote_link(b, ma, &ca_id, None).await.unwrap());
        let kept = store.get_remote_link(a, ma, &ca_id).await.unwrap().unwrap();
        assert_eq!((kept.value.remote_id.as_str(), kept.version), ("r1", 1));
    }
);

both!(
    changes_carry_their_origin_and_a_reader_can_skip_its_own,
    |backend, db| {
        let _ = backend;
        let store = open(&db).await;
        let (org, m) = org_with_mailbox(&store, "contoso").await;
        let syncer = store.with_origin(ChangeOrigin::Sync(m));
        let api = store.with_origin(ChangeOrigin::Api);
        assert_eq!(store.origin(), ChangeOrigin::System);

        // What the syncer read from the server, what a user changed, what the system did.
        let from_server = contact(org, "From the server");
        syncer.insert(&from_server).await.unwrap();
        let by_user = contact(org, "By a user");
        let stored = api.insert(&by_user).await.unwrap();
        let renamed = Contact {
            full_name: "Renamed by the server".into(),
            ..by_user.clone()
        };
        syncer.update(&renamed, Some(stored.version)).await.unwrap();
        let plain = contact(org, "Plain");
        store.insert(&plain).await.unwrap();
        assert!(
            syncer
                .delete::<Contact>(&from_server.id.to_string(), None)
                .await
                .unwrap()
        );

        let feed = store.changes_after(org, 0, 100).await.unwrap();
        let got: Vec<(String, ChangeOp, ChangeOrigin)> = feed
            .iter()
            .map(|c| (c.record_id.clone(), c.op, c.origin))
            .collect();
        assert_eq!(
            got,
            [
                (
                    from_server.id.to_string(),
                    ChangeOp::Created,
                    ChangeOrigin::Sync(m)
                ),
                (by_user.id.to_string(), ChangeOp::Created, ChangeOrigin::Api),
                (
                    by_user.id.to_string(),
                    ChangeOp::Updated,
                    ChangeOrigin::Sync(m)
                ),
                (
                    plain.id.to_string(),
                    ChangeOp::Created,
                    ChangeOrigin::System
                ),
                (
                    from_server.id.to_string(),
                    ChangeOp::Deleted,
                    ChangeOrigin::Sync(m)
                ),
            ]
        );
        // The origin is part of the JSON a feed reader and a webhook receive.
        let json = serde_json::to_value(&feed[0]).unwrap();
        assert_eq!(json["origin"], format!("sync:{m}"));

        // The syncer following the feed leaves out its own writes, paging past them.
        let others = store
            .changes_after_excluding(org, 0, 100, ChangeOrigin::Sync(m))
            .await
            .unwrap();
        assert_eq!(
            others.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [feed[1].seq, feed[3].seq]
        );
        let page = store
            .changes_after_excluding(org, feed[1].seq, 1, ChangeOrigin::Sync(m))
            .await
            .unwrap();
        assert_eq!(
            page.iter().map(|c| c.seq).collect::<Vec<_>>(),
            [feed[3].seq]
        );
        // Another mailbox's syncer sees them all.
        let other = store
            .changes_after_excluding(org, 0, 100, ChangeOrigin::Sync(MailboxId::new()))
            .await
            .unwrap();
        assert_eq!(other.len(), feed.len());
    }
);
