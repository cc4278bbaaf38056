//! Per-mailbox synchronization state and work ownership.

use crate::MailboxId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where synchronization of one folder stands. Advanced only over committed work.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FolderCursor {
    /// IMAP UIDVALIDITY (or the equivalent generation of other protocols).
    pub uid_validity: Option<u32>,
    /// Highest UID whose message is committed.
    pub last_uid: Option<u32>,
    /// CONDSTORE/QRESYNC HIGHESTMODSEQ covered by committed work.
    pub highest_modseq: Option<u64>,
    /// Opaque sync token (EWS SyncState, Graph delta link, CalDAV sync-token).
    pub sync_token: Option<String>,
    /// Received date of the newest processed message (the reference's cursor).
    pub last_received_at: Option<DateTime<Utc>>,
    /// UIDVALIDITY changes in a row without a stable folder in between.
    pub uid_validity_changes: u32,
}

/// The cursor of one folder of one mailbox.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxFolderState {
    pub mailbox_id: MailboxId,
    pub folder: String,
    pub cursor: FolderCursor,
}

/// Ownership of a resource (a mailbox) by one worker until `until`. Every write made under the
/// lease carries its `epoch`; a newer owner has a higher epoch, so a stale worker's writes are
/// refused (fencing).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub resource: String,
    pub owner: String,
    pub epoch: i64,
    pub until: DateTime<Utc>,
}
