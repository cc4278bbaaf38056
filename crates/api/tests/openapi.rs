//! The OpenAPI document covers every route and validates; malformed requests to every route
//! get a 4xx problem document, never a 5xx.

mod common;

use common::{Instance, Trust};
use serde_json::{Value, json};
use serversync_store::Backend;

async fn openapi(s: &Instance) -> Value {
    let (status, doc) = s.call("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_validates_and_lists_every_route() {
    let s = Instance::start(Backend::Sqlite, Trust::TestCa).await;
    let doc = openapi(&s).await;
    let paths = doc["paths"].as_object().unwrap();
    // Every route the router serves is documented (the router is built from the same list).
    for p in [
        "/api/v1/orgs",
        "/api/v1/orgs/{org}/profiles",
        "/api/v1/orgs/{org}/profiles/{id}",
        "/api/v1/orgs/{org}/profiles/{id}/default",
        "/api/v1/orgs/{org}/profiles/{id}/test-enable",
        "/api/v1/orgs/{org}/email-settings",
        "/api/v1/orgs/{org}/mailboxes",
        "/api/v1/orgs/{org}/mailboxes/{id}",
        "/api/v1/orgs/{org}/mailboxes/apply-defaults",
        "/api/v1/orgs/{org}/mailboxes/approve",
        "/api/v1/orgs/{org}/mailboxes/reject",
        "/api/v1/orgs/{org}/mailboxes/test-enable",
        "/api/v1/orgs/{org}/mailboxes/{id}/sync-now",
        "/api/v1/orgs/{org}/mailboxes/{id}/items",
        "/api/v1/orgs/{org}/alerts",
        "/api/v1/orgs/{org}/jobs/{id}",
        "/api/v1/orgs/{org}/audit",
        "/api/v1/orgs/{org}/users",
        "/api/v1/orgs/{org}/users/{id}/tokens",
        "/api/v1/orgs/{org}/tokens",
        "/api/v1/orgs/{org}/tokens/{id}/revoke",
        "/api/v1/orgs/{org}/queues",
        "/api/v1/orgs/{org}/roles",
        "/api/v1/orgs/{org}/accounts",
        "/api/v1/orgs/{org}/contacts",
        "/api/v1/orgs/{org}/leads",
        "/api/v1/orgs/{org}/activities",
        "/api/v1/orgs/{org}/activities/{id}/thread",
        "/api/v1/orgs/{org}/activities/{id}/attachments/{sha256}",
        "/api/v1/orgs/{org}/queue-items",
        "/api/v1/orgs/{org}/changes",
        "/api/v1/orgs/{org}/webhooks",
        "/api/v1/orgs/{org}/webhooks/{id}",
        "/api/v1/orgs/{org}/webhooks/{id}/resume",
        "/api/v1/orgs/{org}/webhooks/{id}/deliveries",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(file.path())
        .output()
        .expect("python3 runs (scripts/install-deps.sh installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}",
        String::from_utf8_lossy(&[out.stdout, out.stderr].concat())
            .chars()
            .take(3000)
            .collect::<String>()
    );
}

/// Bodies that are wrong in every way a client can get them wrong.
fn bad_bodies() -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = vec![
        ("{".into(), "application/json"),
        ("not json".into(), "application/json"),
        ("[]".into(), "application/json"),
        ("null".into(), "application/json"),
        ("42".into(), "application/json"),
        ("{}".into(), "text/plain"),
        ("{}".into(), "application/json"),
        (
            format!("{{\"name\": \"{}\"}}", "x".repeat(100_000)),
            "application/json",
        ),
        ("x".repeat(2 << 20), "application/json"),
        (
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            "application/json",
        ),
    ];
    for value in [
        json!(null),
        json!(-1),
        json!(1e308),
        json!("\u{0}"),
        json!([1, {"a": []}]),
        json!({"nested": {"x": true}}),
        json!(u64::MAX),
        json!("ünïcødé 🎉"),
    ] {
        for key in [
            "name",
            "server_type",
            "preset",
            "email",
            "full_name",
            "mailbox_ids",
            "incoming",
            "outgoing",
            "advanced",
            "password",
            "oauth",
            "version",
            "profile_id",
            "default_profile_id",
            "tracking_token",
            "roles",
            "owner_id",
            "test_and_enable",
            "auto_discover",
            "authentication",
            "id",
            "dav",
            "emails",
            "act_method",
            "retry",
            "url",
            "secret",
            "record_types",
            "description",
        ] {
            v.push((json!({ key: value }).to_string(), "application/json"));
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_to_every_route_never_get_a_5xx() {
    let s = Instance::start(Backend::Sqlite, Trust::TestCa).await;
    // Some real ids so that requests reach deep into the handlers.
    let user = s.user("Fuzz Target", "fuzz@example.test", "pw").await;
    let mailbox_id = user["mailbox"]["id"].as_str().unwrap().to_owned();
    let profile = s
        .ok(
            "POST",
            "/api/v1/orgs/default/profiles",
            Some(common::imap_profile("fuzz")),
        )
        .await;
    let profile_id = profile["id"].as_str().unwrap().to_owned();
    let doc = openapi(&s).await;
    let bodies = bad_bodies();
    let ids = [
        mailbox_id.as_str(),
        profile_id.as_str(),
        "00000000-0000-0000-0000-000000000000",
        "not-a-uuid",
        "%00",
        "..",
        "%F0%9F%8E%89",
    ];
    let orgs = ["default", "no-such-org", "%20"];
    let mut requests = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            for org in orgs {
                for id in ids {
                    let url = path.replace("{org}", org).replace("{id}", id);
                    for query in [
                        "",
                        "?limit=0",
                        "?limit=abc",
                        "?after=%FF",
                        "?status=bogus&approval=1&profile_id=x&mailbox_id=y&after=-1",
                    ] {
                        let full = format!("{url}{query}");
                        let m = method.to_uppercase();
                        let sends_body = matches!(m.as_str(), "POST" | "PATCH" | "PUT");
                        let cases: Vec<(Option<String>, &str)> = if sends_body
                            && org == "default"
                            && query.is_empty()
                            && (id == ids[0] || id == ids[1])
                        {
                            bodies
                                .iter()
                                .map(|(b, ct)| (Some(b.clone()), *ct))
                                .collect()
                        } else {
                            vec![
                                (None, "application/json"),
                                (Some("{}".into()), "application/json"),
                            ]
                        };
                        for (body, ct) in cases {
                            let (status, content_type, text) =
                                s.raw(&s.token, &m, &full, body.clone(), ct).await;
                            requests += 1;
                            assert!(
                                status < 500,
                                "{m} {full} body {:?}: {status} {text}",
                                body.map(|b| b.chars().take(80).collect::<String>())
                            );
                            if status >= 400 {
                                assert!(
                                    content_type.starts_with("application/problem+json"),
                                    "{m} {full}: {status} {content_type} {text}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(requests > 2000, "only {requests} requests");
}
