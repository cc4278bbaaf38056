//! Dovecot (IMAP, IMAPS, POP3, POP3S, LMTP, auth socket for Postfix) from a throwaway config.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::accounts::{Accounts, DOMAIN};
use crate::tls::TlsFiles;
use crate::util::{
    self, HOST, chown_recursive, free_ports, mkdir, read_pid_file, run_logged, system_program,
    tcp_accepts, tcp_greeting, unix_greeting, wait_ready, write_file,
};

/// Where a Dovecot instance lives and listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DovecotInfo {
    /// Directory holding everything of this instance.
    pub root: PathBuf,
    /// The generated `dovecot.conf`.
    pub config: PathBuf,
    /// Dovecot's `base_dir` (sockets, master.pid).
    pub base_dir: PathBuf,
    /// Log file of all Dovecot processes.
    pub log: PathBuf,
    /// Root of the users' homes; a user's Maildir is `mail_root/DOMAIN/LOCALPART/Maildir`.
    pub mail_root: PathBuf,
    pub imap_port: u16,
    pub imaps_port: u16,
    pub pop3_port: u16,
    pub pop3s_port: u16,
    /// LMTP unix socket (Postfix delivers here).
    pub lmtp_socket: PathBuf,
    /// Auth socket for Postfix SASL (`smtpd_sasl_type = dovecot`).
    pub auth_socket: PathBuf,
    /// uid/gid owning the mail storage.
    pub mail_uid: u32,
    pub mail_gid: u32,
    /// Master process id of the last start.
    pub pid: Option<i32>,
}

impl DovecotInfo {
    /// Path of a user's Maildir (`alice@example.test` → `…/example.test/alice/Maildir`).
    pub fn maildir(&self, user: &str) -> PathBuf {
        let (local, domain) = user.split_once('@').unwrap_or((user, DOMAIN));
        self.mail_root
            .join(domain.to_lowercase())
            .join(local.to_lowercase())
            .join("Maildir")
    }

    /// Delivers `raw` into `user`'s Inbox the way a local delivery agent does (written to
    /// `tmp/`, renamed into `new/`), without an IMAP connection: tests that watch the server's
    /// connections stay undisturbed. Dovecot gives it the next UID when it next looks.
    pub fn deliver(&self, user: &str, raw: &[u8]) -> Result<()> {
        let maildir = self.maildir(user);
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(maildir.join(sub))
                .with_context(|| format!("creating {}", maildir.join(sub).display()))?;
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let name = format!(
            "{secs}.M{}P{}.testkit",
            uuid::Uuid::new_v4().simple(),
            std::process::id()
        );
        let tmp = maildir.join("tmp").join(&name);
        std::fs::write(&tmp, raw).with_context(|| format!("writing {}", tmp.display()))?;
        crate::util::chown_recursive(&self.mail_root, self.mail_uid, self.mail_gid)?;
        std::fs::rename(&tmp, maildir.join("new").join(&name))
            .with_context(|| format!("moving {} into new/", tmp.display()))
    }

    fn master_pid_file(&self) -> PathBuf {
        self.base_dir.join("master.pid")
    }

    /// Current master pid (from `base_dir/master.pid`, else the recorded one) if alive.
    pub fn running_pid(&self) -> Option<i32> {
        let config = self.config.to_string_lossy();
        read_pid_file(&self.master_pid_file())
            .or(self.pid)
            .filter(|p| util::pid_alive(*p) && util::cmdline_contains(*p, &config))
    }

    /// Stops the instance (SIGTERM to its master, as `dovecot stop` does without that
    /// command's extra second of polling) and waits for the master and its children to
    /// exit. Safe to call when it is not running.
    pub fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            return Ok(());
        };
        util::signal(pid, nix::sys::signal::Signal::SIGTERM);
        if !util::wait_gone(pid, Duration::from_secs(15))
            && !util::terminate(pid, Duration::from_secs(5))
        {
            bail!(
                "Dovecot master {pid} did not exit; see {}",
                self.log.display()
            );
        }
        // The master ran setsid(): wait for its children (same session) to go too.
        util::reap_session(pid, Duration::from_secs(5));
        Ok(())
    }
}

/// Options for [`Dovecot::start_with`].
#[derive(Debug, Clone, Default)]
pub struct DovecotOptions {
    pub accounts: Accounts,
    /// Reuse these certificates (default: generate into `DIR/tls`).
    pub tls: Option<TlsFiles>,
    /// Appended to the generated `dovecot.conf` (e.g. raised process limits for a benchmark).
    pub extra_config: String,
    /// Accept OAuth bearer tokens (SASL XOAUTH2 and OAUTHBEARER) checked by Dovecot's `oauth2`
    /// passdb against this RFC 7662 introspection URL (`introspection_mode = post`), such as
    /// [`crate::OAuthServer::introspection_url`]; passwords keep working.
    pub oauth2_introspection_url: Option<String>,
}

/// A running Dovecot. Stopped on drop unless [`Dovecot::detach`]ed.
#[derive(Debug)]
pub struct Dovecot {
    info: DovecotInfo,
    armed: bool,
}

impl Dovecot {
    /// Starts a private Dovecot with the default accounts, configured under `dir` (created).
    pub fn start(dir: &Path) -> Result<Dovecot> {
        Self::start_with(dir, &DovecotOptions::default())
    }

    /// Starts a private Dovecot configured under `dir` (created; its ancestors must be
    /// traversable by other users, e.g. a directory under /tmp).
    pub fn start_with(dir: &Path, opts: &DovecotOptions) -> Result<Dovecot> {
        let dir = util::prepare_root_dir(dir)?;
        let tls = match &opts.tls {
            Some(t) => t.clone(),
            None => TlsFiles::ensure(&dir.join("tls"))?,
        };
        let info = configure(&dir, &tls, opts)?;
        let mut dovecot = Dovecot { info, armed: true };
        dovecot.launch()?;
        Ok(dovecot)
    }

    /// Connection details of this instance.
    pub fn info(&self) -> &DovecotInfo {
        &self.info
    }

    /// Stops it (idempotent).
    pub fn stop(&mut self) -> Result<()> {
        self.info.stop()
    }

    /// Kills the master with SIGKILL (a crash, not a clean shutdown).
    pub fn kill(&mut self) {
        if let Some(pid) = self.info.running_pid() {
            util::signal(pid, nix::sys::signal::Signal::SIGKILL);
            util::wait_gone(pid, Duration::from_secs(10));
            // Its children notice and exit; until then they hold the listening ports.
            util::reap_session(pid, Duration::from_secs(5));
        }
    }

    /// Starts it again on the same ports with the same config and mail (after [`stop`](Self::stop)
    /// or [`kill`](Self::kill); stops it first if it is still running).
    pub fn restart(&mut self) -> Result<()> {
        self.info.stop()?;
        self.launch()
    }

    /// Leaves it running after this handle is dropped and returns its details.
    pub fn detach(mut self) -> DovecotInfo {
        self.armed = false;
        self.info.clone()
    }

    fn launch(&mut self) -> Result<()> {
        let info = &self.info;
        let dovecot = system_program("dovecot")?;
        // A crashed master leaves a stale pid file behind; dovecot refuses to start over it
        // only when that pid is alive, so just remove it.
        let _ = std::fs::remove_file(info.master_pid_file());
        run_logged(
            Command::new(dovecot).arg("-c").arg(&info.config),
            "starting Dovecot",
            &info.log,
        )?;
        let pid_file = info.master_pid_file();
        wait_ready("Dovecot", &info.log, Duration::from_secs(20), || {
            read_pid_file(&pid_file).context("no master.pid yet")?;
            tcp_greeting(info.imap_port, "* OK")?;
            tcp_greeting(info.pop3_port, "+OK")?;
            tcp_accepts(info.imaps_port)?;
            tcp_accepts(info.pop3s_port)?;
            unix_greeting(&info.lmtp_socket, "220")?;
            if !info.auth_socket.exists() {
                bail!("no auth socket yet");
            }
            Ok(())
        })?;
        self.info.pid = read_pid_file(&pid_file);
        Ok(())
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.info.stop()
        {
            eprintln!("serversync-testkit: stopping Dovecot: {e:#}");
        }
    }
}

fn configure(dir: &Path, tls: &TlsFiles, opts: &DovecotOptions) -> Result<DovecotInfo> {
    let accounts = &opts.accounts;
    let root = dir.join("dovecot");
    let base_dir = root.join("run");
    let state_dir = root.join("state");
    let mail_root = root.join("mail");
    mkdir(&root, 0o755)?;
    mkdir(&base_dir, 0o755)?;
    mkdir(&state_dir, 0o755)?;
    mkdir(&mail_root, 0o750)?;

    let (mail_uid, mail_gid) = if util::is_root() {
        util::user_ids("mail")?
    } else {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    };
    chown_recursive(&mail_root, mail_uid, mail_gid)?;

    let users_file = root.join("users");
    let mut users = String::new();
    for account in accounts.all() {
        users.push_str(&format!("{account}:{{PLAIN}}{}::::::\n", accounts.password));
    }
    // Readable by Dovecot's unprivileged auth process; it only holds test passwords.
    write_file(&users_file, &users, 0o644)?;

    // OAuth: an `oauth2` passdb for the bearer mechanisms, first; the password passdbs
    // answer only PLAIN and LOGIN.
    let (mechanisms, oauth_passdb, password_mechs) = match &opts.oauth2_introspection_url {
        None => ("plain login", String::new(), ""),
        Some(url) => {
            let oauth_conf = root.join("dovecot-oauth2.conf.ext");
            write_file(
                &oauth_conf,
                &format!(
                    "introspection_mode = post\nintrospection_url = {url}\n\
                     force_introspection = yes\nusername_attribute = username\n\
                     active_attribute = active\nactive_value = true\n"
                ),
                0o644,
            )?;
            (
                "plain login xoauth2 oauthbearer",
                format!(
                    "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}\n",
                    oauth_conf.display()
                ),
                "  mechanisms = plain login\n",
            )
        }
    };

    let ports = free_ports(4)?;
    let info = DovecotInfo {
        config: root.join("dovecot.conf"),
        log: root.join("dovecot.log"),
        lmtp_socket: base_dir.join("lmtp"),
        auth_socket: base_dir.join("auth-postfix"),
        base_dir: base_dir.clone(),
        mail_root: mail_root.clone(),
        imap_port: ports[0],
        imaps_port: ports[1],
        pop3_port: ports[2],
        pop3s_port: ports[3],
        mail_uid,
        mail_gid,
        pid: None,
        root: root.clone(),
    };
    let instance = format!("serversync-{}", ports[0]);
    let conf = format!(
        r#"# Generated by serversync-testkit: a throwaway Dovecot for tests. Do not edit.
instance_name = {instance}
base_dir = {base_dir}
state_dir = {state_dir}
log_path = {log}
info_log_path = {log}
protocols = imap pop3 lmtp
listen = {HOST}
hostname = localhost
postmaster_address = postmaster@{DOMAIN}

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no

auth_mechanisms = {mechanisms}
auth_failure_delay = 0
auth_verbose = yes
auth_cache_size = 0

first_valid_uid = 1
first_valid_gid = 1
mail_location = maildir:~/Maildir
mail_fsync = never
default_process_limit = 300
default_client_limit = 3000

# Failed logins answer at once: auth_failure_delay = 0 alone still batches failures on a
# 500 ms timer, and only a `nodelay` field that survives the failure skips that (and the
# anvil auth penalty). This first passdb accepts nobody by itself (continue-fail) but
# leaves `nodelay` in the request; the passwd-file below decides.
{oauth_passdb}passdb {{
  driver = static
  args = nopassword=yes nodelay=yes
  result_success = continue-fail
{password_mechs}}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {users_file}
{password_mechs}}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={mail_root}/%Ld/%Ln
}}

namespace inbox {{
  inbox = yes
  mailbox Sent {{
    special_use = \Sent
    auto = subscribe
  }}
}}

protocol imap {{
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}

service imap-login {{
  inet_listener imap {{
    address = {HOST}
    port = {imap}
  }}
  inet_listener imaps {{
    address = {HOST}
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {HOST}
    port = {pop3}
  }}
  inet_listener pop3s {{
    address = {HOST}
    port = {pop3s}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
  unix_listener auth-userdb {{
    mode = 0666
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"#,
        base_dir = base_dir.display(),
        state_dir = state_dir.display(),
        log = info.log.display(),
        cert = tls.server_cert.display(),
        key = tls.server_key.display(),
        users_file = users_file.display(),
        mail_root = mail_root.display(),
        imap = info.imap_port,
        imaps = info.imaps_port,
        pop3 = info.pop3_port,
        pop3s = info.pop3s_port,
    );
    write_file(&info.config, &format!("{conf}{}", opts.extra_config), 0o644)?;
    if let Ok(doveconf) = system_program("doveconf") {
        let out = std::process::Command::new(doveconf)
            .arg("-c")
            .arg(&info.config)
            .arg("-n")
            .stdin(std::process::Stdio::null())
            .output()
            .context("running doveconf")?;
        if !out.status.success() {
            bail!(
                "doveconf rejects {}:\n{}",
                info.config.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(info)
}
