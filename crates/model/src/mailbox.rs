//! Mailboxes: one per user and per queue, with delivery methods, approval, the three status
//! fields and sync telemetry (REFERENCE.md part A "Mailbox").

use crate::profile::{EmailServerProfile, ServerType};
use crate::settings::{ActMethod, EmailSettings, IncomingMethod, OutgoingMethod, TrackingFilter};
use crate::{
    ErrorKind, FailureStep, MailboxId, OrgId, ProfileId, QueueId, SecretId, Timestamp, UserId,
    ValidationErrors, validate,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whom a mailbox belongs to.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum MailboxRegarding {
    User(UserId),
    Queue(QueueId),
}

/// Where a mailbox's Exchange mailbox lives (entered by the administrator or found by
/// Autodiscover). Decides which profile types can serve it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxLocation {
    ExchangeOnline,
    ExchangeOnPremises,
    /// The mailbox forwards to, or lives on, a non-Exchange mail server.
    ExternalServer,
}

/// Email address approval.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    #[default]
    Empty,
    PendingApproval,
    Approved,
    Rejected,
}

/// Result of the last test or synchronization of one direction.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    NotRun,
    Success,
    Failure,
}

/// One direction's status field with when it was last written.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectionStatus {
    pub status: RunStatus,
    pub at: Option<DateTime<Utc>>,
    /// Enabled for processing (after a successful test and enable).
    pub enabled: bool,
}

/// The last error seen on a mailbox.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    pub kind: ErrorKind,
    pub step: Option<FailureStep>,
    pub code: String,
    pub message: String,
    pub count: u32,
    pub at: DateTime<Utc>,
}

/// Synchronization telemetry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Telemetry {
    pub last_sync_start: Option<DateTime<Utc>>,
    pub last_successful_sync: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub items_processed: u64,
    pub items_failed: u64,
    pub transient_failure_count: u32,
    pub postponed_until: Option<DateTime<Utc>>,
    /// When someone asked to synchronize now ("sync now"); a worker that sees it later than
    /// its last sync start runs a round at once, whatever the polling interval.
    pub sync_requested_at: Option<DateTime<Utc>>,
    /// Exchange: the EWS URL Autodiscover found for this mailbox (used until a connection to
    /// it fails, then looked up again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ews_url: Option<String>,
    /// Exchange: what the server said it is (`ServerVersionInfo`) at the last test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Exchange Online: the Microsoft Graph change-notification subscription on the Inbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_subscription: Option<GraphSubscription>,
    /// Appointments, contacts and tasks: the recent decisions of the two-way synchronization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_sync: Option<ItemsSync>,
}

/// What the two-way synchronization of a mailbox's appointments, contacts and tasks did lately.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ItemsSync {
    /// When a round last changed something on either side.
    pub last_change_at: Option<DateTime<Utc>>,
    /// The latest decisions, newest first (at most [`ItemsSync::KEPT`]).
    pub decisions: Vec<ItemsDecision>,
}

/// One decision of the two-way synchronization ("contact \"Ann Lee\": phones written to the
/// server").
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemsDecision {
    pub at: DateTime<Utc>,
    pub what: String,
}

impl ItemsSync {
    /// Decisions kept on the mailbox.
    pub const KEPT: usize = 50;

    /// Adds a round's decisions (in the order they were made) at `at`.
    pub fn record(&mut self, at: DateTime<Utc>, decisions: &[String]) {
        if decisions.is_empty() {
            return;
        }
        self.last_change_at = Some(at);
        let new = decisions.iter().rev().map(|what| ItemsDecision {
            at,
            what: what.clone(),
        });
        let mut all: Vec<ItemsDecision> = new.chain(self.decisions.drain(..)).collect();
        all.truncate(Self::KEPT);
        self.decisions = all;
    }
}

/// A Microsoft Graph change-notification subscription (new mail in the Inbox): notifications
/// only wake the mailbox's delta query, they are never taken as data.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphSubscription {
    /// Graph's subscription id.
    pub id: String,
    /// When Graph ends it unless renewed (at most 4,230 minutes after creation or renewal).
    pub expires_at: DateTime<Utc>,
    /// SHA-256 (hex) of the `clientState` secret Graph echoes in each notification; the
    /// secret itself is not kept.
    pub client_state_sha256: String,
    /// Why it could not be created or renewed the last time (delta polling carries on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mailbox {
    pub id: MailboxId,
    pub org_id: OrgId,
    pub name: String,
    pub regarding: MailboxRegarding,
    /// The user who owns the mailbox (for a queue mailbox: the queue's owner).
    pub owner_id: UserId,
    /// Kept in step with the user's or queue's address.
    pub email: String,
    pub profile_id: Option<ProfileId>,
    pub incoming_method: IncomingMethod,
    pub outgoing_method: OutgoingMethod,
    pub act_method: ActMethod,
    pub approval: ApprovalStatus,
    /// Mailbox credentials when the profile uses credentials specified by user or queue.
    pub username: Option<String>,
    pub password: Option<SecretId>,
    pub allow_credentials_for_processing: bool,
    pub is_forward_mailbox: bool,
    /// Delete email from the server after processing (forward and queue mailboxes only).
    pub delete_after_processing: bool,
    /// Overrides the profile's date; the later of the two wins.
    pub process_email_from: Option<DateTime<Utc>>,
    pub tracking: TrackingFilter,
    /// Sync items with Exchange from this organization only, even if Exchange was set to sync
    /// with a different organization.
    pub sync_with_this_org_only: bool,
    /// Where the mailbox lives, when known.
    #[serde(default)]
    pub location: Option<MailboxLocation>,
    /// Folders tracked besides the Inbox (IMAP), by name, e.g. `["Sales", "Support/Escalations"]`.
    #[serde(default)]
    pub extra_folders: Vec<String>,
    pub incoming: DirectionStatus,
    pub outgoing: DirectionStatus,
    pub act: DirectionStatus,
    pub test_completed_on: Option<DateTime<Utc>>,
    pub telemetry: Telemetry,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Mailbox {
    /// A new mailbox taking the organization's default profile and delivery methods.
    pub fn new_with_defaults(
        org_id: OrgId,
        regarding: MailboxRegarding,
        owner_id: UserId,
        name: &str,
        email: &str,
        settings: &EmailSettings,
        now: Timestamp,
    ) -> Self {
        let tracking = match regarding {
            MailboxRegarding::User(_) => settings.default_user_tracking,
            MailboxRegarding::Queue(_) => settings.default_queue_tracking,
        };
        let act_method = match regarding {
            // Appointments, contacts and tasks are for user mailboxes only.
            MailboxRegarding::Queue(_) => ActMethod::None,
            MailboxRegarding::User(_) => settings.default_act,
        };
        Self {
            id: MailboxId::new(),
            org_id,
            name: name.to_owned(),
            regarding,
            owner_id,
            email: email.to_owned(),
            profile_id: settings.default_profile_id,
            incoming_method: settings.default_incoming,
            outgoing_method: settings.default_outgoing,
            act_method,
            approval: ApprovalStatus::Empty,
            username: None,
            password: None,
            allow_credentials_for_processing: false,
            is_forward_mailbox: false,
            delete_after_processing: false,
            process_email_from: None,
            tracking,
            sync_with_this_org_only: false,
            location: None,
            extra_folders: Vec::new(),
            incoming: DirectionStatus::default(),
            outgoing: DirectionStatus::default(),
            act: DirectionStatus::default(),
            test_completed_on: None,
            telemetry: Telemetry::default(),
            created_at: now,
            updated_at: now,
        }
    }

    pub fn is_queue(&self) -> bool {
        matches!(self.regarding, MailboxRegarding::Queue(_))
    }

    /// Whether approval is still needed before any mail is processed.
    pub fn needs_approval(&self, settings: &EmailSettings) -> bool {
        let required = if self.is_queue() {
            settings.require_approved_queues
        } else {
            settings.require_approved_users
        };
        required && self.approval != ApprovalStatus::Approved
    }

    /// The overall mailbox status: failure if any configured direction failed, success if all
    /// configured directions succeeded, not run otherwise.
    pub fn overall_status(&self) -> RunStatus {
        let configured = [
            (self.incoming_method != IncomingMethod::None, &self.incoming),
            (self.outgoing_method != OutgoingMethod::None, &self.outgoing),
            (self.act_method == ActMethod::ServerSideSync, &self.act),
        ];
        let mut all_ok = true;
        for (on, d) in configured.iter().filter(|(on, _)| *on) {
            let _ = on;
            match d.status {
                RunStatus::Failure => return RunStatus::Failure,
                RunStatus::NotRun => all_ok = false,
                RunStatus::Success => {}
            }
        }
        if all_ok && configured.iter().any(|(on, _)| *on) {
            RunStatus::Success
        } else {
            RunStatus::NotRun
        }
    }

    /// The later of the profile's and the mailbox's "process email from" dates.
    pub fn effective_process_from(&self, profile_from: Option<Timestamp>) -> Option<Timestamp> {
        self.process_email_from.max(profile_from)
    }

    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        if !validate::is_email_address(&self.email) {
            e.push(
                "invalid_email",
                "email",
                "enter an email address such as name@example.com",
            );
        }
        if self.incoming_method == IncomingMethod::ForwardMailbox {
            e.push(
                "forward_mailbox_not_available",
                "incoming_method",
                crate::settings::FORWARD_MAILBOX_NOT_AVAILABLE,
            );
        }
        if self.delete_after_processing && !(self.is_forward_mailbox || self.is_queue()) {
            e.push(
                "delete_not_allowed",
                "delete_after_processing",
                "only forward mailboxes and queue mailboxes may delete email after processing",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for f in &self.extra_folders {
            let name = f.trim();
            if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
                e.push(
                    "invalid_folder",
                    "extra_folders",
                    "enter folder names of 1 to 200 characters without control characters",
                );
            } else if name.eq_ignore_ascii_case("INBOX") {
                e.push(
                    "invalid_folder",
                    "extra_folders",
                    "the Inbox is always tracked: list only other folders",
                );
            } else if !seen.insert(name.to_owned()) {
                e.push(
                    "duplicate_folder",
                    "extra_folders",
                    "each folder may be listed once",
                );
            }
        }
        if self.extra_folders.len() > 20 {
            e.push(
                "too_many_folders",
                "extra_folders",
                "track at most 20 folders besides the Inbox",
            );
        }
        if self.is_queue() && self.act_method == ActMethod::ServerSideSync {
            e.push(
                "act_not_for_queues",
                "act_method",
                "appointments, contacts and tasks synchronize for user mailboxes only: set \
                 act_method to none",
            );
        }
        e.into_result()
    }
}

/// Checks that a profile can serve a mailbox (SPEC.md §5): the mailbox's location must fit
/// the profile type, and appointments, contacts and tasks need Exchange or CalDAV/CardDAV.
pub fn check_profile_fits(m: &Mailbox, p: &EmailServerProfile) -> Result<(), ValidationErrors> {
    let mut e = ValidationErrors::default();
    match (p.server_type, m.location) {
        (ServerType::ExchangeOnline, Some(MailboxLocation::ExchangeOnPremises)) => e.push(
            "exchange_online_mailbox_on_premises",
            "profile_id",
            "this mailbox is on an on-premises Exchange server: use an Exchange Server (hybrid) profile, not Exchange Online",
        ),
        (ServerType::ExchangeOnline, Some(MailboxLocation::ExternalServer)) => e.push(
            "exchange_online_mailbox_external",
            "profile_id",
            "this Exchange mailbox points to an external email server: use a POP3/SMTP (or IMAP/SMTP) profile for it",
        ),
        (ServerType::ExchangeServer | ServerType::ExchangeServerHybrid | ServerType::ImapSmtp | ServerType::Pop3Smtp, Some(MailboxLocation::ExchangeOnline)) => e.push(
            "exchange_online_mailbox_needs_online_profile",
            "profile_id",
            "this mailbox is in Exchange Online: use an Exchange Online profile",
        ),
        _ => {}
    }
    if m.act_method == ActMethod::ServerSideSync && !p.supports_act() {
        e.push(
            "act_not_supported_by_profile",
            "act_method",
            "appointments, contacts and tasks cannot be synchronized with POP3 or IMAP profiles unless a CalDAV/CardDAV \
             endpoint is configured on the profile: set act_method to none",
        );
    }
    e.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_mailboxes_take_the_defaults_and_status_follows_directions() {
        let org = OrgId::new();
        let mut s = EmailSettings::new(org);
        s.default_profile_id = Some(ProfileId::new());
        s.default_act = ActMethod::None;
        let now = chrono::Utc::now();
        let mut m = Mailbox::new_with_defaults(
            org,
            MailboxRegarding::User(UserId::new()),
            UserId::new(),
            "Ann",
            "ann@example.com",
            &s,
            now,
        );
        assert_eq!(m.profile_id, s.default_profile_id);
        assert!(m.needs_approval(&s));
        assert_eq!(m.overall_status(), RunStatus::NotRun);
        m.incoming.status = RunStatus::Success;
        assert_eq!(m.overall_status(), RunStatus::NotRun);
        m.outgoing.status = RunStatus::Success;
        assert_eq!(m.overall_status(), RunStatus::Success);
        m.outgoing.status = RunStatus::Failure;
        assert_eq!(m.overall_status(), RunStatus::Failure);
        m.approval = ApprovalStatus::Approved;
        assert!(!m.needs_approval(&s));
        let later = now + chrono::Duration::days(1);
        m.process_email_from = Some(now);
        assert_eq!(m.effective_process_from(Some(later)), Some(later));
        assert_eq!(m.effective_process_from(None), Some(now));
    }
}
