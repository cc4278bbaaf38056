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
//! secret failing at authentication with Entra's AADSTS7000215. A fourth holds 5,000 messages
//! of history and five live arrivals from a private Dovecot and two emails in the outgoing
//! queue, and walks issue 20's "Must show" (`e2e/admin_scale.mjs`). Their screenshots go to
//! `$SERVERSYNC_SCREENSHOTS` when set (that is how `docs/screenshots/` is refreshed), else to
//! a temporary directory.

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

/// Messages of history in the scale flow's mailbox, received years back.
const HISTORY: usize = 5_000;
/// Messages arriving while the mailbox is watched.
const LIVE: usize = 5;
/// Senders that are CRM contacts (name, address); the others are strangers.
const CONTACTS: [(&str, &str); 4] = [
    ("Dora Customer", "dora@customer.test"),
    ("Erik Buyer", "erik@buyer.test"),
    ("Fatima Partner", "fatima@partner.test"),
    ("Gustav Supplier", "gustav@supplier.test"),
];

/// A plain message of the corpus: `n`'s sender, subject and size vary.
fn corpus_message(
    n: usize,
    from: &str,
    subject: &str,
    date: chrono::DateTime<chrono::Utc>,
) -> String {
    let lines = (0..(n % 7) * 3)
        .map(|l| {
            format!("Line {l} of the notes for the order {n}: widgets, gadgets and sprockets.\r\n")
        })
        .collect::<String>();
    format!(
        "From: {from}\r\nTo: Carol Scale <carol@example.test>\r\nSubject: {subject}\r\n\
         Message-ID: <scale-{n}@seed.example.test>\r\nDate: {}\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHello Carol,\r\n\r\n{lines}Regards\r\n",
        date.to_rfc2822()
    )
}

/// The sender and subject of history message `n`: every third from a contact, the rest from
/// forty strangers; one subject without a place to break, as some mail has.
fn history_shape(n: usize) -> (String, String) {
    let from = if n.is_multiple_of(3) {
        let (name, email) = CONTACTS[n / 3 % CONTACTS.len()];
        format!("{name} <{email}>")
    } else {
        format!("Vendor {k} Sales <sales{k}@vendor{k}.test>", k = n % 40)
    };
    let subject = match n % 5 {
        0 => format!("Order {n} for widgets"),
        1 => format!("Re: Invoice INV-{n}"),
        2 => format!("Meeting notes, week {}", n % 52 + 1),
        3 => format!("Question about the delivery of order {}", n - 3),
        _ if n % 1000 == 4 => format!(
            "Report https://files.vendor.test/reports/{n}/quarterly-figures-final-version-2-reviewed.pdf"
        ),
        _ => format!("Fwd: Price list {n}"),
    };
    (from, subject)
}

/// Writes `HISTORY` messages into `user`'s Maildir as mail received over the last three years:
/// Dovecot takes a Maildir file's modification time as the message's INTERNALDATE and gives
/// UIDs in the order of the names, which begin with that time.
fn seed_history(dovecot: &serversync_testkit::DovecotInfo, user: &str) {
    let cur = dovecot.maildir(user).join("cur");
    std::fs::create_dir_all(&cur).unwrap();
    for sub in ["new", "tmp"] {
        std::fs::create_dir_all(dovecot.maildir(user).join(sub)).unwrap();
    }
    let now = chrono::Utc::now();
    let span = chrono::Duration::days(3 * 365) - chrono::Duration::days(2);
    for n in 0..HISTORY {
        let at = now - chrono::Duration::days(3 * 365) + span / HISTORY as i32 * n as i32;
        let (from, subject) = history_shape(n);
        let path = cur.join(format!("{}.M{n}P1.seed:2,", at.timestamp()));
        std::fs::write(&path, corpus_message(n, &from, &subject, at)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(at.into())
            .unwrap();
    }
    serversync_testkit::util::chown_recursive(
        &dovecot.mail_root,
        dovecot.mail_uid,
        dovecot.mail_gid,
    )
    .unwrap();
}

/// Polls `what` every 250 ms until it is `Some`, for at most `limit`.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// issue 20's "Must show" in the browser: `serve` holding 5,000 messages of history (years
/// back, taken in by the first synchronization of a private Dovecot) and five live arrivals;
/// an email waiting with its reason and one refused by Postfix (`e2e/admin_scale.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_messages_in_the_browser() {
    const CAROL: &str = "carol@example.test";
    const BOB: &str = "bob@example.test";
    let started = Instant::now();
    let env = TestEnv::from_env();
    let dir = tempfile::Builder::new()
        .prefix("ss-admin-scale")
        .tempdir_in("/tmp")
        .unwrap();
    let dovecot = serversync_testkit::Dovecot::start_with(
        &dir.path().join("dovecot"),
        &serversync_testkit::DovecotOptions {
            tls: Some(env.tls.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    seed_history(dovecot.info(), CAROL);
    let data = dir.path().join("serve");
    std::fs::create_dir_all(&data).unwrap();
    let (_serve, url, token, log) = serve(&data, env, None);
    let http = reqwest::Client::new();
    let api =
        |method: reqwest::Method, path: &str, token: &str, body: Option<serde_json::Value>| {
            let req = http
                .request(method, format!("{url}/api/v1/orgs/default{path}"))
                .bearer_auth(token);
            let req = match body {
                Some(b) => req.json(&b),
                None => req,
            };
            let path = path.to_owned();
            async move {
                let r = req.send().await.unwrap();
                let status = r.status();
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                assert!(status.is_success(), "{path}: {status} {v}");
                v
            }
        };
    use reqwest::Method;
    // Users' mailboxes track all email; the senders who are contacts exist before any arrives.
    api(
        Method::PATCH,
        "/email-settings",
        &token,
        Some(serde_json::json!({"default_user_tracking": "all_email"})),
    )
    .await;
    for (name, email) in CONTACTS {
        api(
            Method::POST,
            "/contacts",
            &token,
            Some(serde_json::json!({"name": name, "emails": [email]})),
        )
        .await;
    }
    let profile = api(
        Method::POST,
        "/profiles",
        &token,
        Some(serde_json::json!({
            "name": "Scale servers",
            "server_type": "imap_smtp",
            "incoming": {"location": "localhost", "port": dovecot.info().imaps_port, "tls": "implicit"},
            "outgoing": {"location": "localhost", "port": env.submission_port(), "tls": "start_tls"},
        })),
    )
    .await;
    let pid = profile["id"].as_str().unwrap();
    api(
        Method::POST,
        &format!("/profiles/{pid}/default"),
        &token,
        None,
    )
    .await;
    let mut tokens = Vec::new();
    for (name, email) in [("Carol Scale", CAROL), ("Bob Waiting", BOB)] {
        let u = api(
            Method::POST,
            "/users",
            &token,
            Some(serde_json::json!({"full_name": name, "email": email, "mailbox_password": env.password})),
        )
        .await;
        let t = api(
            Method::POST,
            &format!("/users/{}/tokens", u["user"]["id"].as_str().unwrap()),
            &token,
            Some(serde_json::json!({"name": "scale"})),
        )
        .await;
        tokens.push((
            u["mailbox"]["id"].as_str().unwrap().to_owned(),
            t["token"].as_str().unwrap().to_owned(),
        ));
    }
    let [(carol, carol_token), (bob, bob_token)] = <[_; 2]>::try_from(tokens).unwrap();
    // Carol's address approved and her mailbox tested and enabled; Bob's is left unapproved.
    api(
        Method::POST,
        "/mailboxes/approve",
        &token,
        Some(serde_json::json!({"mailbox_ids": [carol]})),
    )
    .await;
    let job = api(
        Method::POST,
        "/mailboxes/test-enable",
        &token,
        Some(serde_json::json!({"mailbox_ids": [carol]})),
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    let job = until(Duration::from_secs(60), "test & enable", || {
        let get = api(Method::GET, &format!("/jobs/{job_id}"), &token, None);
        async move {
            let j = get.await;
            (!["queued", "running"].contains(&j["status"].as_str().unwrap())).then_some(j)
        }
    })
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let processed = || {
        let get = api(Method::GET, &format!("/mailboxes/{carol}"), &token, None);
        async move {
            get.await["telemetry"]["items_processed"]
                .as_u64()
                .unwrap_or(0) as usize
        }
    };
    until(Duration::from_secs(150), "the history taken in", || {
        let n = processed();
        async move { (n.await >= HISTORY).then_some(()) }
    })
    .await;
    println!("history taken in after {:?}", started.elapsed());
    // Live arrivals: delivered into the Inbox now, after test & enable.
    for k in 1..=LIVE {
        let raw = corpus_message(
            HISTORY + k,
            "Dora Customer <dora@customer.test>",
            &format!("Live order {k}"),
            chrono::Utc::now(),
        );
        dovecot.info().deliver(CAROL, raw.as_bytes()).unwrap();
    }
    until(
        Duration::from_secs(60),
        "the live messages taken in",
        || {
            let n = processed();
            async move { (n.await >= HISTORY + LIVE).then_some(()) }
        },
    )
    .await;
    // Every message tracked as an email activity.
    until(Duration::from_secs(90), "every message tracked", || {
        let (api, carol, token) = (&api, &carol, &token);
        async move {
            let mut count = 0;
            let mut after = String::new();
            loop {
                let page = api(
                    Method::GET,
                    &format!("/activities?mailbox={carol}&limit=1000{after}"),
                    token,
                    None,
                )
                .await;
                count += page["items"].as_array().unwrap().len();
                match page["next"].as_str() {
                    Some(n) => after = format!("&after={n}"),
                    None => break,
                }
            }
            (count >= HISTORY + LIVE).then_some(())
        }
    })
    .await;
    println!(
        "history and live mail tracked after {:?}",
        started.elapsed()
    );

    // The outgoing queue: Bob's email waits for his address's approval; Carol's to an address
    // Postfix does not know is refused at RCPT.
    let waiting = api(
        Method::POST,
        "/activities",
        &bob_token,
        Some(
            serde_json::json!({"from_mailbox": bob, "to": ["dora@customer.test"],
            "subject": "Quote for 500 widgets", "text_body": "Dear Dora, …"}),
        ),
    )
    .await;
    assert_eq!(waiting["status"], "pending_send", "{waiting}");
    let refused = api(
        Method::POST,
        "/activities",
        &carol_token,
        Some(
            serde_json::json!({"from_mailbox": carol, "to": ["nobody@example.test"],
            "subject": "Welcome aboard", "text_body": "Hello."}),
        ),
    )
    .await;
    let refused_id = refused["id"].as_str().unwrap().to_owned();
    let reply = until(Duration::from_secs(60), "the refused email failed", || {
        let get = api(
            Method::GET,
            &format!("/activities/{refused_id}"),
            &token,
            None,
        );
        async move {
            let a = get.await;
            (a["status"] == "failed").then(|| a["send_error"].as_str().unwrap_or("").to_owned())
        }
    })
    .await;
    assert!(reply.contains("5.1.1"), "Postfix's reply: {reply}");

    let shots = screenshots(dir.path());
    run_flow(
        "admin_scale.mjs",
        &[
            ("BASE_URL", url.clone()),
            ("TOKEN", token.clone()),
            ("MAILBOX", CAROL.into()),
            ("HISTORY", HISTORY.to_string()),
            ("LIVE", LIVE.to_string()),
            ("CONTACT", CONTACTS[0].0.into()),
            ("LIVE_SUBJECT", "Live order ".into()),
            ("WAITING_SUBJECT", "Quote for 500 widgets".into()),
            ("WAITING_REASON", format!("{BOB} is not approved")),
            ("FAILED_SUBJECT", "Welcome aboard".into()),
            ("FAILED_REPLY", reply.clone()),
            ("LONG_SUBJECT", "quarterly-figures-final-version".into()),
            (
                "LONG_SUBJECTS",
                (0..HISTORY)
                    .filter(|n| history_shape(*n).1.contains("quarterly-figures"))
                    .count()
                    .to_string(),
            ),
            ("SCREENSHOTS", shots.display().to_string()),
        ],
        Duration::from_secs(120),
        &log,
        "the browser flow at scale failed",
    );
    for name in [
        "scale-dashboard",
        "scale-mailbox",
        "scale-activity",
        "scale-item",
        "scale-record",
        "scale-outgoing",
        "scale-activities",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}.png is a PNG");
    }
    println!("the whole flow took {:?}", started.elapsed());
}
