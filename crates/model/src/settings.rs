//! Organization email settings: one per organization (REFERENCE.md part A).

use crate::merge::ConflictPolicy;
use crate::validate::check_range;
use crate::{OrgId, ProfileId, ValidationErrors};
use serde::{Deserialize, Serialize};

/// How incoming email reaches the CRM.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncomingMethod {
    None,
    ServerSideSync,
    EmailRouter,
    /// Mail forwarded to a dedicated forward mailbox and processed from there. Not available
    /// yet: choosing it is refused ([`FORWARD_MAILBOX_NOT_AVAILABLE`]), and a mailbox stored
    /// with it fails test and enable and has its incoming direction disabled with an alert.
    ForwardMailbox,
}

/// Why the "forward mailbox" incoming method is refused (code `forward_mailbox_not_available`).
pub const FORWARD_MAILBOX_NOT_AVAILABLE: &str = "the forward mailbox incoming method is not \
available in this version yet: choose server_side_sync (the mailbox's own server), email_router \
or none";

/// How CRM email is sent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutgoingMethod {
    None,
    ServerSideSync,
    EmailRouter,
}

/// How appointments, contacts and tasks are synchronized.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActMethod {
    None,
    ServerSideSync,
    /// Client-side synchronization (Outlook). Mixing it with server-side sync is discouraged.
    OutlookClient,
}

/// Which incoming email of a user or queue becomes an email activity.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrackingFilter {
    AllEmail,
    InResponseToCrmEmail,
    FromLeadsContactsAccounts,
    FromEmailEnabledRecords,
    None,
}

/// Record type created for an unresolved sender when automatic record creation is on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AutoCreateRecord {
    Contact,
    Lead,
}

/// Tracking-token format: `prefix` + user digits + counter digits, e.g. `CRM:0010001`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackingTokenSettings {
    pub enabled: bool,
    /// 1–20 characters, default "CRM".
    pub prefix: String,
    pub base_number: u32,
    /// 1–10, default 3.
    pub user_digits: u8,
    /// 1–9, default 3; the counter wraps.
    pub counter_digits: u8,
}

impl Default for TrackingTokenSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            prefix: "CRM".into(),
            base_number: 0,
            user_digits: 3,
            counter_digits: 3,
        }
    }
}

/// Retry policy for transient failures (the reference: 10 attempts, 5 minutes apart).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub interval_seconds: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            interval_seconds: 300,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmailSettings {
    pub org_id: OrgId,
    pub default_profile_id: Option<ProfileId>,
    pub default_incoming: IncomingMethod,
    pub default_outgoing: OutgoingMethod,
    pub default_act: ActMethod,
    pub require_approved_users: bool,
    pub require_approved_queues: bool,
    pub correlation_by_headers: bool,
    pub tracking_token: TrackingTokenSettings,
    /// Correlate by ≥ 2 common addresses and the same normalized subject.
    pub smart_matching: bool,
    pub default_user_tracking: TrackingFilter,
    pub default_queue_tracking: TrackingFilter,
    pub auto_create_records: Option<AutoCreateRecord>,
    /// Largest attachment kept, in KB (0–131072, default 5120).
    pub max_attachment_kb: u32,
    /// Email between two tracked users becomes two activities (one per mailbox).
    pub track_user_to_user_as_two_activities: bool,
    pub save_outgoing_to_sent: bool,
    /// Longest subject the mail server accepts (default 255).
    pub max_subject_length: u32,
    pub retry: RetryPolicy,
    /// How two-way synchronization of appointments, contacts and tasks resolves a field
    /// changed in the CRM and on the server since the last synchronization.
    pub conflict_policy: ConflictPolicy,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self::new(OrgId(uuid::Uuid::nil()))
    }
}

impl EmailSettings {
    /// The reference defaults.
    pub fn new(org_id: OrgId) -> Self {
        Self {
            org_id,
            default_profile_id: None,
            default_incoming: IncomingMethod::ServerSideSync,
            default_outgoing: OutgoingMethod::ServerSideSync,
            default_act: ActMethod::ServerSideSync,
            require_approved_users: true,
            require_approved_queues: true,
            correlation_by_headers: true,
            tracking_token: TrackingTokenSettings::default(),
            smart_matching: false,
            default_user_tracking: TrackingFilter::InResponseToCrmEmail,
            default_queue_tracking: TrackingFilter::AllEmail,
            auto_create_records: None,
            max_attachment_kb: 5120,
            track_user_to_user_as_two_activities: true,
            save_outgoing_to_sent: true,
            max_subject_length: 255,
            retry: RetryPolicy::default(),
            conflict_policy: ConflictPolicy::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        let t = &self.tracking_token;
        check_range(
            &mut e,
            "tracking_token.prefix",
            t.prefix.chars().count() as i64,
            1,
            20,
        );
        check_range(
            &mut e,
            "tracking_token.user_digits",
            t.user_digits.into(),
            1,
            10,
        );
        check_range(
            &mut e,
            "tracking_token.counter_digits",
            t.counter_digits.into(),
            1,
            9,
        );
        if self.default_incoming == IncomingMethod::ForwardMailbox {
            e.push(
                "forward_mailbox_not_available",
                "default_incoming",
                FORWARD_MAILBOX_NOT_AVAILABLE,
            );
        }
        check_range(
            &mut e,
            "max_attachment_kb",
            self.max_attachment_kb.into(),
            0,
            131_072,
        );
        check_range(
            &mut e,
            "max_subject_length",
            self.max_subject_length.into(),
            1,
            998,
        );
        check_range(
            &mut e,
            "retry.max_attempts",
            self.retry.max_attempts.into(),
            1,
            100,
        );
        check_range(
            &mut e,
            "retry.interval_seconds",
            self.retry.interval_seconds.into(),
            1,
            86_400,
        );
        e.into_result()
    }
}
