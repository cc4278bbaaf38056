//! CRM records: creating, reading, changing, deleting and listing accounts, contacts, leads,
//! appointments and tasks; email activities, their threads, attachments and queue items; and
//! the references between records.

use super::{Admin, AdminError, Result, actor, invalid};
use serversync_model::auth::Caller;
use serversync_model::crm::{Account, ActivityState, Appointment, Contact, Lead, RecordRef, Task};
use serversync_model::org::{Privilege, Queue, User};
use serversync_model::{OrgId, Timestamp, UserId, ValidationErrors};
use serversync_store::{Col, Filter, NewAuditEntry, Page, Stored};

impl Admin {
    /// Creates a CRM record after checking that every record it refers to
    /// ([`RecordRefs::refs`]) is of the organization: a reference to another organization's
    /// record, or to none, is refused naming the field.
    pub async fn create_record<E: serversync_store::Entity + RecordRefs>(
        &self,
        c: &Caller,
        record: &E,
    ) -> Result<Stored<E>> {
        c.require(Privilege::WriteRecords)?;
        if let Some(org) = record.org_id() {
            self.check_refs(org, &record.refs()).await?;
        }
        Ok(self
            .store
            .insert_audited(record, Some(NewAuditEntry::create(actor(c), record)))
            .await?)
    }

    pub async fn list_records<E: Record>(
        &self,
        c: &Caller,
        org: OrgId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<E>> {
        self.list_records_where(c, org, &RecordFilter::default(), after, limit)
            .await
    }

    /// Records of type `E` of the organization matching `f`, in id (creation) order. `state`,
    /// `since` and `until` apply to activities (appointments, tasks) only.
    pub async fn list_records_where<E: Record>(
        &self,
        c: &Caller,
        org: OrgId,
        f: &RecordFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<E>> {
        c.require(Privilege::ReadRecords)?;
        let mut filters = kind_filter::<E>();
        if let Some(o) = f.owner {
            filters.push(Filter::Eq("owner_id", Col::text(o)));
        }
        if E::KIND.is_none() {
            for (field, given) in [
                ("state", f.state.is_some()),
                ("since", f.since.is_some()),
                ("until", f.until.is_some()),
            ] {
                if given {
                    return Err(invalid(
                        "not_applicable",
                        field,
                        format!("{}s have no {field} to filter on", E::NAME),
                    ));
                }
            }
        }
        if let Some(s) = f.state {
            filters.push(Filter::Eq(
                "status",
                Col::text(serversync_model::wire_name(&s)),
            ));
        }
        if let Some(t) = f.since {
            filters.push(Filter::AtLeast("occurred_at", t.timestamp_millis()));
        }
        if let Some(t) = f.until {
            filters.push(Filter::Below("occurred_at", t.timestamp_millis()));
        }
        Ok(self
            .store
            .list_where(Some(org), &filters, after, limit)
            .await?)
    }

    /// One record of type `E` of the organization: any other organization's, or a record of
    /// another type, is not found.
    pub async fn record<E: Record>(&self, c: &Caller, org: OrgId, id: &str) -> Result<Stored<E>> {
        c.require(Privilege::ReadRecords)?;
        self.find_record(org, id).await
    }

    async fn find_record<E: Record>(&self, org: OrgId, id: &str) -> Result<Stored<E>> {
        let mut filters = kind_filter::<E>();
        filters.push(Filter::Eq("id", Col::text(id)));
        self.store
            .list_where::<E>(Some(org), &filters, None, 1)
            .await?
            .items
            .into_iter()
            .next()
            .ok_or_else(|| AdminError::NotFound {
                entity: E::NAME,
                id: id.to_owned(),
            })
    }

    /// Replaces a record of the organization with `record` (same id), only from version
    /// `expected` when given. References that changed are checked as on creation.
    pub async fn update_record<E: Record>(
        &self,
        c: &Caller,
        org: OrgId,
        record: &E,
        expected: Option<i64>,
    ) -> Result<Stored<E>> {
        c.require(Privilege::WriteRecords)?;
        let before = self.find_record::<E>(org, &record.id()).await?;
        if record.org_id() != Some(org) {
            return Err(invalid(
                "read_only",
                "org_id",
                "a record stays in its organization",
            ));
        }
        let kept = before.value.refs();
        let changed: Vec<_> = record
            .refs()
            .into_iter()
            .filter(|r| !kept.contains(r))
            .collect();
        self.check_refs(org, &changed).await?;
        Ok(self
            .store
            .update_audited(
                record,
                expected,
                Some(NewAuditEntry::update(actor(c), &before.value, record)),
            )
            .await?)
    }

    /// Deletes a record of the organization (its `deleted` change goes to the feed).
    pub async fn delete_record<E: Record>(&self, c: &Caller, org: OrgId, id: &str) -> Result<()> {
        c.require(Privilege::WriteRecords)?;
        let before = self.find_record::<E>(org, id).await?;
        if self
            .store
            .delete::<E>(id, Some(NewAuditEntry::delete(actor(c), &before.value)))
            .await?
        {
            Ok(())
        } else {
            Err(AdminError::NotFound {
                entity: E::NAME,
                id: id.to_owned(),
            })
        }
    }

    /// Email activities of an organization matching `f`, in id (creation) order.
    pub async fn list_email_activities(
        &self,
        c: &Caller,
        org: OrgId,
        f: &ActivityFilter,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<serversync_model::crm::EmailActivity>> {
        c.require(Privilege::ReadRecords)?;
        Ok(self
            .store
            .list_where(Some(org), &activity_filters(f), after, limit)
            .await?)
    }

    /// [`Admin::list_email_activities`], newest first, `limit` at a time before the cursor
    /// `before` (the admin center's pages).
    pub async fn email_activities_newest(
        &self,
        c: &Caller,
        org: OrgId,
        f: &ActivityFilter,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Page<serversync_model::crm::EmailActivity>> {
        c.require(Privilege::ReadRecords)?;
        Ok(self
            .store
            .list_newest(Some(org), &activity_filters(f), before, limit)
            .await?)
    }

    /// The activities of the conversation of activity `id` (itself included), oldest first (by
    /// received, else sent, else created time).
    pub async fn activity_thread(
        &self,
        c: &Caller,
        org: OrgId,
        id: serversync_model::ActivityId,
    ) -> Result<Vec<serversync_model::crm::EmailActivity>> {
        let a = self.email_activity(c, org, id).await?;
        let Some(conv) = a.conversation_id.clone() else {
            return Ok(vec![a]);
        };
        let mut all: Vec<_> = self
            .store
            .list_all::<serversync_model::crm::EmailActivity>(
                Some(org),
                &[
                    ("kind", serversync_store::Col::text("email")),
                    ("conversation_id", serversync_store::Col::text(conv)),
                ],
            )
            .await?
            .into_iter()
            .map(|s| s.value)
            .collect();
        all.sort_by_key(|a| (a.received_at.or(a.sent_at).unwrap_or(a.created_at), a.id));
        Ok(all)
    }

    /// An attachment of an email activity, with its bytes when they were kept.
    pub async fn activity_attachment(
        &self,
        c: &Caller,
        org: OrgId,
        id: serversync_model::ActivityId,
        sha256: &str,
    ) -> Result<(serversync_model::crm::Attachment, AttachmentContent)> {
        let a = self.email_activity(c, org, id).await?;
        let sha = sha256.to_ascii_lowercase();
        let att = a
            .attachments
            .into_iter()
            .find(|t| t.sha256.eq_ignore_ascii_case(&sha))
            .ok_or_else(|| AdminError::NotFound {
                entity: "attachment",
                id: format!("{sha} of email activity {id}"),
            })?;
        if let Some(reason) = &att.dropped_reason {
            let reason = reason.clone();
            return Ok((att, AttachmentContent::Dropped(reason)));
        }
        Ok(match self.store.get_blob(&att.sha256).await? {
            Some(bytes) => (att, AttachmentContent::Bytes(bytes)),
            None => (
                att,
                AttachmentContent::Dropped("the stored content is no longer kept".into()),
            ),
        })
    }

    /// Queue items of an organization, optionally of one queue.
    pub async fn list_queue_items(
        &self,
        c: &Caller,
        org: OrgId,
        queue: Option<serversync_model::QueueId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<serversync_model::crm::QueueItem>> {
        c.require(Privilege::ReadRecords)?;
        let filters: Vec<_> = queue
            .map(|q| ("queue_id", serversync_store::Col::text(q)))
            .into_iter()
            .collect();
        Ok(self.store.list(Some(org), &filters, after, limit).await?)
    }

    /// One email activity of the organization.
    pub async fn email_activity(
        &self,
        c: &Caller,
        org: OrgId,
        id: serversync_model::ActivityId,
    ) -> Result<serversync_model::crm::EmailActivity> {
        c.require(Privilege::ReadRecords)?;
        let found = self
            .store
            .list::<serversync_model::crm::EmailActivity>(
                Some(org),
                &[
                    ("kind", serversync_store::Col::text("email")),
                    ("id", serversync_store::Col::text(id)),
                ],
                None,
                1,
            )
            .await?;
        found
            .items
            .into_iter()
            .next()
            .map(|s| s.value)
            .ok_or_else(|| AdminError::NotFound {
                entity: "email activity",
                id: id.to_string(),
            })
    }
}

/// The records a CRM record refers to, by the field that holds each.
pub trait RecordRefs {
    fn refs(&self) -> Vec<(&'static str, RecordRef)>;
}

impl RecordRefs for Account {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        vec![("owner_id", RecordRef::User(self.owner_id))]
    }
}

impl RecordRefs for Contact {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        let mut v = vec![("owner_id", RecordRef::User(self.owner_id))];
        v.extend(
            self.account_id
                .map(|a| ("account_id", RecordRef::Account(a))),
        );
        v
    }
}

impl RecordRefs for Lead {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        vec![("owner_id", RecordRef::User(self.owner_id))]
    }
}

impl RecordRefs for Appointment {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        let mut v = vec![("owner_id", RecordRef::User(self.owner_id))];
        v.extend(self.regarding.map(|r| ("regarding", r)));
        v
    }
}

impl RecordRefs for Task {
    fn refs(&self) -> Vec<(&'static str, RecordRef)> {
        let mut v = vec![("owner_id", RecordRef::User(self.owner_id))];
        v.extend(self.regarding.map(|r| ("regarding", r)));
        v
    }
}

/// A CRM record read, changed and deleted one at a time ([`Admin::record`],
/// [`Admin::update_record`], [`Admin::delete_record`]) and listed with a [`RecordFilter`].
pub trait Record: serversync_store::Entity + RecordRefs {
    /// For records that share the `activities` table: their `kind` column, which every read
    /// filters on (an appointment's id never reads a task).
    const KIND: Option<&'static str> = None;
}

impl Record for Account {}
impl Record for Contact {}
impl Record for Lead {}
impl Record for Appointment {
    const KIND: Option<&'static str> = Some("appointment");
}
impl Record for Task {
    const KIND: Option<&'static str> = Some("task");
}

fn kind_filter<E: Record>() -> Vec<Filter> {
    E::KIND
        .map(|k| Filter::Eq("kind", Col::text(k)))
        .into_iter()
        .collect()
}

/// Which records to list (every field optional; all given must match).
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    /// Owned by this user.
    pub owner: Option<UserId>,
    /// Activities in this state.
    pub state: Option<ActivityState>,
    /// Activities at or after (appointments: the start; tasks: the due time, else creation).
    pub since: Option<Timestamp>,
    /// Activities before (as `since`).
    pub until: Option<Timestamp>,
}

impl Admin {
    /// Whether record `r` exists in organization `org`.
    pub(crate) async fn record_exists(&self, org: OrgId, r: RecordRef) -> Result<bool> {
        use serversync_model::crm::EmailActivity;
        use serversync_store::Filter;
        let store = &self.store;
        let (f, o) = (|id: String| [Filter::Eq("id", Col::text(id))], Some(org));
        let n = match r {
            RecordRef::User(i) => store.count_where::<User>(o, &f(i.to_string())).await?,
            RecordRef::Queue(i) => store.count_where::<Queue>(o, &f(i.to_string())).await?,
            RecordRef::Contact(i) => store.count_where::<Contact>(o, &f(i.to_string())).await?,
            RecordRef::Account(i) => store.count_where::<Account>(o, &f(i.to_string())).await?,
            RecordRef::Lead(i) => store.count_where::<Lead>(o, &f(i.to_string())).await?,
            // Emails, appointments and tasks share one table.
            RecordRef::Activity(i) => {
                store
                    .count_where::<EmailActivity>(o, &f(i.to_string()))
                    .await?
            }
        };
        Ok(n > 0)
    }

    /// Refuses, naming each field, references to records that are not of `org`.
    pub(crate) async fn check_refs(
        &self,
        org: OrgId,
        refs: &[(&'static str, RecordRef)],
    ) -> Result<()> {
        let mut e = ValidationErrors::default();
        for (field, r) in refs {
            if !self.record_exists(org, *r).await? {
                e.push(
                    "not_found",
                    field,
                    format!(
                        "no such {} in this organization",
                        match r {
                            RecordRef::User(_) => "user",
                            RecordRef::Queue(_) => "queue",
                            RecordRef::Contact(_) => "contact",
                            RecordRef::Account(_) => "account",
                            RecordRef::Lead(_) => "lead",
                            RecordRef::Activity(_) => "activity",
                        }
                    ),
                );
            }
        }
        Ok(e.into_result()?)
    }
}

/// The store's conditions for an [`ActivityFilter`].
fn activity_filters(f: &ActivityFilter) -> Vec<Filter> {
    let mut filters = vec![Filter::Eq("kind", Col::text("email"))];
    if let Some(m) = f.mailbox {
        filters.push(Filter::LinkedTo(m.to_string()));
    }
    if let Some(r) = f.regarding {
        filters.push(Filter::Eq(
            "regarding_id",
            Col::text(serversync_model::wire_name(&r)),
        ));
    }
    if let Some(conv) = &f.conversation {
        filters.push(Filter::Eq("conversation_id", Col::text(conv)));
    }
    if let Some(t) = f.since {
        filters.push(Filter::AtLeast("occurred_at", t.timestamp_millis()));
    }
    if let Some(t) = f.until {
        filters.push(Filter::Below("occurred_at", t.timestamp_millis()));
    }
    if let Some(s) = f.status {
        filters.push(Filter::Eq(
            "status",
            Col::text(serversync_model::wire_name(&s)),
        ));
    }
    if let Some(from) = f.from.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        filters.push(address_filter("from_addr", from));
    }
    if let Some(subject) = &f.subject {
        let key = serversync_model::track::normalize_subject(subject);
        if !key.is_empty() {
            filters.push(Filter::Contains("subject_key", key));
        }
    }
    if let Some(id) = &f.message_id {
        let id = id.trim().trim_start_matches('<').trim_end_matches('>');
        if !id.is_empty() {
            filters.push(Filter::Eq("message_id", Col::text(id)));
        }
    }
    filters
}

/// A sender filter: a whole address matches exactly, anything else (a name part, a domain)
/// wherever it appears in the address. Addresses are stored lower-case.
pub(crate) fn address_filter(column: &'static str, given: &str) -> Filter {
    let given = given.trim().to_lowercase();
    let whole = given.contains('@')
        && !given.starts_with('@')
        && !given.ends_with('@')
        && !given.contains(char::is_whitespace);
    if whole {
        Filter::Eq(column, Col::text(given))
    } else {
        Filter::Contains(column, given)
    }
}

/// Which email activities to list (every field optional; all given must match).
#[derive(Debug, Clone, Default)]
pub struct ActivityFilter {
    /// Seen through this mailbox.
    pub mailbox: Option<serversync_model::MailboxId>,
    /// Set regarding this record.
    pub regarding: Option<serversync_model::crm::RecordRef>,
    /// Of this conversation.
    pub conversation: Option<String>,
    /// Received (else sent, else created) at or after.
    pub since: Option<serversync_model::Timestamp>,
    /// Received (else sent, else created) before.
    pub until: Option<serversync_model::Timestamp>,
    /// In this status.
    pub status: Option<serversync_model::crm::EmailStatus>,
    /// From this address (a whole address), or from addresses containing this text.
    pub from: Option<String>,
    /// Whose subject contains this text (compared as normalized subjects: no `Re:`/`Fwd:`,
    /// case and runs of white space ignored).
    pub subject: Option<String>,
    /// With this Message-ID (angle brackets optional).
    pub message_id: Option<String>,
}

/// The bytes of an attachment, or why they are not there.
#[derive(Debug, Clone)]
pub enum AttachmentContent {
    Bytes(Vec<u8>),
    Dropped(String),
}
