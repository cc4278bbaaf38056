//! Alerts: on a mailbox's alert wall, for its owner and for the profile owner.

use crate::{AlertId, FailureStep, MailboxId, OrgId, ProfileId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Information,
    Warning,
    Error,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: AlertId,
    pub org_id: OrgId,
    pub severity: Severity,
    /// Stable machine code (`auth_failed`, `mailbox_not_approved`, `tls_failed`…).
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
    pub mailbox_id: Option<MailboxId>,
    pub profile_id: Option<ProfileId>,
    /// The step that failed, for connection failures.
    pub step: Option<FailureStep>,
    /// Users who are shown the alert (mailbox owner, profile owner).
    pub recipients: Vec<UserId>,
    pub created_at: DateTime<Utc>,
    pub dismissed_at: Option<DateTime<Utc>>,
}

impl Alert {
    /// A new, undismissed alert for `recipients`.
    pub fn new(
        org_id: OrgId,
        severity: Severity,
        code: &str,
        message: String,
        mut recipients: Vec<UserId>,
    ) -> Self {
        recipients.sort();
        recipients.dedup();
        Self {
            id: AlertId::new(),
            org_id,
            severity,
            code: code.to_owned(),
            message,
            mailbox_id: None,
            profile_id: None,
            step: None,
            recipients,
            created_at: chrono::Utc::now(),
            dismissed_at: None,
        }
    }
}
