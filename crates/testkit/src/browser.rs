//! Browser tests: scripts in the repository's `e2e/` directory drive Debian's Chromium with
//! `playwright-core` (npm, no browser download), both installed by `scripts/install-deps.sh`.
//!
//! ```no_run
//! # fn demo() -> anyhow::Result<()> {
//! use std::path::Path;
//! use std::time::Duration;
//! let shots = Path::new("/tmp/shots");
//! let out = serversync_testkit::browser::run_script(
//!     Path::new("smoke.mjs"), // relative to e2e/
//!     &[("SCREENSHOTS", shots.display().to_string()), ("BASE_URL", "http://127.0.0.1:8080".into())],
//!     Duration::from_secs(60),
//! )?;
//! out.ensure_success()?; // names the failed step, with the script's output
//! # Ok(()) }
//! ```
//!
//! A script gets `CHROMIUM` (the browser), `SCREENSHOTS` (where `e2e/lib.mjs`'s `screenshot()`
//! writes PNGs), `TMPDIR` (a directory of this run, where Playwright puts the browser's fresh
//! profile) and the caller's variables. It is killed at the timeout, and whatever browser it
//! left behind is killed too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::util::{self, find_program, session_members};

/// Variable naming the directory that screenshots are written to.
pub const SCREENSHOTS_VAR: &str = "SCREENSHOTS";
/// Variable naming the Chromium executable.
pub const CHROMIUM_VAR: &str = "CHROMIUM";
/// Oldest Node.js major version that playwright-core supports.
pub const MIN_NODE_MAJOR: u32 = 20;

const HINT: &str = "run scripts/install-deps.sh (as root)";

/// Debian's Chromium: `/usr/bin/chromium`, else `chromium` on PATH.
pub fn chromium_path() -> Result<PathBuf> {
    let debian = PathBuf::from("/usr/bin/chromium");
    if debian.is_file() {
        return Ok(debian);
    }
    find_program("chromium", &[]).ok_or_else(|| {
        anyhow!("Chromium not found (/usr/bin/chromium or `chromium` on PATH): {HINT}")
    })
}

/// The repository's `e2e/` directory (from this crate's manifest directory).
pub fn e2e_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    fs::canonicalize(&dir).unwrap_or(dir)
}

/// What a script run needs, located and checked: Node.js (new enough), the npm packages of
/// `e2e/`, and Chromium.
#[derive(Debug, Clone)]
pub struct E2e {
    dir: PathBuf,
    node: PathBuf,
    chromium: PathBuf,
}

impl E2e {
    /// Finds node, `e2e/node_modules/playwright-core` and Chromium; the error says what is
    /// missing and how to install it.
    pub fn locate() -> Result<E2e> {
        let dir = e2e_dir();
        if !dir.join("package.json").is_file() {
            bail!("{} has no package.json", dir.display());
        }
        let node = find_program("node", &[PathBuf::from("/usr/bin")])
            .ok_or_else(|| anyhow!("Node.js (`node`) not found: {HINT}"))?;
        let version = util::run_capture(Command::new(&node).arg("--version"), "node --version")?;
        let major = version
            .trim()
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .ok_or_else(|| anyhow!("cannot read `node --version`: {version:?}"))?;
        if major < MIN_NODE_MAJOR {
            bail!(
                "Node.js {} is too old: playwright-core needs {MIN_NODE_MAJOR} or newer",
                version.trim()
            );
        }
        if !dir
            .join("node_modules/playwright-core/package.json")
            .is_file()
        {
            bail!(
                "{} is missing: {HINT} (it runs `npm ci` in e2e/)",
                dir.join("node_modules/playwright-core").display()
            );
        }
        Ok(E2e {
            dir,
            node,
            chromium: chromium_path()?,
        })
    }

    /// The `e2e/` directory (the scripts' working directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node(&self) -> &Path {
        &self.node
    }

    pub fn chromium(&self) -> &Path {
        &self.chromium
    }

    /// Runs `node <script>` in `e2e/` (a relative `script` is taken from there), with
    /// `CHROMIUM`, `SCREENSHOTS`, `TMPDIR` (this run's, not overridable) and `env` set. `env`
    /// may name `SCREENSHOTS`; without it screenshots go to a fresh directory under the system
    /// temp dir, kept and named in the output. After `timeout` the script gets SIGTERM
    /// (Playwright then closes its browser), SIGKILL 5 s later, and this returns an error
    /// with what it printed. A script that exits non-zero is an `Ok` output: see
    /// [`E2eOutput::ensure_success`].
    pub fn run(
        &self,
        script: &Path,
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Result<E2eOutput> {
        let script = self.dir.join(script);
        if !script.is_file() {
            bail!("e2e script {} does not exist", script.display());
        }
        let run = RunDir::create()?;
        let screenshots = match env.iter().rev().find(|(k, _)| *k == SCREENSHOTS_VAR) {
            Some((_, dir)) => PathBuf::from(dir),
            None => run.path.join("screenshots"),
        };
        fs::create_dir_all(&screenshots)
            .with_context(|| format!("creating {}", screenshots.display()))?;
        let tmp = run.path.join("tmp");
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let stdout_path = run.path.join("stdout.log");
        let stderr_path = run.path.join("stderr.log");

        let mut cmd = Command::new(&self.node);
        cmd.arg(&script)
            .current_dir(&self.dir)
            .env(CHROMIUM_VAR, &self.chromium)
            .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env(SCREENSHOTS_VAR, &screenshots)
            // Not overridable: the browser's profile under it is how a leftover browser is found.
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(Stdio::from(util::log_file(&stdout_path)?))
            .stderr(Stdio::from(util::log_file(&stderr_path)?));
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);

        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} {}", self.node.display(), script.display()))?;
        let mut guard = ScriptGuard {
            child,
            marker: run.path.to_string_lossy().into_owned(),
            done: false,
        };
        let (status, timed_out) = guard.wait(timeout)?;
        let elapsed = started.elapsed();
        guard.cleanup();

        let output = E2eOutput {
            script: script.clone(),
            status,
            stdout: fs::read_to_string(&stdout_path).unwrap_or_default(),
            stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
            screenshots,
            elapsed,
        };
        drop(run);
        if timed_out {
            bail!(
                "e2e script {} did not finish within {timeout:?} and was killed\n{}",
                script.display(),
                output.report()
            );
        }
        Ok(output)
    }
}

/// Locates everything ([`E2e::locate`]) and runs one script ([`E2e::run`]).
pub fn run_script(script: &Path, env: &[(&str, String)], timeout: Duration) -> Result<E2eOutput> {
    E2e::locate()?.run(script, env, timeout)
}

/// What a finished script did.
#[derive(Debug, Clone)]
pub struct E2eOutput {
    pub script: PathBuf,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// Where its screenshots are (`SCREENSHOTS`).
    pub screenshots: PathBuf,
    pub elapsed: Duration,
}

/// One `STEP name ok …` / `STEP name FAILED: message` line of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    /// `None` when the step passed, else its failure message.
    pub failure: Option<String>,
}

impl Step {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

impl E2eOutput {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The steps the script reported, in order.
    pub fn steps(&self) -> Vec<Step> {
        self.stdout.lines().filter_map(parse_step).collect()
    }

    /// Ok when the script exited 0 and no step failed; else an error naming the failed step,
    /// with the script's output and where its screenshots are.
    pub fn ensure_success(&self) -> Result<&Self> {
        let failed = self.steps().into_iter().find(|s| !s.passed());
        if self.success() && failed.is_none() {
            return Ok(self);
        }
        let what = match failed {
            Some(Step {
                name,
                failure: Some(message),
            }) => format!("step `{name}` failed: {message}"),
            _ => String::from("it failed"),
        };
        bail!(
            "e2e script {}: {what} ({})\n{}",
            self.script.display(),
            self.status,
            self.report()
        )
    }

    fn report(&self) -> String {
        format!(
            "after {:.1} s; screenshots in {}\n--- stdout ---\n{}\n--- stderr (last 40 lines) ---\n{}",
            self.elapsed.as_secs_f64(),
            self.screenshots.display(),
            self.stdout.trim_end(),
            last_lines(&self.stderr, 40)
        )
    }
}

fn parse_step(line: &str) -> Option<Step> {
    let rest = line.strip_prefix("STEP ")?;
    if let Some((name, message)) = rest.split_once(" FAILED: ") {
        return Some(Step {
            name: name.to_string(),
            failure: Some(message.to_string()),
        });
    }
    let name = match rest.rfind(" ok") {
        Some(i) if rest[i + 3..].is_empty() || rest[i + 3..].starts_with(" (") => &rest[..i],
        _ => return None,
    };
    Some(Step {
        name: name.to_string(),
        failure: None,
    })
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A private directory under the system temp dir for one run; removed on drop unless
/// screenshots were left in it.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create() -> Result<RunDir> {
        let path = std::env::temp_dir().join(format!("serversync-e2e.{}", uuid::Uuid::new_v4()));
        util::mkdir(&path, 0o700)?;
        Ok(RunDir { path })
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.path.join("tmp"));
        let _ = fs::remove_file(self.path.join("stdout.log"));
        let _ = fs::remove_file(self.path.join("stderr.log"));
        let shots = self.path.join("screenshots");
        let _ = fs::remove_dir(&shots); // only if empty
        if !shots.exists() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The running script: waited for with a bound; on drop (a panic, an early return) its
/// process group and any browser it started are killed.
struct ScriptGuard {
    child: Child,
    /// The run directory: it appears in the browser's command line (`--user-data-dir`).
    marker: String,
    done: bool,
}

impl ScriptGuard {
    /// Waits up to `timeout`; then SIGTERM to the group, SIGKILL after 5 s.
    fn wait(&mut self, timeout: Duration) -> Result<(ExitStatus, bool)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.done = true;
                return Ok((status, false));
            }
            if Instant::now() >= deadline {
                break;
            }
            sleep(Duration::from_millis(50));
        }
        let pgid = Pid::from_raw(self.child.id() as i32);
        let _ = killpg(pgid, Signal::SIGTERM);
        let grace = Instant::now() + Duration::from_secs(5);
        while Instant::now() < grace {
            if let Some(status) = self.child.try_wait()? {
                self.done = true;
                return Ok((status, true));
            }
            sleep(Duration::from_millis(50));
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        let status = self.child.wait()?;
        self.done = true;
        Ok((status, true))
    }

    /// Kills what is left: the script's process group and every browser session whose
    /// command line names this run's directory.
    fn cleanup(&mut self) {
        if !self.done {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
            self.done = true;
        }
        for pid in processes_naming(&self.marker) {
            // Playwright starts the browser detached: it leads its own session.
            let sid = nix::unistd::getsid(Some(Pid::from_raw(pid))).map(Pid::as_raw);
            util::signal(pid, Signal::SIGKILL);
            if let Ok(sid) = sid
                && sid > 1
                && Some(sid) != own_sid()
                && !session_members(sid).is_empty()
            {
                util::reap_session(sid, Duration::ZERO);
            }
            util::wait_gone(pid, Duration::from_secs(5));
        }
    }
}

impl Drop for ScriptGuard {
    fn drop(&mut self) {
        self.cleanup();
    }
}

fn own_sid() -> Option<i32> {
    nix::unistd::getsid(None).ok().map(Pid::as_raw)
}

/// Live processes whose command line contains `needle`.
fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && util::pid_alive(*pid) && util::cmdline_contains(*pid, needle))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_step_lines() {
        assert_eq!(
            parse_step("STEP open form ok (12 ms)"),
            Some(Step {
                name: "open form".into(),
                failure: None
            })
        );
        assert_eq!(
            parse_step("STEP fill ok"),
            Some(Step {
                name: "fill".into(),
                failure: None
            })
        );
        assert_eq!(
            parse_step("STEP assert greeting FAILED: expected #out to contain \"x\""),
            Some(Step {
                name: "assert greeting".into(),
                failure: Some("expected #out to contain \"x\"".into())
            })
        );
        assert_eq!(parse_step("SCREENSHOT /tmp/a.png"), None);
        assert_eq!(parse_step("STEP broken okay"), None);
    }
}
