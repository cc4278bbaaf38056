//! The EWS item store (`ews::items::EwsItemStore`) against the Exchange test double, which
//! validates every request against Microsoft's published schemas (an invalid one fails as
//! `ErrorSchemaValidation`): appointments, contacts and tasks round-trip their values through
//! create, get, update and delete; a stale ChangeKey is a conflict showing the current item;
//! an item another client deleted is gone; SyncFolderItems reports creates, updates and
//! deletes since a state, in pages; a state the server refuses is the distinct
//! `sync_token_invalid`; a create repeated after a lost answer finds its first attempt; an
//! item that cannot be mapped is reported unreadable. Dates are relative to the run.

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::{Value, json};
use serversync_connectors::dav::client::SYNC_TOKEN_INVALID;
use serversync_connectors::ews::items::{EwsItemStore, PROPERTY_SET, UID_PROPERTY};
use serversync_connectors::ews::{Acting, EwsClient, EwsSettings};
use serversync_connectors::items::{ItemStore, RemoteItem, Written};
use serversync_connectors::{ConnectOptions, Login, NetworkPolicy, Secret, StepLog, TlsTrust};
use serversync_model::itemvalues::synced_fields;
use serversync_model::profile::AuthProtocol;
use serversync_model::sync::ServerTokenCursor;
use serversync_model::webhook::RecordType;
use serversync_testkit::ews::{EwsConfig, EwsDouble, Fault};
use serversync_testkit::tls::TlsFiles;
use std::sync::Arc;

const SERVICE: &str = "CONTOSO\\svc-sync";
const PASSWORD: &str = "Sync-Pa55word!";
const ALICE: &str = "alice@localhost";

struct Fixture {
    double: EwsDouble,
    opts: ConnectOptions,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let cfg = EwsConfig {
        schema_dir: Some(serversync_testkit::ews::schema_dir()),
        ..EwsConfig::default()
    };
    let double = EwsDouble::start(&tls, cfg).await.unwrap();
    double.add_account(SERVICE, PASSWORD, true);
    double.add_mailbox(ALICE, None);
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap());
    let opts = ConnectOptions::new(trust)
        .with_policy(NetworkPolicy::loopback_allowed())
        .with_timeout(std::time::Duration::from_secs(20));
    Fixture {
        double,
        opts,
        _dir: dir,
    }
}

impl Fixture {
    async fn store(&self) -> EwsItemStore {
        let settings = EwsSettings {
            url: self.double.ews_url(),
            protocol: AuthProtocol::AutoDetect,
            login: Login::password(SERVICE, Secret::new(PASSWORD)),
            acting: Acting::Impersonate(ALICE.into()),
            pinned: Vec::new(),
        };
        let client = EwsClient::connect(settings, &self.opts, &mut StepLog::new())
            .await
            .unwrap();
        EwsItemStore::new(client)
    }

    fn count(&self, op: &str) -> usize {
        self.double
            .requests()
            .iter()
            .filter(|r| r.operation == op && r.authenticated_as.is_some())
            .count()
    }
}

/// The next whole hour plus `days` (so no test depends on the date it runs).
fn at(days: i64, hours: i64) -> DateTime<Utc> {
    Utc::now().duration_trunc(Duration::hours(1)).unwrap()
        + Duration::days(days + 1)
        + Duration::hours(hours)
}

fn t(d: DateTime<Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn appointment(uid: &str) -> Value {
    json!({
        "uid": uid,
        "subject": "Quarterly review",
        "description": "Agenda:\n1. Numbers\n2. Plans & <risks>",
        "location": "Room 1",
        "start": t(at(3, 0)),
        "end": t(at(3, 1)),
        "time_zone": "Europe/Berlin",
        "organizer": ALICE,
        "attendees": ["bob@example.com", "carol@example.com"],
        "state": "open",
        "rrule": "FREQ=WEEKLY;INTERVAL=2;COUNT=6",
        "categories": ["Tracked to Contoso"],
        "stamp": "org-contoso",
    })
}

fn contact(uid: &str) -> Value {
    json!({
        "uid": uid,
        "full_name": "Ann Marie Lee",
        "emails": ["ann@example.com", "a.lee@example.org"],
        "company": "Fabrikam",
        "job_title": "Buyer",
        "phones": ["+1 555 0100", "+1 555 0101"],
        "categories": ["Tracked to Contoso"],
        "stamp": "org-contoso",
    })
}

fn task(uid: &str) -> Value {
    json!({
        "uid": uid,
        "subject": "Call about the offer",
        "description": "Ask for the signed copy",
        "due": t(at(2, 8)),
        "percent_complete": 50,
        "state": "open",
        "categories": [],
        "stamp": "org-contoso",
    })
}

/// The values as both sides compare them, with the meta fields serversync writes.
fn same(written: &Value, read: &Value) {
    assert_eq!(
        synced_fields(read),
        synced_fields(written),
        "read {read:#}\nwritten {written:#}"
    );
    for meta in ["uid", "stamp"] {
        assert_eq!(read[meta], written[meta], "{meta}: {read:#}");
    }
    let cats = |v: &Value| v["categories"].as_array().cloned().unwrap_or_default();
    assert_eq!(cats(read), cats(written), "categories: {read:#}");
    assert!(read["modified"].is_string(), "{read:#}");
}

fn done(w: Written) -> (String, String) {
    match w {
        Written::Done { id, version } => (id, version),
        other => panic!("not written: {other:?}"),
    }
}

fn conflict(w: Written) -> RemoteItem {
    match w {
        Written::Conflict { current } => current,
        other => panic!("not a conflict: {other:?}"),
    }
}

#[tokio::test]
async fn appointments_contacts_and_tasks_round_trip_create_get_update_delete() {
    let f = fixture().await;
    let mut s = f.store().await;
    let cases = [
        ("calendar", RecordType::Appointment, appointment("a-1")),
        ("contacts", RecordType::Contact, contact("c-1")),
        ("tasks", RecordType::Task, task("t-1")),
    ];
    for (collection, kind, values) in cases {
        let (id, v1) = done(s.create(collection, kind, &values).await.unwrap());
        let got = s.get(collection, &id).await.unwrap().expect("created");
        assert_eq!((got.kind, got.version.as_str()), (kind, v1.as_str()));
        same(&values, &got.values);

        // Every mapped field changes, and some go away.
        let mut changed = values.clone();
        match kind {
            RecordType::Appointment => {
                changed["subject"] = json!("Quarterly review (moved)");
                changed["start"] = json!(t(at(4, 2)));
                changed["end"] = json!(t(at(4, 3)));
                changed["location"] = Value::Null;
                changed["attendees"] = json!(["bob@example.com"]);
                changed["time_zone"] = json!("America/New_York");
                changed["rrule"] = json!("FREQ=MONTHLY;BYDAY=-1FR;UNTIL=20990101T090000Z");
                changed["stamp"] = Value::Null;
            }
            RecordType::Contact => {
                changed["full_name"] = json!("Ann Lee-Smith");
                changed["emails"] = json!(["ann@example.com"]);
                changed["company"] = Value::Null;
                changed["phones"] = json!(["+1 555 0199"]);
                changed["categories"] = json!([]);
            }
            _ => {
                changed["state"] = json!("completed");
                changed["percent_complete"] = json!(100);
                changed["due"] = Value::Null;
                changed["description"] = Value::Null;
            }
        }
        if kind == RecordType::Appointment {
            // UNTIL reads back as the last occurrence's start (the series' time of day).
            let start: DateTime<Utc> = changed["start"].as_str().unwrap().parse().unwrap();
            changed["rrule"] = json!(format!(
                "FREQ=MONTHLY;BYDAY=-1FR;UNTIL=20990101T{}Z",
                start.format("%H%M%S")
            ));
        }
        let (id2, v2) = done(s.update(collection, &id, &v1, &changed).await.unwrap());
        assert_eq!(id2, id);
        assert_ne!(v2, v1);
        let got = s.get(collection, &id).await.unwrap().unwrap();
        assert_eq!(got.version, v2);
        same(&changed, &got.values);

        assert!(matches!(
            s.delete(collection, &id, &v2).await.unwrap(),
            Written::Done { .. }
        ));
        assert_eq!(s.get(collection, &id).await.unwrap(), None);
        // Deleted to Deleted Items, as a user could restore it.
        assert!(
            f.double
                .items(ALICE, "deleteditems")
                .iter()
                .any(|i| i.kind == got_kind_element(kind)),
            "{:?}",
            f.double.items(ALICE, "deleteditems")
        );
    }
    // The uid and the stamp are extended properties of serversync's property set.
    let (id, _) = done(
        s.create("contacts", RecordType::Contact, &contact("c-2"))
            .await
            .unwrap(),
    );
    let xml = f.double.item_xml(ALICE, &id).unwrap();
    assert!(
        xml.contains(PROPERTY_SET) && xml.contains(UID_PROPERTY),
        "{xml}"
    );
    // No meeting message went out.
    assert!(f.double.sent().is_empty());
    let creates: Vec<String> = f
        .double
        .requests()
        .into_iter()
        .filter(|r| r.operation == "CreateItem" && r.body.contains("CalendarItem"))
        .map(|r| r.body)
        .collect();
    assert!(
        creates
            .iter()
            .all(|b| b.contains("SendMeetingInvitations=\"SendToNone\"")),
        "{creates:?}"
    );
}

fn got_kind_element(kind: RecordType) -> &'static str {
    match kind {
        RecordType::Appointment => "CalendarItem",
        RecordType::Contact => "Contact",
        _ => "Task",
    }
}

#[tokio::test]
async fn a_stale_change_key_conflicts_with_the_current_item_and_writes_nothing() {
    let f = fixture().await;
    let mut s = f.store().await;
    let values = task("t-stale");
    let (id, v1) = done(s.create("tasks", RecordType::Task, &values).await.unwrap());
    // Another client renames it.
    f.double
        .change_item(ALICE, &id, &["<Subject>Renamed in Outlook</Subject>"], &[]);

    let mut mine = values.clone();
    mine["subject"] = json!("Renamed by serversync");
    let current = conflict(s.update("tasks", &id, &v1, &mine).await.unwrap());
    assert_eq!(current.id, id);
    assert_ne!(current.version, v1);
    assert_eq!(current.values["subject"], "Renamed in Outlook");
    let current = conflict(s.delete("tasks", &id, &v1).await.unwrap());
    assert_eq!(current.values["subject"], "Renamed in Outlook");
    let now = s.get("tasks", &id).await.unwrap().unwrap();
    assert_eq!(now.values["subject"], "Renamed in Outlook");

    // The server refuses a stale ChangeKey by itself too (ErrorIrresolvableConflict): a
    // change between serversync's read and its UpdateItem is not overwritten.
    let before = f.count("UpdateItem");
    let (_, v2) = done(s.update("tasks", &id, &now.version, &mine).await.unwrap());
    assert_eq!(f.count("UpdateItem"), before + 1);
    assert!(
        f.double
            .requests()
            .iter()
            .filter(|r| r.operation == "UpdateItem")
            .all(|r| r.body.contains("ConflictResolution=\"NeverOverwrite\"")
                && r.body.contains("ChangeKey=")),
    );
    assert_ne!(v2, now.version);

    // A change between serversync's read and its UpdateItem: Exchange answers
    // ErrorIrresolvableConflict, and the store reads the item again.
    f.double.inject(Fault::ResponseCode {
        operation: Some("UpdateItem".into()),
        code: "ErrorIrresolvableConflict".into(),
    });
    mine["subject"] = json!("Lost race");
    let current = conflict(s.update("tasks", &id, &v2, &mine).await.unwrap());
    assert_eq!(current.version, v2);
    assert_eq!(current.values["subject"], "Renamed by serversync");
}

#[tokio::test]
async fn an_item_another_client_deleted_is_gone() {
    let f = fixture().await;
    let mut s = f.store().await;
    let (id, v1) = done(
        s.create("calendar", RecordType::Appointment, &appointment("a-gone"))
            .await
            .unwrap(),
    );
    assert!(f.double.remove_item(ALICE, &id));
    assert_eq!(s.delete("calendar", &id, &v1).await.unwrap(), Written::Gone);
    assert_eq!(
        s.update("calendar", &id, &v1, &appointment("a-gone"))
            .await
            .unwrap(),
        Written::Gone
    );
    assert_eq!(s.get("calendar", &id).await.unwrap(), None);
}

#[tokio::test]
async fn changes_since_a_state_report_creates_updates_and_deletes_in_pages() {
    let f = fixture().await;
    let mut s = f.store().await.with_page_size(2);
    let mut ids = Vec::new();
    for n in 0..5 {
        let mut c = contact(&format!("c-{n}"));
        c["full_name"] = json!(format!("Person {n}"));
        ids.push(done(s.create("contacts", RecordType::Contact, &c).await.unwrap()).0);
    }
    let before = f.count("SyncFolderItems");
    let all = s.changes("contacts", None).await.unwrap();
    assert!(
        f.count("SyncFolderItems") - before >= 3,
        "5 changes, 2 a page"
    );
    assert!(!all.more);
    assert!(
        all.deleted.is_empty() && all.unreadable.is_empty(),
        "{all:?}"
    );
    let listed: Vec<&str> = all.changed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(all.changed[3].values["full_name"], "Person 3");
    let state = all.next.clone().unwrap();

    // Nothing since: nothing.
    let none = s.changes("contacts", Some(&state)).await.unwrap();
    assert!(
        none.changed.is_empty() && none.deleted.is_empty(),
        "{none:?}"
    );

    // Another client changes one and deletes one; serversync creates one.
    f.double
        .change_item(ALICE, &ids[1], &["<JobTitle>Chief buyer</JobTitle>"], &[]);
    f.double.remove_item(ALICE, &ids[2]);
    let (new, _) = done(
        s.create("contacts", RecordType::Contact, &contact("c-new"))
            .await
            .unwrap(),
    );
    let since = s.changes("contacts", Some(&state)).await.unwrap();
    let changed: Vec<&str> = since.changed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(changed, vec![ids[1].as_str(), new.as_str()], "{since:?}");
    assert_eq!(since.changed[0].values["job_title"], "Chief buyer");
    assert_eq!(since.deleted, vec![ids[2].clone()]);
    assert_ne!(since.next, Some(state));

    // Each kind in its folder: the calendar does not list contacts.
    let cal = s.changes("calendar", None).await.unwrap();
    assert!(cal.changed.is_empty(), "{cal:?}");
}

#[tokio::test]
async fn a_state_the_server_refuses_is_the_distinct_error() {
    let f = fixture().await;
    let mut s = f.store().await;
    let bad = ServerTokenCursor {
        token: "bm90IGEgc3luYyBzdGF0ZQ==".into(),
    };
    let e = s.changes("tasks", Some(&bad)).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(SYNC_TOKEN_INVALID), "{e:?}");
    // A state of another folder is refused as well.
    let cal = s.changes("calendar", None).await.unwrap().next.unwrap();
    let e = s.changes("tasks", Some(&cal)).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(SYNC_TOKEN_INVALID), "{e:?}");
}

#[tokio::test]
async fn a_create_repeated_after_a_lost_answer_does_not_duplicate() {
    let f = fixture().await;
    let mut s = f.store().await;
    let values = appointment("a-once");
    f.double.inject(Fault::DropAfterServing {
        operation: Some("CreateItem".into()),
    });
    let lost = s.create("calendar", RecordType::Appointment, &values).await;
    assert!(lost.is_err(), "{lost:?}");
    assert_eq!(f.double.items(ALICE, "calendar").len(), 1);

    let mut s = f.store().await;
    let current = conflict(
        s.create("calendar", RecordType::Appointment, &values)
            .await
            .unwrap(),
    );
    assert_eq!(f.double.items(ALICE, "calendar").len(), 1);
    assert_eq!(current.id, f.double.items(ALICE, "calendar")[0].id);
    same(&values, &current.values);
    // A second create of the same uid, with the answer received: the same.
    conflict(
        s.create("calendar", RecordType::Appointment, &values)
            .await
            .unwrap(),
    );
    assert_eq!(f.double.items(ALICE, "calendar").len(), 1);
    // Another uid is another item.
    done(
        s.create("calendar", RecordType::Appointment, &appointment("a-twice"))
            .await
            .unwrap(),
    );
    assert_eq!(f.double.items(ALICE, "calendar").len(), 2);
}

#[tokio::test]
async fn an_item_that_cannot_be_mapped_is_reported_unreadable() {
    let f = fixture().await;
    let mut s = f.store().await;
    let list = f.double.create_item(
        ALICE,
        "contacts",
        "<DistributionList><DisplayName>Buyers</DisplayName></DistributionList>",
    );
    let (ok, _) = done(
        s.create("contacts", RecordType::Contact, &contact("c-ok"))
            .await
            .unwrap(),
    );
    let set = s.changes("contacts", None).await.unwrap();
    assert_eq!(set.changed.len(), 1, "{set:?}");
    assert_eq!(set.changed[0].id, ok);
    assert_eq!(set.unreadable.len(), 1, "{set:?}");
    assert_eq!(set.unreadable[0].0, list);
    assert!(set.unreadable[0].1.contains("DistributionList"), "{set:?}");

    // Values EWS cannot hold are refused before anything is written.
    let mut many = contact("c-many");
    many["emails"] = json!(["a@x.com", "b@x.com", "c@x.com", "d@x.com"]);
    let e = s
        .create("contacts", RecordType::Contact, &many)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("unmappable_values"), "{e:?}");
    assert_eq!(f.double.items(ALICE, "contacts").len(), 2);
}

#[tokio::test]
async fn a_series_another_client_made_reads_with_its_exceptions_and_keeps_them() {
    let f = fixture().await;
    let mut s = f.store().await;
    let start = at(1, 0);
    let d = |n: i64, h: i64| t(start + Duration::days(7 * n) + Duration::hours(h));
    let xml = format!(
        "<CalendarItem><Subject>Standup</Subject><Start>{}</Start><End>{}</End>\
         <Recurrence><WeeklyRecurrence><Interval>1</Interval><DaysOfWeek>{}</DaysOfWeek>\
         </WeeklyRecurrence><NumberedRecurrence><StartDate>{}</StartDate>\
         <NumberOfOccurrences>4</NumberOfOccurrences></NumberedRecurrence></Recurrence>\
         <ModifiedOccurrences><Occurrence><ItemId Id=\"AAMkOcc1\"/><Start>{}</Start><End>{}</End>\
         <OriginalStart>{}</OriginalStart></Occurrence></ModifiedOccurrences>\
         <DeletedOccurrences><DeletedOccurrence><Start>{}</Start></DeletedOccurrence>\
         </DeletedOccurrences><StartTimeZone Id=\"W. Europe Standard Time\"/>\
         <EndTimeZone Id=\"W. Europe Standard Time\"/></CalendarItem>",
        d(0, 0),
        d(0, 1),
        start.with_timezone(&chrono_tz::Europe::Berlin).format("%A"),
        start
            .with_timezone(&chrono_tz::Europe::Berlin)
            .format("%Y-%m-%d"),
        d(1, 2),
        d(1, 3),
        d(1, 0),
        d(2, 0),
    );
    let id = f.double.create_item(ALICE, "calendar", &xml);
    let set = s.changes("calendar", None).await.unwrap();
    assert_eq!(set.changed.len(), 1, "{set:?}");
    let item = &set.changed[0];
    assert_eq!(item.id, id);
    let v = &item.values;
    assert_eq!(v["rrule"], "FREQ=WEEKLY;COUNT=4");
    assert_eq!(v["time_zone"], "Europe/Berlin");
    assert_eq!(v["organizer"], ALICE);
    assert_eq!(v["exdates"], json!([d(2, 0)]));
    assert_eq!(
        v["overrides"],
        json!([{"recurrence_id": d(1, 0), "start": d(1, 2), "end": d(1, 3)}])
    );
    assert!(v["uid"].is_string(), "Exchange's UID stands in: {v:#}");

    // An update that keeps the exceptions goes through; the server keeps them and its
    // time zones.
    let mut changed = v.clone();
    changed["subject"] = json!("Standup (team)");
    changed["time_zone"] = Value::Null;
    done(
        s.update("calendar", &id, &item.version, &changed)
            .await
            .unwrap(),
    );
    let now = s.get("calendar", &id).await.unwrap().unwrap();
    assert_eq!(now.values["subject"], "Standup (team)");
    assert_eq!(now.values["exdates"], v["exdates"]);
    assert_eq!(now.values["time_zone"], "Europe/Berlin");
    // A new exception is written; restoring a cancelled occurrence is refused (EWS cannot),
    // not silently dropped.
    let mut more = now.values.clone();
    more["exdates"] = json!([d(2, 0), d(3, 0)]);
    done(
        s.update("calendar", &id, &now.version, &more)
            .await
            .unwrap(),
    );
    let now = s.get("calendar", &id).await.unwrap().unwrap();
    assert_eq!(now.values["exdates"], json!([d(2, 0), d(3, 0)]));
    assert_eq!(now.values["overrides"], v["overrides"]);
    let mut fewer = now.values.clone();
    fewer["exdates"] = json!([d(3, 0)]);
    let writes = f.count("UpdateItem") + f.count("DeleteItem");
    let e = s
        .update("calendar", &id, &now.version, &fewer)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("unmappable_values"), "{e:?}");
    assert!(e.message.contains("cannot restore"), "{e:?}");
    assert_eq!(f.count("UpdateItem") + f.count("DeleteItem"), writes);
}

/// A series written from values with one moved (and renamed) and one cancelled occurrence:
/// the server holds them as its own exceptions (DeleteItem and UpdateItem of an
/// OccurrenceItemId, by instance index) and they read back equal; more exceptions are written
/// by an update; values EWS cannot hold write nothing.
#[tokio::test]
async fn a_series_with_a_moved_and_a_cancelled_occurrence_is_written_and_reads_back_equal() {
    let f = fixture().await;
    let mut s = f.store().await;
    let first = at(3, 0);
    let week = |n: i64, h: i64| t(first + Duration::weeks(n) + Duration::hours(h));
    let mut v = appointment("a-series");
    v["rrule"] = json!("FREQ=WEEKLY;COUNT=6");
    v["exdates"] = json!([week(2, 0)]);
    v["overrides"] = json!([{"recurrence_id": week(1, 0), "start": week(1, 2), "end": week(1, 3),
        "subject": "Quarterly review (later)", "location": "Room 9"}]);
    let (id, v1) = done(
        s.create("calendar", RecordType::Appointment, &v)
            .await
            .unwrap(),
    );
    let got = s.get("calendar", &id).await.unwrap().unwrap();
    assert_eq!(
        got.version, v1,
        "the version is the master's after its occurrences"
    );
    same(&v, &got.values);
    let xml = f.double.item_xml(ALICE, &id).unwrap();
    for needle in [
        format!("<t:DeletedOccurrence><t:Start>{}</t:Start>", week(2, 0)),
        format!(
            "<t:Start>{}</t:Start><t:End>{}</t:End><t:OriginalStart>{}</t:OriginalStart>",
            week(1, 2),
            week(1, 3),
            week(1, 0)
        ),
    ] {
        assert!(xml.contains(&needle), "{needle} in {xml}");
    }
    let occurrence_writes: Vec<String> = f
        .double
        .requests()
        .into_iter()
        .filter(|r| r.body.contains("OccurrenceItemId"))
        .map(|r| r.body)
        .collect();
    assert_eq!(occurrence_writes.len(), 2, "{occurrence_writes:?}");
    assert!(
        occurrence_writes[0].contains("InstanceIndex=\"2\"")
            && occurrence_writes[0].contains("UpdateItem")
            && occurrence_writes[0]
                .contains("SendMeetingInvitationsOrCancellations=\"SendToNone\""),
        "{occurrence_writes:?}"
    );
    assert!(
        occurrence_writes[1].contains("InstanceIndex=\"3\"")
            && occurrence_writes[1].contains("DeleteItem")
            && occurrence_writes[1].contains("SendMeetingCancellations=\"SendToNone\""),
        "{occurrence_writes:?}"
    );
    // The changes read the same.
    let set = s.changes("calendar", None).await.unwrap();
    assert_eq!(set.changed.len(), 1, "{set:?}");
    same(&v, &set.changed[0].values);
    assert_eq!(set.changed[0].version, v1);

    // An update: the moved one moves again, and a fifth is cancelled.
    let mut v2 = got.values.clone();
    v2["overrides"][0]["start"] = json!(week(1, 4));
    v2["overrides"][0]["end"] = json!(week(1, 5));
    v2["exdates"] = json!([week(2, 0), week(4, 0)]);
    let (_, ver2) = done(s.update("calendar", &id, &v1, &v2).await.unwrap());
    let got = s.get("calendar", &id).await.unwrap().unwrap();
    assert_eq!(got.version, ver2);
    same(&v2, &got.values);

    // What EWS cannot hold writes nothing: an occurrence returned to the series, an exdate
    // that is no occurrence (on create too).
    let writes = || f.count("CreateItem") + f.count("UpdateItem") + f.count("DeleteItem");
    let before = writes();
    let mut undo = got.values.clone();
    undo["overrides"] = json!([]);
    let e = s.update("calendar", &id, &ver2, &undo).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("unmappable_values"), "{e:?}");
    let mut off = got.values.clone();
    off["exdates"] = json!([week(2, 0), week(4, 0), week(3, 1)]);
    let e = s.update("calendar", &id, &ver2, &off).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("unmappable_values"), "{e:?}");
    assert!(e.message.contains("not an occurrence"), "{e:?}");
    let mut bad = v.clone();
    bad["uid"] = json!("a-series-2");
    bad["exdates"] = json!([week(9, 0)]);
    let e = s
        .create("calendar", RecordType::Appointment, &bad)
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("unmappable_values"), "{e:?}");
    assert_eq!(writes(), before);
    assert_eq!(f.double.items(ALICE, "calendar").len(), 1);

    // Meeting messages as the store is set: a future meeting's occurrences are announced.
    let mut s = f.store().await;
    s.set_meeting_messages(
        serversync_connectors::ews::items::MeetingMessages::SendToAllAndSaveCopy,
    );
    let mut v3 = v.clone();
    v3["uid"] = json!("a-series-3");
    done(
        s.create("calendar", RecordType::Appointment, &v3)
            .await
            .unwrap(),
    );
    let last: Vec<String> = f
        .double
        .requests()
        .into_iter()
        .filter(|r| r.body.contains("OccurrenceItemId"))
        .map(|r| r.body)
        .skip(4)
        .collect();
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(last[0].contains("SendMeetingInvitationsOrCancellations=\"SendToChangedAndSaveCopy\""));
    assert!(last[1].contains("SendMeetingCancellations=\"SendToAllAndSaveCopy\""));
}
