//! Per-mailbox synchronization state and work ownership.

use crate::webhook::RecordType;
use crate::{MailboxId, OrgId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Where synchronization of one folder stands, in the form its protocol needs. Advanced only
/// over committed work.
///
/// Stored as JSON with a `kind` tag (`imap`, `pop3`, `server_token`). Rows written before the
/// cursor was typed (an untagged IMAP-shaped object with a catch-all `sync_token`) still read:
/// see [`FolderCursor`]'s `Deserialize`, which is also what keeps a row written by an older
/// worker still running during an upgrade readable.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FolderCursor {
    /// IMAP: UIDVALIDITY, the last committed UID and HIGHESTMODSEQ.
    Imap(ImapCursor),
    /// POP3 keeps no position: what was seen is the set of items stored as `pop3:<uidl>`
    /// (`Store::item_decisions`), so its cursor is only a marker that the folder is POP3's.
    Pop3,
    /// An opaque token the server hands out to resume from: EWS `SyncState`, a Microsoft Graph
    /// delta link, a WebDAV `sync-token` (CalDAV/CardDAV collection). The mailbox's protocol
    /// says which; only that protocol's syncer reads it.
    ServerToken(ServerTokenCursor),
}

/// The position of an IMAP folder.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ImapCursor {
    /// IMAP UIDVALIDITY.
    pub uid_validity: Option<u32>,
    /// Highest UID whose message is committed.
    pub last_uid: Option<u32>,
    /// CONDSTORE/QRESYNC HIGHESTMODSEQ covered by committed work.
    pub highest_modseq: Option<u64>,
    /// Received date of the newest processed message (the reference's cursor).
    pub last_received_at: Option<DateTime<Utc>>,
    /// UIDVALIDITY changes in a row without a stable folder in between.
    pub uid_validity_changes: u32,
}

/// The position of a folder or collection whose server hands out a resume token.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerTokenCursor {
    /// The token exactly as the server sent it (never interpreted).
    pub token: String,
}

impl FolderCursor {
    /// The IMAP position, when this is an IMAP cursor.
    pub fn imap(&self) -> Option<&ImapCursor> {
        match self {
            FolderCursor::Imap(c) => Some(c),
            _ => None,
        }
    }

    /// Like [`FolderCursor::imap`], by value.
    pub fn into_imap(self) -> Option<ImapCursor> {
        match self {
            FolderCursor::Imap(c) => Some(c),
            _ => None,
        }
    }

    /// The server's token, when this is a token cursor.
    pub fn server_token(&self) -> Option<&str> {
        match self {
            FolderCursor::ServerToken(c) => Some(&c.token),
            _ => None,
        }
    }

    /// The `kind` tag as stored (`imap`, `pop3`, `server_token`), for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            FolderCursor::Imap(_) => "imap",
            FolderCursor::Pop3 => "pop3",
            FolderCursor::ServerToken(_) => "server_token",
        }
    }
}

impl From<ImapCursor> for FolderCursor {
    fn from(c: ImapCursor) -> Self {
        FolderCursor::Imap(c)
    }
}

impl From<&ImapCursor> for FolderCursor {
    fn from(c: &ImapCursor) -> Self {
        FolderCursor::Imap(c.clone())
    }
}

impl From<&FolderCursor> for FolderCursor {
    fn from(c: &FolderCursor) -> Self {
        c.clone()
    }
}

/// The stored (tagged) form.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum TaggedCursor {
    Imap(ImapCursor),
    Pop3,
    ServerToken(ServerTokenCursor),
}

/// The form written before the cursor was typed: IMAP's fields plus a catch-all token, every
/// field optional. Only IMAP ever wrote it (the token was never set); a row holding nothing but
/// a token reads as a token cursor.
#[derive(Deserialize)]
#[serde(default)]
#[derive(Default)]
struct LegacyCursor {
    uid_validity: Option<u32>,
    last_uid: Option<u32>,
    highest_modseq: Option<u64>,
    sync_token: Option<String>,
    last_received_at: Option<DateTime<Utc>>,
    uid_validity_changes: u32,
}

impl<'de> Deserialize<'de> for FolderCursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = serde_json::Value::deserialize(d)?;
        if v.get("kind").is_some() {
            return Ok(
                match TaggedCursor::deserialize(v).map_err(D::Error::custom)? {
                    TaggedCursor::Imap(c) => FolderCursor::Imap(c),
                    TaggedCursor::Pop3 => FolderCursor::Pop3,
                    TaggedCursor::ServerToken(c) => FolderCursor::ServerToken(c),
                },
            );
        }
        let old = LegacyCursor::deserialize(v).map_err(D::Error::custom)?;
        let imap = ImapCursor {
            uid_validity: old.uid_validity,
            last_uid: old.last_uid,
            highest_modseq: old.highest_modseq,
            last_received_at: old.last_received_at,
            uid_validity_changes: old.uid_validity_changes,
        };
        Ok(match old.sync_token {
            Some(token) if imap == ImapCursor::default() => {
                FolderCursor::ServerToken(ServerTokenCursor { token })
            }
            _ => FolderCursor::Imap(imap),
        })
    }
}

/// Who last moved a synchronized record between CRM and server.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncDirection {
    /// The CRM record was written to the server.
    ToServer,
    /// The server's item was written into the CRM record.
    FromServer,
}

/// The link between a CRM record (appointment, contact, task, …) and its copy on the server of
/// one mailbox (an EWS item, a Graph event/contact/task, a CalDAV/CardDAV resource), as a
/// two-way syncer keeps it: at most one link per record per mailbox and one per remote id per
/// mailbox. The record and the mailbox belong to `org_id`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteLink {
    pub org_id: OrgId,
    pub mailbox_id: MailboxId,
    pub record_type: RecordType,
    /// The CRM record's id (as in the change feed's `record_id`).
    pub record_id: String,
    /// The server's id: EWS ItemId, Graph id, DAV resource href.
    pub remote_id: String,
    /// The server's version of the item when last synced: EWS ChangeKey, ETag.
    pub version_tag: Option<String>,
    /// SHA-256 (hex) of the synchronized values as last written either way, to tell a real
    /// change from an echo.
    pub synced_hash: String,
    /// The synchronized values both sides held after the last synchronization: the base of the
    /// next three-way comparison (`model::merge::three_way`).
    #[serde(default)]
    pub synced_values: serde_json::Map<String, serde_json::Value>,
    /// Which way the last synchronization went.
    pub direction: SyncDirection,
}

impl RemoteLink {
    /// What is wrong with the link before it is stored (each problem with its field).
    pub fn validate(&self) -> Result<(), crate::ValidationErrors> {
        let mut errs = crate::ValidationErrors::default();
        if self.record_id.trim().is_empty() {
            errs.push("required", "record_id", "the CRM record's id is required");
        }
        if self.remote_id.trim().is_empty() {
            errs.push(
                "required",
                "remote_id",
                "the server's id of the item is required",
            );
        }
        if self.remote_id.len() > 2048 {
            errs.push(
                "too_long",
                "remote_id",
                "the server's id is longer than 2048 characters",
            );
        }
        let hex =
            self.synced_hash.len() == 64 && self.synced_hash.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex {
            errs.push(
                "invalid",
                "synced_hash",
                "synced_hash must be a SHA-256 in hex (64 characters)",
            );
        }
        errs.into_result()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_cursors_round_trip_with_their_kind() {
        let imap = FolderCursor::Imap(ImapCursor {
            uid_validity: Some(7),
            last_uid: Some(42),
            highest_modseq: Some(9001),
            last_received_at: None,
            uid_validity_changes: 1,
        });
        let token = FolderCursor::ServerToken(ServerTokenCursor {
            token: "https://graph.microsoft.com/v1.0/me/mailFolders/inbox/messages/delta?$deltatoken=abc".into(),
        });
        for (c, kind) in [
            (imap, "imap"),
            (FolderCursor::Pop3, "pop3"),
            (token, "server_token"),
        ] {
            let v = serde_json::to_value(&c).unwrap();
            assert_eq!(v["kind"], kind, "{v}");
            assert_eq!(c.kind(), kind);
            assert_eq!(serde_json::from_value::<FolderCursor>(v).unwrap(), c);
        }
    }

    /// A row written before the cursor was typed: the IMAP fields, no `kind`.
    #[test]
    fn the_untyped_imap_shape_reads_as_an_imap_cursor() {
        let old = json!({
            "uid_validity": 1234,
            "last_uid": 99,
            "highest_modseq": 555,
            "sync_token": null,
            "last_received_at": "2026-01-02T03:04:05Z",
            "uid_validity_changes": 2
        });
        let c: FolderCursor = serde_json::from_value(old).unwrap();
        let imap = c.imap().expect("an IMAP cursor");
        assert_eq!(imap.uid_validity, Some(1234));
        assert_eq!(imap.last_uid, Some(99));
        assert_eq!(imap.highest_modseq, Some(555));
        assert_eq!(imap.uid_validity_changes, 2);
        assert_eq!(
            imap.last_received_at.map(|t| t.to_rfc3339()),
            Some("2026-01-02T03:04:05+00:00".into())
        );
        // Partial rows (serde defaults) read too.
        let c: FolderCursor = serde_json::from_value(json!({"last_uid": 5})).unwrap();
        assert_eq!(c.into_imap().unwrap().last_uid, Some(5));
        let c: FolderCursor = serde_json::from_value(json!({})).unwrap();
        assert_eq!(c, FolderCursor::Imap(ImapCursor::default()));
        // Only a token: a token cursor.
        let c: FolderCursor = serde_json::from_value(json!({"sync_token": "S1"})).unwrap();
        assert_eq!(c.server_token(), Some("S1"));
    }

    #[test]
    fn a_malformed_cursor_is_an_error_naming_the_problem() {
        let e = serde_json::from_value::<FolderCursor>(json!({"kind": "server_token"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("token"), "{e}");
        let e = serde_json::from_value::<FolderCursor>(json!({"kind": "nntp"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nntp"), "{e}");
        let e = serde_json::from_value::<FolderCursor>(json!({"last_uid": "many"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn a_remote_link_is_validated_field_by_field() {
        let link = RemoteLink {
            org_id: OrgId::new(),
            mailbox_id: MailboxId::new(),
            record_type: RecordType::Appointment,
            record_id: String::new(),
            remote_id: " ".into(),
            version_tag: None,
            synced_hash: "abc".into(),
            synced_values: Default::default(),
            direction: SyncDirection::ToServer,
        };
        let e = link.validate().unwrap_err();
        let fields: Vec<&str> = e.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["record_id", "remote_id", "synced_hash"]);
        let ok = RemoteLink {
            record_id: "r".into(),
            remote_id: "AAMkAD…".into(),
            synced_hash: "a".repeat(64),
            synced_values: Default::default(),
            ..link
        };
        assert!(ok.validate().is_ok());
        assert_eq!(
            serde_json::to_value(SyncDirection::FromServer).unwrap(),
            "from_server"
        );
    }
}
