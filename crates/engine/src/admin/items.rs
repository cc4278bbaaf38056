//! The item-level records of a mailbox.

use super::{Admin, Result};
use serversync_model::auth::Caller;
use serversync_model::item::ItemDecision;
use serversync_model::{MailboxId, OrgId};
use serversync_store::Page;

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
}
