//! Mailboxes and the mail routes: users, mailboxSettings, mailFolders, messages (get, list,
//! `$filter` by internetMessageId, patch, delete, `$value`, move), message delta and sendMail.

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, Method};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

use super::{Caller, DoubleState, Reply, Schema, Shared, gerr, lock, subs};

/// Well-known folder names and their display names.
const WELL_KNOWN: [(&str, &str); 7] = [
    ("inbox", "Inbox"),
    ("sentitems", "Sent Items"),
    ("drafts", "Drafts"),
    ("deleteditems", "Deleted Items"),
    ("junkemail", "Junk Email"),
    ("archive", "Archive"),
    ("outbox", "Outbox"),
];

const READ_ROLES: [&str; 2] = ["Mail.Read", "Mail.ReadWrite"];
const WRITE_ROLES: [&str; 1] = ["Mail.ReadWrite"];

#[derive(Debug, Clone)]
pub(super) struct Folder {
    pub id: String,
    pub well_known: Option<&'static str>,
    pub display_name: String,
    pub parent: String,
}

#[derive(Debug, Clone)]
pub(super) struct Msg {
    pub id: String,
    pub folder: String,
    pub mime: Vec<u8>,
    pub is_read: bool,
    pub version: u64,
    pub order: u64,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub subject: String,
    pub internet_message_id: Option<String>,
}

impl Msg {
    pub fn change_key(&self) -> String {
        B64.encode(format!(
            "CQAAABYAAA{}{:06}",
            &self.id[self.id.len() - 6..],
            self.version
        ))
    }
}

#[derive(Debug, Clone)]
pub(super) struct Mailbox {
    pub user_id: String,
    pub tenant: String,
    pub address: String,
    pub display_name: String,
    pub on_prem: bool,
    pub root: String,
    pub folders: Vec<Folder>,
    pub messages: BTreeMap<String, Msg>,
    /// Bumped by `expire_delta_tokens`: older tokens answer 410.
    pub epoch: u64,
    /// Folder id → message id → (sequence of its last change, still in the folder).
    pub changes: HashMap<String, HashMap<String, (u64, bool)>>,
    /// Calendars, contact folders, To Do lists and their items.
    pub items: super::items::Items,
}

fn graph_id(prefix: &str) -> String {
    format!("{prefix}{}AAA=", uuid::Uuid::new_v4().simple()).replace('-', "")
}

impl Mailbox {
    pub fn new(tenant: &str, address: &str, on_prem: bool) -> Mailbox {
        let root = graph_id("AAMkAGRvb3Q");
        let folders = WELL_KNOWN
            .iter()
            .map(|(wk, name)| Folder {
                id: graph_id("AAMkAGZsZHI"),
                well_known: Some(wk),
                display_name: name.to_string(),
                parent: root.clone(),
            })
            .collect();
        let local = address.split('@').next().unwrap_or(address);
        let mut display = local.to_string();
        if let Some(first) = display.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        Mailbox {
            user_id: uuid::Uuid::new_v4().to_string(),
            tenant: tenant.to_string(),
            address: address.to_string(),
            display_name: display,
            on_prem,
            root,
            folders,
            messages: BTreeMap::new(),
            epoch: 0,
            changes: HashMap::new(),
            items: super::items::Items::default(),
        }
    }

    /// By well-known name or id.
    pub fn folder(&self, key: &str) -> Option<&Folder> {
        let k = key.to_ascii_lowercase();
        self.folders
            .iter()
            .find(|f| f.well_known == Some(k.as_str()) || f.id == key)
    }

    pub fn folder_by_name(&self, name: &str) -> Option<&Folder> {
        self.folders
            .iter()
            .find(|f| f.display_name.eq_ignore_ascii_case(name))
    }
}

/// A mailbox by user id, userPrincipalName or mail, in `tenant` when given.
pub(super) fn find_mailbox(mbs: &[Mailbox], key: &str, tenant: Option<&str>) -> Option<usize> {
    mbs.iter().position(|m| {
        (m.user_id.eq_ignore_ascii_case(key) || m.address.eq_ignore_ascii_case(key))
            && tenant.is_none_or(|t| m.tenant == t)
    })
}

/// Raw header value (unfolded), first occurrence.
pub(super) fn mime_header(mime: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(mime);
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .split("\n\n")
        .next()
        .unwrap_or("");
    let mut current: Option<String> = None;
    for line in head.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(c) = current.as_mut() {
                c.push(' ');
                c.push_str(line.trim());
            }
            continue;
        }
        if current.is_some() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.trim().eq_ignore_ascii_case(name)
        {
            current = Some(v.trim().to_string());
        }
    }
    current
}

fn mime_body(mime: &[u8]) -> String {
    let text = String::from_utf8_lossy(mime);
    text.split_once("\r\n\r\n")
        .or_else(|| text.split_once("\n\n"))
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Parses `Name <a@b>, c@d` into (name, address) pairs.
fn addresses(v: &str) -> Vec<(String, String)> {
    v.split(',')
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            match (part.rfind('<'), part.rfind('>')) {
                (Some(a), Some(b)) if a < b => Some((
                    part[..a].trim().trim_matches('"').to_string(),
                    part[a + 1..b].trim().to_string(),
                )),
                _ => Some((String::new(), part.to_string())),
            }
        })
        .collect()
}

fn recipient(name: &str, addr: &str) -> Value {
    json!({"emailAddress": {"name": if name.is_empty() { addr } else { name }, "address": addr}})
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Stores a message; records the change; returns its id.
pub(super) fn insert(
    s: &mut DoubleState,
    mb: usize,
    folder: &str,
    mime: Vec<u8>,
    is_read: bool,
    received: DateTime<Utc>,
) -> String {
    let seq = s.next_seq();
    let id = graph_id("AAMkAGI2TG93AAA");
    let msg = Msg {
        id: id.clone(),
        folder: folder.to_string(),
        is_read,
        version: 1,
        order: seq,
        created: received,
        modified: received,
        received,
        subject: mime_header(&mime, "subject").unwrap_or_default(),
        internet_message_id: mime_header(&mime, "message-id"),
        mime,
    };
    let m = &mut s.mailboxes[mb];
    m.messages.insert(id.clone(), msg);
    m.changes
        .entry(folder.to_string())
        .or_default()
        .insert(id.clone(), (seq, true));
    id
}

/// The JSON Graph returns for a message (only CSDL-declared properties).
fn message_json(m: &Msg) -> Value {
    let from = mime_header(&m.mime, "from")
        .map(|f| addresses(&f))
        .and_then(|a| a.into_iter().next());
    let rcpts = |h: &str| -> Vec<Value> {
        mime_header(&m.mime, h)
            .map(|v| addresses(&v))
            .unwrap_or_default()
            .iter()
            .map(|(n, a)| recipient(n, a))
            .collect()
    };
    let sent = mime_header(&m.mime, "date")
        .and_then(|d| DateTime::parse_from_rfc2822(&d).ok())
        .map(|d| ts(&d.with_timezone(&Utc)))
        .unwrap_or_else(|| ts(&m.received));
    let content_type = mime_header(&m.mime, "content-type").unwrap_or_default();
    let body = mime_body(&m.mime);
    let preview: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(255)
        .collect();
    let from_json = from.map(|(n, a)| recipient(&n, &a)).unwrap_or(Value::Null);
    json!({
        "@odata.etag": format!("W/\"{}\"", m.change_key()),
        "id": m.id,
        "createdDateTime": ts(&m.created),
        "lastModifiedDateTime": ts(&m.modified),
        "changeKey": m.change_key(),
        "categories": [],
        "receivedDateTime": ts(&m.received),
        "sentDateTime": sent,
        "hasAttachments": content_type.to_ascii_lowercase().starts_with("multipart/mixed"),
        "internetMessageId": m.internet_message_id,
        "subject": m.subject,
        "bodyPreview": preview,
        "importance": "normal",
        "parentFolderId": m.folder,
        "conversationId": format!("AAQkAG{}", &m.id[m.id.len().saturating_sub(12)..]),
        "isDeliveryReceiptRequested": false,
        "isReadReceiptRequested": false,
        "isRead": m.is_read,
        "isDraft": false,
        "webLink": format!("https://outlook.office365.com/owa/?ItemID={}&exvsurl=1&viewmodel=ReadMessageItem", m.id),
        "inferenceClassification": "focused",
        "body": {
            "contentType": if content_type.to_ascii_lowercase().contains("html") { "html" } else { "text" },
            "content": body,
        },
        "sender": from_json,
        "from": from_json,
        "toRecipients": rcpts("to"),
        "ccRecipients": rcpts("cc"),
        "bccRecipients": [],
        "replyTo": [],
        "flag": {"flagStatus": "notFlagged"},
    })
}

/// Keeps only `$select`ed properties (and `id` and annotations).
fn select(v: Value, sel: Option<&str>) -> Value {
    let Some(sel) = sel.filter(|s| !s.trim().is_empty()) else {
        return v;
    };
    let wanted: Vec<String> = sel.split(',').map(|s| s.trim().to_string()).collect();
    let Value::Object(map) = v else {
        return v;
    };
    let out: Map<String, Value> = map
        .into_iter()
        .filter(|(k, _)| {
            k == "id" || k.starts_with('@') || wanted.iter().any(|w| w.eq_ignore_ascii_case(k))
        })
        .collect();
    Value::Object(out)
}

fn folder_json(mb: &Mailbox, f: &Folder) -> Value {
    let total = mb.messages.values().filter(|m| m.folder == f.id).count();
    let unread = mb
        .messages
        .values()
        .filter(|m| m.folder == f.id && !m.is_read)
        .count();
    let children = mb.folders.iter().filter(|c| c.parent == f.id).count();
    json!({
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": f.parent,
        "childFolderCount": children,
        "unreadItemCount": unread,
        "totalItemCount": total,
        "isHidden": false,
    })
}

fn user_json(mb: &Mailbox) -> Value {
    json!({
        "businessPhones": [],
        "displayName": mb.display_name,
        "givenName": mb.display_name,
        "jobTitle": null,
        "mail": mb.address,
        "mobilePhone": null,
        "officeLocation": null,
        "preferredLanguage": "en-US",
        "surname": null,
        "userPrincipalName": mb.address,
        "id": mb.user_id,
    })
}

pub(super) fn page_size(s: &DoubleState, headers: &HeaderMap) -> (usize, Option<usize>) {
    let prefer = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            p.trim()
                .strip_prefix("odata.maxpagesize=")
                .and_then(|n| n.trim().parse::<usize>().ok())
        })
        .filter(|n| *n > 0);
    let size = prefer
        .map_or(s.cfg.page_size, |p| p.min(s.cfg.page_size))
        .max(1);
    (size, prefer)
}

fn invalid_user(key: &str) -> Reply {
    gerr(
        404,
        "ErrorInvalidUser",
        &format!("The requested user '{key}' is invalid."),
    )
}

fn access_denied() -> Reply {
    gerr(
        403,
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
    )
}

fn item_not_found() -> Reply {
    gerr(
        404,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

/// `/v1.0/users/{u}/...`; `segs` starts at the user key.
pub(super) async fn route(
    state: &Shared,
    caller: &Caller,
    method: &Method,
    segs: &[String],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Reply {
    let key = segs[0].as_str();
    let rest: Vec<&str> = segs[1..].iter().map(String::as_str).collect();
    let lower: Vec<String> = rest.iter().map(|s| s.to_ascii_lowercase()).collect();
    let lower: Vec<&str> = lower.iter().map(String::as_str).collect();
    let mut s = lock(state);
    let mb = find_mailbox(&s.mailboxes, key, Some(&caller.tenant));
    if rest.is_empty() {
        if *method != Method::GET {
            return gerr(
                405,
                "Request_BadRequest",
                "Specified HTTP method is not allowed for the request target.",
            );
        }
        if !caller.has_any(&[
            "User.Read.All",
            "User.ReadWrite.All",
            "User.ReadBasic.All",
            "Directory.Read.All",
            "Directory.ReadWrite.All",
        ]) {
            return gerr(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            );
        }
        let Some(mb) = mb else {
            return gerr(
                404,
                "Request_ResourceNotFound",
                &format!(
                    "Resource '{key}' does not exist or one of its queried reference-property objects are not present."
                ),
            );
        };
        let base = s.base();
        let mut v = select(
            user_json(&s.mailboxes[mb]),
            query.get("$select").map(String::as_str),
        );
        v["@odata.context"] = json!(format!("{base}/v1.0/$metadata#users/$entity"));
        return Reply::json(200, &v, Some(Schema::Entity("microsoft.graph.user")));
    }
    let Some(mb) = mb else {
        return invalid_user(key);
    };
    if s.mailboxes[mb].on_prem {
        return gerr(
            404,
            "MailboxNotEnabledForRESTAPI",
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
        );
    }
    let base = s.base();
    let uid = s.mailboxes[mb].user_id.clone();
    let sel = query.get("$select").map(String::as_str);
    if let Some(reply) = super::items::route(
        &mut s, caller, mb, method, &rest, &lower, query, headers, body,
    ) {
        return reply;
    }
    match (method.clone(), lower.as_slice()) {
        (Method::GET, ["mailboxsettings"]) => {
            if !caller.has_any(&["MailboxSettings.Read", "MailboxSettings.ReadWrite"]) {
                return access_denied();
            }
            let v = json!({
                "@odata.context": format!("{base}/v1.0/$metadata#users('{uid}')/mailboxSettings"),
                "archiveFolder": s.mailboxes[mb].folder("archive").map(|f| f.id.clone()),
                "timeZone": "UTC",
                "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
                "dateFormat": "yyyy-MM-dd",
                "timeFormat": "HH:mm",
                "userPurpose": "user",
                "automaticRepliesSetting": {
                    "status": "disabled",
                    "externalAudience": "all",
                    "internalReplyMessage": "",
                    "externalReplyMessage": "",
                    "scheduledStartDateTime": {"dateTime": "2026-01-01T00:00:00.0000000", "timeZone": "UTC"},
                    "scheduledEndDateTime": {"dateTime": "2026-01-02T00:00:00.0000000", "timeZone": "UTC"},
                },
                "language": {"locale": "en-US", "displayName": "English (United States)"},
                "workingHours": {
                    "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                    "startTime": "08:00:00.0000000",
                    "endTime": "17:00:00.0000000",
                    "timeZone": {"name": "UTC"},
                },
            });
            Reply::json(
                200,
                &v,
                Some(Schema::Entity("microsoft.graph.mailboxSettings")),
            )
        }
        (Method::POST, ["sendmail"]) => {
            if !caller.has_any(&["Mail.Send"]) {
                return access_denied();
            }
            send_mail(&mut s, mb, headers, body)
        }
        (Method::GET, ["mailfolders"]) => {
            if !caller.has_any(&READ_ROLES) {
                return access_denied();
            }
            let root = s.mailboxes[mb].root.clone();
            list_folders(&s, mb, &root, query, &format!("users('{uid}')/mailFolders"))
        }
        (Method::POST, ["mailfolders"]) | (Method::POST, ["mailfolders", _, "childfolders"]) => {
            if !caller.has_any(&WRITE_ROLES) {
                return access_denied();
            }
            let parent = if rest.len() == 3 {
                match s.mailboxes[mb].folder(rest[1]) {
                    Some(f) => f.id.clone(),
                    None => return item_not_found(),
                }
            } else {
                s.mailboxes[mb].root.clone()
            };
            create_folder(&mut s, mb, &parent, body)
        }
        (Method::GET, ["mailfolders", _]) => {
            if !caller.has_any(&READ_ROLES) {
                return access_denied();
            }
            let m = &s.mailboxes[mb];
            let Some(f) = m.folder(rest[1]) else {
                return item_not_found();
            };
            let mut v = select(folder_json(m, f), sel);
            v["@odata.context"] = json!(format!(
                "{base}/v1.0/$metadata#users('{uid}')/mailFolders/$entity"
            ));
            Reply::json(200, &v, Some(Schema::Entity("microsoft.graph.mailFolder")))
        }
        (Method::GET, ["mailfolders", _, "childfolders"]) => {
            if !caller.has_any(&READ_ROLES) {
                return access_denied();
            }
            let Some(f) = s.mailboxes[mb].folder(rest[1]).map(|f| f.id.clone()) else {
                return item_not_found();
            };
            list_folders(
                &s,
                mb,
                &f,
                query,
                &format!("users('{uid}')/mailFolders('{f}')/childFolders"),
            )
        }
        (Method::GET, ["mailfolders", _, "messages", "delta"]) => {
            if !caller.has_any(&[
                "Mail.Read",
                "Mail.ReadWrite",
                "Mail.ReadBasic.All",
                "Mail.ReadBasic",
            ]) {
                return access_denied();
            }
            let Some(f) = s.mailboxes[mb].folder(rest[1]).map(|f| f.id.clone()) else {
                return item_not_found();
            };
            delta(&mut s, mb, &f, query, headers)
        }
        (Method::GET, ["mailfolders", _, "messages"]) | (Method::GET, ["messages"]) => {
            if !caller.has_any(&[
                "Mail.Read",
                "Mail.ReadWrite",
                "Mail.ReadBasic.All",
                "Mail.ReadBasic",
            ]) {
                return access_denied();
            }
            let folder = if rest.len() == 3 {
                match s.mailboxes[mb].folder(rest[1]) {
                    Some(f) => Some(f.id.clone()),
                    None => return item_not_found(),
                }
            } else {
                None
            };
            list_messages(&s, mb, folder.as_deref(), query, headers, rel_of(&rest))
        }
        (Method::GET, ["messages", _]) | (Method::GET, ["mailfolders", _, "messages", _]) => {
            if !caller.has_any(&READ_ROLES) {
                return access_denied();
            }
            let id = rest[rest.len() - 1];
            let Some(m) = s.mailboxes[mb].messages.get(id) else {
                return item_not_found();
            };
            let mut v = select(message_json(m), sel);
            v["@odata.context"] = json!(format!(
                "{base}/v1.0/$metadata#users('{uid}')/messages/$entity"
            ));
            Reply::json(200, &v, Some(Schema::Entity("microsoft.graph.message")))
        }
        (Method::GET, ["messages", _, "$value"])
        | (Method::GET, ["mailfolders", _, "messages", _, "$value"]) => {
            if !caller.has_any(&READ_ROLES) {
                return access_denied();
            }
            let id = rest[rest.len() - 2];
            let Some(m) = s.mailboxes[mb].messages.get(id) else {
                return item_not_found();
            };
            Reply {
                status: 200,
                headers: Vec::new(),
                content_type: Some("text/plain".into()),
                body: m.mime.clone(),
                schema: None,
            }
        }
        (Method::PATCH, ["messages", _]) => {
            if !caller.has_any(&WRITE_ROLES) {
                return access_denied();
            }
            patch_message(&mut s, mb, rest[1], body)
        }
        (Method::DELETE, ["messages", _]) => {
            if !caller.has_any(&WRITE_ROLES) {
                return access_denied();
            }
            let Some(m) = s.mailboxes[mb].messages.remove(rest[1]) else {
                return item_not_found();
            };
            let seq = s.next_seq();
            s.mailboxes[mb]
                .changes
                .entry(m.folder.clone())
                .or_default()
                .insert(m.id.clone(), (seq, false));
            subs::notify(&mut s, mb, &m.folder, &m.id, "deleted");
            Reply::empty(204)
        }
        (Method::POST, ["messages", _, "move"]) => {
            if !caller.has_any(&WRITE_ROLES) {
                return access_denied();
            }
            move_message(&mut s, mb, rest[1], body)
        }
        _ => gerr(
            400,
            "BadRequest",
            &format!(
                "Resource not found for the segment '{}'.",
                rest.last().unwrap_or(&"")
            ),
        ),
    }
}

fn rel_of(rest: &[&str]) -> String {
    rest.join("/")
}

fn list_folders(
    s: &DoubleState,
    mb: usize,
    parent: &str,
    query: &HashMap<String, String>,
    ctx: &str,
) -> Reply {
    let m = &s.mailboxes[mb];
    let filter = query.get("$filter").map(|f| f.trim().to_string());
    let wanted_name = match &filter {
        None => None,
        Some(f) => match f
            .strip_prefix("displayName eq '")
            .and_then(|r| r.strip_suffix('\''))
        {
            Some(name) => Some(name.replace("''", "'")),
            None => {
                return gerr(
                    400,
                    "ErrorInvalidUrlQueryFilter",
                    "The query filter contains one or more invalid nodes.",
                );
            }
        },
    };
    let items: Vec<Value> = m
        .folders
        .iter()
        .filter(|f| f.parent == parent)
        .filter(|f| {
            wanted_name
                .as_ref()
                .is_none_or(|n| f.display_name.eq_ignore_ascii_case(n))
        })
        .map(|f| select(folder_json(m, f), query.get("$select").map(String::as_str)))
        .collect();
    let base = s.base();
    Reply::json(
        200,
        &json!({"@odata.context": format!("{base}/v1.0/$metadata#{ctx}"), "value": items}),
        Some(Schema::Collection("microsoft.graph.mailFolder")),
    )
}

fn create_folder(s: &mut DoubleState, mb: usize, parent: &str, body: &[u8]) -> Reply {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    s.check_request("POST mailFolders", "microsoft.graph.mailFolder", &v);
    let Some(name) = v
        .get("displayName")
        .and_then(|n| n.as_str())
        .filter(|n| !n.trim().is_empty())
    else {
        return gerr(
            400,
            "ErrorInvalidRequest",
            "The request is invalid: displayName is required.",
        );
    };
    let m = &mut s.mailboxes[mb];
    if m.folders
        .iter()
        .any(|f| f.parent == parent && f.display_name.eq_ignore_ascii_case(name))
    {
        return gerr(
            409,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
        );
    }
    let f = Folder {
        id: graph_id("AAMkAGZsZHI"),
        well_known: None,
        display_name: name.to_string(),
        parent: parent.to_string(),
    };
    m.folders.push(f.clone());
    let uid = m.user_id.clone();
    let mut out = folder_json(&s.mailboxes[mb], &f);
    out["@odata.context"] = json!(format!(
        "{}/v1.0/$metadata#users('{uid}')/mailFolders/$entity",
        s.base()
    ));
    Reply::json(
        201,
        &out,
        Some(Schema::Entity("microsoft.graph.mailFolder")),
    )
}

/// Query values that are compared as OData string literals: `'x'` with `''` for a quote.
fn odata_string(v: &str) -> Option<String> {
    v.trim()
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .map(|r| r.replace("''", "'"))
}

fn list_messages(
    s: &DoubleState,
    mb: usize,
    folder: Option<&str>,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    rel: String,
) -> Reply {
    let m = &s.mailboxes[mb];
    let imid = match query.get("$filter") {
        None => None,
        Some(f) => {
            let f = f.trim();
            let Some((prop, val)) = f.split_once(" eq ") else {
                return gerr(
                    400,
                    "ErrorInvalidUrlQueryFilter",
                    "The query filter contains one or more invalid nodes.",
                );
            };
            if !prop.trim().eq_ignore_ascii_case("internetMessageId") {
                return gerr(
                    400,
                    "ErrorInvalidUrlQueryFilter",
                    "The query filter contains one or more invalid nodes.",
                );
            }
            match odata_string(val) {
                Some(v) => Some(v),
                None => {
                    return gerr(
                        400,
                        "BadRequest",
                        "Invalid filter clause: a string literal is expected.",
                    );
                }
            }
        }
    };
    let mut msgs: Vec<&Msg> = m
        .messages
        .values()
        .filter(|x| folder.is_none_or(|f| x.folder == f))
        .filter(|x| {
            imid.as_ref()
                .is_none_or(|i| x.internet_message_id.as_deref() == Some(i.as_str()))
        })
        .collect();
    msgs.sort_by(|a, b| b.received.cmp(&a.received).then(b.order.cmp(&a.order)));
    let top = query
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 1000);
    let (_, prefer) = page_size(s, headers);
    let take = prefer.map_or(top, |p| top.min(p));
    let skip = query
        .get("$skip")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let page: Vec<Value> = msgs
        .iter()
        .skip(skip)
        .take(take)
        .map(|x| select(message_json(x), query.get("$select").map(String::as_str)))
        .collect();
    let base = s.base();
    let uid = &m.user_id;
    let mut v = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#users('{uid}')/{rel}"),
        "value": page,
    });
    if skip + take < msgs.len() {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| *k != "$skip")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.sort();
        q.push(("$skip".into(), (skip + take).to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        v["@odata.nextLink"] = json!(format!("{base}/v1.0/users/{uid}/{rel}?{qs}"));
    }
    Reply::json(200, &v, Some(Schema::Collection("microsoft.graph.message")))
}

/// Opaque delta state: user, folder, epoch, lower bound, upper bound (0: open), initial
/// round, `$select`.
struct DeltaState {
    user: String,
    folder: String,
    epoch: u64,
    since: u64,
    upto: u64,
    initial: bool,
    select: String,
}

impl DeltaState {
    fn encode(&self) -> String {
        B64URL.encode(format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.user,
            self.folder,
            self.epoch,
            self.since,
            self.upto,
            u8::from(self.initial),
            self.select
        ))
    }

    fn decode(t: &str) -> Option<DeltaState> {
        let raw = String::from_utf8(B64URL.decode(t.trim_end_matches('=')).ok()?).ok()?;
        let p: Vec<&str> = raw.splitn(7, '\n').collect();
        if p.len() != 7 {
            return None;
        }
        Some(DeltaState {
            user: p[0].to_string(),
            folder: p[1].to_string(),
            epoch: p[2].parse().ok()?,
            since: p[3].parse().ok()?,
            upto: p[4].parse().ok()?,
            initial: p[5] == "1",
            select: p[6].to_string(),
        })
    }
}

fn delta(
    s: &mut DoubleState,
    mb: usize,
    folder: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Reply {
    let (size, prefer) = page_size(s, headers);
    let m = &s.mailboxes[mb];
    let token = query.get("$skiptoken").or_else(|| query.get("$deltatoken"));
    let gone = || {
        gerr(
            410,
            "syncStateNotFound",
            "The sync state generation is not found or expired. Please do full sync.",
        )
    };
    let mut st = match token {
        None => DeltaState {
            user: m.user_id.clone(),
            folder: folder.to_string(),
            epoch: m.epoch,
            since: 0,
            upto: 0,
            initial: true,
            select: query.get("$select").cloned().unwrap_or_default(),
        },
        Some(t) => match DeltaState::decode(t) {
            Some(st) if st.user == m.user_id && st.folder == folder => st,
            _ => return gerr(400, "ErrorInvalidSyncState", "The sync state is invalid."),
        },
    };
    if st.epoch != m.epoch {
        return gone();
    }
    if st.upto == 0 {
        st.upto = s.seq;
    }
    let empty = HashMap::new();
    let changes = m.changes.get(folder).unwrap_or(&empty);
    let mut list: Vec<(&String, u64, bool)> = changes
        .iter()
        .filter(|(_, (seq, present))| {
            *seq > st.since && *seq <= st.upto && (*present || !st.initial)
        })
        .map(|(id, (seq, present))| (id, *seq, *present))
        .collect();
    list.sort_by_key(|(_, seq, _)| *seq);
    let more = list.len() > size;
    list.truncate(size);
    let sel = (!st.select.is_empty()).then_some(st.select.as_str());
    let items: Vec<Value> = list
        .iter()
        .map(|(id, _, present)| match (present, m.messages.get(*id)) {
            (true, Some(msg)) if msg.folder == folder => {
                let mut v = select(message_json(msg), sel);
                v["@odata.type"] = json!("#microsoft.graph.message");
                v
            }
            _ => json!({"@odata.type": "#microsoft.graph.message", "id": id, "@removed": {"reason": "deleted"}}),
        })
        .collect();
    let base = s.base();
    let uid = m.user_id.clone();
    let link_base = format!("{base}/v1.0/users/{uid}/mailFolders/{folder}/messages/delta");
    let next = if more {
        DeltaNext::More(
            DeltaState {
                since: list.last().map_or(st.since, |l| l.1),
                ..st
            }
            .encode(),
        )
    } else {
        DeltaNext::Done(
            DeltaState {
                since: st.upto,
                upto: 0,
                initial: false,
                ..st
            }
            .encode(),
        )
    };
    delta_page(
        &base,
        &link_base,
        "microsoft.graph.message",
        items,
        next,
        prefer.map(|p| p.min(size)),
    )
}

/// Where a delta page leads: the next page's state, or (the last page) the delta state.
pub(super) enum DeltaNext {
    More(String),
    Done(String),
}

/// A delta page of `type_name` entities: `value`, then `@odata.nextLink` or
/// `@odata.deltaLink` (`link_base` with the encoded state), and the page size applied when
/// the client asked for one (`Prefer: odata.maxpagesize`).
pub(super) fn delta_page(
    base: &str,
    link_base: &str,
    type_name: &'static str,
    value: Vec<Value>,
    next: DeltaNext,
    applied: Option<usize>,
) -> Reply {
    let entity = type_name.trim_start_matches("microsoft.graph.");
    let mut v = json!({
        "@odata.context": format!("{base}/v1.0/$metadata#Collection({entity})"),
        "value": value,
    });
    match next {
        DeltaNext::More(state) => {
            v["@odata.nextLink"] = json!(format!("{link_base}?$skiptoken={state}"));
        }
        DeltaNext::Done(state) => {
            v["@odata.deltaLink"] = json!(format!("{link_base}?$deltatoken={state}"));
        }
    }
    let r = Reply::json(200, &v, Some(Schema::Collection(type_name)));
    match applied {
        Some(n) => r.with_header("Preference-Applied", format!("odata.maxpagesize={n}")),
        None => r,
    }
}

fn patch_message(s: &mut DoubleState, mb: usize, id: &str, body: &[u8]) -> Reply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return gerr(400, "BadRequest", "Empty Payload. JSON content expected.");
    };
    s.check_request("PATCH message", "microsoft.graph.message", &v);
    let seq = s.next_seq();
    let base = s.base();
    let m = &mut s.mailboxes[mb];
    let Some(msg) = m.messages.get_mut(id) else {
        return item_not_found();
    };
    if let Some(r) = v.get("isRead").and_then(|r| r.as_bool()) {
        msg.is_read = r;
    }
    msg.version += 1;
    msg.modified = Utc::now();
    let folder = msg.folder.clone();
    let mut out = message_json(msg);
    out["@odata.context"] = json!(format!(
        "{base}/v1.0/$metadata#users('{}')/messages/$entity",
        m.user_id
    ));
    m.changes
        .entry(folder.clone())
        .or_default()
        .insert(id.to_string(), (seq, true));
    subs::notify(s, mb, &folder, id, "updated");
    Reply::json(200, &out, Some(Schema::Entity("microsoft.graph.message")))
}

fn move_message(s: &mut DoubleState, mb: usize, id: &str, body: &[u8]) -> Reply {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    s.check_action("move", "microsoft.graph.message", &v);
    let Some(dest) = param(&v, "destinationId").and_then(|d| d.as_str()) else {
        return gerr(
            400,
            "ErrorInvalidRequest",
            "The destinationId parameter is required.",
        );
    };
    let Some(dest) = s.mailboxes[mb].folder(dest).map(|f| f.id.clone()) else {
        return gerr(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        );
    };
    let Some(old) = s.mailboxes[mb].messages.remove(id) else {
        return item_not_found();
    };
    let seq = s.next_seq();
    s.mailboxes[mb]
        .changes
        .entry(old.folder.clone())
        .or_default()
        .insert(old.id.clone(), (seq, false));
    let src = old.folder.clone();
    let new_id = insert(s, mb, &dest, old.mime.clone(), old.is_read, old.received);
    if let Some(m) = s.mailboxes[mb].messages.get_mut(&new_id) {
        m.created = old.created;
        m.order = old.order;
    }
    subs::notify(s, mb, &src, id, "deleted");
    subs::notify(s, mb, &dest, &new_id, "created");
    let base = s.base();
    let m = &s.mailboxes[mb];
    let mut out = message_json(&m.messages[&new_id]);
    out["@odata.context"] = json!(format!(
        "{base}/v1.0/$metadata#users('{}')/messages/$entity",
        m.user_id
    ));
    Reply::json(201, &out, Some(Schema::Entity("microsoft.graph.message")))
}

/// `POST /users/{u}/sendMail`: JSON (`{message, saveToSentItems}`) or MIME (base64 in a
/// `text/plain` body; always saved to Sent Items).
fn send_mail(s: &mut DoubleState, mb: usize, headers: &HeaderMap, body: &[u8]) -> Reply {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let (mut mime, save) = if ct.starts_with("text/plain") {
        let compact: Vec<u8> = body
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let Ok(mime) = B64.decode(&compact) else {
            return gerr(
                400,
                "ErrorMimeContentInvalidBase64String",
                "Invalid base64 string for MIME content.",
            );
        };
        let text = String::from_utf8_lossy(&mime);
        let first = text.lines().next().unwrap_or("");
        let looks_mime = first.contains(':')
            && !first.starts_with(' ')
            && (text.contains("\r\n\r\n") || text.contains("\n\n"));
        if !looks_mime {
            return gerr(400, "ErrorMimeContentInvalid", "Invalid MIME content.");
        }
        (mime, true)
    } else if ct.starts_with("application/json") {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return gerr(
                400,
                "BadRequest",
                "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.",
            );
        };
        s.check_action("sendMail", "microsoft.graph.user", &v);
        if let Some(m) = param(&v, "message") {
            s.check_request("sendMail", "microsoft.graph.message", m);
        }
        let Some(msg) = param(&v, "message") else {
            return gerr(
                400,
                "ErrorInvalidParameter",
                "The value of the parameter 'Message' is empty.",
            );
        };
        let save = param(&v, "saveToSentItems")
            .and_then(|b| b.as_bool())
            .unwrap_or(true);
        let from = &s.mailboxes[mb];
        (json_to_mime(msg, &from.display_name, &from.address), save)
    } else {
        return gerr(
            415,
            "UnsupportedMediaType",
            "Unsupported media type; use application/json or text/plain (base64 MIME).",
        );
    };
    let rcpt = ["to", "cc", "bcc"]
        .iter()
        .any(|h| mime_header(&mime, h).is_some_and(|v| !addresses(&v).is_empty()));
    if !rcpt {
        return gerr(
            400,
            "ErrorInvalidRecipients",
            "At least one recipient isn't valid., A message can't be sent because it contains no recipients.",
        );
    }
    if mime_header(&mime, "message-id").is_none() {
        let domain = s.mailboxes[mb]
            .address
            .split('@')
            .nth(1)
            .unwrap_or("example.test")
            .to_string();
        let mut with = format!(
            "Message-ID: <{}@{}>\r\n",
            uuid::Uuid::new_v4().simple(),
            domain
        )
        .into_bytes();
        with.extend_from_slice(&mime);
        mime = with;
    }
    if mime_header(&mime, "date").is_none() {
        let mut with = format!("Date: {}\r\n", Utc::now().to_rfc2822()).into_bytes();
        with.extend_from_slice(&mime);
        mime = with;
    }
    s.sent.push(mime.clone());
    if save && let Some(f) = s.mailboxes[mb].folder("sentitems").map(|f| f.id.clone()) {
        let id = insert(s, mb, &f, mime, true, Utc::now());
        subs::notify(s, mb, &f, &id, "created");
    }
    Reply::empty(202)
}

/// An action parameter: Graph matches parameter names case-insensitively (the CSDL says
/// `DestinationId`, `Message`, `SaveToSentItems`; the docs write them camelCase).
fn param<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v.as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn json_to_mime(msg: &Value, from_name: &str, from_addr: &str) -> Vec<u8> {
    let list = |k: &str| -> String {
        msg.get(k)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        let e = r.get("emailAddress")?;
                        let addr = e.get("address")?.as_str()?;
                        Some(match e.get("name").and_then(|n| n.as_str()) {
                            Some(n) if !n.is_empty() => format!("\"{n}\" <{addr}>"),
                            _ => format!("<{addr}>"),
                        })
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut out = format!("From: \"{from_name}\" <{from_addr}>\r\n");
    for (h, k) in [
        ("To", "toRecipients"),
        ("Cc", "ccRecipients"),
        ("Bcc", "bccRecipients"),
    ] {
        let v = list(k);
        if !v.is_empty() {
            out.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    if let Some(subj) = msg.get("subject").and_then(|s| s.as_str()) {
        out.push_str(&format!("Subject: {subj}\r\n"));
    }
    if let Some(id) = msg.get("internetMessageId").and_then(|s| s.as_str()) {
        out.push_str(&format!("Message-ID: {id}\r\n"));
    }
    let body = msg.get("body");
    let html = body
        .and_then(|b| b.get("contentType"))
        .and_then(|c| c.as_str())
        .is_some_and(|c| c.eq_ignore_ascii_case("html"));
    let content = body
        .and_then(|b| b.get("content"))
        .and_then(|c| c.as_str())
        .unwrap_or("");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: text/{}; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
        if html { "html" } else { "plain" }
    ));
    out.push_str(content);
    out.push_str("\r\n");
    out.into_bytes()
}
