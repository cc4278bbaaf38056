//! The Graph item store (`graph::items::GraphItemStore`: Exchange Online appointments,
//! contacts and To Do tasks) against the Graph test double: each kind's values survive a
//! create, a read, an update and a delete; a stale version conflicts with the current item and
//! a gone item is `Gone`; delta reports creates, updates and deletes since a token, in pages;
//! a forgotten delta token is the distinct `sync_token_invalid`; a repeated create finds the
//! first item (the uid lookup, and Graph's `transactionId` for events); an item that cannot be
//! mapped is reported unreadable; an update sends only what changed; collections may be named
//! by id; throttling is waited out. Every JSON body either side sent is checked against Graph's
//! published CSDL by the double. Calendar windows are fixed dates: nothing reads the clock.

use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use serversync_connectors::graph::GraphClient;
use serversync_connectors::graph::items::{CalendarWindow, DELTA_TOKEN_INVALID, GraphItemStore};
use serversync_connectors::items::{ItemStore, Written};
use serversync_connectors::oauth::{Grant, TokenProvider, TokenRequest};
use serversync_connectors::{
    ConnectOptions, GraphTarget, Login, NetworkPolicy, Secret, StepLog, TlsTrust,
};
use serversync_model::sync::ServerTokenCursor;
use serversync_model::webhook::RecordType;
use serversync_testkit::graph::{Fault, GraphConfig, GraphDouble, ItemKind, Route, csdl_path};
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

struct Fixture {
    double: GraphDouble,
    opts: ConnectOptions,
    _dir: tempfile::TempDir,
}

async fn fixture(cfg: GraphConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let double = GraphDouble::start(
        &tls,
        GraphConfig {
            csdl: Some(csdl_path()),
            ..cfg
        },
    )
    .await
    .unwrap();
    double.add_tenant(TENANT, "contoso.test");
    double.add_app(TENANT, APP, SECRET, ROLES);
    double.add_mailbox(TENANT, ALICE);
    let trust = Arc::new(TlsTrust::with_extra_ca_files([&tls.ca_cert]).unwrap());
    let opts = ConnectOptions::new(trust)
        .with_policy(NetworkPolicy::loopback_allowed())
        .with_timeout(Duration::from_secs(20));
    Fixture {
        double,
        opts,
        _dir: dir,
    }
}

impl Fixture {
    async fn store(&self) -> GraphItemStore {
        self.store_and_token().await.0
    }

    /// The store and the access token it signs in with.
    async fn store_and_token(&self) -> (GraphItemStore, String) {
        let req = TokenRequest {
            endpoint: self.double.token_url(TENANT),
            client_id: APP.into(),
            client_secret: Some(Secret::new(SECRET)),
            client_certificate: None,
            grant: Grant::ClientCredentials {
                scope: Some(format!("{}/.default", self.double.graph_url())),
            },
        };
        let token = TokenProvider::new()
            .token(&self.opts.trust, &self.opts.policy, self.opts.timeout, &req)
            .await
            .unwrap();
        let token_text = token.expose().to_owned();
        let login = Login::xoauth2(ALICE.to_owned(), token);
        let target = GraphTarget {
            graph_url: self.double.graph_url(),
            mailbox: ALICE.into(),
            pinned: Vec::new(),
        };
        let client = GraphClient::connect(&target, &login, &self.opts, &mut StepLog::new())
            .await
            .unwrap();
        let store = GraphItemStore::new(client).with_window(CalendarWindow::Fixed {
            start: Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2027, 12, 31, 0, 0, 0).unwrap(),
        });
        (store, token_text)
    }

    /// Nothing either side sent strayed from Graph's metadata.
    fn assert_schema_clean(&self) {
        let v = self.double.schema_violations();
        assert!(v.is_empty(), "CSDL violations: {v:#?}");
    }
}

fn appointment(uid: &str, subject: &str) -> Value {
    json!({
        "uid": uid, "stamp": "Contoso", "categories": ["Tracked to Contoso"],
        "subject": subject, "location": "Room 1", "description": "Agenda",
        "start": "2026-12-10T08:00:00Z", "end": "2026-12-10T09:00:00Z",
        "time_zone": "Europe/Berlin", "attendees": ["ann@example.com", "bob@example.com"],
        "state": "open",
    })
}

fn contact(uid: &str, name: &str) -> Value {
    json!({
        "uid": uid, "stamp": "Contoso", "categories": ["Tracked to Contoso"],
        "full_name": name, "emails": ["ann@example.com"], "company": "Fabrikam",
        "job_title": "Buyer", "phones": ["+1 555 0100"],
    })
}

fn task(uid: &str, subject: &str) -> Value {
    json!({
        "uid": uid, "stamp": "Contoso", "categories": [],
        "subject": subject, "description": "about the offer", "due": "2026-12-11T17:00:00Z",
        "percent_complete": 0, "state": "open",
    })
}

/// Every field of `want` reads back as written.
fn assert_values(got: &Value, want: &Value) {
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&got[k], v, "{k} in {got:#}");
    }
}

fn done(w: Written) -> (String, String) {
    match w {
        Written::Done { id, version } => (id, version),
        other => panic!("not written: {other:?}"),
    }
}

#[tokio::test]
async fn each_kind_round_trips_create_get_update_delete() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    let list = s.default_task_list().await.unwrap();
    assert_eq!(
        list,
        format!(
            "todo/lists/{}",
            f.double.default_container(ALICE, ItemKind::Task)
        )
    );
    let calendar = s.default_calendar().await.unwrap();
    let contacts = s.default_contacts().await.unwrap();
    let mut recurring = appointment("evt-1", "Weekly review");
    recurring["rrule"] = json!("FREQ=WEEKLY;COUNT=4");
    let cases = [
        (
            calendar.as_str(),
            RecordType::Appointment,
            recurring,
            json!({"subject": "Weekly review (moved)", "start": "2026-12-10T10:00:00Z",
                "end": "2026-12-10T11:00:00Z", "attendees": ["ann@example.com"],
                "rrule": "FREQ=WEEKLY;BYDAY=MO,TH;COUNT=6"}),
        ),
        (
            contacts.as_str(),
            RecordType::Contact,
            contact("con-1", "Ann Marie Lee"),
            json!({"full_name": "Ann Lee-Smith", "emails": ["ann@example.com", "ann@home.example"],
                "company": null, "phones": ["+1 555 0100", "+1 555 0111"]}),
        ),
        (
            list.as_str(),
            RecordType::Task,
            task("tsk-1", "Call Ann"),
            json!({"subject": "Call Ann again", "state": "completed", "percent_complete": 100,
                "due": null}),
        ),
    ];
    for (coll, kind, values, change) in cases {
        let (id, v1) = done(s.create(coll, kind, &values).await.unwrap());
        let got = s.get(coll, &id).await.unwrap().expect("created");
        assert_eq!(got.kind, kind);
        assert_eq!(got.version, v1, "{kind:?}");
        assert_values(&got.values, &values);
        let mut updated = values.clone();
        for (k, v) in change.as_object().unwrap() {
            updated[k] = v.clone();
        }
        let (same, v2) = done(s.update(coll, &id, &v1, &updated).await.unwrap());
        assert_eq!(same, id);
        assert_ne!(v1, v2, "every write changes the version");
        let got = s.get(coll, &id).await.unwrap().unwrap();
        assert_eq!(got.version, v2);
        assert_values(&got.values, &updated);
        done(s.delete(coll, &id, &v2).await.unwrap());
        assert_eq!(s.get(coll, &id).await.unwrap(), None, "{kind:?} deleted");
    }
    // The If-Match of each write was the version read.
    let writes: Vec<_> = f
        .double
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH" || r.method == "DELETE")
        .collect();
    assert_eq!(writes.len(), 6);
    for w in writes {
        assert!(
            w.headers
                .iter()
                .any(|(k, v)| k == "if-match" && v.starts_with("W/\"")),
            "{} {} without If-Match",
            w.method,
            w.path
        );
    }
    f.assert_schema_clean();
}

#[tokio::test]
async fn a_stale_version_conflicts_with_the_current_item_and_a_gone_item_is_gone() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    let (id, v1) = done(
        s.create(
            "contacts",
            RecordType::Contact,
            &contact("con-2", "Bob Stone"),
        )
        .await
        .unwrap(),
    );
    // Outlook changes the contact meanwhile.
    assert!(
        f.double
            .update_item(ALICE, &id, json!({"jobTitle": "Head of Purchasing"}))
    );
    let mut mine = contact("con-2", "Bob Stone");
    mine["company"] = json!("Northwind");
    match s.update("contacts", &id, &v1, &mine).await.unwrap() {
        Written::Conflict { current } => {
            assert_eq!(current.id, id);
            assert_eq!(current.values["job_title"], "Head of Purchasing");
            assert_eq!(current.values["company"], "Fabrikam", "nothing was written");
            assert_ne!(current.version, v1);
        }
        other => panic!("a stale update must conflict: {other:?}"),
    }
    // The cached copy is not trusted either: a PATCH with the stale If-Match gets 412.
    let stale_patch = f
        .double
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .count();
    assert!(stale_patch <= 1);
    let current = s.get("contacts", &id).await.unwrap().unwrap();
    assert!(matches!(
        s.delete("contacts", &id, &v1).await.unwrap(),
        Written::Conflict { .. }
    ));
    assert!(
        f.double
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.status == 412),
        "the stale delete was refused by the double"
    );
    done(s.delete("contacts", &id, &current.version).await.unwrap());
    assert_eq!(
        s.delete("contacts", &id, &current.version).await.unwrap(),
        Written::Gone
    );
    assert_eq!(
        s.update("contacts", &id, &current.version, &mine)
            .await
            .unwrap(),
        Written::Gone
    );
    // An event deleted by another client: an update finds it gone.
    let (eid, ev) = done(
        s.create(
            "calendar",
            RecordType::Appointment,
            &appointment("evt-2", "Lunch"),
        )
        .await
        .unwrap(),
    );
    assert!(f.double.delete_item(ALICE, &eid));
    assert_eq!(
        s.update("calendar", &eid, &ev, &appointment("evt-2", "Dinner"))
            .await
            .unwrap(),
        Written::Gone
    );
    f.assert_schema_clean();
}

#[tokio::test]
async fn delta_reports_creates_updates_and_deletes_since_a_token_in_pages() {
    let f = fixture(GraphConfig {
        page_size: 2,
        ..GraphConfig::default()
    })
    .await;
    let mut s = f.store().await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let (id, _) = done(
            s.create(
                "contacts",
                RecordType::Contact,
                &contact(&format!("con-{n}"), &format!("Person {n}")),
            )
            .await
            .unwrap(),
        );
        ids.push(id);
    }
    let all = s.changes("contacts", None).await.unwrap();
    assert!(!all.more);
    let listed: Vec<&str> = all.changed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(all.changed[3].values["uid"], "con-3", "uids are read back");
    assert!(all.deleted.is_empty() && all.unreadable.is_empty());
    let pages = f
        .double
        .requests()
        .iter()
        .filter(|r| r.path.contains("/contacts/delta"))
        .count();
    assert_eq!(pages, 3, "five contacts in pages of two");
    let batches = f
        .double
        .requests()
        .iter()
        .filter(|r| r.path == "/v1.0/$batch")
        .count();
    assert_eq!(batches, 1, "the five are read again in one $batch");
    let token = all.next.clone().unwrap();
    assert!(token.token.contains("$deltatoken="), "{}", token.token);

    // Nothing since: nothing.
    let none = s.changes("contacts", Some(&token)).await.unwrap();
    assert!(none.changed.is_empty() && none.deleted.is_empty());

    // Another client updates one, deletes one, adds one.
    assert!(
        f.double
            .update_item(ALICE, &ids[1], json!({"companyName": "Tailspin"}))
    );
    assert!(f.double.delete_item(ALICE, &ids[2]));
    let added = f.double.create_item(
        ALICE,
        "contacts",
        json!({"displayName": "Outlook Person", "emailAddresses": [{"address": "op@example.com"}]}),
    );
    let since = s.changes("contacts", Some(&token)).await.unwrap();
    let changed: Vec<&str> = since.changed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(changed, [ids[1].as_str(), added.as_str()]);
    assert_eq!(since.changed[0].values["company"], "Tailspin");
    assert_eq!(since.changed[1].values["uid"], Value::Null);
    assert_eq!(since.changed[1].values["full_name"], "Outlook Person");
    assert_eq!(since.deleted, [ids[2].clone()]);

    // Tasks and events the same way; a series is reported once, as its master.
    let list = s.default_task_list().await.unwrap();
    let (tid, _) = done(
        s.create(&list, RecordType::Task, &task("tsk-2", "Send offer"))
            .await
            .unwrap(),
    );
    let tasks = s.changes(&list, None).await.unwrap();
    assert_eq!(tasks.changed.len(), 1);
    assert_eq!(tasks.changed[0].values["uid"], "tsk-2");
    f.double
        .update_item(ALICE, &tid, json!({"status": "completed"}));
    let tasks2 = s.changes(&list, tasks.next.as_ref()).await.unwrap();
    assert_eq!(tasks2.changed[0].values["state"], "completed");

    let mut series = appointment("evt-3", "Stand-up");
    series["rrule"] = json!("FREQ=DAILY;COUNT=3");
    let (master, _) = done(
        s.create("calendar", RecordType::Appointment, &series)
            .await
            .unwrap(),
    );
    let (single, _) = done(
        s.create(
            "calendar",
            RecordType::Appointment,
            &appointment("evt-4", "Lunch"),
        )
        .await
        .unwrap(),
    );
    let window = (
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(2027, 12, 31, 0, 0, 0).unwrap(),
    );
    assert_eq!(
        f.double
            .instance_ids(ALICE, &master, window.0, window.1)
            .len(),
        3,
        "the view lists three occurrences"
    );
    let events = s.changes("calendar", None).await.unwrap();
    let got: Vec<&str> = events.changed.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(got, [master.as_str(), single.as_str()]);
    assert_eq!(events.changed[0].values["rrule"], "FREQ=DAILY;COUNT=3");
    // The series is deleted: its master is reported deleted.
    assert!(f.double.delete_item(ALICE, &master));
    // The single event moves out of the window: not a delete, a change.
    assert!(f.double.update_item(
        ALICE,
        &single,
        json!({"start": {"dateTime": "2029-01-10T09:00:00.0000000", "timeZone": "Europe/Berlin"},
               "end": {"dateTime": "2029-01-10T10:00:00.0000000", "timeZone": "Europe/Berlin"}})
    ));
    let after = s.changes("calendar", events.next.as_ref()).await.unwrap();
    assert!(after.deleted.contains(&master), "{after:?}");
    assert!(!after.deleted.contains(&single), "{after:?}");
    assert_eq!(after.changed.len(), 1, "{after:?}");
    assert_eq!(after.changed[0].values["start"], "2029-01-10T08:00:00Z");
    f.assert_schema_clean();
}

#[tokio::test]
async fn a_forgotten_delta_token_is_the_distinct_error() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    done(
        s.create(
            "contacts",
            RecordType::Contact,
            &contact("con-9", "Cy Young"),
        )
        .await
        .unwrap(),
    );
    let first = s.changes("contacts", None).await.unwrap();
    let token = first.next.unwrap();
    f.double.expire_delta_tokens(ALICE);
    let e = s.changes("contacts", Some(&token)).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(DELTA_TOKEN_INVALID), "{e}");
    assert_eq!(DELTA_TOKEN_INVALID, "sync_token_invalid");
    // A token the server never issued: the same.
    let bogus = ServerTokenCursor {
        token: format!(
            "{}/v1.0/users/{ALICE}/contacts/delta?$deltatoken=bm90LWEtdG9rZW4",
            f.double.graph_url()
        ),
    };
    let e = s.changes("contacts", Some(&bogus)).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some(DELTA_TOKEN_INVALID), "{e}");
    // From nothing again, the collection is read whole.
    let again = s.changes("contacts", None).await.unwrap();
    assert_eq!(again.changed.len(), 1);
    // A link to another origin is never followed.
    let foreign = ServerTokenCursor {
        token: "https://graph.example.net/v1.0/users/x/contacts/delta?$deltatoken=x".into(),
    };
    assert!(s.changes("contacts", Some(&foreign)).await.is_err());
}

#[tokio::test]
async fn a_repeated_create_does_not_duplicate() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    for (coll, kind, values) in [
        (
            "calendar",
            RecordType::Appointment,
            appointment("evt-5", "Kick-off"),
        ),
        ("contacts", RecordType::Contact, contact("con-5", "Dee Ray")),
    ] {
        let (id, version) = done(s.create(coll, kind, &values).await.unwrap());
        match s.create(coll, kind, &values).await.unwrap() {
            Written::Conflict { current } => {
                assert_eq!(current.id, id);
                assert_eq!(current.version, version);
                assert_values(&current.values, &values);
            }
            other => panic!("a repeated {kind:?} create must find the first: {other:?}"),
        }
        assert_eq!(f.double.items(ALICE, coll).len(), 1, "{kind:?}");
    }
    // Graph's own guard for events: an event with the transactionId but without our
    // property (the lookup misses it) is returned by the POST instead of a second one.
    let first = f.double.create_item(
        ALICE,
        "calendar",
        json!({"subject": "Made by the first attempt", "transactionId": "evt-6",
            "start": {"dateTime": "2026-12-12T09:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": "2026-12-12T10:00:00.0000000", "timeZone": "UTC"}}),
    );
    let (id, _) = done(
        s.create(
            "calendar",
            RecordType::Appointment,
            &appointment("evt-6", "Retry"),
        )
        .await
        .unwrap(),
    );
    assert_eq!(id, first);
    assert_eq!(f.double.items(ALICE, "calendar").len(), 2);
    // A task too.
    let list = s.default_task_list().await.unwrap();
    let (tid, _) = done(
        s.create(&list, RecordType::Task, &task("tsk-5", "Ship"))
            .await
            .unwrap(),
    );
    match s
        .create(&list, RecordType::Task, &task("tsk-5", "Ship"))
        .await
        .unwrap()
    {
        Written::Conflict { current } => assert_eq!(current.id, tid),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.double.items(ALICE, &list).len(), 1);
    f.assert_schema_clean();
}

#[tokio::test]
async fn an_item_that_cannot_be_mapped_is_reported_unreadable() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    let bad = f.double.create_item(
        ALICE,
        "calendar",
        json!({"subject": "From Mars",
            "start": {"dateTime": "2026-12-12T09:00:00.0000000", "timeZone": "Mars Standard Time"},
            "end": {"dateTime": "2026-12-12T10:00:00.0000000", "timeZone": "Mars Standard Time"}}),
    );
    let (good, _) = done(
        s.create(
            "calendar",
            RecordType::Appointment,
            &appointment("evt-7", "Earth"),
        )
        .await
        .unwrap(),
    );
    let set = s.changes("calendar", None).await.unwrap();
    assert_eq!(set.changed.len(), 1);
    assert_eq!(set.changed[0].id, good);
    assert_eq!(set.unreadable.len(), 1);
    assert_eq!(set.unreadable[0].0, bad);
    assert!(set.unreadable[0].1.contains("Mars"), "{:?}", set.unreadable);
    let e = s.get("calendar", &bad).await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("unreadable_item"));
}

#[tokio::test]
async fn throttling_is_waited_out_and_refusals_are_classified() {
    let f = fixture(GraphConfig::default()).await;
    let (mut s, token) = f.store_and_token().await;
    assert!(
        !format!("{s:?}").contains(&token),
        "the token is never in Debug output"
    );
    f.double.inject(Fault::Throttle {
        route: Route::Contacts,
        status: 429,
        retry_after: Some(0),
        mailbox_concurrency: true,
    });
    let (first, _) = done(
        s.create(
            "contacts",
            RecordType::Contact,
            &contact("con-8", "Eve Park"),
        )
        .await
        .unwrap(),
    );
    done(
        s.create(
            "contacts",
            RecordType::Contact,
            &contact("con-9", "Fay Wong"),
        )
        .await
        .unwrap(),
    );
    assert_eq!(f.double.items(ALICE, "contacts").len(), 2);
    // The delta request is throttled once, then the first item inside the $batch: both are
    // waited out (the item read again on its own).
    for route in [Route::Delta, Route::Contacts] {
        f.double.inject(Fault::Throttle {
            route,
            status: 503,
            retry_after: Some(0),
            mailbox_concurrency: false,
        });
    }
    let before = f.double.requests().len();
    let set = s.changes("contacts", None).await.unwrap();
    assert_eq!(set.changed.len(), 2, "{set:?}");
    let seen: Vec<(String, u16, String)> = f.double.requests()[before..]
        .iter()
        .map(|r| (r.method.clone(), r.status, r.path.clone()))
        .collect();
    let encoded = url::form_urlencoded::byte_serialize(first.as_bytes()).collect::<String>();
    assert!(
        seen.iter()
            .any(|(m, st, p)| m == "GET" && *st == 503 && p.contains("/contacts/delta")),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|(m, st, p)| m == "GET"
            && *st == 200
            && p.contains(&format!("/contacts/{encoded}?"))),
        "the throttled item was read on its own: {seen:#?}"
    );
    // Without Tasks.ReadWrite.All the list cannot be found: consent is named.
    f.double
        .add_app(TENANT, APP, SECRET, &["Contacts.ReadWrite"]);
    let mut s = f.store().await;
    let e = s.default_task_list().await.unwrap_err();
    assert_eq!(e.code.as_deref(), Some("consent_missing"), "{e}");
    assert!(s.changes("mailFolders/inbox", None).await.is_err());
}

#[tokio::test]
async fn an_update_sends_only_what_changed() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    let values = appointment("evt-8", "Board meeting");
    let (id, v1) = done(
        s.create("calendar", RecordType::Appointment, &values)
            .await
            .unwrap(),
    );
    let mut renamed = values.clone();
    renamed["subject"] = json!("Board meeting (agenda attached)");
    let (_, v2) = done(s.update("calendar", &id, &v1, &renamed).await.unwrap());
    let patches: Vec<Value> = f
        .double
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0],
        json!({"subject": "Board meeting (agenda attached)"}),
        "the attendees are not sent an update for a field that did not change"
    );
    // Nothing changed: nothing is written, the version stays.
    let (_, v3) = done(s.update("calendar", &id, &v2, &renamed).await.unwrap());
    assert_eq!(v3, v2);
    assert_eq!(
        f.double
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count(),
        1
    );
    // ... unless the item moved on meanwhile: then it is a conflict.
    assert!(
        f.double
            .update_item(ALICE, &id, json!({"location": {"displayName": "Room 9"}}))
    );
    match s.update("calendar", &id, &v2, &renamed).await.unwrap() {
        Written::Conflict { current } => assert_eq!(current.values["location"], "Room 9"),
        other => panic!("{other:?}"),
    }
    f.assert_schema_clean();
}

#[tokio::test]
async fn collections_may_be_named_by_id() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    let calendar = format!(
        "calendars/{}",
        f.double.default_container(ALICE, ItemKind::Event)
    );
    let folder = format!(
        "contactFolders/{}",
        f.double.default_container(ALICE, ItemKind::Contact)
    );
    for (coll, kind, values) in [
        (
            calendar.as_str(),
            RecordType::Appointment,
            appointment("evt-9", "By id"),
        ),
        (
            folder.as_str(),
            RecordType::Contact,
            contact("con-10", "Gil Bates"),
        ),
    ] {
        let (id, version) = done(s.create(coll, kind, &values).await.unwrap());
        let set = s.changes(coll, None).await.unwrap();
        assert_eq!(set.changed.len(), 1, "{coll}");
        assert_eq!(set.changed[0].id, id);
        assert_values(&set.changed[0].values, &values);
        assert!(matches!(
            s.create(coll, kind, &values).await.unwrap(),
            Written::Conflict { .. }
        ));
        done(s.delete(coll, &id, &version).await.unwrap());
        let after = s.changes(coll, set.next.as_ref()).await.unwrap();
        assert_eq!(after.deleted, [id], "{coll}");
    }
    // A record type the collection does not hold is refused before anything is sent.
    let e = s
        .create(&calendar, RecordType::Contact, &contact("con-11", "X"))
        .await
        .unwrap_err();
    assert_eq!(e.code.as_deref(), Some("invalid_collection"));
    f.assert_schema_clean();
}

/// A weekly series of six on Thursdays at 09:00 Berlin (08:00 UTC), from 2026-12-10.
fn series(uid: &str, subject: &str) -> Value {
    let mut v = appointment(uid, subject);
    v["rrule"] = json!("FREQ=WEEKLY;COUNT=6");
    v["attendees"] = json!([]);
    v
}

/// The ids of the series' instances on the double, by original start (UTC, RFC 3339).
fn occurrence_ids(f: &Fixture, id: &str) -> Vec<(String, String)> {
    f.double
        .instances(
            ALICE,
            id,
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2027, 12, 31, 0, 0, 0).unwrap(),
        )
        .iter()
        .map(|i| {
            (
                i["originalStart"].as_str().unwrap().to_owned(),
                i["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn occurrence(f: &Fixture, id: &str, original: &str) -> String {
    occurrence_ids(f, id)
        .into_iter()
        .find(|(o, _)| o == original)
        .unwrap_or_else(|| panic!("no occurrence at {original}"))
        .1
}

/// A series with one moved (and renamed) and one cancelled occurrence, made on the server
/// by another client, reads with those exceptions — from delta and from `get`, the instance
/// lists of several series in one `$batch` round trip.
#[tokio::test]
async fn a_series_reads_with_its_moved_and_cancelled_occurrences() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    let graph = |local: &str| json!({"dateTime": local, "timeZone": "Europe/Berlin"});
    let make = |subject: &str| {
        f.double.create_item(
            ALICE,
            "calendar",
            json!({
                "subject": subject, "location": {"displayName": "Room 1"},
                "start": graph("2026-12-10T09:00:00"), "end": graph("2026-12-10T10:00:00"),
                "recurrence": {
                    "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["thursday"],
                                "firstDayOfWeek": "monday"},
                    "range": {"type": "numbered", "numberOfOccurrences": 6,
                              "startDate": "2026-12-10", "recurrenceTimeZone": "Europe/Berlin"},
                },
            }),
        )
    };
    let id = make("Review");
    let other = make("Standup");
    let moved = occurrence(&f, &id, "2026-12-17T08:00:00Z");
    assert!(f.double.update_item(
        ALICE,
        &moved,
        json!({"subject": "Review (later)",
               "start": graph("2026-12-17T11:00:00"), "end": graph("2026-12-17T12:00:00")})
    ));
    let cancelled = occurrence(&f, &id, "2026-12-24T08:00:00Z");
    assert!(f.double.delete_item(ALICE, &cancelled));
    let gone = occurrence(&f, &other, "2027-01-14T08:00:00Z");
    assert!(f.double.delete_item(ALICE, &gone));

    let before = f.double.requests().len();
    let set = s.changes("calendar", None).await.unwrap();
    assert!(set.unreadable.is_empty(), "{:?}", set.unreadable);
    let item = set
        .changed
        .iter()
        .find(|i| i.id == id)
        .expect("the series, by its master");
    assert_eq!(item.values["rrule"], "FREQ=WEEKLY;COUNT=6");
    assert_eq!(item.values["exdates"], json!(["2026-12-24T08:00:00Z"]));
    assert_eq!(
        item.values["overrides"],
        json!([{"recurrence_id": "2026-12-17T08:00:00Z", "start": "2026-12-17T10:00:00Z",
                "end": "2026-12-17T11:00:00Z", "subject": "Review (later)"}])
    );
    let standup = set.changed.iter().find(|i| i.id == other).unwrap();
    assert_eq!(standup.values["exdates"], json!(["2027-01-14T08:00:00Z"]));
    assert_eq!(standup.values["overrides"], json!([]));
    let sent = &f.double.requests()[before..];
    assert!(
        !sent.iter().any(|r| r.path.contains("/instances")),
        "the instance lists go in a $batch: {:?}",
        sent.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(
        sent.iter().any(|r| r.path.contains("$batch")
            && String::from_utf8_lossy(&r.body).contains("/instances"))
    );

    let got = s.get("calendar", &id).await.unwrap().expect("the series");
    assert_eq!(got.values["exdates"], item.values["exdates"]);
    assert_eq!(got.values["overrides"], item.values["overrides"]);
    f.assert_schema_clean();
}

/// Values with a moved and a cancelled occurrence are written to the series' instances on
/// create and update, and read back the same; restoring an occurrence the server cancelled is
/// refused (`unmappable_values`) before anything is written.
#[tokio::test]
async fn a_series_is_written_with_its_exceptions() {
    let f = fixture(GraphConfig::default()).await;
    let mut s = f.store().await;
    let mut v = series("s-1", "Review");
    v["exdates"] = json!(["2026-12-24T08:00:00Z"]);
    v["overrides"] = json!([{"recurrence_id": "2026-12-17T08:00:00Z",
        "start": "2026-12-17T10:00:00Z", "end": "2026-12-17T11:00:00Z",
        "subject": "Review (later)"}]);
    let Written::Done { id, version } = s
        .create("calendar", RecordType::Appointment, &v)
        .await
        .unwrap()
    else {
        panic!("created");
    };
    let on_server = occurrence_ids(&f, &id);
    assert_eq!(on_server.len(), 5, "one cancelled: {on_server:?}");
    assert!(!on_server.iter().any(|(o, _)| o == "2026-12-24T08:00:00Z"));
    let exceptions: Vec<Value> = f
        .double
        .instances(
            ALICE,
            &id,
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2027, 12, 31, 0, 0, 0).unwrap(),
        )
        .into_iter()
        .filter(|i| i["type"] == "exception")
        .collect();
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    assert_eq!(exceptions[0]["originalStart"], "2026-12-17T08:00:00Z");
    assert_eq!(exceptions[0]["subject"], "Review (later)");
    assert_eq!(
        exceptions[0]["start"]["dateTime"], "2026-12-17T11:00:00.0000000",
        "in the series' zone"
    );
    let got = s.get("calendar", &id).await.unwrap().unwrap();
    assert_eq!(
        got.version, version,
        "the version after the instance writes"
    );
    for k in ["rrule", "exdates", "overrides", "subject", "start", "end"] {
        assert_eq!(got.values[k], v[k], "{k}");
    }

    // An update: one more cancelled, the moved one moved back.
    let mut v2 = v.clone();
    v2["exdates"] = json!(["2026-12-24T08:00:00Z", "2026-12-31T08:00:00Z"]);
    v2["overrides"] = json!([]);
    let Written::Done {
        version: v2_version,
        ..
    } = s.update("calendar", &id, &got.version, &v2).await.unwrap()
    else {
        panic!("updated");
    };
    let got = s.get("calendar", &id).await.unwrap().unwrap();
    assert_eq!(got.version, v2_version);
    assert_eq!(got.values["exdates"], v2["exdates"]);
    assert_eq!(got.values["overrides"], json!([]));
    assert_eq!(occurrence_ids(&f, &id).len(), 4);

    // Restoring a cancelled occurrence: refused, nothing written.
    let writes = |f: &Fixture| {
        f.double
            .requests()
            .iter()
            .filter(|r| matches!(r.method.as_str(), "PATCH" | "DELETE"))
            .count()
    };
    let before = writes(&f);
    let mut v3 = v2.clone();
    v3["exdates"] = json!(["2026-12-24T08:00:00Z"]);
    v3["subject"] = json!("Review (renamed)");
    let err = s
        .update("calendar", &id, &got.version, &v3)
        .await
        .expect_err("a cancelled occurrence cannot come back");
    assert_eq!(err.code.as_deref(), Some("unmappable_values"), "{err:?}");
    assert!(
        err.message.contains("2026-12-31T08:00:00Z"),
        "{}",
        err.message
    );
    assert_eq!(writes(&f), before, "nothing written");
    // An occurrence's own description cannot be written either.
    let mut v4 = series("s-2", "Other");
    v4["overrides"] = json!([{"recurrence_id": "2026-12-17T08:00:00Z",
        "start": "2026-12-17T08:00:00Z", "end": "2026-12-17T09:00:00Z", "description": "x"}]);
    let err = s
        .create("calendar", RecordType::Appointment, &v4)
        .await
        .expect_err("refused");
    assert!(
        err.message.contains("overrides.description"),
        "{}",
        err.message
    );
    assert_eq!(f.double.items(ALICE, "calendar").len(), 1, "not created");
    f.assert_schema_clean();
}
