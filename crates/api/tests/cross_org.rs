//! Cross-organization isolation of the REST API (security issue #14), generated from the
//! served OpenAPI document so that a new route cannot escape it. On SQLite and PostgreSQL.
//!
//! Two organizations, A and B, each with an administrator (the `system_administrator` role;
//! not an installation administrator). B gets one resource of every kind, each carrying the
//! marker "Zebra". Then, for every route of `/api/v1/openapi.json` with a path parameter, and
//! every method of it (the [`ROUTES`] table says how to call each):
//!
//! 1. A's administrator calls it in A's organization with B's resources in place of the
//!    ids: a route with an id in its path answers **404**; a route naming B's resources only in
//!    its body or query answers 404 or 422 (naming the field) — a listing filtered by B's id
//!    answers 200 with nothing of B. Routes without any id are read (GET) in A.
//! 2. A's administrator calls it with the organization segment pointing at B, by B's id and
//!    by its name (B's resources in the path and body): **404**.
//!
//! The rule: another organization, and anything in it, is "not found" (404) for a caller who
//! is not of that organization — never "forbidden" (403), which would confirm that it exists.
//! No answer to A carries B's data (the marker), and nothing changed in B: every GET route of
//! the table, read by B's administrator, answers the same before and after. Last, B's
//! administrator makes every call in B with the same ids and bodies, and none answers 404:
//! the ids were real, so the 404s came from the isolation and not from a wrong id.
//!
//! Adding a route: one line in [`ROUTES`]. A route the table does not know fails the test
//! with the line to add; a line whose route is gone fails it too.

mod common;

use common::{Instance, Trust, both};
use serde_json::{Value, json};
use serversync_model::OrgId;
use serversync_model::alert::{Alert, Severity};
use serversync_store::Backend;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One route: `"METHOD path"` exactly as in the OpenAPI document (a `?query` may follow the
/// path), the fixture that its `{id}` stands for (`""`: none), and a request body that B's
/// administrator may send (`""`: none). In paths, queries and bodies, `{user}`, `{mailbox}`,
/// `{queue}`, `{profile}`, `{account}`, `{contact}`, `{appointment}`, `{task}`, `{activity}`,
/// `{alert}`, `{job}`, `{webhook}`, `{sha256}` and `{domain}` stand for B's resources (see
/// [`Fixture`]).
type Route = (&'static str, &'static str, &'static str);

const SELECTION: &str = r#"{"mailbox_ids": ["{mailbox}"]}"#;

#[rustfmt::skip]
const ROUTES: &[Route] = &[
    ("GET /api/v1/orgs/{org}", "", ""),
    ("GET /api/v1/orgs/{org}/users", "", ""),
    ("POST /api/v1/orgs/{org}/users", "", r#"{"full_name": "Zebra New", "email": "new@b.test"}"#),
    ("GET /api/v1/orgs/{org}/users/{id}", "user", ""),
    ("PATCH /api/v1/orgs/{org}/users/{id}", "user", r#"{"full_name": "Zebra Renamed"}"#),
    ("POST /api/v1/orgs/{org}/users/{id}/tokens", "user", r#"{"name": "taken"}"#),
    ("GET /api/v1/orgs/{org}/tokens", "", ""),
    ("POST /api/v1/orgs/{org}/tokens/{id}/revoke", "token", ""),
    ("GET /api/v1/orgs/{org}/queues", "", ""),
    ("POST /api/v1/orgs/{org}/queues", "", r#"{"name": "Zebra Queue 2", "email": "q2@b.test", "owner_id": "{user}"}"#),
    ("PUT /api/v1/orgs/{org}/queues/{id}/members", "queue", r#"{"member_ids": ["{user}"]}"#),
    ("GET /api/v1/orgs/{org}/roles", "", ""),
    ("GET /api/v1/orgs/{org}/domains", "", ""),
    ("POST /api/v1/orgs/{org}/domains", "", r#"{"domain": "more.b.test"}"#),
    ("DELETE /api/v1/orgs/{org}/domains/{domain}", "", ""),
    ("GET /api/v1/orgs/{org}/profiles", "", ""),
    ("POST /api/v1/orgs/{org}/profiles", "", r#"{"name": "Zebra P2", "server_type": "imap_smtp", "owner_id": "{user}", "incoming": {"location": "imap.b.test", "port": 993, "tls": "implicit"}, "outgoing": {"location": "smtp.b.test", "port": 587, "tls": "start_tls"}}"#),
    ("GET /api/v1/orgs/{org}/profiles/{id}", "profile", ""),
    ("PATCH /api/v1/orgs/{org}/profiles/{id}", "profile", r#"{"name": "Zebra Renamed"}"#),
    ("DELETE /api/v1/orgs/{org}/profiles/{id}", "profile", ""),
    ("POST /api/v1/orgs/{org}/profiles/{id}/default", "profile", ""),
    ("POST /api/v1/orgs/{org}/profiles/{id}/test-enable", "profile", ""),
    ("GET /api/v1/orgs/{org}/email-settings", "", ""),
    ("PATCH /api/v1/orgs/{org}/email-settings", "", r#"{"default_profile_id": "{profile}"}"#),
    ("GET /api/v1/orgs/{org}/mailboxes?profile_id={profile}", "", ""),
    ("GET /api/v1/orgs/{org}/mailboxes/{id}", "mailbox", ""),
    ("PATCH /api/v1/orgs/{org}/mailboxes/{id}", "mailbox", r#"{"profile_id": "{profile}"}"#),
    ("GET /api/v1/orgs/{org}/mailboxes/{id}/items", "mailbox", ""),
    ("POST /api/v1/orgs/{org}/mailboxes/{id}/sync-now", "mailbox", ""),
    ("POST /api/v1/orgs/{org}/mailboxes/apply-defaults", "", SELECTION),
    ("POST /api/v1/orgs/{org}/mailboxes/approve", "", SELECTION),
    ("POST /api/v1/orgs/{org}/mailboxes/reject", "", SELECTION),
    ("POST /api/v1/orgs/{org}/mailboxes/test-enable", "", SELECTION),
    ("GET /api/v1/orgs/{org}/alerts?mailbox_id={mailbox}", "", ""),
    ("POST /api/v1/orgs/{org}/alerts/{id}/dismiss", "alert", ""),
    ("GET /api/v1/orgs/{org}/jobs", "", ""),
    ("GET /api/v1/orgs/{org}/jobs/{id}", "job", ""),
    ("GET /api/v1/orgs/{org}/audit", "", ""),
    ("GET /api/v1/orgs/{org}/accounts", "", ""),
    ("POST /api/v1/orgs/{org}/accounts", "", r#"{"name": "Zebra Account 2", "owner_id": "{user}"}"#),
    ("GET /api/v1/orgs/{org}/contacts", "", ""),
    ("POST /api/v1/orgs/{org}/contacts", "", r#"{"name": "Zebra Contact 2", "account_id": "{account}"}"#),
    ("GET /api/v1/orgs/{org}/contacts/{id}", "contact", ""),
    ("PATCH /api/v1/orgs/{org}/contacts/{id}", "contact", r#"{"job_title": "Zebra Keeper", "account_id": "{account}"}"#),
    ("DELETE /api/v1/orgs/{org}/contacts/{id}", "contact", ""),
    ("GET /api/v1/orgs/{org}/appointments?owner={user}", "", ""),
    ("POST /api/v1/orgs/{org}/appointments", "", r#"{"subject": "Zebra meeting 2", "starts_at": "2026-03-02T09:00:00Z", "ends_at": "2026-03-02T10:00:00Z", "owner_id": "{user}"}"#),
    ("GET /api/v1/orgs/{org}/appointments/{id}", "appointment", ""),
    ("PATCH /api/v1/orgs/{org}/appointments/{id}", "appointment", r#"{"location": "Zebra room 2"}"#),
    ("DELETE /api/v1/orgs/{org}/appointments/{id}", "appointment", ""),
    ("GET /api/v1/orgs/{org}/tasks?owner={user}", "", ""),
    ("POST /api/v1/orgs/{org}/tasks", "", r#"{"subject": "Zebra task 2", "regarding": {"type": "account", "id": "{account}"}}"#),
    ("GET /api/v1/orgs/{org}/tasks/{id}", "task", ""),
    ("PATCH /api/v1/orgs/{org}/tasks/{id}", "task", r#"{"percent_complete": 50}"#),
    ("DELETE /api/v1/orgs/{org}/tasks/{id}", "task", ""),
    ("GET /api/v1/orgs/{org}/leads", "", ""),
    ("POST /api/v1/orgs/{org}/leads", "", r#"{"name": "Zebra Lead 2", "owner_id": "{user}"}"#),
    ("GET /api/v1/orgs/{org}/activities?mailbox={mailbox}", "", ""),
    ("POST /api/v1/orgs/{org}/activities", "", r#"{"from_mailbox": "{mailbox}", "to": ["x@b.test"], "subject": "Zebra again", "draft": true}"#),
    ("GET /api/v1/orgs/{org}/activities/{id}", "activity", ""),
    ("GET /api/v1/orgs/{org}/activities/{id}/thread", "activity", ""),
    ("GET /api/v1/orgs/{org}/activities/{id}/attachments/{sha256}", "activity", ""),
    ("POST /api/v1/orgs/{org}/activities/{id}/send", "activity", ""),
    ("POST /api/v1/orgs/{org}/activities/{id}/router-report", "activity", r#"{"claim_id": "guessed", "outcome": "sent"}"#),
    ("POST /api/v1/orgs/{org}/outgoing/claims", "", r#"{"mailbox": "{mailbox}"}"#),
    ("GET /api/v1/orgs/{org}/queue-items?queue={queue}", "", ""),
    ("GET /api/v1/orgs/{org}/changes", "", ""),
    ("GET /api/v1/orgs/{org}/webhooks", "", ""),
    ("POST /api/v1/orgs/{org}/webhooks", "", r#"{"url": "http://127.0.0.1:9/zebra", "secret": "a-signing-secret-of-length"}"#),
    ("GET /api/v1/orgs/{org}/webhooks/{id}", "webhook", ""),
    ("PATCH /api/v1/orgs/{org}/webhooks/{id}", "webhook", r#"{"description": "Zebra renamed"}"#),
    ("DELETE /api/v1/orgs/{org}/webhooks/{id}", "webhook", ""),
    ("POST /api/v1/orgs/{org}/webhooks/{id}/resume", "webhook", ""),
    ("GET /api/v1/orgs/{org}/webhooks/{id}/deliveries", "webhook", ""),
];

/// What B's resources hide behind, in B's data: answers to A must never contain it.
const MARKER: &str = "zebra";

/// An organization, its administrator's token, and (for B) its resources by placeholder name.
struct Fixture {
    id: String,
    name: String,
    token: String,
    ids: BTreeMap<&'static str, String>,
}

impl Fixture {
    /// `template` with `{org}` as `org` and every other `{name}` as this fixture's resource;
    /// `{id}` is the resource `id_of` names. Panics, saying what to add, on an unknown name.
    fn fill(&self, template: &str, org: &str, id_of: &str) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            rest = &rest[start..];
            let name = rest[1..].split_once('}').map(|(n, _)| n).filter(|n| {
                !n.is_empty()
                    && n.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            });
            let Some(name) = name else {
                // A JSON brace.
                out.push('{');
                rest = &rest[1..];
                continue;
            };
            let value = match name {
                "org" => Some(org),
                "id" => self.ids.get(id_of).map(String::as_str),
                other => self.ids.get(other).map(String::as_str),
            };
            let Some(value) = value else {
                panic!(
                    "{template}: the suite has no resource for {{{name}}}: create one in B in \
                     `org_b` (crates/api/tests/cross_org.rs) and name it in `Fixture::ids`"
                );
            };
            out.push_str(value);
            rest = &rest[name.len() + 2..];
        }
        out.push_str(rest);
        out
    }
}

/// Creates an organization with an administrator (not an installation administrator) and
/// returns it with the administrator's token.
async fn org_with_admin(s: &Instance, name: &str, display: &str, admin: &str) -> Fixture {
    let o = s
        .ok(
            "POST",
            "/api/v1/orgs",
            Some(json!({"name": name, "display_name": display})),
        )
        .await;
    let id = o["id"].as_str().unwrap().to_owned();
    s.ok(
        "POST",
        &format!("/api/v1/orgs/{id}/domains"),
        Some(json!({"domain": format!("{name}.test")})),
    )
    .await;
    let u = s
        .ok(
            "POST",
            &format!("/api/v1/orgs/{id}/users"),
            Some(json!({"full_name": admin, "email": format!("admin@{name}.test"), "roles": ["system_administrator"]})),
        )
        .await;
    let user = u["user"]["id"].as_str().unwrap().to_owned();
    let t = s
        .ok(
            "POST",
            &format!("/api/v1/orgs/{id}/users/{user}/tokens"),
            Some(json!({"name": "admin"})),
        )
        .await;
    let mut ids = BTreeMap::new();
    ids.insert("user", user);
    ids.insert("mailbox", u["mailbox"]["id"].as_str().unwrap().to_owned());
    ids.insert("domain", format!("{name}.test"));
    Fixture {
        id,
        name: name.to_owned(),
        token: t["token"].as_str().unwrap().to_owned(),
        ids,
    }
}

/// B with one resource of every kind, made by B's administrator, all marked "Zebra".
async fn org_b(s: &Instance) -> Fixture {
    let mut b = org_with_admin(s, "b", "Zebra Corp", "Zebra Admin").await;
    let base = format!("/api/v1/orgs/{}", b.id);
    let token = b.token.clone();
    let post = |path: &str, body: Value| {
        let (token, url) = (token.clone(), format!("{base}/{path}"));
        async move {
            let (status, v) = s.call_as(&token, "POST", &url, Some(body)).await;
            assert!((200..300).contains(&status), "POST {url}: {status} {v}");
            v
        }
    };
    let q = post(
        "queues",
        json!({"name": "Zebra Queue", "email": "queue@b.test"}),
    )
    .await;
    b.ids
        .insert("queue", q["queue"]["id"].as_str().unwrap().into());
    // A second token of B's administrator (the first is the one the suite calls B with).
    let t = post(
        &format!("users/{}/tokens", b.ids["user"]),
        json!({"name": "Zebra script"}),
    )
    .await;
    b.ids.insert("token", t["id"].as_str().unwrap().into());
    let mut profile = common::imap_profile("Zebra Profile");
    profile["owner_id"] = json!(b.ids["user"]);
    let p = post("profiles", profile).await;
    b.ids.insert("profile", p["id"].as_str().unwrap().into());
    let a = post("accounts", json!({"name": "Zebra Account"})).await;
    b.ids.insert("account", a["id"].as_str().unwrap().into());
    let c = post(
        "contacts",
        json!({"name": "Zebra Contact", "account_id": b.ids["account"]}),
    )
    .await;
    b.ids.insert("contact", c["id"].as_str().unwrap().into());
    let ap = post(
        "appointments",
        json!({"subject": "Zebra meeting", "starts_at": "2026-03-01T09:00:00Z",
               "ends_at": "2026-03-01T10:00:00Z", "attendees": ["partner@b.test"]}),
    )
    .await;
    b.ids
        .insert("appointment", ap["id"].as_str().unwrap().into());
    let t = post("tasks", json!({"subject": "Zebra follow-up"})).await;
    b.ids.insert("task", t["id"].as_str().unwrap().into());
    let e = post(
        "activities",
        json!({"from_mailbox": b.ids["mailbox"], "to": ["partner@b.test"], "subject": "Zebra plans",
               "draft": true, "attachments": [{"file_name": "zebra.txt", "content_base64": "WmVicmEgc2VjcmV0cw=="}]}),
    )
    .await;
    b.ids.insert("activity", e["id"].as_str().unwrap().into());
    b.ids.insert(
        "sha256",
        e["attachments"][0]["sha256"].as_str().unwrap().into(),
    );
    let job = post(
        "mailboxes/test-enable",
        json!({"mailbox_ids": [b.ids["mailbox"]]}),
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    // The job settles before anything is compared.
    for i in 0..600 {
        let (_, j) = s
            .call_as(&b.token, "GET", &format!("{base}/jobs/{job_id}"), None)
            .await;
        if !matches!(j["status"].as_str(), Some("queued" | "running")) {
            break;
        }
        assert!(i < 599, "job {job_id} did not finish within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.ids.insert("job", job_id);
    let alert = Alert::new(
        b.id.parse::<OrgId>().unwrap(),
        Severity::Warning,
        "zebra",
        "Zebra alert".into(),
        Vec::new(),
    );
    s.store.insert(&alert).await.unwrap();
    b.ids.insert("alert", alert.id.to_string());
    // Last: it gets only the changes made after it, and none are (until the last phase).
    let w = post(
        "webhooks",
        json!({"url": "http://127.0.0.1:9/zebra", "secret": "a-signing-secret-of-length", "description": "Zebra hook"}),
    )
    .await;
    b.ids.insert("webhook", w["id"].as_str().unwrap().into());
    b
}

/// `"METHOD path"` without its query.
fn key(route: &str) -> &str {
    route.split('?').next().unwrap_or(route)
}

/// Whether a filled-in route or body names one of B's resources.
fn names_b(template: &str, id_of: &str) -> bool {
    !id_of.is_empty()
        || ["{sha256}", "{domain}"]
            .iter()
            .any(|p| template.contains(p))
        || [
            "{user}",
            "{mailbox}",
            "{queue}",
            "{profile}",
            "{account}",
            "{contact}",
            "{appointment}",
            "{task}",
            "{activity}",
            "{alert}",
            "{job}",
            "{webhook}",
            "{token}",
        ]
        .iter()
        .any(|p| template.contains(p))
}

/// Every GET of the table, read by B's administrator in B.
async fn snapshot(s: &Instance, b: &Fixture) -> BTreeMap<String, (u16, Value)> {
    let mut out = BTreeMap::new();
    for (route, id_of, _) in ROUTES {
        let Some(path) = route.strip_prefix("GET ") else {
            continue;
        };
        let url = b.fill(path, &b.id, id_of);
        out.insert(url.clone(), s.call_as(&b.token, "GET", &url, None).await);
    }
    out
}

both!(another_organization_gets_404_for_every_route, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let a = org_with_admin(&s, "a", "Acme", "Ann Admin").await;
    let b = org_b(&s).await;

    // The table covers the document exactly.
    let (status, doc) = s.call("GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.contains('{') {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let known: BTreeSet<String> = ROUTES.iter().map(|(r, _, _)| key(r).to_owned()).collect();
    let missing: Vec<_> = documented.difference(&known).collect();
    assert!(
        missing.is_empty(),
        "routes the cross-organization suite does not know how to call; add a line for each to ROUTES \
         in crates/api/tests/cross_org.rs — (\"METHOD path\", what {{id}} is, a body B's administrator may send):\n{}",
        missing
            .iter()
            .map(|r| format!("    (\"{r}\", \"<user|mailbox|queue|profile|contact|appointment|task|activity|alert|job|webhook|token or empty>\", \"<body or empty>\"),"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stale: Vec<_> = known.difference(&documented).collect();
    assert!(
        stale.is_empty(),
        "ROUTES lines for routes the document no longer has (remove them): {stale:?}"
    );

    let before = snapshot(&s, &b).await;
    let mut wrong = Vec::new();
    let mut calls = 0;
    for (route, id_of, body) in ROUTES {
        let (method, path) = route.split_once(' ').unwrap();
        let has_b = names_b(route, id_of) || names_b(body, "");
        let path_id = path.split('?').next().unwrap().matches('{').count() > 1;
        // 1. In A, with B's resources; or, without any, A's own data (read only).
        if has_b || method == "GET" {
            let url = b.fill(path, &a.id, id_of);
            let sent = (!body.is_empty())
                .then(|| serde_json::from_str::<Value>(&b.fill(body, &a.id, id_of)).unwrap());
            let (status, v) = s.call_as(&a.token, method, &url, sent).await;
            calls += 1;
            let ok = if path_id {
                status == 404
            } else if !has_b {
                status == 200
            } else if method == "GET" {
                matches!(status, 200 | 404 | 422)
            } else {
                matches!(status, 404 | 422)
            };
            if !ok || v.to_string().to_lowercase().contains(MARKER) {
                wrong.push(format!("A in A: {method} {url} → {status} {v}"));
            }
        }
        // 2. In B, by its id and by its name.
        for org in [&b.id, &b.name] {
            let url = b.fill(path, org, id_of);
            let sent = (!body.is_empty())
                .then(|| serde_json::from_str::<Value>(&b.fill(body, org, id_of)).unwrap());
            let (status, v) = s.call_as(&a.token, method, &url, sent).await;
            calls += 1;
            if status != 404 || v.to_string().to_lowercase().contains(MARKER) {
                wrong.push(format!("A in B: {method} {url} → {status} {v}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "another organization's caller must get 404 and none of its data:\n{}",
        wrong.join("\n")
    );
    let (_, orgs) = s.call_as(&a.token, "GET", "/api/v1/orgs", None).await;
    assert_eq!(
        orgs.as_array().map(Vec::len),
        Some(1),
        "A sees only itself: {orgs}"
    );
    assert!(!orgs.to_string().to_lowercase().contains(MARKER), "{orgs}");

    // Nothing changed in B.
    let after = snapshot(&s, &b).await;
    for (url, was) in &before {
        assert_eq!(&after[url], was, "GET {url} changed after A's calls");
    }

    // B's administrator, with the same ids and bodies: found (so the 404s above were the
    // isolation, not a wrong id). Deletions last.
    let mut order: Vec<&Route> = ROUTES.iter().collect();
    order.sort_by_key(|(r, _, _)| r.starts_with("DELETE"));
    let mut missing_in_b = Vec::new();
    for (route, id_of, body) in order {
        let (method, path) = route.split_once(' ').unwrap();
        let url = b.fill(path, &b.id, id_of);
        let sent = (!body.is_empty())
            .then(|| serde_json::from_str::<Value>(&b.fill(body, &b.id, id_of)).unwrap());
        let (status, v) = s.call_as(&b.token, method, &url, sent).await;
        if status == 404 || status >= 500 {
            missing_in_b.push(format!("{method} {url} → {status} {v}"));
        }
    }
    assert!(
        missing_in_b.is_empty(),
        "B's administrator must reach B's resources with the same calls (fix the ROUTES line):\n{}",
        missing_in_b.join("\n")
    );
    assert!(calls > 100, "only {calls} calls");
});

/// The field a 422 names.
fn field_of(status: u16, v: &Value) -> String {
    assert_eq!(status, 422, "{v}");
    v["field"].as_str().unwrap_or_default().to_owned()
}

// Records created through the API name only records of their own organization (issue #14,
// item 15), and an email is scheduled at most a year ahead (item 1).
both!(references_to_another_organization_are_refused, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let a = org_with_admin(&s, "a", "Acme", "Ann Admin").await;
    let b = org_b(&s).await;
    let base = format!("/api/v1/orgs/{}", a.id);
    let call = |method: &'static str, path: &'static str, body: Value| {
        let (token, url) = (a.token.clone(), format!("{base}/{path}"));
        let s = &s;
        async move { s.call_as(&token, method, &url, Some(body)).await }
    };
    let nobody = "01a24260-0000-7000-8000-000000000000";
    for (path, body, field) in [
        (
            "contacts",
            json!({"name": "C", "owner_id": b.ids["user"]}),
            "owner_id",
        ),
        (
            "contacts",
            json!({"name": "C", "account_id": b.ids["account"]}),
            "account_id",
        ),
        (
            "contacts",
            json!({"name": "C", "account_id": nobody}),
            "account_id",
        ),
        (
            "accounts",
            json!({"name": "A", "owner_id": nobody}),
            "owner_id",
        ),
        (
            "leads",
            json!({"name": "L", "owner_id": b.ids["user"]}),
            "owner_id",
        ),
        (
            "queues",
            json!({"name": "Q", "email": "q@a.test", "owner_id": b.ids["user"]}),
            "owner_id",
        ),
        (
            "activities",
            json!({"from_mailbox": a.ids["mailbox"], "to": ["x@a.test"], "regarding": {"type": "contact", "id": b.ids["contact"]}}),
            "regarding",
        ),
        (
            "activities",
            json!({"from_mailbox": a.ids["mailbox"], "to": ["x@a.test"], "regarding": {"type": "activity", "id": b.ids["activity"]}}),
            "regarding",
        ),
        (
            "activities",
            json!({"from_mailbox": a.ids["mailbox"], "to": ["x@a.test"], "regarding": {"type": "lead", "id": nobody}}),
            "regarding",
        ),
        (
            "activities",
            json!({"from_mailbox": a.ids["mailbox"], "to": ["x@a.test"], "send_after": (chrono::Utc::now() + chrono::Duration::days(400)).to_rfc3339()}),
            "send_after",
        ),
        (
            "outgoing/claims",
            json!({"mailbox": b.ids["mailbox"]}),
            "mailbox",
        ),
        (
            "appointments",
            json!({"subject": "A", "starts_at": "2026-03-02T09:00:00Z", "ends_at": "2026-03-02T10:00:00Z",
                   "regarding": {"type": "contact", "id": b.ids["contact"]}}),
            "regarding",
        ),
        (
            "tasks",
            json!({"subject": "T", "owner_id": b.ids["user"]}),
            "owner_id",
        ),
    ] {
        let (status, v) = call("POST", path, body.clone()).await;
        assert_eq!(field_of(status, &v), field, "POST {path} {body}: {v}");
    }
    // The same with records of A is accepted; so is an email scheduled 300 days ahead.
    let (status, acct) = call(
        "POST",
        "accounts",
        json!({"name": "Own", "owner_id": a.ids["user"]}),
    )
    .await;
    assert_eq!(status, 201, "{acct}");
    let (status, v) = call(
        "POST",
        "contacts",
        json!({"name": "C", "account_id": acct["id"]}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    // Changing a contact of A to name B's account is refused the same way.
    let (status, p) = s
        .call_as(
            &a.token,
            "PATCH",
            &format!("{base}/contacts/{}", v["id"].as_str().unwrap()),
            Some(json!({"account_id": b.ids["account"]})),
        )
        .await;
    assert_eq!(field_of(status, &p), "account_id", "{p}");
    let later = (chrono::Utc::now() + chrono::Duration::days(300)).to_rfc3339();
    let (status, v) = call(
        "POST",
        "activities",
        json!({"from_mailbox": a.ids["mailbox"], "to": ["x@a.test"], "send_after": later,
               "regarding": {"type": "account", "id": acct["id"]}}),
    )
    .await;
    assert_eq!(status, 201, "{v}");
});

// A domain belongs to one organization, and only that organization uses addresses in it
// (issue #14, item 2; the Email Router side is in crates/engine/tests/lmtp.rs).
both!(a_domain_belongs_to_one_organization, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let a = org_with_admin(&s, "a", "Acme", "Ann Admin").await;
    let b = org_with_admin(&s, "b", "Zebra Corp", "Zebra Admin").await;
    let (a_base, b_base) = (
        format!("/api/v1/orgs/{}", a.id),
        format!("/api/v1/orgs/{}", b.id),
    );

    // Only an installation administrator assigns; a domain is never taken from its holder.
    let (status, v) = s
        .call_as(
            &a.token,
            "POST",
            &format!("{a_base}/domains"),
            Some(json!({"domain": "mine.test"})),
        )
        .await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("installation_admin_required")),
        "{v}"
    );
    let (status, v) = s
        .call(
            "POST",
            &format!("{b_base}/domains"),
            Some(json!({"domain": "A.Test."})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["detail"].as_str().unwrap().contains("organization a"),
        "{v}"
    );
    let (status, v) = s
        .call(
            "POST",
            &format!("{b_base}/domains"),
            Some(json!({"domain": "not a domain"})),
        )
        .await;
    assert_eq!((status, v["field"].as_str()), (422, Some("domain")), "{v}");
    let (_, listed) = s
        .call_as(&a.token, "GET", &format!("{a_base}/domains"), None)
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["domain"], "a.test");

    // B cannot give a user, a queue or a mailbox an address in A's domain; in its own, or in
    // a domain nobody holds, it can.
    let refused =
        |v: &Value| v["code"] == "domain_of_another_organization" && v["field"] == "email";
    let (status, v) = s
        .call_as(
            &b.token,
            "POST",
            &format!("{b_base}/users"),
            Some(json!({"full_name": "Mallory", "email": "CEO@a.test"})),
        )
        .await;
    assert!(status == 422 && refused(&v), "{status} {v}");
    let (status, v) = s
        .call_as(
            &b.token,
            "POST",
            &format!("{b_base}/queues"),
            Some(json!({"name": "Sales", "email": "sales@a.test"})),
        )
        .await;
    assert!(status == 422 && refused(&v), "{status} {v}");
    let (status, v) = s
        .call_as(
            &b.token,
            "PATCH",
            &format!("{b_base}/mailboxes/{}", b.ids["mailbox"]),
            Some(json!({"email": "ceo@a.test"})),
        )
        .await;
    assert!(status == 422 && refused(&v), "{status} {v}");
    for email in ["ceo@b.test", "ceo@gmail.example"] {
        let (status, v) = s
            .call_as(
                &b.token,
                "POST",
                &format!("{b_base}/users"),
                Some(json!({"full_name": "Carl", "email": email})),
            )
            .await;
        assert_eq!(status, 201, "{email}: {v}");
    }

    // Removing: the holder's own administrator may not; another organization gets 404.
    let (status, _) = s
        .call_as(
            &a.token,
            "DELETE",
            &format!("{a_base}/domains/a.test"),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = s
        .call("DELETE", &format!("{b_base}/domains/a.test"), None)
        .await;
    assert_eq!(status, 404, "not B's to remove");
    let (status, v) = s
        .call("DELETE", &format!("{a_base}/domains/a.test"), None)
        .await;
    assert_eq!(status, 204, "{v}");
    let (status, v) = s
        .call(
            "POST",
            &format!("{b_base}/domains"),
            Some(json!({"domain": "a.test"})),
        )
        .await;
    assert_eq!(status, 201, "free again: {v}");
});
