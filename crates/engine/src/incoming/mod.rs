//! Incoming email: one worker per enabled mailbox, holding the lease `mailbox:<id>`. The
//! protocol part ([`imap`], [`pop3`]) reads new messages after the committed cursor, hands each
//! to [`crate::intake`], and moves the cursor only after the messages are committed (fenced by
//! the lease). Failures follow [`crate::policy`]. This module holds what every protocol shares:
//! which mailboxes are due, the worker's life cycle, failure recording and telemetry.

mod imap;
mod pop3;

use crate::EngineConfig;
use crate::policy::{self, Decision, Direction};
use crate::test_enable::{Problem, credentials};
use serversync_connectors::{ConnectError, ConnectOptions, Login};
use serversync_model::MailboxId;
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::{EmailServerProfile, IncomingProtocol};
use serversync_model::settings::{EmailSettings, IncomingMethod};
use serversync_store::{LeaseGuard, Store, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) fn resource(id: MailboxId) -> String {
    format!("mailbox:{id}")
}

/// Mailboxes whose incoming email this engine should synchronize now: enabled, server-side
/// synchronization, not postponed by the retry policy, and on a profile whose protocol has a
/// synchronizer (IMAP and POP3; EWS and Graph mailboxes wait for theirs).
pub(crate) async fn due(store: &Store) -> Result<Vec<Mailbox>, StoreError> {
    let now = chrono::Utc::now();
    let synced_profiles: std::collections::HashSet<_> = store
        .list_all::<EmailServerProfile>(None, &[])
        .await?
        .into_iter()
        .filter(|p| has_synchronizer(p.value.incoming_protocol))
        .map(|p| p.value.id)
        .collect();
    Ok(store
        .list_all::<Mailbox>(None, &[])
        .await?
        .into_iter()
        .map(|s| s.value)
        .filter(|m| {
            m.incoming.enabled
                && m.incoming_method == IncomingMethod::ServerSideSync
                && m.profile_id.is_some_and(|p| synced_profiles.contains(&p))
                && m.telemetry.postponed_until.is_none_or(|t| t <= now)
        })
        .collect())
}

fn has_synchronizer(p: IncomingProtocol) -> bool {
    matches!(p, IncomingProtocol::Imap | IncomingProtocol::Pop3)
}

/// Why a worker's session ended.
enum Stop {
    Shutdown,
    LeaseLost,
    Failed(Problem),
}

impl From<ConnectError> for Stop {
    fn from(e: ConnectError) -> Self {
        Stop::Failed(Problem {
            code: format!("{}_failed", serversync_model::wire_name(&e.step)),
            kind: e.kind,
            step: Some(e.step),
            message: e.to_string(),
        })
    }
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::LeaseLost { .. } => Stop::LeaseLost,
            other => Stop::Failed(Problem {
                code: "store_failed".into(),
                kind: other.kind(),
                step: None,
                message: other.to_string(),
            }),
        }
    }
}

/// Runs one mailbox until shutdown, a lost lease, or a failure (recorded per the policy).
pub(crate) async fn run(
    store: Store,
    config: EngineConfig,
    id: MailboxId,
    lease: LeaseGuard,
    shutdown: CancellationToken,
) {
    let stop = match session(&store, &config, id, &lease, &shutdown).await {
        Ok(stop) | Err(stop) => stop,
    };
    if let Stop::Failed(p) = stop {
        tracing::warn!(mailbox = %id, code = %p.code, "incoming sync failed: {}", p.message);
        if let Err(e) = record_failure(&store, id, &p).await {
            tracing::error!(mailbox = %id, error = %e, "recording the failure failed");
        }
    }
    let _ = store.release_lease(&lease).await;
}

async fn record_failure(store: &Store, id: MailboxId, p: &Problem) -> Result<(), StoreError> {
    let Some(s) = store.get::<Mailbox>(&id.to_string()).await? else {
        return Ok(());
    };
    let mut m = s.value;
    let settings = store
        .get::<EmailSettings>(&m.org_id.to_string())
        .await?
        .map(|s| s.value)
        .unwrap_or_else(|| EmailSettings::new(m.org_id));
    let failure = policy::Failure {
        kind: p.kind,
        step: p.step,
        code: p.code.clone(),
        message: p.message.clone(),
        retry_after: None,
    };
    let decision = policy::record_failure(
        &mut m,
        Direction::Incoming,
        &failure,
        &settings.retry,
        chrono::Utc::now(),
    );
    store.update(&m, None).await?;
    if decision == Decision::Disable {
        let a = crate::admin::alert(
            &m,
            serversync_model::alert::Severity::Error,
            &p.code,
            format!(
                "Incoming email for {} is disabled: {}. Fix the cause, then test and enable the mailbox.",
                m.email, p.message
            ),
            p.step,
            vec![m.owner_id],
        );
        store.insert(&a).await?;
    }
    Ok(())
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
    pub mailbox: Mailbox,
    pub settings: EmailSettings,
    pub profile: EmailServerProfile,
    pub login: Login,
    pub opts: ConnectOptions,
}

impl Ctx<'_> {
    /// Largest message body read in full: the attachment limit plus room for the text parts;
    /// what is above it is dropped by intake with the reason recorded.
    pub fn max_message_bytes(&self) -> usize {
        usize::try_from(self.settings.max_attachment_kb)
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
) -> Result<Stop, Stop> {
    let mailbox = store.fetch::<Mailbox>(&id.to_string()).await?.value;
    let settings = store
        .get::<EmailSettings>(&mailbox.org_id.to_string())
        .await?
        .map(|s| s.value)
        .unwrap_or_else(|| EmailSettings::new(mailbox.org_id));
    let Some(pid) = mailbox.profile_id else {
        return Err(Stop::Failed(Problem::config(
            "no_profile",
            "the mailbox has no email server profile",
        )));
    };
    let profile = store
        .fetch::<EmailServerProfile>(&pid.to_string())
        .await?
        .value;
    let login = credentials(store, &mailbox, &profile, false)
        .await?
        .map_err(Stop::Failed)?;
    let timeout = Duration::from_millis(
        profile
            .advanced
            .connection_timeout_ms
            .unwrap_or(100_000)
            .into(),
    );
    let opts = ConnectOptions::new(config.tls_trust.clone()).with_timeout(timeout);
    let protocol = profile.incoming_protocol;
    let cx = Ctx {
        store,
        config,
        id,
        lease,
        shutdown,
        mailbox,
        settings,
        profile,
        login,
        opts,
    };
    match protocol {
        IncomingProtocol::Imap => imap::session(&cx).await,
        IncomingProtocol::Pop3 => pop3::session(&cx).await,
        other => Err(Stop::Failed(Problem::config(
            "connector_not_available",
            format!(
                "synchronization over {} is not available in this version yet",
                serversync_model::wire_name(&other)
            ),
        ))),
    }
}

/// Records progress on the mailbox. Quiet rounds of a healthy mailbox write nothing, so the
/// mailbox's version (which administrators' edits are checked against) moves only when
/// something happened.
async fn bump_telemetry(store: &Store, id: MailboxId, processed: u64) -> Result<(), StoreError> {
    let s = store.fetch::<Mailbox>(&id.to_string()).await?;
    let healthy = s.value.incoming.status == serversync_model::mailbox::RunStatus::Success
        && s.value.telemetry.transient_failure_count == 0
        && s.value.telemetry.last_successful_sync.is_some();
    if processed == 0 && healthy {
        return Ok(());
    }
    let mut m = s.value;
    let now = chrono::Utc::now();
    m.telemetry.items_processed += processed;
    m.telemetry.last_sync_start.get_or_insert(now);
    policy::record_success(&mut m, Direction::Incoming, now);
    match store.update(&m, Some(s.version)).await {
        // An administrator edited the mailbox meanwhile: telemetry can wait for the next round.
        Err(StoreError::VersionMismatch { .. }) => Ok(()),
        other => other.map(|_| ()),
    }
}
