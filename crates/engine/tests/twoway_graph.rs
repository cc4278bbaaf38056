//! Two-way synchronization of appointments, contacts and tasks with Exchange Online over
//! Microsoft Graph, against the Graph test double (`serversync_testkit::graph`: Graph v1.0
//! over HTTPS on 127.0.0.1, every JSON body checked against Graph's published CSDL), on
//! SQLite and PostgreSQL. No Exchange Online can run here; the double was checked against
//! Microsoft's own msgraph-sdk (`crates/testkit/tests/graph_msgraph.rs`).
//!
//! What a test asserts on the server side it reads from the double's state as Graph would
//! answer it; changes "on the server" are made as another client (Outlook) would. Dates are
//! relative to the run.

mod common;

use common::records::{self, minute, quiet};

use chrono::{DateTime, Duration as Days, Utc};
use serde_json::{Value, json};
use serversync_connectors::TlsTrust;
use serversync_engine::twoway::{self, round::RoundReport};
use serversync_engine::{Admin, EngineConfig};
use serversync_model::Secret;
use serversync_model::crm::{
    ActivityParty, Appointment, Contact, Occurrence, PartyRole, Recurrence, Task,
};
use serversync_model::mailbox::{ApprovalStatus, Mailbox, MailboxRegarding, RunStatus};
use serversync_model::merge::ConflictPolicy;
use serversync_model::org::Organization;
use serversync_model::profile::{
    AuthenticationType, EmailServerProfile, OAuthAuthority, OAuthSettings, ServerType,
};
use serversync_model::settings::{ActMethod, EmailSettings, IncomingMethod, OutgoingMethod};
use serversync_model::webhook::ChangeOrigin;
use serversync_store::{Backend, LeaseGuard, Store};
use serversync_testkit::graph::{GraphConfig, GraphDouble, ItemKind, csdl_path};
use serversync_testkit::tls::TlsFiles;
use std::sync::Arc;
use std::time::Duration;

const TENANT: &str = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
const APP: &str = "0a1b2c3d-1111-4222-8333-944455566677";
const SECRET: &str = "kQ8~app-secret-value";
const ALICE: &str = "alice@contoso.test";
const ROLES: &[&str] = &[
    "Calendars.ReadWrite",
    "Contacts.ReadWrite",
    "Tasks.ReadWrite.All",
];

struct World {
    _guard: Box<dyn std::any::Any + Send>,
    _dir: tempfile::TempDir,
    double: GraphDouble,
    store: Store,
    /// Writes as the API makes them (origin `api`).
    api: Store,
    config: EngineConfig,
    mailbox: Mailbox,
    org_name: String,
    lease: LeaseGuard,
    /// The default To Do list's collection path.
    tasks: String,
}

async fn world(backend: Backend, policy: ConflictPolicy) -> World {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = GraphDouble::start(
        &tls,
        GraphConfig {
            csdl: Some(csdl_path()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    double.add_tenant(TENANT, "contoso.test");
    double.add_app(TENANT, APP, SECRET, ROLES);
    double.add_mailbox(TENANT, ALICE);
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
        graph_url: Some(double.graph_url()),
        login_url: Some(double.login_url()),
        ..EngineConfig::new(Arc::new(
            TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap(),
        ))
    };
    let lease = store
        .acquire_lease(&format!("items:{}", m.id), "test", Duration::from_secs(600))
        .await
        .unwrap()
        .expect("the lease is free");
    let tasks = format!(
        "todo/lists/{}",
        double.default_container(ALICE, ItemKind::Task)
    );
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
        tasks,
    }
}

impl World {
    async fn round(&self) -> RoundReport {
        match twoway::sync_once(&self.store, &self.config, self.mailbox.id, &self.lease).await {
            Ok((r, _)) => r,
            Err(e) => panic!("the round failed: {e:?}"),
        }
    }

    /// The item of `collection` whose `field` is `value`, as Graph answers it.
    fn item(&self, collection: &str, field: &str, value: &str) -> Option<Value> {
        self.double
            .items(ALICE, collection)
            .into_iter()
            .find(|i| i[field].as_str() == Some(value))
    }

    fn tracked(&self) -> String {
        format!("Tracked to {}", self.org_name)
    }

    /// Writes the double received (POST, PATCH, DELETE on items).
    fn writes(&self) -> usize {
        self.double
            .requests()
            .iter()
            .filter(|r| {
                matches!(r.method.as_str(), "POST" | "PATCH" | "DELETE")
                    && !r.path.contains("$batch")
                    && !r.path.contains("oauth2")
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

/// A time as values (and Graph's `originalStart`) write it.
fn iv_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn graph_time(t: DateTime<Utc>) -> Value {
    json!({"dateTime": t.format("%Y-%m-%dT%H:%M:%S.0000000").to_string(), "timeZone": "UTC"})
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
    let ev = w
        .item("calendar", "subject", "Quarterly review")
        .expect("the event");
    assert_eq!(ev["start"]["timeZone"], "Europe/Berlin", "{ev}");
    assert_eq!(ev["location"]["displayName"], "Room 4", "{ev}");
    assert!(
        ev["categories"]
            .as_array()
            .unwrap()
            .contains(&json!(w.tracked())),
        "{ev}"
    );
    let c = w
        .item("contacts", "displayName", "Ann Lee")
        .expect("the contact");
    assert_eq!(c["companyName"], "Fabrikam", "{c}");
    assert_eq!(c["emailAddresses"][0]["address"], "ann@fabrikam.example");
    assert!(w.item(&w.tasks, "title", "Send the offer").is_some());

    // Nothing echoes: the next round writes nothing anywhere.
    let before = w.writes();
    let r = w.round().await;
    assert!(quiet(&r), "{r:?}");
    assert_eq!(w.writes(), before, "a quiet round writes nothing");

    // Server → CRM: items tracked in Outlook become records; untracked ones do not.
    let start = minute(Utc::now() + Days::days(4));
    w.double.create_item(
        ALICE,
        "calendar",
        json!({"subject": "Site visit", "start": graph_time(start),
               "end": graph_time(start + Days::hours(2)), "categories": [w.tracked()]}),
    );
    w.double.create_item(
        ALICE,
        "calendar",
        json!({"subject": "Dentist", "start": graph_time(start),
               "end": graph_time(start + Days::hours(1))}),
    );
    w.double.create_item(
        ALICE,
        "contacts",
        json!({"displayName": "Bo Chen", "companyName": "Contoso",
               "emailAddresses": [{"address": "bo@contoso.example", "name": "Bo Chen"}],
               "categories": [w.tracked()]}),
    );
    w.double.create_item(
        ALICE,
        &w.tasks,
        json!({"title": "Prepare the demo", "categories": [w.tracked()]}),
    );
    let r = w.round().await;
    assert_eq!(r.crm_created, 3, "{r:?}");
    let visit = w.crm_appointment("Site visit").await.expect("the event");
    assert_eq!(visit.starts_at, start);
    assert_eq!(visit.owner_id, w.mailbox.owner_id);
    assert!(w.crm_appointment("Dentist").await.is_none(), "untracked");
    let bo = w.crm_contact("Bo Chen").await.expect("the contact");
    assert_eq!(bo.emails, vec!["bo@contoso.example".to_owned()]);
    assert!(w.crm_task("Prepare the demo").await.is_some());
    assert!(quiet(&w.round().await));

    // Updates, both ways.
    let id = w.item("calendar", "subject", "Site visit").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        w.double
            .update_item(ALICE, &id, json!({"location": {"displayName": "Plant 2"}}))
    );
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
    let c = w.item("contacts", "displayName", "Ann Lee").unwrap();
    assert_eq!(c["jobTitle"], "Buyer", "{c}");
    assert!(quiet(&w.round().await));

    // Deletes, both ways.
    w.api
        .delete::<Appointment>(&appt.id.to_string(), None)
        .await
        .unwrap();
    let bo_id = w.item("contacts", "displayName", "Bo Chen").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(w.double.delete_item(ALICE, &bo_id));
    let r = w.round().await;
    assert_eq!((r.server_deleted, r.crm_deleted), (1, 1), "{r:?}");
    assert!(w.item("calendar", "subject", "Quarterly review").is_none());
    assert!(w.crm_contact("Bo Chen").await.is_none());
    assert!(quiet(&w.round().await));

    let v = w.double.schema_violations();
    assert!(v.is_empty(), "CSDL violations: {v:#?}");
}

/// The same field changed on both sides is decided by the policy, with an alert; items
/// stamped by another organization are left alone.
async fn conflicts_and_foreign_items(backend: Backend) {
    let w = world(backend, ConflictPolicy::ServerWins).await;
    let contact = records::contact(&w.mailbox, "Ann Lee", "ann@fabrikam.example");
    w.api.insert(&contact).await.unwrap();
    w.round().await;
    let id = w.item("contacts", "displayName", "Ann Lee").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.company = Some("CRM Corp".into());
    w.api.update(&c, Some(s.version)).await.unwrap();
    assert!(
        w.double
            .update_item(ALICE, &id, json!({"companyName": "Server Corp"}))
    );
    let r = w.round().await;
    assert_eq!(r.conflicts.len(), 1, "{r:?}");
    assert_eq!(r.conflicts[0].1.field, "company");
    let c = w.crm_contact("Ann Lee").await.unwrap();
    assert_eq!(c.company.as_deref(), Some("Server Corp"));
    let item = w.item("contacts", "displayName", "Ann Lee").unwrap();
    assert_eq!(item["companyName"], "Server Corp");
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
    let uid = "other-org-1@serversync";
    w.double.create_item(
        ALICE,
        "calendar",
        json!({"subject": "Their meeting", "start": graph_time(start),
               "end": graph_time(start + Days::hours(1)), "categories": [w.tracked()],
               "singleValueExtendedProperties": [
                   {"id": serversync_connectors::graph::itemmap::UID_PROPERTY, "value": uid},
                   {"id": serversync_connectors::graph::itemmap::STAMP_PROPERTY,
                    "value": serversync_model::OrgId::new().to_string()}]}),
    );
    let r = w.round().await;
    assert_eq!(r.crm_created, 0, "{r:?}");
    assert!(w.crm_appointment("Their meeting").await.is_none());
}

/// The same field changed on both sides: each policy decides, with an alert naming the field
/// and both values; changes to different fields merge without a conflict.
async fn conflicts_follow_the_policy(backend: Backend, policy: ConflictPolicy) {
    let w = world(backend, policy).await;
    let contact = records::contact(&w.mailbox, "Ann Lee", "ann@fabrikam.example");
    w.api.insert(&contact).await.unwrap();
    assert_eq!(w.round().await.server_created, 1);
    let id = w.item("contacts", "displayName", "Ann Lee").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Different fields: the CRM changes the job title, the server (Outlook) the name.
    let s = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    let mut c = s.value;
    c.job_title = Some("Buyer".into());
    w.api.update(&c, Some(s.version)).await.unwrap();
    assert!(w.double.update_item(
        ALICE,
        &id,
        json!({"displayName": "Ann Lee-Smith", "givenName": "Ann", "surname": "Lee-Smith"})
    ));
    let r = w.round().await;
    assert!(r.conflicts.is_empty(), "{r:?}");
    let c = w
        .store
        .fetch::<Contact>(&contact.id.to_string())
        .await
        .unwrap();
    assert_eq!(c.value.full_name, "Ann Lee-Smith");
    assert_eq!(c.value.job_title.as_deref(), Some("Buyer"));
    let item = w.item("contacts", "id", &id).unwrap();
    assert_eq!(
        (&item["displayName"], &item["jobTitle"]),
        (&json!("Ann Lee-Smith"), &json!("Buyer")),
        "{item}"
    );
    assert!(quiet(&w.round().await));

    // The same field: the company, to different values on each side (the server's change is
    // made after the CRM's, with a later lastModifiedDateTime, so "latest change wins" keeps
    // the server's).
    let mut c = c.clone();
    c.value.company = Some("CRM Corp".into());
    w.api.update(&c.value, Some(c.version)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        w.double
            .update_item(ALICE, &id, json!({"companyName": "Server Corp"}))
    );
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
    let item = w.item("contacts", "id", &id).unwrap();
    assert_eq!(item["companyName"], expected, "{item}");
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
    let v = w.double.schema_violations();
    assert!(v.is_empty(), "CSDL violations: {v:#?}");
}

/// A delete by an attendee does not propagate: a meeting someone else organizes, deleted
/// (declined) in the attendee's Outlook, stays in the CRM — whether it came from the CRM or
/// from the server.
async fn deletes_are_guarded(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let boss = ActivityParty {
        role: PartyRole::From,
        address: "boss@contoso.example".into(),
        display_name: None,
        resolved: None,
    };
    // In the CRM first: a meeting organized by someone else, which the user attends.
    let mut meeting = records::appointment(&w.mailbox, "Their meeting", Days::days(2));
    meeting.organizer = Some(boss.clone());
    meeting.attendees = vec![ActivityParty {
        role: PartyRole::To,
        address: ALICE.into(),
        display_name: None,
        resolved: None,
    }];
    w.api.insert(&meeting).await.unwrap();
    assert_eq!(w.round().await.server_created, 1);
    let id = w.item("calendar", "subject", "Their meeting").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // On the server first: an invitation from the boss in Alice's calendar, tracked.
    let start = minute(Utc::now() + Days::days(3));
    let invite = w.double.create_item(
        ALICE,
        "calendar",
        json!({"subject": "Board prep", "start": graph_time(start),
               "end": graph_time(start + Days::hours(1)), "categories": [w.tracked()],
               "organizer": {"emailAddress": {"address": "boss@contoso.example"}},
               "attendees": [{"emailAddress": {"address": ALICE}, "type": "required"}]}),
    );
    let r = w.round().await;
    assert_eq!(r.crm_created, 1, "{r:?}");
    let prep = w
        .crm_appointment("Board prep")
        .await
        .expect("the invitation");
    assert_eq!(
        prep.organizer.as_ref().map(|o| o.address.as_str()),
        Some("boss@contoso.example")
    );

    // Alice deletes both in Outlook: neither delete reaches the CRM.
    assert!(w.double.delete_item(ALICE, &id));
    assert!(w.double.delete_item(ALICE, &invite));
    let r = w.round().await;
    assert_eq!(r.crm_deleted, 0, "{r:?}");
    for (subject, record) in [("Their meeting", meeting.id), ("Board prep", prep.id)] {
        assert!(
            w.store
                .get::<Appointment>(&record.to_string())
                .await
                .unwrap()
                .is_some(),
            "{subject} is still in the CRM"
        );
    }
    // The user's own meeting, deleted in Outlook, is deleted in the CRM (the guard is the
    // organizer, not every delete).
    let own = records::appointment(&w.mailbox, "My meeting", Days::days(2));
    w.api.insert(&own).await.unwrap();
    assert_eq!(w.round().await.server_created, 1);
    let own_id = w.item("calendar", "subject", "My meeting").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(w.double.delete_item(ALICE, &own_id));
    let r = w.round().await;
    assert_eq!(r.crm_deleted, 1, "{r:?}");
    assert!(
        w.store
            .get::<Appointment>(&own.id.to_string())
            .await
            .unwrap()
            .is_none()
    );
}

/// A recurring meeting with one moved and one cancelled occurrence round-trips unchanged, in
/// both directions (CRM → server → CRM and server → CRM → server). The series run in UTC, so
/// no daylight-saving change between their occurrences can move them (the zones of a series
/// are covered with fixed dates in the connector's tests).
async fn recurring_meetings_round_trip(backend: Backend) {
    let w = world(backend, ConflictPolicy::LatestChangeWins).await;
    let window = |id: &str| {
        w.double.instances(
            ALICE,
            id,
            Utc::now() - Days::days(30),
            Utc::now() + Days::days(365),
        )
    };

    // From the CRM.
    let mut appt = records::appointment(&w.mailbox, "Weekly sync", Days::days(1));
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
    let ev = w
        .item("calendar", "subject", "Weekly sync")
        .expect("the series");
    assert_eq!(ev["type"], "seriesMaster", "{ev}");
    let id = ev["id"].as_str().unwrap().to_owned();
    let instances = window(&id);
    assert_eq!(instances.len(), 5, "one cancelled: {instances:#?}");
    let cancelled = first + Days::weeks(2);
    assert!(
        instances
            .iter()
            .all(|i| i["originalStart"] != json!(iv_time(cancelled))),
        "{instances:#?}"
    );
    let ex: Vec<&Value> = instances
        .iter()
        .filter(|i| i["type"] == "exception")
        .collect();
    assert_eq!(ex.len(), 1, "{instances:#?}");
    assert_eq!(ex[0]["subject"], "Weekly sync (later)");
    assert_eq!(
        ex[0]["originalStart"],
        json!(iv_time(first + Days::weeks(1)))
    );
    assert_eq!(
        ex[0]["start"],
        graph_time(first + Days::weeks(1) + Days::hours(2))
    );
    let before = w.writes();
    let r = w.round().await;
    assert!(quiet(&r), "unchanged: nothing to write {r:?}");
    assert_eq!(w.writes(), before);
    let back = w.crm_appointment("Weekly sync").await.unwrap();
    assert_eq!(back.recurrence, appt.recurrence, "read back unchanged");

    // From the server: another client's series, tracked, with a moved and a cancelled
    // occurrence.
    let start = minute(Utc::now() + Days::days(7));
    let sid = w.double.create_item(
        ALICE,
        "calendar",
        json!({"subject": "Standup", "start": graph_time(start),
               "end": graph_time(start + Days::minutes(15)), "categories": [w.tracked()],
               "recurrence": {
                   "pattern": {"type": "daily", "interval": 1},
                   "range": {"type": "numbered", "numberOfOccurrences": 5,
                             "startDate": start.format("%Y-%m-%d").to_string(),
                             "recurrenceTimeZone": "UTC"}}}),
    );
    let at = |t: DateTime<Utc>| {
        window(&sid)
            .into_iter()
            .find(|i| i["originalStart"] == json!(iv_time(t)))
            .and_then(|i| i["id"].as_str().map(str::to_owned))
            .expect("the occurrence")
    };
    let moved = at(start + Days::days(1));
    assert!(w.double.update_item(
        ALICE,
        &moved,
        json!({"subject": "Standup (moved)",
               "start": graph_time(start + Days::days(1) + Days::hours(1)),
               "end": graph_time(start + Days::days(1) + Days::hours(1) + Days::minutes(15))})
    ));
    let gone = at(start + Days::days(2));
    assert!(w.double.delete_item(ALICE, &gone));
    assert_eq!(w.round().await.crm_created, 1);
    let standup = w.crm_appointment("Standup").await.expect("the series");
    let rec = standup.recurrence.as_ref().expect("its recurrence");
    assert_eq!(rec.rule, "FREQ=DAILY;COUNT=5");
    assert_eq!(rec.cancelled, vec![start + Days::days(2)]);
    assert_eq!(rec.changed.len(), 1, "{rec:?}");
    assert_eq!(rec.changed[0].original_start, start + Days::days(1));
    assert_eq!(
        rec.changed[0].starts_at,
        start + Days::days(1) + Days::hours(1)
    );
    assert_eq!(rec.changed[0].subject.as_deref(), Some("Standup (moved)"));
    assert!(quiet(&w.round().await), "unchanged both ways");

    // And back: a change in the CRM is written without touching the exceptions.
    let s = w
        .store
        .fetch::<Appointment>(&standup.id.to_string())
        .await
        .unwrap();
    let mut a = s.value;
    a.location = Some("Room 7".into());
    w.api.update(&a, Some(s.version)).await.unwrap();
    let r = w.round().await;
    assert_eq!(r.server_updated, 1, "{r:?}");
    let instances = window(&sid);
    assert_eq!(instances.len(), 4, "still cancelled: {instances:#?}");
    let ex: Vec<&Value> = instances
        .iter()
        .filter(|i| i["type"] == "exception")
        .collect();
    assert_eq!(ex.len(), 1, "{instances:#?}");
    assert_eq!(ex[0]["subject"], "Standup (moved)");
    let r = w.round().await;
    assert!(quiet(&r), "{r:?}");
    let again = w.crm_appointment("Standup").await.unwrap();
    assert_eq!(again.recurrence, standup.recurrence);
    assert_eq!(again.location.as_deref(), Some("Room 7"));

    let v = w.double.schema_violations();
    assert!(v.is_empty(), "CSDL violations: {v:#?}");
}

/// Test and enable of an Exchange Online mailbox's third direction: a test event, contact
/// and task are created, read back and deleted; without the permission, the failure names it.
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
    for collection in ["calendar", "contacts", w.tasks.as_str()] {
        assert!(
            w.double.items(ALICE, collection).is_empty(),
            "no test item left behind in {collection}"
        );
    }
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
both!(
    recurring_meetings_round_trip,
    recurring_sqlite,
    recurring_postgres
);
