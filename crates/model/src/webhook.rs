//! The change feed of CRM records and the webhook endpoints that receive it.
//!
//! Every create, update and delete of a CRM record is a [`Change`] with a sequence number
//! (`seq`) that grows in commit order within an organization. Readers page through the feed
//! with `after = <last seq seen>`; webhook endpoints keep the same cursor and are sent each
//! change as an event whose id is derived from `seq`, so a receiver can drop duplicates.

use crate::validate::is_http_url;
use crate::{MailboxId, OrgId, SecretId, ValidationErrors, WebhookId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The kinds of CRM record that appear in the change feed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    Account,
    Contact,
    Lead,
    EmailActivity,
    Appointment,
    Task,
    QueueItem,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    Created,
    Updated,
    Deleted,
}

/// Who made a change of the feed, so a reader can tell its own writes from others': a two-way
/// syncer skips the changes tagged with its own `sync:<mailbox id>`.
///
/// On the wire a string: `api` (an administrator or user through the API, the web admin center
/// or the CLI), `sync:<mailbox id>` (a syncer writing what it read from that mailbox's
/// server), `tracker` (email tracking: activities and queue items made from mail), `system`
/// (everything else, and every change recorded before origins were kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChangeOrigin {
    Api,
    Sync(MailboxId),
    Tracker,
    #[default]
    System,
}

impl std::fmt::Display for ChangeOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeOrigin::Api => f.write_str("api"),
            ChangeOrigin::Sync(m) => write!(f, "sync:{m}"),
            ChangeOrigin::Tracker => f.write_str("tracker"),
            ChangeOrigin::System => f.write_str("system"),
        }
    }
}

impl std::str::FromStr for ChangeOrigin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(ChangeOrigin::Api),
            "tracker" => Ok(ChangeOrigin::Tracker),
            "system" => Ok(ChangeOrigin::System),
            _ => match s.strip_prefix("sync:") {
                Some(m) => m.parse().map(ChangeOrigin::Sync).map_err(|_| {
                    format!("change origin {s:?}: sync: must be followed by a mailbox id")
                }),
                None => Err(format!(
                    "unknown change origin {s:?} (api, sync:<mailbox id>, tracker or system)"
                )),
            },
        }
    }
}

impl Serialize for ChangeOrigin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChangeOrigin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ChangeOrigin {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::change_origin_schema()
    }
}
#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ChangeOrigin {}

/// One entry of the change feed.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Position in the feed; pass the last one seen as `after` to resume.
    pub seq: i64,
    /// Stable event id (`evt_<seq>`): the same change always has the same id.
    pub event_id: String,
    /// `<record_type>.<op>`, e.g. `contact.created`.
    pub event_type: String,
    pub org_id: OrgId,
    pub record_type: RecordType,
    pub record_id: String,
    pub op: ChangeOp,
    /// The record's version after the change (for a delete: the version deleted).
    pub version: i64,
    pub at: DateTime<Utc>,
    /// The record as it is when the feed is read — possibly newer than `version`: a later
    /// change of it follows in the feed (for a delete, or a record deleted since: its last
    /// document; should that be gone too, `{"id": …}` alone).
    pub record: serde_json::Value,
    /// Who made the change (`api`, `sync:<mailbox id>`, `tracker`, `system`).
    #[serde(default)]
    pub origin: ChangeOrigin,
}

impl Change {
    pub fn event_id_for(seq: i64) -> String {
        format!("evt_{seq}")
    }
    pub fn event_type_for(t: RecordType, op: ChangeOp) -> String {
        format!("{}.{}", crate::wire_name(&t), crate::wire_name(&op))
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookState {
    /// Events are delivered.
    Active,
    /// Delivery stopped after repeated failures (or by an administrator); events wait at the
    /// cursor until the endpoint is resumed.
    Paused,
}

/// A webhook endpoint's configuration. The signing secret is sealed in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub id: WebhookId,
    pub org_id: OrgId,
    pub url: String,
    pub description: String,
    pub secret_id: SecretId,
    /// Only changes of these record types are sent; empty: all.
    pub record_types: Vec<RecordType>,
    pub created_at: DateTime<Utc>,
}

impl WebhookEndpoint {
    pub fn wants(&self, t: RecordType) -> bool {
        self.record_types.is_empty() || self.record_types.contains(&t)
    }
}

/// Where delivery to an endpoint stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookStatus {
    pub state: WebhookState,
    /// The last change delivered (or skipped by the filter); the next event sent is after it.
    pub cursor: i64,
    pub consecutive_failures: u32,
    /// When the next attempt is due after a failure.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub paused_at: Option<DateTime<Utc>>,
}

/// One delivery attempt, for the endpoint's delivery log.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// Position in the log.
    pub id: i64,
    pub webhook_id: WebhookId,
    pub event_id: String,
    pub seq: i64,
    pub at: DateTime<Utc>,
    /// 1 for the first attempt at this event, then 2, 3…
    pub attempt: u32,
    pub ok: bool,
    /// The HTTP status the receiver answered, if it answered.
    pub status: Option<u16>,
    /// What went wrong (connection refused, timeout, HTTP 500…).
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// Checks an endpoint's URL and description.
pub fn validate_endpoint(url: &str, description: &str) -> Result<(), ValidationErrors> {
    let mut e = ValidationErrors::default();
    if !is_http_url(url.trim()) {
        e.push(
            "invalid_url",
            "url",
            "enter an http:// or https:// URL such as https://crm.example.com/hooks/serversync",
        );
    }
    if description.chars().count() > 500 {
        e.push(
            "too_long",
            "description",
            "keep the description under 500 characters",
        );
    }
    e.into_result()
}

/// Delay before retry number `failures` (1 after the first failure): `base · 2^(failures-1)`,
/// capped at `max`, then spread by `jitter` (0.0‥1.0) over its upper half so endpoints failing
/// together do not retry together.
pub fn retry_delay(failures: u32, base: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(30);
    let d = base.saturating_mul(1u32 << exp).min(max);
    let j = jitter.clamp(0.0, 1.0);
    d.mul_f64(0.5 + 0.5 * j)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_origins_are_strings_both_ways() {
        let m = MailboxId::new();
        for (o, text) in [
            (ChangeOrigin::Api, "api".to_owned()),
            (ChangeOrigin::Sync(m), format!("sync:{m}")),
            (ChangeOrigin::Tracker, "tracker".to_owned()),
            (ChangeOrigin::System, "system".to_owned()),
        ] {
            assert_eq!(o.to_string(), text);
            assert_eq!(serde_json::to_value(o).unwrap(), text.as_str());
            assert_eq!(
                serde_json::from_value::<ChangeOrigin>(text.into()).unwrap(),
                o
            );
        }
        let e = "sync:nope".parse::<ChangeOrigin>().unwrap_err();
        assert!(e.contains("mailbox id"), "{e}");
        let e = "robot".parse::<ChangeOrigin>().unwrap_err();
        assert!(e.contains("unknown change origin"), "{e}");
        assert_eq!(ChangeOrigin::default(), ChangeOrigin::System);
    }

    #[test]
    fn retry_delay_grows_and_is_bounded() {
        let b = Duration::from_secs(1);
        let m = Duration::from_secs(300);
        assert_eq!(retry_delay(1, b, m, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(4, b, m, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(40, b, m, 1.0), m);
        assert_eq!(retry_delay(40, b, m, 0.0), m / 2);
        assert!(retry_delay(3, b, m, 0.3) < Duration::from_secs(4));
    }

    #[test]
    fn endpoint_checks_name_the_field() {
        assert!(validate_endpoint("https://x.example.com/h", "").is_ok());
        let e = validate_endpoint("ftp://x", "").unwrap_err();
        assert_eq!(e.0[0].field, "url");
        assert_eq!(
            Change::event_type_for(RecordType::EmailActivity, ChangeOp::Created),
            "email_activity.created"
        );
    }
}
