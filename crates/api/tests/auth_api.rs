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

both!(
    tokens_expire_and_are_listed_and_revoked_through_the_api,
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
        let (bea, bea_token) =
            user_with_token(&s, "Bea Basic", "bea@example.test", json!(["basic_user"])).await;
        let me = format!("{ORG}/users/{bea}");

        // Expiry: the configured default (90 days), or what the request asks within 1-3650.
        let days_left = |t: &Value| {
            let at: chrono::DateTime<chrono::Utc> =
                t["expires_at"].as_str().unwrap().parse().unwrap();
            (at - chrono::Utc::now()).num_hours() as f64 / 24.0
        };
        let t90 = s
            .ok(
                "POST",
                &format!("{me}/tokens"),
                Some(json!({"name": "default"})),
            )
            .await;
        assert!((89.9..=90.0).contains(&days_left(&t90)), "{t90}");
        let (status, t7) = s
            .call_as(
                &bea_token,
                "POST",
                &format!("{me}/tokens"),
                Some(json!({"name": "mine", "expires_in_days": 7})),
            )
            .await;
        assert_eq!(status, 201, "{t7}");
        assert!((6.9..=7.0).contains(&days_left(&t7)), "{t7}");
        for bad in [0, 3651] {
            let (status, p) = s
                .call(
                    "POST",
                    &format!("{me}/tokens"),
                    Some(json!({"name": "x", "expires_in_days": bad})),
                )
                .await;
            assert_eq!(
                (status, p["field"].as_str()),
                (422, Some("expires_in_days")),
                "{p}"
            );
        }

        // Listing: holders of manage_users see the organization's tokens, others their own;
        // never a token or its hash.
        let all = s.ok("GET", &format!("{ORG}/tokens"), None).await;
        let names = |v: &Value| -> Vec<(String, String)> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["user_id"].as_str().unwrap().to_owned(),
                        t["name"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        };
        for expected in [(&root, "bootstrap"), (&sam, "test"), (&bea, "mine")] {
            assert!(
                names(&all).contains(&(expected.0.clone(), expected.1.to_owned())),
                "{expected:?}: {all}"
            );
        }
        assert!(!all.to_string().contains("token_hash") && !all.to_string().contains(&bea_token));
        let (_, own) = s
            .call_as(&bea_token, "GET", &format!("{ORG}/tokens"), None)
            .await;
        assert!(
            names(&own).iter().all(|(u, _)| *u == bea) && names(&own).len() == 3,
            "{own}"
        );
        let (_, theirs) = s
            .call_as(
                &bea_token,
                "GET",
                &format!("{ORG}/tokens?user_id={root}"),
                None,
            )
            .await;
        assert_eq!(theirs["items"], json!([]), "{theirs}");

        // Revoking: one's own token; a subset user's token with manage_users; never the
        // installation administrator's unless one is one; another organization's: not found.
        let t7_id = t7["id"].as_str().unwrap();
        let (status, r) = s
            .call_as(
                &bea_token,
                "POST",
                &format!("{ORG}/tokens/{t7_id}/revoke"),
                None,
            )
            .await;
        assert_eq!((status, &r["revoked"]), (200, &json!(true)), "{r}");
        assert!(r["revoked_at"].is_string(), "{r}");
        assert_eq!(
            s.call_as(t7["token"].as_str().unwrap(), "GET", &me, None)
                .await
                .0,
            401
        );
        let root_token_id = s
            .ok("GET", &format!("{ORG}/tokens?user_id={root}"), None)
            .await["items"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, p) = s
            .call_as(
                &sam_token,
                "POST",
                &format!("{ORG}/tokens/{root_token_id}/revoke"),
                None,
            )
            .await;
        assert_eq!(
            (status, p["code"].as_str()),
            (403, Some("installation_admin_protected")),
            "{p}"
        );
        let (status, p) = s
            .call_as(
                &bea_token,
                "POST",
                &format!("{ORG}/tokens/{root_token_id}/revoke"),
                None,
            )
            .await;
        assert_eq!(status, 404, "a basic user does not see others' tokens: {p}");
        assert_eq!(
            s.call("GET", &format!("{ORG}/users/{root}"), None).await.0,
            200
        );
        let t90_id = t90["id"].as_str().unwrap();
        let (status, p) = s
            .call_as(
                &sam_token,
                "POST",
                &format!("{ORG}/tokens/{t90_id}/revoke"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{p}");

        s.ok(
            "POST",
            "/api/v1/orgs",
            Some(json!({"name": "acme", "display_name": "Acme"})),
        )
        .await;
        let olga = s
            .ok(
                "POST",
                "/api/v1/orgs/acme/users",
                Some(json!({"full_name": "Olga", "email": "olga@acme.test", "roles": ["system_administrator"]})),
            )
            .await;
        let olga_token = s
            .ok(
                "POST",
                &format!("/api/v1/orgs/acme/users/{}/tokens", id(&olga["user"])),
                Some(json!({"name": "olga"})),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let bea_token_id = names(&own)
            .iter()
            .position(|(_, n)| n == "test")
            .map(|i| own["items"][i]["id"].as_str().unwrap().to_owned())
            .unwrap();
        for path in [
            format!("/api/v1/orgs/acme/tokens/{bea_token_id}/revoke"),
            format!("{ORG}/tokens/{bea_token_id}/revoke"),
        ] {
            let (status, p) = s.call_as(&olga_token, "POST", &path, None).await;
            assert_eq!(status, 404, "{path}: {p}");
        }
        for path in [
            format!("/api/v1/orgs/acme/users/{bea}/tokens"),
            format!("{ORG}/users/{bea}/tokens"),
        ] {
            let (status, p) = s
                .call_as(&olga_token, "POST", &path, Some(json!({"name": "x"})))
                .await;
            assert_eq!(status, 404, "{path}: {p}");
        }
        for path in [
            "/api/v1/orgs/acme/tokens".to_owned(),
            format!("/api/v1/orgs/acme/tokens?user_id={bea}"),
        ] {
            let (_, acme) = s.call_as(&olga_token, "GET", &path, None).await;
            assert!(
                names(&acme).iter().all(|(_, n)| n == "olga"),
                "{path}: {acme}"
            );
        }
        let (status, _) = s
            .call_as(&olga_token, "GET", &format!("{ORG}/tokens"), None)
            .await;
        assert_eq!(status, 404);
        assert_eq!(s.call_as(&bea_token, "GET", &me, None).await.0, 200);

        // An expired token lets nobody in.
        let stored = s
            .store
            .get::<serversync_model::auth::ApiToken>(&bea_token_id)
            .await
            .unwrap()
            .unwrap();
        let mut t = stored.value;
        t.expires_at = Some(chrono::Utc::now() - chrono::Duration::seconds(1));
        s.store.update(&t, Some(stored.version)).await.unwrap();
        assert_eq!(s.call_as(&bea_token, "GET", &me, None).await.0, 401);
        let live = s
            .ok(
                "GET",
                &format!("{ORG}/tokens?user_id={bea}&live_only=true"),
                None,
            )
            .await;
        assert_eq!(live["items"], json!([]), "two revoked, one expired: {live}");
    }
);
