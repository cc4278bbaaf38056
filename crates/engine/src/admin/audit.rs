//! The audit log.

use super::{Admin, Result};
use serversync_model::OrgId;
use serversync_model::auth::Caller;
use serversync_model::org::Privilege;

impl Admin {
    pub async fn audit(
        &self,
        c: &Caller,
        org: OrgId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<serversync_model::audit::AuditEntry>> {
        c.require(Privilege::ReadAuditLog)?;
        Ok(self.store.list_audit(Some(org), after_seq, limit).await?)
    }

    /// The audit log newest first: `limit` entries before `before_seq` (from the newest when
    /// `None`).
    pub async fn audit_newest(
        &self,
        c: &Caller,
        org: OrgId,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<serversync_model::audit::AuditEntry>> {
        c.require(Privilege::ReadAuditLog)?;
        Ok(self
            .store
            .list_audit_newest(Some(org), before_seq, limit)
            .await?)
    }
}
