//! Radicale (CalDAV/CardDAV) with htpasswd plain auth and filesystem storage.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Result, bail};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::accounts::Accounts;
use crate::util::{
    self, HOST, detach_stdio, find_program, free_ports, mkdir, read_pid_file, wait_ready,
    write_file,
};

/// Where a Radicale instance lives and listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RadicaleInfo {
    pub root: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    /// `http://127.0.0.1:PORT/`
    pub url: String,
    pub pid: Option<i32>,
}

impl RadicaleInfo {
    fn pid_file(&self) -> PathBuf {
        self.root.join("radicale.pid")
    }

    /// Pid if that process is still our Radicale.
    pub fn running_pid(&self) -> Option<i32> {
        let config = self.config.to_string_lossy();
        read_pid_file(&self.pid_file())
            .or(self.pid)
            .filter(|p| util::pid_alive(*p) && util::cmdline_contains(*p, &config))
    }

    /// Terminates the recorded process. Safe when not running.
    pub fn stop(&self) -> Result<()> {
        if let Some(pid) = self.running_pid()
            && !util::terminate(pid, Duration::from_secs(10))
        {
            bail!("Radicale {pid} did not exit");
        }
        let _ = std::fs::remove_file(self.pid_file());
        Ok(())
    }
}

/// A running Radicale. Stopped on drop unless [`Radicale::detach`]ed.
#[derive(Debug)]
pub struct Radicale {
    info: RadicaleInfo,
    child: Option<Child>,
    accounts: Accounts,
    armed: bool,
}

impl Radicale {
    /// Starts a private Radicale under `dir` with the default accounts.
    pub fn start(dir: &Path) -> Result<Radicale> {
        Self::start_with(dir, &Accounts::default())
    }

    pub fn start_with(dir: &Path, accounts: &Accounts) -> Result<Radicale> {
        let dir = util::prepare_root_dir(dir)?;
        let info = configure(&dir, accounts)?;
        let mut radicale = Radicale {
            info,
            child: None,
            accounts: accounts.clone(),
            armed: true,
        };
        radicale.launch()?;
        Ok(radicale)
    }

    pub fn info(&self) -> &RadicaleInfo {
        &self.info
    }

    pub fn stop(&mut self) -> Result<()> {
        let result = self.info.stop();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        result
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.launch()
    }

    /// Leaves it running after this handle is dropped and returns its details.
    pub fn detach(mut self) -> RadicaleInfo {
        self.armed = false;
        self.child = None;
        self.info.clone()
    }

    fn launch(&mut self) -> Result<()> {
        let (program, args) = radicale_command()?;
        let mut cmd = Command::new(program);
        cmd.args(args).arg("--config").arg(&self.info.config);
        detach_stdio(&mut cmd, &self.info.log)?;
        let mut child = cmd.spawn()?;
        let pid = i32::try_from(child.id())?;
        self.info.pid = Some(pid);
        write_file(&self.info.pid_file(), &format!("{pid}\n"), 0o644)?;
        let user = self.accounts.users.first().cloned().unwrap_or_default();
        let (port, password, log) = (self.info.port, &self.accounts.password, &self.info.log);
        let ready = wait_ready("Radicale", log, Duration::from_secs(30), || {
            if let Some(status) = child.try_wait()? {
                bail!("exited with {status}");
            }
            http_propfind_ok(port, &user, password)
        });
        self.child = Some(child);
        ready
    }
}

impl Drop for Radicale {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.stop()
        {
            eprintln!("serversync-testkit: stopping Radicale: {e:#}");
        }
    }
}

/// `python3 -m radicale` with a Python that has the module (Debian's /usr/bin/python3 first:
/// a python3 earlier in PATH, e.g. pyenv's, does not see Debian's python3-radicale).
fn radicale_command() -> Result<(PathBuf, Vec<String>)> {
    let mut candidates = vec![PathBuf::from("/usr/bin/python3")];
    if let Some(p) = find_program("python3", &[]) {
        candidates.push(p);
    }
    for python in candidates {
        let ok = Command::new(&python)
            .args(["-c", "import radicale"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok((python, vec!["-m".into(), "radicale".into()]));
        }
    }
    if let Some(radicale) = find_program("radicale", &[]) {
        return Ok((radicale, vec![]));
    }
    bail!("no Python with the radicale module found (run scripts/install-deps.sh)")
}

/// An authenticated PROPFIND on the user's principal answers 207.
fn http_propfind_ok(port: u16, user: &str, password: &str) -> Result<()> {
    let addr: SocketAddr = format!("{HOST}:{port}").parse()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    write!(
        stream,
        "PROPFIND / HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Basic {auth}\r\n\
         Depth: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response.lines().next().unwrap_or_default();
    if !(status.starts_with("HTTP/1.") && status.contains(" 207 ")) {
        bail!("unexpected answer to PROPFIND: {status:?}");
    }
    Ok(())
}

fn configure(dir: &Path, accounts: &Accounts) -> Result<RadicaleInfo> {
    let root = dir.join("radicale");
    let collections = root.join("collections");
    mkdir(&root, 0o755)?;
    mkdir(&collections, 0o755)?;
    let users_file = root.join("users");
    let mut users = String::new();
    for account in accounts.all() {
        users.push_str(&format!("{account}:{}\n", accounts.password));
    }
    write_file(&users_file, &users, 0o644)?;
    let port = free_ports(1)?[0];
    let config = root.join("radicale.conf");
    write_file(
        &config,
        &format!(
            "# Generated by serversync-testkit: a throwaway Radicale for tests.\n\
             [server]\nhosts = {HOST}:{port}\n\n\
             [auth]\ntype = htpasswd\nhtpasswd_filename = {users}\nhtpasswd_encryption = plain\n\
             delay = 0\n\n\
             [rights]\ntype = owner_only\n\n\
             [storage]\nfilesystem_folder = {collections}\n\n\
             [web]\ntype = none\n\n\
             [logging]\nlevel = info\nmask_passwords = True\n",
            users = users_file.display(),
            collections = collections.display(),
        ),
        0o644,
    )?;
    Ok(RadicaleInfo {
        log: root.join("radicale.log"),
        config,
        port,
        url: format!("http://{HOST}:{port}/"),
        pid: None,
        root,
    })
}
