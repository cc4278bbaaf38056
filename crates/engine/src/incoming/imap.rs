//! Incoming email over IMAP: reads new messages after each folder's committed cursor with
//! `BODY.PEEK[]` (never setting \Seen), hands each to [`crate::intake`], moves the cursor only
//! after the messages are committed (fenced by the lease), then waits in IDLE on the Inbox so
//! new mail arrives without polling. Extra tracked folders are read every polling interval
//! (and on "sync now"). With CONDSTORE, a folder whose HIGHESTMODSEQ and UIDNEXT have not
//! moved is not listed at all.
//!
//! A connection is opened under one of the profile's connection slots. When the profile has
//! fewer slots than mailboxes, or the server has no IDLE, the worker polls instead: it opens a
//! connection per round and gives the slot back between rounds. A dropped connection is
//! re-opened with back-off and jitter ([`super::Reconnect`]).

use super::{
    ConnSlot, Ctx, Reconnect, Stop, WaitEnd, bump_telemetry, check, may_hold_connection,
    poll_interval, renew, wait,
};
use crate::intake::{IntakeBatch, IntakeOutcome};
use crate::policy::Failure;
use crate::session::Side;
use serversync_connectors::imap::sync::{IdleEvent, SyncSession};
use serversync_connectors::{ServerAddr, mime};
use serversync_model::item::{ItemDecision, ItemSource};
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::EmailServerProfile;
use serversync_model::sync::{FolderCursor, ImapCursor};
use serversync_model::{ErrorKind, FailureStep};
use serversync_store::Remap;
use serversync_vault::sha256_hex;
use std::sync::atomic::Ordering;
use std::time::Instant;

const INBOX: &str = "INBOX";
/// Where failed messages go when the profile says so.
const UNDELIVERABLE: &str = "Undeliverable";
/// Messages fetched and committed per cursor step.
const BATCH: usize = 200;
/// UIDVALIDITY changes in a row (without a stable round between) before syncing stops with an
/// alert instead of re-reading the folder yet again.
const MAX_RENUMBERINGS: u32 = 5;

pub(super) async fn session(cx: &Ctx<'_>) -> Result<Stop, Stop> {
    let address = cx.session.address(Side::Incoming).map_err(Stop::Failed)?;
    let hold = may_hold_connection(cx).await?;
    let mut reconnect = Reconnect::default();
    // The start of the last full round: a "sync now" requested after it starts another.
    let mut last_round = chrono::DateTime::<chrono::Utc>::MIN_UTC;
    let mut first = true;
    loop {
        let Some(slot) = ConnSlot::acquire(cx).await? else {
            // Every connection slot of the profile is in use: wait for one.
            match wait(cx, cx.renew_every(), last_round).await? {
                WaitEnd::Shutdown => return Ok(Stop::Shutdown),
                WaitEnd::Reconfigured => return Ok(Stop::Reconfigured),
                _ => continue,
            }
        };
        let opened = Instant::now();
        let progress = cx.progress.load(Ordering::Relaxed);
        let r = connected(cx, &address, &slot, hold, &mut last_round).await;
        slot.release(cx.store).await;
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
                    return Err(Stop::Failed(Failure {
                        retry_after: None,
                        code: "connection_dropped".into(),
                        kind: ErrorKind::Transient,
                        step: Some(FailureStep::Protocol),
                        message: format!(
                            "the server keeps closing the connection soon after sign-in ({} times in a row; last: {why})",
                            Reconnect::MAX_QUICK_DROPS + 1
                        ),
                    }));
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
/// IDLE on the Inbox until something arrives, a renewal is due, or a full round is due.
async fn connected(
    cx: &Ctx<'_>,
    address: &ServerAddr,
    slot: &ConnSlot,
    hold: bool,
    last_round: &mut chrono::DateTime<chrono::Utc>,
) -> Result<Ended, Stop> {
    let login = cx.login_now().await?;
    let mut imap = crate::session::signed_in(
        &login,
        SyncSession::connect(address, &login, &cx.session.opts).await,
    )?;
    let condstore = imap.has_capability("CONDSTORE");
    let idle = hold && imap.has_capability("IDLE");
    let mut full_round_due = true;
    let mut next_full = tokio::time::Instant::now();
    loop {
        if full_round_due {
            *last_round = chrono::Utc::now();
            for folder in &tracked_folders(&cx.session.mailbox, &cx.session.profile) {
                sync_folder(cx, &mut imap, folder, condstore).await?;
            }
            next_full = tokio::time::Instant::now() + poll_interval(cx);
        }
        // The Inbox last, so it is the folder selected for IDLE.
        sync_folder(cx, &mut imap, INBOX, condstore).await?;
        renew(cx, Some(slot)).await?;
        if !idle {
            let _ = imap.logout().await;
            return Ok(Ended::RoundDone);
        }
        full_round_due = false;
        loop {
            let event = tokio::select! {
                _ = cx.shutdown.cancelled() => {
                    let _ = imap.logout().await;
                    return Ok(Ended::Stop(Stop::Shutdown));
                }
                event = imap.idle(cx.renew_every()) => event?,
            };
            renew(cx, Some(slot)).await?;
            match event {
                IdleEvent::Exists(_) => break,
                IdleEvent::Closed(why) => return Ok(Ended::Dropped(why)),
                IdleEvent::Expunge | IdleEvent::FlagsChanged | IdleEvent::Timeout => {}
            }
            match check(cx, *last_round).await? {
                WaitEnd::Reconfigured => {
                    let _ = imap.logout().await;
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

/// Brings one folder up to date: stores every message after the committed cursor, moving the
/// cursor only over committed messages.
async fn sync_folder(
    cx: &Ctx<'_>,
    imap: &mut SyncSession,
    folder: &str,
    condstore: bool,
) -> Result<(), Stop> {
    let (store, id, lease) = (cx.store, cx.id, cx.lease);
    let started = chrono::Utc::now();
    loop {
        let status = imap.select(folder, condstore).await?;
        let mut cursor = match store.get_cursor(id, folder).await? {
            Some(FolderCursor::Imap(c)) => c,
            None => ImapCursor::default(),
            Some(other) => {
                // Another protocol's position means nothing here: read the folder from the
                // start (intake keeps each message once by its source key).
                tracing::warn!(mailbox = %id, folder, kind = other.kind(), "the folder's cursor is not an IMAP cursor: reading the folder from the start");
                ImapCursor::default()
            }
        };
        let renumbered = cursor
            .uid_validity
            .is_some_and(|v| v != status.uid_validity);
        if renumbered {
            tracing::warn!(mailbox = %id, folder, old = ?cursor.uid_validity, new = status.uid_validity, "UIDVALIDITY changed: the folder is read again and re-mapped by Message-ID and content");
            cursor = ImapCursor {
                uid_validity_changes: cursor.uid_validity_changes + 1,
                ..Default::default()
            };
            if cursor.uid_validity_changes >= MAX_RENUMBERINGS {
                return Err(Stop::Failed(Failure {
                    retry_after: None,
                    code: "uidvalidity_unstable".into(),
                    kind: ErrorKind::Permanent,
                    step: Some(FailureStep::Protocol),
                    message: format!(
                        "the server renumbered the folder {folder} (UIDVALIDITY) {MAX_RENUMBERINGS} times in a row; synchronization stopped instead of re-reading it again: check the server's mail storage"
                    ),
                }));
            }
        } else if cursor.uid_validity.is_some()
            && status.highest_modseq.is_some()
            && cursor.highest_modseq == status.highest_modseq
        {
            // CONDSTORE: nothing in the folder changed since the committed round (a new
            // message raises HIGHESTMODSEQ too). A renumbered folder is now stable.
            if cursor.uid_validity_changes > 0 {
                cursor.uid_validity_changes = 0;
                store.put_cursor(lease, id, folder, &cursor).await?;
            }
            return Ok(());
        }
        cursor.uid_validity = Some(status.uid_validity);
        let from = cursor.last_uid.map_or(1, |u| u.saturating_add(1));
        // A huge folder is listed in parts (the lowest UIDs first): `more` reads on.
        let listing = imap.uid_listing(from).await?;
        let more = listing.more;
        let new: Vec<u32> = listing
            .messages
            .into_iter()
            .map(|meta| meta.uid)
            .filter(|uid| *uid >= from)
            .collect();
        let m = store.fetch::<Mailbox>(&id.to_string()).await?.value;
        let mut missed = false;
        for chunk in new.chunks(BATCH) {
            let before = cursor.last_uid;
            let mut fetch = imap.fetch_bodies(chunk, cx.max_message_bytes()).await?;
            let (mut processed, mut failed_uids) = (0u64, Vec::new());
            // Stored a batch at a time (one transaction), always before the cursor moves.
            let mut batch = IntakeBatch::default();
            let mut uids = Vec::new();
            loop {
                let msg = match fetch.next().await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => {
                        // What arrived whole before the connection failed is kept.
                        store_batch(cx, &mut batch, &mut uids, &mut failed_uids).await?;
                        return Err(e.into());
                    }
                };
                let uid = msg.uid;
                let received = msg
                    .internal_date
                    .and_then(|d| chrono::DateTime::from_timestamp(d.timestamp, 0))
                    .unwrap_or_else(chrono::Utc::now);
                let source = ItemSource::Imap {
                    folder: folder.into(),
                    uid_validity: status.uid_validity,
                    uid: msg.uid,
                };
                // What intake records: the message, or the header of one over the limit.
                let too_large = msg
                    .truncated
                    .then_some((msg.size, cx.max_message_bytes() as u64));
                let raw = match msg.header().filter(|_| msg.truncated) {
                    Some(h) => h.to_vec(),
                    None => msg.body,
                };
                let (new_item, note) = if cursor.uid_validity_changes > 0 {
                    match remap(cx, folder, status.uid_validity, uid, &raw).await? {
                        Some(line) => (true, Some(line)),
                        None => (false, None),
                    }
                } else {
                    (true, None)
                };
                if new_item {
                    batch.add(
                        &m,
                        &cx.session.settings,
                        Some(&cx.session.profile),
                        source,
                        raw,
                        received,
                        too_large,
                    );
                    if let Some(line) = note {
                        batch.note_last(line);
                    }
                    uids.push(uid);
                    if batch.bytes() >= INTAKE_BATCH_BYTES {
                        store_batch(cx, &mut batch, &mut uids, &mut failed_uids).await?;
                    }
                }
                cursor.last_uid = Some(cursor.last_uid.map_or(uid, |u| u.max(uid)));
                processed += 1;
            }
            store_batch(cx, &mut batch, &mut uids, &mut failed_uids).await?;
            let missing = fetch.missing();
            drop(fetch);
            if !missing.is_empty() {
                // Never move the cursor past a message that was not stored: stop below the
                // first one missing; it is listed again right away.
                let first = missing.iter().min().copied().unwrap_or(u32::MAX);
                cursor.last_uid = chunk
                    .iter()
                    .copied()
                    .filter(|u| *u < first)
                    .max()
                    .or(before);
                cursor.highest_modseq = None;
                store.put_cursor(lease, id, folder, &cursor).await?;
                tracing::warn!(mailbox = %id, folder, missing = missing.len(), "the server did not return every message; reading again");
                missed = true;
                break;
            }
            // The messages are committed: only now may the cursor move (fenced by the lease).
            store.put_cursor(lease, id, folder, &cursor).await?;
            cx.progress.fetch_add(1, Ordering::Relaxed);
            bump_telemetry(store, id, started, processed, failed_uids.len() as u64).await?;
            if processed > 0 {
                cx.stored.notify_one();
            }
            if !failed_uids.is_empty() && cx.session.profile.advanced.move_failed_to_undeliverable {
                move_to_undeliverable(cx, imap, folder, &failed_uids).await?;
            }
        }
        if missed || more {
            continue;
        }
        if new.is_empty() {
            // Caught up: a renumbered folder has been fully re-mapped.
            cursor.uid_validity_changes = 0;
        }
        // Everything up to the state SELECT reported is committed: remember its MODSEQ so an
        // unchanged folder is skipped next time.
        cursor.highest_modseq = status.highest_modseq;
        store.put_cursor(lease, id, folder, &cursor).await?;
        if new.is_empty() {
            bump_telemetry(store, id, started, 0, 0).await?;
        }
        return Ok(());
    }
}

/// Re-maps a message of a renumbered folder (now `uid_validity` and `uid`; `raw`: what intake
/// would record) to the item the mailbox already has for it: same folder, an
/// earlier UIDVALIDITY, the same Message-ID (or none) and the same content — each old item
/// taken once, so messages that merely share a Message-ID are never taken for one another.
/// `None`: the mailbox has it (the old item now carries the new UID, its trace says how it was
/// mapped). `Some(line)`: store it as new, with `line` first in its trace.
async fn remap(
    cx: &Ctx<'_>,
    folder: &str,
    uid_validity: u32,
    uid: u32,
    raw: &[u8],
) -> Result<Option<String>, Stop> {
    let source = ItemSource::Imap {
        folder: folder.into(),
        uid_validity,
        uid,
    };
    let message_id = mime::parse(raw).ok().and_then(|p| p.message_id);
    let by = match &message_id {
        Some(mid) => format!("the same Message-ID <{mid}> and the same content (SHA-256)"),
        None => "the same content (SHA-256; it has no Message-ID)".to_string(),
    };
    let remapped = cx
        .store
        .remap_imap_item(
            cx.lease,
            cx.id,
            &source,
            message_id.as_deref(),
            &sha256_hex(raw),
            |old| {
                let (old_validity, old_uid) = match old {
                    ItemSource::Imap {
                        uid_validity, uid, ..
                    } => (uid_validity.to_string(), uid.to_string()),
                    _ => ("?".into(), "?".into()),
                };
                format!(
                    "re-mapped: the UIDVALIDITY of {folder} changed from {old_validity} to {uid_validity}; this message, UID {old_uid} before, is UID {uid} now (found by {by})"
                )
            },
        )
        .await?;
    tracing::debug!(mailbox = %cx.id, folder, uid, ?remapped, "re-mapping a renumbered folder");
    Ok(match remapped {
        Remap::Mapped { .. } | Remap::Already => None,
        Remap::Unmatched { same_message_id } => {
            let others = match (same_message_id, &message_id) {
                (0, _) | (_, None) => String::new(),
                (n, Some(_)) => format!(
                    " ({n} item(s) of the mailbox have this Message-ID: other content, or already re-mapped to another message)"
                ),
            };
            Some(format!(
                "re-mapping after the UIDVALIDITY of {folder} changed to {uid_validity}: no message stored before has {by}{others}; stored as a new message"
            ))
        }
    })
}

/// Raw bytes gathered before a batch of fetched messages is stored, whatever its count.
const INTAKE_BATCH_BYTES: usize = 16 << 20;

/// Stores the gathered messages (`uids`, in order) in one transaction, counting the new ones
/// as progress and noting the UIDs of those recorded as failed.
async fn store_batch(
    cx: &Ctx<'_>,
    batch: &mut IntakeBatch,
    uids: &mut Vec<u32>,
    failed_uids: &mut Vec<u32>,
) -> Result<(), serversync_store::StoreError> {
    let outcomes = batch.store(cx.store).await?;
    for (uid, outcome) in uids.drain(..).zip(outcomes) {
        if let IntakeOutcome::Recorded(item) = outcome {
            // New work committed (a message fetched again is not progress).
            cx.progress.fetch_add(1, Ordering::Relaxed);
            if item.decision == ItemDecision::Failed {
                failed_uids.push(uid);
            }
        }
    }
    Ok(())
}

/// Moves messages that could not be processed (already recorded as failed, with the reason)
/// to the Undeliverable folder, creating it when missing, then re-selects `folder`.
async fn move_to_undeliverable(
    cx: &Ctx<'_>,
    imap: &mut SyncSession,
    folder: &str,
    uids: &[u32],
) -> Result<(), Stop> {
    if folder == UNDELIVERABLE {
        return Ok(());
    }
    imap.create_folder_if_missing(UNDELIVERABLE).await?;
    let outcome = imap.uid_move_or_copy(uids, UNDELIVERABLE, true).await?;
    tracing::info!(mailbox = %cx.id, folder, moved = uids.len(), ?outcome, "failed messages moved to {UNDELIVERABLE}");
    Ok(())
}
