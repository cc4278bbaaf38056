//! `serversync admin …` against the real binary: a `serve` process on a temporary data
//! directory, the real test mail servers (Dovecot IMAPS, Postfix submission) behind the
//! profile, and the CLI driven the way an administrator would.

use serde_json::Value;
use serversync_testkit::TestEnv;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_serversync");

/// A `serversync` command with a clean environment for its settings.
fn cmd(data_dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    for v in [
        "SERVERSYNC_CONFIG",
        "SERVERSYNC_DATABASE_URL",
        "DATABASE_URL",
        "SERVERSYNC_MASTER_KEY",
        "SERVERSYNC_LISTEN",
        "SERVERSYNC_MASTER_KEY_FILE",
        "SERVERSYNC_DATA_DIR",
        "SERVERSYNC_URL",
        "SERVERSYNC_TOKEN",
        "SERVERSYNC_TOKEN_FILE",
        "SERVERSYNC_ORG",
        "SERVERSYNC_LOG",
        "SERVERSYNC_LOG_FORMAT",
        "SERVERSYNC_TLS_EXTRA_CA_FILES",
    ] {
        c.env_remove(v);
    }
    c.arg("--data-dir").arg(data_dir).current_dir(data_dir);
    c
}

struct Server {
    child: Child,
    url: String,
    /// The first administrator's token, from the log of the first start.
    token: Option<String>,
    dir: PathBuf,
    /// The server's latest log lines, shown when the test fails.
    log: Arc<Mutex<VecDeque<String>>>,
}

/// Log lines of the server kept for a failing test's report.
const LOG_KEPT: usize = 300;

impl Server {
    /// Starts `serve` on a free port, trusting the test CA, and waits (bounded) for its
    /// "listening" line.
    fn start(dir: &Path, env: &TestEnv) -> Server {
        let mut child = cmd(dir)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("SERVERSYNC_TLS_EXTRA_CA_FILES", &env.ca_cert)
            // The test servers and the webhook receivers are on this machine.
            .env("SERVERSYNC_NETWORK_ALLOW_RANGES", "127.0.0.0/8,::1")
            .env("SERVERSYNC_WEBHOOKS_ALLOW_HTTP", "true")
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
        let log: Arc<Mutex<VecDeque<String>>> = Default::default();
        let mut server = Server {
            child,
            url: String::new(),
            token: None,
            dir: dir.to_owned(),
            log: log.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
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
                server.token = Some(t);
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                server.url = format!("http://{addr}");
                // Keep draining the log so the server never blocks on a full pipe; the
                // latest lines are kept for the report of a failing test.
                std::thread::spawn(move || {
                    while let Ok(line) = rx.recv() {
                        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                        if log.len() == LOG_KEPT {
                            log.pop_front();
                        }
                        log.push_back(line);
                    }
                });
                return server;
            }
        }
    }

    /// `serversync admin <args>` against this server with `token`.
    fn admin_with(&self, token: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = cmd(&self.dir);
        c.arg("admin")
            .arg("--url")
            .arg(&self.url)
            .args(args)
            .env("SERVERSYNC_TOKEN", token);
        run(c, stdin)
    }

    fn admin(&self, args: &[&str]) -> Output {
        self.admin_with(self.token.as_deref().unwrap(), args, None)
    }

    fn admin_stdin(&self, args: &[&str], stdin: &str) -> Output {
        self.admin_with(self.token.as_deref().unwrap(), args, Some(stdin))
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "clean exit on SIGTERM: {st:?}");
                return;
            }
            assert!(Instant::now() < deadline, "serve did not stop within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    /// A failed test never leaves a server behind, and shows what the server logged last.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("--- the server's last {} log lines ---", log.len());
            for line in log.iter() {
                eprintln!("{line}");
            }
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run(mut c: Command, stdin: Option<&str>) -> Output {
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts success and returns standard output.
#[track_caller]
fn ok(out: Output) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "expected success, got {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

#[track_caller]
fn ok_json(out: Output) -> Value {
    let s = ok(out);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Asserts exit status 1 with exactly one error line and no panic; returns (error line, stdout).
#[track_caller]
fn fails(out: Output) -> (String, String) {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit status 1\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "no panic: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("serversync: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    (lines[0].to_owned(), stdout)
}

/// The first token of the line of `table` that contains `needle` (the id column).
#[track_caller]
fn id_in_row(table: &str, needle: &str) -> String {
    table
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in:\n{table}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
const CAROL: &str = "carol@example.test";
const SUPPORT: &str = "support@example.test";

#[test]
fn admin_cli_configures_approves_and_tests_mailboxes_on_the_real_servers() {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    let token = server
        .token
        .clone()
        .expect("first start logs the API token");
    assert!(token.starts_with("ss_"), "{token}");
    let pw_file = dir.path().join("bob.pw");
    std::fs::write(&pw_file, format!("{}\n", env.password)).unwrap();
    let pw_file = pw_file.to_str().unwrap();

    // Users (and with them their mailboxes), a queue.
    let out = ok(server.admin_stdin(
        &[
            "users",
            "create",
            "--name",
            "Alice Test",
            "--email",
            ALICE,
            "--mailbox-password-stdin",
        ],
        &env.password,
    ));
    assert!(
        out.contains("created user Alice Test <alice@example.test>"),
        "{out}"
    );
    assert!(out.contains("password set"), "{out}");
    ok(server.admin(&[
        "users",
        "create",
        "--name",
        "Bob Test",
        "--email",
        BOB,
        "--role",
        "mailbox_approver",
        "--mailbox-password-file",
        pw_file,
    ]));
    ok(server.admin_stdin(
        &[
            "users",
            "create",
            "--name",
            "Carol Test",
            "--email",
            CAROL,
            "--mailbox-password-stdin",
        ],
        "not-the-password\n",
    ));
    let out = ok(server.admin(&[
        "queues",
        "create",
        "--name",
        "Support",
        "--email",
        SUPPORT,
        "--owner",
        BOB,
        "--mailbox-password-file",
        pw_file,
    ]));
    assert!(
        out.contains("created queue Support <support@example.test>"),
        "{out}"
    );
    let users = ok(server.admin(&["users", "list"]));
    assert!(users.contains("EMAIL") && users.contains(ALICE), "{users}");
    assert!(
        users.contains("Mailbox Approver"),
        "role names, not ids: {users}"
    );
    let roles = ok(server.admin(&["roles", "list"]));
    assert!(roles.contains("System Administrator"), "{roles}");
    let queues = ok(server.admin(&["queues", "list"]));
    assert!(queues.contains(SUPPORT), "{queues}");

    // Mailboxes: a table for people, JSON for scripts.
    let table = ok(server.admin(&["mailboxes", "list"]));
    let header = table.lines().next().unwrap();
    for col in [
        "ID", "EMAIL", "PROFILE", "APPROVAL", "INCOMING", "OUTGOING", "ENABLED",
    ] {
        assert!(header.contains(col), "{table}");
    }
    for who in [ALICE, BOB, CAROL, SUPPORT] {
        assert!(table.contains(who), "{table}");
    }
    let list = ok_json(server.admin(&["mailboxes", "list", "--json"]));
    let items = list.as_array().expect("a JSON array");
    assert_eq!(items.len(), 4, "{list}");
    let alice = items.iter().find(|m| m["email"] == ALICE).unwrap();
    assert_eq!(alice["password"], "********", "write-only: {alice}");
    assert!(
        alice["profile_id"].is_null(),
        "no default profile yet: {alice}"
    );
    assert_eq!(id_in_row(&table, ALICE), alice["id"].as_str().unwrap());

    // An IMAP/SMTP profile on the real servers, made the default.
    let imaps = env.imaps_port().to_string();
    let submission = env.submission_port().to_string();
    let out = ok(server.admin(&[
        "profiles",
        "create",
        "--name",
        "Test servers",
        "--type",
        "imap_smtp",
        "--incoming-host",
        "localhost",
        "--incoming-port",
        &imaps,
        "--incoming-tls",
        "implicit",
        "--outgoing-host",
        "localhost",
        "--outgoing-port",
        &submission,
        "--outgoing-tls",
        "starttls",
        "--auth",
        "credentials_specified_by_user_or_queue",
        "--default",
        "--set",
        "advanced.connection_timeout_ms=20000",
    ]));
    assert!(
        out.contains("created email server profile Test servers"),
        "{out}"
    );
    assert!(out.contains("(the organization's default)"), "{out}");
    let profiles = ok(server.admin(&["profiles", "list"]));
    assert!(profiles.contains("Test servers"), "{profiles}");
    assert!(
        profiles.contains(&format!("imap localhost:{imaps} implicit")),
        "{profiles}"
    );
    let profile_id = id_in_row(&profiles, "Test servers");
    let show = ok(server.admin(&["profiles", "show", "Test servers"]));
    assert!(show.contains("incoming.port:"), "{show}");
    assert!(show.contains("advanced.connection_timeout_ms:"), "{show}");
    assert!(show.contains(&profile_id), "{show}");
    let out = ok(server.admin(&[
        "profiles",
        "edit",
        &profile_id,
        "--set",
        "description=Dovecot and Postfix of the tests",
    ]));
    assert!(
        out.contains("updated email server profile Test servers (version"),
        "{out}"
    );
    let p = ok_json(server.admin(&["profiles", "show", &profile_id, "--json"]));
    assert_eq!(p["description"], "Dovecot and Postfix of the tests");
    assert_eq!(p["is_default"], true);
    let settings = ok(server.admin(&["settings", "show"]));
    assert!(
        settings.contains("default_profile_id:") && settings.contains(&profile_id),
        "{settings}"
    );
    let out = ok(server.admin(&[
        "settings",
        "set",
        "require_approved_queues=true",
        "max_subject_length=200",
    ]));
    assert!(out.contains("updated the email settings"), "{out}");
    let s = ok_json(server.admin(&["settings", "show", "--json"]));
    assert_eq!(s["max_subject_length"], 200);

    // Apply the defaults (without testing), approve, then test and enable, waiting.
    let out = ok(server.admin(&[
        "mailboxes",
        "apply-defaults",
        ALICE,
        BOB,
        CAROL,
        SUPPORT,
        "--no-test",
    ]));
    assert!(
        out.contains("applied the default email settings to 4 mailboxes"),
        "{out}"
    );
    let pending =
        ok_json(server.admin(&["mailboxes", "list", "--profile", "Test servers", "--json"]));
    assert_eq!(pending.as_array().unwrap().len(), 4, "{pending}");
    let out = ok(server.admin(&["mailboxes", "approve", ALICE, BOB, SUPPORT]));
    assert!(out.contains("approved 3 mailboxes"), "{out}");
    let approved =
        ok_json(server.admin(&["mailboxes", "list", "--approval", "approved", "--json"]));
    assert_eq!(approved.as_array().unwrap().len(), 3, "{approved}");

    let out = server.admin(&[
        "mailboxes",
        "test-enable",
        ALICE,
        BOB,
        SUPPORT,
        "--wait",
        "--timeout",
        "120",
    ]);
    let progress = text(&out.stderr);
    let results = ok(out);
    assert!(progress.contains("of 3 mailboxes done"), "{progress}");
    assert!(
        results.contains("succeeded, 3 of 3 mailboxes done, 0 failed"),
        "{results}"
    );
    for who in [ALICE, BOB, SUPPORT] {
        let row = results
            .lines()
            .find(|l| l.starts_with(who))
            .unwrap_or_else(|| panic!("{results}"));
        assert!(
            row.contains(" ok ") && row.contains("Test and enable succeeded"),
            "{row}"
        );
    }
    let good = ok_json(server.admin(&["mailboxes", "list", "--status", "success", "--json"]));
    assert_eq!(good.as_array().unwrap().len(), 3, "{good}");
    let table = ok(server.admin(&["mailboxes", "list"]));
    let row = table.lines().find(|l| l.contains(ALICE)).unwrap();
    assert!(
        row.contains("Test servers")
            && row.contains("approved")
            && row.contains("success")
            && row.trim_end().ends_with("yes"),
        "{table}"
    );
    let m = ok(server.admin(&["mailboxes", "show", ALICE]));
    assert!(
        m.contains("overall_status:") && m.contains("incoming.enabled:"),
        "{m}"
    );

    // A wrong password: the job completes with failures, naming the authentication step.
    ok(server.admin(&["mailboxes", "approve", CAROL]));
    let (err, results) = fails(server.admin(&["mailboxes", "test-enable", CAROL, "--wait"]));
    assert!(
        err.contains("completed with failures: 1 of 1 mailboxes failed"),
        "{err}"
    );
    let row = results
        .lines()
        .find(|l| l.starts_with(CAROL))
        .unwrap_or_else(|| panic!("{results}"));
    assert!(
        row.contains("FAILED") && row.contains("authentication"),
        "{row}"
    );
    assert!(!results.contains("not-the-password"), "{results}");
    let alerts = ok(server.admin(&["alerts", "list", "--mailbox", CAROL]));
    assert!(alerts.contains("authentication_failed"), "{alerts}");
    let alert_id = id_in_row(&alerts, "authentication_failed");
    let out = ok(server.admin(&["alerts", "dismiss", &alert_id]));
    assert!(out.contains("dismissed alert"), "{out}");
    let alerts = ok_json(server.admin(&["alerts", "list", "--mailbox", CAROL, "--json"]));
    assert!(
        alerts
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["code"] != "authentication_failed"),
        "{alerts}"
    );
    let all = ok(server.admin(&["alerts", "list", "--mailbox", CAROL, "--all"]));
    assert!(
        all.contains("DISMISSED") && all.contains(&alert_id),
        "{all}"
    );

    // Fix the password from standard input; the mailbox then passes.
    let out = ok(server.admin_stdin(
        &["mailboxes", "edit", CAROL, "--password-stdin"],
        &format!("{}\n", env.password),
    ));
    assert!(out.contains("updated mailbox carol@example.test"), "{out}");
    let job = ok_json(server.admin(&["mailboxes", "test-enable", CAROL, "--wait", "--json"]));
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["results"][0]["ok"], true, "{job}");
    let job_id = job["id"].as_str().unwrap();

    // Jobs and the audit log.
    let jobs = ok(server.admin(&["jobs", "list"]));
    assert!(
        jobs.contains("test_and_enable")
            && jobs.contains("completed_with_failures")
            && jobs.contains(job_id),
        "{jobs}"
    );
    let shown = ok(server.admin(&["jobs", "show", job_id]));
    assert!(
        shown.contains("succeeded") && shown.contains(CAROL),
        "{shown}"
    );
    let waited = ok(server.admin(&["jobs", "show", job_id, "--wait"]));
    assert!(waited.contains("succeeded"), "{waited}");
    let queued = ok_json(server.admin(&["profiles", "test-enable", "Test servers", "--json"]));
    assert_eq!(queued["total"], 4, "{queued}");
    let audit = ok(server.admin(&["audit", "--limit", "1000"]));
    assert!(
        audit.contains("SEQ") && audit.contains("approve") && audit.contains("admin@localhost"),
        "{audit}"
    );
    let entries = ok_json(server.admin(&["audit", "--after", "3", "--limit", "5", "--json"]));
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 5);
    assert!(entries[0]["seq"].as_i64().unwrap() > 3);

    // Organizations (the first administrator administers the installation).
    let out = ok(server.admin(&["orgs", "create", "acme", "Acme Inc."]));
    assert!(
        out.contains("created organization acme (Acme Inc.)"),
        "{out}"
    );
    let orgs = ok(server.admin(&["orgs", "list"]));
    assert!(orgs.contains("acme") && orgs.contains("default"), "{orgs}");
    let none = ok(server.admin(&["--org", "acme", "mailboxes", "list"]));
    assert_eq!(none.trim(), "no mailboxes");

    // Mistakes give one clear line and exit status 1.
    let (err, _) =
        fails(server.admin(&["profiles", "edit", &profile_id, "--set", "incoming.port"]));
    assert!(
        err.contains("--set \"incoming.port\" is not KEY=VALUE"),
        "{err}"
    );
    let (err, _) =
        fails(server.admin(&["profiles", "edit", &profile_id, "--set", "password=hunter2"]));
    assert!(
        err.contains("--password-stdin") && !err.contains("hunter2"),
        "{err}"
    );
    let (err, _) = fails(server.admin(&[
        "profiles",
        "edit",
        &profile_id,
        "--set",
        "incoming.port=many",
    ]));
    assert!(
        err.contains("field incoming.port") && err.contains("code invalid_type"),
        "{err}"
    );
    let (err, _) = fails(server.admin(&[
        "profiles",
        "edit",
        &profile_id,
        "--set",
        "version=1",
        "--set",
        "description=x",
    ]));
    assert!(err.contains("code version_conflict"), "{err}");
    let (err, _) =
        fails(server.admin(&["profiles", "edit", &profile_id, "--set", "descripton=typo"]));
    assert!(
        err.contains("no field \"descripton\" in the email server profile"),
        "{err}"
    );
    let (err, _) = fails(server.admin(&["settings", "set", "retry.max_attempt=3"]));
    assert!(err.contains("no field \"retry.max_attempt\""), "{err}");
    let (err, _) = fails(server.admin(&["profiles", "delete", "Test servers"]));
    assert!(err.contains("code conflict"), "{err}");
    let (err, _) =
        fails(server.admin(&["profiles", "show", "0190a0a0-0000-7000-8000-000000000000"]));
    assert!(err.contains("not found (code not_found)"), "{err}");
    let (err, _) = fails(server.admin(&["mailboxes", "show", "nobody@example.test"]));
    assert!(
        err.contains("no mailbox with email address \"nobody@example.test\""),
        "{err}"
    );
    let (err, _) = fails(server.admin(&[
        "users",
        "create",
        "--name",
        "X",
        "--email",
        "not-an-address",
    ]));
    assert!(
        err.contains("code invalid_email") && err.contains("field email"),
        "{err}"
    );
    let (err, _) =
        fails(server.admin_with(&token, &["mailboxes", "list", "--token", "ss_a b"], None));
    assert!(
        err.contains("the API token from --token has spaces") && !err.contains("ss_a"),
        "{err}"
    );
    let (err, _) = fails(server.admin_with("ss_wrong", &["mailboxes", "list"], None));
    assert!(err.contains("code unauthenticated"), "{err}");
    let mut c = cmd(dir.path());
    c.args(["admin", "profiles", "list", "--url", "http://127.0.0.1:9"])
        .env("SERVERSYNC_TOKEN", &token);
    let (err, _) = fails(run(c, None));
    assert!(
        err.contains("cannot reach serversync at http://127.0.0.1:9")
            && err.contains("SERVERSYNC_URL"),
        "{err}"
    );
    let mut c = cmd(dir.path());
    c.args(["admin", "profiles", "list", "--url", &server.url]);
    let (err, _) = fails(run(c, None));
    assert!(
        err.contains("no API token") && err.contains("token create"),
        "{err}"
    );
    drop(server);
}

#[test]
fn admin_token_create_makes_a_working_token_from_the_database() {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    let first = server.token.clone().unwrap();
    ok(server.admin(&["users", "create", "--name", "Alice Test", "--email", ALICE]));
    server.stop();

    let mut c = cmd(dir.path());
    c.args([
        "admin",
        "token",
        "create",
        "--user",
        "ADMIN@localhost",
        "--name",
        "ci",
    ]);
    let out = run(c, None);
    let hint = text(&out.stderr);
    let stdout = ok(out);
    let token = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the token on stdout: {stdout}"
    );
    assert!(token.starts_with("ss_") && token != first, "{token}");
    assert!(
        hint.contains("shown only now")
            && hint.contains("admin@localhost")
            && !hint.contains(token),
        "{hint}"
    );

    // A token for another user of the organization, and the mistakes.
    let mut c = cmd(dir.path());
    c.args(["admin", "token", "create", "--user", ALICE]);
    let alice_token = ok(run(c, None)).trim().to_owned();
    let mut c = cmd(dir.path());
    c.args([
        "admin",
        "--json",
        "token",
        "create",
        "--user",
        "admin@localhost",
    ]);
    let doc = ok_json(run(c, None));
    assert!(doc["token"].as_str().unwrap().starts_with("ss_"), "{doc}");
    assert_eq!(doc["email"], "admin@localhost");
    assert_eq!(doc["org"], "default");
    assert_eq!(doc["name"], "cli");
    let mut c = cmd(dir.path());
    c.args(["admin", "token", "create", "--user", "nobody@example.test"]);
    let (err, _) = fails(run(c, None));
    assert!(
        err.contains("no user with email address \"nobody@example.test\""),
        "{err}"
    );
    let mut c = cmd(dir.path());
    c.args(["admin", "--org", "nope", "token", "create", "--user", ALICE]);
    let (err, _) = fails(run(c, None));
    assert!(err.contains("no organization \"nope\""), "{err}");

    // Both work against the restarted server; the token file works too.
    let server = Server::start(dir.path(), env);
    assert!(
        server.token.is_none(),
        "no new bootstrap token on a second start"
    );
    let out = ok(server.admin_with(token, &["profiles", "list"], None));
    assert_eq!(out.trim(), "no email server profiles");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let mut c = cmd(dir.path());
    c.args([
        "admin",
        "mailboxes",
        "list",
        "--json",
        "--url",
        &server.url,
        "--token-file",
    ])
    .arg(&file);
    let list = ok_json(run(c, None));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    // Alice is a basic user: her token works, for what she may do.
    let me = ok_json(server.admin_with(&alice_token, &["mailboxes", "list", "--json"], None));
    assert_eq!(me[0]["email"], ALICE, "{me}");
    let (err, _) = fails(server.admin_with(
        &alice_token,
        &["profiles", "create", "--name", "x", "--type", "imap_smtp"],
        None,
    ));
    assert!(
        err.contains("(code missing_privilege") || err.contains("privilege"),
        "{err}"
    );
    // The first token still works.
    ok(server.admin_with(&first, &["users", "list"], None));

    // Tokens are listed and revoked through the API (never shown again); disabling a user
    // revokes all of its tokens.
    let root = |args: &[&str]| server.admin_with(&first, args, None);
    let list = ok_json(root(&["--json", "token", "list", "--user", ALICE]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(
        list[0].get("token_hash").is_none() && !list.to_string().contains(&alice_token),
        "{list}"
    );
    let table = ok(root(&["token", "list"]));
    assert!(
        table.contains("bootstrap") && table.contains(ALICE) && table.contains(" ci "),
        "{table}"
    );
    let alice_token_id = list[0]["id"].as_str().unwrap().to_owned();
    let out = ok(root(&["token", "revoke", &alice_token_id]));
    assert!(
        out.contains(&format!("revoked token {alice_token_id}")),
        "{out}"
    );
    let (err, _) = fails(server.admin_with(&alice_token, &["mailboxes", "list"], None));
    assert!(err.contains("unauthenticated"), "{err}");
    let mut c = cmd(dir.path());
    c.args([
        "admin",
        "--json",
        "token",
        "create",
        "--user",
        ALICE,
        "--expires-in-days",
        "2",
    ]);
    let again = ok_json(run(c, None))["token"].as_str().unwrap().to_owned();
    ok(server.admin_with(&again, &["mailboxes", "list"], None));
    let out = ok(root(&["users", "disable", ALICE]));
    assert!(
        out.contains(&format!(
            "disabled {ALICE}: its API tokens and sessions are revoked"
        )),
        "{out}"
    );
    let (err, _) = fails(server.admin_with(&again, &["mailboxes", "list"], None));
    assert!(err.contains("unauthenticated"), "{err}");
    let all = ok_json(root(&["--json", "token", "list", "--user", ALICE, "--all"]));
    let all = all.as_array().unwrap();
    assert!(
        all.len() == 2 && all.iter().all(|t| t["revoked"] == true),
        "{all:?}"
    );
    let expires: chrono::DateTime<chrono::Utc> =
        all[1]["expires_at"].as_str().unwrap().parse().unwrap();
    let days = (expires - chrono::Utc::now()).num_hours();
    assert!((47..=48).contains(&days), "--expires-in-days 2: {days} h");
    ok(root(&["users", "enable", ALICE]));
    let (err, _) = fails(server.admin_with(&again, &["mailboxes", "list"], None));
    assert!(
        err.contains("unauthenticated"),
        "revoked stays revoked: {err}"
    );
    server.stop();
}

#[test]
fn every_admin_subcommand_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["token"],
        &["token", "create"],
        &["orgs"],
        &["orgs", "list"],
        &["orgs", "create"],
        &["users"],
        &["users", "list"],
        &["users", "show"],
        &["users", "create"],
        &["queues"],
        &["queues", "list"],
        &["queues", "create"],
        &["roles"],
        &["roles", "list"],
        &["profiles"],
        &["profiles", "list"],
        &["profiles", "show"],
        &["profiles", "create"],
        &["profiles", "edit"],
        &["profiles", "delete"],
        &["profiles", "default"],
        &["profiles", "test-enable"],
        &["settings"],
        &["settings", "show"],
        &["settings", "set"],
        &["mailboxes"],
        &["mailboxes", "list"],
        &["mailboxes", "show"],
        &["mailboxes", "edit"],
        &["mailboxes", "apply-defaults"],
        &["mailboxes", "approve"],
        &["mailboxes", "reject"],
        &["mailboxes", "test-enable"],
        &["mailboxes", "sync-now"],
        &["mailboxes", "items"],
        &["alerts"],
        &["alerts", "list"],
        &["alerts", "dismiss"],
        &["jobs"],
        &["jobs", "list"],
        &["jobs", "show"],
        &["audit"],
        &["contacts"],
        &["contacts", "get"],
        &["contacts", "create"],
        &["contacts", "update"],
        &["contacts", "delete"],
        &["appointments"],
        &["appointments", "list"],
        &["appointments", "get"],
        &["appointments", "create"],
        &["appointments", "update"],
        &["appointments", "delete"],
        &["tasks"],
        &["tasks", "list"],
        &["tasks", "create"],
        &["tasks", "update"],
        &["tasks", "delete"],
    ];
    for args in commands {
        let mut c = cmd(dir.path());
        c.arg("admin")
            .args(*args)
            .arg("--help")
            .env("SERVERSYNC_TOKEN", "ss_do_not_show_me");
        let out = ok(run(c, None));
        let usage = format!("Usage: serversync admin {}", args.join(" "));
        assert!(out.contains(usage.trim_end()), "{args:?}: {out}");
        assert!(
            !out.contains("ss_do_not_show_me"),
            "the token is never shown: {out}"
        );
        // The first line describes the command.
        assert!(
            out.lines().next().is_some_and(|l| l.len() > 10),
            "{args:?}: {out}"
        );
    }
    let mut c = cmd(dir.path());
    c.args(["admin", "--help"]);
    let out = ok(run(c, None));
    for s in [
        "SERVERSYNC_URL",
        "SERVERSYNC_TOKEN",
        "SERVERSYNC_ORG",
        "--json",
        "Examples:",
    ] {
        assert!(out.contains(s), "{s}: {out}");
    }
    for args in [
        &["mailboxes", "test-enable", "--help"][..],
        &["jobs", "show", "--help"],
    ] {
        let mut c = cmd(dir.path());
        c.arg("admin").args(args);
        let out = ok(run(c, None));
        assert!(out.contains("--wait") && out.contains("--timeout"), "{out}");
    }
    let mut c = cmd(dir.path());
    c.args(["admin", "mailboxes", "edit", "--help"]);
    let out = ok(run(c, None));
    assert!(
        out.contains("--password-stdin") && out.contains("--set <KEY=VALUE>"),
        "{out}"
    );
}

/// `serversync deliver --mailbox ADDRESS < message` against the server's data directory.
fn deliver(server: &Server, address: &str, message: &str) -> String {
    let mut c = cmd(&server.dir);
    c.args(["deliver", "--mailbox", address]);
    ok(run(c, Some(message)))
}

fn message(n: u32, subject: &str) -> String {
    format!(
        "Message-ID: <items-{n}@example.test>\r\nFrom: Ann Sender <ann@example.test>\r\nTo: rita@example.test\r\nSubject: {subject}\r\nDate: Mon, 2 Nov 2026 09:00:0{n} +0000\r\n\r\nbody {n}\r\n"
    )
}

#[test]
fn admin_cli_lists_mailbox_items_and_asks_for_a_sync_now() {
    const RITA: &str = "rita@example.test";
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);

    // An Email Router mailbox with one message taken in before approval (skipped) and two
    // after (stored).
    ok(server.admin(&["domains", "assign", "example.test"]));
    ok(server.admin(&["users", "create", "--name", "Router Rita", "--email", RITA]));
    ok(server.admin(&[
        "mailboxes",
        "edit",
        RITA,
        "--set",
        "incoming_method=email_router",
    ]));
    let out = deliver(&server, RITA, &message(1, "before approval"));
    assert!(out.starts_with("Skipped"), "{out}");
    ok(server.admin(&["mailboxes", "approve", RITA]));
    let long = "A very long subject that goes on and on well past the width of the table column";
    assert!(deliver(&server, RITA, &message(2, long)).starts_with("Stored"));
    assert!(deliver(&server, RITA, &message(3, "third")).starts_with("Stored"));

    let table = ok(server.admin(&["mailboxes", "items", RITA]));
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "a header and three items, oldest first:\n{table}"
    );
    for col in ["RECEIVED", "DECISION", "SUBJECT", "FROM", "REASON"] {
        assert!(lines[0].contains(col), "{table}");
    }
    assert!(
        lines[1].contains("skipped")
            && lines[1].contains("before approval")
            && lines[1].contains("ann@example.test")
            && lines[1].contains("skipped: the email address rita@example.test is not approved"),
        "the last reason of the decision trace: {table}"
    );
    assert!(
        lines[2].contains("stored") && lines[2].contains("A very long subject that goes on"),
        "{table}"
    );
    assert!(
        !lines[2].contains(long) && lines[2].contains('…'),
        "truncated: {table}"
    );
    assert!(lines[3].contains("third"), "{table}");

    // Filtered by decision; JSON is the API's page.
    let page =
        ok_json(server.admin(&["mailboxes", "items", RITA, "--decision", "stored", "--json"]));
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert!(items.iter().all(|i| i["decision"] == "stored"), "{page}");
    assert!(page["next"].is_null(), "{page}");
    let skipped = ok(server.admin(&["mailboxes", "items", RITA, "--decision", "skipped"]));
    assert_eq!(skipped.lines().count(), 2, "{skipped}");
    let none = ok(server.admin(&["mailboxes", "items", RITA, "--decision", "failed"]));
    assert_eq!(none.trim(), "no items");

    // Paging: one page and how to get the next, or every page with --all; `mailbox` works too.
    let out = server.admin(&["mailbox", "items", RITA, "--limit", "2"]);
    let hint = text(&out.stderr);
    let first = ok(out);
    assert_eq!(first.lines().count(), 3, "{first}");
    let after = hint
        .split("--after ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("a hint with the cursor: {hint}"));
    let rest = ok(server.admin(&["mailboxes", "items", RITA, "--limit", "2", "--after", after]));
    assert_eq!(rest.lines().count(), 2, "{rest}");
    assert!(rest.contains("third"), "{rest}");
    let all = ok(server.admin(&["mailbox", "items", RITA, "--limit", "1", "--all"]));
    assert_eq!(all.lines().count(), 4, "{all}");
    let all = ok_json(server.admin(&[
        "mailboxes",
        "items",
        RITA,
        "--limit",
        "1",
        "--all",
        "--json",
    ]));
    assert_eq!(all["items"].as_array().unwrap().len(), 3, "{all}");

    // Sync now: refused for a mailbox that does not synchronize or is not enabled yet.
    let (err, _) = fails(server.admin(&["mailboxes", "sync-now", RITA]));
    assert!(err.contains("code not_server_side_sync"), "{err}");
    let imaps = env.imaps_port().to_string();
    let submission = env.submission_port().to_string();
    ok(server.admin(&[
        "profiles",
        "create",
        "--name",
        "Test servers",
        "--type",
        "imap_smtp",
        "--incoming-host",
        "localhost",
        "--incoming-port",
        &imaps,
        "--outgoing-host",
        "localhost",
        "--outgoing-port",
        &submission,
        "--default",
    ]));
    ok(server.admin_stdin(
        &[
            "users",
            "create",
            "--name",
            "Alice Test",
            "--email",
            ALICE,
            "--mailbox-password-stdin",
        ],
        &env.password,
    ));
    let (err, _) = fails(server.admin(&["mailboxes", "sync-now", ALICE]));
    assert!(
        err.contains("code mailbox_not_enabled") && err.contains("test and enable"),
        "{err}"
    );
    ok(server.admin(&["mailboxes", "approve", ALICE]));
    ok(server.admin(&[
        "mailboxes",
        "test-enable",
        ALICE,
        "--wait",
        "--timeout",
        "60",
    ]));
    let out = ok(server.admin(&["mailboxes", "sync-now", ALICE]));
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.contains("requested a synchronization of mailbox alice@example.test now"),
        "{out}"
    );
    let m = ok_json(server.admin(&["mailboxes", "sync-now", ALICE, "--json"]));
    assert!(m["telemetry"]["sync_requested_at"].is_string(), "{m}");
    assert!(m["telemetry"]["postponed_until"].is_null(), "{m}");
    let audit = ok(server.admin(&["audit", "--limit", "1000"]));
    assert!(audit.contains("sync_now"), "{audit}");
    server.stop();
}

#[test]
fn admin_cli_reads_activities_attachments_and_the_change_feed() {
    const TOM: &str = "tom@example.test";
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    ok(server.admin(&["domains", "assign", "example.test"]));
    ok(server.admin(&["users", "create", "--name", "Tracker Tom", "--email", TOM]));
    ok(server.admin(&[
        "mailboxes",
        "edit",
        TOM,
        "--set",
        "incoming_method=email_router",
        "--set",
        "tracking=all_email",
    ]));
    ok(server.admin(&["mailboxes", "approve", TOM]));
    let mailbox = ok_json(server.admin(&["mailboxes", "show", TOM, "--json"]));
    let mailbox_id = mailbox["id"].as_str().unwrap().to_owned();

    // A webhook endpoint nobody listens on: it gets the changes from now on, and fails.
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "a-signing-secret-of-some-length\n").unwrap();
    let hook = ok_json(server.admin(&[
        "webhooks",
        "create",
        "http://127.0.0.1:9/hook",
        "--secret-file",
        secret.to_str().unwrap(),
        "--description",
        "CRM mirror",
        "--json",
    ]));
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    assert_eq!(hook["status"]["state"], "active", "{hook}");
    let listed = ok(server.admin(&["webhooks", "list"]));
    assert!(
        listed.contains(&hook_id) && listed.contains("active"),
        "{listed}"
    );
    assert!(!listed.contains("a-signing-secret"), "{listed}");

    // A message with an attachment, handed in by the Email Router; serve's tracker turns it
    // into an activity.
    let message = format!(
        "Message-ID: <cli-activity@customer.test>\r\nFrom: Ann Customer <ann@customer.test>\r\nTo: {TOM}\r\nSubject: Order 42\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nPlease find the order.\r\n--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename=\"order.csv\"\r\n\r\nitem,qty\r\nwidget,42\r\n--b--\r\n"
    );
    assert!(deliver(&server, TOM, &message).starts_with("Stored"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let activity = loop {
        let page = ok_json(server.admin(&["activities", "list", "--json"]));
        if let Some(a) = page["items"].as_array().and_then(|i| i.first()) {
            break a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the tracker made no activity within 30 s: {page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let id = activity["id"].as_str().unwrap().to_owned();
    assert_eq!(activity["subject"], "Order 42");

    // The table, filtered by mailbox and time.
    let table = ok(server.admin(&["activities", "list", "--mailbox", &mailbox_id]));
    assert!(
        table.contains("Order 42") && table.contains("ann@customer.test"),
        "{table}"
    );
    let later = ok(server.admin(&["activities", "list", "--since", "2100-01-01T00:00:00Z"]));
    assert!(!later.contains("Order 42"), "{later}");

    // The whole activity: parties and the attachment, whose bytes download as they were sent.
    let shown = ok(server.admin(&["activities", "show", &id]));
    for want in ["Order 42", "ann@customer.test", TOM, "order.csv"] {
        assert!(shown.contains(want), "{want} in:\n{shown}");
    }
    let sha = activity["attachments"][0]["sha256"].as_str().unwrap();
    let out = dir.path().join("order.csv");
    ok(server.admin(&[
        "activities",
        "attachment",
        &id,
        sha,
        "--out",
        out.to_str().unwrap(),
    ]));
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().replace("\r\n", "\n"),
        "item,qty\nwidget,42",
        "the line break before the boundary belongs to the boundary"
    );

    // Composing from the support queue's mailbox (the administrator reads every queue), a
    // draft with an attachment, regarding nothing; then sent: it waits, and says why.
    ok(server.admin(&[
        "queues",
        "create",
        "--name",
        "Support",
        "--email",
        "support@example.test",
    ]));
    let quote = dir.path().join("quote.txt");
    std::fs::write(&quote, "Widgets: 3 EUR each.\n").unwrap();
    let draft = ok_json(server.admin(&[
        "activities",
        "compose",
        "--from",
        "support@example.test",
        "--to",
        "ann@customer.test",
        "--subject",
        "Your quote",
        "--text",
        "Please find the quote.",
        "--attach",
        quote.to_str().unwrap(),
        "--draft",
        "--json",
    ]));
    assert_eq!(draft["status"], "draft", "{draft}");
    assert_eq!(draft["attachments"][0]["file_name"], "quote.txt");
    let draft_id = draft["id"].as_str().unwrap().to_owned();
    let sent = ok(server.admin(&["activities", "send", &draft_id]));
    assert!(sent.contains("pending_send"), "{sent}");
    assert!(
        sent.contains("waiting: the email address support@example.test is not approved"),
        "{sent}"
    );
    let (err, _) = fails(server.admin(&[
        "activities",
        "compose",
        "--from",
        "support@example.test",
        "--to",
        "not-an-address",
    ]));
    assert!(err.contains("to[0]"), "{err}");

    // The change feed lists the activity's creation, resumable after its cursor.
    let feed = ok(server.admin(&["changes", "--json"]));
    let events: Vec<Value> = feed
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let created = events
        .iter()
        .find(|e| e["record_id"] == id.as_str())
        .unwrap_or_else(|| panic!("the activity in the feed: {feed}"));
    let seq = created["seq"].as_i64().unwrap().to_string();
    let rest = ok(server.admin(&["changes", "--after", &seq, "--json"]));
    assert!(
        rest.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .all(|e| e["seq"].as_i64().unwrap() > created["seq"].as_i64().unwrap()),
        "{rest}"
    );
    // The endpoint was tried, and each attempt is in its delivery log with the reason.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = ok(server.admin(&["webhooks", "deliveries", &hook_id]));
        if log.lines().count() > 1 {
            assert!(log.contains("false") && log.contains("evt_"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no delivery attempt within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let shown = ok_json(server.admin(&["webhooks", "show", &hook_id, "--json"]));
    assert!(
        shown["status"]["consecutive_failures"].as_u64().unwrap() >= 1,
        "{shown}"
    );
    ok(server.admin(&["webhooks", "delete", &hook_id]));
    assert!(!ok(server.admin(&["webhooks", "list"])).contains(&hook_id));
    server.stop();
}

#[test]
fn admin_cli_manages_appointments_tasks_and_contacts() {
    let env = TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), env);
    ok(server.admin(&["domains", "assign", "example.test"]));
    ok(server.admin(&["users", "create", "--name", "Bob", "--email", BOB]));

    // Appointments: created (one of them Bob's), listed with filters, changed, deleted.
    let out = ok(server.admin(&[
        "appointments",
        "create",
        "--subject",
        "Quarterly review",
        "--start",
        "2026-03-02T09:00:00Z",
        "--end",
        "2026-03-02T10:00:00Z",
        "--time-zone",
        "Europe/Paris",
        "--organizer",
        ALICE,
        "--attendee",
        "ann@customer.test",
        "--attendee",
        "carl@customer.test",
        "--rrule",
        "FREQ=WEEKLY;COUNT=4",
    ]));
    let id = out
        .trim()
        .strip_prefix("created appointment ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_owned();
    let visit = ok_json(server.admin(&[
        "appointments",
        "create",
        "--subject",
        "Site visit",
        "--start",
        "2026-03-05T13:00:00Z",
        "--end",
        "2026-03-05T15:00:00Z",
        "--owner",
        BOB,
        "--json",
    ]));
    let visit_id = visit["id"].as_str().unwrap().to_owned();
    let table = ok(server.admin(&["appointments", "list"]));
    assert!(
        table.contains("Quarterly review") && table.contains("2026-03-02 09:00:00"),
        "{table}"
    );
    assert_eq!(id_in_row(&table, "Quarterly review"), id);
    assert_eq!(id_in_row(&table, "Site visit"), visit_id);
    let bobs = ok_json(server.admin(&["appointments", "list", "--owner", BOB, "--json"]));
    assert_eq!(bobs["items"].as_array().unwrap().len(), 1, "{bobs}");
    assert_eq!(bobs["items"][0]["id"], visit_id.as_str());
    let later = ok(server.admin(&["appointments", "list", "--since", "2026-03-03T00:00:00Z"]));
    assert!(
        later.contains("Site visit") && !later.contains("Quarterly review"),
        "{later}"
    );
    let shown = ok(server.admin(&["appointments", "get", &id]));
    for want in [
        "Europe/Paris",
        "ann@customer.test",
        "FREQ=WEEKLY;COUNT=4",
        ALICE,
    ] {
        assert!(shown.contains(want), "{want} in:\n{shown}");
    }
    let out = ok(server.admin(&[
        "appointments",
        "update",
        &id,
        "--set",
        "location=Room 2",
        "--set",
        "state=completed",
        "--set",
        "version=1",
    ]));
    assert_eq!(out.trim(), format!("updated appointment {id} (version 2)"));
    let done = ok(server.admin(&["appointments", "list", "--state", "completed"]));
    assert!(
        done.contains("Room 2") && !done.contains("Site visit"),
        "{done}"
    );
    let (err, _) = fails(server.admin(&[
        "appointments",
        "update",
        &id,
        "--set",
        "ends_at=2026-03-01T00:00:00Z",
    ]));
    assert!(err.contains("ends_at"), "{err}");
    let (err, _) = fails(server.admin(&[
        "appointments",
        "create",
        "--subject",
        "Nowhere",
        "--start",
        "2026-03-02T09:00:00Z",
        "--end",
        "2026-03-02T10:00:00Z",
        "--time-zone",
        "Mars/Olympus_Mons",
    ]));
    assert!(err.contains("time_zone"), "{err}");
    assert_eq!(
        ok(server.admin(&["appointments", "delete", &id])).trim(),
        format!("deleted appointment {id}")
    );
    let table = ok(server.admin(&["appointments", "list"]));
    assert!(!table.contains(&id) && table.contains(&visit_id), "{table}");
    let (err, _) = fails(server.admin(&["appointments", "get", &id]));
    assert!(err.contains("not found"), "{err}");

    // Tasks.
    let task = ok_json(server.admin(&[
        "tasks",
        "create",
        "--subject",
        "Send the quote",
        "--due",
        "2026-03-06T17:00:00Z",
        "--json",
    ]));
    let task_id = task["id"].as_str().unwrap().to_owned();
    ok(server.admin(&[
        "tasks",
        "update",
        &task_id,
        "--set",
        "percent_complete=100",
        "--set",
        "state=completed",
    ]));
    let table = ok(server.admin(&["tasks", "list", "--state", "completed"]));
    assert!(
        table.contains("Send the quote") && table.contains("100%"),
        "{table}"
    );
    let (err, _) =
        fails(server.admin(&["tasks", "update", &task_id, "--set", "percent_complete=140"]));
    assert!(err.contains("percent_complete"), "{err}");
    ok(server.admin(&["tasks", "delete", &task_id]));
    assert!(ok(server.admin(&["tasks", "list"])).contains("no tasks"));

    // Contacts.
    let out = ok(server.admin(&[
        "contacts",
        "create",
        "--name",
        "Ann Example",
        "--email",
        "ann@customer.test",
        "--company",
        "Customer Ltd",
        "--phone",
        "+1 555 0100",
    ]));
    let contact = out
        .trim()
        .strip_prefix("created contact ")
        .unwrap()
        .to_owned();
    ok(server.admin(&[
        "contacts",
        "update",
        &contact,
        "--set",
        "job_title=Buyer",
        "--set",
        "company=null",
    ]));
    let c = ok_json(server.admin(&["contacts", "get", &contact, "--json"]));
    assert_eq!(c["job_title"], "Buyer", "{c}");
    assert!(c["company"].is_null(), "{c}");
    assert_eq!(c["phones"][0], "+1 555 0100", "{c}");
    assert!(ok(server.admin(&["contacts", "list"])).contains("Ann Example"));
    ok(server.admin(&["contacts", "delete", &contact]));
    assert!(!ok(server.admin(&["contacts", "list"])).contains("Ann Example"));

    // Every write is in the change feed.
    let feed = ok(server.admin(&["changes", "--json"]));
    for event in [
        "appointment.created",
        "appointment.updated",
        "appointment.deleted",
        "task.deleted",
        "contact.deleted",
    ] {
        assert!(feed.contains(event), "{event} in:\n{feed}");
    }
    server.stop();
}
