//! The admin center end to end in headless Chromium (`e2e/admin_center.mjs`, driven by
//! playwright-core): a real `serversync serve` on SQLite with the test mail servers walks the
//! seed flow — sign in, create an IMAP/SMTP profile, make it default, apply default email
//! settings, approve, test & enable: success on the status fields and the alert — and the
//! failure flow of a wrong password (the failing step on the mailbox, the alert for the profile
//! owner) — and signing in with a password. A second `serve` walks the Exchange Server flow
//! against the Exchange test double (`serversync_testkit::ews`): an Exchange Server profile
//! with Autodiscover and impersonation, test & enable succeeding over EWS (the URL
//! Autodiscover found and the server version on the mailbox), then a wrong service-account
//! password failing at the authentication step. A third walks the Exchange Online flow
//! against the Microsoft Graph double (`serversync_testkit::graph`, `[exchange] graph_url` and
//! `login_url`): the form of the app registration, test & enable succeeding, then a wrong client
//! secret failing at authentication with Entra's AADSTS7000215. Its screenshots go to `$SERVERSYNC_SCREENSHOTS` when set (that is how
//! `docs/screenshots/` is refreshed), else to a temporary directory.

use serversync_testkit::TestEnv;
use serversync_testkit::browser::run_script;
use serversync_testkit::ews::{EwsConfig, EwsDouble};
use serversync_testkit::graph::{GraphConfig, GraphDouble, csdl_path};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_serversync");

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last lines `serve` logged, to show when the browser flow fails.
type LogTail = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<String>>>;

/// Starts `serve` on a free port in `dir` (with the configuration file `config`, if any);
/// returns it, its URL, the first token and the tail of its log.
fn serve(dir: &Path, env: &TestEnv, config: Option<&Path>) -> (Serve, String, String, LogTail) {
    let mut cmd = Command::new(BIN);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd
        .arg("--data-dir")
        .arg(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("SERVERSYNC_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("SERVERSYNC_LMTP_LISTEN")
        .env("SERVERSYNC_TLS_EXTRA_CA_FILES", &env.ca_cert)
        // The test servers are on this machine.
        .env("SERVERSYNC_NETWORK_ALLOW_RANGES", "127.0.0.0/8,::1")
        .env("SERVERSYNC_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let serve = Serve(child);
    let (mut token, deadline) = (None, Instant::now() + Duration::from_secs(30));
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("serve prints its address within 30 s");
        if let Some(file) = line
            .split("its API token is in ")
            .nth(1)
            .and_then(|rest| rest.split(" (mode 0600").next())
        {
            let t = std::fs::read_to_string(file).unwrap().trim().to_owned();
            token = Some(t);
        }
        if let Some(rest) = line.split("listening on http://").nth(1) {
            let addr: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect();
            let tail = LogTail::default();
            let keep = tail.clone();
            std::thread::spawn(move || {
                while let Ok(line) = rx.recv() {
                    let mut t = keep.lock().unwrap();
                    if t.len() == 60 {
                        t.pop_front();
                    }
                    t.push_back(line);
                }
            });
            return (
                serve,
                format!("http://{addr}"),
                token.expect("the first token"),
                tail,
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow_and_a_failure_in_the_browser() {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let (_serve, url, token, log) = serve(dir.path(), env, None);
    const GOOD: &str = "carol@example.test";
    const BAD: &str = "bob@example.test";
    // Two users with mailboxes: one with the right password, one with a wrong one.
    let http = reqwest::Client::new();
    for (name, email, password) in [
        ("Carol Good", GOOD, env.password.as_str()),
        ("Bob Wrong", BAD, "not-the-password"),
    ] {
        let r = http
            .post(format!("{url}/api/v1/orgs/default/users"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"full_name": name, "email": email, "mailbox_password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    // The administrator's password, for the password sign-in at the end.
    let users: serde_json::Value = http
        .get(format!("{url}/api/v1/orgs/default/users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == "admin@localhost")
        .expect("the first administrator");
    const PASSWORD: &str = "a long admin password";
    let short = http
        .patch(format!(
            "{url}/api/v1/orgs/default/users/{}",
            admin["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "password": "short" }))
        .send()
        .await
        .unwrap();
    assert_eq!(short.status(), 422);
    let problem: serde_json::Value = short.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "password", "{problem}");
    let r = http
        .patch(format!(
            "{url}/api/v1/orgs/default/users/{}",
            admin["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .json(&serde_json::json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let shown: serde_json::Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["password"], "********", "never shown: {shown}");
    let shots = screenshots(dir.path());
    run_flow(
        "admin_center.mjs",
        &[
            ("BASE_URL", url.clone()),
            ("TOKEN", token.clone()),
            ("IMAPS_PORT", env.imaps_port().to_string()),
            ("SUBMISSION_PORT", env.submission_port().to_string()),
            ("GOOD", GOOD.into()),
            ("BAD", BAD.into()),
            ("ADMIN_EMAIL", "admin@localhost".into()),
            ("ADMIN_PASSWORD", PASSWORD.into()),
            ("SCREENSHOTS", shots.display().to_string()),
        ],
        Duration::from_secs(240),
        &log,
        "the browser flow failed",
    );
    for name in [
        "dashboard",
        "profiles",
        "mailboxes",
        "mailbox-success",
        "mailbox-failure",
        "alerts",
        "jobs",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}.png is a PNG");
    }
}

/// Runs the browser flow `script` with `vars`; on its failure, panics with `what` failed, the
/// script's error and the server's last log lines.
fn run_flow(script: &str, vars: &[(&str, String)], timeout: Duration, log: &LogTail, what: &str) {
    let out = run_script(Path::new(script), vars, timeout).unwrap();
    println!("{}", out.stdout);
    if let Err(e) = out.ensure_success() {
        let log = log.lock().unwrap();
        let log: Vec<&str> = log.iter().map(String::as_str).collect();
        panic!(
            "{what}: {e:#}\n--- the server's last log lines ---\n{}",
            log.join("\n")
        );
    }
}

/// The screenshots directory: `$SERVERSYNC_SCREENSHOTS`, else one in `dir`.
fn screenshots(dir: &Path) -> PathBuf {
    match std::env::var_os("SERVERSYNC_SCREENSHOTS") {
        Some(d) => PathBuf::from(d),
        None => dir.join("screenshots"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_server_profile_in_the_browser() {
    const SERVICE: &str = "CONTOSO\\svc-sync";
    const SERVICE_PASSWORD: &str = "Sync-Pa55word!";
    // Its domain is the double's certificate name and resolves to this machine, so
    // Autodiscover (https://localhost:<autodiscover_port>/autodiscover/…) finds the double.
    const MAILBOX: &str = "alice@localhost";
    let env = TestEnv::from_env();
    let double = EwsDouble::start(&env.tls, EwsConfig::default())
        .await
        .unwrap();
    double.add_account(SERVICE, SERVICE_PASSWORD, true);
    double.add_mailbox(MAILBOX, None);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serversync.toml");
    std::fs::write(
        &config,
        format!("[exchange]\nautodiscover_port = {}\n", double.port()),
    )
    .unwrap();
    let (_serve, url, token, log) = serve(dir.path(), env, Some(&config));
    let r = reqwest::Client::new()
        .post(format!("{url}/api/v1/orgs/default/users"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"full_name": "Alice Exchange", "email": MAILBOX}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let shots = screenshots(dir.path());
    run_flow(
        "exchange.mjs",
        &[
            ("BASE_URL", url.clone()),
            ("TOKEN", token.clone()),
            ("MAILBOX", MAILBOX.into()),
            ("SERVICE", SERVICE.into()),
            ("SERVICE_PASSWORD", SERVICE_PASSWORD.into()),
            ("EWS_URL", double.ews_url()),
            ("SCREENSHOTS", shots.display().to_string()),
        ],
        Duration::from_secs(180),
        &log,
        "the Exchange browser flow failed",
    );
    for name in ["exchange-profile", "exchange-mailbox-success"] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}.png is a PNG");
    }
    assert!(double.sent().is_empty(), "testing sends nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_online_profile_in_the_browser() {
    const TENANT: &str = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
    const APP: &str = "0a1b2c3d-1111-4222-8333-944455566677";
    const SECRET: &str = "kQ8~app-secret-value";
    const MAILBOX: &str = "alice@contoso.test";
    let env = TestEnv::from_env();
    let double = GraphDouble::start(
        &env.tls,
        GraphConfig {
            csdl: Some(csdl_path()),
            ..GraphConfig::default()
        },
    )
    .await
    .unwrap();
    double.add_tenant(TENANT, "contoso.test");
    double.add_app(TENANT, APP, SECRET, &["Mail.ReadWrite", "Mail.Send"]);
    double.add_mailbox(TENANT, MAILBOX);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serversync.toml");
    std::fs::write(
        &config,
        format!(
            "[exchange]\ngraph_url = \"{}\"\nlogin_url = \"{}\"\n",
            double.graph_url(),
            double.login_url()
        ),
    )
    .unwrap();
    let (_serve, url, token, log) = serve(dir.path(), env, Some(&config));
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value, token: &str| {
        http.post(format!("{url}/api/v1/orgs/default{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let r = post(
        "/users",
        serde_json::json!({"full_name": "Alice Online", "email": MAILBOX}),
        &token,
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // Approving a mailbox of an Exchange Online profile takes a tenant administrator: the
    // installation administrator creates one (the flag is set when a user is created) and the
    // browser signs in with a token of theirs.
    let r = post(
        "/users",
        serde_json::json!({"full_name": "Tess Tenant", "email": "tess@contoso.test",
            "roles": ["system_administrator"], "tenant_exchange_admin": true}),
        &token,
    )
    .await
    .unwrap();
    let created: serde_json::Value = r.json().await.unwrap();
    assert_eq!(created["user"]["tenant_exchange_admin"], true, "{created}");
    let r = post(
        &format!("/users/{}/tokens", created["user"]["id"].as_str().unwrap()),
        serde_json::json!({"name": "browser"}),
        &token,
    )
    .await
    .unwrap();
    let tenant_admin: serde_json::Value = r.json().await.unwrap();
    let tenant_token = tenant_admin["token"].as_str().expect("a token").to_owned();
    let shots = screenshots(dir.path());
    run_flow(
        "exchange_online.mjs",
        &[
            ("BASE_URL", url.clone()),
            ("TOKEN", tenant_token),
            ("MAILBOX", MAILBOX.into()),
            ("TENANT", TENANT.into()),
            ("APP", APP.into()),
            ("SECRET", SECRET.into()),
            ("SCREENSHOTS", shots.display().to_string()),
        ],
        Duration::from_secs(180),
        &log,
        "the Exchange Online browser flow failed",
    );
    for name in [
        "exchange-online-profile",
        "exchange-online-mailbox-success",
        "exchange-online-mailbox-failure",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}.png is a PNG");
    }
    assert!(double.sent().is_empty(), "testing sends nothing");
}
