//! The item-level records of a mailbox, and of the organization for the dashboard.

use super::{Admin, Result};
use serversync_model::auth::Caller;
use serversync_model::item::{ItemDecision, MailItem};
use serversync_model::org::Privilege;
use serversync_model::{MailboxId, OrgId, Timestamp};
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
