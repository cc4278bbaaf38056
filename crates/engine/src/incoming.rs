//! Incoming email over IMAP: one worker per enabled mailbox, holding the lease
//! `mailbox:<id>`. It reads new messages after the committed cursor with `BODY.PEEK[]` (never
//! setting \Seen), hands each to [`crate::intake`], moves the cursor only after the messages
//! are committed (fenced by the lease), then waits in IDLE so new mail arrives without
//! polling. Failures follow [`crate::policy`].

use crate::EngineConfig;
use crate::intake::take_in;
use crate::policy::{self, Decision, Direction};
use crate::test_enable::{Problem, addr, credentials};
use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectError, ConnectOptions, mime};
use serversync_model::item::ItemSource;
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::{EmailServerProfile, IncomingProtocol};
use serversync_model::settings::{EmailSettings, IncomingMethod};
use serversync_model::sync::FolderCursor;
use serversync_model::{ErrorKind, MailboxId};
use serversync_store::{LeaseGuard, Store, StoreError};
use serversync_vault::sha256_hex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const INBOX: &str = "INBOX";
/// Messages fetched and committed per cursor step.
const BATCH: usize = 200;
/// UIDVALIDITY changes in a row (without a stable round between) before syncing stops with an
/// alert instead of re-reading the folder yet again.
const MAX_RENUMBERINGS: u32 = 5;

pub(crate) fn resource(id: MailboxId) -> String {
    format!("mailbox:{id}")
}

/// Mailboxes whose incoming email this engine should synchronize now: enabled, server-side
/// synchronization, not postponed by the retry policy, and on a profile whose protocol has a
/// synchronizer (IMAP so far; POP3, EWS and Graph mailboxes wait for theirs).
pub(crate) async fn due(store: &Store) -> Result<Vec<Mailbox>, StoreError> {
    let now = chrono::Utc::now();
    let imap_profiles: std::collections::HashSet<_> = store
        .list_all::<EmailServerProfile>(None, &[])
        .await?
        .into_iter()
        .filter(|p| p.value.incoming_protocol == IncomingProtocol::Imap)
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
                && m.profile_id.is_some_and(|p| imap_profiles.contains(&p))
                && m.telemetry.postponed_until.is_none_or(|t| t <= now)
        })
        .collect())
}

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
    let stop = session(&store, &config, id, &lease, &shutdown).await;
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

async fn session(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
    shutdown: &CancellationToken,
) -> Stop {
    match session_inner(store, config, id, lease, shutdown).await {
        Ok(stop) | Err(stop) => stop,
    }
}

async fn session_inner(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
    shutdown: &CancellationToken,
) -> Result<Stop, Stop> {
    let m = store.fetch::<Mailbox>(&id.to_string()).await?.value;
    let settings = store
        .get::<EmailSettings>(&m.org_id.to_string())
        .await?
        .map(|s| s.value)
        .unwrap_or_else(|| EmailSettings::new(m.org_id));
    let Some(pid) = m.profile_id else {
        return Err(Stop::Failed(Problem {
            code: "no_profile".into(),
            kind: ErrorKind::Config,
            step: None,
            message: "the mailbox has no email server profile".into(),
        }));
    };
    let profile = store
        .fetch::<EmailServerProfile>(&pid.to_string())
        .await?
        .value;
    if profile.incoming_protocol != IncomingProtocol::Imap {
        return Err(Stop::Failed(Problem {
            code: "connector_not_available".into(),
            kind: ErrorKind::Config,
            step: None,
            message: format!(
                "synchronization over {:?} is not available in this version yet",
                profile.incoming_protocol
            ),
        }));
    }
    let login = credentials(store, &m, &profile, false)
        .await?
        .map_err(Stop::Failed)?;
    let address = addr(profile.incoming.as_ref(), "incoming").map_err(Stop::Failed)?;
    let timeout = Duration::from_millis(
        profile
            .advanced
            .connection_timeout_ms
            .unwrap_or(100_000)
            .into(),
    );
    let opts = ConnectOptions::new(config.tls_trust.clone()).with_timeout(timeout);
    let mut imap = SyncSession::connect(&address, &login, &opts).await?;
    let condstore = imap.has_capability("CONDSTORE");
    // Renew the lease well before it runs out; IDLE never outlasts a renewal period.
    let renew_every = config.lease_ttl / 3;
    let max_bytes = usize::try_from(settings.max_attachment_kb)
        .unwrap_or(usize::MAX)
        .saturating_mul(1024)
        .saturating_add(1 << 20)
        .max(1 << 20);
    loop {
        let status = imap.select(INBOX, condstore).await?;
        let mut cursor = store.get_cursor(id, INBOX).await?.unwrap_or_default();
        let renumbered = cursor
            .uid_validity
            .is_some_and(|v| v != status.uid_validity);
        if renumbered {
            tracing::warn!(mailbox = %id, old = ?cursor.uid_validity, new = status.uid_validity, "UIDVALIDITY changed: the folder is read again and re-mapped by Message-ID");
            cursor = FolderCursor {
                uid_validity_changes: cursor.uid_validity_changes + 1,
                ..Default::default()
            };
            if cursor.uid_validity_changes >= MAX_RENUMBERINGS {
                return Err(Stop::Failed(Problem {
                    code: "uidvalidity_unstable".into(),
                    kind: ErrorKind::Permanent,
                    step: Some(serversync_model::FailureStep::Protocol),
                    message: format!(
                        "the server renumbered the Inbox (UIDVALIDITY) {MAX_RENUMBERINGS} times in a row; synchronization stopped instead of re-reading it again: check the server's mail storage"
                    ),
                }));
            }
        }
        cursor.uid_validity = Some(status.uid_validity);
        let from = cursor.last_uid.map_or(1, |u| u.saturating_add(1));
        let new: Vec<u32> = imap
            .uid_list(from)
            .await?
            .into_iter()
            .map(|meta| meta.uid)
            .collect();
        let m = store.fetch::<Mailbox>(&id.to_string()).await?.value;
        let mut missed = false;
        for chunk in new.chunks(BATCH) {
            let before = cursor.last_uid;
            let mut fetch = imap.fetch_bodies(chunk, max_bytes).await?;
            let mut processed = 0u64;
            while let Some(msg) = fetch.next().await? {
                let received = msg
                    .internal_date
                    .and_then(|d| chrono::DateTime::from_timestamp(d.timestamp, 0))
                    .unwrap_or_else(chrono::Utc::now);
                let source = ItemSource::Imap {
                    folder: INBOX.into(),
                    uid_validity: status.uid_validity,
                    uid: msg.uid,
                };
                let seen_before = cursor.uid_validity_changes > 0 && {
                    let message_id = mime::parse(&msg.body).ok().and_then(|p| p.message_id);
                    store
                        .has_item_like(id, message_id.as_deref(), &sha256_hex(&msg.body))
                        .await?
                };
                if !seen_before {
                    take_in(
                        store,
                        &m,
                        &settings,
                        Some(&profile),
                        source,
                        &msg.body,
                        received,
                    )
                    .await?;
                }
                cursor.last_uid = Some(cursor.last_uid.map_or(msg.uid, |u| u.max(msg.uid)));
                processed += 1;
            }
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
                store.put_cursor(lease, id, INBOX, &cursor).await?;
                tracing::warn!(mailbox = %id, missing = missing.len(), "the server did not return every message; reading again");
                missed = true;
                break;
            }
            // The messages are committed: only now may the cursor move (fenced by the lease).
            store.put_cursor(lease, id, INBOX, &cursor).await?;
            bump_telemetry(store, id, processed).await?;
        }
        if new.is_empty() {
            // Caught up: a renumbered folder has been fully re-mapped.
            cursor.uid_validity_changes = 0;
            store.put_cursor(lease, id, INBOX, &cursor).await?;
            bump_telemetry(store, id, 0).await?;
        }
        store.renew_lease(lease, config.lease_ttl).await?;
        if missed {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = imap.logout().await;
                return Ok(Stop::Shutdown);
            }
            event = imap.idle(renew_every) => { event?; }
        }
        store.renew_lease(lease, config.lease_ttl).await?;
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
