//! A mailbox's health, shared by the pipelines (incoming, outgoing): a mailbox-level failure is
//! recorded on the mailbox per the retry policy ([`crate::policy`]), and a direction the policy
//! disables raises an alert for the owner.

use crate::policy::{self, Decision, Direction};
use crate::test_enable::Problem;
use serversync_model::MailboxId;
use serversync_model::mailbox::Mailbox;
use serversync_store::{Store, StoreError};

/// Records a mailbox-level failure of one direction per the retry policy: counted, postponed,
/// or (permanent, or out of retries) the direction disabled with an alert to the owner.
pub(crate) async fn record_failure(
    store: &Store,
    id: MailboxId,
    p: &Problem,
    direction: Direction,
) -> Result<(), StoreError> {
    let Some(s) = store.get::<Mailbox>(&id.to_string()).await? else {
        return Ok(());
    };
    let mut m = s.value;
    let settings = crate::org_settings(store, m.org_id).await?;
    let failure = policy::Failure {
        kind: p.kind,
        step: p.step,
        code: p.code.clone(),
        message: p.message.clone(),
        retry_after: None,
    };
    let decision = policy::record_failure(
        &mut m,
        direction,
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
    Ok(())
}
