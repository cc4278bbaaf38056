//! `serversync serve` synchronizing appointments and contacts two ways with the test
//! environment's Radicale, killed with SIGKILL at random moments of a round that moves 1,000
//! contacts and 1,000 events (half of each from the CRM to the server, half tracked on the
//! server into the CRM) and restarted: afterwards both sides hold exactly the 1,000 contacts and
//! 1,000 events, none twice — on SQLite and PostgreSQL.

mod worker;

use chrono::{Duration as Days, DurationRound, Utc};
use serversync_model::crm::{ActivityParty, ActivityState, Appointment, Contact, PartyRole};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding};
use serversync_model::profile::{DavSettings, EmailServerProfile, Endpoint, ServerType, TlsMode};
use serversync_model::settings::{ActMethod, IncomingMethod, OutgoingMethod};
use serversync_model::webhook::ChangeOrigin;
use serversync_model::{ActivityId, ContactId, Secret};
use serversync_store::{Backend, Col, Store};
use serversync_testkit::TestEnv;
use serversync_testkit::radicale::DavPeer;
use serversync_vault::MasterKey;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use worker::{Worker, bootstrap, database};

const USER: &str = "carol@example.test";
/// Of each kind: half made in the CRM, half on the server.
const EACH: usize = 1_000;
const KILLS: usize = 3;

struct Setup {
    store: Store,
    peer: DavPeer,
    calendar: String,
    book: String,
    org: serversync_model::OrgId,
}

async fn setup(store: Store) -> Setup {
    let env = TestEnv::from_env();
    let (admin, org, settings) = bootstrap(&store).await;
    let peer = DavPeer::new(&env.radicale, USER, &env.password).unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let (calendar, book) = (
        format!("/{USER}/{run}-calendar/"),
        format!("/{USER}/{run}-contacts/"),
    );
    peer.mkcol(&calendar, true).await.unwrap();
    peer.mkcol(&book, false).await.unwrap();
    let now = Utc::now();
    let mut p = EmailServerProfile::new(org.id, "IMAP + DAV", ServerType::ImapSmtp, admin.id, now);
    p.incoming = Some(Endpoint {
        location: "localhost".into(),
        port: env.imaps_port(),
        tls: TlsMode::Implicit,
    });
    let base = env.radicale_url().trim_end_matches('/');
    p.dav = Some(DavSettings {
        caldav_url: format!("{base}{calendar}"),
        carddav_url: Some(format!("{base}{book}")),
    });
    store.insert(&p).await.unwrap();
    let mut m = Mailbox::new_with_defaults(
        org.id,
        MailboxRegarding::User(admin.id),
        admin.id,
        "Carol",
        USER,
        &settings,
        now,
    );
    m.profile_id = Some(p.id);
    m.approval = ApprovalStatus::Approved;
    m.incoming_method = IncomingMethod::None;
    m.outgoing_method = OutgoingMethod::None;
    m.act_method = ActMethod::ServerSideSync;
    m.act.enabled = true;
    m.password = Some(
        store
            .put_secret(Some(org.id), &Secret::new(&env.password))
            .await
            .unwrap(),
    );
    store.insert(&m).await.unwrap();

    // The CRM's half, written as the API writes.
    let api = store.with_origin(ChangeOrigin::Api);
    let start = (now + Days::days(3))
        .duration_trunc(Days::hours(1))
        .unwrap();
    for i in 0..EACH / 2 {
        api.insert(&Contact {
            id: ContactId::new(),
            org_id: org.id,
            full_name: format!("CRM contact {i:04}"),
            emails: vec![format!("crm{i}@fabrikam.example")],
            account_id: None,
            company: None,
            job_title: None,
            phones: vec![],
            owner_id: admin.id,
            created_at: now,
        })
        .await
        .unwrap();
        let at = start + Days::minutes(30 * i as i64);
        api.insert(&Appointment {
            id: ActivityId::new(),
            org_id: org.id,
            subject: format!("CRM event {i:04}"),
            location: None,
            description: None,
            starts_at: at,
            ends_at: at + Days::minutes(30),
            all_day: false,
            organizer: Some(ActivityParty {
                role: PartyRole::From,
                address: USER.into(),
                display_name: None,
                resolved: None,
            }),
            attendees: vec![],
            owner_id: admin.id,
            regarding: None,
            state: ActivityState::Open,
            ical_uid: None,
            time_zone: None,
            recurrence: None,
            created_at: now,
            updated_at: now,
        })
        .await
        .unwrap();
    }
    // The server's half, tracked to the organization.
    let fmt = |t: chrono::DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    for i in 0..EACH / 2 {
        let card = format!(
            "BEGIN:VCARD\nVERSION:3.0\nUID:server-card-{i}\nFN:Server contact {i:04}\n\
             EMAIL:server{i}@contoso.example\nCATEGORIES:Tracked to {}\nEND:VCARD\n",
            org.name
        );
        peer.put(&format!("{book}server-card-{i}.vcf"), &card, "text/vcard")
            .await
            .unwrap();
        let at = start + Days::days(30) + Days::minutes(30 * i as i64);
        let ics = format!(
            "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//test//EN\nBEGIN:VEVENT\nUID:server-event-{i}\n\
             DTSTAMP:{}\nDTSTART:{}\nDTEND:{}\nSUMMARY:Server event {i:04}\n\
             CATEGORIES:Tracked to {}\nEND:VEVENT\nEND:VCALENDAR\n",
            fmt(now),
            fmt(at),
            fmt(at + Days::minutes(30)),
            org.name
        );
        peer.put(
            &format!("{calendar}server-event-{i}.ics"),
            &ics,
            "text/calendar",
        )
        .await
        .unwrap();
    }
    Setup {
        store,
        peer,
        calendar,
        book,
        org: org.id,
    }
}

impl Setup {
    /// Contact names and appointment subjects in the CRM, with how often each occurs.
    async fn crm(&self) -> (HashMap<String, usize>, HashMap<String, usize>) {
        let mut contacts = HashMap::new();
        for c in self
            .store
            .list_all::<Contact>(Some(self.org), &[])
            .await
            .unwrap()
        {
            *contacts.entry(c.value.full_name).or_insert(0) += 1;
        }
        let mut events = HashMap::new();
        for a in self
            .store
            .list_all::<Appointment>(Some(self.org), &[("kind", Col::text("appointment"))])
            .await
            .unwrap()
        {
            *events.entry(a.value.subject).or_insert(0) += 1;
        }
        (contacts, events)
    }

    /// How many resources each collection holds now.
    fn server_counts(&self) -> (usize, usize) {
        (self.peer.count(&self.book), self.peer.count(&self.calendar))
    }

    /// Progress of the round: records in the CRM plus resources on the server (2 × EACH
    /// at the start, 4 × EACH when done). Counted cheaply: it is asked often.
    async fn progress(&self) -> usize {
        use serversync_store::Filter;
        let org = Some(self.org);
        let contacts = self.store.count_where::<Contact>(org, &[]).await.unwrap();
        let kind = [Filter::Eq("kind", Col::text("appointment"))];
        let events = self
            .store
            .count_where::<Appointment>(org, &kind)
            .await
            .unwrap();
        let (sc, se) = self.server_counts();
        contacts as usize + events as usize + sc + se
    }

    /// The names (FN / SUMMARY) on the server, with how often each occurs.
    async fn server_names(&self, collection: &str, prop: &str) -> HashMap<String, usize> {
        let mut out = HashMap::new();
        for (_, text) in self.peer.list(collection).await.unwrap() {
            let name = text
                .lines()
                .find_map(|l| l.strip_prefix(prop))
                .unwrap_or_default()
                .trim()
                .to_owned();
            *out.entry(name).or_insert(0) += 1;
        }
        out
    }
}

fn expected(prefixes: [&str; 2]) -> std::collections::HashSet<String> {
    prefixes
        .iter()
        .flat_map(|p| (0..EACH / 2).map(move |i| format!("{p} {i:04}")))
        .collect()
}

fn exactly_once(
    what: &str,
    got: &HashMap<String, usize>,
    want: &std::collections::HashSet<String>,
) {
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "{what}: more than once: {twice:?}");
    let have: std::collections::HashSet<String> = got.keys().cloned().collect();
    let missing: Vec<_> = want.difference(&have).take(5).collect();
    let extra: Vec<_> = have.difference(want).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: missing {missing:?}, unexpected {extra:?}"
    );
}

async fn kill9_during_a_two_way_round(backend: Backend) {
    let dir = tempfile::Builder::new()
        .prefix("ss-twoway-kill9")
        .tempdir()
        .unwrap();
    let (_db, url) = database(backend, dir.path()).await;
    let key = MasterKey::generate().unwrap();
    let store = Store::open(
        &url,
        MasterKey::from_base64(&key.to_base64(), serversync_vault::KeySource::Direct).unwrap(),
    )
    .await
    .unwrap();
    let s = setup(store).await;
    let start = s.progress().await;
    assert_eq!(start, 2 * EACH);
    let done = 4 * EACH;
    let stretch = (done - start) / (KILLS + 1);
    let mut killed_at = Vec::new();
    for k in 0..KILLS {
        let worker = Worker::start(dir.path(), &url, &key);
        let target = start + k * stretch + (uuid::Uuid::new_v4().as_u128() as usize % stretch);
        let deadline = Instant::now() + Duration::from_secs(300);
        let at = loop {
            let n = s.progress().await;
            if n >= target {
                break n;
            }
            assert!(
                Instant::now() < deadline,
                "the round did not reach {target} within 300 s (at {n})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        worker.kill9();
        killed_at.push(at);
    }
    assert!(
        killed_at.iter().all(|n| *n < done),
        "every kill landed during the round: {killed_at:?} of {done}"
    );
    let worker = Worker::start(dir.path(), &url, &key);
    let deadline = Instant::now() + Duration::from_secs(300);
    while s.progress().await < done {
        assert!(
            Instant::now() < deadline,
            "the round did not finish within 300 s of the last restart (at {})",
            s.progress().await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Every item exists; the round ends when its positions are committed, which the mailbox
    // shows as its "recent decisions".
    let m = mailbox(&s.store).await;
    while s
        .store
        .fetch::<Mailbox>(&m.to_string())
        .await
        .unwrap()
        .value
        .telemetry
        .items_sync
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "the round did not end within 300 s of the last restart"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Give a duplicate every chance to show up before stopping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker.terminate();
    println!("{backend:?}: killed with SIGKILL at {killed_at:?} of {done}");

    let contacts = expected(["CRM contact", "Server contact"]);
    let events = expected(["CRM event", "Server event"]);
    let (crm_contacts, crm_events) = s.crm().await;
    exactly_once("CRM contacts", &crm_contacts, &contacts);
    exactly_once("CRM appointments", &crm_events, &events);
    exactly_once(
        "server cards",
        &s.server_names(&s.book, "FN:").await,
        &contacts,
    );
    exactly_once(
        "server events",
        &s.server_names(&s.calendar, "SUMMARY:").await,
        &events,
    );
    // Every record is linked, once (one link per record and per server item).
    let (mut links, mut after) = (0, None::<String>);
    loop {
        let page = s
            .store
            .list_remote_links(s.org, m, after.as_deref(), 1000)
            .await
            .unwrap();
        links += page.len();
        match page.last() {
            Some(l) if page.len() == 1000 => after = Some(l.value.record_id.clone()),
            _ => break,
        }
    }
    assert_eq!(links, 2 * EACH);
    // The mailbox page's "recent decisions" come from the rounds `serve` ran.
    let mb = s
        .store
        .fetch::<Mailbox>(&m.to_string())
        .await
        .unwrap()
        .value;
    let sync = mb.telemetry.items_sync.expect("the rounds' decisions");
    assert!(
        sync.decisions
            .iter()
            .any(|d| d.what.contains("created on the server")
                || d.what.contains("created in the CRM")),
        "{:?}",
        sync.decisions
    );
}

async fn mailbox(store: &Store) -> serversync_model::MailboxId {
    store
        .list_all::<Mailbox>(None, &[])
        .await
        .unwrap()
        .remove(0)
        .value
        .id
}

#[tokio::test]
async fn kill9_during_a_two_way_round_of_1000_contacts_and_1000_events_sqlite() {
    kill9_during_a_two_way_round(Backend::Sqlite).await
}

#[tokio::test]
async fn kill9_during_a_two_way_round_of_1000_contacts_and_1000_events_postgres() {
    kill9_during_a_two_way_round(Backend::Postgres).await
}
