//! A private DNS server (Debian's dnsmasq, from `dnsmasq-base`) on 127.0.0.1, for tests of
//! what only DNS can say (SRV records): it answers from the records it is given, for the
//! zones it is given, and nothing else — no upstream servers, no `/etc/hosts`, so a test
//! never reaches the machine's real resolver. Stopped when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::util::{HOST, detach_stdio, free_ports, system_program, tail};

/// A record the server answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsRecord {
    /// `name` has the address `ip` (A or AAAA).
    Host { name: String, ip: std::net::IpAddr },
    /// `name` (e.g. `_autodiscover._tcp.contoso.test`) is served at `target:port`.
    Srv {
        name: String,
        target: String,
        port: u16,
        priority: u16,
        weight: u16,
    },
}

/// A running dnsmasq.
#[derive(Debug)]
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq in `dir`, authoritative for `zones` (a name there without a record
    /// is NXDOMAIN) and refusing every other name, and waits until it answers.
    pub fn start(dir: &Path, zones: &[&str], records: &[DnsRecord]) -> Result<Dnsmasq> {
        let program = system_program("dnsmasq").context("dnsmasq (Debian package dnsmasq-base)")?;
        let port = free_ports(1)?[0];
        let log = dir.join("dnsmasq.log");
        let mut cmd = Command::new(program);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
        ])
        .arg(format!("--listen-address={HOST}"))
        .arg(format!("--port={port}"));
        if crate::util::is_root() {
            // dnsmasq drops to `nobody` by default, which may not read /dev/null's config.
            cmd.args(["--user=root", "--group=root"]);
        }
        for zone in zones {
            cmd.arg(format!("--local=/{zone}/"));
        }
        for r in records {
            cmd.arg(match r {
                DnsRecord::Host { name, ip } => format!("--host-record={name},{ip}"),
                DnsRecord::Srv {
                    name,
                    target,
                    port,
                    priority,
                    weight,
                } => format!("--srv-host={name},{target},{port},{priority},{weight}"),
            });
        }
        detach_stdio(&mut cmd, &log)?;
        let child = cmd.spawn().context("starting dnsmasq")?;
        let mut server = Dnsmasq {
            child,
            addr: SocketAddr::new(HOST.parse()?, port),
            log,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Where to send queries.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bounded poll: a query for the root's SOA gets any answer.
    fn wait_ready(&mut self) -> Result<()> {
        let socket = UdpSocket::bind((HOST, 0))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let query = [
            0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1,
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("dnsmasq exited ({status}): {}", tail(&self.log, 20));
            }
            socket.send_to(&query, self.addr)?;
            let mut buf = [0u8; 512];
            if let Ok((n, _)) = socket.recv_from(&mut buf)
                && n >= 2
                && buf[..2] == query[..2]
            {
                return Ok(());
            }
        }
        bail!(
            "dnsmasq did not answer within 10 s: {}",
            tail(&self.log, 20)
        )
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
