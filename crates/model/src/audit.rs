//! The audit log: who changed what, when, with the state before and after (secrets excluded,
//! because secret fields serialize redacted).

use crate::{OrgId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Who made a change.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Actor {
    User(UserId),
    /// serversync itself (engine, jobs, start-up).
    System(String),
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log (assigned by the store).
    pub seq: i64,
    pub org_id: Option<OrgId>,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    /// `create`, `update`, `delete`, `approve`, `test_and_enable`, `rotate_keys`…
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}
