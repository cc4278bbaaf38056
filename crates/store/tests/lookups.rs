//! The tracker's batched lookups (address index, activities by key, queue items), each test
//! run once on SQLite and once on PostgreSQL.

use serversync_model::crm::{
    Account, Contact, Direction, EmailActivity, EmailStatus, Lead, QueueItem, RecordRef,
};
use serversync_model::org::{Organization, Queue, User};
use serversync_model::{
    AccountId, ActivityId, ContactId, LeadId, OrgId, QueueId, QueueItemId, UserId,
};
use serversync_store::{ActivityKey, AddressMatch, Backend, Store};
use serversync_vault::MasterKey;

mod common;
use common::Db;

macro_rules! both {
    ($name:ident, |$store:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run(backend: Backend) {
                let db = Db::new(backend).await;
                let key = MasterKey::generate().unwrap();
                let $store = Store::open(&db.url(), key).await.unwrap();
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

async fn org_with_user(store: &Store, name: &str, email: &str) -> (Organization, User) {
    let org = Organization::new(name, name, now());
    store.insert(&org).await.unwrap();
    let user = User::new(org.id, "Ada", email, now());
    store.insert(&user).await.unwrap();
    (org, user)
}

fn contact(org: OrgId, owner: UserId, emails: &[&str]) -> Contact {
    Contact {
        id: ContactId::new(),
        org_id: org,
        full_name: "Ann".into(),
        emails: emails.iter().map(|e| e.to_string()).collect(),
        account_id: None,
        company: None,
        job_title: None,
        phones: Vec::new(),
        owner_id: owner,
        created_at: now(),
    }
}

/// The records an address resolves to, as the index lists them.
async fn records(store: &Store, org: OrgId, address: &str) -> Vec<RecordRef> {
    store
        .address_matches(org, &[address.to_owned()])
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.record)
        .collect()
}

both!(address_index_follows_every_write, |store| {
    let (org, ada) = org_with_user(&store, "contoso", "Ada@Example.test").await;
    let (other_org, _) = org_with_user(&store, "fabrikam", "ada@example.test").await;

    // Created: every kind, normalized (angle brackets, blanks, case).
    let lead = Lead {
        id: LeadId::new(),
        org_id: org.id,
        full_name: "Ann".into(),
        company: None,
        emails: vec!["ann@example.test".into()],
        owner_id: ada.id,
        created_at: now(),
    };
    store.insert(&lead).await.unwrap();
    let account = Account {
        id: AccountId::new(),
        org_id: org.id,
        name: "Ann's".into(),
        emails: vec!["ANN@example.test".into()],
        owner_id: ada.id,
        created_at: now(),
    };
    store.insert(&account).await.unwrap();
    let mut c1 = contact(
        org.id,
        ada.id,
        &[" <Ann@Example.test> ", "ann@example.test"],
    );
    store.insert(&c1).await.unwrap();
    let c2 = contact(org.id, ada.id, &["ann@example.test", "bob@example.test"]);
    store.insert(&c2).await.unwrap();
    let queue = Queue {
        id: QueueId::new(),
        org_id: org.id,
        name: "Support".into(),
        email: "Support@Example.test".into(),
        owner_id: ada.id,
        member_ids: Default::default(),
        created_at: now(),
    };
    store.insert(&queue).await.unwrap();

    // Contacts before accounts before leads, contacts in creation order; each record once.
    assert_eq!(
        records(&store, org.id, "<ANN@example.test>").await,
        vec![
            RecordRef::Contact(c1.id),
            RecordRef::Contact(c2.id),
            RecordRef::Account(account.id),
            RecordRef::Lead(lead.id),
        ]
    );
    let matches = store
        .address_matches(
            org.id,
            &["support@example.test".into(), "ada@example.test".into()],
        )
        .await
        .unwrap();
    assert_eq!(
        matches,
        vec![
            AddressMatch {
                address: "ada@example.test".into(),
                record: RecordRef::User(ada.id),
                owner_id: Some(ada.id),
            },
            AddressMatch {
                address: "support@example.test".into(),
                record: RecordRef::Queue(queue.id),
                owner_id: Some(ada.id),
            },
        ]
    );
    // Another organization's records are not this one's.
    assert_eq!(
        records(&store, other_org.id, "ann@example.test").await,
        vec![]
    );
    assert_eq!(records(&store, org.id, "nobody@example.test").await, vec![]);

    // Updated: the old address no longer leads to the contact, the new one does.
    c1.emails = vec!["ann.new@example.test".into()];
    store.update(&c1, Some(1)).await.unwrap();
    assert_eq!(
        records(&store, org.id, "ann@example.test").await,
        vec![
            RecordRef::Contact(c2.id),
            RecordRef::Account(account.id),
            RecordRef::Lead(lead.id),
        ]
    );
    assert_eq!(
        records(&store, org.id, "ann.new@example.test").await,
        vec![RecordRef::Contact(c1.id)]
    );

    // A disabled user is not a candidate; enabled again, it is.
    let mut ada2 = store.fetch::<User>(&ada.id.to_string()).await.unwrap();
    ada2.value.disabled = true;
    store.update(&ada2.value, None).await.unwrap();
    assert_eq!(records(&store, org.id, "ada@example.test").await, vec![]);
    ada2.value.disabled = false;
    store.update(&ada2.value, None).await.unwrap();
    assert_eq!(
        records(&store, org.id, "ada@example.test").await,
        vec![RecordRef::User(ada.id)]
    );

    // Deleted: gone from the index.
    assert!(
        store
            .delete::<Contact>(&c2.id.to_string(), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .delete::<Lead>(&lead.id.to_string(), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .delete::<Queue>(&queue.id.to_string(), None)
            .await
            .unwrap()
    );
    assert_eq!(
        records(&store, org.id, "ann@example.test").await,
        vec![RecordRef::Account(account.id)]
    );
    assert_eq!(records(&store, org.id, "bob@example.test").await, vec![]);
    assert_eq!(
        records(&store, org.id, "support@example.test").await,
        vec![]
    );
});

fn activity(org: OrgId, owner: UserId, message_id: &str, conversation: &str) -> EmailActivity {
    EmailActivity {
        id: ActivityId::new(),
        org_id: org,
        subject: "Hello".into(),
        text_body: None,
        html_body: None,
        direction: Direction::Incoming,
        status: EmailStatus::Received,
        owner_id: owner,
        parties: Vec::new(),
        attachments: Vec::new(),
        regarding: None,
        message_id: Some(message_id.into()),
        in_reply_to: None,
        references: Vec::new(),
        content_key: None,
        conversation_id: Some(conversation.into()),
        tracking_token: None,
        mailbox_ids: Vec::new(),
        item_ids: Vec::new(),
        sent_at: None,
        received_at: Some(now()),
        send_after: None,
        delivery_attempts: 0,
        send_error: None,
        router_claim: None,
        send_trace: Vec::new(),
        created_at: now(),
        updated_at: now(),
    }
}

both!(activities_and_queue_items_many_keys_at_once, |store| {
    let (org, ada) = org_with_user(&store, "contoso", "ada@example.test").await;
    let (other_org, bob) = org_with_user(&store, "fabrikam", "bob@example.test").await;
    let a1 = activity(org.id, ada.id, "<1@x>", "<c@x>");
    let a2 = activity(org.id, ada.id, "<2@x>", "<c@x>");
    let a3 = activity(org.id, ada.id, "<3@x>", "<d@x>");
    let foreign = activity(other_org.id, bob.id, "<1@x>", "<c@x>");
    for a in [&a1, &a2, &a3, &foreign] {
        store.insert(a).await.unwrap();
    }
    let ids = |v: Vec<serversync_store::Stored<EmailActivity>>| {
        v.into_iter().map(|s| s.value.id).collect::<Vec<_>>()
    };
    // Many values per query, more than one chunk, each activity once, in id order.
    let mut keys: Vec<String> = (0..1200).map(|i| format!("<none-{i}@x>")).collect();
    keys.extend(["<2@x>".to_owned(), "<1@x>".to_owned(), "<1@x>".to_owned()]);
    let found = store
        .email_activities_in(org.id, ActivityKey::MessageId, &keys)
        .await
        .unwrap();
    assert_eq!(found[0].version, 1);
    assert_eq!(ids(found), vec![a1.id, a2.id]);
    assert_eq!(
        ids(store
            .email_activities_in(
                org.id,
                ActivityKey::Conversation,
                &["<c@x>".into(), "<d@x>".into()]
            )
            .await
            .unwrap()),
        vec![a1.id, a2.id, a3.id]
    );
    assert_eq!(
        ids(store
            .email_activities_in(org.id, ActivityKey::TrackingToken, &["<c@x>".into()])
            .await
            .unwrap()),
        vec![]
    );

    let queue = QueueId::new();
    let qi = QueueItem {
        id: QueueItemId::new(),
        org_id: org.id,
        queue_id: queue,
        activity_id: a2.id,
        worker_id: None,
        entered_at: now(),
    };
    store.insert(&qi).await.unwrap();
    assert_eq!(
        store
            .queue_items_of(org.id, &[a1.id, a2.id, a3.id])
            .await
            .unwrap(),
        vec![(queue, a2.id)]
    );
    assert_eq!(
        store.queue_items_of(other_org.id, &[a2.id]).await.unwrap(),
        vec![]
    );
});
