//! The change feed and webhook endpoints through the REST API, on SQLite and PostgreSQL.

mod common;

use common::{Instance, Trust, both};
use serde_json::{Value, json};
use serversync_store::Backend;
use serversync_testkit::TestEnv;

const ORG: &str = "/api/v1/orgs/default";
const SECRET: &str = "api-test-signing-secret-1234";

both!(the_change_feed_pages_with_a_resumable_cursor, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let mut created = Vec::new();
    for (kind, name) in [
        ("contacts", "Carla"),
        ("accounts", "Contoso"),
        ("leads", "Len"),
        ("contacts", "Dora"),
    ] {
        let r = s
            .ok(
                "POST",
                &format!("{ORG}/{kind}"),
                Some(json!({"name": name})),
            )
            .await;
        created.push(r["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .ok("GET", &format!("{ORG}/changes?after={after}&limit=3"), None)
            .await;
        let items = page["items"].as_array().unwrap();
        if items.is_empty() {
            assert_eq!(
                page["next"], after,
                "an empty page hands the same cursor back"
            );
            break;
        }
        after = page["next"].as_i64().unwrap();
        assert_eq!(items.last().unwrap()["seq"], after);
        seen.extend(items.iter().cloned());
    }
    let ids: Vec<&str> = seen
        .iter()
        .map(|c| c["record_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, created.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(seen[1]["event_type"], "account.created");
    assert_eq!(seen[1]["record"]["name"], "Contoso");
    // Made through the API: each change says so (a two-way syncer's own writes say
    // `sync:<mailbox id>`).
    for c in &seen {
        assert_eq!(c["origin"], "api", "{c}");
    }

    // A new write shows up after the cursor.
    s.ok(
        "POST",
        &format!("{ORG}/leads"),
        Some(json!({"name": "Late Lead"})),
    )
    .await;
    let page = s
        .ok("GET", &format!("{ORG}/changes?after={after}"), None)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["record"]["full_name"], "Late Lead");

    let (status, p) = s
        .call("GET", &format!("{ORG}/changes?after=-5"), None)
        .await;
    assert_eq!((status, p["field"].as_str()), (400, Some("after")), "{p}");
    let (status, p) = s.call("GET", &format!("{ORG}/changes?limit=0"), None).await;
    assert_eq!((status, p["field"].as_str()), (400, Some("limit")), "{p}");

    // A reader leaving out one origin does not see its changes, and sees the others.
    let page = s
        .ok("GET", &format!("{ORG}/changes?exclude_origin=api"), None)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 0, "{page}");
    assert_eq!(page["next"], 0);
    let page = s
        .ok(
            "GET",
            &format!("{ORG}/changes?exclude_origin=tracker"),
            None,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), seen.len() + 1);
    let (status, p) = s
        .call(
            "GET",
            &format!("{ORG}/changes?exclude_origin=sync:nope"),
            None,
        )
        .await;
    assert_eq!(
        (status, p["field"].as_str()),
        (400, Some("exclude_origin")),
        "{p}"
    );
});

both!(
    webhooks_crud_redacts_the_secret_and_checks_fields,
    |backend| {
        let s = Instance::start(backend, Trust::TestCa).await;
        let (status, p) = s
            .call(
                "POST",
                &format!("{ORG}/webhooks"),
                Some(json!({"url": "ftp://x", "secret": SECRET})),
            )
            .await;
        assert_eq!(status, 422, "{p}");
        assert_eq!(p["errors"][0]["field"], "url", "{p}");
        let (status, p) = s
            .call(
                "POST",
                &format!("{ORG}/webhooks"),
                Some(json!({"url": "https://crm.example.com/h", "secret": "short"})),
            )
            .await;
        assert_eq!(
            (status, p["errors"][0]["field"].as_str()),
            (422, Some("secret")),
            "{p}"
        );
        let (status, p) = s
            .call(
                "POST",
                &format!("{ORG}/webhooks"),
                Some(json!({"url": "https://crm.example.com/h"})),
            )
            .await;
        assert_eq!(
            (status, p["errors"][0]["field"].as_str()),
            (422, Some("secret")),
            "{p}"
        );
        let (status, p) = s.call("POST", &format!("{ORG}/webhooks"), Some(json!({"url": "https://crm.example.com/h", "secret": SECRET, "record_types": ["spaceship"]}))).await;
        assert_eq!(
            (status, p["errors"][0]["field"].as_str()),
            (422, Some("record_types[0]")),
            "{p}"
        );

        let w = s
        .ok("POST", &format!("{ORG}/webhooks"), Some(json!({"url": "https://crm.example.com/h", "description": "mirror", "secret": SECRET, "record_types": ["contact", "lead"]})))
        .await;
        assert_eq!(w["secret"], "********");
        assert_eq!(w["status"]["state"], "active");
        assert!(!w.to_string().contains(SECRET));
        let id = w["id"].as_str().unwrap();
        let path = format!("{ORG}/webhooks/{id}");
        let w = s
            .ok(
                "PATCH",
                &path,
                Some(json!({"description": "CRM mirror", "secret": "another-secret-value-42"})),
            )
            .await;
        assert_eq!(
            (w["description"].as_str(), w["secret"].as_str()),
            (Some("CRM mirror"), Some("********"))
        );
        let (status, p) = s.call("PATCH", &path, Some(json!({"secret": null}))).await;
        assert_eq!(
            (status, p["errors"][0]["field"].as_str()),
            (422, Some("secret")),
            "{p}"
        );
        let list = s.ok("GET", &format!("{ORG}/webhooks"), None).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        let audit = s.ok("GET", &format!("{ORG}/audit?limit=1000"), None).await;
        assert!(
            !audit.to_string().contains("another-secret"),
            "secrets never reach the audit log"
        );
        let log = s.ok("GET", &format!("{path}/deliveries"), None).await;
        assert_eq!(log["items"], json!([]));
        let w = s.ok("POST", &format!("{path}/resume"), None).await;
        assert_eq!(w["status"]["state"], "active");

        // A basic user reads records (and the feed) but cannot manage webhooks.
        let env = TestEnv::from_env();
        let bea = s.user("Basic Bea", "bea@example.test", &env.password).await;
        let t = s
            .ok(
                "POST",
                &format!("{ORG}/users/{}/tokens", bea["user"]["id"].as_str().unwrap()),
                Some(json!({"name": "t"})),
            )
            .await;
        let token = t["token"].as_str().unwrap();
        let (status, _) = s
            .call_as(token, "GET", &format!("{ORG}/changes"), None)
            .await;
        assert_eq!(status, 200);
        let (status, p): (u16, Value) = s
            .call_as(token, "GET", &format!("{ORG}/webhooks"), None)
            .await;
        assert_eq!(
            (status, p["code"].as_str()),
            (403, Some("missing_privilege")),
            "{p}"
        );

        s.ok("DELETE", &path, None).await;
        let (status, _) = s.call("GET", &path, None).await;
        assert_eq!(status, 404);
    }
);

// Appointments and tasks written through the API reach the feed (and so the webhooks): each
// create, change and delete is one event with the record, tagged `api`.
both!(appointment_and_task_writes_are_in_the_feed, |backend| {
    let s = Instance::start(backend, Trust::TestCa).await;
    let start = s.ok("GET", &format!("{ORG}/changes"), None).await["next"]
        .as_i64()
        .unwrap();
    let a = s
        .ok(
            "POST",
            &format!("{ORG}/appointments"),
            Some(json!({"subject": "Kick-off", "starts_at": "2026-03-02T09:00:00Z", "ends_at": "2026-03-02T10:00:00Z"})),
        )
        .await;
    let a_path = format!("{ORG}/appointments/{}", a["id"].as_str().unwrap());
    s.ok("PATCH", &a_path, Some(json!({"location": "Room 7"})))
        .await;
    let t = s
        .ok(
            "POST",
            &format!("{ORG}/tasks"),
            Some(json!({"subject": "Send the agenda"})),
        )
        .await;
    let t_path = format!("{ORG}/tasks/{}", t["id"].as_str().unwrap());
    s.ok("PATCH", &t_path, Some(json!({"percent_complete": 50})))
        .await;
    s.ok("DELETE", &t_path, None).await;
    s.ok("DELETE", &a_path, None).await;

    let page = s
        .ok("GET", &format!("{ORG}/changes?after={start}"), None)
        .await;
    let items = page["items"].as_array().unwrap();
    let seen: Vec<(&str, &str, i64)> = items
        .iter()
        .map(|c| {
            (
                c["event_type"].as_str().unwrap(),
                c["record_id"].as_str().unwrap(),
                c["version"].as_i64().unwrap(),
            )
        })
        .collect();
    let (a_id, t_id) = (a["id"].as_str().unwrap(), t["id"].as_str().unwrap());
    assert_eq!(
        seen,
        [
            ("appointment.created", a_id, 1),
            ("appointment.updated", a_id, 2),
            ("task.created", t_id, 1),
            ("task.updated", t_id, 2),
            ("task.deleted", t_id, 2),
            ("appointment.deleted", a_id, 2),
        ]
    );
    for c in items {
        assert_eq!(c["origin"], "api", "{c}");
    }
    assert_eq!(items[1]["record"]["location"], "Room 7");
    assert_eq!(items[3]["record"]["percent_complete"], 50);
    assert_eq!(
        items[5]["record"]["subject"], "Kick-off",
        "a delete carries the record as it was"
    );
});
