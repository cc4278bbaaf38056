//! Incoming email over POP3: UIDL-based and non-destructive. Each round signs in, lists UIDL,
//! RETRs only the messages whose UIDL this mailbox has not recorded yet, hands each to
//! [`crate::intake`], and signs off with QUIT. POP3 has no IDLE, so rounds are polled: the
//! profile's minimum polling interval apart ([`DEFAULT_POLL`] when it is 0), with the lease
//! renewed and the mailbox re-read meanwhile ([`super::wait`]), so "sync now" starts a round at
//! once and a shutdown stops the wait. Each round's connection is taken under one of the
//! profile's connection slots.
//!
//! Messages are deleted from the server only when the mailbox says so (`delete_after_processing`,
//! forward and queue mailboxes only), and only messages whose item is committed: DELE marks
//! them, and the server removes them at QUIT — a session cut off before QUIT deletes nothing.

use super::{ConnSlot, Ctx, Stop, WaitEnd, bump_telemetry, renew, wait};
use crate::intake::{IntakeOutcome, take_in, take_in_header_only};
use crate::policy::Failure;
use crate::session::Side;
use serversync_connectors::pop3::Client;
use serversync_connectors::{ErrorKind, FailureStep, ServerAddr};
use serversync_model::Timestamp;
use serversync_model::item::{ItemDecision, ItemSource};
use serversync_model::mailbox::Mailbox;
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// The wait between rounds when the profile's minimum polling interval is 0.
pub(crate) const DEFAULT_POLL: Duration = Duration::from_secs(60);
/// Messages taken in between two telemetry updates within a round.
const TELEMETRY_EVERY: u64 = 200;

pub(super) async fn session(cx: &Ctx<'_>) -> Result<Stop, Stop> {
    let address = cx.session.address(Side::Incoming).map_err(Stop::Failed)?;
    let poll = match cx.session.profile.advanced.min_polling_interval_minutes {
        0 => DEFAULT_POLL,
        minutes => Duration::from_secs(u64::from(minutes) * 60),
    };
    loop {
        let started = chrono::Utc::now();
        // A connection only under one of the profile's connection slots.
        let Some(slot) = ConnSlot::acquire(cx).await? else {
            match wait(cx, cx.renew_every(), started).await? {
                WaitEnd::Shutdown => return Ok(Stop::Shutdown),
                WaitEnd::Reconfigured => return Ok(Stop::Reconfigured),
                WaitEnd::Elapsed | WaitEnd::SyncRequested => continue,
            }
        };
        let r = round(cx, &address, &slot).await;
        slot.release(cx.store).await;
        if let Some(stop) = r? {
            return Ok(stop);
        }
        match wait(cx, poll, started).await? {
            WaitEnd::Shutdown => return Ok(Stop::Shutdown),
            WaitEnd::Reconfigured => return Ok(Stop::Reconfigured),
            WaitEnd::Elapsed | WaitEnd::SyncRequested => {}
        }
    }
}

/// One round: sign in, take in what is new, delete what may be deleted, QUIT. `Some` when the
/// worker should stop (shutdown during the round).
async fn round(cx: &Ctx<'_>, address: &ServerAddr, slot: &ConnSlot) -> Result<Option<Stop>, Stop> {
    let (store, id) = (cx.store, cx.id);
    let started = chrono::Utc::now();
    let max_bytes = cx.max_message_bytes();
    let mut pop = Client::connect(address, &cx.session.opts).await?;
    let login = cx.login_now().await?;
    crate::session::signed_in(&login, pop.login(&login).await)?;
    if !pop.capabilities().is_empty() && !pop.has_capability("UIDL") {
        return Err(Stop::Failed(Failure {
            retry_after: None,
            code: "pop3_uidl_missing".into(),
            kind: ErrorKind::Config,
            step: Some(FailureStep::Protocol),
            message: format!(
                "the POP3 server at {address} ({}) does not offer UIDL, which synchronization needs \
                 to recognise messages it has already read: enable UIDL on the server or use \
                 IMAP",
                cx.session.mailbox.email
            ),
        }));
    }
    // Room above the limit for the dot-stuffing and line-ending slack of RETR; messages LIST
    // reports above the limit are read by their header only.
    pop.set_max_message_size(max_bytes.saturating_add(64 * 1024));
    let listing = pop.uidl().await?;
    let sizes: HashMap<u32, u64> = pop
        .list()
        .await?
        .into_iter()
        .map(|l| (l.number, l.size))
        .collect();
    let key = |uidl: &str| {
        ItemSource::Pop3 {
            uidl: uidl.to_owned(),
        }
        .key("")
    };
    let keys: Vec<String> = listing.iter().map(|l| key(&l.uid)).collect();
    let known = store.item_decisions(id, &keys).await?;
    // The mailbox as it is now (approval and dates may have changed since the session began).
    let m = store.fetch::<Mailbox>(&id.to_string()).await?.value;
    let delete = m.delete_after_processing && (m.is_forward_mailbox || m.is_queue());

    // Message numbers whose items are committed and may be deleted (when the mailbox says so).
    let mut to_delete: Vec<u32> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    let (mut processed, mut failed) = (0u64, 0u64);
    let mut renewed = Instant::now();
    let mut stopped = None;
    for l in &listing {
        if !seen.insert(l.uid.as_str()) {
            // Two messages under one UIDL (a broken server): the second is neither taken in
            // (its key is taken) nor deleted (it was never stored).
            tracing::warn!(mailbox = %id, "the POP3 server lists one UIDL for two messages; the second is left alone");
            continue;
        }
        if let Some(decision) = known.get(&key(&l.uid)) {
            if deletable(*decision) {
                to_delete.push(l.number);
            }
            continue;
        }
        if cx.shutdown.is_cancelled() {
            stopped = Some(Stop::Shutdown);
            break;
        }
        if renewed.elapsed() >= cx.renew_every() {
            renew(cx, Some(slot)).await?;
            renewed = Instant::now();
        }
        let size = sizes.get(&l.number).copied().unwrap_or(0);
        let source = ItemSource::Pop3 {
            uidl: l.uid.clone(),
        };
        let outcome = if size > max_bytes as u64 {
            // Too large to read in full: recorded from its header, skipped, left on the server.
            let header = pop.top(l.number, 0).await?;
            let received = received_at(&header);
            take_in_header_only(
                store,
                &m,
                &cx.session.settings,
                Some(&cx.session.profile),
                source,
                &header,
                size,
                max_bytes as u64,
                received,
            )
            .await?
        } else {
            let raw = pop.retr(l.number).await?;
            let received = received_at(&raw);
            take_in(
                store,
                &m,
                &cx.session.settings,
                Some(&cx.session.profile),
                source,
                &raw,
                received,
            )
            .await?
        };
        // Committed: only now may it be deleted (and only when it was stored, or kept raw
        // because it could not be parsed).
        if let IntakeOutcome::Recorded(item) = &outcome {
            if deletable(item.decision) {
                to_delete.push(l.number);
            }
            failed += u64::from(item.decision == ItemDecision::Failed);
        }
        processed += 1;
        if processed.is_multiple_of(TELEMETRY_EVERY) {
            bump_telemetry(store, id, started, TELEMETRY_EVERY, failed).await?;
            failed = 0;
        }
    }
    if delete {
        for n in &to_delete {
            pop.dele(*n).await?;
        }
    }
    // QUIT removes what DELE marked; without delete_after_processing nothing is marked.
    pop.quit().await?;
    if delete && !to_delete.is_empty() {
        tracing::info!(mailbox = %id, deleted = to_delete.len(), "deleted processed messages from the POP3 server");
    }
    bump_telemetry(store, id, started, processed % TELEMETRY_EVERY, failed).await?;
    if processed > 0 {
        cx.stored.notify_one();
    }
    Ok(stopped)
}

/// Whether a message whose item has this decision may be deleted from the server (with
/// `delete_after_processing`): stored, or failed (its raw bytes are kept). A skipped message
/// (before the "process email from" date, mailbox not approved, too large) stays there.
fn deletable(decision: ItemDecision) -> bool {
    matches!(decision, ItemDecision::Stored | ItemDecision::Failed)
}

/// When the server received the message: the date of the topmost `Received:` field (added by
/// the last hop, the receiving server), else the `Date:` field, else now. POP3 has no
/// INTERNALDATE; this is what "process email from" is compared with.
fn received_at(raw: &[u8]) -> Timestamp {
    header_date(raw, "received", true)
        .or_else(|| header_date(raw, "date", false))
        .unwrap_or_else(chrono::Utc::now)
}

/// The date in the first header field called `name` (case-insensitive, unfolded): its whole
/// value, or what follows its last `;` (`Received:`).
fn header_date(raw: &[u8], name: &str, after_semicolon: bool) -> Option<Timestamp> {
    let head = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw, |end| &raw[..end]);
    let text = String::from_utf8_lossy(head);
    let mut value: Option<String> = None;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        match &mut value {
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if let Some((field, rest)) = line.split_once(':')
                    && field.trim().eq_ignore_ascii_case(name)
                {
                    value = Some(rest.to_owned());
                }
            }
        }
    }
    let value = value?;
    let date = if after_semicolon {
        value.rsplit_once(';')?.1
    } else {
        value.as_str()
    };
    // Drop a trailing comment such as "(UTC)", which the RFC 2822 parser refuses.
    let date = match date.find('(') {
        Some(i) => &date[..i],
        None => date,
    };
    chrono::DateTime::parse_from_rfc2822(date.trim())
        .ok()
        .map(|d| d.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_at_prefers_the_topmost_received_field() {
        let raw = b"Received: from a by mx.example.test\r\n\tfor <b@example.test>; Tue, 3 Nov 2026 10:00:00 +0100 (CET)\r\n\
Received: from b by c; Mon, 2 Nov 2026 10:00:00 +0000\r\nDate: Sun, 1 Nov 2026 10:00:00 +0000\r\n\r\nbody";
        assert_eq!(received_at(raw).to_rfc3339(), "2026-11-03T09:00:00+00:00");
        let raw = b"Subject: x\r\nDATE: Sun, 1 Nov 2026 10:00:00 +0000\r\n\r\nReceived: no; Mon, 2 Nov 2026 10:00:00 +0000\r\n";
        assert_eq!(received_at(raw).to_rfc3339(), "2026-11-01T10:00:00+00:00");
        let before = chrono::Utc::now();
        assert!(received_at(b"Received: garbage\r\n\r\n") >= before);
        assert!(received_at(b"") >= before);
    }
}
