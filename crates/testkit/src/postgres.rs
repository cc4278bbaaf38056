//! PostgreSQL: an existing reachable server, or a throwaway cluster (initdb + pg_ctl).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sqlx::Connection as _;

use crate::util::{self, HOST, find_program, free_ports, mkdir, read_pid_file, run_logged};

/// Env var naming a PostgreSQL server to use (an admin URL allowed to CREATE DATABASE).
pub const PG_URL_VAR: &str = "SERVERSYNC_TEST_PG_URL";
/// Set to 1 to always start a throwaway cluster, even if a server is reachable.
pub const OWN_PG_VAR: &str = "SERVERSYNC_TESTENV_OWN_PG";
/// The server tried after the env vars.
pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The PostgreSQL server of a test environment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PgInfo {
    /// Admin URL (may CREATE DATABASE).
    pub admin_url: String,
    /// True when the environment started this server (a throwaway cluster) and stops it.
    pub owned: bool,
    /// Where the owned cluster lives.
    pub root: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub log: Option<PathBuf>,
    pub port: Option<u16>,
    pub pid: Option<i32>,
}

impl PgInfo {
    /// Postmaster pid of an owned cluster, if running.
    pub fn running_pid(&self) -> Option<i32> {
        let data = self.data_dir.as_ref()?;
        read_pid_file(&data.join("postmaster.pid"))
            .or(self.pid)
            .filter(|p| util::pid_alive(*p))
    }

    /// Stops an owned cluster (`pg_ctl stop -m fast`); nothing for a borrowed server.
    pub fn stop(&self) -> Result<()> {
        if !self.owned {
            return Ok(());
        }
        let (Some(pid), Some(data), Some(root)) = (
            self.running_pid(),
            self.data_dir.as_ref(),
            self.root.as_ref(),
        ) else {
            return Ok(());
        };
        if let Ok(pg_ctl) = pg_program("pg_ctl") {
            let mut cmd = as_postgres(&pg_ctl, root);
            cmd.arg("-D")
                .arg(data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"]);
            let _ = run_logged(&mut cmd, "pg_ctl stop", &root.join("pg_ctl.log"));
        }
        if !util::wait_gone(pid, Duration::from_secs(10))
            && !util::terminate(pid, Duration::from_secs(5))
        {
            bail!("PostgreSQL postmaster {pid} did not exit");
        }
        Ok(())
    }
}

/// A PostgreSQL server for tests. An owned cluster is stopped on drop unless detached.
#[derive(Debug)]
pub struct Postgres {
    info: PgInfo,
    armed: bool,
}

impl Postgres {
    /// Uses `SERVERSYNC_TEST_PG_URL` or `DATABASE_URL` if reachable, else
    /// postgres://postgres@127.0.0.1:5432/postgres if reachable, else starts a throwaway
    /// cluster under `dir`. A server counts only if its user may create databases.
    pub async fn find_or_start(dir: &Path) -> Result<Postgres> {
        if std::env::var(OWN_PG_VAR).is_ok_and(|v| v == "1") {
            return Self::start(dir);
        }
        let mut candidates = Vec::new();
        for var in [PG_URL_VAR, "DATABASE_URL"] {
            if let Ok(url) = std::env::var(var)
                && url.starts_with("postgres")
            {
                candidates.push((var, url));
            }
        }
        candidates.push(("default", DEFAULT_PG_URL.to_string()));
        for (source, url) in candidates {
            match check_server(&url).await {
                Ok(()) => {
                    return Ok(Postgres {
                        info: PgInfo {
                            admin_url: url,
                            owned: false,
                            root: None,
                            data_dir: None,
                            log: None,
                            port: None,
                            pid: None,
                        },
                        armed: false,
                    });
                }
                Err(e) if source != "default" => {
                    eprintln!("serversync-testkit: PostgreSQL from {source} not usable: {e:#}");
                }
                Err(_) => {}
            }
        }
        Self::start(dir)
    }

    /// Starts a throwaway cluster under `dir/postgres` on a free port (as the `postgres`
    /// user when running as root).
    pub fn start(dir: &Path) -> Result<Postgres> {
        let dir = util::prepare_root_dir(dir)?;
        let initdb = pg_program("initdb")?;
        let root = dir.join("postgres");
        let data = root.join("data");
        let run = root.join("run");
        mkdir(&root, 0o700)?;
        mkdir(&run, 0o700)?;
        if util::is_root() {
            let (uid, gid) = util::user_ids("postgres")?;
            util::chown_recursive(&root, uid, gid)?;
        }
        let cmd_log = root.join("pg_ctl.log");
        let server_log = root.join("postgres.log");
        if !data.join("PG_VERSION").exists() {
            let mut cmd = as_postgres(&initdb, &root);
            cmd.arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"])
                .args(["--locale=C", "--no-sync"]);
            run_logged(&mut cmd, "initdb", &cmd_log)?;
        }
        let port = free_ports(1)?[0];
        let mut info = PgInfo {
            admin_url: format!("postgres://postgres@{HOST}:{port}/postgres"),
            owned: true,
            root: Some(root.clone()),
            data_dir: Some(data.clone()),
            log: Some(server_log.clone()),
            port: Some(port),
            pid: None,
        };
        launch(&mut info)?;
        Ok(Postgres { info, armed: true })
    }

    /// Starts an owned cluster again on the same port with the same data (after
    /// [`stop`](Self::stop); a PostgreSQL restart as clients see it).
    pub fn start_again(&mut self) -> Result<()> {
        if !self.info.owned {
            bail!("only a cluster this test started can be started again");
        }
        if self.info.running_pid().is_some() {
            return Ok(());
        }
        launch(&mut self.info)
    }

    pub fn info(&self) -> &PgInfo {
        &self.info
    }

    pub fn stop(&mut self) -> Result<()> {
        self.info.stop()
    }

    /// Leaves an owned cluster running after this handle is dropped.
    pub fn detach(mut self) -> PgInfo {
        self.armed = false;
        self.info.clone()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.info.stop()
        {
            eprintln!("serversync-testkit: stopping PostgreSQL: {e:#}");
        }
    }
}

/// `pg_ctl start` of an owned cluster described by `info` (its port, data and log).
fn launch(info: &mut PgInfo) -> Result<()> {
    let pg_ctl = pg_program("pg_ctl")?;
    let (Some(root), Some(data), Some(server_log), Some(port)) = (
        info.root.clone(),
        info.data_dir.clone(),
        info.log.clone(),
        info.port,
    ) else {
        bail!("not an owned cluster");
    };
    let run = root.join("run");
    let mut cmd = as_postgres(&pg_ctl, &root);
    cmd.arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(&server_log)
        .arg("-o")
        .arg(format!(
            "-p {port} -k {} -c listen_addresses={HOST} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            run.display()
        ))
        .args(["-w", "-t", "60", "start"]);
    if let Err(e) = run_logged(&mut cmd, "pg_ctl start", &root.join("pg_ctl.log")) {
        bail!(
            "PostgreSQL did not start: {e:#}\nserver log {}:\n{}",
            server_log.display(),
            util::tail(&server_log, 30)
        );
    }
    info.pid = read_pid_file(&data.join("postmaster.pid"));
    Ok(())
}

/// Connects and checks the user may create databases.
pub async fn check_server(url: &str) -> Result<()> {
    let connect = sqlx::PgConnection::connect(url);
    let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .context("timed out connecting")?
        .context("connecting")?;
    let may_create: bool = sqlx::query_scalar(
        "SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .context("checking CREATEDB privilege")?;
    let _ = conn.close().await;
    if !may_create {
        bail!("its user may not create databases");
    }
    Ok(())
}

/// Finds a PostgreSQL server program: PATH, then /usr/lib/postgresql/*/bin (newest first).
pub fn pg_program(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.reverse();
    find_program(name, &dirs).with_context(|| {
        format!(
            "`{name}` not found in PATH or /usr/lib/postgresql/*/bin (run scripts/install-deps.sh)"
        )
    })
}

/// A command run as the `postgres` user when we are root, in a directory it can enter.
fn as_postgres(program: &Path, cwd: &Path) -> Command {
    let mut cmd = if util::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.current_dir(cwd);
    cmd
}
