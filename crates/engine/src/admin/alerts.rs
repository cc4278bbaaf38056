//! Alerts: listing those the caller may see, dismissing.

use super::{Admin, AdminError, Result, now};
use serversync_model::alert::Alert;
use serversync_model::auth::Caller;
use serversync_model::org::Privilege;
use serversync_model::{AlertId, MailboxId, OrgId};
use serversync_store::{Col, Page};

impl Admin {
    /// Alerts the caller may see: all with "read mailboxes", else those addressed to it.
    pub async fn list_alerts(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: Option<MailboxId>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<Alert>> {
        let filters: Vec<(&'static str, Col)> = mailbox
            .map(|m| ("mailbox_id", Col::text(m)))
            .into_iter()
            .collect();
        let mut page = self
            .store
            .list::<Alert>(Some(org), &filters, after, limit)
            .await?;
        if !c.has(Privilege::ReadMailboxes) {
            page.items
                .retain(|a| a.value.recipients.contains(&c.user.id));
        }
        Ok(page)
    }

    /// The newest `limit` alerts the caller may see (of `mailbox`, when given), newest first.
    pub async fn newest_alerts(
        &self,
        c: &Caller,
        org: OrgId,
        mailbox: Option<MailboxId>,
        limit: u32,
    ) -> Result<Vec<Alert>> {
        let filters: Vec<serversync_store::Filter> = mailbox
            .map(|m| serversync_store::Filter::Eq("mailbox_id", Col::text(m)))
            .into_iter()
            .collect();
        let page = self
            .store
            .list_newest::<Alert>(Some(org), &filters, None, limit)
            .await?;
        Ok(page
            .items
            .into_iter()
            .map(|a| a.value)
            .filter(|a| c.has(Privilege::ReadMailboxes) || a.recipients.contains(&c.user.id))
            .collect())
    }

    pub async fn dismiss_alert(&self, c: &Caller, org: OrgId, id: AlertId) -> Result<Alert> {
        let s = match self.store.get::<Alert>(&id.to_string()).await? {
            Some(a)
                if a.value.org_id == org
                    && (c.has(Privilege::WriteMailboxes)
                        || a.value.recipients.contains(&c.user.id)) =>
            {
                a
            }
            _ => {
                return Err(AdminError::NotFound {
                    entity: "alert",
                    id: id.to_string(),
                });
            }
        };
        let mut a = s.value.clone();
        a.dismissed_at = Some(now());
        self.store.update(&a, Some(s.version)).await?;
        Ok(a)
    }
}
