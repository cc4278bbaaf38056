//! The EWS operations serversync sends, as functions with typed answers. Every request
//! body here is checked against Microsoft's published schemas in the tests
//! (`../shared/exchange/validate.sh`).

use super::xml::{Element, escape};
use super::{Acting, Answer, EwsClient, check};
use crate::{ConnectError, ErrorKind, FailureStep, Result};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};

/// A folder: a well-known one (`inbox`, `sentitems`, `msgfolderroot`, …) or by its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderRef {
    Distinguished(&'static str),
    Id(String),
}

impl FolderRef {
    pub const INBOX: FolderRef = FolderRef::Distinguished("inbox");
    pub const SENT_ITEMS: FolderRef = FolderRef::Distinguished("sentitems");
    pub const ROOT: FolderRef = FolderRef::Distinguished("msgfolderroot");

    /// The folder's element; a well-known folder of a delegated mailbox names the mailbox.
    pub(crate) fn xml(&self, acting: &Acting) -> String {
        match (self, acting) {
            (FolderRef::Distinguished(id), Acting::Delegate(smtp)) => format!(
                "<t:DistinguishedFolderId Id=\"{id}\"><t:Mailbox><t:EmailAddress>{}</t:EmailAddress></t:Mailbox></t:DistinguishedFolderId>",
                escape(smtp)
            ),
            (FolderRef::Distinguished(id), _) => format!("<t:DistinguishedFolderId Id=\"{id}\"/>"),
            (FolderRef::Id(id), _) => format!("<t:FolderId Id=\"{}\"/>", escape(id)),
        }
    }
}

/// A folder as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderInfo {
    pub id: String,
    pub display_name: String,
    pub total_count: Option<u64>,
}

fn folder_info(el: &Element) -> Option<FolderInfo> {
    let id = el.child("FolderId")?.attr("Id")?.to_owned();
    Some(FolderInfo {
        id,
        display_name: el.text_of("DisplayName").unwrap_or_default().to_owned(),
        total_count: el.text_of("TotalCount").and_then(|t| t.parse().ok()),
    })
}

fn protocol(message: String) -> ConnectError {
    ConnectError::new(FailureStep::Protocol, ErrorKind::Permanent, message)
}

/// The one response message of a single-item request, checked.
fn single<'a>(answer: &'a Answer, what: &str) -> Result<&'a Element> {
    let msg = answer
        .messages()
        .into_iter()
        .next()
        .ok_or_else(|| protocol(format!("the answer to {what} has no response message")))?;
    check(msg, what)?;
    Ok(msg)
}

const FOLDER_SHAPE: &str = "<m:FolderShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"folder:DisplayName\"/><t:FieldURI FieldURI=\"folder:TotalCount\"/></t:AdditionalProperties></m:FolderShape>";

/// `GetFolder`.
pub fn get_folder_body(folder: &FolderRef, acting: &Acting) -> String {
    format!(
        "<m:GetFolder>{FOLDER_SHAPE}<m:FolderIds>{}</m:FolderIds></m:GetFolder>",
        folder.xml(acting)
    )
}

/// Reads a folder (the probe's "Inbox readable" step).
pub async fn get_folder(c: &mut EwsClient, folder: &FolderRef) -> Result<FolderInfo> {
    let body = get_folder_body(folder, c.acting());
    let answer = c.call("GetFolder", &body).await?;
    let msg = single(&answer, "GetFolder")?;
    msg.child("Folders")
        .and_then(|f| f.children.first())
        .and_then(folder_info)
        .ok_or_else(|| protocol("the GetFolder answer names no folder".into()))
}

/// `FindFolder` of a display name anywhere below the mailbox's root.
pub fn find_folder_body(name: &str, acting: &Acting) -> String {
    format!(
        "<m:FindFolder Traversal=\"Deep\">{FOLDER_SHAPE}<m:Restriction><t:IsEqualTo><t:FieldURI FieldURI=\"folder:DisplayName\"/><t:FieldURIOrConstant><t:Constant Value=\"{}\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindFolder>",
        escape(name),
        FolderRef::ROOT.xml(acting)
    )
}

/// The folder named `name` (the first found), if there is one.
pub async fn find_folder(c: &mut EwsClient, name: &str) -> Result<Option<FolderInfo>> {
    let body = find_folder_body(name, c.acting());
    let answer = c.call("FindFolder", &body).await?;
    let msg = single(&answer, "FindFolder")?;
    Ok(msg
        .find("Folders")
        .and_then(|f| f.children.iter().find_map(folder_info)))
}

/// `CreateFolder` of a mail folder below the mailbox's root.
pub fn create_folder_body(name: &str, acting: &Acting) -> String {
    format!(
        "<m:CreateFolder><m:ParentFolderId>{}</m:ParentFolderId><m:Folders><t:Folder><t:FolderClass>IPF.Note</t:FolderClass><t:DisplayName>{}</t:DisplayName></t:Folder></m:Folders></m:CreateFolder>",
        FolderRef::ROOT.xml(acting),
        escape(name)
    )
}

/// The folder named `name`, created below the root when missing.
pub async fn folder_or_create(c: &mut EwsClient, name: &str) -> Result<FolderInfo> {
    if let Some(f) = find_folder(c, name).await? {
        return Ok(f);
    }
    let body = create_folder_body(name, c.acting());
    let answer = c.call("CreateFolder", &body).await?;
    let msg = single(&answer, "CreateFolder")?;
    let id = msg
        .find("FolderId")
        .and_then(|f| f.attr("Id"))
        .ok_or_else(|| protocol("the CreateFolder answer names no folder".into()))?;
    Ok(FolderInfo {
        id: id.to_owned(),
        display_name: name.to_owned(),
        total_count: Some(0),
    })
}

/// An item named in a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRef {
    pub id: String,
    pub change_key: String,
    /// `Message`, `MeetingRequest`, … (the element's name).
    pub kind: String,
    pub size: Option<u64>,
    pub received: Option<DateTime<Utc>>,
}

fn item_ref(el: &Element) -> Option<ItemRef> {
    let id_el = el.child("ItemId")?;
    Some(ItemRef {
        id: id_el.attr("Id")?.to_owned(),
        change_key: id_el.attr("ChangeKey").unwrap_or_default().to_owned(),
        kind: el.name.clone(),
        size: el.text_of("Size").and_then(|s| s.parse().ok()),
        received: el
            .text_of("DateTimeReceived")
            .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
            .map(|d| d.with_timezone(&Utc)),
    })
}

/// One change of a folder since a sync state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncChange {
    Create(ItemRef),
    Update(ItemRef),
    Delete(String),
    ReadFlag { id: String, is_read: bool },
}

/// A page of changes.
#[derive(Debug, Clone)]
pub struct SyncPage {
    /// The state after this page: the cursor to commit once the page is stored.
    pub sync_state: String,
    /// `IncludesLastItemInRange`: nothing more to read now.
    pub last: bool,
    pub changes: Vec<SyncChange>,
}

/// `SyncFolderItems` from `state` (`None`: from the beginning).
pub fn sync_folder_items_body(
    folder: &FolderRef,
    state: Option<&str>,
    max: u32,
    acting: &Acting,
) -> String {
    let state = state
        .map(|s| format!("<m:SyncState>{}</m:SyncState>", escape(s)))
        .unwrap_or_default();
    format!(
        "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"item:Size\"/><t:FieldURI FieldURI=\"item:DateTimeReceived\"/></t:AdditionalProperties></m:ItemShape><m:SyncFolderId>{}</m:SyncFolderId>{state}<m:MaxChangesReturned>{}</m:MaxChangesReturned><m:SyncScope>NormalItems</m:SyncScope></m:SyncFolderItems>",
        folder.xml(acting),
        max.clamp(1, 512)
    )
}

/// Reads the changes of `folder` after `state`, at most `max` (1–512).
pub async fn sync_folder_items(
    c: &mut EwsClient,
    folder: &FolderRef,
    state: Option<&str>,
    max: u32,
) -> Result<SyncPage> {
    let body = sync_folder_items_body(folder, state, max, c.acting());
    let answer = c.call("SyncFolderItems", &body).await?;
    let msg = single(&answer, "SyncFolderItems")?;
    let sync_state = msg
        .text_of("SyncState")
        .ok_or_else(|| protocol("the SyncFolderItems answer has no SyncState".into()))?
        .to_owned();
    let last = msg
        .text_of("IncludesLastItemInRange")
        .is_none_or(|v| v.eq_ignore_ascii_case("true"));
    let mut changes = Vec::new();
    for ch in msg
        .child("Changes")
        .map(|c| c.children.as_slice())
        .unwrap_or_default()
    {
        let item = ch.children.first();
        let change = match ch.name.as_str() {
            "Create" => item.and_then(item_ref).map(SyncChange::Create),
            "Update" => item.and_then(item_ref).map(SyncChange::Update),
            "Delete" => ch
                .child("ItemId")
                .and_then(|i| i.attr("Id"))
                .map(|id| SyncChange::Delete(id.to_owned())),
            "ReadFlagChange" => {
                ch.child("ItemId")
                    .and_then(|i| i.attr("Id"))
                    .map(|id| SyncChange::ReadFlag {
                        id: id.to_owned(),
                        is_read: ch.text_of("IsRead") == Some("true"),
                    })
            }
            _ => None,
        };
        changes.extend(change);
    }
    Ok(SyncPage {
        sync_state,
        last,
        changes,
    })
}

/// A message's MIME content.
#[derive(Debug, Clone)]
pub struct MimeItem {
    pub id: String,
    pub mime: Vec<u8>,
    pub received: Option<DateTime<Utc>>,
}

/// `GetItem` of `ids` with their MIME content.
pub fn get_mime_body(ids: &[&str]) -> String {
    let ids: String = ids
        .iter()
        .map(|id| format!("<t:ItemId Id=\"{}\"/>", escape(id)))
        .collect();
    format!(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:IncludeMimeContent>true</t:IncludeMimeContent><t:AdditionalProperties><t:FieldURI FieldURI=\"item:DateTimeReceived\"/></t:AdditionalProperties></m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"
    )
}

/// The MIME content of each of `ids`, in order; an item that is gone or unreadable is its own
/// error (the others still count).
pub async fn get_mime(c: &mut EwsClient, ids: &[&str]) -> Result<Vec<Result<MimeItem>>> {
    let answer = c.call("GetItem", &get_mime_body(ids)).await?;
    let msgs = answer.messages();
    if msgs.len() != ids.len() {
        return Err(protocol(format!(
            "GetItem asked for {} items and the answer has {} response messages",
            ids.len(),
            msgs.len()
        )));
    }
    Ok(msgs
        .into_iter()
        .zip(ids)
        .map(|(msg, id)| {
            check(msg, "GetItem")?;
            let item = msg
                .child("Items")
                .and_then(|i| i.children.first())
                .ok_or_else(|| protocol(format!("the GetItem answer for {id} has no item")))?;
            let content = item.text_of("MimeContent").ok_or_else(|| {
                protocol(format!("the GetItem answer for {id} has no MIME content"))
            })?;
            let mime = B64
                .decode(content.split_whitespace().collect::<String>())
                .map_err(|e| protocol(format!("the MIME content of {id} is not base64: {e}")))?;
            Ok(MimeItem {
                id: (*id).to_owned(),
                mime,
                received: item_ref(item).and_then(|r| r.received),
            })
        })
        .collect())
}

/// `GetItem` of one item's internet headers (for a message too large to read whole).
pub fn get_headers_body(id: &str) -> String {
    format!(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties><t:FieldURI FieldURI=\"item:InternetMessageHeaders\"/><t:FieldURI FieldURI=\"item:DateTimeReceived\"/></t:AdditionalProperties></m:ItemShape><m:ItemIds><t:ItemId Id=\"{}\"/></m:ItemIds></m:GetItem>",
        escape(id)
    )
}

/// The message's header, rebuilt from its internet headers, and when it was received.
pub async fn get_headers(c: &mut EwsClient, id: &str) -> Result<(Vec<u8>, Option<DateTime<Utc>>)> {
    let answer = c.call("GetItem", &get_headers_body(id)).await?;
    let msg = single(&answer, "GetItem")?;
    let received = msg
        .child("Items")
        .and_then(|i| i.children.first())
        .and_then(item_ref)
        .and_then(|r| r.received);
    let mut out = String::new();
    if let Some(h) = msg.find("InternetMessageHeaders") {
        for field in h.children_named("InternetMessageHeader") {
            let name = field.attr("HeaderName").unwrap_or_default();
            out.push_str(&format!("{name}: {}\r\n", field.text.trim()));
        }
    }
    out.push_str("\r\n");
    Ok((out.into_bytes(), received))
}

/// What `CreateItem` does with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    SaveOnly,
    SendAndSaveCopy,
}

/// `CreateItem` of a message from its MIME content.
pub fn create_item_body(
    mime: &[u8],
    disposition: Disposition,
    folder: &FolderRef,
    acting: &Acting,
) -> String {
    let (d, folder_el) = match disposition {
        Disposition::SaveOnly => (
            "SaveOnly",
            format!(
                "<m:SavedItemFolderId>{}</m:SavedItemFolderId>",
                folder.xml(acting)
            ),
        ),
        Disposition::SendAndSaveCopy => (
            "SendAndSaveCopy",
            format!(
                "<m:SavedItemFolderId>{}</m:SavedItemFolderId>",
                folder.xml(acting)
            ),
        ),
    };
    format!(
        "<m:CreateItem MessageDisposition=\"{d}\">{folder_el}<m:Items><t:Message><t:MimeContent CharacterSet=\"UTF-8\">{}</t:MimeContent></t:Message></m:Items></m:CreateItem>",
        B64.encode(mime)
    )
}

/// Saves or sends a message; the created item's id when the server names it (sending
/// names none).
pub async fn create_item(
    c: &mut EwsClient,
    mime: &[u8],
    disposition: Disposition,
    folder: &FolderRef,
) -> Result<Option<String>> {
    let body = create_item_body(mime, disposition, folder, c.acting());
    let answer = c.call("CreateItem", &body).await?;
    let msg = single(&answer, "CreateItem")?;
    Ok(msg
        .find("ItemId")
        .and_then(|i| i.attr("Id"))
        .map(str::to_owned))
}

/// `FindItem` of messages with Message-ID `message_id` in `folder`.
pub fn find_by_message_id_body(folder: &FolderRef, message_id: &str, acting: &Acting) -> String {
    format!(
        "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned=\"10\" Offset=\"0\" BasePoint=\"Beginning\"/><m:Restriction><t:IsEqualTo><t:FieldURI FieldURI=\"message:InternetMessageId\"/><t:FieldURIOrConstant><t:Constant Value=\"{}\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindItem>",
        escape(message_id),
        folder.xml(acting)
    )
}

/// The ids of the messages in `folder` whose Message-ID is `message_id` (with its angle
/// brackets, as Exchange keeps it).
pub async fn find_by_message_id(
    c: &mut EwsClient,
    folder: &FolderRef,
    message_id: &str,
) -> Result<Vec<String>> {
    let body = find_by_message_id_body(folder, message_id, c.acting());
    let answer = c.call("FindItem", &body).await?;
    let msg = single(&answer, "FindItem")?;
    Ok(msg
        .find("Items")
        .map(|items| {
            items
                .children
                .iter()
                .filter_map(|i| i.child("ItemId").and_then(|x| x.attr("Id")))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// `MoveItem` of `ids` to `to`.
pub fn move_items_body(ids: &[&str], to: &FolderRef, acting: &Acting) -> String {
    let ids: String = ids
        .iter()
        .map(|id| format!("<t:ItemId Id=\"{}\"/>", escape(id)))
        .collect();
    format!(
        "<m:MoveItem><m:ToFolderId>{}</m:ToFolderId><m:ItemIds>{ids}</m:ItemIds></m:MoveItem>",
        to.xml(acting)
    )
}

/// Moves `ids` to `to`; how many moved (an item already gone does not count).
pub async fn move_items(c: &mut EwsClient, ids: &[&str], to: &FolderRef) -> Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    let answer = c
        .call("MoveItem", &move_items_body(ids, to, c.acting()))
        .await?;
    let mut moved = 0;
    for msg in answer.messages() {
        match check(msg, "MoveItem") {
            Ok(()) => moved += 1,
            Err(_) if msg.text_of("ResponseCode") == Some("ErrorItemNotFound") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(moved)
}

/// `Subscribe` to new mail in `folders`, streaming.
pub fn subscribe_streaming_body(folders: &[FolderRef], acting: &Acting) -> String {
    let ids: String = folders.iter().map(|f| f.xml(acting)).collect();
    format!(
        "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds>{ids}</t:FolderIds><t:EventTypes><t:EventType>NewMailEvent</t:EventType><t:EventType>CreatedEvent</t:EventType><t:EventType>MovedEvent</t:EventType></t:EventTypes></m:StreamingSubscriptionRequest></m:Subscribe>"
    )
}

/// Subscribes to changes of `folders`; the subscription's id.
pub async fn subscribe_streaming(c: &mut EwsClient, folders: &[FolderRef]) -> Result<String> {
    let body = subscribe_streaming_body(folders, c.acting());
    let answer = c.call("Subscribe", &body).await?;
    let msg = single(&answer, "Subscribe")?;
    msg.text_of("SubscriptionId")
        .map(str::to_owned)
        .ok_or_else(|| protocol("the Subscribe answer has no SubscriptionId".into()))
}

/// `GetStreamingEvents` of one subscription, for `minutes` (1–30).
pub fn get_streaming_events_body(subscription: &str, minutes: u32) -> String {
    format!(
        "<m:GetStreamingEvents><m:SubscriptionIds><t:SubscriptionId>{}</t:SubscriptionId></m:SubscriptionIds><m:ConnectionTimeout>{}</m:ConnectionTimeout></m:GetStreamingEvents>",
        escape(subscription),
        minutes.clamp(1, 30)
    )
}

/// `Unsubscribe`.
pub fn unsubscribe_body(subscription: &str) -> String {
    format!(
        "<m:Unsubscribe><m:SubscriptionId>{}</m:SubscriptionId></m:Unsubscribe>",
        escape(subscription)
    )
}

/// Ends a subscription (its failure changes nothing: subscriptions expire on their own).
pub async fn unsubscribe(c: &mut EwsClient, subscription: &str) {
    let _ = c.call("Unsubscribe", &unsubscribe_body(subscription)).await;
}

/// Every request body this module can send, with representative arguments: what the schema
/// test validates.
pub fn every_request_body() -> Vec<(&'static str, String)> {
    let own = Acting::Own;
    let delegate = Acting::Delegate("bob@contoso.com".into());
    let id = FolderRef::Id("AAMkAGI2=".into());
    vec![
        ("GetFolder", get_folder_body(&FolderRef::INBOX, &own)),
        ("GetFolder", get_folder_body(&FolderRef::INBOX, &delegate)),
        ("FindFolder", find_folder_body("Undeliverable & <x>", &own)),
        ("CreateFolder", create_folder_body("Undeliverable", &own)),
        (
            "SyncFolderItems",
            sync_folder_items_body(&FolderRef::INBOX, None, 512, &own),
        ),
        (
            "SyncFolderItems",
            sync_folder_items_body(&id, Some("H4sIAAA="), 100, &delegate),
        ),
        ("GetItem", get_mime_body(&["AAMk1", "AAMk2"])),
        ("GetItem", get_headers_body("AAMk1")),
        (
            "CreateItem",
            create_item_body(
                b"Subject: x\r\n\r\nx",
                Disposition::SendAndSaveCopy,
                &FolderRef::SENT_ITEMS,
                &own,
            ),
        ),
        (
            "CreateItem",
            create_item_body(b"Subject: x\r\n\r\nx", Disposition::SaveOnly, &id, &own),
        ),
        (
            "FindItem",
            find_by_message_id_body(&FolderRef::SENT_ITEMS, "<a@b>", &own),
        ),
        ("MoveItem", move_items_body(&["AAMk1"], &id, &own)),
        (
            "Subscribe",
            subscribe_streaming_body(&[FolderRef::INBOX, id.clone()], &own),
        ),
        ("GetStreamingEvents", get_streaming_events_body("sub1", 30)),
        ("Unsubscribe", unsubscribe_body("sub1")),
        (
            "ConvertId",
            super::probe::convert_id_body("alice@contoso.com"),
        ),
        ("GetFolder", super::probe::sent_items_rights_body(&own)),
        ("GetFolder", super::probe::sent_items_rights_body(&delegate)),
    ]
}
