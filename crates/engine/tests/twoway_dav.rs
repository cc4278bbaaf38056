//! Two-way synchronization of appointments, contacts and tasks with a real CalDAV/CardDAV
//! server (the test environment's Radicale), on SQLite and PostgreSQL.
//!
//! Each test works in collections of its own (made here with plain HTTP), and looks at the
//! server with plain HTTP too — not through serversync's DAV client — so what it asserts is
//! what any other client of the server sees. Requests serversync sends are counted in
//! Radicale's log ("PUT request for …"), to show that a write made by the sync produces no
//! write back.

mod common;

use common::records::{self, minute, quiet};

use chrono::{DateTime, Duration as Days, Utc};
use serversync_engine::EngineConfig;
use serversync_engine::twoway::{self, round::RoundReport};
use serversync_model::crm::{
    ActivityParty, Appointment, Contact, Occurrence, PartyRole, Recurrence, Task,
};
use serversync_model::mailbox::Mailbox;
use serversync_model::merge::ConflictPolicy;
use serversync_model::org::Organization;
use serversync_model::profile::{DavSettings, EmailServerProfile, Endpoint, TlsMode};
use serversync_model::settings::{ActMethod, EmailSettings};
use serversync_model::webhook::ChangeOrigin;
use serversync_store::{Backend, Col, LeaseGuard, Store};
use serversync_testkit::TestEnv;
use serversync_testkit::radicale::DavPeer;
use std::sync::Arc;
use std::time::Duration;

const USER: &str = "dana@example.test";

/// A store with a mailbox for [`USER`] whose profile names two fresh collections on Radicale.
struct World {
    _guard: Box<dyn std::any::Any + Send>,
    store: Store,
    /// Writes as the API makes them (origin `api`).
    api: Store,
    config: EngineConfig,
    mailbox: Mailbox,
    org_name: String,
    lease: LeaseGuard,
    dav: DavPeer,
    password: String,
    calendar: String,
    book: String,
}

async fn world(backend: Backend, policy: ConflictPolicy) -> World {
    let env = TestEnv::from_env();
    let (guard, store) = common::open_store(backend).await;
    let mut m = common::imap_mailbox(
        &store,
        Endpoint {
            location: "localhost".into(),
            port: env.imaps_port(),
            tls: TlsMode::Implicit,
        },
        USER,
        &env.password,
    )
    .await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let trust =
        Arc::new(serversync_connectors::TlsTrust::with_extra_ca_files([&env.ca_cert]).unwrap());
    let dav = DavPeer::new(&env.radicale, USER, &env.password).unwrap();
    let calendar = format!("/{USER}/{run}-calendar/");
    let book = format!("/{USER}/{run}-contacts/");
    dav.mkcol(&calendar, true).await.unwrap();
    dav.mkcol(&book, false).await.unwrap();
    let base = env.radicale_url().trim_end_matches('/');
    let p = store
        .fetch::<EmailServerProfile>(&m.profile_id.unwrap().to_string())
        .await
        .unwrap();
    let mut profile = p.value;
    profile.dav = Some(DavSettings {
        caldav_url: format!("{base}{calendar}"),
        carddav_url: Some(format!("{base}{book}")),
    });
    store.update(&profile, Some(p.version)).await.unwrap();
    let s = store.fetch::<Mailbox>(&m.id.to_string()).await.unwrap();
    m = s.value;
    m.incoming.enabled = false;
    m.act_method = ActMethod::ServerSideSync;
    m.act.enabled = true;
    m.sync_with_this_org_only = true;
    store.update(&m, Some(s.version)).await.unwrap();
    let st = store
        .fetch::<EmailSettings>(&m.org_id.to_string())
        .await
        .unwrap();
    let mut settings = st.value;
    settings.conflict_policy = policy;
    store.update(&settings, Some(st.version)).await.unwrap();
    let org_name = store
        .fetch::<Organization>(&m.org_id.to_string())
        .await
        .unwrap()
        .value
        .name;
    let config = EngineConfig {
        network: Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        lease_ttl: Duration::from_secs(60),
        ..EngineConfig::new(trust)
    };
    let lease = store
        .acquire_lease(&format!("items:{}", m.id), "test", Duration::from_secs(600))
        .await
        .unwrap()
        .expect("the lease is free");
    World {
        _guard: guard,
        api: store.with_origin(ChangeOrigin::Api),
        store,
        config,
        mailbox: m,
        org_name,
        lease,
        dav,
        password: env.password.clone(),
        calendar,
        book,
    }
}

impl World {
    async fn round(&self) -> RoundReport {
        match twoway::sync_once(&self.store, &self.config, self.mailbox.id, &self.lease).await {
            Ok((r, _)) => r,
            Err(e) => panic!("the round failed: {e:?}"),
        }
    }

    async fn resource_with(&self, collection: &str, needle: &str) -> Option<(String, String)> {
        self.dav
            .list(collection)
            .await
            .unwrap()
            .into_iter()
            .find(|(_, text)| text.contains(needle))
    }
}

/// Create, update and delete on each side reach the other within one round, for each of the
/// three record types; the sync's own writes never come back.
async fn each_side_reaches_the_other(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let appt = records::appointment(&w.mailbox, "Quarterly review", Days::days(2));
    let task = records::task(&w.mailbox, "Send the offer");
    let contact = records::contact(&w.mailbox, "Ann Lee", "ann@fabrikam.example");
    w.api.insert(&appt).await.unwrap();
    w.api.insert(&task).await.unwrap();
    w.api.insert(&contact).await.unwrap();

    // CRM → server: created.
    let r = w.round().await;
    assert_eq!(r.server_created, 3, "{r:?}");
    let (href_e, ev) = w
        .resource_with(&w.calendar, "VEVENT")
        .await
        .expect("the event");
    assert!(ev.contains("SUMMARY:Quarterly review"), "{ev}");
    assert!(
        ev.contains(&format!("CATEGORIES:Tracked to {}", w.org_name)),
        "{ev}"
    );
    let (href_t, todo) = w
        .resource_with(&w.calendar, "VTODO")
        .await
        .expect("the task");
    assert!(todo.contains("SUMMARY:Send the offer"), "{todo}");
    let (href_c, card) = w.resource_with(&w.book, "VCARD").await.expect("the card");
    assert!(
        card.contains("FN:Ann Lee") && card.contains("ann@fabrikam.example"),
        "{card}"
    );

    // Nothing echoes: a round after the sync's own writes writes nothing.
    let run = w.calendar.trim_end_matches("calendar/");
    let puts = w.dav.logged("PUT", run);
    let r = w.round().await;
    assert!(quiet(&r), "{r:?}");
    assert_eq!(w.dav.logged("PUT", run), puts, "no write back");

    // Server → CRM: an update, a delete, and a new tracked contact (an untracked one stays out).
    let (text, _) = w.dav.get(&href_e).await.unwrap();
    w.dav
        .put(
            &href_e,
            &text
                .replace(
                    "SUMMARY:Quarterly review",
                    "SUMMARY:Quarterly review (moved)",
                )
                .replace("\r\n", "\n"),
            "text/calendar",
        )
        .await
        .unwrap();
    w.dav.delete(&href_t).await.unwrap();
    let tracked = format!(
        "BEGIN:VCARD\nVERSION:3.0\nUID:peer-1\nFN:Bo Chen\nEMAIL:bo@contoso.example\nCATEGORIES:Tracked to {}\nEND:VCARD\n",
        w.org_name
    );
    w.dav
        .put(&format!("{}peer-1.vcf", w.book), &tracked, "text/vcard")
        .await
        .unwrap();
    let untracked = "BEGIN:VCARD\nVERSION:3.0\nUID:peer-2\nFN:Private Person\nEND:VCARD\n";
    w.dav
        .put(&format!("{}peer-2.vcf", w.book), untracked, "text/vcard")
        .await
        .unwrap();
    let r = w.round().await;
    assert_eq!(
        (r.crm_updated, r.crm_deleted, r.crm_created),
        (1, 1, 1),
        "{r:?}"
    );
    let a = w
        .store
        .fetch::<Appointment>(&appt.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(a.subject, "Quarterly review (moved)");
    assert!(
        w.store
            .get::<Task>(&task.id.to_string())
            .await
            .unwrap()
            .is_none()
    );
    let contacts = w
        .store
        .list_all::<Contact>(Some(w.mailbox.org_id), &[])
        .await
        .unwrap();
    let names: Vec<&str> = contacts
        .iter()
        .map(|c| c.value.full_name.as_str())
        .collect();
    assert!(names.contains(&"Bo Chen"), "{names:?}");
    assert!(
        !names.contains(&"Private Person"),
        "untracked items stay out: {names:?}"
    );

    // CRM → server: an update and a delete.
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.phones = vec!["+1 555 0100".into()];
    w.api.update(&c, Some(s.version)).await.unwrap();
    w.api
        .delete::<Appointment>(&appt.id.to_string(), None)
        .await
        .unwrap();
    let r = w.round().await;
    assert_eq!((r.server_updated, r.server_deleted), (1, 1), "{r:?}");
    let (card, _) = w.dav.get(&href_c).await.unwrap();
    assert!(card.contains("555 0100"), "{card}");
    assert!(w.resource_with(&w.calendar, "VEVENT").await.is_none());

    // A contact given to another user leaves this user's server (the reference's "logical
    // delete"); the record stays in the CRM.
    let colleague = serversync_model::org::User::new(
        w.mailbox.org_id,
        "Colleague",
        "colleague@example.test",
        Utc::now(),
    );
    w.store.insert(&colleague).await.unwrap();
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.owner_id = colleague.id;
    w.api.update(&c, Some(s.version)).await.unwrap();
    let r = w.round().await;
    assert_eq!(r.server_deleted, 1, "{r:?}");
    assert!(w.resource_with(&w.book, "FN:Ann Lee").await.is_none());
    assert!(
        w.store
            .get::<Contact>(&contact.id.to_string())
            .await
            .unwrap()
            .is_some()
    );

    // And again nothing echoes.
    let puts = (w.dav.logged("PUT", run), w.dav.logged("DELETE", run));
    let r = w.round().await;
    assert!(quiet(&r), "{r:?}");
    assert_eq!(
        (w.dav.logged("PUT", run), w.dav.logged("DELETE", run)),
        puts
    );
}

/// The same field changed on both sides: each policy decides, with an alert naming the field
/// and both values; changes to different fields merge without a conflict.
async fn conflicts_follow_the_policy(backend: Backend, policy: ConflictPolicy) {
    let w = world(backend, policy).await;
    let contact = records::contact(&w.mailbox, "Ann Lee", "ann@fabrikam.example");
    w.api.insert(&contact).await.unwrap();
    w.round().await;
    let (href, _) = w.resource_with(&w.book, "VCARD").await.unwrap();

    // Different fields: the CRM changes the job title, the server the name.
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.job_title = Some("Buyer".into());
    w.api.update(&c, Some(s.version)).await.unwrap();
    let (text, _) = w.dav.get(&href).await.unwrap();
    w.dav
        .put(
            &href,
            &text
                .replace("FN:Ann Lee", "FN:Ann Lee-Smith")
                .replace("\r\n", "\n"),
            "text/vcard",
        )
        .await
        .unwrap();
    let r = w.round().await;
    assert!(r.conflicts.is_empty(), "{r:?}");
    let c = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    assert_eq!(c.value.full_name, "Ann Lee-Smith");
    assert_eq!(c.value.job_title.as_deref(), Some("Buyer"));
    let (text, _) = w.dav.get(&href).await.unwrap();
    assert!(
        text.contains("TITLE:Buyer") && text.contains("FN:Ann Lee-Smith"),
        "{text}"
    );

    // The same field: the company, to different values on each side (the server's change is
    // made after the CRM's, with a later REV, so "latest change wins" keeps the server's).
    let mut c = c.clone();
    c.value.company = Some("CRM Corp".into());
    w.api.update(&c.value, Some(c.version)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (text, _) = w.dav.get(&href).await.unwrap();
    let rev = Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("REV:") && !l.starts_with("ORG:"))
        .map(str::to_owned)
        .collect();
    let end = lines.iter().position(|l| l == "END:VCARD").unwrap();
    lines.insert(end, format!("REV:{rev}"));
    lines.insert(end, "ORG:Server Corp".into());
    w.dav
        .put(&href, &lines.join("\n"), "text/vcard")
        .await
        .unwrap();
    let r = w.round().await;
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].1.field, "company");
    let expected = match policy {
        ConflictPolicy::CrmWins => "CRM Corp",
        ConflictPolicy::ServerWins | ConflictPolicy::LatestChangeWins => "Server Corp",
    };
    let c = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    assert_eq!(c.value.company.as_deref(), Some(expected));
    let (text, _) = w.dav.get(&href).await.unwrap();
    assert!(text.contains(&format!("ORG:{expected}")), "{text}");
    let alerts = w
        .store
        .list_all::<serversync_model::alert::Alert>(Some(w.mailbox.org_id), &[])
        .await
        .unwrap();
    let alert = alerts
        .iter()
        .find(|a| a.value.code == "sync_conflict")
        .expect("a conflict alert");
    for needle in ["company", "CRM Corp", "Server Corp"] {
        assert!(
            alert.value.message.contains(needle),
            "{}",
            alert.value.message
        );
    }
    assert_eq!(alert.value.recipients, vec![w.mailbox.owner_id]);
    // Settled: the next round is quiet.
    assert!(quiet(&w.round().await));
}

/// A recurring meeting with one moved and one cancelled occurrence round-trips unchanged, in
/// both directions.
async fn recurring_meetings_round_trip(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let mut appt = records::appointment(&w.mailbox, "Weekly sync", Days::days(1));
    appt.time_zone = Some("Europe/Berlin".into());
    let first = appt.starts_at;
    appt.recurrence = Some(Recurrence {
        rule: "FREQ=WEEKLY;COUNT=6".into(),
        cancelled: vec![first + Days::weeks(2)],
        changed: vec![Occurrence {
            original_start: first + Days::weeks(1),
            starts_at: first + Days::weeks(1) + Days::hours(2),
            ends_at: first + Days::weeks(1) + Days::hours(3),
            subject: Some("Weekly sync (later)".into()),
            location: None,
            description: None,
        }],
    });
    w.api.insert(&appt).await.unwrap();
    assert_eq!(w.round().await.server_created, 1);
    let (href, text) = w.resource_with(&w.calendar, "VEVENT").await.unwrap();
    assert!(text.contains("RRULE:FREQ=WEEKLY;COUNT=6"), "{text}");
    assert!(
        text.contains("EXDATE") && text.contains("RECURRENCE-ID"),
        "{text}"
    );
    assert!(
        text.contains("TZID=Europe/Berlin"),
        "time zone kept: {text}"
    );
    assert!(quiet(&w.round().await), "unchanged: nothing to write");

    // From the server: an independent client's copy of the same series, tracked.
    let start = first + Days::days(7);
    let fmt = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
    let ics = format!(
        "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//test//EN\n\
         BEGIN:VEVENT\nUID:series-peer\nDTSTAMP:{now}\nDTSTART:{s}\nDTEND:{e}\nSUMMARY:Standup\n\
         RRULE:FREQ=DAILY;COUNT=5\nEXDATE:{x}\nCATEGORIES:Tracked to {org}\nEND:VEVENT\n\
         BEGIN:VEVENT\nUID:series-peer\nDTSTAMP:{now}\nRECURRENCE-ID:{r}\nDTSTART:{ms}\nDTEND:{me}\n\
         SUMMARY:Standup (moved)\nEND:VEVENT\nEND:VCALENDAR\n",
        now = fmt(Utc::now()),
        s = fmt(start),
        e = fmt(start + Days::minutes(15)),
        x = fmt(start + Days::days(2)),
        r = fmt(start + Days::days(1)),
        ms = fmt(start + Days::days(1) + Days::hours(1)),
        me = fmt(start + Days::days(1) + Days::hours(1) + Days::minutes(15)),
        org = w.org_name,
    );
    w.dav
        .put(
            &format!("{}series-peer.ics", w.calendar),
            &ics,
            "text/calendar",
        )
        .await
        .unwrap();
    assert_eq!(w.round().await.crm_created, 1);
    let all = w
        .store
        .list_all::<Appointment>(
            Some(w.mailbox.org_id),
            &[("kind", Col::text("appointment"))],
        )
        .await
        .unwrap();
    let standup = all
        .iter()
        .find(|a| a.value.subject == "Standup")
        .expect("the series in the CRM");
    let rec = standup.value.recurrence.as_ref().expect("its recurrence");
    assert_eq!(rec.rule, "FREQ=DAILY;COUNT=5");
    assert_eq!(rec.cancelled, vec![start + Days::days(2)]);
    assert_eq!(rec.changed.len(), 1);
    assert_eq!(rec.changed[0].original_start, start + Days::days(1));
    assert_eq!(
        rec.changed[0].starts_at,
        start + Days::days(1) + Days::hours(1)
    );
    assert_eq!(rec.changed[0].subject.as_deref(), Some("Standup (moved)"));
    assert!(quiet(&w.round().await), "unchanged both ways");
    let _ = href;
}

/// A delete by an attendee does not propagate; an item stamped by another organization is
/// left alone; a collection that suddenly looks empty stops the round instead of deleting.
async fn deletes_are_guarded(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    // A meeting organized by someone else, which the user attends.
    let mut meeting = records::appointment(&w.mailbox, "Their meeting", Days::days(2));
    meeting.organizer = Some(ActivityParty {
        role: PartyRole::From,
        address: "boss@contoso.example".into(),
        display_name: None,
        resolved: None,
    });
    meeting.attendees = vec![ActivityParty {
        role: PartyRole::To,
        address: USER.into(),
        display_name: None,
        resolved: None,
    }];
    w.api.insert(&meeting).await.unwrap();
    w.round().await;
    let (href, _) = w.resource_with(&w.calendar, "Their meeting").await.unwrap();
    w.dav.delete(&href).await.unwrap();
    let r = w.round().await;
    assert_eq!(r.crm_deleted, 0, "{r:?}");
    assert!(
        w.store
            .get::<Appointment>(&meeting.id.to_string())
            .await
            .unwrap()
            .is_some()
    );

    // Another organization's item, tracked to this one's name: left alone.
    let foreign = format!(
        "BEGIN:VCARD\nVERSION:3.0\nUID:foreign-1\nFN:Other Org Person\nX-SERVERSYNC-ORG:{}\nCATEGORIES:Tracked to {}\nEND:VCARD\n",
        serversync_model::OrgId::new(),
        w.org_name
    );
    w.dav
        .put(&format!("{}foreign-1.vcf", w.book), &foreign, "text/vcard")
        .await
        .unwrap();
    let r = w.round().await;
    assert_eq!(r.crm_created, 0, "{r:?}");

    // Mass delete: ten linked contacts all gone from the server at once.
    for i in 0..10 {
        w.api
            .insert(&records::contact(
                &w.mailbox,
                &format!("Person {i}"),
                &format!("p{i}@x.example"),
            ))
            .await
            .unwrap();
    }
    assert_eq!(w.round().await.server_created, 10);
    for (href, text) in w.dav.list(&w.book).await.unwrap() {
        if text.contains("Person ") {
            w.dav.delete(&href).await.unwrap();
        }
    }
    let e = twoway::sync_once(&w.store, &w.config, w.mailbox.id, &w.lease)
        .await
        .expect_err("the guard holds the round");
    assert!(format!("{e:?}").contains("mass_delete_held"), "{e:?}");
    let left = w
        .store
        .list_all::<Contact>(Some(w.mailbox.org_id), &[])
        .await
        .unwrap();
    assert_eq!(
        left.iter()
            .filter(|c| c.value.full_name.starts_with("Person "))
            .count(),
        10
    );
}

/// Runs the independent CalDAV client (python-caldav) on `collection`.
fn caldav_peer(w: &World, collection: &str, args: &[&str]) -> String {
    let env = TestEnv::from_env();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/caldav_peer.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args([env.radicale_url(), USER, &w.password, collection])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "caldav_peer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An independent CalDAV client reads back what serversync wrote, and what it writes is picked
/// up by serversync.
async fn an_independent_client_agrees(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    w.api
        .insert(&records::appointment(&w.mailbox, "Kick-off", Days::days(4)))
        .await
        .unwrap();
    w.api
        .insert(&records::task(&w.mailbox, "Prepare slides"))
        .await
        .unwrap();
    w.round().await;
    let read: serde_json::Value =
        serde_json::from_str(&caldav_peer(&w, &w.calendar, &["read"])).unwrap();
    let mut seen: Vec<(String, String)> = read
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap().to_owned(),
                o["summary"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("VEVENT".into(), "Kick-off".into()),
            ("VTODO".into(), "Prepare slides".into())
        ]
    );

    let start = minute(Utc::now() + Days::days(5));
    let category = format!("Tracked to {}", w.org_name);
    caldav_peer(
        &w,
        &w.calendar,
        &[
            "add-event",
            "peer-event",
            "Site visit",
            &start.to_rfc3339(),
            &(start + Days::hours(2)).to_rfc3339(),
            &category,
        ],
    );
    caldav_peer(
        &w,
        &w.calendar,
        &["add-todo", "peer-todo", "Order parts", &category],
    );
    let r = w.round().await;
    assert_eq!(r.crm_created, 2, "{r:?}");
    let visit = w
        .store
        .list_all::<Appointment>(
            Some(w.mailbox.org_id),
            &[("kind", Col::text("appointment"))],
        )
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.value.subject == "Site visit")
        .expect("the peer's event in the CRM");
    assert_eq!(
        (visit.value.starts_at, visit.value.ends_at),
        (start, start + Days::hours(2))
    );
    assert_eq!(visit.value.ical_uid.as_deref(), Some("peer-event"));
    let tasks = w
        .store
        .list_all::<Task>(Some(w.mailbox.org_id), &[("kind", Col::text("task"))])
        .await
        .unwrap();
    assert!(tasks.iter().any(|t| t.value.subject == "Order parts"));
    assert!(quiet(&w.round().await));
}

/// Test and enable writes a test appointment, task and contact, reads each back and deletes
/// it (nothing is left behind), and writes the direction's status; a wrong password fails at
/// the sign-in.
async fn test_and_enable_probes_the_collections(backend: Backend) {
    use serversync_model::mailbox::RunStatus;
    use serversync_model::settings::{IncomingMethod, OutgoingMethod};
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let s = w
        .store
        .fetch::<Mailbox>(&w.mailbox.id.to_string())
        .await
        .unwrap();
    let mut m = s.value;
    m.incoming_method = IncomingMethod::None;
    m.outgoing_method = OutgoingMethod::None;
    m.act.enabled = false;
    w.store.update(&m, Some(s.version)).await.unwrap();
    let r = serversync_engine::test_enable::test_and_enable(&w.store, &w.config, m.id)
        .await
        .unwrap();
    assert!(r.ok, "{}", r.message);
    for needle in [
        "appointments in",
        "tasks in",
        "contacts in",
        "readable and writable",
    ] {
        assert!(r.message.contains(needle), "{}", r.message);
    }
    let after = w
        .store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(after.act.status, RunStatus::Success);
    assert!(after.act.enabled);
    assert!(
        w.dav.list(&w.calendar).await.unwrap().is_empty(),
        "no test item left behind"
    );
    assert!(
        w.dav.list(&w.book).await.unwrap().is_empty(),
        "no test card left behind"
    );

    let s = w.store.fetch::<Mailbox>(&m.id.to_string()).await.unwrap();
    let mut m = s.value;
    m.password = Some(
        w.store
            .put_secret(
                Some(m.org_id),
                &serversync_model::Secret::new("wrong password"),
            )
            .await
            .unwrap(),
    );
    w.store.update(&m, Some(s.version)).await.unwrap();
    let r = serversync_engine::test_enable::test_and_enable(&w.store, &w.config, m.id)
        .await
        .unwrap();
    assert!(!r.ok);
    let after = w
        .store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    assert_eq!(after.act.status, RunStatus::Failure);
    let e = after.telemetry.last_error.expect("the failure is recorded");
    assert_eq!(
        (e.step, e.code.as_str()),
        (
            Some(serversync_model::FailureStep::Authentication),
            "auth_failed"
        ),
        "{}",
        e.message
    );
}

/// Under the engine (the items pipeline), a change in the CRM reaches the server within
/// seconds, long before the next polling round (30 s at least).
async fn the_engine_follows_crm_changes(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    w.store.release_lease(&w.lease).await.unwrap();
    let config = EngineConfig {
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(6),
        ..w.config.clone()
    };
    let engine = serversync_engine::Engine::new(w.store.clone(), config);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(engine.run(stop.clone()));
    // The first round: nothing to do yet, but its position in the feed is committed.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while w
        .store
        .get_cursor(w.mailbox.id, "crm-feed:contacts")
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no first round within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.api
        .insert(&records::contact(
            &w.mailbox,
            "Quick Change",
            "quick@fabrikam.example",
        ))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while w.resource_with(&w.book, "FN:Quick Change").await.is_none() {
        if std::time::Instant::now() >= deadline {
            let m = w
                .store
                .fetch::<Mailbox>(&w.mailbox.id.to_string())
                .await
                .unwrap();
            panic!(
                "the new contact did not reach the server within 15 s: {:?} {:?}",
                m.value.act, m.value.telemetry
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    task.await.unwrap();
    let m = w
        .store
        .fetch::<Mailbox>(&w.mailbox.id.to_string())
        .await
        .unwrap()
        .value;
    let sync = m
        .telemetry
        .items_sync
        .expect("the round's decisions are kept");
    assert!(
        sync.decisions[0].what.contains("Quick Change"),
        "{:?}",
        sync.decisions
    );
}

/// A first round that outlasts the lease (hundreds of contacts, a lease of three seconds,
/// renewed every second; two seconds, renewed every 0.67 s, ran out on a loaded CI machine
/// before a renewal came) keeps the lease, finishes, and commits its positions: the next
/// round is quiet.
async fn a_long_round_keeps_its_lease(backend: Backend) {
    let mut w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let ttl = Duration::from_secs(3);
    w.config.lease_ttl = ttl;
    w.store.release_lease(&w.lease).await.unwrap();
    w.lease = w
        .store
        .acquire_lease(&format!("items:{}", w.mailbox.id), "test", ttl)
        .await
        .unwrap()
        .expect("the lease is free");
    const N: usize = 320;
    for i in 0..N {
        let c = records::contact(
            &w.mailbox,
            &format!("Contact {i:03}"),
            &format!("c{i}@fabrikam.example"),
        );
        w.api.insert(&c).await.unwrap();
    }
    let started = std::time::Instant::now();
    let r = w.round().await;
    let took = started.elapsed();
    assert_eq!(r.server_created, N, "{r:?}");
    assert!(
        took > ttl,
        "the round ({took:?}) must outlast the lease ({ttl:?}) for this test to mean anything"
    );
    assert_eq!(w.dav.hrefs(&w.book).await.unwrap().len(), N);
    let again = w.round().await;
    assert!(quiet(&again), "{again:?}");
}

macro_rules! both {
    ($name:ident, $sqlite:ident, $pg:ident $(, $arg:expr)*) => {
        #[tokio::test]
        async fn $sqlite() {
            $name(Backend::Sqlite $(, $arg)*).await;
        }
        #[tokio::test]
        async fn $pg() {
            $name(Backend::Postgres $(, $arg)*).await;
        }
    };
}

both!(
    each_side_reaches_the_other,
    round_trip_sqlite,
    round_trip_postgres
);
both!(
    conflicts_follow_the_policy,
    latest_change_wins_sqlite,
    latest_change_wins_postgres,
    ConflictPolicy::LatestChangeWins
);
both!(
    conflicts_follow_the_policy,
    crm_wins_sqlite,
    crm_wins_postgres,
    ConflictPolicy::CrmWins
);
both!(
    conflicts_follow_the_policy,
    server_wins_sqlite,
    server_wins_postgres,
    ConflictPolicy::ServerWins
);
both!(
    recurring_meetings_round_trip,
    recurring_sqlite,
    recurring_postgres
);
both!(
    deletes_are_guarded,
    deletes_guarded_sqlite,
    deletes_guarded_postgres
);
both!(
    an_independent_client_agrees,
    caldav_peer_sqlite,
    caldav_peer_postgres
);
both!(
    test_and_enable_probes_the_collections,
    test_enable_sqlite,
    test_enable_postgres
);
both!(
    the_engine_follows_crm_changes,
    engine_follows_crm_sqlite,
    engine_follows_crm_postgres
);
both!(
    a_long_round_keeps_its_lease,
    long_round_sqlite,
    long_round_postgres
);
