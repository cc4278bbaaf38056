//! Reading item-level records through `Admin` (what the web dashboard shows), on SQLite and
//! PostgreSQL: the organization's items need "read mailboxes", the privilege the API's items
//! route checks; a user without it reads only the items of its own mailbox.

use serversync_engine::admin::NewUser;
use serversync_engine::intake::take_in;
use serversync_engine::{Admin, AdminError};
use serversync_model::audit::Actor;
use serversync_model::item::ItemSource;
use serversync_model::mailbox::Mailbox;
use serversync_model::org::BuiltinRole;
use serversync_store::{Backend, Store};
use serversync_testkit::TestEnv;
use serversync_vault::MasterKey;
use std::sync::Arc;
use tokio::sync::Notify;

async fn open(backend: Backend) -> (Store, Box<dyn std::any::Any>) {
    match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("a.db").display());
            let store = Store::open(&url, MasterKey::generate().unwrap())
                .await
                .unwrap();
            (store, Box::new(d))
        }
        Backend::Postgres => {
            let db = TestEnv::from_env().pg_database().await.unwrap();
            let store = Store::open(db.url(), MasterKey::generate().unwrap())
                .await
                .unwrap();
            (store, Box::new(db))
        }
    }
}

fn message(to: &str, n: u32) -> Vec<u8> {
    format!(
        "From: Carol <carol@example.test>\r\nTo: {to}\r\nSubject: Item {n}\r\n\
         Message-ID: <item-{n}@example.test>\r\n\r\nHello\r\n"
    )
    .into_bytes()
}

async fn organization_items_need_read_mailboxes(backend: Backend) {
    let (store, _db) = open(backend).await;
    let admin = Admin::new(store.clone(), Arc::new(Notify::new()));
    let (sysadmin, token) = admin.bootstrap().await.unwrap().expect("fresh store");
    let system = admin.authenticate(&token).await.unwrap();
    let org = sysadmin.org_id;
    let new = |name: &str, email: &str| NewUser {
        full_name: name.into(),
        email: email.into(),
        roles: vec![BuiltinRole::BasicUser],
        tenant_exchange_admin: false,
        password: None,
    };
    let (basic, basic_mailbox) = admin
        .create_user(&system, org, new("Bob", "bob@example.test"))
        .await
        .unwrap();
    let (_, other_mailbox) = admin
        .create_user(&system, org, new("Dave", "dave@example.test"))
        .await
        .unwrap();
    let settings = admin.settings(org).await.unwrap().value;
    let since = chrono::Utc::now() - chrono::Duration::hours(1);
    let take = |m: Mailbox, n: u32| {
        let (store, settings) = (store.clone(), settings.clone());
        async move {
            let source = ItemSource::Imap {
                folder: "INBOX".into(),
                uid_validity: 1,
                uid: n,
            };
            take_in(
                &store,
                &m,
                &settings,
                None,
                source,
                &message(&m.email, n),
                chrono::Utc::now(),
            )
            .await
            .unwrap();
        }
    };
    take(basic_mailbox.clone(), 1).await;
    take(other_mailbox.clone(), 2).await;
    take(other_mailbox.clone(), 3).await;

    let (basic_token, _) = admin
        .create_token(&basic, "t", Actor::System("test".into()))
        .await
        .unwrap();
    let bob = admin.authenticate(&basic_token).await.unwrap();

    // The whole organization: refused without "read mailboxes".
    match admin.items_since(&bob, org, None, since, None, 100).await {
        Err(AdminError::Denied(d)) => {
            assert_eq!(d.code, "missing_privilege");
            assert!(d.message.contains("read_mailboxes"), "{}", d.message);
        }
        other => panic!("a basic user read the organization's items: {other:?}"),
    }
    // Another user's mailbox: not found, as on the API.
    match admin
        .items_since(&bob, org, Some(other_mailbox.id), since, None, 100)
        .await
    {
        Err(AdminError::NotFound { entity, .. }) => assert_eq!(entity, "mailbox"),
        other => panic!("a basic user read another user's items: {other:?}"),
    }
    // Its own mailbox: its item only.
    let own = admin
        .items_since(&bob, org, Some(basic_mailbox.id), since, None, 100)
        .await
        .unwrap();
    let subjects: Vec<_> = own
        .items
        .iter()
        .map(|i| (i.value.mailbox_id, i.value.subject.clone()))
        .collect();
    assert_eq!(
        subjects,
        vec![(basic_mailbox.id, Some("Item 1".to_owned()))]
    );

    // A system administrator reads every mailbox's, and `since` bounds them.
    let all = admin
        .items_since(&system, org, None, since, None, 100)
        .await
        .unwrap();
    assert_eq!(all.items.len(), 3);
    let later = admin
        .items_since(
            &system,
            org,
            None,
            chrono::Utc::now() + chrono::Duration::hours(1),
            None,
            100,
        )
        .await
        .unwrap();
    assert!(later.items.is_empty(), "{:?}", later.items);
}

#[tokio::test]
async fn organization_items_need_read_mailboxes_sqlite() {
    organization_items_need_read_mailboxes(Backend::Sqlite).await;
}

#[tokio::test]
async fn organization_items_need_read_mailboxes_postgres() {
    organization_items_need_read_mailboxes(Backend::Postgres).await;
}
