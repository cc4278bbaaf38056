//! The tracker: stored messages become CRM email activities (REFERENCE.md part A, "Incoming
//! email"; the decisions themselves are pure functions in `serversync_model::track`).
//!
//! A stage of its own after intake: per organization, under the lease `tracker:<org>`, it takes
//! the stored items it has not finished with, oldest first, and for each
//! - resolves the sender and recipients to users, queues, contacts, accounts and leads;
//! - correlates the message with an existing activity (In-Reply-To/References, tracking token,
//!   conversation, smart matching), whose regarding record the new activity inherits;
//! - asks the mailbox's user or queue whether its tracking filter accepts the message;
//! - creates the activity — one per message per organization (Message-ID, or a content key
//!   when there is none; with "track email between two users as two activities", one for the
//!   sender's side and one for the recipients') — or links the mailbox to the existing one, and
//!   puts it in the queue for a queue mailbox;
//! - appends what it decided and why to the item's trace and marks the item done, fenced by
//!   the lease.
//!
//! A batch's activities, links and queue items are committed with the items' marks in one
//! transaction (one commit per batch: on PostgreSQL each commit waits for the WAL flush); its
//! later items see its earlier decisions (a reply correlates with a message of the same
//! batch, a second mailbox links to the activity the batch creates). Each write is idempotent
//! (an activity is found by its key before one is created, a mailbox is linked once, a queue
//! item is made once), so work cut off by a crash before the commit is simply done again
//! without creating anything twice. Items are found by the mark rather than
//! by an id cursor because item ids do not follow commit order: nothing committed late is
//! skipped.

use crate::activities::email_activities;
use serversync_model::crm::{
    Account, ActivityParty, Attachment, Contact, Direction, EmailActivity, EmailStatus, Lead,
    PartyRole, QueueItem, RecordRef, dedupe_key,
};
use serversync_model::item::MailItem;
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::org::{Queue, User};
use serversync_model::settings::{AutoCreateRecord, EmailSettings};
use serversync_model::track::{
    Candidate, CorrelationStep, Resolution, correlation_steps, evaluate_filter, find_token,
    normalize_address, resolve_address, smart_match,
};
use serversync_model::webhook::ChangeOrigin;
use serversync_model::{
    ActivityId, AttachmentId, ContactId, ItemId, LeadId, OrgId, QueueId, QueueItemId, UserId,
};
use serversync_store::{Col, Entity, EntityWrite, LeaseGuard, Store, StoreError};
use serversync_vault::sha256_hex;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Items handled per batch (the lease is renewed between batches).
pub const BATCH: u32 = 100;

/// The lease under which one worker tracks an organization's items.
pub fn resource(org: OrgId) -> String {
    format!("tracker:{org}")
}

/// Every organization with untracked items whose lease this worker can take: tracks them all,
/// batch by batch, renewing the lease in between, then gives the lease back.
pub async fn run_once(store: &Store, worker: &str, ttl: Duration) -> Result<usize, StoreError> {
    let mut total = 0;
    for org in store.orgs_with_untracked_items().await? {
        let Some(lease) = store.acquire_lease(&resource(org), worker, ttl).await? else {
            continue;
        };
        let r = async {
            loop {
                let n = track_batch(store, &lease, org, BATCH).await?;
                total += n;
                if n < BATCH as usize {
                    return Ok::<_, StoreError>(());
                }
                store.renew_lease(&lease, ttl).await?;
            }
        }
        .await;
        let _ = store.release_lease(&lease).await;
        r?;
    }
    Ok(total)
}

/// Tracks up to `limit` untracked items of `org` under `lease`; returns how many were done.
/// The batch's writes and the items' marks are committed together, in one transaction. When
/// that fails because someone else changed an activity meanwhile (or tracked an item), nothing
/// of it was written and the same items are tracked again one at a time.
pub async fn track_batch(
    store: &Store,
    lease: &LeaseGuard,
    org: OrgId,
    limit: u32,
) -> Result<usize, StoreError> {
    let items = store.untracked_items(org, limit).await?;
    if items.is_empty() {
        return Ok(0);
    }
    match track_items(store, lease, org, &items, false).await {
        Err(StoreError::VersionMismatch { .. } | StoreError::Conflict { .. })
            if items.len() > 1 =>
        {
            tracing::info!(%org, "a tracked activity changed meanwhile: the batch is tracked again item by item");
            track_items(store, lease, org, &items, true).await?;
        }
        r => r?,
    }
    Ok(items.len())
}

/// Tracks `items`, committing once at the end or, `one_by_one`, after each item (an item whose
/// activity changed meanwhile is then tracked again; one already tracked is left).
async fn track_items(
    store: &Store,
    lease: &LeaseGuard,
    org: OrgId,
    items: &[MailItem],
    one_by_one: bool,
) -> Result<(), StoreError> {
    let settings = crate::org_settings(store, org).await?;
    let mut dir = Directory::load(store, org).await?;
    let mut mailboxes: HashMap<_, Option<Mailbox>> = HashMap::new();
    let mut pending = Pending::default();
    for item in items {
        let mailbox = match mailboxes.get(&item.mailbox_id) {
            Some(m) => m.clone(),
            None => {
                let m = store
                    .get::<Mailbox>(&item.mailbox_id.to_string())
                    .await?
                    .map(|s| s.value);
                mailboxes.insert(item.mailbox_id, m.clone());
                m
            }
        };
        // The bounce handler writes on its own: what the batch did so far goes first.
        if crate::bounces::maybe_bounce(item) {
            pending.commit(store, lease).await?;
        }
        let mut tries = 0;
        loop {
            let (lines, activity) = match &mailbox {
                Some(m) => track_item(store, &settings, &mut dir, m, item, &mut pending).await?,
                None => (
                    vec!["not tracked: the mailbox no longer exists".to_owned()],
                    None,
                ),
            };
            pending.finished.push((item.id, activity, lines));
            if !one_by_one {
                break;
            }
            tries += 1;
            match pending.commit(store, lease).await {
                Err(StoreError::VersionMismatch { .. }) if tries < 5 => {}
                // Tracked meanwhile by someone else: nothing more to do.
                Err(StoreError::Conflict { .. }) => break,
                r => break r?,
            }
        }
    }
    pending.commit(store, lease).await
}

/// An activity as a batch sees it, and the committed version it was read at (`None`: created
/// by the batch).
type Seen = (EmailActivity, Option<i64>);

/// What a batch has decided and not yet committed: the activities it creates or changes and
/// the queue items it creates — which its later items must see as if written — and the items
/// it is done with, with the activity each was tracked as and their trace lines.
#[derive(Default)]
struct Pending {
    /// By id, as the batch leaves them.
    activities: BTreeMap<ActivityId, Seen>,
    queue_items: Vec<QueueItem>,
    finished: Vec<(ItemId, Option<ActivityId>, Vec<String>)>,
}

impl Pending {
    /// The organization's email activities whose `column` is `value`, as the batch will
    /// leave them: the committed ones with the batch's own changes, in id order, each with
    /// the committed version it was read at (`None`: created by the batch).
    async fn email_activities(
        &self,
        store: &Store,
        org: OrgId,
        column: &'static str,
        value: &str,
    ) -> Result<Vec<Seen>, StoreError> {
        let mut found: Vec<Seen> = email_activities(store, org, column, value)
            .await?
            .into_iter()
            .filter(|a| !self.activities.contains_key(&a.value.id))
            .map(|a| (a.value, Some(a.version)))
            .collect();
        let wanted = Col::text(value);
        found.extend(
            self.activities
                .values()
                .filter(|(a, _)| {
                    a.columns()
                        .iter()
                        .any(|(name, v)| *name == column && *v == wanted)
                })
                .cloned(),
        );
        found.sort_by_key(|(a, _)| a.id.to_string());
        Ok(found)
    }

    /// Whether the activity is in the queue, committed or by this batch.
    async fn in_queue(
        &self,
        store: &Store,
        org: OrgId,
        queue: QueueId,
        activity: ActivityId,
    ) -> Result<bool, StoreError> {
        if self
            .queue_items
            .iter()
            .any(|q| q.queue_id == queue && q.activity_id == activity)
        {
            return Ok(true);
        }
        Ok(!store
            .list::<QueueItem>(
                Some(org),
                &[
                    ("queue_id", Col::text(queue)),
                    ("activity_id", Col::text(activity)),
                ],
                None,
                1,
            )
            .await?
            .items
            .is_empty())
    }

    /// Commits what is pending in one transaction (nothing when nothing is).
    async fn commit(&mut self, store: &Store, lease: &LeaseGuard) -> Result<(), StoreError> {
        let activities = std::mem::take(&mut self.activities);
        let queue_items = std::mem::take(&mut self.queue_items);
        let finished = std::mem::take(&mut self.finished);
        if activities.is_empty() && finished.is_empty() {
            return Ok(());
        }
        let mut writes = Vec::with_capacity(activities.len() + queue_items.len());
        for (a, version) in activities.values() {
            writes.push(match version {
                None => EntityWrite::insert(a)?,
                Some(v) => EntityWrite::update(a, Some(*v))?,
            });
        }
        for q in &queue_items {
            writes.push(EntityWrite::insert(q)?);
        }
        // The activities and queue items the tracker makes are tagged as its own on the feed.
        store
            .with_origin(ChangeOrigin::Tracker)
            .commit_tracking(lease, &writes, &finished)
            .await
    }
}

/// The organization's email-enabled records by lower-cased address, in creation order.
struct Directory {
    by_address: HashMap<String, Vec<Candidate>>,
}

impl Directory {
    async fn load(store: &Store, org: OrgId) -> Result<Self, StoreError> {
        let mut d = Directory {
            by_address: HashMap::new(),
        };
        for u in store.list_all::<User>(Some(org), &[]).await? {
            let u = u.value;
            if !u.disabled {
                d.add(&u.email, RecordRef::User(u.id), Some(u.id));
            }
        }
        for q in store.list_all::<Queue>(Some(org), &[]).await? {
            d.add(
                &q.value.email,
                RecordRef::Queue(q.value.id),
                Some(q.value.owner_id),
            );
        }
        for c in store.list_all::<Contact>(Some(org), &[]).await? {
            for e in &c.value.emails {
                d.add(e, RecordRef::Contact(c.value.id), Some(c.value.owner_id));
            }
        }
        for a in store.list_all::<Account>(Some(org), &[]).await? {
            for e in &a.value.emails {
                d.add(e, RecordRef::Account(a.value.id), Some(a.value.owner_id));
            }
        }
        for l in store.list_all::<Lead>(Some(org), &[]).await? {
            for e in &l.value.emails {
                d.add(e, RecordRef::Lead(l.value.id), Some(l.value.owner_id));
            }
        }
        Ok(d)
    }

    fn add(&mut self, address: &str, record: RecordRef, owner_id: Option<UserId>) {
        let list = self
            .by_address
            .entry(normalize_address(address))
            .or_default();
        if !list.iter().any(|c| c.record == record) {
            list.push(Candidate { record, owner_id });
        }
    }

    fn resolve(&self, address: &str, owner: UserId) -> Resolution {
        let found = self
            .by_address
            .get(&normalize_address(address))
            .map(Vec::as_slice)
            .unwrap_or_default();
        resolve_address(address, found, owner)
    }
}

/// A SHA-256 over what identifies a message without a Message-ID, the same in every mailbox
/// (unlike the raw bytes, which differ by Received and Delivered-To headers).
fn content_key(item: &MailItem) -> String {
    let mut s = String::new();
    for part in [
        item.from
            .as_deref()
            .map(normalize_address)
            .unwrap_or_default(),
        item.to
            .iter()
            .map(|a| normalize_address(a))
            .collect::<Vec<_>>()
            .join(","),
        item.cc
            .iter()
            .map(|a| normalize_address(a))
            .collect::<Vec<_>>()
            .join(","),
        item.subject.clone().unwrap_or_default(),
        item.sent_at.map(|d| d.to_rfc3339()).unwrap_or_default(),
        item.text_body.clone().unwrap_or_default(),
        item.html_body.clone().unwrap_or_default(),
    ] {
        s.push_str(&part);
        s.push('\u{1f}');
    }
    sha256_hex(s.as_bytes())
}

/// Finds the activity the message answers, trying the steps in order; activities of the same
/// message (`key`) do not count.
async fn correlate(
    store: &Store,
    pending: &Pending,
    org: OrgId,
    steps: &[CorrelationStep],
    key: Option<&str>,
    addresses: &[String],
) -> Result<Option<(EmailActivity, String)>, StoreError> {
    let other = |(a, _): &Seen| a.dedupe_key().as_deref() != key;
    for step in steps {
        let found = match step {
            CorrelationStep::MessageId(m) => pending
                .email_activities(store, org, "message_id", m)
                .await?
                .into_iter()
                .find(|a| other(a)),
            CorrelationStep::TrackingToken(t) => pending
                .email_activities(store, org, "tracking_token", t)
                .await?
                .into_iter()
                .find(|a| other(a)),
            CorrelationStep::Conversation(c) => pending
                .email_activities(store, org, "conversation_id", c)
                .await?
                .into_iter()
                .rev()
                .find(|a| other(a)),
            CorrelationStep::SmartMatch(s) => {
                let cands: Vec<(Seen, Vec<String>)> = pending
                    .email_activities(store, org, "subject_key", s)
                    .await?
                    .into_iter()
                    .filter(|a| other(a))
                    .map(|a| {
                        let addrs = a.0.parties.iter().map(|p| p.address.clone()).collect();
                        (a, addrs)
                    })
                    .collect();
                smart_match(addresses, &cands).cloned()
            }
        };
        if let Some((a, _)) = found {
            return Ok(Some((a, step.describe())));
        }
    }
    Ok(None)
}

/// The content key (only for a message without a Message-ID) and the key that makes an
/// activity one per message per organization.
pub fn message_keys(item: &MailItem) -> (Option<String>, Option<String>) {
    let content = item.message_id.is_none().then(|| content_key(item));
    let key = dedupe_key(item.message_id.as_deref(), content.as_deref());
    (content, key)
}

/// The email activity a stored item becomes when no activity of the same message exists
/// (pure): parties resolved by `resolve` (an address → its CRM record), the regarding record
/// and conversation inherited from `parent` (the activity it answers), the tracking token from
/// the subject. The fuzz target `mime_to_activity` runs it.
pub fn new_activity(
    item: &MailItem,
    mailbox: &Mailbox,
    settings: &EmailSettings,
    parent: Option<&EmailActivity>,
    sent_by_owner: bool,
    resolve: impl Fn(&str) -> Option<RecordRef>,
) -> EmailActivity {
    let now = chrono::Utc::now();
    let owner = mailbox.owner_id;
    let (content, key) = message_keys(item);
    let party = |role, addr: &String| ActivityParty {
        role,
        address: normalize_address(addr),
        display_name: None,
        resolved: resolve(addr),
    };
    let mut parties = Vec::new();
    if let Some(f) = &item.from {
        parties.push(party(PartyRole::From, f));
    }
    parties.extend(item.to.iter().map(|a| party(PartyRole::To, a)));
    parties.extend(item.cc.iter().map(|a| party(PartyRole::Cc, a)));
    let subject = item.subject.clone().unwrap_or_default();
    let conversation_id = parent
        .and_then(|p| p.conversation_id.clone().or_else(|| p.message_id.clone()))
        .or_else(|| item.references.first().cloned())
        .or_else(|| item.in_reply_to.clone())
        .or_else(|| key.clone());
    EmailActivity {
        id: serversync_model::ActivityId::new(),
        org_id: item.org_id,
        tracking_token: find_token(&settings.tracking_token, &subject),
        subject,
        text_body: item.text_body.clone(),
        html_body: item.html_body.clone(),
        direction: if sent_by_owner {
            Direction::Outgoing
        } else {
            Direction::Incoming
        },
        status: if sent_by_owner {
            EmailStatus::Sent
        } else {
            EmailStatus::Received
        },
        owner_id: owner,
        parties,
        attachments: item
            .attachments
            .iter()
            .map(|x| Attachment {
                id: AttachmentId::new(),
                file_name: x.file_name.clone().unwrap_or_else(|| "attachment".into()),
                content_type: x.content_type.clone(),
                size: x.size,
                sha256: x.sha256.clone(),
                dropped_reason: x.dropped_reason.clone(),
            })
            .collect(),
        regarding: parent.and_then(|p| p.regarding),
        message_id: item.message_id.clone(),
        in_reply_to: item.in_reply_to.clone(),
        references: item.references.clone(),
        content_key: content,
        conversation_id,
        mailbox_ids: vec![mailbox.id],
        item_ids: vec![item.id],
        sent_at: item.sent_at,
        received_at: Some(item.received_at),
        send_after: None,
        delivery_attempts: 0,
        send_error: None,
        router_claim: None,
        send_trace: Vec::new(),
        created_at: now,
        updated_at: now,
    }
}

/// Decides about one stored item and makes or links its activity; returns the trace lines
/// and the activity it was tracked as.
async fn track_item(
    store: &Store,
    settings: &EmailSettings,
    dir: &mut Directory,
    mailbox: &Mailbox,
    item: &MailItem,
    pending: &mut Pending,
) -> Result<(Vec<String>, Option<ActivityId>), StoreError> {
    if let Some(lines) = crate::bounces::handle(store, item).await? {
        return Ok((lines, None));
    }
    let org = item.org_id;
    let mut lines = Vec::new();
    let owner = mailbox.owner_id;
    let mut sender = item.from.as_deref().map(|a| dir.resolve(a, owner));
    match &sender {
        Some(r) => lines.push(format!("sender {}", r.reason)),
        None => lines.push("sender: none (no From address)".to_owned()),
    }
    let (_, key) = message_keys(item);
    let addresses: Vec<String> = item
        .from
        .iter()
        .chain(item.to.iter())
        .chain(item.cc.iter())
        .cloned()
        .collect();
    let steps = correlation_steps(
        settings,
        item.subject.as_deref(),
        item.in_reply_to.as_deref(),
        &item.references,
    );
    let parent = correlate(store, pending, org, &steps, key.as_deref(), &addresses).await?;
    if let Some((p, how)) = &parent {
        lines.push(format!("answers activity {} ({how})", p.id));
    }
    let sender_record = sender.as_ref().and_then(|r| r.record);
    let verdict = evaluate_filter(mailbox.tracking, parent.is_some(), sender_record.as_ref());
    let who = match mailbox.regarding {
        MailboxRegarding::User(u) => format!("user {u}"),
        MailboxRegarding::Queue(q) => format!("queue {q}"),
    };
    if !verdict.accept {
        lines.push(format!("not tracked: {} ({who})", verdict.reason));
        return Ok((lines, None));
    }

    // Unresolved sender: create a contact or lead when the organization says so.
    if let (Some(kind), Some(from), None) = (
        settings.auto_create_records,
        item.from.as_deref(),
        sender_record,
    ) {
        let address = normalize_address(from);
        let now = chrono::Utc::now();
        let record = match kind {
            AutoCreateRecord::Contact => {
                let c = Contact {
                    id: ContactId::new(),
                    org_id: org,
                    full_name: address.clone(),
                    emails: vec![address.clone()],
                    account_id: None,
                    company: None,
                    job_title: None,
                    phones: Vec::new(),
                    owner_id: owner,
                    created_at: now,
                };
                store.insert(&c).await?;
                RecordRef::Contact(c.id)
            }
            AutoCreateRecord::Lead => {
                let l = Lead {
                    id: LeadId::new(),
                    org_id: org,
                    full_name: address.clone(),
                    company: None,
                    emails: vec![address.clone()],
                    owner_id: owner,
                    created_at: now,
                };
                store.insert(&l).await?;
                RecordRef::Lead(l.id)
            }
        };
        dir.add(&address, record, Some(owner));
        sender = Some(dir.resolve(&address, owner));
        lines.push(format!(
            "sender created as {}",
            sender
                .as_ref()
                .map(|r| r.reason.as_str())
                .unwrap_or_default()
        ));
    }
    let sender_user = match sender.as_ref().and_then(|r| r.record) {
        Some(RecordRef::User(u)) => Some(u),
        _ => None,
    };
    let sent_by_owner =
        matches!(mailbox.regarding, MailboxRegarding::User(u) if Some(u) == sender_user);
    let direction = if sent_by_owner {
        Direction::Outgoing
    } else {
        Direction::Incoming
    };

    let existing = match &key {
        Some(k) => {
            pending
                .email_activities(store, org, "message_id", k)
                .await?
        }
        None => Vec::new(),
    };
    let existing = existing.into_iter().find(|(a, _)| {
        !(settings.track_user_to_user_as_two_activities && sender_user.is_some())
            || a.direction == direction
    });
    let activity_id = match existing {
        Some((mut a, version)) => {
            // Linked once; the change is committed with the batch, from the version read.
            if !a.mailbox_ids.contains(&mailbox.id) {
                a.mailbox_ids.push(mailbox.id);
                if !a.item_ids.contains(&item.id) {
                    a.item_ids.push(item.id);
                }
                a.updated_at = chrono::Utc::now();
                pending.activities.insert(a.id, (a.clone(), version));
            }
            lines.push(format!(
                "tracked as activity {} ({who}: {}; the message was already tracked, this mailbox is linked to it)",
                a.id, verdict.reason
            ));
            a.id
        }
        None => {
            let a = new_activity(
                item,
                mailbox,
                settings,
                parent.as_ref().map(|(p, _)| p),
                sent_by_owner,
                |addr| dir.resolve(addr, owner).record,
            );
            let regarding = match a.regarding {
                Some(r) => format!(", regarding {}", serversync_model::wire_name(&r)),
                None => String::new(),
            };
            lines.push(format!(
                "tracked as activity {} ({who}: {}{regarding})",
                a.id, verdict.reason
            ));
            let id = a.id;
            pending.activities.insert(id, (a, None));
            id
        }
    };

    if let MailboxRegarding::Queue(q) = mailbox.regarding
        && !pending.in_queue(store, org, q, activity_id).await?
    {
        let qi = QueueItem {
            id: QueueItemId::new(),
            org_id: org,
            queue_id: q,
            activity_id,
            worker_id: None,
            entered_at: chrono::Utc::now(),
        };
        lines.push(format!("queue item {} in queue {q}", qi.id));
        pending.queue_items.push(qi);
    }
    Ok((lines, Some(activity_id)))
}
