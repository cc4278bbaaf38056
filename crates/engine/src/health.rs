//! A mailbox's health, shared by the pipelines (incoming, outgoing): a mailbox-level failure is
//! recorded on the mailbox per the retry policy ([`crate::policy`]), and a direction the policy
//! disables raises an alert for the owner.

use crate::EngineConfig;
use crate::policy::Failure;
use crate::policy::{self, Decision, Direction};
use serversync_model::MailboxId;
use serversync_model::mailbox::Mailbox;
use serversync_store::{Store, StoreError};

/// Records a mailbox-level failure of one direction per the retry policy: counted, postponed,
/// or (permanent, or out of retries) the direction disabled with an alert to the owner. Then,
/// when most of the mailbox's profile is failing, its owner is told
/// ([`crate::alerts_email::profile_failures`]).
pub(crate) async fn record_failure(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    p: &Failure,
    direction: Direction,
) -> Result<(), StoreError> {
    // An administrator's approval, rejection or edit meanwhile is kept: read again and apply
    // the failure to the mailbox as it is now.
    for _ in 0..3 {
        let Some(s) = store.get::<Mailbox>(&id.to_string()).await? else {
            return Ok(());
        };
        let mut m = s.value;
        let settings = crate::org_settings(store, m.org_id).await?;
        let decision =
            policy::record_failure(&mut m, direction, p, &settings.retry, chrono::Utc::now());
        match store.update(&m, Some(s.version)).await {
            Err(StoreError::VersionMismatch { .. }) => continue,
            other => other?,
        };
        if decision == Decision::Disable {
            let a = crate::admin::alert(
                &m,
                serversync_model::alert::Severity::Error,
                &p.code,
                format!(
                    "{} email for {} is disabled: {}. Fix the cause, then test and enable the mailbox.",
                    match direction {
                        Direction::Incoming => "Incoming",
                        Direction::Outgoing => "Outgoing",
                        Direction::Act => "Appointment, contact and task",
                    },
                    m.email,
                    p.message
                ),
                p.step,
                vec![m.owner_id],
            );
            store.insert(&a).await?;
        }
        if let Some(p) = m.profile_id {
            crate::alerts_email::profile_failures(store, config, p).await?;
        }
        return Ok(());
    }
    tracing::warn!(mailbox = %id, code = %p.code, "failure not recorded: the mailbox kept changing");
    Ok(())
}

/// Records that a direction works again (a connection signed in): the direction's status is
/// success and the retry policy's transient count and postponement are cleared. Writes only
/// when the mailbox is not already healthy, so a healthy mailbox's version does not move.
pub(crate) async fn record_success(
    store: &Store,
    id: MailboxId,
    direction: Direction,
) -> Result<(), StoreError> {
    for _ in 0..3 {
        let Some(s) = store.get::<Mailbox>(&id.to_string()).await? else {
            return Ok(());
        };
        let m = &s.value;
        let status = match direction {
            Direction::Incoming => &m.incoming,
            Direction::Outgoing => &m.outgoing,
            Direction::Act => &m.act,
        };
        if status.status == serversync_model::mailbox::RunStatus::Success
            && m.telemetry.transient_failure_count == 0
            && m.telemetry.postponed_until.is_none()
        {
            return Ok(());
        }
        let mut m = s.value;
        policy::record_success(&mut m, direction, chrono::Utc::now());
        match store.update(&m, Some(s.version)).await {
            // An administrator's edit or "sync now" meanwhile: read again.
            Err(StoreError::VersionMismatch { .. }) => continue,
            other => return other.map(|_| ()),
        }
    }
    Ok(())
}
