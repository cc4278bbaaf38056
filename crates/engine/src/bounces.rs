//! Bounces (issue #6, item 6): a delivery status notification (RFC 3464 `multipart/report`)
//! or a classic bounce that arrives in a mailbox and refers to an email serversync sent — by
//! the original Message-ID (`act-{id}@serversync.{domain}`) in the returned headers, or a
//! VERP return path `bounce+act-{id}@…` — marks that email failed with the diagnostic and
//! alerts its owner. A delay notice is noted in the item's trace only. The bounce itself is
//! not tracked as an activity.

use serversync_connectors::dsn::{Bounce, parse_bounce};
use serversync_model::alert::{Alert, Severity};
use serversync_model::crm::{Direction, EmailActivity, EmailStatus};
use serversync_model::item::MailItem;
use serversync_store::{Store, StoreError, Stored};

/// The local-part prefix of VERP return paths (`bounce+TOKEN@domain`).
pub const VERP_PREFIX: &str = "bounce";

/// Whether the item may be a bounce: from a mail system, or without a sender, or carrying a
/// delivery report. Only those are parsed.
pub(crate) fn maybe_bounce(item: &MailItem) -> bool {
    let from = item.from.as_deref().unwrap_or("").to_ascii_lowercase();
    let local = from.split('@').next().unwrap_or("");
    item.from.is_none()
        || matches!(
            local,
            "mailer-daemon" | "postmaster" | "mail-daemon" | "mailerdaemon"
        )
        || item.attachments.iter().any(|a| {
            let t = a.content_type.to_ascii_lowercase();
            t.contains("delivery-status") || t.contains("rfc822-headers")
        })
}

/// Handles the item when it is a bounce of an email serversync sent: the trace lines, or
/// `None` for any other message (tracked as usual).
pub(crate) async fn handle(
    store: &Store,
    item: &MailItem,
) -> Result<Option<Vec<String>>, StoreError> {
    if !maybe_bounce(item) || !item.raw_kept {
        return Ok(None);
    }
    let Some(raw) = store.get_blob(&item.raw_sha256).await? else {
        return Ok(None);
    };
    let Some(bounce) = parse_bounce(&raw, Some(VERP_PREFIX)) else {
        return Ok(None);
    };
    let Some(sent) = sent_activity(store, item, &bounce).await? else {
        return Ok(None);
    };
    let a = &sent.value;
    if !bounce.failed {
        return Ok(Some(vec![format!(
            "delivery report for activity {}, not a failure: {}",
            a.id, bounce.diagnostic
        )]));
    }
    let lines = vec![format!(
        "bounce of activity {}: marked failed ({})",
        a.id, bounce.diagnostic
    )];
    let why = reason(&bounce);
    let mut current = sent;
    let a = loop {
        let mut a = current.value;
        if a.status == EmailStatus::Failed && a.send_error.as_deref() == Some(why.as_str()) {
            // Seen before (another mailbox got the same bounce).
            return Ok(Some(lines));
        }
        a.status = EmailStatus::Failed;
        a.send_error = Some(why.clone());
        a.updated_at = chrono::Utc::now();
        match store.update(&a, Some(current.version)).await {
            Ok(_) => break a,
            Err(StoreError::VersionMismatch { .. }) => {
                current = store.fetch::<EmailActivity>(&a.id.to_string()).await?;
            }
            Err(e) => return Err(e),
        }
    };
    let mut alert = Alert::new(
        a.org_id,
        Severity::Error,
        "email_bounced",
        format!(
            "The email \"{}\" could not be delivered: {}",
            a.subject, bounce.diagnostic
        ),
        vec![a.owner_id],
    );
    alert.mailbox_id = a.mailbox_ids.first().copied();
    store.insert(&alert).await?;
    tracing::info!(activity = %a.id, "bounce: email marked failed");
    Ok(Some(lines))
}

fn reason(b: &Bounce) -> String {
    format!("bounced: {}", b.diagnostic)
}

/// The outgoing activity the bounce refers to.
async fn sent_activity(
    store: &Store,
    item: &MailItem,
    b: &Bounce,
) -> Result<Option<Stored<EmailActivity>>, StoreError> {
    for mid in &b.original_message_ids {
        let found =
            crate::activities::email_activities(store, item.org_id, "message_id", mid).await?;
        if let Some(a) = found
            .into_iter()
            .find(|a| a.value.direction == Direction::Outgoing)
        {
            return Ok(Some(a));
        }
    }
    // VERP: the token is the local part of the Message-ID (`act-{id}`).
    if let Some(id) = b
        .verp_token
        .as_deref()
        .and_then(|t| t.strip_prefix("act-"))
        .and_then(|t| t.parse::<serversync_model::ActivityId>().ok())
        && let Some(a) = store.get::<EmailActivity>(&id.to_string()).await?
        && a.value.org_id == item.org_id
        && a.value.direction == Direction::Outgoing
    {
        return Ok(Some(a));
    }
    Ok(None)
}
