//! Incoming email over IMAP: reads new messages after the committed cursor with `BODY.PEEK[]`
//! (never setting \Seen), hands each to [`crate::intake`], moves the cursor only after the
//! messages are committed (fenced by the lease), then waits in IDLE so new mail arrives without
//! polling.

use super::{Ctx, Stop, bump_telemetry};
use crate::intake::take_in;
use crate::test_enable::{Problem, addr};
use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::mime;
use serversync_model::ErrorKind;
use serversync_model::item::ItemSource;
use serversync_model::mailbox::Mailbox;
use serversync_model::sync::FolderCursor;
use serversync_vault::sha256_hex;

const INBOX: &str = "INBOX";
/// Messages fetched and committed per cursor step.
const BATCH: usize = 200;
/// UIDVALIDITY changes in a row (without a stable round between) before syncing stops with an
/// alert instead of re-reading the folder yet again.
const MAX_RENUMBERINGS: u32 = 5;

pub(super) async fn session(cx: &Ctx<'_>) -> Result<Stop, Stop> {
    let (store, config, id, lease, shutdown) = (cx.store, cx.config, cx.id, cx.lease, cx.shutdown);
    let (settings, profile) = (&cx.settings, &cx.profile);
    let address = addr(profile.incoming.as_ref(), "incoming").map_err(Stop::Failed)?;
    let renew_every = cx.renew_every();
    let max_bytes = cx.max_message_bytes();
    let mut imap = SyncSession::connect(&address, &cx.login, &cx.opts).await?;
    let condstore = imap.has_capability("CONDSTORE");
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
                        settings,
                        Some(profile),
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
