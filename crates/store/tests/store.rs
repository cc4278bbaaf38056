//! Store behaviour, each test run once on SQLite and once on PostgreSQL.

use serversync_model::alert::{Alert, Severity};
use serversync_model::audit::Actor;
use serversync_model::crm::{Direction, EmailActivity, EmailStatus};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{BuiltinRole, Organization, User};
use serversync_model::profile::{EmailServerProfile, Endpoint, ServerType, TlsMode};
use serversync_model::settings::EmailSettings;
use serversync_model::sync::{FolderCursor, ImapCursor};
use serversync_model::{ActivityId, AlertId, OrgId, Secret, UserId};
use serversync_store::{Backend, Col, NewAuditEntry, Store, StoreError};
use serversync_vault::MasterKey;
use std::time::Duration;

mod common;
use common::Db;

fn key(b64: &str) -> MasterKey {
    MasterKey::from_base64(b64, serversync_vault::KeySource::Direct).unwrap()
}

macro_rules! both {
    ($name:ident, |$store:ident, $db:ident, $key:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run(backend: Backend) {
                let $db = Db::new(backend).await;
                let $key = MasterKey::generate().unwrap().to_base64();
                #[allow(unused_mut)]
                let mut $store = Store::open(&$db.url(), key(&$key)).await.unwrap();
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

/// A stored (untracked) item of `mailbox`, from POP3 with this UIDL.
fn stored_item(
    org: OrgId,
    mailbox: serversync_model::MailboxId,
    uidl: &str,
) -> serversync_model::item::MailItem {
    use serversync_model::item::{ItemDecision, ItemSource, MailItem};
    let source = ItemSource::Pop3 {
        uidl: uidl.to_owned(),
    };
    MailItem {
        id: serversync_model::ItemId::new(),
        org_id: org,
        mailbox_id: mailbox,
        source_key: source.key(""),
        source,
        message_id: None,
        subject: None,
        from: None,
        to: Vec::new(),
        cc: Vec::new(),
        in_reply_to: None,
        references: Vec::new(),
        sent_at: None,
        received_at: now(),
        size: 0,
        raw_sha256: "0".repeat(64),
        raw_kept: false,
        text_body: None,
        html_body: None,
        attachments: Vec::new(),
        decision: ItemDecision::Stored,
        trace: vec!["stored".into()],
        created_at: now(),
    }
}

async fn org_and_admin(store: &Store) -> (Organization, User) {
    let org = Organization::new("contoso", "Contoso", now());
    store.insert(&org).await.unwrap();
    let role = BuiltinRole::SystemAdministrator.role(org.id);
    store.insert(&role).await.unwrap();
    let mut admin = User::new(org.id, "Ada Admin", "ada@example.test", now());
    admin.role_ids.insert(role.id);
    store.insert(&admin).await.unwrap();
    (org, admin)
}

fn imap_profile(org: OrgId, owner: &User) -> EmailServerProfile {
    let mut p = EmailServerProfile::new(org, "Test IMAP", ServerType::ImapSmtp, owner.id, now());
    p.incoming = Some(Endpoint {
        location: "127.0.0.1".into(),
        port: 993,
        tls: TlsMode::Implicit,
    });
    p.outgoing = Some(Endpoint {
        location: "127.0.0.1".into(),
        port: 587,
        tls: TlsMode::StartTls,
    });
    p
}

both!(
    entities_round_trip_with_versions_and_conflicts,
    |store, db, k| {
        let (org, admin) = org_and_admin(&store).await;
        let got = store.fetch::<User>(&admin.id.to_string()).await.unwrap();
        assert_eq!(got.value, admin);
        assert_eq!(got.version, 1);

        // Unique email per organization.
        let dup = User::new(org.id, "Other", "ADA@example.test", now());
        assert!(matches!(
            store.insert(&dup).await,
            Err(StoreError::Conflict { .. })
        ));

        // Optimistic concurrency.
        let mut changed = admin.clone();
        changed.full_name = "Ada Lovelace".into();
        let v2 = store.update(&changed, Some(1)).await.unwrap();
        assert_eq!(v2.version, 2);
        changed.full_name = "Stale".into();
        assert!(matches!(
            store.update(&changed, Some(1)).await,
            Err(StoreError::VersionMismatch { .. })
        ));
        assert_eq!(
            store
                .fetch::<User>(&admin.id.to_string())
                .await
                .unwrap()
                .value
                .full_name,
            "Ada Lovelace"
        );

        // Settings: one per organization.
        let mut settings = EmailSettings::new(org.id);
        let profile = imap_profile(org.id, &admin);
        store.insert(&profile).await.unwrap();
        settings.default_profile_id = Some(profile.id);
        store.insert(&settings).await.unwrap();
        let s = store
            .fetch::<EmailSettings>(&org.id.to_string())
            .await
            .unwrap();
        assert_eq!(s.value.default_profile_id, Some(profile.id));
        assert!(s.value.require_approved_users);

        // Only one default profile per organization.
        let mut p1 = imap_profile(org.id, &admin);
        p1.name = "A".into();
        p1.is_default = true;
        store.insert(&p1).await.unwrap();
        let mut p2 = imap_profile(org.id, &admin);
        p2.name = "B".into();
        p2.is_default = true;
        assert!(matches!(
            store.insert(&p2).await,
            Err(StoreError::Conflict { .. })
        ));
        let _ = (db, k);
    }
);

both!(lists_filter_and_paginate, |store, db, k| {
    let (org, admin) = org_and_admin(&store).await;
    let settings = EmailSettings::new(org.id);
    let mut ids = Vec::new();
    for i in 0..7 {
        let u = User::new(
            org.id,
            &format!("User {i}"),
            &format!("u{i}@example.test"),
            now(),
        );
        store.insert(&u).await.unwrap();
        let mut m = Mailbox::new_with_defaults(
            org.id,
            MailboxRegarding::User(u.id),
            u.id,
            &u.full_name,
            &u.email,
            &settings,
            now(),
        );
        if i % 2 == 0 {
            m.approval = ApprovalStatus::Approved;
        }
        store.insert(&m).await.unwrap();
        ids.push(m.id);
    }
    // Another organization's data never shows.
    let other = Organization::new("fabrikam", "Fabrikam", now());
    store.insert(&other).await.unwrap();
    let ou = User::new(other.id, "Out", "out@example.test", now());
    store.insert(&ou).await.unwrap();

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list::<Mailbox>(Some(org.id), &[], after.as_deref(), 3)
            .await
            .unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items.iter().map(|s| s.value.id));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ids, "every mailbox once, in creation order");
    let approved = store
        .list_all::<Mailbox>(Some(org.id), &[("approval", Col::text("approved"))])
        .await
        .unwrap();
    assert_eq!(approved.len(), 4);
    assert_eq!(
        store
            .list_all::<User>(Some(org.id), &[])
            .await
            .unwrap()
            .len(),
        8
    );
    assert!(
        store
            .list_all::<User>(Some(other.id), &[])
            .await
            .unwrap()
            .iter()
            .all(|u| u.value.org_id == other.id)
    );
    let _ = (admin, db, k);
});

both!(
    changes_are_audited_in_the_same_transaction_without_secrets,
    |store, db, k| {
        let (org, admin) = org_and_admin(&store).await;
        let mut p = imap_profile(org.id, &admin);
        p.username = Some("svc@example.test".into());
        p.password = Some(
            store
                .put_secret(Some(org.id), &Secret::new("Pr0file-Passw0rd!"))
                .await
                .unwrap(),
        );
        let actor = Actor::User(admin.id);
        store
            .insert_audited(&p, Some(NewAuditEntry::create(actor.clone(), &p)))
            .await
            .unwrap();
        let mut after = p.clone();
        after.advanced.max_concurrent_connections = 20;
        store
            .update_audited(
                &after,
                Some(1),
                Some(NewAuditEntry::update(actor.clone(), &p, &after)),
            )
            .await
            .unwrap();
        store
            .delete::<EmailServerProfile>(
                &p.id.to_string(),
                Some(NewAuditEntry::delete(actor.clone(), &after)),
            )
            .await
            .unwrap();
        assert!(
            store
                .get::<EmailServerProfile>(&p.id.to_string())
                .await
                .unwrap()
                .is_none()
        );

        let log = store.list_audit(Some(org.id), 0, 100).await.unwrap();
        let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(actions, ["create", "update", "delete"]);
        assert!(
            log.iter()
                .all(|e| e.actor == actor && e.entity == "email server profile")
        );
        assert_eq!(
            log[1].before.as_ref().unwrap()["advanced"]["max_concurrent_connections"],
            10
        );
        assert_eq!(
            log[1].after.as_ref().unwrap()["advanced"]["max_concurrent_connections"],
            20
        );
        let text = serde_json::to_string(&log).unwrap();
        assert!(!text.contains("Pr0file-Passw0rd!"));
        // A failed update (stale version) leaves no audit entry behind.
        let a = Alert {
            id: AlertId::new(),
            org_id: org.id,
            severity: Severity::Error,
            code: "x".into(),
            message: "m".into(),
            mailbox_id: None,
            profile_id: None,
            step: None,
            recipients: vec![],
            created_at: now(),
            dismissed_at: None,
        };
        store.insert(&a).await.unwrap();
        assert!(
            store
                .update_audited(&a, Some(7), Some(NewAuditEntry::update(actor, &a, &a)))
                .await
                .is_err()
        );
        assert_eq!(
            store.list_audit(Some(org.id), 0, 100).await.unwrap().len(),
            3
        );
        let _ = (db, k);
    }
);

both!(the_audit_log_pages_newest_first, |store, db, k| {
    let (org, _) = org_and_admin(&store).await;
    let other = Organization::new("fabrikam", "Fabrikam", now());
    store.insert(&other).await.unwrap();
    let entry = |o: OrgId, i: usize| NewAuditEntry {
        org_id: Some(o),
        actor: Actor::System("test".into()),
        action: "probe".into(),
        entity: "probe".into(),
        entity_id: format!("{i}"),
        before: None,
        after: None,
    };
    for i in 0..25 {
        store.append_audit(entry(org.id, i)).await.unwrap();
        store.append_audit(entry(other.id, i)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_audit_newest(Some(org.id), before, 10)
            .await
            .unwrap();
        assert!(page.iter().all(|e| e.org_id == Some(org.id)));
        assert!(page.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
        seen.extend(
            page.iter()
                .filter(|e| e.action == "probe")
                .map(|e| e.entity_id.clone()),
        );
        match page.last() {
            Some(last) if page.len() == 10 => before = Some(last.seq),
            _ => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| i.to_string()).collect();
    assert_eq!(seen, expected);
    // Every organization's, newest first: the other organization's last entry leads.
    let all = store.list_audit_newest(None, None, 1).await.unwrap();
    assert_eq!(
        (all[0].org_id, all[0].entity_id.as_str()),
        (Some(other.id), "24")
    );
    let _ = (db, k);
});

both!(
    several_writes_commit_together_or_not_at_all,
    |store, db, k| {
        let (org, admin) = org_and_admin(&store).await;
        let a = User::new(org.id, "A", "a@example.test", now());
        let b = User::new(org.id, "B", "b@example.test", now());
        store.insert(&a).await.unwrap();
        store.insert(&b).await.unwrap();
        let mut a2 = a.clone();
        a2.full_name = "A2".into();
        let mut b2 = b.clone();
        b2.full_name = "B2".into();
        // The second write expects a version that is not the stored one: neither is written, and
        // no audit entry either.
        let writes = [
            serversync_store::EntityWrite::update(&a2, Some(1)).unwrap(),
            serversync_store::EntityWrite::update(&b2, Some(7)).unwrap(),
        ];
        let audit = vec![NewAuditEntry::update(Actor::User(admin.id), &a, &a2)];
        let err = store
            .write_all_audited(&writes, audit.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::VersionMismatch { .. }), "{err}");
        let name = |id: String| {
            let store = store.clone();
            async move { store.fetch::<User>(&id).await.unwrap().value.full_name }
        };
        assert_eq!(name(a.id.to_string()).await, "A");
        assert_eq!(name(b.id.to_string()).await, "B");
        let writes = [
            serversync_store::EntityWrite::update(&a2, Some(1)).unwrap(),
            serversync_store::EntityWrite::update(&b2, Some(1)).unwrap(),
        ];
        store.write_all_audited(&writes, audit).await.unwrap();
        assert_eq!(name(a.id.to_string()).await, "A2");
        assert_eq!(name(b.id.to_string()).await, "B2");
        let log = store.list_audit(Some(org.id), 0, 100).await.unwrap();
        assert_eq!(log.iter().filter(|e| e.action == "update").count(), 1);
        let _ = (db, k);
    }
);

both!(secrets_are_encrypted_at_rest, |store, db, k| {
    const PLAIN: &str = "S3cret-Test-Passw0rd-7f3a";
    let id = store.put_secret(None, &Secret::new(PLAIN)).await.unwrap();
    assert_eq!(store.get_secret(id).await.unwrap().expose(), PLAIN);
    store
        .replace_secret(id, &Secret::new(format!("{PLAIN}-2")))
        .await
        .unwrap();
    assert_eq!(
        store.get_secret(id).await.unwrap().expose(),
        format!("{PLAIN}-2")
    );

    let haystack: Vec<u8> = match db.sqlite_file() {
        Some(file) => {
            store.close().await; // checkpoint the WAL into the file
            let mut bytes = std::fs::read(&file).unwrap();
            for ext in ["-wal", "-shm"] {
                if let Ok(b) = std::fs::read(format!("{}{ext}", file.display())) {
                    bytes.extend(b);
                }
            }
            bytes
        }
        None => {
            let out = std::process::Command::new("pg_dump")
                .arg("--dbname")
                .arg(db.url())
                .output()
                .expect("pg_dump runs");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains("secrets"),
                "the dump covers the secrets table"
            );
            out.stdout
        }
    };
    assert!(haystack.len() > 1000);
    assert!(
        !haystack.windows(PLAIN.len()).any(|w| w == PLAIN.as_bytes()),
        "plaintext password found at rest"
    );
    let _ = k;
});

both!(
    a_wrong_master_key_is_refused_and_loses_nothing,
    |store, db, k| {
        let id = store
            .put_secret(None, &Secret::new("keep-me"))
            .await
            .unwrap();
        store.close().await;
        let wrong = MasterKey::generate().unwrap();
        let err = Store::open(&db.url(), wrong).await.unwrap_err();
        assert!(matches!(err, StoreError::WrongMasterKey { .. }), "{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        let again = Store::open(&db.url(), key(&k)).await.unwrap();
        assert_eq!(again.get_secret(id).await.unwrap().expose(), "keep-me");
    }
);

both!(key_rotation_reencrypts_every_secret, |store, db, k| {
    let a = store.put_secret(None, &Secret::new("alpha")).await.unwrap();
    let b = store.put_secret(None, &Secret::new("beta")).await.unwrap();
    let old_id = store.master_key().id().to_owned();
    let new_key = MasterKey::generate().unwrap();
    let new_b64 = new_key.to_base64();
    let (rotated, n) = store.rotate_master_key(new_key).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(rotated.get_secret(a).await.unwrap().expose(), "alpha");
    assert_ne!(rotated.stored_key_id().await.unwrap().unwrap(), old_id);
    rotated.close().await;
    assert!(matches!(
        Store::open(&db.url(), key(&k)).await,
        Err(StoreError::WrongMasterKey { .. })
    ));
    let reopened = Store::open(&db.url(), key(&new_b64)).await.unwrap();
    assert_eq!(reopened.get_secret(b).await.unwrap().expose(), "beta");
});

both!(leases_fence_stale_owners, |store, db, k| {
    let mailbox = serversync_model::MailboxId::new();
    let res = format!("mailbox:{mailbox}");
    let ttl = Duration::from_millis(400);
    let a = store
        .acquire_lease(&res, "worker-a", ttl)
        .await
        .unwrap()
        .expect("free lease");
    assert!(
        store
            .acquire_lease(&res, "worker-b", ttl)
            .await
            .unwrap()
            .is_none(),
        "held by a"
    );
    store.renew_lease(&a, ttl).await.unwrap();
    let cursor = ImapCursor {
        uid_validity: Some(7),
        last_uid: Some(42),
        ..Default::default()
    };
    store
        .put_cursor(&a, mailbox, "INBOX", &cursor)
        .await
        .unwrap();

    tokio::time::sleep(Duration::from_millis(500)).await; // a stops heartbeating
    let b = store
        .acquire_lease(&res, "worker-b", ttl)
        .await
        .unwrap()
        .expect("expired lease taken over");
    assert_eq!(b.epoch, a.epoch + 1);
    assert!(matches!(
        store.renew_lease(&a, ttl).await,
        Err(StoreError::LeaseLost { .. })
    ));
    let stale = ImapCursor {
        last_uid: Some(99),
        ..cursor.clone()
    };
    assert!(matches!(
        store.put_cursor(&a, mailbox, "INBOX", &stale).await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        store.get_cursor(mailbox, "INBOX").await.unwrap(),
        Some(FolderCursor::Imap(cursor.clone()))
    );

    // A clean release hands over at once.
    store.release_lease(&b).await.unwrap();
    let c = store
        .acquire_lease(&res, "worker-c", Duration::from_secs(60))
        .await
        .unwrap()
        .expect("released");
    assert_eq!(c.epoch, b.epoch + 1);
    assert_eq!(store.release_all_leases("worker-c").await.unwrap(), 1);
    let _ = (db, k);
});

both!(
    lease_renewal_of_many_in_one_call_reports_the_lost,
    |store, db, k| {
        let ttl = Duration::from_secs(60);
        // More than one statement's worth (1,000 leases each), so the chunks are exercised too.
        let n = 1005;
        let mut held = Vec::new();
        for i in 0..n {
            let g = store
                .acquire_lease(&format!("mailbox:bulk{i}"), "worker-a", ttl)
                .await
                .unwrap()
                .expect("free lease");
            held.push((g.resource, g.epoch));
        }
        // Lease 0 expires (acquired again with no time left, then taken by b); lease 1 is
        // released; lease 3 is asked for under an older epoch than the one held.
        store
            .release_lease(&serversync_store::LeaseGuard {
                resource: held[0].0.clone(),
                owner: "worker-a".into(),
                epoch: held[0].1,
            })
            .await
            .unwrap();
        store
            .acquire_lease(&held[0].0, "worker-b", ttl)
            .await
            .unwrap()
            .expect("released, so free");
        store
            .release_lease(&serversync_store::LeaseGuard {
                resource: held[1].0.clone(),
                owner: "worker-a".into(),
                epoch: held[1].1,
            })
            .await
            .unwrap();
        let mut asked = held.clone();
        asked[3].1 -= 1;
        let renewed = store.renew_leases("worker-a", &asked, ttl).await.unwrap();
        let renewed: std::collections::HashSet<_> = renewed.into_iter().collect();
        assert_eq!(renewed.len(), n - 3, "all but the three lost");
        for (i, lease) in asked.iter().enumerate() {
            assert_eq!(
                renewed.contains(lease),
                ![0, 1, 3].contains(&i),
                "lease {i}"
            );
        }
        // b's lease is untouched and still b's.
        let l0 = store.get_lease(&held[0].0).await.unwrap().unwrap();
        assert_eq!((l0.owner.as_str(), l0.epoch), ("worker-b", held[0].1 + 1));
        // The renewed ones are still held: nobody else can take them.
        assert!(
            store
                .acquire_lease(&held[n - 1].0, "worker-b", ttl)
                .await
                .unwrap()
                .is_none()
        );
        // Renewing nothing is no statement and no error.
        assert!(
            store
                .renew_leases("worker-a", &[], ttl)
                .await
                .unwrap()
                .is_empty()
        );
        let _ = (db, k);
    }
);

both!(item_decisions_per_mailbox, |store, db, k| {
    use serversync_model::MailboxId;
    use serversync_model::item::ItemDecision;
    let org = OrgId::new();
    let (mine, other) = (MailboxId::new(), MailboxId::new());
    let item = |mailbox: MailboxId, uidl: String| stored_item(org, mailbox, &uidl);
    // More keys than one query asks for at a time, so the chunks must add up.
    for i in (0..1200).step_by(2) {
        let mut it = item(mine, format!("u{i}"));
        if i == 2 {
            it.decision = ItemDecision::Skipped;
        }
        store.insert_item(&it, &[]).await.unwrap();
    }
    store
        .insert_item(&item(other, "u1".into()), &[])
        .await
        .unwrap();
    let asked: Vec<String> = (0..1200).map(|i| format!("pop3:u{i}")).collect();
    let found = store.item_decisions(mine, &asked).await.unwrap();
    assert_eq!(found.len(), 600);
    assert_eq!(found.get("pop3:u0"), Some(&ItemDecision::Stored));
    assert_eq!(found.get("pop3:u2"), Some(&ItemDecision::Skipped));
    assert_eq!(found.get("pop3:u1198"), Some(&ItemDecision::Stored));
    assert!(
        !found.contains_key("pop3:u1"),
        "another mailbox's item does not count"
    );
    assert!(store.item_decisions(mine, &[]).await.unwrap().is_empty());
    let _ = (db, k);
});

both!(counters_never_hand_out_a_value_twice, |store, db, k| {
    let org = OrgId::new();
    let other = OrgId::new();
    assert_eq!(store.counter(org, "tracking_token").await.unwrap(), 0);
    // Four writers at once, 25 values each: 1..=100, every value once.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..25 {
                got.push(s.next_counter(org, "tracking_token").await.unwrap());
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
    assert_eq!(store.counter(org, "tracking_token").await.unwrap(), 100);
    assert_eq!(
        store.next_counter(other, "tracking_token").await.unwrap(),
        1,
        "per organization"
    );
    // Per-minute counters are pruned by name order.
    for minute in ["sends:100:a", "sends:101:a", "sends:102:b"] {
        store.next_counter(org, minute).await.unwrap();
    }
    assert_eq!(
        store.prune_counters("sends:", "sends:102:").await.unwrap(),
        2
    );
    assert_eq!(store.counter(org, "sends:102:b").await.unwrap(), 1);
    assert_eq!(
        store.counter(org, "tracking_token").await.unwrap(),
        100,
        "other names kept"
    );
});

// The tracker's batch: its writes and the items' marks commit together or not at all.
both!(tracking_commits_all_or_nothing, |store, db, k| {
    use serversync_store::EntityWrite;
    let (org, _) = org_and_admin(&store).await;
    let item = stored_item(org.id, serversync_model::MailboxId::new(), "t1");
    store.insert_item(&item, &[]).await.unwrap();
    let lease = store
        .acquire_lease("tracker:test", "w", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let untracked = || async { store.untracked_items(org.id, 10).await.unwrap().len() };
    let mut renamed = org.clone();
    renamed.display_name = "Contoso Ltd".into();
    // Someone changed the organization since it was read at version 1.
    store.update(&org, Some(1)).await.unwrap();
    let done = vec![(item.id, None, vec!["tracked as activity x".to_owned()])];
    let stale = [EntityWrite::update(&renamed, Some(1)).unwrap()];
    let err = store
        .commit_tracking(&lease, &stale, &done)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::VersionMismatch { .. }), "{err}");
    assert_eq!(untracked().await, 1, "the item is not marked either");
    let fresh = [EntityWrite::update(&renamed, Some(2)).unwrap()];
    store.commit_tracking(&lease, &fresh, &done).await.unwrap();
    assert_eq!(untracked().await, 0);
    let stored = store
        .fetch::<serversync_model::item::MailItem>(&item.id.to_string())
        .await
        .unwrap();
    assert_eq!(stored.value.trace, ["stored", "tracked as activity x"]);
    let org_now = store
        .fetch::<Organization>(&org.id.to_string())
        .await
        .unwrap();
    assert_eq!(
        (org_now.version, org_now.value.display_name.as_str()),
        (3, "Contoso Ltd")
    );
    // Marked once: a second commit of the same item writes nothing.
    let again = [EntityWrite::update(&org, Some(3)).unwrap()];
    let err = store
        .commit_tracking(&lease, &again, &done)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
    assert_eq!(
        store
            .fetch::<Organization>(&org.id.to_string())
            .await
            .unwrap()
            .version,
        3
    );
    // Without the lease nothing is written.
    let other = stored_item(org.id, item.mailbox_id, "t2");
    store.insert_item(&other, &[]).await.unwrap();
    store.release_lease(&lease).await.unwrap();
    let err = store
        .commit_tracking(&lease, &again, &[(other.id, None, Vec::new())])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err}");
    assert_eq!(untracked().await, 1);
    assert_eq!(
        store
            .fetch::<Organization>(&org.id.to_string())
            .await
            .unwrap()
            .version,
        3
    );
    let _ = (db, k);
});

// Many writers at once — as when thousands of mailboxes start together — each in a
// transaction that reads before it writes (marking items tracked reads an item, then updates
// it), beside entity updates and fenced cursor writes: every write succeeds, none fails with
// "database is locked" (on SQLite all writes queue for the one writer connection).
both!(concurrent_writers_all_succeed, |store, db, k| {
    use serversync_model::item::MailItem;
    let (org, _) = org_and_admin(&store).await;
    let mailbox = serversync_model::MailboxId::new();
    let items: Vec<MailItem> = (0..200)
        .map(|i| stored_item(org.id, mailbox, &format!("c{i}")))
        .collect();
    let rows: Vec<serversync_store::ItemRow<'_>> = items.iter().map(|i| (i, &[][..])).collect();
    store.insert_items(&rows).await.unwrap();
    let lease = store
        .acquire_lease("tracker:concurrent", "w", Duration::from_secs(120))
        .await
        .unwrap()
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in items.chunks(4) {
        let (store, lease) = (store.clone(), lease.clone());
        let ids: Vec<_> = chunk.iter().map(|i| i.id).collect();
        tasks.spawn(async move {
            for id in ids {
                store
                    .commit_tracking(&lease, &[], &[(id, None, vec![format!("done {id}")])])
                    .await?;
            }
            Ok::<_, StoreError>(())
        });
    }
    for n in 0..20 {
        let store = store.clone();
        let org_id = org.id;
        tasks.spawn(async move {
            let res = format!("incoming:concurrent-{n}");
            let lease = store
                .acquire_lease(&res, "w", Duration::from_secs(120))
                .await?
                .expect("free lease");
            let mailbox = serversync_model::MailboxId::new();
            for uid in 1..=10u32 {
                let cursor = ImapCursor {
                    uid_validity: Some(7),
                    last_uid: Some(uid),
                    ..Default::default()
                };
                store.put_cursor(&lease, mailbox, "INBOX", cursor).await?;
                let mut o = store.fetch::<Organization>(&org_id.to_string()).await?;
                o.value.display_name = format!("Contoso {n}-{uid}");
                // Someone else may have changed it since it was read: only that may fail.
                match store.update(&o.value, Some(o.version)).await {
                    Ok(_) | Err(StoreError::VersionMismatch { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(store.untracked_items(org.id, 1000).await.unwrap().len(), 0);
    for it in &items {
        let stored = store.fetch::<MailItem>(&it.id.to_string()).await.unwrap();
        assert_eq!(
            stored.value.trace,
            ["stored".to_owned(), format!("done {}", it.id)]
        );
    }
});

/// An outgoing email of `mailbox`, in pending send.
fn outgoing_email(org: OrgId, mailbox: serversync_model::MailboxId) -> EmailActivity {
    EmailActivity {
        id: ActivityId::new(),
        org_id: org,
        subject: "block".into(),
        text_body: Some("hello".into()),
        html_body: None,
        direction: Direction::Outgoing,
        status: EmailStatus::PendingSend,
        owner_id: UserId::new(),
        parties: vec![],
        attachments: vec![],
        regarding: None,
        tracking_token: None,
        message_id: None,
        in_reply_to: None,
        references: vec![],
        content_key: None,
        conversation_id: None,
        mailbox_ids: vec![mailbox],
        item_ids: vec![],
        sent_at: None,
        received_at: None,
        send_after: None,
        delivery_attempts: 0,
        send_error: None,
        router_claim: None,
        send_trace: Vec::new(),
        created_at: now(),
        updated_at: now(),
    }
}

// A block of outgoing email marked in one commit: each update only from the version it was
// read at (one changed meanwhile is left out, the others are written), each with its change
// feed entry; the listing by mailbox stays right whether the links changed or not.
both!(
    update_each_writes_a_block_and_leaves_out_what_changed,
    |store, db, k| {
        use serversync_model::MailboxId;
        use serversync_store::Filter;
        let org = OrgId::new();
        let (m1, m2) = (MailboxId::new(), MailboxId::new());
        let mut stored = Vec::new();
        for _ in 0..4 {
            stored.push(store.insert(&outgoing_email(org, m1)).await.unwrap());
        }
        let seq_before = store.changes_after(org, 0, 1000).await.unwrap().len();
        // Someone edits the third meanwhile.
        let mut edited = stored[2].value.clone();
        edited.subject = "edited".into();
        store
            .update(&edited, Some(stored[2].version))
            .await
            .unwrap();
        // The block: all four to sending; the last one also moves to another mailbox.
        let mut next: Vec<EmailActivity> = stored
            .iter()
            .map(|s| {
                let mut a = s.value.clone();
                a.status = EmailStatus::Sending;
                a
            })
            .collect();
        next[3].mailbox_ids = vec![m2];
        let writes: Vec<_> = next.iter().zip(&stored).collect();
        let answers = store.update_each(&writes).await.unwrap();
        assert_eq!(answers.len(), 4);
        assert!(answers[2].is_none(), "changed meanwhile: left out");
        for i in [0, 1, 3] {
            let s = answers[i].as_ref().expect("written");
            assert_eq!(s.version, stored[i].version + 1);
            assert_eq!(s.value.status, EmailStatus::Sending);
        }
        for (i, s) in stored.iter().enumerate() {
            let now = store
                .fetch::<EmailActivity>(&s.value.id.to_string())
                .await
                .unwrap()
                .value;
            if i == 2 {
                assert_eq!(now.status, EmailStatus::PendingSend);
                assert_eq!(now.subject, "edited", "the edit is kept");
            } else {
                assert_eq!(now.status, EmailStatus::Sending);
            }
        }
        // One feed entry per write: the edit and the three updates.
        assert_eq!(
            store.changes_after(org, 0, 1000).await.unwrap().len(),
            seq_before + 4
        );
        let listed = |m: MailboxId| {
            let store = store.clone();
            async move {
                let mut ids: Vec<String> = store
                    .list_where::<EmailActivity>(
                        Some(org),
                        &[Filter::LinkedTo(m.to_string())],
                        None,
                        100,
                    )
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|s| s.value.id.to_string())
                    .collect();
                ids.sort();
                ids
            }
        };
        let mut want1: Vec<String> = stored[..3].iter().map(|s| s.value.id.to_string()).collect();
        want1.sort();
        assert_eq!(listed(m1).await, want1, "unchanged links are kept");
        assert_eq!(
            listed(m2).await,
            [stored[3].value.id.to_string()],
            "changed links follow"
        );
        // Nothing to write: no commit, no answer.
        assert!(
            store
                .update_each::<EmailActivity>(&[])
                .await
                .unwrap()
                .is_empty()
        );
        let _ = (db, k);
    }
);

// Counters taken in blocks (the per-minute send counter): concurrent takers never get
// overlapping blocks, and what is given back is subtracted.
both!(counter_blocks_never_overlap, |store, db, k| {
    let org = OrgId::new();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..10 {
                let end = s.add_counter(org, "sends:1:m", 5).await.unwrap();
                got.extend(end - 4..=end);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=200).collect::<Vec<i64>>());
    assert_eq!(store.add_counter(org, "sends:1:m", -3).await.unwrap(), 197);
    assert_eq!(store.counter(org, "sends:1:m").await.unwrap(), 197);
    let _ = (db, k);
});

// A deadlock PostgreSQL broke (40P01) is contention, not a bug: the retry policy runs the work
// again instead of disabling the mailbox (two `serve` processes storing the same new blobs in
// opposite orders met one in the scale-out benchmark).
#[tokio::test]
async fn a_broken_deadlock_is_transient() {
    use sqlx::Connection;
    let db = Db::new(Backend::Postgres).await;
    let mut a = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let mut b = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (id int PRIMARY KEY, n int); INSERT INTO t VALUES (1, 0), (2, 0)",
    )
    .execute(&mut a)
    .await
    .unwrap();
    let mut ta = a.begin().await.unwrap();
    let mut tb = b.begin().await.unwrap();
    let lock = |id: i32| format!("UPDATE t SET n = n + 1 WHERE id = {id}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(lock(1)))
        .execute(&mut *ta)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(lock(2)))
        .execute(&mut *tb)
        .await
        .unwrap();
    let (ra, rb) = tokio::join!(
        sqlx::raw_sql(sqlx::AssertSqlSafe(lock(2))).execute(&mut *ta),
        sqlx::raw_sql(sqlx::AssertSqlSafe(lock(1))).execute(&mut *tb),
    );
    let err = match (ra, rb) {
        (Err(e), _) | (_, Err(e)) => StoreError::from(e),
        _ => panic!("PostgreSQL let both transactions through"),
    };
    assert!(err.is_contention(), "{err}");
    assert_eq!(
        err.kind(),
        serversync_model::error::ErrorKind::Transient,
        "{err}"
    );
}

// The API's store has connections of its own: while the engine's sessions hold every
// connection of the engine's pool (1,100 mailboxes reconnecting at once did, in the scale
// benchmark, and the API answered 503), the API still reads and writes.
#[tokio::test]
async fn a_store_with_its_own_pool_answers_while_the_other_pool_is_exhausted() {
    let db = Db::new(Backend::Postgres).await;
    let store = Store::open(&db.url(), MasterKey::generate().unwrap())
        .await
        .unwrap();
    let api = store.with_own_pool(2);
    let held = store.hold_connections(16).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), store.ping())
            .await
            .is_err(),
        "the engine's pool has a 17th connection: this test holds nothing"
    );
    let (org, _) = org_and_admin(&api).await;
    let got = api
        .fetch::<Organization>(&org.id.to_string())
        .await
        .unwrap();
    assert_eq!(got.value.name, org.name);
    drop(held);
    store.ping().await.unwrap();
}

// The SQLite writer never checkpoints (copying the WAL into the database file inside a
// commit would hold up every writer behind it); the store's checkpointer does, on its own
// connection, soon after: what was written reaches the database file.
#[tokio::test]
async fn sqlite_writes_reach_the_database_file_without_the_writer_checkpointing() {
    let db = Db::new(Backend::Sqlite).await;
    let k = MasterKey::generate().unwrap().to_base64();
    let store = Store::open(&db.url(), key(&k)).await.unwrap();
    let file = db.sqlite_file().unwrap();
    let before = std::fs::metadata(&file).unwrap().len();
    let data: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 256 * 1024]).collect();
    let shas: Vec<String> = (0..data.len()).map(|i| format!("{i:064x}")).collect();
    let blobs: Vec<(&str, &[u8])> = shas
        .iter()
        .zip(&data)
        .map(|(s, d)| (s.as_str(), d.as_slice()))
        .collect();
    store.put_blobs(&blobs).await.unwrap();
    let wanted = before + 16 * 256 * 1024;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let len = std::fs::metadata(&file).unwrap().len();
        if len >= wanted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the database file is {len} bytes 20 s after 4 MB were committed (wanted {wanted}): the WAL was not checkpointed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.close().await;
}

// A file-backed SQLite store keeps the raw messages, bodies and attachments that intake
// stores in pack files beside the database, written once outside the writer (not through the
// WAL and again by the checkpoint): the database holds none of their bytes, every handle reads
// them back — the bodies with every read of the item or of an activity sharing them — each
// handle (process) appends to a pack of its own, and the database's size counts them.
#[tokio::test]
async fn sqlite_keeps_raw_messages_bodies_and_attachments_in_pack_files() {
    use serversync_vault::sha256_hex;
    use std::os::unix::fs::PermissionsExt;
    let db = Db::new(Backend::Sqlite).await;
    let k = MasterKey::generate().unwrap().to_base64();
    let store = Store::open(&db.url(), key(&k)).await.unwrap();
    let file = db.sqlite_file().unwrap();
    let (org, _) = org_and_admin(&store).await;
    let mb = serversync_model::MailboxId::new();
    let marker = b"raw-message-bytes-only-in-the-pack ";
    let raw: Vec<u8> = marker.repeat(300 * 1024 / marker.len());
    let text = "an attached text file that is also an email's body\n".repeat(2000);
    let body_marker = "the body's bytes only in the pack ";
    let (raw_sha, att_sha) = (sha256_hex(&raw), sha256_hex(text.as_bytes()));
    let mut first = stored_item(org.id, mb, "1");
    first.raw_sha256 = raw_sha.clone();
    first.raw_kept = true;
    first.text_body = Some(body_marker.repeat(100));
    first.html_body = Some(format!("<p>{}</p>", body_marker.repeat(50)));
    store
        .insert_item(&first, &[(&raw_sha, &raw), (&att_sha, text.as_bytes())])
        .await
        .unwrap();

    assert_eq!(
        store.get_blob(&raw_sha).await.unwrap().as_deref(),
        Some(&raw[..])
    );
    assert_eq!(
        store.get_blob(&att_sha).await.unwrap().as_deref(),
        Some(text.as_bytes())
    );
    let mut in_db = std::fs::read(&file).unwrap();
    in_db.extend(std::fs::read(format!("{}-wal", file.display())).unwrap_or_default());
    for (what, m) in [
        ("raw message", &marker[..]),
        ("body", body_marker.as_bytes()),
    ] {
        assert!(
            !in_db.windows(m.len()).any(|w| w == m),
            "the {what}'s bytes are in the database file or its WAL"
        );
    }
    let read = store
        .get::<serversync_model::item::MailItem>(&first.id.to_string())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        (read.text_body, read.html_body),
        (first.text_body.clone(), first.html_body.clone())
    );
    // An activity tracked from the item shares its bodies (stored once) and reads them back.
    let mut activity = outgoing_email(org.id, mb);
    activity.text_body = first.text_body.clone();
    activity.html_body = first.html_body.clone();
    store.insert(&activity).await.unwrap();
    let read = store
        .get::<EmailActivity>(&activity.id.to_string())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        (read.text_body, read.html_body),
        (first.text_body.clone(), first.html_body.clone())
    );
    // Deleting it reads the bodies too (the change feed keeps the last record whole).
    assert!(
        store
            .delete::<EmailActivity>(&activity.id.to_string(), None)
            .await
            .unwrap()
    );
    let packs = db.pack_files();
    assert_eq!(packs.len(), 1, "{packs:?}");
    let meta = std::fs::metadata(&packs[0]).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "owner only");
    assert!(meta.len() >= (raw.len() + text.len()) as u64);
    assert!(store.database_size().await.unwrap().bytes >= meta.len());

    // Another handle on the same database — another process — writes a pack of its own;
    // each reads what the other wrote.
    let other = Store::open(&db.url(), key(&k)).await.unwrap();
    let raw2 = b"a second message ".repeat(4096);
    let mut second = stored_item(org.id, mb, "2");
    second.raw_sha256 = sha256_hex(&raw2);
    other
        .insert_item(&second, &[(&second.raw_sha256, &raw2)])
        .await
        .unwrap();
    assert_eq!(db.pack_files().len(), 2);
    assert_eq!(
        store.get_blob(&second.raw_sha256).await.unwrap().as_deref(),
        Some(&raw2[..])
    );
    assert_eq!(
        other.get_blob(&raw_sha).await.unwrap().as_deref(),
        Some(&raw[..])
    );

    // A body with the bytes of the packed attachment reads back whole.
    let mut third = stored_item(org.id, mb, "3");
    third.text_body = Some(text.clone());
    store.insert_item(&third, &[]).await.unwrap();
    let read = store
        .get::<serversync_model::item::MailItem>(&third.id.to_string())
        .await
        .unwrap()
        .unwrap()
        .value;
    let body = read.text_body.unwrap_or_default();
    assert!(
        body == text,
        "the body read back is {} bytes, not the attachment's {}",
        body.len(),
        text.len()
    );
    assert_eq!(
        store.get_blob(&att_sha).await.unwrap().as_deref(),
        Some(text.as_bytes())
    );
    other.close().await;
    store.close().await;
}

// Another process writing to the SQLite database (a CLI command, or its checkpointer starting
// the WAL again) holds SQLite's write lock for a while: the store's transactions wait for it
// instead of failing with "database is locked" (the ingest benchmark's tracker did, when the
// benchmark's own store restarted the WAL).
#[tokio::test]
async fn sqlite_writes_wait_for_another_process_holding_the_write_lock() {
    use sqlx::Connection;
    let db = Db::new(Backend::Sqlite).await;
    let store = Store::open(&db.url(), MasterKey::generate().unwrap())
        .await
        .unwrap();
    let mut other = sqlx::SqliteConnection::connect(&db.url()).await.unwrap();
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    // Storing an attachment reads (is it kept already?) before it writes.
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            let sha = format!("{:064x}", 7);
            store.put_blobs(&[(sha.as_str(), b"attachment")]).await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!write.is_finished(), "the write did not wait for the lock");
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    write.await.unwrap().unwrap();
    store.close().await;
}

// PostgreSQL stores blobs (raw messages, bodies, attachments) out of line without
// compressing them: pglz took half a core of the server during the ingest benchmark.
#[tokio::test]
async fn postgres_stores_blobs_uncompressed() {
    use sqlx::Connection;
    let db = Db::new(Backend::Postgres).await;
    let store = Store::open(&db.url(), MasterKey::generate().unwrap())
        .await
        .unwrap();
    let data = b"Hello, compressible world. ".repeat(4096);
    let sha = format!("{:064x}", 1);
    store.put_blobs(&[(sha.as_str(), &data)]).await.unwrap();
    let mut c = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let (stored, size): (i32, i64) =
        sqlx::query_as("SELECT pg_column_size(data), size FROM blobs WHERE sha256 = $1")
            .bind(&sha)
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert_eq!(size, data.len() as i64);
    assert!(
        stored as usize >= data.len(),
        "a {} byte blob takes {stored} bytes: PostgreSQL compressed it",
        data.len()
    );
    store.close().await;
}

// Mail written without a pause (an initial synchronization) must not grow the WAL without
// bound: SQLite starts the WAL again only when a checkpoint copied all of it before the
// writer's next transaction, which a continuous writer never leaves time for (the ingest
// benchmark's WAL reached 900 MB for 240 MB of mail). The checkpointer has it started again.
#[tokio::test]
async fn the_sqlite_wal_is_started_again_while_writes_never_pause() {
    let db = Db::new(Backend::Sqlite).await;
    let k = MasterKey::generate().unwrap().to_base64();
    let store = Store::open(&db.url(), key(&k)).await.unwrap();
    // Readers all along, as the engine and the API read: a checkpoint that starts the WAL
    // again waits for them, under the write lock.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (store, stop) = (store.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.get::<Organization>("nobody").await.unwrap();
                }
            })
        })
        .collect();
    let wal = std::path::PathBuf::from(format!("{}-wal", db.sqlite_file().unwrap().display()));
    let chunk = 256 * 1024;
    let started = std::time::Instant::now();
    let mut written = 0usize;
    let mut n = 0u64;
    // At least 192 MB over 2.5 s (five of the checkpointer's ticks), or 640 MB.
    while written < 640 << 20
        && (written < 192 << 20 || started.elapsed() < Duration::from_millis(2500))
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "writing 192 MB took more than 2 minutes"
        );
        let data: Vec<Vec<u8>> = (0..16)
            .map(|i| {
                let mut d = vec![(n % 251) as u8; chunk];
                d[..8].copy_from_slice(&(n * 16 + i).to_be_bytes());
                d
            })
            .collect();
        let shas: Vec<String> = (0..16).map(|i| format!("{:064x}", n * 16 + i)).collect();
        let blobs: Vec<(&str, &[u8])> = shas
            .iter()
            .zip(&data)
            .map(|(s, d)| (s.as_str(), d.as_slice()))
            .collect();
        store.put_blobs(&blobs).await.unwrap();
        written += 16 * chunk;
        n += 1;
    }
    let size = std::fs::metadata(&wal).unwrap().len() as usize;
    assert!(
        size < written / 2,
        "the WAL file is {size} bytes after {written} bytes were written without a pause: it was never started again"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    store.close().await;
}

// A table's fingerprint (the engine lists every mailbox again only when it changes) changes
// with every insert, update and delete — also a delete and an insert that leave the count
// and the sum of versions as they were.
both!(
    a_table_fingerprint_changes_with_every_write,
    |store, db, k| {
        let (org, _) = org_and_admin(&store).await;
        let settings = EmailSettings::new(org.id);
        // A mailbox of a new user (one mailbox per user).
        let mailbox = async |name: &str| {
            let email = format!("{name}@example.test");
            let u = User::new(org.id, name, &email, now());
            store.insert(&u).await.unwrap();
            Mailbox::new_with_defaults(
                org.id,
                MailboxRegarding::User(u.id),
                u.id,
                name,
                &email,
                &settings,
                now(),
            )
        };
        let empty = store.fingerprint::<Mailbox>().await.unwrap();
        let a = mailbox("a").await;
        store.insert(&a).await.unwrap();
        let one = store.fingerprint::<Mailbox>().await.unwrap();
        assert_ne!(one, empty, "an insert changes it");
        assert_eq!(
            store.fingerprint::<Mailbox>().await.unwrap(),
            one,
            "nothing written: unchanged"
        );
        let mut changed = a.clone();
        changed.name = "renamed".into();
        store.update(&changed, None).await.unwrap();
        let updated = store.fingerprint::<Mailbox>().await.unwrap();
        assert_ne!(updated, one, "an update changes it");
        let b = mailbox("b").await;
        store.insert(&b).await.unwrap();
        let two = store.fingerprint::<Mailbox>().await.unwrap();
        // One out, another in: as many rows, the same sum of versions (both at version 1).
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            store
                .delete::<Mailbox>(&b.id.to_string(), None)
                .await
                .unwrap()
        );
        let c = mailbox("c").await;
        store.insert(&c).await.unwrap();
        let swapped = store.fingerprint::<Mailbox>().await.unwrap();
        assert_eq!(swapped[..2], two[..2]);
        assert_ne!(swapped, two, "a delete and an insert change it");
        assert!(
            store
                .delete::<Mailbox>(&c.id.to_string(), None)
                .await
                .unwrap()
        );
        assert_ne!(
            store.fingerprint::<Mailbox>().await.unwrap(),
            swapped,
            "a delete changes it"
        );
        let _ = (db, k);
    }
);
