//! Typed identifiers. Every id is a UUID (v7, so ids sort by creation time); the type says what
//! it identifies so a mailbox id cannot be passed where a profile id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! typed_id {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::openapi::uuid_schema()
            }
        }
        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    )*};
}

typed_id! {
    /// An organization (an environment of the installation).
    OrgId;
    /// A CRM user.
    UserId;
    /// A CRM queue (shared mailbox such as support@).
    QueueId;
    /// A security role.
    RoleId;
    /// An email server profile.
    ProfileId;
    /// A mailbox (one per user and per queue).
    MailboxId;
    /// An account (company).
    AccountId;
    /// A contact (person).
    ContactId;
    /// A lead.
    LeadId;
    /// An activity: email, appointment or task.
    ActivityId;
    /// A queue item.
    QueueItemId;
    /// An attachment.
    AttachmentId;
    /// An alert.
    AlertId;
    /// An asynchronous job.
    JobId;
    /// A stored, encrypted secret.
    SecretId;
    /// An API token.
    TokenId;
    /// A message seen in a mailbox (one item-level record).
    ItemId;
    /// A webhook endpoint.
    WebhookId;
}
