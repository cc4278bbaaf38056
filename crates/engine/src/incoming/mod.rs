//! Incoming email: one worker per enabled mailbox, holding the lease `mailbox:<id>`, the same
//! for every protocol. [`connection`] opens the mailbox's [`MailSource`] (the connector role)
//! under a connection slot and waits for mail or polls; [`folder`] reads new messages after
//! each folder's committed cursor, hands each to [`crate::intake`], and moves the cursor only
//! after the messages are committed (fenced by the lease). Failures follow [`crate::policy`].
//! This module holds which mailboxes are due, the worker's life cycle, failure recording and
//! telemetry.

mod connection;
mod folder;

use crate::EngineConfig;
use crate::leases::{Kept, Leases};
use crate::listing::Listing;
use crate::policy::Failure;
use crate::policy::{self, Direction};
use crate::session::{MailboxSession, Side};
pub(crate) use crate::slots::ConnSlot;
use crate::slots::jitter_seed;
use serversync_connectors::ConnectError;
use serversync_connectors::source::MailSource;
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::{EmailServerProfile, IncomingProtocol};
use serversync_model::settings::IncomingMethod;
use serversync_model::{MailboxId, ProfileId};
use serversync_store::{LeaseGuard, Store, StoreError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) fn resource(id: MailboxId) -> String {
    format!("mailbox:{id}")
}

/// One look at every mailbox: the due ones, and what the running sessions are compared with.
struct Look {
    due: Vec<MailboxId>,
    /// Per mailbox, its version and its profile's (-1: none): a change wakes its session.
    versions: HashMap<MailboxId, (i64, i64)>,
    /// Enabled mailboxes per profile.
    sharing: HashMap<ProfileId, usize>,
}

/// Mailboxes whose incoming email this engine should synchronize now: enabled, server-side
/// synchronization, not postponed by the retry policy, and on a profile whose protocol has a
/// synchronizer (IMAP and POP3; EWS and Graph mailboxes wait for theirs).
///
/// A mailbox enabled for incoming email by the "forward mailbox" method (stored before that
/// method was refused) is not left silent: its incoming direction is disabled with an alert
/// naming the method.
async fn look(
    store: &Store,
    config: &crate::EngineConfig,
    listing: &Listing,
) -> Result<Look, StoreError> {
    let now = chrono::Utc::now();
    let listed = listing.get(store).await?;
    let profile_versions: HashMap<ProfileId, i64> = listed
        .profiles
        .iter()
        .map(|p| (p.value.id, p.version))
        .collect();
    let synced_profiles: std::collections::HashSet<_> = listed
        .profiles
        .iter()
        .filter(|p| has_synchronizer(p.value.incoming_protocol))
        .map(|p| p.value.id)
        .collect();
    let mut versions = HashMap::new();
    let mut sharing: HashMap<ProfileId, usize> = HashMap::new();
    let mut due = Vec::new();
    for s in listed.mailboxes.iter() {
        let m = &s.value;
        let profile = m
            .profile_id
            .and_then(|p| profile_versions.get(&p).copied())
            .unwrap_or(-1);
        versions.insert(m.id, (s.version, profile));
        if m.incoming.enabled
            && let Some(p) = m.profile_id
        {
            *sharing.entry(p).or_default() += 1;
        }
        if m.incoming.enabled && m.incoming_method == IncomingMethod::ForwardMailbox {
            crate::health::record_failure(
                store,
                config,
                m.id,
                &Failure::forward_mailbox_not_available(),
                crate::policy::Direction::Incoming,
            )
            .await?;
        }
        if m.incoming.enabled
            && m.incoming_method == IncomingMethod::ServerSideSync
            && m.profile_id.is_some_and(|p| synced_profiles.contains(&p))
            && m.telemetry.postponed_until.is_none_or(|t| t <= now)
        {
            due.push(m.id);
        }
    }
    Ok(Look {
        due,
        versions,
        sharing,
    })
}

fn has_synchronizer(p: IncomingProtocol) -> bool {
    serversync_connectors::source::available(p)
}

/// Incoming email as a [`crate::supervisor::Pipeline`]: one task per due mailbox, shared
/// fairly among the live workers.
pub(crate) struct Incoming {
    pub store: Store,
    pub config: EngineConfig,
    /// Woken whenever a session stored new messages (the tracker picks them up).
    pub stored: Arc<Notify>,
    /// The engine-wide renewal of the mailbox and connection-slot leases.
    pub leases: Leases,
    /// Every mailbox and profile, read again only when changed.
    pub listing: Arc<Listing>,
    pub shared: Arc<Shared>,
}

/// What the sessions of this engine share, so an idle session has no timer of its own: the
/// engine's look for due mailboxes (every tick, and at once on "sync now") wakes a session
/// whose mailbox or profile changed, and it then checks what changed.
#[derive(Default)]
pub(crate) struct Shared {
    wakers: Mutex<HashMap<MailboxId, Arc<Notify>>>,
    /// The versions of each mailbox and its profile at the last look.
    seen: Mutex<HashMap<MailboxId, (i64, i64)>>,
    /// Enabled mailboxes per profile at the last look.
    sharing: Mutex<HashMap<ProfileId, usize>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Remembers what this look saw, and wakes the sessions whose mailbox or profile changed
    /// (or whose mailbox is gone) since the last one.
    fn saw(&self, look: &mut Look) {
        *locked(&self.sharing) = std::mem::take(&mut look.sharing);
        let mut seen = locked(&self.seen);
        for (id, wake) in locked(&self.wakers).iter() {
            let now = look.versions.get(id);
            if now.is_none() || seen.get(id) != now {
                wake.notify_one();
            }
        }
        *seen = std::mem::take(&mut look.versions);
    }
}

impl crate::supervisor::Pipeline for Incoming {
    type Id = MailboxId;
    const NAME: &'static str = "incoming";
    const DRAIN: Duration = Duration::from_secs(10);
    const FAIR_SHARE: bool = true;

    async fn due(&self) -> Result<Vec<MailboxId>, StoreError> {
        let mut look = look(&self.store, &self.config, &self.listing).await?;
        self.shared.saw(&mut look);
        Ok(look.due)
    }
    fn resource(id: MailboxId) -> String {
        resource(id)
    }
    fn run(
        &self,
        id: MailboxId,
        lease: LeaseGuard,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        run(
            self.store.clone(),
            self.config.clone(),
            id,
            lease,
            stop,
            self.stored.clone(),
            self.leases.clone(),
            self.shared.clone(),
        )
    }
}

/// Why a worker's session ended.
enum Stop {
    Shutdown,
    /// The mailbox or its profile changed under the session; the engine starts a new one when
    /// the mailbox is still due.
    Reconfigured,
    LeaseLost,
    Failed(Failure),
}

impl From<ConnectError> for Stop {
    fn from(e: ConnectError) -> Self {
        Stop::Failed(Failure::from(&e))
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost { .. } => Stop::LeaseLost,
            full if full.is_storage_full() => Stop::Failed(Failure {
                retry_after: None,
                code: "storage_full".into(),
                kind: full.kind(),
                step: None,
                message: format!(
                    "serversync's database is out of disk space ({full}); nothing was lost: \
                     messages not yet stored stay on the server and are read once there is \
                     space again"
                ),
            }),
            other => Stop::Failed(Failure {
                retry_after: None,
                code: "store_failed".into(),
                kind: other.kind(),
                step: None,
                message: other.to_string(),
            }),
        }
    }
}

/// Runs one mailbox until shutdown, a lost lease, or a failure (recorded per the policy).
// Not an `async fn` (clippy's manual_async_fn): see the comment on the block below.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub(crate) fn run(
    store: Store,
    config: EngineConfig,
    id: MailboxId,
    lease: LeaseGuard,
    shutdown: CancellationToken,
    stored: Arc<Notify>,
    leases: Leases,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // An async block, not an `async fn`: the block holds its captures once, where an
    // `async fn` keeps a second copy of its arguments (the engine configuration) in every
    // idle mailbox's task.
    async move {
        let kept = leases.keep(&lease);
        let wake = Arc::new(Notify::new());
        locked(&shared.wakers).insert(id, wake.clone());
        let held = Held {
            leases: &leases,
            kept: &kept,
            wake: &wake,
            shared: &shared,
        };
        let stop = match session(&store, &config, id, &lease, &shutdown, &stored, held).await {
            Ok(stop) | Err(stop) => stop,
        };
        {
            let mut wakers = locked(&shared.wakers);
            if wakers.get(&id).is_some_and(|w| Arc::ptr_eq(w, &wake)) {
                wakers.remove(&id);
            }
        }
        if let Stop::Failed(p) = stop {
            tracing::warn!(mailbox = %id, code = %p.code, "incoming sync failed: {}", p.message);
            // Boxed, like every one-off step: see `connection::connected`.
            if let Err(e) = Box::pin(crate::health::record_failure(
                &store,
                &config,
                id,
                &p,
                Direction::Incoming,
            ))
            .await
            {
                tracing::error!(mailbox = %id, error = %e, "recording the failure failed");
                // Nothing postpones the mailbox then (a full disk takes the record too): wait the
                // retry interval here, so the engine does not reconnect to the mail server every
                // tick while the database cannot take the messages.
                let interval = match store.get::<Mailbox>(&id.to_string()).await {
                    Ok(Some(m)) => crate::org_settings(&store, m.value.org_id)
                        .await
                        .map(|s| s.retry.interval_seconds)
                        .unwrap_or(60),
                    _ => 60,
                };
                let wait = Duration::from_secs(interval.max(1).into());
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        drop(kept);
        let _ = store.release_lease(&lease).await;
    }
}

/// A session's share of the engine-wide state.
#[derive(Clone, Copy)]
pub(super) struct Held<'a> {
    pub leases: &'a Leases,
    /// The mailbox lease, renewed by the engine; lost → the session stops.
    pub kept: &'a Kept,
    /// Woken when the mailbox or its profile changed.
    pub wake: &'a Notify,
    pub shared: &'a Shared,
}

/// What a protocol's session works with: the mailbox as it was when the session started, its
/// organization's settings and profile, the credentials to sign in with, and the lease that
/// fences every cursor write.
pub(super) struct Ctx<'a> {
    pub store: &'a Store,
    pub config: &'a EngineConfig,
    pub id: MailboxId,
    pub lease: &'a LeaseGuard,
    pub shutdown: &'a CancellationToken,
    /// The mailbox, its profile and settings as they were when the session started.
    pub session: MailboxSession,
    /// Told whenever messages were committed, so the next stage (the tracker) runs at once.
    pub stored: &'a Notify,
    /// Progress of this session (new messages stored, cursor steps committed): a connection
    /// that dropped after making progress was healthy, not a server hanging up after sign-in;
    /// one that keeps dropping at the same message makes none and backs off as before.
    pub progress: std::sync::atomic::AtomicU64,
    pub held: Held<'a>,
}

impl Ctx<'_> {
    /// Largest message body read in full: the attachment limit plus room for the text parts;
    /// what is above it is dropped by intake with the reason recorded.
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.session.settings.max_attachment_kb)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024)
            .saturating_add(1 << 20)
            .max(1 << 20)
    }

    /// The lease is renewed this often; no wait (IDLE, poll interval) outlasts it.
    pub fn renew_every(&self) -> Duration {
        self.config.lease_ttl / 3
    }
}

async fn session(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
    shutdown: &CancellationToken,
    stored: &Notify,
    held: Held<'_>,
) -> Result<Stop, Stop> {
    let session = Box::pin(MailboxSession::load(store, config, id))
        .await?
        .map_err(Stop::Failed)?;
    let protocol = session.profile.incoming_protocol;
    let cx = Ctx {
        store,
        config,
        id,
        lease,
        shutdown,
        session,
        stored,
        progress: Default::default(),
        held,
    };
    if !has_synchronizer(protocol) {
        return Err(Stop::Failed(Failure::config(
            "connector_not_available",
            format!(
                "synchronization over {} is not available in this version yet",
                serversync_model::wire_name(&protocol)
            ),
        )));
    }
    connection::session(&cx).await
}

/// Records progress on the mailbox. Quiet rounds of a healthy mailbox write nothing, so the
/// mailbox's version (which administrators' edits are checked against) moves only when
/// something happened.
async fn bump_telemetry(
    store: &Store,
    id: MailboxId,
    round_started: chrono::DateTime<chrono::Utc>,
    processed: u64,
    failed: u64,
) -> Result<(), StoreError> {
    // A concurrent edit (an administrator, "sync now") is re-read and the counts applied again.
    for _ in 0..3 {
        let s = store.fetch::<Mailbox>(&id.to_string()).await?;
        let healthy = s.value.incoming.status == serversync_model::mailbox::RunStatus::Success
            && s.value.telemetry.transient_failure_count == 0
            && s.value.telemetry.last_successful_sync.is_some();
        if processed == 0 && healthy {
            return Ok(());
        }
        let mut m = s.value;
        m.telemetry.items_processed += processed;
        m.telemetry.items_failed += failed;
        m.telemetry.last_sync_start = Some(round_started);
        policy::record_success(&mut m, Direction::Incoming, chrono::Utc::now());
        match store.update(&m, Some(s.version)).await {
            Err(StoreError::VersionMismatch { .. }) => continue,
            other => return other.map(|_| ()),
        }
    }
    tracing::warn!(mailbox = %id, processed, "telemetry not recorded: the mailbox kept changing");
    Ok(())
}

/// Keeps the server endpoint a source found (the EWS URL Autodiscover found) on the mailbox,
/// so the next connection goes straight there.
async fn remember_endpoint(store: &Store, id: MailboxId, url: &str) -> Result<(), StoreError> {
    for _ in 0..3 {
        let s = store.fetch::<Mailbox>(&id.to_string()).await?;
        if s.value.telemetry.ews_url.as_deref() == Some(url) {
            return Ok(());
        }
        let mut m = s.value;
        m.telemetry.ews_url = Some(url.to_owned());
        match store.update(&m, Some(s.version)).await {
            Err(StoreError::VersionMismatch { .. }) => continue,
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}

/// How long to wait before the next poll of a mailbox whose source cannot be watched (or the
/// periodic full round while watching): the profile's minimum polling interval, but at least
/// the protocol's own minimum (a minute for POP3, which lists the whole maildrop each time)
/// and one lease-renewal period.
pub(super) fn poll_interval(cx: &Ctx<'_>) -> Duration {
    let p = &cx.session.profile;
    Duration::from_secs(u64::from(p.advanced.min_polling_interval_minutes) * 60)
        .max(MailSource::min_poll(p.incoming_protocol))
        .max(cx.renew_every())
}

/// Whether this mailbox may keep a connection open between rounds (to wait in IDLE): when its
/// scope has a slot for every enabled mailbox sharing it. Otherwise connections are opened per
/// round and given back, so every mailbox gets its turn.
pub(super) async fn may_hold_connection(cx: &Ctx<'_>) -> Result<bool, StoreError> {
    if cx.session.profile.authentication.credentials_on_mailbox() {
        return Ok(true);
    }
    let (_, max) = cx.session.slot_scope(Side::Incoming);
    // The engine's last look counted them (one listing for all sessions, not one each).
    if let Some(n) = locked(&cx.held.shared.sharing)
        .get(&cx.session.profile.id)
        .copied()
    {
        return Ok(n <= max as usize);
    }
    let sharing = cx
        .store
        .list_all::<Mailbox>(None, &[])
        .await?
        .into_iter()
        .filter(|m| m.value.incoming.enabled && m.value.profile_id == Some(cx.session.profile.id))
        .count();
    Ok(sharing <= max as usize)
}

/// Fails with [`StoreError::LeaseLost`] when the mailbox lease is gone (the engine renews it),
/// and renews the connection slot, when one is held, during long work on the connection.
pub(super) async fn renew(cx: &Ctx<'_>, slot: Option<&ConnSlot>) -> Result<(), StoreError> {
    held(cx)?;
    if let Some(s) = slot {
        s.renew(cx.store, cx.config.lease_ttl).await?;
    }
    Ok(())
}

/// Fails with [`StoreError::LeaseLost`] when the engine's renewal found the mailbox lease gone.
pub(super) fn held(cx: &Ctx<'_>) -> Result<(), StoreError> {
    if cx.held.kept.is_lost() {
        return Err(StoreError::LeaseLost {
            resource: cx.lease.resource.clone(),
            epoch: cx.lease.epoch,
        });
    }
    Ok(())
}

/// What ended a [`wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitEnd {
    Elapsed,
    /// Someone asked to synchronize now.
    SyncRequested,
    /// The mailbox or its profile changed so that this session must end (disabled, another
    /// profile, other credentials or folders); the engine starts a new one if still due.
    Reconfigured,
    Shutdown,
}

/// Waits up to `how_long` (no connection held) for "sync now", reconfiguration, shutdown or
/// the loss of the lease, without waking up in between: the engine renews the lease and wakes
/// the session when its mailbox or profile changed.
pub(super) async fn wait(
    cx: &Ctx<'_>,
    how_long: Duration,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<WaitEnd, StoreError> {
    let until = tokio::time::Instant::now() + how_long;
    loop {
        held(cx)?;
        tokio::select! {
            _ = cx.shutdown.cancelled() => return Ok(WaitEnd::Shutdown),
            _ = tokio::time::sleep_until(until) => return Ok(WaitEnd::Elapsed),
            _ = cx.held.kept.lost() => {}
            _ = cx.held.wake.notified() => match check(cx, since).await? {
                WaitEnd::Elapsed => {}
                other => return Ok(other),
            },
        }
    }
}

/// Re-reads the mailbox and profile: reports a "sync now" requested after `since`, or a change
/// that ends the session.
pub(super) async fn check(
    cx: &Ctx<'_>,
    since: chrono::DateTime<chrono::Utc>,
) -> Result<WaitEnd, StoreError> {
    let Some(m) = cx.store.get::<Mailbox>(&cx.id.to_string()).await? else {
        return Ok(WaitEnd::Reconfigured);
    };
    let m = m.value;
    let was = &cx.session.mailbox;
    if !m.incoming.enabled
        || m.incoming_method != was.incoming_method
        || m.profile_id != was.profile_id
        || m.username != was.username
        || m.password != was.password
        || m.extra_folders != was.extra_folders
        || m.delete_after_processing != was.delete_after_processing
    {
        return Ok(WaitEnd::Reconfigured);
    }
    let p = cx
        .store
        .get::<EmailServerProfile>(&cx.session.profile.id.to_string())
        .await?
        .map(|s| s.value);
    if p.as_ref() != Some(&cx.session.profile) {
        return Ok(WaitEnd::Reconfigured);
    }
    if m.telemetry.sync_requested_at.is_some_and(|t| t > since) {
        return Ok(WaitEnd::SyncRequested);
    }
    Ok(WaitEnd::Elapsed)
}

/// Reconnection after a dropped connection: at once-ish after a connection that lived a while;
/// exponentially slower (with jitter) when the server keeps dropping fresh connections, so a
/// server that hangs up right after login is not hammered with logins. After
/// [`Reconnect::MAX_QUICK_DROPS`] quick drops in a row the failure goes to the retry policy.
#[derive(Debug, Default)]
pub(super) struct Reconnect {
    quick_drops: u32,
}

impl Reconnect {
    pub const MAX_QUICK_DROPS: u32 = 5;
    /// A connection that lived at least this long was healthy.
    const HEALTHY: Duration = Duration::from_secs(60);

    /// The delay before reconnecting after a connection that lived `lived`, or `None` when it
    /// is time to give up.
    pub fn after_drop(&mut self, lived: Duration) -> Option<Duration> {
        if lived >= Self::HEALTHY {
            self.quick_drops = 0;
        } else {
            self.quick_drops += 1;
            if self.quick_drops > Self::MAX_QUICK_DROPS {
                return None;
            }
        }
        let base = Duration::from_secs(1 << self.quick_drops.min(8)).min(Duration::from_secs(120));
        // ±50 % jitter, so workers cut off together do not reconnect together.
        let factor = 0.5 + (jitter_seed() % 1000) as f64 / 1000.0;
        Some(base.mul_f64(factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_slow_down_for_quick_drops_and_give_up() {
        let mut r = Reconnect::default();
        let first = r.after_drop(Duration::from_secs(1)).unwrap();
        assert!(
            first >= Duration::from_secs(1) && first <= Duration::from_secs(3),
            "{first:?}"
        );
        let mut last = first;
        for _ in 1..Reconnect::MAX_QUICK_DROPS {
            last = r.after_drop(Duration::from_secs(1)).unwrap();
        }
        assert!(last >= Duration::from_secs(16), "backed off: {last:?}");
        assert_eq!(r.after_drop(Duration::from_secs(1)), None, "gives up");
        let mut r = Reconnect::default();
        for _ in 0..20 {
            let d = r.after_drop(Duration::from_secs(600)).unwrap();
            assert!(
                d <= Duration::from_millis(1500),
                "a healthy connection reconnects soon: {d:?}"
            );
        }
    }
}
