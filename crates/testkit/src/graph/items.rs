//! Calendars and events, contact folders and contacts, To Do lists and tasks of a mailbox:
//! the routes of Graph v1.0's item endpoints as the published reference describes them.
//!
//! - Containers: `calendar` (the default calendar), `calendars[/{id}]`, the default contact
//!   folder (`contacts`), `contactFolders[/{id}]`, `todo/lists[/{id}]` (`$filter=
//!   wellknownListName eq 'defaultList'`).
//! - Items: `POST`, `GET` (one, or a list with `$filter` on a single-value extended property
//!   `singleValueExtendedProperties/Any(ep: ep/id eq '…' and ep/value eq '…')` or, for tasks,
//!   `linkedResources/any(r: r/applicationName eq '…' and r/externalId eq '…')`, `$top`,
//!   `$skip`), `PATCH` and `DELETE` with `If-Match` (a stale one: 412
//!   `ErrorIrresolvableConflict`), `$expand=singleValueExtendedProperties($filter=id eq '…')`
//!   and `$expand=linkedResources`, `$select`. Every write gives a new `@odata.etag`
//!   (and `changeKey`). An event `POST` whose `transactionId` an event of the mailbox already
//!   carries returns that event instead of making a second one.
//! - Delta: `contacts/delta`, `contactFolders/{id}/contacts/delta`, `todo/lists/{id}/tasks/delta`
//!   and `calendarView/delta` (also under `calendars/{id}`; `startDateTime` and `endDateTime`
//!   required on the first request, then kept in the token). Pages of at most the page size
//!   (`Prefer: odata.maxpagesize`) of changed items with `@odata.nextLink`, then
//!   `@odata.deltaLink`; deleted items as `@removed`. calendarView delta lists single events
//!   and the occurrences of a series inside the window (type `occurrence`, `seriesMasterId`;
//!   `daily`, `weekly` and `absoluteMonthly` patterns are expanded, other patterns give their
//!   first occurrence), never the series master; a single event moved out of the window is
//!   `@removed`. A token the double did not issue for that collection, or one issued before
//!   [`super::GraphDouble::expire_delta_tokens`], answers 410 `syncStateNotFound`.
//! - Series: `GET events/{id}/instances?startDateTime=…&endDateTime=…` (also under `calendar`
//!   and `calendars/{id}`) lists the occurrences and exceptions overlapping the range
//!   (`$select`, `$top` — 10 by default — and `$skip` with `@odata.nextLink`); each has its
//!   own id (`GET`, `PATCH`, `DELETE` on `events/{id}`), `seriesMasterId` and `originalStart`.
//!   A `PATCH` makes the occurrence an exception (type `exception`: `start`, `end`, `subject`,
//!   `location`, `body`, `isAllDay`, `categories` over the master's), a `DELETE` cancels it
//!   (no longer listed); either changes the master (new `@odata.etag`, listed by delta). A
//!   `PATCH` of the master's `recurrence` drops its exceptions, as Exchange does.
//!
//! Simplifications: times are kept and answered in the zone they were written in (Graph
//! answers in UTC unless `Prefer: outlook.timezone` asks otherwise; `originalStartTimeZone`
//! is the written zone in both); the window is compared with local times as if they were UTC;
//! a changed series does not list the occurrences it no longer has as `@removed`; the page
//! size counts changed items (a series counts once, whatever its occurrences).

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, Method};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::mail::{DeltaNext, Mailbox, delta_page};
use super::{Caller, DoubleState, Reply, Schema, gerr};

/// What a container holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemKind {
    /// A calendar's events.
    Event,
    /// A contact folder's contacts.
    Contact,
    /// A To Do list's tasks.
    Task,
}

impl ItemKind {
    fn type_name(self) -> &'static str {
        match self {
            ItemKind::Event => "microsoft.graph.event",
            ItemKind::Contact => "microsoft.graph.contact",
            ItemKind::Task => "microsoft.graph.todoTask",
        }
    }

    fn segment(self) -> &'static str {
        match self {
            ItemKind::Event => "events",
            ItemKind::Contact => "contacts",
            ItemKind::Task => "tasks",
        }
    }

    fn read_roles(self) -> &'static [&'static str] {
        match self {
            ItemKind::Event => &["Calendars.Read", "Calendars.ReadWrite"],
            ItemKind::Contact => &["Contacts.Read", "Contacts.ReadWrite"],
            ItemKind::Task => &["Tasks.Read.All", "Tasks.ReadWrite.All"],
        }
    }

    fn write_roles(self) -> &'static [&'static str] {
        match self {
            ItemKind::Event => &["Calendars.ReadWrite"],
            ItemKind::Contact => &["Contacts.ReadWrite"],
            ItemKind::Task => &["Tasks.ReadWrite.All"],
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Container {
    pub id: String,
    pub kind: ItemKind,
    pub name: String,
    pub default: bool,
}

#[derive(Debug, Clone)]
pub(super) struct Item {
    pub id: String,
    pub kind: ItemKind,
    pub container: String,
    /// The properties as written (without extended properties and linked resources).
    pub props: Map<String, Value>,
    /// Single-value extended properties: (id as written, value).
    pub ext: Vec<(String, String)>,
    pub linked: Vec<Value>,
    pub version: u64,
    pub created: DateTime<Utc>,
    pub modified: DateTime<Utc>,
    /// A series' exceptions, by the original (local) start of their occurrence.
    pub exceptions: BTreeMap<NaiveDateTime, Exception>,
}

/// What became of one occurrence of a series.
#[derive(Debug, Clone)]
pub(super) enum Exception {
    /// Deleted: no longer listed.
    Cancelled,
    /// Changed: the properties written to it (over the master's).
    Changed(Map<String, Value>),
}

impl Item {
    fn change_key(&self) -> String {
        B64.encode(format!(
            "DwAAABYAAA{}{:06}",
            &self.id[self.id.len().saturating_sub(8)..],
            self.version
        ))
    }

    fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key())
    }
}

/// A mailbox's calendars, contact folders and task lists and what they hold.
#[derive(Debug, Clone)]
pub(super) struct Items {
    pub containers: Vec<Container>,
    pub items: BTreeMap<String, Item>,
    /// Deleted items, for the `@removed` occurrences of a deleted series.
    pub tombstones: BTreeMap<String, Item>,
    /// Container id → item id → (sequence of its last change, still there).
    pub changes: HashMap<String, HashMap<String, (u64, bool)>>,
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}{}AAA=", uuid::Uuid::new_v4().simple())
}

impl Default for Items {
    fn default() -> Self {
        let c = |kind, name: &str| Container {
            id: new_id(match kind {
                ItemKind::Event => "AAMkAGNhbGVuZGFy",
                ItemKind::Contact => "AAMkAGNvbnRhY3Rz",
                ItemKind::Task => "AAMkAGRlZmF1bHRMaXN0",
            }),
            kind,
            name: name.to_owned(),
            default: true,
        };
        Items {
            containers: vec![
                c(ItemKind::Event, "Calendar"),
                c(ItemKind::Contact, "Contacts"),
                c(ItemKind::Task, "Tasks"),
            ],
            items: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            changes: HashMap::new(),
        }
    }
}

impl Items {
    pub fn default_of(&self, kind: ItemKind) -> &Container {
        self.containers
            .iter()
            .find(|c| c.kind == kind && c.default)
            .expect("every mailbox has its default containers")
    }

    fn container(&self, kind: ItemKind, id: &str) -> Option<&Container> {
        self.containers
            .iter()
            .find(|c| c.kind == kind && c.id == id)
    }

    /// The container a collection path names (`calendar`, `calendars/{id}`, `contacts`,
    /// `contactFolders/{id}`, `todo/lists/{id}`), as the client names it.
    pub fn resolve(&self, collection: &str) -> Option<(ItemKind, String)> {
        let segs: Vec<&str> = collection.trim_matches('/').split('/').collect();
        let lower: Vec<String> = segs.iter().map(|s| s.to_ascii_lowercase()).collect();
        let (kind, id) = match lower
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["calendar"] => (ItemKind::Event, None),
            ["calendars", _] => (ItemKind::Event, Some(segs[1])),
            ["contacts"] => (ItemKind::Contact, None),
            ["contactfolders", _] => (ItemKind::Contact, Some(segs[1])),
            ["todo", "lists", _] => (ItemKind::Task, Some(segs[2])),
            _ => return None,
        };
        let c = match id {
            None => self.default_of(kind),
            Some(id) => self.container(kind, id)?,
        };
        Some((kind, c.id.clone()))
    }

    fn log(&mut self, container: &str, id: &str, seq: u64, present: bool) {
        self.changes
            .entry(container.to_owned())
            .or_default()
            .insert(id.to_owned(), (seq, present));
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn item_not_found() -> Reply {
    gerr(
        404,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn access_denied() -> Reply {
    gerr(
        403,
        "ErrorAccessDenied",
        "Access is denied. Check credentials and try again.",
    )
}

fn conflict() -> Reply {
    gerr(
        412,
        "ErrorIrresolvableConflict",
        "The send or update operation could not be performed because the change key passed in \
         the request does not match the current change key for the item.",
    )
}

fn sync_gone() -> Reply {
    gerr(
        410,
        "syncStateNotFound",
        "The sync state generation is not found or expired. Please do full sync.",
    )
}

/// Where an item request goes.
enum Tail {
    /// The container itself (`GET calendar`).
    Container,
    /// The list of containers (`GET calendars`).
    Containers,
    /// The items (`GET` list, `POST`).
    Items,
    Item(String),
    /// A series' instances (`GET events/{id}/instances`).
    Instances(String),
    Delta,
}

struct Target {
    kind: ItemKind,
    /// `None`: any container of the mailbox (`/events/{id}`), or the default one for a
    /// `POST /events`.
    container: Option<String>,
    tail: Tail,
}

/// Parses an item path (`rest`: segments after the user; `lower`: the same lower-cased).
fn target(items: &Items, rest: &[&str], lower: &[&str]) -> Option<Result<Target, Reply>> {
    use ItemKind::*;
    let def = |k| Some(items.default_of(k).id.clone());
    let known = |k, id: &str| match items.container(k, id) {
        Some(c) => Ok(Some(c.id.clone())),
        None => Err(item_not_found()),
    };
    let t = |kind, container, tail| {
        Some(Ok(Target {
            kind,
            container,
            tail,
        }))
    };
    let items_tail = |tail: &[&str], orig: &[&str]| -> Option<Tail> {
        match tail {
            [] => Some(Tail::Items),
            ["delta"] => Some(Tail::Delta),
            [_] => Some(Tail::Item(orig[0].to_owned())),
            [_, "instances"] => Some(Tail::Instances(orig[0].to_owned())),
            _ => None,
        }
    };
    let n = rest.len();
    match lower {
        ["calendar"] => t(Event, def(Event), Tail::Container),
        ["calendars"] => t(Event, None, Tail::Containers),
        ["calendars", _] => Some(known(Event, rest[1]).map(|c| Target {
            kind: Event,
            container: c,
            tail: Tail::Container,
        })),
        ["calendarview", "delta"] | ["calendar", "calendarview", "delta"] => {
            t(Event, def(Event), Tail::Delta)
        }
        ["calendars", _, "calendarview", "delta"] => Some(known(Event, rest[1]).map(|c| Target {
            kind: Event,
            container: c,
            tail: Tail::Delta,
        })),
        ["events", tail @ ..] => {
            let tail = items_tail(tail, &rest[1..])?;
            let container = match tail {
                Tail::Items => def(Event),
                _ => None,
            };
            t(Event, container, tail)
        }
        ["calendar", "events", tail @ ..] => t(Event, def(Event), items_tail(tail, &rest[2..])?),
        ["calendars", _, "events", tail @ ..] if n >= 3 => {
            let tail = items_tail(tail, &rest[3..])?;
            Some(known(Event, rest[1]).map(|c| Target {
                kind: Event,
                container: c,
                tail,
            }))
        }
        ["contacts", tail @ ..] => t(Contact, def(Contact), items_tail(tail, &rest[1..])?),
        ["contactfolders"] => t(Contact, None, Tail::Containers),
        ["contactfolders", _] => Some(known(Contact, rest[1]).map(|c| Target {
            kind: Contact,
            container: c,
            tail: Tail::Container,
        })),
        ["contactfolders", _, "contacts", tail @ ..] => {
            let tail = items_tail(tail, &rest[3..])?;
            Some(known(Contact, rest[1]).map(|c| Target {
                kind: Contact,
                container: c,
                tail,
            }))
        }
        ["todo", "lists"] => t(Task, None, Tail::Containers),
        ["todo", "lists", _] => Some(known(Task, rest[2]).map(|c| Target {
            kind: Task,
            container: c,
            tail: Tail::Container,
        })),
        ["todo", "lists", _, "tasks", tail @ ..] => {
            let tail = items_tail(tail, &rest[4..])?;
            Some(known(Task, rest[2]).map(|c| Target {
                kind: Task,
                container: c,
                tail,
            }))
        }
        _ => None,
    }
}

/// Serves an item request, or `None` when the path is not one.
#[allow(clippy::too_many_arguments)]
pub(super) fn route(
    s: &mut DoubleState,
    caller: &Caller,
    mb: usize,
    method: &Method,
    rest: &[&str],
    lower: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Option<Reply> {
    let t = match target(&s.mailboxes[mb].items, rest, lower)? {
        Ok(t) => t,
        Err(r) => return Some(r),
    };
    let write = !matches!(*method, Method::GET);
    let roles = if write {
        t.kind.write_roles()
    } else {
        t.kind.read_roles()
    };
    if !caller.has_any(roles) {
        return Some(access_denied());
    }
    let ctx = Ctx {
        base: s.base(),
        uid: s.mailboxes[mb].user_id.clone(),
        address: s.mailboxes[mb].address.clone(),
        name: s.mailboxes[mb].display_name.clone(),
    };
    let if_match = headers
        .get("if-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Some(match (method.clone(), t.tail) {
        (Method::GET, Tail::Container) => {
            let c = t.container.unwrap_or_default();
            let m = &s.mailboxes[mb];
            let Some(c) = m.items.container(t.kind, &c) else {
                return Some(item_not_found());
            };
            let (v, ty) = container_json(c, &ctx);
            Reply::json(200, &v, Some(Schema::Entity(ty)))
        }
        (Method::GET, Tail::Containers) => list_containers(&s.mailboxes[mb], t.kind, query, &ctx),
        (Method::GET, Tail::Items) => {
            let c = t.container.unwrap_or_default();
            list_items(&s.mailboxes[mb], t.kind, &c, query, &ctx)
        }
        (Method::POST, Tail::Items) => {
            let c = t.container.unwrap_or_default();
            match serde_json::from_slice::<Value>(body) {
                Ok(v) if v.is_object() => {
                    s.check_request(
                        &format!("POST {}", t.kind.segment()),
                        t.kind.type_name(),
                        &v,
                    );
                    create(s, mb, t.kind, &c, v, &ctx)
                }
                _ => gerr(400, "BadRequest", "Empty Payload. JSON content expected."),
            }
        }
        (Method::GET, Tail::Item(id)) => {
            let m = &s.mailboxes[mb];
            match find(m, t.kind, t.container.as_deref(), &id) {
                Some(item) => {
                    let expand = query.get("$expand").map(String::as_str);
                    let mut v = select(
                        entity_json(item, &ctx, expand),
                        query.get("$select").map(String::as_str),
                    );
                    v["@odata.context"] = json!(format!(
                        "{}/v1.0/$metadata#users('{}')/{}/$entity",
                        ctx.base,
                        ctx.uid,
                        t.kind.segment()
                    ));
                    Reply::json(200, &v, Some(Schema::Entity(t.kind.type_name())))
                }
                None => match occurrence(m, &ctx, t.container.as_deref(), &id) {
                    Some(v) => Reply::json(200, &v, Some(Schema::Entity(t.kind.type_name()))),
                    None => item_not_found(),
                },
            }
        }
        (Method::GET, Tail::Instances(id)) => {
            let m = &s.mailboxes[mb];
            match find(m, t.kind, t.container.as_deref(), &id) {
                Some(item) if t.kind == ItemKind::Event => list_instances(item, query, &ctx),
                _ => item_not_found(),
            }
        }
        (Method::PATCH, Tail::Item(id)) => {
            let v = match serde_json::from_slice::<Value>(body) {
                Ok(v) if v.is_object() => v,
                _ => {
                    return Some(gerr(
                        400,
                        "BadRequest",
                        "Empty Payload. JSON content expected.",
                    ));
                }
            };
            s.check_request(
                &format!("PATCH {}", t.kind.segment()),
                t.kind.type_name(),
                &v,
            );
            let m = &s.mailboxes[mb];
            let id = match find(m, t.kind, t.container.as_deref(), &id) {
                Some(item) => item.id.clone(),
                None if occurrence(m, &ctx, t.container.as_deref(), &id).is_some() => id,
                None => return Some(item_not_found()),
            };
            let etag = series_of(m, &id).map(Item::etag);
            if if_match
                .as_deref()
                .is_some_and(|e| e.trim() != "*" && Some(e.trim()) != etag.as_deref())
            {
                return Some(conflict());
            }
            patch(s, mb, &id, v, &ctx)
        }
        (Method::DELETE, Tail::Item(id)) => {
            let m = &s.mailboxes[mb];
            let id = match find(m, t.kind, t.container.as_deref(), &id) {
                Some(item) => item.id.clone(),
                None if occurrence(m, &ctx, t.container.as_deref(), &id).is_some() => id,
                None => return Some(item_not_found()),
            };
            let etag = series_of(m, &id).map(Item::etag);
            if if_match
                .as_deref()
                .is_some_and(|e| e.trim() != "*" && Some(e.trim()) != etag.as_deref())
            {
                return Some(conflict());
            }
            remove(s, mb, &id);
            Reply::empty(204)
        }
        (Method::GET, Tail::Delta) => {
            let c = t.container.unwrap_or_default();
            delta(s, mb, t.kind, &c, rest, query, headers, &ctx)
        }
        _ => gerr(
            405,
            "ErrorInvalidRequest",
            "The OData request is not supported.",
        ),
    })
}

struct Ctx {
    base: String,
    uid: String,
    address: String,
    name: String,
}

fn find<'a>(m: &'a Mailbox, kind: ItemKind, container: Option<&str>, id: &str) -> Option<&'a Item> {
    m.items
        .items
        .get(id)
        .filter(|i| i.kind == kind && container.is_none_or(|c| i.container == c))
}

fn container_json(c: &Container, ctx: &Ctx) -> (Value, &'static str) {
    match c.kind {
        ItemKind::Event => (
            json!({
                "id": c.id, "name": c.name, "color": "auto", "hexColor": "",
                "isDefaultCalendar": c.default, "changeKey": B64.encode(&c.id[..8]),
                "canShare": true, "canViewPrivateItems": true, "canEdit": true,
                "allowedOnlineMeetingProviders": ["teamsForBusiness"],
                "defaultOnlineMeetingProvider": "teamsForBusiness",
                "isTallyingResponses": true, "isRemovable": !c.default,
                "owner": {"name": ctx.name, "address": ctx.address},
            }),
            "microsoft.graph.calendar",
        ),
        ItemKind::Contact => (
            json!({"id": c.id, "displayName": c.name, "parentFolderId": "AAMkAGRvb3Q="}),
            "microsoft.graph.contactFolder",
        ),
        ItemKind::Task => (
            json!({
                "@odata.etag": format!("W/\"{}\"", B64.encode(&c.id[..8])),
                "id": c.id, "displayName": c.name, "isOwner": true, "isShared": false,
                "wellknownListName": if c.default { "defaultList" } else { "none" },
            }),
            "microsoft.graph.todoTaskList",
        ),
    }
}

fn list_containers(
    m: &Mailbox,
    kind: ItemKind,
    query: &HashMap<String, String>,
    ctx: &Ctx,
) -> Reply {
    let want_default = match query.get("$filter").map(|f| f.trim()) {
        None => None,
        Some(f) if kind == ItemKind::Task => {
            let f = f.replace('"', "'");
            match f
                .strip_prefix("wellknownListName eq '")
                .and_then(|r| r.strip_suffix('\''))
            {
                Some(name) => Some(name == "defaultList"),
                None => {
                    return gerr(
                        400,
                        "invalidRequest",
                        "Invalid filter clause: the property is not supported.",
                    );
                }
            }
        }
        Some(_) => {
            return gerr(
                400,
                "ErrorInvalidUrlQueryFilter",
                "The query filter contains one or more invalid nodes.",
            );
        }
    };
    let value: Vec<Value> = m
        .items
        .containers
        .iter()
        .filter(|c| c.kind == kind && want_default.is_none_or(|d| c.default == d))
        .map(|c| container_json(c, ctx).0)
        .collect();
    let ty = match kind {
        ItemKind::Event => "microsoft.graph.calendar",
        ItemKind::Contact => "microsoft.graph.contactFolder",
        ItemKind::Task => "microsoft.graph.todoTaskList",
    };
    Reply::json(
        200,
        &json!({"@odata.context": format!("{}/v1.0/$metadata#Collection", ctx.base), "value": value}),
        Some(Schema::Collection(ty)),
    )
}

/// Keeps only `$select`ed properties (and `id` and annotations).
fn select(v: Value, sel: Option<&str>) -> Value {
    let Some(sel) = sel.filter(|s| !s.trim().is_empty()) else {
        return v;
    };
    let wanted: Vec<&str> = sel.split(',').map(str::trim).collect();
    let Value::Object(map) = v else {
        return v;
    };
    Value::Object(
        map.into_iter()
            .filter(|(k, _)| {
                k == "id"
                    || k.starts_with('@')
                    || wanted.iter().any(|w| w.eq_ignore_ascii_case(k))
                    || k == "singleValueExtendedProperties"
                    || k == "linkedResources"
            })
            .collect(),
    )
}

/// The JSON Graph answers for an item; `expand` as the client asked (`$expand`).
fn entity_json(item: &Item, ctx: &Ctx, expand: Option<&str>) -> Value {
    let mut v = Map::new();
    v.insert("@odata.etag".into(), json!(item.etag()));
    v.insert("id".into(), json!(item.id));
    v.insert("createdDateTime".into(), json!(ts(&item.created)));
    v.insert("lastModifiedDateTime".into(), json!(ts(&item.modified)));
    v.insert("categories".into(), json!([]));
    let defaults: Vec<(&str, Value)> = match item.kind {
        ItemKind::Event => vec![
            ("changeKey", json!(item.change_key())),
            ("subject", json!("")),
            ("body", json!({"contentType": "text", "content": ""})),
            ("bodyPreview", json!("")),
            ("importance", json!("normal")),
            ("sensitivity", json!("normal")),
            ("isAllDay", json!(false)),
            ("isCancelled", json!(false)),
            ("isOrganizer", json!(true)),
            ("isDraft", json!(false)),
            ("responseRequested", json!(true)),
            ("showAs", json!("busy")),
            ("type", json!("singleInstance")),
            ("seriesMasterId", Value::Null),
            (
                "iCalUId",
                json!(format!(
                    "040000008200E00074C5B7101A82E008{}",
                    &B64URL.encode(&item.id)[..16]
                )),
            ),
            ("location", json!({"displayName": ""})),
            ("attendees", json!([])),
            ("recurrence", Value::Null),
            (
                "organizer",
                json!({"emailAddress": {"name": ctx.name, "address": ctx.address}}),
            ),
            (
                "webLink",
                json!(format!(
                    "https://outlook.office365.com/owa/?itemid={}&exvsurl=1&path=/calendar/item",
                    item.id
                )),
            ),
        ],
        ItemKind::Contact => vec![
            ("changeKey", json!(item.change_key())),
            ("parentFolderId", json!(item.container)),
            ("displayName", json!("")),
            ("emailAddresses", json!([])),
            ("businessPhones", json!([])),
            ("homePhones", json!([])),
            ("mobilePhone", Value::Null),
            ("companyName", Value::Null),
            ("jobTitle", Value::Null),
            ("givenName", Value::Null),
            ("surname", Value::Null),
        ],
        ItemKind::Task => vec![
            ("importance", json!("normal")),
            ("isReminderOn", json!(false)),
            ("status", json!("notStarted")),
            ("title", json!("")),
            ("hasAttachments", json!(false)),
            ("body", json!({"content": "", "contentType": "text"})),
            ("bodyLastModifiedDateTime", json!(ts(&item.modified))),
        ],
    };
    for (k, d) in defaults {
        v.insert(k.into(), d);
    }
    for (k, val) in &item.props {
        v.insert(k.clone(), val.clone());
    }
    if item.kind == ItemKind::Event {
        if item.props.get("recurrence").is_some_and(Value::is_object) {
            v.insert("type".into(), json!("seriesMaster"));
        }
        for (orig, side) in [
            ("originalStartTimeZone", "start"),
            ("originalEndTimeZone", "end"),
        ] {
            let z = v[side]["timeZone"].as_str().unwrap_or("UTC").to_owned();
            v.insert(orig.into(), json!(z));
        }
        if let Some(b) = v.get("body").and_then(|b| b["content"].as_str()) {
            let preview: String = b.chars().take(255).collect();
            v.insert("bodyPreview".into(), json!(preview));
        }
    }
    if let Some(e) = expand {
        let el = e.to_ascii_lowercase();
        if el.contains("singlevalueextendedproperties") && item.kind != ItemKind::Task {
            let filtered = el.contains("$filter");
            let props: Vec<Value> = item
                .ext
                .iter()
                .filter(|(id, _)| !filtered || el.contains(&id.to_ascii_lowercase()))
                .map(|(id, val)| json!({"id": id, "value": val}))
                .collect();
            v.insert("singleValueExtendedProperties".into(), Value::Array(props));
        }
        if el.contains("linkedresources") && item.kind == ItemKind::Task {
            v.insert("linkedResources".into(), Value::Array(item.linked.clone()));
        }
    }
    Value::Object(v)
}

/// Splits a written body into properties, extended properties and linked resources.
fn absorb(item: &mut Item, v: Value) {
    let Value::Object(map) = v else { return };
    for (k, val) in map {
        if k.starts_with('@') {
            continue;
        }
        match k.as_str() {
            "singleValueExtendedProperties" => {
                for p in val.as_array().into_iter().flatten() {
                    let (Some(id), Some(value)) = (p["id"].as_str(), p["value"].as_str()) else {
                        continue;
                    };
                    item.ext.retain(|(i, _)| !i.eq_ignore_ascii_case(id));
                    item.ext.push((id.to_owned(), value.to_owned()));
                }
            }
            "linkedResources" => {
                for l in val.as_array().into_iter().flatten() {
                    let mut l = l.clone();
                    if l.get("id").is_none() {
                        l["id"] = json!(uuid::Uuid::new_v4().to_string());
                    }
                    item.linked.push(l);
                }
            }
            // Read-only: Graph ignores them in a write.
            "id"
            | "createdDateTime"
            | "lastModifiedDateTime"
            | "changeKey"
            | "parentFolderId"
            | "type"
            | "seriesMasterId"
            | "iCalUId"
            | "originalStartTimeZone"
            | "originalEndTimeZone" => {}
            _ => {
                item.props.insert(k, val);
            }
        }
    }
}

fn create(
    s: &mut DoubleState,
    mb: usize,
    kind: ItemKind,
    container: &str,
    v: Value,
    ctx: &Ctx,
) -> Reply {
    if kind == ItemKind::Task && v["title"].as_str().is_none_or(|t| t.trim().is_empty()) {
        return gerr(400, "invalidRequest", "Invalid request: title is required.");
    }
    // Graph's idempotent event create: the same transactionId returns the first event.
    if kind == ItemKind::Event
        && let Some(tx) = v["transactionId"].as_str().filter(|t| !t.is_empty())
        && let Some(first) = s.mailboxes[mb].items.items.values().find(|i| {
            i.kind == kind && i.props.get("transactionId").and_then(Value::as_str) == Some(tx)
        })
    {
        let out = entity_json(first, ctx, None);
        return Reply::json(201, &out, Some(Schema::Entity(kind.type_name())));
    }
    let now = Utc::now();
    let seq = s.next_seq();
    let mut item = Item {
        id: new_id(match kind {
            ItemKind::Event => "AAMkAGV2ZW50",
            ItemKind::Contact => "AAMkAGNvbnQ",
            ItemKind::Task => "AAkALgAAAAAAHYQDEapmEc2byACqAC",
        }),
        kind,
        container: container.to_owned(),
        props: Map::new(),
        ext: Vec::new(),
        linked: Vec::new(),
        version: 1,
        created: now,
        modified: now,
        exceptions: BTreeMap::new(),
    };
    absorb(&mut item, v);
    let id = item.id.clone();
    let items = &mut s.mailboxes[mb].items;
    items.items.insert(id.clone(), item);
    items.log(container, &id, seq, true);
    let mut out = entity_json(&items.items[&id], ctx, None);
    out["@odata.context"] = json!(format!(
        "{}/v1.0/$metadata#users('{}')/{}/$entity",
        ctx.base,
        ctx.uid,
        kind.segment()
    ));
    Reply::json(201, &out, Some(Schema::Entity(kind.type_name())))
}

fn patch(s: &mut DoubleState, mb: usize, id: &str, v: Value, ctx: &Ctx) -> Reply {
    if let Some((master, original)) = parse_occurrence_id(id) {
        return patch_occurrence(s, mb, &master, original, id, v, ctx);
    }
    let seq = s.next_seq();
    let items = &mut s.mailboxes[mb].items;
    let Some(item) = items.items.get_mut(id) else {
        return item_not_found();
    };
    if v.get("recurrence").is_some() {
        // A new pattern: Exchange drops the series' exceptions.
        item.exceptions.clear();
    }
    absorb(item, v);
    item.version += 1;
    item.modified = Utc::now().max(item.modified);
    let (container, kind) = (item.container.clone(), item.kind);
    items.log(&container, id, seq, true);
    let out = entity_json(&items.items[id], ctx, None);
    Reply::json(200, &out, Some(Schema::Entity(kind.type_name())))
}

pub(super) fn remove(s: &mut DoubleState, mb: usize, id: &str) -> bool {
    if let Some((master, original)) = parse_occurrence_id(id) {
        return cancel_occurrence(s, mb, &master, original);
    }
    let seq = s.next_seq();
    let items = &mut s.mailboxes[mb].items;
    let Some(item) = items.items.remove(id) else {
        return false;
    };
    items.log(&item.container.clone(), id, seq, false);
    items.tombstones.insert(id.to_owned(), item);
    true
}

/// `$filter` of an item list: (extended property id, value) or (application, externalId).
enum Filter {
    Extended(String, String),
    Linked(String, String),
}

/// The quoted literals of a filter, in order (`''` is a quote).
fn literals(f: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut lit = String::new();
        while let Some(c) = chars.next() {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                    lit.push('\'');
                    continue;
                }
                break;
            }
            lit.push(c);
        }
        out.push(lit);
    }
    out
}

fn parse_filter(kind: ItemKind, f: &str) -> Result<Filter, Reply> {
    let compact: String = f.split_whitespace().collect::<Vec<_>>().join(" ");
    let lower = compact.to_ascii_lowercase();
    let lits = literals(&compact);
    let bad = || {
        gerr(
            400,
            "ErrorInvalidUrlQueryFilter",
            "The query filter contains one or more invalid nodes.",
        )
    };
    if kind != ItemKind::Task
        && lower.starts_with("singlevalueextendedproperties/any(")
        && lower.contains("/id eq '")
        && lower.contains("/value eq '")
        && lits.len() == 2
    {
        return Ok(Filter::Extended(lits[0].clone(), lits[1].clone()));
    }
    if kind == ItemKind::Task
        && lower.starts_with("linkedresources/any(")
        && lower.contains("/applicationname eq '")
        && lower.contains("/externalid eq '")
        && lits.len() == 2
    {
        let app_first = lower.find("/applicationname") < lower.find("/externalid");
        let (app, ext) = if app_first {
            (lits[0].clone(), lits[1].clone())
        } else {
            (lits[1].clone(), lits[0].clone())
        };
        return Ok(Filter::Linked(app, ext));
    }
    Err(bad())
}

fn list_items(
    m: &Mailbox,
    kind: ItemKind,
    container: &str,
    query: &HashMap<String, String>,
    ctx: &Ctx,
) -> Reply {
    let filter = match query.get("$filter") {
        None => None,
        Some(f) => match parse_filter(kind, f) {
            Ok(f) => Some(f),
            Err(r) => return r,
        },
    };
    let matches = |i: &&Item| match &filter {
        None => true,
        Some(Filter::Extended(id, value)) => i
            .ext
            .iter()
            .any(|(p, v)| p.eq_ignore_ascii_case(id) && v == value),
        Some(Filter::Linked(app, ext)) => i.linked.iter().any(|l| {
            l["applicationName"].as_str() == Some(app) && l["externalId"].as_str() == Some(ext)
        }),
    };
    let all: Vec<&Item> = m
        .items
        .items
        .values()
        .filter(|i| i.kind == kind && i.container == container)
        .filter(matches)
        .collect();
    let top = query
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 1000);
    let skip = query
        .get("$skip")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let expand = query.get("$expand").map(String::as_str);
    let sel = query.get("$select").map(String::as_str);
    let value: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|i| select(entity_json(i, ctx, expand), sel))
        .collect();
    let mut v = json!({
        "@odata.context": format!("{}/v1.0/$metadata#users('{}')/{}", ctx.base, ctx.uid, kind.segment()),
        "value": value,
    });
    if skip + top < all.len() {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| *k != "$skip")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.sort();
        q.push(("$skip".into(), (skip + top).to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        let path = match kind {
            ItemKind::Event => format!("calendars/{container}/events"),
            ItemKind::Contact => format!("contactFolders/{container}/contacts"),
            ItemKind::Task => format!("todo/lists/{container}/tasks"),
        };
        v["@odata.nextLink"] = json!(format!("{}/v1.0/users/{}/{path}?{qs}", ctx.base, ctx.uid));
    }
    Reply::json(200, &v, Some(Schema::Collection(kind.type_name())))
}

/// Opaque delta state.
struct DeltaState {
    user: String,
    container: String,
    epoch: u64,
    since: u64,
    upto: u64,
    initial: bool,
    window: Option<(NaiveDateTime, NaiveDateTime)>,
}

const WINDOW_FMT: &str = "%Y%m%dT%H%M%S";

impl DeltaState {
    fn encode(&self) -> String {
        let w = self.window.map_or(String::new(), |(a, b)| {
            format!("{}/{}", a.format(WINDOW_FMT), b.format(WINDOW_FMT))
        });
        B64URL.encode(format!(
            "items\n{}\n{}\n{}\n{}\n{}\n{}\n{w}",
            self.user,
            self.container,
            self.epoch,
            self.since,
            self.upto,
            u8::from(self.initial)
        ))
    }

    fn decode(t: &str) -> Option<DeltaState> {
        let raw = String::from_utf8(B64URL.decode(t.trim_end_matches('=')).ok()?).ok()?;
        let p: Vec<&str> = raw.split('\n').collect();
        if p.len() != 8 || p[0] != "items" {
            return None;
        }
        let window = match p[7].split_once('/') {
            None => None,
            Some((a, b)) => Some((
                NaiveDateTime::parse_from_str(a, WINDOW_FMT).ok()?,
                NaiveDateTime::parse_from_str(b, WINDOW_FMT).ok()?,
            )),
        };
        Some(DeltaState {
            user: p[1].to_owned(),
            container: p[2].to_owned(),
            epoch: p[3].parse().ok()?,
            since: p[4].parse().ok()?,
            upto: p[5].parse().ok()?,
            initial: p[6] == "1",
            window,
        })
    }
}

fn parse_query_time(v: &str) -> Option<NaiveDateTime> {
    DateTime::parse_from_rfc3339(v.trim())
        .map(|t| t.naive_utc())
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(v.trim(), "%Y-%m-%dT%H:%M:%S%.f").ok())
        .or_else(|| NaiveDateTime::parse_from_str(v.trim(), "%Y-%m-%dT%H:%M:%S").ok())
}

fn local(v: &Value) -> Option<NaiveDateTime> {
    let s = v["dateTime"].as_str()?.trim().trim_end_matches('Z');
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .ok()
}

fn fmt_local(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S.0000000").to_string()
}

const GRAPH_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The starts of a series' occurrences (local times) up to `until`, at most 2,000.
fn occurrence_starts(
    rec: &Value,
    start: NaiveDateTime,
    until: NaiveDateTime,
) -> Vec<NaiveDateTime> {
    let p = &rec["pattern"];
    let r = &rec["range"];
    let interval = p["interval"].as_i64().unwrap_or(1).max(1);
    let first = r["startDate"]
        .as_str()
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .unwrap_or(start.date());
    let count = (r["type"] == "numbered").then(|| r["numberOfOccurrences"].as_u64().unwrap_or(1));
    let end_date = (r["type"] == "endDate")
        .then(|| {
            r["endDate"]
                .as_str()
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        })
        .flatten();
    let days: Vec<u32> = p["daysOfWeek"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str())
        .filter_map(|d| GRAPH_DAYS.iter().position(|g| g.eq_ignore_ascii_case(d)))
        .map(|i| i as u32)
        .collect();
    let mut out = Vec::new();
    let mut day = first;
    let time = start.time();
    for _ in 0..20_000 {
        if out.len() >= 2_000
            || count.is_some_and(|c| out.len() as u64 >= c)
            || end_date.is_some_and(|e| day > e)
            || day.and_time(time) > until
        {
            break;
        }
        let hit = match p["type"].as_str().unwrap_or("") {
            "daily" => (day - first).num_days() % interval == 0,
            "weekly" => {
                // Weeks counted from the Monday of the first week.
                let monday = first - TimeDelta::days(first.weekday().num_days_from_monday().into());
                let w = (day - monday).num_days().div_euclid(7);
                w % interval == 0 && days.contains(&day.weekday().num_days_from_monday())
            }
            "absoluteMonthly" => {
                let months =
                    (day.year() - first.year()) * 12 + day.month() as i32 - first.month() as i32;
                i64::from(months) % interval == 0
                    && u64::from(day.day())
                        == p["dayOfMonth"].as_u64().unwrap_or(first.day().into())
            }
            // Other patterns: the first occurrence only.
            _ => day == first,
        };
        if hit && day.and_time(time) >= start {
            out.push(day.and_time(time));
        }
        day += TimeDelta::days(1);
    }
    out
}

/// The id of the occurrence of series `master` originally at `start` (local).
fn occurrence_id(master: &str, start: NaiveDateTime) -> String {
    format!(
        "AAMkAGOcc{}",
        B64URL.encode(format!("{master}|{}", start.format(WINDOW_FMT)))
    )
}

/// The series and original start an occurrence id names.
fn parse_occurrence_id(id: &str) -> Option<(String, NaiveDateTime)> {
    let raw = B64URL.decode(id.strip_prefix("AAMkAGOcc")?).ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (master, start) = raw.rsplit_once('|')?;
    Some((
        master.to_owned(),
        NaiveDateTime::parse_from_str(start, WINDOW_FMT).ok()?,
    ))
}

/// The series an item id belongs to (itself, or an occurrence's master).
fn series_of<'a>(m: &'a Mailbox, id: &str) -> Option<&'a Item> {
    match parse_occurrence_id(id) {
        Some((master, _)) => m.items.items.get(&master),
        None => m.items.items.get(id),
    }
}

/// `local` in the zone `zone` names (IANA or UTC; others read as UTC), as a UTC instant.
fn instant(local: NaiveDateTime, zone: &str) -> DateTime<Utc> {
    let tz: chrono_tz::Tz = zone.parse().unwrap_or(chrono_tz::UTC);
    local
        .and_local_timezone(tz)
        .earliest()
        .map_or_else(|| local.and_utc(), |t| t.with_timezone(&Utc))
}

/// A series' instances with an original start up to `until`, cancelled ones left out: (start,
/// end, JSON as Graph answers it — type `occurrence` or `exception`, `seriesMasterId`,
/// `originalStart`).
fn series_instances(
    item: &Item,
    v: &Value,
    until: NaiveDateTime,
) -> Vec<(NaiveDateTime, NaiveDateTime, Value)> {
    let (Some(start), Some(end)) = (local(&v["start"]), local(&v["end"])) else {
        return vec![];
    };
    let zone = v["start"]["timeZone"].as_str().unwrap_or("UTC").to_owned();
    let length = end - start;
    let mut out = Vec::new();
    for s in occurrence_starts(&v["recurrence"], start, until) {
        let mut o = v.clone();
        o["id"] = json!(occurrence_id(&item.id, s));
        o["type"] = json!("occurrence");
        o["seriesMasterId"] = json!(item.id);
        o["recurrence"] = Value::Null;
        o["originalStart"] = json!(ts(&instant(s, &zone)));
        o["start"]["dateTime"] = json!(fmt_local(s));
        o["end"]["dateTime"] = json!(fmt_local(s + length));
        match item.exceptions.get(&s) {
            Some(Exception::Cancelled) => continue,
            Some(Exception::Changed(props)) => {
                o["type"] = json!("exception");
                for (k, val) in props {
                    o[k.as_str()] = val.clone();
                }
            }
            None => {}
        }
        let (Some(a), Some(b)) = (local(&o["start"]), local(&o["end"])) else {
            continue;
        };
        out.push((a, b, o));
    }
    out
}

/// What calendarView lists of an event inside `window`: the event itself, or a series'
/// occurrences and exceptions (JSON as Graph answers them).
fn instances(item: &Item, ctx: &Ctx, window: (NaiveDateTime, NaiveDateTime)) -> Vec<Value> {
    let v = entity_json(item, ctx, None);
    let (Some(start), Some(end)) = (local(&v["start"]), local(&v["end"])) else {
        // Unreadable times: listed as they are (a client must cope).
        return vec![v];
    };
    let overlaps = |s: NaiveDateTime, e: NaiveDateTime| s < window.1 && e > window.0;
    if !v["recurrence"].is_object() {
        return if overlaps(start, end) {
            vec![v]
        } else {
            vec![]
        };
    }
    series_instances(item, &v, window.1)
        .into_iter()
        .filter(|(s, e, _)| overlaps(*s, *e))
        .map(|(_, _, o)| o)
        .collect()
}

/// The occurrence or exception `id` names, if its series is in `container` (any when `None`)
/// and it was not cancelled.
fn occurrence(m: &Mailbox, ctx: &Ctx, container: Option<&str>, id: &str) -> Option<Value> {
    let (master, original) = parse_occurrence_id(id)?;
    let item = find(m, ItemKind::Event, container, &master)?;
    let v = entity_json(item, ctx, None);
    if !v["recurrence"].is_object() {
        return None;
    }
    series_instances(item, &v, original)
        .into_iter()
        .map(|(_, _, o)| o)
        .find(|o| o["id"].as_str() == Some(id))
}

/// `GET events/{id}/instances`: the occurrences and exceptions of a series between
/// `startDateTime` and `endDateTime` (both required), `$select`, `$top` (10 by default, as
/// Graph pages) and `$skip` with `@odata.nextLink`.
fn list_instances(item: &Item, query: &HashMap<String, String>, ctx: &Ctx) -> Reply {
    let (Some(a), Some(b)) = (
        query.get("startDateTime").and_then(|v| parse_query_time(v)),
        query.get("endDateTime").and_then(|v| parse_query_time(v)),
    ) else {
        return gerr(
            400,
            "ErrorInvalidParameter",
            "This request requires a time window specified by the query string parameters \
             StartDateTime and EndDateTime.",
        );
    };
    let all = instances(item, ctx, (a, b));
    let top = query
        .get("$top")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(10)
        .clamp(1, 1000);
    let skip = query
        .get("$skip")
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(0);
    let sel = query.get("$select").map(String::as_str);
    let value: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(top)
        .map(|i| select(i.clone(), sel))
        .collect();
    let mut v = json!({
        "@odata.context": format!("{}/v1.0/$metadata#users('{}')/events('{}')/instances", ctx.base, ctx.uid, item.id),
        "value": value,
    });
    if skip + top < all.len() {
        let mut q: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| *k != "$skip")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        q.sort();
        q.push(("$skip".into(), (skip + top).to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(q)
            .finish();
        v["@odata.nextLink"] = json!(format!(
            "{}/v1.0/users/{}/events/{}/instances?{qs}",
            ctx.base, ctx.uid, item.id
        ));
    }
    Reply::json(200, &v, Some(Schema::Collection("microsoft.graph.event")))
}

/// A change to one occurrence: it becomes an exception, and the series counts as changed.
fn patch_occurrence(
    s: &mut DoubleState,
    mb: usize,
    master: &str,
    original: NaiveDateTime,
    id: &str,
    v: Value,
    ctx: &Ctx,
) -> Reply {
    if occurrence(&s.mailboxes[mb], ctx, None, id).is_none() {
        return item_not_found();
    }
    let seq = s.next_seq();
    let items = &mut s.mailboxes[mb].items;
    let Some(item) = items.items.get_mut(master) else {
        return item_not_found();
    };
    let mut props = match item.exceptions.remove(&original) {
        Some(Exception::Changed(p)) => p,
        _ => Map::new(),
    };
    for (k, val) in v.as_object().cloned().unwrap_or_default() {
        if matches!(
            k.as_str(),
            "start" | "end" | "subject" | "location" | "body" | "isAllDay" | "categories"
        ) {
            let mut val = val;
            if let Some(t) = local(&val).filter(|_| matches!(k.as_str(), "start" | "end")) {
                val["dateTime"] = json!(fmt_local(t));
            }
            props.insert(k, val);
        }
    }
    item.exceptions.insert(original, Exception::Changed(props));
    item.version += 1;
    item.modified = Utc::now().max(item.modified);
    let container = item.container.clone();
    items.log(&container, master, seq, true);
    match occurrence(&s.mailboxes[mb], ctx, None, id) {
        Some(out) => Reply::json(200, &out, Some(Schema::Entity("microsoft.graph.event"))),
        None => item_not_found(),
    }
}

/// Deletes one occurrence of a series; false when there is none.
fn cancel_occurrence(
    s: &mut DoubleState,
    mb: usize,
    master: &str,
    original: NaiveDateTime,
) -> bool {
    let ctx = Ctx::of(s, mb);
    if occurrence(
        &s.mailboxes[mb],
        &ctx,
        None,
        &occurrence_id(master, original),
    )
    .is_none()
    {
        return false;
    }
    let seq = s.next_seq();
    let items = &mut s.mailboxes[mb].items;
    let Some(item) = items.items.get_mut(master) else {
        return false;
    };
    item.exceptions.insert(original, Exception::Cancelled);
    item.version += 1;
    item.modified = Utc::now().max(item.modified);
    let container = item.container.clone();
    items.log(&container, master, seq, true);
    true
}

#[allow(clippy::too_many_arguments)]
fn delta(
    s: &mut DoubleState,
    mb: usize,
    kind: ItemKind,
    container: &str,
    rest: &[&str],
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    ctx: &Ctx,
) -> Reply {
    let (size, prefer) = super::mail::page_size(s, headers);
    let m = &s.mailboxes[mb];
    let token = query.get("$skiptoken").or_else(|| query.get("$deltatoken"));
    let mut st = match token {
        None => {
            let window = if kind == ItemKind::Event {
                let (Some(a), Some(b)) = (
                    query.get("startDateTime").and_then(|v| parse_query_time(v)),
                    query.get("endDateTime").and_then(|v| parse_query_time(v)),
                ) else {
                    return gerr(
                        400,
                        "ErrorInvalidParameter",
                        "This request requires a time window specified by the query string \
                         parameters StartDateTime and EndDateTime.",
                    );
                };
                Some((a, b))
            } else {
                None
            };
            DeltaState {
                user: m.user_id.clone(),
                container: container.to_owned(),
                epoch: m.epoch,
                since: 0,
                upto: 0,
                initial: true,
                window,
            }
        }
        Some(t) => match DeltaState::decode(t) {
            Some(st) if st.user == m.user_id && st.container == container => st,
            _ => return sync_gone(),
        },
    };
    if st.epoch != m.epoch {
        return sync_gone();
    }
    if st.upto == 0 {
        st.upto = s.seq;
    }
    let empty = HashMap::new();
    let changes = m.items.changes.get(container).unwrap_or(&empty);
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
    let odata_type = format!("#{}", kind.type_name());
    let removed =
        |id: &str| json!({"@odata.type": odata_type, "id": id, "@removed": {"reason": "deleted"}});
    let mut value = Vec::new();
    for (id, _, present) in &list {
        let live = m.items.items.get(*id).filter(|_| *present);
        match (kind, live, st.window) {
            (ItemKind::Event, Some(item), Some(w)) => {
                let inst = instances(item, ctx, w);
                if inst.is_empty()
                    && !st.initial
                    && !item.props.get("recurrence").is_some_and(Value::is_object)
                {
                    value.push(removed(id));
                }
                for mut i in inst {
                    i["@odata.type"] = json!(odata_type);
                    value.push(i);
                }
            }
            (_, Some(item), _) => {
                let mut v = entity_json(item, ctx, None);
                v["@odata.type"] = json!(odata_type);
                value.push(v);
            }
            (ItemKind::Event, None, Some(w)) => {
                // A deleted series: its occurrences leave the view.
                match m.items.tombstones.get(*id) {
                    Some(t) if t.props.get("recurrence").is_some_and(Value::is_object) => {
                        for i in instances(t, ctx, w) {
                            value.push(removed(i["id"].as_str().unwrap_or_default()));
                        }
                    }
                    _ => value.push(removed(id)),
                }
            }
            (_, None, _) => value.push(removed(id)),
        }
    }
    let link_base = format!("{}/v1.0/users/{}/{}", ctx.base, ctx.uid, rest.join("/"));
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
        &ctx.base,
        &link_base,
        kind.type_name(),
        value,
        next,
        prefer.map(|p| p.min(size)),
    )
}

impl Ctx {
    pub(super) fn of(s: &DoubleState, mb: usize) -> Ctx {
        let m = &s.mailboxes[mb];
        Ctx {
            base: s.base(),
            uid: m.user_id.clone(),
            address: m.address.clone(),
            name: m.display_name.clone(),
        }
    }
}

/// For tests: the items of a collection as Graph would answer them (with every extended
/// property and linked resource).
pub(super) fn snapshot(s: &DoubleState, mb: usize, kind: ItemKind, container: &str) -> Vec<Value> {
    let ctx = Ctx::of(s, mb);
    s.mailboxes[mb]
        .items
        .items
        .values()
        .filter(|i| i.kind == kind && i.container == container)
        .map(|i| {
            entity_json(
                i,
                &ctx,
                Some("singleValueExtendedProperties,linkedResources"),
            )
        })
        .collect()
}

/// For tests: creates an item as another client would (no checks but the JSON's shape).
pub(super) fn create_as_other(
    s: &mut DoubleState,
    mb: usize,
    kind: ItemKind,
    container: &str,
    v: Value,
) -> Option<String> {
    let ctx = Ctx::of(s, mb);
    let r = create(s, mb, kind, container, v, &ctx);
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
}

/// For tests: changes an item as another client would; false when there is no such item.
pub(super) fn patch_as_other(s: &mut DoubleState, mb: usize, id: &str, v: Value) -> bool {
    let ctx = Ctx::of(s, mb);
    patch(s, mb, id, v, &ctx).status == 200
}

/// For tests: the kind and container of the item `id`.
pub(super) fn locate(s: &DoubleState, mb: usize, id: &str) -> Option<(ItemKind, String)> {
    s.mailboxes[mb]
        .items
        .items
        .get(id)
        .map(|i| (i.kind, i.container.clone()))
}

/// For tests: the instances (occurrences and exceptions) of a series in a window, as
/// `GET events/{id}/instances` answers them.
pub(super) fn instances_json(
    s: &DoubleState,
    mb: usize,
    id: &str,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<Value> {
    let ctx = Ctx::of(s, mb);
    s.mailboxes[mb]
        .items
        .items
        .get(id)
        .filter(|i| i.props.get("recurrence").is_some_and(Value::is_object))
        .map(|i| instances(i, &ctx, (window.0.naive_utc(), window.1.naive_utc())))
        .unwrap_or_default()
}

/// For tests: the ids of the instances calendarView lists for an event in a window.
pub(super) fn instance_ids(
    s: &DoubleState,
    mb: usize,
    id: &str,
    window: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<String> {
    let ctx = Ctx::of(s, mb);
    s.mailboxes[mb]
        .items
        .items
        .get(id)
        .map(|i| {
            instances(i, &ctx, (window.0.naive_utc(), window.1.naive_utc()))
                .iter()
                .filter_map(|v| v["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
