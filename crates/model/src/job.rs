//! Asynchronous jobs (test and enable, apply default settings…): progress and per-item results.

use crate::certificate::CertificateInfo;
use crate::{JobId, MailboxId, OrgId, ProfileId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    TestAndEnable,
    ApplyDefaultSettings,
    KeyRotation,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    /// Finished, but at least one item failed.
    CompletedWithFailures,
    Failed,
    Canceled,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobItemResult {
    pub mailbox_id: MailboxId,
    pub ok: bool,
    pub message: String,
    /// The certificates the mailbox's servers presented during the test (test and enable),
    /// shown so an administrator can recognise a self-signed one and pin it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<ServerCertificate>,
}

/// A certificate seen while testing one direction of a mailbox.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerCertificate {
    /// `incoming` or `outgoing`.
    pub direction: String,
    pub profile_id: ProfileId,
    /// The server, as `host:port`.
    pub server: String,
    pub certificate: CertificateInfo,
    /// Accepted because the profile pins its fingerprint.
    pub pinned: bool,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    pub org_id: OrgId,
    pub kind: JobKind,
    pub status: JobStatus,
    pub requested_by: Option<UserId>,
    pub mailbox_ids: Vec<MailboxId>,
    pub total: u32,
    pub done: u32,
    pub results: Vec<JobItemResult>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}
