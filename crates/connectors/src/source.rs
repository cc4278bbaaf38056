//! The *mail source* role: where a mailbox's incoming mail is read from, whatever the
//! protocol. A [`MailSource`] is a closed enum with one `match` per operation (IMAP, POP3,
//! Exchange over EWS, Exchange Online over Microsoft Graph):
//!
//! - [`MailSource::open`] a folder from its committed, typed [`FolderCursor`]: what is new
//!   after it (a page of [`Listed`] messages), or that nothing changed;
//! - [`MailSource::fetch`] a page's messages (raw bytes, never marking them read);
//! - [`Opened::committed`] / [`Opened::missing`] / [`Opened::finished`]: the next cursor once
//!   the caller has committed what it fetched (the caller stores it; nothing here does);
//! - [`MailSource::wait`] for a change (IMAP IDLE, EWS streaming notifications, a Graph change
//!   notification or a short delta poll; a source without push says so with
//!   [`MailSource::can_watch`] and is polled);
//! - acknowledge: [`MailSource::delete`] (POP3 `DELE`, carried out at [`MailSource::close`])
//!   and [`MailSource::move_to_undeliverable`] (IMAP, EWS, Graph).
//!
//! The source knows nothing of the store: which messages are already kept, and whether the
//! cursor may move, is the caller's (the engine's) decision.

use crate::ews::events::EventStream;
use crate::ews::ops::{self, FolderRef, SyncChange};
use crate::ews::{self, EwsClient};
use crate::graph::GraphClient;
use crate::imap::sync::{BodyFetch, IdleEvent, SyncSession};
use crate::server::{EwsTarget, Server};
use crate::{ConnectError, ConnectOptions, ErrorKind, FailureStep, Login, Result, pop3};
use serversync_model::Timestamp;
use serversync_model::item::ItemSource;
use serversync_model::profile::IncomingProtocol;
use serversync_model::sync::{FolderCursor, ImapCursor, ServerTokenCursor};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Changes asked for per `SyncFolderItems` (at most 512).
const EWS_SYNC_PAGE: u32 = 200;
/// Changes asked for per Graph delta page.
const GRAPH_DELTA_PAGE: u32 = 100;
/// How often a Graph mailbox's delta is read when no change notification wakes it first.
pub const GRAPH_POLL: Duration = Duration::from_secs(15);

/// Messages asked for per `GetItem`, and the most MIME bytes (by their listed sizes) in one.
const EWS_GET_BATCH: usize = 16;
const EWS_GET_BYTES: u64 = 24 << 20;

/// The folder every source has.
pub const INBOX: &str = "INBOX";
/// Where messages that could not be processed go when the profile says so.
pub const UNDELIVERABLE: &str = "Undeliverable";

/// An open, signed-in connection to a mailbox's incoming server.
// One per connection, moved rarely: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum MailSource {
    Imap(ImapSource),
    Pop3(Pop3Source),
    /// Boxed: the largest source by far, and every idle IMAP session's future would
    /// otherwise be as large.
    Ews(Box<EwsSource>),
    Graph(GraphSource),
}

/// Exchange Online (Microsoft Graph): folders read with `messages/delta` (the next or delta
/// link is the cursor), messages with `$value`. New mail is found by reading the delta again:
/// at once when a change notification wakes the mailbox ([`GraphSource::wake`]), else every
/// [`GRAPH_POLL`].
pub struct GraphSource {
    client: GraphClient,
    /// Folder ids by name, found once per session.
    folders: HashMap<String, String>,
    /// Notified when a change notification for this mailbox arrives.
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
}

impl GraphSource {
    /// Makes [`MailSource::wait`] return as soon as `wake` is notified.
    pub fn set_wake(&mut self, wake: std::sync::Arc<tokio::sync::Notify>) {
        self.wake = Some(wake);
    }

    /// The client, for subscriptions.
    pub fn client(&mut self) -> &mut GraphClient {
        &mut self.client
    }
}

/// Exchange (EWS): folders read with `SyncFolderItems` (the `SyncState` is the cursor),
/// messages with `GetItem` and their MIME content, new mail announced by streaming
/// notifications on a second connection.
pub struct EwsSource {
    client: EwsClient,
    target: EwsTarget,
    login: Login,
    opts: ConnectOptions,
    /// Folder ids by name, found once per session.
    folders: HashMap<String, FolderRef>,
    /// The streaming notifications, once waited on.
    events: Option<EventStream>,
    /// The server refused notifications: waiting is timed polling.
    no_events: bool,
}

/// IMAP: a [`SyncSession`] and whether the server offers CONDSTORE.
pub struct ImapSource {
    session: SyncSession,
    condstore: bool,
}

/// POP3: the one maildrop, read with UIDL; a session ends with QUIT.
pub struct Pop3Source {
    client: pop3::Client,
    /// The LIST sizes of the last listing, by message number.
    sizes: std::collections::HashMap<u32, u64>,
}

/// A message listed after the cursor, not yet fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Where it comes from (its key in the store).
    pub source: ItemSource,
    /// The size the server reports.
    pub size: u64,
    /// The protocol's handle: the IMAP UID, the POP3 message number.
    handle: u32,
    /// When the server received it, where the listing says (Graph).
    received: Option<Timestamp>,
}

/// A fetched message.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub source: ItemSource,
    /// The raw message, or only its header when it is larger than the limit (`too_large`).
    pub raw: Vec<u8>,
    /// When the server received it (IMAP INTERNALDATE; for POP3 the topmost `Received:`
    /// field, else `Date:`); now when unknown.
    pub received: Timestamp,
    /// `(size, limit)` when the message is larger than the limit and only its header is here.
    pub too_large: Option<(u64, u64)>,
    /// Its position in the page passed to [`MailSource::fetch`].
    pub index: usize,
}

/// How a folder stands against its committed cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FolderState {
    /// Nothing changed since the cursor (IMAP CONDSTORE: same HIGHESTMODSEQ).
    Unchanged,
    /// Read on from the cursor.
    Changed,
    /// The server renumbered the folder (IMAP UIDVALIDITY): it is read from the start and
    /// what was kept before must be re-mapped, not stored twice. `times` renumberings in a
    /// row, this one included.
    Renumbered {
        from: Option<u32>,
        to: u32,
        times: u32,
    },
}

/// What [`MailSource::open`] found.
#[derive(Debug, Clone)]
pub struct Opened {
    pub folder: String,
    pub state: FolderState,
    /// The cursor to advance from (reset when the folder was renumbered).
    pub cursor: FolderCursor,
    /// New messages after the cursor, oldest first (a page).
    pub listed: Vec<Listed>,
    /// More messages follow the page: open the folder again once it is committed.
    pub more: bool,
    /// The listing is not bounded by the cursor (POP3 lists the whole maildrop every time):
    /// the caller skips what it kept already.
    pub relisted: bool,
    /// IMAP: the folder's HIGHESTMODSEQ when opened.
    highest_modseq: Option<u64>,
    /// EWS: the sync state once the whole page is committed.
    next_token: Option<String>,
    /// Renumbered folders still being re-mapped since an earlier session.
    remapping: bool,
}

impl Opened {
    /// Whether messages read now may be ones kept before under other numbers (a renumbered
    /// folder not yet read to its end).
    pub fn remapping(&self) -> bool {
        self.remapping
    }

    /// The cursor once `upto` (and everything listed before it) is committed.
    pub fn committed(&self, cursor: &mut FolderCursor, upto: &Listed) {
        match cursor {
            FolderCursor::Imap(c) => {
                c.last_uid = Some(c.last_uid.map_or(upto.handle, |u| u.max(upto.handle)));
            }
            // A sync state covers its whole page: it moves when the page's last message is.
            FolderCursor::ServerToken(_) => {
                if let Some(token) = &self.next_token
                    && self.listed.last().is_some_and(|l| l.handle == upto.handle)
                {
                    *cursor = FolderCursor::ServerToken(ServerTokenCursor {
                        token: token.clone(),
                    });
                }
            }
            FolderCursor::Pop3 => {}
        }
    }

    /// The cursor when the server did not return every message of `page` (`missing`): it
    /// stays below the first missing one, which is read again.
    pub fn missing(
        &self,
        cursor: &mut FolderCursor,
        page: &[Listed],
        missing: &[usize],
        before: &FolderCursor,
    ) {
        if let FolderCursor::Imap(c) = cursor {
            let first = missing
                .iter()
                .map(|i| page[*i].handle)
                .min()
                .unwrap_or(u32::MAX);
            let below = page.iter().map(|l| l.handle).filter(|u| *u < first).max();
            c.last_uid = below.or_else(|| before.imap().and_then(|b| b.last_uid));
            c.highest_modseq = None;
        } else if matches!(cursor, FolderCursor::ServerToken(_)) {
            // The page is read again from the state before it.
            *cursor = before.clone();
        }
    }

    /// The cursor once every page is committed: an unchanged folder is skipped next time
    /// (CONDSTORE), and a renumbered one read to its end is stable again.
    pub fn finished(&self, cursor: &mut FolderCursor, nothing_new: bool) {
        if let FolderCursor::Imap(c) = cursor {
            if nothing_new {
                c.uid_validity_changes = 0;
            }
            c.highest_modseq = self.highest_modseq;
        }
    }
}

/// What ended a [`MailSource::wait`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// New messages arrived.
    NewMail,
    /// Something else changed (expunged, flags), or nothing did within the wait.
    Nothing,
    /// The server ended the session; reconnect.
    Closed(String),
}

/// Whether serversync can read mail over `protocol` in this version.
pub fn available(protocol: IncomingProtocol) -> bool {
    matches!(
        protocol,
        IncomingProtocol::Imap
            | IncomingProtocol::Pop3
            | IncomingProtocol::Ews
            | IncomingProtocol::Graph
    )
}

fn not_available(protocol: IncomingProtocol) -> ConnectError {
    ConnectError::new(
        FailureStep::Protocol,
        ErrorKind::Config,
        format!(
            "reading mail over {} is not available in this version yet",
            serversync_model::wire_name(&protocol)
        ),
    )
}

impl MailSource {
    /// Connects to `server` and signs in with `login`.
    pub async fn connect(
        protocol: IncomingProtocol,
        server: &Server,
        login: &Login,
        opts: &ConnectOptions,
    ) -> Result<MailSource> {
        let addr = match (protocol, server) {
            (IncomingProtocol::Ews, Server::Ews(t)) => {
                let client = ews::open(t, login, opts).await?;
                return Ok(MailSource::Ews(Box::new(EwsSource {
                    client,
                    target: t.clone(),
                    login: login.clone(),
                    opts: opts.clone(),
                    folders: HashMap::new(),
                    events: None,
                    no_events: false,
                })));
            }
            (IncomingProtocol::Graph, Server::Graph(t)) => {
                let client =
                    GraphClient::connect(t, login, opts, &mut crate::StepLog::new()).await?;
                return Ok(MailSource::Graph(GraphSource {
                    client,
                    folders: HashMap::new(),
                    wake: None,
                }));
            }
            (_, Server::Mail(addr)) => addr,
            (other, _) => return Err(not_available(other)),
        };
        match protocol {
            IncomingProtocol::Imap => {
                let session = SyncSession::connect(addr, login, opts).await?;
                let condstore = session.has_capability("CONDSTORE");
                Ok(MailSource::Imap(ImapSource { session, condstore }))
            }
            IncomingProtocol::Pop3 => {
                let mut client = pop3::Client::connect(addr, opts).await?;
                client.login(login).await?;
                if !client.capabilities().is_empty() && !client.has_capability("UIDL") {
                    return Err(ConnectError::new(
                        FailureStep::Protocol,
                        ErrorKind::Config,
                        format!(
                            "the POP3 server at {addr} does not offer UIDL, which synchronization \
                             needs to recognise messages it has already read: enable UIDL on the \
                             server or use IMAP"
                        ),
                    ));
                }
                Ok(MailSource::Pop3(Pop3Source {
                    client,
                    sizes: Default::default(),
                }))
            }
            other => Err(not_available(other)),
        }
    }

    /// Whether the source can tell when mail arrives ([`MailSource::wait`]); otherwise it is
    /// polled.
    pub fn can_watch(&self) -> bool {
        match self {
            MailSource::Imap(s) => s.session.has_capability("IDLE"),
            MailSource::Pop3(_) => false,
            MailSource::Ews(_) | MailSource::Graph(_) => true,
        }
    }

    /// The server this source reached, once found (the EWS URL Autodiscover found).
    pub fn endpoint(&self) -> Option<String> {
        match self {
            MailSource::Ews(s) => Some(s.client.url()),
            _ => None,
        }
    }

    /// The shortest wait between polls this protocol is read with (POP3 lists the whole
    /// maildrop each time, so it is not polled more than once a minute).
    pub fn min_poll(protocol: IncomingProtocol) -> Duration {
        match protocol {
            IncomingProtocol::Pop3 => Duration::from_secs(60),
            _ => Duration::ZERO,
        }
    }

    /// The folders to read, the Inbox last (so it is the one watched): the `tracked` folders
    /// where the protocol has folders (POP3 has only the Inbox).
    pub fn folders(&self, tracked: &[String]) -> Vec<String> {
        let mut out = match self {
            MailSource::Imap(_) | MailSource::Ews(_) | MailSource::Graph(_) => tracked.to_vec(),
            MailSource::Pop3(_) => Vec::new(),
        };
        out.push(INBOX.to_owned());
        out
    }

    /// The Graph source, for what only Graph has (change-notification subscriptions).
    pub fn graph(&mut self) -> Option<&mut GraphSource> {
        match self {
            MailSource::Graph(s) => Some(s),
            _ => None,
        }
    }

    /// Whether [`MailSource::delete`] removes messages from the server.
    pub fn can_delete(&self) -> bool {
        matches!(self, MailSource::Pop3(_))
    }

    /// Opens `folder` from the committed `cursor` (`None`: never read) and lists what is new.
    /// A cursor of another protocol is read as none (the caller keeps each message once).
    pub async fn open(&mut self, folder: &str, cursor: Option<&FolderCursor>) -> Result<Opened> {
        match self {
            MailSource::Imap(s) => s.open(folder, cursor).await,
            MailSource::Pop3(s) => s.open(folder).await,
            MailSource::Ews(s) => s.open(folder, cursor).await,
            MailSource::Graph(s) => s.open(folder, cursor).await,
        }
    }

    /// Starts fetching `page` (listed by [`MailSource::open`]); a message over `max_bytes` is
    /// fetched by its header only.
    pub async fn fetch<'a>(
        &'a mut self,
        page: &'a [Listed],
        max_bytes: usize,
    ) -> Result<Fetch<'a>> {
        Ok(match self {
            MailSource::Imap(s) => {
                let uids: Vec<u32> = page.iter().map(|l| l.handle).collect();
                let folder = match page.first().map(|l| &l.source) {
                    Some(ItemSource::Imap {
                        folder,
                        uid_validity,
                        ..
                    }) => (folder.clone(), *uid_validity),
                    _ => (String::new(), 0),
                };
                Fetch::Imap {
                    fetch: s.session.fetch_bodies(&uids, max_bytes).await?,
                    page,
                    folder,
                    max_bytes,
                }
            }
            MailSource::Graph(s) => Fetch::Graph {
                client: &mut s.client,
                page,
                next: 0,
                max_bytes,
                ready: VecDeque::new(),
            },
            MailSource::Ews(s) => Fetch::Ews {
                client: &mut s.client,
                page,
                next: 0,
                max_bytes,
                ready: VecDeque::new(),
                missing: Vec::new(),
            },
            MailSource::Pop3(s) => {
                // Room above the limit for the dot-stuffing and line-ending slack of RETR.
                s.client
                    .set_max_message_size(max_bytes.saturating_add(64 * 1024));
                Fetch::Pop3 {
                    source: s,
                    page,
                    next: 0,
                    max_bytes,
                }
            }
        })
    }

    /// Whether [`Self::wait_until`] can wait long (up to IMAP's 29-minute IDLE) and still end
    /// cleanly when interrupted; other sources are waited on in short steps.
    pub fn waits_long(&self) -> bool {
        matches!(self, MailSource::Imap(_))
    }

    /// [`Self::wait`] that ends early, with [`Change::Nothing`], when `interrupt` completes.
    /// IMAP ends its IDLE with `DONE` and the session stays usable; for other sources the
    /// wait is abandoned.
    pub async fn wait_until(
        &mut self,
        max: Duration,
        interrupt: impl std::future::Future<Output = ()>,
    ) -> Result<Change> {
        match self {
            MailSource::Imap(s) => Ok(match s.session.idle_until(max, interrupt).await? {
                IdleEvent::Exists(_) => Change::NewMail,
                IdleEvent::Closed(why) => Change::Closed(why),
                IdleEvent::Expunge | IdleEvent::FlagsChanged | IdleEvent::Timeout => {
                    Change::Nothing
                }
            }),
            // Boxed: the HTTP sources' waits are several KB, and an IMAP session's future,
            // held by every idle mailbox, would otherwise be as large.
            other => tokio::select! {
                r = Box::pin(other.wait(max)) => r,
                () = interrupt => Ok(Change::Nothing),
            },
        }
    }

    /// Waits up to `max` for a change of the folder opened last.
    pub async fn wait(&mut self, max: Duration) -> Result<Change> {
        match self {
            MailSource::Imap(s) => Ok(match s.session.idle(max).await? {
                IdleEvent::Exists(_) => Change::NewMail,
                IdleEvent::Closed(why) => Change::Closed(why),
                IdleEvent::Expunge | IdleEvent::FlagsChanged | IdleEvent::Timeout => {
                    Change::Nothing
                }
            }),
            MailSource::Pop3(_) => {
                tokio::time::sleep(max).await;
                Ok(Change::Nothing)
            }
            MailSource::Ews(s) => s.wait(max).await,
            MailSource::Graph(s) => {
                let nap = tokio::time::sleep(max.min(GRAPH_POLL));
                match &s.wake {
                    Some(w) => tokio::select! {
                        _ = w.notified() => {}
                        _ = nap => {}
                    },
                    None => nap.await,
                }
                Ok(Change::NewMail)
            }
        }
    }

    /// Marks `messages` of the maildrop for deletion; they are removed at [`MailSource::close`]
    /// (a session cut off before deletes nothing). Does nothing where [`MailSource::can_delete`]
    /// is false.
    pub async fn delete(&mut self, messages: &[Listed]) -> Result<()> {
        if let MailSource::Pop3(s) = self {
            for l in messages {
                s.client.dele(l.handle).await?;
            }
        }
        Ok(())
    }

    /// Moves messages of the folder opened last to [`UNDELIVERABLE`] (created when missing).
    /// Does nothing for a source without folders.
    pub async fn move_to_undeliverable(
        &mut self,
        folder: &str,
        messages: &[ItemSource],
    ) -> Result<usize> {
        if let MailSource::Ews(s) = self {
            return s.move_to_undeliverable(folder, messages).await;
        }
        if let MailSource::Graph(s) = self {
            return s.move_to_undeliverable(folder, messages).await;
        }
        let MailSource::Imap(s) = self else {
            return Ok(0);
        };
        let uids: Vec<u32> = messages
            .iter()
            .filter_map(|m| match m {
                ItemSource::Imap { uid, .. } => Some(*uid),
                _ => None,
            })
            .collect();
        if folder == UNDELIVERABLE || uids.is_empty() {
            return Ok(0);
        }
        s.session.create_folder_if_missing(UNDELIVERABLE).await?;
        s.session
            .uid_move_or_copy(&uids, UNDELIVERABLE, true)
            .await?;
        Ok(uids.len())
    }

    /// Ends the session: IMAP LOGOUT (a failure of which changes nothing), POP3 QUIT (which
    /// carries out the deletions, so its failure is reported).
    pub async fn close(self) -> Result<()> {
        match self {
            MailSource::Imap(s) => {
                let _ = s.session.logout().await;
                Ok(())
            }
            MailSource::Pop3(s) => s.client.quit().await,
            MailSource::Graph(_) => Ok(()),
            MailSource::Ews(mut s) => {
                if let Some(events) = s.events.take() {
                    events.close().await;
                }
                Ok(())
            }
        }
    }
}

impl GraphSource {
    /// The id of the folder named `name` (the Inbox by its well-known name).
    async fn folder(&mut self, name: &str) -> Result<String> {
        if name.eq_ignore_ascii_case(INBOX) {
            return Ok("inbox".to_owned());
        }
        if let Some(f) = self.folders.get(name) {
            return Ok(f.clone());
        }
        let found = self.client.find_folder(name).await?.ok_or_else(|| {
            ConnectError::new(
                FailureStep::Protocol,
                ErrorKind::Config,
                format!(
                    "the mailbox has no folder named {name}: create it, or remove it from the \
                     tracked folders"
                ),
            )
            .with_code("folder_not_found")
        })?;
        self.folders.insert(name.to_owned(), found.id.clone());
        Ok(found.id)
    }

    async fn open(&mut self, folder: &str, cursor: Option<&FolderCursor>) -> Result<Opened> {
        let id = self.folder(folder).await?;
        let mut token = match cursor {
            Some(FolderCursor::ServerToken(t)) if !t.token.is_empty() => Some(t.token.clone()),
            _ => None,
        };
        let page = match &token {
            Some(link) => match self.client.delta_from(link, GRAPH_DELTA_PAGE).await {
                Err(e) if e.code.as_deref() == Some("sync_state_invalid") => {
                    // The delta link expired: the folder is read from the start (each message
                    // is kept once, by its id).
                    tracing::warn!(folder, "Graph delta link expired; reading the folder again");
                    token = None;
                    self.client.delta_start(&id, GRAPH_DELTA_PAGE).await?
                }
                r => r?,
            },
            None => self.client.delta_start(&id, GRAPH_DELTA_PAGE).await?,
        };
        let listed: Vec<Listed> = page
            .messages
            .into_iter()
            .filter(|m| !m.removed)
            .enumerate()
            .map(|(i, m)| Listed {
                source: ItemSource::Graph {
                    folder: folder.to_owned(),
                    id: m.id,
                },
                size: 0,
                handle: u32::try_from(i).unwrap_or(u32::MAX),
                received: m.received,
            })
            .collect();
        let before = FolderCursor::ServerToken(ServerTokenCursor {
            token: token.unwrap_or_default(),
        });
        let cursor = if listed.is_empty() {
            FolderCursor::ServerToken(ServerTokenCursor {
                token: page.link.clone(),
            })
        } else {
            before
        };
        Ok(Opened {
            folder: folder.to_owned(),
            state: FolderState::Changed,
            cursor,
            listed,
            more: page.more,
            relisted: false,
            highest_modseq: None,
            next_token: Some(page.link),
            remapping: false,
        })
    }

    async fn move_to_undeliverable(
        &mut self,
        folder: &str,
        messages: &[ItemSource],
    ) -> Result<usize> {
        let ids: Vec<&str> = messages
            .iter()
            .filter_map(|m| match m {
                ItemSource::Graph { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        if folder == UNDELIVERABLE || ids.is_empty() {
            return Ok(0);
        }
        let target = self.client.folder_or_create(UNDELIVERABLE).await?;
        for id in &ids {
            self.client.move_message(id, &target.id).await?;
        }
        Ok(ids.len())
    }
}

impl EwsSource {
    /// The folder named `name`: the Inbox, or a folder found by its display name.
    async fn folder(&mut self, name: &str) -> Result<FolderRef> {
        if name.eq_ignore_ascii_case(INBOX) {
            return Ok(FolderRef::INBOX);
        }
        if let Some(f) = self.folders.get(name) {
            return Ok(f.clone());
        }
        let found = ops::find_folder(&mut self.client, name)
            .await?
            .ok_or_else(|| {
                ConnectError::new(
                    FailureStep::Protocol,
                    ErrorKind::Config,
                    format!(
                        "the mailbox has no folder named {name}: create it, or remove it from the \
                     tracked folders"
                    ),
                )
                .with_code("folder_not_found")
            })?;
        let f = FolderRef::Id(found.id);
        self.folders.insert(name.to_owned(), f.clone());
        Ok(f)
    }

    async fn open(&mut self, folder: &str, cursor: Option<&FolderCursor>) -> Result<Opened> {
        let f = self.folder(folder).await?;
        let mut token = match cursor {
            Some(FolderCursor::ServerToken(t)) => Some(t.token.clone()),
            _ => None,
        };
        let page =
            match ops::sync_folder_items(&mut self.client, &f, token.as_deref(), EWS_SYNC_PAGE)
                .await
            {
                Err(e) if e.code.as_deref() == Some("sync_state_invalid") && token.is_some() => {
                    // The server forgot the state: the folder is read from the start (each message
                    // is kept once, by its item id).
                    tracing::warn!(
                        folder,
                        "EWS sync state refused; reading the folder from the start"
                    );
                    token = None;
                    ops::sync_folder_items(&mut self.client, &f, None, EWS_SYNC_PAGE).await?
                }
                r => r?,
            };
        let listed: Vec<Listed> = page
            .changes
            .into_iter()
            .filter_map(|c| match c {
                SyncChange::Create(item) => Some(item),
                _ => None,
            })
            .enumerate()
            .map(|(i, item)| Listed {
                source: ItemSource::Ews {
                    folder: folder.to_owned(),
                    item_id: item.id,
                },
                size: item.size.unwrap_or(0),
                handle: u32::try_from(i).unwrap_or(u32::MAX),
                received: None,
            })
            .collect();
        let before = FolderCursor::ServerToken(ServerTokenCursor {
            token: token.unwrap_or_default(),
        });
        // A page with nothing new moves the cursor at once; otherwise its last message does.
        let cursor = if listed.is_empty() {
            FolderCursor::ServerToken(ServerTokenCursor {
                token: page.sync_state.clone(),
            })
        } else {
            before
        };
        Ok(Opened {
            folder: folder.to_owned(),
            state: FolderState::Changed,
            cursor,
            listed,
            more: !page.last,
            relisted: false,
            highest_modseq: None,
            next_token: Some(page.sync_state),
            remapping: false,
        })
    }

    /// Waits for new mail: streaming notifications on a connection of their own (subscribed
    /// on first use), or, where the server refuses them, timed polling.
    async fn wait(&mut self, max: Duration) -> Result<Change> {
        if self.no_events {
            tokio::time::sleep(max.min(Duration::from_secs(60))).await;
            return Ok(Change::NewMail);
        }
        if self.events.is_none() {
            match EventStream::start(&self.target, &self.login, &self.opts, &[FolderRef::INBOX])
                .await
            {
                Ok(s) => self.events = Some(s),
                Err(e) if e.kind == ErrorKind::Permanent || e.kind == ErrorKind::Config => {
                    tracing::warn!(error = %e, "EWS streaming notifications refused; polling instead");
                    self.no_events = true;
                    return Ok(Change::NewMail);
                }
                Err(e) => return Err(e),
            }
        }
        let Some(events) = self.events.as_mut() else {
            return Ok(Change::Nothing);
        };
        match events.next(max).await {
            Ok(Some(true)) => Ok(Change::NewMail),
            Ok(Some(false)) => Ok(Change::Nothing),
            Ok(None) => {
                // The stream ended (its time is up, or the subscription expired): start again
                // on the next wait, and read the folder meanwhile in case something arrived.
                if let Some(e) = self.events.take() {
                    e.close().await;
                }
                Ok(Change::NewMail)
            }
            Err(e) => {
                self.events = None;
                Err(e)
            }
        }
    }

    async fn move_to_undeliverable(
        &mut self,
        folder: &str,
        messages: &[ItemSource],
    ) -> Result<usize> {
        let ids: Vec<&str> = messages
            .iter()
            .filter_map(|m| match m {
                ItemSource::Ews { item_id, .. } => Some(item_id.as_str()),
                _ => None,
            })
            .collect();
        if folder == UNDELIVERABLE || ids.is_empty() {
            return Ok(0);
        }
        let target = ops::folder_or_create(&mut self.client, UNDELIVERABLE).await?;
        ops::move_items(&mut self.client, &ids, &FolderRef::Id(target.id)).await
    }
}

impl ImapSource {
    async fn open(&mut self, folder: &str, cursor: Option<&FolderCursor>) -> Result<Opened> {
        let status = self.session.select(folder, self.condstore).await?;
        let mut cursor = cursor
            .and_then(FolderCursor::imap)
            .cloned()
            .unwrap_or_default();
        let mut state = FolderState::Changed;
        if cursor
            .uid_validity
            .is_some_and(|v| v != status.uid_validity)
        {
            let times = cursor.uid_validity_changes + 1;
            state = FolderState::Renumbered {
                from: cursor.uid_validity,
                to: status.uid_validity,
                times,
            };
            cursor = ImapCursor {
                uid_validity_changes: times,
                ..Default::default()
            };
        } else if cursor.uid_validity.is_some()
            && status.highest_modseq.is_some()
            && cursor.highest_modseq == status.highest_modseq
        {
            // CONDSTORE: nothing in the folder changed since the committed round (a new
            // message raises HIGHESTMODSEQ too). A renumbered folder is now stable.
            cursor.uid_validity_changes = 0;
            return Ok(Opened {
                folder: folder.to_owned(),
                state: FolderState::Unchanged,
                cursor: FolderCursor::Imap(cursor),
                listed: Vec::new(),
                more: false,
                relisted: false,
                highest_modseq: status.highest_modseq,
                next_token: None,
                remapping: false,
            });
        }
        cursor.uid_validity = Some(status.uid_validity);
        let from = cursor.last_uid.map_or(1, |u| u.saturating_add(1));
        // A huge folder is listed in parts (the lowest UIDs first): `more` reads on.
        let listing = self.session.uid_listing(from).await?;
        let listed = listing
            .messages
            .into_iter()
            .filter(|meta| meta.uid >= from)
            .map(|meta| Listed {
                source: ItemSource::Imap {
                    folder: folder.into(),
                    uid_validity: status.uid_validity,
                    uid: meta.uid,
                },
                size: meta.size,
                handle: meta.uid,
                received: None,
            })
            .collect();
        Ok(Opened {
            folder: folder.to_owned(),
            state,
            remapping: cursor.uid_validity_changes > 0,
            cursor: FolderCursor::Imap(cursor),
            listed,
            more: listing.more,
            relisted: false,
            highest_modseq: status.highest_modseq,
            next_token: None,
        })
    }
}

impl Pop3Source {
    async fn open(&mut self, folder: &str) -> Result<Opened> {
        let listing = self.client.uidl().await?;
        self.sizes = self
            .client
            .list()
            .await?
            .into_iter()
            .map(|l| (l.number, l.size))
            .collect();
        let listed = listing
            .into_iter()
            .map(|l| Listed {
                size: self.sizes.get(&l.number).copied().unwrap_or(0),
                source: ItemSource::Pop3 { uidl: l.uid },
                handle: l.number,
                received: None,
            })
            .collect();
        Ok(Opened {
            folder: folder.to_owned(),
            state: FolderState::Changed,
            cursor: FolderCursor::Pop3,
            listed,
            more: false,
            relisted: true,
            highest_modseq: None,
            next_token: None,
            remapping: false,
        })
    }
}

/// Reads the next batch of `page` from `*next` into `ready`: MIME content for messages within
/// `max_bytes`, the header alone for a larger one; a message the server no longer has is
/// left out (it was deleted meanwhile), one it failed to give is `missing`.
async fn ews_fetch_batch(
    client: &mut EwsClient,
    page: &[Listed],
    next: &mut usize,
    max_bytes: u64,
    ready: &mut VecDeque<Fetched>,
    missing: &mut Vec<usize>,
) -> Result<()> {
    let item_id = |l: &Listed| match &l.source {
        ItemSource::Ews { item_id, .. } => item_id.clone(),
        _ => String::new(),
    };
    if page[*next].size > max_bytes {
        let index = *next;
        *next += 1;
        let (header, received) = ops::get_headers(client, &item_id(&page[index])).await?;
        ready.push_back(Fetched {
            source: page[index].source.clone(),
            raw: header,
            received: received.unwrap_or_else(chrono::Utc::now),
            too_large: Some((page[index].size, max_bytes)),
            index,
        });
        return Ok(());
    }
    let start = *next;
    let mut bytes = 0u64;
    while *next < page.len()
        && *next - start < EWS_GET_BATCH
        && page[*next].size <= max_bytes
        && (*next == start || bytes + page[*next].size <= EWS_GET_BYTES)
    {
        bytes += page[*next].size;
        *next += 1;
    }
    let ids: Vec<String> = page[start..*next].iter().map(item_id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = ops::get_mime(client, &refs).await?;
    for (offset, r) in got.into_iter().enumerate() {
        let index = start + offset;
        match r {
            Ok(item) => ready.push_back(Fetched {
                source: page[index].source.clone(),
                raw: item.mime,
                received: item.received.unwrap_or_else(chrono::Utc::now),
                too_large: None,
                index,
            }),
            Err(e) if e.message.contains("ErrorItemNotFound") => {
                tracing::info!(item = %ids[offset], "EWS item deleted before it was read");
            }
            Err(e) => {
                tracing::warn!(item = %ids[offset], error = %e, "EWS item not returned");
                missing.push(index);
            }
        }
    }
    Ok(())
}

/// Messages being fetched: [`Fetch::next`] until `None`, then [`Fetch::missing`].
#[allow(clippy::large_enum_variant)]
pub enum Fetch<'a> {
    Imap {
        fetch: BodyFetch<'a>,
        page: &'a [Listed],
        folder: (String, u32),
        max_bytes: usize,
    },
    Pop3 {
        source: &'a mut Pop3Source,
        page: &'a [Listed],
        next: usize,
        max_bytes: usize,
    },
    Graph {
        client: &'a mut GraphClient,
        page: &'a [Listed],
        /// The next position of the page to ask for.
        next: usize,
        max_bytes: usize,
        /// Read by the last `$batch`, not handed out yet: position and MIME (`None`: gone).
        ready: VecDeque<(usize, Option<Vec<u8>>)>,
    },
    Ews {
        client: &'a mut EwsClient,
        page: &'a [Listed],
        /// The next position of the page to ask for.
        next: usize,
        max_bytes: usize,
        ready: VecDeque<Fetched>,
        missing: Vec<usize>,
    },
}

impl Fetch<'_> {
    /// The next message, in the server's order.
    pub async fn next(&mut self) -> Result<Option<Fetched>> {
        match self {
            Fetch::Graph {
                client,
                page,
                next,
                max_bytes,
                ready,
            } => loop {
                if ready.is_empty() {
                    if *next >= page.len() {
                        return Ok(None);
                    }
                    // The next messages in one `$batch` round trip.
                    let end = (*next + crate::graph::MAX_BATCH).min(page.len());
                    let ids: Vec<&str> = page[*next..end]
                        .iter()
                        .map(|l| match &l.source {
                            ItemSource::Graph { id, .. } => id.as_str(),
                            _ => "",
                        })
                        .collect();
                    let got = client.mime_batch(&ids).await?;
                    ready.extend((*next..end).zip(got));
                    *next = end;
                }
                let Some((index, raw)) = ready.pop_front() else {
                    continue;
                };
                let l = &page[index];
                let Some(raw) = raw else {
                    tracing::info!(source = ?l.source, "Graph message deleted before it was read");
                    continue;
                };
                let received = l.received.unwrap_or_else(chrono::Utc::now);
                if raw.len() > *max_bytes {
                    let size = raw.len() as u64;
                    return Ok(Some(Fetched {
                        source: l.source.clone(),
                        raw: header_of(&raw).to_vec(),
                        received,
                        too_large: Some((size, *max_bytes as u64)),
                        index,
                    }));
                }
                return Ok(Some(Fetched {
                    source: l.source.clone(),
                    raw,
                    received,
                    too_large: None,
                    index,
                }));
            },
            Fetch::Ews {
                client,
                page,
                next,
                max_bytes,
                ready,
                missing,
            } => loop {
                if let Some(f) = ready.pop_front() {
                    return Ok(Some(f));
                }
                if *next >= page.len() {
                    return Ok(None);
                }
                ews_fetch_batch(client, page, next, *max_bytes as u64, ready, missing).await?;
            },
            Fetch::Imap {
                fetch,
                page,
                folder,
                max_bytes,
            } => {
                let Some(msg) = fetch.next().await? else {
                    return Ok(None);
                };
                let index = page
                    .binary_search_by_key(&msg.uid, |l| l.handle)
                    .unwrap_or(0);
                let received = msg
                    .internal_date
                    .and_then(|d| chrono::DateTime::from_timestamp(d.timestamp, 0))
                    .unwrap_or_else(chrono::Utc::now);
                let too_large = msg.truncated.then_some((msg.size, *max_bytes as u64));
                let raw = match msg.header().filter(|_| msg.truncated) {
                    Some(h) => h.to_vec(),
                    None => msg.body,
                };
                Ok(Some(Fetched {
                    source: ItemSource::Imap {
                        folder: folder.0.clone(),
                        uid_validity: folder.1,
                        uid: msg.uid,
                    },
                    raw,
                    received,
                    too_large,
                    index,
                }))
            }
            Fetch::Pop3 {
                source,
                page,
                next,
                max_bytes,
            } => {
                let Some(l) = page.get(*next) else {
                    return Ok(None);
                };
                let index = *next;
                *next += 1;
                if l.size > *max_bytes as u64 {
                    // Too large to read in full: its header only; it stays on the server.
                    let header = source.client.top(l.handle, 0).await?;
                    return Ok(Some(Fetched {
                        source: l.source.clone(),
                        received: pop3::received_at(&header),
                        raw: header,
                        too_large: Some((l.size, *max_bytes as u64)),
                        index,
                    }));
                }
                let raw = source.client.retr(l.handle).await?;
                Ok(Some(Fetched {
                    source: l.source.clone(),
                    received: pop3::received_at(&raw),
                    raw,
                    too_large: None,
                    index,
                }))
            }
        }
    }

    /// Positions (in the page) of the messages the server did not return.
    pub fn missing(&self) -> Vec<usize> {
        match self {
            Fetch::Ews { missing, .. } => missing.clone(),
            Fetch::Imap { fetch, page, .. } => {
                let missing = fetch.missing();
                page.iter()
                    .enumerate()
                    .filter(|(_, l)| missing.contains(&l.handle))
                    .map(|(i, _)| i)
                    .collect()
            }
            Fetch::Pop3 { .. } | Fetch::Graph { .. } => Vec::new(),
        }
    }
}

/// A message's header section, its blank line included (all of it when there is none).
fn header_of(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 2))
        .unwrap_or(raw.len());
    &raw[..end]
}
