//! Email Router claims that ran out (the claim and the report are `Admin` operations in
//! [`crate::compose`]); run by the outgoing pipeline ([`crate::outgoing::due`]) before it
//! looks for due email, below both.

use chrono::Utc;
use serversync_model::crm::EmailStatus;
use serversync_store::Store;

/// Email Router claims that ran out: the router died or lost track; the email may or may
/// not have gone out, so it becomes "outcome unknown" (never handed out twice). Found per
/// mailbox through the due index (a claim is due when it runs out), so claims still held —
/// however many — never hide one that ran out.
pub(crate) async fn expire_router_claims(
    store: &Store,
) -> std::result::Result<(), serversync_store::StoreError> {
    let now = Utc::now();
    for mailbox in store.send_due_mailboxes(EmailStatus::Sending, now).await? {
        let mut after: Option<String> = None;
        loop {
            let page = store
                .send_due_emails(EmailStatus::Sending, mailbox, now, after.as_deref(), 100)
                .await?;
            for s in page.items {
                let mut a = s.value;
                let Some(k) = a.router_claim.take() else {
                    // Sent by serversync itself: its mailbox's sender deals with it.
                    continue;
                };
                a.status = EmailStatus::OutcomeUnknown;
                a.send_error = Some(format!(
                    "the Email Router's claim ran out at {} without a report: the email may have been sent; \
                     it is not handed out again automatically",
                    k.until.to_rfc3339()
                ));
                a.updated_at = now;
                match store.update(&a, Some(s.version)).await {
                    Ok(_) | Err(serversync_store::StoreError::VersionMismatch { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
    }
    Ok(())
}
