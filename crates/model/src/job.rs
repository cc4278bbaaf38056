//! Asynchronous jobs (test and enable, apply default settings…): progress and per-item results.

use crate::{JobId, MailboxId, OrgId, Timestamp, UserId};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    TestAndEnable,
    ApplyDefaultSettings,
    KeyRotation,
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobItemResult {
    pub mailbox_id: MailboxId,
    pub ok: bool,
    pub message: String,
}

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
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}
