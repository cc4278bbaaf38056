//! Exchange Server over EWS: the ingest and the arrival latency of the IMAP benchmarks, against
//! the in-process Exchange test double (`serversync_testkit::ews`): Exchange 2019 as
//! serversync sees it, over HTTPS on 127.0.0.1 with NTLM (channel binding required), the
//! service account signing in with impersonation. Not a real Exchange: the double answers
//! from memory, so the figures are serversync's own cost, not Exchange's.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serversync_testkit::TlsFiles;
use serversync_testkit::ews::{AuthScheme, ChannelBinding, EwsConfig, EwsDouble};

use crate::ingest::Row;
use crate::latency::{Feed, Latency, await_subject, probes};
use crate::procstat::self_cpu;
use crate::setup::{Serve, World, wait_until};

/// The service account (with the ApplicationImpersonation role) serversync signs in as.
pub const SERVICE: &str = "CONTOSO\\svc-sync";
pub const SERVICE_PASSWORD: &str = "Sync-Pa55word!";

/// A double offering only NTLM with Extended Protection, with `mailboxes` in it.
pub async fn double(tls: &TlsFiles, mailboxes: &[&str]) -> Result<EwsDouble> {
    let double = EwsDouble::start(
        tls,
        EwsConfig {
            auth: vec![AuthScheme::Ntlm {
                channel_binding: ChannelBinding::Required,
            }],
            ..Default::default()
        },
    )
    .await?;
    double.add_account(SERVICE, SERVICE_PASSWORD, true);
    for m in mailboxes {
        double.add_mailbox(m, None);
    }
    Ok(double)
}

/// Delivers the benchmark's messages (the same as seeded into Dovecot for the IMAP ingest)
/// into `mailbox`'s Inbox, unread; returns their total size in bytes.
pub fn seed(double: &EwsDouble, mailbox: &str, count: usize, tag: &str) -> u64 {
    let mut total = 0u64;
    for i in 0..count {
        let raw = crate::mailgen::message(7, i, mailbox, tag);
        total += raw.len() as u64;
        double.deliver(mailbox, "inbox", &raw, false);
    }
    total
}

/// serversync from empty state on the double's mailbox: `serve` on a fresh store with one
/// enabled Exchange mailbox; timed like the IMAP row, from the process start until every
/// message is stored and tracked as an email activity.
#[allow(clippy::too_many_arguments)]
pub async fn ingest_row(
    bin: &Path,
    double: &EwsDouble,
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
    let profile = world
        .exchange_profile(&double.ews_url(), double.port(), SERVICE, SERVICE_PASSWORD)
        .await?;
    let mailbox = world
        .mailbox(&profile, address, SERVICE_PASSWORD, true, false)
        .await?;
    let own_cpu = self_cpu();
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let started = serve.proc.started;
    let n = messages as i64;
    wait_until(
        Duration::from_secs(1800),
        Duration::from_millis(50),
        "serversync ingest over EWS",
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
        "serversync stored {stored} of {n} messages over EWS"
    );
    let inbox = double.items(address, "inbox");
    ensure!(
        inbox.len() == messages && inbox.iter().all(|i| !i.is_read),
        "the double's Inbox changed: {} items, {} read",
        inbox.len(),
        inbox.iter().filter(|i| i.is_read).count()
    );
    world.store.close().await;
    Ok(Row {
        tool: "serversync".into(),
        how: format!(
            "EWS over HTTPS (NTLM, impersonation) from the Exchange test double → parsed, \
             parties resolved, stored and tracked as activities in {backend}"
        ),
        messages,
        bytes,
        usage,
        ews: true,
        graph: false,
        note: Some(format!(
            "serversync over EWS on {backend}: the Exchange test double runs inside the \
             benchmark process, on the same two cores; that process used {own_cpu:.2} CPU s \
             during this run (the double's answers, TLS and NTLM, plus the benchmark's \
             progress polling of the store), not counted in the row's CPU s."
        )),
    })
}

/// The probe message: a small plain-text email to `to` with `subject`.
fn probe(to: &str, subject: &str, n: usize) -> Vec<u8> {
    format!(
        "From: Ann Sender <ann@contoso.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
         Message-ID: <ews-probe-{n}-{}@contoso.test>\r\nDate: {}\r\n\r\n\
         Latency probe {subject}.\r\n",
        std::process::id(),
        chrono::Utc::now().to_rfc2822()
    )
    .into_bytes()
}

/// Arrival latency over EWS: the mailbox synchronized and `serve` waiting on streaming
/// notifications (`GetStreamingEvents`); `count` messages delivered into the double's Inbox
/// one every 100 ms, each timed from just before its delivery until its email activity is in
/// the change feed, as for IMAP IDLE.
pub async fn latency(
    bin: &Path,
    dir: &Path,
    url: &str,
    tls: &TlsFiles,
    address: &str,
    count: usize,
) -> Result<Latency> {
    std::fs::create_dir_all(dir)?;
    let interval = Duration::from_millis(100);
    let poll = Duration::from_millis(10);
    let double = double(tls, &[address]).await?;
    let world = World::new(url).await?;
    let profile = world
        .exchange_profile(&double.ews_url(), double.port(), SERVICE, SERVICE_PASSWORD)
        .await?;
    world
        .mailbox(&profile, address, SERVICE_PASSWORD, true, false)
        .await?;
    let serve = Serve::start(bin, dir, &world, &tls.ca_cert).await?;
    let mut feed = Feed::new(&serve, &world);
    let mut n = 0;
    let mut send = async |subject: &str| -> Result<()> {
        n += 1;
        double.deliver(address, "inbox", &probe(address, subject, n), false);
        Ok(())
    };

    // The first message proves the mailbox is synchronizing; then wait for the stream.
    send("latency warm-up").await?;
    await_subject(&mut feed, "latency warm-up", Duration::from_secs(60), poll).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !double
        .requests()
        .iter()
        .any(|r| r.operation == "GetStreamingEvents")
    {
        if Instant::now() > deadline {
            bail!(
                "serversync did not open a GetStreamingEvents stream within 60 s (log: {})",
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
