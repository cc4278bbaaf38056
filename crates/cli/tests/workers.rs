//! `serversync serve` processes as sync workers, against a private Dovecot:
//! - killed with SIGKILL five times at random moments of a 5,000-message initial sync and
//!   restarted: exactly 5,000 messages are stored, none twice, none marked read;
//! - two processes on one PostgreSQL never work on the same mailbox, and when one is killed the
//!   other takes its mailboxes over within the lease time;
//! - killed with SIGKILL twenty times while sending 500 emails through Postfix: every email
//!   arrives at most once (counted by Message-ID in the recipient's mailbox), and each one is
//!   either sent and delivered or "outcome unknown" (the test reports how many).

mod worker;

use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, ServerAddr, TlsMode, TlsTrust};
use serversync_engine::Admin;
use serversync_model::auth::Caller;
use serversync_model::crm::{EmailActivity, EmailStatus, NewEmail, Recipient};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::Privilege;
use serversync_model::profile::{EmailServerProfile, Endpoint, ServerType};
use serversync_model::settings::OutgoingMethod;
use serversync_model::{MailboxId, QueueId, Secret};
use serversync_store::{Backend, Store};
use serversync_testkit::{Dovecot, TEST_PASSWORD, TestEnv};
use serversync_vault::MasterKey;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{LEASE_TTL_SECONDS, Worker, bootstrap, database, stored, sync_through_kills, total};

async fn imap(port: u16, user: &str) -> SyncSession {
    SyncSession::connect(
        &ServerAddr::new("127.0.0.1", port, TlsMode::None),
        &Login::password(user, Secret::new(TEST_PASSWORD)),
        &ConnectOptions::new(Arc::new(TlsTrust::system_only().unwrap()))
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap()
}

fn message(id: &str, user: &str) -> Vec<u8> {
    format!(
        "Message-ID: <{id}>\r\nFrom: Ann <ann@example.test>\r\nTo: {user}\r\nSubject: message {id}\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\nThis is message {id}.\r\n"
    )
    .into_bytes()
}

async fn append(port: u16, user: &str, ids: &[String]) {
    let mut s = imap(port, user).await;
    for id in ids {
        s.append("INBOX", &[], None, &message(id, user))
            .await
            .unwrap();
    }
    let _ = s.logout().await;
}

/// The bootstrap organization, an IMAP profile on the private Dovecot, and one approved,
/// enabled mailbox per user (each signing in as that user).
async fn mailboxes(store: &Store, port: u16, users: &[&str]) -> Vec<MailboxId> {
    let (admin, org, settings) = bootstrap(store).await;
    let now = chrono::Utc::now();
    let mut profile =
        EmailServerProfile::new(org.id, "Dovecot", ServerType::ImapSmtp, admin.id, now);
    let endpoint = Endpoint {
        location: "127.0.0.1".into(),
        port,
        tls: TlsMode::None,
    };
    profile.outgoing = Some(endpoint.clone());
    profile.incoming = Some(endpoint);
    store.insert(&profile).await.unwrap();
    let mut ids = Vec::new();
    for user in users {
        let mut m = Mailbox::new_with_defaults(
            org.id,
            MailboxRegarding::Queue(QueueId::new()),
            admin.id,
            user,
            user,
            &settings,
            now,
        );
        m.profile_id = Some(profile.id);
        m.approval = ApprovalStatus::Approved;
        m.password = Some(
            store
                .put_secret(Some(org.id), &Secret::new(TEST_PASSWORD))
                .await
                .unwrap(),
        );
        m.incoming.enabled = true;
        store.insert(&m).await.unwrap();
        ids.push(m.id);
    }
    ids
}

const MESSAGES: usize = 5_000;
const KILLS: usize = 5;

async fn kill9_during_initial_sync(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-kill9")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let port = dovecot.info().imap_port;
    let user = "carol@example.test";
    let expected: Vec<String> = (0..MESSAGES)
        .map(|i| format!("kill9-{i:05}@example.test"))
        .collect();
    append(port, user, &expected).await;

    let (_db, url) = database(backend, dir.path()).await;
    let key = MasterKey::generate().unwrap();
    let store = Store::open(
        &url,
        MasterKey::from_base64(&key.to_base64(), serversync_vault::KeySource::Direct).unwrap(),
    )
    .await
    .unwrap();
    let m = mailboxes(&store, port, &[user]).await[0];

    let killed_at = sync_through_kills(dir.path(), &url, &key, &store, m, &expected, KILLS).await;
    println!("{backend:?}: killed with SIGKILL at {killed_at:?} stored messages");

    // Nothing was marked read on the server.
    let mut s = imap(port, user).await;
    s.examine("INBOX", false).await.unwrap();
    let list = s.uid_list(1).await.unwrap();
    let _ = s.logout().await;
    assert_eq!(list.len(), MESSAGES);
    assert_eq!(list.iter().filter(|x| x.has_flag("\\Seen")).count(), 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_five_times_during_a_5000_message_sync_sqlite() {
    kill9_during_initial_sync(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_five_times_during_a_5000_message_sync_postgres() {
    kill9_during_initial_sync(Backend::Postgres).await
}

/// The owner (worker id) of each mailbox's lease, when held.
async fn owners(store: &Store, ids: &[MailboxId]) -> Vec<Option<String>> {
    let now = chrono::Utc::now();
    let mut out = Vec::new();
    for id in ids {
        let l = store.get_lease(&format!("mailbox:{id}")).await.unwrap();
        out.push(l.filter(|l| l.until > now).map(|l| l.owner));
    }
    out
}

/// The process id inside a worker id (`host-pid-random`).
fn pid_of(owner: &str) -> u32 {
    owner.rsplit('-').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_postgres_share_mailboxes_and_take_over_a_dead_one() {
    let dir = tempfile::Builder::new()
        .prefix("ss-workers")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = Dovecot::start(&dir.path().join("dovecot")).unwrap();
    let port = dovecot.info().imap_port;
    let users = [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
        "support@example.test",
    ];
    let (_db, url) = database(Backend::Postgres, dir.path()).await;
    let key = MasterKey::generate().unwrap();
    let store = Store::open(
        &url,
        MasterKey::from_base64(&key.to_base64(), serversync_vault::KeySource::Direct).unwrap(),
    )
    .await
    .unwrap();
    let ids = mailboxes(&store, port, &users).await;

    let a_dir = dir.path().join("a");
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    let mut workers = vec![
        Worker::start(&a_dir, &url, &key),
        Worker::start(&b_dir, &url, &key),
    ];

    // Mail keeps arriving while both run; each mailbox is served by exactly one of them.
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); users.len()];
    for round in 0..5 {
        for (u, user) in users.iter().enumerate() {
            let id = format!("both-{round}-{u}@example.test");
            append(port, user, std::slice::from_ref(&id)).await;
            sent[u].push(id);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = true;
        for (u, id) in ids.iter().enumerate() {
            all &= total(&store, *id).await as usize == sent[u].len();
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both workers together store every message within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Each worker takes its fair share: two mailboxes each.
    let deadline = Instant::now() + Duration::from_secs(20);
    let held = loop {
        let held = owners(&store, &ids).await;
        let per_worker: Vec<usize> = workers
            .iter()
            .map(|w| {
                held.iter()
                    .filter(|o| o.as_deref().map(pid_of) == Some(w.pid()))
                    .count()
            })
            .collect();
        if per_worker == [2, 2] {
            break held;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not share the mailboxes two and two within 20 s: {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("mailbox owners: {held:?}");

    // Kill the worker that owns the first mailbox; the other takes all of its mailboxes.
    let victim_pid = pid_of(held[0].as_ref().unwrap());
    let victim = workers.iter().position(|w| w.pid() == victim_pid).unwrap();
    let survivor_pid = workers[1 - victim].pid();
    let orphaned: Vec<usize> = (0..ids.len())
        .filter(|i| held[*i].as_deref().map(pid_of) == Some(victim_pid))
        .collect();
    workers.remove(victim).kill9();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(LEASE_TTL_SECONDS + 10);
    let took_over = loop {
        let now = owners(&store, &ids).await;
        if now
            .iter()
            .all(|o| o.as_deref().map(pid_of) == Some(survivor_pid))
        {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the survivor did not take over within {} s: {now:?}",
            LEASE_TTL_SECONDS + 10
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!(
        "mailboxes {orphaned:?} taken over {took_over:?} after the kill (lease time {LEASE_TTL_SECONDS} s)"
    );
    assert!(
        took_over <= Duration::from_secs(LEASE_TTL_SECONDS + 2),
        "taken over within the lease time (plus a tick and a connection): {took_over:?}"
    );

    // The survivor serves every mailbox: new mail is stored once.
    for (u, user) in users.iter().enumerate() {
        let id = format!("after-kill-{u}@example.test");
        append(port, user, std::slice::from_ref(&id)).await;
        sent[u].push(id);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (u, id) in ids.iter().enumerate() {
        while total(&store, *id).await as usize != sent[u].len() {
            assert!(
                Instant::now() < deadline,
                "the survivor stores new mail for every mailbox"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (u, id) in ids.iter().enumerate() {
        let got = stored(&store, *id).await;
        let want: HashMap<String, usize> = sent[u].iter().map(|s| (s.clone(), 1)).collect();
        assert_eq!(got, want, "{}: every message once", users[u]);
    }
    workers.pop().unwrap().terminate();
    let released = owners(&store, &ids).await;
    assert!(
        released.iter().all(Option::is_none),
        "a clean stop releases every lease at once: {released:?}"
    );
    store.close().await;
}

// ---- Sending: kill -9 twenty times over 500 emails. ----

const EMAILS: usize = 500;
const SEND_KILLS: usize = 20;

/// Status of every activity, by id.
async fn statuses(
    store: &Store,
    org: serversync_model::OrgId,
) -> HashMap<String, (EmailStatus, Option<String>)> {
    store
        .list_all::<EmailActivity>(Some(org), &[])
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.value.id.to_string(), (s.value.status, s.value.message_id)))
        .collect()
}

/// Message-IDs in `user`'s INBOX (shared Dovecot) of messages whose subject has `tag`, with
/// how often each occurs.
async fn delivered(user: &str, tag: &str) -> HashMap<String, usize> {
    let env = TestEnv::from_env();
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&env.ca_cert]).unwrap());
    let mut s = SyncSession::connect(
        &ServerAddr::new("localhost", env.imaps_port(), TlsMode::Implicit),
        &Login::password(user, Secret::new(env.password.clone())),
        &ConnectOptions::new(trust)
            .with_policy(serversync_connectors::NetworkPolicy::loopback_allowed()),
    )
    .await
    .unwrap();
    s.examine("INBOX", false).await.unwrap();
    let uids = s.uid_search_header("Subject", tag).await.unwrap();
    let mut out = HashMap::new();
    if !uids.is_empty() {
        let mut f = s.fetch_bodies(&uids, 1 << 16).await.unwrap();
        while let Some(m) = f.next().await.unwrap() {
            let text = String::from_utf8_lossy(&m.body).into_owned();
            let mid = text
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Message-ID: <")
                        .or_else(|| l.strip_prefix("Message-Id: <"))
                })
                .and_then(|l| l.strip_suffix('>'))
                .unwrap_or("")
                .to_owned();
            *out.entry(mid).or_insert(0) += 1;
        }
    }
    let _ = s.logout().await;
    out
}

async fn kill9_while_sending(backend: Backend) {
    let env = TestEnv::from_env();
    let dir = tempfile::Builder::new()
        .prefix("ss-send9")
        .tempdir_in("/tmp")
        .unwrap();
    let (_db, url) = database(backend, dir.path()).await;
    let key = MasterKey::generate().unwrap();
    let store = Store::open(
        &url,
        MasterKey::from_base64(&key.to_base64(), serversync_vault::KeySource::Direct).unwrap(),
    )
    .await
    .unwrap();
    // Alice's mailbox on the shared servers: submission with STARTTLS, Sent copies over IMAPS.
    let sender = "alice@example.test";
    let recipient = "bob@example.test";
    let (admin, org, settings) = bootstrap(&store).await;
    let now = chrono::Utc::now();
    let mut profile =
        EmailServerProfile::new(org.id, "Postfix", ServerType::ImapSmtp, admin.id, now);
    profile.incoming = Some(Endpoint {
        location: "localhost".into(),
        port: env.imaps_port(),
        tls: TlsMode::Implicit,
    });
    profile.outgoing = Some(Endpoint {
        location: "localhost".into(),
        port: env.submission_port(),
        tls: TlsMode::StartTls,
    });
    profile.advanced.max_sends_per_minute = 600;
    store.insert(&profile).await.unwrap();
    let mut m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(admin.id),
        admin.id,
        sender,
        sender,
        &settings,
        now,
    );
    m.profile_id = Some(profile.id);
    m.approval = ApprovalStatus::Approved;
    m.outgoing_method = OutgoingMethod::ServerSideSync;
    m.outgoing.enabled = true;
    m.password = Some(
        store
            .put_secret(Some(org.id), &Secret::new(env.password.clone()))
            .await
            .unwrap(),
    );
    store.insert(&m).await.unwrap();
    let caller = Caller {
        user: admin.clone(),
        privileges: [Privilege::ReadRecords, Privilege::WriteRecords]
            .into_iter()
            .collect(),
    };
    let tag = format!("send9-{}", uuid::Uuid::new_v4().simple());
    let composer = Admin::new(store.clone(), Default::default());
    for i in 0..EMAILS {
        composer
            .compose_email(
                &caller,
                org.id,
                NewEmail {
                    from_mailbox: m.id,
                    to: vec![Recipient::Address(recipient.into())],
                    cc: Vec::new(),
                    bcc: Vec::new(),
                    subject: format!("{tag} #{i}"),
                    text_body: Some(format!("Email {i} of {EMAILS}.")),
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
    }
    let done = |st: &HashMap<String, (EmailStatus, Option<String>)>| {
        st.values()
            .filter(|(s, _)| !matches!(s, EmailStatus::PendingSend | EmailStatus::Sending))
            .count()
    };

    // Twenty kills, each once a random number of emails in the next stretch are done.
    let stretch = EMAILS / (SEND_KILLS + 1);
    let mut killed_at = Vec::new();
    for k in 0..SEND_KILLS {
        let worker = Worker::start(dir.path(), &url, &key);
        let target = k * stretch + uuid::Uuid::new_v4().as_u128() as usize % stretch;
        let deadline = Instant::now() + Duration::from_secs(120);
        let at = loop {
            let n = done(&statuses(&store, org.id).await);
            if n >= target {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "sending did not reach {target} emails within 120 s (at {n})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        worker.kill9();
        killed_at.push(at);
    }
    let worker = Worker::start(dir.path(), &url, &key);
    let deadline = Instant::now() + Duration::from_secs(300);
    let final_state = loop {
        let st = statuses(&store, org.id).await;
        if done(&st) == EMAILS {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "not every email was done within 300 s of the last restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    worker.terminate();

    let sent: HashSet<String> = final_state
        .values()
        .filter(|(s, _)| *s == EmailStatus::Sent)
        .filter_map(|(_, mid)| mid.clone())
        .collect();
    let unknown: HashSet<String> = final_state
        .values()
        .filter(|(s, _)| *s == EmailStatus::OutcomeUnknown)
        .filter_map(|(_, mid)| mid.clone())
        .collect();
    let other: Vec<_> = final_state
        .values()
        .filter(|(s, _)| !matches!(s, EmailStatus::Sent | EmailStatus::OutcomeUnknown))
        .collect();
    assert!(
        other.is_empty(),
        "every email is sent or outcome unknown: {other:?}"
    );
    assert_eq!(sent.len() + unknown.len(), EMAILS);

    // Postfix delivers the last ones within seconds.
    let deadline = Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = delivered(recipient, &tag).await;
        if sent.iter().all(|m| got.contains_key(m)) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} sent emails not delivered within 120 s",
            sent.iter().filter(|m| !got.contains_key(*m)).count()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // Give a duplicate every chance to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = {
        let again = delivered(recipient, &tag).await;
        if again.len() >= got.len() { again } else { got }
    };
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let strangers: Vec<_> = got
        .keys()
        .filter(|m| !sent.contains(*m) && !unknown.contains(*m))
        .collect();
    assert!(
        strangers.is_empty(),
        "delivered but not ours: {strangers:?}"
    );
    let unknown_delivered = unknown.iter().filter(|m| got.contains_key(*m)).count();
    println!(
        "{backend:?}: {EMAILS} emails, killed with SIGKILL {SEND_KILLS} times (at {killed_at:?} done): \
         {} sent and delivered once, {} outcome unknown ({unknown_delivered} of them did arrive, once), \
         none delivered twice",
        sent.len(),
        unknown.len(),
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_twenty_times_while_sending_500_emails_sqlite() {
    kill9_while_sending(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_twenty_times_while_sending_500_emails_postgres() {
    kill9_while_sending(Backend::Postgres).await
}
