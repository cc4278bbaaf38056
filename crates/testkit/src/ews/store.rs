//! The double's mailboxes: folders, items, a change log per mailbox (the source of
//! SyncFolderItems answers) and subscriptions (the source of GetEvents / GetStreamingEvents).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};

use super::xml::Node;

/// Distinguished folders every mailbox has below msgfolderroot: (distinguished id, display
/// name, folder class).
pub const STANDARD_FOLDERS: &[(&str, &str, &str)] = &[
    ("inbox", "Inbox", "IPF.Note"),
    ("sentitems", "Sent Items", "IPF.Note"),
    ("drafts", "Drafts", "IPF.Note"),
    ("deleteditems", "Deleted Items", "IPF.Note"),
    ("outbox", "Outbox", "IPF.Note"),
    ("junkemail", "Junk Email", "IPF.Note"),
    ("calendar", "Calendar", "IPF.Appointment"),
    ("contacts", "Contacts", "IPF.Contact"),
    ("tasks", "Tasks", "IPF.Task"),
];

#[derive(Debug, Clone)]
pub struct Folder {
    pub id: String,
    pub change_key: u64,
    pub parent: Option<String>,
    pub display_name: String,
    pub distinguished: Option<String>,
    pub folder_class: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub version: u64,
    pub folder: String,
    pub mime: Vec<u8>,
    pub is_read: bool,
    pub subject: String,
    pub internet_message_id: Option<String>,
    pub received: DateTime<Utc>,
    pub order: u64,
    /// A calendar item, contact, task or distribution list (`None`: a message, whose content
    /// is `mime`).
    pub pim: Option<Pim>,
    /// When it last changed (`LastModifiedTime`).
    pub modified: DateTime<Utc>,
}

/// The properties of an item that is not a message: the elements as a client sent them (and
/// as the server completed them), in any order (rendered in the schema's).
#[derive(Debug, Clone)]
pub struct Pim {
    /// The item's element: `CalendarItem`, `Contact`, `Task`, `DistributionList`.
    pub kind: String,
    /// Property elements by local name (`Subject`, `Start`, `EmailAddresses`, …), one each.
    pub fields: Vec<Node>,
    /// `ExtendedProperty` elements, one per property.
    pub extended: Vec<Node>,
}

impl Pim {
    /// The property element `name`.
    pub fn field(&self, name: &str) -> Option<&Node> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Sets (replaces) a property element.
    pub fn put(&mut self, node: Node) {
        match self.fields.iter_mut().find(|f| f.name == node.name) {
            Some(f) => *f = node,
            None => self.fields.push(node),
        }
    }

    /// Removes a property element.
    pub fn remove(&mut self, name: &str) {
        self.fields.retain(|f| f.name != name);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Create,
    Update,
    ReadFlag,
    Delete,
}

#[derive(Debug, Clone)]
pub struct Change {
    pub seq: u64,
    pub folder: String,
    pub item: String,
    pub kind: ChangeKind,
}

#[derive(Debug)]
pub struct Mailbox {
    pub smtp: String,
    pub display_name: String,
    pub owner: Option<String>,
    pub folders: Vec<Folder>,
    pub items: BTreeMap<String, Item>,
    pub log: Vec<Change>,
    /// Folders created after the mailbox: (change sequence, folder id), for SyncFolderHierarchy.
    pub folder_log: Vec<(u64, String)>,
}

/// An event queued for a subscription.
#[derive(Debug, Clone)]
pub struct Event {
    pub kind: &'static str,
    pub watermark: u64,
    pub time: DateTime<Utc>,
    pub item: Option<(String, String)>,
    pub folder: (String, String),
    pub old_item: Option<(String, String)>,
    pub old_folder: Option<(String, String)>,
}

#[derive(Debug)]
pub struct Subscription {
    pub mailbox: String,
    /// `None`: all folders.
    pub folders: Option<Vec<String>>,
    pub event_types: Vec<String>,
    pub streaming: bool,
    pub queue: Vec<Event>,
    pub wake: Arc<tokio::sync::Notify>,
    /// The watermark of the last event the client acknowledged (pull).
    pub acked: u64,
}

pub fn new_id(prefix: &str, n: u64, mailbox: &str) -> String {
    let raw = format!("{prefix}:{n}:{mailbox}:{}", uuid::Uuid::new_v4().simple());
    let mut id = String::from("AAMkA");
    id.push_str(&B64.encode(raw.as_bytes()));
    id
}

pub fn change_key(prefix: &str, version: u64) -> String {
    format!("CQAAABYAAA{}", B64.encode(format!("{prefix}{version:08}")))
}

/// Reads a header of a MIME message (unfolded, first occurrence, raw).
pub fn mime_header(mime: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(mime);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("");
    let mut value: Option<String> = None;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(v) = value.as_mut() {
            if line.starts_with([' ', '\t']) {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

/// Every header field of a MIME message, unfolded, in order (`InternetMessageHeaders`).
pub fn mime_headers(mime: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(mime);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = out.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

impl Mailbox {
    pub fn new(smtp: &str, owner: Option<&str>, counter: &mut u64) -> Mailbox {
        let mut next = || {
            *counter += 1;
            *counter
        };
        let mailbox_root = new_id("folder", next(), smtp);
        let root_id = new_id("folder", next(), smtp);
        let mut folders = vec![Folder {
            id: mailbox_root.clone(),
            change_key: 1,
            parent: None,
            display_name: String::new(),
            distinguished: Some("root".into()),
            folder_class: None,
        }];
        folders.push(Folder {
            id: root_id.clone(),
            change_key: 1,
            parent: Some(mailbox_root),
            display_name: "Top of Information Store".into(),
            distinguished: Some("msgfolderroot".into()),
            folder_class: Some("IPF.Note".into()),
        });
        for (dist, name, class) in STANDARD_FOLDERS {
            folders.push(Folder {
                id: new_id("folder", next(), smtp),
                change_key: 1,
                parent: Some(root_id.clone()),
                display_name: (*name).into(),
                distinguished: Some((*dist).into()),
                folder_class: Some((*class).into()),
            });
        }
        let local = smtp.split('@').next().unwrap_or(smtp);
        Mailbox {
            smtp: smtp.to_string(),
            display_name: local.to_string(),
            owner: owner.map(str::to_string),
            folders,
            items: BTreeMap::new(),
            log: Vec::new(),
            folder_log: Vec::new(),
        }
    }

    /// A folder by distinguished id, folder id or display name (case-insensitive).
    pub fn folder(&self, key: &str) -> Option<&Folder> {
        self.folders
            .iter()
            .find(|f| f.distinguished.as_deref() == Some(key) || f.id == key)
            .or_else(|| {
                self.folders
                    .iter()
                    .find(|f| f.display_name.eq_ignore_ascii_case(key))
            })
    }

    pub fn folder_by_id(&self, id: &str) -> Option<&Folder> {
        self.folders.iter().find(|f| f.id == id)
    }

    pub fn items_in<'a>(&'a self, folder: &'a str) -> impl Iterator<Item = &'a Item> + 'a {
        self.items.values().filter(move |i| i.folder == folder)
    }
}

/// SyncState: opaque to the client; base64 of `ssd1|folder id|change sequence`.
pub fn encode_sync_state(folder: &str, seq: u64) -> String {
    B64.encode(format!("ssd1|{folder}|{seq}"))
}

/// Decodes a SyncState for `folder`; `None` if it is not one of ours or is for another folder.
pub fn decode_sync_state(state: &str, folder: &str) -> Option<u64> {
    decode_state("ssd1", state, folder)
}

/// SyncFolderHierarchy's SyncState: base64 of `shd1|root folder id|change sequence`.
pub fn encode_hierarchy_state(root: &str, seq: u64) -> String {
    B64.encode(format!("shd1|{root}|{seq}"))
}

/// Decodes a SyncFolderHierarchy SyncState for the hierarchy under `root`.
pub fn decode_hierarchy_state(state: &str, root: &str) -> Option<u64> {
    decode_state("shd1", state, root)
}

fn decode_state(kind: &str, state: &str, folder: &str) -> Option<u64> {
    let raw = B64.decode(state.trim()).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let mut parts = raw.splitn(3, '|');
    if parts.next()? != kind || parts.next()? != folder {
        return None;
    }
    parts.next()?.parse().ok()
}

impl Mailbox {
    /// Every folder below `root` (not `root` itself), parents before children.
    pub fn descendants(&self, root: &str) -> Vec<&Folder> {
        let mut out = Vec::new();
        let mut queue = vec![root.to_string()];
        while let Some(p) = queue.pop() {
            for f in self
                .folders
                .iter()
                .filter(|f| f.parent.as_deref() == Some(p.as_str()))
            {
                out.push(f);
                queue.push(f.id.clone());
            }
        }
        out
    }
}

/// Watermark: base64 of `wm1|sequence`.
pub fn encode_watermark(seq: u64) -> String {
    B64.encode(format!("wm1|{seq}"))
}

/// Decodes a watermark.
pub fn decode_watermark(w: &str) -> Option<u64> {
    let raw = String::from_utf8(B64.decode(w.trim()).ok()?).ok()?;
    raw.strip_prefix("wm1|")?.parse().ok()
}

/// All subscriptions by id.
pub type Subscriptions = HashMap<String, Subscription>;
