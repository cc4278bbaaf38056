//! Bringing one folder up to date, whatever the protocol: open it from its committed cursor
//! ([`MailSource::open`]), fetch what is new a page at a time (never marking it read), hand
//! each message to [`crate::intake`] in batches, and move the cursor only after the messages
//! are committed (fenced by the lease). Then acknowledge: messages that could not be processed
//! go to the Undeliverable folder when the profile says so; a POP3 forward or queue mailbox
//! with `delete_after_processing` has its committed messages deleted (carried out at QUIT, so a
//! session cut off before deletes nothing).
//!
//! A folder the server renumbered (IMAP UIDVALIDITY) is read again from the start and each
//! message re-mapped to the item kept before by Message-ID and content ([`remap`]).

use super::{ConnSlot, Ctx, Stop, bump_telemetry, renew};
use crate::intake::{IntakeBatch, IntakeOutcome};
use crate::policy::Failure;
use serversync_connectors::mime;
use serversync_connectors::source::{FolderState, Listed, MailSource, Opened};
use serversync_model::item::{ItemDecision, ItemSource};
use serversync_model::mailbox::Mailbox;
use serversync_model::{ErrorKind, FailureStep};
use serversync_store::Remap;
use serversync_vault::sha256_hex;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Messages fetched and committed per cursor step.
const PAGE: usize = 200;
/// Renumberings in a row (without a stable round between) before syncing stops with an alert
/// instead of re-reading the folder yet again.
const MAX_RENUMBERINGS: u32 = 5;
/// Raw bytes gathered before a batch of fetched messages is stored, whatever its count.
const INTAKE_BATCH_BYTES: usize = 16 << 20;

/// Brings `folder` up to date over `source`.
pub(super) async fn sync_folder(
    cx: &Ctx<'_>,
    source: &mut MailSource,
    folder: &str,
    slot: &ConnSlot,
) -> Result<(), Stop> {
    let (store, id, lease) = (cx.store, cx.id, cx.lease);
    let started = chrono::Utc::now();
    let mut renewed = Instant::now();
    loop {
        let mut written = store.get_cursor(id, folder).await?;
        let opened = source.open(folder, written.as_ref()).await?;
        if let Some(w) = &written
            && w.kind() != opened.cursor.kind()
        {
            // Another protocol's position means nothing here: the folder is read from the
            // start (intake keeps each message once by its source key).
            tracing::warn!(mailbox = %id, folder, kind = w.kind(), "the folder's cursor is another protocol's: reading the folder from the start");
        }
        match opened.state {
            FolderState::Unchanged => {
                if written.as_ref() != Some(&opened.cursor) {
                    store.put_cursor(lease, id, folder, opened.cursor).await?;
                }
                return Ok(());
            }
            FolderState::Renumbered { from, to, times } => {
                tracing::warn!(mailbox = %id, folder, old = ?from, new = to, "UIDVALIDITY changed: the folder is read again and re-mapped by Message-ID and content");
                if times >= MAX_RENUMBERINGS {
                    return Err(Stop::Failed(Failure::coded(
                        "uidvalidity_unstable",
                        ErrorKind::Permanent,
                        FailureStep::Protocol,
                        format!(
                            "the server renumbered the folder {folder} (UIDVALIDITY) {MAX_RENUMBERINGS} times in a row; synchronization stopped instead of re-reading it again: check the server's mail storage"
                        ),
                    )));
                }
            }
            FolderState::Changed => {}
        }
        // The mailbox as it is now (approval and dates may have changed since the session began).
        let m = store.fetch::<Mailbox>(&id.to_string()).await?.value;
        let delete = source.can_delete()
            && m.delete_after_processing
            && (m.is_forward_mailbox || m.is_queue());
        let (new, mut to_delete) = unseen(cx, &opened).await?;
        let mut cursor = opened.cursor.clone();
        let mut missed = false;
        let mut stopped = false;
        for page in new.chunks(PAGE) {
            let before = cursor.clone();
            let mut fetch = source.fetch(page, cx.max_message_bytes()).await?;
            let mut gathered = Gathered::default();
            let mut processed = 0u64;
            loop {
                if cx.shutdown.is_cancelled() {
                    stopped = true;
                    break;
                }
                if renewed.elapsed() >= cx.renew_every() {
                    renew(cx, Some(slot)).await?;
                    renewed = Instant::now();
                }
                let msg = match fetch.next().await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => {
                        // What arrived whole before the connection failed is kept.
                        gathered.store(cx).await?;
                        return Err(e.into());
                    }
                };
                let (keep, note) = if opened.remapping() {
                    match remap(cx, &opened, &msg.source, &msg.raw).await? {
                        Some(line) => (true, Some(line)),
                        None => (false, None),
                    }
                } else {
                    (true, None)
                };
                if keep {
                    gathered.batch.add(
                        &m,
                        &cx.session.settings,
                        Some(&cx.session.profile),
                        msg.source,
                        msg.raw,
                        msg.received,
                        msg.too_large,
                    );
                    if let Some(line) = note {
                        gathered.batch.note_last(line);
                    }
                    gathered.pending.push(msg.index);
                    if gathered.batch.bytes() >= INTAKE_BATCH_BYTES {
                        gathered.store(cx).await?;
                    }
                }
                opened.committed(&mut cursor, &page[msg.index]);
                processed += 1;
            }
            gathered.store(cx).await?;
            let missing = fetch.missing();
            drop(fetch);
            to_delete.extend(gathered.deletable.iter().map(|i| page[*i].clone()));
            if !missing.is_empty() && !stopped {
                // Never move the cursor past a message that was not stored: stop below the
                // first one missing; it is listed again right away.
                opened.missing(&mut cursor, page, &missing, &before);
                store.put_cursor(lease, id, folder, cursor.clone()).await?;
                written = Some(cursor.clone());
                tracing::warn!(mailbox = %id, folder, missing = missing.len(), "the server did not return every message; reading again");
                missed = true;
                break;
            }
            // The messages are committed: only now may the cursor move (fenced by the lease).
            if written.as_ref() != Some(&cursor) {
                store.put_cursor(lease, id, folder, cursor.clone()).await?;
                written = Some(cursor.clone());
            }
            cx.progress.fetch_add(1, Ordering::Relaxed);
            bump_telemetry(store, id, started, processed, gathered.failed.len() as u64).await?;
            if processed > 0 {
                cx.stored.notify_one();
            }
            if !gathered.failed.is_empty()
                && cx.session.profile.advanced.move_failed_to_undeliverable
            {
                let moved = source
                    .move_to_undeliverable(folder, &gathered.failed)
                    .await?;
                tracing::info!(mailbox = %id, folder, moved, "failed messages moved to Undeliverable");
            }
            if stopped {
                break;
            }
        }
        if delete && !to_delete.is_empty() {
            source.delete(&to_delete).await?;
            tracing::info!(mailbox = %id, deleted = to_delete.len(), "processed messages marked for deletion on the server");
        }
        if stopped {
            return Err(Stop::Shutdown);
        }
        if missed || opened.more {
            // A page with nothing new to store may still move the cursor (an EWS sync state
            // past changes that are not new mail): keep it before reading on.
            if written.as_ref() != Some(&cursor) {
                store.put_cursor(lease, id, folder, cursor.clone()).await?;
            }
            continue;
        }
        // Everything up to the state the folder was opened in is committed.
        opened.finished(&mut cursor, new.is_empty());
        if written.as_ref() != Some(&cursor) {
            store.put_cursor(lease, id, folder, cursor).await?;
        }
        if new.is_empty() {
            bump_telemetry(store, id, started, 0, 0).await?;
        }
        return Ok(());
    }
}

/// What was listed and is not kept yet, and (for a source that lists everything every time,
/// POP3) what is kept already and may be deleted.
async fn unseen(cx: &Ctx<'_>, opened: &Opened) -> Result<(Vec<Listed>, Vec<Listed>), Stop> {
    if !opened.relisted {
        return Ok((opened.listed.clone(), Vec::new()));
    }
    let keys: Vec<String> = opened.listed.iter().map(|l| l.source.key("")).collect();
    let known = cx.store.item_decisions(cx.id, &keys).await?;
    let (mut new, mut deletable) = (Vec::new(), Vec::new());
    let mut seen: HashSet<&str> = HashSet::new();
    for (l, key) in opened.listed.iter().zip(&keys) {
        if !seen.insert(key) {
            // Two messages under one id (a broken server): the second is neither taken in
            // (its key is taken) nor deleted (it was never stored).
            tracing::warn!(mailbox = %cx.id, "the server lists one id for two messages; the second is left alone");
            continue;
        }
        match known.get(key) {
            Some(decision) if may_delete(*decision) => deletable.push(l.clone()),
            Some(_) => {}
            None => new.push(l.clone()),
        }
    }
    Ok((new, deletable))
}

/// Whether a message whose item has this decision may be deleted from the server (with
/// `delete_after_processing`): stored, or failed (its raw bytes are kept). A skipped message
/// (before the "process email from" date, mailbox not approved, too large) stays there.
fn may_delete(decision: ItemDecision) -> bool {
    matches!(decision, ItemDecision::Stored | ItemDecision::Failed)
}

/// Fetched messages gathered for one transaction, and what became of those stored.
#[derive(Default)]
struct Gathered {
    batch: IntakeBatch,
    /// Positions in the page of the messages in `batch`, in order.
    pending: Vec<usize>,
    /// Messages recorded as failed (for the Undeliverable folder).
    failed: Vec<ItemSource>,
    /// Positions of messages committed now that may be deleted.
    deletable: Vec<usize>,
}

impl Gathered {
    /// Stores the gathered messages in one transaction, counting the new ones as progress.
    async fn store(&mut self, cx: &Ctx<'_>) -> Result<(), serversync_store::StoreError> {
        let outcomes = self.batch.store(cx.store).await?;
        for (index, outcome) in self.pending.drain(..).zip(outcomes) {
            if let IntakeOutcome::Recorded(item) = outcome {
                // New work committed (a message fetched again is not progress).
                cx.progress.fetch_add(1, Ordering::Relaxed);
                if may_delete(item.decision) {
                    self.deletable.push(index);
                }
                if item.decision == ItemDecision::Failed {
                    self.failed.push(item.source.clone());
                }
            }
        }
        Ok(())
    }
}

/// Re-maps a message of a renumbered folder (`source`; `raw`: what intake would record) to the
/// item the mailbox already has for it: same folder, an earlier numbering, the same Message-ID
/// (or none) and the same content — each old item taken once, so messages that merely share a
/// Message-ID are never taken for one another. `None`: the mailbox has it (the old item now
/// carries the new position, its trace says how it was mapped). `Some(line)`: store it as new,
/// with `line` first in its trace.
async fn remap(
    cx: &Ctx<'_>,
    opened: &Opened,
    source: &ItemSource,
    raw: &[u8],
) -> Result<Option<String>, Stop> {
    let folder = &opened.folder;
    let numbering = source.numbering().map_or("?".into(), |n| n.to_string());
    let message_id = mime::parse(raw).ok().and_then(|p| p.message_id);
    let by = match &message_id {
        Some(mid) => format!("the same Message-ID <{mid}> and the same content (SHA-256)"),
        None => "the same content (SHA-256; it has no Message-ID)".to_string(),
    };
    let remapped = cx
        .store
        .remap_renumbered_item(
            cx.lease,
            cx.id,
            source,
            message_id.as_deref(),
            &sha256_hex(raw),
            |old| {
                let old_numbering = old.numbering().map_or("?".into(), |n| n.to_string());
                format!(
                    "re-mapped: the UIDVALIDITY of {folder} changed from {old_numbering} to {numbering}; this message, {} before, is {} now (found by {by})",
                    old.position(),
                    source.position()
                )
            },
        )
        .await?;
    tracing::debug!(mailbox = %cx.id, folder, position = %source.position(), ?remapped, "re-mapping a renumbered folder");
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
                "re-mapping after the UIDVALIDITY of {folder} changed to {numbering}: no message stored before has {by}{others}; stored as a new message"
            ))
        }
    })
}
