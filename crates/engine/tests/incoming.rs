//! Incoming IMAP synchronization against the real Dovecot and Postfix: a message submitted
//! over SMTP is stored while the mailbox waits in IDLE, without a poll interval, and is not
//! marked read on the server.

mod common;

use lettre::message::Mailbox as Addr;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::{Engine, EngineConfig};
use serversync_model::Secret;
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::Endpoint;
use serversync_store::{Backend, Col, Store};
use serversync_testkit::TestEnv;
use serversync_vault::MasterKey;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const CAROL: &str = "carol@example.test";

async fn submit(message_id: &str) {
    let env = TestEnv::from_env();
    let ca = Certificate::from_pem(env.ca_cert_pem().unwrap().as_bytes()).unwrap();
    let tls = TlsParameters::builder(env.tls_server_name.clone())
        .certificate_store(CertificateStore::None)
        .add_root_certificate(ca)
        .build_rustls()
        .unwrap();
    let mailer = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(env.host.as_str())
        .port(env.submission_port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(
            "alice@example.test".into(),
            env.password.clone(),
        ))
        .authentication(vec![Mechanism::Plain])
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let email = Message::builder()
        .from("Alice <alice@example.test>".parse::<Addr>().unwrap())
        .to(CAROL.parse::<Addr>().unwrap())
        .subject("arrives while idling")
        .message_id(Some(format!("<{message_id}>")))
        .body("hello".to_string())
        .unwrap();
    mailer.send(email).await.expect("SMTP submission");
}

async fn run(backend: Backend) {
    let env = TestEnv::from_env();
    let (_guard, url): (Box<dyn std::any::Any + Send>, String) = match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("i.db").display());
            (Box::new(d), url)
        }
        Backend::Postgres => {
            let db = env.pg_database().await.unwrap();
            let url = db.url().to_owned();
            (Box::new(db), url)
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&env.ca_cert]).unwrap());
    let config = EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(trust.clone())
    };
    let engine = Engine::new(store.clone(), config);
    let m = common::imap_mailbox(
        &store,
        Endpoint {
            location: "localhost".into(),
            port: env.imaps_port(),
            tls: TlsMode::Implicit,
        },
        CAROL,
        &env.password,
    )
    .await;

    let stop = CancellationToken::new();
    let worker = engine.worker_id().to_owned();
    let task = tokio::spawn(engine.run(stop.clone()));

    // The initial sync commits a cursor; then the worker waits in IDLE.
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.get_cursor(m.id, "INBOX").await.unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "initial sync did not finish within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = store
        .get_lease(&format!("mailbox:{}", m.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.owner, worker);

    let message_id = format!("idle-{}@example.test", uuid::Uuid::new_v4());
    let sent = Instant::now();
    submit(&message_id).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let latency = loop {
        let found = store
            .list_all::<serversync_model::item::MailItem>(
                None,
                &[("message_id", Col::text(&message_id))],
            )
            .await
            .unwrap();
        if let Some(item) = found.first() {
            assert_eq!(item.value.mailbox_id, m.id);
            assert!(
                item.value.trace.iter().any(|t| t == "stored"),
                "{:?}",
                item.value.trace
            );
            break sent.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the message was not stored within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("{backend:?}: SMTP submit → stored while in IDLE: {latency:?}");
    assert!(
        latency < Duration::from_secs(10),
        "stored by IDLE, not by a poll: {latency:?}"
    );

    // Never marked read on the server.
    let login = Login::password(CAROL, Secret::new(env.password.clone()));
    let mut imap = SyncSession::connect(
        &ServerAddr::new("localhost", env.imaps_port(), TlsMode::Implicit),
        &login,
        &ConnectOptions::new(trust)
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    imap.examine("INBOX", false).await.unwrap();
    let uids = imap
        .uid_search_header("Message-ID", &message_id)
        .await
        .unwrap();
    assert_eq!(uids.len(), 1);
    let meta = imap.uid_list(uids[0]).await.unwrap();
    let meta = meta.iter().find(|x| x.uid == uids[0]).unwrap();
    assert!(!meta.has_flag("\\Seen"), "{:?}", meta.flags);
    let _ = imap.logout().await;

    // A clean stop releases the mailbox at once.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap();
    let l = store
        .get_lease(&format!("mailbox:{}", m.id))
        .await
        .unwrap()
        .unwrap();
    assert!(l.until <= chrono::Utc::now(), "lease released: {l:?}");
    let after = store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    assert!(after.telemetry.items_processed >= 1);
    assert!(after.telemetry.last_successful_sync.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arrives_while_idling_sqlite() {
    run(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_arrives_while_idling_postgres() {
    run(Backend::Postgres).await
}
