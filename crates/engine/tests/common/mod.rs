//! Setup shared by the engine's sync tests.

use serversync_engine::Admin;
use serversync_model::Secret;
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::Organization;
use serversync_model::profile::{EmailServerProfile, Endpoint, ServerType, TlsMode};
use serversync_model::settings::EmailSettings;
use serversync_store::Store;

/// On a fresh store: the bootstrap organization and administrator, an IMAP/SMTP profile whose
/// incoming server is `incoming`, and an approved mailbox for `email` with `password`, owned by
/// the administrator and enabled for incoming synchronization.
pub async fn imap_mailbox(
    store: &Store,
    incoming: Endpoint,
    email: &str,
    password: &str,
) -> Mailbox {
    let (admin, _) = Admin::new(store.clone(), Default::default())
        .bootstrap()
        .await
        .unwrap()
        .expect("fresh store");
    let org = store
        .list_all::<Organization>(None, &[])
        .await
        .unwrap()
        .remove(0)
        .value;
    let now = chrono::Utc::now();
    let mut profile =
        EmailServerProfile::new(org.id, "Test IMAP", ServerType::ImapSmtp, admin.id, now);
    profile.outgoing = Some(Endpoint {
        location: incoming.location.clone(),
        port: 25,
        tls: TlsMode::None,
    });
    profile.incoming = Some(incoming);
    store.insert(&profile).await.unwrap();
    let settings = store
        .fetch::<EmailSettings>(&org.id.to_string())
        .await
        .unwrap()
        .value;
    let mut m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(admin.id),
        admin.id,
        "Test mailbox",
        email,
        &settings,
        now,
    );
    m.profile_id = Some(profile.id);
    m.approval = ApprovalStatus::Approved;
    m.password = Some(
        store
            .put_secret(Some(org.id), &Secret::new(password))
            .await
            .unwrap(),
    );
    m.incoming.enabled = true;
    store.insert(&m).await.unwrap();
    m
}
