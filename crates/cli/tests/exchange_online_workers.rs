//! `serversync serve` against the Graph test double (`serversync_testkit::graph`: Microsoft
//! Graph v1.0 and Entra ID's token endpoint over HTTPS on 127.0.0.1, every JSON body checked
//! against Graph's CSDL), an Exchange Online profile with server-to-server authentication, on
//! SQLite and PostgreSQL:
//! - killed with SIGKILL five times at random moments of a 2,000-message delta sync and
//!   restarted: exactly 2,000 messages are stored, none twice, none marked read;
//! - killed with SIGKILL after Graph carried out a sendMail and before the worker heard back:
//!   the restarted worker finds the Message-ID in Sent Items and records the email as sent —
//!   it is never sent twice.

mod worker;

use serversync_model::auth::Caller;
use serversync_model::crm::{EmailActivity, EmailStatus, NewEmail, Recipient};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::Privilege;
use serversync_model::profile::{
    AuthenticationType, EmailServerProfile, OAuthAuthority, OAuthSettings, ServerType,
};
use serversync_model::settings::{ActMethod, IncomingMethod, OutgoingMethod};
use serversync_model::{MailboxId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::TestEnv;
use serversync_testkit::graph::{Fault, GraphConfig, GraphDouble, Route, csdl_path};
use serversync_vault::MasterKey;
use std::time::{Duration, Instant};
use worker::{Worker, bootstrap, database, sync_through_kills_with};

const TENANT: &str = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
const APP: &str = "0a1b2c3d-1111-4222-8333-944455566677";
const SECRET: &str = "kQ8~app-secret-value";
const ALICE: &str = "alice@contoso.test";
const MESSAGES: usize = 2_000;
const KILLS: usize = 5;

/// The double on the test environment's certificate (which `serve` trusts), with the tenant,
/// the app (Mail.ReadWrite, Mail.Send) and Alice's mailbox.
async fn graph(cfg: GraphConfig) -> GraphDouble {
    let double = GraphDouble::start(
        &TestEnv::from_env().tls,
        GraphConfig {
            csdl: Some(csdl_path()),
            ..cfg
        },
    )
    .await
    .unwrap();
    double.add_tenant(TENANT, "contoso.test");
    double.add_app(TENANT, APP, SECRET, &["Mail.ReadWrite", "Mail.Send"]);
    double.add_mailbox(TENANT, ALICE);
    double
}

/// The worker's config pointing Exchange Online at the double.
fn config(double: &GraphDouble) -> String {
    format!(
        "[exchange]\ngraph_url = \"{}\"\nlogin_url = \"{}\"\n",
        double.graph_url(),
        double.login_url()
    )
}

/// An Exchange Online profile (server-to-server, the app's secret) and Alice's approved
/// mailbox on it, with incoming and outgoing email enabled.
async fn mailbox(store: &Store) -> (Mailbox, Caller) {
    let (admin, org, settings) = bootstrap(store).await;
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
        client_id: APP.into(),
        client_secret: Some(
            store
                .put_secret(Some(org.id), &Secret::new(SECRET))
                .await
                .unwrap(),
        ),
        authority: OAuthAuthority::Public,
        token_endpoint: None,
        client_certificate: None,
    });
    p.validate(false).expect("a valid Exchange Online profile");
    store.insert(&p).await.unwrap();
    let mut m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(admin.id),
        admin.id,
        "Alice",
        ALICE,
        &settings,
        now,
    );
    m.profile_id = Some(p.id);
    m.approval = ApprovalStatus::Approved;
    m.incoming_method = IncomingMethod::ServerSideSync;
    m.outgoing_method = OutgoingMethod::ServerSideSync;
    m.act_method = ActMethod::None;
    m.incoming.enabled = true;
    m.outgoing.enabled = true;
    store.insert(&m).await.unwrap();
    let caller = Caller {
        user: admin,
        privileges: [Privilege::ReadRecords, Privilege::WriteRecords]
            .into_iter()
            .collect(),
    };
    (m, caller)
}

fn message(id: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}>\r\nFrom: Ann <ann@example.test>\r\nTo: {ALICE}\r\nSubject: message {id}\r\nDate: {}\r\n\r\nThis is message {id}.\r\n",
        chrono::Utc::now().to_rfc2822()
    )
    .into_bytes()
}

async fn open(
    backend: Backend,
    dir: &std::path::Path,
) -> (Box<dyn std::any::Any + Send>, String, MasterKey, Store) {
    let (db, url) = database(backend, dir).await;
    let key = MasterKey::generate().unwrap();
    let store = Store::open(
        &url,
        MasterKey::from_base64(&key.to_base64(), serversync_vault::KeySource::Direct).unwrap(),
    )
    .await
    .unwrap();
    (db, url, key, store)
}

async fn kill9_during_graph_sync(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-graph-kill9")
        .tempdir_in("/tmp")
        .unwrap();
    let double = graph(GraphConfig::default()).await;
    let expected: Vec<String> = (0..MESSAGES)
        .map(|i| format!("graph-kill9-{i:05}@example.test"))
        .collect();
    for (i, id) in expected.iter().enumerate() {
        double.deliver(ALICE, "inbox", &message(id), i % 4 == 0);
    }
    let (_db, url, key, store) = open(backend, dir.path()).await;
    let (m, _) = mailbox(&store).await;
    let m: MailboxId = m.id;

    let killed_at = sync_through_kills_with(
        dir.path(),
        &url,
        &key,
        &store,
        m,
        &expected,
        KILLS,
        &config(&double),
    )
    .await;
    println!("{backend:?}: killed with SIGKILL at {killed_at:?} stored messages");
    let inbox = double.messages(ALICE, "inbox");
    assert_eq!(inbox.len(), MESSAGES, "nothing removed");
    assert_eq!(
        inbox.iter().filter(|i| i.is_read).count(),
        MESSAGES / 4,
        "read state untouched"
    );
    assert_eq!(double.schema_violations(), Vec::<String>::new());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_five_times_during_a_2000_message_graph_sync_sqlite() {
    kill9_during_graph_sync(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_five_times_during_a_2000_message_graph_sync_postgres() {
    kill9_during_graph_sync(Backend::Postgres).await
}

async fn kill9_between_send_and_record(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-graph-send")
        .tempdir_in("/tmp")
        .unwrap();
    let double = graph(GraphConfig::default()).await;
    let extra = config(&double);
    let (_db, url, key, store) = open(backend, dir.path()).await;
    let (m, caller) = mailbox(&store).await;
    // Graph sends the message and keeps its copy in Sent Items, then the answer never comes.
    double.inject(Fault::HangAfterServing {
        route: Route::SendMail,
    });
    let a = serversync_engine::Admin::new(store.clone(), Default::default())
        .compose_email(
            &caller,
            m.org_id,
            NewEmail {
                from_mailbox: m.id,
                to: vec![Recipient::Address("bob@example.net".into())],
                cc: Vec::new(),
                bcc: Vec::new(),
                subject: "Sent just before the crash".into(),
                text_body: Some("Hello".into()),
                html_body: None,
                attachments: Vec::new(),
                regarding: None,
                send_after: None,
                draft: false,
                in_reply_to: None,
            },
        )
        .await
        .unwrap();
    let worker = Worker::start_with(dir.path(), &url, &key, &extra);
    let deadline = Instant::now() + Duration::from_secs(60);
    while double.sent().is_empty() {
        assert!(
            Instant::now() < deadline,
            "Graph was not asked to send within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sending = store
        .fetch::<EmailActivity>(&a.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(
        sending.status,
        EmailStatus::Sending,
        "the worker waits for the answer"
    );
    worker.kill9();

    let worker = Worker::start_with(dir.path(), &url, &key, &extra);
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let a = store
            .fetch::<EmailActivity>(&a.id.to_string())
            .await
            .unwrap()
            .value;
        if a.status != EmailStatus::Sending && a.status != EmailStatus::PendingSend {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "not resolved within 60 s: {:?}",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    worker.terminate();
    assert_eq!(done.status, EmailStatus::Sent, "{:?}", done.send_error);
    assert!(
        done.send_trace.iter().any(|t| t.contains("Sent")),
        "{:?}",
        done.send_trace
    );
    assert_eq!(double.sent().len(), 1, "never sent twice");
    assert_eq!(double.messages(ALICE, "sentitems").len(), 1);
    assert_eq!(double.schema_violations(), Vec::<String>::new());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_a_graph_send_and_its_record_resolves_to_sent_sqlite() {
    kill9_between_send_and_record(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_between_a_graph_send_and_its_record_resolves_to_sent_postgres() {
    kill9_between_send_and_record(Backend::Postgres).await
}
