//! Small helpers shared by the launchers: ports, files, processes, readiness probes.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User, geteuid};

/// Loopback address every server listens on.
pub const HOST: &str = "127.0.0.1";

/// Picks `n` distinct free TCP ports on 127.0.0.1 (all bound at once, then released).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((HOST, 0)).context("binding 127.0.0.1:0 to find a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

pub fn is_root() -> bool {
    geteuid().is_root()
}

/// Looks up a system user's uid/gid.
pub fn user_ids(name: &str) -> Result<(u32, u32)> {
    let user = User::from_name(name)
        .with_context(|| format!("looking up system user {name}"))?
        .ok_or_else(|| {
            anyhow!("system user `{name}` does not exist (run scripts/install-deps.sh)")
        })?;
    Ok((user.uid.as_raw(), user.gid.as_raw()))
}

/// Creates a directory (and parents) with the given mode.
pub fn mkdir(path: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
    Ok(())
}

/// Writes a file with the given mode (replacing it).
pub fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))?;
    Ok(())
}

/// `chown -R uid:gid path` (only when running as root; a no-op otherwise).
pub fn chown_recursive(path: &Path, uid: u32, gid: u32) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in fs::read_dir(path)? {
            chown_recursive(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Makes `dir` absolute, creates it (0755) and checks that every ancestor can be traversed by
/// other users: Dovecot's unprivileged processes, the `mail` user, Postfix and PostgreSQL must
/// reach files inside it.
pub fn prepare_root_dir(dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod 755 {}", dir.display()))?;
    if is_root() {
        for ancestor in dir.ancestors().skip(1) {
            let mode = fs::metadata(ancestor)?.permissions().mode();
            if mode & 0o001 == 0 {
                bail!(
                    "{} is not traversable by other users (mode {:o}); the test servers run as \
                     mail/dovecot/postfix/postgres and need to reach {}: use a directory under /tmp",
                    ancestor.display(),
                    mode & 0o7777,
                    dir.display()
                );
            }
        }
    }
    Ok(dir)
}

/// Opens (append) a log file for a daemon's stdout/stderr.
pub fn log_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Prepares a command so that it never holds the caller's terminal or pipes: stdin from
/// /dev/null, stdout/stderr appended to `log`, own process group.
pub fn detach_stdio(cmd: &mut Command, log: &Path) -> Result<()> {
    let out = log_file(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0);
    Ok(())
}

/// Runs a command to completion (output appended to `log`) and fails with the log's tail.
pub fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> Result<()> {
    detach_stdio(cmd, log)?;
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!(
            "{what} failed ({status}); see {}:\n{}",
            log.display(),
            tail(log, 20)
        );
    }
    Ok(())
}

/// Runs a command capturing its output (for short tools such as openssl or `postfix check`).
pub fn run_capture(cmd: &mut Command, what: &str) -> Result<String> {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}", out.status, text.trim_end());
    }
    Ok(text)
}

/// Last `n` lines of a file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            lines[start..].join("\n")
        }
        Err(_) => String::from("(no log yet)"),
    }
}

/// Reads a pid file's first line.
pub fn read_pid_file(path: &Path) -> Option<i32> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// True while the process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // state is the field after the parenthesised command name
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// Waits until `pid` is gone; returns whether it went away within `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
    true
}

/// Sends a signal to one pid (ignoring "no such process").
pub fn signal(pid: i32, sig: Signal) {
    if pid > 0 {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL and wait a little more.
pub fn terminate(pid: i32, grace: Duration) -> bool {
    if !pid_alive(pid) {
        return true;
    }
    signal(pid, Signal::SIGTERM);
    if wait_gone(pid, grace) {
        return true;
    }
    signal(pid, Signal::SIGKILL);
    wait_gone(pid, Duration::from_secs(5))
}

/// Retries `probe` every 100 ms until it succeeds or `timeout` passes; the error names the
/// server and points at its log.
pub fn wait_ready(
    server: &str,
    log: &Path,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match probe() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "{server} did not become ready within {:?} ({attempts} attempts, last error: \
                     {e:#}); see its log {}:\n{}",
                    timeout,
                    log.display(),
                    tail(log, 30)
                );
            }
            Err(_) => sleep(Duration::from_millis(100)),
        }
    }
}

fn read_first_line(stream: impl Read) -> Result<String> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

/// Connects to a TCP port and checks that the greeting line starts with `prefix`.
pub fn tcp_greeting(port: u16, prefix: &str) -> Result<()> {
    let addr: SocketAddr = format!("{HOST}:{port}").parse()?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let line = read_first_line(stream)?;
    if !line.starts_with(prefix) {
        bail!("unexpected greeting on port {port}: {line:?}");
    }
    Ok(())
}

/// Checks that something accepts TCP connections on the port.
pub fn tcp_accepts(port: u16) -> Result<()> {
    let addr: SocketAddr = format!("{HOST}:{port}").parse()?;
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    Ok(())
}

/// Connects to a unix socket and checks that the greeting line starts with `prefix`.
pub fn unix_greeting(path: &Path, prefix: &str) -> Result<()> {
    let stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let line = read_first_line(stream)?;
    if !line.starts_with(prefix) {
        bail!("unexpected greeting on {}: {line:?}", path.display());
    }
    Ok(())
}

/// Finds an executable: in PATH, then in the given extra directories.
pub fn find_program(name: &str, extra_dirs: &[PathBuf]) -> Option<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .chain(extra_dirs.iter())
        .map(|d| d.join(name))
        .find(|p| {
            fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Finds a system tool: PATH, then /usr/sbin, /usr/bin, /sbin.
pub fn system_program(name: &str) -> Result<PathBuf> {
    find_program(
        name,
        &[
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/usr/bin"),
            PathBuf::from("/sbin"),
        ],
    )
    .ok_or_else(|| anyhow!("`{name}` not found (run scripts/install-deps.sh)"))
}

/// Shell-quotes a value for `export NAME='value'` lines.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// True if the process's command line contains `needle` (guards against pid reuse).
pub fn cmdline_contains(pid: i32, needle: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            String::from_utf8_lossy(&raw)
                .replace('\0', " ")
                .contains(needle)
        })
        .unwrap_or(false)
}

/// Live (non-zombie) processes whose session id is `sid` (a daemon that called setsid(),
/// and all its children).
pub fn session_members(sid: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some(i) = stat.rfind(')') else {
                return false;
            };
            // after ')': state ppid pgrp session ...
            let fields: Vec<&str> = stat[i + 1..].split_whitespace().collect();
            fields.first().is_some_and(|s| *s != "Z" && *s != "X")
                && fields.get(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid)
        })
        .collect()
}

/// Stops a daemon's whole session: waits up to `grace` for the members to exit after their
/// master is gone, then SIGKILLs the stragglers.
pub fn reap_session(sid: i32, grace: Duration) {
    if sid <= 1 {
        return;
    }
    let deadline = Instant::now() + grace;
    loop {
        let members = session_members(sid);
        if members.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for pid in &members {
                signal(*pid, Signal::SIGKILL);
            }
            for pid in members {
                wait_gone(pid, Duration::from_secs(2));
            }
            return;
        }
        sleep(Duration::from_millis(50));
    }
}
