//! The shared test environment: `up`/`down` of all servers, `env.json`/`env.sh`, and the typed
//! view tests get from [`TestEnv::from_env`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls_pki_types::ServerName;
use serde::{Deserialize, Serialize};
use sqlx::Connection as _;

use crate::accounts::{Accounts, DOMAIN};
use crate::dovecot::{Dovecot, DovecotInfo, DovecotOptions};
use crate::postfix::{Postfix, PostfixInfo};
use crate::postgres::{PG_URL_VAR, PgInfo, Postgres};
use crate::radicale::{Radicale, RadicaleInfo};
use crate::tls::{TLS_SERVER_NAME, TlsFiles};
use crate::util::{self, HOST, shell_quote, write_file};

/// Env var holding the path of `env.json` (set by sourcing `env.sh`).
pub const ENV_VAR: &str = "SERVERSYNC_TESTENV";
const MARKER: &str = ".serversync-testenv";
const DB_PREFIX: &str = "sstest_";

/// Connection details of a running test environment (the contents of `DIR/env.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TestEnv {
    /// Random id of this `up`; names of databases made by [`TestEnv::pg_database`] carry it.
    pub run_id: String,
    pub dir: PathBuf,
    /// Address every server listens on: 127.0.0.1.
    pub host: String,
    /// Name to verify the servers' certificates against: `localhost`.
    pub tls_server_name: String,
    /// The test CA certificate (PEM): trust this, keep certificate checks on.
    pub ca_cert: PathBuf,
    pub tls: TlsFiles,
    pub domain: String,
    /// Personal users (alice, bob, carol @example.test).
    pub users: Vec<String>,
    /// Queue mailboxes (support@example.test).
    pub queue_mailboxes: Vec<String>,
    /// Password of every account.
    pub password: String,
    pub dovecot: DovecotInfo,
    pub postfix: PostfixInfo,
    pub postgres: PgInfo,
    pub radicale: RadicaleInfo,
}

static FROM_ENV: OnceLock<TestEnv> = OnceLock::new();

impl TestEnv {
    /// The environment started by `scripts/test.sh` (`SERVERSYNC_TESTENV` → env.json).
    /// Panics with a one-line hint when it is not set.
    pub fn from_env() -> &'static TestEnv {
        FROM_ENV.get_or_init(|| {
            let path = match std::env::var_os(ENV_VAR) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => panic!(
                    "{ENV_VAR} is not set: these tests need the real test servers; run them with \
                     scripts/test.sh (e.g. `scripts/test.sh -p <crate>`)"
                ),
            };
            match TestEnv::load(&path) {
                Ok(env) => env,
                Err(e) => panic!(
                    "{ENV_VAR}={}: {e:#}; run the tests with scripts/test.sh",
                    path.display()
                ),
            }
        })
    }

    /// Like [`from_env`](Self::from_env) but `None` when the variable is unset.
    pub fn try_from_env() -> Option<&'static TestEnv> {
        std::env::var_os(ENV_VAR)
            .filter(|p| !p.is_empty())
            .map(|_| Self::from_env())
    }

    /// Reads an `env.json`.
    pub fn load(path: &Path) -> Result<TestEnv> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Accounts and password.
    pub fn accounts(&self) -> Accounts {
        Accounts {
            users: self.users.clone(),
            queue_mailboxes: self.queue_mailboxes.clone(),
            password: self.password.clone(),
        }
    }

    pub fn imap_port(&self) -> u16 {
        self.dovecot.imap_port
    }
    pub fn imaps_port(&self) -> u16 {
        self.dovecot.imaps_port
    }
    pub fn pop3_port(&self) -> u16 {
        self.dovecot.pop3_port
    }
    pub fn pop3s_port(&self) -> u16 {
        self.dovecot.pop3s_port
    }
    /// SMTP submission (STARTTLS required, AUTH PLAIN/LOGIN).
    pub fn submission_port(&self) -> u16 {
        self.postfix.submission_port
    }
    /// Plain SMTP (MTA): unauthenticated, accepts mail for example.test.
    pub fn smtp_port(&self) -> u16 {
        self.postfix.smtp_port
    }
    /// Admin URL of the PostgreSQL server (prefer [`pg_database`](Self::pg_database)).
    pub fn pg_admin_url(&self) -> &str {
        &self.postgres.admin_url
    }
    /// Radicale base URL, `http://127.0.0.1:PORT/`.
    pub fn radicale_url(&self) -> &str {
        &self.radicale.url
    }

    /// The test CA as PEM text.
    pub fn ca_cert_pem(&self) -> Result<String> {
        std::fs::read_to_string(&self.ca_cert)
            .with_context(|| format!("reading {}", self.ca_cert.display()))
    }

    /// rustls client config (aws-lc-rs) that trusts only the test CA.
    pub fn tls_client_config(&self) -> Arc<rustls::ClientConfig> {
        crate::tls::client_config(&self.ca_cert).expect("loading the test CA certificate")
    }

    /// tokio-rustls connector trusting the test CA.
    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.tls_client_config())
    }

    /// `localhost` as a rustls server name.
    pub fn tls_server_name(&self) -> ServerName<'static> {
        ServerName::try_from(self.tls_server_name.clone()).expect("valid TLS server name")
    }

    /// Creates a fresh, uniquely named database on the PostgreSQL server; it is dropped
    /// (best-effort) when the returned guard is dropped.
    pub async fn pg_database(&self) -> Result<PgDatabase> {
        let name = format!(
            "{DB_PREFIX}{}_{}",
            self.run_id,
            uuid::Uuid::new_v4().simple()
        );
        let mut conn = sqlx::PgConnection::connect(&self.postgres.admin_url)
            .await
            .with_context(|| format!("connecting to {}", self.postgres.admin_url))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let _ = conn.close().await;
        let mut url = url::Url::parse(&self.postgres.admin_url)?;
        url.set_path(&format!("/{name}"));
        Ok(PgDatabase {
            url: url.to_string(),
            name,
            admin_url: self.postgres.admin_url.clone(),
            dropped: false,
        })
    }

    /// The `export` lines of env.sh.
    pub fn env_sh(&self) -> String {
        let vars: Vec<(&str, String)> = vec![
            (ENV_VAR, self.dir.join("env.json").display().to_string()),
            ("SERVERSYNC_TEST_HOST", self.host.clone()),
            ("SERVERSYNC_TEST_TLS_NAME", self.tls_server_name.clone()),
            (
                "SERVERSYNC_TEST_CA_CERT",
                self.ca_cert.display().to_string(),
            ),
            ("SERVERSYNC_TEST_DOMAIN", self.domain.clone()),
            ("SERVERSYNC_TEST_USERS", self.users.join(" ")),
            (
                "SERVERSYNC_TEST_QUEUE_MAILBOXES",
                self.queue_mailboxes.join(" "),
            ),
            ("SERVERSYNC_TEST_PASSWORD", self.password.clone()),
            ("SERVERSYNC_TEST_IMAP_PORT", self.imap_port().to_string()),
            ("SERVERSYNC_TEST_IMAPS_PORT", self.imaps_port().to_string()),
            ("SERVERSYNC_TEST_POP3_PORT", self.pop3_port().to_string()),
            ("SERVERSYNC_TEST_POP3S_PORT", self.pop3s_port().to_string()),
            ("SERVERSYNC_TEST_SMTP_PORT", self.smtp_port().to_string()),
            (
                "SERVERSYNC_TEST_SUBMISSION_PORT",
                self.submission_port().to_string(),
            ),
            (
                "SERVERSYNC_TEST_LMTP_SOCKET",
                self.dovecot.lmtp_socket.display().to_string(),
            ),
            (PG_URL_VAR, self.postgres.admin_url.clone()),
            ("SERVERSYNC_TEST_RADICALE_URL", self.radicale.url.clone()),
        ];
        let mut out = String::from("# serversync test environment, written by `testenv up`\n");
        for (name, value) in vars {
            out.push_str(&format!("export {name}={}\n", shell_quote(&value)));
        }
        out
    }
}

/// A database made by [`TestEnv::pg_database`]; dropped (best-effort, `WITH (FORCE)`) on drop.
#[derive(Debug)]
pub struct PgDatabase {
    url: String,
    name: String,
    admin_url: String,
    dropped: bool,
}

impl PgDatabase {
    /// URL of the new database (same server and user as the admin URL).
    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Drops the database now, reporting errors.
    pub async fn drop_now(mut self) -> Result<()> {
        self.dropped = true;
        drop_database(&self.admin_url, &self.name).await
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Works inside or outside a tokio runtime: a thread with its own small runtime.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(15), drop_database(&admin_url, &name))
                    .await
                    .context("timed out")?
            })
        });
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("serversync-testkit: dropping database {}: {e:#}", self.name),
            Err(_) => eprintln!(
                "serversync-testkit: dropping database {} panicked",
                self.name
            ),
        }
    }
}

async fn drop_database(admin_url: &str, name: &str) -> Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(())
}

/// Starts every server from throwaway configs under `dir`, waits until each answers, writes
/// `dir/env.json` and `dir/env.sh`, and leaves them running (stop them with [`down`]).
/// On failure, whatever was already started is stopped again.
pub async fn up(dir: &Path) -> Result<TestEnv> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = util::prepare_root_dir(dir)?;
    let marker = dir.join(MARKER);
    if marker.exists() {
        down(&dir).await?;
        for sub in ["dovecot", "postfix", "radicale", "postgres", "tls"] {
            let path = dir.join(sub);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        for file in ["env.json", "env.sh"] {
            let _ = std::fs::remove_file(dir.join(file));
        }
    } else if std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} is not empty and holds no serversync test environment: give an empty or new directory",
            dir.display()
        );
    }
    write_file(&marker, "serversync test environment\n", 0o644)?;

    let tls = TlsFiles::ensure(&dir.join("tls"))?;
    let accounts = Accounts::default();
    let dovecot = Dovecot::start_with(
        &dir,
        &DovecotOptions {
            accounts: accounts.clone(),
            tls: Some(tls.clone()),
            ..Default::default()
        },
    )?;
    let postfix = Postfix::start(&dir, dovecot.info(), &tls, &accounts)?;
    let radicale = Radicale::start_with(&dir, &accounts)?;
    let postgres = Postgres::find_or_start(&dir).await?;

    let env = TestEnv {
        run_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        dir: dir.clone(),
        host: HOST.to_string(),
        tls_server_name: TLS_SERVER_NAME.to_string(),
        ca_cert: tls.ca_cert.clone(),
        tls,
        domain: DOMAIN.to_string(),
        users: accounts.users.clone(),
        queue_mailboxes: accounts.queue_mailboxes.clone(),
        password: accounts.password.clone(),
        dovecot: dovecot.info().clone(),
        postfix: postfix.info().clone(),
        postgres: postgres.info().clone(),
        radicale: radicale.info().clone(),
    };
    write_file(
        &dir.join("env.json"),
        &serde_json::to_string_pretty(&env)?,
        0o644,
    )?;
    write_file(&dir.join("env.sh"), &env.env_sh(), 0o644)?;
    // Everything is up: leave the servers running past this process.
    dovecot.detach();
    postfix.detach();
    radicale.detach();
    postgres.detach();
    Ok(env)
}

/// Stops exactly the servers `up` started in `dir` (by their recorded pids and config
/// files), and drops databases left behind by [`TestEnv::pg_database`] of that run on a
/// borrowed server. Safe to run twice, and after a failed `up`.
pub async fn down(dir: &Path) -> Result<()> {
    let env_json = dir.join("env.json");
    let mut errors = Vec::new();
    if env_json.exists() {
        let env = TestEnv::load(&env_json)?;
        for (name, result) in [
            ("Postfix", env.postfix.stop()),
            ("Dovecot", env.dovecot.stop()),
            ("Radicale", env.radicale.stop()),
            ("PostgreSQL", env.postgres.stop()),
        ] {
            if let Err(e) = result {
                errors.push(format!("{name}: {e:#}"));
            }
        }
        if !env.postgres.owned
            && let Err(e) = drop_leftover_databases(&env).await
        {
            eprintln!("serversync-testkit: dropping leftover test databases: {e:#}");
        }
    } else {
        // `up` failed half-way (or never ran): stop whatever the layout shows.
        stop_by_layout(dir, &mut errors);
    }
    if !errors.is_empty() {
        bail!("testenv down: {}", errors.join("; "));
    }
    Ok(())
}

fn stop_by_layout(dir: &Path, errors: &mut Vec<String>) {
    let postfix_root = dir.join("postfix");
    if postfix_root.join("etc/main.cf").exists() {
        let info = PostfixInfo {
            config_dir: postfix_root.join("etc"),
            queue_dir: postfix_root.join("queue"),
            data_dir: postfix_root.join("data"),
            log: postfix_root.join("postfix.log"),
            smtp_port: 0,
            submission_port: 0,
            pid: None,
            root: postfix_root,
        };
        if let Err(e) = info.stop() {
            errors.push(format!("Postfix: {e:#}"));
        }
    }
    let dovecot_root = dir.join("dovecot");
    if dovecot_root.join("dovecot.conf").exists() {
        let info = DovecotInfo {
            config: dovecot_root.join("dovecot.conf"),
            base_dir: dovecot_root.join("run"),
            log: dovecot_root.join("dovecot.log"),
            mail_root: dovecot_root.join("mail"),
            imap_port: 0,
            imaps_port: 0,
            pop3_port: 0,
            pop3s_port: 0,
            lmtp_socket: dovecot_root.join("run/lmtp"),
            auth_socket: dovecot_root.join("run/auth-postfix"),
            mail_uid: 0,
            mail_gid: 0,
            pid: None,
            root: dovecot_root,
        };
        if let Err(e) = info.stop() {
            errors.push(format!("Dovecot: {e:#}"));
        }
    }
    let radicale_root = dir.join("radicale");
    if radicale_root.join("radicale.conf").exists() {
        let info = RadicaleInfo {
            config: radicale_root.join("radicale.conf"),
            log: radicale_root.join("radicale.log"),
            port: 0,
            url: String::new(),
            pid: None,
            root: radicale_root,
        };
        if let Err(e) = info.stop() {
            errors.push(format!("Radicale: {e:#}"));
        }
    }
    let pg_root = dir.join("postgres");
    if pg_root.join("data").exists() {
        let info = PgInfo {
            admin_url: String::new(),
            owned: true,
            data_dir: Some(pg_root.join("data")),
            log: None,
            port: None,
            pid: None,
            root: Some(pg_root),
        };
        if let Err(e) = info.stop() {
            errors.push(format!("PostgreSQL: {e:#}"));
        }
    }
}

async fn drop_leftover_databases(env: &TestEnv) -> Result<()> {
    let connect = sqlx::PgConnection::connect(&env.postgres.admin_url);
    let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return Ok(()); // server gone: nothing to clean
    };
    let pattern = format!("{DB_PREFIX}{}\\_%", env.run_id);
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(&pattern)
            .fetch_all(&mut conn)
            .await?;
    let _ = conn.close().await;
    for name in names {
        drop_database(&env.postgres.admin_url, &name).await?;
    }
    Ok(())
}
