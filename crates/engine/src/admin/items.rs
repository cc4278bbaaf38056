//! The item-level records of a mailbox, and of the organization for the dashboard.

use super::{Admin, AdminError, Result};
use serversync_model::auth::Caller;
use serversync_model::item::{ItemDecision, MailItem};
use serversync_model::org::Privilege;
use serversync_model::{ItemId, MailboxId, OrgId, Timestamp};
use serversync_store::{Col, Filter, Page};

impl Admin {
    /// The item-level records of a mailbox: every message seen, with its decision and reasons;
    /// only those with `decision` when given.
    pub async fn items(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: MailboxId,
        decision: Option<ItemDecision>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<serversync_model::item::MailItem>> {
        let m = self.mailbox(c, org, mailbox).await?;
        Ok(self
            .store
            .list_items_with(m.value.id, decision, after, limit)
            .await?)
    }

    /// The item-level records created at or after `since`, oldest first: of every mailbox of
    /// the organization, which needs "read mailboxes" (the privilege the items of a mailbox
    /// need, unless the caller owns it); of `mailbox` alone when given, under the same check
    /// as [`Admin::items`] (readable by its owner too).
    pub async fn items_since(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: Option<MailboxId>,
        since: Timestamp,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<MailItem>> {
        let mut filters = vec![Filter::AtLeast("created_at", since.timestamp_millis())];
        match mailbox {
            Some(id) => {
                let m = self.mailbox(c, org, id).await?;
                filters.push(Filter::Eq("mailbox_id", Col::text(m.value.id)));
            }
            None => c.require(Privilege::ReadMailboxes)?,
        }
        Ok(self
            .store
            .list_where::<MailItem>(Some(org), &filters, after, limit)
            .await?)
    }
}

/// Which items of a mailbox its page lists (every field optional; all given must match).
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    pub decision: Option<ItemDecision>,
    /// From this address (a whole address), or from addresses containing this text.
    pub from: Option<String>,
    /// Received by the server at or after.
    pub since: Option<Timestamp>,
    /// Received by the server before.
    pub until: Option<Timestamp>,
}

impl Admin {
    /// The items of a mailbox matching `f`, newest first (by when serversync took them in),
    /// `limit` at a time before the cursor `before`; under the same check as [`Admin::items`].
    pub async fn items_newest(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: MailboxId,
        f: &ItemFilter,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Page<MailItem>> {
        let m = self.mailbox(c, org, mailbox).await?;
        let mut filters = vec![Filter::Eq("mailbox_id", Col::text(m.value.id))];
        if let Some(d) = f.decision {
            filters.push(Filter::Eq(
                "decision",
                Col::text(serversync_model::wire_name(&d)),
            ));
        }
        if let Some(from) = f.from.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            filters.push(super::records::address_filter("from_addr", from));
        }
        if let Some(t) = f.since {
            filters.push(Filter::AtLeast("received_ms", t.timestamp_millis()));
        }
        if let Some(t) = f.until {
            filters.push(Filter::Below("received_ms", t.timestamp_millis()));
        }
        Ok(self
            .store
            .list_newest::<MailItem>(Some(org), &filters, before, limit)
            .await?)
    }

    /// One item of the organization, readable where its mailbox is ([`Admin::mailbox`]): an
    /// item of another organization, or of a mailbox the caller may not read, is not found.
    pub async fn item(&self, c: &Caller, org: OrgId, id: ItemId) -> Result<MailItem> {
        let not_found = || AdminError::NotFound {
            entity: "mail item",
            id: id.to_string(),
        };
        let item = self
            .store
            .list_where::<MailItem>(Some(org), &[Filter::Eq("id", Col::text(id))], None, 1)
            .await?
            .items
            .into_iter()
            .next()
            .ok_or_else(not_found)?
            .value;
        self.mailbox(c, org, item.mailbox_id)
            .await
            .map_err(|_| not_found())?;
        Ok(item)
    }
}
