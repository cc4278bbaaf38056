//! The Email Router's LMTP listener (RFC 2033): an MTA such as Postfix delivers here. Each
//! message is parsed once ([`ParsedMessage`]) and recorded for every accepted recipient by
//! [`take_in_parsed`] — the same decisions as synced mail and `serversync deliver`.
//!
//! A recipient is accepted at `RCPT TO` only when it is the address of a mailbox whose incoming
//! delivery method is the Email Router, in the organization holding the address's domain
//! ([`find_router_mailbox`]). After `DATA` there is one reply
//! per accepted recipient: 250 once the item is committed (a duplicate is also 250: it is kept
//! once), 451 when the store failed (the MTA keeps the message and retries; nothing is lost),
//! 552 when the message is over the size limit. Lines and messages are bounded, idle clients
//! are disconnected, and the number of connections is limited.
//!
//! **Memory.** While a message arrives, at most [`LmtpConfig::spool_threshold_bytes`] of it is
//! held in memory per connection; beyond that it is written to an anonymous temporary file
//! (in [`LmtpConfig::spool_dir`], gone when closed, even after a crash). To be parsed and
//! stored a message must be in memory whole: it first reserves its size in a [`MemoryBudget`]
//! shared by all connections. When the budget stays full for [`LmtpConfig::memory_wait`], the
//! recipients get `452 4.3.1` (the MTA keeps the message and retries) instead of the process
//! growing. So memory is bounded by connections × threshold while receiving, plus the budget
//! (times the small factor of parsing and storing) while processing.

use crate::intake::{
    IntakeOutcome, ParsedMessage, RouterLookupError, RouterTarget, find_router_mailbox,
    take_in_parsed,
};
use serversync_connectors::lmtp::{
    Read, parse_mail_from, parse_rcpt_to, read_line, read_piece, split_command,
};
use serversync_model::item::ItemSource;
use serversync_store::Store;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Longest command line accepted (RFC 5321 asks for at least 512 octets).
const MAX_COMMAND_LINE: usize = 4096;
/// Commands refused in one session (counted from LHLO) before the connection is closed.
const MAX_ERRORS: u32 = 25;
/// Message data is read in pieces of at most this many bytes (a line may be longer).
const DATA_PIECE: usize = 64 * 1024;

/// Settings of the LMTP listener (the `[router]` section of the configuration).
#[derive(Debug, Clone)]
pub struct LmtpConfig {
    /// Name in the greeting and the LHLO reply.
    pub hostname: String,
    /// Largest message accepted, in bytes (advertised as SIZE; larger ones get 552).
    pub max_message_bytes: u64,
    /// Recipients accepted per transaction.
    pub max_recipients: usize,
    /// Connections served at once; more are told 421 and closed.
    pub max_connections: usize,
    /// A client that sends nothing for this long is disconnected.
    pub idle_timeout: Duration,
    /// Told when a message was recorded, so the next stage (the engine's tracker) runs at once.
    pub stored: Option<Arc<tokio::sync::Notify>>,
    /// Bytes of a message held in memory while it arrives; the rest goes to a temporary file.
    pub spool_threshold_bytes: usize,
    /// Directory of the temporary files (default: the system's, `TMPDIR`).
    pub spool_dir: PathBuf,
    /// Bytes of messages being parsed and stored at once, across all connections.
    pub memory: Arc<MemoryBudget>,
    /// How long a complete message waits for room in `memory` before its recipients are
    /// told 452 (try again later).
    pub memory_wait: Duration,
    /// Counters of what the listener did.
    pub stats: Arc<LmtpStats>,
}

/// Memory shared by all LMTP connections for the messages being parsed and stored: each
/// reserves its size first (a message larger than the whole budget reserves all of it, so it
/// is processed alone).
pub struct MemoryBudget {
    limit_kib: usize,
    permits: Arc<Semaphore>,
}

/// Memory reserved in a [`MemoryBudget`]; given back when dropped.
pub struct Reservation {
    _permit: OwnedSemaphorePermit,
}

impl MemoryBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> Arc<Self> {
        let limit_kib = usize::try_from(bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .clamp(1, u32::MAX as usize);
        Arc::new(Self {
            limit_kib,
            permits: Arc::new(Semaphore::new(limit_kib)),
        })
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit_kib as u64 * 1024
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        (self.limit_kib - self.permits.available_permits().min(self.limit_kib)) as u64 * 1024
    }

    fn kib(&self, bytes: u64) -> u32 {
        // Bounded by `limit_kib`, which fits in u32.
        usize::try_from(bytes.div_ceil(1024))
            .unwrap_or(usize::MAX)
            .clamp(1, self.limit_kib) as u32
    }

    /// Reserves `bytes` (at most the whole budget) if there is room now.
    pub fn try_reserve(&self, bytes: u64) -> Option<Reservation> {
        self.permits
            .clone()
            .try_acquire_many_owned(self.kib(bytes))
            .ok()
            .map(|p| Reservation { _permit: p })
    }

    /// Reserves `bytes` (at most the whole budget), waiting at most `wait` for room.
    pub async fn reserve(&self, bytes: u64, wait: Duration) -> Option<Reservation> {
        let n = self.kib(bytes);
        match tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Some(Reservation { _permit: p }),
            _ => None,
        }
    }
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("limit", &self.limit())
            .field("in_use", &self.in_use())
            .finish()
    }
}

/// What the listener did (for tests; the metrics `serversync_lmtp_*` count the same).
#[derive(Debug, Default)]
pub struct LmtpStats {
    messages_parsed: AtomicU64,
    messages_spooled: AtomicU64,
    deferred_for_memory: AtomicU64,
    spooling_now: AtomicUsize,
}

impl LmtpStats {
    /// Messages parsed: one per message received whole, however many recipients it has.
    pub fn messages_parsed(&self) -> u64 {
        self.messages_parsed.load(Ordering::Relaxed)
    }
    /// Messages that went over the spool threshold and were written to a temporary file.
    pub fn messages_spooled(&self) -> u64 {
        self.messages_spooled.load(Ordering::Relaxed)
    }
    /// Messages whose recipients were told 452 because the memory budget stayed full.
    pub fn deferred_for_memory(&self) -> u64 {
        self.deferred_for_memory.load(Ordering::Relaxed)
    }
    /// Messages arriving into a temporary file right now.
    pub fn spooling_now(&self) -> usize {
        self.spooling_now.load(Ordering::Relaxed)
    }
}

impl Default for LmtpConfig {
    fn default() -> Self {
        Self {
            hostname: std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
                .unwrap_or_else(|| "serversync".into()),
            max_message_bytes: 150 << 20,
            max_recipients: 100,
            max_connections: 64,
            idle_timeout: Duration::from_secs(300),
            stored: None,
            spool_threshold_bytes: 1 << 20,
            spool_dir: std::env::temp_dir(),
            memory: MemoryBudget::new(256 << 20),
            memory_wait: Duration::from_secs(60),
            stats: Arc::default(),
        }
    }
}

/// Serves LMTP on `listener` until `shutdown` is cancelled; then stops accepting, tells idle
/// clients 421, lets deliveries in progress finish (bounded by the idle timeout) and returns.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    config: LmtpConfig,
    shutdown: CancellationToken,
) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, keep serving.
                        tracing::warn!(error = %e, "LMTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let session = Session::new(stream, peer, store.clone(), config.clone());
                        let stop = shutdown.clone();
                        sessions.spawn(async move {
                            session.run(stop).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(%peer, limit = config.max_connections, "LMTP connection refused: too many connections");
                        metrics::counter!("serversync_lmtp_connections_refused_total").increment(1);
                        sessions.spawn(async move {
                            let mut stream = stream;
                            let _ = tokio::time::timeout(
                                Duration::from_secs(5),
                                stream.write_all(b"421 4.3.2 too many connections; try again later\r\n"),
                            )
                            .await;
                        });
                    }
                }
            }
        }
    }
    drop(listener);
    let grace = config.idle_timeout + Duration::from_secs(5);
    if tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("LMTP sessions did not finish in time; closing them");
        sessions.shutdown().await;
    }
    tracing::info!("LMTP listener stopped");
}

/// A recipient accepted at RCPT TO.
struct Recipient {
    address: String,
    target: RouterTarget,
}

#[derive(Default)]
struct Transaction {
    sender: Option<String>,
    recipients: Vec<Recipient>,
}

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    peer: SocketAddr,
    store: Store,
    config: Arc<LmtpConfig>,
    greeted: bool,
    tx: Transaction,
    errors: u32,
}

/// A message as it arrives: in memory up to a threshold, then in an anonymous temporary file.
struct Spool<'a> {
    memory: Vec<u8>,
    file: Option<tokio::fs::File>,
    len: u64,
    threshold: usize,
    config: &'a LmtpConfig,
}

impl<'a> Spool<'a> {
    fn new(config: &'a LmtpConfig) -> Self {
        Self {
            memory: Vec::new(),
            file: None,
            len: 0,
            threshold: config.spool_threshold_bytes,
            config,
        }
    }

    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() && self.memory.len() + data.len() > self.threshold {
            let dir = self.config.spool_dir.clone();
            let f = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                .await
                .map_err(std::io::Error::other)??;
            let mut f = tokio::fs::File::from_std(f);
            f.write_all(&self.memory).await?;
            self.memory = Vec::new();
            self.file = Some(f);
            self.config
                .stats
                .messages_spooled
                .fetch_add(1, Ordering::Relaxed);
            self.config
                .stats
                .spooling_now
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("serversync_lmtp_messages_spooled_total").increment(1);
        }
        match &mut self.file {
            Some(f) => f.write_all(data).await?,
            None => self.memory.extend_from_slice(data),
        }
        self.len += data.len() as u64;
        Ok(())
    }

    /// The whole message, read back into memory (the temporary file is closed and so gone).
    async fn into_bytes(mut self) -> std::io::Result<Vec<u8>> {
        let Some(mut f) = self.file.take() else {
            return Ok(std::mem::take(&mut self.memory));
        };
        self.config
            .stats
            .spooling_now
            .fetch_sub(1, Ordering::Relaxed);
        f.flush().await?;
        f.rewind().await?;
        let mut all = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        f.read_to_end(&mut all).await?;
        Ok(all)
    }
}

impl Drop for Spool<'_> {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.config
                .stats
                .spooling_now
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Why a session ends early.
enum End {
    Closed,
    Io(std::io::Error),
    Idle,
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

impl Session {
    fn new(stream: TcpStream, peer: SocketAddr, store: Store, config: Arc<LmtpConfig>) -> Self {
        let (rd, wr) = stream.into_split();
        Self {
            reader: BufReader::new(rd),
            writer: BufWriter::new(wr),
            peer,
            store,
            config,
            greeted: false,
            tx: Transaction::default(),
            errors: 0,
        }
    }

    async fn run(mut self, shutdown: CancellationToken) {
        tracing::debug!(peer = %self.peer, "LMTP connection");
        metrics::counter!("serversync_lmtp_connections_total").increment(1);
        let greeting = format!("220 {} LMTP serversync ready", self.config.hostname);
        let result = match self.reply(&greeting).await {
            Ok(()) => self.commands(&shutdown).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) | Err(End::Closed) => {}
            Err(End::Idle) => {
                tracing::info!(peer = %self.peer, "LMTP client idle too long; disconnected");
                let _ = self.reply("421 4.4.2 idle for too long; closing").await;
            }
            Err(End::Io(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "LMTP connection failed")
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.writer.shutdown()).await;
    }

    /// Queues one reply line; it is sent before the next read that would wait for the client,
    /// so pipelined commands get their replies in one go.
    async fn reply(&mut self, line: &str) -> Result<(), End> {
        self.writer.write_all(line.as_bytes()).await?;
        self.writer.write_all(b"\r\n").await?;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        match tokio::time::timeout(self.config.idle_timeout, self.writer.flush()).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(End::Idle),
        }
    }

    /// Reads one line (flushing pending replies first when the client has nothing buffered).
    async fn next_line(&mut self, buf: &mut Vec<u8>, max: usize) -> Result<bool, End> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        match tokio::time::timeout(
            self.config.idle_timeout,
            read_line(&mut self.reader, buf, max),
        )
        .await
        {
            Err(_) => Err(End::Idle),
            Ok(Err(e)) => Err(End::Io(e)),
            Ok(Ok(Read::Closed)) => Err(End::Closed),
            Ok(Ok(Read::Line { truncated })) => Ok(truncated),
        }
    }

    /// Reads one piece of message data (see [`read_piece`]): whether it ends a line.
    async fn next_piece(&mut self, buf: &mut Vec<u8>) -> Result<bool, End> {
        if self.reader.buffer().is_empty() {
            self.flush().await?;
        }
        match tokio::time::timeout(
            self.config.idle_timeout,
            read_piece(&mut self.reader, buf, DATA_PIECE),
        )
        .await
        {
            Err(_) => Err(End::Idle),
            Ok(Err(e)) => Err(End::Io(e)),
            Ok(Ok(None)) => Err(End::Closed),
            Ok(Ok(Some(whole))) => Ok(whole),
        }
    }

    async fn commands(&mut self, shutdown: &CancellationToken) -> Result<(), End> {
        let mut buf = Vec::with_capacity(512);
        loop {
            let truncated = tokio::select! {
                biased;
                r = self.next_line(&mut buf, MAX_COMMAND_LINE) => r?,
                _ = shutdown.cancelled() => {
                    self.reply("421 4.3.2 serversync is shutting down; try again later").await?;
                    self.flush().await?;
                    return Ok(());
                }
            };
            if truncated {
                self.refuse(&format!(
                    "500 5.5.2 line too long: commands are limited to {MAX_COMMAND_LINE} octets"
                ))
                .await?;
            } else {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\r', '\n']).to_owned();
                if !self.command(&line).await? {
                    self.flush().await?;
                    return Ok(());
                }
            }
            if self.errors >= MAX_ERRORS {
                self.reply("421 4.7.0 too many errors; closing the connection")
                    .await?;
                self.flush().await?;
                return Ok(());
            }
        }
    }

    /// Replies with an error and counts it.
    async fn refuse(&mut self, line: &str) -> Result<(), End> {
        self.errors += 1;
        self.reply(line).await
    }

    /// Handles one command; `false` ends the session (QUIT).
    async fn command(&mut self, line: &str) -> Result<bool, End> {
        let (verb, arg) = split_command(line);
        match verb.to_ascii_uppercase().as_str() {
            "LHLO" => {
                if arg.is_empty() || arg.chars().any(|c| c.is_control()) {
                    self.refuse("501 5.5.4 LHLO needs the client's host name")
                        .await?;
                } else {
                    self.greeted = true;
                    self.tx = Transaction::default();
                    self.errors = 0;
                    let host = self.config.hostname.clone();
                    let size = self.config.max_message_bytes;
                    for l in [
                        format!("250-{host}"),
                        "250-PIPELINING".into(),
                        "250-ENHANCEDSTATUSCODES".into(),
                        "250-8BITMIME".into(),
                        format!("250 SIZE {size}"),
                    ] {
                        self.reply(&l).await?;
                    }
                }
            }
            "HELO" | "EHLO" => {
                self.refuse("500 5.5.1 this is an LMTP server (RFC 2033): greet with LHLO")
                    .await?
            }
            "MAIL" => self.mail(arg).await?,
            "RCPT" => self.rcpt(arg).await?,
            "DATA" => {
                if !arg.is_empty() {
                    self.refuse("501 5.5.4 DATA takes no arguments").await?;
                } else if self.tx.sender.is_none() {
                    self.refuse("503 5.5.1 MAIL FROM first").await?;
                } else if self.tx.recipients.is_empty() {
                    self.refuse("554 5.5.1 no valid recipients").await?;
                } else {
                    self.data().await?;
                }
            }
            "RSET" => {
                self.tx = Transaction::default();
                self.reply("250 2.0.0 OK").await?;
            }
            "NOOP" => self.reply("250 2.0.0 OK").await?,
            "QUIT" => {
                self.reply(&format!("221 2.0.0 {} closing", self.config.hostname))
                    .await?;
                return Ok(false);
            }
            "VRFY" | "EXPN" | "HELP" | "BDAT" | "ETRN" | "TURN" | "STARTTLS" | "AUTH" => {
                self.refuse(&format!(
                    "502 5.5.1 {} is not supported here",
                    verb.to_ascii_uppercase()
                ))
                .await?
            }
            "" => self.refuse("500 5.5.2 empty command").await?,
            _ => {
                self.refuse("500 5.5.1 unrecognized command: use LHLO, MAIL, RCPT, DATA, RSET, NOOP or QUIT")
                    .await?
            }
        }
        Ok(true)
    }

    async fn mail(&mut self, arg: &str) -> Result<(), End> {
        if !self.greeted {
            return self.refuse("503 5.5.1 LHLO first").await;
        }
        if self.tx.sender.is_some() {
            return self
                .refuse("503 5.5.1 a transaction is already open: RSET first")
                .await;
        }
        match parse_mail_from(arg, self.config.max_message_bytes) {
            Ok(address) => {
                self.tx.sender = Some(address);
                self.reply("250 2.1.0 sender OK").await
            }
            Err(refusal) => self.refuse(&refusal).await,
        }
    }

    async fn rcpt(&mut self, arg: &str) -> Result<(), End> {
        if self.tx.sender.is_none() {
            return self.refuse("503 5.5.1 MAIL FROM first").await;
        }
        let address = match parse_rcpt_to(arg) {
            Ok(a) => a,
            Err(refusal) => return self.refuse(&refusal).await,
        };
        if self.tx.recipients.len() >= self.config.max_recipients {
            return self
                .reply(&format!(
                    "452 4.5.3 too many recipients: at most {} per message",
                    self.config.max_recipients
                ))
                .await;
        }
        match find_router_mailbox(&self.store, &address, None).await {
            Ok(target) => {
                self.reply(&format!("250 2.1.5 <{address}> OK")).await?;
                self.tx.recipients.push(Recipient { address, target });
                Ok(())
            }
            Err(
                RouterLookupError::NoSuchMailbox(_)
                | RouterLookupError::NoSuchOrganization(_)
                | RouterLookupError::OtherOrganization { .. },
            ) => {
                self.reply(&format!(
                    "550 5.1.1 <{address}>: no serversync mailbox has this address"
                ))
                .await
            }
            Err(RouterLookupError::DomainNotAssigned(domain)) => {
                self.reply(&format!(
                    "550 5.1.2 <{address}>: the domain {domain} is not assigned to an organization; the installation administrator assigns it (serversync admin domains assign)"
                ))
                .await
            }
            Err(RouterLookupError::NotRouter { method, .. }) => {
                self.reply(&format!(
                    "550 5.2.1 <{address}>: the mailbox receives email by {method}, not by the Email Router; set its incoming delivery method to email_router"
                ))
                .await
            }
            Err(RouterLookupError::Store(e)) => {
                tracing::warn!(peer = %self.peer, error = %e, "LMTP recipient lookup failed");
                self.reply(&format!(
                    "451 4.3.0 <{address}>: the database is unavailable; try again later"
                ))
                .await
            }
        }
    }

    /// Replies `line` (with `<recipient>` after the code) once per recipient of `tx`.
    async fn reply_each(&mut self, tx: &Transaction, code: &str, text: &str) -> Result<(), End> {
        for r in &tx.recipients {
            self.reply(&format!("{code} <{}>: {text}", r.address))
                .await?;
        }
        Ok(())
    }

    async fn data(&mut self) -> Result<(), End> {
        self.reply("354 2.0.0 send the message, end with <CRLF>.<CRLF>")
            .await?;
        let config = self.config.clone();
        let max = config.max_message_bytes;
        let mut spool = Some(Spool::new(&config));
        let mut spool_error = None;
        let mut oversize = false;
        let mut piece = Vec::new();
        let mut line_start = true;
        loop {
            let whole = self.next_piece(&mut piece).await?;
            let starts_line = line_start;
            line_start = whole;
            if starts_line && whole && (piece == b".\r\n" || piece == b".\n") {
                break;
            }
            let Some(s) = spool.as_mut() else {
                continue;
            };
            let content = match starts_line {
                true => piece.strip_prefix(b".").unwrap_or(&piece),
                false => &piece[..],
            };
            if s.len + content.len() as u64 > max {
                oversize = true;
                spool = None;
            } else if let Err(e) = s.write(content).await {
                spool_error = Some(e);
                spool = None;
            }
        }
        let tx = std::mem::take(&mut self.tx);
        if oversize {
            metrics::counter!("serversync_lmtp_deliveries_total", "result" => "too_large")
                .increment(tx.recipients.len() as u64);
            let text = format!("the message is larger than the limit of {max} octets");
            return self.reply_each(&tx, "552 5.3.4", &text).await;
        }
        let Some(spool) = spool else {
            let e = spool_error.map(|e| e.to_string()).unwrap_or_default();
            tracing::warn!(peer = %self.peer, error = %e, dir = %config.spool_dir.display(), "LMTP message could not be written to a temporary file; the MTA will retry");
            metrics::counter!("serversync_lmtp_deliveries_total", "result" => "deferred")
                .increment(tx.recipients.len() as u64);
            return self
                .reply_each(
                    &tx,
                    "452 4.3.1",
                    "no room to receive the message; try again later",
                )
                .await;
        };
        // Parsing and storing need the whole message in memory: reserve its size first.
        let Some(_reserved) = config.memory.reserve(spool.len, config.memory_wait).await else {
            tracing::warn!(peer = %self.peer, size = spool.len, budget = config.memory.limit(), "LMTP memory budget full; the MTA will retry");
            config
                .stats
                .deferred_for_memory
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("serversync_lmtp_deliveries_total", "result" => "deferred")
                .increment(tx.recipients.len() as u64);
            return self
                .reply_each(
                    &tx,
                    "452 4.3.1",
                    "too many messages in progress; try again later",
                )
                .await;
        };
        let message = match spool.into_bytes().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(peer = %self.peer, error = %e, "LMTP message could not be read back from its temporary file; the MTA will retry");
                return self
                    .reply_each(&tx, "451 4.3.0", "could not be stored; try again later")
                    .await;
            }
        };
        let parsed = ParsedMessage::parse(&message);
        config.stats.messages_parsed.fetch_add(1, Ordering::Relaxed);
        let received_at = chrono::Utc::now();
        for r in &tx.recipients {
            let outcome = take_in_parsed(
                &self.store,
                &parsed,
                &r.target.mailbox,
                &r.target.settings,
                r.target.profile.as_ref(),
                ItemSource::Router { via: "lmtp".into() },
                received_at,
            )
            .await;
            let line = match outcome {
                Ok(IntakeOutcome::Recorded(item)) => {
                    tracing::info!(peer = %self.peer, mailbox = %item.mailbox_id, item = %item.id, decision = ?item.decision, size = message.len(), "LMTP delivery recorded");
                    if let Some(n) = &config.stored {
                        n.notify_one();
                    }
                    metrics::counter!("serversync_lmtp_deliveries_total", "result" => "recorded")
                        .increment(1);
                    format!("250 2.0.0 <{}> delivered as item {}", r.address, item.id)
                }
                Ok(IntakeOutcome::Duplicate) => {
                    tracing::info!(peer = %self.peer, mailbox = %r.target.mailbox.id, "LMTP delivery was a duplicate; kept once");
                    metrics::counter!("serversync_lmtp_deliveries_total", "result" => "duplicate")
                        .increment(1);
                    format!("250 2.0.0 <{}> already delivered; kept once", r.address)
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer, mailbox = %r.target.mailbox.id, error = %e, "LMTP delivery could not be stored; the MTA will retry");
                    metrics::counter!("serversync_lmtp_deliveries_total", "result" => "deferred")
                        .increment(1);
                    format!(
                        "451 4.3.0 <{}>: could not be stored; try again later",
                        r.address
                    )
                }
            };
            self.reply(&line).await?;
        }
        Ok(())
    }
}
