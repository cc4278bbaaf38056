//! Outgoing email (REFERENCE.md part A "Outgoing email"): activities in pending send are
//! submitted over SMTP by the mailbox they are sent from (`mailbox_ids[0]`), one by one,
//! under the lease `outgoing:<mailbox>`.
//!
//! Each send: mark `sending` (committed, under the renewed lease) → build the message (From =
//! the mailbox, the tracking token appended to the subject when the organization uses
//! tokens, Message-ID `<act-{id}@serversync.{domain}>`) → SMTP (STARTTLS/TLS per the profile,
//! AUTH) → `sent`; a 5xx refusal → `failed` with the server's words in `send_error`; a passing
//! problem → back to pending send after the retry interval, `failed` after the retry policy's
//! attempts. A copy goes to the `Sent` folder over IMAP when the settings say so.
//!
//! Never twice: an activity found in `sending` by a new lease holder was left by a worker that
//! died mid-send. It is not sent again: it becomes `sent` when its Message-ID is in the Sent
//! folder, else `outcome_unknown` with the reason, for a person to decide. The same holds
//! when the connection breaks after the message was handed over with `DATA`.

use crate::EngineConfig;
use crate::test_enable::{Problem, addr, credentials};
use chrono::Utc;
use serversync_connectors::imap::sync::SyncSession;
use serversync_connectors::{ConnectOptions, Login, smtp};
use serversync_model::crm::{Direction, EmailActivity, EmailStatus, PartyRole};
use serversync_model::mailbox::{ApprovalStatus, Mailbox};
use serversync_model::profile::{EmailServerProfile, IncomingProtocol};
use serversync_model::settings::{EmailSettings, OutgoingMethod};
use serversync_model::{MailboxId, wire_name};
use serversync_store::{Col, Filter, LeaseGuard, Store, StoreError};
use std::collections::BTreeSet;
use std::time::Duration;

/// The folder sent copies go to (created when missing).
pub const SENT_FOLDER: &str = "Sent";

pub(crate) fn resource(id: MailboxId) -> String {
    format!("outgoing:{id}")
}

/// The Message-ID (without angle brackets) of the message sent for activity `id` from
/// `from`: it encodes the activity id so replies and bounces route back without guessing.
pub fn message_id_for(id: &serversync_model::ActivityId, from: &str) -> String {
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("localhost");
    format!("act-{id}@serversync.{domain}")
}

/// The subject as sent: the tracking token appended when tokens are on and it is not there.
pub fn subject_with_token(settings: &EmailSettings, a: &EmailActivity) -> String {
    match &a.tracking_token {
        Some(t) if settings.tracking_token.enabled && !a.subject.contains(t.as_str()) => {
            format!("{} {t}", a.subject).trim().to_owned()
        }
        _ => a.subject.clone(),
    }
}

/// Mailboxes with outgoing work: activities in pending send (due) or left in sending, sent
/// from a mailbox that sends by server-side synchronization, is approved and enabled.
/// Mail for other mailboxes waits in pending send.
pub(crate) async fn due(store: &Store) -> Result<Vec<Mailbox>, StoreError> {
    let now = Utc::now();
    let mut ids = BTreeSet::new();
    for status in [EmailStatus::PendingSend, EmailStatus::Sending] {
        let page = store
            .list::<EmailActivity>(
                None,
                &[("status", Col::text(wire_name(&status)))],
                None,
                1000,
            )
            .await?;
        for a in page.items {
            let a = a.value;
            let ready = status == EmailStatus::Sending || a.send_after.is_none_or(|t| t <= now);
            if a.direction == Direction::Outgoing
                && ready
                && let Some(m) = a.mailbox_ids.first()
            {
                ids.insert(*m);
            }
        }
    }
    let mut out = Vec::new();
    for id in ids {
        if let Some(m) = store.get::<Mailbox>(&id.to_string()).await? {
            let m = m.value;
            if m.outgoing_method == OutgoingMethod::ServerSideSync
                && m.approval == ApprovalStatus::Approved
                && m.outgoing.enabled
                && m.telemetry.postponed_until.is_none_or(|t| t <= now)
            {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Sends the mailbox's due activities, then gives the lease back.
pub(crate) async fn run(store: Store, config: EngineConfig, id: MailboxId, lease: LeaseGuard) {
    if let Err(e) = run_once(&store, &config, id, &lease).await {
        tracing::warn!(mailbox = %id, error = %e, "sending email stopped");
    }
    let _ = store.release_lease(&lease).await;
}

/// Everything the mailbox has to do now, under `lease` (taken by the caller). Public for
/// tests; the engine calls it through its main loop.
pub async fn run_once(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
) -> Result<(), StoreError> {
    let mailbox = store.fetch::<Mailbox>(&id.to_string()).await?.value;
    let settings = crate::org_settings(store, mailbox.org_id).await?;
    let profile = match mailbox.profile_id {
        Some(p) => store
            .get::<EmailServerProfile>(&p.to_string())
            .await?
            .map(|p| p.value),
        None => None,
    };
    let opts = ConnectOptions::new(config.tls_trust.clone()).with_timeout(Duration::from_millis(
        profile
            .as_ref()
            .and_then(|p| p.advanced.connection_timeout_ms)
            .unwrap_or(100_000)
            .into(),
    ));
    let mine = |status: EmailStatus| {
        vec![
            Filter::LinkedTo(id.to_string()),
            Filter::Eq("status", Col::text(wire_name(&status))),
        ]
    };
    // Left in sending by a worker that is gone (this lease is new: we leave nothing there).
    let orphans = store
        .list_where::<EmailActivity>(Some(mailbox.org_id), &mine(EmailStatus::Sending), None, 100)
        .await?;
    for s in orphans.items {
        if s.value.mailbox_ids.first() != Some(&id) {
            continue;
        }
        store.renew_lease(lease, config.lease_ttl).await?;
        let found = match (&profile, &s.value.message_id) {
            (Some(p), Some(mid)) => in_sent_folder(store, &mailbox, p, &opts, mid).await,
            _ => Err("the message has no Message-ID to look for".to_owned()),
        };
        let mut a = s.value;
        match found {
            Ok(true) => {
                a.status = EmailStatus::Sent;
                a.sent_at.get_or_insert_with(Utc::now);
                a.send_error = None;
            }
            other => {
                let why = match other {
                    Ok(_) => "its Message-ID is not in the Sent folder".to_owned(),
                    Err(e) => format!("the Sent folder could not be checked ({e})"),
                };
                a.status = EmailStatus::OutcomeUnknown;
                a.send_error = Some(format!(
                    "the worker sending this email stopped before recording the result, and {why}: \
                     check the recipient's copy or the server's logs; it is not sent again automatically"
                ));
            }
        }
        a.updated_at = Utc::now();
        match store.update(&a, Some(s.version)).await {
            Ok(_) | Err(StoreError::VersionMismatch { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let pending = store
        .list_where::<EmailActivity>(
            Some(mailbox.org_id),
            &mine(EmailStatus::PendingSend),
            None,
            100,
        )
        .await?;
    let now = Utc::now();
    for s in pending.items {
        let a = &s.value;
        if a.direction != Direction::Outgoing
            || a.mailbox_ids.first() != Some(&id)
            || a.send_after.is_some_and(|t| t > now)
        {
            continue;
        }
        let Some(p) = &profile else {
            tracing::warn!(mailbox = %id, "the mailbox has no email server profile: email waits");
            return Ok(());
        };
        if send_one(store, config, &mailbox, &settings, p, &opts, lease, s).await?
            == SendResult::MailboxFailed
        {
            // The rest waits for the mailbox's next try.
            return Ok(());
        }
    }
    Ok(())
}

/// Whether the mailbox can go on with its next email.
#[derive(Debug, PartialEq, Eq)]
enum SendResult {
    Done,
    MailboxFailed,
}

/// What became of one submission.
enum Outcome {
    Sent,
    /// Refused for good (5xx, bad address, rejected credentials): the reason.
    Failed(String),
    /// A passing problem before the message was handed over: try again later.
    Retry(String),
    /// The connection broke after the message was handed over: it may have been delivered.
    Unknown(String),
    /// The mailbox cannot send at all (no server, wrong credentials, TLS, sender refused): the
    /// email waits in pending send and the failure goes to the mailbox's retry policy.
    Mailbox(Problem),
}

#[allow(clippy::too_many_arguments)]
async fn send_one(
    store: &Store,
    config: &EngineConfig,
    mailbox: &Mailbox,
    settings: &EmailSettings,
    profile: &EmailServerProfile,
    opts: &ConnectOptions,
    lease: &LeaseGuard,
    s: serversync_store::Stored<EmailActivity>,
) -> Result<SendResult, StoreError> {
    // Fenced: only while the lease is held, and only if nobody changed the activity meanwhile.
    store.renew_lease(lease, config.lease_ttl).await?;
    let mut a = s.value;
    a.status = EmailStatus::Sending;
    let mid = a
        .message_id
        .get_or_insert_with(|| message_id_for(&a.id, &mailbox.email))
        .clone();
    a.updated_at = Utc::now();
    let sending = match store.update(&a, Some(s.version)).await {
        Ok(v) => v,
        Err(StoreError::VersionMismatch { .. }) => return Ok(SendResult::Done),
        Err(e) => return Err(e),
    };
    let built = build(mailbox, settings, &a, &mid);
    let outcome = match &built {
        Err(e) => Outcome::Failed(e.clone()),
        Ok((bytes, rcpts)) => submit(store, mailbox, profile, opts, bytes, rcpts).await?,
    };
    let mut a = sending.value;
    a.updated_at = Utc::now();
    if let Outcome::Mailbox(p) = &outcome {
        // Not this email's fault: it waits (no attempt counted) while the mailbox's policy
        // retries, postpones or disables sending with an alert.
        a.status = EmailStatus::PendingSend;
        a.send_error = Some(format!("waiting: the mailbox cannot send ({})", p.message));
        store.update(&a, Some(sending.version)).await?;
        tracing::warn!(mailbox = %mailbox.id, code = %p.code, "sending failed for the mailbox: {}", p.message);
        crate::health::record_failure(store, mailbox.id, p, crate::policy::Direction::Outgoing)
            .await?;
        return Ok(SendResult::MailboxFailed);
    }
    a.delivery_attempts += 1;
    match &outcome {
        Outcome::Sent => {
            a.status = EmailStatus::Sent;
            a.sent_at = Some(Utc::now());
            a.send_error = None;
        }
        Outcome::Failed(why) => {
            a.status = EmailStatus::Failed;
            a.send_error = Some(why.clone());
        }
        Outcome::Unknown(why) => {
            a.status = EmailStatus::OutcomeUnknown;
            a.send_error = Some(format!(
                "the connection broke after the message was handed to the server ({why}): it may \
                 have been delivered; it is not sent again automatically"
            ));
        }
        Outcome::Retry(why) if a.delivery_attempts >= settings.retry.max_attempts.max(1) => {
            a.status = EmailStatus::Failed;
            a.send_error = Some(format!(
                "gave up after {} attempts; last: {why}",
                a.delivery_attempts
            ));
        }
        // Recorded above, with an early return.
        Outcome::Mailbox(_) => {}
        Outcome::Retry(why) => {
            a.status = EmailStatus::PendingSend;
            a.send_after = Some(
                Utc::now()
                    + chrono::Duration::seconds(i64::from(settings.retry.interval_seconds.max(1))),
            );
            a.send_error = Some(why.clone());
        }
    }
    // The result is recorded even if the lease was lost meanwhile: it is what happened.
    store.update(&a, Some(sending.version)).await?;
    tracing::info!(activity = %a.id, mailbox = %mailbox.id, status = wire_name(&a.status), "outgoing email");
    if matches!(outcome, Outcome::Sent)
        && settings.save_outgoing_to_sent
        && profile.incoming_protocol == IncomingProtocol::Imap
        && let Ok((bytes, _)) = &built
        && let Err(e) = save_sent_copy(store, mailbox, profile, opts, bytes).await
    {
        tracing::warn!(activity = %a.id, error = %e, "the copy in the Sent folder could not be saved");
    }
    Ok(SendResult::Done)
}

/// The message and its envelope recipients.
fn build(
    mailbox: &Mailbox,
    settings: &EmailSettings,
    a: &EmailActivity,
    mid: &str,
) -> Result<(Vec<u8>, Vec<String>), String> {
    use lettre::message::Mailbox as Addr;
    let parse = |s: &str| {
        s.parse::<Addr>()
            .map_err(|e| format!("the address {s:?} is not valid ({e})"))
    };
    let mut b = lettre::Message::builder()
        .from(parse(&mailbox.email)?)
        .subject(subject_with_token(settings, a))
        .message_id(Some(format!("<{mid}>")))
        .date_now();
    if let Some(r) = &a.in_reply_to {
        b = b.in_reply_to(format!("<{r}>"));
    }
    let mut rcpts = Vec::new();
    for p in &a.parties {
        let to = match &p.display_name {
            Some(n) => format!("{n} <{}>", p.address),
            None => p.address.clone(),
        };
        b = match p.role {
            PartyRole::To => b.to(parse(&to)?),
            PartyRole::Cc => b.cc(parse(&to)?),
            PartyRole::Bcc => b.bcc(parse(&to)?),
            PartyRole::From => continue,
        };
        rcpts.push(p.address.clone());
    }
    if rcpts.is_empty() {
        return Err("the email has no recipients".into());
    }
    let msg = b
        .body(a.text_body.clone().unwrap_or_default())
        .map_err(|e| format!("the message could not be built ({e})"))?;
    Ok((msg.formatted(), rcpts))
}

async fn submit(
    store: &Store,
    mailbox: &Mailbox,
    profile: &EmailServerProfile,
    opts: &ConnectOptions,
    message: &[u8],
    rcpts: &[String],
) -> Result<Outcome, StoreError> {
    let server = match addr(profile.outgoing.as_ref(), "outgoing") {
        Ok(s) => s,
        Err(p) => return Ok(Outcome::Mailbox(p)),
    };
    let login = match credentials(store, mailbox, profile, true).await? {
        Ok(l) => l,
        Err(p) => return Ok(Outcome::Mailbox(p)),
    };
    // Before any recipient is given, a failure is the mailbox's, not this email's.
    let early =
        |e: serversync_connectors::ConnectError| Outcome::Mailbox(Problem::from_connect(&e));
    let refused = |what: &str, r: &smtp::Reply| {
        let said = format!("{what} refused: server said \"{}\"", r.display());
        if r.is_transient_negative() {
            Outcome::Retry(said)
        } else {
            Outcome::Failed(said)
        }
    };
    let mut c = match smtp::connect(&server, opts).await {
        Ok(c) => c,
        Err(e) => return Ok(early(e)),
    };
    if let Err(e) = c.login(&login).await {
        return Ok(early(e));
    }
    if let Err(e) = c.mail_from(&mailbox.email).await {
        return Ok(early(e));
    }
    for r in rcpts {
        match c.rcpt_to(r).await {
            Ok(reply) if reply.is_positive() => {}
            Ok(reply) => {
                let _ = c.quit().await;
                return Ok(refused(&format!("RCPT TO:<{r}>"), &reply));
            }
            Err(e) => return Ok(early(e)),
        }
    }
    let outcome = match c.data(message).await {
        Ok(reply) if reply.code == 250 => Outcome::Sent,
        Ok(reply) => refused("the message", &reply),
        Err(e) => return Ok(Outcome::Unknown(e.to_string())),
    };
    let _ = c.quit().await;
    Ok(outcome)
}

async fn imap_session(
    store: &Store,
    mailbox: &Mailbox,
    profile: &EmailServerProfile,
    opts: &ConnectOptions,
) -> Result<SyncSession, String> {
    if profile.incoming_protocol != IncomingProtocol::Imap {
        return Err("the profile does not use IMAP".into());
    }
    let server = addr(profile.incoming.as_ref(), "incoming").map_err(|p| p.message)?;
    let login: Login = credentials(store, mailbox, profile, false)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|p| p.message)?;
    SyncSession::connect(&server, &login, opts)
        .await
        .map_err(|e| e.to_string())
}

async fn save_sent_copy(
    store: &Store,
    mailbox: &Mailbox,
    profile: &EmailServerProfile,
    opts: &ConnectOptions,
    message: &[u8],
) -> Result<(), String> {
    let mut s = imap_session(store, mailbox, profile, opts).await?;
    s.create_folder_if_missing(SENT_FOLDER)
        .await
        .map_err(|e| e.to_string())?;
    s.append(SENT_FOLDER, &["\\Seen"], None, message)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.logout().await;
    Ok(())
}

/// Whether a message with this Message-ID is in the Sent folder.
async fn in_sent_folder(
    store: &Store,
    mailbox: &Mailbox,
    profile: &EmailServerProfile,
    opts: &ConnectOptions,
    mid: &str,
) -> Result<bool, String> {
    let mut s = imap_session(store, mailbox, profile, opts).await?;
    if let Err(e) = s.examine(SENT_FOLDER, false).await {
        let _ = s.logout().await;
        return Err(e.to_string());
    }
    let found = s
        .uid_search_header("Message-ID", mid)
        .await
        .map_err(|e| e.to_string())?;
    let _ = s.logout().await;
    Ok(!found.is_empty())
}
