//! The Microsoft Graph + Entra ID test double driven with raw HTTP (reqwest): the token
//! endpoint's errors, certificate assertions, users and folders, message delta paging,
//! resumption and expiry, `$value`, move, sendMail in both forms, `$batch`, subscriptions with
//! the validation handshake and notifications, faults and the mailbox concurrency limit;
//! events, contacts and To Do tasks (transactionId, calendarView delta, If-Match, the
//! extended-property `$filter`, 410 for an unknown delta token).
//! Every JSON body the double sends is checked against Microsoft's CSDL (`schema_violations`
//! must stay empty); the CSDL reader has unit tests of its own here.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use serde_json::{Value, json};
use serversync_testkit::TlsFiles;
use serversync_testkit::graph::csdl::Csdl;
use serversync_testkit::graph::{Fault, GraphConfig, GraphDouble, Route, csdl_path};

const TENANT: &str = "6f1c2a9e-1b7d-4c1e-9a55-2d0b8f6e4c31";
const DOMAIN: &str = "contoso.example";
const OTHER_TENANT: &str = "0b5d7e3a-90c4-4e2b-8f11-7a6c5d4e3f21";
const APP: &str = "3d9e1f44-6c2b-4a8e-b7d5-1f0e9c8a7b66";
const SECRET: &str = "s3cr3t~Value.For-Tests";
const ALICE: &str = "alice@contoso.example";
const ROLES: [&str; 4] = [
    "Mail.ReadWrite",
    "Mail.Send",
    "User.Read.All",
    "MailboxSettings.Read",
];

struct Env {
    _dir: tempfile::TempDir,
    tls: TlsFiles,
    graph: GraphDouble,
    http: reqwest::Client,
    alice: String,
}

async fn env(cfg: GraphConfig) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::ensure(dir.path()).unwrap();
    let cfg = GraphConfig {
        csdl: Some(csdl_path()),
        ..cfg
    };
    let graph = GraphDouble::start(&tls, cfg).await.unwrap();
    graph.add_tenant(TENANT, DOMAIN);
    graph.add_tenant(OTHER_TENANT, "fabrikam.example");
    graph.add_app(TENANT, APP, SECRET, &ROLES);
    let alice = graph.add_mailbox(TENANT, ALICE);
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(
            (*serversync_testkit::tls::client_config(&tls.ca_cert).unwrap()).clone(),
        )
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    Env {
        _dir: dir,
        tls,
        graph,
        http,
        alice,
    }
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: Sender {n} <sender{n}@example.org>\r\nTo: Alice <{ALICE}>\r\nSubject: message {n}\r\n\
         Message-ID: <m{n}@example.org>\r\nDate: Mon, 30 Nov 2026 10:0{n}:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

impl Env {
    async fn token_form(&self, tenant: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let r = self
            .http
            .post(self.graph.token_url(tenant))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(
                url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish(),
            )
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap())
    }

    async fn token_for(&self, client: &str, secret: &str) -> String {
        let (status, v) = self
            .token_form(
                TENANT,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client),
                    ("client_secret", secret),
                    ("scope", "https://graph.microsoft.com/.default"),
                ],
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["access_token"].as_str().unwrap().to_string()
    }

    async fn token(&self) -> String {
        self.token_for(APP, SECRET).await
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let url = if path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}/v1.0{path}", self.graph.graph_url())
        };
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, headers, v)
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let (s, _, v) = self.call(token, "GET", path, None).await;
        (s, v)
    }

    fn assert_schema_clean(&self) {
        let v = self.graph.schema_violations();
        assert!(v.is_empty(), "CSDL violations: {v:#?}");
    }
}

fn aadsts(v: &Value) -> u64 {
    let code = v["error_codes"][0].as_u64().unwrap();
    let desc = v["error_description"].as_str().unwrap();
    assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
    assert!(desc.contains("\r\nTrace ID: ") && desc.contains("\r\nCorrelation ID: "));
    for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
        assert!(v[k].is_string(), "{k} in {v}");
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_issues_tokens_and_answers_entra_errors() {
    let e = env(GraphConfig::default()).await;
    e.graph.add_app(TENANT, "no-consent", "pw", &[]);
    e.graph.add_app(TENANT, "expired", "pw", &["Mail.Read"]);
    e.graph.expire_secret(TENANT, "expired");
    e.graph.add_app(TENANT, "blocked", "pw", &["Mail.Read"]);
    e.graph.require_mfa(TENANT, "blocked");
    let form = |client: &'static str, secret: &'static str, scope: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
            ("scope", scope),
        ]
    };
    let scope = "https://graph.microsoft.com/.default";
    // Success, by tenant id and by domain.
    for tenant in [TENANT, DOMAIN] {
        let (s, v) = e.token_form(tenant, &form(APP, SECRET, scope)).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 3599);
        assert_eq!(v["ext_expires_in"], 3599);
        assert!(v["access_token"].as_str().unwrap().split('.').count() == 3);
    }
    // The double's own origin as the resource.
    let own = format!("{}/.default", e.graph.graph_url());
    let (s, v) = e
        .token_form(
            TENANT,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", SECRET),
                ("scope", own.as_str()),
            ],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // (tenant, form, status, error, AADSTS code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str, u64);
    let cases: Vec<Case> = vec![
        (
            "nosuch.example",
            form(APP, SECRET, scope),
            400,
            "invalid_request",
            90002,
        ),
        (
            TENANT,
            form("unknown-app", SECRET, scope),
            400,
            "unauthorized_client",
            700016,
        ),
        (
            OTHER_TENANT,
            form(APP, SECRET, scope),
            400,
            "unauthorized_client",
            700016,
        ),
        (
            TENANT,
            form(APP, "wrong", scope),
            401,
            "invalid_client",
            7000215,
        ),
        (
            TENANT,
            form("expired", "pw", scope),
            401,
            "invalid_client",
            7000222,
        ),
        (
            TENANT,
            form("blocked", "pw", scope),
            400,
            "invalid_grant",
            53003,
        ),
        (
            TENANT,
            form(APP, SECRET, "https://graph.microsoft.com/Mail.Read"),
            400,
            "invalid_scope",
            1002012,
        ),
        (
            TENANT,
            form(APP, SECRET, "https://outlook.office365.com/.default"),
            400,
            "invalid_scope",
            1002012,
        ),
    ];
    for (tenant, f, status, error, code) in cases {
        let (s, v) = e.token_form(tenant, &f).await;
        assert_eq!((s, v["error"].as_str().unwrap()), (status, error), "{v}");
        assert_eq!(aadsts(&v), code);
    }
    // An app without admin consent gets a token without roles; Graph refuses it.
    let t = e.token_for("no-consent", "pw").await;
    let (s, v) = e
        .get(&t, &format!("/users/{ALICE}/mailFolders/inbox"))
        .await;
    assert_eq!(s, 403);
    assert_eq!(v["error"]["code"], "ErrorAccessDenied");
    assert_eq!(
        v["error"]["message"],
        "Access is denied. Check credentials and try again."
    );
    // OpenID configuration.
    let r = e
        .http
        .get(format!(
            "{}/{TENANT}/v2.0/.well-known/openid-configuration",
            e.graph.login_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token_endpoint"], e.graph.token_url(TENANT));
    assert_eq!(v["cloud_instance_name"], "microsoftonline.com");
    for k in [
        "issuer",
        "authorization_endpoint",
        "jwks_uri",
        "msgraph_host",
        "tenant_region_scope",
    ] {
        assert!(v[k].is_string(), "{k}");
    }
    let r = e
        .http
        .get(format!(
            "{}/nosuch.example/v2.0/.well-known/openid-configuration",
            e.graph.login_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(aadsts(&r.json().await.unwrap()), 90002);
    // Expired access tokens.
    let t = e.token().await;
    assert_eq!(e.get(&t, &format!("/users/{ALICE}")).await.0, 200);
    e.graph.expire_access_tokens();
    let (s, v) = e.get(&t, &format!("/users/{ALICE}")).await;
    assert_eq!(s, 401);
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        e.get(&e.token().await, &format!("/users/{ALICE}")).await.0,
        200
    );
    e.assert_schema_clean();
}

/// An RSA key and a self-signed certificate from the openssl tool: (PKCS#8 DER, cert DER).
fn rsa_cert(dir: &std::path::Path, name: &str) -> (Vec<u8>, Vec<u8>) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req".as_ref(),
        "-x509".as_ref(),
        "-newkey".as_ref(),
        "rsa:2048".as_ref(),
        "-nodes".as_ref(),
        "-days".as_ref(),
        "2".as_ref(),
        "-subj".as_ref(),
        "/CN=serversync graph app".as_ref(),
        "-keyout".as_ref(),
        key.as_os_str(),
        "-out".as_ref(),
        cert.as_os_str(),
    ]);
    let key_der = dir.join(format!("{name}.key.der"));
    let cert_der = dir.join(format!("{name}.crt.der"));
    run(&[
        "pkcs8".as_ref(),
        "-topk8".as_ref(),
        "-nocrypt".as_ref(),
        "-in".as_ref(),
        key.as_os_str(),
        "-outform".as_ref(),
        "DER".as_ref(),
        "-out".as_ref(),
        key_der.as_os_str(),
    ]);
    run(&[
        "x509".as_ref(),
        "-in".as_ref(),
        cert.as_os_str(),
        "-outform".as_ref(),
        "DER".as_ref(),
        "-out".as_ref(),
        cert_der.as_os_str(),
    ]);
    (
        std::fs::read(key_der).unwrap(),
        std::fs::read(cert_der).unwrap(),
    )
}

fn assertion(key_der: &[u8], cert_der: &[u8], aud: &str, sub: &str, exp_in: i64) -> String {
    use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
    let x5t = B64URL.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der).as_ref(),
    );
    let now = chrono::Utc::now().timestamp();
    let header = B64URL.encode(json!({"alg": "RS256", "typ": "JWT", "x5t": x5t}).to_string());
    let claims = B64URL.encode(
        json!({"aud": aud, "iss": sub, "sub": sub, "jti": uuid::Uuid::new_v4().to_string(),
               "nbf": now - 5, "iat": now - 5, "exp": now + exp_in})
        .to_string(),
    );
    let signed = format!("{header}.{claims}");
    let key = RsaKeyPair::from_pkcs8(key_der).unwrap();
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{signed}.{}", B64URL.encode(sig))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_assertions_are_verified() {
    let e = env(GraphConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = rsa_cert(dir.path(), "app");
    let (other_key, other_cert) = rsa_cert(dir.path(), "other");
    e.graph.add_app_certificate(TENANT, APP, &cert);
    let aud = e.graph.token_url(TENANT);
    let try_with = |jwt: String| {
        let e = &e;
        async move {
            e.token_form(
                TENANT,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", APP),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", jwt.as_str()),
                    ("scope", "https://graph.microsoft.com/.default"),
                ],
            )
            .await
        }
    };
    let (s, v) = try_with(assertion(&key, &cert, &aud, APP, 600)).await;
    assert_eq!(s, 200, "{v}");
    let token = v["access_token"].as_str().unwrap();
    assert_eq!(e.get(token, &format!("/users/{}", e.alice)).await.0, 200);
    // Refused: an unregistered certificate, a key that does not match the named
    // certificate, the wrong audience, an expired assertion, the wrong subject.
    let bad = [
        assertion(&other_key, &other_cert, &aud, APP, 600),
        assertion(&other_key, &cert, &aud, APP, 600),
        assertion(
            &key,
            &cert,
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
            APP,
            600,
        ),
        assertion(&key, &cert, &aud, APP, -60),
        assertion(&key, &cert, &aud, "someone-else", 600),
    ];
    for jwt in bad {
        let (s, v) = try_with(jwt).await;
        assert_eq!(
            (s, v["error"].as_str().unwrap()),
            (401, "invalid_client"),
            "{v}"
        );
        assert_eq!(aadsts(&v), 700027);
    }
    e.assert_schema_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_settings_and_folders() {
    let e = env(GraphConfig::default()).await;
    let onprem = e.graph.add_on_premises_user(TENANT, "olaf@contoso.example");
    let stranger = e.graph.add_mailbox(OTHER_TENANT, "fred@fabrikam.example");
    let t = e.token().await;
    // No token, a bad token, no /v1.0.
    let r = e
        .http
        .get(format!("{}/v1.0/users/{ALICE}", e.graph.graph_url()))
        .header("client-request-id", "c0ffee00-1111-2222-3333-444455556666")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("request-id"));
    assert_eq!(
        r.headers()["client-request-id"],
        "c0ffee00-1111-2222-3333-444455556666"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(
        v["error"]["innerError"]["client-request-id"],
        "c0ffee00-1111-2222-3333-444455556666"
    );
    assert!(v["error"]["innerError"]["date"].is_string());
    assert_eq!(e.get("garbage", &format!("/users/{ALICE}")).await.0, 401);
    let (s, _, _) = e
        .call(
            &t,
            "GET",
            &format!("{}/beta/users/{ALICE}", e.graph.graph_url()),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // The user, by address and by id, with $select.
    let (s, v) = e.get(&t, &format!("/users/{ALICE}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], e.alice.as_str());
    assert_eq!(v["mail"], ALICE);
    assert_eq!(v["userPrincipalName"], ALICE);
    assert!(v["displayName"].is_string());
    let (s, v) = e.get(&t, &format!("/users/{}?$select=mail", e.alice)).await;
    assert_eq!(s, 200);
    assert_eq!(v["mail"], ALICE);
    assert!(v.get("displayName").is_none());
    // Unknown, in another tenant, on premises.
    let (s, v) = e.get(&t, "/users/nobody@contoso.example").await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (404, "Request_ResourceNotFound")
    );
    assert_eq!(e.get(&t, &format!("/users/{stranger}")).await.0, 404);
    let (s, v) = e
        .get(&t, &format!("/users/{stranger}/mailFolders/inbox"))
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = e.get(&t, &format!("/users/{onprem}/mailboxSettings")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (404, "MailboxNotEnabledForRESTAPI")
    );
    assert_eq!(
        v["error"]["message"],
        "The mailbox is either inactive, soft-deleted, or is hosted on-premise."
    );
    let (s, v) = e
        .get(
            &t,
            &format!("/users/{onprem}/mailFolders/inbox/messages/delta"),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (404, "MailboxNotEnabledForRESTAPI")
    );
    // mailboxSettings.
    let (s, v) = e.get(&t, &format!("/users/{ALICE}/mailboxSettings")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["timeZone"], "UTC");
    // Folders: well-known names, $filter, create, duplicates, childFolders.
    let (s, inbox) = e
        .get(&t, &format!("/users/{ALICE}/mailFolders/inbox"))
        .await;
    assert_eq!(s, 200);
    assert_eq!(inbox["displayName"], "Inbox");
    let inbox_id = inbox["id"].as_str().unwrap();
    let (s, v) = e
        .get(&t, &format!("/users('{ALICE}')/mailFolders('Inbox')"))
        .await;
    assert_eq!(
        (s, v["id"].as_str().unwrap()),
        (200, inbox_id),
        "key in parentheses"
    );
    let (s, v) = e
        .get(&t, &format!("/users/{ALICE}/mailFolders/{inbox_id}"))
        .await;
    assert_eq!((s, v["displayName"].as_str().unwrap()), (200, "Inbox"));
    for wk in [
        "sentitems",
        "drafts",
        "deleteditems",
        "junkemail",
        "archive",
        "outbox",
    ] {
        assert_eq!(
            e.get(&t, &format!("/users/{ALICE}/mailFolders/{wk}"))
                .await
                .0,
            200,
            "{wk}"
        );
    }
    let (s, v) = e
        .get(
            &t,
            &format!("/users/{ALICE}/mailFolders?$filter=displayName eq 'Sent Items'"),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    assert_eq!(v["value"][0]["displayName"], "Sent Items");
    let (s, _, v) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/mailFolders"),
            Some(json!({"displayName": "CRM"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let crm = v["id"].as_str().unwrap().to_string();
    let (s, _, v) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/mailFolders"),
            Some(json!({"displayName": "CRM"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (409, "ErrorFolderExists")
    );
    let (s, _, _) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/mailFolders/{crm}/childFolders"),
            Some(json!({"displayName": "Leads"})),
        )
        .await;
    assert_eq!(s, 201);
    let (s, v) = e
        .get(
            &t,
            &format!("/users/{ALICE}/mailFolders/{crm}/childFolders"),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["value"][0]["displayName"], "Leads");
    assert_eq!(
        e.get(&t, &format!("/users/{ALICE}/mailFolders/nosuch"))
            .await
            .0,
        404
    );
    // A role missing.
    e.graph.add_app(TENANT, "reader", "pw", &["Mail.Read"]);
    let reader = e.token_for("reader", "pw").await;
    let (s, v) = e
        .get(&reader, &format!("/users/{ALICE}/mailboxSettings"))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (403, "ErrorAccessDenied")
    );
    assert_eq!(
        e.get(&reader, &format!("/users/{ALICE}/mailFolders/inbox"))
            .await
            .0,
        200
    );
    e.assert_schema_clean();
}

fn ids_of(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_pages_resumes_reports_removals_and_expires() {
    let e = env(GraphConfig {
        page_size: 5,
        ..GraphConfig::default()
    })
    .await;
    let t = e.token().await;
    let mut delivered = Vec::new();
    for n in 0..7 {
        delivered.push(e.graph.deliver(ALICE, "inbox", &message(n), n % 2 == 0));
    }
    let first = format!(
        "{}/v1.0/users/{ALICE}/mailFolders/inbox/messages/delta?$select=subject,isRead,internetMessageId",
        e.graph.graph_url()
    );
    let get_prefer = |url: String, n: usize| {
        let e = &e;
        let t = t.clone();
        async move {
            let r = e
                .http
                .get(url)
                .bearer_auth(&t)
                .header("Prefer", format!("odata.maxpagesize={n}"))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let applied = r
                .headers()
                .get("preference-applied")
                .map(|v| v.to_str().unwrap().to_string());
            (status, applied, r.json::<Value>().await.unwrap())
        }
    };
    // Page 1 (3 items), page 2 (3), page 3 (1, with the deltaLink).
    let (s, applied, p1) = get_prefer(first.clone(), 3).await;
    assert_eq!(s, 200, "{p1}");
    assert_eq!(applied.as_deref(), Some("odata.maxpagesize=3"));
    assert_eq!(ids_of(&p1).len(), 3);
    assert!(p1["@odata.context"].is_string());
    assert_eq!(p1["value"][0]["subject"], "message 0");
    assert_eq!(p1["value"][0]["internetMessageId"], "<m0@example.org>");
    assert!(p1["value"][0].get("from").is_none(), "$select applied");
    let next1 = p1["@odata.nextLink"].as_str().unwrap().to_string();
    assert!(next1.starts_with(&e.graph.graph_url()) && next1.contains("$skiptoken="));
    let (_, _, p2) = get_prefer(next1.clone(), 3).await;
    // The next link is reusable (an interrupted sync resumes).
    let (_, _, p2_again) = get_prefer(next1.clone(), 3).await;
    assert_eq!(ids_of(&p2), ids_of(&p2_again));
    let next2 = p2["@odata.nextLink"].as_str().unwrap().to_string();
    let (_, _, p3) = get_prefer(next2, 3).await;
    assert_eq!(ids_of(&p3).len(), 1);
    assert!(p3.get("@odata.nextLink").is_none());
    let delta = p3["@odata.deltaLink"].as_str().unwrap().to_string();
    assert!(delta.contains("$deltatoken="));
    let all: Vec<String> = [ids_of(&p1), ids_of(&p2), ids_of(&p3)].concat();
    assert_eq!(all, delivered);
    // Nothing changed: an empty page with a deltaLink.
    let (s, v) = e.get(&t, &delta).await;
    assert_eq!(s, 200);
    assert!(v["value"].as_array().unwrap().is_empty());
    // Changes: one new message, one read, one moved out, one deleted.
    let new = e.graph.deliver(ALICE, "inbox", &message(8), false);
    let (s, _, _) = e
        .call(
            &t,
            "PATCH",
            &format!("/users/{ALICE}/messages/{}", delivered[1]),
            Some(json!({"isRead": true})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, moved) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/messages/{}/move", delivered[2]),
            Some(json!({"destinationId": "archive"})),
        )
        .await;
    assert_eq!(s, 201, "{moved}");
    assert_ne!(moved["id"], delivered[2].as_str());
    let (s, _, _) = e
        .call(
            &t,
            "DELETE",
            &format!("/users/{ALICE}/messages/{}", delivered[3]),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, v) = e.get(&t, &delta).await;
    assert_eq!(s, 200, "{v}");
    let changes = v["value"].as_array().unwrap();
    let by_id = |id: &str| changes.iter().find(|c| c["id"] == id).cloned();
    assert!(by_id(&new).unwrap().get("@removed").is_none());
    assert_eq!(by_id(&delivered[1]).unwrap()["isRead"], true);
    assert_eq!(
        by_id(&delivered[2]).unwrap()["@removed"]["reason"],
        "deleted"
    );
    assert_eq!(
        by_id(&delivered[3]).unwrap()["@removed"]["reason"],
        "deleted"
    );
    assert_eq!(changes.len(), 4);
    // The archive's delta shows the moved message.
    let (_, v) = e
        .get(
            &t,
            &format!("/users/{ALICE}/mailFolders/archive/messages/delta"),
        )
        .await;
    assert_eq!(ids_of(&v), vec![moved["id"].as_str().unwrap().to_string()]);
    // The old deltaLink still works; after expiry every link answers 410.
    assert_eq!(e.get(&t, &delta).await.0, 200);
    e.graph.expire_delta_tokens(ALICE);
    for link in [&delta, &next1] {
        let (s, v) = e.get(&t, link).await;
        assert_eq!(
            (s, v["error"]["code"].as_str().unwrap()),
            (410, "syncStateNotFound")
        );
    }
    e.assert_schema_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn value_get_filter_and_move() {
    let e = env(GraphConfig::default()).await;
    let t = e.token().await;
    let id = e.graph.deliver(ALICE, "inbox", &message(1), false);
    let r = e
        .http
        .get(format!(
            "{}/v1.0/users/{ALICE}/messages/{id}/$value",
            e.graph.graph_url()
        ))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), message(1).as_slice());
    let (s, v) = e
        .get(&t, &format!("/users/{}/messages/{id}", e.alice))
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["subject"], "message 1");
    assert_eq!(v["from"]["emailAddress"]["address"], "sender1@example.org");
    assert_eq!(v["toRecipients"][0]["emailAddress"]["address"], ALICE);
    assert!(v["@odata.etag"].is_string() && v["changeKey"].is_string());
    let (s, v) = e
        .get(
            &t,
            &format!(
                "/users/{ALICE}/mailFolders/inbox/messages?$filter=internetMessageId eq '{}'&$select=id,subject",
                urlencode("<m1@example.org>")
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids_of(&v), vec![id.clone()]);
    let (s, v) = e
        .get(
            &t,
            &format!(
                "/users/{ALICE}/mailFolders/inbox/messages?$filter=internetMessageId eq '<none@x>'"
            ),
        )
        .await;
    assert_eq!(s, 200);
    assert!(ids_of(&v).is_empty());
    let (s, v) = e
        .get(&t, &format!("/users/{ALICE}/messages/AAMkAGnosuch/$value"))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (404, "ErrorItemNotFound")
    );
    let (s, _, moved) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/messages/{id}/move"),
            Some(json!({"destinationId": "deleteditems"})),
        )
        .await;
    assert_eq!(s, 201);
    let dest = e.graph.messages(ALICE, "deleteditems");
    assert_eq!(dest.len(), 1);
    assert_eq!(dest[0].id, moved["id"].as_str().unwrap());
    assert_eq!(dest[0].folder, "Deleted Items");
    assert!(e.graph.messages(ALICE, "inbox").is_empty());
    assert_eq!(
        e.get(&t, &format!("/users/{ALICE}/messages/{id}")).await.0,
        404
    );
    e.assert_schema_clean();
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_mail_in_json_and_mime_forms() {
    let e = env(GraphConfig::default()).await;
    let t = e.token().await;
    let url = format!("{}/v1.0/users/{ALICE}/sendMail", e.graph.graph_url());
    // JSON form, saved.
    let (s, _, v) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/sendMail"),
            Some(json!({
                "message": {
                    "subject": "Quote 42",
                    "body": {"contentType": "Text", "content": "Here it is."},
                    "toRecipients": [{"emailAddress": {"address": "bob@example.org", "name": "Bob"}}],
                },
                "saveToSentItems": true,
            })),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    // MIME form: base64 in a text/plain body; its Message-ID is kept.
    let mime = b"From: alice@contoso.example\r\nTo: carol@example.org\r\nSubject: MIME form\r\n\
        Date: Sat, 5 Dec 2026 10:00:00 +0000\r\nMessage-ID: <mime-1@crm.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nhi\r\n";
    let r = e
        .http
        .post(&url)
        .bearer_auth(&t)
        .header("Content-Type", "text/plain")
        .body(B64.encode(mime))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.bytes().await.unwrap().is_empty());
    let sent = e.graph.sent();
    assert_eq!(sent.len(), 2);
    assert!(String::from_utf8_lossy(&sent[0]).contains("Subject: Quote 42"));
    assert_eq!(sent[1].as_slice(), mime.as_slice());
    let saved = e.graph.messages(ALICE, "sentitems");
    assert_eq!(saved.len(), 2);
    assert_eq!(
        saved[1].internet_message_id.as_deref(),
        Some("<mime-1@crm.example>")
    );
    assert!(saved[0].internet_message_id.is_some());
    // Not base64; base64 but not MIME; no recipients.
    for (body, code) in [
        (
            "%%% not base64 %%%".to_string(),
            "ErrorMimeContentInvalidBase64String",
        ),
        (
            B64.encode("just some words without headers"),
            "ErrorMimeContentInvalid",
        ),
        (
            B64.encode("Subject: x\r\n\r\nno recipients\r\n"),
            "ErrorInvalidRecipients",
        ),
    ] {
        let r = e
            .http
            .post(&url)
            .bearer_auth(&t)
            .header("Content-Type", "text/plain")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code);
    }
    // JSON form without saving.
    let (s, _, _) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/sendMail"),
            Some(json!({"message": {"subject": "unsaved", "toRecipients": [{"emailAddress": {"address": "d@example.org"}}]}, "saveToSentItems": false})),
        )
        .await;
    assert_eq!(s, 202);
    assert_eq!(e.graph.sent().len(), 3);
    assert_eq!(e.graph.messages(ALICE, "sentitems").len(), 2);
    // Mail.Send is needed.
    e.graph.add_app(TENANT, "reader", "pw", &["Mail.Read"]);
    let reader = e.token_for("reader", "pw").await;
    let r = e
        .http
        .post(&url)
        .bearer_auth(&reader)
        .header("Content-Type", "text/plain")
        .body(B64.encode(mime))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Over 4 MB: 413.
    let big = vec![b'A'; 4 * 1024 * 1024 + 16];
    let r = e
        .http
        .post(&url)
        .bearer_auth(&t)
        .header("Content-Type", "text/plain")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    e.assert_schema_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_serves_each_request_and_caps_at_twenty() {
    let e = env(GraphConfig::default()).await;
    let t = e.token().await;
    let id = e.graph.deliver(ALICE, "inbox", &message(2), false);
    let (s, _, v) = e
        .call(
            &t,
            "POST",
            "/$batch",
            Some(json!({"requests": [
                {"id": "1", "method": "GET", "url": format!("/users/{ALICE}/mailFolders/inbox")},
                {"id": "2", "method": "GET", "url": format!("/users/{ALICE}/messages/{id}/$value")},
                {"id": "3", "method": "PATCH", "url": format!("/users/{ALICE}/messages/{id}"),
                 "headers": {"Content-Type": "application/json"}, "body": {"isRead": true}},
                {"id": "4", "method": "GET", "url": format!("/users/{ALICE}/messages/nosuch")},
            ]})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let resp = v["responses"].as_array().unwrap();
    let by = |i: &str| resp.iter().find(|r| r["id"] == i).unwrap().clone();
    assert_eq!(by("1")["status"], 200);
    assert_eq!(by("1")["body"]["displayName"], "Inbox");
    assert_eq!(by("2")["status"], 200);
    assert_eq!(
        B64.decode(by("2")["body"].as_str().unwrap()).unwrap(),
        message(2)
    );
    assert_eq!(by("3")["status"], 200);
    assert!(e.graph.messages(ALICE, "inbox")[0].is_read);
    assert_eq!(by("4")["status"], 404);
    assert_eq!(by("4")["body"]["error"]["code"], "ErrorItemNotFound");
    let (s, _, v) = e
        .call(
            &t,
            "POST",
            "/$batch",
            Some(
                json!({"requests": [{"id": "1", "method": "POST", "url": "/$batch",
                "headers": {"Content-Type": "application/json"}, "body": {"requests": []}}]}),
            ),
        )
        .await;
    assert_eq!(
        (s, v["responses"][0]["status"].as_u64()),
        (200, Some(400)),
        "no nesting"
    );
    let many: Vec<Value> = (0..21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{ALICE}")}))
        .collect();
    let (s, _, _) = e
        .call(&t, "POST", "/$batch", Some(json!({"requests": many})))
        .await;
    assert_eq!(s, 400);
    e.assert_schema_clean();
}

/// A notification receiver on plain HTTP: answers validation, records notifications.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Value>>>,
    _task: tokio::task::JoinHandle<()>,
}

async fn receiver(answer_validation: bool) -> Receiver {
    use axum::extract::{RawQuery, State};
    let got: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new()
        .fallback(
            move |State(got): State<Arc<Mutex<Vec<Value>>>>,
                  RawQuery(q): RawQuery,
                  body: axum::body::Bytes| async move {
                let token = q.and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "validationToken")
                        .map(|(_, v)| v.into_owned())
                });
                if let Some(token) = token {
                    if answer_validation {
                        return (
                            axum::http::StatusCode::OK,
                            [("content-type", "text/plain")],
                            token,
                        );
                    }
                    return (
                        axum::http::StatusCode::FORBIDDEN,
                        [("content-type", "text/plain")],
                        String::new(),
                    );
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                    got.lock().unwrap().push(v);
                }
                (
                    axum::http::StatusCode::ACCEPTED,
                    [("content-type", "text/plain")],
                    String::new(),
                )
            },
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/notify",
        listener.local_addr().unwrap().port()
    );
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Receiver {
        url,
        got,
        _task: task,
    }
}

async fn wait_for(got: &Arc<Mutex<Vec<Value>>>, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let v = got.lock().unwrap().clone();
        if v.len() >= n {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    got.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_validate_notify_renew_and_end() {
    let e = env(GraphConfig::default()).await;
    let t = e.token().await;
    let rx = receiver(true).await;
    let life = receiver(true).await;
    let exp = (chrono::Utc::now() + chrono::Duration::minutes(60)).to_rfc3339();
    let (s, _, sub) = e
        .call(
            &t,
            "POST",
            "/subscriptions",
            Some(json!({
                "changeType": "created,updated,deleted",
                "notificationUrl": rx.url,
                "lifecycleNotificationUrl": format!("{}/life", life.url),
                "resource": format!("users/{}/mailFolders('inbox')/messages", e.alice),
                "expirationDateTime": exp,
                "clientState": "crm-secret",
            })),
        )
        .await;
    assert_eq!(s, 201, "{sub}");
    let sid = sub["id"].as_str().unwrap().to_string();
    assert_eq!(e.graph.subscriptions().len(), 1);
    assert_eq!(
        e.graph.subscriptions()[0].client_state.as_deref(),
        Some("crm-secret")
    );
    // A new message is notified.
    let mid = e.graph.deliver(ALICE, "inbox", &message(3), false);
    e.graph.deliver(ALICE, "drafts", &message(4), false); // not subscribed
    let got = wait_for(&rx.got, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let n = &got[0]["value"][0];
    assert_eq!(n["subscriptionId"], sid.as_str());
    assert_eq!(n["changeType"], "created");
    assert_eq!(n["clientState"], "crm-secret");
    assert_eq!(n["tenantId"], TENANT);
    assert_eq!(n["resourceData"]["id"], mid.as_str());
    assert_eq!(n["resource"], format!("Users/{}/Messages/{mid}", e.alice));
    // Renewal; too far; listing.
    let later = (chrono::Utc::now() + chrono::Duration::minutes(4000)).to_rfc3339();
    let (s, _, v) = e
        .call(
            &t,
            "PATCH",
            &format!("/subscriptions/{sid}"),
            Some(json!({"expirationDateTime": later})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let too_far = (chrono::Utc::now() + chrono::Duration::minutes(5000)).to_rfc3339();
    let (s, _, _) = e
        .call(
            &t,
            "PATCH",
            &format!("/subscriptions/{sid}"),
            Some(json!({"expirationDateTime": too_far})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, v) = e.get(&t, "/subscriptions").await;
    assert_eq!(s, 200);
    assert_eq!(v["value"].as_array().unwrap().len(), 1);
    // Lifecycle notification.
    e.graph.fire_lifecycle(&sid, "reauthorizationRequired");
    let l = wait_for(&life.got, 1).await;
    assert_eq!(
        l[0]["value"][0]["lifecycleEvent"],
        "reauthorizationRequired"
    );
    assert_eq!(l[0]["value"][0]["subscriptionId"], sid.as_str());
    // Dropped by the server: PATCH gets 404; DELETE of a live one 204.
    e.graph.drop_subscription(&sid);
    let (s, _, v) = e
        .call(
            &t,
            "PATCH",
            &format!("/subscriptions/{sid}"),
            Some(json!({"expirationDateTime": later})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (404, "ResourceNotFound")
    );
    // An endpoint that fails validation; an expiry too far out.
    let bad = receiver(false).await;
    let body = |url: &str, exp: &str| {
        json!({"changeType": "created", "notificationUrl": url, "expirationDateTime": exp,
               "resource": format!("users/{ALICE}/mailFolders('inbox')/messages")})
    };
    let (s, _, v) = e
        .call(&t, "POST", "/subscriptions", Some(body(&bad.url, &exp)))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str().unwrap()),
        (400, "ValidationError")
    );
    let (s, _, v) = e
        .call(&t, "POST", "/subscriptions", Some(body(&rx.url, &too_far)))
        .await;
    assert_eq!(s, 400, "{v}");
    let (s, _, v) = e
        .call(&t, "POST", "/subscriptions", Some(body(&rx.url, &exp)))
        .await;
    assert_eq!(s, 201);
    let sid2 = v["id"].as_str().unwrap();
    let (s, _, _) = e
        .call(&t, "DELETE", &format!("/subscriptions/{sid2}"), None)
        .await;
    assert_eq!(s, 204);
    assert!(e.graph.subscriptions().is_empty());
    e.assert_schema_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_and_mailbox_concurrency() {
    let e = env(GraphConfig::default()).await;
    let t = e.token().await;
    let path = format!("/users/{ALICE}/mailFolders/inbox/messages/delta");
    e.graph.inject(Fault::Throttle {
        route: Route::Delta,
        status: 429,
        retry_after: Some(7),
        mailbox_concurrency: true,
    });
    let (s, h, v) = e.call(&t, "GET", &path, None).await;
    assert_eq!(s, 429);
    assert_eq!(h["retry-after"], "7");
    assert_eq!(v["error"]["code"], "ApplicationThrottled");
    assert_eq!(
        v["error"]["message"],
        "Application is over its MailboxConcurrency limit."
    );
    e.graph.inject(Fault::Throttle {
        route: Route::Any,
        status: 503,
        retry_after: None,
        mailbox_concurrency: false,
    });
    let (s, h, _) = e.call(&t, "GET", &path, None).await;
    assert_eq!(s, 503);
    assert!(!h.contains_key("retry-after"));
    e.graph.inject(Fault::Http {
        route: Route::Token,
        status: 500,
        code: "ServerError".into(),
        message: "boom".into(),
    });
    let (s, v) = e
        .token_form(TENANT, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!((s, v["error"].as_str().unwrap()), (500, "ServerError"));
    assert_eq!(aadsts(&v), 50000);
    e.graph.inject(Fault::Throttle {
        route: Route::Token,
        status: 429,
        retry_after: Some(3),
        mailbox_concurrency: false,
    });
    let (s, v) = e
        .token_form(TENANT, &[("grant_type", "client_credentials")])
        .await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (429, "temporarily_unavailable")
    );
    // A fault for another route waits for its route.
    e.graph.inject(Fault::DropConnection {
        route: Route::SendMail,
    });
    assert_eq!(e.call(&t, "GET", &path, None).await.0, 200);
    let r = e
        .http
        .post(format!(
            "{}/v1.0/users/{ALICE}/sendMail",
            e.graph.graph_url()
        ))
        .bearer_auth(&t)
        .header("Content-Type", "text/plain")
        .body(B64.encode(b"To: x@example.org\r\nSubject: s\r\n\r\nb\r\n"))
        .send()
        .await;
    assert!(r.is_err(), "dropped");
    assert!(e.graph.sent().is_empty());
    e.graph.inject(Fault::DropAfterServing {
        route: Route::SendMail,
    });
    let r = e
        .http
        .post(format!(
            "{}/v1.0/users/{ALICE}/sendMail",
            e.graph.graph_url()
        ))
        .bearer_auth(&t)
        .header("Content-Type", "text/plain")
        .body(B64.encode(b"To: x@example.org\r\nSubject: s\r\n\r\nb\r\n"))
        .send()
        .await;
    assert!(r.is_err(), "dropped after serving");
    assert_eq!(e.graph.sent().len(), 1);
    // Concurrency: four slow requests in flight for one mailbox; a fifth gets 429.
    for _ in 0..4 {
        e.graph.inject(Fault::Delay {
            route: Route::Messages,
            ms: 3000,
        });
    }
    let mut slow = Vec::new();
    for _ in 0..4 {
        let (http, url, t) = (
            e.http.clone(),
            format!("{}/v1.0/users/{ALICE}/messages", e.graph.graph_url()),
            t.clone(),
        );
        slow.push(tokio::spawn(async move {
            http.get(url)
                .bearer_auth(t)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    // Until all four are being served (a loaded machine starts them late).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while e.graph.in_flight() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the four slow requests were not all in flight within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (s, h, v) = e
        .call(
            &t,
            "GET",
            &format!("/users/{ALICE}/mailFolders/inbox"),
            None,
        )
        .await;
    assert_eq!(s, 429, "{v}");
    assert!(h.contains_key("retry-after"));
    assert_eq!(v["error"]["code"], "ApplicationThrottled");
    for j in slow {
        assert_eq!(j.await.unwrap(), 200);
    }
    assert_eq!(
        e.call(
            &t,
            "GET",
            &format!("/users/{ALICE}/mailFolders/inbox"),
            None
        )
        .await
        .0,
        200
    );
    // Another app is not limited by the first one's requests.
    let recorded = e.graph.requests();
    assert!(
        recorded
            .iter()
            .any(|r| r.status == 429 && r.path.ends_with("/mailFolders/inbox"))
    );
    assert!(recorded.iter().any(|r| r.status == 0 && r.method == "POST"));
    let _ = &e.tls;
    e.assert_schema_clean();
}

#[test]
fn csdl_reads_graphs_metadata() {
    let csdl = Csdl::load(&csdl_path()).unwrap();
    assert_eq!(
        csdl.property_type("message", "subject").as_deref(),
        Some("Edm.String")
    );
    assert_eq!(
        csdl.property_type("microsoft.graph.message", "toRecipients")
            .as_deref(),
        Some("Collection(microsoft.graph.recipient)")
    );
    // Inheritance: message → outlookItem → entity.
    assert_eq!(
        csdl.property_type("message", "changeKey").as_deref(),
        Some("Edm.String")
    );
    assert_eq!(
        csdl.property_type("message", "id").as_deref(),
        Some("Edm.String")
    );
    assert_eq!(
        csdl.property_type("microsoft.graph.recipient", "emailAddress")
            .as_deref(),
        Some("microsoft.graph.emailAddress")
    );
    assert_eq!(csdl.property_type("message", "noSuchProperty"), None);
    // check(): clean, unknown property, wrong kinds, annotations ignored.
    let ok = json!({"@odata.etag": "W/\"x\"", "id": "1", "subject": "s", "isRead": true,
                    "from": {"emailAddress": {"address": "a@b"}}, "toRecipients": [],
                    "importance": "normal", "@removed": {"reason": "deleted"}});
    assert!(
        csdl.check("message", &ok).is_empty(),
        "{:?}",
        csdl.check("message", &ok)
    );
    let bad = json!({"id": "1", "subjectLine": "s", "isRead": "yes",
                     "from": {"emailAddress": {"adress": "a@b"}}, "toRecipients": {}});
    let v = csdl.check("message", &bad);
    assert_eq!(v.len(), 4, "{v:?}");
    assert!(v.iter().any(|x| x.contains("subjectLine")));
    assert!(v.iter().any(|x| x.contains("isRead")));
    assert!(v.iter().any(|x| x.contains("adress")));
    assert!(v.iter().any(|x| x.contains("toRecipients")));
    // Bound operations.
    assert_eq!(
        csdl.bound_operation("sendMail", "microsoft.graph.user"),
        Some(vec!["Message".to_string(), "SaveToSentItems".to_string()])
    );
    assert_eq!(
        csdl.bound_operation("delta", "Collection(microsoft.graph.message)"),
        Some(Vec::new())
    );
    assert!(
        csdl.bound_operation("move", "microsoft.graph.message")
            .is_some()
    );
    assert_eq!(
        csdl.bound_operation("sendMail", "microsoft.graph.message"),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_request_bodies_are_checked_against_the_csdl() {
    let e = env(GraphConfig::default()).await;
    let t = e.token().await;
    // A misspelt property and an unknown action parameter are recorded, not just ignored.
    let (s, _, _) = e
        .call(
            &t,
            "POST",
            &format!("/users/{ALICE}/sendMail"),
            Some(json!({
                "message": {"subject": "x", "toRecipient": [{"emailAddress": {"address": "b@example.org"}}],
                            "toRecipients": [{"emailAddress": {"address": "b@example.org"}}]},
                "saveToSent": true,
            })),
        )
        .await;
    assert_eq!(s, 202);
    let v = e.graph.schema_violations();
    assert!(v.iter().any(|x| x.contains("toRecipient:")), "{v:?}");
    assert!(v.iter().any(|x| x.contains("saveToSent")), "{v:?}");
    assert_eq!(v.len(), 2, "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_retried_when_the_endpoint_fails() {
    use axum::extract::{RawQuery, State};
    let e = env(GraphConfig::default()).await;
    let t = e.token().await;
    // Validation passes; the first two notifications get 503, the third is accepted.
    let calls: Arc<Mutex<Vec<u16>>> = Arc::default();
    let app = axum::Router::new()
        .fallback(
            |State(calls): State<Arc<Mutex<Vec<u16>>>>, RawQuery(q): RawQuery| async move {
                if let Some(token) = q.and_then(|q| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == "validationToken")
                        .map(|(_, v)| v.into_owned())
                }) {
                    return (axum::http::StatusCode::OK, token);
                }
                let mut c = calls.lock().unwrap();
                let status = if c.len() < 2 { 503 } else { 202 };
                c.push(status);
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    String::new(),
                )
            },
        )
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/n",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let exp = (chrono::Utc::now() + chrono::Duration::minutes(30)).to_rfc3339();
    let (s, _, v) = e
        .call(
            &t,
            "POST",
            "/subscriptions",
            Some(
                json!({"changeType": "created", "notificationUrl": url, "expirationDateTime": exp,
                        "resource": format!("users/{ALICE}/messages")}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    e.graph.deliver(ALICE, "junkemail", &message(5), false);
    for _ in 0..80 {
        if calls.lock().unwrap().len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(*calls.lock().unwrap(), vec![503, 503, 202]);
    e.assert_schema_clean();
}

/// Events, contacts and To Do tasks as Graph v1.0 serves them: defaults, transactionId,
/// calendarView delta with occurrences, If-Match, extended-property `$filter`, 410 for an
/// unknown delta token, permissions and faults.
#[tokio::test]
async fn items_speak_graph_v1() {
    let e = env(GraphConfig::default()).await;
    e.graph.add_app(
        TENANT,
        "items-app",
        "items-secret",
        &[
            "Calendars.ReadWrite",
            "Contacts.ReadWrite",
            "Tasks.ReadWrite.All",
        ],
    );
    let t = e.token_for("items-app", "items-secret").await;
    let me = format!("/users/{ALICE}");
    let (s, cal) = e.get(&t, &format!("{me}/calendar")).await;
    assert_eq!(s, 200, "{cal}");
    assert_eq!(cal["isDefaultCalendar"], true);
    let (s, lists) = e
        .get(
            &t,
            &format!("{me}/todo/lists?$filter=wellknownListName%20eq%20'defaultList'"),
        )
        .await;
    assert_eq!(s, 200, "{lists}");
    assert_eq!(lists["value"].as_array().unwrap().len(), 1);
    assert_eq!(lists["value"][0]["wellknownListName"], "defaultList");

    // A weekly series of three, with a transactionId and an extended property.
    let prop = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name Color";
    let event = json!({
        "subject": "Series", "transactionId": "tx-1",
        "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-12-07T10:00:00", "timeZone": "UTC"},
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
            "range": {"type": "numbered", "numberOfOccurrences": 3, "startDate": "2026-12-07"},
        },
        "singleValueExtendedProperties": [{"id": prop, "value": "blue"}],
    });
    let (s, _, created) = e
        .call(&t, "POST", &format!("{me}/events"), Some(event.clone()))
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let etag = created["@odata.etag"].as_str().unwrap().to_string();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(created["type"], "seriesMaster");
    assert!(
        created.get("singleValueExtendedProperties").is_none(),
        "extended properties only when expanded"
    );
    let (_, _, again) = e
        .call(&t, "POST", &format!("{me}/events"), Some(event))
        .await;
    assert_eq!(
        again["id"],
        id.as_str(),
        "transactionId returns the first event"
    );
    assert_eq!(e.graph.items(ALICE, "calendar").len(), 1);

    // calendarView delta: the window is required, occurrences are listed, not the master.
    let (s, v) = e.get(&t, &format!("{me}/calendarView/delta")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("ErrorInvalidParameter"))
    );
    let first = format!(
        "{me}/calendarView/delta?startDateTime=2026-12-01T00:00:00Z&endDateTime=2027-01-31T00:00:00Z"
    );
    let (s, page) = e.get(&t, &first).await;
    assert_eq!(s, 200, "{page}");
    let occ = page["value"].as_array().unwrap();
    assert_eq!(occ.len(), 3, "{page:#}");
    for o in occ {
        assert_eq!(o["type"], "occurrence");
        assert_eq!(o["seriesMasterId"], id.as_str());
        assert_ne!(o["id"], id.as_str());
    }
    assert_eq!(occ[2]["start"]["dateTime"], "2026-12-21T09:00:00.0000000");
    let delta_link = page["@odata.deltaLink"].as_str().unwrap().to_string();

    // If-Match: stale is 412, current writes and changes the etag.
    let patch = |tag: &str| {
        e.http
            .patch(format!("{}/v1.0{me}/events/{id}", e.graph.graph_url()))
            .bearer_auth(&t)
            .header("If-Match", tag)
            .json(&json!({"subject": "Series (renamed)"}))
            .send()
    };
    let r = patch("W/\"c3RhbGU=\"").await.unwrap();
    assert_eq!(r.status().as_u16(), 412);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "ErrorIrresolvableConflict");
    let r = patch(&etag).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_ne!(v["@odata.etag"], etag.as_str());
    assert_eq!(v["subject"], "Series (renamed)");
    // The change shows in the view again, as occurrences.
    let (s, since) = e.get(&t, &delta_link).await;
    assert_eq!(s, 200);
    assert_eq!(since["value"].as_array().unwrap().len(), 3);

    // The extended-property $filter, and $expand to read it.
    let filter = url::form_urlencoded::byte_serialize(
        format!("singleValueExtendedProperties/Any(ep: ep/id eq '{prop}' and ep/value eq 'blue')")
            .as_bytes(),
    )
    .collect::<String>();
    let expand = url::form_urlencoded::byte_serialize(
        format!("singleValueExtendedProperties($filter=id eq '{prop}')").as_bytes(),
    )
    .collect::<String>();
    let (s, found) = e
        .get(
            &t,
            &format!("{me}/events?$filter={filter}&$expand={expand}"),
        )
        .await;
    assert_eq!(s, 200, "{found}");
    assert_eq!(found["value"].as_array().unwrap().len(), 1);
    assert_eq!(
        found["value"][0]["singleValueExtendedProperties"][0]["value"],
        "blue"
    );

    // A delta token the server does not know: 410.
    let (s, v) = e
        .get(
            &t,
            &format!("{me}/contacts/delta?$deltatoken=bm90LWEtdG9rZW4"),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (410, Some("syncStateNotFound"))
    );
    // A token that is expired: 410 as well.
    let (_, page) = e.get(&t, &format!("{me}/contacts/delta")).await;
    let link = page["@odata.deltaLink"].as_str().unwrap().to_string();
    e.graph.expire_delta_tokens(ALICE);
    let (s, _) = e.get(&t, &link).await;
    assert_eq!(s, 410);

    // A task needs a title; the mail app has no consent for contacts.
    let list = lists["value"][0]["id"].as_str().unwrap();
    let (s, _, v) = e
        .call(
            &t,
            "POST",
            &format!("{me}/todo/lists/{list}/tasks"),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let mail_token = e.token().await;
    let (s, _) = e.get(&mail_token, &format!("{me}/contacts")).await;
    assert_eq!(s, 403);

    // Faults reach the item routes.
    e.graph.inject(Fault::Http {
        route: Route::Tasks,
        status: 500,
        code: "generalException".into(),
        message: "boom".into(),
    });
    let (s, _) = e.get(&t, &format!("{me}/todo/lists/{list}/tasks")).await;
    assert_eq!(s, 500);
    let (s, _) = e.get(&t, &format!("{me}/todo/lists/{list}/tasks")).await;
    assert_eq!(s, 200);
    e.assert_schema_clean();
}

/// A series' instances: `events/{id}/instances` lists occurrences over a range (paged by
/// `$top`, `$select` honoured); an occurrence patched becomes an exception with its
/// `originalStart`, one deleted is no longer listed; either changes the master (new etag,
/// listed by delta again); a new pattern drops the exceptions.
#[tokio::test]
async fn series_instances_are_listed_changed_and_cancelled() {
    let e = env(GraphConfig::default()).await;
    e.graph
        .add_app(TENANT, "cal-app", "cal-secret", &["Calendars.ReadWrite"]);
    let t = e.token_for("cal-app", "cal-secret").await;
    let me = format!("/users/{ALICE}");
    let event = json!({
        "subject": "Weekly", "location": {"displayName": "Room 1"},
        "start": {"dateTime": "2026-12-07T09:00:00", "timeZone": "Europe/Berlin"},
        "end": {"dateTime": "2026-12-07T10:00:00", "timeZone": "Europe/Berlin"},
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
            "range": {"type": "numbered", "numberOfOccurrences": 4, "startDate": "2026-12-07"},
        },
    });
    let (s, _, created) = e
        .call(&t, "POST", &format!("{me}/events"), Some(event))
        .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let etag = created["@odata.etag"].as_str().unwrap().to_string();
    let range = "startDateTime=2026-12-01T00:00:00Z&endDateTime=2027-01-31T00:00:00Z";

    // The range is required.
    let (s, v) = e.get(&t, &format!("{me}/events/{id}/instances")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("ErrorInvalidParameter"))
    );
    // Pages of $top, with a next link; $select keeps what was asked.
    let (s, page) = e
        .get(
            &t,
            &format!(
                "{me}/events/{id}/instances?{range}&$top=3&$select=id,type,originalStart,start"
            ),
        )
        .await;
    assert_eq!(s, 200, "{page}");
    let first = page["value"].as_array().unwrap().clone();
    assert_eq!(first.len(), 3, "{page:#}");
    assert!(
        first[0].get("subject").is_none(),
        "not selected: {}",
        first[0]
    );
    assert_eq!(first[0]["type"], "occurrence");
    assert_eq!(
        first[0]["originalStart"], "2026-12-07T08:00:00Z",
        "Berlin is UTC+1"
    );
    let next = page["@odata.nextLink"]
        .as_str()
        .expect("a next link")
        .to_string();
    let (s, rest) = e.get(&t, &next).await;
    assert_eq!(s, 200, "{rest}");
    assert_eq!(rest["value"].as_array().unwrap().len(), 1);
    assert!(rest.get("@odata.nextLink").is_none());
    let (_, delta) = e.get(&t, &format!("{me}/calendarView/delta?{range}")).await;
    let delta_link = delta["@odata.deltaLink"].as_str().unwrap().to_string();

    // Move the second occurrence and rename it; cancel the third.
    let second = first[1]["id"].as_str().unwrap().to_string();
    let third = first[2]["id"].as_str().unwrap().to_string();
    let (s, _, moved) = e
        .call(
            &t,
            "PATCH",
            &format!("{me}/events/{second}"),
            Some(json!({
                "subject": "Weekly (later)",
                "start": {"dateTime": "2026-12-14T11:00:00", "timeZone": "Europe/Berlin"},
                "end": {"dateTime": "2026-12-14T12:00:00", "timeZone": "Europe/Berlin"},
            })),
        )
        .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(moved["type"], "exception");
    assert_eq!(moved["seriesMasterId"], id.as_str());
    let (s, _, _) = e
        .call(&t, "DELETE", &format!("{me}/events/{third}"), None)
        .await;
    assert_eq!(s, 204);
    let (s, _, _) = e
        .call(&t, "DELETE", &format!("{me}/events/{third}"), None)
        .await;
    assert_eq!(s, 404, "a cancelled occurrence is gone");
    let (s, got) = e.get(&t, &format!("{me}/events/{second}")).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["subject"], "Weekly (later)");

    let (_, page) = e
        .get(&t, &format!("{me}/events/{id}/instances?{range}"))
        .await;
    let all = page["value"].as_array().unwrap();
    assert_eq!(all.len(), 3, "the cancelled one is not listed: {page:#}");
    let ex = all
        .iter()
        .find(|i| i["type"] == "exception")
        .expect("the exception");
    assert_eq!(ex["originalStart"], "2026-12-14T08:00:00Z");
    assert_eq!(ex["start"]["dateTime"], "2026-12-14T11:00:00.0000000");
    assert_eq!(ex["location"]["displayName"], "Room 1", "the master's");
    assert!(all.iter().all(|i| i["id"] != third.as_str()));
    assert_eq!(
        e.graph
            .instances(
                ALICE,
                &id,
                "2026-12-01T00:00:00Z".parse().unwrap(),
                "2027-01-31T00:00:00Z".parse().unwrap()
            )
            .len(),
        3
    );

    // The master changed: a new etag, and the series is listed by delta again.
    let (_, master) = e.get(&t, &format!("{me}/events/{id}")).await;
    assert_ne!(master["@odata.etag"], etag.as_str());
    let (s, since) = e.get(&t, &delta_link).await;
    assert_eq!(s, 200);
    let listed = since["value"].as_array().unwrap();
    assert!(
        listed.iter().any(|i| i["seriesMasterId"] == id.as_str()),
        "{since:#}"
    );

    // A new pattern drops the exceptions.
    let (s, _, _) = e
        .call(
            &t,
            "PATCH",
            &format!("{me}/events/{id}"),
            Some(json!({"recurrence": {
                "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                "range": {"type": "numbered", "numberOfOccurrences": 5, "startDate": "2026-12-07"},
            }})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, page) = e
        .get(&t, &format!("{me}/events/{id}/instances?{range}"))
        .await;
    let all = page["value"].as_array().unwrap();
    assert_eq!(all.len(), 5, "{page:#}");
    assert!(all.iter().all(|i| i["type"] == "occurrence"));
    e.assert_schema_clean();
}
