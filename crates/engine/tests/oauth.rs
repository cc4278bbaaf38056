//! Gmail OAuth against the real Dovecot and Postfix: a Gmail-preset profile whose token
//! endpoint is a local OAuth server passes test and enable (IMAP and SMTP signed in with SASL
//! XOAUTH2; Dovecot checks each token at the server's introspection endpoint), reuses its
//! token, replaces a token the server no longer accepts without a failure, synchronizes mail,
//! and fails at step `authentication` with the endpoint's reason once the refresh token is
//! revoked.

use serversync_connectors::{NetworkPolicy, TlsTrust};
use serversync_engine::{Admin, Engine, EngineConfig};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::Organization;
use serversync_model::profile::{
    AuthenticationType, EmailServerProfile, Endpoint, OAuthSettings, Preset, TlsMode,
};
use serversync_model::settings::{ActMethod, EmailSettings, IncomingMethod, OutgoingMethod};
use serversync_model::{FailureStep, Secret};
use serversync_store::{Backend, Col, Store};
use serversync_testkit::oauth::REVOKED_DESCRIPTION;
use serversync_testkit::{
    Accounts, Dovecot, DovecotOptions, OAuthServer, Postfix, TestEnv, TlsFiles,
};
use serversync_vault::MasterKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice@example.test";
const CLIENT_ID: &str = "serversync-test.apps.example";
const CLIENT_SECRET: &str = "GOCSPX-test-client-secret";

async fn open_store(backend: Backend) -> (Box<dyn std::any::Any + Send>, Store) {
    let (guard, url): (Box<dyn std::any::Any + Send>, String) = match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("o.db").display());
            (Box::new(d), url)
        }
        Backend::Postgres => {
            let db = TestEnv::from_env().pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db), url)
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    (guard, store)
}

async fn run(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("serversync-oauth-")
        .tempdir_in("/tmp")
        .unwrap();
    let tls = TlsFiles::ensure(&dir.path().join("tls")).unwrap();
    let oauth = OAuthServer::start(&tls, CLIENT_ID, CLIENT_SECRET)
        .await
        .unwrap();
    let dovecot = Dovecot::start_with(
        dir.path(),
        &DovecotOptions {
            tls: Some(tls.clone()),
            oauth2_introspection_url: Some(oauth.introspection_url().into()),
            ..Default::default()
        },
    )
    .unwrap();
    let postfix = Postfix::start(dir.path(), dovecot.info(), &tls, &Accounts::default()).unwrap();
    let (_guard, store) = open_store(backend).await;

    // The organization, a Gmail-preset profile pointed at the local servers, and Alice's
    // mailbox holding her refresh token.
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
        EmailServerProfile::from_preset(org.id, "Gmail", Preset::Gmail, admin.id, now);
    assert_eq!(profile.authentication, AuthenticationType::GmailOAuth);
    profile.incoming = Some(Endpoint {
        location: "localhost".into(),
        port: dovecot.info().imaps_port,
        tls: TlsMode::Implicit,
    });
    profile.outgoing = Some(Endpoint {
        location: "localhost".into(),
        port: postfix.info().submission_port,
        tls: TlsMode::StartTls,
    });
    profile.oauth = Some(OAuthSettings {
        tenant_id: None,
        client_id: CLIENT_ID.into(),
        client_secret: Some(
            store
                .put_secret(Some(org.id), &Secret::new(CLIENT_SECRET))
                .await
                .unwrap(),
        ),
        authority: Default::default(),
        token_endpoint: Some(oauth.token_url().into()),
        client_certificate: None,
    });
    profile.validate(false).unwrap();
    store.insert(&profile).await.unwrap();
    let settings = store
        .fetch::<EmailSettings>(&org.id.to_string())
        .await
        .unwrap()
        .value;
    let refresh_token = oauth.issue_refresh_token(ALICE);
    let mut m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(admin.id),
        admin.id,
        "Alice",
        ALICE,
        &settings,
        now,
    );
    m.profile_id = Some(profile.id);
    m.approval = ApprovalStatus::Approved;
    m.incoming_method = IncomingMethod::ServerSideSync;
    m.outgoing_method = OutgoingMethod::ServerSideSync;
    m.act_method = ActMethod::None;
    m.password = Some(
        store
            .put_secret(Some(org.id), &Secret::new(refresh_token.clone()))
            .await
            .unwrap(),
    );
    store.insert(&m).await.unwrap();

    let trust = Arc::new(TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap());
    let config = EngineConfig {
        network: Arc::new(NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(trust)
    };
    let test = || serversync_engine::test_enable::test_and_enable(&store, &config, m.id);

    // 1. Test and enable passes: one refresh grant, and Dovecot checked the token (IMAP and
    //    SMTP, Postfix authenticating through Dovecot).
    let r = test().await.unwrap();
    assert!(r.ok, "{}", r.message);
    assert!(r.message.contains("incoming (IMAP)") && r.message.contains("outgoing (SMTP)"));
    assert_eq!(oauth.refresh_grants(), 1);
    assert!(oauth.introspections() >= 2, "{}", oauth.introspections());
    let stored = store.fetch::<Mailbox>(&m.id.to_string()).await.unwrap();
    assert!(stored.value.incoming.enabled && stored.value.outgoing.enabled);

    // 2. Again: the cached token (an hour left) is used, no new grant.
    let r = test().await.unwrap();
    assert!(r.ok, "{}", r.message);
    assert_eq!(oauth.refresh_grants(), 1);

    // 3. The server expires every token early: the refused token is replaced once, and the
    //    test still passes.
    oauth.expire_access_tokens();
    let r = test().await.unwrap();
    assert!(r.ok, "{}", r.message);
    assert_eq!(oauth.refresh_grants(), 2);

    // 4. Tokens issued for less than the refresh margin are never reused: each sign-in (the
    //    incoming and the outgoing test) asks for a new one.
    oauth.set_expires_in(60);
    oauth.expire_access_tokens();
    let r = test().await.unwrap();
    assert!(r.ok, "{}", r.message);
    assert_eq!(oauth.refresh_grants(), 4);
    let r = test().await.unwrap();
    assert!(r.ok, "{}", r.message);
    assert_eq!(oauth.refresh_grants(), 6);

    // 5. The incoming worker signs in with a token too and stores a delivered message.
    dovecot
        .info()
        .deliver(
            ALICE,
            b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: over OAuth\r\n\
              Message-ID: <oauth-sync@example.test>\r\n\r\nhello\r\n",
        )
        .unwrap();
    let engine = Engine::new(store.clone(), config.clone());
    let stop = CancellationToken::new();
    let running = tokio::spawn(engine.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let items = store
            .list_all::<serversync_model::item::MailItem>(
                None,
                &[("message_id", Col::text("oauth-sync@example.test"))],
            )
            .await
            .unwrap();
        if let Some(item) = items.first() {
            assert_eq!(item.value.mailbox_id, m.id);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the message was not synchronized"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    running.await.unwrap();

    // 6. The refresh token is revoked (and the tokens issued from it expire): test and enable
    //    fails at step authentication with the endpoint's reason.
    oauth.revoke_refresh_token(&refresh_token);
    oauth.expire_access_tokens();
    let r = test().await.unwrap();
    assert!(!r.ok);
    assert!(r.message.contains(REVOKED_DESCRIPTION), "{}", r.message);
    assert!(r.message.contains("invalid_grant"), "{}", r.message);
    assert!(!r.message.contains(&refresh_token), "{}", r.message);
    assert!(!r.message.contains(CLIENT_SECRET), "{}", r.message);
    let stored = store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    assert!(!stored.incoming.enabled);
    let error = stored
        .telemetry
        .last_error
        .expect("the failure is recorded");
    assert_eq!(error.step, Some(FailureStep::Authentication));
    assert!(
        error.message.contains(REVOKED_DESCRIPTION),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmail_oauth_test_enable_refresh_and_revocation_sqlite() {
    run(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gmail_oauth_test_enable_refresh_and_revocation_postgres() {
    run(Backend::Postgres).await;
}
