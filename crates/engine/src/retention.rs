//! The pruner: removes, in small batches, what the retention settings say is no longer kept —
//! webhook delivery log entries, change-feed rows every endpoint has delivered, audit entries,
//! raw copies of messages tracked as activities, expired web sessions (the rules of what may
//! go are in the store's `retention` module).
//!
//! One worker prunes at a time, under the lease `pruner`. After a pass the worker keeps the
//! lease for the interval, so no worker (itself included) starts another pass before it is
//! due; a pass cut short (shutdown, an error) gives the lease back at once. Between batches
//! the lease is renewed, other writers get the database (SQLite has one writer), and a stop
//! request ends the pass.

use serversync_model::org::Organization;
use serversync_store::{LeaseGuard, Store, StoreError};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The lease under which one worker prunes.
pub const RESOURCE: &str = "pruner";

/// How long what may be removed is kept (`None`: forever), and how the pruner runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    /// Time between two passes (over all workers).
    pub interval: Duration,
    /// Rows removed per transaction.
    pub batch: u32,
    /// Pause between two batches, so other writers get the database.
    pub pause: Duration,
    /// Webhook delivery log entries.
    pub webhook_log: Option<Duration>,
    /// The change feed's horizon: older changes are removed once every webhook endpoint of
    /// their organization delivered them.
    pub change_feed: Option<Duration>,
    /// Audit entries.
    pub audit: Option<Duration>,
    /// Raw copies of messages tracked as activities (headers, bodies and attachments stay).
    pub raw_messages: Option<Duration>,
    /// Web sessions, counted from their expiry.
    pub expired_sessions: Option<Duration>,
}

const DAY: Duration = Duration::from_secs(86_400);

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(3600),
            batch: 500,
            pause: Duration::from_millis(20),
            webhook_log: Some(DAY * 30),
            change_feed: Some(DAY * 30),
            audit: Some(DAY * 365),
            raw_messages: None,
            expired_sessions: Some(DAY),
        }
    }
}

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub webhook_log: u64,
    pub change_feed: u64,
    pub audit: u64,
    pub raw_messages: u64,
    pub sessions: u64,
    /// The pass was stopped before it was done.
    pub stopped: bool,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.webhook_log + self.change_feed + self.audit + self.raw_messages + self.sessions
    }
}

/// One pass when it is due and no other worker prunes: `None` when the lease `pruner` is held
/// (by another worker pruning, or since the last pass, for the interval).
pub async fn run_once(
    store: &Store,
    worker: &str,
    lease_ttl: Duration,
    config: &RetentionConfig,
    stop: &CancellationToken,
) -> Result<Option<Pruned>, StoreError> {
    let Some(lease) = store.acquire_lease(RESOURCE, worker, lease_ttl).await? else {
        return Ok(None);
    };
    let mut pruner = Pruner {
        store,
        lease: &lease,
        lease_ttl,
        config,
        stop,
        out: Pruned::default(),
    };
    let r = pruner.pass().await;
    let out = pruner.out;
    if r.is_ok() && !out.stopped {
        // Held until the next pass is due.
        let _ = store.renew_lease(&lease, config.interval).await;
    } else {
        let _ = store.release_lease(&lease).await;
    }
    r?;
    for (kind, n) in [
        ("webhook_log", out.webhook_log),
        ("change_feed", out.change_feed),
        ("audit", out.audit),
        ("raw_messages", out.raw_messages),
        ("sessions", out.sessions),
    ] {
        metrics::counter!("serversync_pruned_total", "kind" => kind).increment(n);
    }
    if out.total() > 0 || out.stopped {
        tracing::info!(
            webhook_log = out.webhook_log,
            change_feed = out.change_feed,
            audit = out.audit,
            raw_messages = out.raw_messages,
            sessions = out.sessions,
            stopped = out.stopped,
            "pruned what is past retention"
        );
    }
    Ok(Some(out))
}

struct Pruner<'a> {
    store: &'a Store,
    lease: &'a LeaseGuard,
    lease_ttl: Duration,
    config: &'a RetentionConfig,
    stop: &'a CancellationToken,
    out: Pruned,
}

/// Now minus `keep`.
fn cutoff(keep: Duration) -> serversync_model::Timestamp {
    chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or(chrono::TimeDelta::MAX)
}

impl Pruner<'_> {
    async fn pass(&mut self) -> Result<(), StoreError> {
        let (store, limit, c) = (self.store, self.config.batch, self.config);
        if let Some(keep) = c.webhook_log {
            let before = cutoff(keep);
            self.out.webhook_log += self
                .drain(|| store.prune_webhook_deliveries(before, limit))
                .await?;
        }
        if let Some(keep) = c.change_feed {
            let before = cutoff(keep);
            for org in store.list_all::<Organization>(None, &[]).await? {
                let org = org.value.id;
                self.out.change_feed += self
                    .drain(|| store.prune_changes(org, before, limit))
                    .await?;
            }
        }
        if let Some(keep) = c.audit {
            let before = cutoff(keep);
            self.out.audit += self.drain(|| store.prune_audit(before, limit)).await?;
        }
        if let Some(keep) = c.raw_messages {
            let before = cutoff(keep);
            let note = format!(
                "raw message removed: it was tracked as an activity and is kept {} days (retention.raw_message_days); headers, bodies and attachments stay",
                keep.as_secs() / DAY.as_secs()
            );
            self.out.raw_messages += self
                .drain(|| store.prune_raw_copies(before, limit, &note))
                .await?;
        }
        if let Some(keep) = c.expired_sessions {
            let before = cutoff(keep);
            self.out.sessions += self.drain(|| store.prune_sessions(before, limit)).await?;
        }
        Ok(())
    }

    /// Runs `batch` until it removes fewer than a batch or the pruner is stopped; how many it
    /// removed.
    async fn drain<F, Fut>(&mut self, mut batch: F) -> Result<u64, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<u64, StoreError>>,
    {
        let mut total = 0;
        loop {
            if self.stop.is_cancelled() {
                self.out.stopped = true;
                return Ok(total);
            }
            let n = batch().await?;
            total += n;
            if n < u64::from(self.config.batch) {
                return Ok(total);
            }
            self.store.renew_lease(self.lease, self.lease_ttl).await?;
            tokio::select! {
                _ = self.stop.cancelled() => {}
                _ = tokio::time::sleep(self.config.pause) => {}
            }
        }
    }
}
