//! Exchange Online over Microsoft Graph: the ingest and the arrival latency of the IMAP
//! benchmarks, against the in-process Graph test double (`serversync_testkit::graph`: Graph
//! v1.0 and Entra ID's token endpoint over HTTPS on 127.0.0.1), serversync signing in with
//! server-to-server authentication (client credentials). Not a real Exchange Online: the
//! double answers from memory, so the figures are serversync's own cost, not Microsoft's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use serversync_testkit::TlsFiles;
use serversync_testkit::graph::{GraphConfig, GraphDouble};

use crate::ingest::Row;
use crate::latency::{Feed, Latency, await_subject, probes};
use crate::procstat::self_cpu;
use crate::setup::{Serve, World, wait_until};

pub const TENANT: &str = "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e";
pub const APP: &str = "0a1b2c3d-1111-4222-8333-944455566677";
const SECRET: &str = "kQ8~bench-app-secret";

/// A double with the tenant, the app (Mail.ReadWrite, Mail.Send, admin consent) and
/// `mailboxes`; default paging and throttling limits, no schema checking (it costs the
/// benchmark process CPU and is the tests' job).
pub async fn double(tls: &TlsFiles, mailboxes: &[&str]) -> Result<GraphDouble> {
    let double = GraphDouble::start(tls, GraphConfig::default()).await?;
    double.add_tenant(TENANT, "example.test");
    double.add_app(TENANT, APP, SECRET, &["Mail.ReadWrite", "Mail.Send"]);
    for m in mailboxes {
        double.add_mailbox(TENANT, m);
    }
    Ok(double)
}

/// `serve`'s configuration pointing Exchange Online at the double.
fn config(double: &GraphDouble) -> String {
    format!(
        "[exchange]\ngraph_url = \"{}\"\nlogin_url = \"{}\"\n",
        double.graph_url(),
        double.login_url()
    )
}

/// Delivers the benchmark's messages (the same as seeded into Dovecot for the IMAP ingest)
/// into `mailbox`'s Inbox, unread; returns their total size in bytes.
pub fn seed(double: &GraphDouble, mailbox: &str, count: usize, tag: &str) -> u64 {
    let mut total = 0u64;
    for i in 0..count {
        let raw = crate::mailgen::message(7, i, mailbox, tag);
        total += raw.len() as u64;
        double.deliver(mailbox, "inbox", &raw, false);
    }
    total
}

/// serversync from empty state on the double's mailbox: `serve` on a fresh store with one
/// enabled Exchange Online mailbox; timed like the IMAP row, from the process start until
/// every message is stored and tracked as an email activity.
#[allow(clippy::too_many_arguments)]
pub async fn ingest_row(
    bin: &Path,
    double: &GraphDouble,
    address: &str,
    messages: usize,
    bytes: u64,
    dir: &Path,
    url: &str,
    backend: &str,
    ca: &Path,
) -> Result<Row> {
    std::fs::create_dir_all(dir)?;
    let world = World::new(url).await?;
    let profile = world.exchange_online_profile(TENANT, APP, SECRET).await?;
    let mailbox = world
        .mailbox(&profile, address, SECRET, true, false)
        .await?;
    let own_cpu = self_cpu();
    let serve = Serve::start_with(bin, dir, &world, ca, &config(double)).await?;
    let started = serve.proc.started;
    let n = messages as i64;
    wait_until(
        Duration::from_secs(1800),
        Duration::from_millis(50),
        "serversync ingest over Graph",
        || async {
            let (stored, tracked) = world.progress(mailbox).await?;
            Ok(stored >= n && tracked)
        },
    )
    .await?;
    let wall = started.elapsed();
    let own_cpu = self_cpu() - own_cpu;
    let usage = serve.proc.stop(wall)?;
    let (stored, _) = world.progress(mailbox).await?;
    ensure!(
        stored == n,
        "serversync stored {stored} of {n} messages over Graph"
    );
    let inbox = double.messages(address, "inbox");
    ensure!(
        inbox.len() == messages && inbox.iter().all(|i| !i.is_read),
        "the double's Inbox changed: {} messages, {} read",
        inbox.len(),
        inbox.iter().filter(|i| i.is_read).count()
    );
    world.store.close().await;
    Ok(Row {
        tool: "serversync".into(),
        how: format!(
            "Microsoft Graph over HTTPS (client credentials) from the Graph test double: \
             delta, then the messages' MIME ($value, 20 per $batch) → parsed, parties resolved, stored and \
             tracked as activities in {backend}"
        ),
        messages,
        bytes,
        usage,
        ews: false,
        graph: true,
        note: Some(format!(
            "serversync over Graph on {backend}: the Graph test double runs inside the \
             benchmark process, on the same two cores; that process used {own_cpu:.2} CPU s \
             during this run (the double's answers and TLS, plus the benchmark's progress \
             polling of the store), not counted in the row's CPU s."
        )),
    })
}

/// The probe message: a small plain-text email to `to` with `subject`.
fn probe(to: &str, subject: &str, n: usize) -> Vec<u8> {
    format!(
        "From: Ann Sender <ann@example.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Message-ID: <graph-probe-{n}-{}@example.test>\r\nDate: {}\r\n\r\n\
         Latency probe {subject}.\r\n",
        std::process::id(),
        chrono::Utc::now().to_rfc2822()
    )
    .into_bytes()
}

/// Arrival latency over Graph with change notifications: `serve`'s own address is its
/// `[exchange] notification_url`, so the worker subscribes to the Inbox at the double, which
/// posts a notification to `serve` for each new message; the notification wakes the delta
/// query. The mailbox synchronized (and subscribed), `count` messages delivered into the
/// double's Inbox one every `interval`, each timed from just before its delivery until its
/// email activity is in the change feed.
pub async fn latency(
    bin: &Path,
    dir: &Path,
    url: &str,
    tls: &TlsFiles,
    address: &str,
    count: usize,
) -> Result<Latency> {
    std::fs::create_dir_all(dir)?;
    // Not a multiple of the poll period, so deliveries land at spread-out points of it.
    let interval = Duration::from_millis(1_300);
    let poll = Duration::from_millis(10);
    let double = double(tls, &[address]).await?;
    let world = World::new(url).await?;
    let profile = world.exchange_online_profile(TENANT, APP, SECRET).await?;
    world
        .mailbox(&profile, address, SECRET, true, false)
        .await?;
    let config = format!("{}notification_url = \"{{serve_url}}\"\n", config(&double));
    let serve = Serve::start_with(bin, dir, &world, &tls.ca_cert, &config).await?;
    let mut feed = Feed::new(&serve, &world);
    let mut n = 0;
    let mut send = async |subject: &str| -> Result<()> {
        n += 1;
        double.deliver(address, "inbox", &probe(address, subject, n), false);
        Ok(())
    };

    // The first message proves the mailbox is synchronizing (its first delta read).
    send("latency warm-up").await?;
    if let Err(e) = await_subject(&mut feed, "latency warm-up", Duration::from_secs(60), poll).await
    {
        bail!("{e} (log: {})", dir.join("serve.log").display());
    }
    // Timed only once the subscription is live (else a message waits for the delta poll).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while double.subscriptions().is_empty() {
        if std::time::Instant::now() > deadline {
            bail!(
                "no Graph subscription within 60 s (log: {})",
                dir.join("serve.log").display()
            );
        }
        tokio::time::sleep(poll).await;
    }
    let samples = probes(&mut feed, send, count, interval, poll).await?;
    serve.proc.stop(Duration::ZERO)?;
    world.store.close().await;
    Ok(Latency {
        samples,
        interval,
        poll,
        floor: None,
    })
}
