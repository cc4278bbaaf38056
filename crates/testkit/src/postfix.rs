//! Postfix (submission with STARTTLS + SASL through Dovecot, plain SMTP for example.test)
//! delivering into Dovecot over LMTP, from a throwaway config directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::accounts::{Accounts, DOMAIN};
use crate::dovecot::DovecotInfo;
use crate::tls::TlsFiles;
use crate::util::{
    self, HOST, free_ports, mkdir, read_pid_file, run_capture, run_logged, system_program,
    tcp_greeting, wait_ready, write_file,
};

/// Mail to this domain is accepted, then handed to Dovecot's LMTP, which knows no such user:
/// Postfix sends a delivery status notification (RFC 3464) back to the sender, as a real mail
/// system does for an unknown recipient.
pub const BOUNCE_DOMAIN: &str = "bounce.test";

/// Where a Postfix instance lives and listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PostfixInfo {
    pub root: PathBuf,
    /// `config_directory` (main.cf, master.cf); pass it as `postfix -c`.
    pub config_dir: PathBuf,
    pub queue_dir: PathBuf,
    pub data_dir: PathBuf,
    /// `maillog_file`.
    pub log: PathBuf,
    /// Unauthenticated SMTP (MTA) port: accepts mail for example.test only.
    pub smtp_port: u16,
    /// Submission port: STARTTLS required, then AUTH PLAIN/LOGIN against Dovecot.
    pub submission_port: u16,
    /// Master process id of the last start.
    pub pid: Option<i32>,
}

impl PostfixInfo {
    fn master_pid_file(&self) -> PathBuf {
        self.queue_dir.join("pid").join("master.pid")
    }

    /// Master pid if running.
    pub fn running_pid(&self) -> Option<i32> {
        read_pid_file(&self.master_pid_file())
            .or(self.pid)
            .filter(|p| util::pid_alive(*p))
    }

    /// `postfix -c DIR stop`, then waits for the master to exit. Safe when not running.
    pub fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            return Ok(());
        };
        if let Ok(postfix) = system_program("postfix") {
            let _ = run_logged(
                Command::new(postfix)
                    .arg("-c")
                    .arg(&self.config_dir)
                    .arg("stop"),
                "postfix stop",
                &self.log,
            );
        }
        if !util::wait_gone(pid, Duration::from_secs(15))
            && !util::terminate(pid, Duration::from_secs(5))
        {
            bail!(
                "Postfix master {pid} did not exit; see {}",
                self.log.display()
            );
        }
        // The master ran setsid(): wait for its children (same session) to go too.
        util::reap_session(pid, Duration::from_secs(5));
        Ok(())
    }
}

/// Extra settings for a private Postfix.
#[derive(Debug, Clone, Default)]
pub struct PostfixOptions {
    /// Domains whose mail Postfix relays over LMTP to a TCP listener (such as serversync's
    /// Email Router), as `(domain, address)`: accepted on the SMTP port for any recipient,
    /// delivered by `lmtp:inet:[IP]:PORT` through `transport_maps`.
    pub lmtp_routes: Vec<(String, std::net::SocketAddr)>,
}

/// A running Postfix. Stopped on drop unless [`Postfix::detach`]ed.
#[derive(Debug)]
pub struct Postfix {
    info: PostfixInfo,
    armed: bool,
}

impl Postfix {
    /// Starts a private Postfix under `dir` delivering into `dovecot` and authenticating
    /// against it, with the TLS certificate in `tls`; it accepts mail for `accounts` only.
    pub fn start(
        dir: &Path,
        dovecot: &DovecotInfo,
        tls: &TlsFiles,
        accounts: &Accounts,
    ) -> Result<Postfix> {
        Self::start_with(dir, dovecot, tls, accounts, &PostfixOptions::default())
    }

    /// [`Postfix::start`] with [`PostfixOptions`].
    pub fn start_with(
        dir: &Path,
        dovecot: &DovecotInfo,
        tls: &TlsFiles,
        accounts: &Accounts,
        options: &PostfixOptions,
    ) -> Result<Postfix> {
        let dir = util::prepare_root_dir(dir)?;
        let info = configure(&dir, dovecot, tls, accounts, options)?;
        let mut postfix = Postfix { info, armed: true };
        postfix.launch()?;
        Ok(postfix)
    }

    pub fn info(&self) -> &PostfixInfo {
        &self.info
    }

    pub fn stop(&mut self) -> Result<()> {
        self.info.stop()
    }

    /// Starts it again with the same configuration (stopping it first if running).
    pub fn restart(&mut self) -> Result<()> {
        self.info.stop()?;
        self.launch()
    }

    /// Leaves it running after this handle is dropped and returns its details.
    pub fn detach(mut self) -> PostfixInfo {
        self.armed = false;
        self.info.clone()
    }

    fn launch(&mut self) -> Result<()> {
        let info = &self.info;
        let postfix = system_program("postfix")?;
        run_logged(
            Command::new(&postfix)
                .arg("-c")
                .arg(&info.config_dir)
                .arg("start"),
            "postfix start",
            &info.log,
        )?;
        let pid_file = info.master_pid_file();
        wait_ready("Postfix", &info.log, Duration::from_secs(30), || {
            read_pid_file(&pid_file).context("no master.pid yet")?;
            tcp_greeting(info.smtp_port, "220")?;
            tcp_greeting(info.submission_port, "220")?;
            Ok(())
        })?;
        self.info.pid = read_pid_file(&pid_file);
        Ok(())
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.info.stop()
        {
            eprintln!("serversync-testkit: stopping Postfix: {e:#}");
        }
    }
}

fn configure(
    dir: &Path,
    dovecot: &DovecotInfo,
    tls: &TlsFiles,
    accounts: &Accounts,
    options: &PostfixOptions,
) -> Result<PostfixInfo> {
    if !util::is_root() {
        bail!("the test Postfix must be started as root (it drops privileges to `postfix`)");
    }
    let (pf_uid, pf_gid) = util::user_ids("postfix")?;
    nix::unistd::Group::from_name("postdrop")
        .context("looking up group postdrop")?
        .context("group `postdrop` does not exist (run scripts/install-deps.sh)")?;

    let root = dir.join("postfix");
    let config_dir = root.join("etc");
    let queue_dir = root.join("queue");
    let data_dir = root.join("data");
    mkdir(&root, 0o755)?;
    mkdir(&config_dir, 0o755)?;
    mkdir(&queue_dir, 0o755)?;
    mkdir(&data_dir, 0o700)?;
    util::chown_recursive(&data_dir, pf_uid, pf_gid)?;

    let ports = free_ports(2)?;
    let info = PostfixInfo {
        log: root.join("postfix.log"),
        config_dir: config_dir.clone(),
        queue_dir: queue_dir.clone(),
        data_dir: data_dir.clone(),
        smtp_port: ports[0],
        submission_port: ports[1],
        pid: None,
        root: root.clone(),
    };

    // Unknown recipients are refused at RCPT time (texthash needs no postmap).
    let mailboxes = config_dir.join("virtual_mailboxes");
    let table: String = accounts.all().map(|a| format!("{a} ok\n")).collect();
    write_file(&mailboxes, &table, 0o644)?;

    // Domains relayed over LMTP to a TCP listener, and BOUNCE_DOMAIN, accepted for any
    // recipient and then bounced with a DSN to the sender (texthash again: no postmap).
    let transport = config_dir.join("transport");
    let mut table = format!(
        "{BOUNCE_DOMAIN} lmtp:unix:{}\n",
        dovecot.lmtp_socket.display()
    );
    let mut domains = vec![BOUNCE_DOMAIN];
    for (domain, addr) in &options.lmtp_routes {
        if domain.is_empty() || domain.contains(char::is_whitespace) {
            bail!("lmtp_routes: {domain:?} is not a domain");
        }
        table.push_str(&format!(
            "{domain} lmtp:inet:[{}]:{}\n",
            addr.ip(),
            addr.port()
        ));
        domains.push(domain);
    }
    write_file(&transport, &table, 0o644)?;
    let routes = format!(
        "\n# Relayed over LMTP to the listeners in {t}, or bounced.\nrelay_domains = {d}\nrelay_recipient_maps =\ntransport_maps = texthash:{t}\nlmtp_destination_recipient_limit = 50\n",
        t = transport.display(),
        d = domains.join(" "),
    );

    let main_cf = format!(
        r#"# Generated by serversync-testkit: a throwaway Postfix for tests. Do not edit.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {root}
inet_interfaces = {HOST}
inet_protocols = ipv4
myhostname = localhost
mydomain = {DOMAIN}
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
biff = no
append_dot_mydomain = no
smtpd_banner = $myhostname ESMTP serversync test Postfix
disable_vrfy_command = yes
message_size_limit = 52428800

# example.test lives in Dovecot: deliver over LMTP.
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = texthash:{mailboxes}
virtual_transport = lmtp:unix:{lmtp}
# Nothing leaves this machine: other domains bounce at once.
default_transport = error:outbound mail is disabled in the serversync test environment
relay_transport = error:outbound mail is disabled in the serversync test environment

# Fast retries when Dovecot is restarted under a test.
queue_run_delay = 2s
minimal_backoff_time = 2s
maximal_backoff_time = 10s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
delay_warning_time = 0

smtpd_tls_chain_files = {key}, {cert}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_tls_loglevel = 0
smtp_tls_security_level = none

smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth}
smtpd_sasl_auth_enable = no
smtpd_sasl_authenticated_header = no
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
{routes}"#,
        queue = queue_dir.display(),
        data = data_dir.display(),
        log = info.log.display(),
        root = root.display(),
        lmtp = dovecot.lmtp_socket.display(),
        key = tls.server_key.display(),
        cert = tls.server_cert.display(),
        auth = dovecot.auth_socket.display(),
        mailboxes = mailboxes.display(),
    );
    let master_cf = format!(
        r#"# Generated by serversync-testkit. chroot is off everywhere.
# service         type  private unpriv chroot wakeup maxproc command
{HOST}:{smtp}    inet  n       -      n      -      -       smtpd
{HOST}:{sub}     inet  n       -      n      -      -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_tls_auth_only=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o milter_macro_daemon_name=ORIGINATING
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
"#,
        smtp = info.smtp_port,
        sub = info.submission_port,
    );
    write_file(&config_dir.join("main.cf"), &main_cf, 0o644)?;
    write_file(&config_dir.join("master.cf"), &master_cf, 0o644)?;

    let postfix = system_program("postfix")?;
    let out = run_capture(
        Command::new(&postfix)
            .arg("-c")
            .arg(&config_dir)
            .arg("check"),
        "postfix check",
    )
    .with_context(|| {
        format!(
            "postfix -c {} check failed (it fails silently when, e.g., maillog_file is \
             outside maillog_file_prefixes); see {}",
            config_dir.display(),
            info.log.display()
        )
    })?;
    if out.contains("fatal") || out.contains("warning") {
        bail!(
            "postfix -c {} check complains:\n{}",
            config_dir.display(),
            out.trim_end()
        );
    }
    Ok(info)
}
