//! "Email the owner on failures" (an email server profile's advanced setting), against the real
//! Postfix and Dovecot: when more than half of a profile's mailboxes fail within an hour — in
//! synchronization or in test and enable — the profile owner gets one email, at most once an
//! hour per profile: from the owner's own mailbox (an outgoing email activity sent by the
//! normal sender) when it can send, else through the installation's SMTP relay, else the alert
//! says why no email went out.

mod common;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::alerts_email::SmtpRelay;
use serversync_engine::{Engine, EngineConfig, test_enable};
use serversync_model::alert::Alert;
use serversync_model::crm::{Direction, EmailActivity, EmailStatus};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::User;
use serversync_model::profile::{EmailServerProfile, Endpoint};
use serversync_model::settings::{ActMethod, EmailSettings, OutgoingMethod};
use serversync_model::{MailboxId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::TestEnv;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice@example.test";

struct Setup {
    store: Store,
    config: EngineConfig,
    /// The profile's name: unique per test, so the owner's email is found by it.
    profile_name: String,
    owner_mailbox: Mailbox,
    /// bob's and carol's mailboxes on the same profile, with a wrong password.
    failing: Vec<MailboxId>,
    trust: Arc<TlsTrust>,
    _guard: Box<dyn std::any::Any + Send>,
}

/// A profile owned by alice (the administrator, whose address is alice's) with
/// `email_owner_on_failures` on and three mailboxes: alice's (sends through Postfix
/// submission), and bob's and carol's, whose password is wrong.
async fn setup(backend: Backend) -> Setup {
    let env = TestEnv::from_env();
    let (guard, store) = common::open_store(backend).await;
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&env.ca_cert]).unwrap());
    let config = EngineConfig {
        network: Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(trust.clone())
    };
    let (m, _) = common::sending_mailbox(
        &store,
        ALICE,
        &env.password,
        env.imaps_port(),
        Endpoint {
            location: "localhost".into(),
            port: env.submission_port(),
            tls: TlsMode::StartTls,
        },
    )
    .await;
    let s = store.fetch::<User>(&m.owner_id.to_string()).await.unwrap();
    let mut owner = s.value;
    owner.email = ALICE.into();
    store.update(&owner, Some(s.version)).await.unwrap();
    let profile_name = format!("Failing {}", uuid::Uuid::new_v4().simple());
    let s = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap();
    let mut profile = s.value;
    profile.name = profile_name.clone();
    profile.advanced.email_owner_on_failures = true;
    store.update(&profile, Some(s.version)).await.unwrap();
    let settings = store
        .fetch::<EmailSettings>(&m.org_id.to_string())
        .await
        .unwrap()
        .value;
    let mut failing = Vec::new();
    for (name, email) in [("Bob", "bob@example.test"), ("Carol", "carol@example.test")] {
        let now = chrono::Utc::now();
        let user = User::new(m.org_id, name, email, now);
        store.insert(&user).await.unwrap();
        let mut b = Mailbox::new_with_defaults(
            m.org_id,
            MailboxRegarding::User(user.id),
            user.id,
            name,
            email,
            &settings,
            now,
        );
        b.profile_id = Some(profile.id);
        b.approval = ApprovalStatus::Approved;
        b.outgoing_method = OutgoingMethod::None;
        b.act_method = ActMethod::None;
        b.password = Some(
            store
                .put_secret(Some(m.org_id), &Secret::new("not-the-password"))
                .await
                .unwrap(),
        );
        store.insert(&b).await.unwrap();
        failing.push(b.id);
    }
    Setup {
        store,
        config,
        profile_name,
        owner_mailbox: m,
        failing,
        trust,
        _guard: guard,
    }
}

impl Setup {
    /// The owner's messages in alice's INBOX whose subject names the profile.
    async fn owner_emails(&self) -> Vec<String> {
        let env = TestEnv::from_env();
        let mut s = SyncSession::connect(
            &ServerAddr::new("localhost", env.imaps_port(), TlsMode::Implicit),
            &Login::password(ALICE, Secret::new(env.password.clone())),
            &ConnectOptions::new(self.trust.clone())
                .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
        )
        .await
        .unwrap();
        s.examine("INBOX", false).await.unwrap();
        let uids = s
            .uid_search_header("Subject", &self.profile_name)
            .await
            .unwrap();
        let mut out = Vec::new();
        if !uids.is_empty() {
            let mut f = s.fetch_bodies(&uids, 1 << 20).await.unwrap();
            while let Some(m) = f.next().await.unwrap() {
                out.push(String::from_utf8_lossy(&m.body).into_owned());
            }
        }
        let _ = s.logout().await;
        out
    }

    /// Waits (at most 60 s) for the owner's email in alice's INBOX.
    async fn wait_owner_email(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self.owner_emails().await;
            if !found.is_empty() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no email to the profile owner within 60 s; alerts: {:?}",
                self.alerts().await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The "profile mostly failing" alerts.
    async fn alerts(&self) -> Vec<Alert> {
        self.store
            .list_all::<Alert>(Some(self.owner_mailbox.org_id), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.value)
            .filter(|a| a.code == "profile_mostly_failing")
            .collect()
    }

    /// Outgoing email activities sent from the owner's mailbox.
    async fn owner_activities(&self) -> Vec<EmailActivity> {
        self.store
            .list_all::<EmailActivity>(Some(self.owner_mailbox.org_id), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.value)
            .filter(|a| {
                a.direction == Direction::Outgoing
                    && a.mailbox_ids.first() == Some(&self.owner_mailbox.id)
            })
            .collect()
    }

    /// Test and enable of bob's and carol's mailboxes: both fail.
    async fn test_failing(&self) {
        for id in &self.failing {
            let r = test_enable::test_and_enable(&self.store, &self.config, *id)
                .await
                .unwrap();
            assert!(!r.ok, "{}", r.message);
        }
    }
}

fn run_engine(t: &Setup) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(Engine::new(t.store.clone(), t.config.clone()).run(stop.clone()));
    (stop, task)
}

async fn stop_engine((stop, task): (CancellationToken, tokio::task::JoinHandle<()>)) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
}

/// Two bursts of failures within the hour — bob's and carol's synchronization failing to sign
/// in, then their test and enable — and the owner receives exactly one email, sent from her
/// own mailbox through Postfix as an outgoing email activity.
async fn owner_gets_one_email_for_two_bursts(backend: Backend) {
    let t = setup(backend).await;
    // Burst 1: synchronization. Both mailboxes enabled (as after an earlier successful test)
    // with a password that no longer works.
    for id in &t.failing {
        let s = t.store.fetch::<Mailbox>(&id.to_string()).await.unwrap();
        let mut m = s.value;
        m.incoming.enabled = true;
        t.store.update(&m, Some(s.version)).await.unwrap();
    }
    let engine = run_engine(&t);
    let first = t.wait_owner_email().await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(first[0].contains("2 of 3"), "{}", first[0]);
    let sent = t.owner_activities().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    // Burst 2: test and enable, still within the hour.
    t.test_failing().await;
    assert_eq!(t.owner_activities().await.len(), 1, "no second email");
    // The sender keeps running: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop_engine(engine).await;
    assert_eq!(t.owner_emails().await.len(), 1, "exactly one email");
    let sent = t.owner_activities().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].status,
        EmailStatus::Sent,
        "{:?}",
        sent[0].send_error
    );
    let alerts = t.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0].message.contains(&format!(
            "An email to {ALICE} goes out from their own mailbox"
        )),
        "{}",
        alerts[0].message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_gets_one_email_for_two_bursts_sqlite() {
    owner_gets_one_email_for_two_bursts(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_gets_one_email_for_two_bursts_postgres() {
    owner_gets_one_email_for_two_bursts(Backend::Postgres).await
}

/// The owner's mailbox cannot send (its outgoing method is none): the email goes through the
/// installation's SMTP relay (Postfix's plain SMTP port here), once for two bursts.
async fn relay_when_the_owner_cannot_send(backend: Backend) {
    let mut t = setup(backend).await;
    let env = TestEnv::from_env();
    let s = t
        .store
        .fetch::<Mailbox>(&t.owner_mailbox.id.to_string())
        .await
        .unwrap();
    let mut m = s.value;
    m.outgoing_method = OutgoingMethod::None;
    t.store.update(&m, Some(s.version)).await.unwrap();
    t.config.alerts.smtp_relay = Some(SmtpRelay {
        host: "127.0.0.1".into(),
        port: env.smtp_port(),
        tls: TlsMode::None,
        username: None,
        password: None,
        from: "serversync@example.test".into(),
    });
    t.test_failing().await;
    let first = t.wait_owner_email().await;
    assert_eq!(first.len(), 1);
    assert!(
        first[0].contains("From: serversync@example.test"),
        "{}",
        first[0]
    );
    assert!(first[0].contains("2 of 3"), "{}", first[0]);
    t.test_failing().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(t.owner_emails().await.len(), 1, "exactly one email");
    assert!(
        t.owner_activities().await.is_empty(),
        "not from her mailbox"
    );
    let alerts = t.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(
        alerts[0]
            .message
            .contains("through the installation's SMTP relay"),
        "{}",
        alerts[0].message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_when_the_owner_cannot_send_sqlite() {
    relay_when_the_owner_cannot_send(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_when_the_owner_cannot_send_postgres() {
    relay_when_the_owner_cannot_send(Backend::Postgres).await
}

/// Neither the owner's mailbox (outgoing not enabled) nor a relay: the alert says the email
/// could not be sent and why, and nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_relay_the_alert_says_why_no_email_went_out() {
    let t = setup(Backend::Sqlite).await;
    let s = t
        .store
        .fetch::<Mailbox>(&t.owner_mailbox.id.to_string())
        .await
        .unwrap();
    let mut m = s.value;
    m.outgoing.enabled = false;
    t.store.update(&m, Some(s.version)).await.unwrap();
    t.test_failing().await;
    let alerts = t.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let msg = &alerts[0].message;
    assert!(msg.contains("could not be sent"), "{msg}");
    assert!(msg.contains("is not enabled"), "{msg}");
    assert!(msg.contains("no SMTP relay is configured"), "{msg}");
    assert!(t.owner_activities().await.is_empty());
}
