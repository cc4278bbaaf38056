//! Measuring a child process: wall time, CPU (from the kernel's accounting of waited-for
//! children) and peak resident memory (sampled from /proc).

use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::resource::{UsageWho, getrusage};

/// CPU seconds (user + system) of all children waited for so far.
pub fn children_cpu() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// CPU seconds (user + system) of this process, all threads, so far.
pub fn self_cpu() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    t(u.user_time()) + t(u.system_time())
}

/// Resident memory of a process now and at its peak, in KB (from /proc/PID/status).
pub fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds a live process used so far (from /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some(ticks as f64 / hz)
}

/// A child whose peak RSS is sampled in the background until it exits.
pub struct Watched {
    pub child: Child,
    pub started: Instant,
    cpu_before: f64,
    peak_kb: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
}

/// What a finished child used.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: f64,
    pub peak_rss_kb: u64,
}

impl Watched {
    pub fn spawn(cmd: &mut Command) -> Result<Watched> {
        let cpu_before = children_cpu();
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let pid = child.id();
        let peak_kb = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        {
            let (peak_kb, done) = (peak_kb.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    match rss_kb(pid) {
                        Some((_, hwm)) => {
                            peak_kb.fetch_max(hwm, Ordering::Relaxed);
                        }
                        None => break,
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        Ok(Watched {
            child,
            started,
            cpu_before,
            peak_kb,
            done,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the child to exit by itself (at most `limit`), and says what it used.
    pub fn wait(mut self, limit: Duration) -> Result<(ExitStatus, Usage)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                let wall = self.started.elapsed();
                return Ok((status, self.finish(wall)));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{:?} did not finish within {limit:?}", self.child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the child with SIGTERM (SIGKILL after 30 s); `wall` is the time measured by the
    /// caller (e.g. until the work was seen done), CPU and memory cover the whole run.
    pub fn stop(mut self, wall: Duration) -> Result<Usage> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if let Some((_, hwm)) = rss_kb(self.child.id()) {
            self.peak_kb.fetch_max(hwm, Ordering::Relaxed);
        }
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(self.finish(wall))
    }

    fn finish(&self, wall: Duration) -> Usage {
        self.done.store(true, Ordering::Relaxed);
        Usage {
            wall,
            cpu: children_cpu() - self.cpu_before,
            peak_rss_kb: self.peak_kb.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
