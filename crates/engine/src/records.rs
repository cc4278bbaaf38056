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

use serversync_model::crm::{
    ActivityParty, Attachment, Contact, Direction, EmailActivity, EmailStatus, Lead, PartyRole,
    QueueItem, RecordRef, dedupe_key,
};
use serversync_model::item::MailItem;
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::settings::{AutoCreateRecord, EmailSettings};
use serversync_model::track::{
    Candidate, CorrelationStep, Resolution, correlation_steps, evaluate_filter, find_token,
    normalize_address, resolve_address, smart_match,
};
use serversync_model::webhook::ChangeOrigin;
use serversync_model::{
    ActivityId, AttachmentId, ContactId, ItemId, LeadId, OrgId, QueueId, QueueItemId, UserId,
};
use serversync_store::{ActivityKey, Col, EntityWrite, LeaseGuard, Store, StoreError};
use serversync_vault::sha256_hex;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
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
    let mut dir = Directory::load(store, org, items).await?;
    let mut mailboxes: HashMap<_, Option<Mailbox>> = HashMap::new();
    for item in items {
        if let std::collections::hash_map::Entry::Vacant(e) = mailboxes.entry(item.mailbox_id) {
            e.insert(
                store
                    .get::<Mailbox>(&item.mailbox_id.to_string())
                    .await?
                    .map(|s| s.value),
            );
        }
    }
    let mut pending = Pending::default();
    let queues = mailboxes
        .values()
        .flatten()
        .any(|m| matches!(m.regarding, MailboxRegarding::Queue(_)));
    pending
        .known
        .prefetch(store, org, &settings, items, queues)
        .await?;
    for item in items {
        let mailbox = mailboxes.get(&item.mailbox_id).cloned().flatten();
        // The bounce handler writes on its own: what the batch did so far goes first, and
        // what the batch read before may be older than what it writes.
        let bounce = crate::bounces::maybe_bounce(item);
        if bounce {
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
            if bounce {
                pending.known = Known::default();
            }
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

/// The committed email activities a batch has read (each with the version read), indexed by
/// their correlation keys, and the keys whose every committed activity is among them; the
/// queue items of the activities whose queue items were read. Filled for the whole batch
/// with one query per key kind ([`Known::prefetch`]); a key not read yet is read on its own
/// when asked for. Whatever the batch commits is added as committed; after a failed commit
/// or a bounce (whose handler writes on its own) it is emptied, so everything is read again.
#[derive(Default)]
struct Known {
    activities: HashMap<ActivityId, (EmailActivity, i64)>,
    by_key: HashMap<(ActivityKey, String), BTreeSet<ActivityId>>,
    complete: HashSet<(ActivityKey, String)>,
    queued: HashSet<(QueueId, ActivityId)>,
    queue_known: HashSet<ActivityId>,
}

/// The correlation keys of an activity (the values of its indexed lookup columns).
fn activity_keys(a: &EmailActivity) -> Vec<(ActivityKey, String)> {
    ActivityKey::ALL
        .into_iter()
        .filter_map(|k| Some((k, k.of(a)?)))
        .collect()
}

/// Whether the activity's `key` column is `value` (as the store's column would say).
fn has_key(a: &EmailActivity, key: ActivityKey, value: &str) -> bool {
    key.of(a).as_deref() == Some(value)
}

impl Known {
    /// Takes `a`, read (or written) at `version`, as the committed state.
    fn learn(&mut self, a: EmailActivity, version: i64) {
        if let Some((old, _)) = self.activities.get(&a.id) {
            for k in activity_keys(old) {
                if let Some(ids) = self.by_key.get_mut(&k) {
                    ids.remove(&a.id);
                }
            }
        }
        for k in activity_keys(&a) {
            self.by_key.entry(k).or_default().insert(a.id);
        }
        self.activities.insert(a.id, (a, version));
    }

    /// Reads the committed activities of every value of `key` not read yet (one query).
    async fn fetch(
        &mut self,
        store: &Store,
        org: OrgId,
        key: ActivityKey,
        values: impl IntoIterator<Item = String>,
    ) -> Result<(), StoreError> {
        let values: Vec<String> = values
            .into_iter()
            .filter(|v| !self.complete.contains(&(key, v.clone())))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if values.is_empty() {
            return Ok(());
        }
        for a in store.email_activities_in(org, key, &values).await? {
            self.learn(a.value, a.version);
        }
        self.complete.extend(values.into_iter().map(|v| (key, v)));
        Ok(())
    }

    /// The committed activities whose `key` is `value`.
    fn with_key(
        &self,
        key: ActivityKey,
        value: &str,
    ) -> impl Iterator<Item = &(EmailActivity, i64)> {
        self.by_key
            .get(&(key, value.to_owned()))
            .into_iter()
            .flatten()
            .filter_map(|id| self.activities.get(id))
    }

    /// Reads, for the whole batch, the activities its items will look up — their own
    /// Message-ID (or content key), the Message-IDs they answer, their tracking tokens and
    /// conversations, then the subject keys of the items none of those correlates — and, with
    /// `queues`, those activities' queue items: one query per key kind.
    async fn prefetch(
        &mut self,
        store: &Store,
        org: OrgId,
        settings: &EmailSettings,
        items: &[MailItem],
        queues: bool,
    ) -> Result<(), StoreError> {
        let mut wanted: BTreeMap<ActivityKey, BTreeSet<String>> = BTreeMap::new();
        let mut per_item = Vec::with_capacity(items.len());
        for item in items {
            let (_, key) = message_keys(item);
            let steps = correlation_steps(
                settings,
                item.subject.as_deref(),
                item.in_reply_to.as_deref(),
                &item.references,
            );
            if let Some(k) = &key {
                wanted
                    .entry(ActivityKey::MessageId)
                    .or_default()
                    .insert(k.clone());
            }
            let mut subject = None;
            let mut keys = Vec::new();
            for step in steps {
                let k = match step {
                    CorrelationStep::MessageId(m) => (ActivityKey::MessageId, m),
                    CorrelationStep::TrackingToken(t) => (ActivityKey::TrackingToken, t),
                    CorrelationStep::Conversation(c) => (ActivityKey::Conversation, c),
                    CorrelationStep::SmartMatch(s) => {
                        subject = Some(s);
                        continue;
                    }
                };
                wanted.entry(k.0).or_default().insert(k.1.clone());
                keys.push(k);
            }
            per_item.push((key, keys, subject));
        }
        for (k, values) in wanted {
            self.fetch(store, org, k, values).await?;
        }
        // Smart matching is the last step: only for the items no earlier step correlates
        // with what is committed (the others read their subject key when they get to it).
        let subjects: Vec<String> = per_item
            .into_iter()
            .filter_map(|(key, keys, subject)| {
                let correlated = keys
                    .iter()
                    .any(|(k, v)| self.with_key(*k, v).any(|(a, _)| a.dedupe_key() != key));
                subject.filter(|_| !correlated)
            })
            .collect();
        self.fetch(store, org, ActivityKey::SubjectKey, subjects)
            .await?;
        if queues && !self.activities.is_empty() {
            let ids: Vec<ActivityId> = self.activities.keys().copied().collect();
            self.queued.extend(store.queue_items_of(org, &ids).await?);
            self.queue_known.extend(ids);
        }
        Ok(())
    }
}

/// What a batch has decided and not yet committed: the activities it creates or changes and
/// the queue items it creates — which its later items must see as if written — and the items
/// it is done with, with the activity each was tracked as and their trace lines; and what it
/// read of the committed state.
#[derive(Default)]
struct Pending {
    /// By id, as the batch leaves them.
    activities: BTreeMap<ActivityId, Seen>,
    queue_items: Vec<QueueItem>,
    finished: Vec<(ItemId, Option<ActivityId>, Vec<String>)>,
    known: Known,
}

impl Pending {
    /// The organization's email activities whose `key` column is `value`, as the batch will
    /// leave them: the committed ones with the batch's own changes, in id order, each with
    /// the committed version it was read at (`None`: created by the batch).
    async fn email_activities(
        &mut self,
        store: &Store,
        org: OrgId,
        key: ActivityKey,
        value: &str,
    ) -> Result<Vec<Seen>, StoreError> {
        self.known
            .fetch(store, org, key, [value.to_owned()])
            .await?;
        let mut found: Vec<Seen> = self
            .known
            .with_key(key, value)
            .filter(|(a, _)| !self.activities.contains_key(&a.id))
            .map(|(a, v)| (a.clone(), Some(*v)))
            .collect();
        found.extend(
            self.activities
                .values()
                .filter(|(a, _)| has_key(a, key, value))
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
            || self.known.queued.contains(&(queue, activity))
        {
            return Ok(true);
        }
        // Not committed yet, or its queue items were read: in no queue but the batch's.
        if matches!(self.activities.get(&activity), Some((_, None)))
            || self.known.queue_known.contains(&activity)
        {
            return Ok(false);
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

    /// Commits what is pending in one transaction (nothing when nothing is); what it wrote is
    /// then known as committed (a failed commit empties what was known).
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
        let r = store
            .with_origin(ChangeOrigin::Tracker)
            .commit_tracking(lease, &writes, &finished)
            .await;
        if r.is_err() {
            self.known = Known::default();
            return r;
        }
        for (a, version) in activities.into_values() {
            if version.is_none() {
                self.known.queue_known.insert(a.id);
            }
            // An insert is version 1, an update from `v` is `v + 1`.
            self.known.learn(a, version.map_or(1, |v| v + 1));
        }
        self.known
            .queued
            .extend(queue_items.iter().map(|q| (q.queue_id, q.activity_id)));
        Ok(())
    }
}

/// The email-enabled records of a batch's addresses by normalized address, in creation
/// order (users, queues, contacts, accounts, leads, each oldest first), from the address
/// index; disabled users are left out.
struct Directory {
    by_address: HashMap<String, Vec<Candidate>>,
}

impl Directory {
    /// The records of every sender and recipient address of `items` (one query).
    async fn load(store: &Store, org: OrgId, items: &[MailItem]) -> Result<Self, StoreError> {
        let mut d = Directory {
            by_address: HashMap::new(),
        };
        let addresses: Vec<String> = items
            .iter()
            .flat_map(|i| i.from.iter().chain(i.to.iter()).chain(i.cc.iter()))
            .map(|a| normalize_address(a))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if addresses.is_empty() {
            return Ok(d);
        }
        for m in store.address_matches(org, &addresses).await? {
            d.add(&m.address, m.record, m.owner_id);
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
    pending: &mut Pending,
    org: OrgId,
    steps: &[CorrelationStep],
    key: Option<&str>,
    addresses: &[String],
) -> Result<Option<(EmailActivity, String)>, StoreError> {
    let other = |(a, _): &Seen| a.dedupe_key().as_deref() != key;
    for step in steps {
        let found = match step {
            CorrelationStep::MessageId(m) => pending
                .email_activities(store, org, ActivityKey::MessageId, m)
                .await?
                .into_iter()
                .find(|a| other(a)),
            CorrelationStep::TrackingToken(t) => pending
                .email_activities(store, org, ActivityKey::TrackingToken, t)
                .await?
                .into_iter()
                .find(|a| other(a)),
            CorrelationStep::Conversation(c) => pending
                .email_activities(store, org, ActivityKey::Conversation, c)
                .await?
                .into_iter()
                .rev()
                .find(|a| other(a)),
            CorrelationStep::SmartMatch(s) => {
                let cands: Vec<(Seen, Vec<String>)> = pending
                    .email_activities(store, org, ActivityKey::SubjectKey, s)
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
                .email_activities(store, org, ActivityKey::MessageId, k)
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
