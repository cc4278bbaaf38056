//! Reading email activities through the REST API, on SQLite and PostgreSQL: filters by mailbox,
//! regarding record, conversation and time; the thread of an activity; attachment download.

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
