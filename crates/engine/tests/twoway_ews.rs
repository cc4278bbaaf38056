//! Two-way synchronization of appointments, contacts and tasks with Exchange Server over EWS,
//! against the Exchange test double (`serversync_testkit::ews`: EWS over HTTPS on 127.0.0.1,
//! every request checked against Microsoft's published schemas — an invalid one fails the
//! round as `ErrorSchemaValidation`), on SQLite and PostgreSQL. No Exchange Server can run
//! here; the double was checked against exchangelib (`crates/testkit/tests/ews_exchangelib.rs`).
//!
//! What a test asserts on the server side it reads from the double's store as EWS would
//! answer it; changes "on the server" are made as another client (Outlook) would. Dates are
//! relative to the run.

mod common;

use common::records::{self, minute, quiet};

use chrono::{DateTime, Duration as Days, Utc};
use serversync_connectors::TlsTrust;
use serversync_connectors::ews::items::{PROPERTY_SET, STAMP_PROPERTY};
use serversync_engine::twoway::{self, round::RoundReport};
use serversync_engine::{Admin, EngineConfig};
use serversync_model::Secret;
use serversync_model::crm::{Appointment, Contact, Occurrence, Recurrence, Task};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding, RunStatus};
use serversync_model::merge::ConflictPolicy;
use serversync_model::org::Organization;
use serversync_model::profile::{AuthenticationType, EmailServerProfile, Endpoint, ServerType};
use serversync_model::settings::{ActMethod, EmailSettings, IncomingMethod, OutgoingMethod};
use serversync_model::webhook::ChangeOrigin;
use serversync_store::{Backend, Col, LeaseGuard, Store};
use serversync_testkit::ews::{EwsConfig, EwsDouble};
use serversync_testkit::tls::TlsFiles;
use std::sync::Arc;
use std::time::Duration;

const SERVICE: &str = "CONTOSO\\svc-sync";
const PASSWORD: &str = "Sync-Pa55word!";
const ALICE: &str = "alice@localhost";

struct World {
    _guard: Box<dyn std::any::Any + Send>,
    _dir: tempfile::TempDir,
    double: EwsDouble,
    store: Store,
    /// Writes as the API makes them (origin `api`).
    api: Store,
    config: EngineConfig,
    mailbox: Mailbox,
    org_name: String,
    lease: LeaseGuard,
}

async fn world(backend: Backend, policy: ConflictPolicy) -> World {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = EwsDouble::start(
        &tls,
        EwsConfig {
            schema_dir: Some(serversync_testkit::ews::schema_dir()),
            ..EwsConfig::default()
        },
    )
    .await
    .unwrap();
    double.add_account(SERVICE, PASSWORD, true);
    double.add_mailbox(ALICE, None);
    let (guard, store) = common::open_store(backend).await;
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
    let now = Utc::now();
    let mut p = EmailServerProfile::new(
        org.id,
        "Exchange",
        ServerType::ExchangeServer,
        admin.id,
        now,
    );
    p.authentication = AuthenticationType::Impersonation;
    p.use_impersonation = true;
    p.auto_discover = false;
    let ews = Endpoint {
        location: double.ews_url(),
        port: double.port(),
        tls: serversync_model::profile::TlsMode::Implicit,
    };
    p.incoming = Some(ews.clone());
    p.outgoing = Some(ews);
    p.username = Some(SERVICE.into());
    p.password = Some(
        store
            .put_secret(Some(org.id), &Secret::new(PASSWORD))
            .await
            .unwrap(),
    );
    p.validate(false).expect("a valid Exchange profile");
    store.insert(&p).await.unwrap();
    let st = store
        .fetch::<EmailSettings>(&org.id.to_string())
        .await
        .unwrap();
    let mut settings = st.value;
    settings.conflict_policy = policy;
    store.update(&settings, Some(st.version)).await.unwrap();
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
    m.incoming_method = IncomingMethod::None;
    m.outgoing_method = OutgoingMethod::None;
    m.act_method = ActMethod::ServerSideSync;
    m.act.enabled = true;
    m.sync_with_this_org_only = true;
    store.insert(&m).await.unwrap();
    let config = EngineConfig {
        network: Arc::new(serversync_connectors::NetworkPolicy::loopback_allowed()),
        lease_ttl: Duration::from_secs(60),
        ..EngineConfig::new(Arc::new(
            TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap(),
        ))
    };
    let lease = store
        .acquire_lease(&format!("items:{}", m.id), "test", Duration::from_secs(600))
        .await
        .unwrap()
        .expect("the lease is free");
    World {
        _guard: guard,
        _dir: dir,
        double,
        api: store.with_origin(ChangeOrigin::Api),
        store,
        config,
        mailbox: m,
        org_name: org.name,
        lease,
    }
}

impl World {
    async fn round(&self) -> RoundReport {
        match twoway::sync_once(&self.store, &self.config, self.mailbox.id, &self.lease).await {
            Ok((r, _)) => r,
            Err(e) => panic!("the round failed: {e:?}"),
        }
    }

    /// The id and stored XML (every property, as EWS answers it) of the item of `folder`
    /// that holds the text `value` as the whole content of one of its properties.
    fn item(&self, folder: &str, value: &str) -> Option<(String, String)> {
        let needle = format!(">{value}<");
        self.double.items(ALICE, folder).into_iter().find_map(|i| {
            let xml = self.double.item_xml(ALICE, &i.id)?;
            xml.contains(&needle).then_some((i.id, xml))
        })
    }

    fn id(&self, folder: &str, value: &str) -> String {
        self.item(folder, value)
            .unwrap_or_else(|| panic!("no item {value} in {folder}"))
            .0
    }

    fn tracked(&self) -> String {
        format!("Tracked to {}", self.org_name)
    }

    /// The item writes the double received.
    fn writes(&self) -> usize {
        self.double
            .requests()
            .iter()
            .filter(|r| {
                matches!(
                    r.operation.as_str(),
                    "CreateItem" | "UpdateItem" | "DeleteItem"
                )
            })
            .count()
    }

    async fn crm_appointment(&self, subject: &str) -> Option<Appointment> {
        records::crm_appointment(&self.store, self.mailbox.org_id, subject).await
    }

    async fn crm_task(&self, subject: &str) -> Option<Task> {
        records::crm_task(&self.store, self.mailbox.org_id, subject).await
    }

    async fn crm_contact(&self, name: &str) -> Option<Contact> {
        records::crm_contact(&self.store, self.mailbox.org_id, name).await
    }
}

fn ews_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn categories(c: &str) -> String {
    format!("<Categories><String>{c}</String></Categories>")
}

/// Create, update and delete on each side reach the other within one round, for each of the
/// three record types; the sync's own writes never come back.
async fn each_side_reaches_the_other(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;

    // CRM → server: created, with the tracking category and the organization's stamp.
    let mut appt = records::appointment(&w.mailbox, "Quarterly review", Days::days(2));
    appt.time_zone = Some("Europe/Berlin".into());
    let task = records::task(&w.mailbox, "Send the offer");
    let contact = records::contact(&w.mailbox, "Ann Lee", "ann@fabrikam.example");
    w.api.insert(&appt).await.unwrap();
    w.api.insert(&task).await.unwrap();
    w.api.insert(&contact).await.unwrap();
    let r = w.round().await;
    assert_eq!(r.server_created, 3, "{r:?}");
    let (_, ev) = w.item("calendar", "Quarterly review").expect("the event");
    for needle in [
        "W. Europe Standard Time".to_owned(),
        ">Room 4<".to_owned(),
        format!(">{}<", w.tracked()),
        STAMP_PROPERTY.to_owned(),
        w.mailbox.org_id.to_string(),
    ] {
        assert!(ev.contains(&needle), "{needle} in {ev}");
    }
    let (_, c) = w.item("contacts", "Ann Lee").expect("the contact");
    for needle in [">Fabrikam<", ">ann@fabrikam.example<"] {
        assert!(c.contains(needle), "{needle} in {c}");
    }
    assert!(w.item("tasks", "Send the offer").is_some());

    // Nothing echoes: the next round writes nothing anywhere.
    let before = w.writes();
    let r = w.round().await;
    assert!(quiet(&r), "{r:?}");
    assert_eq!(w.writes(), before, "a quiet round writes nothing");

    // Server → CRM: items tracked in Outlook become records; untracked ones do not.
    let start = minute(Utc::now() + Days::days(4));
    let event = |subject: &str, hours: i64, extra: &str| {
        format!(
            "<CalendarItem><Subject>{subject}</Subject>{extra}<Start>{}</Start>\
             <End>{}</End></CalendarItem>",
            ews_time(start),
            ews_time(start + Days::hours(hours)),
        )
    };
    w.double.create_item(
        ALICE,
        "calendar",
        &event("Site visit", 2, &categories(&w.tracked())),
    );
    w.double
        .create_item(ALICE, "calendar", &event("Dentist", 1, ""));
    w.double.create_item(
        ALICE,
        "contacts",
        &format!(
            "<Contact>{}<DisplayName>Bo Chen</DisplayName><CompanyName>Contoso</CompanyName>\
             <EmailAddresses><Entry Key=\"EmailAddress1\">bo@contoso.example</Entry>\
             </EmailAddresses></Contact>",
            categories(&w.tracked())
        ),
    );
    w.double.create_item(
        ALICE,
        "tasks",
        &format!(
            "<Task><Subject>Prepare the demo</Subject>{}</Task>",
            categories(&w.tracked())
        ),
    );
    let r = w.round().await;
    assert_eq!(r.crm_created, 3, "{r:?}");
    let visit = w.crm_appointment("Site visit").await.expect("the event");
    assert_eq!(visit.starts_at, start);
    assert_eq!(visit.owner_id, w.mailbox.owner_id);
    assert!(w.crm_appointment("Dentist").await.is_none(), "untracked");
    let bo = w.crm_contact("Bo Chen").await.expect("the contact");
    assert_eq!(bo.emails, vec!["bo@contoso.example".to_owned()]);
    assert_eq!(bo.company.as_deref(), Some("Contoso"));
    assert!(w.crm_task("Prepare the demo").await.is_some());
    assert!(quiet(&w.round().await));

    // Updates, both ways.
    let id = w.id("calendar", "Site visit");
    w.double
        .change_item(ALICE, &id, &["<Location>Plant 2</Location>"], &[]);
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.job_title = Some("Buyer".into());
    w.api.update(&c, Some(s.version)).await.unwrap();
    let r = w.round().await;
    assert_eq!((r.crm_updated, r.server_updated), (1, 1), "{r:?}");
    let visit = w.crm_appointment("Site visit").await.unwrap();
    assert_eq!(visit.location.as_deref(), Some("Plant 2"));
    let (_, c) = w.item("contacts", "Ann Lee").unwrap();
    assert!(c.contains(">Buyer<"), "{c}");
    assert!(quiet(&w.round().await));

    // Deletes, both ways.
    w.api
        .delete::<Appointment>(&appt.id.to_string(), None)
        .await
        .unwrap();
    assert!(w.double.remove_item(ALICE, &w.id("contacts", "Bo Chen")));
    let r = w.round().await;
    assert_eq!((r.server_deleted, r.crm_deleted), (1, 1), "{r:?}");
    assert!(w.item("calendar", "Quarterly review").is_none());
    assert!(w.crm_contact("Bo Chen").await.is_none());
    assert!(quiet(&w.round().await));
}

/// The same field changed on both sides is decided by the policy, with an alert; items
/// stamped by another organization are left alone.
async fn conflicts_and_foreign_items(backend: Backend) {
    let w = world(backend, ConflictPolicy::ServerWins).await;
    let contact = records::contact(&w.mailbox, "Ann Lee", "ann@fabrikam.example");
    w.api.insert(&contact).await.unwrap();
    w.round().await;
    let id = w.id("contacts", "Ann Lee");
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.company = Some("CRM Corp".into());
    w.api.update(&c, Some(s.version)).await.unwrap();
    w.double
        .change_item(ALICE, &id, &["<CompanyName>Server Corp</CompanyName>"], &[]);
    let r = w.round().await;
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].1.field, "company");
    let c = w.crm_contact("Ann Lee").await.unwrap();
    assert_eq!(c.company.as_deref(), Some("Server Corp"));
    let (_, item) = w.item("contacts", "Ann Lee").unwrap();
    assert!(item.contains(">Server Corp<"), "{item}");
    let alert = w
        .store
        .list_all::<serversync_model::alert::Alert>(Some(w.mailbox.org_id), &[])
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.value.code == "sync_conflict")
        .expect("a conflict alert");
    for needle in ["company", "CRM Corp", "Server Corp"] {
        assert!(
            alert.value.message.contains(needle),
            "{}",
            alert.value.message
        );
    }
    assert!(quiet(&w.round().await));

    // Another organization's synchronized item, tracked to us by mistake: left alone.
    let start = minute(Utc::now() + Days::days(5));
    w.double.create_item(
        ALICE,
        "calendar",
        &format!(
            "<CalendarItem><Subject>Their meeting</Subject>{}<ExtendedProperty>\
             <ExtendedFieldURI PropertySetId=\"{PROPERTY_SET}\" PropertyName=\"{STAMP_PROPERTY}\" \
             PropertyType=\"String\"/><Value>{}</Value></ExtendedProperty>\
             <Start>{}</Start><End>{}</End></CalendarItem>",
            categories(&w.tracked()),
            serversync_model::OrgId::new(),
            ews_time(start),
            ews_time(start + Days::hours(1)),
        ),
    );
    let r = w.round().await;
    assert_eq!(r.crm_created, 0, "{r:?}");
    assert!(w.crm_appointment("Their meeting").await.is_none());
}

/// Test and enable of an Exchange Server mailbox's third direction: a test appointment,
/// contact and task are created, read back and deleted; a service account that may not
/// impersonate the mailbox is named as the failure.
async fn test_and_enable_probes_the_folders(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let s = w
        .store
        .fetch::<Mailbox>(&w.mailbox.id.to_string())
        .await
        .unwrap();
    let mut m = s.value;
    m.act.enabled = false;
    w.store.update(&m, Some(s.version)).await.unwrap();
    let r = serversync_engine::test_enable::test_and_enable(&w.store, &w.config, m.id)
        .await
        .unwrap();
    assert!(r.ok, "{}", r.message);
    for needle in [
        "appointments in calendar",
        "tasks in tasks",
        "contacts in contacts",
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
    for folder in ["calendar", "contacts", "tasks"] {
        assert!(
            w.double.items(ALICE, folder).is_empty(),
            "no test item left behind in {folder}"
        );
    }

    w.double.set_impersonation(SERVICE, false);
    let r = serversync_engine::test_enable::test_and_enable(&w.store, &w.config, m.id)
        .await
        .unwrap();
    assert!(!r.ok, "{}", r.message);
    let after = w
        .store
        .fetch::<Mailbox>(&m.id.to_string())
        .await
        .unwrap()
        .value;
    let e = after.telemetry.last_error.expect("the failure is recorded");
    assert_eq!(
        e.step,
        Some(serversync_model::FailureStep::Permission),
        "{}",
        e.message
    );
}

/// The requests of an operation the double received that name an occurrence.
fn occurrence_writes(w: &World) -> usize {
    w.double
        .requests()
        .iter()
        .filter(|r| r.body.contains("OccurrenceItemId"))
        .count()
}

async fn crm_series(w: &World, subject: &str) -> Recurrence {
    w.crm_appointment(subject)
        .await
        .unwrap_or_else(|| panic!("{subject} in the CRM"))
        .recurrence
        .expect("a series")
}

/// A recurring meeting with one moved and one cancelled occurrence round-trips unchanged, in
/// both directions: CRM → server → CRM and server → CRM → server.
async fn recurring_meetings_round_trip(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let mut appt = records::appointment(&w.mailbox, "Weekly sync", Days::days(1));
    appt.time_zone = Some("Europe/Berlin".into());
    let first = appt.starts_at;
    let series = Recurrence {
        rule: "FREQ=WEEKLY;COUNT=6".into(),
        cancelled: vec![first + Days::weeks(2)],
        changed: vec![Occurrence {
            original_start: first + Days::weeks(1),
            starts_at: first + Days::weeks(1) + Days::hours(2),
            ends_at: first + Days::weeks(1) + Days::hours(3),
            subject: Some("Weekly sync (later)".into()),
            location: Some("Room 9".into()),
            description: None,
        }],
    };
    appt.recurrence = Some(series.clone());
    w.api.insert(&appt).await.unwrap();
    let r = w.round().await;
    assert_eq!(r.server_created, 1, "{r:?}");
    let (id, xml) = w.item("calendar", "Weekly sync").expect("the series");
    for needle in [
        format!(
            "<t:DeletedOccurrence><t:Start>{}</t:Start>",
            ews_time(first + Days::weeks(2))
        ),
        format!(
            "<t:Start>{}</t:Start><t:End>{}</t:End><t:OriginalStart>{}</t:OriginalStart>",
            ews_time(first + Days::weeks(1) + Days::hours(2)),
            ews_time(first + Days::weeks(1) + Days::hours(3)),
            ews_time(first + Days::weeks(1)),
        ),
        "W. Europe Standard Time".to_owned(),
    ] {
        assert!(xml.contains(&needle), "{needle} in {xml}");
    }
    assert_eq!(occurrence_writes(&w), 2, "one UpdateItem, one DeleteItem");
    // Nothing echoes: the next round writes nothing anywhere.
    let before = w.writes();
    assert!(quiet(&w.round().await), "unchanged: nothing to write");
    assert_eq!(w.writes(), before);
    assert_eq!(crm_series(&w, "Weekly sync").await, series);
    // The server's copy reads back equal: a change of another field on the server changes
    // that field only.
    w.double
        .change_item(ALICE, &id, &["<Location>Room 5</Location>"], &[]);
    let r = w.round().await;
    assert_eq!((r.crm_updated, r.server_updated), (1, 0), "{r:?}");
    let back = w.crm_appointment("Weekly sync").await.unwrap();
    assert_eq!(back.location.as_deref(), Some("Room 5"));
    assert_eq!(back.recurrence.as_ref(), Some(&series));
    let before = w.writes();
    assert!(quiet(&w.round().await));
    assert_eq!(w.writes(), before);

    // From the server: another client's series, tracked, with a moved (and renamed) and a
    // cancelled occurrence.
    let start = minute(Utc::now() + Days::days(7));
    let master = w.double.create_item(
        ALICE,
        "calendar",
        &format!(
            "<CalendarItem><Subject>Standup</Subject>{}<Start>{}</Start><End>{}</End>\
             <Recurrence><DailyRecurrence><Interval>1</Interval></DailyRecurrence>\
             <NumberedRecurrence><StartDate>{}</StartDate><NumberOfOccurrences>5</NumberOfOccurrences>\
             </NumberedRecurrence></Recurrence></CalendarItem>",
            categories(&w.tracked()),
            ews_time(start),
            ews_time(start + Days::minutes(15)),
            start.format("%Y-%m-%d"),
        ),
    );
    w.double.cancel_occurrence(ALICE, &master, 3);
    w.double.change_occurrence(
        ALICE,
        &master,
        2,
        &[
            &format!(
                "<Start>{}</Start>",
                ews_time(start + Days::days(1) + Days::hours(1))
            ),
            &format!(
                "<End>{}</End>",
                ews_time(start + Days::days(1) + Days::hours(1) + Days::minutes(15))
            ),
            "<Subject>Standup (moved)</Subject>",
        ],
    );
    let r = w.round().await;
    assert_eq!(r.crm_created, 1, "{r:?}");
    let rec = crm_series(&w, "Standup").await;
    assert_eq!(rec.rule, "FREQ=DAILY;COUNT=5");
    assert_eq!(rec.cancelled, vec![start + Days::days(2)]);
    assert_eq!(
        rec.changed,
        vec![Occurrence {
            original_start: start + Days::days(1),
            starts_at: start + Days::days(1) + Days::hours(1),
            ends_at: start + Days::days(1) + Days::hours(1) + Days::minutes(15),
            subject: Some("Standup (moved)".into()),
            location: None,
            description: None,
        }]
    );
    let (before, occ) = (w.writes(), occurrence_writes(&w));
    assert!(quiet(&w.round().await), "unchanged both ways");
    assert_eq!(w.writes(), before);
    // Back to the server: a change of another field in the CRM is written, the server's
    // exceptions stay as they are and nothing is written to an occurrence.
    let s = w
        .store
        .list_all::<Appointment>(
            Some(w.mailbox.org_id),
            &[("kind", Col::text("appointment"))],
        )
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.value.subject == "Standup")
        .unwrap();
    let mut a = s.value;
    a.location = Some("Huddle room".into());
    w.api.update(&a, Some(s.version)).await.unwrap();
    let r = w.round().await;
    assert_eq!((r.server_updated, r.crm_updated), (1, 0), "{r:?}");
    assert_eq!(occurrence_writes(&w), occ);
    let xml = w.double.item_xml(ALICE, &master).unwrap();
    for needle in [
        ">Huddle room<".to_owned(),
        format!(
            "<t:DeletedOccurrence><t:Start>{}</t:Start>",
            ews_time(start + Days::days(2))
        ),
        format!(
            "<t:OriginalStart>{}</t:OriginalStart>",
            ews_time(start + Days::days(1))
        ),
    ] {
        assert!(xml.contains(&needle), "{needle} in {xml}");
    }
    let before = w.writes();
    assert!(quiet(&w.round().await));
    assert_eq!(w.writes(), before);
    assert_eq!(crm_series(&w, "Standup").await, rec);

    // A new exception made in the CRM reaches the server: the fourth occurrence is cancelled.
    let s = w
        .store
        .fetch::<Appointment>(&a.id.to_string())
        .await
        .unwrap();
    let mut a = s.value;
    a.recurrence
        .as_mut()
        .unwrap()
        .cancelled
        .push(start + Days::days(3));
    w.api.update(&a, Some(s.version)).await.unwrap();
    let r = w.round().await;
    assert_eq!(r.server_updated, 1, "{r:?}");
    let xml = w.double.item_xml(ALICE, &master).unwrap();
    assert!(
        xml.contains(&format!(
            "<t:DeletedOccurrence><t:Start>{}</t:Start>",
            ews_time(start + Days::days(3))
        )),
        "{xml}"
    );
    let before = w.writes();
    assert!(quiet(&w.round().await));
    assert_eq!(w.writes(), before);

    // Restoring a cancelled occurrence in the CRM: EWS cannot; the round goes on, an alert
    // names the meeting and why, nothing is written and the CRM keeps its values.
    let s = w
        .store
        .fetch::<Appointment>(&a.id.to_string())
        .await
        .unwrap();
    let mut a = s.value;
    a.recurrence
        .as_mut()
        .unwrap()
        .cancelled
        .retain(|t| *t != start + Days::days(3));
    w.api.update(&a, Some(s.version)).await.unwrap();
    let before = w.writes();
    let r = w.round().await;
    assert_eq!(r.server_updated, 0, "{r:?}");
    assert_eq!(w.writes(), before);
    let alert = w
        .store
        .list_all::<serversync_model::alert::Alert>(Some(w.mailbox.org_id), &[])
        .await
        .unwrap()
        .into_iter()
        .find(|a| a.value.code == "item_unmappable")
        .expect("an alert");
    for needle in ["Standup", "exdates", "cannot restore"] {
        assert!(
            alert.value.message.contains(needle),
            "{}",
            alert.value.message
        );
    }
    let xml = w.double.item_xml(ALICE, &master).unwrap();
    assert_eq!(xml.matches("<t:DeletedOccurrence>").count(), 2, "{xml}");
    assert_eq!(
        crm_series(&w, "Standup").await.cancelled,
        vec![start + Days::days(2)]
    );
}

/// The same field changed on both sides: each policy decides, with an alert naming the field
/// and both values; changes to different fields merge without a conflict.
async fn conflicts_follow_the_policy(backend: Backend, policy: ConflictPolicy) {
    let w = world(backend, policy).await;
    let contact = records::contact(&w.mailbox, "Ann Lee", "ann@fabrikam.example");
    w.api.insert(&contact).await.unwrap();
    w.round().await;
    let id = w.id("contacts", "Ann Lee");

    // Different fields: the CRM changes the job title, the server the name.
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.job_title = Some("Buyer".into());
    w.api.update(&c, Some(s.version)).await.unwrap();
    w.double.change_item(
        ALICE,
        &id,
        &["<DisplayName>Ann Lee-Smith</DisplayName>"],
        &[],
    );
    let r = w.round().await;
    assert!(r.conflicts.is_empty(), "{r:?}");
    let c = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    assert_eq!(c.value.full_name, "Ann Lee-Smith");
    assert_eq!(c.value.job_title.as_deref(), Some("Buyer"));
    let (_, xml) = w.item("contacts", "Ann Lee-Smith").expect("the contact");
    assert!(xml.contains(">Buyer<"), "{xml}");
    let before = w.writes();
    assert!(quiet(&w.round().await));
    assert_eq!(w.writes(), before);

    // The same field: the company, to different values on each side (the server's change is
    // made after the CRM's, so "latest change wins" keeps the server's).
    let mut c = c.clone();
    c.value.company = Some("CRM Corp".into());
    w.api.update(&c.value, Some(c.version)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    w.double
        .change_item(ALICE, &id, &["<CompanyName>Server Corp</CompanyName>"], &[]);
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
    let (_, xml) = w.item("contacts", "Ann Lee-Smith").unwrap();
    assert!(xml.contains(&format!(">{expected}<")), "{xml}");
    let alert = w
        .store
        .list_all::<serversync_model::alert::Alert>(Some(w.mailbox.org_id), &[])
        .await
        .unwrap()
        .into_iter()
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
    // Settled: the next round is quiet and writes nothing.
    let before = w.writes();
    assert!(quiet(&w.round().await));
    assert_eq!(w.writes(), before);
}

/// A meeting the user attends (its organizer is someone else): deleted on the server it stays
/// in the CRM, deleted in the CRM it stays on the server; the organizer's own meeting goes both
/// ways.
async fn deletes_are_guarded(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let start = minute(Utc::now() + Days::days(3));
    let invitation = |subject: &str| {
        format!(
            "<CalendarItem><Subject>{subject}</Subject>{}<Start>{}</Start><End>{}</End>\
             <RequiredAttendees><Attendee><Mailbox><EmailAddress>{ALICE}</EmailAddress>\
             </Mailbox></Attendee></RequiredAttendees></CalendarItem>",
            categories(&w.tracked()),
            ews_time(start),
            ews_time(start + Days::hours(1)),
        )
    };
    let boss = "<Organizer><Mailbox><Name>Boss</Name><EmailAddress>boss@contoso.example</EmailAddress>\
                <RoutingType>SMTP</RoutingType></Mailbox></Organizer>";
    // Attendee's copies in the mailbox (the organizer is someone else), and one of the user's
    // own meetings.
    let theirs = w
        .double
        .create_item(ALICE, "calendar", &invitation("Their meeting"));
    w.double.change_item(ALICE, &theirs, &[boss], &[]);
    let other = w
        .double
        .create_item(ALICE, "calendar", &invitation("Their review"));
    w.double.change_item(ALICE, &other, &[boss], &[]);
    let own = w
        .double
        .create_item(ALICE, "calendar", &invitation("My meeting"));
    let r = w.round().await;
    assert_eq!(r.crm_created, 3, "{r:?}");
    let meeting = w.crm_appointment("Their meeting").await.unwrap();
    assert_eq!(
        meeting.organizer.as_ref().map(|o| o.address.as_str()),
        Some("boss@contoso.example")
    );

    // Deleted on the server (the user removed the invitation): kept in the CRM.
    assert!(w.double.remove_item(ALICE, &theirs));
    assert!(w.double.remove_item(ALICE, &own));
    let r = w.round().await;
    assert_eq!(r.crm_deleted, 1, "only the user's own meeting: {r:?}");
    assert!(w.crm_appointment("Their meeting").await.is_some());
    assert!(w.crm_appointment("My meeting").await.is_none());

    // Deleted in the CRM: the attendee's copy stays on the server.
    let review = w.crm_appointment("Their review").await.unwrap();
    w.api
        .delete::<Appointment>(&review.id.to_string(), None)
        .await
        .unwrap();
    let before = w.writes();
    let r = w.round().await;
    assert_eq!(r.server_deleted, 0, "{r:?}");
    assert_eq!(w.writes(), before, "no DeleteItem");
    assert!(w.item("calendar", "Their review").is_some());
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
    conflicts_and_foreign_items,
    conflicts_sqlite,
    conflicts_postgres
);
both!(
    test_and_enable_probes_the_folders,
    test_enable_sqlite,
    test_enable_postgres
);
both!(
    recurring_meetings_round_trip,
    recurring_sqlite,
    recurring_postgres
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
    deletes_are_guarded,
    deletes_guarded_sqlite,
    deletes_guarded_postgres
);
