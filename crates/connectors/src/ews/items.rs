//! The [`ItemStore`] of an Exchange mailbox over EWS: appointments in `calendar`, contacts in
//! `contacts`, tasks in `tasks` (distinguished folders; any other collection name is taken as
//! a `FolderId`). Ids are EWS ItemIds, versions their ChangeKeys.
//!
//! - **Changes:** `SyncFolderItems` (IdOnly, [`SYNC_PAGE`] changes a page, followed while
//!   `IncludesLastItemInRange` is false) from the SyncState kept as the
//!   [`ServerTokenCursor`]; `Create`/`Update` are read with `GetItem` ([`GET_BATCH`] ids a
//!   request, only the properties mapped here), `Delete`s are reported as deleted. A SyncState
//!   the server no longer accepts (`ErrorInvalidSyncStateData`) fails with
//!   [`SYNC_TOKEN_INVALID`] (the DAV client's code), so the syncer reads the folder again from
//!   the start. An item that cannot be mapped (a distribution list in Contacts, a recurrence
//!   pattern without an iCalendar equivalent, a `GetItem` error) is reported in
//!   [`ChangeSet::unreadable`] with the reason.
//! - **Create:** EWS has no transaction id, so every created item carries two extended
//!   properties of the property set [`PROPERTY_SET`]: [`UID_PROPERTY`] (the values' `uid`,
//!   which a create needs) and [`STAMP_PROPERTY`] (the organization stamp); [`TZ_PROPERTY`]
//!   keeps an appointment's IANA time zone. Before `CreateItem`, `FindItem` looks for an item
//!   of the folder with that uid: a create repeated after a lost answer finds its first attempt
//!   and answers [`Written::Conflict`] with it (as the DAV client does on `412`).
//!   Contacts and tasks are saved (`SaveOnly`); appointments are created with
//!   `SendMeetingInvitations="SendToNone"` unless [`MeetingMessages::SendToAllAndSaveCopy`]
//!   is chosen with [`EwsItemStore::set_meeting_messages`], and even then only for a meeting
//!   with attendees that has not started yet.
//! - **Update:** `UpdateItem` of the mapped fields (set, or deleted when the values have none)
//!   with the ChangeKey and `ConflictResolution="NeverOverwrite"`; `ErrorIrresolvableConflict`
//!   (or a conflict reported in `ConflictResults`) reads the item again for
//!   [`Written::Conflict`], `ErrorItemNotFound` is [`Written::Gone`]. Calendar updates send
//!   `SendMeetingInvitationsOrCancellations="SendToNone"` (or `SendToChangedAndSaveCopy`
//!   with [`MeetingMessages::SendToAllAndSaveCopy`] for a future meeting). What is not mapped
//!   stays as the server has it; so do `StartTimeZone`/`EndTimeZone` when the values name no
//!   time zone.
//! - **Delete:** EWS `DeleteItem` takes no ChangeKey condition, so the item is read first
//!   (`GetItem` IdOnly) and deleted only when its ChangeKey is still the one given;
//!   otherwise [`Written::Conflict`]. **Race:** a change another client makes between that
//!   read and the `DeleteItem` is deleted with the item (Exchange offers no conditional
//!   delete). It is `MoveToDeletedItems` (recoverable by the user) with
//!   `SendMeetingCancellations="SendToNone"` (or `SendToAllAndSaveCopy` as above) and
//!   `AffectedTaskOccurrences="AllOccurrences"`.
//!
//! # Mapping (values of `serversync_model::itemvalues` ↔ EWS)
//!
//! | values | EWS |
//! |---|---|
//! | `subject`, `description` | `Subject`, `Body` (text) |
//! | `start`, `end`, `all_day`, `location` | `Start`, `End` (UTC), `IsAllDayEvent`, `Location` |
//! | `time_zone` | `StartTimeZone`/`EndTimeZone` (Windows ids, from a table of common zones; the IANA name itself in [`TZ_PROPERTY`]) |
//! | `organizer`, `state` | `Organizer`, `IsCancelled`: read only (Exchange sets the organizer; cancelling is `CancelCalendarItem`, not an update) |
//! | `attendees` | `RequiredAttendees` (read: required and optional; written: all as required) |
//! | `rrule` | `Recurrence` (daily, weekly, absolute/relative monthly and yearly; numbered, end-date or no-end range) |
//! | `exdates`, `overrides` | `DeletedOccurrences`, `ModifiedOccurrences` (start and end; a changed occurrence's own `Subject`, `Location`, `Body` read by its ItemId); written occurrence by occurrence (below) |
//! | `full_name`, `emails`, `company`, `job_title`, `phones` | `DisplayName` (+ `GivenName`/`Surname` split at the last space), `EmailAddresses` (EmailAddress1‥3), `CompanyName`, `JobTitle`, `PhoneNumbers` ([`PHONE_KEYS`] in order) |
//! | `due`, `percent_complete`, `state` | `DueDate`, `PercentComplete`, `Status` (`completed` ↔ Completed, `canceled` ↔ Deferred, `open` ↔ NotStarted / InProgress / WaitingOnOthers) |
//! | `categories`, `uid`, `stamp`, `modified` | `Categories`; [`UID_PROPERTY`] (else an appointment's `UID`); [`STAMP_PROPERTY`]; `LastModifiedTime` |
//!
//! - **Exceptions:** after the master's `CreateItem`/`UpdateItem`, each exdate the server's
//!   item lacks is `DeleteItem` of an `OccurrenceItemId` (`RecurringMasterId` the master,
//!   `InstanceIndex` the occurrence's 1-based place in the pattern, counted by
//!   [`super::occurrences`] in the series' time zone), each new or changed override an
//!   `UpdateItem` of one (`Start`, `End`, `Subject`, `Location`, `Body`; the series' own
//!   where the override names none), sending meeting messages as the master's write does.
//!   The answer's version is the master's ChangeKey after them. Writing the recurrence itself
//!   (a new rule or start) drops the server's exceptions, so all are written again.
//!   **Race:** an occurrence has no ChangeKey to check here (`AlwaysOverwrite`); the master's
//!   was checked by its own write just before.
//!
//! Values that cannot be written (an RRULE part EWS has no pattern for, more than three
//! emails, an exdate or override that is no occurrence of the series, an occurrence the server
//! has cancelled or changed that the values return to the series — EWS cannot restore one)
//! fail with the code `unmappable_values` before anything is written: nothing is dropped
//! silently.

use super::ops::{self, FolderRef, SyncChange};
use super::xml::{Element, escape};
use super::{Acting, Answer, EwsClient, check};
use crate::dav::client::SYNC_TOKEN_INVALID;
use crate::items::{ChangeSet, ItemStore, RemoteItem, Written};
use crate::{ConnectError, ErrorKind, FailureStep, Result};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde_json::{Map, Value, json};
use serversync_model::sync::ServerTokenCursor;
use serversync_model::webhook::RecordType;
use std::collections::HashMap;

/// The property set (a fixed GUID) of serversync's extended properties.
pub const PROPERTY_SET: &str = "6a1e3b52-8c0f-4d7e-9b51-2f4c7d9e0a13";
/// The extended property (string) holding the item's `uid`.
pub const UID_PROPERTY: &str = "serversync-uid";
/// The extended property (string) holding the organization stamp (`stamp`).
pub const STAMP_PROPERTY: &str = "serversync-org";
/// The extended property (string) holding an appointment's IANA time zone.
pub const TZ_PROPERTY: &str = "serversync-tz";
/// Items read per `GetItem`.
pub const GET_BATCH: usize = 50;
/// Changes asked for per `SyncFolderItems` (the protocol's maximum).
pub const SYNC_PAGE: u32 = 512;
/// Pages of one `changes` call before it stops (`more`) and resumes from where it got.
const MAX_PAGES: usize = 200;
pub use crate::items::UNMAPPABLE_VALUES;

/// Phone keys (`PhoneNumberKeyType`) the `phones` list is written to, in order.
pub const PHONE_KEYS: [&str; 16] = [
    "BusinessPhone",
    "MobilePhone",
    "HomePhone",
    "BusinessPhone2",
    "HomePhone2",
    "OtherTelephone",
    "PrimaryPhone",
    "CompanyMainPhone",
    "AssistantPhone",
    "CarPhone",
    "Callback",
    "RadioPhone",
    "Pager",
    "Isdn",
    "Telex",
    "TtyTddPhone",
];
/// Phone keys only read (faxes), after [`PHONE_KEYS`].
const FAX_KEYS: [&str; 3] = ["BusinessFax", "HomeFax", "OtherFax"];
const EMAIL_KEYS: [&str; 3] = ["EmailAddress1", "EmailAddress2", "EmailAddress3"];

/// Whether writes of meetings send messages to attendees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MeetingMessages {
    /// Never (the default: synchronization does not invite anybody).
    #[default]
    SendToNone,
    /// Invitations, updates and cancellations for meetings with attendees that have not
    /// started yet (never for past ones); a copy is saved in Sent Items.
    SendToAllAndSaveCopy,
}

/// An Exchange mailbox's calendar, contacts and tasks over EWS (see the module docs).
#[derive(Debug)]
pub struct EwsItemStore {
    client: EwsClient,
    page_size: u32,
    meeting_messages: MeetingMessages,
}

fn protocol(msg: impl Into<String>) -> ConnectError {
    ConnectError::new(FailureStep::Protocol, ErrorKind::Permanent, msg)
}

fn unmappable(msg: impl Into<String>) -> ConnectError {
    protocol(msg).with_code(UNMAPPABLE_VALUES)
}

/// The folder of a collection name.
pub fn folder_of(collection: &str) -> FolderRef {
    match collection {
        "calendar" => FolderRef::Distinguished("calendar"),
        "contacts" => FolderRef::Distinguished("contacts"),
        "tasks" => FolderRef::Distinguished("tasks"),
        id => FolderRef::Id(id.to_owned()),
    }
}

/// The kind a collection holds (`None`: a folder given by id, which may hold any).
fn kind_of_collection(collection: &str) -> Option<RecordType> {
    match collection {
        "calendar" => Some(RecordType::Appointment),
        "contacts" => Some(RecordType::Contact),
        "tasks" => Some(RecordType::Task),
        _ => None,
    }
}

/// The record type of an item element (`CalendarItem`, `Contact`, `Task`).
fn kind_of_element(name: &str) -> Option<RecordType> {
    match name {
        "CalendarItem" => Some(RecordType::Appointment),
        "Contact" => Some(RecordType::Contact),
        "Task" => Some(RecordType::Task),
        _ => None,
    }
}

fn element_of(kind: RecordType) -> Result<&'static str> {
    match kind {
        RecordType::Appointment => Ok("CalendarItem"),
        RecordType::Contact => Ok("Contact"),
        RecordType::Task => Ok("Task"),
        other => Err(protocol(format!(
            "{other:?} records are not synchronized with Exchange"
        ))),
    }
}

impl EwsItemStore {
    /// The item store of the mailbox `client` acts on.
    pub fn new(client: EwsClient) -> EwsItemStore {
        EwsItemStore {
            client,
            page_size: SYNC_PAGE,
            meeting_messages: MeetingMessages::default(),
        }
    }

    /// Asks for at most `n` (1–512) changes per `SyncFolderItems` page.
    pub fn with_page_size(mut self, n: u32) -> EwsItemStore {
        self.page_size = n.clamp(1, 512);
        self
    }

    /// Whether meeting writes send messages (default [`MeetingMessages::SendToNone`]).
    pub fn set_meeting_messages(&mut self, m: MeetingMessages) {
        self.meeting_messages = m;
    }

    /// The collection that holds items of `kind` (`calendar`, `contacts`, `tasks`).
    pub fn collection_for(kind: RecordType) -> Option<&'static str> {
        match kind {
            RecordType::Appointment => Some("calendar"),
            RecordType::Contact => Some("contacts"),
            RecordType::Task => Some("tasks"),
            _ => None,
        }
    }

    /// The EWS connection.
    pub fn client_mut(&mut self) -> &mut EwsClient {
        &mut self.client
    }

    fn acting(&self) -> Acting {
        self.client.acting().clone()
    }

    /// `GetItem` of `ids` (all of `kinds`' properties); per id, the item or why not
    /// (`Ok(None)`: not found).
    async fn get_items(
        &mut self,
        ids: &[&str],
        kinds: &[RecordType],
    ) -> Result<Vec<std::result::Result<Option<RemoteItem>, String>>> {
        let body = get_items_body(ids, kinds);
        let answer = self.client.call("GetItem", &body).await?;
        let msgs = answer.messages();
        if msgs.len() != ids.len() {
            return Err(protocol(format!(
                "GetItem asked for {} items and the answer has {} response messages",
                ids.len(),
                msgs.len()
            )));
        }
        let mut out = Vec::new();
        // Changed occurrences to read for what they have of their own: (item, ItemId).
        let mut occurrences: Vec<(usize, String, DateTime<Utc>)> = Vec::new();
        for (msg, id) in msgs.into_iter().zip(ids) {
            if msg.attr("ResponseClass") == Some("Error") {
                if msg.text_of("ResponseCode") == Some("ErrorItemNotFound") {
                    out.push(Ok(None));
                    continue;
                }
                // A failure of the whole request (throttling, a mailbox move) is the error.
                let e = check(msg, "GetItem").unwrap_err();
                if matches!(e.kind, ErrorKind::Throttled | ErrorKind::Transient)
                    || e.step != FailureStep::Protocol
                {
                    return Err(e);
                }
                out.push(Err(e.message));
                continue;
            }
            let Some(item) = msg.child("Items").and_then(|i| i.children.first()) else {
                out.push(Err(format!("the GetItem answer for {id} has no item")));
                continue;
            };
            for o in item
                .child("ModifiedOccurrences")
                .map(|m| m.children.as_slice())
                .unwrap_or_default()
            {
                let oid = o.child("ItemId").and_then(|i| i.attr("Id"));
                if let (Some(oid), Ok(Some(original))) = (oid, ews_time(o, "OriginalStart")) {
                    occurrences.push((out.len(), oid.to_owned(), original));
                }
            }
            out.push(read_item(item).map(Some));
        }
        for batch in occurrences.chunks(GET_BATCH) {
            let ids: Vec<&str> = batch.iter().map(|(_, id, _)| id.as_str()).collect();
            let answer = self
                .client
                .call("GetItem", &get_occurrences_body(&ids))
                .await?;
            for ((n, _, original), msg) in batch.iter().zip(answer.messages()) {
                // An occurrence that cannot be read keeps its times only.
                if msg.attr("ResponseClass") == Some("Error") {
                    continue;
                }
                let (Some(occ), Some(Ok(Some(item)))) = (
                    msg.child("Items").and_then(|i| i.children.first()),
                    out.get_mut(*n),
                ) else {
                    continue;
                };
                add_occurrence_details(&mut item.values, *original, occ);
            }
        }
        Ok(out)
    }

    async fn fetch(&mut self, collection: &str, id: &str) -> Result<Option<RemoteItem>> {
        let kinds = kinds_for(collection);
        let got = self.get_items(&[id], &kinds).await?.pop();
        match got {
            Some(Ok(item)) => Ok(item),
            Some(Err(why)) => {
                Err(protocol(format!("{id} cannot be read: {why}")).with_code("unreadable_item"))
            }
            None => Ok(None),
        }
    }

    async fn conflict_or_gone(&mut self, collection: &str, id: &str) -> Result<Written> {
        Ok(match self.fetch(collection, id).await? {
            Some(current) => Written::Conflict { current },
            None => Written::Gone,
        })
    }

    /// The ids of the items of `folder` carrying `uid`.
    async fn find_by_uid(&mut self, folder: &FolderRef, uid: &str) -> Result<Vec<String>> {
        let body = find_by_uid_body(folder, uid, &self.acting());
        let answer = self.client.call("FindItem", &body).await?;
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

    /// Cancels and changes occurrences of the series `master` (just written); answers the
    /// master's ChangeKey after them.
    async fn write_occurrences(
        &mut self,
        master: &str,
        writes: &[OccurrenceWrite],
        send: bool,
    ) -> Result<String> {
        for w in writes {
            let (op, index, body) = match w {
                OccurrenceWrite::Cancel { index } => (
                    "DeleteItem",
                    *index,
                    delete_occurrence_body(master, *index, send),
                ),
                OccurrenceWrite::Change { index, .. } => (
                    "UpdateItem",
                    *index,
                    update_occurrence_body(master, w, send).unwrap_or_default(),
                ),
            };
            let answer = self.client.call(op, &body).await?;
            let msg =
                answer.messages().into_iter().next().ok_or_else(|| {
                    protocol(format!("the answer to {op} has no response message"))
                })?;
            // Cancelled already (an earlier attempt): done.
            if op == "DeleteItem"
                && msg.text_of("ResponseCode")
                    == Some("ErrorCalendarOccurrenceIsDeletedFromRecurrence")
            {
                continue;
            }
            check(
                msg,
                &format!("{op} of occurrence {index} of the series (its master is written)"),
            )?;
        }
        let answer = self
            .client
            .call("GetItem", &get_change_key_body(master))
            .await?;
        let msg = single(&answer, "GetItem")?;
        item_id_of(msg)
            .map(|(_, key)| key)
            .ok_or_else(|| protocol("the GetItem answer names no item"))
    }

    /// Whether a meeting write sends messages.
    fn sends(&self, kind: RecordType, values: &Value) -> bool {
        self.meeting_messages == MeetingMessages::SendToAllAndSaveCopy
            && kind == RecordType::Appointment
            && values["attendees"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            && parse_value_time(&values["start"]).is_some_and(|s| s > Utc::now())
    }
}

fn kinds_for(collection: &str) -> Vec<RecordType> {
    match kind_of_collection(collection) {
        Some(k) => vec![k],
        None => vec![
            RecordType::Appointment,
            RecordType::Contact,
            RecordType::Task,
        ],
    }
}

fn single<'a>(answer: &'a Answer, what: &str) -> Result<&'a Element> {
    let msg = answer
        .messages()
        .into_iter()
        .next()
        .ok_or_else(|| protocol(format!("the answer to {what} has no response message")))?;
    check(msg, what)?;
    Ok(msg)
}

// ---------------------------------------------------------------------------------------------
// Request bodies

fn ext_uri(name: &str) -> String {
    format!(
        "<t:ExtendedFieldURI PropertySetId=\"{PROPERTY_SET}\" PropertyName=\"{name}\" PropertyType=\"String\"/>"
    )
}

fn field_uri(uri: &str) -> String {
    format!("<t:FieldURI FieldURI=\"{uri}\"/>")
}

const COMMON_FIELDS: [&str; 4] = [
    "item:Subject",
    "item:Body",
    "item:Categories",
    "item:LastModifiedTime",
];
const CALENDAR_FIELDS: [&str; 14] = [
    "calendar:UID",
    "calendar:Start",
    "calendar:End",
    "calendar:IsAllDayEvent",
    "calendar:Location",
    "calendar:IsCancelled",
    "calendar:Organizer",
    "calendar:RequiredAttendees",
    "calendar:OptionalAttendees",
    "calendar:Recurrence",
    "calendar:ModifiedOccurrences",
    "calendar:DeletedOccurrences",
    "calendar:StartTimeZone",
    "calendar:EndTimeZone",
];
const CONTACT_FIELDS: [&str; 7] = [
    "contacts:DisplayName",
    "contacts:GivenName",
    "contacts:Surname",
    "contacts:CompanyName",
    "contacts:JobTitle",
    "contacts:EmailAddresses",
    "contacts:PhoneNumbers",
];
const TASK_FIELDS: [&str; 3] = ["task:DueDate", "task:PercentComplete", "task:Status"];

/// `GetItem` of `ids` with the properties mapped for `kinds`.
pub fn get_items_body(ids: &[&str], kinds: &[RecordType]) -> String {
    let mut props: String = COMMON_FIELDS.iter().map(|f| field_uri(f)).collect();
    for k in kinds {
        let list: &[&str] = match k {
            RecordType::Appointment => &CALENDAR_FIELDS,
            RecordType::Contact => &CONTACT_FIELDS,
            RecordType::Task => &TASK_FIELDS,
            _ => &[],
        };
        props.extend(list.iter().map(|f| field_uri(f)));
    }
    props.push_str(&ext_uri(UID_PROPERTY));
    props.push_str(&ext_uri(STAMP_PROPERTY));
    if kinds.contains(&RecordType::Appointment) {
        props.push_str(&ext_uri(TZ_PROPERTY));
    }
    let ids: String = ids
        .iter()
        .map(|id| format!("<t:ItemId Id=\"{}\"/>", escape(id)))
        .collect();
    format!(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:BodyType>Text</t:BodyType><t:AdditionalProperties>{props}</t:AdditionalProperties></m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>"
    )
}

/// `GetItem` of one item's id and ChangeKey.
pub fn get_change_key_body(id: &str) -> String {
    format!(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:ItemIds><t:ItemId Id=\"{}\"/></m:ItemIds></m:GetItem>",
        escape(id)
    )
}

/// `FindItem` of the items of `folder` whose [`UID_PROPERTY`] is `uid`.
pub fn find_by_uid_body(folder: &FolderRef, uid: &str, acting: &Acting) -> String {
    format!(
        "<m:FindItem Traversal=\"Shallow\"><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape><m:IndexedPageItemView MaxEntriesReturned=\"10\" Offset=\"0\" BasePoint=\"Beginning\"/><m:Restriction><t:IsEqualTo>{}<t:FieldURIOrConstant><t:Constant Value=\"{}\"/></t:FieldURIOrConstant></t:IsEqualTo></m:Restriction><m:ParentFolderIds>{}</m:ParentFolderIds></m:FindItem>",
        ext_uri(UID_PROPERTY),
        escape(uid),
        folder.xml(acting)
    )
}

/// `CreateItem` of an item of `kind` with `values` in `folder`.
pub fn create_body(
    folder: &FolderRef,
    kind: RecordType,
    values: &Value,
    send: bool,
    acting: &Acting,
) -> std::result::Result<String, String> {
    let element = element_of(kind).map_err(|e| e.message)?;
    let fields = fields(kind, values, None)?;
    let mut inner = String::new();
    let mut i = 0;
    while i < fields.len() {
        let f = &fields[i];
        match (&f.path, &f.xml) {
            (_, None) => {}
            (Path::Indexed { dictionary, .. }, Some(_)) => {
                // One dictionary element with the consecutive entries of the same dictionary.
                let mut entries = String::new();
                while i < fields.len()
                    && matches!(&fields[i].path, Path::Indexed { dictionary: d, .. } if d == dictionary)
                {
                    if let Some(x) = &fields[i].xml {
                        entries.push_str(x);
                    }
                    i += 1;
                }
                inner.push_str(&format!("<t:{dictionary}>{entries}</t:{dictionary}>"));
                continue;
            }
            (_, Some(x)) => inner.push_str(x),
        }
        i += 1;
    }
    let attrs = match kind {
        RecordType::Appointment => format!(
            " SendMeetingInvitations=\"{}\"",
            if send {
                "SendToAllAndSaveCopy"
            } else {
                "SendToNone"
            }
        ),
        _ => " MessageDisposition=\"SaveOnly\"".to_owned(),
    };
    Ok(format!(
        "<m:CreateItem{attrs}><m:SavedItemFolderId>{}</m:SavedItemFolderId><m:Items><t:{element}>{inner}</t:{element}></m:Items></m:CreateItem>",
        folder.xml(acting)
    ))
}

/// `UpdateItem` of item `id` at `change_key` to `values` (`current`: the item's present
/// values, when known, for what only the server may change).
pub fn update_body(
    id: &str,
    change_key: &str,
    kind: RecordType,
    values: &Value,
    current: Option<&Value>,
    send: bool,
) -> std::result::Result<String, String> {
    let element = element_of(kind).map_err(|e| e.message)?;
    let mut updates = String::new();
    for f in fields(kind, values, current)? {
        let path = f.path.xml();
        match (&f.path, f.xml) {
            (Path::Indexed { dictionary, .. }, Some(x)) => updates.push_str(&format!(
                "<t:SetItemField>{path}<t:{element}><t:{dictionary}>{x}</t:{dictionary}></t:{element}></t:SetItemField>"
            )),
            (_, Some(x)) => updates.push_str(&format!(
                "<t:SetItemField>{path}<t:{element}>{x}</t:{element}></t:SetItemField>"
            )),
            (_, None) if f.deletable => {
                updates.push_str(&format!("<t:DeleteItemField>{path}</t:DeleteItemField>"))
            }
            (_, None) => {}
        }
    }
    let calendar = if kind == RecordType::Appointment {
        format!(
            " SendMeetingInvitationsOrCancellations=\"{}\"",
            if send {
                "SendToChangedAndSaveCopy"
            } else {
                "SendToNone"
            }
        )
    } else {
        String::new()
    };
    Ok(format!(
        "<m:UpdateItem MessageDisposition=\"SaveOnly\" ConflictResolution=\"NeverOverwrite\"{calendar}><m:ItemChanges><t:ItemChange><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/><t:Updates>{updates}</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
        escape(id),
        escape(change_key)
    ))
}

/// `DeleteItem` of `id` to Deleted Items.
pub fn delete_body(id: &str, change_key: &str, send: bool) -> String {
    format!(
        "<m:DeleteItem DeleteType=\"MoveToDeletedItems\" SendMeetingCancellations=\"{}\" AffectedTaskOccurrences=\"AllOccurrences\"><m:ItemIds><t:ItemId Id=\"{}\" ChangeKey=\"{}\"/></m:ItemIds></m:DeleteItem>",
        if send {
            "SendToAllAndSaveCopy"
        } else {
            "SendToNone"
        },
        escape(id),
        escape(change_key)
    )
}

// ---------------------------------------------------------------------------------------------
// values → fields

/// Where a field is.
#[derive(Debug, Clone, PartialEq)]
enum Path {
    Field(&'static str),
    Indexed {
        uri: &'static str,
        index: &'static str,
        dictionary: &'static str,
    },
    Extended(&'static str),
}

impl Path {
    fn xml(&self) -> String {
        match self {
            Path::Field(uri) => field_uri(uri),
            Path::Indexed { uri, index, .. } => {
                format!("<t:IndexedFieldURI FieldURI=\"{uri}\" FieldIndex=\"{index}\"/>")
            }
            Path::Extended(name) => ext_uri(name),
        }
    }
}

/// One mapped field: its path and its element(s) (`None`: absent).
struct Field {
    path: Path,
    xml: Option<String>,
    /// An update deletes it when absent (else leaves the server's).
    deletable: bool,
}

fn set(path: Path, xml: Option<String>) -> Field {
    Field {
        path,
        xml,
        deletable: true,
    }
}

fn el(name: &str, text: &str) -> String {
    format!("<t:{name}>{}</t:{name}>", escape(text))
}

fn text_value(v: &Value, field: &str) -> std::result::Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(format!("{field}: {other} is not text")),
    }
}

fn strings_value(v: &Value, field: &str) -> std::result::Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("{field}: {x} is not text"))
            })
            .collect(),
        other => Err(format!("{field}: {other} is not a list")),
    }
}

fn parse_value_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn time_value(v: &Value, field: &str) -> std::result::Result<Option<DateTime<Utc>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(_) => parse_value_time(v)
            .map(Some)
            .ok_or_else(|| format!("{field}: {v} is not an RFC 3339 time")),
        other => Err(format!("{field}: {other} is not a time")),
    }
}

fn utc(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The fields of `kind` for `values`, in the schema's order (`ItemType`'s, then the kind's).
fn fields(
    kind: RecordType,
    v: &Value,
    current: Option<&Value>,
) -> std::result::Result<Vec<Field>, String> {
    if !v.is_object() {
        return Err("values: not an object".into());
    }
    let mut out = Vec::new();
    // ItemType: Subject, Body, Categories, ExtendedProperty.
    let subject_field = if kind == RecordType::Contact {
        None
    } else {
        Some("subject")
    };
    if let Some(f) = subject_field {
        out.push(set(
            Path::Field("item:Subject"),
            text_value(&v[f], f)?.map(|s| el("Subject", &s)),
        ));
        out.push(set(
            Path::Field("item:Body"),
            text_value(&v["description"], "description")?
                .map(|s| format!("<t:Body BodyType=\"Text\">{}</t:Body>", escape(&s))),
        ));
    }
    let cats = strings_value(&v["categories"], "categories")?;
    out.push(set(
        Path::Field("item:Categories"),
        (!cats.is_empty()).then(|| {
            format!(
                "<t:Categories>{}</t:Categories>",
                cats.iter().map(|c| el("String", c)).collect::<String>()
            )
        }),
    ));
    let ext = |name: &'static str, value: Option<String>| Field {
        path: Path::Extended(name),
        xml: value.map(|s| {
            format!(
                "<t:ExtendedProperty>{}<t:Value>{}</t:Value></t:ExtendedProperty>",
                ext_uri(name),
                escape(&s)
            )
        }),
        // The uid is never taken away; the stamp is.
        deletable: name != UID_PROPERTY,
    };
    out.push(ext(UID_PROPERTY, text_value(&v["uid"], "uid")?));
    out.push(ext(STAMP_PROPERTY, text_value(&v["stamp"], "stamp")?));
    match kind {
        RecordType::Appointment => appointment_fields(v, current, &mut out, ext)?,
        RecordType::Contact => contact_fields(v, &mut out)?,
        RecordType::Task => task_fields(v, &mut out)?,
        other => {
            return Err(format!(
                "{other:?} records are not synchronized with Exchange"
            ));
        }
    }
    Ok(out)
}

fn appointment_fields(
    v: &Value,
    current: Option<&Value>,
    out: &mut Vec<Field>,
    ext: impl Fn(&'static str, Option<String>) -> Field,
) -> std::result::Result<(), String> {
    let zone_name = text_value(&v["time_zone"], "time_zone")?;
    let zone: Option<Tz> = zone_name.as_deref().and_then(|z| z.parse().ok());
    let windows = zone_name.as_deref().and_then(windows_zone);
    // The IANA name rides in an extended property (ExtendedProperty precedes the calendar
    // fields); without a time zone in the values the server's are kept.
    let mut tz = ext(TZ_PROPERTY, zone_name.clone());
    tz.deletable = false;
    if zone_name.is_some() {
        out.push(tz);
    }
    let start = time_value(&v["start"], "start")?.ok_or("start: an appointment needs a start")?;
    let end = time_value(&v["end"], "end")?.ok_or("end: an appointment needs an end")?;
    if end < start {
        return Err("end: the appointment ends before it starts".into());
    }
    out.push(set(
        Path::Field("calendar:Start"),
        Some(el("Start", &utc(start))),
    ));
    out.push(set(Path::Field("calendar:End"), Some(el("End", &utc(end)))));
    out.push(set(
        Path::Field("calendar:IsAllDayEvent"),
        Some(el(
            "IsAllDayEvent",
            if v["all_day"].as_bool().unwrap_or(false) {
                "true"
            } else {
                "false"
            },
        )),
    ));
    out.push(set(
        Path::Field("calendar:Location"),
        text_value(&v["location"], "location")?.map(|s| el("Location", &s)),
    ));
    let attendees = strings_value(&v["attendees"], "attendees")?;
    out.push(set(
        Path::Field("calendar:RequiredAttendees"),
        (!attendees.is_empty()).then(|| {
            format!(
                "<t:RequiredAttendees>{}</t:RequiredAttendees>",
                attendees
                    .iter()
                    .map(|a| format!(
                        "<t:Attendee><t:Mailbox>{}</t:Mailbox></t:Attendee>",
                        el("EmailAddress", a)
                    ))
                    .collect::<String>()
            )
        }),
    ));
    // Only written on an update when the values name them; an update never moves optional
    // attendees (read as attendees) — they are replaced by the required list.
    out.push(set(Path::Field("calendar:OptionalAttendees"), None));
    let rrule = text_value(&v["rrule"], "rrule")?;
    let local_start = zone.map_or(start.date_naive(), |z| start.with_timezone(&z).date_naive());
    // Setting the recurrence of a series drops its exceptions on Exchange: an update leaves
    // an unchanged series (same rule, same start) alone.
    let unchanged = current.is_some_and(|c| c["rrule"] == v["rrule"] && c["start"] == v["start"]);
    if !unchanged {
        out.push(set(
            Path::Field("calendar:Recurrence"),
            match &rrule {
                Some(r) => Some(recurrence_xml(r, start, local_start)?),
                None => None,
            },
        ));
    }
    // Exceptions of a series are occurrences of their own in EWS, written after the master
    // (`exception_writes`).
    if let Some(w) = windows {
        out.push(set(
            Path::Field("calendar:StartTimeZone"),
            Some(format!("<t:StartTimeZone Id=\"{w}\"/>")),
        ));
        out.push(set(
            Path::Field("calendar:EndTimeZone"),
            Some(format!("<t:EndTimeZone Id=\"{w}\"/>")),
        ));
    }
    Ok(())
}

fn contact_fields(v: &Value, out: &mut Vec<Field>) -> std::result::Result<(), String> {
    let name = text_value(&v["full_name"], "full_name")?;
    let (given, surname) = match name.as_deref().map(str::trim) {
        Some(n) => match n.rsplit_once(' ') {
            Some((g, s)) => (Some(g.trim().to_owned()), Some(s.to_owned())),
            None => (None, Some(n.to_owned())),
        },
        None => (None, None),
    };
    out.push(set(
        Path::Field("contacts:DisplayName"),
        name.as_deref().map(|n| el("DisplayName", n)),
    ));
    out.push(set(
        Path::Field("contacts:GivenName"),
        given.as_deref().map(|n| el("GivenName", n)),
    ));
    out.push(set(
        Path::Field("contacts:CompanyName"),
        text_value(&v["company"], "company")?.map(|s| el("CompanyName", &s)),
    ));
    let emails = strings_value(&v["emails"], "emails")?;
    if emails.len() > EMAIL_KEYS.len() {
        return Err(format!(
            "emails: an Exchange contact holds at most {} addresses, these are {}",
            EMAIL_KEYS.len(),
            emails.len()
        ));
    }
    for (i, key) in EMAIL_KEYS.iter().enumerate() {
        out.push(set(
            Path::Indexed {
                uri: "contacts:EmailAddress",
                index: key,
                dictionary: "EmailAddresses",
            },
            emails
                .get(i)
                .map(|e| format!("<t:Entry Key=\"{key}\">{}</t:Entry>", escape(e))),
        ));
    }
    let phones = strings_value(&v["phones"], "phones")?;
    if phones.len() > PHONE_KEYS.len() {
        return Err(format!(
            "phones: an Exchange contact holds at most {} numbers, these are {}",
            PHONE_KEYS.len(),
            phones.len()
        ));
    }
    for (i, key) in PHONE_KEYS.iter().enumerate() {
        out.push(set(
            Path::Indexed {
                uri: "contacts:PhoneNumber",
                index: key,
                dictionary: "PhoneNumbers",
            },
            phones
                .get(i)
                .map(|p| format!("<t:Entry Key=\"{key}\">{}</t:Entry>", escape(p))),
        ));
    }
    out.push(set(
        Path::Field("contacts:JobTitle"),
        text_value(&v["job_title"], "job_title")?.map(|s| el("JobTitle", &s)),
    ));
    out.push(set(
        Path::Field("contacts:Surname"),
        surname.as_deref().map(|n| el("Surname", n)),
    ));
    Ok(())
}

fn task_fields(v: &Value, out: &mut Vec<Field>) -> std::result::Result<(), String> {
    out.push(set(
        Path::Field("task:DueDate"),
        time_value(&v["due"], "due")?.map(|t| el("DueDate", &utc(t))),
    ));
    let percent = match &v["percent_complete"] {
        Value::Null => 0,
        p => p
            .as_u64()
            .filter(|p| *p <= 100)
            .ok_or_else(|| format!("percent_complete: {p} is not 0 to 100"))?,
    };
    out.push(set(
        Path::Field("task:PercentComplete"),
        Some(el("PercentComplete", &percent.to_string())),
    ));
    let status = match v["state"].as_str() {
        Some("completed") => "Completed",
        Some("canceled") => "Deferred",
        _ if percent > 0 => "InProgress",
        _ => "NotStarted",
    };
    out.push(set(Path::Field("task:Status"), Some(el("Status", status))));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Recurrence: RRULE ↔ EWS patterns

/// Days: iCalendar's code, EWS's name (also `ews::occurrences`).
pub(super) const DAYS: [(&str, &str, Weekday); 7] = [
    ("MO", "Monday", Weekday::Mon),
    ("TU", "Tuesday", Weekday::Tue),
    ("WE", "Wednesday", Weekday::Wed),
    ("TH", "Thursday", Weekday::Thu),
    ("FR", "Friday", Weekday::Fri),
    ("SA", "Saturday", Weekday::Sat),
    ("SU", "Sunday", Weekday::Sun),
];
pub(super) const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
pub(super) const INDEXES: [(i32, &str); 5] = [
    (1, "First"),
    (2, "Second"),
    (3, "Third"),
    (4, "Fourth"),
    (-1, "Last"),
];

fn day_name(code: &str) -> Option<&'static str> {
    DAYS.iter().find(|(c, _, _)| *c == code).map(|(_, n, _)| *n)
}

fn day_code(name: &str) -> Option<&'static str> {
    DAYS.iter().find(|(_, n, _)| *n == name).map(|(c, _, _)| *c)
}

fn weekday_code(w: Weekday) -> &'static str {
    DAYS.iter()
        .find(|(_, _, d)| *d == w)
        .map_or("MO", |(c, _, _)| c)
}

/// `2TU` → (2, `TU`); `TU` → (0, `TU`).
fn split_by_day(s: &str) -> Option<(i32, &str)> {
    let at = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, day) = s.split_at(at);
    let n = if n.is_empty() { 0 } else { n.parse().ok()? };
    day_name(day).map(|_| (n, day))
}

/// The `Recurrence` element of `rule` for a series starting at `start` (`local_start`: its
/// date in the series' time zone).
fn recurrence_xml(
    rule: &str,
    start: DateTime<Utc>,
    local_start: NaiveDate,
) -> std::result::Result<String, String> {
    let mut parts: HashMap<String, String> = HashMap::new();
    for p in rule.trim().trim_start_matches("RRULE:").split(';') {
        if p.is_empty() {
            continue;
        }
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| format!("rrule: {p:?} is not NAME=VALUE"))?;
        parts.insert(k.to_ascii_uppercase(), v.to_ascii_uppercase());
    }
    let cant = |why: &str| format!("rrule: {rule:?} has no Exchange equivalent ({why})");
    for k in parts.keys() {
        if !matches!(
            k.as_str(),
            "FREQ"
                | "INTERVAL"
                | "BYDAY"
                | "BYMONTHDAY"
                | "BYMONTH"
                | "BYSETPOS"
                | "COUNT"
                | "UNTIL"
                | "WKST"
        ) {
            return Err(cant(&format!("{k} is not supported")));
        }
    }
    let interval: u32 = match parts.get("INTERVAL") {
        Some(i) => i
            .parse()
            .ok()
            .filter(|i| *i >= 1)
            .ok_or_else(|| cant("INTERVAL"))?,
        None => 1,
    };
    let by_day: Vec<(i32, &str)> = match parts.get("BYDAY") {
        Some(d) => d
            .split(',')
            .map(|x| split_by_day(x).ok_or_else(|| cant("BYDAY")))
            .collect::<std::result::Result<_, _>>()?,
        None => Vec::new(),
    };
    let setpos: Option<i32> = match parts.get("BYSETPOS") {
        Some(p) => Some(p.parse().map_err(|_| cant("BYSETPOS"))?),
        None => None,
    };
    let month_day: Option<u32> = match parts.get("BYMONTHDAY") {
        Some(d) => Some(
            d.parse()
                .ok()
                .filter(|d| (1..=31).contains(d))
                .ok_or_else(|| cant("BYMONTHDAY must be one day from 1 to 31"))?,
        ),
        None => None,
    };
    let month: Option<u32> = match parts.get("BYMONTH") {
        Some(m) => Some(
            m.parse()
                .ok()
                .filter(|m| (1..=12).contains(m))
                .ok_or_else(|| cant("BYMONTH must be one month"))?,
        ),
        None => None,
    };
    let days_xml = |days: &[(i32, &str)]| {
        days.iter()
            .filter_map(|(_, d)| day_name(d))
            .collect::<Vec<_>>()
            .join(" ")
    };
    // A relative position: `2TU`, or `TU` with BYSETPOS.
    let relative = |by_day: &[(i32, &str)]| -> std::result::Result<(String, &'static str), String> {
        let n = match (by_day, setpos) {
            ([(n, _)], None) if *n != 0 => *n,
            (days, Some(p)) if days.iter().all(|(n, _)| *n == 0) => p,
            _ => return Err(cant("a relative day needs one position")),
        };
        let index = INDEXES
            .iter()
            .find(|(i, _)| *i == n)
            .map(|(_, s)| *s)
            .ok_or_else(|| cant("positions are 1 to 4 or -1"))?;
        Ok((days_xml(by_day), index))
    };
    let pattern = match parts.get("FREQ").map(String::as_str) {
        Some("DAILY") if by_day.is_empty() && month_day.is_none() && month.is_none() => {
            format!("<t:DailyRecurrence><t:Interval>{interval}</t:Interval></t:DailyRecurrence>")
        }
        Some("WEEKLY") if month_day.is_none() && month.is_none() && setpos.is_none() => {
            if by_day.iter().any(|(n, _)| *n != 0) {
                return Err(cant("a weekly day has no position"));
            }
            let days = if by_day.is_empty() {
                day_name(weekday_code(local_start.weekday()))
                    .unwrap_or("Monday")
                    .to_owned()
            } else {
                days_xml(&by_day)
            };
            let first = match parts.get("WKST") {
                Some(w) => format!(
                    "<t:FirstDayOfWeek>{}</t:FirstDayOfWeek>",
                    day_name(w).ok_or_else(|| cant("WKST"))?
                ),
                None => String::new(),
            };
            format!(
                "<t:WeeklyRecurrence><t:Interval>{interval}</t:Interval><t:DaysOfWeek>{days}</t:DaysOfWeek>{first}</t:WeeklyRecurrence>"
            )
        }
        Some("MONTHLY") if month.is_none() => {
            if by_day.is_empty() {
                let day = month_day.unwrap_or(local_start.day());
                format!(
                    "<t:AbsoluteMonthlyRecurrence><t:Interval>{interval}</t:Interval><t:DayOfMonth>{day}</t:DayOfMonth></t:AbsoluteMonthlyRecurrence>"
                )
            } else if month_day.is_none() {
                let (days, index) = relative(&by_day)?;
                format!(
                    "<t:RelativeMonthlyRecurrence><t:Interval>{interval}</t:Interval><t:DaysOfWeek>{days}</t:DaysOfWeek><t:DayOfWeekIndex>{index}</t:DayOfWeekIndex></t:RelativeMonthlyRecurrence>"
                )
            } else {
                return Err(cant("BYDAY with BYMONTHDAY"));
            }
        }
        Some("YEARLY") if interval == 1 => {
            let m = MONTHS[(month.unwrap_or(local_start.month()) - 1) as usize];
            if by_day.is_empty() {
                let day = month_day.unwrap_or(local_start.day());
                format!(
                    "<t:AbsoluteYearlyRecurrence><t:DayOfMonth>{day}</t:DayOfMonth><t:Month>{m}</t:Month></t:AbsoluteYearlyRecurrence>"
                )
            } else if month_day.is_none() {
                let (days, index) = relative(&by_day)?;
                format!(
                    "<t:RelativeYearlyRecurrence><t:DaysOfWeek>{days}</t:DaysOfWeek><t:DayOfWeekIndex>{index}</t:DayOfWeekIndex><t:Month>{m}</t:Month></t:RelativeYearlyRecurrence>"
                )
            } else {
                return Err(cant("BYDAY with BYMONTHDAY"));
            }
        }
        Some(f) => return Err(cant(&format!("FREQ={f} with these parts"))),
        None => return Err(cant("no FREQ")),
    };
    let start_date = local_start.format("%Y-%m-%d");
    let range = match (parts.get("COUNT"), parts.get("UNTIL")) {
        (Some(_), Some(_)) => return Err(cant("both COUNT and UNTIL")),
        (Some(c), None) => {
            let n: u32 = c
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| cant("COUNT"))?;
            format!(
                "<t:NumberedRecurrence><t:StartDate>{start_date}</t:StartDate><t:NumberOfOccurrences>{n}</t:NumberOfOccurrences></t:NumberedRecurrence>"
            )
        }
        (None, Some(u)) => {
            let date = parse_until(u).ok_or_else(|| cant("UNTIL"))?;
            format!(
                "<t:EndDateRecurrence><t:StartDate>{start_date}</t:StartDate><t:EndDate>{}</t:EndDate></t:EndDateRecurrence>",
                date.format("%Y-%m-%d")
            )
        }
        (None, None) => {
            format!(
                "<t:NoEndRecurrence><t:StartDate>{start_date}</t:StartDate></t:NoEndRecurrence>"
            )
        }
    };
    let _ = start;
    Ok(format!("<t:Recurrence>{pattern}{range}</t:Recurrence>"))
}

/// The date of an UNTIL (`20261231`, `20261231T090000Z`).
fn parse_until(u: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(u.get(..8)?, "%Y%m%d").ok()
}

/// The RRULE of a `Recurrence` element of a series starting at `start` (`local`: in its zone).
fn rrule_of(
    rec: &Element,
    start: DateTime<Utc>,
    local: NaiveDate,
) -> std::result::Result<String, String> {
    let mut pattern = None;
    let mut range = None;
    for c in &rec.children {
        if c.name.ends_with("Recurrence") && c.child("StartDate").is_some() {
            range = Some(c);
        } else {
            pattern = Some(c);
        }
    }
    let pattern = pattern.ok_or("the recurrence has no pattern")?;
    let range = range.ok_or("the recurrence has no range")?;
    let interval = match pattern.text_of("Interval") {
        Some(i) => i
            .parse::<u32>()
            .map_err(|_| format!("Interval {i:?} is not a number"))?,
        None => 1,
    };
    let days = |p: &Element| -> std::result::Result<Vec<&'static str>, String> {
        p.text_of("DaysOfWeek")
            .unwrap_or_default()
            .split_whitespace()
            .map(|d| day_code(d).ok_or_else(|| format!("DaysOfWeek {d:?} is not one day")))
            .collect()
    };
    let index = |p: &Element| -> std::result::Result<i32, String> {
        let i = p.text_of("DayOfWeekIndex").unwrap_or_default();
        INDEXES
            .iter()
            .find(|(_, s)| *s == i)
            .map(|(n, _)| *n)
            .ok_or_else(|| format!("DayOfWeekIndex {i:?}"))
    };
    let month = |p: &Element| -> std::result::Result<u32, String> {
        let m = p.text_of("Month").unwrap_or_default();
        MONTHS
            .iter()
            .position(|x| *x == m)
            .map(|i| i as u32 + 1)
            .ok_or_else(|| format!("Month {m:?}"))
    };
    let mut rule = match pattern.name.as_str() {
        "DailyRecurrence" => "FREQ=DAILY".to_owned(),
        "WeeklyRecurrence" => {
            let d = days(pattern)?;
            let mut r = "FREQ=WEEKLY".to_owned();
            let own = weekday_code(local.weekday());
            if !(d.len() == 1 && d[0] == own) {
                r.push_str(&format!(";BYDAY={}", d.join(",")));
            }
            r
        }
        "AbsoluteMonthlyRecurrence" => {
            let day: u32 = pattern
                .text_of("DayOfMonth")
                .and_then(|d| d.parse().ok())
                .ok_or("DayOfMonth is not a day")?;
            if day == local.day() {
                "FREQ=MONTHLY".to_owned()
            } else {
                format!("FREQ=MONTHLY;BYMONTHDAY={day}")
            }
        }
        "RelativeMonthlyRecurrence" => {
            let d = days(pattern)?;
            let n = index(pattern)?;
            match d.as_slice() {
                [one] => format!("FREQ=MONTHLY;BYDAY={n}{one}"),
                many => format!("FREQ=MONTHLY;BYDAY={};BYSETPOS={n}", many.join(",")),
            }
        }
        "AbsoluteYearlyRecurrence" => {
            let day: u32 = pattern
                .text_of("DayOfMonth")
                .and_then(|d| d.parse().ok())
                .ok_or("DayOfMonth is not a day")?;
            let m = month(pattern)?;
            if day == local.day() && m == local.month() {
                "FREQ=YEARLY".to_owned()
            } else {
                format!("FREQ=YEARLY;BYMONTH={m};BYMONTHDAY={day}")
            }
        }
        "RelativeYearlyRecurrence" => {
            let d = days(pattern)?;
            let n = index(pattern)?;
            let m = month(pattern)?;
            match d.as_slice() {
                [one] => format!("FREQ=YEARLY;BYMONTH={m};BYDAY={n}{one}"),
                many => format!(
                    "FREQ=YEARLY;BYMONTH={m};BYDAY={};BYSETPOS={n}",
                    many.join(",")
                ),
            }
        }
        other => {
            return Err(format!(
                "the recurrence pattern {other} is not synchronized"
            ));
        }
    };
    if interval > 1 {
        // INTERVAL right after FREQ.
        let (freq, rest) = rule
            .split_once(';')
            .map_or((rule.as_str(), ""), |(a, b)| (a, b));
        rule = if rest.is_empty() {
            format!("{freq};INTERVAL={interval}")
        } else {
            format!("{freq};INTERVAL={interval};{rest}")
        };
    }
    match range.name.as_str() {
        "NumberedRecurrence" => {
            let n = range
                .text_of("NumberOfOccurrences")
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or("NumberOfOccurrences is not a number")?;
            rule.push_str(&format!(";COUNT={n}"));
        }
        "EndDateRecurrence" => {
            let d = range
                .text_of("EndDate")
                .and_then(|d| NaiveDate::parse_from_str(d.get(..10).unwrap_or(d), "%Y-%m-%d").ok())
                .ok_or("EndDate is not a date")?;
            // The last occurrence's start, as iCalendar counts UNTIL.
            let until = d.and_time(start.time()).and_utc();
            rule.push_str(&format!(";UNTIL={}", until.format("%Y%m%dT%H%M%SZ")));
        }
        "NoEndRecurrence" => {}
        other => return Err(format!("the recurrence range {other} is not synchronized")),
    }
    if let Some(w) = pattern.text_of("FirstDayOfWeek") {
        rule.push_str(&format!(
            ";WKST={}",
            day_code(w).ok_or_else(|| format!("FirstDayOfWeek {w:?}"))?
        ));
    }
    Ok(rule)
}

// ---------------------------------------------------------------------------------------------
// Exceptions of a series: occurrences cancelled or changed one by one

/// A changed occurrence of the values (`overrides`), with what it inherits made absent.
#[derive(Debug, Clone, PartialEq)]
struct Override {
    original: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    subject: Option<String>,
    location: Option<String>,
    description: Option<String>,
}

/// One write of an occurrence after its series' (`OccurrenceItemId` of the master).
#[derive(Debug, Clone, PartialEq)]
pub enum OccurrenceWrite {
    /// `DeleteItem` of occurrence `index` (1-based, in the pattern).
    Cancel { index: u32 },
    /// `UpdateItem` of occurrence `index` to these (the series' subject, location and
    /// description where the override names none).
    Change {
        index: u32,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        subject: Option<String>,
        location: Option<String>,
        description: Option<String>,
    },
}

fn exdates_of(v: &Value) -> std::result::Result<Vec<DateTime<Utc>>, String> {
    let mut out = Vec::new();
    for x in v["exdates"].as_array().into_iter().flatten() {
        out.push(time_value(x, "exdates")?.ok_or("exdates: a time is missing")?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn overrides_of(v: &Value) -> std::result::Result<Vec<Override>, String> {
    let series = |f: &str| text_value(&v[f], f).ok().flatten();
    let mut out: Vec<Override> = Vec::new();
    match &v["overrides"] {
        Value::Null => {}
        Value::Array(list) => {
            for o in list {
                let need = |f: &str| -> std::result::Result<DateTime<Utc>, String> {
                    time_value(&o[f], &format!("overrides.{f}"))?
                        .ok_or_else(|| format!("overrides.{f}: a changed occurrence needs it"))
                };
                // What equals the series' is inherited: absent.
                let own = |f: &str| -> std::result::Result<Option<String>, String> {
                    let t = text_value(&o[f], &format!("overrides.{f}"))?;
                    Ok(t.filter(|t| Some(t) != series(f).as_ref()))
                };
                let (start, end) = (need("start")?, need("end")?);
                if end < start {
                    return Err("overrides.end: the occurrence ends before it starts".into());
                }
                out.push(Override {
                    original: need("recurrence_id")?,
                    start,
                    end,
                    subject: own("subject")?,
                    location: own("location")?,
                    description: own("description")?,
                });
            }
        }
        other => return Err(format!("overrides: {other} is not a list")),
    }
    out.sort_by_key(|o| o.original);
    out.dedup_by_key(|o| o.original);
    Ok(out)
}

/// The zone a series' occurrences are counted in: the one written to (or kept on) the
/// server when Exchange knows it, else UTC.
fn series_zone(v: &Value, current: Option<&Value>) -> Tz {
    let known = |z: &Value| {
        z.as_str()
            .filter(|z| windows_zone(z).is_some())
            .and_then(|z| z.parse::<Tz>().ok())
    };
    match &v["time_zone"] {
        Value::Null => current
            .and_then(|c| known(&c["time_zone"]))
            .unwrap_or(Tz::UTC),
        z => known(z).unwrap_or(Tz::UTC),
    }
}

/// What must be written occurrence by occurrence after the master for `v`'s exceptions
/// (`current`: the server's item, whose exceptions are kept unless its recurrence is
/// rewritten). An exception EWS cannot make — an occurrence the server has cancelled or
/// changed that the values return to the series, a time that is no occurrence — is the error.
pub fn exception_writes(
    v: &Value,
    current: Option<&Value>,
) -> std::result::Result<Vec<OccurrenceWrite>, String> {
    let want_ex = exdates_of(v)?;
    let want_ov = overrides_of(v)?;
    // Setting the recurrence (a new series, a new rule or start) drops the server's
    // exceptions: then every one of the values is new.
    let kept = current.filter(|c| c["rrule"] == v["rrule"] && c["start"] == v["start"]);
    let (have_ex, have_ov) = match kept {
        Some(c) => (exdates_of(c)?, overrides_of(c)?),
        None => (Vec::new(), Vec::new()),
    };
    if want_ex.is_empty() && want_ov.is_empty() && have_ex.is_empty() && have_ov.is_empty() {
        return Ok(Vec::new());
    }
    for h in &have_ex {
        if !want_ex.contains(h) {
            return Err(format!(
                "exdates: the occurrence of {} is cancelled on the server and the values \
                 restore it; EWS cannot restore a cancelled occurrence (restore it in Outlook)",
                utc(*h)
            ));
        }
    }
    for h in &have_ov {
        if !want_ex.contains(&h.original) && !want_ov.iter().any(|o| o.original == h.original) {
            return Err(format!(
                "overrides: the occurrence of {} is changed on the server and the values \
                 return it to the series; EWS cannot undo a changed occurrence (change it \
                 back in Outlook)",
                utc(h.original)
            ));
        }
    }
    let rrule = text_value(&v["rrule"], "rrule")?;
    let Some(rrule) = rrule else {
        let f = if want_ex.is_empty() {
            "overrides"
        } else {
            "exdates"
        };
        return Err(format!("{f}: exceptions need a recurring series (rrule)"));
    };
    let start = time_value(&v["start"], "start")?.ok_or("start: an appointment needs a start")?;
    let zone = series_zone(v, current);
    let local = start.with_timezone(&zone);
    let xml = recurrence_xml(&rrule, start, local.date_naive())?;
    let rec =
        Element::parse(xml.replace("t:", "").as_bytes()).map_err(|e| format!("rrule: {e}"))?;
    let series = super::occurrences::Series::parse(&rec).map_err(|e| format!("rrule: {e}"))?;
    let index = |t: DateTime<Utc>, field: &str| {
        super::occurrences::instance_index(&series, zone, local.time(), t).ok_or_else(|| {
            format!(
                "{field}: {} is not an occurrence of the series ({rrule} from {}, {zone})",
                utc(t),
                utc(start)
            )
        })
    };
    let mut out: Vec<(u32, OccurrenceWrite)> = Vec::new();
    for x in &want_ex {
        let i = index(*x, "exdates")?;
        if !have_ex.contains(x) {
            out.push((i, OccurrenceWrite::Cancel { index: i }));
        }
    }
    let series_text = |f: &str| text_value(&v[f], f).ok().flatten();
    for o in &want_ov {
        let i = index(o.original, "overrides.recurrence_id")?;
        if want_ex.contains(&o.original) || have_ov.contains(o) {
            continue;
        }
        out.push((
            i,
            OccurrenceWrite::Change {
                index: i,
                start: o.start,
                end: o.end,
                subject: o.subject.clone().or_else(|| series_text("subject")),
                location: o.location.clone().or_else(|| series_text("location")),
                description: o.description.clone().or_else(|| series_text("description")),
            },
        ));
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, w)| w).collect())
}

/// The `OccurrenceItemId` of occurrence `index` of `master`.
fn occurrence_id(master: &str, index: u32) -> String {
    format!(
        "<t:OccurrenceItemId RecurringMasterId=\"{}\" InstanceIndex=\"{index}\"/>",
        escape(master)
    )
}

/// `DeleteItem` of occurrence `index` of `master` (a cancelled occurrence).
pub fn delete_occurrence_body(master: &str, index: u32, send: bool) -> String {
    format!(
        "<m:DeleteItem DeleteType=\"MoveToDeletedItems\" SendMeetingCancellations=\"{}\"><m:ItemIds>{}</m:ItemIds></m:DeleteItem>",
        if send {
            "SendToAllAndSaveCopy"
        } else {
            "SendToNone"
        },
        occurrence_id(master, index)
    )
}

/// `UpdateItem` of occurrence `index` of `master` (a moved or changed occurrence). The
/// occurrence has no ChangeKey of its own to give: the master's was checked by its write.
pub fn update_occurrence_body(master: &str, w: &OccurrenceWrite, send: bool) -> Option<String> {
    let OccurrenceWrite::Change {
        index,
        start,
        end,
        subject,
        location,
        description,
    } = w
    else {
        return None;
    };
    let set = |uri: &str, x: Option<String>| match x {
        Some(x) => format!(
            "<t:SetItemField>{}<t:CalendarItem>{x}</t:CalendarItem></t:SetItemField>",
            field_uri(uri)
        ),
        None => format!("<t:DeleteItemField>{}</t:DeleteItemField>", field_uri(uri)),
    };
    let updates = [
        set("item:Subject", subject.as_deref().map(|s| el("Subject", s))),
        set(
            "item:Body",
            description
                .as_deref()
                .map(|d| format!("<t:Body BodyType=\"Text\">{}</t:Body>", escape(d))),
        ),
        set("calendar:Start", Some(el("Start", &utc(*start)))),
        set("calendar:End", Some(el("End", &utc(*end)))),
        set(
            "calendar:Location",
            location.as_deref().map(|l| el("Location", l)),
        ),
    ]
    .concat();
    Some(format!(
        "<m:UpdateItem MessageDisposition=\"SaveOnly\" ConflictResolution=\"AlwaysOverwrite\" SendMeetingInvitationsOrCancellations=\"{}\"><m:ItemChanges><t:ItemChange>{}<t:Updates>{updates}</t:Updates></t:ItemChange></m:ItemChanges></m:UpdateItem>",
        if send {
            "SendToChangedAndSaveCopy"
        } else {
            "SendToNone"
        },
        occurrence_id(master, *index)
    ))
}

/// `GetItem` of changed occurrences (by the ItemIds `ModifiedOccurrences` gives): what an
/// occurrence may have of its own besides its times.
pub fn get_occurrences_body(ids: &[&str]) -> String {
    let ids: String = ids
        .iter()
        .map(|id| format!("<t:ItemId Id=\"{}\"/>", escape(id)))
        .collect();
    format!(
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:BodyType>Text</t:BodyType><t:AdditionalProperties>{}{}{}</t:AdditionalProperties></m:ItemShape><m:ItemIds>{ids}</m:ItemIds></m:GetItem>",
        field_uri("item:Subject"),
        field_uri("item:Body"),
        field_uri("calendar:Location")
    )
}

// ---------------------------------------------------------------------------------------------
// Time zones: IANA ↔ Windows

/// (Windows id, IANA zones; the first is the one read).
const ZONES: &[(&str, &[&str])] = &[
    ("UTC", &["UTC", "Etc/UTC", "Etc/GMT", "GMT"]),
    ("Dateline Standard Time", &["Etc/GMT+12"]),
    ("UTC-11", &["Etc/GMT+11", "Pacific/Pago_Pago"]),
    ("Hawaiian Standard Time", &["Pacific/Honolulu"]),
    ("Alaskan Standard Time", &["America/Anchorage"]),
    (
        "Pacific Standard Time",
        &["America/Los_Angeles", "America/Vancouver"],
    ),
    ("US Mountain Standard Time", &["America/Phoenix"]),
    (
        "Mountain Standard Time",
        &["America/Denver", "America/Edmonton"],
    ),
    (
        "Central Standard Time",
        &["America/Chicago", "America/Winnipeg"],
    ),
    ("Central America Standard Time", &["America/Guatemala"]),
    ("Canada Central Standard Time", &["America/Regina"]),
    ("Central Standard Time (Mexico)", &["America/Mexico_City"]),
    (
        "Eastern Standard Time",
        &["America/New_York", "America/Toronto", "America/Detroit"],
    ),
    (
        "SA Pacific Standard Time",
        &["America/Bogota", "America/Lima"],
    ),
    ("Atlantic Standard Time", &["America/Halifax"]),
    ("Newfoundland Standard Time", &["America/St_Johns"]),
    ("E. South America Standard Time", &["America/Sao_Paulo"]),
    (
        "Argentina Standard Time",
        &["America/Argentina/Buenos_Aires", "America/Buenos_Aires"],
    ),
    (
        "GMT Standard Time",
        &["Europe/London", "Europe/Dublin", "Europe/Lisbon"],
    ),
    ("Greenwich Standard Time", &["Atlantic/Reykjavik"]),
    (
        "W. Europe Standard Time",
        &[
            "Europe/Berlin",
            "Europe/Amsterdam",
            "Europe/Rome",
            "Europe/Vienna",
            "Europe/Zurich",
            "Europe/Stockholm",
            "Europe/Oslo",
            "Europe/Luxembourg",
        ],
    ),
    (
        "Central Europe Standard Time",
        &[
            "Europe/Budapest",
            "Europe/Prague",
            "Europe/Bratislava",
            "Europe/Ljubljana",
            "Europe/Belgrade",
        ],
    ),
    (
        "Romance Standard Time",
        &[
            "Europe/Paris",
            "Europe/Madrid",
            "Europe/Brussels",
            "Europe/Copenhagen",
        ],
    ),
    (
        "Central European Standard Time",
        &[
            "Europe/Warsaw",
            "Europe/Zagreb",
            "Europe/Sarajevo",
            "Europe/Skopje",
        ],
    ),
    ("W. Central Africa Standard Time", &["Africa/Lagos"]),
    ("GTB Standard Time", &["Europe/Bucharest", "Europe/Athens"]),
    (
        "FLE Standard Time",
        &[
            "Europe/Kiev",
            "Europe/Kyiv",
            "Europe/Helsinki",
            "Europe/Riga",
            "Europe/Tallinn",
            "Europe/Vilnius",
            "Europe/Sofia",
        ],
    ),
    ("E. Europe Standard Time", &["Europe/Chisinau"]),
    ("Israel Standard Time", &["Asia/Jerusalem"]),
    ("South Africa Standard Time", &["Africa/Johannesburg"]),
    ("Egypt Standard Time", &["Africa/Cairo"]),
    ("Turkey Standard Time", &["Europe/Istanbul"]),
    ("Russian Standard Time", &["Europe/Moscow"]),
    ("Arabian Standard Time", &["Asia/Dubai"]),
    ("Arab Standard Time", &["Asia/Riyadh"]),
    ("Iran Standard Time", &["Asia/Tehran"]),
    ("Pakistan Standard Time", &["Asia/Karachi"]),
    ("India Standard Time", &["Asia/Kolkata", "Asia/Calcutta"]),
    ("Nepal Standard Time", &["Asia/Kathmandu", "Asia/Katmandu"]),
    ("Bangladesh Standard Time", &["Asia/Dhaka"]),
    (
        "SE Asia Standard Time",
        &["Asia/Bangkok", "Asia/Jakarta", "Asia/Ho_Chi_Minh"],
    ),
    ("China Standard Time", &["Asia/Shanghai", "Asia/Hong_Kong"]),
    (
        "Singapore Standard Time",
        &["Asia/Singapore", "Asia/Kuala_Lumpur"],
    ),
    ("Taipei Standard Time", &["Asia/Taipei"]),
    ("Tokyo Standard Time", &["Asia/Tokyo"]),
    ("Korea Standard Time", &["Asia/Seoul"]),
    ("AUS Central Standard Time", &["Australia/Darwin"]),
    ("Cen. Australia Standard Time", &["Australia/Adelaide"]),
    ("E. Australia Standard Time", &["Australia/Brisbane"]),
    (
        "AUS Eastern Standard Time",
        &[
            "Australia/Sydney",
            "Australia/Melbourne",
            "Australia/Canberra",
        ],
    ),
    ("W. Australia Standard Time", &["Australia/Perth"]),
    ("New Zealand Standard Time", &["Pacific/Auckland"]),
];

/// The Windows time zone id of an IANA zone (`None`: not in the table).
pub fn windows_zone(iana: &str) -> Option<&'static str> {
    ZONES
        .iter()
        .find(|(_, ianas)| ianas.contains(&iana))
        .map(|(w, _)| *w)
}

/// The IANA zone of a Windows time zone id.
pub fn iana_zone(windows: &str) -> Option<&'static str> {
    ZONES
        .iter()
        .find(|(w, _)| *w == windows)
        .and_then(|(_, ianas)| ianas.first().copied())
}

// ---------------------------------------------------------------------------------------------
// EWS item → values

/// An `xs:dateTime` of an answer (UTC when it names no offset).
fn parse_ews_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .ok()
        .map(|n| Utc.from_utc_datetime(&n))
        .or_else(|| {
            NaiveDate::parse_from_str(s.get(..10)?, "%Y-%m-%d")
                .ok()
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        })
}

fn time_json(t: DateTime<Utc>) -> Value {
    Value::String(utc(t))
}

fn ews_time(item: &Element, name: &str) -> std::result::Result<Option<DateTime<Utc>>, String> {
    match item.text_of(name) {
        None | Some("") => Ok(None),
        Some(s) => parse_ews_time(s)
            .map(Some)
            .ok_or_else(|| format!("{name} {s:?} is not a time")),
    }
}

fn ext_value<'a>(item: &'a Element, name: &str) -> Option<&'a str> {
    item.children_named("ExtendedProperty")
        .find(|p| {
            p.child("ExtendedFieldURI").is_some_and(|u| {
                u.attr("PropertyName") == Some(name)
                    && u.attr("PropertySetId")
                        .is_some_and(|s| s.eq_ignore_ascii_case(PROPERTY_SET))
            })
        })
        .and_then(|p| p.text_of("Value"))
        .filter(|v| !v.is_empty())
}

fn opt_text(item: &Element, name: &str) -> Value {
    json!(item.text_of(name).filter(|s| !s.is_empty()))
}

fn addresses<'a>(list: Option<&'a Element>) -> impl Iterator<Item = String> + 'a {
    list.into_iter()
        .flat_map(|l| l.children.iter())
        .filter_map(|a| a.find("EmailAddress"))
        .map(|e| e.text.trim().to_lowercase())
        .filter(|e| !e.is_empty())
}

/// Reads an item element (`CalendarItem`, `Contact`, `Task`) into a [`RemoteItem`].
pub fn read_item(item: &Element) -> std::result::Result<RemoteItem, String> {
    let id_el = item.child("ItemId").ok_or("the item has no ItemId")?;
    let id = id_el.attr("Id").ok_or("the item has no Id")?.to_owned();
    let version = id_el.attr("ChangeKey").unwrap_or_default().to_owned();
    let kind = kind_of_element(&item.name).ok_or_else(|| {
        format!(
            "a {} is not synchronized (only appointments, contacts and tasks are)",
            item.name
        )
    })?;
    let mut v = Map::new();
    match kind {
        RecordType::Appointment => appointment_values(item, &mut v)?,
        RecordType::Contact => contact_values(item, &mut v),
        RecordType::Task => task_values(item, &mut v)?,
        _ => {}
    }
    let uid =
        ext_value(item, UID_PROPERTY).or_else(|| item.text_of("UID").filter(|u| !u.is_empty()));
    v.insert("uid".into(), json!(uid));
    let categories: Vec<String> = item
        .child("Categories")
        .map(|c| {
            c.children_named("String")
                .map(|s| s.text.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    v.insert("categories".into(), json!(categories));
    v.insert("stamp".into(), json!(ext_value(item, STAMP_PROPERTY)));
    v.insert(
        "modified".into(),
        ews_time(item, "LastModifiedTime")?.map_or(Value::Null, time_json),
    );
    Ok(RemoteItem {
        id,
        version,
        kind,
        values: Value::Object(v),
    })
}

fn body_text(item: &Element) -> Value {
    let Some(b) = item.child("Body") else {
        return Value::Null;
    };
    let text = if b.attr("BodyType") == Some("HTML") {
        strip_html(&b.text)
    } else {
        b.text.replace("\r\n", "\n")
    };
    let text = text.trim_end().to_owned();
    if text.trim().is_empty() {
        Value::Null
    } else {
        Value::String(text)
    }
}

/// Text of an HTML body (the server was asked for text; some return HTML anyway).
fn strip_html(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn appointment_values(
    item: &Element,
    v: &mut Map<String, Value>,
) -> std::result::Result<(), String> {
    let start = ews_time(item, "Start")?.ok_or("the appointment has no Start")?;
    let end = ews_time(item, "End")?.ok_or("the appointment has no End")?;
    let all_day = item.text_of("IsAllDayEvent") == Some("true");
    let windows = item
        .child("StartTimeZone")
        .and_then(|z| z.attr("Id"))
        .filter(|z| !z.is_empty());
    let own = ext_value(item, TZ_PROPERTY).filter(|iana| {
        iana.parse::<Tz>().is_ok()
            && match (windows, windows_zone(iana)) {
                (Some(w), Some(mine)) => w == mine,
                (None, _) | (_, None) => true,
            }
    });
    let zone_name: Option<String> = if all_day {
        None
    } else {
        own.map(str::to_owned)
            .or_else(|| windows.and_then(iana_zone).map(str::to_owned))
    };
    let zone: Option<Tz> = zone_name.as_deref().and_then(|z| z.parse().ok());
    let local = zone.map_or(start.date_naive(), |z| start.with_timezone(&z).date_naive());
    v.insert("subject".into(), opt_text(item, "Subject"));
    v.insert("location".into(), opt_text(item, "Location"));
    v.insert("description".into(), body_text(item));
    v.insert("start".into(), time_json(start));
    v.insert("end".into(), time_json(end));
    if all_day {
        v.insert("all_day".into(), json!(true));
    }
    v.insert("time_zone".into(), json!(zone_name));
    v.insert(
        "organizer".into(),
        json!(
            item.child("Organizer")
                .and_then(|o| o.find("EmailAddress"))
                .map(|e| e.text.trim().to_lowercase())
                .filter(|e| !e.is_empty())
        ),
    );
    let mut attendees: Vec<String> = addresses(item.child("RequiredAttendees"))
        .chain(addresses(item.child("OptionalAttendees")))
        .collect();
    attendees.sort();
    attendees.dedup();
    v.insert("attendees".into(), json!(attendees));
    v.insert(
        "state".into(),
        json!(if item.text_of("IsCancelled") == Some("true") {
            "canceled"
        } else {
            "open"
        }),
    );
    let rrule = match item.child("Recurrence") {
        Some(r) => Some(rrule_of(r, start, local)?),
        None => None,
    };
    v.insert("rrule".into(), json!(rrule));
    let mut exdates: Vec<DateTime<Utc>> = Vec::new();
    for d in item
        .child("DeletedOccurrences")
        .map(|d| d.children.as_slice())
        .unwrap_or_default()
    {
        exdates.push(ews_time(d, "Start")?.ok_or("a deleted occurrence has no Start")?);
    }
    exdates.sort();
    v.insert(
        "exdates".into(),
        Value::Array(exdates.into_iter().map(time_json).collect()),
    );
    let mut overrides: Vec<(DateTime<Utc>, Value)> = Vec::new();
    for o in item
        .child("ModifiedOccurrences")
        .map(|d| d.children.as_slice())
        .unwrap_or_default()
    {
        let original =
            ews_time(o, "OriginalStart")?.ok_or("a modified occurrence has no OriginalStart")?;
        let s = ews_time(o, "Start")?.ok_or("a modified occurrence has no Start")?;
        let e = ews_time(o, "End")?.ok_or("a modified occurrence has no End")?;
        overrides.push((
            original,
            json!({"recurrence_id": utc(original), "start": utc(s), "end": utc(e)}),
        ));
    }
    overrides.sort_by_key(|(k, _)| *k);
    v.insert(
        "overrides".into(),
        Value::Array(overrides.into_iter().map(|(_, o)| o).collect()),
    );
    Ok(())
}

/// Adds what a changed occurrence (`occ`, read by its ItemId) has of its own — subject,
/// location, description differing from the series' — to its override in `values`.
fn add_occurrence_details(values: &mut Value, original: DateTime<Utc>, occ: &Element) {
    let series = values.clone();
    let own = [
        ("subject", opt_text(occ, "Subject")),
        ("location", opt_text(occ, "Location")),
        ("description", body_text(occ)),
    ];
    let Some(o) = values["overrides"]
        .as_array_mut()
        .and_then(|list| {
            list.iter_mut()
                .find(|o| o["recurrence_id"].as_str() == Some(utc(original).as_str()))
        })
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (f, v) in own {
        if !v.is_null() && v != series[f] {
            o.insert(f.into(), v);
        }
    }
}

fn dictionary(item: &Element, name: &str, keys: &[&str]) -> Vec<String> {
    let Some(d) = item.child(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for k in keys {
        for e in d
            .children_named("Entry")
            .filter(|e| e.attr("Key") == Some(k))
        {
            let t = e.text.trim();
            if !t.is_empty() {
                out.push(t.to_owned());
            }
        }
    }
    out
}

fn contact_values(item: &Element, v: &mut Map<String, Value>) {
    let name = item
        .text_of("DisplayName")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            let parts: Vec<&str> = ["GivenName", "Surname"]
                .iter()
                .filter_map(|f| item.text_of(f).filter(|s| !s.is_empty()))
                .collect();
            (!parts.is_empty()).then(|| parts.join(" "))
        });
    v.insert("full_name".into(), json!(name));
    let emails: Vec<String> = dictionary(item, "EmailAddresses", &EMAIL_KEYS)
        .into_iter()
        .map(|e| {
            let e = e.trim();
            e.strip_prefix("SMTP:")
                .or_else(|| e.strip_prefix("smtp:"))
                .unwrap_or(e)
                .to_lowercase()
        })
        .collect();
    v.insert("emails".into(), json!(emails));
    v.insert("company".into(), opt_text(item, "CompanyName"));
    v.insert("job_title".into(), opt_text(item, "JobTitle"));
    let keys: Vec<&str> = PHONE_KEYS.iter().chain(FAX_KEYS.iter()).copied().collect();
    v.insert(
        "phones".into(),
        json!(dictionary(item, "PhoneNumbers", &keys)),
    );
}

fn task_values(item: &Element, v: &mut Map<String, Value>) -> std::result::Result<(), String> {
    v.insert("subject".into(), opt_text(item, "Subject"));
    v.insert("description".into(), body_text(item));
    v.insert(
        "due".into(),
        ews_time(item, "DueDate")?.map_or(Value::Null, time_json),
    );
    let percent = match item.text_of("PercentComplete") {
        None | Some("") => None,
        Some(p) => Some(
            p.parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| format!("PercentComplete {p:?} is not 0 to 100"))?
                .round() as u64,
        ),
    };
    let status = item.text_of("Status").unwrap_or("NotStarted");
    let state = match status {
        "Completed" => "completed",
        "Deferred" => "canceled",
        "NotStarted" | "InProgress" | "WaitingOnOthers" => "open",
        other => return Err(format!("Status {other:?} is not a task status")),
    };
    v.insert("percent_complete".into(), json!(percent));
    v.insert("state".into(), json!(state));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The store

fn item_id_of(msg: &Element) -> Option<(String, String)> {
    let id = msg.find("ItemId")?;
    Some((
        id.attr("Id")?.to_owned(),
        id.attr("ChangeKey").unwrap_or_default().to_owned(),
    ))
}

impl ItemStore for EwsItemStore {
    async fn changes(
        &mut self,
        collection: &str,
        since: Option<&ServerTokenCursor>,
    ) -> Result<ChangeSet> {
        let folder = folder_of(collection);
        let mut state = since.map(|t| t.token.clone());
        let mut set = ChangeSet::default();
        // Changed ids with their element kind, in order of the changes.
        let mut changed: Vec<(String, String)> = Vec::new();
        let mut complete = false;
        for _ in 0..MAX_PAGES {
            let page =
                ops::sync_folder_items(&mut self.client, &folder, state.as_deref(), self.page_size)
                    .await
                    .map_err(|e| {
                        if e.code.as_deref() == Some("sync_state_invalid") {
                            e.with_code(SYNC_TOKEN_INVALID)
                        } else {
                            e
                        }
                    })?;
            for ch in page.changes {
                match ch {
                    SyncChange::Create(r) | SyncChange::Update(r) => {
                        set.deleted.retain(|d| *d != r.id);
                        changed.retain(|(id, _)| *id != r.id);
                        changed.push((r.id, r.kind));
                    }
                    SyncChange::Delete(id) => {
                        changed.retain(|(c, _)| *c != id);
                        if !set.deleted.contains(&id) {
                            set.deleted.push(id);
                        }
                    }
                    SyncChange::ReadFlag { .. } => {}
                }
            }
            let advanced = state.as_deref() != Some(page.sync_state.as_str());
            state = Some(page.sync_state);
            if page.last || !advanced {
                complete = true;
                break;
            }
        }
        set.more = !complete;
        // Read what changed, by kind, GET_BATCH at a time.
        let mut readable: Vec<(String, RecordType)> = Vec::new();
        for (id, element) in changed {
            match kind_of_element(&element) {
                Some(k) => readable.push((id, k)),
                None => set.unreadable.push((
                    id,
                    format!(
                        "a {element} is not synchronized (only appointments, contacts and tasks are)"
                    ),
                )),
            }
        }
        let mut read: HashMap<String, std::result::Result<Option<RemoteItem>, String>> =
            HashMap::new();
        for kind in [
            RecordType::Appointment,
            RecordType::Contact,
            RecordType::Task,
        ] {
            let ids: Vec<&str> = readable
                .iter()
                .filter(|(_, k)| *k == kind)
                .map(|(id, _)| id.as_str())
                .collect();
            for batch in ids.chunks(GET_BATCH) {
                let got = self.get_items(batch, &[kind]).await?;
                for (id, r) in batch.iter().zip(got) {
                    read.insert((*id).to_owned(), r);
                }
            }
        }
        for (id, _) in readable {
            match read.remove(&id) {
                Some(Ok(Some(item))) => set.changed.push(item),
                // Deleted since the sync answer: the next round reports it.
                Some(Ok(None)) | None => {}
                Some(Err(why)) => set.unreadable.push((id, why)),
            }
        }
        set.next = state.map(|token| ServerTokenCursor { token });
        Ok(set)
    }

    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<RemoteItem>> {
        self.fetch(collection, id).await
    }

    async fn create(
        &mut self,
        collection: &str,
        kind: RecordType,
        values: &Value,
    ) -> Result<Written> {
        let uid = values["uid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| protocol("an item to create needs a uid"))?;
        let folder = folder_of(collection);
        let send = self.sends(kind, values);
        let body = create_body(&folder, kind, values, send, &self.acting()).map_err(unmappable)?;
        let writes = match kind {
            RecordType::Appointment => exception_writes(values, None).map_err(unmappable)?,
            _ => Vec::new(),
        };
        // Made before (a create repeated after a lost answer): that item, not a second one.
        if let Some(existing) = self.find_by_uid(&folder, uid).await?.into_iter().next() {
            return self.conflict_or_gone(collection, &existing).await;
        }
        let answer = self.client.call("CreateItem", &body).await?;
        let msg = single(&answer, "CreateItem")?;
        let (id, version) =
            item_id_of(msg).ok_or_else(|| protocol("the CreateItem answer names no item"))?;
        let version = match writes.is_empty() {
            true => version,
            false => self.write_occurrences(&id, &writes, send).await?,
        };
        Ok(Written::Done { id, version })
    }

    async fn update(
        &mut self,
        collection: &str,
        id: &str,
        if_version: &str,
        values: &Value,
    ) -> Result<Written> {
        // The item as it is: its kind, and the exceptions only the server can change.
        let current = match self.fetch(collection, id).await? {
            None => return Ok(Written::Gone),
            Some(c) if c.version != if_version => return Ok(Written::Conflict { current: c }),
            Some(c) => c,
        };
        let send = self.sends(current.kind, values);
        let writes = match current.kind {
            RecordType::Appointment => {
                exception_writes(values, Some(&current.values)).map_err(unmappable)?
            }
            _ => Vec::new(),
        };
        let body = update_body(
            id,
            if_version,
            current.kind,
            values,
            Some(&current.values),
            send,
        )
        .map_err(unmappable)?;
        let answer = self.client.call("UpdateItem", &body).await?;
        let msg = answer
            .messages()
            .into_iter()
            .next()
            .ok_or_else(|| protocol("the answer to UpdateItem has no response message"))?;
        match msg.text_of("ResponseCode") {
            Some("ErrorIrresolvableConflict")
            | Some("ErrorChangeKeyRequiredForWriteOperations") => {
                return self.conflict_or_gone(collection, id).await;
            }
            Some("ErrorItemNotFound") => return Ok(Written::Gone),
            _ => check(msg, "UpdateItem")?,
        }
        let conflicts = msg
            .child("ConflictResults")
            .and_then(|c| c.text_of("Count"))
            .and_then(|c| c.parse::<u32>().ok())
            .unwrap_or(0);
        if conflicts > 0 {
            return self.conflict_or_gone(collection, id).await;
        }
        let (new_id, version) =
            item_id_of(msg).ok_or_else(|| protocol("the UpdateItem answer names no item"))?;
        let version = match writes.is_empty() {
            true => version,
            false => self.write_occurrences(&new_id, &writes, send).await?,
        };
        Ok(Written::Done {
            id: new_id,
            version,
        })
    }

    async fn delete(&mut self, collection: &str, id: &str, if_version: &str) -> Result<Written> {
        // DeleteItem has no ChangeKey condition: compare first (see the module docs' race).
        let answer = self
            .client
            .call("GetItem", &get_change_key_body(id))
            .await?;
        let msg = single_or_missing(&answer, "GetItem")?;
        let Some(msg) = msg else {
            return Ok(Written::Gone);
        };
        let item = msg.child("Items").and_then(|i| i.children.first());
        let Some((_, key)) = item.and_then(|i| {
            i.child("ItemId").map(|x| {
                (
                    x.attr("Id").unwrap_or_default(),
                    x.attr("ChangeKey").unwrap_or_default().to_owned(),
                )
            })
        }) else {
            return Err(protocol("the GetItem answer names no item"));
        };
        if key != if_version {
            return self.conflict_or_gone(collection, id).await;
        }
        let kind = item.and_then(|i| kind_of_element(&i.name));
        let send = match (kind, self.meeting_messages) {
            (Some(RecordType::Appointment), MeetingMessages::SendToAllAndSaveCopy) => {
                // Only for a future meeting with attendees.
                match self.fetch(collection, id).await? {
                    Some(c) => self.sends(c.kind, &c.values),
                    None => return Ok(Written::Gone),
                }
            }
            _ => false,
        };
        let answer = self
            .client
            .call("DeleteItem", &delete_body(id, if_version, send))
            .await?;
        match single_or_missing(&answer, "DeleteItem")? {
            None => Ok(Written::Gone),
            Some(_) => Ok(Written::Done {
                id: id.to_owned(),
                version: String::new(),
            }),
        }
    }
}

/// The one response message, `None` when it says `ErrorItemNotFound`.
fn single_or_missing<'a>(answer: &'a Answer, what: &str) -> Result<Option<&'a Element>> {
    let msg = answer
        .messages()
        .into_iter()
        .next()
        .ok_or_else(|| protocol(format!("the answer to {what} has no response message")))?;
    if msg.text_of("ResponseCode") == Some("ErrorItemNotFound") {
        return Ok(None);
    }
    check(msg, what)?;
    Ok(Some(msg))
}

/// Every request body of this module, with representative arguments: what the schema test
/// validates.
pub fn every_request_body() -> Vec<(&'static str, String)> {
    let own = Acting::Own;
    let delegate = Acting::Delegate("bob@contoso.com".into());
    let appointment = json!({
        "uid": "u1 & <x>", "subject": "Review", "description": "Line 1\nLine 2",
        "start": "2026-12-10T09:00:00Z", "end": "2026-12-10T10:00:00Z",
        "location": "Room 1", "time_zone": "Europe/Berlin",
        "attendees": ["a@example.com", "b@example.com"], "categories": ["Tracked to Contoso"],
        "stamp": "org-1", "rrule": "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;UNTIL=20270301T090000Z;WKST=MO"
    });
    let rules = [
        "FREQ=DAILY;COUNT=3",
        "FREQ=MONTHLY;BYMONTHDAY=10",
        "FREQ=MONTHLY;BYDAY=-1FR;COUNT=5",
        "FREQ=YEARLY;BYMONTH=12;BYDAY=2TH",
        "FREQ=YEARLY",
    ];
    let contact = json!({
        "uid": "c1", "full_name": "Ann Lee", "emails": ["ann@example.com", "a.lee@example.org"],
        "company": "Fabrikam", "job_title": "Buyer", "phones": ["+1 555 0100", "+1 555 0101"],
        "categories": ["Tracked to Contoso"], "stamp": "org-1"
    });
    let task = json!({
        "uid": "t1", "subject": "Call", "description": "About the offer",
        "due": "2026-12-11T17:00:00Z", "percent_complete": 50, "state": "open"
    });
    let cal = FolderRef::Distinguished("calendar");
    let mut out = vec![
        (
            "SyncFolderItems",
            ops::sync_folder_items_body(&cal, Some("H4sI"), SYNC_PAGE, &own),
        ),
        (
            "GetItem",
            get_items_body(&["AAMk1", "AAMk2"], &[RecordType::Appointment]),
        ),
        (
            "GetItem",
            get_items_body(
                &["AAMk1"],
                &[
                    RecordType::Appointment,
                    RecordType::Contact,
                    RecordType::Task,
                ],
            ),
        ),
        ("GetItem", get_change_key_body("AAMk1")),
        ("FindItem", find_by_uid_body(&cal, "u1 & <x>", &own)),
        (
            "FindItem",
            find_by_uid_body(&FolderRef::Distinguished("contacts"), "c1", &delegate),
        ),
        ("DeleteItem", delete_body("AAMk1", "CQAA", false)),
        ("DeleteItem", delete_body("AAMk1", "CQAA", true)),
        ("DeleteItem", delete_occurrence_body("AAMk1", 3, false)),
        ("DeleteItem", delete_occurrence_body("AAMk1", 3, true)),
        ("GetItem", get_occurrences_body(&["AAMk2", "AAMk3"])),
    ];
    let change = |subject: Option<&str>| OccurrenceWrite::Change {
        index: 2,
        start: "2026-12-17T10:00:00Z".parse().unwrap_or_default(),
        end: "2026-12-17T11:00:00Z".parse().unwrap_or_default(),
        subject: subject.map(str::to_owned),
        location: Some("Room 2 & <3>".into()),
        description: subject.map(|_| "Moved\nearlier".to_owned()),
    };
    for (w, send) in [
        (change(Some("Review (moved)")), false),
        (change(None), true),
    ] {
        out.push((
            "UpdateItem",
            update_occurrence_body("AAMk1", &w, send).unwrap_or_default(),
        ));
    }
    let mut push = |op: &'static str, body: std::result::Result<String, String>| {
        out.push((op, body.expect("representative values map")));
    };
    push(
        "CreateItem",
        create_body(&cal, RecordType::Appointment, &appointment, false, &own),
    );
    push(
        "CreateItem",
        create_body(&cal, RecordType::Appointment, &appointment, true, &delegate),
    );
    for r in rules {
        let mut a = appointment.clone();
        a["rrule"] = json!(r);
        a["all_day"] = json!(true);
        a["time_zone"] = Value::Null;
        push(
            "CreateItem",
            create_body(&cal, RecordType::Appointment, &a, false, &own),
        );
        push(
            "UpdateItem",
            update_body("AAMk1", "CQAA", RecordType::Appointment, &a, None, false),
        );
    }
    push(
        "CreateItem",
        create_body(
            &FolderRef::Distinguished("contacts"),
            RecordType::Contact,
            &contact,
            false,
            &own,
        ),
    );
    push(
        "CreateItem",
        create_body(
            &FolderRef::Distinguished("tasks"),
            RecordType::Task,
            &task,
            false,
            &own,
        ),
    );
    push(
        "UpdateItem",
        update_body(
            "AAMk1",
            "CQAA",
            RecordType::Appointment,
            &appointment,
            None,
            true,
        ),
    );
    push(
        "UpdateItem",
        update_body("AAMk1", "CQAA", RecordType::Contact, &contact, None, false),
    );
    push(
        "UpdateItem",
        update_body("AAMk1", "CQAA", RecordType::Task, &task, None, false),
    );
    push(
        "UpdateItem",
        update_body(
            "AAMk1",
            "CQAA",
            RecordType::Contact,
            &json!({"uid": "c1"}),
            None,
            false,
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        Element::parse(xml.as_bytes()).unwrap()
    }

    #[test]
    fn rrules_round_trip_through_ews_patterns() {
        let start = Utc.with_ymd_and_hms(2026, 12, 10, 9, 0, 0).unwrap();
        let local = start.date_naive();
        for rule in [
            "FREQ=DAILY;COUNT=3",
            "FREQ=DAILY;INTERVAL=2",
            "FREQ=WEEKLY;COUNT=4",
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;UNTIL=20270301T090000Z",
            "FREQ=MONTHLY",
            "FREQ=MONTHLY;BYMONTHDAY=15;COUNT=2",
            "FREQ=MONTHLY;BYDAY=-1FR",
            "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=2",
            "FREQ=YEARLY",
            "FREQ=YEARLY;BYMONTH=3;BYDAY=2TH",
            "FREQ=WEEKLY;WKST=SU",
        ] {
            let xml = recurrence_xml(rule, start, local).unwrap();
            let back = rrule_of(&parse(&xml.replace("t:", "")), start, local).unwrap();
            assert_eq!(back, rule, "{xml}");
        }
        for bad in [
            "FREQ=HOURLY",
            "FREQ=DAILY;BYHOUR=9",
            "FREQ=MONTHLY;BYMONTHDAY=1,15",
            "FREQ=YEARLY;INTERVAL=2",
            "FREQ=WEEKLY;COUNT=2;UNTIL=20270101",
        ] {
            assert!(recurrence_xml(bad, start, local).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_item_reads_into_values() {
        let item = parse(
            r#"<t:CalendarItem xmlns:t="t"><t:ItemId Id="AAMk1" ChangeKey="CK1"/><t:Subject>Review</t:Subject><t:Body BodyType="Text">Notes</t:Body><t:Categories><t:String>Tracked to Contoso</t:String></t:Categories><t:ExtendedProperty><t:ExtendedFieldURI PropertySetId="6A1E3B52-8C0F-4D7E-9B51-2F4C7D9E0A13" PropertyName="serversync-uid" PropertyType="String"/><t:Value>u1</t:Value></t:ExtendedProperty><t:LastModifiedTime>2026-12-01T08:00:00.123Z</t:LastModifiedTime><t:UID>other</t:UID><t:Start>2026-12-10T09:00:00Z</t:Start><t:End>2026-12-10T10:00:00Z</t:End><t:IsAllDayEvent>false</t:IsAllDayEvent><t:Location>Room 1</t:Location><t:IsCancelled>false</t:IsCancelled><t:Organizer><t:Mailbox><t:Name>Alice</t:Name><t:EmailAddress>Alice@Contoso.com</t:EmailAddress></t:Mailbox></t:Organizer><t:RequiredAttendees><t:Attendee><t:Mailbox><t:EmailAddress>b@x.com</t:EmailAddress></t:Mailbox></t:Attendee></t:RequiredAttendees><t:OptionalAttendees><t:Attendee><t:Mailbox><t:EmailAddress>A@x.com</t:EmailAddress></t:Mailbox></t:Attendee></t:OptionalAttendees><t:Recurrence><t:WeeklyRecurrence><t:Interval>1</t:Interval><t:DaysOfWeek>Thursday</t:DaysOfWeek></t:WeeklyRecurrence><t:NumberedRecurrence><t:StartDate>2026-12-10</t:StartDate><t:NumberOfOccurrences>4</t:NumberOfOccurrences></t:NumberedRecurrence></t:Recurrence><t:DeletedOccurrences><t:DeletedOccurrence><t:Start>2026-12-24T09:00:00Z</t:Start></t:DeletedOccurrence></t:DeletedOccurrences><t:StartTimeZone Id="W. Europe Standard Time"/></t:CalendarItem>"#,
        );
        let r = read_item(&item).unwrap();
        assert_eq!((r.id.as_str(), r.version.as_str()), ("AAMk1", "CK1"));
        assert_eq!(r.kind, RecordType::Appointment);
        let v = &r.values;
        assert_eq!(v["uid"], "u1");
        assert_eq!(v["modified"], "2026-12-01T08:00:00Z");
        assert_eq!(v["organizer"], "alice@contoso.com");
        assert_eq!(v["attendees"], json!(["a@x.com", "b@x.com"]));
        assert_eq!(v["rrule"], "FREQ=WEEKLY;COUNT=4");
        assert_eq!(v["exdates"], json!(["2026-12-24T09:00:00Z"]));
        assert_eq!(v["time_zone"], "Europe/Berlin");
        assert_eq!(v["categories"], json!(["Tracked to Contoso"]));
        assert_eq!(v["description"], "Notes");
        let list = parse(r#"<DistributionList><ItemId Id="x"/></DistributionList>"#);
        assert!(read_item(&list).unwrap_err().contains("DistributionList"));
    }

    #[test]
    fn exceptions_become_occurrence_writes_by_instance_index() {
        let mut v = json!({"uid": "a", "subject": "Standup", "location": "Room 1",
            "start": "2026-12-10T08:00:00Z", "end": "2026-12-10T08:15:00Z",
            "time_zone": "Europe/Berlin", "rrule": "FREQ=WEEKLY;COUNT=6",
            "exdates": ["2026-12-24T08:00:00Z"],
            "overrides": [{"recurrence_id": "2026-12-17T08:00:00Z", "start": "2026-12-17T10:00:00Z",
                "end": "2026-12-17T10:15:00Z", "subject": "Standup (late)", "location": "Room 1"}]});
        let w = exception_writes(&v, None).unwrap();
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            w,
            vec![
                OccurrenceWrite::Change {
                    index: 2,
                    start: t("2026-12-17T10:00:00Z"),
                    end: t("2026-12-17T10:15:00Z"),
                    subject: Some("Standup (late)".into()),
                    location: Some("Room 1".into()),
                    description: None,
                },
                OccurrenceWrite::Cancel { index: 3 },
            ]
        );
        // What the server has already is not written again; a new exception is.
        let mut server = v.clone();
        server["overrides"][0]
            .as_object_mut()
            .unwrap()
            .remove("location");
        v["exdates"] = json!(["2026-12-24T08:00:00Z", "2027-01-07T08:00:00Z"]);
        let w = exception_writes(&v, Some(&server)).unwrap();
        assert_eq!(w, vec![OccurrenceWrite::Cancel { index: 5 }]);
        // A new rule rewrites the series: every exception again.
        server["rrule"] = json!("FREQ=WEEKLY;COUNT=7");
        assert_eq!(exception_writes(&v, Some(&server)).unwrap().len(), 3);
    }

    #[test]
    fn unwritable_values_name_their_field() {
        let folder = FolderRef::Distinguished("contacts");
        let many = json!({"uid": "c", "emails": ["a@x", "b@x", "c@x", "d@x"]});
        let e = create_body(&folder, RecordType::Contact, &many, false, &Acting::Own);
        assert!(e.unwrap_err().starts_with("emails:"));
        // An exdate that is no occurrence; an occurrence cancelled on the server that the
        // values restore.
        let series = json!({"uid": "a", "start": "2026-12-10T09:00:00Z", "end": "2026-12-10T10:00:00Z",
            "rrule": "FREQ=DAILY", "exdates": ["2026-12-11T10:00:00Z"]});
        let e = exception_writes(&series, None).unwrap_err();
        assert!(e.starts_with("exdates:"), "{e}");
        let mut server = series.clone();
        server["exdates"] = json!(["2026-12-11T09:00:00Z"]);
        let mut restored = series.clone();
        restored["exdates"] = json!([]);
        let e = exception_writes(&restored, Some(&server)).unwrap_err();
        assert!(e.contains("cannot restore a cancelled occurrence"), "{e}");
        assert_eq!(
            windows_zone("Europe/Amsterdam"),
            Some("W. Europe Standard Time")
        );
        assert_eq!(iana_zone("W. Europe Standard Time"), Some("Europe/Berlin"));
    }
}
