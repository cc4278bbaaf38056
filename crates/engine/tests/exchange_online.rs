//! Exchange Online over Microsoft Graph, end to end through the engine, against the Graph
//! test double (`serversync_testkit::graph`: Graph v1.0 and Entra ID's token endpoint over
//! HTTPS on 127.0.0.1, every JSON body checked against Graph's CSDL), on SQLite and
//! PostgreSQL:
//! - test and enable of an Exchange Online profile (server-to-server authentication), and its
//!   failures named by step and code: a wrong secret, an expired secret, missing admin
//!   consent, an unknown mailbox, an on-premises mailbox, a multi-factor requirement;
//! - the intake corpus with filler up to 2,000 messages stored exactly once through delta,
//!   nothing marked read; an expired delta link read again without duplicates;
//! - an email activity sent with its copy in Sent Items, a 429 storm waited out and written in
//!   its trace.

mod common;
mod corpus_check;

use serversync_connectors::TlsTrust;
use serversync_engine::{Admin, EngineConfig};
use serversync_model::crm::EmailStatus;
use serversync_model::item::{ItemSource, MailItem};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{Organization, Privilege, User};
use serversync_model::profile::{
    AuthenticationType, EmailServerProfile, OAuthAuthority, OAuthSettings, ServerType,
};
use serversync_model::settings::{ActMethod, EmailSettings, IncomingMethod, OutgoingMethod};
use serversync_model::{FailureStep, MailboxId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::graph::{Fault, GraphConfig, GraphDouble, Route, csdl_path};
use serversync_testkit::tls::TlsFiles;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANT: &str = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
const APP: &str = "0a1b2c3d-1111-4222-8333-944455566677";
const SECRET: &str = "kQ8~app-secret-value";
const ALICE: &str = "alice@contoso.test";
const MAIL_ROLES: &[&str] = &["Mail.ReadWrite", "Mail.Send"];

struct Setup {
    double: GraphDouble,
    tls: TlsFiles,
    _dir: tempfile::TempDir,
}

async fn double(cfg: GraphConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = GraphDouble::start(
        &tls,
        GraphConfig {
            csdl: Some(csdl_path()),
            ..cfg
        },
    )
    .await
    .unwrap();
    double.add_tenant(TENANT, "contoso.test");
    double.add_app(TENANT, APP, SECRET, MAIL_ROLES);
    double.add_mailbox(TENANT, ALICE);
    Setup {
        double,
        tls,
        _dir: dir,
    }
}

impl Setup {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            network: Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
            tick: Duration::from_millis(100),
            lease_ttl: Duration::from_secs(6),
            graph_url: Some(self.double.graph_url()),
            login_url: Some(self.double.login_url()),
            ..EngineConfig::new(Arc::new(
                TlsTrust::with_extra_ca_files([&self.tls.ca_cert]).unwrap(),
            ))
        }
    }

    /// The bootstrap organization, an Exchange Online profile of app `client` (with
    /// `secret`), and an approved mailbox for `email` with incoming and outgoing email by
    /// server-side synchronization.
    async fn mailbox(&self, store: &Store, client: &str, secret: &str, email: &str) -> Mailbox {
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
        let mut p = EmailServerProfile::new(
            org.id,
            "Exchange Online",
            ServerType::ExchangeOnline,
            admin.id,
            now,
        );
        p.authentication = AuthenticationType::ServerToServer;
        p.auto_discover = true;
        p.oauth = Some(OAuthSettings {
            tenant_id: Some(TENANT.into()),
            client_id: client.into(),
            client_secret: Some(
                store
                    .put_secret(Some(org.id), &Secret::new(secret))
                    .await
                    .unwrap(),
            ),
            authority: OAuthAuthority::Public,
            token_endpoint: None,
            client_certificate: None,
        });
        p.validate(false).expect("a valid Exchange Online profile");
        store.insert(&p).await.unwrap();
        let settings = store
            .fetch::<EmailSettings>(&org.id.to_string())
            .await
            .unwrap()
            .value;
        let mut m = Mailbox::new_with_defaults(
            org.id,
            MailboxRegarding::User(admin.id),
            admin.id,
            "Alice",
            email,
            &settings,
            now,
        );
        m.profile_id = Some(p.id);
        m.approval = ApprovalStatus::Approved;
        m.incoming_method = IncomingMethod::ServerSideSync;
        m.outgoing_method = OutgoingMethod::ServerSideSync;
        m.act_method = ActMethod::None;
        store.insert(&m).await.unwrap();
        m
    }
}

async fn reread(store: &Store, id: MailboxId) -> Mailbox {
    store.fetch::<Mailbox>(&id.to_string()).await.unwrap().value
}

async fn test_once(
    s: &Setup,
    backend: Backend,
    client: &str,
    secret: &str,
    email: &str,
) -> (serversync_model::job::JobItemResult, Mailbox) {
    let (_db, store) = common::open_store(backend).await;
    let m = s.mailbox(&store, client, secret, email).await;
    let r = serversync_engine::test_enable::test_and_enable(&store, &s.config(), m.id)
        .await
        .unwrap();
    let after = reread(&store, m.id).await;
    store.close().await;
    (r, after)
}

fn failed_with(
    r: &serversync_model::job::JobItemResult,
    m: &Mailbox,
    step: FailureStep,
    code: &str,
) {
    assert!(!r.ok, "{}", r.message);
    assert!(!m.incoming.enabled && !m.outgoing.enabled);
    let e = m
        .telemetry
        .last_error
        .as_ref()
        .expect("the failure is recorded");
    assert_eq!(
        (e.step, e.code.as_str()),
        (Some(step), code),
        "{}",
        e.message
    );
}

async fn test_and_enable(backend: Backend) {
    let s = double(GraphConfig::default()).await;

    let (r, m) = test_once(&s, backend, APP, SECRET, ALICE).await;
    assert!(r.ok, "{}", r.message);
    assert!(m.incoming.enabled && m.outgoing.enabled);
    for step in [
        "incoming (GRAPH)",
        "outgoing (GRAPH)",
        "Exchange Online",
        "Inbox",
        "send permission",
    ] {
        assert!(r.message.contains(step), "no {step} in {}", r.message);
    }
    assert!(s.double.sent().is_empty(), "testing sends nothing");
    assert_eq!(
        m.telemetry.ews_url, None,
        "Graph's address is not the mailbox's"
    );

    let (r, m) = test_once(&s, backend, APP, "a-wrong-secret", ALICE).await;
    failed_with(&r, &m, FailureStep::Authentication, "invalid_client_secret");
    assert!(r.message.contains("AADSTS7000215"), "{}", r.message);

    s.double
        .add_app(TENANT, "expired-app", "old-secret", MAIL_ROLES);
    s.double.expire_secret(TENANT, "expired-app");
    let (r, m) = test_once(&s, backend, "expired-app", "old-secret", ALICE).await;
    failed_with(&r, &m, FailureStep::Authentication, "client_secret_expired");
    assert!(r.message.contains("create a new one"), "{}", r.message);

    s.double.add_app(TENANT, "no-consent", "nc-secret", &[]);
    let (r, m) = test_once(&s, backend, "no-consent", "nc-secret", ALICE).await;
    failed_with(&r, &m, FailureStep::Permission, "consent_missing");
    assert!(r.message.contains("admin consent"), "{}", r.message);

    let (r, m) = test_once(&s, backend, APP, SECRET, "ghost@contoso.test").await;
    failed_with(&r, &m, FailureStep::Permission, "mailbox_not_found");

    s.double.add_on_premises_user(TENANT, "onprem@contoso.test");
    let (r, m) = test_once(&s, backend, APP, SECRET, "onprem@contoso.test").await;
    failed_with(
        &r,
        &m,
        FailureStep::Permission,
        "mailbox_not_in_exchange_online",
    );
    assert!(
        r.message.contains("Exchange Server (Hybrid)"),
        "{}",
        r.message
    );

    s.double
        .add_app(TENANT, "mfa-app", "mfa-secret", MAIL_ROLES);
    s.double.require_mfa(TENANT, "mfa-app");
    let (r, m) = test_once(&s, backend, "mfa-app", "mfa-secret", ALICE).await;
    failed_with(&r, &m, FailureStep::Authentication, "mfa_not_supported");
    assert!(r.message.contains("multi-factor"), "{}", r.message);

    // Authority "automatic" without a configured Graph root: the tenant's token endpoint and
    // Graph host come from Entra ID's OpenID metadata; an unknown tenant fails there.
    let automatic = EngineConfig {
        graph_url: None,
        ..s.config()
    };
    for (tenant, ok) in [("contoso.test", true), ("nowhere.test", false)] {
        let (_db, store) = common::open_store(backend).await;
        let m = s.mailbox(&store, APP, SECRET, ALICE).await;
        let mut p = store
            .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
            .await
            .unwrap()
            .value;
        let o = p.oauth.as_mut().unwrap();
        o.authority = OAuthAuthority::Automatic;
        o.tenant_id = Some(tenant.into());
        store.update(&p, None).await.unwrap();
        let r = serversync_engine::test_enable::test_and_enable(&store, &automatic, m.id)
            .await
            .unwrap();
        let m = reread(&store, m.id).await;
        store.close().await;
        if ok {
            assert!(r.ok, "{}", r.message);
        } else {
            failed_with(&r, &m, FailureStep::Authentication, "tenant_not_found");
        }
        let asked = s.double.requests().into_iter().any(|q| {
            q.method == "GET"
                && q.path == format!("/{tenant}/v2.0/.well-known/openid-configuration")
        });
        assert!(asked, "the metadata of {tenant} was not asked for");
    }
    assert!(
        s.double.schema_violations().is_empty(),
        "{:#?}",
        s.double.schema_violations()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_online_test_and_enable_sqlite() {
    test_and_enable(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_online_test_and_enable_postgres() {
    test_and_enable(Backend::Postgres).await
}

/// Messages in the Inbox in all: the corpus and plain filler.
const MESSAGES: usize = 2_000;

fn filler(n: usize) -> Vec<u8> {
    format!(
        "From: Filler <filler@example.net>\r\nTo: {ALICE}\r\nSubject: filler {n}\r\nMessage-ID: <filler-{n}@example.net>\r\nDate: {}\r\n\r\nfiller message {n}\r\n",
        chrono::Utc::now().to_rfc2822()
    )
    .into_bytes()
}

async fn incoming_corpus(backend: Backend) {
    let s = double(GraphConfig {
        page_size: 150,
        ..Default::default()
    })
    .await;
    let corpus = serversync_testkit::corpus::corpus();
    let mut names: HashMap<String, &str> = HashMap::new();
    for (name, raw) in &corpus {
        // As on IMAP, `too-old` was received long before the mailbox's "process email from".
        let received = match *name {
            "too-old" => chrono::DateTime::from_timestamp(978_307_205, 0).unwrap(), // 2001-01-01
            _ => chrono::Utc::now(),
        };
        let id = s
            .double
            .deliver_received(ALICE, "inbox", raw, false, received);
        names.insert(id, name);
    }
    for n in corpus.len()..MESSAGES {
        s.double.deliver(ALICE, "inbox", &filler(n), n % 3 == 0);
    }
    let (_db, store) = common::open_store(backend).await;
    let m = s.mailbox(&store, APP, SECRET, ALICE).await;
    let mut mm = reread(&store, m.id).await;
    mm.incoming.enabled = true;
    store.update(&mm, None).await.unwrap();
    corpus_check::configure(&store, m.id).await;

    let items = corpus_check::sync_until(
        &store,
        &s.config(),
        m.id,
        "2,000 messages over Graph",
        |items| items.len() >= MESSAGES,
    )
    .await;
    assert_eq!(items.len(), MESSAGES, "each message once");
    let mut by_name: HashMap<&str, MailItem> = HashMap::new();
    let mut keys = std::collections::HashSet::new();
    for it in items {
        let ItemSource::Graph { folder, id } = &it.source else {
            panic!("a Graph item: {:?}", it.source)
        };
        assert_eq!(folder, "INBOX");
        assert!(keys.insert(id.clone()), "{id} stored twice");
        if let Some(name) = names.get(id) {
            by_name.insert(name, it);
        }
    }
    assert_eq!(by_name.len(), corpus.len());
    corpus_check::check(&store, &corpus, &by_name).await;

    // Read state untouched, nothing removed.
    let inbox = s.double.messages(ALICE, "inbox");
    assert_eq!(inbox.len(), MESSAGES);
    let read = inbox.iter().filter(|i| i.is_read).count();
    assert_eq!(
        read,
        (corpus.len()..MESSAGES).filter(|n| n % 3 == 0).count()
    );

    // The delta link expires: the folder is read again from the start, and nothing is kept
    // twice; a message that arrived meanwhile is kept.
    s.double.expire_delta_tokens(ALICE);
    s.double.deliver(ALICE, "inbox", &filler(MESSAGES), false);
    let items = corpus_check::sync_until(
        &store,
        &s.config(),
        m.id,
        "the resync after an expired delta link",
        |items| items.len() > MESSAGES,
    )
    .await;
    assert_eq!(items.len(), MESSAGES + 1, "nothing stored twice");
    assert!(
        s.double.requests().iter().any(|r| r.status == 410),
        "the delta link was never refused"
    );
    assert!(
        s.double.schema_violations().is_empty(),
        "{:#?}",
        s.double.schema_violations()
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_online_incoming_2000_messages_once_sqlite() {
    incoming_corpus(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_online_incoming_2000_messages_once_postgres() {
    incoming_corpus(Backend::Postgres).await
}

async fn outgoing(backend: Backend) {
    let s = double(GraphConfig::default()).await;
    let (_db, store) = common::open_store(backend).await;
    let m = s.mailbox(&store, APP, SECRET, ALICE).await;
    let mut mm = reread(&store, m.id).await;
    mm.outgoing.enabled = true;
    store.update(&mm, None).await.unwrap();
    let user = store
        .fetch::<User>(&m.owner_id.to_string())
        .await
        .unwrap()
        .value;
    let caller = serversync_model::auth::Caller {
        user,
        privileges: [Privilege::ReadRecords, Privilege::WriteRecords]
            .into_iter()
            .collect(),
    };
    // A 429 storm: three refusals in a row, as Graph sends them.
    for _ in 0..3 {
        s.double.inject(Fault::Throttle {
            route: Route::SendMail,
            status: 429,
            retry_after: Some(1),
            mailbox_concurrency: true,
        });
    }
    let a = serversync_engine::Engine::new(store.clone(), s.config())
        .admin()
        .compose_email(
            &caller,
            m.org_id,
            common::email(m.id, "bob@example.net", "Quote over Graph", "Here it is."),
        )
        .await
        .unwrap();
    let engine = serversync_engine::Engine::new(store.clone(), s.config());
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let got = store
            .fetch::<serversync_model::crm::EmailActivity>(&a.id.to_string())
            .await
            .unwrap()
            .value;
        if got.status == EmailStatus::Sent {
            break got;
        }
        assert!(Instant::now() < deadline, "not sent within 60 s: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.cancel();
    task.await.unwrap();
    assert_eq!(s.double.sent().len(), 1, "sent once");
    let copies = s.double.messages(ALICE, "sentitems");
    assert_eq!(copies.len(), 1, "a copy in Sent Items");
    assert_eq!(
        copies[0]
            .internet_message_id
            .as_deref()
            .map(|m| m.trim_matches(['<', '>'])),
        done.message_id.as_deref()
    );
    assert_eq!(done.send_trace.len(), 3, "{:?}", done.send_trace);
    assert!(
        done.send_trace
            .iter()
            .all(|t| t.contains("waited 1000 ms as Graph asked")),
        "{:?}",
        done.send_trace
    );
    assert!(
        s.double.schema_violations().is_empty(),
        "{:#?}",
        s.double.schema_violations()
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_online_outgoing_with_a_sent_items_copy_sqlite() {
    outgoing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_online_outgoing_with_a_sent_items_copy_postgres() {
    outgoing(Backend::Postgres).await
}
