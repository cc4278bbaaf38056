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
use crate::intake::{IntakeBatch, IntakeOutcome, Prepared};
use crate::policy::Failure;
use serversync_connectors::mime;
use serversync_connectors::source::{Fetched, FolderState, Listed, MailSource, Opened};
use serversync_model::item::{ItemDecision, ItemSource};
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::EmailSettings;
use serversync_model::sync::FolderCursor;
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
/// Raw bytes gathered before a batch of fetched messages is stored, whatever its count (a
/// page being stored and the next being read are held at once).
const INTAKE_BATCH_BYTES: usize = 8 << 20;

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
        let intake = Intake::new(&m, cx);
        // A pipeline: while one page's messages are stored and the cursor moved past them,
        // the next page is fetched (and its messages parsed on the blocking pool).
        let mut read: Option<PageRead> = None;
        for page in new.chunks(PAGE) {
            let before = cursor.clone();
            let (committed, next) = tokio::join!(
                commit_page(cx, folder, read.take(), &mut written, started),
                read_page(
                    cx,
                    source,
                    &opened,
                    &intake,
                    page,
                    &mut cursor,
                    &mut renewed,
                    slot
                ),
            );
            finish_page(cx, source, folder, committed?, &mut to_delete).await?;
            let mut next = next?;
            if let Some(e) = next.failed_fetch.take() {
                // What arrived whole before the connection failed is kept (the cursor stays).
                next.gathered.store(cx).await?;
                return Err(e.into());
            }
            stopped = next.stopped;
            if !next.missing.is_empty() && !stopped {
                // Never move the cursor past a message that was not stored: stop below the
                // first one missing; it is listed again right away.
                opened.missing(&mut cursor, page, &next.missing, &before);
                next.cursor = cursor.clone();
                tracing::warn!(mailbox = %id, folder, missing = next.missing.len(), "the server did not return every message; reading again");
                let committed = commit_page(cx, folder, Some(next), &mut written, started).await;
                finish_page(cx, source, folder, committed?, &mut to_delete).await?;
                missed = true;
                break;
            }
            next.cursor = cursor.clone();
            read = Some(next);
            if stopped {
                break;
            }
        }
        let committed = commit_page(cx, folder, read.take(), &mut written, started).await;
        finish_page(cx, source, folder, committed?, &mut to_delete).await?;
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

/// What preparing a fetched message for intake needs — the mailbox as it is now, the
/// organization's settings and the profile — shared with the blocking pool.
struct Intake {
    shared: std::sync::Arc<(Mailbox, EmailSettings, EmailServerProfile)>,
}

impl Intake {
    fn new(m: &Mailbox, cx: &Ctx<'_>) -> Self {
        Intake {
            shared: std::sync::Arc::new((
                m.clone(),
                cx.session.settings.clone(),
                cx.session.profile.clone(),
            )),
        }
    }

    /// Parses and decides `msg` on the blocking pool (the fetch goes on meanwhile); `note`
    /// goes first in its trace. At most one message per core is parsed at once in the whole
    /// process: a fetch that outruns parsing waits here (and the blocking pool does not grow
    /// a thread, and a heap, per message in flight).
    async fn prepare(
        &self,
        msg: Fetched,
        note: Option<String>,
    ) -> tokio::task::JoinHandle<Prepared> {
        static PARSERS: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
            std::sync::OnceLock::new();
        let parsers = PARSERS.get_or_init(|| {
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            std::sync::Arc::new(tokio::sync::Semaphore::new(cores))
        });
        // Never closed, so a permit always comes.
        let permit = parsers.clone().acquire_owned().await.ok();
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let (mailbox, settings, profile) = &*shared;
            let mut prepared = Prepared::new(
                mailbox,
                settings,
                Some(profile),
                msg.source,
                msg.raw,
                msg.received,
                msg.too_large,
            );
            if let Some(line) = note {
                prepared.note(line);
            }
            prepared
        })
    }
}

/// One page as read: its messages (being) parsed, and where reading stopped.
struct PageRead {
    gathered: Gathered,
    /// Messages taken from the server (stored now or before, or re-mapped).
    processed: u64,
    /// Positions in the page the server did not return.
    missing: Vec<usize>,
    /// Shutdown was asked for while reading.
    stopped: bool,
    /// The connection failed after these messages.
    failed_fetch: Option<serversync_connectors::ConnectError>,
    /// The cursor once the page is committed.
    cursor: FolderCursor,
}

/// Fetches `page`, handing each message to the blocking pool to be parsed; gathered
/// messages are stored early only when they hold more than [`INTAKE_BATCH_BYTES`].
#[allow(clippy::too_many_arguments)]
async fn read_page(
    cx: &Ctx<'_>,
    source: &mut MailSource,
    opened: &Opened,
    intake: &Intake,
    page: &[Listed],
    cursor: &mut FolderCursor,
    renewed: &mut Instant,
    slot: &ConnSlot,
) -> Result<PageRead, Stop> {
    let mut read = PageRead {
        gathered: Gathered::default(),
        processed: 0,
        missing: Vec::new(),
        stopped: false,
        failed_fetch: None,
        cursor: cursor.clone(),
    };
    let mut fetch = source.fetch(page, cx.max_message_bytes()).await?;
    loop {
        if cx.shutdown.is_cancelled() {
            read.stopped = true;
            break;
        }
        if renewed.elapsed() >= cx.renew_every() {
            renew(cx, Some(slot)).await?;
            *renewed = Instant::now();
        }
        let msg = match fetch.next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => break,
            Err(e) => {
                read.failed_fetch = Some(e);
                return Ok(read);
            }
        };
        let index = msg.index;
        let (keep, note) = if opened.remapping() {
            match remap(cx, opened, &msg.source, &msg.raw).await? {
                Some(line) => (true, Some(line)),
                None => (false, None),
            }
        } else {
            (true, None)
        };
        if keep {
            read.gathered.bytes += msg.raw.len();
            read.gathered
                .parsing
                .push((page[index].clone(), intake.prepare(msg, note).await));
            if read.gathered.bytes >= INTAKE_BATCH_BYTES {
                read.gathered.store(cx).await?;
            }
        }
        opened.committed(cursor, &page[index]);
        read.processed += 1;
    }
    read.missing = fetch.missing();
    Ok(read)
}

/// What became of a committed page: its failed messages and those that may be deleted.
#[derive(Default)]
struct Committed {
    failed: Vec<ItemSource>,
    deletable: Vec<Listed>,
}

/// Stores a page read by [`read_page`] in one transaction, and only then moves the cursor past
/// it (fenced by the lease) and counts it.
async fn commit_page(
    cx: &Ctx<'_>,
    folder: &str,
    read: Option<PageRead>,
    written: &mut Option<FolderCursor>,
    started: chrono::DateTime<chrono::Utc>,
) -> Result<Committed, Stop> {
    let Some(mut read) = read else {
        return Ok(Committed::default());
    };
    read.gathered.store(cx).await?;
    if written.as_ref() != Some(&read.cursor) {
        cx.store
            .put_cursor(cx.lease, cx.id, folder, read.cursor.clone())
            .await?;
        *written = Some(read.cursor);
    }
    cx.progress.fetch_add(1, Ordering::Relaxed);
    let g = read.gathered;
    bump_telemetry(
        cx.store,
        cx.id,
        started,
        read.processed,
        g.failed.len() as u64,
    )
    .await?;
    if read.processed > 0 {
        cx.stored.notify_one();
    }
    Ok(Committed {
        failed: g.failed,
        deletable: g.deletable,
    })
}

/// After a page is committed: its messages that may be deleted are noted, and those that
/// failed go to the Undeliverable folder when the profile says so.
async fn finish_page(
    cx: &Ctx<'_>,
    source: &mut MailSource,
    folder: &str,
    committed: Committed,
    to_delete: &mut Vec<Listed>,
) -> Result<(), Stop> {
    to_delete.extend(committed.deletable);
    if !committed.failed.is_empty() && cx.session.profile.advanced.move_failed_to_undeliverable {
        let moved = source
            .move_to_undeliverable(folder, &committed.failed)
            .await?;
        tracing::info!(mailbox = %cx.id, folder, moved, "failed messages moved to Undeliverable");
    }
    Ok(())
}

/// Fetched messages gathered for one transaction, and what became of those stored.
#[derive(Default)]
struct Gathered {
    /// Each message as listed, and its parse on the blocking pool.
    parsing: Vec<(Listed, tokio::task::JoinHandle<Prepared>)>,
    /// Raw bytes of `parsing`, to bound a batch.
    bytes: usize,
    /// Messages recorded as failed (for the Undeliverable folder).
    failed: Vec<ItemSource>,
    /// Messages committed now that may be deleted.
    deletable: Vec<Listed>,
}

impl Gathered {
    /// Stores the gathered messages in one transaction, counting the new ones as progress.
    async fn store(&mut self, cx: &Ctx<'_>) -> Result<(), Stop> {
        let mut batch = IntakeBatch::default();
        let mut listed = Vec::with_capacity(self.parsing.len());
        for (l, parse) in self.parsing.drain(..) {
            let prepared = parse.await.map_err(|e| {
                Stop::Failed(Failure::coded(
                    "intake_panicked",
                    ErrorKind::Transient,
                    FailureStep::Protocol,
                    format!(
                        "parsing a fetched message stopped unexpectedly ({e}); it is fetched again"
                    ),
                ))
            })?;
            batch.push(prepared);
            listed.push(l);
        }
        self.bytes = 0;
        let outcomes = batch.store(cx.store).await?;
        for (l, outcome) in listed.into_iter().zip(outcomes) {
            if let IntakeOutcome::Recorded(item) = outcome {
                // New work committed (a message fetched again is not progress).
                cx.progress.fetch_add(1, Ordering::Relaxed);
                if may_delete(item.decision) {
                    self.deletable.push(l);
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
