//! The installation's network policy and TLS rules as a tenant's administrator meets them
//! through the REST API: servers and webhooks at non-public addresses refused (checked on the
//! resolved address), no server banner relayed in test reports, a self-signed server
//! certificate explained and pinned, FIPS mode's refusals.

mod common;

use common::{Instance, Trust, imap_profile};
use serde_json::{Value, json};
use serversync_connectors::NetworkPolicy;
use serversync_store::Backend;
use serversync_testkit::{Dovecot, DovecotOptions, TEST_PASSWORD, TestEnv, TlsFiles};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

const ORG: &str = "/api/v1/orgs/default";

/// A user whose mailbox (incoming only) uses `profile`, approved, then tested and enabled:
/// returns the finished job and the mailbox id.
async fn test_enable_with(s: &Instance, profile: Value, email: &str) -> (Value, String, String) {
    let p = s
        .ok("POST", &format!("{ORG}/profiles"), Some(profile))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let u = s.user("Alice", email, TEST_PASSWORD).await;
    let mid = u["mailbox"]["id"].as_str().unwrap().to_owned();
    s.ok(
        "PATCH",
        &format!("{ORG}/mailboxes/{mid}"),
        Some(json!({"profile_id": pid, "outgoing_method": "none", "act_method": "none"})),
    )
    .await;
    s.ok(
        "POST",
        &format!("{ORG}/mailboxes/approve"),
        Some(json!({"mailbox_ids": [mid]})),
    )
    .await;
    (run_test_enable(s, &mid).await, mid, pid)
}

async fn run_test_enable(s: &Instance, mid: &str) -> Value {
    let job = s
        .ok(
            "POST",
            &format!("{ORG}/mailboxes/test-enable"),
            Some(json!({"mailbox_ids": [mid]})),
        )
        .await;
    s.wait_job(job["id"].as_str().unwrap()).await
}

/// Everything the organization's administrators can read about the mailbox's test.
async fn tenant_view(s: &Instance, job: &Value, mid: &str) -> String {
    let mailbox = s.ok("GET", &format!("{ORG}/mailboxes/{mid}"), None).await;
    let alerts = s
        .ok("GET", &format!("{ORG}/alerts?mailbox_id={mid}"), None)
        .await;
    format!("{job}\n{mailbox}\n{alerts}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_and_enable_refuses_a_server_that_resolves_to_loopback_by_default() {
    let s = Instance::start_with(Backend::Sqlite, Trust::TestCa, NetworkPolicy::default()).await;
    // The test servers are on this machine: "localhost" resolves to loopback.
    let (job, mid, _) = test_enable_with(&s, imap_profile("imap"), "alice@example.test").await;
    assert_eq!(job["status"], "completed_with_failures", "{job}");
    let message = job["results"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("localhost resolves to")
            && message.contains("a loopback address")
            && message.contains("network.allow_ranges"),
        "{message}"
    );
    let m = s.ok("GET", &format!("{ORG}/mailboxes/{mid}"), None).await;
    assert_eq!(m["telemetry"]["last_error"]["step"], "tcp_connect", "{m}");
    assert_eq!(m["incoming"]["enabled"], false, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_and_enable_does_not_relay_what_another_service_announces() {
    // A service that is not a mail server, with a banner that tells about the host.
    const BANNER: &str = "SSH-2.0-OpenSSH_9.2p1 build-host-db01.internal";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let service = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // A bounded number of connections: test and enable makes one.
        for _ in 0..4 {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let _ = sock.write_all(format!("{BANNER}\r\n").as_bytes()).await;
        }
    });
    let s = Instance::start(Backend::Sqlite, Trust::TestCa).await;
    let env = TestEnv::from_env();
    let profile = json!({
        "name": "internal",
        "server_type": "imap_smtp",
        "incoming": {"location": "127.0.0.1", "port": port, "tls": "none"},
        "outgoing": {"location": "localhost", "port": env.submission_port(), "tls": "start_tls"},
    });
    let (job, mid, _) = test_enable_with(&s, profile, "alice@example.test").await;
    assert_eq!(job["status"], "completed_with_failures", "{job}");
    assert!(
        job["results"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not speak IMAP"),
        "{job}"
    );
    let seen = tenant_view(&s, &job, &mid).await;
    assert!(
        !seen.contains("OpenSSH") && !seen.contains("db01"),
        "{seen}"
    );
    service.abort();
}

/// A self-signed certificate as `openssl req -x509` makes it by default (CA:TRUE), the way a
/// self-hosted Dovecot often has one.
fn self_signed(dir: &std::path::Path) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "30"])
        .args(["-subj", "/O=Self Hosted/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"),
        "the default self-signed certificate is a CA certificate"
    );
    TlsFiles {
        ca_cert: cert.clone(),
        server_cert: cert,
        server_key: key,
    }
}

/// `openssl x509 -fingerprint -sha256`: `AB:CD:…`.
fn openssl_fingerprint(cert: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_signed_server_is_explained_shown_and_can_be_pinned() {
    let root = tempfile::Builder::new()
        .prefix("ss-selfsigned-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let tls = self_signed(&root.path().join("tls"));
    let fingerprint = openssl_fingerprint(&tls.server_cert);
    let dovecot = Dovecot::start_with(
        &root.path().join("dovecot"),
        &DovecotOptions {
            tls: Some(tls),
            ..Default::default()
        },
    )
    .unwrap();
    let env = TestEnv::from_env();
    let s = Instance::start(Backend::Sqlite, Trust::TestCa).await;
    let profile = json!({
        "name": "self-hosted",
        "server_type": "imap_smtp",
        "incoming": {"location": "127.0.0.1", "port": dovecot.info().imaps_port, "tls": "implicit"},
        "outgoing": {"location": "localhost", "port": env.submission_port(), "tls": "start_tls"},
    });
    let (job, mid, pid) = test_enable_with(&s, profile, "alice@example.test").await;

    // Refused, in words a person can act on, not rustls's debug text.
    assert_eq!(job["status"], "completed_with_failures", "{job}");
    let result = &job["results"][0];
    let message = result["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "the server's certificate for 127.0.0.1 is self-signed (O=Self Hosted, \
             CN=127.0.0.1; SHA-256 {fingerprint})"
        )) && message.contains("pin its SHA-256 fingerprint on the email server profile"),
        "{message}"
    );
    assert!(
        !message.contains("OtherError") && !message.contains("CaUsedAsEndEntity"),
        "{message}"
    );
    // The report shows the certificate.
    let seen = &result["certificates"][0];
    assert_eq!(seen["direction"], "incoming", "{result}");
    assert_eq!(seen["pinned"], false);
    let cert = &seen["certificate"];
    assert_eq!(cert["subject"], "O=Self Hosted, CN=127.0.0.1", "{cert}");
    assert_eq!(cert["issuer"], cert["subject"]);
    assert_eq!(cert["self_signed"], true);
    assert_eq!(cert["sha256"], fingerprint.as_str());
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(cert[k].as_str().unwrap())
            .unwrap()
            .to_utc()
    };
    let now = chrono::Utc::now();
    assert!(at("not_before") <= now && now < at("not_after"), "{cert}");
    assert_eq!(
        (at("not_after") - at("not_before")).num_days(),
        30,
        "{cert}"
    );

    // The administrator pins it (in any hex form); the change has its own audit entry.
    let pin = fingerprint.replace(':', "").to_lowercase();
    let p = s
        .ok(
            "PATCH",
            &format!("{ORG}/profiles/{pid}"),
            Some(json!({"pinned_certificates": [pin]})),
        )
        .await;
    assert_eq!(p["pinned_certificates"], json!([fingerprint]), "{p}");
    let audit = s.ok("GET", &format!("{ORG}/audit?limit=1000"), None).await;
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "pin_certificate")
        .unwrap_or_else(|| panic!("no pin_certificate entry in {audit}"));
    assert_eq!(entry["entity_id"], pid.as_str(), "{entry}");
    assert_eq!(entry["after"]["pinned_certificates"], json!([fingerprint]));

    // Editing the profile disabled the mailbox; tested again, it passes on the pin.
    let job = run_test_enable(&s, &mid).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let result = &job["results"][0];
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("certificate accepted by its pinned fingerprint"),
        "{result}"
    );
    assert_eq!(result["certificates"][0]["pinned"], true, "{result}");
    let m = s.ok("GET", &format!("{ORG}/mailboxes/{mid}"), None).await;
    assert_eq!(m["incoming"]["enabled"], true, "{m}");
    drop(dovecot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fips_mode_refuses_plain_text_ntlm_and_non_compliant_presets() {
    let s = Instance::start_with(
        Backend::Sqlite,
        Trust::TestCa,
        NetworkPolicy::loopback_allowed().with_fips(true),
    )
    .await;
    let mut plain = imap_profile("plain");
    plain["incoming"]["tls"] = json!("none");
    let exchange = json!({"name": "ex", "server_type": "exchange_server", "username": "svc",
        "auth_protocol": "ntlm"});
    let outlook = json!({"name": "outlook", "preset": "outlook_com"});
    for (body, field) in [
        (plain, "incoming.tls"),
        (exchange, "auth_protocol"),
        (outlook, "preset"),
    ] {
        let (status, p) = s.call("POST", &format!("{ORG}/profiles"), Some(body)).await;
        assert_eq!(status, 422, "{p}");
        let problem = p["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["code"] == "not_fips_compliant")
            .unwrap_or_else(|| panic!("not_fips_compliant expected: {p}"));
        assert_eq!(problem["field"], field, "{p}");
    }
    // What FIPS allows is accepted.
    s.ok(
        "POST",
        &format!("{ORG}/profiles"),
        Some(imap_profile("tls")),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_need_https_and_a_public_address_unless_allowed() {
    let s = Instance::start_with(Backend::Sqlite, Trust::TestCa, NetworkPolicy::default()).await;
    let secret = "whsec-0123456789abcdef";
    for (url, why) in [
        ("http://crm.example.com/hooks", "https:// only"),
        (
            "https://127.0.0.1:8443/hooks",
            "127.0.0.1 is a loopback address",
        ),
        (
            "https://169.254.169.254/latest/meta-data",
            "a link-local address",
        ),
        ("https://10.0.0.7/hooks", "a private address"),
    ] {
        let (status, p) = s
            .call(
                "POST",
                &format!("{ORG}/webhooks"),
                Some(json!({"url": url, "secret": secret})),
            )
            .await;
        assert_eq!(
            (status, p["code"].as_str(), p["field"].as_str()),
            (422, Some("url_not_allowed"), Some("url")),
            "{url}: {p}"
        );
        assert!(p["detail"].as_str().unwrap().contains(why), "{url}: {p}");
    }
    s.ok(
        "POST",
        &format!("{ORG}/webhooks"),
        Some(json!({"url": "https://crm.example.com/hooks", "secret": secret})),
    )
    .await;

    // An installation that allows them.
    let s = Instance::start(Backend::Sqlite, Trust::TestCa).await;
    s.ok(
        "POST",
        &format!("{ORG}/webhooks"),
        Some(json!({"url": "http://127.0.0.1:9/hooks", "secret": secret})),
    )
    .await;
}
