//! Scale out: the same ingest spread over 20 mailboxes, read by 1, 2 and 4 `serversync serve`
//! processes sharing one PostgreSQL (the engine's leases divide the mailboxes among them), and
//! the takeover when one of two processes is killed (`kill -9`) in the middle of the ingest.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serversync_model::MailboxId;
use serversync_model::crm::EmailActivity;

use crate::procstat::{children_cpu, rss_kb};
use crate::setup::{Serve, World, pg_database, wait_until};

/// Mailboxes the messages are spread over.
pub const MAILBOXES: usize = 20;
/// Process counts measured.
pub const PROCESSES: [usize; 3] = [1, 2, 4];
/// The engine settings every process runs with (the defaults, written out so the report can
/// name them).
const LEASE_TTL_S: u64 = 30;
const TICK_MS: u64 = 5000;

/// The scale-out accounts: `o00@…` to `o19@…`.
pub fn account(i: usize) -> String {
    format!("o{i:02}@{}", serversync_testkit::DOMAIN)
}

/// The tag of mailbox `i`'s generated messages (their Message-IDs differ per mailbox, so each
/// message is one activity).
pub fn tag(i: usize) -> String {
    format!("scaleout{i:02}")
}

pub struct Row {
    pub processes: usize,
    pub wall: Duration,
    /// All processes' CPU time together.
    pub cpu: f64,
    /// The largest peak RSS of one process.
    pub peak_rss_kb: u64,
}

pub struct Takeover {
    /// Mailboxes whose lease the killed process held when it was killed.
    pub held: usize,
    /// From the kill until the survivor held every one of them.
    pub takeover: Duration,
    /// Until the whole ingest was done.
    pub done: Duration,
    pub activities: u64,
    pub items: u64,
}

pub struct ScaleOut {
    pub messages: usize,
    pub bytes: u64,
    pub rows: Vec<Row>,
    pub takeover: Takeover,
}

/// Mailboxes on a fresh database, one per account, incoming only (queue mailboxes: every
/// message is tracked).
async fn world(
    admin_url: &str,
    name: &str,
    imaps: u16,
    password: &str,
) -> Result<(World, Vec<MailboxId>)> {
    let url = pg_database(admin_url, name)?;
    let world = World::new(&url).await?;
    let profile = world.profile(imaps, None).await?;
    let mut ids = Vec::new();
    for i in 0..MAILBOXES {
        ids.push(
            world
                .mailbox(&profile, &account(i), password, true, false)
                .await?,
        );
    }
    Ok((world, ids))
}

fn config() -> String {
    format!("[engine]\nlease_ttl_seconds = {LEASE_TTL_S}\ntick_ms = {TICK_MS}\n")
}

async fn start(bin: &Path, dir: &Path, world: &World, ca: &Path, n: usize) -> Result<Vec<Serve>> {
    let mut procs = Vec::new();
    for k in 0..n {
        let d = dir.join(format!("p{k}"));
        std::fs::create_dir_all(&d)?;
        procs.push(Serve::start_with(bin, &d, world, ca, &config()).await?);
    }
    Ok(procs)
}

async fn counts(world: &World, ids: &[MailboxId]) -> Result<(u64, u64)> {
    let activities = world
        .store
        .count_where::<EmailActivity>(Some(world.org_id()), &[])
        .await?;
    let mut items = 0;
    for id in ids {
        items += world
            .store
            .count_items(*id)
            .await?
            .iter()
            .map(|(_, n)| *n as u64)
            .sum::<u64>();
    }
    Ok((activities, items))
}

/// Every message stored once and tracked as one activity.
async fn wait_done(world: &World, ids: &[MailboxId], messages: usize) -> Result<()> {
    wait_until(
        Duration::from_secs(1800),
        Duration::from_millis(100),
        "the scale-out ingest",
        || async {
            let (activities, items) = counts(world, ids).await?;
            ensure!(
                activities <= messages as u64 && items <= messages as u64,
                "{activities} activities and {items} items for {messages} messages: duplicates"
            );
            Ok(activities == messages as u64
                && items == messages as u64
                && world.store.orgs_with_untracked_items().await?.is_empty())
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    dir: &Path,
    admin_url: &str,
    imaps: u16,
    password: &str,
    ca: &Path,
    messages: usize,
    bytes: u64,
) -> Result<ScaleOut> {
    let mut rows = Vec::new();
    for n in PROCESSES {
        eprintln!("bench: scale-out, {n} serve process(es)");
        let (world, ids) = world(
            admin_url,
            &format!("serversync_bench_scaleout_{n}"),
            imaps,
            password,
        )
        .await?;
        let cpu0 = children_cpu();
        let t = Instant::now();
        let procs = start(bin, &dir.join(format!("n{n}")), &world, ca, n).await?;
        wait_done(&world, &ids, messages).await?;
        let wall = t.elapsed();
        let mut peak_rss_kb = 0;
        for p in procs {
            let u = p.proc.stop(wall)?;
            peak_rss_kb = peak_rss_kb.max(u.peak_rss_kb);
        }
        rows.push(Row {
            processes: n,
            wall,
            cpu: children_cpu() - cpu0,
            peak_rss_kb,
        });
        world.store.close().await;
    }

    eprintln!("bench: scale-out, takeover after kill -9");
    let (world, ids) = world(admin_url, "serversync_bench_takeover", imaps, password).await?;
    let t = Instant::now();
    let mut procs = start(bin, &dir.join("takeover"), &world, ca, 2).await?;
    // Kill one in the middle of the ingest.
    wait_until(
        Duration::from_secs(1800),
        Duration::from_millis(50),
        "a third of the takeover ingest",
        || async { Ok(counts(&world, &ids).await?.0 >= (messages / 3) as u64) },
    )
    .await?;
    let victim = procs.pop().context("two processes")?;
    let survivor = procs.pop().context("two processes")?;
    let (victim_pid, survivor_pid) = (victim.proc.pid(), survivor.proc.pid());
    let owned_by = |owner: &str, pid: u32| owner.contains(&format!("-{pid}-"));
    // The mailboxes' leases are held for as long as their mailbox is synchronized (the
    // tracker's only while it has work, so it is not counted).
    let resources: Vec<String> = ids.iter().map(|id| format!("mailbox:{id}")).collect();
    let now = chrono::Utc::now();
    let mut held = Vec::new();
    for r in &resources {
        if let Some(l) = world.store.get_lease(r).await?
            && owned_by(&l.owner, victim_pid)
            && l.until > now
        {
            held.push(r.clone());
        }
    }
    ensure!(
        rss_kb(victim_pid).is_some(),
        "the process to kill has already exited"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim_pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let killed = Instant::now();
    drop(victim);
    wait_until(
        Duration::from_secs(600),
        Duration::from_millis(50),
        "the survivor taking over the killed process's leases",
        || async {
            for r in &held {
                match world.store.get_lease(r).await? {
                    Some(l) if owned_by(&l.owner, survivor_pid) => {}
                    _ => return Ok(false),
                }
            }
            Ok(true)
        },
    )
    .await?;
    let takeover = killed.elapsed();
    wait_done(&world, &ids, messages).await?;
    let done = t.elapsed();
    let (activities, items) = counts(&world, &ids).await?;
    survivor.proc.stop(done)?;
    world.store.close().await;
    Ok(ScaleOut {
        messages,
        bytes,
        rows,
        takeover: Takeover {
            held: held.len(),
            takeover,
            done,
            activities,
            items,
        },
    })
}

impl ScaleOut {
    /// The takeover time and its bound (the lease TTL plus one tick).
    pub fn takeover_against_bound(&self) -> (Duration, Duration) {
        (
            self.takeover.takeover,
            Duration::from_secs(LEASE_TTL_S) + Duration::from_millis(TICK_MS),
        )
    }

    pub fn render(&self, o: &mut String) {
        let mb = self.bytes as f64 / 1e6;
        let _ = writeln!(
            o,
            "\n## Scale out: {m} messages over {MAILBOXES} mailboxes, 1, 2 and 4 serve processes on one PostgreSQL\n\n\
             The ingest's messages ({mb:.1} MB) spread over {MAILBOXES} Dovecot accounts, {per} \
             each, read over IMAP by {MAILBOXES} approved queue mailboxes (every message tracked \
             as an activity) of one organization; the `serve` processes share one PostgreSQL \
             database and divide the mailboxes among themselves by the engine's leases \
             (lease TTL {LEASE_TTL_S} s, tick {tick} s, the defaults). Each row starts from a fresh \
             database; timed from the start of the first process until every message is stored \
             and tracked. CPU is all processes' together, peak RSS the largest of one process.\n\n\
             | serve processes | seconds | messages/s | speed-up | CPU s | peak RSS MB (one process) |\n\
             |---:|---:|---:|---:|---:|---:|",
            m = self.messages,
            per = self.messages / MAILBOXES,
            tick = TICK_MS as f64 / 1000.0,
        );
        let base = self.rows.first().map(|r| r.wall.as_secs_f64());
        for r in &self.rows {
            let s = r.wall.as_secs_f64();
            let _ = writeln!(
                o,
                "| {} | {s:.2} | {:.0} | {:.2}× | {:.2} | {:.1} |",
                r.processes,
                self.messages as f64 / s,
                base.map_or(1.0, |b| b / s),
                r.cpu,
                r.peak_rss_kb as f64 / 1024.0
            );
        }
        let t = &self.takeover;
        let (_, bound) = self.takeover_against_bound();
        let _ = writeln!(
            o,
            "\nTakeover: two processes on a fresh database; when a third of the messages were \
             tracked, one of them was killed with `kill -9`. It held the leases of {held} \
             mailboxes then; the survivor held all of them \
             {tk:.1} s after the kill (bound: lease TTL + one tick = {b:.0} s: {met}). The ingest \
             finished {d:.1} s after the start with {a} activities and {i} stored items for \
             {m} messages: {verdict}.",
            held = t.held,
            tk = t.takeover.as_secs_f64(),
            b = bound.as_secs_f64(),
            met = if t.takeover <= bound {
                "met"
            } else {
                "**missed**"
            },
            d = t.done.as_secs_f64(),
            a = t.activities,
            i = t.items,
            m = self.messages,
            verdict = if t.activities == self.messages as u64 && t.items == self.messages as u64 {
                "nothing lost, nothing duplicated"
            } else {
                "**counts differ**"
            },
        );
    }
}
