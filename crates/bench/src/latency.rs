//! Arrival latency: a message submitted over SMTP to Postfix (delivered by LMTP to Dovecot)
//! until its email activity is visible through the API, while the mailbox is in IMAP IDLE.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncWriteExt, BufReader};

use crate::outgoing::reply;
use crate::setup::{Serve, World, api_json};

/// Latencies in milliseconds, sorted.
pub struct Latency {
    pub samples: Vec<f64>,
    pub interval: Duration,
    pub poll: Duration,
    /// The floor, for IMAP: the same messages timed until a bare IDLE client on its own
    /// connection to the same Inbox was told of them (`* N EXISTS`), in milliseconds, sorted.
    pub floor: Option<Vec<f64>>,
}

/// `p` in 0..=100 of the sorted samples (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The API's change feed of the organization, read from where the last call stopped.
pub struct Feed {
    client: reqwest::Client,
    url: String,
    token: String,
    after: i64,
}

impl Feed {
    /// The change feed of `world`'s organization through `serve`'s API, from the start.
    pub fn new(serve: &Serve, world: &World) -> Feed {
        Feed {
            client: reqwest::Client::new(),
            url: serve.url(&format!("/api/v1/orgs/{}/changes", world.org_id())),
            token: world.token.clone(),
            after: 0,
        }
    }

    /// Subjects of email activities created since the last call.
    pub async fn new_subjects(&mut self) -> Result<Vec<String>> {
        let page = api_json(
            self.client
                .get(&self.url)
                .query(&[("after", self.after.to_string()), ("limit", "500".into())]),
            &self.token,
        )
        .await?;
        self.after = page["next"]
            .as_i64()
            .context("the change page has no next")?;
        Ok(page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["op"] == "created")
            .filter_map(|c| c["record"]["subject"].as_str().map(str::to_owned))
            .collect())
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    bin: &Path,
    dir: &Path,
    url: &str,
    imaps: u16,
    smtp: u16,
    user: &str,
    password: &str,
    ca: &Path,
    count: usize,
) -> Result<Latency> {
    std::fs::create_dir_all(dir)?;
    let interval = Duration::from_millis(100);
    let poll = Duration::from_millis(10);
    let world = World::new(url).await?;
    let profile = world.profile(imaps, None).await?;
    world.mailbox(&profile, user, password, true, false).await?;
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let mut feed = Feed::new(&serve, &world);
    // One SMTP connection to Postfix (TCP_NODELAY), kept for every probe.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", smtp)).await?;
    tcp.set_nodelay(true)?;
    let mut smtp = BufReader::new(tcp);
    reply(&mut smtp, "220").await?;
    smtp.get_mut()
        .write_all(b"EHLO bench.localhost\r\n")
        .await?;
    reply(&mut smtp, "250").await?;
    let mut n = 0;
    let mut send = async |subject: &str| -> Result<()> {
        n += 1;
        for (cmd, want) in [
            ("MAIL FROM:<ann@contoso.test>\r\n".to_owned(), "250"),
            (format!("RCPT TO:<{user}>\r\n"), "250"),
            ("DATA\r\n".to_owned(), "354"),
            (
                format!(
                    "From: Ann Sender <ann@contoso.test>\r\nTo: <{user}>\r\nSubject: {subject}\r\n\
                     Message-ID: <probe-{n}-{}@contoso.test>\r\nDate: {}\r\n\r\n\
                     Latency probe {subject}.\r\n.\r\n",
                    std::process::id(),
                    chrono::Utc::now().to_rfc2822()
                ),
                "250",
            ),
        ] {
            smtp.get_mut().write_all(cmd.as_bytes()).await?;
            reply(&mut smtp, want).await?;
        }
        Ok(())
    };

    // The first message proves the mailbox is synchronizing and in IDLE before timing.
    send("latency warm-up").await?;
    await_subject(&mut feed, "latency warm-up", Duration::from_secs(60), poll).await?;
    let idle = BareIdle::start(imaps, user, password, ca).await?;
    let (samples, sent) = probes_timed(&mut feed, send, count, interval, poll).await?;
    // The floor is a comparison: without it the figures still stand.
    let floor = idle
        .finish(&sent)
        .await
        .map_err(|e| eprintln!("bench: no IDLE floor: {e:#}"))
        .ok();
    serve.proc.stop(Duration::ZERO)?;
    world.store.close().await;
    Ok(Latency {
        samples,
        interval,
        poll,
        floor,
    })
}

/// A bare IMAP client in IDLE on the Inbox, noting when the server announces each new
/// message: Dovecot's own notification delay, the floor for serversync's IDLE path.
struct BareIdle {
    task: tokio::task::JoinHandle<Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
    /// When each new message was announced, in order.
    seen: std::sync::Arc<std::sync::Mutex<Vec<Instant>>>,
}

impl BareIdle {
    async fn start(port: u16, user: &str, password: &str, ca: &Path) -> Result<BareIdle> {
        use tokio::io::AsyncBufReadExt;
        let tls = crate::ingest::tls_connect(port, ca).await?;
        let mut s = BufReader::new(tls);
        let mut line = String::new();
        let mut exists = 0u64;
        for (tag, cmd) in [
            ("a", format!("LOGIN \"{user}\" \"{password}\"")),
            ("b", "EXAMINE INBOX".to_owned()),
        ] {
            s.get_mut()
                .write_all(format!("{tag} {cmd}\r\n").as_bytes())
                .await?;
            loop {
                line.clear();
                ensure!(
                    s.read_line(&mut line).await? > 0,
                    "IMAP closed during {tag}"
                );
                if let Some(n) = exists_count(&line) {
                    exists = n;
                }
                if line.starts_with(&format!("{tag} ")) {
                    ensure!(line.starts_with(&format!("{tag} OK")), "{cmd}: {line}");
                    break;
                }
            }
        }
        s.get_mut().write_all(b"c IDLE\r\n").await?;
        line.clear();
        s.read_line(&mut line).await?;
        ensure!(line.starts_with('+'), "IDLE: {line}");
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let noted = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                line.clear();
                tokio::select! {
                    r = s.read_line(&mut line) => {
                        ensure!(r? > 0, "the bare IDLE connection closed");
                        if let Some(n) = exists_count(&line) {
                            let now = Instant::now();
                            let mut seen = noted.lock().expect("not poisoned");
                            while exists < n {
                                seen.push(now);
                                exists += 1;
                            }
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            let _ = s.get_mut().write_all(b"DONE\r\nd LOGOUT\r\n").await;
            Ok(())
        });
        Ok(BareIdle { task, stop, seen })
    }

    /// The floor of each probe sent at `sent[i]`: the `i`-th message announced after the
    /// start (matched in arrival order), in milliseconds, sorted. Waits (at most 30 s) for
    /// announcements still under way.
    async fn finish(self, sent: &[Instant]) -> Result<Vec<f64>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let count = || self.seen.lock().expect("not poisoned").len();
        while count() < sent.len() && Instant::now() < deadline && !self.task.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.stop.send(());
        self.task.await??;
        let seen = self.seen.lock().expect("not poisoned").clone();
        ensure!(
            seen.len() >= sent.len(),
            "the bare IDLE client was told of {} of {} messages",
            seen.len(),
            sent.len()
        );
        let mut floor: Vec<f64> = sent
            .iter()
            .zip(&seen)
            .map(|(s, e)| e.saturating_duration_since(*s).as_secs_f64() * 1000.0)
            .collect();
        floor.sort_by(f64::total_cmp);
        Ok(floor)
    }
}

/// N of an untagged `* N EXISTS`.
fn exists_count(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("* ")?;
    let (n, what) = rest.split_once(' ')?;
    what.trim_end()
        .eq_ignore_ascii_case("EXISTS")
        .then(|| n.parse().ok())?
}

/// Waits until an email activity with `subject` appears in the change feed.
pub async fn await_subject(
    feed: &mut Feed,
    subject: &str,
    limit: Duration,
    poll: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if feed.new_subjects().await?.iter().any(|s| s == subject) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the message {subject:?} did not become an activity within {limit:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// Sends `count` probes (subjects `latency probe I`) one every `interval` with `send`, and
/// times each from just before its `send` until its email activity appears in the change
/// feed (polled every `poll`). Returns the latencies in milliseconds, sorted.
pub async fn probes(
    feed: &mut Feed,
    send: impl AsyncFnMut(&str) -> Result<()>,
    count: usize,
    interval: Duration,
    poll: Duration,
) -> Result<Vec<f64>> {
    Ok(probes_timed(feed, send, count, interval, poll).await?.0)
}

/// [`probes`], also returning when each probe was sent, in order.
pub async fn probes_timed(
    feed: &mut Feed,
    mut send: impl AsyncFnMut(&str) -> Result<()>,
    count: usize,
    interval: Duration,
    poll: Duration,
) -> Result<(Vec<f64>, Vec<Instant>)> {
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let mut seen: HashMap<String, Duration> = HashMap::new();
    let mut next_send = Instant::now();
    let mut i = 0;
    let deadline = Instant::now() + interval * count as u32 + Duration::from_secs(120);
    while seen.len() < count {
        if i < count && Instant::now() >= next_send {
            let subject = format!("latency probe {i}");
            let t = Instant::now();
            send(&subject).await?;
            sent.insert(subject, t);
            i += 1;
            next_send += interval;
        }
        for s in feed.new_subjects().await? {
            if let Some(t) = sent.get(&s) {
                seen.entry(s).or_insert_with(|| t.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "only {} of {count} probes became activities in time",
                seen.len()
            );
        }
        tokio::time::sleep(poll).await;
    }
    let mut samples: Vec<f64> = (0..count)
        .map(|i| seen[&format!("latency probe {i}")].as_secs_f64() * 1000.0)
        .collect();
    ensure!(samples.len() == count);
    samples.sort_by(f64::total_cmp);
    let sent = (0..count)
        .map(|i| sent[&format!("latency probe {i}")])
        .collect();
    Ok((samples, sent))
}
