//! CRM records through the REST API, on SQLite and PostgreSQL. Email activities: filters by
//! mailbox, regarding record, conversation and time; the thread of an activity; attachment
//! download. Appointments, tasks and contacts: create, read, partial change (with the version
//! read), list with filters, delete; bad input named by field; the privileges they take.

mod common;

use axum::body::Body;
use common::{Instance, Trust, both};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use serversync_engine::intake::take_in;
use serversync_model::crm::EmailActivity;
use serversync_model::item::ItemSource;
use serversync_model::mailbox::{ApprovalStatus, Mailbox};
use serversync_model::settings::{EmailSettings, TrackingFilter};
use serversync_store::Backend;
use std::time::Duration;
use tower::ServiceExt;

const ORG: &str = "/api/v1/orgs/default";

/// A mailbox that tracks every message, approved, taking everything in.
async fn tracking_mailbox(s: &Instance, user: &Value) -> Mailbox {
    let id = user["mailbox"]["id"].as_str().unwrap();
    let mut mb = s.store.fetch::<Mailbox>(id).await.unwrap().value;
    mb.approval = ApprovalStatus::Approved;
    mb.tracking = TrackingFilter::AllEmail;
    mb.process_email_from = None;
    s.store.update(&mb, None).await.unwrap().value
}

fn message(
    from: &str,
    to: &str,
    id: &str,
    reply_to: Option<&str>,
    date: &str,
    subject: &str,
) -> Vec<u8> {
    let irt = reply_to
        .map(|r| format!("In-Reply-To: <{r}>\r\nReferences: <{r}>\r\n"))
        .unwrap_or_default();
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{id}>\r\n{irt}Date: {date}\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n\
--b\r\nContent-Type: text/csv; name=\"prices.csv\"\r\nContent-Disposition: attachment; filename=\"prices.csv\"\r\n\r\n\
item,price\r\nwidget,3\r\n\
--b--\r\n"
    )
    .into_bytes()
}

async fn get_raw(s: &Instance, path: &str) -> (u16, axum::http::HeaderMap, Vec<u8>) {
    let req = axum::http::Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {}", s.token))
        .body(Body::empty())
        .unwrap();
    let resp = s.app.clone().oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, bytes)
}

fn subjects(page: &Value) -> Vec<String> {
    let mut v: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["subject"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn expect_400(s: &Instance, path: &str, field: &str) {
    let (status, body) = s.call("GET", path, None).await;
    assert_eq!(status, 400, "{path}: {body}");
    assert_eq!(body["field"], field, "{path}: {body}");
}

both!(
    activities_are_filtered_threaded_and_their_attachments_downloaded,
    |backend| {
        let s = Instance::start(backend, Trust::TestCa).await;
        let alice = s.user("Alice", "alice@example.test", "pw").await;
        let bob = s.user("Bob", "bob@example.test", "pw").await;
        let ann = s
            .ok(
                "POST",
                &format!("{ORG}/contacts"),
                Some(json!({"name": "Ann", "emails": ["ann@customer.test"]})),
            )
            .await;
        let alice_mb = tracking_mailbox(&s, &alice).await;
        let bob_mb = tracking_mailbox(&s, &bob).await;
        let settings = s
            .store
            .fetch::<EmailSettings>(&alice_mb.org_id.to_string())
            .await
            .unwrap()
            .value;
        let at = |d: &str| chrono::DateTime::parse_from_rfc3339(d).unwrap().to_utc();
        let mail = [
            (
                &alice_mb,
                message(
                    "Ann <ann@customer.test>",
                    "alice@example.test",
                    "m1@customer.test",
                    None,
                    "Mon, 3 Mar 2025 09:00:00 +0000",
                    "Prices",
                ),
                "2025-03-03T09:00:00Z",
            ),
            (
                &alice_mb,
                message(
                    "alice@example.test",
                    "ann@customer.test",
                    "m2@example.test",
                    Some("m1@customer.test"),
                    "Tue, 4 Mar 2025 09:00:00 +0000",
                    "Re: Prices",
                ),
                "2025-03-04T09:00:00Z",
            ),
            (
                &bob_mb,
                message(
                    "ann@customer.test",
                    "bob@example.test",
                    "m3@customer.test",
                    None,
                    "Wed, 5 Mar 2025 09:00:00 +0000",
                    "Delivery",
                ),
                "2025-03-05T09:00:00Z",
            ),
        ];
        for (i, (mb, raw, when)) in mail.iter().enumerate() {
            take_in(
                &s.store,
                mb,
                &settings,
                None,
                ItemSource::Router {
                    via: format!("test{i}"),
                },
                raw,
                at(when),
            )
            .await
            .unwrap();
        }
        // The engine's tracker turns the stored messages into activities.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let all = loop {
            let page = s.ok("GET", &format!("{ORG}/activities"), None).await;
            if page["items"].as_array().unwrap().len() == 3 {
                break page;
            }
            assert!(std::time::Instant::now() < deadline, "activities: {page}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let by_subject = |subj: &str| -> Value {
            all["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["subject"] == subj)
                .unwrap()
                .clone()
        };
        let (m1, m2, m3) = (
            by_subject("Prices"),
            by_subject("Re: Prices"),
            by_subject("Delivery"),
        );

        // By mailbox.
        let page = s
            .ok(
                "GET",
                &format!("{ORG}/activities?mailbox={}", bob_mb.id),
                None,
            )
            .await;
        assert_eq!(subjects(&page), ["Delivery"]);
        let page = s
            .ok(
                "GET",
                &format!("{ORG}/activities?mailbox={}", alice_mb.id),
                None,
            )
            .await;
        assert_eq!(subjects(&page), ["Prices", "Re: Prices"]);
        // With paging: one at a time, the filter kept.
        let p1 = s
            .ok(
                "GET",
                &format!("{ORG}/activities?mailbox={}&limit=1", alice_mb.id),
                None,
            )
            .await;
        assert_eq!(p1["items"].as_array().unwrap().len(), 1);
        let next = p1["next"].as_str().unwrap();
        let p2 = s
            .ok(
                "GET",
                &format!(
                    "{ORG}/activities?mailbox={}&limit=1&after={next}",
                    alice_mb.id
                ),
                None,
            )
            .await;
        assert_eq!(p2["items"].as_array().unwrap().len(), 1);
        assert_ne!(p1["items"][0]["id"], p2["items"][0]["id"]);
        assert!(p2["next"].is_null());

        // By time (received), since inclusive, until exclusive.
        let page = s
            .ok(
                "GET",
                &format!("{ORG}/activities?since=2025-03-04T09:00:00Z"),
                None,
            )
            .await;
        assert_eq!(subjects(&page), ["Delivery", "Re: Prices"]);
        let page = s
            .ok(
                "GET",
                &format!("{ORG}/activities?since=2025-03-04T00:00:00Z&until=2025-03-05T00:00:00Z"),
                None,
            )
            .await;
        assert_eq!(subjects(&page), ["Re: Prices"]);

        // By conversation, and the thread oldest first.
        let conv = m2["conversation_id"]
            .as_str()
            .expect("the reply joined the conversation");
        assert_eq!(m1["conversation_id"], conv);
        let page = s
            .ok(
                "GET",
                &format!("{ORG}/activities?conversation={conv}"),
                None,
            )
            .await;
        assert_eq!(subjects(&page), ["Prices", "Re: Prices"]);
        let thread = s
            .ok(
                "GET",
                &format!("{ORG}/activities/{}/thread", m2["id"].as_str().unwrap()),
                None,
            )
            .await;
        let t: Vec<&str> = thread
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["subject"].as_str().unwrap())
            .collect();
        assert_eq!(t, ["Prices", "Re: Prices"]);
        let thread = s
            .ok(
                "GET",
                &format!("{ORG}/activities/{}/thread", m3["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(thread.as_array().unwrap().len(), 1);

        // By regarding record: set Delivery regarding Ann.
        let ann_id = ann["id"].as_str().unwrap();
        let mut a3 = s
            .store
            .fetch::<EmailActivity>(m3["id"].as_str().unwrap())
            .await
            .unwrap()
            .value;
        a3.regarding =
            Some(serde_json::from_value(json!({"type": "contact", "id": ann_id})).unwrap());
        s.store.update(&a3, None).await.unwrap();
        let page = s
            .ok(
                "GET",
                &format!("{ORG}/activities?regarding=contact:{ann_id}"),
                None,
            )
            .await;
        assert_eq!(subjects(&page), ["Delivery"]);
        let page = s
            .ok(
                "GET",
                &format!(
                    "{ORG}/activities?regarding=contact:{ann_id}&mailbox={}",
                    alice_mb.id
                ),
                None,
            )
            .await;
        assert_eq!(subjects(&page), Vec::<String>::new());

        // Attachment download.
        let att = &m1["attachments"][0];
        assert_eq!(att["file_name"], "prices.csv");
        let sha = att["sha256"].as_str().unwrap();
        let m1_id = m1["id"].as_str().unwrap();
        let (status, headers, bytes) =
            get_raw(&s, &format!("{ORG}/activities/{m1_id}/attachments/{sha}")).await;
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/csv");
        assert_eq!(
            headers["content-disposition"],
            "attachment; filename=\"prices.csv\""
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap().replace("\r\n", "\n"),
            "item,price\nwidget,3"
        );
        // Bytes that were not kept: 404 saying why.
        let mut a1 = s.store.fetch::<EmailActivity>(m1_id).await.unwrap().value;
        a1.attachments[0].dropped_reason = Some("larger than the attachment size limit".into());
        s.store.update(&a1, None).await.unwrap();
        let (status, body) = s
            .call(
                "GET",
                &format!("{ORG}/activities/{m1_id}/attachments/{sha}"),
                None,
            )
            .await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["code"], "attachment_dropped");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("larger than the attachment size limit"),
            "{body}"
        );
        let (status, _) = s
            .call(
                "GET",
                &format!("{ORG}/activities/{m1_id}/attachments/{}", "0".repeat(64)),
                None,
            )
            .await;
        assert_eq!(status, 404);
        expect_400(
            &s,
            &format!("{ORG}/activities/{m1_id}/attachments/xyz"),
            "sha256",
        )
        .await;

        // Bad parameters name themselves.
        expect_400(&s, &format!("{ORG}/activities?mailbox=alice"), "mailbox").await;
        expect_400(
            &s,
            &format!("{ORG}/activities?regarding=contact"),
            "regarding",
        )
        .await;
        expect_400(
            &s,
            &format!("{ORG}/activities?regarding=planet:{ann_id}"),
            "regarding",
        )
        .await;
        expect_400(&s, &format!("{ORG}/activities?since=yesterday"), "since").await;
        expect_400(
            &s,
            &format!("{ORG}/activities?since=2025-03-05T00:00:00Z&until=2025-03-04T00:00:00Z"),
            "until",
        )
        .await;
        expect_400(
            &s,
            &format!("{ORG}/activities?mailbox_id={}", alice_mb.id),
            "mailbox_id",
        )
        .await;
        expect_400(&s, &format!("{ORG}/queue-items?queue=support"), "queue").await;
        let page = s
            .ok(
                "GET",
                &format!("{ORG}/queue-items?queue={}", uuid_zero()),
                None,
            )
            .await;
        assert_eq!(page["items"], json!([]));
    }
);

fn uuid_zero() -> &'static str {
    "00000000-0000-0000-0000-000000000000"
}

// An attachment is hostile content from outside: an HTML file the sender marked inline, with a
// quote in its name, downloads as a file — `Content-Disposition: attachment`, never sniffed as
// another type (`nosniff`), and sandboxed with no script should a browser show it anyway.
both!(a_hostile_attachment_downloads_as_a_file, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let alice = s.user("Alice", "alice@example.test", "pw").await;
    let mb = tracking_mailbox(&s, &alice).await;
    let settings = s
        .store
        .fetch::<EmailSettings>(&mb.org_id.to_string())
        .await
        .unwrap()
        .value;
    let html = "<html><body><script>fetch('/api/v1/orgs')</script></body></html>";
    let raw = format!(
        "From: Mallory <mallory@attacker.test>\r\nTo: alice@example.test\r\nSubject: Invoice\r\n\
Message-ID: <evil@attacker.test>\r\nDate: Mon, 3 Mar 2025 09:00:00 +0000\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nSee the invoice.\r\n\
--b\r\nContent-Type: text/html; name=\"inv\\\"oice.html\"\r\nContent-Disposition: inline; filename=\"inv\\\"oice.html\"\r\n\r\n\
{html}\r\n--b--\r\n"
    );
    take_in(
        &s.store,
        &mb,
        &settings,
        None,
        ItemSource::Router { via: "test".into() },
        raw.as_bytes(),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let a = loop {
        let page = s.ok("GET", &format!("{ORG}/activities"), None).await;
        if let Some(a) = page["items"].as_array().unwrap().first() {
            break a.clone();
        }
        assert!(std::time::Instant::now() < deadline, "activities: {page}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sha = a["attachments"][0]["sha256"].as_str().unwrap();
    let (status, headers, bytes) = get_raw(
        &s,
        &format!(
            "{ORG}/activities/{}/attachments/{sha}",
            a["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&bytes).contains("<script>"),
        "the bytes as sent"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff", "{headers:?}");
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"inv_oice.html\""),
        "{disposition}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("sandbox"),
        "{csp}"
    );
});

/// The 422 problem's field (and that it is one).
#[track_caller]
fn field_of(status: u16, v: &Value) -> String {
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["status"], 422, "{v}");
    v["field"].as_str().unwrap_or_default().to_owned()
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

both!(
    appointments_are_created_read_changed_listed_and_deleted,
    |backend| {
        let s = Instance::start(backend, Trust::TestCa).await;
        let bob = s.user("Bob", "bob@example.test", "pw").await;
        let bob_id = bob["user"]["id"].as_str().unwrap();
        let base = format!("{ORG}/appointments");

        let a = s
            .ok(
                "POST",
                &base,
                Some(json!({
                    "subject": "Quarterly review",
                    "location": "Room 1",
                    "starts_at": "2026-03-02T09:00:00Z",
                    "ends_at": "2026-03-02T10:00:00Z",
                    "time_zone": "Europe/Paris",
                    "organizer": "ann@customer.test",
                    "attendees": ["carl@customer.test", "dora@customer.test"],
                    "recurrence": {"rule": "FREQ=WEEKLY;COUNT=4"},
                })),
            )
            .await;
        let id = a["id"].as_str().unwrap().to_owned();
        let path = format!("{base}/{id}");
        assert_eq!(a["version"], 1);
        assert_eq!(a["state"], "open");
        assert_eq!(a["organizer"]["address"], "ann@customer.test");
        assert_eq!(a["attendees"][1]["address"], "dora@customer.test");
        assert_eq!(a["recurrence"]["rule"], "FREQ=WEEKLY;COUNT=4");
        let got = s.ok("GET", &path, None).await;
        assert_eq!(got, a);

        // A partial change keeps the other fields; with the version read, a stale one is refused.
        let changed = s
        .ok(
            "PATCH",
            &path,
            Some(json!({"location": "Room 2", "attendees": ["dora@customer.test", "eve@customer.test"], "version": 1})),
        )
        .await;
        assert_eq!(changed["version"], 2);
        assert_eq!(changed["location"], "Room 2");
        assert_eq!(changed["subject"], "Quarterly review");
        assert_eq!(changed["time_zone"], "Europe/Paris");
        let attendees: Vec<&str> = changed["attendees"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["address"].as_str().unwrap())
            .collect();
        assert_eq!(attendees, ["dora@customer.test", "eve@customer.test"]);
        let (status, v) = s
            .call(
                "PATCH",
                &path,
                Some(json!({"subject": "Late", "version": 1})),
            )
            .await;
        assert_eq!((status, v["field"].as_str()), (409, Some("version")), "{v}");
        let changed = s
            .ok(
                "PATCH",
                &path,
                Some(json!({"location": null, "recurrence": null, "state": "completed"})),
            )
            .await;
        assert!(changed["location"].is_null(), "{changed}");
        assert!(changed["recurrence"].is_null(), "{changed}");
        assert_eq!(changed["state"], "completed");
        assert_eq!(changed["version"], 3);

        // A second one, Bob's, later and canceled; a task and an email are no appointments.
        let b = s
        .ok(
            "POST",
            &base,
            Some(json!({"subject": "Site visit", "starts_at": "2026-03-05T13:00:00Z",
                        "ends_at": "2026-03-05T15:00:00Z", "owner_id": bob_id, "state": "canceled"})),
        )
        .await;
        let b_id = b["id"].as_str().unwrap().to_owned();
        let task = s
            .ok(
                "POST",
                &format!("{ORG}/tasks"),
                Some(json!({"subject": "Call back"})),
            )
            .await;
        let (status, _) = s
            .call(
                "GET",
                &format!("{base}/{}", task["id"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(status, 404, "a task is not an appointment");
        let (status, _) = s.call("GET", &format!("{ORG}/tasks/{id}"), None).await;
        assert_eq!(status, 404, "an appointment is not a task");

        let list = |q: String| {
            let (s, url) = (&s, format!("{base}{q}"));
            async move { ids(&s.ok("GET", &url, None).await) }
        };
        assert_eq!(list("".into()).await, [id.as_str(), b_id.as_str()]);
        assert_eq!(list(format!("?owner={bob_id}")).await, [b_id.as_str()]);
        assert_eq!(
            list("?since=2026-03-03T00:00:00Z".into()).await,
            [b_id.as_str()]
        );
        assert_eq!(
            list("?until=2026-03-03T00:00:00Z".into()).await,
            [id.as_str()]
        );
        assert_eq!(
            list("?since=2026-03-02T09:00:00Z&until=2026-03-05T13:00:00Z".into()).await,
            [id.as_str()]
        );
        assert_eq!(list("?state=canceled".into()).await, [b_id.as_str()]);
        assert_eq!(list("?state=completed".into()).await, [id.as_str()]);
        let p1 = s.ok("GET", &format!("{base}?limit=1"), None).await;
        assert_eq!(ids(&p1), [id.as_str()]);
        let p2 = s
            .ok(
                "GET",
                &format!("{base}?limit=1&after={}", p1["next"].as_str().unwrap()),
                None,
            )
            .await;
        assert_eq!(ids(&p2), [b_id.as_str()]);
        assert!(p2["next"].is_null());
        expect_400(&s, &format!("{base}?since=monday"), "since").await;
        expect_400(&s, &format!("{base}?state=postponed"), "state").await;
        expect_400(&s, &format!("{base}?owner=bob"), "owner").await;
        expect_400(&s, &format!("{base}?colour=red"), "colour").await;
        expect_400(
            &s,
            &format!("{base}?since=2026-03-05T00:00:00Z&until=2026-03-01T00:00:00Z"),
            "until",
        )
        .await;

        // Bad input names the field.
        let start = json!({"subject": "S", "starts_at": "2026-03-02T09:00:00Z", "ends_at": "2026-03-02T10:00:00Z"});
        let with = |extra: Value| {
            let mut b = start.clone();
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        for (body, field) in [
            (with(json!({"ends_at": "2026-03-02T08:00:00Z"})), "ends_at"),
            (with(json!({"time_zone": "Mars/Olympus_Mons"})), "time_zone"),
            (
                with(json!({"time_zone": "W. Europe Standard Time"})),
                "time_zone",
            ),
            (with(json!({"colour": "red"})), "colour"),
            (with(json!({"subject": " "})), "subject"),
            (with(json!({"organizer": "nobody"})), "organizer"),
            (
                with(json!({"attendees": ["a@x.test", "b at x"]})),
                "attendees[1]",
            ),
            (with(json!({"state": "postponed"})), "state"),
            (with(json!({"starts_at": "tomorrow"})), "starts_at"),
            (
                with(json!({"recurrence": {"rule": "every monday"}})),
                "recurrence.rule",
            ),
            (with(json!({"owner_id": uuid_zero()})), "owner_id"),
            (
                json!({"subject": "S", "starts_at": "2026-03-02T09:00:00Z"}),
                "ends_at",
            ),
        ] {
            let (status, v) = s.call("POST", &base, Some(body.clone())).await;
            assert_eq!(field_of(status, &v), field, "{body}");
        }
        for (body, field) in [
            (json!({"ends_at": "2026-03-01T00:00:00Z"}), "ends_at"),
            (json!({"starts_at": "2026-03-02T11:00:00Z"}), "starts_at"),
            (json!({"time_zone": "Nowhere/Special"}), "time_zone"),
            (json!({"attendees": ["x"]}), "attendees[0]"),
            (json!({"ical_uid": "mine"}), "ical_uid"),
            (json!({"version": "three"}), "version"),
        ] {
            let (status, v) = s.call("PATCH", &path, Some(body.clone())).await;
            assert_eq!(field_of(status, &v), field, "{body}");
        }
        assert_eq!(
            s.ok("GET", &path, None).await["version"],
            3,
            "nothing written"
        );

        // Deleted: gone, and a second delete is a 404 too.
        let (status, _) = s.call("DELETE", &path, None).await;
        assert_eq!(status, 204);
        for method in ["GET", "DELETE"] {
            let (status, v) = s.call(method, &path, None).await;
            assert_eq!(status, 404, "{method}: {v}");
        }
        let (status, _) = s.call("PATCH", &path, Some(json!({"subject": "x"}))).await;
        assert_eq!(status, 404);
        assert_eq!(list("".into()).await, [b_id.as_str()]);
        expect_400(&s, &format!("{base}/not-an-id"), "id").await;
    }
);

both!(
    tasks_are_created_read_changed_listed_and_deleted,
    |backend| {
        let s = Instance::start(backend, Trust::TestCa).await;
        let bob = s.user("Bob", "bob@example.test", "pw").await;
        let bob_id = bob["user"]["id"].as_str().unwrap();
        let base = format!("{ORG}/tasks");
        let account = s
            .ok(
                "POST",
                &format!("{ORG}/accounts"),
                Some(json!({"name": "Contoso"})),
            )
            .await;
        let t = s
            .ok(
                "POST",
                &base,
                Some(
                    json!({"subject": "Send the quote", "due_at": "2026-03-06T17:00:00Z",
                        "regarding": {"type": "account", "id": account["id"]}}),
                ),
            )
            .await;
        let id = t["id"].as_str().unwrap().to_owned();
        let path = format!("{base}/{id}");
        assert_eq!(
            (t["state"].as_str(), t["percent_complete"].as_u64()),
            (Some("open"), Some(0))
        );
        assert_eq!(s.ok("GET", &path, None).await, t);
        let bobs = s
            .ok(
                "POST",
                &base,
                Some(json!({"subject": "Bob's", "owner_id": bob_id})),
            )
            .await;
        let bobs_id = bobs["id"].as_str().unwrap().to_owned();

        let (status, v) = s
            .call("PATCH", &path, Some(json!({"percent_complete": 140})))
            .await;
        assert_eq!(field_of(status, &v), "percent_complete");
        let done = s
        .ok(
            "PATCH",
            &path,
            Some(json!({"percent_complete": 100, "state": "completed", "due_at": null, "version": 1})),
        )
        .await;
        assert_eq!(done["percent_complete"], 100);
        assert_eq!(done["state"], "completed");
        assert!(done["due_at"].is_null(), "{done}");
        assert_eq!(done["subject"], "Send the quote");
        assert_eq!(done["version"], 2);

        assert_eq!(
            ids(&s.ok("GET", &base, None).await),
            [id.as_str(), bobs_id.as_str()]
        );
        assert_eq!(
            ids(&s.ok("GET", &format!("{base}?state=completed"), None).await),
            [id.as_str()]
        );
        assert_eq!(
            ids(&s
                .ok("GET", &format!("{base}?state=open&owner={bob_id}"), None)
                .await),
            [bobs_id.as_str()]
        );
        expect_400(&s, &format!("{base}?since=2026-03-01T00:00:00Z"), "since").await;

        for (body, field) in [
            (
                json!({"subject": "S", "percent_complete": 140}),
                "percent_complete",
            ),
            (
                json!({"subject": "S", "percent_complete": -1}),
                "percent_complete",
            ),
            (json!({"subject": "S", "priority": "high"}), "priority"),
            (json!({"subject": ""}), "subject"),
            (json!({"subject": "S", "due_at": "friday"}), "due_at"),
            (
                json!({"subject": "S", "regarding": {"type": "contact", "id": uuid_zero()}}),
                "regarding",
            ),
            (json!({}), "subject"),
        ] {
            let (status, v) = s.call("POST", &base, Some(body.clone())).await;
            assert_eq!(field_of(status, &v), field, "{body}");
        }

        let (status, _) = s.call("DELETE", &path, None).await;
        assert_eq!(status, 204);
        let (status, _) = s.call("GET", &path, None).await;
        assert_eq!(status, 404);
        assert_eq!(ids(&s.ok("GET", &base, None).await), [bobs_id.as_str()]);
    }
);

both!(contacts_are_read_changed_and_deleted, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let base = format!("{ORG}/contacts");
    let c = s
        .ok(
            "POST",
            &base,
            Some(json!({"name": "Ann Example", "emails": ["ann@customer.test"], "company": "Customer Ltd",
                        "job_title": "Buyer", "phones": ["+1 555 0100"]})),
        )
        .await;
    let id = c["id"].as_str().unwrap().to_owned();
    let path = format!("{base}/{id}");
    assert_eq!(c["full_name"], "Ann Example");
    assert_eq!(c["company"], "Customer Ltd");
    assert_eq!(c["job_title"], "Buyer");
    assert_eq!(c["phones"], json!(["+1 555 0100"]));
    assert_eq!(s.ok("GET", &path, None).await, c);
    // `full_name` is the record's own name for it.
    let d = s
        .ok("POST", &base, Some(json!({"full_name": "Dora Example"})))
        .await;
    assert_eq!(d["full_name"], "Dora Example");

    let account = s
        .ok(
            "POST",
            &format!("{ORG}/accounts"),
            Some(json!({"name": "Customer Ltd"})),
        )
        .await;
    let changed = s
        .ok(
            "PATCH",
            &path,
            Some(json!({"full_name": "Ann B. Example", "company": null, "phones": ["+1 555 0101", "+1 555 0102"],
                        "account_id": account["id"], "version": 1})),
        )
        .await;
    assert_eq!(changed["full_name"], "Ann B. Example");
    assert!(changed["company"].is_null(), "{changed}");
    assert_eq!(changed["job_title"], "Buyer");
    assert_eq!(changed["emails"], json!(["ann@customer.test"]));
    assert_eq!(changed["account_id"], account["id"]);
    assert_eq!(changed["version"], 2);
    let changed = s
        .ok("PATCH", &path, Some(json!({"account_id": null})))
        .await;
    assert!(changed["account_id"].is_null(), "{changed}");

    for (method, url, body, field) in [
        (
            "POST",
            &base,
            json!({"name": "X", "phones": ["call me"]}),
            "phones[0]",
        ),
        (
            "POST",
            &base,
            json!({"name": "X", "emails": ["x"]}),
            "emails[0]",
        ),
        (
            "POST",
            &base,
            json!({"name": "X", "nickname": "x"}),
            "nickname",
        ),
        (
            "POST",
            &base,
            json!({"name": "X", "account_id": uuid_zero()}),
            "account_id",
        ),
        ("PATCH", &path, json!({"full_name": ""}), "full_name"),
        (
            "PATCH",
            &path,
            json!({"emails": ["ann@customer.test", "nope"]}),
            "emails[1]",
        ),
        (
            "PATCH",
            &path,
            json!({"account_id": uuid_zero()}),
            "account_id",
        ),
        ("PATCH", &path, json!({"owner": "x"}), "owner"),
        (
            "PATCH",
            &path,
            json!({"full_name": "Late", "version": 1}),
            "version",
        ),
    ] {
        let (status, v) = s.call(method, url, Some(body.clone())).await;
        if field == "version" {
            assert_eq!((status, v["field"].as_str()), (409, Some("version")), "{v}");
        } else {
            assert_eq!(field_of(status, &v), field, "{method} {body}");
        }
    }

    let (status, _) = s.call("DELETE", &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = s.call("GET", &path, None).await;
    assert_eq!(status, 404);
    let (status, _) = s.call("DELETE", &path, None).await;
    assert_eq!(status, 404);
});

// Reading and writing records takes the "read records" and "write records" privileges: a
// mailbox approver has neither, a basic user both.
both!(records_need_the_records_privileges, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let token_of = |user: Value| {
        let s = &s;
        async move {
            let t = s
                .ok(
                    "POST",
                    &format!(
                        "{ORG}/users/{}/tokens",
                        user["user"]["id"].as_str().unwrap()
                    ),
                    Some(json!({"name": "t"})),
                )
                .await;
            t["token"].as_str().unwrap().to_owned()
        }
    };
    let approver = s
        .ok(
            "POST",
            &format!("{ORG}/users"),
            Some(json!({"full_name": "Approver", "email": "approver@example.test", "roles": ["mailbox_approver"]})),
        )
        .await;
    let approver = token_of(approver).await;
    let basic = token_of(s.user("Basic Bea", "bea@example.test", "pw").await).await;
    let appointment = json!({"subject": "S", "starts_at": "2026-03-02T09:00:00Z", "ends_at": "2026-03-02T10:00:00Z"});
    let records = [
        ("appointments", appointment.clone(), json!({"subject": "T"})),
        ("tasks", json!({"subject": "S"}), json!({"subject": "T"})),
        ("contacts", json!({"name": "S"}), json!({"full_name": "T"})),
    ];
    for (kind, new, change) in &records {
        let r = s
            .ok("POST", &format!("{ORG}/{kind}"), Some(new.clone()))
            .await;
        let path = format!("{ORG}/{kind}/{}", r["id"].as_str().unwrap());
        for (method, url, body) in [
            ("POST", format!("{ORG}/{kind}"), Some(new.clone())),
            ("GET", format!("{ORG}/{kind}"), None),
            ("GET", path.clone(), None),
            ("PATCH", path.clone(), Some(change.clone())),
            ("DELETE", path.clone(), None),
        ] {
            let (status, v) = s.call_as(&approver, method, &url, body.clone()).await;
            assert_eq!(
                (status, v["code"].as_str()),
                (403, Some("missing_privilege")),
                "{method} {url}: {v}"
            );
            let (status, v) = s.call_as(&basic, method, &url, body).await;
            assert!(
                (200..300).contains(&status),
                "basic user: {method} {url}: {status} {v}"
            );
        }
    }
});
