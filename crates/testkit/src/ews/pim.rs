//! Items that are not messages — calendar items, contacts, tasks, distribution lists
//! ([MS-OXWSMTGS], [MS-OXWSCONT], [MS-OXWSTASK], [MS-OXWSDLIST]): stored as the property
//! elements a client sent, completed as Exchange completes them (a calendar item's `UID`,
//! `Organizer`, `IsRecurring`, `CalendarItemType`, `IsMeeting`; a task's `Status`,
//! `PercentComplete`, `IsComplete`; a contact's `DisplayName`), changed by `UpdateItem`'s
//! `SetItemField`/`AppendToItemField`/`DeleteItemField` (field, indexed and extended paths),
//! and rendered in the schema's element order with only the properties the shape asks for.
//! Extended properties are returned only when asked for by their `ExtendedFieldURI`, as
//! Exchange does.

use chrono::{DateTime, Utc};

use super::store::Pim;
use super::xml::{Node, esc, write};

/// `ItemType`'s elements in schema order (MS-OXWSCORE).
const ITEM_ORDER: &[&str] = &[
    "MimeContent",
    "ItemId",
    "ParentFolderId",
    "ItemClass",
    "Subject",
    "Sensitivity",
    "Body",
    "Attachments",
    "DateTimeReceived",
    "Size",
    "Categories",
    "Importance",
    "InReplyTo",
    "IsSubmitted",
    "IsDraft",
    "IsFromMe",
    "IsResend",
    "IsUnmodified",
    "InternetMessageHeaders",
    "DateTimeSent",
    "DateTimeCreated",
    "ResponseObjects",
    "ReminderDueBy",
    "ReminderIsSet",
    "ReminderNextTime",
    "ReminderMinutesBeforeStart",
    "DisplayCc",
    "DisplayTo",
    "HasAttachments",
    "ExtendedProperty",
    "Culture",
    "EffectiveRights",
    "LastModifiedName",
    "LastModifiedTime",
    "IsAssociated",
    "WebClientReadFormQueryString",
    "WebClientEditFormQueryString",
    "ConversationId",
    "UniqueBody",
    "Flag",
    "StoreEntryId",
    "InstanceKey",
    "NormalizedBody",
    "EntityExtractionResult",
    "PolicyTag",
    "ArchiveTag",
    "RetentionDate",
    "Preview",
    "RightsManagementLicenseData",
    "PredictedActionReasons",
    "IsClutter",
    "NextPredictedAction",
    "GroupingAction",
    "BlockStatus",
    "HasBlockedImages",
    "TextBody",
    "IconIndex",
    "MimeContentUTF8",
    "SearchKey",
    "SortKey",
    "Hashtags",
    "Mentions",
    "MentionedMe",
    "PendingSocialActivityTagIds",
];

/// `CalendarItemType`'s own elements in schema order (MS-OXWSMTGS).
const CALENDAR_ORDER: &[&str] = &[
    "UID",
    "RecurrenceId",
    "DateTimeStamp",
    "Start",
    "End",
    "OriginalStart",
    "IsAllDayEvent",
    "LegacyFreeBusyStatus",
    "Location",
    "When",
    "IsMeeting",
    "IsCancelled",
    "IsRecurring",
    "MeetingRequestWasSent",
    "IsResponseRequested",
    "CalendarItemType",
    "MyResponseType",
    "Organizer",
    "RequiredAttendees",
    "OptionalAttendees",
    "Resources",
    "ConflictingMeetingCount",
    "AdjacentMeetingCount",
    "ConflictingMeetings",
    "AdjacentMeetings",
    "Duration",
    "TimeZone",
    "AppointmentReplyTime",
    "AppointmentSequenceNumber",
    "AppointmentState",
    "Recurrence",
    "FirstOccurrence",
    "LastOccurrence",
    "ModifiedOccurrences",
    "DeletedOccurrences",
    "MeetingTimeZone",
    "StartTimeZone",
    "EndTimeZone",
    "ConferenceType",
    "AllowNewTimeProposal",
    "IsOnlineMeeting",
    "MeetingWorkspaceUrl",
    "NetShowUrl",
    "EnhancedLocation",
    "StartWallClock",
    "EndWallClock",
    "StartTimeZoneId",
    "EndTimeZoneId",
    "IntendedFreeBusyStatus",
    "JoinOnlineMeetingUrl",
    "OnlineMeetingSettings",
    "IsOrganizer",
    "InboxReminders",
];

/// `ContactItemType`'s own elements in schema order (MS-OXWSCONT), as far as the double keeps
/// them.
const CONTACT_ORDER: &[&str] = &[
    "FileAs",
    "FileAsMapping",
    "DisplayName",
    "GivenName",
    "Initials",
    "MiddleName",
    "Nickname",
    "CompleteName",
    "CompanyName",
    "EmailAddresses",
    "PhysicalAddresses",
    "PhoneNumbers",
    "AssistantName",
    "Birthday",
    "BusinessHomePage",
    "Children",
    "Companies",
    "ContactSource",
    "Department",
    "Generation",
    "ImAddresses",
    "JobTitle",
    "Manager",
    "Mileage",
    "OfficeLocation",
    "PostalAddressIndex",
    "Profession",
    "SpouseName",
    "Surname",
    "WeddingAnniversary",
    "BirthdayLocal",
    "WeddingAnniversaryLocal",
    "HasPicture",
    "PhoneticFullName",
    "PhoneticFirstName",
    "PhoneticLastName",
    "Alias",
    "Notes",
];

/// `TaskType`'s own elements in schema order (MS-OXWSTASK).
const TASK_ORDER: &[&str] = &[
    "ActualWork",
    "AssignedTime",
    "BillingInformation",
    "ChangeCount",
    "Companies",
    "CompleteDate",
    "Contacts",
    "DelegationState",
    "Delegator",
    "DueDate",
    "IsAssignmentEditable",
    "IsComplete",
    "IsRecurring",
    "IsTeamTask",
    "Mileage",
    "Owner",
    "PercentComplete",
    "Recurrence",
    "StartDate",
    "Status",
    "StatusDescription",
    "TotalWork",
];

const LIST_ORDER: &[&str] = &["DisplayName", "FileAs", "ContactSource", "Members"];

/// Item elements the double stores as non-message items.
pub(super) const KINDS: &[&str] = &["CalendarItem", "Contact", "Task", "DistributionList"];

/// Properties the server computes: a client's values are ignored.
const COMPUTED: &[&str] = &[
    "ItemId",
    "ParentFolderId",
    "ItemClass",
    "DateTimeCreated",
    "LastModifiedTime",
    "Size",
    "ExtendedProperty",
];

/// Dictionaries (indexed properties): (element, indexed FieldURI).
const DICTIONARIES: &[(&str, &str)] = &[
    ("EmailAddresses", "contacts:EmailAddress"),
    ("PhoneNumbers", "contacts:PhoneNumber"),
    ("ImAddresses", "contacts:ImAddress"),
    ("PhysicalAddresses", "contacts:PhysicalAddress"),
];

/// The default folder of a kind.
pub(super) fn default_folder(kind: &str) -> &'static str {
    match kind {
        "CalendarItem" => "calendar",
        "Task" => "tasks",
        _ => "contacts",
    }
}

/// `ItemClass` of a kind.
fn item_class(kind: &str) -> &'static str {
    match kind {
        "CalendarItem" => "IPM.Appointment",
        "Contact" => "IPM.Contact",
        "Task" => "IPM.Task",
        _ => "IPM.DistList",
    }
}

fn leaf(name: &str, text: &str) -> Node {
    Node {
        name: name.to_string(),
        text: text.to_string(),
        ..Node::default()
    }
}

fn parent(name: &str, children: Vec<Node>) -> Node {
    Node {
        name: name.to_string(),
        children,
        ..Node::default()
    }
}

/// What the mailbox is: (SMTP address, display name), for a calendar item's organizer.
pub(super) struct Owner<'a> {
    pub smtp: &'a str,
    pub name: &'a str,
}

/// A new item of `kind` from a client's element, completed as Exchange completes it.
pub(super) fn new_pim(element: &Node, owner: &Owner<'_>) -> Pim {
    let mut pim = Pim {
        kind: element.name.clone(),
        fields: Vec::new(),
        extended: Vec::new(),
    };
    for c in &element.children {
        if c.name == "ExtendedProperty" {
            set_extended(&mut pim, c.clone());
        } else if !COMPUTED.contains(&c.name.as_str()) {
            pim.put(c.clone());
        }
    }
    match pim.kind.as_str() {
        "CalendarItem" => {
            if pim.field("UID").is_none() {
                let uid = format!(
                    "040000008200E00074C5B7101A82E008{}",
                    uuid::Uuid::new_v4().simple().to_string().to_uppercase()
                );
                pim.put(leaf("UID", &uid));
            }
            // The organizer of an item created in a mailbox is the mailbox.
            pim.put(parent(
                "Organizer",
                vec![parent(
                    "Mailbox",
                    vec![
                        leaf("Name", owner.name),
                        leaf("EmailAddress", owner.smtp),
                        leaf("RoutingType", "SMTP"),
                        leaf("MailboxType", "Mailbox"),
                    ],
                )],
            ));
            if pim.field("IsAllDayEvent").is_none() {
                pim.put(leaf("IsAllDayEvent", "false"));
            }
            pim.put(leaf("IsCancelled", "false"));
            pim.put(leaf("MyResponseType", "Organizer"));
        }
        "Task" => {
            if pim.field("Status").is_none() {
                pim.put(leaf("Status", "NotStarted"));
            }
            if pim.field("PercentComplete").is_none() {
                pim.put(leaf("PercentComplete", "0"));
            }
        }
        "Contact" if pim.field("DisplayName").is_none() => {
            let name: Vec<String> = ["GivenName", "Surname"]
                .iter()
                .filter_map(|f| pim.field(f).map(|n| n.text.trim().to_string()))
                .filter(|s| !s.is_empty())
                .collect();
            if !name.is_empty() {
                pim.put(leaf("DisplayName", &name.join(" ")));
            }
        }
        _ => {}
    }
    complete(&mut pim, None);
    pim
}

/// Recomputes what follows from other properties (`changed`: the property a client just set,
/// for a task's status and percentage, which follow each other).
fn complete(pim: &mut Pim, changed: Option<&str>) {
    match pim.kind.as_str() {
        "CalendarItem" => {
            let recurring = pim.field("Recurrence").is_some();
            pim.put(leaf(
                "IsRecurring",
                if recurring { "true" } else { "false" },
            ));
            pim.put(leaf(
                "CalendarItemType",
                if recurring {
                    "RecurringMaster"
                } else {
                    "Single"
                },
            ));
            let meeting = ["RequiredAttendees", "OptionalAttendees", "Resources"]
                .iter()
                .any(|f| pim.field(f).is_some_and(|n| !n.children.is_empty()));
            pim.put(leaf("IsMeeting", if meeting { "true" } else { "false" }));
        }
        "Task" => {
            let status = pim.field("Status").map(|n| n.text.trim().to_string());
            let percent = pim
                .field("PercentComplete")
                .and_then(|n| n.text.trim().parse::<f64>().ok())
                .unwrap_or(0.0);
            // Exchange keeps the two consistent: Completed is 100 %, 100 % is Completed.
            if status.as_deref() == Some("Completed") && changed != Some("PercentComplete") {
                pim.put(leaf("PercentComplete", "100"));
            } else if percent >= 100.0 {
                pim.put(leaf("Status", "Completed"));
            } else if status.as_deref() == Some("Completed") {
                pim.put(leaf("Status", "InProgress"));
            }
            let done = pim
                .field("Status")
                .is_some_and(|n| n.text.trim() == "Completed");
            pim.put(leaf("IsComplete", if done { "true" } else { "false" }));
        }
        _ => {}
    }
}

/// The identity of an extended property path: its attributes, normalized.
fn ext_key(uri: &Node) -> Vec<(String, String)> {
    let mut key: Vec<(String, String)> = uri
        .attrs
        .iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "PropertySetId" | "PropertyTag" => v.to_lowercase(),
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    key.sort();
    key
}

fn set_extended(pim: &mut Pim, prop: Node) {
    let Some(uri) = prop.child("ExtendedFieldURI") else {
        return;
    };
    let key = ext_key(uri);
    pim.extended.retain(|p| {
        p.child("ExtendedFieldURI")
            .is_none_or(|u| ext_key(u) != key)
    });
    pim.extended.push(prop);
}

/// The stored extended property at path `uri`.
pub(super) fn extended<'a>(pim: &'a Pim, uri: &Node) -> Option<&'a Node> {
    let key = ext_key(uri);
    pim.extended.iter().find(|p| {
        p.child("ExtendedFieldURI")
            .is_some_and(|u| ext_key(u) == key)
    })
}

/// The value of a path (`FieldURI`, `IndexedFieldURI`, `ExtendedFieldURI`) for restrictions.
pub(super) fn value_at(pim: &Pim, path: &Node) -> Option<String> {
    match path.name.as_str() {
        "ExtendedFieldURI" => {
            extended(pim, path).and_then(|p| p.child_text("Value").map(str::to_string))
        }
        "IndexedFieldURI" => {
            let uri = path.attr("FieldURI")?;
            let index = path.attr("FieldIndex")?;
            let (dict, _) = DICTIONARIES.iter().find(|(_, u)| *u == uri)?;
            pim.field(dict)?
                .children
                .iter()
                .find(|e| e.attr("Key") == Some(index))
                .map(|e| e.text.trim().to_string())
        }
        _ => {
            let uri = path.attr("FieldURI")?;
            let name = uri.rsplit(':').next()?;
            pim.field(name).map(|n| n.text.trim().to_string())
        }
    }
}

/// What a response shape asks for.
pub(super) struct Wanted<'a> {
    /// Every property (AllProperties, Default).
    pub all: bool,
    /// Local names of the FieldURIs asked for.
    pub names: Vec<&'a str>,
    /// (FieldURI, FieldIndex) of IndexedFieldURIs asked for.
    pub indexed: Vec<(&'a str, &'a str)>,
    /// ExtendedFieldURIs asked for.
    pub extended: Vec<&'a Node>,
    /// `BodyType` asked for (`Best` when not said).
    pub body_type: &'a str,
}

impl Wanted<'_> {
    fn wants(&self, name: &str) -> bool {
        self.all || self.names.contains(&name)
    }
}

/// The item's element (`<t:CalendarItem>…`) with what `w` asks for.
#[allow(clippy::too_many_arguments)]
pub(super) fn render(
    pim: &Pim,
    id: &str,
    change_key: &str,
    parent_folder: Option<(&str, &str)>,
    created: DateTime<Utc>,
    modified: DateTime<Utc>,
    w: &Wanted<'_>,
) -> String {
    let own: &[&str] = match pim.kind.as_str() {
        "CalendarItem" => CALENDAR_ORDER,
        "Contact" => CONTACT_ORDER,
        "Task" => TASK_ORDER,
        _ => LIST_ORDER,
    };
    let time = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut x = format!("<t:{}>", pim.kind);
    for name in ITEM_ORDER.iter().chain(own.iter()) {
        match *name {
            "ItemId" => x.push_str(&format!(
                "<t:ItemId Id=\"{}\" ChangeKey=\"{}\"/>",
                esc(id),
                esc(change_key)
            )),
            "ParentFolderId" => {
                if let Some((fid, fck)) = parent_folder.filter(|_| w.wants("ParentFolderId")) {
                    x.push_str(&format!(
                        "<t:ParentFolderId Id=\"{}\" ChangeKey=\"{}\"/>",
                        esc(fid),
                        esc(fck)
                    ));
                }
            }
            "ItemClass" if w.wants("ItemClass") => {
                x.push_str(&format!(
                    "<t:ItemClass>{}</t:ItemClass>",
                    item_class(&pim.kind)
                ));
            }
            "DateTimeCreated" if w.wants("DateTimeCreated") => x.push_str(&format!(
                "<t:DateTimeCreated>{}</t:DateTimeCreated>",
                time(created)
            )),
            "LastModifiedTime" if w.wants("LastModifiedTime") => x.push_str(&format!(
                "<t:LastModifiedTime>{}</t:LastModifiedTime>",
                time(modified)
            )),
            "ExtendedProperty" => {
                for uri in &w.extended {
                    if let Some(p) = extended(pim, uri) {
                        x.push_str(&write(p));
                    }
                }
            }
            "Body" if w.wants("Body") => {
                if let Some(b) = pim.field("Body") {
                    x.push_str(&body(b, w.body_type));
                }
            }
            dict if DICTIONARIES.iter().any(|(d, _)| *d == dict) => {
                let Some(stored) = pim.field(dict) else {
                    continue;
                };
                if w.wants(dict) {
                    x.push_str(&write(stored));
                    continue;
                }
                let uri = DICTIONARIES
                    .iter()
                    .find(|(d, _)| *d == dict)
                    .map_or("", |(_, u)| *u);
                let keys: Vec<&str> = w
                    .indexed
                    .iter()
                    .filter(|(u, _)| *u == uri)
                    .map(|(_, k)| *k)
                    .collect();
                let entries: Vec<Node> = stored
                    .children
                    .iter()
                    .filter(|e| e.attr("Key").is_some_and(|k| keys.contains(&k)))
                    .cloned()
                    .collect();
                if !entries.is_empty() {
                    x.push_str(&write(&parent(dict, entries)));
                }
            }
            "ModifiedOccurrences" if w.wants("ModifiedOccurrences") => {
                if let Some(n) = pim.field("ModifiedOccurrences") {
                    x.push_str(&write(&super::occurrences::rendered(n)));
                }
            }
            other if w.wants(other) => {
                if let Some(n) = pim.field(other) {
                    x.push_str(&write(n));
                }
            }
            _ => {}
        }
    }
    x.push_str(&format!("</t:{}>", pim.kind));
    x
}

/// A body in the type asked for (`Text` from HTML drops the markup).
fn body(b: &Node, want: &str) -> String {
    let stored = b.attr("BodyType").unwrap_or("Text");
    let text = match (stored, want) {
        ("HTML", "Text") => {
            let mut out = String::new();
            let mut tag = false;
            for c in b.text.chars() {
                match c {
                    '<' => tag = true,
                    '>' => tag = false,
                    c if !tag => out.push(c),
                    _ => {}
                }
            }
            return format!("<t:Body BodyType=\"Text\">{}</t:Body>", esc(out.trim()));
        }
        ("Text", "HTML") => {
            return format!(
                "<t:Body BodyType=\"HTML\">{}</t:Body>",
                esc(&format!(
                    "<html><body>{}</body></html>",
                    esc(&b.text).replace('\n', "<br>")
                ))
            );
        }
        _ => &b.text,
    };
    format!(
        "<t:Body BodyType=\"{}\">{}</t:Body>",
        esc(stored),
        esc(text)
    )
}

/// Why an update could not be applied: (ResponseCode, MessageText).
pub(super) type Refusal = (&'static str, &'static str);

const INVALID_PROPERTY_SET: Refusal = (
    "ErrorInvalidPropertySet",
    "Set action is invalid for property.",
);
const INCORRECT_UPDATE: Refusal = (
    "ErrorIncorrectUpdatePropertyCount",
    "An object within a change description must contain one and only one property to modify.",
);

/// Applies `UpdateItem`'s change descriptions (`SetItemField`, `AppendToItemField`,
/// `DeleteItemField`) to `pim`.
pub(super) fn apply(pim: &mut Pim, updates: &[Node]) -> Result<(), Refusal> {
    for u in updates {
        let path = u
            .children
            .iter()
            .find(|c| {
                matches!(
                    c.name.as_str(),
                    "FieldURI" | "IndexedFieldURI" | "ExtendedFieldURI"
                )
            })
            .ok_or(INCORRECT_UPDATE)?;
        let value = u
            .children
            .iter()
            .find(|c| c.name == pim.kind || c.name == "Item")
            .map(|item| item.children.as_slice());
        let uri = path.attr("FieldURI").unwrap_or("");
        let local = uri.rsplit(':').next().unwrap_or("");
        if path.name == "FieldURI" && (COMPUTED.contains(&local) || local == "Organizer") {
            return Err(INVALID_PROPERTY_SET);
        }
        match (u.name.as_str(), path.name.as_str()) {
            ("SetItemField", "FieldURI") => {
                let v = match value {
                    Some([one]) if one.name == local => one.clone(),
                    _ => return Err(INCORRECT_UPDATE),
                };
                pim.put(v);
                if local == "Recurrence" {
                    // A new pattern starts the series afresh: its exceptions are gone.
                    pim.remove("ModifiedOccurrences");
                    pim.remove("DeletedOccurrences");
                }
                complete(pim, Some(local));
            }
            ("AppendToItemField", "FieldURI") => {
                let v = match value {
                    Some([one]) if one.name == local => one.clone(),
                    _ => return Err(INCORRECT_UPDATE),
                };
                match pim.fields.iter_mut().find(|f| f.name == local) {
                    Some(f) if local == "Body" => f.text.push_str(&v.text),
                    Some(f) if !v.children.is_empty() => f.children.extend(v.children),
                    Some(_) => return Err(INVALID_PROPERTY_SET),
                    None => pim.put(v),
                }
                complete(pim, Some(local));
            }
            ("DeleteItemField", "FieldURI") => {
                if matches!(local, "Start" | "End") {
                    return Err(INVALID_PROPERTY_SET);
                }
                pim.remove(local);
                complete(pim, Some(local));
            }
            (op, "IndexedFieldURI") => {
                let index = path.attr("FieldIndex").unwrap_or("");
                let (dict, _) = DICTIONARIES
                    .iter()
                    .find(|(_, u)| *u == uri)
                    .ok_or(INVALID_PROPERTY_SET)?;
                let entry = match (op, value) {
                    ("DeleteItemField", _) => None,
                    (_, Some([d])) if d.name == *dict => match d.children.as_slice() {
                        [e] if e.attr("Key") == Some(index) => Some(e.clone()),
                        _ => return Err(INCORRECT_UPDATE),
                    },
                    _ => return Err(INCORRECT_UPDATE),
                };
                let mut stored = pim
                    .field(dict)
                    .cloned()
                    .unwrap_or_else(|| parent(dict, vec![]));
                stored.children.retain(|e| e.attr("Key") != Some(index));
                stored.children.extend(entry);
                if stored.children.is_empty() {
                    pim.remove(dict);
                } else {
                    pim.put(stored);
                }
            }
            (op, "ExtendedFieldURI") => {
                if op == "DeleteItemField" {
                    let key = ext_key(path);
                    pim.extended.retain(|p| {
                        p.child("ExtendedFieldURI")
                            .is_none_or(|u| ext_key(u) != key)
                    });
                    continue;
                }
                match value {
                    Some([p])
                        if p.name == "ExtendedProperty"
                            && p.child("ExtendedFieldURI")
                                .is_some_and(|u| ext_key(u) == ext_key(path)) =>
                    {
                        set_extended(pim, p.clone())
                    }
                    _ => return Err(INCORRECT_UPDATE),
                }
            }
            _ => return Err(INCORRECT_UPDATE),
        }
    }
    Ok(())
}
