//! The real `serversync` binary: start-up, health endpoints, shutdown, bad input, key rotation.

use serversync_model::Secret;
use serversync_store::Store;
use serversync_vault::{KeySource, MasterKey};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
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
        "SERVERSYNC_LMTP_LISTEN",
        "SERVERSYNC_MASTER_KEY_FILE",
    ] {
        c.env_remove(v);
    }
    c.arg("--data-dir").arg(data_dir).current_dir(data_dir);
    c
}

/// The path in the first start's "its API token is in FILE (mode 0600…" log line.
fn first_token_file(line: &str) -> Option<std::path::PathBuf> {
    let rest = line.split("its API token is in ").nth(1)?;
    Some(rest.split(" (mode 0600").next()?.into())
}

struct Server {
    child: Child,
    addr: String,
    log: mpsc::Receiver<String>,
    /// Log lines up to the "listening" line.
    early: Vec<String>,
}

impl Server {
    /// Starts `serve` on a free port and waits (bounded) for its "listening" line.
    /// The file the first start names (before the "listening" line) for the bootstrap token.
    fn bootstrap_token_file(&self) -> std::path::PathBuf {
        self.early
            .iter()
            .find_map(|line| first_token_file(line))
            .expect("the first start names the token's file")
    }

    /// The bootstrap token, from that file.
    fn bootstrap_token(&self) -> String {
        std::fs::read_to_string(self.bootstrap_token_file())
            .unwrap()
            .trim()
            .to_owned()
    }

    fn start(mut c: Command) -> Server {
        let child = c
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let mut server = Server {
            child,
            addr: String::new(),
            log: rx,
            early: Vec::new(),
        };
        let stderr = server.child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let line = server
                .log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("serve prints its address within 30 s");
            server.early.push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                server.addr = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                return server;
            }
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// An API request with a bearer token; returns status and body.
    fn request(&self, method: &str, path: &str, token: &str, body: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        // Chunked responses: good enough for JSON bodies in tests (drop the chunk-size lines).
        let body = if body.starts_with(|c: char| c.is_ascii_hexdigit()) && body.contains("\r\n") {
            body.split("\r\n")
                .skip(1)
                .step_by(2)
                .collect::<Vec<_>>()
                .join("")
        } else {
            body
        };
        (status, body)
    }

    /// Sends SIGTERM and returns the exit status and the rest of the log.
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let rest: Vec<String> = self.log.try_iter().collect();
        (status, rest.join("\n"))
    }
}

impl Drop for Server {
    /// A failed test never leaves a server behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command that must fail at start-up and returns its stderr.
fn fails(mut c: Command) -> String {
    let out = c.stdout(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected failure, got success: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "no panic: {stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("serversync: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line: {stderr}");
    lines[0].to_owned()
}

#[test]
fn serve_on_sqlite_answers_health_readiness_and_metrics_then_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(cmd(dir.path()));
    let (status, body) = server.get("/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"database\":\"ok\""), "{body}");
    let (status, body) = server.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE serversync_http_requests_total counter"),
        "{body}"
    );
    assert!(body.contains("route=\"/readyz\""), "{body}");

    // First start created the SQLite file and a private master key file.
    assert!(dir.path().join("serversync.db").exists());
    let key = dir.path().join("master.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (status, log) = server.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}\n{log}");
    assert!(
        log.contains("engine stopped") && log.contains("stopped"),
        "{log}"
    );
}

/// The first start writes the first administrator's token to a file only its owner may
/// read, names the file in the log and never logs the token; a later start writes nothing. A
/// failed sign-in is logged with the client's address (the peer reaches the handlers).
#[test]
fn the_first_start_writes_the_admin_token_to_a_private_file_not_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(cmd(dir.path()));
    let file = server.bootstrap_token_file();
    assert_eq!(file, dir.path().join("first-admin-token"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = server.bootstrap_token();
    assert!(token.starts_with("ss_") && token.len() > 40, "{token}");
    let (status, body) = server.request("GET", "/api/v1/orgs", &token, None);
    assert_eq!(status, 200, "{body}");

    let form = "org=default&email=admin%40localhost&password=not+the+password";
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /login HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
        server.addr,
        form.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");

    let early = server.early.join("\n");
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    let log = format!("{early}\n{log}");
    assert!(!log.contains(&token), "the token is in the log: {log}");
    assert!(
        log.lines().any(|l| l.contains("sign-in failed")
            && l.contains("admin@localhost")
            && l.contains("127.0.0.1")),
        "{log}"
    );

    // A later start leaves the file alone and names no token.
    let again = Server::start(cmd(dir.path()));
    assert!(
        !again.early.iter().any(|l| first_token_file(l).is_some()),
        "{:?}",
        again.early
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
}

#[test]
fn serve_on_postgres() {
    let env = serversync_testkit::TestEnv::from_env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(env.pg_database()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cmd(dir.path());
    c.env("SERVERSYNC_DATABASE_URL", db.url())
        .env("SERVERSYNC_LOG_FORMAT", "json");
    let server = Server::start(c);
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        !dir.path().join("serversync.db").exists(),
        "no SQLite file when PostgreSQL is configured"
    );
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
    assert!(
        log.lines().all(|l| l.trim_start().starts_with('{')),
        "JSON logs: {log}"
    );
}

#[test]
fn bad_configuration_stops_startup_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[server]\nlisten = 8080\n").unwrap();
    let mut c = cmd(dir.path());
    c.args(["--config", cfg.to_str().unwrap(), "serve"]);
    let line = fails(c);
    assert!(line.contains("bad.toml at line 2"), "{line}");

    let mut c = cmd(dir.path());
    c.args([
        "--database-url",
        "postgres://serversync:hunter2@127.0.0.1:1/none",
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    let line = fails(c);
    assert!(line.contains("cannot reach the database"), "{line}");
    assert!(!line.contains("hunter2"), "password redacted: {line}");
    assert!(
        line.contains("SERVERSYNC_DATABASE_URL"),
        "names the fix: {line}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = cmd(dir.path());
    c.args([
        "serve",
        "--listen",
        &taken.local_addr().unwrap().to_string(),
    ]);
    let line = fails(c);
    assert!(
        line.contains("cannot listen on") && line.contains("another process uses this port"),
        "{line}"
    );

    let mut c = cmd(dir.path());
    c.env(
        "SERVERSYNC_LMTP_LISTEN",
        taken.local_addr().unwrap().to_string(),
    )
    .args(["serve", "--listen", "127.0.0.1:0"]);
    let line = fails(c);
    assert!(
        line.contains("cannot listen for LMTP on")
            && line.contains("another process uses this port")
            && line.contains("SERVERSYNC_LMTP_LISTEN"),
        "{line}"
    );

    let mut c = cmd(dir.path());
    c.env("SERVERSYNC_MASTER_KEY", "too-short").arg("migrate");
    let line = fails(c);
    assert!(
        line.contains("SERVERSYNC_MASTER_KEY") && line.contains("base64"),
        "{line}"
    );
}

fn sealed_secret(dir: &Path, key_file: &Path, value: &str) -> serversync_model::SecretId {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let key = MasterKey::load("unused", None, key_file).unwrap();
        let store = Store::open(
            &format!("sqlite://{}", dir.join("serversync.db").display()),
            key,
        )
        .await
        .unwrap();
        let id = store.put_secret(None, &Secret::new(value)).await.unwrap();
        store.close().await;
        id
    })
}

fn read_secret(dir: &Path, key_b64: &str, id: serversync_model::SecretId) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let key = MasterKey::from_base64(key_b64, KeySource::Direct).unwrap();
        let store = Store::open(
            &format!("sqlite://{}", dir.join("serversync.db").display()),
            key,
        )
        .await
        .unwrap();
        let v = store.get_secret(id).await.unwrap().expose().to_owned();
        store.close().await;
        v
    })
}

#[test]
fn a_wrong_master_key_is_refused_and_never_overwrites_anything() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    let id = sealed_secret(dir.path(), &key_file, "mailbox-password");
    let original = std::fs::read_to_string(&key_file).unwrap();

    let mut c = cmd(dir.path());
    c.env(
        "SERVERSYNC_MASTER_KEY",
        MasterKey::generate().unwrap().to_base64(),
    )
    .args(["serve", "--listen", "127.0.0.1:0"]);
    let line = fails(c);
    assert!(
        line.contains("is not the key this database's secrets were encrypted with"),
        "{line}"
    );

    std::fs::write(&key_file, MasterKey::generate().unwrap().to_base64()).unwrap();
    let mut c = cmd(dir.path());
    c.arg("migrate");
    let line = fails(c);
    assert!(
        line.contains("key file"),
        "names where the key came from: {line}"
    );

    assert_eq!(read_secret(dir.path(), &original, id), "mailbox-password");
}

#[test]
fn keys_rotate_reencrypts_and_swaps_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    let id = sealed_secret(dir.path(), &key_file, "rotate-me");
    let old = std::fs::read_to_string(&key_file).unwrap();

    let out = cmd(dir.path()).args(["keys", "rotate"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("re-encrypted 1 secrets"), "{stdout}");
    let new = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(new, old);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("master.key.previous")).unwrap(),
        old
    );
    assert_eq!(read_secret(dir.path(), &new, id), "rotate-me");
    assert!(
        cmd(dir.path())
            .arg("migrate")
            .output()
            .unwrap()
            .status
            .success()
    );
}

#[test]
fn an_interrupted_rotation_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("master.key");
    let id = sealed_secret(dir.path(), &key_file, "survive");
    // Simulate a crash after the database commit, before the key files were swapped.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let new_b64 = rt.block_on(async {
        let key = MasterKey::load("unused", None, &key_file).unwrap();
        let store = Store::open(
            &format!("sqlite://{}", dir.path().join("serversync.db").display()),
            key,
        )
        .await
        .unwrap();
        let new_key = MasterKey::generate().unwrap();
        new_key
            .write_new_file(&dir.path().join("master.key.new"))
            .unwrap();
        let b64 = new_key.to_base64();
        let (store, _) = store.rotate_master_key(new_key).await.unwrap();
        store.close().await;
        b64
    });
    let out = cmd(dir.path()).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().trim(), new_b64);
    assert!(!dir.path().join("master.key.new").exists());
    assert_eq!(read_secret(dir.path(), &new_b64, id), "survive");
}

#[test]
fn every_subcommand_explains_itself() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["keys", "--help"],
        &["keys", "rotate", "--help"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage: serversync"), "{args:?}: {text}");
    }
    let text = String::from_utf8_lossy(&Command::new(BIN).arg("--help").output().unwrap().stdout)
        .into_owned();
    for sub in ["serve", "migrate", "keys"] {
        assert!(text.contains(sub), "{text}");
    }
}

/// Creates a user with `email` through the API (its domain assigned to the organization, as
/// the Email Router requires), sets its mailbox to take mail in by the Email Router and
/// approves it; returns the mailbox id.
fn router_mailbox(server: &Server, token: &str, name: &str, email: &str) -> String {
    let domain = email.rsplit_once('@').unwrap().1;
    let (status, body) = server.request(
        "POST",
        "/api/v1/orgs/default/domains",
        token,
        Some(&format!(r#"{{"domain": "{domain}"}}"#)),
    );
    assert!(status == 201 || status == 409, "{status} {body}");
    let (status, body) = server.request(
        "POST",
        "/api/v1/orgs/default/users",
        token,
        Some(&format!(r#"{{"full_name": "{name}", "email": "{email}"}}"#)),
    );
    assert_eq!(status, 201, "{body}");
    let mailbox_id = body
        .split("\"mailbox\"")
        .nth(1)
        .and_then(|m| m.split("\"id\":\"").nth(1))
        .and_then(|m| m.split('"').next())
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/orgs/default/mailboxes/{mailbox_id}");
    let (status, body) = server.request(
        "PATCH",
        &path,
        token,
        Some(r#"{"incoming_method": "email_router"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.request(
        "POST",
        "/api/v1/orgs/default/mailboxes/approve",
        token,
        Some(&format!(r#"{{"mailbox_ids": ["{mailbox_id}"]}}"#)),
    );
    assert_eq!(status, 200, "{body}");
    mailbox_id
}

#[test]
fn deliver_takes_mail_in_once_and_the_items_api_explains_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(cmd(dir.path()));
    let token = server.bootstrap_token();
    let mailbox_id = router_mailbox(&server, &token, "Router Rita", "rita@example.test");
    let path = format!("/api/v1/orgs/default/mailboxes/{mailbox_id}");

    let message = "Message-ID: <deliver-1@example.test>\r\nFrom: ann@example.test\r\nTo: rita@example.test\r\nSubject: via the router\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\nhello\r\n";
    let deliver = || {
        let mut child = cmd(dir.path())
            .args(["deliver", "--mailbox", "Rita@Example.test"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(deliver().starts_with("Stored"), "first delivery is stored");
    assert!(
        deliver().starts_with("duplicate"),
        "the same message again is kept once"
    );

    let (status, items) = server.request("GET", &format!("{path}/items"), &token, None);
    assert_eq!(status, 200, "{items}");
    assert_eq!(items.matches("\"source_key\"").count(), 1, "{items}");
    assert!(
        items.contains("deliver-1@example.test") && items.contains("\"decision\":\"stored\""),
        "{items}"
    );

    // A mailbox that does not receive by the Email Router refuses, with one clear line.
    let out = cmd(dir.path())
        .args(["deliver", "--mailbox", "nobody@example.test"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no mailbox with the address"));
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
}

/// Speaks SMTP to `port` and returns the reply to the end of DATA.
fn smtp_send(port: u16, from: &str, to: &str, message: &str) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "SMTP server closed");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    };
    assert!(reply().starts_with("220"));
    for (cmd, expect) in [
        ("EHLO client.test".to_owned(), "250"),
        (format!("MAIL FROM:<{from}>"), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_owned(), "354"),
    ] {
        write!(w, "{cmd}\r\n").unwrap();
        let got = reply();
        assert!(got.starts_with(expect), "{cmd}: {got}");
    }
    w.write_all(message.as_bytes()).unwrap();
    w.write_all(b".\r\n").unwrap();
    let done = reply();
    write!(w, "QUIT\r\n").unwrap();
    done
}

#[test]
fn postfix_delivers_to_serve_over_lmtp() {
    let env = serversync_testkit::TestEnv::from_env();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cmd(dir.path());
    c.env("SERVERSYNC_LMTP_LISTEN", "127.0.0.1:0");
    let server = Server::start(c);
    let lmtp: std::net::SocketAddr = server
        .early
        .iter()
        .find_map(|l| l.split("Email Router listening on lmtp://").nth(1))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                .collect::<String>()
        })
        .expect("serve logs its LMTP address")
        .parse()
        .unwrap();
    let token = server.bootstrap_token();
    let mailbox_id = router_mailbox(&server, &token, "Lou Lmtp", "lou@router.test");

    // A private Postfix that relays router.test to serve's LMTP listener.
    let pf_dir = tempfile::Builder::new()
        .prefix("ss-postfix-lmtp-")
        .tempdir_in("/tmp")
        .unwrap();
    let postfix = serversync_testkit::Postfix::start_with(
        pf_dir.path(),
        &env.dovecot,
        &env.tls,
        &env.accounts(),
        &serversync_testkit::PostfixOptions {
            lmtp_routes: vec![("router.test".into(), lmtp)],
        },
    )
    .unwrap();
    let message = "Message-ID: <via-postfix-1@client.test>\r\nFrom: Cy <cy@client.test>\r\nTo: lou@router.test\r\nSubject: through Postfix\r\nDate: Mon, 2 Nov 2026 09:00:00 +0000\r\n\r\nHello over LMTP.\r\n";
    let queued = smtp_send(
        postfix.info().smtp_port,
        "cy@client.test",
        "lou@router.test",
        message,
    );
    assert!(queued.starts_with("250"), "{queued}");

    let path = format!("/api/v1/orgs/default/mailboxes/{mailbox_id}/items");
    let deadline = Instant::now() + Duration::from_secs(60);
    let items = loop {
        let (status, items) = server.request("GET", &path, &token, None);
        assert_eq!(status, 200, "{items}");
        if items.contains("via-postfix-1@client.test") {
            break items;
        }
        assert!(
            Instant::now() < deadline,
            "not stored within 60 s; Postfix log:\n{}",
            std::fs::read_to_string(&postfix.info().log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(items.matches("\"source_key\"").count(), 1, "{items}");
    assert!(
        items.contains(r#""via":"lmtp""#) && items.contains("\"decision\":\"stored\""),
        "{items}"
    );
    assert!(items.contains("through Postfix"), "{items}");
    let log = std::fs::read_to_string(&postfix.info().log).unwrap_or_default();
    assert!(
        log.contains("status=sent") && log.contains("lou@router.test"),
        "Postfix reports the delivery as done:\n{log}"
    );
    drop(postfix);
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");
}

/// `serve` with `[server]` settings from a configuration file in `dir`.
fn serve_with(dir: &Path, server_section: &str) -> Server {
    let cfg = dir.join("serversync.toml");
    std::fs::write(&cfg, format!("[server]\n{server_section}\n")).unwrap();
    let mut c = cmd(dir);
    c.arg("--config").arg(&cfg);
    Server::start(c)
}

/// Reads until the server closes the connection (bounded by `within`); returns what it sent.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> String {
    s.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => String::from_utf8_lossy(&got).into_owned(),
        // A reset is a close too.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            String::from_utf8_lossy(&got).into_owned()
        }
        Err(e) => panic!(
            "the server kept the connection open for {within:?} ({e}); it sent {:?}",
            String::from_utf8_lossy(&got)
        ),
    }
}

#[test]
fn slow_clients_are_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        dir.path(),
        "header_timeout_seconds = 1\nbody_timeout_seconds = 1\nrequest_timeout_seconds = 3",
    );
    let post = |length: usize| {
        format!(
            "POST /api/v1/orgs/default/contacts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n",
            server.bootstrap_token()
        )
    };
    // Configured to 1 s: closed well within 20 s (the bound only keeps the test finite).
    let bound = Duration::from_secs(20);

    // Half a header, then nothing.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    read_until_closed(&mut s, bound);

    // Nothing at all.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    read_until_closed(&mut s, bound);

    // Idle after a complete request on a kept-alive connection.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_until_closed(&mut s, bound);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that stops after 10 of its 100 bytes: 408.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(format!("{}{{\"name\": ", post(100)).as_bytes())
        .unwrap();
    let answer = read_until_closed(&mut s, bound);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A body that trickles a byte at a time, never stopping long enough for the body timeout,
    // is cut off by the request timeout.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(post(1000).as_bytes()).unwrap();
    let started = Instant::now();
    let mut cut = false;
    while started.elapsed() < bound {
        if s.write_all(b" ").is_err() {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let got = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        match got {
            Ok(n) => {
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
                cut = true;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    assert!(cut, "a trickling body was still accepted after {bound:?}");

    // The server still serves.
    assert_eq!(server.get("/healthz").0, 200);
}

#[test]
fn connections_beyond_the_limit_wait_for_a_free_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        dir.path(),
        "max_connections = 2\nheader_timeout_seconds = 120",
    );
    // Two connections that send nothing take both places.
    let first = TcpStream::connect(&server.addr).unwrap();
    let _second = TcpStream::connect(&server.addr).unwrap();
    let mut third = TcpStream::connect(&server.addr).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 16];
    match third.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a third connection was served while two were open: {other:?}"),
    }
    // One of them closes: the waiting connection is served.
    drop(first);
    let answer = read_until_closed(&mut third, Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn the_data_directory_and_database_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    // The most permissive umask: every file would be world-readable without explicit modes.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("--data-dir")
        .arg(&data)
        .current_dir(parent.path());
    for v in [
        "SERVERSYNC_CONFIG",
        "SERVERSYNC_DATABASE_URL",
        "DATABASE_URL",
        "SERVERSYNC_MASTER_KEY",
        "SERVERSYNC_LISTEN",
        "SERVERSYNC_LMTP_LISTEN",
        "SERVERSYNC_MASTER_KEY_FILE",
    ] {
        c.env_remove(v);
    }
    let server = Server::start(c);
    assert_eq!(server.get("/readyz").0, 200);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for f in [
        "serversync.db",
        "serversync.db-wal",
        "serversync.db-shm",
        "master.key",
    ] {
        let p = data.join(f);
        assert!(p.exists(), "{f} exists while serving");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    let (status, log) = server.terminate();
    assert!(status.success(), "{log}");

    // A database left readable by an earlier version is made private at the next start.
    std::fs::set_permissions(
        data.join("serversync.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = Server::start(cmd(&data));
    assert_eq!(mode(&data.join("serversync.db")), 0o600);
    drop(server);
}
