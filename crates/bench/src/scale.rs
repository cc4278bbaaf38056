//! Scale: thousands of mailboxes enabled through "test & enable" and then idling in IMAP IDLE
//! on one `serversync serve`: time to enable all, memory per idle mailbox, CPU at idle.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::procstat::{cpu_seconds, rss_kb};
use crate::setup::{Serve, World, api_json, wait_until};

pub struct Scale {
    pub mailboxes: usize,
    pub baseline_rss_kb: u64,
    pub idle_rss_kb: u64,
    pub enable_job: Duration,
    pub all_idle: Duration,
    /// Share of one core used while every mailbox idles.
    pub idle_cpu: f64,
    pub idle_window: Duration,
}

impl Scale {
    pub fn kb_per_mailbox(&self) -> f64 {
        (self.idle_rss_kb as f64 - self.baseline_rss_kb as f64) / self.mailboxes as f64
    }
}

/// The scale accounts: `s0000@…` to `s{n-1}@…`.
pub fn account(i: usize) -> String {
    format!("s{i:04}@{}", serversync_testkit::DOMAIN)
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    dir: &Path,
    url: &str,
    imaps: u16,
    password: &str,
    ca: &Path,
    count: usize,
) -> Result<Scale> {
    std::fs::create_dir_all(dir)?;
    let world = World::new(url).await?;
    let profile = world.profile(imaps, None).await?;
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        ids.push(
            world
                .mailbox(&profile, &account(i), password, false, false)
                .await?,
        );
    }
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let pid = serve.proc.pid();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (baseline_rss_kb, _) = rss_kb(pid).context("reading serve's memory")?;

    // "Test & enable" every mailbox of the profile, as an administrator does.
    let client = reqwest::Client::new();
    let org = world.org_id();
    let t = Instant::now();
    let job = api_json(
        client.post(serve.url(&format!(
            "/api/v1/orgs/{org}/profiles/{}/test-enable",
            profile.id
        ))),
        &world.token,
    )
    .await?;
    let job_url = serve.url(&format!(
        "/api/v1/orgs/{org}/jobs/{}",
        job["id"].as_str().context("the job has no id")?
    ));
    let deadline = Instant::now() + Duration::from_secs(1800);
    let last: Value = loop {
        let job = api_json(client.get(&job_url), &world.token).await?;
        if job["finished_at"].is_string() {
            break job;
        }
        ensure!(
            Instant::now() < deadline,
            "test & enable did not finish within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let enable_job = t.elapsed();
    eprintln!("bench: test & enable finished in {enable_job:?}");
    ensure!(
        last["status"] == "succeeded",
        "test & enable ended {}: {}",
        last["status"],
        last["results"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["ok"] == false))
            .unwrap_or(&Value::Null)
    );
    // Every mailbox synchronized once and holding its lease (then in IDLE).
    wait_until(
        Duration::from_secs(1800),
        Duration::from_millis(200),
        "all mailboxes synchronizing",
        || async {
            let live = world.store.count_live_leases("mailbox:").await? as usize;
            let synced = world
                .store
                .list_all::<serversync_model::mailbox::Mailbox>(Some(org), &[])
                .await?
                .iter()
                .filter(|m| m.value.telemetry.last_successful_sync.is_some())
                .count();
            Ok(live >= count && synced >= count)
        },
    )
    .await?;
    let all_idle = t.elapsed();
    eprintln!("bench: every mailbox synchronized and held after {all_idle:?}");

    // Let start-up garbage settle, then watch the idle process.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let idle_window = Duration::from_secs(60);
    let cpu0 = cpu_seconds(pid).context("reading serve's CPU time")?;
    tokio::time::sleep(idle_window).await;
    let cpu1 = cpu_seconds(pid).context("reading serve's CPU time")?;
    let (idle_rss_kb, _) = rss_kb(pid).context("reading serve's memory")?;
    let live = world.store.count_live_leases("mailbox:").await? as usize;
    ensure!(
        live >= count,
        "only {live} of {count} mailboxes were still held after the idle window"
    );
    serve.proc.stop(Duration::ZERO)?;
    world.store.close().await;
    Ok(Scale {
        mailboxes: count,
        baseline_rss_kb,
        idle_rss_kb,
        enable_job,
        all_idle,
        idle_cpu: (cpu1 - cpu0) / idle_window.as_secs_f64(),
        idle_window,
    })
}
