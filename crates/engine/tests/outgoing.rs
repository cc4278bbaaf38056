//! Outgoing email against the real Postfix (submission, STARTTLS + AUTH) and Dovecot: an
//! email queued from alice's mailbox arrives in bob's INBOX with its tracking token and the
//! Message-ID that encodes the activity, a copy is in alice's Sent folder, and the activity is
//! sent after one attempt. An email left in "sending" by a dead worker is never sent again.

mod common;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::{Engine, EngineConfig, outgoing};
use serversync_model::ActivityId;
use serversync_model::ContactId;
use serversync_model::Secret;
use serversync_model::alert::Alert;
use serversync_model::auth::Caller;
use serversync_model::crm::{
    ActivityParty, Contact, Direction, EmailActivity, EmailStatus, NewEmail, PartyRole, Recipient,
    RecordRef, RouterClaim,
};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{Organization, Privilege, User};
use serversync_model::profile::{EmailServerProfile, Endpoint};
use serversync_model::settings::{EmailSettings, OutgoingMethod};
use serversync_store::{Backend, Col, Filter, Store};
use serversync_testkit::{ScriptedSmtp, SmtpScript, TestEnv, postfix};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

struct Setup {
    store: Store,
    config: EngineConfig,
    mailbox: Mailbox,
    caller: Caller,
    trust: Arc<TlsTrust>,
    _guard: Box<dyn std::any::Any + Send>,
}

/// Alice's mailbox: IMAP on the shared Dovecot (IMAPS), SMTP on Postfix submission
/// (STARTTLS), approved and enabled for outgoing email.
async fn setup(backend: Backend) -> Setup {
    setup_as(backend, ALICE).await
}

/// [`setup`] for another sender.
async fn setup_as(backend: Backend, sender: &str) -> Setup {
    let env = TestEnv::from_env();
    let (guard, store) = common::open_store(backend).await;
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&env.ca_cert]).unwrap());
    let config = EngineConfig {
        network: std::sync::Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..EngineConfig::new(trust.clone())
    };
    let (m, caller) = common::sending_mailbox(
        &store,
        sender,
        &env.password,
        env.imaps_port(),
        Endpoint {
            location: "localhost".into(),
            port: env.submission_port(),
            tls: TlsMode::StartTls,
        },
    )
    .await;
    Setup {
        store,
        config,
        mailbox: m,
        caller,
        trust,
        _guard: guard,
    }
}

impl Setup {
    /// An email from alice's mailbox to `to`, to be sent now.
    fn new_email(&self, to: &str, subject: &str, text: &str) -> NewEmail {
        common::email(self.mailbox.id, to, subject, text)
    }
}

async fn imap(user: &str, trust: &Arc<TlsTrust>) -> SyncSession {
    let env = TestEnv::from_env();
    SyncSession::connect(
        &ServerAddr::new("localhost", env.imaps_port(), TlsMode::Implicit),
        &Login::password(user, Secret::new(env.password.clone())),
        &ConnectOptions::new(trust.clone())
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap()
}

/// The raw messages in `folder` of `user` whose Message-ID is `mid`.
async fn find(user: &str, folder: &str, mid: &str, trust: &Arc<TlsTrust>) -> Vec<String> {
    let mut s = imap(user, trust).await;
    if s.examine(folder, false).await.is_err() {
        let _ = s.logout().await;
        return Vec::new();
    }
    let uids = s.uid_search_header("Message-ID", mid).await.unwrap();
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

async fn sends_through_postfix(backend: Backend) {
    let t = setup(backend).await;
    let subject = format!("Quote {}", uuid::Uuid::new_v4());
    let a = t
        .compose(
            BOB,
            &subject,
            "Hello Bob,\n.a line starting with a dot\nAlice",
        )
        .await;
    assert_eq!(a.status, EmailStatus::PendingSend);
    let token = a.tracking_token.clone().expect("tracking tokens are on");

    let engine = run_engine(&t);
    let sent = t.wait_done(a.id).await;
    stop_engine(engine).await;
    assert_eq!(sent.status, EmailStatus::Sent, "{:?}", sent.send_error);
    assert_eq!(sent.delivery_attempts, 1);
    assert!(sent.sent_at.is_some());
    let mid = sent.message_id.clone().unwrap();
    assert_eq!(mid, format!("act-{}@serversync.example.test", a.id));

    // Delivered to bob through Postfix → LMTP → Dovecot.
    let deadline = Instant::now() + Duration::from_secs(30);
    let inbox = loop {
        let found = find(BOB, "INBOX", &mid, &t.trust).await;
        if !found.is_empty() {
            break found;
        }
        assert!(Instant::now() < deadline, "not in bob's INBOX within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(inbox.len(), 1, "delivered once");
    let raw = &inbox[0];
    assert!(
        raw.contains(&format!("Subject: {subject} {token}")),
        "{raw}"
    );
    assert!(raw.contains(ALICE), "{raw}");
    assert!(raw.contains("\r\n.a line starting with a dot"), "{raw}");
    // A copy in alice's Sent folder.
    assert_eq!(
        find(ALICE, outgoing::SENT_FOLDER, &mid, &t.trust)
            .await
            .len(),
        1
    );
}

/// An activity left in "sending" by a worker whose lease ran out is not sent again: when
/// nothing in the Sent folder carries its Message-ID it becomes "outcome unknown" with the
/// reason; when its copy is there, it is "sent".
async fn never_sends_twice_after_a_crash(backend: Backend) {
    let t = setup(backend).await;
    let subject = format!("Crash {}", uuid::Uuid::new_v4());
    let a = t.compose(BOB, &subject, "left mid-send").await;
    // A second one that did go out: its copy is in the Sent folder.
    let b = t
        .compose(BOB, &format!("{subject} (sent)"), "went out")
        .await;
    let b_mid = b.message_id.clone().unwrap();
    let mut s = imap(ALICE, &t.trust).await;
    s.create_folder_if_missing(outgoing::SENT_FOLDER)
        .await
        .unwrap();
    let copy = format!(
        "Message-ID: <{b_mid}>\r\nFrom: {ALICE}\r\nTo: {BOB}\r\nSubject: {subject} (sent)\r\n\r\nwent out\r\n"
    );
    s.append(outgoing::SENT_FOLDER, &["\\Seen"], None, copy.as_bytes())
        .await
        .unwrap();
    let _ = s.logout().await;
    let s = t
        .store
        .fetch::<EmailActivity>(&b.id.to_string())
        .await
        .unwrap();
    let mut v = s.value;
    v.status = EmailStatus::Sending;
    t.store.update(&v, Some(s.version)).await.unwrap();
    // A worker took the lease, marked the email sending, and died.
    let dead = t
        .store
        .acquire_lease(
            &format!("outgoing:{}", t.mailbox.id),
            "dead-worker",
            Duration::from_millis(1),
        )
        .await
        .unwrap()
        .unwrap();
    let s = t
        .store
        .fetch::<EmailActivity>(&a.id.to_string())
        .await
        .unwrap();
    let mut v = s.value;
    v.status = EmailStatus::Sending;
    let mid = outgoing::message_id_for(&v.id, ALICE);
    v.message_id = Some(mid.clone());
    t.store.update(&v, Some(s.version)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // A live worker takes over.
    let lease = t
        .store
        .acquire_lease(
            &format!("outgoing:{}", t.mailbox.id),
            "live-worker",
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .expect("the dead worker's lease ran out");
    assert!(lease.epoch > dead.epoch);
    outgoing::run_once(&t.store, &t.config, t.mailbox.id, &lease)
        .await
        .unwrap();
    // A second pass changes nothing.
    outgoing::run_once(&t.store, &t.config, t.mailbox.id, &lease)
        .await
        .unwrap();
    let after = t
        .store
        .fetch::<EmailActivity>(&a.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(after.status, EmailStatus::OutcomeUnknown);
    assert_eq!(after.delivery_attempts, 0, "no new attempt");
    let why = after.send_error.unwrap();
    assert!(why.contains("not sent again"), "{why}");
    // The one whose copy is in the Sent folder was sent.
    let found = t
        .store
        .fetch::<EmailActivity>(&b.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(found.status, EmailStatus::Sent, "{:?}", found.send_error);
    assert_eq!(found.delivery_attempts, 0, "not sent again");
    // Nothing reached bob.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(find(BOB, "INBOX", &mid, &t.trust).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_postfix_sqlite() {
    sends_through_postfix(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_postfix_postgres() {
    sends_through_postfix(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_sends_twice_after_a_crash_sqlite() {
    never_sends_twice_after_a_crash(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_sends_twice_after_a_crash_postgres() {
    never_sends_twice_after_a_crash(Backend::Postgres).await
}

/// A worker marks a whole block `sending` in one commit, so one killed midway leaves several
/// there: of a block of BLOCK emails, those whose copy is in the Sent folder (handed over and
/// saved) become sent, the others outcome unknown; none is sent again or counted as a new
/// attempt, and the next email in pending send then goes out as usual.
async fn a_block_left_in_sending_is_never_sent_again(backend: Backend) {
    let t = setup(backend).await;
    let subject = format!("Block {}", uuid::Uuid::new_v4());
    let mut block = Vec::new();
    for i in 0..outgoing::BLOCK {
        block.push(
            t.compose(BOB, &format!("{subject} #{i}"), "in the block")
                .await,
        );
    }
    let after = t.compose(BOB, &format!("{subject} after"), "next").await;
    // The dead worker's block, committed as the sender does: one commit for all of them.
    let stored: Vec<_> = {
        let mut v = Vec::new();
        for a in &block {
            v.push(
                t.store
                    .fetch::<EmailActivity>(&a.id.to_string())
                    .await
                    .unwrap(),
            );
        }
        v
    };
    let marked: Vec<EmailActivity> = stored
        .iter()
        .map(|s| {
            let mut a = s.value.clone();
            a.status = EmailStatus::Sending;
            a.message_id = Some(outgoing::message_id_for(&a.id, ALICE));
            a
        })
        .collect();
    let writes: Vec<_> = marked.iter().zip(&stored).collect();
    assert!(
        t.store
            .update_each(&writes)
            .await
            .unwrap()
            .iter()
            .all(Option::is_some)
    );
    // The first three were handed over and their copies saved before the worker died.
    let mut s = imap(ALICE, &t.trust).await;
    s.create_folder_if_missing(outgoing::SENT_FOLDER)
        .await
        .unwrap();
    for a in &marked[..3] {
        let copy = format!(
            "Message-ID: <{}>\r\nFrom: {ALICE}\r\nTo: {BOB}\r\nSubject: {}\r\n\r\nin the block\r\n",
            a.message_id.as_ref().unwrap(),
            a.subject
        );
        s.append(outgoing::SENT_FOLDER, &["\\Seen"], None, copy.as_bytes())
            .await
            .unwrap();
    }
    let _ = s.logout().await;

    t.send_round().await;
    for (i, a) in marked.iter().enumerate() {
        let now = t.activity(a.id).await;
        assert_eq!(now.delivery_attempts, 0, "not sent again");
        if i < 3 {
            assert_eq!(now.status, EmailStatus::Sent, "{:?}", now.send_error);
        } else {
            assert_eq!(now.status, EmailStatus::OutcomeUnknown);
            let why = now.send_error.unwrap();
            assert!(why.contains("not sent again"), "{why}");
        }
    }
    let next = t.activity(after.id).await;
    assert_eq!(next.status, EmailStatus::Sent, "{:?}", next.send_error);
    assert_eq!(next.delivery_attempts, 1);
    // Nothing of the block reached bob; the next one did.
    let next_mid = next.message_id.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while find(BOB, "INBOX", &next_mid, &t.trust).await.is_empty() {
        assert!(Instant::now() < deadline, "not in bob's INBOX within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for a in &marked {
        assert!(
            find(BOB, "INBOX", a.message_id.as_ref().unwrap(), &t.trust)
                .await
                .is_empty()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_left_in_sending_is_never_sent_again_sqlite() {
    a_block_left_in_sending_is_never_sent_again(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_left_in_sending_is_never_sent_again_postgres() {
    a_block_left_in_sending_is_never_sent_again(Backend::Postgres).await
}

/// More than a block of emails in one round: each is delivered to bob once, and each has
/// exactly one copy in alice's Sent folder, marked read (the copies go several to a command,
/// MULTIAPPEND, on the kept IMAP connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_email_of_a_long_round_has_one_read_copy_in_sent() {
    let t = setup(Backend::Sqlite).await;
    t.sends_per_minute(1000).await;
    let subject = format!("Round {}", uuid::Uuid::new_v4());
    let n = outgoing::BLOCK * 2 + 3;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(t.compose(BOB, &format!("{subject} #{i}"), "hello").await.id);
    }
    t.send_round().await;
    let mut s = imap(ALICE, &t.trust).await;
    s.examine(outgoing::SENT_FOLDER, false).await.unwrap();
    for id in &ids {
        let a = t.activity(*id).await;
        assert_eq!(a.status, EmailStatus::Sent, "{:?}", a.send_error);
        assert_eq!(a.delivery_attempts, 1);
        let mid = a.message_id.unwrap();
        let uids = s.uid_search_header("Message-ID", &mid).await.unwrap();
        assert_eq!(uids.len(), 1, "one copy of {mid}");
        let listed = s.uid_list(uids[0]).await.unwrap();
        assert!(listed[0].has_flag("\\Seen"), "{listed:?}");
    }
    let _ = s.logout().await;
    let last = t.activity(ids[n - 1]).await.message_id.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while find(BOB, "INBOX", &last, &t.trust).await.is_empty() {
        assert!(Instant::now() < deadline, "not in bob's INBOX within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        find(BOB, "INBOX", &last, &t.trust).await.len(),
        1,
        "delivered once"
    );
}

/// "Process email only for approved users" decides whether approval matters for sending
/// too. A mailbox that was never approved: while the setting is on, its email waits and the
/// reason says approval is needed; once the setting is off, nothing waits on approval (the
/// reason says nothing of it) and the email reaches bob through Postfix.
async fn sends_unapproved_mailbox_when_approval_is_off(backend: Backend) {
    let t = setup(backend).await;
    let s = t
        .store
        .fetch::<Mailbox>(&t.mailbox.id.to_string())
        .await
        .unwrap();
    let mut m = s.value;
    m.approval = ApprovalStatus::Empty;
    t.store.update(&m, Some(s.version)).await.unwrap();
    let subject = format!("Unapproved {}", uuid::Uuid::new_v4());
    let a = t.compose(BOB, &subject, "sent without approval").await;
    let why = outgoing::waiting_reason(&t.store, &a)
        .await
        .unwrap()
        .expect("waits for approval while approval is required");
    assert!(why.contains("not approved"), "{why}");

    let s = t
        .store
        .fetch::<EmailSettings>(&t.mailbox.org_id.to_string())
        .await
        .unwrap();
    let mut settings = s.value;
    settings.require_approved_users = false;
    t.store.update(&settings, Some(s.version)).await.unwrap();
    let why = outgoing::waiting_reason(&t.store, &a).await.unwrap();
    assert!(
        why.as_deref().is_none_or(|w| !w.contains("approv")),
        "{why:?}"
    );

    let engine = run_engine(&t);
    let sent = t.wait_done(a.id).await;
    stop_engine(engine).await;
    assert_eq!(sent.status, EmailStatus::Sent, "{:?}", sent.send_error);
    let mid = sent.message_id.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = find(BOB, "INBOX", &mid, &t.trust).await;
        if !found.is_empty() {
            assert_eq!(found.len(), 1, "delivered once");
            break;
        }
        assert!(Instant::now() < deadline, "not in bob's INBOX within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_unapproved_mailbox_when_approval_is_off_sqlite() {
    sends_unapproved_mailbox_when_approval_is_off(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_unapproved_mailbox_when_approval_is_off_postgres() {
    sends_unapproved_mailbox_when_approval_is_off(Backend::Postgres).await
}

/// The `Subject` header of a raw message, unfolded.
fn subject_of(raw: &str) -> String {
    let start = raw.find("\r\nSubject: ").expect("a Subject header") + "\r\nSubject: ".len();
    let mut out = String::new();
    let mut rest = &raw[start..];
    loop {
        let end = rest.find("\r\n").unwrap();
        out.push_str(&rest[..end]);
        rest = &rest[end + 2..];
        if !rest.starts_with([' ', '\t']) {
            return out;
        }
    }
}

/// The organization's "maximum subject length on the mail server": a longer subject is cut
/// when it is sent, keeping the tracking token whole (replies are correlated by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_are_cut_to_the_servers_maximum_length() {
    let t = setup(Backend::Sqlite).await;
    let s = t
        .store
        .fetch::<EmailSettings>(&t.mailbox.org_id.to_string())
        .await
        .unwrap();
    let mut settings = s.value;
    settings.max_subject_length = 60;
    t.store.update(&settings, Some(s.version)).await.unwrap();
    let start = format!("Long {}", uuid::Uuid::new_v4().simple());
    let subject = format!("{start} {}", "word ".repeat(40));
    let a = t.compose(BOB, &subject, "a long subject").await;
    let token = a.tracking_token.clone().expect("tracking tokens are on");

    let engine = run_engine(&t);
    let sent = t.wait_done(a.id).await;
    stop_engine(engine).await;
    assert_eq!(sent.status, EmailStatus::Sent, "{:?}", sent.send_error);
    assert_eq!(sent.subject, subject, "the activity keeps its subject");
    let mid = sent.message_id.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let raw = loop {
        let found = find(BOB, "INBOX", &mid, &t.trust).await;
        if let Some(raw) = found.into_iter().next() {
            break raw;
        }
        assert!(Instant::now() < deadline, "not in bob's INBOX within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let got = subject_of(&raw);
    assert!(
        got.chars().count() <= 60,
        "{} characters: {got}",
        got.chars().count()
    );
    assert!(got.starts_with(&start), "{got}");
    assert!(got.ends_with(token.as_str()), "{got}");
}

/// Rejected credentials are the mailbox's problem, not the email's: the email keeps waiting in
/// pending send (no attempt counted), and the mailbox's outgoing direction is disabled with an
/// alert that names the step, as the retry policy says for authentication failures.
async fn rejected_credentials_disable_the_mailbox_not_the_email(backend: Backend) {
    let t = setup(backend).await;
    let org = t.mailbox.org_id;
    let mut m = t
        .store
        .fetch::<Mailbox>(&t.mailbox.id.to_string())
        .await
        .unwrap()
        .value;
    m.password = Some(
        t.store
            .put_secret(Some(org), &Secret::new("not-the-password"))
            .await
            .unwrap(),
    );
    t.store.update(&m, None).await.unwrap();
    let a = t
        .compose(
            BOB,
            &format!("Never sent {}", uuid::Uuid::new_v4()),
            "Hello",
        )
        .await;
    let engine = run_engine(&t);
    let disabled = t.wait_outgoing_disabled().await;
    stop_engine(engine).await;
    let err = disabled
        .telemetry
        .last_error
        .expect("the failure is recorded");
    assert_eq!(
        err.step,
        Some(serversync_model::FailureStep::Authentication),
        "{err:?}"
    );
    let alerts: Vec<Alert> = t
        .store
        .list_all::<Alert>(Some(org), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.value)
        .collect();
    assert!(
        alerts
            .iter()
            .any(|al| al.mailbox_id == Some(m.id) && al.message.contains("Outgoing email")),
        "{alerts:?}"
    );
    let after = t
        .store
        .fetch::<EmailActivity>(&a.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(after.status, EmailStatus::PendingSend, "the email waits");
    assert_eq!(after.delivery_attempts, 0);
    // Which says why it waits: the mailbox is no longer enabled, and the server's refusal.
    let why = outgoing::waiting_reason(&t.store, &after)
        .await
        .unwrap()
        .expect("a reason");
    assert!(why.contains("not tested and enabled"), "{why}");
    assert!(why.contains(&err.message), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_disable_the_mailbox_not_the_email_sqlite() {
    rejected_credentials_disable_the_mailbox_not_the_email(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_disable_the_mailbox_not_the_email_postgres() {
    rejected_credentials_disable_the_mailbox_not_the_email(Backend::Postgres).await
}

// ---- Against a scriptable SMTP peer (aiosmtpd): what Postfix cannot be made to do. ----

impl Setup {
    /// Points alice's profile's outgoing server at the scripted peer (127.0.0.1, no TLS).
    async fn send_through(&self, peer: &ScriptedSmtp) {
        let p = self
            .store
            .fetch::<EmailServerProfile>(&self.mailbox.profile_id.unwrap().to_string())
            .await
            .unwrap();
        let mut profile = p.value;
        profile.outgoing = Some(Endpoint {
            location: "127.0.0.1".into(),
            port: peer.port(),
            tls: TlsMode::None,
        });
        self.store.update(&profile, Some(p.version)).await.unwrap();
    }

    /// One round of the mailbox's sender, under its lease.
    async fn send_round(&self) {
        let lease = self
            .store
            .acquire_lease(
                &format!("outgoing:{}", self.mailbox.id),
                "w",
                Duration::from_secs(30),
            )
            .await
            .unwrap()
            .unwrap();
        outgoing::run_once(&self.store, &self.config, self.mailbox.id, &lease)
            .await
            .unwrap();
    }

    /// Sets the profile's `max_sends_per_minute`.
    async fn sends_per_minute(&self, n: u32) {
        let p = self
            .store
            .fetch::<EmailServerProfile>(&self.mailbox.profile_id.unwrap().to_string())
            .await
            .unwrap();
        let mut profile = p.value;
        profile.advanced.max_sends_per_minute = n;
        self.store.update(&profile, Some(p.version)).await.unwrap();
    }

    /// Sets the organization's retry interval (the first retry waits this long, then doubles).
    async fn retry_every(&self, seconds: u32) {
        let s = self
            .store
            .fetch::<EmailSettings>(&self.mailbox.org_id.to_string())
            .await
            .unwrap();
        let mut settings = s.value;
        settings.retry.interval_seconds = seconds;
        self.store.update(&settings, Some(s.version)).await.unwrap();
    }

    async fn activity(&self, id: ActivityId) -> EmailActivity {
        self.store
            .fetch::<EmailActivity>(&id.to_string())
            .await
            .unwrap()
            .value
    }

    /// Composes an email from alice's mailbox to `to`, to be sent now.
    async fn compose(&self, to: &str, subject: &str, text: &str) -> EmailActivity {
        Engine::new(self.store.clone(), self.config.clone())
            .admin()
            .compose_email(
                &self.caller,
                self.mailbox.org_id,
                self.new_email(to, subject, text),
            )
            .await
            .unwrap()
    }

    /// Waits (at most 60 s) until the activity is neither pending send nor sending.
    async fn wait_done(&self, id: ActivityId) -> EmailActivity {
        self.wait_for(id, "done", |a| {
            !matches!(a.status, EmailStatus::PendingSend | EmailStatus::Sending)
        })
        .await
    }

    /// Waits (at most 60 s) until the mailbox's outgoing direction is disabled.
    async fn wait_outgoing_disabled(&self) -> Mailbox {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = self
                .store
                .fetch::<Mailbox>(&self.mailbox.id.to_string())
                .await
                .unwrap()
                .value;
            if !m.outgoing.enabled {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "outgoing not disabled within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (at most 60 s) until the activity satisfies `done`.
    async fn wait_for(
        &self,
        id: ActivityId,
        what: &str,
        done: impl Fn(&EmailActivity) -> bool,
    ) -> EmailActivity {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = self.activity(id).await;
            if done(&a) {
                return a;
            }
            assert!(Instant::now() < deadline, "not {what} within 60 s: {a:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A scripted peer that accepts alice's credentials.
fn peer(script: SmtpScript) -> (tempfile::TempDir, ScriptedSmtp) {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let script = SmtpScript {
        username: ALICE.into(),
        password: env.password.clone(),
        ..script
    };
    let p = ScriptedSmtp::start(dir.path(), &script).unwrap();
    (dir, p)
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

/// 451 twice, then 250: sent after three attempts, retried with a growing delay, and while it
/// waits the API's reason names the next try and the server's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_refusals_are_retried_until_sent() {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript {
        data_replies: vec![
            (451, "4.3.0 Try again later".into()),
            (451, "4.3.0 Try again later".into()),
        ],
        ..Default::default()
    });
    t.send_through(&smtp).await;
    t.retry_every(1).await;
    let a = t.compose(BOB, "Retry me", "third time lucky").await;
    let engine = run_engine(&t);
    let waiting = t
        .wait_for(a.id, "retried once", |a| a.delivery_attempts >= 1)
        .await;
    if waiting.status == EmailStatus::PendingSend {
        let why = outgoing::waiting_reason(&t.store, &waiting)
            .await
            .unwrap()
            .expect("a reason while it waits");
        assert!(why.contains("4.3.0 Try again later"), "{why}");
    }
    let sent = t.wait_done(a.id).await;
    stop_engine(engine).await;
    assert_eq!(sent.status, EmailStatus::Sent, "{:?}", sent.send_error);
    assert_eq!(sent.delivery_attempts, 3);
    let got: Vec<Option<u16>> = smtp.received().unwrap().iter().map(|r| r.reply).collect();
    assert_eq!(got, vec![Some(451), Some(451), Some(250)]);
    let last = &smtp.received().unwrap()[2];
    assert!(
        last.data
            .contains(&format!("act-{}@serversync.example.test", a.id))
    );
    assert_eq!(last.rcpt_tos, vec![BOB.to_owned()]);
}

/// 550 at DATA: failed at once with the server's reply and enhanced status code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_refusal_fails_the_email_with_the_reason() {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript {
        data_replies: vec![(550, "5.7.1 Message rejected as spam".into())],
        ..Default::default()
    });
    t.send_through(&smtp).await;
    let a = t.compose(BOB, "Spammy", "buy now").await;
    let engine = run_engine(&t);
    let done = t.wait_done(a.id).await;
    stop_engine(engine).await;
    assert_eq!(done.status, EmailStatus::Failed);
    assert_eq!(done.delivery_attempts, 1);
    let why = done.send_error.unwrap();
    assert!(
        why.contains("550") && why.contains("5.7.1 Message rejected as spam"),
        "{why}"
    );
    assert_eq!(smtp.received().unwrap().len(), 1, "not tried again");
}

/// The peer refuses alice's credentials: the mailbox's policy disables sending with alerts and
/// the email waits (no attempt counted), saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_auth_at_the_peer_applies_the_mailbox_policy() {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript {
        reject_auth: true,
        ..Default::default()
    });
    t.send_through(&smtp).await;
    let a = t.compose(BOB, "Locked out", "hi").await;
    let engine = run_engine(&t);
    let m = t.wait_outgoing_disabled().await;
    stop_engine(engine).await;
    let err = m.telemetry.last_error.expect("recorded");
    assert_eq!(
        err.step,
        Some(serversync_model::FailureStep::Authentication),
        "{err:?}"
    );
    assert!(err.message.contains("535"), "{err:?}");
    let alerts = t
        .store
        .list_all::<Alert>(Some(t.mailbox.org_id), &[])
        .await
        .unwrap();
    assert!(
        alerts
            .iter()
            .any(|s| s.value.mailbox_id == Some(m.id) && s.value.recipients.contains(&m.owner_id)),
        "an alert to the mailbox owner"
    );
    let after = t.activity(a.id).await;
    assert_eq!(after.status, EmailStatus::PendingSend);
    assert_eq!(after.delivery_attempts, 0);
    let why = outgoing::waiting_reason(&t.store, &after)
        .await
        .unwrap()
        .unwrap();
    assert!(
        why.contains("not tested and enabled") && why.contains("535"),
        "{why}"
    );
    assert!(smtp.received().unwrap().is_empty());
    assert!(smtp.auth_attempts().unwrap().1 >= 1);
}

/// The connection drops right after the message was handed over: the outcome is unknown and
/// the email is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_after_data_is_outcome_unknown() {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript {
        drop_after_data: 1,
        ..Default::default()
    });
    t.send_through(&smtp).await;
    let a = t.compose(BOB, "Lost", "in transit").await;
    let engine = run_engine(&t);
    let done = t.wait_done(a.id).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_engine(engine).await;
    assert_eq!(
        done.status,
        EmailStatus::OutcomeUnknown,
        "{:?}",
        done.send_error
    );
    assert!(done.send_error.unwrap().contains("not sent again"));
    assert_eq!(
        smtp.received().unwrap().len(),
        1,
        "handed over once, never again"
    );
}

/// Five emails, a limit of three a minute: one signed-in connection carries the first three,
/// the other two wait and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_many_emails_within_the_send_rate() {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript::default());
    t.send_through(&smtp).await;
    t.sends_per_minute(3).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(t.compose(BOB, &format!("Batch {i}"), "hello").await.id);
    }
    t.send_round().await;
    let mut sent = 0;
    for id in &ids {
        let a = t.activity(*id).await;
        match a.status {
            EmailStatus::Sent => sent += 1,
            EmailStatus::PendingSend => {
                let why = outgoing::waiting_reason(&t.store, &a)
                    .await
                    .unwrap()
                    .unwrap();
                // The minute may have turned since: then the email is simply due.
                assert!(why.contains("max_sends_per_minute"), "{why}");
            }
            other => panic!("unexpected status {other:?}"),
        }
    }
    assert_eq!(sent, 3, "three a minute");
    assert_eq!(smtp.received().unwrap().len(), 3);
    assert_eq!(
        smtp.auth_attempts().unwrap(),
        (1, 0),
        "one connection for the three"
    );
}

/// One of two recipients is refused (550 5.1.1): the email fails naming that address and the
/// server's words, nothing is delivered (not even to the accepted recipient), and the next
/// email goes out. With PIPELINING the envelope and DATA go in one write, the server answers
/// 354 to the half-refused envelope, and the connection is closed instead of sending the message.
async fn a_refused_recipient_fails_the_email_and_delivers_nothing(pipelining: bool) {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript {
        rcpt_replies: vec![(
            "nobody@example.test".into(),
            550,
            "5.1.1 <nobody@example.test>: Recipient address rejected".into(),
        )],
        pipelining,
        ..Default::default()
    });
    t.send_through(&smtp).await;
    let mut email = t.new_email(BOB, "Half refused", "to bob and nobody");
    email.cc = vec![Recipient::Address("nobody@example.test".into())];
    let refused = Engine::new(t.store.clone(), t.config.clone())
        .admin()
        .compose_email(&t.caller, t.mailbox.org_id, email)
        .await
        .unwrap();
    let next = t.compose(BOB, "Next one", "after the refusal").await;
    let engine = run_engine(&t);
    let refused = t.wait_done(refused.id).await;
    let next = t.wait_done(next.id).await;
    stop_engine(engine).await;
    assert_eq!(refused.status, EmailStatus::Failed);
    let why = refused.send_error.unwrap();
    assert!(
        why.contains("nobody@example.test") && why.contains("5.1.1"),
        "{why}"
    );
    assert_eq!(next.status, EmailStatus::Sent);
    let received = smtp.received().unwrap();
    assert_eq!(received.len(), 1, "only the next email: {received:?}");
    assert!(
        received[0].data.contains("Subject: Next one"),
        "{received:?}"
    );
    assert_eq!(received[0].rcpt_tos, [BOB]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_recipient_fails_the_email_and_delivers_nothing_one_command_at_a_time() {
    a_refused_recipient_fails_the_email_and_delivers_nothing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_recipient_fails_the_email_and_delivers_nothing_pipelined() {
    a_refused_recipient_fails_the_email_and_delivers_nothing(true).await;
}

/// More email than one page (96) of the queue goes out in one round, on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_goes_out_in_one_round() {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript {
        pipelining: true,
        ..Default::default()
    });
    t.send_through(&smtp).await;
    t.sends_per_minute(1000).await;
    let mut ids = Vec::new();
    for i in 0..130 {
        ids.push(t.compose(BOB, &format!("Queue {i}"), "hello").await.id);
    }
    t.send_round().await;
    for id in &ids {
        assert_eq!(t.activity(*id).await.status, EmailStatus::Sent);
    }
    assert_eq!(smtp.received().unwrap().len(), 130);
    assert_eq!(smtp.auth_attempts().unwrap(), (1, 0), "one connection");
}

/// The connection drops after the first email of a long round was handed over, while the
/// next block was already marked `sending`: the first email is outcome unknown, the rest of
/// its block goes back to pending send untried, and the marked block is carried to the next
/// connection — every other email is sent once, none is left in `sending`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_block_outlives_a_lost_connection() {
    let t = setup(Backend::Sqlite).await;
    let (_d, smtp) = peer(SmtpScript {
        drop_after_data: 1,
        pipelining: true,
        ..Default::default()
    });
    t.send_through(&smtp).await;
    t.sends_per_minute(1000).await;
    let n = outgoing::BLOCK * 2 + 8;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(t.compose(BOB, &format!("Carried {i}"), "hello").await.id);
    }
    t.send_round().await;
    let mut unknown = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let a = t.activity(*id).await;
        match a.status {
            EmailStatus::Sent => assert_eq!(a.delivery_attempts, 1, "#{i}"),
            EmailStatus::OutcomeUnknown => unknown.push(i),
            other => panic!("#{i} is {other:?}: {:?}", a.send_error),
        }
    }
    assert_eq!(unknown, [0], "only the email whose connection broke");
    let received = smtp.received().unwrap();
    assert_eq!(received.len(), n, "each handed over once");
    for (i, id) in ids.iter().enumerate() {
        let mid = format!("<{}>", outgoing::message_id_for(id, ALICE));
        assert_eq!(
            received.iter().filter(|r| r.data.contains(&mid)).count(),
            1,
            "#{i}"
        );
    }
    assert_eq!(smtp.auth_attempts().unwrap(), (2, 0), "a second connection");
}

// ---- What comes back: the recipient's reply, and a bounce. ----

const DANA: &str = "dana@example.test";

/// Bob answers an email dana sent regarding his contact record: the reply is tracked in the
/// same conversation and regarding the same record. An email to the test Postfix's bounce
/// domain bounces: Postfix's DSN arrives in dana's INBOX and marks that email failed with
/// the diagnostic, with an alert to its owner.
async fn replies_and_bounces_come_back(backend: Backend) {
    let t = setup_as(backend, DANA).await;
    let org = t.mailbox.org_id;
    let now = chrono::Utc::now();
    let bob = Contact {
        id: ContactId::new(),
        org_id: org,
        full_name: "Bob".into(),
        emails: vec![BOB.into()],
        account_id: None,
        company: None,
        job_title: None,
        phones: Vec::new(),
        owner_id: t.caller.user.id,
        created_at: now,
    };
    t.store.insert(&bob).await.unwrap();
    // Dana's INBOX is read from now on (older mail of earlier runs is skipped).
    let s = t
        .store
        .fetch::<Mailbox>(&t.mailbox.id.to_string())
        .await
        .unwrap();
    let mut m = s.value;
    m.incoming.enabled = true;
    m.process_email_from = Some(now - chrono::Duration::seconds(5));
    t.store.update(&m, Some(s.version)).await.unwrap();

    let admin = Engine::new(t.store.clone(), t.config.clone()).admin();
    let tag = uuid::Uuid::new_v4();
    let quote = admin
        .compose_email(
            &t.caller,
            org,
            NewEmail {
                to: vec![Recipient::Record(RecordRef::Contact(bob.id))],
                regarding: Some(RecordRef::Contact(bob.id)),
                ..t.new_email(BOB, &format!("Quote {tag}"), "Here is the quote.")
            },
        )
        .await
        .unwrap();
    assert_eq!(quote.parties[1].address, BOB, "the contact's address");
    let lost = admin
        .compose_email(
            &t.caller,
            org,
            t.new_email(
                &format!("nobody@{}", postfix::BOUNCE_DOMAIN),
                &format!("Lost {tag}"),
                "Nobody reads this.",
            ),
        )
        .await
        .unwrap();
    let engine = run_engine(&t);
    let quote = t
        .wait_for(quote.id, "sent", |a| a.status == EmailStatus::Sent)
        .await;

    // Bob answers from his own mail program, through Postfix.
    let env = TestEnv::from_env();
    let mid = quote.message_id.clone().unwrap();
    let reply = format!(
        "From: Bob <{BOB}>\r\nTo: {DANA}\r\nSubject: Re: {subject}\r\nMessage-ID: <reply-{tag}@example.test>\r\n\
         In-Reply-To: <{mid}>\r\nReferences: <{mid}>\r\nDate: {date}\r\n\r\nThanks, agreed.\r\n",
        subject = quote.subject,
        date = chrono::Utc::now().to_rfc2822(),
    );
    let mut c = serversync_connectors::smtp::connect(
        &ServerAddr::new("localhost", env.submission_port(), TlsMode::StartTls),
        &ConnectOptions::new(t.trust.clone())
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    c.login(&Login::password(BOB, Secret::new(env.password.clone())))
        .await
        .unwrap();
    c.mail_from(BOB).await.unwrap();
    assert!(c.rcpt_to(DANA).await.unwrap().is_positive());
    assert_eq!(c.data(reply.as_bytes()).await.unwrap().code, 250);
    let _ = c.quit().await;

    let deadline = Instant::now() + Duration::from_secs(90);
    let answer = loop {
        let all = t
            .store
            .list_all::<EmailActivity>(Some(org), &[])
            .await
            .unwrap();
        if let Some(a) = all
            .into_iter()
            .map(|s| s.value)
            .find(|a| a.in_reply_to.as_deref() == Some(mid.as_str()))
        {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "the reply was not tracked within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(answer.direction, Direction::Incoming);
    assert_eq!(answer.regarding, Some(RecordRef::Contact(bob.id)));
    assert_eq!(answer.conversation_id, quote.conversation_id);

    let bounced = t
        .wait_for(lost.id, "failed by the bounce", |a| {
            a.status == EmailStatus::Failed
        })
        .await;
    stop_engine(engine).await;
    let why = bounced.send_error.unwrap();
    assert!(
        why.starts_with("bounced: nobody@bounce.test: 5.1.1"),
        "{why}"
    );
    // Dovecot's words, relayed by Postfix.
    assert!(why.contains("User doesn't exist"), "{why}");
    let alerts = t.store.list_all::<Alert>(Some(org), &[]).await.unwrap();
    assert!(
        alerts.iter().any(|s| s.value.code == "email_bounced"
            && s.value.recipients.contains(&t.caller.user.id)
            && s.value.message.contains(&format!("Lost {tag}"))),
        "an alert to the owner"
    );
    // The bounce itself is not an activity.
    let all = t
        .store
        .list_all::<EmailActivity>(Some(org), &[])
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "the two sent and bob's reply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_bounces_come_back_sqlite() {
    replies_and_bounces_come_back(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_bounces_come_back_postgres() {
    replies_and_bounces_come_back(Backend::Postgres).await
}

// ---- Fair scheduling (security issue #14, item 1): what one user holds back delays no one else. ----

/// A second organization ("flood") with a basic user and their approved mailbox `email`,
/// sending by `method`, and a caller acting as that user (read and write records only).
async fn flood_mailbox(store: &Store, email: &str, method: OutgoingMethod) -> (Mailbox, Caller) {
    let now = chrono::Utc::now();
    let org = match store
        .list_all::<Organization>(None, &[("name", Col::text("flood"))])
        .await
        .unwrap()
        .pop()
    {
        Some(o) => o.value,
        None => {
            let o = Organization::new("flood", "Flood", now);
            store.insert(&o).await.unwrap();
            store.insert(&EmailSettings::new(o.id)).await.unwrap();
            o
        }
    };
    let user = User::new(org.id, "Mallory", email, now);
    store.insert(&user).await.unwrap();
    let settings = EmailSettings::new(org.id);
    let mut m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(user.id),
        user.id,
        "Mallory",
        email,
        &settings,
        now,
    );
    m.approval = ApprovalStatus::Approved;
    m.outgoing_method = method;
    m.outgoing.enabled = true;
    store.insert(&m).await.unwrap();
    let caller = Caller {
        user,
        privileges: [Privilege::ReadRecords, Privilege::WriteRecords]
            .into_iter()
            .collect(),
    };
    (m, caller)
}

/// An outgoing email of `m` in `status`, written straight to the store.
async fn stored_email(
    store: &Store,
    m: &Mailbox,
    status: EmailStatus,
    send_after: Option<chrono::DateTime<chrono::Utc>>,
    claim_until: Option<chrono::DateTime<chrono::Utc>>,
) -> EmailActivity {
    let now = chrono::Utc::now();
    let a = EmailActivity {
        id: ActivityId::new(),
        org_id: m.org_id,
        subject: "waiting".into(),
        text_body: Some("hello".into()),
        html_body: None,
        direction: Direction::Outgoing,
        status,
        owner_id: m.owner_id,
        parties: vec![
            ActivityParty {
                role: PartyRole::From,
                address: m.email.clone(),
                display_name: None,
                resolved: None,
            },
            ActivityParty {
                role: PartyRole::To,
                address: BOB.into(),
                display_name: None,
                resolved: None,
            },
        ],
        attachments: Vec::new(),
        regarding: None,
        tracking_token: None,
        message_id: None,
        in_reply_to: None,
        references: Vec::new(),
        content_key: None,
        conversation_id: None,
        mailbox_ids: vec![m.id],
        item_ids: Vec::new(),
        sent_at: None,
        received_at: None,
        send_after,
        delivery_attempts: 0,
        send_error: None,
        router_claim: claim_until.map(|until| RouterClaim {
            id: uuid::Uuid::new_v4().to_string(),
            until,
        }),
        send_trace: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    store.insert(&a).await.unwrap();
    a
}

/// A basic user of another organization composes 1,000 emails to be sent in 300 days
/// (before alice's email, so they are the oldest waiting): alice's email still goes out
/// through Postfix at once, and the 1,000 keep waiting.
async fn scheduled_mail_of_another_org_delays_nothing(backend: Backend) {
    let t = setup(backend).await;
    let (flood, mallory) = flood_mailbox(
        &t.store,
        "mallory@flood.test",
        OutgoingMethod::ServerSideSync,
    )
    .await;
    let admin = Engine::new(t.store.clone(), t.config.clone()).admin();
    let later = chrono::Utc::now() + chrono::Duration::days(300);
    for i in 0..1000 {
        admin
            .compose_email(
                &mallory,
                flood.org_id,
                NewEmail {
                    send_after: Some(later),
                    ..common::email(flood.id, BOB, &format!("Later {i}"), "not yet")
                },
            )
            .await
            .unwrap();
    }
    let subject = format!("Now {}", uuid::Uuid::new_v4());
    let a = t.compose(BOB, &subject, "due now").await;
    let engine = run_engine(&t);
    let sent = t.wait_done(a.id).await;
    stop_engine(engine).await;
    assert_eq!(sent.status, EmailStatus::Sent, "{:?}", sent.send_error);
    let waiting = t
        .store
        .count_where::<EmailActivity>(
            Some(flood.org_id),
            &[Filter::Eq("status", Col::text("pending_send"))],
        )
        .await
        .unwrap();
    assert_eq!(waiting, 1000, "the scheduled emails keep waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_mail_of_another_org_delays_nothing_sqlite() {
    scheduled_mail_of_another_org_delays_nothing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_mail_of_another_org_delays_nothing_postgres() {
    scheduled_mail_of_another_org_delays_nothing(Backend::Postgres).await
}

/// Another organization's Email Router holds 1,000 claims for an hour (claimed before
/// alice's): alice's claim that ran out still becomes "outcome unknown" at the engine's next
/// tick, and the 1,000 held claims are left alone.
async fn held_claims_of_another_org_hide_no_expired_one(backend: Backend) {
    let t = setup(backend).await;
    let (flood, _) =
        flood_mailbox(&t.store, "router@flood.test", OutgoingMethod::EmailRouter).await;
    let hour = chrono::Utc::now() + chrono::Duration::hours(1);
    for _ in 0..1000 {
        stored_email(&t.store, &flood, EmailStatus::Sending, None, Some(hour)).await;
    }
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let a = stored_email(&t.store, &t.mailbox, EmailStatus::Sending, None, Some(past)).await;
    let engine = run_engine(&t);
    let lost = t
        .wait_for(a.id, "outcome unknown", |a| {
            a.status == EmailStatus::OutcomeUnknown
        })
        .await;
    stop_engine(engine).await;
    assert!(lost.send_error.unwrap().contains("claim ran out"));
    let held = t
        .store
        .count_where::<EmailActivity>(
            Some(flood.org_id),
            &[Filter::Eq("status", Col::text("sending"))],
        )
        .await
        .unwrap();
    assert_eq!(held, 1000, "claims still held stay held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_claims_of_another_org_hide_no_expired_one_sqlite() {
    held_claims_of_another_org_hide_no_expired_one(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_claims_of_another_org_hide_no_expired_one_postgres() {
    held_claims_of_another_org_hide_no_expired_one(Backend::Postgres).await
}

/// Within one organization, an Email Router's claim takes the router mailboxes in turn: one
/// user's 1,000 scheduled emails and 50 due ones (all older) do not keep a second
/// mailbox's due email from being handed out.
async fn router_claims_take_each_mailbox_in_turn(backend: Backend) {
    let t = setup(backend).await;
    let (busy, mallory) =
        flood_mailbox(&t.store, "mallory@flood.test", OutgoingMethod::EmailRouter).await;
    let (quiet, _) = flood_mailbox(&t.store, "quiet@flood.test", OutgoingMethod::EmailRouter).await;
    let later = chrono::Utc::now() + chrono::Duration::days(300);
    for _ in 0..1000 {
        stored_email(&t.store, &busy, EmailStatus::PendingSend, Some(later), None).await;
    }
    for _ in 0..50 {
        stored_email(&t.store, &busy, EmailStatus::PendingSend, None, None).await;
    }
    let q = stored_email(&t.store, &quiet, EmailStatus::PendingSend, None, None).await;
    let router = Caller {
        privileges: [Privilege::WriteRecords, Privilege::ReadMailboxes]
            .into_iter()
            .collect(),
        ..mallory
    };
    let claimed = Engine::new(t.store.clone(), t.config.clone())
        .admin()
        .claim_for_router(&router, busy.org_id, None, 10, chrono::Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 10);
    assert!(
        claimed.iter().any(|c| c.activity.id == q.id),
        "the quiet mailbox's email is among the first claimed"
    );
    assert!(
        claimed.iter().all(|c| c.activity.send_after.is_none()),
        "nothing scheduled for later is handed out"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_claims_take_each_mailbox_in_turn_sqlite() {
    router_claims_take_each_mailbox_in_turn(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_claims_take_each_mailbox_in_turn_postgres() {
    router_claims_take_each_mailbox_in_turn(Backend::Postgres).await
}
