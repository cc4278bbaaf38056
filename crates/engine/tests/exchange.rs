//! Exchange Server over EWS, end to end through the engine, against the Exchange test double
//! (`serversync_testkit::ews`, HTTPS on 127.0.0.1), on SQLite and PostgreSQL:
//! - test and enable of an Exchange Server profile with a fixed URL and with Autodiscover
//!   (the URL found and the server's version kept on the mailbox), and its failures named by
//!   step and code: a wrong password, a service account without impersonation rights, a
//!   mailbox that does not exist, an Exchange 2010 server, Autodiscover finding nothing, a
//!   service account with multi-factor authentication; a profile whose mailboxes sign in
//!   with their own credentials (no impersonation) tested and its mail read;
//! - the intake corpus (malformed kinds included) with filler up to 2,000 messages stored
//!   exactly once with the expected decisions, nothing marked read on the server;
//! - an email activity sent with its copy in Sent Items, throttling waited out and written in
//!   its trace;
//! - the profile's connection limit held across mailboxes and workers (the double's port seen
//!   from `ss`).

mod common;
mod corpus_check;

use serversync_connectors::TlsTrust;
use serversync_engine::{Admin, Engine, EngineConfig};
use serversync_model::crm::EmailStatus;
use serversync_model::item::{ItemSource, MailItem};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{Organization, Privilege, User};
use serversync_model::profile::{AuthenticationType, EmailServerProfile, Endpoint, ServerType};
use serversync_model::settings::{ActMethod, EmailSettings, IncomingMethod, OutgoingMethod};
use serversync_model::{FailureStep, MailboxId, QueueId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::dnsmasq::Dnsmasq;
use serversync_testkit::ews::{EwsConfig, EwsDouble, ExchangeServerVersion, Fault};
use serversync_testkit::tls::TlsFiles;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SERVICE: &str = "CONTOSO\\svc-sync";
const PASSWORD: &str = "Sync-Pa55word!";
const ALICE: &str = "alice@localhost";
const BOB: &str = "bob@localhost";
const BOB_USER: &str = "CONTOSO\\bob";

struct Setup {
    double: EwsDouble,
    tls: TlsFiles,
    /// Every host name is looked up here (never at the machine's resolver); it knows none.
    dns: Dnsmasq,
    _dir: tempfile::TempDir,
}

async fn double(cfg: EwsConfig) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = EwsDouble::start(&tls, cfg).await.unwrap();
    double.add_account(SERVICE, PASSWORD, true);
    double.add_account("CONTOSO\\no-rights", PASSWORD, false);
    double.add_mailbox(ALICE, None);
    let dns = Dnsmasq::start(dir.path(), &["invalid"], &[]).unwrap();
    Setup {
        double,
        tls,
        dns,
        _dir: dir,
    }
}

impl Setup {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            network: Arc::new(
                serversync_connectors::NetworkPolicy::loopback_allowed()
                    .with_nameserver(Some(self.dns.addr())),
            ),
            tick: Duration::from_millis(100),
            lease_ttl: Duration::from_secs(6),
            autodiscover_port: self.double.port(),
            ..EngineConfig::new(Arc::new(
                TlsTrust::with_extra_ca_files([&self.tls.ca_cert]).unwrap(),
            ))
        }
    }

    /// The bootstrap organization, an Exchange Server profile signing in as `user` with
    /// impersonation (at the double's EWS URL, or through Autodiscover), and an approved
    /// mailbox for `email` with incoming and outgoing email by server-side synchronization.
    async fn mailbox(&self, store: &Store, user: &str, email: &str, autodiscover: bool) -> Mailbox {
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
            "Exchange",
            ServerType::ExchangeServer,
            admin.id,
            now,
        );
        p.authentication = AuthenticationType::Impersonation;
        p.use_impersonation = true;
        p.auto_discover = autodiscover;
        if !autodiscover {
            let ews = Endpoint {
                location: self.double.ews_url(),
                port: self.double.port(),
                tls: serversync_model::profile::TlsMode::Implicit,
            };
            p.incoming = Some(ews.clone());
            p.outgoing = Some(ews);
        }
        p.username = Some(user.into());
        p.password = Some(
            store
                .put_secret(Some(org.id), &Secret::new(PASSWORD))
                .await
                .unwrap(),
        );
        p.validate(false).expect("a valid Exchange profile");
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

/// Tests `email` signing in as `user` on a fresh store; the job's result and the mailbox.
async fn test_once(
    s: &Setup,
    backend: Backend,
    user: &str,
    email: &str,
    autodiscover: bool,
) -> (serversync_model::job::JobItemResult, Mailbox) {
    let (_db, store) = common::open_store(backend).await;
    let m = s.mailbox(&store, user, email, autodiscover).await;
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
    let s = double(EwsConfig::default()).await;

    let (r, m) = test_once(&s, backend, SERVICE, ALICE, false).await;
    assert!(r.ok, "{}", r.message);
    assert!(m.incoming.enabled && m.outgoing.enabled);
    assert!(
        r.message.contains("incoming (EWS)") && r.message.contains("outgoing (EWS)"),
        "{}",
        r.message
    );
    for step in [
        "sign in",
        "server version",
        "impersonation",
        "Inbox",
        "send permission",
    ] {
        assert!(r.message.contains(step), "no {step} in {}", r.message);
    }
    assert!(
        m.telemetry
            .server_version
            .as_deref()
            .is_some_and(|v| v.starts_with("exchange2019")),
        "{:?}",
        m.telemetry.server_version
    );
    assert_eq!(
        r.certificates.len(),
        2,
        "the certificate of each direction is shown"
    );
    assert!(s.double.sent().is_empty(), "testing sends nothing");

    let (r, m) = test_once(&s, backend, SERVICE, ALICE, true).await;
    assert!(r.ok, "{}", r.message);
    assert!(
        r.message.contains("autodiscover for alice@localhost"),
        "{}",
        r.message
    );
    assert_eq!(
        m.telemetry.ews_url.as_deref(),
        Some(s.double.ews_url().as_str())
    );

    let (r, m) = test_once(&s, backend, "CONTOSO\\nobody", ALICE, false).await;
    failed_with(&r, &m, FailureStep::Authentication, "authentication_failed");
    assert!(r.message.contains("password"), "{}", r.message);

    let (r, m) = test_once(&s, backend, "CONTOSO\\no-rights", ALICE, false).await;
    failed_with(&r, &m, FailureStep::Permission, "impersonation_denied");
    assert!(
        r.message.contains("ApplicationImpersonation"),
        "{}",
        r.message
    );

    let (r, m) = test_once(&s, backend, SERVICE, "ghost@localhost", false).await;
    failed_with(&r, &m, FailureStep::Permission, "mailbox_not_found");

    // A service account with multi-factor authentication: its right password is refused
    // with AADSTS50076, which a server-side service cannot answer.
    s.double.add_account("CONTOSO\\mfa-sync", PASSWORD, true);
    s.double.require_mfa("CONTOSO\\mfa-sync");
    let (r, m) = test_once(&s, backend, "CONTOSO\\mfa-sync", ALICE, false).await;
    failed_with(&r, &m, FailureStep::Authentication, "mfa_not_supported");
    assert!(r.message.contains("multi-factor"), "{}", r.message);

    let (r, m) = test_once(&s, backend, SERVICE, "alice@nowhere.invalid", true).await;
    failed_with(&r, &m, FailureStep::Dns, "autodiscover_failed");
    assert!(
        r.message.contains("could not be determined"),
        "{}",
        r.message
    );

    let old = double(EwsConfig {
        version: ExchangeServerVersion::Exchange2010Sp3,
        ..Default::default()
    })
    .await;
    let (r, m) = test_once(&old, backend, SERVICE, ALICE, false).await;
    failed_with(
        &r,
        &m,
        FailureStep::Protocol,
        "unsupported_exchange_version",
    );
    assert!(r.message.contains("2013 SP1"), "{}", r.message);
}

/// A profile whose mailboxes sign in with their own credentials: Bob's mailbox is tested as
/// Bob (no impersonation, no service account) and its mail read; a wrong mailbox password
/// fails naming the mailbox's user.
async fn own_credentials(backend: Backend) {
    let s = double(EwsConfig::default()).await;
    s.double.add_account(BOB_USER, "Bob-Pa55", false);
    s.double.add_mailbox(BOB, Some(BOB_USER));
    s.double.deliver(BOB, "inbox", &filler(1), false);
    let (_db, store) = common::open_store(backend).await;
    let m = s.mailbox(&store, SERVICE, BOB, false).await;
    let mut p = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap();
    p.value.authentication = AuthenticationType::CredentialsSpecifiedByUserOrQueue;
    p.value.use_impersonation = false;
    p.value.username = None;
    p.value.password = None;
    p.value.validate(false).expect("a valid profile");
    store.update(&p.value, None).await.unwrap();
    let org = Some(m.org_id);
    let mut mm = reread(&store, m.id).await;
    mm.username = Some(BOB_USER.into());
    mm.password = Some(store.put_secret(org, &Secret::new("wrong")).await.unwrap());
    store.update(&mm, None).await.unwrap();

    let config = s.config();
    let test = || serversync_engine::test_enable::test_and_enable(&store, &config, m.id);
    let r = test().await.unwrap();
    failed_with(
        &r,
        &reread(&store, m.id).await,
        FailureStep::Authentication,
        "authentication_failed",
    );
    assert!(r.message.contains(BOB_USER), "{}", r.message);

    let mut mm = reread(&store, m.id).await;
    mm.password = Some(
        store
            .put_secret(org, &Secret::new("Bob-Pa55"))
            .await
            .unwrap(),
    );
    store.update(&mm, None).await.unwrap();
    let r = test().await.unwrap();
    assert!(r.ok, "{}", r.message);
    let signed_in: Vec<_> = s
        .double
        .requests()
        .into_iter()
        .filter_map(|q| q.authenticated_as.map(|who| (who, q.body)))
        .collect();
    assert!(!signed_in.is_empty());
    for (who, body) in &signed_in {
        assert_eq!(who, BOB_USER, "signed in as the mailbox's own user");
        assert!(!body.contains("ExchangeImpersonation"), "{body}");
    }

    let items = corpus_check::sync_until(&store, &s.config(), m.id, "Bob's message", |items| {
        !items.is_empty()
    })
    .await;
    assert_eq!(items.len(), 1);
    store.close().await;
}

/// The profile's connection limit holds across mailboxes and workers over EWS as over IMAP:
/// three mailboxes impersonated through one profile allowing one connection, two engines on
/// one store; the double's port never has more than one connection open, and every mailbox
/// gets its mail. (With three connections allowed, each mailbox holds its own and streams.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_connection_limit_holds_over_ews() {
    let s = double(EwsConfig::default()).await;
    let (_db, store) = common::open_store(Backend::Sqlite).await;
    let first = s.mailbox(&store, SERVICE, ALICE, false).await;
    let mut p = store
        .fetch::<EmailServerProfile>(&first.profile_id.unwrap().to_string())
        .await
        .unwrap()
        .value;
    p.advanced.max_concurrent_connections = 1;
    store.update(&p, None).await.unwrap();
    let mut mailboxes = Vec::new();
    for (n, email) in [ALICE, BOB, "carol@localhost"].into_iter().enumerate() {
        if email != ALICE {
            s.double.add_mailbox(email, None);
        }
        s.double.deliver(email, "inbox", &filler(n), false);
        let mut m = if email == ALICE {
            reread(&store, first.id).await
        } else {
            let mut m = first.clone();
            m.id = MailboxId::new();
            m.email = email.into();
            m.regarding = MailboxRegarding::Queue(QueueId::new());
            store.insert(&m).await.unwrap();
            m
        };
        m.incoming.enabled = true;
        store.update(&m, None).await.unwrap();
        mailboxes.push(m.id);
    }

    let port = s.double.port();
    let stop = tokio_util::sync::CancellationToken::new();
    let engines: Vec<_> = (0..2)
        .map(|_| tokio::spawn(Engine::new(store.clone(), s.config()).run(stop.clone())))
        .collect();
    let sampler = common::ConnectionSampler::start(port);
    for id in &mailboxes {
        let id = *id;
        common::eventually!(60, "every mailbox gets its turn on the one connection", {
            let items = store.list_all::<MailItem>(None, &[]).await.unwrap();
            items.iter().any(|i| i.value.mailbox_id == id)
        });
    }
    let most = sampler.most();
    assert_eq!(
        most, 1,
        "the workers' connections were seen, never more than the profile's one at once"
    );
    stop.cancel();
    for e in engines {
        tokio::time::timeout(Duration::from_secs(20), e)
            .await
            .unwrap()
            .unwrap();
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_own_credentials_sqlite() {
    own_credentials(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_own_credentials_postgres() {
    own_credentials(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_test_and_enable_sqlite() {
    test_and_enable(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_test_and_enable_postgres() {
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
    let s = double(EwsConfig {
        max_sync_items: 150,
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
    let m = s.mailbox(&store, SERVICE, ALICE, false).await;
    let mut mm = reread(&store, m.id).await;
    mm.incoming.enabled = true;
    store.update(&mm, None).await.unwrap();
    corpus_check::configure(&store, m.id).await;

    let items = corpus_check::sync_until(
        &store,
        &s.config(),
        m.id,
        "2,000 messages over EWS",
        |items| items.len() >= MESSAGES,
    )
    .await;
    assert_eq!(items.len(), MESSAGES, "each message once");
    let mut by_name: HashMap<&str, MailItem> = HashMap::new();
    let mut keys = std::collections::HashSet::new();
    for it in items {
        let ItemSource::Ews { folder, item_id } = &it.source else {
            panic!("an EWS item: {:?}", it.source)
        };
        assert_eq!(folder, "INBOX");
        assert!(keys.insert(item_id.clone()), "{item_id} stored twice");
        if let Some(name) = names.get(item_id) {
            by_name.insert(name, it);
        }
    }
    assert_eq!(by_name.len(), corpus.len());
    corpus_check::check(&store, &corpus, &by_name).await;

    // Read state untouched, nothing removed.
    let inbox = s.double.items(ALICE, "inbox");
    assert_eq!(inbox.len(), MESSAGES);
    let read = inbox.iter().filter(|i| i.is_read).count();
    assert_eq!(
        read,
        (corpus.len()..MESSAGES).filter(|n| n % 3 == 0).count()
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_incoming_2000_messages_once_sqlite() {
    incoming_corpus(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_incoming_2000_messages_once_postgres() {
    incoming_corpus(Backend::Postgres).await
}

async fn outgoing(backend: Backend) {
    let s = double(EwsConfig::default()).await;
    let (_db, store) = common::open_store(backend).await;
    let m = s.mailbox(&store, SERVICE, ALICE, false).await;
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
    s.double.inject(Fault::ServerBusy {
        operation: Some("CreateItem".into()),
        back_off_ms: 300,
        as_soap_fault: true,
    });
    let a = serversync_engine::Engine::new(store.clone(), s.config())
        .admin()
        .compose_email(
            &caller,
            m.org_id,
            common::email(
                m.id,
                "bob@example.net",
                "Quote over Exchange",
                "Here it is.",
            ),
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
    let copies = s.double.items(ALICE, "sentitems");
    assert_eq!(copies.len(), 1, "a copy in Sent Items");
    assert_eq!(
        copies[0]
            .internet_message_id
            .as_deref()
            .map(|m| m.trim_matches(['<', '>'])),
        done.message_id.as_deref()
    );
    assert_eq!(done.send_trace.len(), 1, "{:?}", done.send_trace);
    assert!(
        done.send_trace[0].contains("throttled, waited 300 ms"),
        "{:?}",
        done.send_trace
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_outgoing_with_a_sent_items_copy_sqlite() {
    outgoing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_outgoing_with_a_sent_items_copy_postgres() {
    outgoing(Backend::Postgres).await
}

/// A mailbox whose EWS URL was found by Autodiscover before, and the server moved: the stale
/// URL is looked up again at once, and mail keeps arriving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_autodiscovered_url_is_looked_up_again() {
    let s = double(EwsConfig::default()).await;
    let (_db, store) = common::open_store(Backend::Sqlite).await;
    let m = s.mailbox(&store, SERVICE, ALICE, true).await;
    let mut mm = reread(&store, m.id).await;
    mm.incoming.enabled = true;
    mm.telemetry.ews_url = Some("https://localhost:1/EWS/Exchange.asmx".into());
    store.update(&mm, None).await.unwrap();
    s.double.deliver(ALICE, "inbox", &filler(1), false);
    let items = corpus_check::sync_until(&store, &s.config(), m.id, "mail after the move", |i| {
        !i.is_empty()
    })
    .await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        reread(&store, m.id).await.telemetry.ews_url.as_deref(),
        Some(s.double.ews_url().as_str())
    );
    store.close().await;
}

/// Hybrid Modern Authentication: the profile's app registration gets a token from the
/// (test) identity provider for the Exchange server's origin, and the token signs in to EWS,
/// acting on the mailbox through impersonation — for test and enable and for the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_modern_authentication_signs_in_with_an_entra_token() {
    use serversync_model::profile::{AuthProtocol, OAuthSettings};
    use serversync_testkit::ews::AuthScheme;
    let s = double(EwsConfig {
        auth: vec![AuthScheme::Bearer { tokens: Vec::new() }],
        ..Default::default()
    })
    .await;
    let idp = Arc::new(
        serversync_testkit::oauth::OAuthServer::start(&s.tls, "hma-app", "hma-secret")
            .await
            .unwrap(),
    );
    idp.allow_client_credentials("hma-app");
    let checker = idp.clone();
    s.double
        .accept_tokens(Arc::new(move |token: &str| checker.token_owner(token)));

    let (_db, store) = common::open_store(Backend::Sqlite).await;
    let m = s.mailbox(&store, SERVICE, ALICE, false).await;
    let mut p = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap();
    p.value.authentication = AuthenticationType::HybridModernAuth;
    p.value.auth_protocol = AuthProtocol::OAuth;
    p.value.username = None;
    p.value.password = None;
    p.value.oauth = Some(OAuthSettings {
        tenant_id: Some("contoso.onmicrosoft.com".into()),
        client_id: "hma-app".into(),
        client_secret: Some(
            store
                .put_secret(Some(m.org_id), &Secret::new("hma-secret"))
                .await
                .unwrap(),
        ),
        authority: Default::default(),
        token_endpoint: Some(idp.token_url().to_owned()),
        client_certificate: None,
    });
    p.value.validate(false).expect("a valid hybrid profile");
    store.update(&p.value, Some(p.version)).await.unwrap();

    let r = serversync_engine::test_enable::test_and_enable(&store, &s.config(), m.id)
        .await
        .unwrap();
    assert!(r.ok, "{}", r.message);
    assert!(r.message.contains("signed in with Bearer"), "{}", r.message);
    let origin = format!("https://localhost:{}", s.double.port());
    assert!(
        idp.scopes()
            .iter()
            .all(|sc| *sc == format!("{origin}/.default")),
        "{:?}",
        idp.scopes()
    );
    assert!(!idp.scopes().is_empty());

    s.double.deliver(ALICE, "inbox", &filler(7), false);
    let items =
        corpus_check::sync_until(&store, &s.config(), m.id, "mail over a bearer token", |i| {
            !i.is_empty()
        })
        .await;
    assert_eq!(items.len(), 1);
    store.close().await;
}
