//! Radicale (CalDAV/CardDAV) with htpasswd plain auth and filesystem storage.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
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

/// A plain-HTTP CalDAV/CardDAV peer of a Radicale, for tests that look at the server without
/// serversync's DAV client: make collections, list, read, write and delete resources as any
/// other client would, and count the requests Radicale logged.
pub struct DavPeer {
    http: reqwest::Client,
    base: String,
    user: String,
    password: String,
    log: PathBuf,
    /// Radicale's storage (`collections/collection-root`), where each resource is a file.
    storage: PathBuf,
}

impl DavPeer {
    /// A peer of `info`'s Radicale signed in as `user`.
    pub fn new(info: &RadicaleInfo, user: &str, password: &str) -> Result<DavPeer> {
        // Plain HTTP, but reqwest wants a TLS configuration (no crypto provider by default).
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        Ok(DavPeer {
            http: reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()?,
            base: info.url.trim_end_matches('/').to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
            log: info.log.clone(),
            storage: info.root.join("collections").join("collection-root"),
        })
    }

    fn req(&self, method: &str, path: &str) -> Result<reqwest::RequestBuilder> {
        Ok(self
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes())?,
                format!("{}{path}", self.base),
            )
            .basic_auth(&self.user, Some(&self.password)))
    }

    async fn send(&self, what: &str, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let r = r.send().await?;
        if !r.status().is_success() {
            bail!("{what}: {}", r.status());
        }
        Ok(r)
    }

    /// Makes a calendar (`calendar: true`) or an address book at `path`.
    pub async fn mkcol(&self, path: &str, calendar: bool) -> Result<()> {
        let rt = if calendar {
            "<c:calendar/>"
        } else {
            "<a:addressbook/>"
        };
        let body = format!(
            r#"<?xml version="1.0"?><d:mkcol xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav" xmlns:a="urn:ietf:params:xml:ns:carddav"><d:set><d:prop><d:resourcetype><d:collection/>{rt}</d:resourcetype></d:prop></d:set></d:mkcol>"#
        );
        self.send(
            &format!("MKCOL {path}"),
            self.req("MKCOL", path)?.body(body),
        )
        .await?;
        Ok(())
    }

    /// The hrefs of the resources in `collection` (not the collection itself).
    pub async fn hrefs(&self, collection: &str) -> Result<Vec<String>> {
        let body = r#"<?xml version="1.0"?><d:propfind xmlns:d="DAV:"><d:prop><d:getetag/></d:prop></d:propfind>"#;
        let r = self
            .send(
                &format!("PROPFIND {collection}"),
                self.req("PROPFIND", collection)?
                    .header("Depth", "1")
                    .body(body),
            )
            .await?;
        let text = r.text().await?;
        // `<href>`, `<D:href>`, `<d:href>`…: whatever prefix the server uses.
        let mut hrefs: Vec<String> = text
            .split("href>")
            .skip(1)
            .step_by(2)
            .filter_map(|part| part.split('<').next())
            .filter(|h| !h.ends_with('/'))
            .map(str::to_owned)
            .collect();
        hrefs.sort();
        Ok(hrefs)
    }

    /// How many resources `collection` holds, counted in Radicale's storage (one file each)
    /// rather than asked over HTTP: cheap enough to poll without slowing the server down.
    pub fn count(&self, collection: &str) -> usize {
        let dir = self.storage.join(collection.trim_matches('/'));
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Every resource of `collection` with its text, by href.
    pub async fn list(&self, collection: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for href in self.hrefs(collection).await? {
            let (text, _) = self.get(&href).await?;
            out.push((href, text));
        }
        Ok(out)
    }

    /// A resource's text and ETag.
    pub async fn get(&self, href: &str) -> Result<(String, String)> {
        let r = self
            .send(&format!("GET {href}"), self.req("GET", href)?)
            .await?;
        let etag = r
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        Ok((r.text().await?, etag))
    }

    /// Writes a resource (`\n` line ends are sent as CRLF).
    pub async fn put(&self, href: &str, text: &str, content_type: &str) -> Result<()> {
        let body = text.replace("\r\n", "\n").replace('\n', "\r\n");
        self.send(
            &format!("PUT {href}"),
            self.req("PUT", href)?
                .header("Content-Type", content_type)
                .body(body),
        )
        .await?;
        Ok(())
    }

    pub async fn delete(&self, href: &str) -> Result<()> {
        self.send(&format!("DELETE {href}"), self.req("DELETE", href)?)
            .await?;
        Ok(())
    }

    /// How many requests of `method` for paths under `prefix` Radicale logged so far (tests
    /// share one Radicale, each in collections of its own).
    pub fn logged(&self, method: &str, prefix: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.matches(&format!("{method} request for '{prefix}"))
            .count()
    }
}
