//! Setup shared by the engine's sync tests.

use serversync_engine::Admin;
use serversync_model::auth::Caller;
use serversync_model::crm::{NewEmail, Recipient};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::org::{Organization, Privilege, User};
use serversync_model::profile::{EmailServerProfile, Endpoint, ServerType, TlsMode};
use serversync_model::settings::EmailSettings;
use serversync_model::settings::OutgoingMethod;
use serversync_model::{MailboxId, Secret};
use serversync_store::{Backend, Store};

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

/// [`imap_mailbox`] on IMAPS at `localhost:imaps_port`, sending through `smtp` by server-side
/// synchronization (incoming synchronization off: these tests are about sending), and a
/// caller acting as its owner who may read and write records.
#[allow(dead_code)]
pub async fn sending_mailbox(
    store: &Store,
    email: &str,
    password: &str,
    imaps_port: u16,
    smtp: Endpoint,
) -> (Mailbox, Caller) {
    let m = imap_mailbox(
        store,
        Endpoint {
            location: "localhost".into(),
            port: imaps_port,
            tls: TlsMode::Implicit,
        },
        email,
        password,
    )
    .await;
    let p = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap();
    let mut profile = p.value;
    profile.outgoing = Some(smtp);
    store.update(&profile, Some(p.version)).await.unwrap();
    let s = store.fetch::<Mailbox>(&m.id.to_string()).await.unwrap();
    let mut m = s.value;
    m.incoming.enabled = false;
    m.outgoing_method = OutgoingMethod::ServerSideSync;
    m.outgoing.enabled = true;
    store.update(&m, Some(s.version)).await.unwrap();
    let user = store
        .fetch::<User>(&m.owner_id.to_string())
        .await
        .unwrap()
        .value;
    let caller = Caller {
        user,
        privileges: [Privilege::ReadRecords, Privilege::WriteRecords]
            .into_iter()
            .collect(),
    };
    (m, caller)
}

/// A plain-text email from mailbox `from` to `to`, to be sent now.
#[allow(dead_code)]
pub fn email(from: MailboxId, to: &str, subject: &str, text: &str) -> NewEmail {
    NewEmail {
        from_mailbox: from,
        to: vec![Recipient::Address(to.into())],
        cc: Vec::new(),
        bcc: Vec::new(),
        subject: subject.into(),
        text_body: Some(text.into()),
        html_body: None,
        attachments: Vec::new(),
        regarding: None,
        send_after: None,
        draft: false,
        in_reply_to: None,
    }
}

/// Polls `check` every 50 ms until it holds, failing after `secs` seconds.
#[allow(unused_macros)]
macro_rules! eventually {
    ($secs:expr, $what:expr, $check:expr) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs($secs);
        loop {
            if $check {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} (not within {} s)",
                $what,
                $secs
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use eventually;

/// A fresh store on `backend`, with what keeps its database alive (a temporary directory or
/// a test database on the environment's PostgreSQL).
#[allow(dead_code)]
pub async fn open_store(backend: Backend) -> (Box<dyn std::any::Any + Send>, Store) {
    let (guard, url): (Box<dyn std::any::Any + Send>, String) = match backend {
        Backend::Sqlite => {
            let d = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", d.path().join("t.db").display());
            (Box::new(d), url)
        }
        Backend::Postgres => {
            let db = serversync_testkit::TestEnv::from_env()
                .pg_database()
                .await
                .unwrap();
            let url = db.url().to_owned();
            (Box::new(db), url)
        }
    };
    let key = serversync_vault::MasterKey::generate().unwrap();
    (guard, Store::open(&url, key).await.unwrap())
}

/// Established TCP connections to the server's port (server side), from `ss`.
fn established_connections(port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args([
            "-Htn",
            "state",
            "established",
            &format!("( sport = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2) runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Watches a server's side: how many connections are open to `port` at once, sampled every
/// 5 ms on a thread of its own until [`ConnectionSampler::most`].
#[allow(dead_code)]
pub struct ConnectionSampler {
    sampling: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

#[allow(dead_code)]
impl ConnectionSampler {
    pub fn start(port: u16) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let sampling = std::sync::Arc::new(AtomicBool::new(true));
        let on = sampling.clone();
        let thread = std::thread::spawn(move || {
            let mut most = 0;
            while on.load(Ordering::Relaxed) {
                most = most.max(established_connections(port));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            most
        });
        ConnectionSampler { sampling, thread }
    }

    /// Stops sampling: the most connections seen open at once.
    pub fn most(self) -> usize {
        self.sampling
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("the sampler thread")
    }
}

/// Records a two-way test starts from, owned by `mailbox`'s owner (dates relative to now, to
/// the minute).
#[allow(dead_code)]
pub mod records {
    use chrono::{Duration as Days, DurationRound, Utc};
    use serversync_engine::twoway::round::RoundReport;
    use serversync_model::crm::{
        ActivityParty, ActivityState, Appointment, Contact, PartyRole, Task,
    };
    use serversync_model::mailbox::Mailbox;
    use serversync_model::{ActivityId, ContactId, OrgId};
    use serversync_store::{Col, Store};

    /// The organization's appointment with this subject, as the CRM holds it.
    pub async fn crm_appointment(store: &Store, org: OrgId, subject: &str) -> Option<Appointment> {
        store
            .list_all::<Appointment>(Some(org), &[("kind", Col::text("appointment"))])
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.value)
            .find(|a| a.subject == subject)
    }

    /// The organization's task with this subject.
    pub async fn crm_task(store: &Store, org: OrgId, subject: &str) -> Option<Task> {
        store
            .list_all::<Task>(Some(org), &[("kind", Col::text("task"))])
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.value)
            .find(|t| t.subject == subject)
    }

    /// The organization's contact with this name.
    pub async fn crm_contact(store: &Store, org: OrgId, name: &str) -> Option<Contact> {
        store
            .list_all::<Contact>(Some(org), &[])
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.value)
            .find(|c| c.full_name == name)
    }

    /// `t` to the minute (what the servers keep).
    pub fn minute(t: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
        t.duration_trunc(Days::minutes(1)).unwrap()
    }

    /// An hour's meeting in Room 4 organized by the mailbox's user.
    pub fn appointment(mailbox: &Mailbox, subject: &str, starts_in: Days) -> Appointment {
        let start = minute(Utc::now() + starts_in);
        Appointment {
            id: ActivityId::new(),
            org_id: mailbox.org_id,
            subject: subject.into(),
            location: Some("Room 4".into()),
            description: None,
            starts_at: start,
            ends_at: start + Days::hours(1),
            all_day: false,
            organizer: Some(ActivityParty {
                role: PartyRole::From,
                address: mailbox.email.clone(),
                display_name: None,
                resolved: None,
            }),
            attendees: vec![],
            owner_id: mailbox.owner_id,
            regarding: None,
            state: ActivityState::Open,
            ical_uid: None,
            time_zone: None,
            recurrence: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    /// An open task due in three days.
    pub fn task(mailbox: &Mailbox, subject: &str) -> Task {
        Task {
            id: ActivityId::new(),
            org_id: mailbox.org_id,
            subject: subject.into(),
            description: Some("call back".into()),
            due_at: Some(minute(Utc::now() + Days::days(3))),
            percent_complete: 0,
            owner_id: mailbox.owner_id,
            regarding: None,
            state: ActivityState::Open,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    /// A contact at Fabrikam.
    pub fn contact(mailbox: &Mailbox, name: &str, email: &str) -> Contact {
        Contact {
            id: ContactId::new(),
            org_id: mailbox.org_id,
            full_name: name.into(),
            emails: vec![email.into()],
            account_id: None,
            company: Some("Fabrikam".into()),
            job_title: None,
            phones: vec![],
            owner_id: mailbox.owner_id,
            created_at: Utc::now(),
        }
    }

    /// Whether a round wrote nothing on either side.
    pub fn quiet(r: &RoundReport) -> bool {
        r.crm_created
            + r.crm_updated
            + r.crm_deleted
            + r.server_created
            + r.server_updated
            + r.server_deleted
            == 0
    }
}
