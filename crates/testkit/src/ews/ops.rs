//! EWS operations: SOAP request → state change → SOAP response in Exchange's shapes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Response, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};

use super::occurrences;
use super::pim;
use super::store::{self, Change, ChangeKind, Event, Item, Pim, Subscription};
use super::xml::{Node, esc};
use super::{DoubleState, ExchangeServerVersion, Shared, XML_UTF8, lock, respond, version_rank};

const NS_SOAP: &str = "http://schemas.xmlsoap.org/soap/envelope/";
const NS_M: &str = "http://schemas.microsoft.com/exchange/services/2006/messages";
const NS_T: &str = "http://schemas.microsoft.com/exchange/services/2006/types";
const NS_E: &str = "http://schemas.microsoft.com/exchange/services/2006/errors";

fn header_xml(v: ExchangeServerVersion) -> String {
    let (major, minor, build, rev, version) = v.server_version_info();
    format!(
        "<s:Header><h:ServerVersionInfo MajorVersion=\"{major}\" MinorVersion=\"{minor}\" \
         MajorBuildNumber=\"{build}\" MinorBuildNumber=\"{rev}\" Version=\"{version}\" \
         xmlns:h=\"{NS_T}\" xmlns=\"{NS_T}\" xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"/></s:Header>"
    )
}

/// A whole SOAP envelope around `body` (an `m:…Response` element).
pub(super) fn envelope(v: ExchangeServerVersion, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{NS_SOAP}\">{}\
         <s:Body xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\">{body}</s:Body></s:Envelope>",
        header_xml(v)
    )
}

fn ok(v: ExchangeServerVersion, body: &str) -> Response<Body> {
    respond(StatusCode::OK, XML_UTF8, envelope(v, body))
}

/// A SOAP 1.1 Fault as Exchange sends it for errors outside the operation (HTTP 500).
pub(super) fn soap_fault(
    _v: ExchangeServerVersion,
    code: &str,
    text: &str,
    message_xml: &str,
) -> Response<Body> {
    let xml = if message_xml.is_empty() {
        String::new()
    } else {
        format!("<t:MessageXml xmlns:t=\"{NS_T}\">{message_xml}</t:MessageXml>")
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><s:Envelope xmlns:s=\"{NS_SOAP}\"><s:Body>\
         <s:Fault><faultcode xmlns:a=\"{NS_T}\">a:{code}</faultcode>\
         <faultstring xml:lang=\"en-US\">{}</faultstring><detail>\
         <e:ResponseCode xmlns:e=\"{NS_E}\">{code}</e:ResponseCode>\
         <e:Message xmlns:e=\"{NS_E}\">{}</e:Message>{xml}</detail></s:Fault></s:Body></s:Envelope>",
        esc(text),
        esc(text)
    );
    respond(StatusCode::INTERNAL_SERVER_ERROR, XML_UTF8, body)
}

/// ErrorSchemaValidation (a SOAP fault with the line of the offending element).
pub(super) fn schema_fault(
    v: ExchangeServerVersion,
    violation: &str,
    line: usize,
) -> Response<Body> {
    let xml = format!(
        "<t:LineNumber>{line}</t:LineNumber><t:LinePosition>0</t:LinePosition>\
         <t:Violation>{}</t:Violation>",
        esc(violation)
    );
    soap_fault(
        v,
        "ErrorSchemaValidation",
        "The request failed schema validation.",
        &xml,
    )
}

fn message(op: &str, class: &str, code: &str, text: &str, xml: &str, inner: &str) -> String {
    let mut m = format!("<m:{op}ResponseMessage ResponseClass=\"{class}\">");
    if !text.is_empty() {
        m.push_str(&format!("<m:MessageText>{}</m:MessageText>", esc(text)));
    }
    m.push_str(&format!("<m:ResponseCode>{code}</m:ResponseCode>"));
    if class != "Success" {
        m.push_str("<m:DescriptiveLinkKey>0</m:DescriptiveLinkKey>");
    }
    if !xml.is_empty() {
        m.push_str(&format!("<m:MessageXml>{xml}</m:MessageXml>"));
    }
    m.push_str(inner);
    m.push_str(&format!("</m:{op}ResponseMessage>"));
    m
}

fn success(op: &str, inner: &str) -> String {
    message(op, "Success", "NoError", "", "", inner)
}

fn failure(op: &str, e: &E, inner: &str) -> String {
    message(op, "Error", e.0, &e.1, "", inner)
}

fn wrap(op: &str, messages: &[String]) -> String {
    format!(
        "<m:{op}Response xmlns:m=\"{NS_M}\" xmlns:t=\"{NS_T}\"><m:ResponseMessages>{}\
         </m:ResponseMessages></m:{op}Response>",
        messages.concat()
    )
}

/// One error response message in the shape of `op` (HTTP 200).
pub(super) fn error_response(
    v: ExchangeServerVersion,
    op: &str,
    code: &str,
    text: &str,
    message_xml: &str,
) -> Response<Body> {
    let op = if op.is_empty() { "GetItem" } else { op };
    ok(
        v,
        &wrap(op, &[message(op, "Error", code, text, message_xml, "")]),
    )
}

/// An error of one response message: (ResponseCode, MessageText).
#[derive(Debug, Clone)]
struct E(&'static str, String);

fn e(code: &'static str, text: &str) -> E {
    E(code, text.to_string())
}

fn not_found() -> E {
    e(
        "ErrorItemNotFound",
        "The specified object was not found in the store., The process failed to get the correct properties.",
    )
}

fn folder_not_found() -> E {
    e(
        "ErrorFolderNotFound",
        "The specified folder could not be found in the store.",
    )
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Who acts on which mailbox in this request.
struct Ctx {
    caller: String,
    caller_impersonates: bool,
    mailbox: Option<String>,
}

/// Answers one EWS request.
pub(super) async fn dispatch(
    state: &Shared,
    who: &str,
    _anchor: Option<&str>,
    doc: &Node,
) -> Response<Body> {
    let version = lock(state).cfg.version;
    if doc.name != "Envelope" {
        return schema_fault(version, "The root element must be a SOAP 1.1 Envelope.", 1);
    }
    let Some(op) = doc.child("Body").and_then(|b| b.children.first()) else {
        return schema_fault(version, "The SOAP Body is missing or empty.", 1);
    };
    let header = doc.child("Header");
    let requested = header
        .and_then(|h| h.child("RequestServerVersion"))
        .and_then(|r| r.attr("Version"));
    // Missing, unknown or newer than this server: ErrorInvalidServerVersion (a SOAP fault).
    let rank = requested.and_then(version_rank);
    if rank.is_none_or(|rank| rank > version.max_request_rank()) {
        return soap_fault(
            version,
            "ErrorInvalidServerVersion",
            "The specified server version is invalid.",
            "",
        );
    }
    // Whose mailbox: ExchangeImpersonation, else the caller's own.
    let ctx = {
        let s = lock(state);
        let account = s.accounts.get(&who.to_lowercase());
        let caller_impersonates = account.is_none_or(|a| a.impersonation);
        let own = account.and_then(|a| a.mailbox.clone());
        let imp = header.and_then(|h| h.path(&["ExchangeImpersonation", "ConnectingSID"]));
        let mailbox = match imp {
            Some(sid) => {
                let target = sid
                    .child_text("PrimarySmtpAddress")
                    .or_else(|| sid.child_text("SmtpAddress"))
                    .or_else(|| sid.child_text("PrincipalName"))
                    .unwrap_or("")
                    .to_lowercase();
                if !caller_impersonates {
                    return soap_fault(
                        version,
                        "ErrorImpersonateUserDenied",
                        "The account does not have permission to impersonate the requested user.",
                        "",
                    );
                }
                if !s.mailboxes.contains_key(&target) {
                    return soap_fault(
                        version,
                        "ErrorNonExistentMailbox",
                        "The SMTP address has no mailbox associated with it.",
                        &format!("<t:Value Name=\"SmtpAddress\">{}</t:Value>", esc(&target)),
                    );
                }
                Some(target)
            }
            None => own,
        };
        Ctx {
            caller: who.to_string(),
            caller_impersonates,
            mailbox,
        }
    };
    let name = op.name.as_str();
    if name == "GetStreamingEvents" {
        return streaming(state, version, &ctx, op).await;
    }
    let mut s = lock(state);
    let body = match name {
        "GetFolder" => get_folder(&s, &ctx, op),
        "FindFolder" => find_folder(&s, &ctx, op),
        "CreateFolder" => create_folder(&mut s, &ctx, op),
        "SyncFolderHierarchy" => sync_folder_hierarchy(&s, &ctx, op),
        "SyncFolderItems" => match sync_folder_items(&s, &ctx, op) {
            Ok(b) => b,
            Err(r) => return *r,
        },
        "GetItem" => get_item(&s, &ctx, op),
        "FindItem" => find_item(&s, &ctx, op),
        "CreateItem" => create_item(&mut s, &ctx, op),
        "UpdateItem" => update_item(&mut s, &ctx, op),
        "MoveItem" => move_item(&mut s, &ctx, op, false),
        "CopyItem" => move_item(&mut s, &ctx, op, true),
        "DeleteItem" => delete_item(&mut s, &ctx, op),
        "ConvertId" => convert_id(op),
        "Subscribe" => subscribe(&mut s, &ctx, op),
        "GetEvents" => get_events(&mut s, &ctx, op),
        "Unsubscribe" => unsubscribe(&mut s, &ctx, op),
        other => {
            return soap_fault(
                version,
                "ErrorInvalidRequest",
                &format!(
                    "The request is invalid: operation {other} is not supported by this server."
                ),
                "",
            );
        }
    };
    drop(s);
    ok(version, &body)
}

// ---------------------------------------------------------------------------------------------
// Mailbox, folder and item resolution

fn mailbox_key(ctx: &Ctx) -> Result<String, E> {
    ctx.mailbox.clone().ok_or_else(|| {
        e(
            "ErrorMissingEmailAddress",
            "When making a request as an account that does not have a mailbox, you must specify the mailbox primary SMTP address for any distinguished folder Ids.",
        )
    })
}

/// Resolves a `FolderId` or `DistinguishedFolderId` to (mailbox key, folder id).
fn folder_ref(s: &DoubleState, ctx: &Ctx, node: &Node) -> Result<(String, String), E> {
    match node.name.as_str() {
        "DistinguishedFolderId" => {
            let mb = match node.path(&["Mailbox", "EmailAddress"]) {
                Some(addr) => {
                    let addr = addr.text.trim().to_lowercase();
                    let Some(target) = s.mailboxes.get(&addr) else {
                        return Err(e(
                            "ErrorNonExistentMailbox",
                            "The SMTP address has no mailbox associated with it.",
                        ));
                    };
                    let allowed = ctx.mailbox.as_deref() == Some(addr.as_str())
                        || ctx.caller_impersonates
                        || target
                            .owner
                            .as_deref()
                            .is_some_and(|o| o.eq_ignore_ascii_case(&ctx.caller));
                    if !allowed {
                        return Err(e(
                            "ErrorAccessDenied",
                            "Access is denied. Check credentials and try again.",
                        ));
                    }
                    addr
                }
                None => mailbox_key(ctx)?,
            };
            let id = node.attr("Id").unwrap_or("");
            let folder = s
                .mailboxes
                .get(&mb)
                .and_then(|m| {
                    m.folders
                        .iter()
                        .find(|f| f.distinguished.as_deref() == Some(id))
                })
                .ok_or_else(folder_not_found)?;
            Ok((mb, folder.id.clone()))
        }
        "FolderId" => {
            let id = node.attr("Id").unwrap_or("");
            if !id.starts_with("AA") {
                return Err(e("ErrorInvalidIdMalformed", "Id is malformed."));
            }
            let mb = mailbox_key(ctx)?;
            let found = s.mailboxes.get(&mb).and_then(|m| m.folder_by_id(id));
            match found {
                Some(f) => Ok((mb, f.id.clone())),
                None => Err(folder_not_found()),
            }
        }
        _ => Err(e("ErrorInvalidIdMalformed", "Id is malformed.")),
    }
}

/// The first folder reference inside a container element.
fn first_folder_ref(
    s: &DoubleState,
    ctx: &Ctx,
    container: Option<&Node>,
) -> Result<(String, String), E> {
    let node = container
        .and_then(|c| {
            c.children
                .iter()
                .find(|n| n.name == "FolderId" || n.name == "DistinguishedFolderId")
        })
        .ok_or_else(|| e("ErrorInvalidIdEmpty", "Id must be non-empty."))?;
    folder_ref(s, ctx, node)
}

fn find_item_id<'a>(
    s: &'a DoubleState,
    ctx: &Ctx,
    id_node: &Node,
) -> Result<(String, &'a Item), E> {
    let id = id_node.attr("Id").unwrap_or("");
    if id.is_empty() {
        return Err(e("ErrorInvalidIdEmpty", "Id must be non-empty."));
    }
    if !id.starts_with("AA") || B64.decode(id.get(5..).unwrap_or("")).is_err() {
        return Err(e("ErrorInvalidIdMalformed", "Id is malformed."));
    }
    let mb = mailbox_key(ctx)?;
    s.mailboxes
        .get(&mb)
        .and_then(|m| m.items.get(id))
        .map(|i| (mb, i))
        .ok_or_else(not_found)
}

fn refused((code, text): pim::Refusal) -> E {
    e(code, text)
}

/// The occurrence an `OccurrenceItemId` (or an occurrence's `ItemId`) names: (mailbox,
/// master id, original start). `None`: the id names an item, not an occurrence.
fn find_occurrence(
    s: &DoubleState,
    ctx: &Ctx,
    id_node: &Node,
) -> Result<Option<(String, String, DateTime<Utc>)>, E> {
    let master_node = |id: &str| Node {
        name: "ItemId".into(),
        attrs: vec![("Id".into(), id.to_string())],
        ..Node::default()
    };
    match id_node.name.as_str() {
        "OccurrenceItemId" => {
            let master = master_node(id_node.attr("RecurringMasterId").unwrap_or(""));
            let (mb, item) = find_item_id(s, ctx, &master)?;
            let p = item
                .pim
                .as_ref()
                .ok_or_else(|| refused(occurrences::NOT_A_SERIES))?;
            let original = occurrences::resolve(p, id_node.attr("InstanceIndex").unwrap_or(""))
                .map_err(refused)?;
            Ok(Some((mb, item.id.clone(), original)))
        }
        "ItemId" => {
            let Some((master, original)) = id_node
                .attr("Id")
                .and_then(occurrences::decode_occurrence_id)
            else {
                return Ok(None);
            };
            let (mb, item) = find_item_id(s, ctx, &master_node(&master))?;
            let p = item.pim.as_ref().ok_or_else(not_found)?;
            let exists = !occurrences::deleted(p).contains(&original)
                && (occurrences::modified(p, original).is_some()
                    || occurrences::index_of(p, original).is_some());
            if !exists {
                return Err(not_found());
            }
            Ok(Some((mb, item.id.clone(), original)))
        }
        _ => Ok(None),
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes and rendering

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    IdOnly,
    Default,
    All,
}

struct Shape {
    base: Base,
    mime: bool,
    props: HashSet<String>,
    /// IndexedFieldURIs: (FieldURI, FieldIndex).
    indexed: Vec<(String, String)>,
    /// ExtendedFieldURIs.
    extended: Vec<Node>,
    /// `BodyType` (`Best` when not said).
    body_type: String,
}

fn shape(node: Option<&Node>) -> Shape {
    let base = match node.and_then(|n| n.child_text("BaseShape")) {
        Some("IdOnly") => Base::IdOnly,
        Some("AllProperties") => Base::All,
        _ => Base::Default,
    };
    let mime = node
        .and_then(|n| n.child_text("IncludeMimeContent"))
        .is_some_and(|t| t == "true" || t == "1");
    let mut props = HashSet::new();
    let mut indexed = Vec::new();
    let mut extended = Vec::new();
    if let Some(extra) = node.and_then(|n| n.child("AdditionalProperties")) {
        for p in &extra.children {
            match p.name.as_str() {
                "FieldURI" => {
                    if let Some(uri) = p.attr("FieldURI") {
                        props.insert(uri.to_string());
                    }
                }
                "IndexedFieldURI" => {
                    if let (Some(uri), Some(index)) = (p.attr("FieldURI"), p.attr("FieldIndex")) {
                        indexed.push((uri.to_string(), index.to_string()));
                    }
                }
                "ExtendedFieldURI" => extended.push(p.clone()),
                _ => {}
            }
        }
    }
    let body_type = node
        .and_then(|n| n.child_text("BodyType"))
        .unwrap_or("Best")
        .to_string();
    Shape {
        base,
        mime,
        props,
        indexed,
        extended,
        body_type,
    }
}

const DEFAULT_ITEM: &[&str] = &[
    "item:Subject",
    "item:DateTimeReceived",
    "item:Size",
    "item:HasAttachments",
    "message:IsRead",
];

const DEFAULT_FOLDER: &[&str] = &[
    "folder:DisplayName",
    "folder:TotalCount",
    "folder:ChildFolderCount",
    "folder:UnreadCount",
];

impl Shape {
    fn wants(&self, uri: &str, defaults: &[&str]) -> bool {
        match self.base {
            Base::All => true,
            Base::Default => defaults.contains(&uri) || self.props.contains(uri),
            Base::IdOnly => self.props.contains(uri),
        }
    }
}

fn id_attrs(tag: &str, id: &str, ck: &str) -> String {
    format!("<t:{tag} Id=\"{}\" ChangeKey=\"{}\"/>", esc(id), esc(ck))
}

fn item_ck(i: &Item) -> String {
    store::change_key("M", i.version)
}

fn folder_ck(f: &store::Folder) -> String {
    store::change_key("F", f.change_key)
}

/// A calendar item, contact, task or distribution list as `sh` asks for it.
fn pim_xml(mb: &store::Mailbox, i: &Item, p: &Pim, sh: &Shape) -> String {
    let wanted = pim::Wanted {
        all: sh.base != Base::IdOnly,
        names: sh
            .props
            .iter()
            .filter_map(|u| u.rsplit(':').next())
            .collect(),
        indexed: sh
            .indexed
            .iter()
            .map(|(u, k)| (u.as_str(), k.as_str()))
            .collect(),
        extended: sh.extended.iter().collect(),
        body_type: match sh.body_type.as_str() {
            "HTML" => "HTML",
            "Text" => "Text",
            _ => "Best",
        },
    };
    let folder = mb
        .folder_by_id(&i.folder)
        .map(|f| (f.id.clone(), folder_ck(f)));
    pim::render(
        p,
        &i.id,
        &item_ck(i),
        folder.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        i.received,
        i.modified,
        &wanted,
    )
}

fn item_xml(mb: &store::Mailbox, i: &Item, sh: &Shape, allow_mime: bool) -> String {
    if let Some(p) = &i.pim {
        return pim_xml(mb, i, p, sh);
    }
    let w = |uri: &str| sh.wants(uri, DEFAULT_ITEM);
    let mut x = String::from("<t:Message>");
    if allow_mime && (sh.mime || sh.props.contains("item:MimeContent")) {
        x.push_str(&format!(
            "<t:MimeContent CharacterSet=\"UTF-8\">{}</t:MimeContent>",
            B64.encode(&i.mime)
        ));
    }
    x.push_str(&id_attrs("ItemId", &i.id, &item_ck(i)));
    if w("item:ParentFolderId")
        && let Some(f) = mb.folder_by_id(&i.folder)
    {
        x.push_str(&id_attrs("ParentFolderId", &f.id, &folder_ck(f)));
    }
    if w("item:ItemClass") {
        x.push_str("<t:ItemClass>IPM.Note</t:ItemClass>");
    }
    if w("item:Subject") {
        x.push_str(&format!("<t:Subject>{}</t:Subject>", esc(&i.subject)));
    }
    if w("item:DateTimeReceived") {
        x.push_str(&format!(
            "<t:DateTimeReceived>{}</t:DateTimeReceived>",
            time(i.received)
        ));
    }
    if w("item:Size") {
        x.push_str(&format!("<t:Size>{}</t:Size>", i.mime.len()));
    }
    if w("item:InternetMessageHeaders") {
        x.push_str("<t:InternetMessageHeaders>");
        for (name, value) in store::mime_headers(&i.mime) {
            x.push_str(&format!(
                "<t:InternetMessageHeader HeaderName=\"{}\">{}</t:InternetMessageHeader>",
                esc(&name),
                esc(&value)
            ));
        }
        x.push_str("</t:InternetMessageHeaders>");
    }
    if w("item:DateTimeSent") {
        x.push_str(&format!(
            "<t:DateTimeSent>{}</t:DateTimeSent>",
            time(i.received)
        ));
    }
    if w("item:DateTimeCreated") {
        x.push_str(&format!(
            "<t:DateTimeCreated>{}</t:DateTimeCreated>",
            time(i.received)
        ));
    }
    if w("item:HasAttachments") {
        let has = String::from_utf8_lossy(&i.mime)
            .to_ascii_lowercase()
            .contains("content-disposition: attachment");
        x.push_str(&format!("<t:HasAttachments>{has}</t:HasAttachments>"));
    }
    if w("message:InternetMessageId")
        && let Some(mid) = &i.internet_message_id
    {
        x.push_str(&format!(
            "<t:InternetMessageId>{}</t:InternetMessageId>",
            esc(mid)
        ));
    }
    if w("message:IsRead") {
        x.push_str(&format!("<t:IsRead>{}</t:IsRead>", i.is_read));
    }
    x.push_str("</t:Message>");
    x
}

fn folder_xml(mb: &store::Mailbox, f: &store::Folder, sh: &Shape) -> String {
    let w = |uri: &str| sh.wants(uri, DEFAULT_FOLDER);
    let mut x = String::from("<t:Folder>");
    x.push_str(&id_attrs("FolderId", &f.id, &folder_ck(f)));
    if w("folder:ParentFolderId")
        && let Some(p) = f.parent.as_deref().and_then(|p| mb.folder_by_id(p))
    {
        x.push_str(&id_attrs("ParentFolderId", &p.id, &folder_ck(p)));
    }
    if w("folder:FolderClass")
        && let Some(c) = &f.folder_class
    {
        x.push_str(&format!("<t:FolderClass>{}</t:FolderClass>", esc(c)));
    }
    if w("folder:DisplayName") {
        x.push_str(&format!(
            "<t:DisplayName>{}</t:DisplayName>",
            esc(&f.display_name)
        ));
    }
    if w("folder:TotalCount") {
        x.push_str(&format!(
            "<t:TotalCount>{}</t:TotalCount>",
            mb.items_in(&f.id).count()
        ));
    }
    if w("folder:ChildFolderCount") {
        let n = mb
            .folders
            .iter()
            .filter(|c| c.parent.as_deref() == Some(f.id.as_str()))
            .count();
        x.push_str(&format!("<t:ChildFolderCount>{n}</t:ChildFolderCount>"));
    }
    if w("folder:UnreadCount") {
        let n = mb.items_in(&f.id).filter(|i| !i.is_read).count();
        x.push_str(&format!("<t:UnreadCount>{n}</t:UnreadCount>"));
    }
    x.push_str("</t:Folder>");
    x
}

// ---------------------------------------------------------------------------------------------
// State changes shared with the public API

/// Stores a new item and logs its creation; returns its id.
pub(super) fn insert_item(
    s: &mut DoubleState,
    mb: &str,
    folder: &str,
    mime: Vec<u8>,
    is_read: bool,
    received: chrono::DateTime<Utc>,
) -> String {
    insert_item_with(s, mb, folder, mime, is_read, received, None)
}

/// Stores a new item (a message, or `pim`) and logs its creation; returns its id.
pub(super) fn insert_item_with(
    s: &mut DoubleState,
    mb: &str,
    folder: &str,
    mime: Vec<u8>,
    is_read: bool,
    received: chrono::DateTime<Utc>,
    pim: Option<Pim>,
) -> String {
    s.counter += 1;
    s.seq += 1;
    let (n, seq) = (s.counter, s.seq);
    let Some(m) = s.mailboxes.get_mut(mb) else {
        return String::new();
    };
    let id = store::new_id("item", n, mb);
    let item = Item {
        id: id.clone(),
        version: 1,
        folder: folder.to_string(),
        subject: match &pim {
            Some(p) => p
                .field("Subject")
                .map(|n| n.text.trim().to_string())
                .unwrap_or_default(),
            None => store::mime_header(&mime, "Subject").unwrap_or_default(),
        },
        internet_message_id: store::mime_header(&mime, "Message-ID"),
        mime,
        is_read,
        received,
        order: n,
        pim,
        modified: Utc::now(),
    };
    m.items.insert(id.clone(), item);
    m.log.push(Change {
        seq,
        folder: folder.to_string(),
        item: id.clone(),
        kind: ChangeKind::Create,
    });
    id
}

pub(super) fn log_change(
    s: &mut DoubleState,
    mb: &str,
    folder: &str,
    item: &str,
    kind: ChangeKind,
) {
    s.seq += 1;
    let seq = s.seq;
    if let Some(m) = s.mailboxes.get_mut(mb) {
        m.log.push(Change {
            seq,
            folder: folder.to_string(),
            item: item.to_string(),
            kind,
        });
    }
}

/// Queues a notification event for every subscription that wants it, and wakes streams.
pub(super) fn emit(
    s: &mut DoubleState,
    mb: &str,
    kind: &'static str,
    item: &str,
    folder: &str,
    old: Option<(&str, &str)>,
) {
    let (ick, fck) = {
        let Some(m) = s.mailboxes.get(mb) else {
            return;
        };
        let ick = m.items.get(item).map(item_ck).unwrap_or_default();
        let fck = m.folder_by_id(folder).map(folder_ck).unwrap_or_default();
        (ick, fck)
    };
    let old_fck = old
        .and_then(|(_, of)| s.mailboxes.get(mb).and_then(|m| m.folder_by_id(of)))
        .map(folder_ck)
        .unwrap_or_default();
    let mut seq = s.seq;
    for sub in s.subs.values_mut() {
        if sub.mailbox != mb || !sub.event_types.iter().any(|t| t == kind) {
            continue;
        }
        let watched = |f: &str| {
            sub.folders
                .as_ref()
                .is_none_or(|fs| fs.iter().any(|x| x == f))
        };
        if !watched(folder) && !old.is_some_and(|(_, of)| watched(of)) {
            continue;
        }
        seq += 1;
        sub.queue.push(Event {
            kind,
            watermark: seq,
            time: Utc::now(),
            item: Some((item.to_string(), ick.clone())),
            folder: (folder.to_string(), fck.clone()),
            old_item: old.map(|(oi, _)| (oi.to_string(), String::new())),
            old_folder: old.map(|(_, of)| (of.to_string(), old_fck.clone())),
        });
        sub.wake.notify_one();
    }
    s.seq = seq;
}

fn event_xml(ev: &Event) -> String {
    let mut x = format!(
        "<t:{}><t:Watermark>{}</t:Watermark><t:TimeStamp>{}</t:TimeStamp>",
        ev.kind,
        store::encode_watermark(ev.watermark),
        time(ev.time)
    );
    if ev.kind == "StatusEvent" {
        return format!(
            "<t:StatusEvent><t:Watermark>{}</t:Watermark></t:StatusEvent>",
            store::encode_watermark(ev.watermark)
        );
    }
    if let Some((id, ck)) = &ev.item {
        x.push_str(&id_attrs("ItemId", id, ck));
    }
    x.push_str(&id_attrs("ParentFolderId", &ev.folder.0, &ev.folder.1));
    if let Some((id, _)) = &ev.old_item {
        x.push_str(&format!("<t:OldItemId Id=\"{}\"/>", esc(id)));
    }
    if let Some((id, ck)) = &ev.old_folder {
        x.push_str(&id_attrs("OldParentFolderId", id, ck));
    }
    x.push_str(&format!("</t:{}>", ev.kind));
    x
}

// ---------------------------------------------------------------------------------------------
// Folders

fn get_folder(s: &DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "GetFolder";
    let sh = shape(op.child("FolderShape"));
    let mut msgs = Vec::new();
    for r in op
        .child("FolderIds")
        .map(|n| n.children.as_slice())
        .unwrap_or(&[])
    {
        msgs.push(match folder_ref(s, ctx, r) {
            Ok((mb, id)) => {
                let m = &s.mailboxes[&mb];
                let f = m
                    .folder_by_id(&id)
                    .map(|f| folder_xml(m, f, &sh))
                    .unwrap_or_default();
                success(OP, &format!("<m:Folders>{f}</m:Folders>"))
            }
            Err(err) => failure(OP, &err, "<m:Folders/>"),
        });
    }
    if msgs.is_empty() {
        msgs.push(failure(
            OP,
            &e("ErrorInvalidIdEmpty", "Id must be non-empty."),
            "",
        ));
    }
    wrap(OP, &msgs)
}

fn restriction_value(r: &Node) -> Option<(&str, String)> {
    let uri = r.child("FieldURI")?.attr("FieldURI")?;
    let value = r
        .path(&["FieldURIOrConstant", "Constant"])
        .or_else(|| r.child("Constant"))
        .and_then(|c| c.attr("Value"))?;
    Some((uri, value.to_string()))
}

fn find_folder(s: &DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "FindFolder";
    let sh = shape(op.child("FolderShape"));
    let deep = op.attr("Traversal") == Some("Deep");
    let name_filter = op
        .path(&["Restriction", "IsEqualTo"])
        .and_then(restriction_value)
        .filter(|(uri, _)| *uri == "folder:DisplayName")
        .map(|(_, v)| v);
    let msg = match first_folder_ref(s, ctx, op.child("ParentFolderIds")) {
        Err(err) => failure(OP, &err, ""),
        Ok((mb, parent)) => {
            let m = &s.mailboxes[&mb];
            let mut parents = vec![parent];
            let mut found = Vec::new();
            while let Some(p) = parents.pop() {
                for f in m
                    .folders
                    .iter()
                    .filter(|f| f.parent.as_deref() == Some(p.as_str()))
                {
                    found.push(f);
                    if deep {
                        parents.push(f.id.clone());
                    }
                }
            }
            found.retain(|f| {
                name_filter
                    .as_deref()
                    .is_none_or(|n| f.display_name.eq_ignore_ascii_case(n))
            });
            let (offset, max) = paging(op.child("IndexedPageFolderView"));
            let total = found.len();
            let page: Vec<_> = found.iter().skip(offset).take(max).collect();
            let last = offset + page.len() >= total;
            let xml: String = page.iter().map(|f| folder_xml(m, f, &sh)).collect();
            success(
                OP,
                &format!(
                    "<m:RootFolder IndexedPagingOffset=\"{}\" TotalItemsInView=\"{total}\" \
                     IncludesLastItemInRange=\"{last}\"><t:Folders>{xml}</t:Folders></m:RootFolder>",
                    offset + page.len()
                ),
            )
        }
    };
    wrap(OP, &[msg])
}

fn paging(view: Option<&Node>) -> (usize, usize) {
    let offset = view
        .and_then(|v| v.attr("Offset"))
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let max = view
        .and_then(|v| v.attr("MaxEntriesReturned"))
        .and_then(|o| o.parse().ok())
        .unwrap_or(1000);
    (offset, max)
}

fn create_folder(s: &mut DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "CreateFolder";
    let parent = match first_folder_ref(s, ctx, op.child("ParentFolderId")) {
        Ok(p) => p,
        Err(err) => return wrap(OP, &[failure(OP, &err, "<m:Folders/>")]),
    };
    let mut msgs = Vec::new();
    let folders: Vec<Node> = op
        .child("Folders")
        .map(|f| f.children.clone())
        .unwrap_or_default();
    for f in folders {
        let name = f.child_text("DisplayName").unwrap_or("").to_string();
        let class = f.child_text("FolderClass").map(str::to_string);
        let (mb, pid) = &parent;
        let exists = s.mailboxes[mb].folders.iter().any(|x| {
            x.parent.as_deref() == Some(pid.as_str()) && x.display_name.eq_ignore_ascii_case(&name)
        });
        if name.is_empty() {
            msgs.push(failure(
                OP,
                &e("ErrorInvalidFolderId", "The folder name is empty."),
                "<m:Folders/>",
            ));
            continue;
        }
        if exists {
            msgs.push(failure(
                OP,
                &e(
                    "ErrorFolderExists",
                    "A folder with the specified name already exists.",
                ),
                "<m:Folders/>",
            ));
            continue;
        }
        s.counter += 1;
        let id = store::new_id("folder", s.counter, mb);
        let folder = store::Folder {
            id: id.clone(),
            change_key: 1,
            parent: Some(pid.clone()),
            display_name: name,
            distinguished: None,
            folder_class: class.or_else(|| Some("IPF.Note".into())),
        };
        let ck = folder_ck(&folder);
        s.seq += 1;
        let seq = s.seq;
        if let Some(m) = s.mailboxes.get_mut(mb) {
            m.folders.push(folder);
            m.folder_log.push((seq, id.clone()));
        }
        msgs.push(success(
            OP,
            &format!(
                "<m:Folders><t:Folder>{}</t:Folder></m:Folders>",
                id_attrs("FolderId", &id, &ck)
            ),
        ));
    }
    wrap(OP, &msgs)
}

// ---------------------------------------------------------------------------------------------
// SyncFolderHierarchy

/// The folders below SyncFolderId (default: the mailbox root): all of them as `Create` at first,
/// later the folders created since the SyncState.
fn sync_folder_hierarchy(s: &DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "SyncFolderHierarchy";
    let sh = shape(op.child("FolderShape"));
    let result = (|| -> Result<String, E> {
        let (mb, root) = match op.child("SyncFolderId") {
            Some(n) => first_folder_ref(s, ctx, Some(n))?,
            None => {
                let mb = mailbox_key(ctx)?;
                let root = s.mailboxes[&mb]
                    .folder("root")
                    .map(|f| f.id.clone())
                    .ok_or_else(folder_not_found)?;
                (mb, root)
            }
        };
        let m = &s.mailboxes[&mb];
        let since = match op.child_text("SyncState").filter(|t| !t.is_empty()) {
            None => None,
            Some(state) => Some(store::decode_hierarchy_state(state, &root).ok_or_else(|| {
                e(
                    "ErrorInvalidSyncStateData",
                    "Synchronization state data is corrupt or otherwise invalid.",
                )
            })?),
        };
        let below = m.descendants(&root);
        let changes: String = below
            .iter()
            .filter(|f| {
                since.is_none_or(|seq| m.folder_log.iter().any(|(at, id)| *at > seq && *id == f.id))
            })
            .map(|f| format!("<t:Create>{}</t:Create>", folder_xml(m, f, &sh)))
            .collect();
        Ok(format!(
            "<m:SyncState>{}</m:SyncState><m:IncludesLastFolderInRange>true</m:IncludesLastFolderInRange>\
             <m:Changes>{changes}</m:Changes>",
            store::encode_hierarchy_state(&root, s.seq)
        ))
    })();
    wrap(
        OP,
        &[match result {
            Ok(inner) => success(OP, &inner),
            Err(err) => failure(OP, &err, ""),
        }],
    )
}

// ---------------------------------------------------------------------------------------------
// SyncFolderItems

fn sync_folder_items(s: &DoubleState, ctx: &Ctx, op: &Node) -> Result<String, Box<Response<Body>>> {
    const OP: &str = "SyncFolderItems";
    let v = s.cfg.version;
    let sh = shape(op.child("ItemShape"));
    let max_node = op.child("MaxChangesReturned");
    let max: u32 = match max_node.map(|n| n.text.trim().parse::<u32>()) {
        Some(Ok(n)) if (1..=512).contains(&n) => n,
        _ => {
            return Err(Box::new(schema_fault(
                v,
                "The 'MaxChangesReturned' element is invalid - The value must be an integer from 1 to 512.",
                max_node.map_or(op.line, |n| n.line),
            )));
        }
    };
    let max = max.min(s.cfg.max_sync_items.max(1)) as usize;
    let (mb, folder) = match first_folder_ref(s, ctx, op.child("SyncFolderId")) {
        Ok(f) => f,
        Err(err) => return Ok(wrap(OP, &[failure(OP, &err, "")])),
    };
    let since = match op.child_text("SyncState").filter(|t| !t.is_empty()) {
        None => 0,
        Some(state) => match store::decode_sync_state(state, &folder) {
            Some(seq) => seq,
            None => {
                let err = e(
                    "ErrorInvalidSyncStateData",
                    "Synchronization state data is corrupt or otherwise invalid.",
                );
                return Ok(wrap(OP, &[failure(OP, &err, "")]));
            }
        },
    };
    let ignore: HashSet<&str> = op
        .child("Ignore")
        .map(|i| {
            i.children_named("ItemId")
                .filter_map(|n| n.attr("Id"))
                .collect()
        })
        .unwrap_or_default();
    let m = &s.mailboxes[&mb];
    // One pass over the log: per item of this folder, was it there at `since`, was it changed
    // beyond its read flag after it, and where does its first change after `since` sit.
    struct Seen {
        known: bool,
        updated: bool,
        first: u64,
    }
    let mut seen: HashMap<&str, Seen> = HashMap::new();
    let mut order: Vec<(&str, u64)> = Vec::new();
    for c in m.log.iter().filter(|c| c.folder == folder) {
        let e = seen.entry(c.item.as_str()).or_insert(Seen {
            known: false,
            updated: false,
            first: 0,
        });
        if c.seq <= since {
            match c.kind {
                ChangeKind::Create => e.known = true,
                ChangeKind::Delete => e.known = false,
                _ => {}
            }
            continue;
        }
        if e.first == 0 {
            e.first = c.seq;
            order.push((c.item.as_str(), c.seq));
        }
        if c.kind == ChangeKind::Update {
            e.updated = true;
        }
    }
    let mut changes = Vec::new();
    let mut new_state = since;
    let mut complete = true;
    for (item, first) in order {
        let Some(info) = seen.get(item) else {
            continue;
        };
        let now = m.items.get(item).filter(|i| i.folder == folder);
        let xml = match (info.known, now) {
            (false, None) => continue,
            (false, Some(i)) => format!("<t:Create>{}</t:Create>", item_xml(m, i, &sh, true)),
            (true, None) => format!("<t:Delete><t:ItemId Id=\"{}\"/></t:Delete>", esc(item)),
            (true, Some(i)) if info.updated => {
                format!("<t:Update>{}</t:Update>", item_xml(m, i, &sh, true))
            }
            (true, Some(i)) => format!(
                "<t:ReadFlagChange>{}<t:IsRead>{}</t:IsRead></t:ReadFlagChange>",
                id_attrs("ItemId", &i.id, &item_ck(i)),
                i.is_read
            ),
        };
        if ignore.contains(item) {
            continue;
        }
        if changes.len() == max {
            complete = false;
            break;
        }
        changes.push(xml);
        new_state = first;
    }
    if complete {
        new_state = m.log.last().map_or(since, |c| c.seq.max(since));
    }
    Ok(wrap(
        OP,
        &[success(
            OP,
            &format!(
                "<m:SyncState>{}</m:SyncState><m:IncludesLastItemInRange>{complete}\
                 </m:IncludesLastItemInRange><m:Changes>{}</m:Changes>",
                store::encode_sync_state(&folder, new_state),
                changes.concat()
            ),
        )],
    ))
}

// ---------------------------------------------------------------------------------------------
// Items

fn get_item(s: &DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "GetItem";
    let sh = shape(op.child("ItemShape"));
    let ids: Vec<&Node> = op
        .child("ItemIds")
        .map(|n| n.children.iter().collect())
        .unwrap_or_default();
    let mut msgs = Vec::new();
    for id in ids {
        match find_occurrence(s, ctx, id) {
            Ok(None) => {}
            Ok(Some((mb, master, original))) => {
                let m = &s.mailboxes[&mb];
                let i = &m.items[&master];
                let mut occ = i.clone();
                occ.id = occurrences::occurrence_id(&master, original);
                occ.pim = i.pim.as_ref().map(|p| occurrences::occurrence(p, original));
                msgs.push(success(
                    OP,
                    &format!("<m:Items>{}</m:Items>", item_xml(m, &occ, &sh, false)),
                ));
                continue;
            }
            Err(err) => {
                msgs.push(failure(OP, &err, "<m:Items/>"));
                continue;
            }
        }
        msgs.push(match find_item_id(s, ctx, id) {
            Ok((mb, i)) => success(
                OP,
                &format!(
                    "<m:Items>{}</m:Items>",
                    item_xml(&s.mailboxes[&mb], i, &sh, true)
                ),
            ),
            Err(err) => failure(OP, &err, "<m:Items/>"),
        });
    }
    if msgs.is_empty() {
        msgs.push(failure(
            OP,
            &e("ErrorInvalidIdEmpty", "Id must be non-empty."),
            "<m:Items/>",
        ));
    }
    wrap(OP, &msgs)
}

/// Evaluates a restriction on an item; `Err` for paths the double cannot search.
fn matches(r: &Node, i: &Item) -> Result<bool, E> {
    let field = |path: &Node| -> Result<Option<String>, E> {
        if let Some(p) = &i.pim {
            return Ok(pim::value_at(p, path));
        }
        if path.name == "ExtendedFieldURI" {
            // Messages carry no extended properties here: the property is absent.
            return Ok(None);
        }
        let uri = path.attr("FieldURI").unwrap_or("");
        Ok(Some(match uri {
            "message:InternetMessageId" => i.internet_message_id.clone().unwrap_or_default(),
            "item:Subject" => i.subject.clone(),
            "message:IsRead" => i.is_read.to_string(),
            _ => {
                return Err(e(
                    "ErrorUnsupportedPathForQuery",
                    "The property can not be used with this type of restriction.",
                ));
            }
        }))
    };
    let operand = |r: &Node| -> Result<(Node, String), E> {
        let path = r.children.iter().find(|c| {
            matches!(
                c.name.as_str(),
                "FieldURI" | "IndexedFieldURI" | "ExtendedFieldURI"
            )
        });
        let value = r
            .path(&["FieldURIOrConstant", "Constant"])
            .or_else(|| r.child("Constant"))
            .and_then(|c| c.attr("Value"));
        match (path, value) {
            (Some(p), Some(v)) => Ok((p.clone(), v.to_string())),
            _ => Err(e(
                "ErrorInvalidRestriction",
                "Restriction contains an invalid search expression.",
            )),
        }
    };
    match r.name.as_str() {
        "Restriction" | "Not" => {
            let inner = r.children.first().ok_or_else(|| {
                e(
                    "ErrorInvalidRestriction",
                    "Restriction contains an invalid search expression.",
                )
            })?;
            let v = matches(inner, i)?;
            Ok(if r.name == "Not" { !v } else { v })
        }
        "And" => {
            for c in &r.children {
                if !matches(c, i)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        "Or" => {
            for c in &r.children {
                if matches(c, i)? {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        "IsEqualTo" | "IsNotEqualTo" => {
            let (path, want) = operand(r)?;
            // An absent property equals nothing (and is unequal to everything).
            let eq = field(&path)?.is_some_and(|v| v == want);
            Ok(if r.name == "IsEqualTo" { eq } else { !eq })
        }
        "Contains" => {
            let (path, want) = operand(r)?;
            Ok(field(&path)?
                .unwrap_or_default()
                .to_lowercase()
                .contains(&want.to_lowercase()))
        }
        _ => Err(e(
            "ErrorUnsupportedQueryFilter",
            "The query filter is not supported by this test double.",
        )),
    }
}

fn find_item(s: &DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "FindItem";
    let sh = shape(op.child("ItemShape"));
    let msg = (|| -> Result<String, E> {
        let (mb, folder) = first_folder_ref(s, ctx, op.child("ParentFolderIds"))?;
        let m = &s.mailboxes[&mb];
        let mut found = Vec::new();
        for i in m.items_in(&folder) {
            let keep = match op.child("Restriction") {
                Some(r) => matches(r, i)?,
                None => true,
            };
            if keep {
                found.push(i);
            }
        }
        // Exchange's default order: newest received first.
        found.sort_by_key(|i| std::cmp::Reverse(i.order));
        let (offset, max) = paging(op.child("IndexedPageItemView"));
        let total = found.len();
        let page: Vec<_> = found.iter().skip(offset).take(max).collect();
        let last = offset + page.len() >= total;
        let xml: String = page.iter().map(|i| item_xml(m, i, &sh, false)).collect();
        Ok(success(
            OP,
            &format!(
                "<m:RootFolder IndexedPagingOffset=\"{}\" TotalItemsInView=\"{total}\" \
                 IncludesLastItemInRange=\"{last}\"><t:Items>{xml}</t:Items></m:RootFolder>",
                offset + page.len()
            ),
        ))
    })();
    wrap(OP, &[msg.unwrap_or_else(|err| failure(OP, &err, ""))])
}

fn ensure_message_id(mime: Vec<u8>, domain: &str) -> Vec<u8> {
    if store::mime_header(&mime, "Message-ID").is_some() {
        return mime;
    }
    let mut out = format!(
        "Message-ID: <{}@{domain}>\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes();
    out.extend_from_slice(&mime);
    out
}

fn create_item(s: &mut DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "CreateItem";
    let disposition = op.attr("MessageDisposition");
    let items: Vec<Node> = op
        .child("Items")
        .map(|n| n.children.clone())
        .unwrap_or_default();
    let saved = op
        .child("SavedItemFolderId")
        .map(|n| first_folder_ref(s, ctx, Some(n)));
    let mut msgs = Vec::new();
    for item in &items {
        let result = (|| -> Result<String, E> {
            if pim::KINDS.contains(&item.name.as_str()) {
                return create_pim(s, ctx, op, item, saved.clone());
            }
            if item.name != "Message" {
                return Err(e(
                    "ErrorInvalidItemForOperationCreateItem",
                    "The CreateItem request is only supported for messages, calendar items, contacts, tasks and distribution lists by this test double.",
                ));
            }
            let mb = mailbox_key(ctx)?;
            let mime = match item.child("MimeContent") {
                Some(mc) => {
                    let compact: String = mc.text.split_whitespace().collect();
                    B64.decode(compact)
                        .map_err(|_| e("ErrorMimeContentInvalid", "The MIME content is invalid."))?
                }
                None => format!(
                    "Subject: {}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n",
                    item.child_text("Subject").unwrap_or(""),
                    item.child_text("Body").unwrap_or("")
                )
                .into_bytes(),
            };
            let is_read = item.child_text("IsRead").map(|t| t == "true");
            let folder_of = |s: &DoubleState, dist: &str| -> Result<(String, String), E> {
                match &saved {
                    Some(r) => r.clone(),
                    None => s.mailboxes[&mb]
                        .folder(dist)
                        .map(|f| (mb.clone(), f.id.clone()))
                        .ok_or_else(folder_not_found),
                }
            };
            match disposition {
                None => Err(e(
                    "ErrorMessageDispositionRequired",
                    "MessageDisposition attribute is required.",
                )),
                Some("SaveOnly") => {
                    let (mbk, folder) = folder_of(s, "drafts")?;
                    let id =
                        insert_item(s, &mbk, &folder, mime, is_read.unwrap_or(true), Utc::now());
                    emit(s, &mbk, "CreatedEvent", &id, &folder, None);
                    let ck = item_ck(&s.mailboxes[&mbk].items[&id]);
                    Ok(format!(
                        "<m:Items><t:Message>{}</t:Message></m:Items>",
                        id_attrs("ItemId", &id, &ck)
                    ))
                }
                Some("SendOnly") => {
                    let domain = s.cfg.domain.clone();
                    s.sent.push(ensure_message_id(mime, &domain));
                    Ok("<m:Items/>".into())
                }
                Some("SendAndSaveCopy") => {
                    let (mbk, folder) = folder_of(s, "sentitems")?;
                    let domain = s.cfg.domain.clone();
                    let mime = ensure_message_id(mime, &domain);
                    s.sent.push(mime.clone());
                    let id = insert_item(s, &mbk, &folder, mime, true, Utc::now());
                    emit(s, &mbk, "CreatedEvent", &id, &folder, None);
                    Ok("<m:Items/>".into())
                }
                Some(_) => Err(e("ErrorInvalidRequest", "MessageDisposition is invalid.")),
            }
        })();
        msgs.push(match result {
            Ok(inner) => success(OP, &inner),
            Err(err) => failure(OP, &err, "<m:Items/>"),
        });
    }
    if msgs.is_empty() {
        msgs.push(failure(
            OP,
            &e("ErrorInvalidRequest", "No items to create."),
            "<m:Items/>",
        ));
    }
    wrap(OP, &msgs)
}

/// The mailbox's (SMTP address, display name).
fn owner_of(s: &DoubleState, mb: &str) -> (String, String) {
    s.mailboxes
        .get(mb)
        .map(|m| (m.smtp.clone(), m.display_name.clone()))
        .unwrap_or_default()
}

/// Stores a calendar item, contact, task or distribution list (CreateItem).
fn create_pim(
    s: &mut DoubleState,
    ctx: &Ctx,
    op: &Node,
    item: &Node,
    saved: Option<Result<(String, String), E>>,
) -> Result<String, E> {
    if item.name == "CalendarItem" && op.attr("SendMeetingInvitations").is_none() {
        return Err(e(
            "ErrorSendMeetingInvitationsRequired",
            "The SendMeetingInvitations attribute is required for calendar items.",
        ));
    }
    let (mbk, folder) = match saved {
        Some(r) => r?,
        None => {
            let mb = mailbox_key(ctx)?;
            let f = s.mailboxes[&mb]
                .folder(pim::default_folder(&item.name))
                .map(|f| f.id.clone())
                .ok_or_else(folder_not_found)?;
            (mb, f)
        }
    };
    let (smtp, name) = owner_of(s, &mbk);
    let p = pim::new_pim(
        item,
        &pim::Owner {
            smtp: &smtp,
            name: &name,
        },
    );
    let kind = p.kind.clone();
    let id = insert_item_with(s, &mbk, &folder, Vec::new(), true, Utc::now(), Some(p));
    emit(s, &mbk, "CreatedEvent", &id, &folder, None);
    let ck = item_ck(&s.mailboxes[&mbk].items[&id]);
    Ok(format!(
        "<m:Items><t:{kind}>{}</t:{kind}></m:Items>",
        id_attrs("ItemId", &id, &ck)
    ))
}

fn update_item(s: &mut DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "UpdateItem";
    let resolution = op.attr("ConflictResolution").unwrap_or("AutoResolve");
    let changes: Vec<Node> = op
        .child("ItemChanges")
        .map(|n| n.children.clone())
        .unwrap_or_default();
    let mut msgs = Vec::new();
    for change in &changes {
        let result = (|| -> Result<String, E> {
            let id_node = change
                .child("ItemId")
                .or_else(|| change.child("OccurrenceItemId"))
                .ok_or_else(|| e("ErrorInvalidIdEmpty", "Id must be non-empty."))?;
            if let Some((mb, master, original)) = find_occurrence(s, ctx, id_node)? {
                if op.attr("SendMeetingInvitationsOrCancellations").is_none() {
                    return Err(e(
                        "ErrorSendMeetingInvitationsOrCancellationsRequired",
                        "The SendMeetingInvitationsOrCancellations attribute is required for calendar items.",
                    ));
                }
                let updates = change
                    .child("Updates")
                    .map(|u| u.children.clone())
                    .unwrap_or_default();
                let Some(item) = s
                    .mailboxes
                    .get_mut(&mb)
                    .and_then(|m| m.items.get_mut(&master))
                else {
                    return Err(not_found());
                };
                let mut p = item.pim.clone().ok_or_else(not_found)?;
                let occ =
                    occurrences::modify(&mut p, &master, original, |o| pim::apply(o, &updates))
                        .map_err(refused)?;
                item.pim = Some(p);
                item.version += 1;
                item.modified = Utc::now();
                let (ck, folder) = (item_ck(item), item.folder.clone());
                log_change(s, &mb, &folder, &master, ChangeKind::Update);
                emit(s, &mb, "ModifiedEvent", &master, &folder, None);
                return Ok(format!(
                    "<m:Items><t:CalendarItem>{}</t:CalendarItem></m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
                    id_attrs("ItemId", &occ, &ck)
                ));
            }
            let (mb, item) = find_item_id(s, ctx, id_node)?;
            let (id, folder, current_ck) = (item.id.clone(), item.folder.clone(), item_ck(item));
            if let Some(ck) = id_node.attr("ChangeKey")
                && ck != current_ck
                && resolution != "AlwaysOverwrite"
            {
                return Err(e(
                    "ErrorIrresolvableConflict",
                    "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.",
                ));
            }
            let updates = change
                .child("Updates")
                .map(|u| u.children.clone())
                .unwrap_or_default();
            if let Some(kind) = item.pim.as_ref().map(|p| p.kind.clone()) {
                if kind == "CalendarItem"
                    && op.attr("SendMeetingInvitationsOrCancellations").is_none()
                {
                    return Err(e(
                        "ErrorSendMeetingInvitationsOrCancellationsRequired",
                        "The SendMeetingInvitationsOrCancellations attribute is required for calendar items.",
                    ));
                }
                let Some(item) = s.mailboxes.get_mut(&mb).and_then(|m| m.items.get_mut(&id)) else {
                    return Err(not_found());
                };
                let mut p = item.pim.clone().unwrap_or_else(|| Pim {
                    kind: kind.clone(),
                    fields: Vec::new(),
                    extended: Vec::new(),
                });
                pim::apply(&mut p, &updates).map_err(|(code, text)| e(code, text))?;
                item.subject = p
                    .field("Subject")
                    .map(|n| n.text.trim().to_string())
                    .unwrap_or_default();
                item.pim = Some(p);
                item.version += 1;
                item.modified = Utc::now();
                let ck = item_ck(item);
                log_change(s, &mb, &folder, &id, ChangeKind::Update);
                emit(s, &mb, "ModifiedEvent", &id, &folder, None);
                return Ok(format!(
                    "<m:Items><t:{kind}>{}</t:{kind}></m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
                    id_attrs("ItemId", &id, &ck)
                ));
            }
            let mut read_only = true;
            let mut changed = false;
            let Some(item) = s.mailboxes.get_mut(&mb).and_then(|m| m.items.get_mut(&id)) else {
                return Err(not_found());
            };
            for u in &updates {
                let uri = u
                    .child("FieldURI")
                    .and_then(|f| f.attr("FieldURI"))
                    .unwrap_or("");
                let value = u
                    .children
                    .iter()
                    .find(|c| {
                        c.name != "FieldURI"
                            && c.name != "ExtendedFieldURI"
                            && c.name != "IndexedFieldURI"
                    })
                    .and_then(|c| c.children.first())
                    .map(|c| c.text.trim().to_string());
                match (u.name.as_str(), uri, value) {
                    ("SetItemField", "message:IsRead", Some(v)) => {
                        let new = v == "true" || v == "1";
                        if new != item.is_read {
                            item.is_read = new;
                            changed = true;
                        }
                    }
                    ("SetItemField", "item:Subject", Some(v)) => {
                        item.subject = v;
                        read_only = false;
                        changed = true;
                    }
                    _ => {
                        read_only = false;
                        changed = true;
                    }
                }
            }
            item.version += 1;
            let ck = item_ck(item);
            if changed {
                let kind = if read_only {
                    ChangeKind::ReadFlag
                } else {
                    ChangeKind::Update
                };
                log_change(s, &mb, &folder, &id, kind);
                emit(s, &mb, "ModifiedEvent", &id, &folder, None);
            }
            Ok(format!(
                "<m:Items><t:Message>{}</t:Message></m:Items><m:ConflictResults><t:Count>0</t:Count></m:ConflictResults>",
                id_attrs("ItemId", &id, &ck)
            ))
        })();
        msgs.push(match result {
            Ok(inner) => success(OP, &inner),
            Err(err) => failure(OP, &err, "<m:Items/>"),
        });
    }
    wrap(OP, &msgs)
}

fn move_item(s: &mut DoubleState, ctx: &Ctx, op: &Node, copy: bool) -> String {
    let name = if copy { "CopyItem" } else { "MoveItem" };
    let target = first_folder_ref(s, ctx, op.child("ToFolderId"));
    let ids: Vec<Node> = op
        .child("ItemIds")
        .map(|n| n.children.clone())
        .unwrap_or_default();
    let mut msgs = Vec::new();
    for id_node in &ids {
        let result = (|| -> Result<String, E> {
            let (to_mb, to_folder) = target.clone()?;
            let (mb, item) = find_item_id(s, ctx, id_node)?;
            let (old_id, old_folder, mime, is_read, received, kept) = (
                item.id.clone(),
                item.folder.clone(),
                item.mime.clone(),
                item.is_read,
                item.received,
                item.pim.clone(),
            );
            if !copy {
                if let Some(m) = s.mailboxes.get_mut(&mb) {
                    m.items.remove(&old_id);
                }
                log_change(s, &mb, &old_folder, &old_id, ChangeKind::Delete);
            }
            let element = kept
                .as_ref()
                .map_or("Message", |p| p.kind.as_str())
                .to_string();
            let new_id = insert_item_with(s, &to_mb, &to_folder, mime, is_read, received, kept);
            let kind = if copy { "CopiedEvent" } else { "MovedEvent" };
            emit(
                s,
                &to_mb,
                kind,
                &new_id,
                &to_folder,
                Some((&old_id, &old_folder)),
            );
            let ck = item_ck(&s.mailboxes[&to_mb].items[&new_id]);
            Ok(format!(
                "<m:Items><t:{element}>{}</t:{element}></m:Items>",
                id_attrs("ItemId", &new_id, &ck)
            ))
        })();
        msgs.push(match result {
            Ok(inner) => success(name, &inner),
            Err(err) => failure(name, &err, "<m:Items/>"),
        });
    }
    wrap(name, &msgs)
}

fn delete_item(s: &mut DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "DeleteItem";
    let to_trash = op.attr("DeleteType") == Some("MoveToDeletedItems");
    let ids: Vec<Node> = op
        .child("ItemIds")
        .map(|n| n.children.clone())
        .unwrap_or_default();
    let mut msgs = Vec::new();
    for id_node in &ids {
        let result = (|| -> Result<(), E> {
            if let Some((mb, master, original)) = find_occurrence(s, ctx, id_node)? {
                if op.attr("SendMeetingCancellations").is_none() {
                    return Err(e(
                        "ErrorSendMeetingCancellationsRequired",
                        "The SendMeetingCancellations attribute is required for calendar items.",
                    ));
                }
                let Some(item) = s
                    .mailboxes
                    .get_mut(&mb)
                    .and_then(|m| m.items.get_mut(&master))
                else {
                    return Err(not_found());
                };
                let mut p = item.pim.clone().ok_or_else(not_found)?;
                occurrences::cancel(&mut p, original).map_err(refused)?;
                item.pim = Some(p);
                item.version += 1;
                item.modified = Utc::now();
                let folder = item.folder.clone();
                log_change(s, &mb, &folder, &master, ChangeKind::Update);
                emit(s, &mb, "ModifiedEvent", &master, &folder, None);
                return Ok(());
            }
            let (mb, item) = find_item_id(s, ctx, id_node)?;
            let (id, folder, mime, is_read, received, kept) = (
                item.id.clone(),
                item.folder.clone(),
                item.mime.clone(),
                item.is_read,
                item.received,
                item.pim.clone(),
            );
            match kept.as_ref().map(|p| p.kind.as_str()) {
                Some("CalendarItem") if op.attr("SendMeetingCancellations").is_none() => {
                    return Err(e(
                        "ErrorSendMeetingCancellationsRequired",
                        "The SendMeetingCancellations attribute is required for calendar items.",
                    ));
                }
                Some("Task") if op.attr("AffectedTaskOccurrences").is_none() => {
                    return Err(e(
                        "ErrorAffectedTaskOccurrencesRequired",
                        "The AffectedTaskOccurrences attribute is required for tasks.",
                    ));
                }
                _ => {}
            }
            let trash = s.mailboxes[&mb]
                .folder("deleteditems")
                .map(|f| f.id.clone());
            if let Some(m) = s.mailboxes.get_mut(&mb) {
                m.items.remove(&id);
            }
            log_change(s, &mb, &folder, &id, ChangeKind::Delete);
            match trash.filter(|t| to_trash && *t != folder) {
                Some(t) => {
                    let new_id = insert_item_with(s, &mb, &t, mime, is_read, received, kept);
                    emit(s, &mb, "MovedEvent", &new_id, &t, Some((&id, &folder)));
                }
                None => emit(s, &mb, "DeletedEvent", &id, &folder, None),
            }
            Ok(())
        })();
        msgs.push(match result {
            Ok(()) => success(OP, ""),
            Err(err) => failure(OP, &err, ""),
        });
    }
    wrap(OP, &msgs)
}

fn convert_id(op: &Node) -> String {
    const OP: &str = "ConvertId";
    let dest = op.attr("DestinationFormat").unwrap_or("EwsId");
    let mut msgs = Vec::new();
    for a in op
        .child("SourceIds")
        .map(|n| n.children.as_slice())
        .unwrap_or(&[])
    {
        let id = a.attr("Id").unwrap_or("");
        let mailbox = a.attr("Mailbox").unwrap_or("");
        let valid = id.starts_with("AAMkA") && B64.decode(id.get(5..).unwrap_or("")).is_ok();
        msgs.push(if valid {
            success(
                OP,
                &format!(
                    "<m:AlternateId xsi:type=\"t:AlternateIdType\" Format=\"{}\" Id=\"{}\" Mailbox=\"{}\"/>",
                    esc(dest),
                    esc(id),
                    esc(mailbox)
                ),
            )
        } else {
            failure(OP, &e("ErrorInvalidIdMalformed", "Id is malformed."), "")
        });
    }
    if msgs.is_empty() {
        msgs.push(failure(
            OP,
            &e("ErrorInvalidIdEmpty", "Id must be non-empty."),
            "",
        ));
    }
    wrap(OP, &msgs)
}

// ---------------------------------------------------------------------------------------------
// Notifications

fn subscribe(s: &mut DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "Subscribe";
    let result = (|| -> Result<String, E> {
        let (req, streaming) = match (
            op.child("PullSubscriptionRequest"),
            op.child("StreamingSubscriptionRequest"),
        ) {
            (Some(r), _) => (r, false),
            (None, Some(r)) => (r, true),
            _ => {
                return Err(e(
                    "ErrorInvalidSubscriptionRequest",
                    "Only pull and streaming subscriptions are supported by this test double.",
                ));
            }
        };
        let mb = mailbox_key(ctx)?;
        let all = req.attr("SubscribeToAllFolders") == Some("true");
        let folders = if all {
            None
        } else {
            let mut fs = Vec::new();
            for f in req
                .child("FolderIds")
                .map(|n| n.children.as_slice())
                .unwrap_or(&[])
            {
                fs.push(folder_ref(s, ctx, f)?.1);
            }
            if fs.is_empty() {
                return Err(e(
                    "ErrorInvalidSubscriptionRequest",
                    "No folders to subscribe to.",
                ));
            }
            Some(fs)
        };
        let event_types: Vec<String> = req
            .child("EventTypes")
            .map(|t| {
                t.children
                    .iter()
                    .map(|c| c.text.trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        if event_types.is_empty() {
            return Err(e(
                "ErrorInvalidSubscriptionRequest",
                "EventTypes must not be empty.",
            ));
        }
        s.counter += 1;
        let id = B64.encode(format!(
            "sub|{}|{}",
            s.counter,
            uuid::Uuid::new_v4().simple()
        ));
        let acked = req
            .child_text("Watermark")
            .and_then(store::decode_watermark)
            .unwrap_or(s.seq);
        s.subs.insert(
            id.clone(),
            Subscription {
                mailbox: mb,
                folders,
                event_types,
                streaming,
                queue: Vec::new(),
                wake: Arc::new(tokio::sync::Notify::new()),
                acked,
            },
        );
        Ok(if streaming {
            format!("<m:SubscriptionId>{id}</m:SubscriptionId>")
        } else {
            format!(
                "<m:SubscriptionId>{id}</m:SubscriptionId><m:Watermark>{}</m:Watermark>",
                store::encode_watermark(acked)
            )
        })
    })();
    wrap(
        OP,
        &[match result {
            Ok(inner) => success(OP, &inner),
            Err(err) => failure(OP, &err, ""),
        }],
    )
}

fn sub_not_found() -> E {
    e(
        "ErrorSubscriptionNotFound",
        "The specified subscription was not found.",
    )
}

fn get_events(s: &mut DoubleState, ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "GetEvents";
    let id = op.child_text("SubscriptionId").unwrap_or("").to_string();
    let given = op.child_text("Watermark").and_then(store::decode_watermark);
    let result = (|| -> Result<String, E> {
        let sub = s
            .subs
            .get_mut(&id)
            .filter(|x| !x.streaming)
            .ok_or_else(sub_not_found)?;
        if ctx.mailbox.as_deref().is_some_and(|m| m != sub.mailbox) {
            return Err(e(
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ));
        }
        let previous =
            given.ok_or_else(|| e("ErrorInvalidWatermark", "The watermark is invalid."))?;
        sub.queue.retain(|ev| ev.watermark > previous);
        let events: Vec<Event> = sub.queue.iter().take(50).cloned().collect();
        let more = sub.queue.len() > events.len();
        sub.acked = previous;
        let xml = if events.is_empty() {
            event_xml(&Event {
                kind: "StatusEvent",
                watermark: previous,
                time: Utc::now(),
                item: None,
                folder: (String::new(), String::new()),
                old_item: None,
                old_folder: None,
            })
        } else {
            events.iter().map(event_xml).collect()
        };
        Ok(format!(
            "<m:Notification><t:SubscriptionId>{}</t:SubscriptionId><t:PreviousWatermark>{}</t:PreviousWatermark>\
             <t:MoreEvents>{more}</t:MoreEvents>{xml}</m:Notification>",
            esc(&id),
            store::encode_watermark(previous)
        ))
    })();
    wrap(
        OP,
        &[match result {
            Ok(inner) => success(OP, &inner),
            Err(err) => failure(OP, &err, ""),
        }],
    )
}

fn unsubscribe(s: &mut DoubleState, _ctx: &Ctx, op: &Node) -> String {
    const OP: &str = "Unsubscribe";
    let id = op.child_text("SubscriptionId").unwrap_or("");
    let msg = match s.subs.remove(id) {
        Some(sub) => {
            sub.wake.notify_one();
            success(OP, "")
        }
        None => failure(OP, &sub_not_found(), ""),
    };
    wrap(OP, &[msg])
}

fn streaming_chunk(v: ExchangeServerVersion, inner: &str) -> String {
    envelope(
        v,
        &wrap(
            "GetStreamingEvents",
            &[success("GetStreamingEvents", inner)],
        ),
    )
}

/// GetStreamingEvents: a chunked response of whole SOAP envelopes — notifications as they
/// happen, `ConnectionStatus OK` heartbeats, and `ConnectionStatus Closed` at the timeout.
async fn streaming(
    state: &Shared,
    v: ExchangeServerVersion,
    ctx: &Ctx,
    op: &Node,
) -> Response<Body> {
    const OP: &str = "GetStreamingEvents";
    let ids: Vec<String> = op
        .child("SubscriptionIds")
        .map(|n| {
            n.children
                .iter()
                .map(|c| c.text.trim().to_string())
                .collect()
        })
        .unwrap_or_default();
    let minutes = op
        .child_text("ConnectionTimeout")
        .and_then(|t| t.parse::<u64>().ok())
        .filter(|m| (1..=30).contains(m));
    let Some(minutes) = minutes else {
        let text = "The 'ConnectionTimeout' element is invalid - The value must be from 1 to 30.";
        return schema_fault(v, text, op.line);
    };
    let wake = Arc::new(tokio::sync::Notify::new());
    let (heartbeat, timeout) = {
        let mut s = lock(state);
        let mut bad = None;
        for id in &ids {
            match s.subs.get_mut(id) {
                Some(sub)
                    if sub.streaming && ctx.mailbox.as_deref().is_none_or(|m| m == sub.mailbox) =>
                {
                    sub.wake = wake.clone();
                }
                _ => bad = Some(id.clone()),
            }
        }
        if ids.is_empty() || bad.is_some() {
            return ok(v, &wrap(OP, &[failure(OP, &sub_not_found(), "")]));
        }
        let mut timeout = Duration::from_secs(minutes * 60);
        if let Some(cap) = s.cfg.streaming_timeout_cap {
            timeout = timeout.min(cap);
        }
        (s.cfg.streaming_heartbeat, timeout)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    let state = state.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + timeout;
        if tx
            .send(streaming_chunk(
                v,
                "<m:ConnectionStatus>OK</m:ConnectionStatus>",
            ))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let notifications: Vec<String> = {
                let mut s = lock(&state);
                ids.iter()
                    .filter_map(|id| {
                        let sub = s.subs.get_mut(id)?;
                        if sub.queue.is_empty() {
                            return None;
                        }
                        let events: String = sub.queue.drain(..).map(|e| event_xml(&e)).collect();
                        Some(format!(
                            "<m:Notification><t:SubscriptionId>{}</t:SubscriptionId>{events}</m:Notification>",
                            esc(id)
                        ))
                    })
                    .collect()
            };
            if !notifications.is_empty() {
                let chunk = streaming_chunk(
                    v,
                    &format!(
                        "<m:Notifications>{}</m:Notifications>",
                        notifications.concat()
                    ),
                );
                if tx.send(chunk).await.is_err() {
                    return;
                }
                continue;
            }
            tokio::select! {
                _ = tx.closed() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(heartbeat) => {
                    if tx.send(streaming_chunk(v, "<m:ConnectionStatus>OK</m:ConnectionStatus>")).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = tx.send(streaming_chunk(v, "<m:ConnectionStatus>Closed</m:ConnectionStatus>")).await;
                    return;
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    respond(StatusCode::OK, XML_UTF8, Body::from_stream(stream))
}
