//! IMAP primitives for the incoming-mail engine: opening a folder with its UIDVALIDITY,
//! UIDNEXT and HIGHESTMODSEQ (CONDSTORE, QRESYNC), listing new messages by UID, fetching
//! bodies with `BODY.PEEK` (never `\Seen`) in pipelined batches, IDLE with a bounded wait,
//! folders, MOVE/COPY, APPEND, SEARCH by header.
//!
//! # Why our own protocol code, not async-imap
//!
//! A [`SyncSession`] takes the authenticated connection of an [`ImapSession`] and speaks
//! the protocol itself, on [`response`]'s pure parser:
//! - **Bodies are bytes.** A FETCH literal is read in chunks straight into the message's
//!   buffer, never decoded as text, and bytes beyond the caller's limit are discarded as
//!   they arrive, so one huge message never needs the memory (or one read within the
//!   timeout) of its full size.
//! - **IDLE ends exactly when asked.** The line reader is cancel-safe (a partly received
//!   line stays buffered), so waiting can stop at `max_wait` without losing data;
//!   async-imap's IDLE either blocks or hands the stream to a separate future.
//! - **Codes, not text.** Refusals are classified by their RFC 5530 codes with the same
//!   table as login ([`super::parse::classify`]); VANISHED, COPYUID and APPENDUID are
//!   parsed (async-imap has no QRESYNC).
//! - **Pipelining.** Body fetches are sent as several `UID FETCH` commands in flight, so
//!   the server never waits for a round trip between batches.
//!
//! # Unsolicited responses
//!
//! Servers report changes at any time: `EXISTS` (new mail), `EXPUNGE` / `VANISHED`, `FETCH`
//! with new flags. Every answer is checked for them; they are queued as [`MailboxEvent`]s
//! (see [`SyncSession::take_events`]) and make the next [`SyncSession::idle`] return at once,
//! so a message that arrived while the previous listing ran is never left waiting for the
//! next IDLE timeout. The queue is bounded ([`limits`]): past its bound it keeps only that
//! something changed ([`MailboxEvent::Overflow`]) and the latest `EXISTS`.
//!
//! # A hostile server
//!
//! What the server sends is untrusted: a response's lines, literals and their sizes, the
//! untagged answers to one command and a listing are bounded ([`limits`]), and going over a
//! bound fails the session with a protocol error naming it. A message body the client did not
//! ask for (a UID outside the fetch, or one delivered twice) is read and dropped, never
//! handed on, so a caller never moves a cursor to it.
//!
//! # Failures
//!
//! Every error is a [`ConnectError`]: a refused SELECT/EXAMINE is a `Permission` step
//! failure (kind from the code: `[NONEXISTENT]` → Config, `[LIMIT]` → Throttled, …);
//! garbled answers are `Protocol`/Permanent; a dropped connection or a timeout is
//! Transient. After a connection-level failure the session answers every call with that
//! error: reconnect. Cancelling a call midway (dropping its future) leaves the session out
//! of step with the server and it refuses further use (kind Bug); dropping a
//! [`BodyFetch`] *between* messages is fine: the rest of its answers are read and
//! discarded before the next command.

mod conn;
pub mod limits;
pub mod response;

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use serversync_model::{ErrorKind, FailureStep};
use tokio::time::Instant;

use self::conn::{Conn, Limits, Wait, WireError};
use self::limits::{
    Budget, Events, KEEP_SMALL, LIST_MAX_RESPONSES, ListWindow, MAX_LINE, MAX_LITERALS,
    MAX_UNTAGGED_BYTES, response_limits,
};
pub use self::response::{InternalDate, UidSet, encode_mailbox_name};
use self::response::{ListEntry, RawResponse, Response, parse_appenduid, parse_copyuid};
use super::parse::{Phase, Status, StatusResponse};
use super::{ImapSession, has, quote, refusal};
use crate::error::{ConnectError, Result, io_failure, timed_out};
use crate::login::Login;
use crate::net::{ConnectOptions, ServerAddr};

/// RFC 2177: re-issue IDLE at least every 29 minutes.
pub const MAX_IDLE: Duration = Duration::from_secs(29 * 60);
/// A partial fetch (`BODY.PEEK[]<0.N>`) is used below this limit; above, the whole body.
const PARTIAL_LIMIT: usize = u32::MAX as usize;
/// Literals up to this size are sent in the same write as their command.
const SMALL_LITERAL: usize = 1 << 20;
/// UIDs per `UID MOVE` / `UID COPY` / `UID STORE` command.
const UIDS_PER_COMMAND: usize = 1000;

/// An authenticated IMAP connection used for synchronization. Create it with
/// [`SyncSession::connect`] or [`ImapSession::into_sync`].
#[derive(Debug)]
pub struct SyncSession {
    conn: Conn,
    /// The server's capabilities, space-separated: one allocation (thousands of idle
    /// sessions each hold them).
    capabilities: String,
    next_tag: u32,
    selected: Option<Selected>,
    qresync: bool,
    events: Events,
    /// Tags of commands whose answers were abandoned (a dropped [`BodyFetch`]).
    abandoned: VecDeque<String>,
    /// The largest message size asked for by those commands (what their literals may be).
    abandoned_max_bytes: usize,
    /// Set during an exchange with the server; still set when the next call starts means
    /// the previous one was cancelled midway.
    busy: bool,
    /// The connection-level failure that ended the session.
    failed: Option<ConnectError>,
    /// The server's `BYE`, when it sent one.
    bye: Option<StatusResponse>,
}

#[derive(Debug, Clone)]
struct Selected {
    status: FolderStatus,
    exists: u32,
}

/// The state of a folder as SELECT/EXAMINE reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderStatus {
    /// The folder name as given (not encoded).
    pub name: String,
    pub uid_validity: u32,
    /// The UID the next message will get (servers may omit it).
    pub uid_next: Option<u32>,
    pub exists: u32,
    /// CONDSTORE's HIGHESTMODSEQ; `None` when not requested, not offered, or `[NOMODSEQ]`.
    pub highest_modseq: Option<u64>,
    pub read_only: bool,
}

/// A message as listed by [`SyncSession::uid_list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    pub uid: u32,
    /// RFC822.SIZE (some servers only approximate it).
    pub size: u64,
    /// `None` when the server's INTERNALDATE could not be parsed.
    pub internal_date: Option<InternalDate>,
    pub flags: Vec<String>,
    /// The message's MODSEQ when the folder was opened with CONDSTORE.
    pub modseq: Option<u64>,
}

impl MessageMeta {
    pub fn has_flag(&self, flag: &str) -> bool {
        has(&self.flags, flag)
    }
}

/// What [`SyncSession::uid_listing`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Ascending by UID.
    pub messages: Vec<MessageMeta>,
    /// More messages follow the last one returned.
    pub more: bool,
}

/// A fetched message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedMessage {
    pub uid: u32,
    /// RFC822.SIZE: the full size, also when `body` was truncated.
    pub size: u64,
    pub internal_date: Option<InternalDate>,
    pub flags: Vec<String>,
    pub modseq: Option<u64>,
    /// The raw message (RFC 5322 bytes, as the server stores them), or its first
    /// `max_bytes` when `truncated`; for [`FetchPart::Header`], the header.
    pub body: Vec<u8>,
    /// The message is larger than the limit and `body` holds only its beginning.
    pub truncated: bool,
}

impl FetchedMessage {
    pub fn has_flag(&self, flag: &str) -> bool {
        has(&self.flags, flag)
    }

    /// The header block (up to and including the empty line), when `body` contains it
    /// completely.
    pub fn header(&self) -> Option<&[u8]> {
        let b = &self.body;
        if let Some(i) = b.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(&b[..i + 4]);
        }
        b.windows(2).position(|w| w == b"\n\n").map(|i| &b[..i + 2])
    }
}

/// What [`SyncSession::fetch_bodies_with`] fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchPart {
    /// The whole message: `BODY.PEEK[]` (partial `<0.max_bytes>` under the limit).
    #[default]
    Full,
    /// The header only: `BODY.PEEK[HEADER]` (for messages whose body was truncated).
    Header,
}

/// How bodies are fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOptions {
    /// Bytes kept per message; larger messages are truncated (and reported so).
    pub max_bytes: usize,
    /// UIDs per `UID FETCH` command.
    pub batch_size: usize,
    /// `UID FETCH` commands in flight at once (1 = no pipelining).
    pub pipeline_depth: usize,
    pub part: FetchPart,
}

impl Default for FetchOptions {
    /// 64 MiB per message, 100 UIDs per command, one command in flight.
    ///
    /// FIXME: with more than one command in flight, a fetch under load (seen once in CI
    /// against Dovecot 2.3) was reported to end without some of the requested messages
    /// (reported by [`BodyFetch::missing`]). The cause is not known and could not be
    /// reproduced: `tests/imap_pipeline.rs` (2,400 messages of 120 B-400 KB, batches of
    /// 1-100, depth 2-4, TLS and plain, a slow consumer, another session changing flags
    /// and appending meanwhile, under CPU load) never missed one, and Dovecot 2.3.19 was
    /// seen to run pipelined `UID FETCH`es concurrently (answers and tagged completions of
    /// several commands interleave, unsolicited `FETCH (FLAGS)` without UID and `EXPUNGE`
    /// arrive mid-fetch), which this reader handles; with concurrent expunges only the
    /// expunged UIDs were missing. Until the original report is explained, pipelining
    /// stays off by default.
    fn default() -> Self {
        FetchOptions {
            max_bytes: 64 << 20,
            batch_size: 100,
            pipeline_depth: 1,
            part: FetchPart::Full,
        }
    }
}

/// A change the server reported on its own (unsolicited responses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxEvent {
    /// The folder now holds this many messages (new mail arrived).
    Exists(u32),
    /// The message with this sequence number was expunged.
    Expunged { seq: u32 },
    /// Messages with these UIDs were expunged (QRESYNC).
    Vanished(UidSet),
    /// Flags changed (from another session).
    Flags {
        seq: u32,
        uid: Option<u32>,
        flags: Vec<String>,
        modseq: Option<u64>,
    },
    /// More changes were reported than the queue keeps ([`limits::MAX_EVENTS`]); their
    /// details were dropped (only the latest `Exists` is kept): re-read the folder.
    Overflow,
}

/// What ended an [`SyncSession::idle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdleEvent {
    /// New messages arrived; the folder now holds this many.
    Exists(u32),
    /// Messages were expunged (and none arrived).
    Expunge,
    /// Only flags changed.
    FlagsChanged,
    /// Nothing happened within `max_wait`.
    Timeout,
    /// The server ended the session (`BYE` or closed connection); reconnect.
    Closed(String),
}

/// A message whose flags (or MODSEQ) changed, from QRESYNC/CONDSTORE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagChange {
    pub uid: u32,
    pub flags: Vec<String>,
    pub modseq: Option<u64>,
}

/// What [`SyncSession::select_qresync`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resync {
    pub status: FolderStatus,
    /// The folder's UIDVALIDITY differs from the known one: every stored UID is void
    /// (re-map by Message-ID); `vanished` and `changed` are empty.
    pub uid_validity_changed: bool,
    /// UIDs expunged since the known MODSEQ.
    pub vanished: UidSet,
    /// Messages whose flags changed since the known MODSEQ.
    pub changed: Vec<FlagChange>,
}

/// What [`SyncSession::changed_since`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Changes {
    pub changed: Vec<FlagChange>,
    /// UIDs expunged since the MODSEQ; `None` without QRESYNC (CONDSTORE cannot say).
    pub vanished: Option<UidSet>,
}

/// APPENDUID: where an appended message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendUid {
    pub uid_validity: u32,
    pub uid: u32,
}

/// How [`SyncSession::uid_move_or_copy`] moved the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoveMethod {
    /// `UID MOVE` (RFC 6851).
    Moved,
    /// `UID COPY`; the originals are still there.
    Copied,
    /// `UID COPY`, then the originals were flagged `\Deleted` and removed with
    /// `UID EXPUNGE` (UIDPLUS), touching no other message.
    CopiedAndExpunged,
}

/// The result of [`SyncSession::uid_move_or_copy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveOutcome {
    pub method: MoveMethod,
    /// The target folder's UIDVALIDITY, from COPYUID.
    pub dest_uid_validity: Option<u32>,
    /// (source UID, new UID in the target), from COPYUID (empty when not reported).
    pub uid_map: Vec<(u32, u32)>,
}

impl ImapSession {
    /// Turns this session into a [`SyncSession`]; `timeout` bounds every wait for the
    /// server (use the [`ConnectOptions::timeout`] the connection was made with).
    pub fn into_sync(self, timeout: Duration) -> Result<SyncSession> {
        SyncSession::new(self, timeout)
    }
}

impl SyncSession {
    /// Takes over an authenticated session's connection.
    pub fn new(session: ImapSession, timeout: Duration) -> Result<Self> {
        let ImapSession {
            wire,
            tags: _,
            capabilities,
        } = session;
        let stream = wire.into_stream()?;
        Ok(SyncSession {
            conn: Conn::new(stream, timeout),
            capabilities: capabilities.join(" "),
            next_tag: 0,
            selected: None,
            qresync: false,
            events: Events::default(),
            abandoned: VecDeque::new(),
            abandoned_max_bytes: 0,
            busy: false,
            failed: None,
            bye: None,
        })
    }

    /// Connects ([`super::connect`]), authenticates and takes the session over.
    pub async fn connect(addr: &ServerAddr, login: &Login, opts: &ConnectOptions) -> Result<Self> {
        let session = super::connect(addr, opts).await?.login(login).await?;
        SyncSession::new(session, opts.timeout)
    }

    pub fn capabilities(&self) -> impl Iterator<Item = &str> {
        self.capabilities.split(' ').filter(|c| !c.is_empty())
    }

    /// Case-insensitive capability test (`IDLE`, `CONDSTORE`, `QRESYNC`, `MOVE`, …).
    pub fn has_capability(&self, name: &str) -> bool {
        has(self.capabilities(), name)
    }

    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// The selected folder as it was opened.
    pub fn selected(&self) -> Option<&FolderStatus> {
        self.selected.as_ref().map(|s| &s.status)
    }

    /// The number of messages in the selected folder, kept current from EXISTS/EXPUNGE.
    pub fn exists(&self) -> Option<u32> {
        self.selected.as_ref().map(|s| s.exists)
    }

    /// Whether QRESYNC is enabled on this session.
    pub fn qresync_enabled(&self) -> bool {
        self.qresync
    }

    /// The changes the server reported on its own since the last call (or IDLE).
    pub fn take_events(&mut self) -> Vec<MailboxEvent> {
        self.events.take()
    }

    /// The failure that ended this session, if any.
    pub fn failure(&self) -> Option<&ConnectError> {
        self.failed.as_ref()
    }

    // ----- public commands --------------------------------------------------------------

    /// `NOOP`: lets the server report changes; returns (and takes) the queued events.
    pub async fn noop(&mut self) -> Result<Vec<MailboxEvent>> {
        self.begin().await?;
        let r = self.noop_inner().await;
        self.end(r)
    }

    /// `SELECT folder` (read-write), with `(CONDSTORE)` when asked and offered.
    pub async fn select(&mut self, folder: &str, condstore: bool) -> Result<FolderStatus> {
        self.begin().await?;
        let r = self.open_plain("SELECT", folder, condstore).await;
        self.end(r)
    }

    /// `EXAMINE folder` (read-only: nothing changes, not even `\Recent`), with
    /// `(CONDSTORE)` when asked and offered.
    pub async fn examine(&mut self, folder: &str, condstore: bool) -> Result<FolderStatus> {
        self.begin().await?;
        let r = self.open_plain("EXAMINE", folder, condstore).await;
        self.end(r)
    }

    /// `ENABLE QRESYNC` (which implies CONDSTORE). `false` when the server does not offer
    /// it. Must come before a folder is selected.
    pub async fn enable_qresync(&mut self) -> Result<bool> {
        self.begin().await?;
        let r = self.enable_qresync_inner().await;
        self.end(r)
    }

    /// Opens `folder` with QRESYNC (RFC 7162 §3.2.5): given `known` = (UIDVALIDITY,
    /// HIGHESTMODSEQ) stored at the last sync, the server answers with the UIDs expunged
    /// since and the messages whose flags changed, in the same round trip. Enables QRESYNC
    /// first when needed (so call it before selecting anything else); fails with a Config
    /// error when the server does not offer QRESYNC. Without `known`, it opens with
    /// CONDSTORE.
    pub async fn select_qresync(
        &mut self,
        folder: &str,
        known: Option<(u32, u64)>,
        read_only: bool,
    ) -> Result<Resync> {
        self.begin().await?;
        let r = self.select_qresync_inner(folder, known, read_only).await;
        self.end(r)
    }

    /// Messages whose flags changed since `modseq` (`UID FETCH 1:* (UID FLAGS)
    /// (CHANGEDSINCE modseq)`), plus the UIDs expunged since when QRESYNC is enabled.
    pub async fn changed_since(&mut self, modseq: u64) -> Result<Changes> {
        self.begin().await?;
        let r = self.changed_since_inner(modseq).await;
        self.end(r)
    }

    /// The messages with UID ≥ `from_uid` in the selected folder, ascending: `UID FETCH
    /// from:* (UID RFC822.SIZE INTERNALDATE FLAGS [MODSEQ])`. `from:*` also returns the
    /// last message when its UID is below `from` (RFC 3501 §6.4.8); it is left out. At most
    /// the lowest [`limits::LIST_WINDOW`] (see [`uid_listing`](Self::uid_listing)).
    pub async fn uid_list(&mut self, from_uid: u32) -> Result<Vec<MessageMeta>> {
        Ok(self.uid_listing(from_uid).await?.messages)
    }

    /// [`uid_list`](Self::uid_list), saying whether messages were left out: the listing
    /// keeps the lowest UIDs, at most [`limits::LIST_WINDOW`] messages and
    /// [`limits::LIST_BYTES`] of their metadata, so a huge folder is listed in parts (list
    /// again after the last UID returned).
    pub async fn uid_listing(&mut self, from_uid: u32) -> Result<Listing> {
        self.begin().await?;
        let r = self.uid_list_inner(from_uid).await;
        self.end(r)
    }

    /// Fetches whole messages with `BODY.PEEK` (never sets `\Seen`), keeping at most
    /// `max_bytes` of each; see [`fetch_bodies_with`](Self::fetch_bodies_with).
    pub async fn fetch_bodies(&mut self, uids: &[u32], max_bytes: usize) -> Result<BodyFetch<'_>> {
        self.fetch_bodies_with(
            uids,
            FetchOptions {
                max_bytes,
                ..FetchOptions::default()
            },
        )
        .await
    }

    /// Fetches messages of the selected folder as a stream: `UID FETCH set (UID
    /// RFC822.SIZE INTERNALDATE FLAGS [MODSEQ] BODY.PEEK[]<0.max_bytes>)` in batches of
    /// `batch_size` UIDs, `pipeline_depth` commands in flight. Messages come in ascending
    /// UID order (the order servers answer in), one at a time, so memory stays at one
    /// message; UIDs that no longer exist are simply absent (see [`BodyFetch::missing`]).
    pub async fn fetch_bodies_with(
        &mut self,
        uids: &[u32],
        opts: FetchOptions,
    ) -> Result<BodyFetch<'_>> {
        self.begin().await?;
        if let Err(e) = self.require_selected("UID FETCH") {
            return self.end(Err(e));
        }
        let requested = UidSet::from_uids(uids);
        let batches: VecDeque<UidSet> = requested.chunks(opts.batch_size.max(1)).into();
        let modseq = if self.condstore_active() {
            " MODSEQ"
        } else {
            ""
        };
        let (section, items) = match opts.part {
            FetchPart::Full if opts.max_bytes < PARTIAL_LIMIT => (
                "BODY[]",
                format!(
                    "(UID RFC822.SIZE INTERNALDATE FLAGS{modseq} BODY.PEEK[]<0.{}>)",
                    opts.max_bytes
                ),
            ),
            FetchPart::Full => (
                "BODY[]",
                format!("(UID RFC822.SIZE INTERNALDATE FLAGS{modseq} BODY.PEEK[])"),
            ),
            FetchPart::Header => (
                "BODY[HEADER]",
                format!("(UID RFC822.SIZE INTERNALDATE FLAGS{modseq} BODY.PEEK[HEADER])"),
            ),
        };
        self.busy = false;
        Ok(BodyFetch {
            session: self,
            batches,
            in_flight: VecDeque::new(),
            requested,
            received: HashSet::new(),
            budget: Budget::default(),
            opts,
            section,
            items,
            finished: false,
        })
    }

    /// Waits for changes in the selected folder with `IDLE` (RFC 2177) for at most
    /// `max_wait` (capped at [`MAX_IDLE`]; call again to re-issue), then ends it with
    /// `DONE`. Returns as soon as the server reports something; at once when events from
    /// earlier commands are still queued (they are taken). Returns within `max_wait` plus
    /// at most one second for the server's answer to `DONE` (a server slower than that
    /// fails the session as Transient). A server `BYE` or a closed connection gives
    /// [`IdleEvent::Closed`].
    pub async fn idle(&mut self, max_wait: Duration) -> Result<IdleEvent> {
        self.idle_until(max_wait, std::future::pending()).await
    }

    /// [`Self::idle`] that also ends — with `DONE`, in step with the server, so the session
    /// stays usable — as soon as `interrupt` completes (shutdown, a lost lease, a "sync now"):
    /// the caller can wait up to [`MAX_IDLE`] without waking up in between.
    pub async fn idle_until(
        &mut self,
        max_wait: Duration,
        interrupt: impl std::future::Future<Output = ()>,
    ) -> Result<IdleEvent> {
        let start = Instant::now();
        if self.failed.is_some()
            && let Some(reason) = self.closed_reason()
        {
            return Ok(IdleEvent::Closed(reason));
        }
        self.begin().await?;
        let r = self
            .idle_inner(start, max_wait.min(MAX_IDLE), interrupt)
            .await;
        self.end(r)
    }

    /// Creates `name` (and subscribes to it) unless it exists. Returns whether it was
    /// created. Non-ASCII names are sent in modified UTF-7.
    pub async fn create_folder_if_missing(&mut self, name: &str) -> Result<bool> {
        self.begin().await?;
        let r = self.create_folder_inner(name).await;
        self.end(r)
    }

    /// Moves messages of the selected (read-write) folder to `folder`: `UID MOVE` when
    /// the server offers MOVE; otherwise `UID COPY`, and the originals are removed only
    /// when `delete_original_after_copy` is set and the server offers UIDPLUS (`UID
    /// EXPUNGE` touches only these UIDs; a plain EXPUNGE could remove other messages
    /// someone flagged `\Deleted`, so without UIDPLUS the originals stay).
    pub async fn uid_move_or_copy(
        &mut self,
        uids: &[u32],
        folder: &str,
        delete_original_after_copy: bool,
    ) -> Result<MoveOutcome> {
        self.begin().await?;
        let r = self
            .move_inner(uids, folder, delete_original_after_copy)
            .await;
        self.end(r)
    }

    /// `APPEND folder (flags) "date" {n}`: stores a message (a Sent copy, test data).
    /// Returns the new UID when the server reports it (UIDPLUS' APPENDUID). A missing
    /// folder (`[TRYCREATE]`) is a Config error.
    pub async fn append(
        &mut self,
        folder: &str,
        flags: &[&str],
        internal_date: Option<InternalDate>,
        message: &[u8],
    ) -> Result<Option<AppendUid>> {
        self.begin().await?;
        let r = self
            .append_inner(folder, flags, internal_date, message)
            .await;
        self.end(r)
    }

    /// Whether [`SyncSession::append_all`] can store these messages in one command: the
    /// server offers MULTIAPPEND (RFC 3502) and non-synchronizing literals (LITERAL+, or
    /// LITERAL- for messages of at most 4096 bytes), so the whole command is one write and
    /// one answer.
    pub fn can_append_all(&self, messages: &[&[u8]]) -> bool {
        self.has_capability("MULTIAPPEND")
            && (self.has_capability("LITERAL+")
                || (self.has_capability("LITERAL-") && messages.iter().all(|m| m.len() <= 4096)))
    }

    /// Stores several messages with the same flags in one `APPEND folder (flags) {n+} …
    /// (flags) {m+} …` (MULTIAPPEND, RFC 3502: all are stored or none); one round trip for
    /// all of them. Only when [`SyncSession::can_append_all`]; otherwise one `APPEND` each.
    pub async fn append_all(
        &mut self,
        folder: &str,
        flags: &[&str],
        messages: &[&[u8]],
    ) -> Result<()> {
        if messages.len() < 2 || !self.can_append_all(messages) {
            for m in messages {
                self.append(folder, flags, None, m).await?;
            }
            return Ok(());
        }
        self.begin().await?;
        let r = self.append_all_inner(folder, flags, messages).await;
        self.end(r)
    }

    /// UIDs in the selected folder whose header `name` contains `value` (`UID SEARCH
    /// HEADER name value`; servers match substrings, case-insensitively: compare the
    /// fetched header when it must be exact).
    pub async fn uid_search_header(&mut self, name: &str, value: &str) -> Result<Vec<u32>> {
        self.begin().await?;
        let r = self.search_header_inner(name, value).await;
        self.end(r)
    }

    /// Adds or removes flags or keywords (`\\Flagged`, `$Tracked`) on messages of the
    /// selected read-write folder: `UID STORE set ±FLAGS.SILENT (…)`.
    pub async fn uid_store_flags(&mut self, uids: &[u32], add: bool, flags: &[&str]) -> Result<()> {
        self.begin().await?;
        let r = self.store_inner(uids, add, flags).await;
        self.end(r)
    }

    /// `LOGOUT`, then closes the connection. A server that closes first is fine.
    pub async fn logout(mut self) -> Result<()> {
        if self.failed.is_none() && !self.busy {
            // Best effort: drain abandoned answers, say goodbye.
            if self.drain_abandoned().await.is_ok() {
                let tag = self.tag();
                if self
                    .conn
                    .write(format!("{tag} LOGOUT\r\n").as_bytes())
                    .await
                    .is_ok()
                {
                    let limits = response_limits(0, KEEP_SMALL);
                    while let Ok(raw) = self.conn.read_response(limits, Wait::Inactivity).await {
                        if raw.pieces[0].starts_with(format!("{tag} ").as_bytes()) {
                            break;
                        }
                    }
                }
            }
        }
        self.conn.shutdown().await;
        Ok(())
    }

    // ----- plumbing ---------------------------------------------------------------------

    fn tag(&mut self) -> String {
        self.next_tag += 1;
        format!("S{:04}", self.next_tag)
    }

    /// Starts a call: refuses a failed or out-of-step session, reads what abandoned
    /// commands still owe.
    async fn begin(&mut self) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.busy {
            return Err(self.fail(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Bug,
                "an earlier IMAP call was cancelled midway, so the session is out of step \
                 with the server: reconnect",
            )));
        }
        self.busy = true;
        self.drain_abandoned().await
    }

    fn end<T>(&mut self, r: Result<T>) -> Result<T> {
        self.busy = false;
        r
    }

    async fn drain_abandoned(&mut self) -> Result<()> {
        let limits = response_limits(0, self.abandoned_max_bytes);
        while !self.abandoned.is_empty() {
            match self.read_sized("UID FETCH", limits).await?.0 {
                Response::Tagged { tag, .. } => {
                    if let Some(i) = self.abandoned.iter().position(|t| *t == tag) {
                        self.abandoned.remove(i);
                    } else {
                        return Err(self.unexpected_tag(&tag, "UID FETCH"));
                    }
                }
                Response::Fetch { data, .. } if !data.sections.is_empty() => {}
                other => self.note(other),
            }
        }
        self.abandoned_max_bytes = 0;
        Ok(())
    }

    /// Records the failure that ends the session and returns it.
    fn fail(&mut self, e: ConnectError) -> ConnectError {
        self.failed = Some(e.clone());
        e
    }

    fn wire_failure(&mut self, e: WireError, what: &str) -> ConnectError {
        let err = match e {
            WireError::TimedOut | WireError::Deadline => {
                timed_out(FailureStep::Protocol, what, self.conn.timeout)
            }
            WireError::Closed => match &self.bye {
                Some(st) => refusal(Phase::Command, what, st, None),
                None => io_failure(
                    FailureStep::Protocol,
                    what,
                    &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                ),
            },
            WireError::TooLong => ConnectError::protocol(format!(
                "the answer to {what} has a line, or lines in one response, longer than the \
                 limit of {} MiB: check the server",
                MAX_LINE >> 20
            )),
            WireError::TooManyLiterals => ConnectError::protocol(format!(
                "the answer to {what} has more than the limit of {MAX_LITERALS} literals in one \
                 response: check the server"
            )),
            WireError::LiteralsTooLarge(n) => ConnectError::protocol(format!(
                "the answer to {what} announces {n} bytes of literals in one response, over the \
                 limit (the size asked for, at least 1 MiB, plus 1 MiB): check the server"
            )),
            WireError::Io(e) => io_failure(FailureStep::Protocol, what, &e),
        };
        self.fail(err)
    }

    fn closed_reason(&self) -> Option<String> {
        match (&self.bye, &self.failed) {
            (Some(bye), _) => Some(bye.display()),
            (None, Some(e)) if e.kind == ErrorKind::Transient => Some(e.message.clone()),
            _ => None,
        }
    }

    fn unexpected_tag(&mut self, tag: &str, what: &str) -> ConnectError {
        self.fail(ConnectError::protocol(format!(
            "the server answered with tag {tag}, which is not pending, during {what}: the \
             server does not speak IMAP as expected"
        )))
    }

    /// Reads one response within `limits`, with its size (text and literal bytes kept);
    /// `Ok(None)` when a [`Wait::Until`] deadline passed before it started.
    async fn read_within(
        &mut self,
        what: &str,
        limits: Limits,
        wait: Wait,
    ) -> Result<Option<(Response, usize)>> {
        let raw: RawResponse = match self.conn.read_response(limits, wait).await {
            Ok(raw) => raw,
            Err(WireError::Deadline) => return Ok(None),
            Err(e) => return Err(self.wire_failure(e, what)),
        };
        let size = raw.size();
        match response::parse_response(raw) {
            Ok(resp) => {
                match &resp {
                    Response::Status(st) if st.status == Status::Bye => {
                        self.bye = Some(st.clone());
                    }
                    Response::Capability(caps) => self.capabilities = caps.join(" "),
                    _ => {}
                }
                Ok(Some((resp, size)))
            }
            Err(why) => Err(self.fail(ConnectError::protocol(format!(
                "garbled answer to {what} ({why}): the server does not speak IMAP as expected"
            )))),
        }
    }

    /// Reads one response within `limits`, with its size, waiting at most the timeout.
    async fn read_sized(&mut self, what: &str, limits: Limits) -> Result<(Response, usize)> {
        match self.read_within(what, limits, Wait::Inactivity).await? {
            Some(r) => Ok(r),
            None => Err(self.wire_failure(WireError::Deadline, what)),
        }
    }

    /// Reads one response of a command other than a body fetch; `Ok(None)` when a
    /// [`Wait::Until`] deadline passed before it started.
    async fn read_opt(&mut self, what: &str, wait: Wait) -> Result<Option<Response>> {
        let limits = response_limits(KEEP_SMALL, KEEP_SMALL);
        Ok(self.read_within(what, limits, wait).await?.map(|(r, _)| r))
    }

    async fn read(&mut self, what: &str) -> Result<Response> {
        let limits = response_limits(KEEP_SMALL, KEEP_SMALL);
        Ok(self.read_sized(what, limits).await?.0)
    }

    /// The failure for untagged answers to `what` over [`MAX_UNTAGGED_BYTES`].
    fn too_many_untagged(&mut self, what: &str) -> ConnectError {
        self.fail(ConnectError::protocol(format!(
            "the server sent more than the limit of {} MiB of untagged responses to one {what} \
             (a server does not send that much for one command): check the server",
            MAX_UNTAGGED_BYTES >> 20
        )))
    }

    fn asked_for_more(&mut self, what: &str, text: &str) -> ConnectError {
        self.fail(ConnectError::protocol(format!(
            "the server asked for more input during {what} (\"+ {text}\"): the server does \
             not speak IMAP as expected"
        )))
    }

    async fn write(&mut self, data: &[u8], what: &str) -> Result<()> {
        match self.conn.write(data).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.wire_failure(e, what)),
        }
    }

    /// Sends `head` [+ `literal`] + CRLF with a new tag. Returns the tag, or the server's
    /// refusal when it answered a synchronizing literal with a tagged NO/BAD.
    async fn send(
        &mut self,
        what: &str,
        head: &[u8],
        literal: Option<&[u8]>,
    ) -> Result<std::result::Result<String, StatusResponse>> {
        let tag = self.tag();
        let mut out = Vec::with_capacity(head.len() + tag.len() + 32);
        out.extend_from_slice(tag.as_bytes());
        out.push(b' ');
        out.extend_from_slice(head);
        if let Some(data) = literal {
            let non_sync = self.has_capability("LITERAL+")
                || (self.has_capability("LITERAL-") && data.len() <= 4096);
            if non_sync {
                out.extend_from_slice(format!("{{{}+}}\r\n", data.len()).as_bytes());
                if data.len() <= SMALL_LITERAL {
                    // One write (one TLS record, one segment) for the usual small message.
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                    self.write(&out, what).await?;
                    return Ok(Ok(tag));
                }
                self.write(&out, what).await?;
            } else {
                out.extend_from_slice(format!("{{{}}}\r\n", data.len()).as_bytes());
                self.write(&out, what).await?;
                loop {
                    match self.read(what).await? {
                        Response::Continuation(_) => break,
                        Response::Tagged { tag: t, status } if t == tag => {
                            return Ok(Err(status));
                        }
                        Response::Tagged { tag: t, .. } => {
                            return Err(self.unexpected_tag(&t, what));
                        }
                        other => self.note(other),
                    }
                }
            }
            out.clear();
            self.write(data, what).await?;
        }
        out.extend_from_slice(b"\r\n");
        self.write(&out, what).await?;
        Ok(Ok(tag))
    }

    /// Reads the answers to `tag` up to its tagged status (the untagged ones within
    /// [`MAX_UNTAGGED_BYTES`]).
    async fn collect(&mut self, tag: &str, what: &str) -> Result<(Vec<Response>, StatusResponse)> {
        let mut untagged = Vec::new();
        let mut budget = Budget::default();
        let limits = response_limits(KEEP_SMALL, KEEP_SMALL);
        loop {
            match self.read_sized(what, limits).await? {
                (Response::Tagged { tag: t, status }, _) if t == tag => {
                    return Ok((untagged, status));
                }
                (Response::Tagged { tag: t, .. }, _) => return Err(self.unexpected_tag(&t, what)),
                (Response::Continuation(text), _) => return Err(self.asked_for_more(what, &text)),
                (other, size) => {
                    if !budget.spend(size) {
                        return Err(self.too_many_untagged(what));
                    }
                    untagged.push(other);
                }
            }
        }
    }

    /// Sends a command and collects its answers.
    async fn command(
        &mut self,
        what: &str,
        head: &str,
        literal: Option<&[u8]>,
    ) -> Result<(Vec<Response>, StatusResponse)> {
        match self.send(what, head.as_bytes(), literal).await? {
            Ok(tag) => self.collect(&tag, what).await,
            Err(refused) => Ok((Vec::new(), refused)),
        }
    }

    /// Queues what the server reported on its own.
    fn note(&mut self, r: Response) {
        match r {
            Response::Exists(n) => {
                if let Some(sel) = &mut self.selected {
                    sel.exists = n;
                }
                self.events.push(MailboxEvent::Exists(n));
            }
            Response::Expunge(seq) => {
                if let Some(sel) = &mut self.selected {
                    sel.exists = sel.exists.saturating_sub(1);
                }
                self.events.push(MailboxEvent::Expunged { seq });
            }
            Response::Vanished {
                earlier: false,
                uids,
            } => {
                if let Some(sel) = &mut self.selected {
                    sel.exists = sel.exists.saturating_sub(uids.len() as u32);
                }
                self.events.push(MailboxEvent::Vanished(uids));
            }
            Response::Fetch { seq, data } if data.flags.is_some() || data.modseq.is_some() => {
                self.events.push(MailboxEvent::Flags {
                    seq,
                    uid: data.uid,
                    flags: data.flags.unwrap_or_default(),
                    modseq: data.modseq,
                });
            }
            _ => {}
        }
    }

    /// Notes everything but expunges (the answers of our own MOVE/EXPUNGE).
    fn note_except_own_expunges(&mut self, r: Response) {
        match r {
            Response::Expunge(_) => {
                if let Some(sel) = &mut self.selected {
                    sel.exists = sel.exists.saturating_sub(1);
                }
            }
            Response::Vanished {
                earlier: false,
                uids,
            } => {
                if let Some(sel) = &mut self.selected {
                    sel.exists = sel.exists.saturating_sub(uids.len() as u32);
                }
            }
            other => self.note(other),
        }
    }

    fn require_selected(&self, what: &str) -> Result<()> {
        if self.selected.is_none() {
            return Err(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Bug,
                format!("{what} needs a selected folder: select one first"),
            ));
        }
        Ok(())
    }

    fn condstore_active(&self) -> bool {
        self.selected
            .as_ref()
            .is_some_and(|s| s.status.highest_modseq.is_some())
    }

    /// A folder name as an IMAP quoted string (modified UTF-7 inside).
    fn folder_arg(name: &str) -> Result<String> {
        let encoded = encode_mailbox_name(name);
        match quote(encoded.as_bytes()) {
            Some(q) => Ok(String::from_utf8_lossy(&q).into_owned()),
            None => Err(ConnectError::new(
                FailureStep::Permission,
                ErrorKind::Config,
                format!("the folder name {name:?} contains a line break: fix the folder name"),
            )),
        }
    }

    /// A refusal of a command aimed at a folder (CREATE, APPEND, COPY, MOVE).
    fn folder_refusal(what: &str, folder: &str, st: &StatusResponse) -> ConnectError {
        if st.code_name() == Some("TRYCREATE") {
            return ConnectError::new(
                FailureStep::Permission,
                ErrorKind::Config,
                format!(
                    "{what} refused: the folder {folder:?} does not exist (server said \"{}\"): \
                     create it or fix the folder name",
                    st.display()
                ),
            );
        }
        refusal(Phase::Examine, what, st, None)
    }

    // ----- command bodies ---------------------------------------------------------------

    async fn noop_inner(&mut self) -> Result<Vec<MailboxEvent>> {
        let (untagged, done) = self.command("NOOP", "NOOP", None).await?;
        for r in untagged {
            self.note(r);
        }
        if done.status != Status::Ok {
            return Err(refusal(Phase::Command, "NOOP", &done, None));
        }
        Ok(self.take_events())
    }

    async fn open_plain(
        &mut self,
        verb: &str,
        folder: &str,
        condstore: bool,
    ) -> Result<FolderStatus> {
        let param = (condstore && self.has_capability("CONDSTORE")).then(|| "(CONDSTORE)".into());
        let (status, rest) = self.open(verb, folder, param).await?;
        for r in rest {
            self.note(r);
        }
        Ok(status)
    }

    /// SELECT/EXAMINE: the folder's status, and the answers that are not part of it
    /// (VANISHED (EARLIER) and FETCH of a QRESYNC select).
    async fn open(
        &mut self,
        verb: &str,
        folder: &str,
        param: Option<String>,
    ) -> Result<(FolderStatus, Vec<Response>)> {
        let mut head = format!("{verb} {}", Self::folder_arg(folder)?);
        if let Some(p) = param {
            head.push(' ');
            head.push_str(&p);
        }
        let what = format!("{verb} {folder}");
        // Whatever happens, the previous folder is closed and its events are stale.
        self.selected = None;
        self.events.take();
        let (untagged, done) = self.command(&what, &head, None).await?;
        if done.status != Status::Ok {
            // Servers without RFC 5530 codes (Dovecot 2.3: "NO Mailbox doesn't exist") do
            // not say whether the folder is missing or forbidden: LIST tells.
            if done.status == Status::No
                && done.code.is_none()
                && self.list_exact(folder).await?.is_none()
            {
                return Err(ConnectError::new(
                    FailureStep::Permission,
                    ErrorKind::Config,
                    format!(
                        "{what} refused: the folder does not exist (server said \"{}\"): check \
                         the folder name",
                        done.display()
                    ),
                ));
            }
            return Err(refusal(Phase::Examine, &what, &done, None));
        }
        let mut status = FolderStatus {
            name: folder.to_string(),
            uid_validity: 0,
            uid_next: None,
            exists: 0,
            highest_modseq: None,
            read_only: verb.eq_ignore_ascii_case("EXAMINE"),
        };
        let mut uid_validity = None;
        let mut rest = Vec::new();
        for r in untagged {
            match r {
                Response::Status(st) => match st.code.as_ref().map(|c| (c.name.as_str(), c)) {
                    Some(("UIDVALIDITY", c)) => uid_validity = c.args.parse().ok(),
                    Some(("UIDNEXT", c)) => status.uid_next = c.args.parse().ok(),
                    Some(("HIGHESTMODSEQ", c)) => status.highest_modseq = c.args.parse().ok(),
                    Some(("NOMODSEQ", _)) => status.highest_modseq = None,
                    Some(("CLOSED", _)) => {
                        // QRESYNC: what came before belonged to the previous folder.
                        uid_validity = None;
                        status.uid_next = None;
                        status.highest_modseq = None;
                        status.exists = 0;
                        rest.clear();
                    }
                    _ => {}
                },
                Response::Exists(n) => status.exists = n,
                Response::Vanished { .. } | Response::Fetch { .. } => rest.push(r),
                _ => {}
            }
        }
        match done.code_name() {
            Some("READ-ONLY") => status.read_only = true,
            Some("READ-WRITE") => status.read_only = false,
            _ => {}
        }
        status.uid_validity = uid_validity.ok_or_else(|| {
            ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Permanent,
                format!(
                    "the server did not report a UIDVALIDITY for {folder}: its UIDs cannot be \
                     trusted, so this folder cannot be synchronized over IMAP"
                ),
            )
        })?;
        self.selected = Some(Selected {
            status: status.clone(),
            exists: status.exists,
        });
        Ok((status, rest))
    }

    async fn enable_qresync_inner(&mut self) -> Result<bool> {
        if self.qresync {
            return Ok(true);
        }
        if !self.has_capability("QRESYNC") {
            return Ok(false);
        }
        if self.selected.is_some() {
            return Err(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Bug,
                "ENABLE QRESYNC must come before a folder is selected",
            ));
        }
        let (untagged, done) = self.command("ENABLE", "ENABLE QRESYNC", None).await?;
        let mut enabled = false;
        for r in untagged {
            match r {
                Response::Enabled(list) => {
                    enabled |= list.iter().any(|c| c.eq_ignore_ascii_case("QRESYNC"))
                }
                other => self.note(other),
            }
        }
        if done.status != Status::Ok {
            return Err(refusal(Phase::Command, "ENABLE QRESYNC", &done, None));
        }
        self.qresync = enabled;
        Ok(enabled)
    }

    async fn select_qresync_inner(
        &mut self,
        folder: &str,
        known: Option<(u32, u64)>,
        read_only: bool,
    ) -> Result<Resync> {
        if !self.qresync {
            if self.selected.is_some() && self.has_capability("QRESYNC") {
                return Err(ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Bug,
                    "QRESYNC must be enabled (enable_qresync) before a folder is selected",
                ));
            }
            if !self.enable_qresync_inner().await? {
                return Err(ConnectError::new(
                    FailureStep::Permission,
                    ErrorKind::Config,
                    "the server does not offer QRESYNC: use CONDSTORE or UID listing instead",
                ));
            }
        }
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        let param = match known {
            Some((validity, modseq)) if validity > 0 && modseq > 0 => {
                format!("(QRESYNC ({validity} {modseq}))")
            }
            _ => "(CONDSTORE)".to_string(),
        };
        let (status, rest) = self.open(verb, folder, Some(param)).await?;
        let uid_validity_changed = known.is_some_and(|(v, _)| v != status.uid_validity);
        let mut vanished = Vec::new();
        let mut changed = Vec::new();
        for r in rest {
            match r {
                Response::Vanished {
                    earlier: true,
                    uids,
                } => vanished.push(uids),
                Response::Fetch { data, .. } if data.uid.is_some() => changed.push(FlagChange {
                    uid: data.uid.unwrap_or_default(),
                    flags: data.flags.unwrap_or_default(),
                    modseq: data.modseq,
                }),
                other => self.note(other),
            }
        }
        Ok(Resync {
            status,
            uid_validity_changed,
            vanished: UidSet::union(vanished),
            changed,
        })
    }

    async fn changed_since_inner(&mut self, modseq: u64) -> Result<Changes> {
        self.require_selected("UID FETCH (CHANGEDSINCE)")?;
        if !self.condstore_active() {
            return Err(ConnectError::new(
                FailureStep::Permission,
                ErrorKind::Config,
                "the folder has no MODSEQs (no CONDSTORE, or [NOMODSEQ]): use UID listing",
            ));
        }
        let vanished = if self.qresync { " VANISHED" } else { "" };
        let head = format!("UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {modseq}{vanished})");
        let (untagged, done) = self
            .command("UID FETCH (CHANGEDSINCE)", &head, None)
            .await?;
        if done.status != Status::Ok {
            return Err(refusal(
                Phase::Command,
                "UID FETCH (CHANGEDSINCE)",
                &done,
                None,
            ));
        }
        let mut out = Changes {
            changed: Vec::new(),
            vanished: None,
        };
        let mut vanished = Vec::new();
        for r in untagged {
            match r {
                Response::Vanished {
                    earlier: true,
                    uids,
                } => vanished.push(uids),
                Response::Fetch { data, .. }
                    if data.uid.is_some() && data.modseq.is_some_and(|m| m > modseq) =>
                {
                    out.changed.push(FlagChange {
                        uid: data.uid.unwrap_or_default(),
                        flags: data.flags.unwrap_or_default(),
                        modseq: data.modseq,
                    })
                }
                other => self.note(other),
            }
        }
        out.vanished = self.qresync.then(|| UidSet::union(vanished));
        Ok(out)
    }

    async fn uid_list_inner(&mut self, from_uid: u32) -> Result<Listing> {
        self.require_selected("UID FETCH")?;
        let what = "UID FETCH";
        let from = from_uid.max(1);
        let modseq = if self.condstore_active() {
            " MODSEQ"
        } else {
            ""
        };
        let head = format!("UID FETCH {from}:* (UID RFC822.SIZE INTERNALDATE FLAGS{modseq})");
        let tag = match self.send(what, head.as_bytes(), None).await? {
            Ok(tag) => tag,
            Err(st) => return Err(refusal(Phase::Command, what, &st, None)),
        };
        // Read as they come, not collected: only the window's messages are kept.
        let mut window = ListWindow::default();
        let mut responses = 0usize;
        loop {
            responses += 1;
            if responses > LIST_MAX_RESPONSES {
                return Err(self.fail(ConnectError::protocol(format!(
                    "the server sent more than {LIST_MAX_RESPONSES} responses to one {what} listing (no real folder holds that many messages): check the server"
                ))));
            }
            let (r, _) = self
                .read_sized(what, response_limits(KEEP_SMALL, KEEP_SMALL))
                .await?;
            match r {
                Response::Tagged { tag: t, status } if t == tag => {
                    if status.status != Status::Ok {
                        return Err(refusal(Phase::Command, what, &status, None));
                    }
                    break;
                }
                Response::Tagged { tag: t, .. } => return Err(self.unexpected_tag(&t, what)),
                Response::Continuation(text) => return Err(self.asked_for_more(what, &text)),
                Response::Fetch { data, .. }
                    if data.size.is_some() && data.uid.is_some_and(|u| u >= from) =>
                {
                    let data = *data;
                    window.push(MessageMeta {
                        uid: data.uid.unwrap_or_default(),
                        size: data.size.unwrap_or_default(),
                        internal_date: data.internal_date,
                        flags: data.flags.unwrap_or_default(),
                        modseq: data.modseq,
                    });
                }
                // `from:*` returns the last message even below `from`: not new.
                Response::Fetch { data, .. } if data.size.is_some() => {}
                other => self.note(other),
            }
        }
        Ok(Listing {
            more: window.cut,
            messages: window.into_sorted(),
        })
    }

    async fn idle_inner(
        &mut self,
        start: Instant,
        max_wait: Duration,
        interrupt: impl std::future::Future<Output = ()>,
    ) -> Result<IdleEvent> {
        self.require_selected("IDLE")?;
        if !self.has_capability("IDLE") {
            return Err(ConnectError::new(
                FailureStep::Permission,
                ErrorKind::Config,
                "the server does not offer IDLE: poll for new mail instead",
            ));
        }
        if !self.events.is_empty() {
            return Ok(self.summarize_events());
        }
        let what = "IDLE";
        let tag = match self.send(what, b"IDLE", None).await {
            Ok(Ok(tag)) => tag,
            Ok(Err(st)) => return Err(refusal(Phase::Command, what, &st, None)),
            Err(e) => return self.closed_or(e),
        };
        // Wait for "+ idling".
        loop {
            let r = match self.read(what).await {
                Ok(r) => r,
                Err(e) => return self.closed_or(e),
            };
            match r {
                Response::Continuation(_) => break,
                Response::Tagged { tag: t, status } if t == tag => {
                    if status.status != Status::Ok {
                        return Err(refusal(Phase::Command, what, &status, None));
                    }
                    return Ok(self.summarize_events());
                }
                Response::Tagged { tag: t, .. } => return Err(self.unexpected_tag(&t, what)),
                other => self.note(other),
            }
        }
        let deadline = start + max_wait;
        let mut ended_by_server = false;
        let mut interrupt = std::pin::pin!(interrupt);
        while self.events.is_empty() {
            // The line reader is cancel-safe: an interrupt between lines loses nothing.
            let read = tokio::select! {
                biased;
                r = self.read_opt(what, Wait::Until(deadline)) => r,
                () = &mut interrupt => break,
            };
            let r = match read {
                Ok(Some(r)) => r,
                Ok(None) => break,
                Err(e) => return self.closed_or(e),
            };
            match r {
                Response::Tagged { tag: t, status } if t == tag => {
                    if status.status != Status::Ok {
                        return Err(refusal(Phase::Command, what, &status, None));
                    }
                    ended_by_server = true;
                    break;
                }
                Response::Tagged { tag: t, .. } => return Err(self.unexpected_tag(&t, what)),
                Response::Status(st) if st.status == Status::Bye => {
                    let e = self.wire_failure(WireError::Closed, what);
                    return self.closed_or(e);
                }
                other => self.note(other),
            }
        }
        if !ended_by_server {
            if let Err(e) = self.write(b"DONE\r\n", what).await {
                return self.closed_or(e);
            }
            let limit = (Instant::now() + self.conn.timeout).min(deadline + Duration::from_secs(1));
            loop {
                let r = match self.read_opt("DONE", Wait::Until(limit)).await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        return Err(self.fail(ConnectError::new(
                            FailureStep::Protocol,
                            ErrorKind::Transient,
                            "the server did not answer DONE (the end of IDLE) in time (one second \
                             after the IDLE wait): reconnect; if it keeps happening, check the \
                             server",
                        )));
                    }
                    Err(e) => return self.closed_or(e),
                };
                match r {
                    Response::Tagged { tag: t, status } if t == tag => {
                        if status.status != Status::Ok {
                            return Err(refusal(Phase::Command, what, &status, None));
                        }
                        break;
                    }
                    Response::Tagged { tag: t, .. } => {
                        return Err(self.unexpected_tag(&t, what));
                    }
                    other => self.note(other),
                }
            }
        }
        Ok(self.summarize_events())
    }

    /// A connection that ended (BYE, EOF, reset) during IDLE is an event, not an error.
    fn closed_or(&mut self, e: ConnectError) -> Result<IdleEvent> {
        if e.kind == ErrorKind::Transient || self.bye.is_some() {
            self.failed.get_or_insert_with(|| e.clone());
            let reason = self
                .bye
                .as_ref()
                .map(StatusResponse::display)
                .unwrap_or_else(|| e.message.clone());
            return Ok(IdleEvent::Closed(reason));
        }
        Err(e)
    }

    fn summarize_events(&mut self) -> IdleEvent {
        let events = self.take_events();
        if let Some(n) = events.iter().rev().find_map(|e| match e {
            MailboxEvent::Exists(n) => Some(*n),
            _ => None,
        }) {
            return IdleEvent::Exists(n);
        }
        // An overflowed queue may have dropped expunges.
        if events.iter().any(|e| {
            matches!(
                e,
                MailboxEvent::Expunged { .. } | MailboxEvent::Vanished(_) | MailboxEvent::Overflow
            )
        }) {
            return IdleEvent::Expunge;
        }
        if events.is_empty() {
            IdleEvent::Timeout
        } else {
            IdleEvent::FlagsChanged
        }
    }

    async fn list_exact(&mut self, name: &str) -> Result<Option<ListEntry>> {
        let arg = Self::folder_arg(name)?;
        let encoded = encode_mailbox_name(name);
        let (untagged, done) = self
            .command("LIST", &format!("LIST \"\" {arg}"), None)
            .await?;
        if done.status != Status::Ok {
            return Err(refusal(Phase::Command, "LIST", &done, None));
        }
        let mut found = None;
        for r in untagged {
            match r {
                Response::List(entry)
                    if entry.name == encoded
                        || (encoded.eq_ignore_ascii_case("INBOX")
                            && entry.name.eq_ignore_ascii_case("INBOX")) =>
                {
                    found = Some(entry)
                }
                Response::List(_) => {}
                other => self.note(other),
            }
        }
        Ok(found)
    }

    async fn create_folder_inner(&mut self, name: &str) -> Result<bool> {
        if self.list_exact(name).await?.is_some_and(|e| e.selectable()) {
            return Ok(false);
        }
        let arg = Self::folder_arg(name)?;
        let what = format!("CREATE {name}");
        let (untagged, done) = self.command(&what, &format!("CREATE {arg}"), None).await?;
        for r in untagged {
            self.note(r);
        }
        match (done.status, done.code_name()) {
            (Status::Ok, _) => {}
            (Status::No, Some("ALREADYEXISTS")) => return Ok(false),
            _ => return Err(Self::folder_refusal(&what, name, &done)),
        }
        // Subscribed, so mail clients show it; a refusal here does not matter.
        let (untagged, _) = self
            .command("SUBSCRIBE", &format!("SUBSCRIBE {arg}"), None)
            .await?;
        for r in untagged {
            self.note(r);
        }
        Ok(true)
    }

    async fn move_inner(
        &mut self,
        uids: &[u32],
        folder: &str,
        delete_original: bool,
    ) -> Result<MoveOutcome> {
        self.require_selected("UID MOVE")?;
        let arg = Self::folder_arg(folder)?;
        let set = UidSet::from_uids(uids);
        let use_move = self.has_capability("MOVE");
        let expunge = !use_move && delete_original && self.has_capability("UIDPLUS");
        let mut outcome = MoveOutcome {
            method: if use_move {
                MoveMethod::Moved
            } else if expunge {
                MoveMethod::CopiedAndExpunged
            } else {
                MoveMethod::Copied
            },
            dest_uid_validity: None,
            uid_map: Vec::new(),
        };
        for chunk in set.chunks(UIDS_PER_COMMAND) {
            let verb = if use_move { "UID MOVE" } else { "UID COPY" };
            let what = format!("{verb} to {folder}");
            let (untagged, done) = self
                .command(&what, &format!("{verb} {chunk} {arg}"), None)
                .await?;
            let mut codes: Vec<StatusResponse> = Vec::new();
            for r in untagged {
                match r {
                    Response::Status(st) if st.code_name() == Some("COPYUID") => codes.push(st),
                    other => self.note_except_own_expunges(other),
                }
            }
            if done.status != Status::Ok {
                return Err(Self::folder_refusal(&what, folder, &done));
            }
            codes.push(done);
            for st in codes {
                if let Some(code) = st.code.as_ref().filter(|c| c.name == "COPYUID")
                    && let Some((validity, source, dest)) = parse_copyuid(&code.args)
                    && source.len() == dest.len()
                {
                    outcome.dest_uid_validity = Some(validity);
                    outcome.uid_map.extend(source.iter().zip(dest.iter()));
                }
            }
            if expunge {
                let head = format!("UID STORE {chunk} +FLAGS.SILENT (\\Deleted)");
                let (untagged, done) = self.command("UID STORE", &head, None).await?;
                for r in untagged {
                    self.note(r);
                }
                if done.status != Status::Ok {
                    return Err(refusal(
                        Phase::Command,
                        "UID STORE +FLAGS (\\Deleted)",
                        &done,
                        None,
                    ));
                }
                let (untagged, done) = self
                    .command("UID EXPUNGE", &format!("UID EXPUNGE {chunk}"), None)
                    .await?;
                for r in untagged {
                    self.note_except_own_expunges(r);
                }
                if done.status != Status::Ok {
                    return Err(refusal(Phase::Command, "UID EXPUNGE", &done, None));
                }
            }
        }
        outcome.uid_map.sort_unstable();
        Ok(outcome)
    }

    async fn store_inner(&mut self, uids: &[u32], add: bool, flags: &[&str]) -> Result<()> {
        self.require_selected("UID STORE")?;
        let what = "UID STORE";
        check_flags(what, flags)?;
        let sign = if add { '+' } else { '-' };
        for chunk in UidSet::from_uids(uids).chunks(UIDS_PER_COMMAND) {
            let head = format!("UID STORE {chunk} {sign}FLAGS.SILENT ({})", flags.join(" "));
            let (untagged, done) = self.command(what, &head, None).await?;
            for r in untagged {
                self.note(r);
            }
            if done.status != Status::Ok {
                return Err(refusal(Phase::Command, what, &done, None));
            }
        }
        Ok(())
    }

    async fn append_inner(
        &mut self,
        folder: &str,
        flags: &[&str],
        internal_date: Option<InternalDate>,
        message: &[u8],
    ) -> Result<Option<AppendUid>> {
        let what = format!("APPEND to {folder}");
        check_flags(&what, flags)?;
        let mut head = format!("APPEND {}", Self::folder_arg(folder)?);
        if !flags.is_empty() {
            head.push_str(&format!(" ({})", flags.join(" ")));
        }
        if let Some(d) = internal_date {
            head.push_str(&format!(" \"{d}\""));
        }
        head.push(' ');
        let (untagged, done) = self.command(&what, &head, Some(message)).await?;
        for r in untagged {
            self.note(r);
        }
        if done.status != Status::Ok {
            return Err(Self::folder_refusal(&what, folder, &done));
        }
        Ok(done
            .code
            .as_ref()
            .filter(|c| c.name == "APPENDUID")
            .and_then(|c| parse_appenduid(&c.args))
            .and_then(|(uid_validity, uids)| {
                uids.iter()
                    .next()
                    .map(|uid| AppendUid { uid_validity, uid })
            }))
    }

    async fn append_all_inner(
        &mut self,
        folder: &str,
        flags: &[&str],
        messages: &[&[u8]],
    ) -> Result<()> {
        let what = format!("APPEND of {} messages to {folder}", messages.len());
        check_flags(&what, flags)?;
        let tag = self.tag();
        let total: usize = messages.iter().map(|m| m.len() + 32).sum();
        let mut out = Vec::with_capacity(total + 64);
        out.extend_from_slice(format!("{tag} APPEND {}", Self::folder_arg(folder)?).as_bytes());
        for m in messages {
            if flags.is_empty() {
                out.extend_from_slice(format!(" {{{}+}}\r\n", m.len()).as_bytes());
            } else {
                out.extend_from_slice(
                    format!(" ({}) {{{}+}}\r\n", flags.join(" "), m.len()).as_bytes(),
                );
            }
            out.extend_from_slice(m);
        }
        out.extend_from_slice(b"\r\n");
        self.write(&out, &what).await?;
        let (untagged, done) = self.collect(&tag, &what).await?;
        for r in untagged {
            self.note(r);
        }
        if done.status != Status::Ok {
            return Err(Self::folder_refusal(&what, folder, &done));
        }
        Ok(())
    }

    async fn search_header_inner(&mut self, name: &str, value: &str) -> Result<Vec<u32>> {
        self.require_selected("UID SEARCH")?;
        let what = "UID SEARCH HEADER";
        let name_arg = quote(name.as_bytes()).ok_or_else(|| {
            ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Bug,
                format!("{name:?} is not a valid header name"),
            )
        })?;
        let name_arg = String::from_utf8_lossy(&name_arg).into_owned();
        let (untagged, done) = match quote(value.as_bytes()) {
            Some(q) => {
                let head = format!(
                    "UID SEARCH HEADER {name_arg} {}",
                    String::from_utf8_lossy(&q)
                );
                self.command(what, &head, None).await?
            }
            None => {
                let head = format!("UID SEARCH CHARSET UTF-8 HEADER {name_arg} ");
                self.command(what, &head, Some(value.as_bytes())).await?
            }
        };
        if done.status != Status::Ok {
            return Err(refusal(Phase::Command, what, &done, None));
        }
        let mut uids = Vec::new();
        for r in untagged {
            match r {
                Response::Search { uids: found, .. } => uids.extend(found),
                other => self.note(other),
            }
        }
        uids.sort_unstable();
        uids.dedup();
        Ok(uids)
    }
}

/// Refuses anything that is not a flag (`\\Seen`) or keyword (`$Tracked`) atom.
fn check_flags(what: &str, flags: &[&str]) -> Result<()> {
    for f in flags {
        let ok = !f.is_empty()
            && f.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_graphic() && !b"(){%*\"]".contains(&b) && (b != b'\\' || i == 0)
            });
        if !ok {
            return Err(ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Bug,
                format!("{what}: {f:?} is not a valid IMAP flag or keyword"),
            ));
        }
    }
    Ok(())
}

/// Messages being fetched by [`SyncSession::fetch_bodies_with`]. Pull them with
/// [`next`](Self::next); drop it early to stop (the rest of the answers is discarded
/// before the session's next command).
#[derive(Debug)]
pub struct BodyFetch<'a> {
    session: &'a mut SyncSession,
    batches: VecDeque<UidSet>,
    in_flight: VecDeque<String>,
    requested: UidSet,
    received: HashSet<u32>,
    /// What the other untagged answers of the command in progress may still hold.
    budget: Budget,
    opts: FetchOptions,
    section: &'static str,
    items: String,
    finished: bool,
}

impl BodyFetch<'_> {
    /// The next message, or `None` when all were delivered.
    pub async fn next(&mut self) -> Result<Option<FetchedMessage>> {
        if self.finished {
            return Ok(None);
        }
        if let Some(e) = &self.session.failed {
            return Err(e.clone());
        }
        if self.session.busy {
            let e = ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Bug,
                "an earlier IMAP call was cancelled midway, so the session is out of step \
                 with the server: reconnect",
            );
            return Err(self.session.fail(e));
        }
        self.session.busy = true;
        let r = self.next_inner().await;
        self.session.busy = false;
        if r.is_err() {
            self.finished = true;
            self.abandon();
        }
        r
    }

    /// Leaves the answers still owed to the session, which reads and drops them before its
    /// next command.
    fn abandon(&mut self) {
        if !self.in_flight.is_empty() {
            let s = &mut *self.session;
            s.abandoned.extend(self.in_flight.drain(..));
            s.abandoned_max_bytes = s.abandoned_max_bytes.max(self.opts.max_bytes);
        }
    }

    async fn next_inner(&mut self) -> Result<Option<FetchedMessage>> {
        let what = "UID FETCH";
        loop {
            while self.in_flight.len() < self.opts.pipeline_depth.max(1)
                && let Some(batch) = self.batches.pop_front()
            {
                let head = format!("UID FETCH {batch} {}", self.items);
                match self.session.send(what, head.as_bytes(), None).await? {
                    Ok(tag) => self.in_flight.push_back(tag),
                    Err(st) => return Err(refusal(Phase::Command, what, &st, None)),
                }
            }
            if self.in_flight.is_empty() {
                self.finished = true;
                return Ok(None);
            }
            let keep = self.opts.max_bytes;
            let (r, size) = self
                .session
                .read_sized(what, response_limits(keep, keep))
                .await?;
            match r {
                Response::Fetch { mut data, .. }
                    if data.uid.is_some()
                        && data.sections.iter().any(|s| s.name == self.section) =>
                {
                    let uid = data.uid.unwrap_or_default();
                    if !self.requested.contains(uid) || !self.received.insert(uid) {
                        // Not asked for, or delivered already: dropped, so no caller ever
                        // moves a cursor to it.
                        tracing::warn!(
                            uid,
                            "IMAP server sent a message body that was not asked for; ignored"
                        );
                        if !self.budget.spend(size) {
                            return Err(self.session.too_many_untagged(what));
                        }
                        continue;
                    }
                    let section =
                        data.take_section(self.section)
                            .unwrap_or_else(|| response::FetchSection {
                                name: String::new(),
                                origin: None,
                                data: None,
                                announced: 0,
                            });
                    let body = section.data.unwrap_or_default();
                    let got = body.len() as u64;
                    let size = data.size.unwrap_or(section.announced);
                    let truncated = self.section == "BODY[]"
                        && (section.announced > got
                            || (got >= self.opts.max_bytes as u64 && size > got));
                    return Ok(Some(FetchedMessage {
                        uid,
                        size,
                        internal_date: data.internal_date,
                        flags: data.flags.take().unwrap_or_default(),
                        modseq: data.modseq,
                        body,
                        truncated,
                    }));
                }
                Response::Tagged { tag, status } => {
                    let Some(i) = self.in_flight.iter().position(|t| *t == tag) else {
                        return Err(self.session.unexpected_tag(&tag, what));
                    };
                    self.in_flight.remove(i);
                    self.budget = Budget::default();
                    // Messages expunged meanwhile are simply missing.
                    let expunged = status.code_name() == Some("EXPUNGEISSUED");
                    if status.status != Status::Ok && !expunged {
                        return Err(refusal(Phase::Command, what, &status, None));
                    }
                }
                Response::Continuation(text) => {
                    return Err(self.session.asked_for_more(what, &text));
                }
                other => {
                    if !self.budget.spend(size) {
                        return Err(self.session.too_many_untagged(what));
                    }
                    self.session.note(other);
                }
            }
        }
    }

    /// The requested UIDs not delivered (expunged, or never existed); complete once
    /// [`next`](Self::next) returned `None`.
    pub fn missing(&self) -> Vec<u32> {
        self.requested
            .iter()
            .filter(|u| !self.received.contains(u))
            .collect()
    }
}

impl Drop for BodyFetch<'_> {
    fn drop(&mut self) {
        self.abandon();
    }
}

#[cfg(test)]
mod tests;
