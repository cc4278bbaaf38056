//! The change feed of CRM records and the webhook delivery state, on SQLite and PostgreSQL.

use serversync_model::audit::Actor;
use serversync_model::crm::{Account, Contact, Lead};
use serversync_model::org::{Organization, User};
use serversync_model::webhook::{ChangeOp, RecordType, WebhookEndpoint, WebhookState};
use serversync_model::{AccountId, ContactId, LeadId, OrgId, Secret, UserId, WebhookId};
use serversync_store::{Backend, NewAuditEntry, NewDelivery, Store, StoreError};
use serversync_vault::MasterKey;
use std::collections::BTreeSet;
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
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                run(Backend::Postgres).await
            }
        }
    };
}

fn now() -> serversync_model::Timestamp {
    chrono::Utc::now()
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

/// Every change of `org` after `after`, paging `page` at a time.
async fn read_all(
    store: &Store,
    org: OrgId,
    mut after: i64,
    page: u32,
) -> Vec<serversync_model::webhook::Change> {
    let mut out = Vec::new();
    loop {
        let batch = store.changes_after(org, after, page).await.unwrap();
        let Some(last) = batch.last() else { return out };
        after = last.seq;
        out.extend(batch);
    }
}

both!(
    feed_lists_record_writes_in_order_and_resumes_after_reopen,
    |store, db, k| {
        let org = Organization::new("contoso", "Contoso", now());
        store.insert(&org).await.unwrap();
        let other = Organization::new("fabrikam", "Fabrikam", now());
        store.insert(&other).await.unwrap();
        // Not CRM records: not in the feed.
        store
            .insert(&User::new(org.id, "Ada", "ada@example.test", now()))
            .await
            .unwrap();

        let mut c = contact(org.id, "Carla Contact");
        store
            .insert_audited(
                &c,
                Some(NewAuditEntry::create(Actor::System("test".into()), &c)),
            )
            .await
            .unwrap();
        let a = Account {
            id: AccountId::new(),
            org_id: org.id,
            name: "Contoso Ltd".into(),
            emails: vec![],
            owner_id: UserId::new(),
            created_at: now(),
        };
        store.insert(&a).await.unwrap();
        let l = Lead {
            id: LeadId::new(),
            org_id: org.id,
            full_name: "Len Lead".into(),
            company: None,
            emails: vec![],
            owner_id: UserId::new(),
            created_at: now(),
        };
        store.insert(&l).await.unwrap();
        c.full_name = "Carla C. Contact".into();
        store.update(&c, Some(1)).await.unwrap();
        // A refused update writes nothing to the feed.
        assert!(matches!(
            store.update(&c, Some(1)).await,
            Err(StoreError::VersionMismatch { .. })
        ));
        assert!(store.delete::<Lead>(&l.id.to_string(), None).await.unwrap());
        assert!(
            !store.delete::<Lead>(&l.id.to_string(), None).await.unwrap(),
            "second delete finds nothing"
        );
        store.insert(&contact(other.id, "Other Org")).await.unwrap();

        let first = store.changes_after(org.id, 0, 2).await.unwrap();
        assert_eq!(first.len(), 2);
        let cursor = first[1].seq;
        drop(store);

        // "Restart": a new store on the same database resumes from the cursor.
        let store = Store::open(&db.url(), key(&k)).await.unwrap();
        let rest = read_all(&store, org.id, cursor, 1).await;
        let all: Vec<_> = first.into_iter().chain(rest).collect();
        let seen: Vec<(RecordType, ChangeOp, String, i64)> = all
            .iter()
            .map(|ch| (ch.record_type, ch.op, ch.record_id.clone(), ch.version))
            .collect();
        assert_eq!(
            seen,
            vec![
                (RecordType::Contact, ChangeOp::Created, c.id.to_string(), 1),
                (RecordType::Account, ChangeOp::Created, a.id.to_string(), 1),
                (RecordType::Lead, ChangeOp::Created, l.id.to_string(), 1),
                (RecordType::Contact, ChangeOp::Updated, c.id.to_string(), 2),
                (RecordType::Lead, ChangeOp::Deleted, l.id.to_string(), 1),
            ]
        );
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(all[3].record["full_name"], "Carla C. Contact");
        assert_eq!(
            all[4].record["full_name"], "Len Lead",
            "a delete carries the record as it was"
        );
        assert_eq!(all[3].event_type, "contact.updated");
        assert_eq!(all[3].event_id, format!("evt_{}", all[3].seq));
        assert_eq!(store.latest_change_seq(org.id).await.unwrap(), all[4].seq);
        assert_eq!(
            read_all(&store, other.id, 0, 10).await.len(),
            1,
            "organizations see only their own changes"
        );
    }
);

both!(
    concurrent_writers_never_make_a_reader_skip_a_row,
    |store, db, k| {
        let _ = (&db, &k);
        let org = Organization::new("busy", "Busy", now());
        store.insert(&org).await.unwrap();
        const WRITERS: usize = 6;
        const EACH: usize = 40;
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..WRITERS {
            let store = store.clone();
            let org = org.id;
            tasks.spawn(async move {
                let mut ids = Vec::new();
                for i in 0..EACH {
                    let mut c = contact(org, &format!("w{w}-{i}"));
                    store.insert(&c).await.unwrap();
                    if i % 5 == 0 {
                        c.full_name.push_str(" (updated)");
                        store.update(&c, None).await.unwrap();
                    }
                    ids.push(c.id.to_string());
                }
                ids
            });
        }
        // A reader pages with small pages while the writers run, and once more after they finish.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let store = store.clone();
            let org = org.id;
            let done = done.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut after = 0;
                loop {
                    let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                    let batch = store.changes_after(org, after, 7).await.unwrap();
                    match batch.last() {
                        Some(last) => after = last.seq,
                        None if finished => return seen,
                        None => tokio::time::sleep(Duration::from_millis(2)).await,
                    }
                    seen.extend(batch);
                }
            })
        };
        let mut written = BTreeSet::new();
        while let Some(ids) = tasks.join_next().await {
            written.extend(ids.unwrap());
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let seen = reader.await.unwrap();
        let everything = read_all(&store, org.id, 0, 1000).await;
        assert_eq!(everything.len(), WRITERS * (EACH + EACH / 5));
        let seqs =
            |v: &[serversync_model::webhook::Change]| v.iter().map(|c| c.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(&seen),
            seqs(&everything),
            "the live reader skipped no row and saw them in feed order"
        );
        // The payload is the record as it is when the feed is read: the live reader may have
        // read a record before its update; everything else is the same.
        let without_record = |v: &[serversync_model::webhook::Change]| {
            v.iter()
                .map(|c| serversync_model::webhook::Change {
                    record: serde_json::Value::Null,
                    ..c.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(without_record(&seen), without_record(&everything));
        for c in &everything {
            assert_eq!(c.record["id"], serde_json::json!(c.record_id));
        }
        let created: BTreeSet<String> = seen
            .iter()
            .filter(|c| c.op == ChangeOp::Created)
            .map(|c| c.record_id.clone())
            .collect();
        assert_eq!(created, written);
        assert!(seen.windows(2).all(|w| w[0].seq < w[1].seq));
    }
);

both!(webhook_cursor_moves_only_under_the_lease, |store, db, k| {
    let _ = (&db, &k);
    let org = Organization::new("hooks", "Hooks", now());
    store.insert(&org).await.unwrap();
    store.insert(&contact(org.id, "Before")).await.unwrap();
    let secret_id = store
        .put_secret(Some(org.id), &Secret::new("s3cret-signing"))
        .await
        .unwrap();
    let ep = WebhookEndpoint {
        id: WebhookId::new(),
        org_id: org.id,
        url: "http://127.0.0.1:9/hook".into(),
        description: "test".into(),
        secret_id,
        record_types: vec![],
        created_at: now(),
    };
    store.create_webhook(&ep, None).await.unwrap();
    let st = store.webhook_status(ep.id).await.unwrap().unwrap();
    assert_eq!(st.state, WebhookState::Active);
    assert_eq!(
        st.cursor,
        store.latest_change_seq(org.id).await.unwrap(),
        "a new endpoint starts at the newest change"
    );
    assert!(
        store.webhooks_due().await.unwrap().is_empty(),
        "nothing waiting yet"
    );

    store.insert(&contact(org.id, "After")).await.unwrap();
    let due = store.webhooks_due().await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, ep.id);

    let res = format!("webhook:{}", ep.id);
    let lease = store
        .acquire_lease(&res, "w1", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let next = store.changes_after(org.id, st.cursor, 10).await.unwrap();
    store
        .webhook_failed(&lease, ep.id, 1, now(), "HTTP 500", false)
        .await
        .unwrap();
    store
        .record_delivery(&NewDelivery {
            webhook_id: ep.id,
            event_id: next[0].event_id.clone(),
            seq: next[0].seq,
            attempt: 1,
            ok: false,
            status: Some(500),
            error: Some("HTTP 500".into()),
            duration_ms: 3,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .webhook_status(ep.id)
            .await
            .unwrap()
            .unwrap()
            .consecutive_failures,
        1
    );
    store
        .webhook_advance(&lease, ep.id, next[0].seq)
        .await
        .unwrap();
    let st = store.webhook_status(ep.id).await.unwrap().unwrap();
    assert_eq!((st.cursor, st.consecutive_failures), (next[0].seq, 0));

    // Another worker takes the lease over: the old holder can no longer move the cursor.
    store.release_lease(&lease).await.unwrap();
    let _other = store
        .acquire_lease(&res, "w2", Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        store
            .webhook_advance(&lease, ep.id, next[0].seq + 100)
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    assert_eq!(
        store.webhook_status(ep.id).await.unwrap().unwrap().cursor,
        next[0].seq
    );

    let log = store.list_deliveries(ep.id, 0, 10).await.unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(
        (log[0].status, log[0].ok, log[0].attempt),
        (Some(500), false, 1)
    );

    assert!(
        store
            .set_webhook_state(ep.id, WebhookState::Paused)
            .await
            .unwrap()
    );
    assert!(
        store.webhooks_due().await.unwrap().is_empty(),
        "a paused endpoint is not due"
    );
    assert!(store.delete_webhook(&ep, None).await.unwrap());
    assert!(store.webhook_status(ep.id).await.unwrap().is_none());
    assert!(
        store.get_secret(secret_id).await.is_err(),
        "the signing secret goes with the endpoint"
    );
});
