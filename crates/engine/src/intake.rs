//! The intake pipeline: every message — synced over IMAP or POP3, or handed in by the Email
//! Router (LMTP, `serversync deliver`) — goes through [`take_in`], which parses it, decides,
//! and stores the item-level record with its raw bytes and attachments in one transaction
//! (IMAP sync gathers a fetched batch in an [`IntakeBatch`]: one transaction for many).
//! Nothing is lost: what cannot be parsed is kept raw with the reason.

use serversync_connectors::mime;
use serversync_model::item::{ItemAttachment, ItemDecision, ItemSource, MailItem};
use serversync_model::mailbox::Mailbox;
use serversync_model::org::Organization;
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::{EmailSettings, IncomingMethod};
use serversync_model::{ItemId, Timestamp};
use serversync_store::{Col, ItemInsert, ItemRow, Store, StoreError};
use serversync_vault::sha256_hex;

/// What intake did with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum IntakeOutcome {
    /// A new item was recorded with this decision.
    Recorded(Box<MailItem>),
    /// The mailbox already had this message (same source key): nothing was written.
    Duplicate,
}

impl IntakeOutcome {
    pub fn decision(&self) -> Option<ItemDecision> {
        match self {
            IntakeOutcome::Recorded(i) => Some(i.decision),
            IntakeOutcome::Duplicate => None,
        }
    }
}

/// Parses, decides and stores one message of `mailbox`.
pub async fn take_in(
    store: &Store,
    mailbox: &Mailbox,
    settings: &EmailSettings,
    profile: Option<&EmailServerProfile>,
    source: ItemSource,
    raw: &[u8],
    received_at: Timestamp,
) -> Result<IntakeOutcome, StoreError> {
    take_in_inner(
        store,
        mailbox,
        settings,
        profile,
        source,
        raw,
        received_at,
        None,
    )
    .await
}

/// Records a message too large to read in full (its whole size `size` is over `limit` bytes)
/// from its header alone: skipped, with the reason, its header fields kept and nothing else.
/// A skipped message is never deleted from the server, so the whole message stays there.
#[allow(clippy::too_many_arguments)]
pub async fn take_in_header_only(
    store: &Store,
    mailbox: &Mailbox,
    settings: &EmailSettings,
    profile: Option<&EmailServerProfile>,
    source: ItemSource,
    header: &[u8],
    size: u64,
    limit: u64,
    received_at: Timestamp,
) -> Result<IntakeOutcome, StoreError> {
    take_in_inner(
        store,
        mailbox,
        settings,
        profile,
        source,
        header,
        received_at,
        Some((size, limit)),
    )
    .await
}

/// `too_large`: `Some((size, limit))` when `raw` is only the header of a message over the limit.
#[allow(clippy::too_many_arguments)]
async fn take_in_inner(
    store: &Store,
    mailbox: &Mailbox,
    settings: &EmailSettings,
    profile: Option<&EmailServerProfile>,
    source: ItemSource,
    raw: &[u8],
    received_at: Timestamp,
    too_large: Option<(u64, u64)>,
) -> Result<IntakeOutcome, StoreError> {
    let mut batch = IntakeBatch::default();
    batch.push(Prepared::new(
        mailbox,
        settings,
        profile,
        source,
        raw.to_vec(),
        received_at,
        too_large,
    ));
    Ok(batch
        .store(store)
        .await?
        .pop()
        .unwrap_or(IntakeOutcome::Duplicate))
}

/// A message parsed and decided, ready to store: the item, its attachments (SHA-256,
/// content) and the raw message when it is kept. Made anywhere (the IMAP sync makes them on
/// the blocking pool while it fetches the next messages), stored by an [`IntakeBatch`].
pub struct Prepared {
    item: MailItem,
    blobs: Vec<(String, Vec<u8>)>,
    raw: Option<Vec<u8>>,
}

impl Prepared {
    /// Parses and decides one message (see [`prepare_item`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        mailbox: &Mailbox,
        settings: &EmailSettings,
        profile: Option<&EmailServerProfile>,
        source: ItemSource,
        raw: Vec<u8>,
        received_at: Timestamp,
        too_large: Option<(u64, u64)>,
    ) -> Self {
        let (item, blobs) = prepare_item(
            mailbox,
            settings,
            profile,
            source,
            &raw,
            received_at,
            too_large,
        );
        let raw = item.raw_kept.then_some(raw);
        Prepared { item, blobs, raw }
    }

    /// Puts `line` first in the trace (how it was found before intake decided, e.g. by the
    /// re-mapping of a renumbered folder).
    pub fn note(&mut self, line: String) {
        self.item.trace.insert(0, line);
    }
}

/// Messages parsed and decided, stored together in one transaction by
/// [`IntakeBatch::store`] (one commit for many fetched messages rather than one each).
#[derive(Default)]
pub struct IntakeBatch {
    items: Vec<Prepared>,
}

impl IntakeBatch {
    /// Adds a parsed and decided message; stored by the next [`IntakeBatch::store`]. The
    /// item's id is given here: ids are time-ordered, and messages parsed side by side finish
    /// in any order, while they are added in the folder's order — items list in the order the
    /// server holds them.
    pub fn push(&mut self, mut prepared: Prepared) {
        prepared.item.id = ItemId::new();
        self.items.push(prepared);
    }

    /// Stores every message added since the last call in one transaction; what became of
    /// each, in the order they were added. Empty afterwards.
    pub async fn store(&mut self, store: &Store) -> Result<Vec<IntakeOutcome>, StoreError> {
        let items = std::mem::take(&mut self.items);
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let blobs: Vec<Vec<(&str, &[u8])>> = items
            .iter()
            .map(|Prepared { item, blobs, raw }| {
                let mut all: Vec<(&str, &[u8])> = blobs
                    .iter()
                    .map(|(s, d)| (s.as_str(), d.as_slice()))
                    .collect();
                if let Some(raw) = raw {
                    all.push((item.raw_sha256.as_str(), raw.as_slice()));
                }
                all
            })
            .collect();
        let rows: Vec<ItemRow<'_>> = items
            .iter()
            .zip(&blobs)
            .map(|(p, b)| (&p.item, b.as_slice()))
            .collect();
        let inserted = store.insert_items(&rows).await?;
        drop(rows);
        drop(blobs);
        Ok(items
            .into_iter()
            .zip(inserted)
            .map(|(Prepared { item, .. }, r)| match r {
                ItemInsert::Inserted => {
                    count_item(&item);
                    IntakeOutcome::Recorded(Box::new(item))
                }
                ItemInsert::Duplicate => IntakeOutcome::Duplicate,
            })
            .collect())
    }
}

/// The pure part of intake: parses `raw` and decides, giving the item to record and the
/// attachment contents to store with it (by SHA-256; the raw message itself is not among
/// them — it is stored under `item.raw_sha256` when `item.raw_kept`). No I/O; the fuzz
/// target `mime_to_activity` runs it.
#[allow(clippy::too_many_arguments)]
pub fn prepare_item(
    mailbox: &Mailbox,
    settings: &EmailSettings,
    profile: Option<&EmailServerProfile>,
    source: ItemSource,
    raw: &[u8],
    received_at: Timestamp,
    too_large: Option<(u64, u64)>,
) -> (MailItem, Vec<(String, Vec<u8>)>) {
    let message = ParsedMessage::parse(raw);
    let (item, kept) = message.decide(mailbox, settings, profile, source, received_at, too_large);
    (item, message.into_attachments(&kept))
}

/// A message parsed once, to be recorded in one or more mailboxes: the Email Router hands one
/// message to several recipients, and each gets its own item from the same parse
/// ([`take_in_parsed`]).
pub struct ParsedMessage<'a> {
    raw: &'a [u8],
    raw_sha256: String,
    parsed: Result<mime::ParsedMail, String>,
    /// SHA-256 of each attachment of `parsed`, in order.
    attachment_sha256: Vec<String>,
}

impl<'a> ParsedMessage<'a> {
    /// Parses `raw` (the only place intake calls the MIME parser).
    pub fn parse(raw: &'a [u8]) -> Self {
        let parsed = mime::parse(raw);
        let attachment_sha256 = match &parsed {
            Ok(p) => p.attachments.iter().map(|a| sha256_hex(&a.data)).collect(),
            Err(_) => Vec::new(),
        };
        Self {
            raw,
            raw_sha256: sha256_hex(raw),
            parsed,
            attachment_sha256,
        }
    }

    /// The attachments at `kept` (indices from [`ParsedMessage::decide`]) as (SHA-256, content).
    fn attachments<'s>(&'s self, kept: &[usize]) -> Vec<(&'s str, &'s [u8])> {
        let Ok(p) = &self.parsed else {
            return Vec::new();
        };
        kept.iter()
            .map(|&i| {
                (
                    self.attachment_sha256[i].as_str(),
                    p.attachments[i].data.as_slice(),
                )
            })
            .collect()
    }

    /// [`ParsedMessage::attachments`], moved out.
    fn into_attachments(self, kept: &[usize]) -> Vec<(String, Vec<u8>)> {
        let Ok(p) = self.parsed else {
            return Vec::new();
        };
        let mut data: Vec<Option<Vec<u8>>> =
            p.attachments.into_iter().map(|a| Some(a.data)).collect();
        kept.iter()
            .filter_map(|&i| Some((self.attachment_sha256[i].clone(), data[i].take()?)))
            .collect()
    }

    /// Decides about the message for `mailbox`: the item to record and the indices of the
    /// attachments whose content is kept with it.
    pub fn decide(
        &self,
        mailbox: &Mailbox,
        settings: &EmailSettings,
        profile: Option<&EmailServerProfile>,
        source: ItemSource,
        received_at: Timestamp,
        too_large: Option<(u64, u64)>,
    ) -> (MailItem, Vec<usize>) {
        let raw = self.raw;
        let mut item = MailItem {
            id: ItemId::new(),
            org_id: mailbox.org_id,
            mailbox_id: mailbox.id,
            source_key: source.key(&self.raw_sha256),
            source,
            message_id: None,
            subject: None,
            from: None,
            to: Vec::new(),
            cc: Vec::new(),
            in_reply_to: None,
            references: Vec::new(),
            sent_at: None,
            received_at,
            size: too_large.map_or(raw.len() as u64, |(size, _)| size),
            raw_sha256: self.raw_sha256.clone(),
            raw_kept: true,
            text_body: None,
            html_body: None,
            attachments: Vec::new(),
            decision: ItemDecision::Stored,
            trace: Vec::new(),
            created_at: chrono::Utc::now(),
        };
        if let ItemSource::Router { via } = &item.source {
            item.trace.push(format!(
                "received {received_at} by the Email Router via {via}"
            ));
        }
        let mut kept: Vec<usize> = Vec::new();

        match &self.parsed {
            Err(why) if too_large.is_some() => {
                let (size, limit) = too_large.unwrap_or_default();
                item.decision = ItemDecision::Skipped;
                item.raw_kept = false;
                item.trace.push(format!(
                    "skipped: the message is {size} bytes, over the limit of {limit} bytes for one message (the attachment size limit plus 1 MB), and its header cannot be parsed ({why}); the message is left on the server"
                ));
            }
            Err(why) => {
                item.decision = ItemDecision::Failed;
                item.trace.push(format!(
                    "failed: cannot be parsed ({why}); the raw message ({} bytes) is kept",
                    raw.len()
                ));
            }
            Ok(p) => {
                item.message_id = p.message_id.clone();
                item.subject = p.subject.clone();
                item.from = p.from.clone();
                item.to = p.to.clone();
                item.cc = p.cc.clone();
                item.in_reply_to = p.in_reply_to.clone();
                item.references = p.references.clone();
                item.sent_at = p.date;
                item.text_body = p.text_body.clone();
                item.html_body = p.html_body.clone();
                for problem in &p.problems {
                    item.trace.push(format!("note: {problem}"));
                }
                let limit = u64::from(settings.max_attachment_kb) * 1024;
                for (i, (a, sha)) in p
                    .attachments
                    .iter()
                    .zip(&self.attachment_sha256)
                    .enumerate()
                {
                    let size = a.data.len() as u64;
                    let dropped_reason = (size > limit).then(|| {
                        format!("{size} bytes is over the attachment size limit of {} KB: metadata kept, content dropped", settings.max_attachment_kb)
                    });
                    match &dropped_reason {
                        Some(r) => item.trace.push(format!(
                            "attachment {:?}: {r}",
                            a.file_name.as_deref().unwrap_or("(unnamed)")
                        )),
                        None => kept.push(i),
                    }
                    item.attachments.push(ItemAttachment {
                        file_name: a.file_name.clone(),
                        content_type: a.content_type.clone(),
                        size,
                        sha256: sha.clone(),
                        dropped_reason,
                    });
                }
                if item.attachments.iter().any(|a| a.dropped_reason.is_some()) {
                    item.raw_kept = false;
                    item.trace.push("raw message not kept, as it contains attachments over the limit; headers, bodies and the other attachments are kept".into());
                }
                let from_date = mailbox
                    .effective_process_from(profile.and_then(|p| p.advanced.process_email_from));
                if let Some((size, limit)) = too_large {
                    item.decision = ItemDecision::Skipped;
                    item.raw_kept = false;
                    kept.clear();
                    item.trace.push(format!(
                        "skipped: the message is {size} bytes, over the limit of {limit} bytes for one message (the attachment size limit plus 1 MB); only its header was read, and the message is left on the server"
                    ));
                } else if let Some(from) = from_date.filter(|f| received_at < *f) {
                    item.decision = ItemDecision::Skipped;
                    item.raw_kept = false;
                    kept.clear();
                    item.trace.push(format!(
                        "skipped: received {received_at}, before the \"process email from\" date {from}"
                    ));
                } else if mailbox.needs_approval(settings) {
                    item.decision = ItemDecision::Skipped;
                    item.trace.push(format!(
                        "skipped: the email address {} is not approved and the organization processes email only for approved mailboxes; the raw message is kept",
                        mailbox.email
                    ));
                } else {
                    item.trace.push("stored".into());
                }
            }
        }
        (item, kept)
    }
}

/// Decides and stores `message` for one mailbox (one transaction), from a parse shared with
/// the message's other recipients: the attachments and the raw message are borrowed, not
/// copied per recipient.
pub async fn take_in_parsed(
    store: &Store,
    message: &ParsedMessage<'_>,
    mailbox: &Mailbox,
    settings: &EmailSettings,
    profile: Option<&EmailServerProfile>,
    source: ItemSource,
    received_at: Timestamp,
) -> Result<IntakeOutcome, StoreError> {
    let (item, kept) = message.decide(mailbox, settings, profile, source, received_at, None);
    let mut blobs = message.attachments(&kept);
    if item.raw_kept {
        blobs.push((item.raw_sha256.as_str(), message.raw));
    }
    Ok(match store.insert_item(&item, &blobs).await? {
        ItemInsert::Inserted => {
            count_item(&item);
            IntakeOutcome::Recorded(Box::new(item))
        }
        ItemInsert::Duplicate => IntakeOutcome::Duplicate,
    })
}

fn count_item(item: &MailItem) {
    metrics::counter!("serversync_items_total", "decision" => format!("{:?}", item.decision).to_lowercase()).increment(1);
}

/// A mailbox that takes mail in by the Email Router, with what [`take_in`] needs for it.
#[derive(Debug, Clone)]
pub struct RouterTarget {
    pub mailbox: Mailbox,
    pub settings: EmailSettings,
    pub profile: Option<EmailServerProfile>,
}

/// Why an address cannot take mail in by the Email Router.
#[derive(Debug, thiserror::Error)]
pub enum RouterLookupError {
    #[error("no organization named {0}")]
    NoSuchOrganization(String),
    #[error(
        "the domain {0} is not assigned to an organization: the installation administrator assigns it \
         (serversync admin domains assign)"
    )]
    DomainNotAssigned(String),
    #[error("the domain of {address} is assigned to another organization than {org}")]
    OtherOrganization { address: String, org: String },
    #[error("no mailbox has the address {0}")]
    NoSuchMailbox(String),
    #[error(
        "mailbox {address} receives email by {method}, not by the Email Router: set its incoming delivery method to email_router"
    )]
    NotRouter { address: String, method: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finds the Email Router mailbox for `address` (case-insensitive) and checks that its
/// incoming delivery method is the Email Router. Only the organization the installation
/// administrator assigned the address's domain to is searched: addresses are unique only
/// within an organization, so another organization's mailbox with the same address never
/// receives the mail nor makes it bounce. `org` (a name), when given, must be that
/// organization. Used by `serversync deliver` and the LMTP listener.
pub async fn find_router_mailbox(
    store: &Store,
    address: &str,
    org: Option<&str>,
) -> Result<RouterTarget, RouterLookupError> {
    let domain = serversync_model::org::domain_of(address)
        .ok_or_else(|| RouterLookupError::NoSuchMailbox(address.to_owned()))?;
    let holder = crate::domains::domain_holder(store, address)
        .await?
        .ok_or(RouterLookupError::DomainNotAssigned(domain))?;
    if let Some(name) = org {
        let named = store
            .list_all::<Organization>(None, &[("name", Col::text(name))])
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| RouterLookupError::NoSuchOrganization(name.to_owned()))?;
        if named.value.id != holder {
            return Err(RouterLookupError::OtherOrganization {
                address: address.to_owned(),
                org: name.to_owned(),
            });
        }
    }
    let mailbox = store
        .list::<Mailbox>(
            Some(holder),
            &[("email", Col::text(address.to_lowercase()))],
            None,
            1,
        )
        .await?
        .items
        .pop()
        .ok_or_else(|| RouterLookupError::NoSuchMailbox(address.to_owned()))?
        .value;
    if mailbox.incoming_method != IncomingMethod::EmailRouter {
        return Err(RouterLookupError::NotRouter {
            address: address.to_owned(),
            method: serversync_model::wire_name(&mailbox.incoming_method),
        });
    }
    let settings = crate::org_settings(store, mailbox.org_id).await?;
    let profile = match mailbox.profile_id {
        Some(p) => store
            .get::<EmailServerProfile>(&p.to_string())
            .await?
            .map(|s| s.value),
        None => None,
    };
    Ok(RouterTarget {
        mailbox,
        settings,
        profile,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_model::mailbox::MailboxRegarding;
    use serversync_model::{OrgId, UserId};

    // Messages parsed side by side finish in any order; their items must still list in the
    // folder's order (an administrator reads the mailbox's items in that order).
    #[test]
    fn items_take_their_ids_in_the_order_they_are_added() {
        let org = OrgId::new();
        let settings = EmailSettings::new(org);
        let mailbox = Mailbox::new_with_defaults(
            org,
            MailboxRegarding::User(UserId::new()),
            UserId::new(),
            "A",
            "a@example.test",
            &settings,
            chrono::Utc::now(),
        );
        let prepare = |uid: u32| {
            let raw = format!(
                "From: s{uid}@example.test\r\nTo: a@example.test\r\nSubject: {uid}\r\n\r\nbody\r\n"
            );
            Prepared::new(
                &mailbox,
                &settings,
                None,
                ItemSource::Imap {
                    folder: "INBOX".into(),
                    uid_validity: 1,
                    uid,
                },
                raw.into_bytes(),
                chrono::Utc::now(),
                None,
            )
        };
        // Parsed (and decided) in the reverse of the folder's order.
        let third = prepare(3);
        let second = prepare(2);
        let first = prepare(1);
        let mut batch = IntakeBatch::default();
        for p in [first, second, third] {
            batch.push(p);
        }
        let uids: Vec<u32> = {
            let mut items: Vec<&MailItem> = batch.items.iter().map(|p| &p.item).collect();
            items.sort_by_key(|i| i.id);
            items
                .iter()
                .map(|i| match i.source {
                    ItemSource::Imap { uid, .. } => uid,
                    _ => 0,
                })
                .collect()
        };
        assert_eq!(uids, [1, 2, 3]);
    }
}
