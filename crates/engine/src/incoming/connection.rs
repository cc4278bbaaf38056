//! One mailbox's connections to its incoming server, whatever the protocol (through the
//! [`MailSource`] role): a connection is opened under one of the profile's connection slots,
//! every tracked folder is brought up to date ([`super::folder`]), then the worker either
//! waits on the Inbox for new mail (IMAP IDLE, when the connection may be held) or gives the
//! connection and its slot back and polls again after the polling interval. Extra tracked
//! folders are read every polling interval (and on "sync now"). A dropped connection is
//! re-opened with back-off and jitter ([`super::Reconnect`]).

use super::folder::sync_folder;
use super::{
    ConnSlot, Ctx, Reconnect, Stop, WaitEnd, check, held, may_hold_connection, poll_interval,
    renew, wait,
};
use crate::leases::Kept;
use crate::policy::Failure;
use crate::session::Side;
use serversync_connectors::source::{Change, INBOX};
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::EmailServerProfile;
use serversync_model::{ErrorKind, FailureStep};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// While waiting in IDLE with no other folder to read, the Inbox is read again this often
/// anyway (a safety net for a server whose IDLE missed a notification); the IDLE command is
/// re-issued then, within RFC 2177's 29 minutes.
const IDLE_FULL_ROUND: Duration = Duration::from_secs(28 * 60);

pub(super) async fn session(cx: &Ctx<'_>) -> Result<Stop, Stop> {
    let hold = Box::pin(may_hold_connection(cx)).await?;
    let mut reconnect = Reconnect::default();
    // The start of the last full round: a "sync now" requested after it starts another.
    let mut last_round = chrono::DateTime::<chrono::Utc>::MIN_UTC;
    let mut first = true;
    loop {
        let Some(slot) =
            Box::pin(
                cx.session
                    .slot(cx.store, cx.config, Side::Incoming, &cx.lease.owner),
            )
            .await?
        else {
            // Every connection slot of the profile is in use: wait for one.
            match wait(cx, cx.renew_every(), last_round).await? {
                WaitEnd::Shutdown => return Ok(Stop::Shutdown),
                WaitEnd::Reconfigured => return Ok(Stop::Reconfigured),
                _ => continue,
            }
        };
        let opened = Instant::now();
        let progress = cx.progress.load(Ordering::Relaxed);
        let slot_kept = cx.held.leases.keep(slot.lease());
        let r = connected(cx, &slot, &slot_kept, hold, &mut last_round).await;
        drop(slot_kept);
        Box::pin(slot.release(cx.store)).await;
        // How long the connection counts as having lived: a connection that stored messages
        // before it dropped was a working one (the network blipped mid-sync), so the next
        // one is opened soon instead of backing off as for a server that hangs up at once.
        let lived = if cx.progress.load(Ordering::Relaxed) > progress {
            Reconnect::HEALTHY
        } else {
            opened.elapsed()
        };
        match r {
            Ok(Ended::Stop(stop)) => return Ok(stop),
            Ok(Ended::RoundDone) => {
                first = false;
                reconnect = Reconnect::default();
                match wait(cx, poll_interval(cx), last_round).await? {
                    WaitEnd::Shutdown => return Ok(Stop::Shutdown),
                    WaitEnd::Reconfigured => return Ok(Stop::Reconfigured),
                    WaitEnd::Elapsed | WaitEnd::SyncRequested => {}
                }
            }
            Ok(Ended::Dropped(why)) => {
                first = false;
                let Some(delay) = reconnect.after_drop(lived) else {
                    return Err(Stop::Failed(Failure::coded(
                        "connection_dropped",
                        ErrorKind::Transient,
                        FailureStep::Protocol,
                        format!(
                            "the server keeps closing the connection soon after sign-in ({} times in a row; last: {why})",
                            Reconnect::MAX_QUICK_DROPS + 1
                        ),
                    )));
                };
                tracing::info!(mailbox = %cx.id, reason = %why, delay_ms = delay.as_millis() as u64, "connection closed by the server; reconnecting");
                match wait(cx, delay, last_round).await? {
                    WaitEnd::Shutdown => return Ok(Stop::Shutdown),
                    WaitEnd::Reconfigured => return Ok(Stop::Reconfigured),
                    _ => {}
                }
            }
            // A failure on a connection that had worked is treated like a drop (the network
            // blipped); the first connection's failure goes to the retry policy, naming the step.
            Err(Stop::Failed(p))
                if !first
                    && p.kind == ErrorKind::Transient
                    && matches!(
                        p.step,
                        Some(FailureStep::TcpConnect | FailureStep::Tls | FailureStep::Protocol)
                    ) =>
            {
                let Some(delay) = reconnect.after_drop(lived) else {
                    return Err(Stop::Failed(p));
                };
                tracing::info!(mailbox = %cx.id, error = %p.message, delay_ms = delay.as_millis() as u64, "connection failed; reconnecting");
                if let WaitEnd::Shutdown = wait(cx, delay, last_round).await? {
                    return Ok(Stop::Shutdown);
                }
            }
            Err(stop) => return Err(stop),
        }
    }
}

/// How a connection ended without failing.
enum Ended {
    Stop(Stop),
    /// Polling: a round is done and the connection given back.
    RoundDone,
    /// The server closed the connection.
    Dropped(String),
}

/// The folders synchronized besides the Inbox: the profile's tracked folders (for every
/// mailbox of the profile) and the mailbox's own extra folders, each once, the Inbox never.
pub(crate) fn tracked_folders(m: &Mailbox, p: &EmailServerProfile) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for f in p.advanced.tracked_folders.iter().chain(&m.extra_folders) {
        let f = f.trim();
        if !f.is_empty() && !f.eq_ignore_ascii_case(INBOX) && !out.iter().any(|o| o == f) {
            out.push(f.to_owned());
        }
    }
    out
}

/// One connection: rounds over every tracked folder, then (when the connection may be held)
/// IDLE on the Inbox until something arrives, a full round is due, or the session is woken
/// (shutdown, a lost lease, a change of the mailbox or profile). The leases are renewed by the
/// engine meanwhile, so IDLE is not interrupted for them.
async fn connected(
    cx: &Ctx<'_>,
    slot: &ConnSlot,
    slot_kept: &Kept,
    hold: bool,
    last_round: &mut chrono::DateTime<chrono::Utc>,
) -> Result<Ended, Stop> {
    // The one-off steps run boxed: an idle session's future then holds only what waiting
    // needs (thousands of sessions idle at once), not the largest step's state.
    let mut source = Box::pin(cx.session.source(cx.store))
        .await?
        .map_err(Stop::Failed)?;
    if cx.session.profile.auto_discover
        && let Some(url) = source.endpoint()
    {
        Box::pin(super::remember_endpoint(cx.store, cx.id, &url)).await?;
    }
    let watch = hold && source.can_watch();
    let mut folders = source.folders(&tracked_folders(&cx.session.mailbox, &cx.session.profile));
    // The Inbox last, so it is the folder watched.
    let inbox = folders.pop().unwrap_or_else(|| INBOX.to_owned());
    let mut full_round_due = true;
    let mut next_full = tokio::time::Instant::now();
    loop {
        if full_round_due {
            *last_round = chrono::Utc::now();
            for folder in &folders {
                Box::pin(sync_folder(cx, &mut source, folder, slot)).await?;
            }
            // With nothing but the Inbox to read, IDLE tells of new mail.
            let every = if folders.is_empty() && source.waits_long() {
                IDLE_FULL_ROUND.max(poll_interval(cx))
            } else {
                poll_interval(cx)
            };
            next_full = tokio::time::Instant::now() + every;
        }
        Box::pin(sync_folder(cx, &mut source, &inbox, slot)).await?;
        // A renumbered Inbox counts as stable again only after a round that finds nothing
        // new: until then, rounds keep the polling interval.
        if Box::pin(cx.store.get_cursor(cx.id, &inbox))
            .await?
            .and_then(|c| c.into_imap())
            .is_some_and(|c| c.uid_validity_changes > 0)
        {
            next_full = next_full.min(tokio::time::Instant::now() + poll_interval(cx));
        }
        Box::pin(renew(cx, Some(slot))).await?;
        if !watch {
            // POP3 removes the messages marked for deletion here.
            Box::pin(source.close()).await?;
            return Ok(Ended::RoundDone);
        }
        full_round_due = false;
        loop {
            if let Some(g) = source.graph() {
                Box::pin(crate::graph_notify::ensure(cx.store, cx.config, cx.id, g)).await?;
            }
            // IMAP waits in one IDLE until the next full round and ends it cleanly when
            // woken; other sources wait in steps and look for changes after each.
            let long = source.waits_long();
            let max = if long {
                next_full.saturating_duration_since(tokio::time::Instant::now())
            } else {
                cx.renew_every()
            };
            let woken = AtomicBool::new(false);
            // Pinned here and passed by reference: the wait's futures then hold a pointer,
            // not each a copy of it.
            let interrupt = std::pin::pin!(async {
                tokio::select! {
                    _ = cx.shutdown.cancelled() => {}
                    _ = cx.held.kept.lost() => {}
                    _ = slot_kept.lost() => {}
                    _ = cx.held.wake.notified(), if long => woken.store(true, Ordering::Relaxed),
                }
            });
            let event = source.wait_until(max, interrupt).await?;
            if cx.shutdown.is_cancelled() {
                let _ = Box::pin(source.close()).await;
                return Ok(Ended::Stop(Stop::Shutdown));
            }
            if slot_kept.is_lost() {
                return Err(Stop::LeaseLost);
            }
            held(cx)?;
            match event {
                Change::NewMail => break,
                Change::Closed(why) => return Ok(Ended::Dropped(why)),
                Change::Nothing => {}
            }
            if long && !woken.load(Ordering::Relaxed) {
                if tokio::time::Instant::now() >= next_full {
                    full_round_due = true;
                    break;
                }
                continue;
            }
            match Box::pin(check(cx, *last_round)).await? {
                WaitEnd::Reconfigured => {
                    let _ = Box::pin(source.close()).await;
                    return Ok(Ended::Stop(Stop::Reconfigured));
                }
                WaitEnd::SyncRequested => {
                    full_round_due = true;
                    break;
                }
                WaitEnd::Elapsed | WaitEnd::Shutdown => {}
            }
            if tokio::time::Instant::now() >= next_full {
                // Also a safety net for servers whose IDLE misses a notification.
                full_round_due = true;
                break;
            }
        }
    }
}
