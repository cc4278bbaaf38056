//! CRM records: accounts, contacts, leads, activities (email, appointment, task) and queue items.

use crate::{
    AccountId, ActivityId, AttachmentId, ContactId, ItemId, LeadId, MailboxId, OrgId, QueueId,
    QueueItemId, UserId,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A reference to any record that can be a party or a "regarding" record.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum RecordRef {
    User(UserId),
    Queue(QueueId),
    Contact(ContactId),
    Account(AccountId),
    Lead(LeadId),
    Activity(ActivityId),
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub org_id: OrgId,
    pub name: String,
    pub emails: Vec<String>,
    pub owner_id: UserId,
    pub created_at: DateTime<Utc>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub id: ContactId,
    pub org_id: OrgId,
    pub full_name: String,
    pub emails: Vec<String>,
    pub account_id: Option<AccountId>,
    /// The company the person works for, as written on their card.
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub job_title: Option<String>,
    /// Telephone numbers, in order.
    #[serde(default)]
    pub phones: Vec<String>,
    pub owner_id: UserId,
    pub created_at: DateTime<Utc>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lead {
    pub id: LeadId,
    pub org_id: OrgId,
    pub full_name: String,
    pub company: Option<String>,
    pub emails: Vec<String>,
    pub owner_id: UserId,
    pub created_at: DateTime<Utc>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Incoming,
    Outgoing,
}

/// Email activity status (REFERENCE.md part A "Outgoing email").
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailStatus {
    Draft,
    Completed,
    Sent,
    Received,
    Canceled,
    PendingSend,
    Sending,
    Failed,
    /// Left in "sending" by a worker that died, and the outcome could not be found out: a person
    /// decides; serversync never sends it again by itself.
    OutcomeUnknown,
}

impl EmailStatus {
    /// Whether the activity is still open (failed stays open, as in the reference).
    pub fn is_open(self) -> bool {
        matches!(
            self,
            EmailStatus::Draft
                | EmailStatus::PendingSend
                | EmailStatus::Sending
                | EmailStatus::Failed
                | EmailStatus::OutcomeUnknown
        )
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartyRole {
    From,
    To,
    Cc,
    Bcc,
}

/// One participant of an activity: an address, resolved to a record when possible.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivityParty {
    pub role: PartyRole,
    pub address: String,
    pub display_name: Option<String>,
    /// `None`: unresolved (kept as the plain address).
    pub resolved: Option<RecordRef>,
}

/// An attachment, stored once by content hash.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: AttachmentId,
    pub file_name: String,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    /// Set when the bytes were dropped (for example over the size limit); the reason is kept.
    pub dropped_reason: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmailActivity {
    pub id: ActivityId,
    pub org_id: OrgId,
    pub subject: String,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub direction: Direction,
    pub status: EmailStatus,
    pub owner_id: UserId,
    pub parties: Vec<ActivityParty>,
    pub attachments: Vec<Attachment>,
    pub regarding: Option<RecordRef>,
    pub tracking_token: Option<String>,
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    /// For a message without a Message-ID: SHA-256 (hex) over its sender, recipients, subject,
    /// date and body, so the same message seen by several mailboxes is still one activity.
    #[serde(default)]
    pub content_key: Option<String>,
    /// Conversation (thread) the activity belongs to.
    pub conversation_id: Option<String>,
    /// Mailboxes through which the message was seen (one activity, many links).
    pub mailbox_ids: Vec<MailboxId>,
    /// The stored messages (mail items) this activity was made from or linked to.
    #[serde(default)]
    pub item_ids: Vec<ItemId>,
    pub sent_at: Option<DateTime<Utc>>,
    pub received_at: Option<DateTime<Utc>>,
    pub send_after: Option<DateTime<Utc>>,
    pub delivery_attempts: u32,
    /// Why the last send attempt failed or its outcome is unknown (the server's reply, or
    /// the reason), for the person who decides what to do.
    #[serde(default)]
    pub send_error: Option<String>,
    /// Held by an Email Router (outgoing method "email router") that claimed the email for
    /// sending: it reports the result with the claim's id before `until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_claim: Option<RouterClaim>,
    /// What happened on the way out that a person may want to know: throttling waited out,
    /// a Sent Items check after a crash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub send_trace: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An Email Router's hold on an email it is sending.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterClaim {
    pub id: String,
    pub until: DateTime<Utc>,
}

/// An email handed to an Email Router.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterSend {
    /// Report the result with this id before `claim_until`.
    pub claim_id: String,
    pub claim_until: DateTime<Utc>,
    /// Envelope sender and recipients.
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// The complete message (RFC 5322), base64.
    pub message_base64: String,
    pub activity: EmailActivity,
}

/// A recipient of a composed email: a plain address, or a CRM record whose primary email
/// address is used (and which becomes the resolved party).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Recipient {
    Address(String),
    Record(RecordRef),
}

/// A file attached to a composed email.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAttachment {
    pub file_name: String,
    /// Default: application/octet-stream.
    #[serde(default)]
    pub content_type: Option<String>,
    /// The file's bytes, base64 (standard alphabet, padded).
    pub content_base64: String,
}

/// An email to compose (and send) from a user's or a queue's mailbox.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEmail {
    /// The mailbox it is sent from: the caller's own, another user's (needs the "send as
    /// another user" privilege and that user's consent) or a queue's (needs read access to the
    /// queue).
    pub from_mailbox: MailboxId,
    #[serde(default)]
    pub to: Vec<Recipient>,
    #[serde(default)]
    pub cc: Vec<Recipient>,
    #[serde(default)]
    pub bcc: Vec<Recipient>,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
    #[serde(default)]
    pub attachments: Vec<NewAttachment>,
    #[serde(default)]
    pub regarding: Option<RecordRef>,
    /// Send later: the email waits in pending send until then (at most 365 days ahead).
    #[serde(default)]
    pub send_after: Option<DateTime<Utc>>,
    /// Keep it as a draft (status draft) instead of sending.
    #[serde(default)]
    pub draft: bool,
    /// The email activity this one answers: In-Reply-To/References, conversation and (unless
    /// given) the regarding record follow it.
    #[serde(default)]
    pub in_reply_to: Option<ActivityId>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityState {
    Open,
    Completed,
    Canceled,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appointment {
    pub id: ActivityId,
    pub org_id: OrgId,
    pub subject: String,
    pub location: Option<String>,
    pub description: Option<String>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub all_day: bool,
    pub organizer: Option<ActivityParty>,
    pub attendees: Vec<ActivityParty>,
    pub owner_id: UserId,
    pub regarding: Option<RecordRef>,
    pub state: ActivityState,
    /// iCalendar UID, shared with the mail system.
    pub ical_uid: Option<String>,
    /// The time zone the meeting was planned in (IANA name), kept so that a server showing
    /// local times shows the organizer's.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// For a recurring series: the rule and its exceptions.
    #[serde(default)]
    pub recurrence: Option<Recurrence>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A recurring appointment's rule and its exceptions.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recurrence {
    /// The iCalendar RRULE value (`FREQ=WEEKLY;COUNT=10`).
    pub rule: String,
    /// Cancelled occurrences (their original start).
    #[serde(default)]
    pub cancelled: Vec<DateTime<Utc>>,
    /// Occurrences that differ from the series (moved, renamed).
    #[serde(default)]
    pub changed: Vec<Occurrence>,
}

/// One occurrence of a series that differs from it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Occurrence {
    /// The occurrence's original start (iCalendar RECURRENCE-ID).
    pub original_start: DateTime<Utc>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub subject: Option<String>,
    pub location: Option<String>,
    pub description: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: ActivityId,
    pub org_id: OrgId,
    pub subject: String,
    pub description: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub percent_complete: u8,
    pub owner_id: UserId,
    pub regarding: Option<RecordRef>,
    pub state: ActivityState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An activity placed in a queue for someone to work on.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub id: QueueItemId,
    pub org_id: OrgId,
    pub queue_id: QueueId,
    pub activity_id: ActivityId,
    pub worker_id: Option<UserId>,
    pub entered_at: DateTime<Utc>,
}

impl EmailActivity {
    /// What makes the message one activity per organization: its Message-ID, or for a message
    /// without one `sha256:` and its content key. The store indexes it as `message_id`.
    pub fn dedupe_key(&self) -> Option<String> {
        dedupe_key(self.message_id.as_deref(), self.content_key.as_deref())
    }

    /// Outgoing work the engine has to do on this email, as the mailbox it is sent from and
    /// the time it is due: an email in pending send is due at its `send_after` (else at
    /// once); one in sending is due when its Email Router claim runs out (else at once: a
    /// sender that finds it there was stopped mid-send). `None` for every other email. The
    /// store indexes both, so due work is found per mailbox without reading what waits.
    pub fn send_due(&self) -> Option<(MailboxId, DateTime<Utc>)> {
        if self.direction != Direction::Outgoing {
            return None;
        }
        let at = match self.status {
            EmailStatus::PendingSend => self.send_after.unwrap_or(self.created_at),
            EmailStatus::Sending => self
                .router_claim
                .as_ref()
                .map_or(self.created_at, |c| c.until),
            _ => return None,
        };
        Some((*self.mailbox_ids.first()?, at))
    }
}

/// See [`EmailActivity::dedupe_key`].
pub fn dedupe_key(message_id: Option<&str>, content_key: Option<&str>) -> Option<String> {
    message_id
        .map(str::to_owned)
        .or_else(|| content_key.map(|k| format!("sha256:{k}")))
}
