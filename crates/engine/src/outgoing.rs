//! Outgoing email (REFERENCE.md part A "Outgoing email"): activities in pending send are
//! submitted over SMTP by the mailbox they are sent from (`mailbox_ids[0]`), one by one,
//! under the lease `outgoing:<mailbox>`.
//!
//! Each send: mark `sending` (committed, under the lease, renewed every quarter of its
//! time) → build the message (From = the mailbox, the tracking token appended to the subject
//! when the organization uses tokens, Message-ID `<act-{id}@serversync.{domain}>`) → SMTP
//! (STARTTLS/TLS per the profile, AUTH; the envelope pipelined when the server offers it) →
//! `sent`; a 5xx refusal → `failed` with the server's words in `send_error`; a passing
//! problem → back to pending send after the retry interval, `failed` after the retry policy's
//! attempts. A copy goes to the `Sent` folder over IMAP when the settings say so.
//!
//! Never twice: an activity found in `sending` by a new lease holder was left by a worker that
//! died mid-send. It is not sent again: it becomes `sent` when its Message-ID is in the Sent
//! folder, else `outcome_unknown` with the reason, for a person to decide. The same holds
//! when the connection breaks after the message was handed over with `DATA`.

use crate::EngineConfig;
use crate::policy::Failure;
use crate::session::MailboxSession;
use crate::slots::ConnSlot;
use chrono::Utc;
use serversync_connectors::transport::{MailTransport, SentFolder, Submission};
use serversync_model::crm::{Direction, EmailActivity, EmailStatus};
use serversync_model::mailbox::Mailbox;
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::{EmailSettings, OutgoingMethod};
use serversync_model::{MailboxId, OrgId, wire_name};
use serversync_store::{LeaseGuard, Store, StoreError, Stored};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

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

/// The subject as sent: the tracking token appended when tokens are on and it is not there,
/// and at most the organization's `max_subject_length` characters (the longest subject the
/// mail server accepts): a longer subject is cut, never the token (replies are correlated by it).
pub fn subject_with_token(settings: &EmailSettings, a: &EmailActivity) -> String {
    let max = settings.max_subject_length.max(1) as usize;
    let cut = |s: &str, n: usize| -> String {
        s.chars().take(n).collect::<String>().trim_end().to_owned()
    };
    match &a.tracking_token {
        Some(t) if settings.tracking_token.enabled && !a.subject.contains(t.as_str()) => {
            let room = max.saturating_sub(t.chars().count() + 1);
            if room == 0 {
                return cut(t, max);
            }
            format!("{} {t}", cut(&a.subject, room)).trim().to_owned()
        }
        Some(t) if settings.tracking_token.enabled && a.subject.chars().count() > max => {
            // The token is in the subject already (a reply): keep it whole at the end.
            let without = a.subject.replacen(t.as_str(), "", 1);
            let without = without.split_whitespace().collect::<Vec<_>>().join(" ");
            let room = max.saturating_sub(t.chars().count() + 1);
            if room == 0 {
                return cut(t, max);
            }
            format!("{} {t}", cut(&without, room)).trim().to_owned()
        }
        _ => cut(&a.subject, max),
    }
}

/// Mailboxes with outgoing work: an email in pending send that is due, or one left in
/// sending (not held by an Email Router), sent from a mailbox that sends by server-side
/// synchronization, is approved (when the organization's settings require approval for its
/// kind, user or queue), enabled and not postponed. Mail for other mailboxes waits in
/// pending send.
///
/// Found per mailbox through the store's due index, so nothing one mailbox holds — however
/// many emails, however far in the future — hides another mailbox's due email; the result
/// takes the organizations in turn (one mailbox of each, then the next of each…), and the
/// engine starts one sender per mailbox.
pub(crate) async fn due(store: &Store) -> Result<Vec<Mailbox>, StoreError> {
    crate::router::expire_router_claims(store).await?;
    let now = Utc::now();
    let mut ids = BTreeSet::new();
    for status in [EmailStatus::PendingSend, EmailStatus::Sending] {
        ids.extend(store.send_due_mailboxes(status, now).await?);
    }
    let mut per_org: BTreeMap<OrgId, Vec<Mailbox>> = BTreeMap::new();
    let mut settings: BTreeMap<OrgId, EmailSettings> = BTreeMap::new();
    for id in ids {
        if let Some(m) = store.get::<Mailbox>(&id.to_string()).await? {
            let m = m.value;
            let needs_approval = match settings.get(&m.org_id) {
                Some(s) => m.needs_approval(s),
                None => {
                    let s = crate::org_settings(store, m.org_id).await?;
                    let needs = m.needs_approval(&s);
                    settings.insert(m.org_id, s);
                    needs
                }
            };
            if m.outgoing_method == OutgoingMethod::ServerSideSync
                && !needs_approval
                && m.outgoing.enabled
                && m.telemetry.postponed_until.is_none_or(|t| t <= now)
            {
                per_org.entry(m.org_id).or_default().push(m);
            }
        }
    }
    Ok(round_robin(per_org.into_values().collect()))
}

/// The first of each list, then the second of each, and so on.
pub(crate) fn round_robin<T>(lists: Vec<Vec<T>>) -> Vec<T> {
    let mut iters: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        out.extend(iters.iter_mut().filter_map(Iterator::next));
        if out.len() == before {
            return out;
        }
    }
}

/// Why an email in pending send has not gone out yet, in words for the person waiting on
/// it; `None` for an email that is not waiting (any other status) or is due now.
pub async fn waiting_reason(
    store: &Store,
    a: &EmailActivity,
) -> Result<Option<String>, StoreError> {
    if a.status != EmailStatus::PendingSend || a.direction != Direction::Outgoing {
        return Ok(None);
    }
    let now = Utc::now();
    let Some(mid) = a.mailbox_ids.first() else {
        return Ok(Some("the email has no mailbox to be sent from".into()));
    };
    let Some(m) = store.get::<Mailbox>(&mid.to_string()).await? else {
        return Ok(Some("the mailbox it is sent from no longer exists".into()));
    };
    let m = m.value;
    let why = if m.outgoing_method == OutgoingMethod::EmailRouter {
        format!(
            "it waits for the Email Router to claim it (the outgoing method of {} is email router)",
            m.email
        )
    } else if m.outgoing_method != OutgoingMethod::ServerSideSync {
        format!(
            "the outgoing email method of {} is none: choose server-side synchronization",
            m.email
        )
    } else if m.needs_approval(&crate::org_settings(store, m.org_id).await?) {
        format!(
            "the email address {} is not approved (approval: {}): an administrator or mailbox approver must approve it",
            m.email,
            wire_name(&m.approval)
        )
    } else if m.profile_id.is_none() {
        format!("the mailbox {} has no email server profile", m.email)
    } else if !m.outgoing.enabled {
        let last = m
            .telemetry
            .last_error
            .as_ref()
            .map(|e| format!("; last error: {}", e.message))
            .unwrap_or_default();
        format!(
            "outgoing email of {} is not tested and enabled: run Test & Enable{last}",
            m.email
        )
    } else if let Some(t) = m.telemetry.postponed_until.filter(|t| *t > now) {
        let last = m
            .telemetry
            .last_error
            .as_ref()
            .map(|e| format!(" after: {}", e.message))
            .unwrap_or_default();
        format!(
            "the mailbox's sending is postponed until {}{last}",
            t.to_rfc3339()
        )
    } else if let Some(t) = a.send_after.filter(|t| *t > now) {
        match &a.send_error {
            Some(e) => format!(
                "try {} at {} after: {e}",
                a.delivery_attempts + 1,
                t.to_rfc3339()
            ),
            None => format!("scheduled to be sent at {}", t.to_rfc3339()),
        }
    } else {
        let limit = match m.profile_id {
            Some(p) => store
                .get::<EmailServerProfile>(&p.to_string())
                .await?
                .map(|p| p.value.advanced.max_sends_per_minute)
                .unwrap_or(0),
            None => 0,
        };
        if limit > 0 && store.counter(m.org_id, &rate_counter(m.id, now)).await? >= u64::from(limit)
        {
            format!(
                "the mailbox has sent its {limit} emails this minute (max_sends_per_minute): the rest goes next minute"
            )
        } else {
            return Ok(None);
        }
    };
    Ok(Some(why))
}

/// Sends the mailbox's due activities (stopping between two emails when `stop` is
/// cancelled), then gives the lease back.
pub(crate) async fn run(
    store: Store,
    config: EngineConfig,
    id: MailboxId,
    lease: LeaseGuard,
    stop: CancellationToken,
) {
    if let Err(e) = run_until(&store, &config, id, &lease, &stop).await {
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
    run_until(store, config, id, lease, &CancellationToken::new()).await
}

async fn run_until(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
    stop: &CancellationToken,
) -> Result<(), StoreError> {
    // A mailbox without a profile has nothing to send with: its email waits (below).
    let session = MailboxSession::load(store, config, id).await?.ok();
    // Left in sending by a worker that is gone (this lease is new: we leave nothing there).
    let orphans = store
        .send_due_emails(EmailStatus::Sending, id, Utc::now(), None, 100)
        .await?;
    for s in orphans.items {
        if s.value.router_claim.is_some() {
            continue;
        }
        store.renew_lease(lease, config.lease_ttl).await?;
        let found = match (&session, &s.value.message_id) {
            (Some(session), Some(mid)) => in_sent_folder(store, session, mid).await,
            _ => Err("the message has no Message-ID to look for".to_owned()),
        };
        let mut a = s.value;
        match found {
            Ok(true) => {
                a.status = EmailStatus::Sent;
                a.sent_at.get_or_insert_with(Utc::now);
                a.send_error = None;
                a.send_trace.push(
                    "the worker sending it stopped before recording the result; its Message-ID \
                     is in the Sent folder, so it is recorded as sent (not sent again)"
                        .into(),
                );
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
    // The Sent copies are saved beside the sending, never in its way: the sender hands each
    // block's copies over once its results are committed and goes on with the next block.
    let (copies, queued) = tokio::sync::mpsc::channel(COPIES_QUEUED);
    let mut round = Round {
        ready: None,
        done: Vec::new(),
        allowance: Allowance::default(),
        copies,
    };
    let sending = async {
        let r = send_due(store, config, id, lease, stop, session.as_ref(), &mut round).await;
        // A block marked and not sent (the round returned early on a store error) goes back
        // to pending send; what was sent is recorded even when the round stopped on an
        // error: it is what happened.
        round.give_back_ready();
        let flushed = round.flush(store).await;
        // Dropping the round's end of the queue lets the saving finish.
        (r, flushed, round.allowance)
    };
    let ((r, flushed, mut allowance), ()) =
        tokio::join!(sending, keep_sent_copies(store, session.as_ref(), queued));
    if let Some(session) = &session {
        allowance.give_back(store, &session.mailbox).await?;
    }
    r?;
    flushed?;
    // Counters of minutes long gone.
    let old = format!("sends:{}:", Utc::now().timestamp() / 60 - 2);
    store.prune_counters("sends:", &old).await?;
    Ok(())
}

/// Emails marked `sending` in one commit, then handed to the server one after another on
/// the open connection while the next block is marked. A worker killed midway leaves at most
/// two blocks in `sending` (the one being sent and the next, marked): the next lease holder
/// finds each in the Sent folder (sent) or makes it `outcome_unknown`.
pub const BLOCK: usize = 16;

/// Due emails read at a time: whole blocks.
const PAGE: u32 = BLOCK as u32 * 6;

/// Blocks of Sent copies that may wait to be saved before the sender waits for the saving: a
/// worker killed meanwhile loses at most these copies (the emails are recorded as sent).
const COPIES_QUEUED: usize = 4;

/// What a round carries from one block to the next.
struct Round {
    /// The block marked `sending` while the one before it was handed to the server: sent in
    /// the next step, while the block after it is marked.
    ready: Option<Ready>,
    /// The results of the block sent last, not committed yet: they are written in the same
    /// commit as the next block's `sending` (or at the end of the round).
    done: Vec<Finished>,
    /// Sends of this minute taken from the rate counter and not used yet.
    allowance: Allowance,
    /// Where the Sent copies of committed results go to be saved ([`keep_sent_copies`]).
    copies: tokio::sync::mpsc::Sender<Vec<Vec<u8>>>,
}

/// One email handed to the server (or given back to pending send), its result not yet
/// committed.
struct Finished {
    /// The activity as it is to be recorded.
    a: EmailActivity,
    /// As it was committed in `sending` (the version the result is written from).
    sending: Stored<EmailActivity>,
    /// The message to save in the Sent folder once the result is committed.
    copy: Option<Vec<u8>>,
}

impl Finished {
    /// An email back to pending send as it was before it was marked, untried: no attempt
    /// counted, no result.
    fn untried(sending: Stored<EmailActivity>) -> Finished {
        let mut a = sending.value.clone();
        a.status = EmailStatus::PendingSend;
        a.updated_at = Utc::now();
        Finished {
            a,
            sending,
            copy: None,
        }
    }
}

impl Round {
    /// Commits the carried results together with `marks` (emails to mark `sending`, each
    /// from the version it was read at) and hands the Sent copies of the results over to be
    /// saved; answers, for each mark, the stored email or `None` when it changed meanwhile
    /// (it is not sent).
    async fn commit(
        &mut self,
        store: &Store,
        marks: &[(EmailActivity, Stored<EmailActivity>)],
    ) -> Result<Vec<Option<Stored<EmailActivity>>>, StoreError> {
        let done = std::mem::take(&mut self.done);
        let mut writes: Vec<(&EmailActivity, &Stored<EmailActivity>)> =
            done.iter().map(|f| (&f.a, &f.sending)).collect();
        writes.extend(marks.iter().map(|(a, s)| (a, s)));
        let mut answers = store.update_each(&writes).await?;
        let marked = answers.split_off(done.len());
        let mut copies = Vec::new();
        for (f, answer) in done.into_iter().zip(answers) {
            if answer.is_none() {
                tracing::warn!(activity = %f.a.id, status = wire_name(&f.a.status), "the email was changed while it was being sent: its result is not recorded");
            } else {
                tracing::info!(activity = %f.a.id, mailbox = ?f.a.mailbox_ids.first(), status = wire_name(&f.a.status), attempts = f.a.delivery_attempts, "outgoing email");
            }
            copies.extend(f.copy);
        }
        // Closed only when the saving is over, which waits for this end to be dropped.
        if !copies.is_empty() {
            let _ = self.copies.send(copies).await;
        }
        Ok(marked)
    }

    /// Puts the block marked and not sent back to pending send (in the next commit).
    fn give_back_ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            self.done.extend(ready.give_back());
        }
    }

    /// Commits the carried results (their Sent copies go to be saved).
    async fn flush(&mut self, store: &Store) -> Result<(), StoreError> {
        if self.done.is_empty() {
            return Ok(());
        }
        self.commit(store, &[]).await?;
        Ok(())
    }
}

/// The mailbox's due email, page after page, block after block.
async fn send_due(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    lease: &LeaseGuard,
    stop: &CancellationToken,
    session: Option<&MailboxSession>,
    round: &mut Round,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let mut transport: Option<Transport> = None;
    // The lease (and the connection's slot) are renewed when a quarter of their time is gone,
    // not for every email: each renewal is a write.
    let mut renewed = std::time::Instant::now();
    store.renew_lease(lease, config.lease_ttl).await?;
    // Page after page of the mailbox's due email (PAGE at a time, the earliest due first)
    // until none is left or sending has to stop: a long queue goes out in one round, not a
    // page per tick, and email scheduled for later is never read.
    let mut after: Option<String> = None;
    let r = 'round: loop {
        let pending = store
            .send_due_emails(EmailStatus::PendingSend, id, now, after.as_deref(), PAGE)
            .await?;
        let mut due: std::collections::VecDeque<_> = pending
            .items
            .into_iter()
            .filter(|s| {
                let a = &s.value;
                a.direction == Direction::Outgoing
                    && a.mailbox_ids.first() == Some(&id)
                    && a.send_after.is_none_or(|t| t <= now)
            })
            .collect();
        let mut again = false;
        while !due.is_empty() {
            if stop.is_cancelled() {
                break 'round Ok(());
            }
            let Some(session) = session else {
                tracing::warn!(mailbox = %id, "the mailbox has no email server profile: email waits");
                break 'round Ok(());
            };
            let want = due.len().min(BLOCK);
            let granted = round
                .allowance
                .take(store, &session.mailbox, &session.profile, want)
                .await?;
            if granted == 0 {
                tracing::info!(mailbox = %id, limit = session.profile.advanced.max_sends_per_minute, "send rate limit reached: the rest waits for the next minute");
                break 'round Ok(());
            }
            let renew = renewed.elapsed() >= config.lease_ttl / 4;
            if renew {
                store.renew_lease(lease, config.lease_ttl).await?;
                renewed = std::time::Instant::now();
            }
            let c = match transport.as_mut() {
                Some(c) => c,
                None => match session.transport(store, config, &lease.owner).await? {
                    Ok(Some((c, slot))) => {
                        // Signed in: a failure recorded earlier (the network, the server) is over.
                        crate::health::record_success(
                            store,
                            id,
                            crate::policy::Direction::Outgoing,
                        )
                        .await?;
                        transport.insert(Transport { c, slot })
                    }
                    // Every connection slot of the profile is in use: the next round tries again.
                    Ok(None) => break 'round Ok(()),
                    Err(problem) => {
                        // Not the email's fault: it waits (no attempt counted) while the
                        // mailbox's policy retries, postpones or disables sending with an alert.
                        break 'round Err(problem);
                    }
                },
            };
            if renew {
                c.slot.renew(store, config.lease_ttl).await?;
            }
            let block: Vec<_> = due.drain(..granted).collect();
            // The block marked last goes to the server while this one is marked: the database
            // writes of one block overlap the SMTP exchange of the one before. The first block
            // of the round is only marked.
            let (result, gave_back) = match round.ready.take() {
                None => {
                    round.ready = Some(round.mark(store, session, block).await?);
                    (SendResult::Done, false)
                }
                Some(ready) => {
                    let ((result, gave_back, finished), marked) = tokio::join!(
                        transmit(session, ready, c, stop),
                        round.mark(store, session, block)
                    );
                    // Recorded in the next commit, or at the end of the round.
                    round.done.extend(finished);
                    round.ready = Some(marked?);
                    (result, gave_back)
                }
            };
            match result {
                SendResult::Done => {}
                SendResult::ConnectionLost => {
                    if let Some(c) = transport.take() {
                        c.slot.release(store).await;
                    }
                }
                SendResult::MailboxFailed(problem) => break 'round Err(problem),
            }
            if granted < want {
                tracing::info!(mailbox = %id, limit = session.profile.advanced.max_sends_per_minute, "send rate limit reached: the rest waits for the next minute");
                break 'round Ok(());
            }
            if gave_back {
                // Emails went back to pending send (the connection was lost before their
                // turn): record that, and read the queue again from its start.
                round.flush(store).await?;
                again = true;
                break;
            }
        }
        if again {
            after = None;
            continue;
        }
        match pending.next {
            Some(next) => after = Some(next),
            None => break Ok(()),
        }
    };
    // The block marked last goes out when the round ends well, else back to pending send.
    let r = match (r, session, transport.as_mut(), round.ready.take()) {
        (Ok(()), Some(session), Some(c), Some(ready)) if !stop.is_cancelled() => {
            let (result, _, finished) = transmit(session, ready, c, stop).await;
            round.done.extend(finished);
            match result {
                SendResult::Done => Ok(()),
                SendResult::ConnectionLost => {
                    if let Some(c) = transport.take() {
                        c.slot.release(store).await;
                    }
                    Ok(())
                }
                SendResult::MailboxFailed(problem) => Err(problem),
            }
        }
        (r, _, _, ready) => {
            round.ready = ready;
            round.give_back_ready();
            r
        }
    };
    match r {
        Ok(()) => {
            if let Some(c) = transport.take() {
                c.close(store).await;
            }
        }
        Err(problem) => {
            if let Some(c) = transport.take() {
                c.close(store).await;
            }
            round.flush(store).await?;
            mailbox_failed(store, config, id, &problem).await?;
        }
    }
    Ok(())
}

/// Records a failure of the mailbox's sending (server, credentials, sender refused) for its
/// retry policy.
async fn mailbox_failed(
    store: &Store,
    config: &EngineConfig,
    id: MailboxId,
    problem: &Failure,
) -> Result<(), StoreError> {
    tracing::warn!(mailbox = %id, code = %problem.code, "sending failed for the mailbox: {}", problem.message);
    crate::health::record_failure(
        store,
        config,
        id,
        problem,
        crate::policy::Direction::Outgoing,
    )
    .await
}

/// An open, signed-in mail transport and the connection slot it holds; reused for every
/// email of a round.
struct Transport {
    c: MailTransport,
    slot: ConnSlot,
}

impl Transport {
    async fn close(self, store: &Store) {
        self.c.close().await;
        self.slot.release(store).await;
    }
}

/// Sends of the current minute taken from the mailbox's rate counter (the profile's
/// `max_sends_per_minute`; counted across workers: serversync is not a bulk mailer) a block
/// at a time, one counter write per block instead of one per email.
#[derive(Default)]
struct Allowance {
    /// The minute the sends were taken in (unix minutes).
    minute: i64,
    /// Taken and not used yet.
    left: u64,
}

impl Allowance {
    /// How many of the next `want` emails may go now (0: the limit is reached this minute).
    async fn take(
        &mut self,
        store: &Store,
        mailbox: &Mailbox,
        profile: &EmailServerProfile,
        want: usize,
    ) -> Result<usize, StoreError> {
        let limit = u64::from(profile.advanced.max_sends_per_minute);
        if limit == 0 {
            return Ok(want);
        }
        let now = Utc::now();
        let minute = now.timestamp() / 60;
        if minute != self.minute {
            // What was left of an earlier minute counts for that minute only.
            self.minute = minute;
            self.left = 0;
        }
        let want = want as u64;
        if self.left < want {
            let n = want - self.left;
            let v = store
                .add_counter(mailbox.org_id, &rate_counter(mailbox.id, now), n as i64)
                .await?;
            let before = (v - n as i64).max(0) as u64;
            self.left += n.min(limit.saturating_sub(before));
        }
        let granted = self.left.min(want);
        self.left -= granted;
        Ok(granted as usize)
    }

    /// Gives the unused sends of this minute back to the counter.
    async fn give_back(&mut self, store: &Store, mailbox: &Mailbox) -> Result<(), StoreError> {
        let now = Utc::now();
        if self.left > 0 && now.timestamp() / 60 == self.minute {
            store
                .add_counter(
                    mailbox.org_id,
                    &rate_counter(mailbox.id, now),
                    -(self.left as i64),
                )
                .await?;
        }
        self.left = 0;
        Ok(())
    }
}

/// The counter of a mailbox's sends in the minute of `at`.
fn rate_counter(id: MailboxId, at: chrono::DateTime<Utc>) -> String {
    format!("sends:{}:{id}", at.timestamp() / 60)
}

/// Whether the mailbox can go on with its next email.
#[derive(Debug)]
enum SendResult {
    Done,
    /// The connection is no longer usable; the next email opens another.
    ConnectionLost,
    /// The mailbox cannot send at all (sender refused, credentials…): its email waits.
    MailboxFailed(Failure),
}

/// What became of one submission.
enum Outcome {
    Sent,
    /// Refused for good (5xx, bad address): the reason.
    Failed(String),
    /// A passing problem before the message was handed over: try again later.
    Retry(String),
    /// The connection broke after the message was handed over: it may have been delivered.
    Unknown(String),
}

/// The delay before the next try of an email after `attempts` passing failures: the
/// organization's retry interval, doubled each time, at most an hour.
pub fn retry_delay(interval_seconds: u32, attempts: u32) -> chrono::Duration {
    let base = i64::from(interval_seconds.max(1));
    let factor = 1i64 << attempts.saturating_sub(1).min(20);
    chrono::Duration::seconds(base.saturating_mul(factor).min(3600).max(base.min(3600)))
}

/// A message and its envelope recipients, or why it could not be built.
type Built = Result<(Vec<u8>, Vec<String>), String>;

/// A block committed in `sending` and built: the next to be handed to the server.
struct Ready {
    /// Each email as committed in `sending` (`None`: it changed meanwhile and is not sent),
    /// with its message.
    emails: Vec<(Option<Stored<EmailActivity>>, Built)>,
}

impl Ready {
    /// The block's emails back to pending send, untried (no attempt counted): the round ends
    /// before their turn.
    fn give_back(self) -> Vec<Finished> {
        self.emails
            .into_iter()
            .filter_map(|(sending, _)| sending.map(Finished::untried))
            .collect()
    }
}

impl Round {
    /// Builds the block's messages and marks it `sending`, in one commit with the results
    /// carried from the block sent before (whose Sent copies then go to be saved).
    async fn mark(
        &mut self,
        store: &Store,
        session: &MailboxSession,
        block: Vec<Stored<EmailActivity>>,
    ) -> Result<Ready, StoreError> {
        let (mailbox, settings) = (&session.mailbox, &session.settings);
        let mut marks = Vec::with_capacity(block.len());
        let mut built = Vec::with_capacity(block.len());
        for s in block {
            let mut a = s.value.clone();
            a.status = EmailStatus::Sending;
            if a.message_id.is_none() {
                a.message_id = Some(message_id_for(&a.id, &mailbox.email));
            }
            a.updated_at = Utc::now();
            built.push(build(mailbox, settings, &a, store).await);
            marks.push((a, s));
        }
        let marked = self.commit(store, &marks).await?;
        Ok(Ready {
            emails: marked.into_iter().zip(built).collect(),
        })
    }
}

/// Hands a marked block's emails to the server over `transport`, one after another; answers
/// whether the mailbox can go on, whether emails went back to pending send untried (the
/// connection was lost or the mailbox failed before their turn), and every email's result,
/// to be committed.
async fn transmit(
    session: &MailboxSession,
    ready: Ready,
    transport: &mut Transport,
    stop: &CancellationToken,
) -> (SendResult, bool, Vec<Finished>) {
    let (mailbox, settings) = (&session.mailbox, &session.settings);
    let keep_copy = settings.save_outgoing_to_sent
        && !transport.c.keeps_sent_copy()
        && SentFolder::available(session.profile.incoming_protocol);
    let mut done = Vec::with_capacity(ready.emails.len());
    let mut next = SendResult::Done;
    let mut gave_back = false;
    for (sending, built) in ready.emails {
        // Changed by someone meanwhile (cancelled, edited): not sent.
        let Some(sending) = sending else { continue };
        if !matches!(next, SendResult::Done) || stop.is_cancelled() {
            // Not handed over: back to pending send, no attempt counted.
            gave_back = true;
            done.push(Finished::untried(sending));
            continue;
        }
        let mut a = sending.value.clone();
        a.updated_at = Utc::now();
        let outcome = match &built {
            Err(e) => Outcome::Failed(e.clone()),
            Ok((bytes, rcpts)) => {
                match transact(&mut transport.c, &mailbox.email, bytes, rcpts).await {
                    Ok((o, n)) => {
                        next = n;
                        o
                    }
                    Err(problem) => {
                        // Before any recipient was given: the mailbox's failure, not this
                        // email's; it waits in pending send.
                        next = SendResult::MailboxFailed(problem);
                        done.push(Finished::untried(sending));
                        continue;
                    }
                }
            }
        };
        a.delivery_attempts += 1;
        a.send_trace.extend(transport.c.take_waits());
        record(&mut a, &outcome, settings);
        let copy = match (&outcome, built) {
            (Outcome::Sent, Ok((bytes, _))) if keep_copy => Some(bytes),
            _ => None,
        };
        done.push(Finished { a, sending, copy });
    }
    (next, gave_back, done)
}

/// Sets the email's status and error for the outcome of its submission.
fn record(a: &mut EmailActivity, outcome: &Outcome, settings: &EmailSettings) {
    match outcome {
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
        Outcome::Retry(why) => {
            a.status = EmailStatus::PendingSend;
            a.send_after = Some(
                Utc::now() + retry_delay(settings.retry.interval_seconds, a.delivery_attempts),
            );
            a.send_error = Some(why.clone());
        }
    }
}

/// One mail transaction on an open connection. `Err` when the sender is refused or the
/// connection fails before any recipient was given (the mailbox's problem); the second value
/// says whether the connection can be used again.
async fn transact(
    c: &mut MailTransport,
    from: &str,
    message: &[u8],
    rcpts: &[String],
) -> Result<(Outcome, SendResult), Failure> {
    // A failure before the message was handed over: the mailbox's problem, the email waits.
    let submitted = c
        .submit(from, rcpts, message)
        .await
        .map_err(|e| Failure::from(&e))?;
    Ok(match submitted {
        Submission::Sent => (Outcome::Sent, SendResult::Done),
        Submission::Refused {
            reason,
            transient,
            reusable,
            ..
        } => {
            let outcome = if transient {
                Outcome::Retry(reason)
            } else {
                Outcome::Failed(reason)
            };
            let next = if reusable {
                SendResult::Done
            } else {
                SendResult::ConnectionLost
            };
            (outcome, next)
        }
        Submission::Unknown { reason } => (Outcome::Unknown(reason), SendResult::ConnectionLost),
    })
}

/// The message and its envelope recipients: From the mailbox, the tracking token in the
/// subject, Message-ID encoding the activity, In-Reply-To/References of a reply, text and
/// HTML bodies, and the attachments (from the blob store).
pub(crate) async fn build(
    mailbox: &Mailbox,
    settings: &EmailSettings,
    a: &EmailActivity,
    store: &Store,
) -> Result<(Vec<u8>, Vec<String>), String> {
    use serversync_connectors::mime::build::{OutgoingAttachment, headers};
    let mid = a
        .message_id
        .clone()
        .unwrap_or_else(|| message_id_for(&a.id, &mailbox.email));
    let headers = headers(
        &mailbox.email,
        subject_with_token(settings, a),
        &mid,
        a.in_reply_to.as_deref(),
        &a.references,
        &a.parties,
    )?;
    let mut attachments = Vec::new();
    for at in &a.attachments {
        let bytes = store
            .get_blob(&at.sha256)
            .await
            .map_err(|e| format!("the attachment {} could not be read ({e})", at.file_name))?
            .ok_or_else(|| format!("the attachment {} is not stored", at.file_name))?;
        attachments.push(OutgoingAttachment {
            file_name: at.file_name.clone(),
            content_type: at.content_type.clone(),
            bytes,
        });
    }
    headers.finish(
        a.text_body.clone().unwrap_or_default(),
        a.html_body.clone(),
        attachments,
    )
}

/// The Sent folder of the session's mailbox; `Err` is what failed, in words.
async fn open_sent_folder(store: &Store, session: &MailboxSession) -> Result<SentFolder, String> {
    match session.sent_folder(store, SENT_FOLDER).await {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(p)) => Err(p.message),
        Err(e) => Err(e.to_string()),
    }
}

/// Saves the Sent copies handed over by the sender until it drops its end of `queued`, over
/// one connection opened for the first copy and closed at the end. Copies that wait together
/// (the server was slower than the sending) go in one command, up to [`COPIES_TOGETHER`]
/// bytes.
async fn keep_sent_copies(
    store: &Store,
    session: Option<&MailboxSession>,
    mut queued: tokio::sync::mpsc::Receiver<Vec<Vec<u8>>>,
) {
    let mut folder = None;
    while let Some(mut copies) = queued.recv().await {
        let mut bytes: usize = copies.iter().map(Vec::len).sum();
        while bytes < COPIES_TOGETHER
            && let Ok(more) = queued.try_recv()
        {
            bytes += more.iter().map(Vec::len).sum::<usize>();
            copies.extend(more);
        }
        if let Some(session) = session {
            save_sent_copies(store, session, &mut folder, &copies).await;
        }
    }
    if let Some(f) = folder {
        f.close().await;
    }
}

/// The most bytes of Sent copies [`keep_sent_copies`] puts in one command.
const COPIES_TOGETHER: usize = 4 << 20;

/// Saves the copies of sent messages in the Sent folder over `folder` (opened, and the folder
/// created, when missing): all in one MULTIAPPEND when the server offers it, else one by one.
/// A copy that cannot be saved is logged: the email was sent all the same.
async fn save_sent_copies(
    store: &Store,
    session: &MailboxSession,
    folder: &mut Option<SentFolder>,
    copies: &[Vec<u8>],
) {
    if copies.is_empty() {
        return;
    }
    let all: Vec<&[u8]> = copies.iter().map(Vec::as_slice).collect();
    if folder.is_none() {
        match open_sent_folder(store, session).await {
            Ok(f) => *folder = Some(f),
            Err(e) => {
                tracing::warn!(mailbox = %session.mailbox.id, error = %e, copies = all.len(), "the copies in the Sent folder could not be saved");
                return;
            }
        }
    }
    let together = all.len() > 1 && folder.as_ref().is_some_and(|f| f.can_save_all(&all));
    let groups: Vec<&[&[u8]]> = if together {
        vec![&all[..]]
    } else {
        all.chunks(1).collect()
    };
    for group in groups {
        if let Err(e) = save_sent_copy(store, session, folder, group).await {
            tracing::warn!(mailbox = %session.mailbox.id, error = %e, copies = group.len(), "the copy in the Sent folder could not be saved");
        }
    }
}

/// Saves the copies of sent messages (one, or several the server stores in one command)
/// over `folder`, opening it when there is none. A kept connection that fails is replaced
/// once: the server may have closed it while idle.
async fn save_sent_copy(
    store: &Store,
    session: &MailboxSession,
    folder: &mut Option<SentFolder>,
    messages: &[&[u8]],
) -> Result<(), String> {
    // A kept connection gets one more try on a fresh one; a fresh one none.
    let mut tries = if folder.is_some() { 2 } else { 1 };
    loop {
        let f = match folder {
            Some(f) => f,
            None => folder.insert(open_sent_folder(store, session).await?),
        };
        match f.save_all(messages).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                *folder = None;
                tries -= 1;
                if tries == 0 {
                    return Err(e.to_string());
                }
            }
        }
    }
}

/// Whether a message with this Message-ID is in the Sent folder.
async fn in_sent_folder(
    store: &Store,
    session: &MailboxSession,
    mid: &str,
) -> Result<bool, String> {
    let mut f = open_sent_folder(store, session).await?;
    let found = f.contains(mid).await.map_err(|e| e.to_string());
    f.close().await;
    found
}

/// Outgoing email as a [`crate::supervisor::Pipeline`]: one sender task per mailbox with email
/// due, under `outgoing:<mailbox>`.
pub(crate) struct Outgoing {
    pub store: Store,
    pub config: EngineConfig,
}

impl crate::supervisor::Pipeline for Outgoing {
    type Id = MailboxId;
    const NAME: &'static str = "outgoing";
    const DRAIN: Duration = Duration::from_secs(30);
    const FAIR_SHARE: bool = false;

    async fn due(&self) -> Result<Vec<MailboxId>, StoreError> {
        Ok(due(&self.store).await?.into_iter().map(|m| m.id).collect())
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
        run(self.store.clone(), self.config.clone(), id, lease, stop)
    }
}
