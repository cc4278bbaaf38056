//! Who may act on whom, and API tokens (issue #14, items 3 and 5), through the REST API on
//! SQLite and PostgreSQL.

mod common;

use common::{Instance, Trust, both};
use serde_json::{Value, json};
use serversync_store::Backend;

const ORG: &str = "/api/v1/orgs/default";

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_owned()
}

/// The installation administrator's user id (the bootstrapped admin@localhost).
async fn root_id(s: &Instance) -> String {
    let users = s.ok("GET", &format!("{ORG}/users"), None).await;
    users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "admin@localhost")
        .map(id)
        .unwrap()
}

/// A user of the default organization with `roles`, and (minted by the installation
/// administrator) a token for it.
async fn user_with_token(s: &Instance, name: &str, email: &str, roles: Value) -> (String, String) {
    let u = s
        .ok(
            "POST",
            &format!("{ORG}/users"),
            Some(json!({"full_name": name, "email": email, "roles": roles})),
        )
        .await;
    let uid = id(&u["user"]);
    let t = s
        .ok(
            "POST",
            &format!("{ORG}/users/{uid}/tokens"),
            Some(json!({"name": "test"})),
        )
        .await;
    (uid, t["token"].as_str().unwrap().to_owned())
}

both!(
    a_system_administrator_cannot_take_over_the_installation_admin,
    |backend| {
        let s = Instance::start(backend, Trust::TestCa).await;
        let root = root_id(&s).await;
        let (sam, sam_token) = user_with_token(
            &s,
            "Sam Sysadmin",
            "sam@example.test",
            json!(["system_administrator"]),
        )
        .await;
        let (bea, _) =
            user_with_token(&s, "Bea Basic", "bea@example.test", json!(["basic_user"])).await;

        // A token for the installation administrator, or for anybody else: refused.
        for target in [&root, &bea] {
            let (status, p) = s
                .call_as(
                    &sam_token,
                    "POST",
                    &format!("{ORG}/users/{target}/tokens"),
                    Some(json!({"name": "mine now"})),
                )
                .await;
            assert_eq!(
                (status, p["code"].as_str()),
                (403, Some("installation_admin_required")),
                "{p}"
            );
        }
        // The installation administrator's password, name or state: refused, nothing changed.
        for patch in [
            json!({"password": "a new password of mine"}),
            json!({"full_name": "Owned"}),
            json!({"disabled": true}),
        ] {
            let (status, p) = s
                .call_as(
                    &sam_token,
                    "PATCH",
                    &format!("{ORG}/users/{root}"),
                    Some(patch.clone()),
                )
                .await;
            assert_eq!(
                (status, p["code"].as_str()),
                (403, Some("installation_admin_protected")),
                "{patch}: {p}"
            );
        }
        let r = s.ok("GET", &format!("{ORG}/users/{root}"), None).await;
        assert_eq!(
            (&r["password"], &r["full_name"], &r["disabled"]),
            (&Value::Null, &json!("Administrator"), &json!(false)),
            "{r}"
        );

        // A user whose privileges are a subset of Sam's: allowed. Sam's own: allowed.
        s.call_as(
            &sam_token,
            "PATCH",
            &format!("{ORG}/users/{bea}"),
            Some(json!({"password": "bea's new password"})),
        )
        .await;
        let b = s.ok("GET", &format!("{ORG}/users/{bea}"), None).await;
        assert_eq!(b["password"], "********", "{b}");
        let (status, p) = s
            .call_as(
                &sam_token,
                "PATCH",
                &format!("{ORG}/users/{sam}"),
                Some(json!({"password": "sam's own password"})),
            )
            .await;
        assert_eq!(status, 200, "{p}");

        // Nobody grants what they do not hold: Sam is no tenant administrator, so he can
        // neither create one nor act on one.
        let (status, p) = s
            .call_as(
                &sam_token,
                "POST",
                &format!("{ORG}/users"),
                Some(json!({"full_name": "Tina", "email": "tina@example.test", "tenant_exchange_admin": true})),
            )
            .await;
        assert_eq!(
            (status, p["code"].as_str()),
            (403, Some("more_privileged_user")),
            "{p}"
        );
        let tina = s
            .ok(
                "POST",
                &format!("{ORG}/users"),
                Some(json!({"full_name": "Tina", "email": "tina@example.test", "roles": ["basic_user"], "tenant_exchange_admin": true})),
            )
            .await;
        let (status, p) = s
            .call_as(
                &sam_token,
                "PATCH",
                &format!("{ORG}/users/{}", id(&tina["user"])),
                Some(json!({"password": "tina's new password"})),
            )
            .await;
        assert_eq!(
            (status, p["code"].as_str()),
            (403, Some("more_privileged_user")),
            "{p}"
        );

        // The installation administrator's token for Bea is in the audit log, by him, for her.
        let audit = s.ok("GET", &format!("{ORG}/audit?limit=1000"), None).await;
        let minted = audit
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "create_for_user" && e["after"]["user_id"] == bea.as_str())
            .unwrap_or_else(|| panic!("no create_for_user entry for Bea's token: {audit}"));
        assert_eq!(
            minted["actor"],
            json!({"type": "user", "id": root}),
            "{minted}"
        );
        assert_eq!(minted["entity"], "API token");
        assert!(minted["after"].get("token_hash").is_none(), "{minted}");
    }
);
