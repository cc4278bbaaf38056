//! Composing and sending email through the REST API, on SQLite and PostgreSQL: who may send
//! from which mailbox (own, another user's with privilege and consent, a queue's with read
//! access), field-named validation errors, drafts, why pending email waits, and the Email
//! Router handoff (claim with a lease, report, an expired claim becomes outcome unknown).

mod common;

use base64::Engine as _;
use common::{Instance, Trust, both, imap_profile};
use serde_json::{Value, json};
use serversync_model::crm::{EmailActivity, EmailStatus};
use serversync_store::Backend;
use std::time::{Duration, Instant};

const ORG: &str = "/api/v1/orgs/default";

/// An IMAP/SMTP profile for the test servers, the default for new mailboxes.
async fn default_profile(s: &Instance) {
    let p = s
        .ok("POST", &format!("{ORG}/profiles"), Some(imap_profile("P")))
        .await;
    s.ok(
        "POST",
        &format!("{ORG}/profiles/{}/default", p["id"].as_str().unwrap()),
        None,
    )
    .await;
}

async fn token_for(s: &Instance, user: &Value) -> String {
    let id = user["user"]["id"].as_str().unwrap();
    let t = s
        .ok(
            "POST",
            &format!("{ORG}/users/{id}/tokens"),
            Some(json!({"name": "test"})),
        )
        .await;
    t["token"].as_str().unwrap().to_owned()
}

fn mailbox_id(created: &Value) -> String {
    created["mailbox"]["id"].as_str().unwrap().to_owned()
}

async fn ok_as(s: &Instance, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = s.call_as(token, method, path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// The field problems of a 422, as (field, code).
fn fields(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap_or("").to_owned(),
                e["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

both!(who_may_send_from_which_mailbox, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    default_profile(&s).await;
    let bea = s.user("Basic Bea", "bea@example.test", "pw").await;
    let otto = s.user("Other Otto", "otto@example.test", "pw").await;
    let bea_token = token_for(&s, &bea).await;
    let otto_token = token_for(&s, &otto).await;
    let email = |from: &str| json!({"from_mailbox": from, "to": ["customer@example.org"], "subject": "Hello", "text_body": "Hi."});

    // Her own mailbox: pending send, waiting for the approval of her address.
    let (status, a) = s
        .call_as(
            &bea_token,
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&mailbox_id(&bea))),
        )
        .await;
    assert_eq!(status, 201, "{a}");
    assert_eq!(a["status"], "pending_send");
    assert_eq!(a["direction"], "outgoing");
    let why = a["send_waiting"].as_str().unwrap();
    assert!(why.contains("bea@example.test is not approved"), "{why}");
    assert!(
        a["message_id"].as_str().unwrap().starts_with(&format!(
            "act-{}@serversync.example.test",
            a["id"].as_str().unwrap()
        )),
        "{a}"
    );
    assert!(a["tracking_token"].is_string(), "{a}");

    // Otto's mailbox: a basic user lacks "send as another user".
    let (status, v) = s
        .call_as(
            &bea_token,
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&mailbox_id(&otto))),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("missing_privilege")),
        "{v}"
    );
    // The administrator has the privilege, but otto has not consented…
    let (status, v) = s
        .call(
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&mailbox_id(&otto))),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("send_as_not_allowed")),
        "{v}"
    );
    // …until he does, himself.
    let otto_id = otto["user"]["id"].as_str().unwrap();
    let (status, v) = s
        .call_as(
            &bea_token,
            "PATCH",
            &format!("{ORG}/users/{otto_id}"),
            Some(json!({"allow_send_as": true})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("missing_privilege")),
        "only otto: {v}"
    );
    let (status, v) = s
        .call_as(
            &otto_token,
            "PATCH",
            &format!("{ORG}/users/{otto_id}"),
            Some(json!({"allow_send_as": true})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = s
        .call(
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&mailbox_id(&otto))),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v["parties"][0]["address"], "otto@example.test",
        "sent as otto"
    );

    // A queue's mailbox needs read access to the queue.
    let q = s
        .ok(
            "POST",
            &format!("{ORG}/queues"),
            Some(json!({"name": "Support", "email": "support@example.test"})),
        )
        .await;
    let (status, v) = s
        .call_as(
            &bea_token,
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&mailbox_id(&q))),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("no_queue_access")),
        "{v}"
    );
    let qid = q["queue"]["id"].as_str().unwrap();
    s.ok(
        "PUT",
        &format!("{ORG}/queues/{qid}/members"),
        Some(json!({"member_ids": [bea["user"]["id"]]})),
    )
    .await;
    let (status, v) = s
        .call_as(
            &bea_token,
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&mailbox_id(&q))),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["parties"][0]["resolved"]["type"], "queue");
    assert_ne!(
        v["tracking_token"], a["tracking_token"],
        "each email its own token"
    );
});

both!(compose_validation_drafts_and_attachments, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    default_profile(&s).await;
    let bea = s.user("Bea", "bea@example.test", "pw").await;
    let from = mailbox_id(&bea);
    let bt = token_for(&s, &bea).await;
    let nameless = s
        .ok(
            "POST",
            &format!("{ORG}/contacts"),
            Some(json!({"name": "No Address"})),
        )
        .await;
    let carl = s
        .ok(
            "POST",
            &format!("{ORG}/contacts"),
            Some(json!({"name": "Carl", "emails": ["carl@example.org"]})),
        )
        .await;

    // Every problem named by its field.
    let (status, v) = s
        .call_as(
            &bt,
            "POST",
            &format!("{ORG}/activities"),
            Some(json!({
                "from_mailbox": from,
                "to": ["not an address", {"type": "contact", "id": nameless["id"]}],
                "attachments": [{"file_name": "a.txt", "content_base64": "!!"}],
            })),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let f = fields(&v);
    for want in [
        ("to[0]", "invalid_email"),
        ("to[1]", "no_email_address"),
        ("attachments[0].content_base64", "invalid_base64"),
    ] {
        assert!(
            f.contains(&(want.0.into(), want.1.into())),
            "{want:?} in {f:?}"
        );
    }
    let (status, v) = s
        .call_as(
            &bt,
            "POST",
            &format!("{ORG}/activities"),
            Some(json!({"from_mailbox": from, "subject": "Nobody"})),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(fields(&v), vec![("to".to_owned(), "required".to_owned())]);
    let (status, v) = s
        .call_as(
            &bt,
            "POST",
            &format!("{ORG}/activities"),
            Some(json!({"from_mailbox": from, "to": ["a@example.org"], "bogus": 1})),
        )
        .await;
    assert_eq!((status, v["field"].as_str()), (422, Some("bogus")), "{v}");

    // A draft to a contact, with an attachment and a regarding record; then sent.
    let bytes = b"item,price\nwidget,3\n";
    let (status, d) = s
        .call_as(
            &bt,
            "POST",
            &format!("{ORG}/activities"),
            Some(json!({
                "from_mailbox": from,
                "to": [{"type": "contact", "id": carl["id"]}],
                "cc": ["boss@example.org"],
                "subject": "Prices",
                "text_body": "See attached.",
                "html_body": "<p>See attached.</p>",
                "attachments": [{"file_name": "prices.csv", "content_type": "text/csv",
                    "content_base64": base64::engine::general_purpose::STANDARD.encode(bytes)}],
                "regarding": {"type": "contact", "id": carl["id"]},
                "draft": true,
            })),
        )
        .await;
    assert_eq!(status, 201, "{d}");
    assert_eq!(d["status"], "draft");
    assert!(
        d.get("send_waiting").is_none(),
        "a draft is not waiting: {d}"
    );
    assert_eq!(d["parties"][1]["address"], "carl@example.org");
    assert_eq!(d["parties"][1]["resolved"]["id"], carl["id"]);
    assert_eq!(d["parties"][2]["role"], "cc");
    let id = d["id"].as_str().unwrap();
    let sha = d["attachments"][0]["sha256"].as_str().unwrap();
    let (status, _, body) = s
        .raw(
            &s.token,
            "GET",
            &format!("{ORG}/activities/{id}/attachments/{sha}"),
            None,
            "",
        )
        .await;
    assert_eq!((status, body.as_bytes()), (200, &bytes[..]));
    let sent = ok_as(
        &s,
        &bt,
        "POST",
        &format!("{ORG}/activities/{id}/send"),
        None,
    )
    .await;
    assert_eq!(sent["status"], "pending_send");
    assert!(
        sent["send_waiting"]
            .as_str()
            .unwrap()
            .contains("not approved"),
        "{sent}"
    );
    let (status, v) = s
        .call_as(&bt, "POST", &format!("{ORG}/activities/{id}/send"), None)
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("not_sendable")),
        "{v}"
    );

    // Scheduled for later: the reason says when.
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    s.ok(
        "POST",
        &format!("{ORG}/mailboxes/approve"),
        Some(json!({"mailbox_ids": [from]})),
    )
    .await;
    let mut mb = s
        .store
        .fetch::<serversync_model::mailbox::Mailbox>(&from)
        .await
        .unwrap()
        .value;
    mb.outgoing.enabled = true;
    s.store.update(&mb, None).await.unwrap();
    let v = ok_as(
        &s,
        &bt,
        "POST",
        &format!("{ORG}/activities"),
        Some(json!({"from_mailbox": from, "to": ["a@example.org"], "send_after": later})),
    )
    .await;
    assert!(
        v["send_waiting"]
            .as_str()
            .unwrap()
            .starts_with("scheduled to be sent at"),
        "{v}"
    );
});

both!(email_router_claims_and_reports, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    default_profile(&s).await;
    let bea = s.user("Bea", "bea@example.test", "pw").await;
    let from = mailbox_id(&bea);
    let bt = token_for(&s, &bea).await;
    s.ok(
        "PATCH",
        &format!("{ORG}/mailboxes/{from}"),
        Some(json!({"outgoing_method": "email_router"})),
    )
    .await;
    s.ok(
        "POST",
        &format!("{ORG}/mailboxes/approve"),
        Some(json!({"mailbox_ids": [from]})),
    )
    .await;
    let compose = |subject: &str| json!({"from_mailbox": from, "to": ["customer@example.org"], "subject": subject, "text_body": "Hi."});
    let a = ok_as(
        &s,
        &bt,
        "POST",
        &format!("{ORG}/activities"),
        Some(compose("Routed")),
    )
    .await;
    assert!(
        a["send_waiting"].as_str().unwrap().contains("Email Router"),
        "{a}"
    );

    let (status, v) = s
        .call(
            "POST",
            &format!("{ORG}/outgoing/claims"),
            Some(json!({"lease_seconds": 5})),
        )
        .await;
    assert_eq!(
        (status, fields(&v)),
        (422, vec![("lease_seconds".into(), "out_of_range".into())]),
        "{v}"
    );
    let claimed = s
        .ok(
            "POST",
            &format!("{ORG}/outgoing/claims"),
            Some(json!({"lease_seconds": 30})),
        )
        .await;
    let claimed = claimed.as_array().unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c["activity"]["id"], a["id"]);
    assert_eq!(c["activity"]["status"], "sending");
    assert_eq!(c["mail_from"], "bea@example.test");
    assert_eq!(c["recipients"], json!(["customer@example.org"]));
    let msg = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(c["message_base64"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(
        msg.contains(&format!(
            "Message-ID: <{}>",
            a["message_id"].as_str().unwrap()
        )),
        "{msg}"
    );
    assert!(msg.contains(a["tracking_token"].as_str().unwrap()), "{msg}");
    // Held: not handed out twice.
    let again = s
        .ok("POST", &format!("{ORG}/outgoing/claims"), Some(json!({})))
        .await;
    assert_eq!(again, json!([]));
    let id = a["id"].as_str().unwrap();
    let (status, v) = s
        .call(
            "POST",
            &format!("{ORG}/activities/{id}/router-report"),
            Some(json!({"claim_id": "wrong", "outcome": "sent"})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("claim_not_held")),
        "{v}"
    );
    let done = s
        .ok(
            "POST",
            &format!("{ORG}/activities/{id}/router-report"),
            Some(json!({"claim_id": c["claim_id"], "outcome": "sent"})),
        )
        .await;
    assert_eq!(done["status"], "sent");

    // A claim that runs out without a report: outcome unknown, then a person sends it again.
    let b = ok_as(
        &s,
        &bt,
        "POST",
        &format!("{ORG}/activities"),
        Some(compose("Lost router")),
    )
    .await;
    let bid = b["id"].as_str().unwrap().to_owned();
    let claimed = s
        .ok(
            "POST",
            &format!("{ORG}/outgoing/claims"),
            Some(json!({"lease_seconds": 30})),
        )
        .await;
    assert_eq!(claimed[0]["activity"]["id"], b["id"]);
    let st = s.store.fetch::<EmailActivity>(&bid).await.unwrap();
    let mut held = st.value;
    held.router_claim.as_mut().unwrap().until = chrono::Utc::now() - chrono::Duration::seconds(1);
    s.store.update(&held, Some(st.version)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let lost = loop {
        let v = s.store.fetch::<EmailActivity>(&bid).await.unwrap().value;
        if v.status != EmailStatus::Sending {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the claim did not run out within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lost.status, EmailStatus::OutcomeUnknown);
    assert!(lost.send_error.unwrap().contains("claim ran out"));
    let (status, v) = s
        .call(
            "POST",
            &format!("{ORG}/activities/{bid}/router-report"),
            Some(json!({"claim_id": claimed[0]["claim_id"], "outcome": "sent"})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (409, Some("claim_not_held")),
        "too late: {v}"
    );
    let resent = ok_as(
        &s,
        &bt,
        "POST",
        &format!("{ORG}/activities/{bid}/send"),
        None,
    )
    .await;
    assert_eq!(resent["status"], "pending_send");
    let claimed = s
        .ok("POST", &format!("{ORG}/outgoing/claims"), Some(json!({})))
        .await;
    assert_eq!(claimed[0]["activity"]["id"], b["id"]);
    let failed = s
        .ok(
            "POST",
            &format!("{ORG}/activities/{bid}/router-report"),
            Some(json!({"claim_id": claimed[0]["claim_id"], "outcome": "failed", "error": "550 5.1.1 no such user"})),
        )
        .await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["send_error"], "550 5.1.1 no such user");
});

// Compose takes attachments of the size it promises (25 MB together, in base64 JSON) and
// keeps them byte for byte; one byte more is a 422 naming the attachments, a body beyond any
// such email a 413; other routes keep the 1 MiB limit.
both!(compose_takes_attachments_up_to_their_limit, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    default_profile(&s).await;
    let bea = s.user("Bea", "bea@example.test", "pw").await;
    let from = mailbox_id(&bea);
    let bt = token_for(&s, &bea).await;
    let limit = serversync_engine::compose::MAX_ATTACHMENTS_BYTES;
    // Letters that do not repeat in short cycles (a counter through a multiplicative hash).
    let bytes = |n: usize, seed: u32| -> Vec<u8> {
        (0..n as u32)
            .map(|i| b'a' + ((i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) % 26) as u8)
            .collect()
    };
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let big = bytes(limit - (5 << 20), 1);
    let small = bytes(5 << 20, 2);
    let email = |small: &[u8]| {
        json!({
            "from_mailbox": from,
            "to": ["a@example.org"],
            "subject": "Large files",
            "text_body": "Both attached.",
            "attachments": [
                {"file_name": "big.bin", "content_type": "application/octet-stream", "content_base64": b64(&big)},
                {"file_name": "small.bin", "content_type": "application/octet-stream", "content_base64": b64(small)},
            ],
            "draft": true,
        })
    };
    let (status, d) = s
        .call_as(
            &bt,
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&small)),
        )
        .await;
    assert_eq!(
        status,
        201,
        "{}",
        d.to_string().chars().take(500).collect::<String>()
    );
    let id = d["id"].as_str().unwrap();
    for (i, want) in [&big, &small].into_iter().enumerate() {
        let sha = d["attachments"][i]["sha256"].as_str().unwrap();
        assert_eq!(sha, serversync_vault::sha256_hex(want));
        let (status, _, body) = s
            .raw(
                &bt,
                "GET",
                &format!("{ORG}/activities/{id}/attachments/{sha}"),
                None,
                "",
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            body.len() == want.len() && body.as_bytes() == &want[..],
            "attachment {i} kept as sent"
        );
    }

    let (status, v) = s
        .call_as(
            &bt,
            "POST",
            &format!("{ORG}/activities"),
            Some(email(&bytes((5 << 20) + 1, 2))),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["errors"][0]["field"], "attachments", "{v}");

    let (status, _, body) = s
        .raw(
            &bt,
            "POST",
            &format!("{ORG}/activities"),
            Some(" ".repeat(40 << 20)),
            "application/json",
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    let (status, _, body) = s
        .raw(
            &s.token,
            "POST",
            &format!("{ORG}/contacts"),
            Some(json!({"name": "x".repeat(2 << 20)}).to_string()),
            "application/json",
        )
        .await;
    assert_eq!(
        status,
        413,
        "other routes keep 1 MiB: {}",
        &body[..body.len().min(300)]
    );
});
