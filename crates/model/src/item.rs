//! Item-level records: every message seen in a mailbox, with where it came from, its parsed
//! headers, and the decision taken about it (stored / skipped because … / failed because …).
//! Nothing is lost: a message that cannot be processed is kept raw with the reason.

use crate::{ItemId, MailboxId, OrgId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where a message came from; identifies it within its mailbox.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ItemSource {
    Imap {
        folder: String,
        uid_validity: u32,
        uid: u32,
    },
    Pop3 {
        uidl: String,
    },
    /// Exchange Web Services: the folder it was found in and its `ItemId` (unique within the
    /// mailbox; EWS gives an item a new id when it moves to another folder).
    Ews {
        folder: String,
        item_id: String,
    },
    /// Microsoft Graph: the folder it was found in and the message's id (asked for as an
    /// immutable id, which a move does not change).
    Graph {
        folder: String,
        id: String,
    },
    /// Email Router intake: an MTA over LMTP, or `serversync deliver`.
    Router {
        via: String,
    },
}

impl ItemSource {
    /// The key that makes a message unique within its mailbox: `imap:<folder>:<uidvalidity>:<uid>`,
    /// `pop3:<uidl>`, `ews:<ItemId>`, `graph:<id>`, `router:<sha256>`. For router intake the
    /// content hash is the key, so the same message handed in twice is kept once.
    pub fn key(&self, sha256: &str) -> String {
        match self {
            ItemSource::Imap {
                folder,
                uid_validity,
                uid,
            } => format!("imap:{folder}:{uid_validity}:{uid}"),
            ItemSource::Pop3 { uidl } => format!("pop3:{uidl}"),
            ItemSource::Ews { item_id, .. } => format!("ews:{item_id}"),
            ItemSource::Graph { id, .. } => format!("graph:{id}"),
            ItemSource::Router { .. } => format!("router:{sha256}"),
        }
    }

    /// Where the message is within its folder, for traces: `UID 7`, `UIDL 0000abc`, `item
    /// AAMk…`, or `via lmtp`.
    pub fn position(&self) -> String {
        match self {
            ItemSource::Imap { uid, .. } => format!("UID {uid}"),
            ItemSource::Pop3 { uidl } => format!("UIDL {uidl}"),
            ItemSource::Ews { item_id, .. } => format!("item {item_id}"),
            ItemSource::Graph { id, .. } => format!("message {id}"),
            ItemSource::Router { via } => format!("via {via}"),
        }
    }

    /// The folder it was found in, for sources that have folders.
    pub fn folder(&self) -> Option<&str> {
        match self {
            ItemSource::Imap { folder, .. }
            | ItemSource::Ews { folder, .. }
            | ItemSource::Graph { folder, .. } => Some(folder),
            ItemSource::Pop3 { .. } | ItemSource::Router { .. } => None,
        }
    }

    /// The numbering its position belongs to, where the server renumbers folders (IMAP
    /// UIDVALIDITY).
    pub fn numbering(&self) -> Option<u32> {
        match self {
            ItemSource::Imap { uid_validity, .. } => Some(*uid_validity),
            _ => None,
        }
    }
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemDecision {
    /// Stored durably (and handed on to CRM processing).
    Stored,
    /// Deliberately not processed; the reason says why.
    Skipped,
    /// Could not be processed; the raw message is kept and the reason says why.
    Failed,
}

/// An attachment of a stored message.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemAttachment {
    pub file_name: Option<String>,
    pub content_type: String,
    pub size: u64,
    /// SHA-256 of the content, hex; the bytes are stored once under it unless dropped.
    pub sha256: String,
    /// Why the bytes were not kept (over the attachment size limit…).
    pub dropped_reason: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MailItem {
    pub id: ItemId,
    pub org_id: OrgId,
    pub mailbox_id: MailboxId,
    pub source: ItemSource,
    pub source_key: String,
    /// Message-ID without angle brackets.
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    /// The Date header.
    pub sent_at: Option<DateTime<Utc>>,
    /// When the server received it (IMAP INTERNALDATE), or when it was handed in.
    pub received_at: DateTime<Utc>,
    pub size: u64,
    /// SHA-256 of the raw message, hex; `raw_kept` says whether its bytes are stored.
    pub raw_sha256: String,
    pub raw_kept: bool,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<ItemAttachment>,
    pub decision: ItemDecision,
    /// The decision trace, in order: what was found and why the decision was taken.
    pub trace: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_source_has_its_key_and_round_trips() {
        let cases = [
            (
                ItemSource::Imap {
                    folder: "INBOX".into(),
                    uid_validity: 3,
                    uid: 17,
                },
                "imap",
                "imap:INBOX:3:17",
            ),
            (ItemSource::Pop3 { uidl: "u1".into() }, "pop3", "pop3:u1"),
            (
                ItemSource::Ews {
                    folder: "Inbox".into(),
                    item_id: "AAMkADk0=".into(),
                },
                "ews",
                "ews:AAMkADk0=",
            ),
            (
                ItemSource::Graph {
                    folder: "inbox".into(),
                    id: "AQMkAGI2".into(),
                },
                "graph",
                "graph:AQMkAGI2",
            ),
            (
                ItemSource::Router { via: "lmtp".into() },
                "router",
                "router:ffee",
            ),
        ];
        for (source, tag, key) in &cases {
            assert_eq!(source.key("ffee"), *key);
            let v = serde_json::to_value(source).unwrap();
            assert_eq!(v["type"], *tag, "{v}");
            assert_eq!(&serde_json::from_value::<ItemSource>(v).unwrap(), source);
        }
        // Where it is, for traces and for re-mapping a renumbered folder.
        let imap = &cases[0].0;
        assert_eq!(
            (imap.folder(), imap.numbering(), imap.position().as_str()),
            (Some("INBOX"), Some(3), "UID 17")
        );
        let pop3 = &cases[1].0;
        assert_eq!(
            (pop3.folder(), pop3.numbering(), pop3.position().as_str()),
            (None, None, "UIDL u1")
        );
        assert_eq!(cases[2].0.folder(), Some("Inbox"));
        assert_eq!(cases[2].0.numbering(), None);
    }
}
