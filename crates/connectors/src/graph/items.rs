//! Exchange Online appointments, contacts and To Do tasks over Microsoft Graph v1.0: the
//! [`ItemStore`] of a mailbox, on a [`GraphClient`] (its token, connection, throttling waits
//! and error classification).
//!
//! **Collections** are paths under `/users/{mailbox}`: a calendar (`calendar`, the default one,
//! or `calendars/{id}`), a contact folder (`contacts`, the default one, or
//! `contactFolders/{id}`) or a To Do list (`todo/lists/{id}`). [`GraphItemStore::default_calendar`],
//! [`GraphItemStore::default_contacts`] and [`GraphItemStore::default_task_list`] (the list
//! whose `wellknownListName` is `defaultList`) find the defaults.
//!
//! **Changes** come from Graph's delta queries: `contacts/delta`, `tasks/delta` and, for
//! events, `calendarView/delta` — v1.0's only event delta, bounded by a window
//! ([`CalendarWindow`], by default 30 days back to 365 days ahead of the first request; Graph
//! keeps the window in the delta token). `@odata.nextLink` pages are followed
//! ([`MAX_PAGES`] per call, then [`ChangeSet::more`]); the `@odata.deltaLink` is the cursor.
//! Every changed item is read again with its extended properties (uid, stamp), which delta
//! does not return, [`MAX_BATCH`] at a time in one `$batch`. A delta link Graph no longer accepts (410 Gone, `syncStateNotFound`,
//! `resyncRequired`, …) fails with [`DELTA_TOKEN_INVALID`], so the syncer reads the whole
//! collection again.
//!
//! Limits of calendarView delta, mapped faithfully: it lists single events, occurrences and
//! exceptions, not series masters. An occurrence or exception is reported as its series'
//! master (read by `seriesMasterId`, once per call) with the master's recurrence. A series
//! master's exceptions are read from `events/{id}/instances` over the window (one request per
//! series, [`MAX_BATCH`] series to a `$batch`, `@odata.nextLink` pages followed; also for
//! [`ItemStore::get`]): cancelled occurrences are the pattern's occurrences in the window
//! that are not listed (`exdates`), changed ones the instances of type `exception`
//! (`overrides`), see [`itemmap`]. An entry
//! `@removed` from the view is read again: an event that still exists only left the window
//! (or is an occurrence of a series that still exists) and is reported as changed, not
//! deleted; when a removed occurrence was seen earlier in this session its master is checked
//! too, so a deleted series is reported by its master's id. A series deleted while no
//! occurrence of it was seen in this session is reported only by its occurrences' ids.
//! Events wholly outside the window are never listed, also not by a full listing.
//!
//! **Writes** carry `If-Match` with the version (`@odata.etag`); an update sends only the
//! properties whose values changed ([`itemmap::patch_body`]: Exchange mails attendees an
//! update for every change of a meeting they are invited to, and a meeting's attendees are
//! invited when it is created with them — Graph v1.0 has no way to create or change a meeting
//! without mailing its attendees). 412 is a
//! [`Written::Conflict`] with the item read again, 404 is [`Written::Gone`]. A create first
//! looks for an item with the values' uid in the collection (an extended property
//! [`UID_PROPERTY`] for events and contacts, `$filter=singleValueExtendedProperties/Any(…)`;
//! a `linkedResource` for tasks) and answers `Conflict` with it, as a repeated CalDAV `PUT`
//! does; an event also carries `transactionId` = uid, so Graph itself returns the first event
//! to a create repeated after a lost answer.
//!
//! **Exceptions of a series** are written after the master (create or update): the series'
//! instances are listed again, each occurrence to cancel is deleted (`DELETE events/{id}` of
//! the occurrence) and each changed one patched (`start`, `end`, `subject`, `location`); the
//! master is then read again, so the version returned is the one after those writes (a
//! change to an occurrence changes its master). What Graph cannot do — restore an occurrence
//! cancelled on the server, give an occurrence a description of its own — is refused with
//! `unmappable_values` before anything is written. A new pattern drops a series' exceptions on
//! Exchange, so they are written again after it.
//!
//! Mapping: [`super::itemmap`]; an item that cannot be mapped is reported in
//! [`ChangeSet::unreadable`], never dropped.

use super::itemmap::{self, APPLICATION, INSTANCES, InstanceWrite, STAMP_PROPERTY, UID_PROPERTY};
use super::{GraphClient, MAX_BATCH, MAX_JSON, THROTTLE_TRIES, codes, literal, protocol, segment};
use crate::https::Response;
use crate::items::{ChangeSet, ItemStore, RemoteItem, Written};
use crate::{ConnectError, Result};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use serversync_model::sync::ServerTokenCursor;
use serversync_model::webhook::RecordType;
use std::collections::{HashMap, HashSet};

/// The error code of a delta link Graph no longer accepts: the same code as a CalDAV sync
/// token the server forgot, so the syncer's fallback (a full listing) covers both.
pub const DELTA_TOKEN_INVALID: &str = crate::dav::client::SYNC_TOKEN_INVALID;
/// Delta pages followed in one [`ItemStore::changes`] call; then `more` is set.
pub const MAX_PAGES: usize = 200;
/// Items per delta page asked for (`Prefer: odata.maxpagesize`).
pub const PAGE_SIZE: u32 = 100;

/// Graph error codes (besides HTTP 410) that say a delta token is no longer valid.
const INVALID_TOKEN_CODES: [&str; 5] = [
    "syncStateNotFound",
    "syncStateInvalid",
    "resyncRequired",
    "ErrorInvalidSyncState",
    "SyncStateNotFound",
];

/// The time span a calendar's `calendarView/delta` covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarWindow {
    /// From `past_days` before to `ahead_days` after the moment the delta starts.
    AroundNow { past_days: u32, ahead_days: u32 },
    /// A fixed span (tests; or a deployment that wants one).
    Fixed {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

/// 30 days back to 365 days ahead.
pub const DEFAULT_WINDOW: CalendarWindow = CalendarWindow::AroundNow {
    past_days: 30,
    ahead_days: 365,
};

impl CalendarWindow {
    fn span(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        match *self {
            CalendarWindow::AroundNow {
                past_days,
                ahead_days,
            } => {
                let now = Utc::now();
                (
                    now - chrono::TimeDelta::days(past_days.into()),
                    now + chrono::TimeDelta::days(ahead_days.into()),
                )
            }
            CalendarWindow::Fixed { start, end } => (start, end),
        }
    }
}

/// What a collection path holds.
fn kind_of(collection: &str) -> Result<RecordType> {
    let segs: Vec<&str> = collection.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["calendar"] | ["calendars", _] => Ok(RecordType::Appointment),
        ["contacts"] | ["contactFolders", _] => Ok(RecordType::Contact),
        ["todo", "lists", _] => Ok(RecordType::Task),
        _ => Err(protocol(format!(
            "{collection:?} is not a Graph collection (calendar, calendars/{{id}}, contacts, \
             contactFolders/{{id}} or todo/lists/{{id}})"
        ))
        .with_code("invalid_collection")),
    }
}

fn items_segment(kind: RecordType) -> &'static str {
    match kind {
        RecordType::Appointment => "events",
        RecordType::Contact => "contacts",
        _ => "tasks",
    }
}

/// The `$expand` that brings the uid and stamp with an item.
fn expand(kind: RecordType) -> String {
    let e = if kind == RecordType::Task {
        "linkedResources".to_owned()
    } else {
        format!(
            "singleValueExtendedProperties($filter=id eq {} or id eq {})",
            literal(UID_PROPERTY),
            literal(STAMP_PROPERTY)
        )
    };
    format!("$expand={}", segment(&e))
}

const TEXT_BODIES: (&str, &str) = ("Prefer", "outlook.body-content-type=\"text\"");

/// Instances asked for per page of `events/{id}/instances`.
pub const INSTANCES_PAGE: u32 = 100;
/// The properties of an instance read.
const INSTANCE_SELECT: &str = "id,type,seriesMasterId,originalStart,start,end,subject,location";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `values` without exceptions (what a series has once created or given a new pattern).
fn without_exceptions(values: &Value) -> Value {
    let mut v = values.clone();
    v["exdates"] = serde_json::json!([]);
    v["overrides"] = serde_json::json!([]);
    v
}

/// Whether an event entity is a series master.
fn is_series(entity: &Value) -> bool {
    entity["type"].as_str() == Some("seriesMaster") || entity["recurrence"].is_object()
}

/// One answer of a `$batch`.
#[derive(Deserialize)]
struct BatchPart {
    id: String,
    status: u16,
    #[serde(default)]
    headers: HashMap<String, String>,
    #[serde(default)]
    body: Value,
}

impl BatchPart {
    /// `Some(Some(body))`: answered; `Some(None)`: the item is gone; `None`: throttled or
    /// unavailable in the batch, to be asked again on its own. Any other refusal is its error.
    fn outcome(self, what: &str) -> Result<Option<Option<Value>>> {
        if (200..300).contains(&self.status) && self.body.is_object() {
            return Ok(Some(Some(self.body)));
        }
        let body = serde_json::to_vec(&self.body).unwrap_or_default();
        let retry = codes::retry_after(
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                .map(|(_, v)| v.as_str()),
        );
        let err = codes::classify(self.status, &body, retry, what);
        match err.code.as_deref() {
            Some("item_not_found" | "not_found") => Ok(Some(None)),
            _ if err.is_transient() => Ok(None),
            _ => Err(err),
        }
    }
}

/// Appointments, contacts and tasks of one Exchange Online mailbox over Graph (see the
/// module documentation).
pub struct GraphItemStore {
    client: GraphClient,
    window: CalendarWindow,
    page: u32,
    /// The entity last read or written, by id, with its version: an update starts from it.
    seen: HashMap<String, (String, Value)>,
    /// Occurrence id → series master id, for the occurrences seen in this session.
    occurrences: HashMap<String, String>,
}

impl std::fmt::Debug for GraphItemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphItemStore")
            .field("client", &self.client)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    value: Vec<Value>,
    #[serde(rename = "@odata.nextLink")]
    next: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta: Option<String>,
}

impl GraphItemStore {
    /// The item store of the mailbox `client` acts on, with [`DEFAULT_WINDOW`].
    pub fn new(client: GraphClient) -> GraphItemStore {
        GraphItemStore {
            client,
            window: DEFAULT_WINDOW,
            page: PAGE_SIZE,
            seen: HashMap::new(),
            occurrences: HashMap::new(),
        }
    }

    /// The span a new calendar delta covers.
    pub fn with_window(mut self, window: CalendarWindow) -> GraphItemStore {
        self.window = window;
        self
    }

    /// Items per delta page asked for.
    pub fn with_page_size(mut self, page: u32) -> GraphItemStore {
        self.page = page.max(1);
        self
    }

    /// The Graph client underneath.
    pub fn client(&mut self) -> &mut GraphClient {
        &mut self.client
    }

    /// The mailbox's default calendar (`calendar`), after checking it can be read.
    pub async fn default_calendar(&mut self) -> Result<String> {
        let path = format!("{}/calendar?$select=id,name", self.client.user_path);
        let _: Value = self
            .client
            .get_json(&path, &[], "reading the default calendar")
            .await?;
        Ok("calendar".into())
    }

    /// The mailbox's default contact folder (`contacts`), after checking it can be read.
    pub async fn default_contacts(&mut self) -> Result<String> {
        let path = format!("{}/contacts?$top=1&$select=id", self.client.user_path);
        let _: Value = self
            .client
            .get_json(&path, &[], "reading the default contacts")
            .await?;
        Ok("contacts".into())
    }

    /// The mailbox's default To Do list (`todo/lists/{id}`, the list whose
    /// `wellknownListName` is `defaultList`).
    pub async fn default_task_list(&mut self) -> Result<String> {
        let filter = segment("wellknownListName eq 'defaultList'");
        let path = format!("{}/todo/lists?$filter={filter}", self.client.user_path);
        let list: Page = self
            .client
            .get_json(&path, &[], "looking up the default To Do list")
            .await?;
        let id = list
            .value
            .first()
            .and_then(|l| l["id"].as_str())
            .ok_or_else(|| {
                protocol("the mailbox has no default To Do list (wellknownListName defaultList)")
                    .with_code("not_found")
            })?;
        Ok(format!("todo/lists/{id}"))
    }

    fn coll_path(&self, collection: &str) -> String {
        let segs: Vec<String> = collection
            .trim_matches('/')
            .split('/')
            .map(segment)
            .collect();
        format!("{}/{}", self.client.user_path, segs.join("/"))
    }

    /// The path of the collection's items (`…/calendar/events`, `…/contacts`,
    /// `…/contactFolders/{id}/contacts`, `…/todo/lists/{id}/tasks`).
    fn items_path(&self, collection: &str, kind: RecordType) -> String {
        if collection.trim_matches('/') == "contacts" {
            return self.coll_path(collection);
        }
        format!("{}/{}", self.coll_path(collection), items_segment(kind))
    }

    fn item_path(&self, collection: &str, kind: RecordType, id: &str) -> String {
        format!("{}/{}", self.items_path(collection, kind), segment(id))
    }

    fn delta_start(&self, collection: &str, kind: RecordType) -> String {
        match kind {
            RecordType::Appointment => {
                let (start, end) = self.window.span();
                let fmt = |t: DateTime<Utc>| {
                    segment(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                };
                let base = if collection.trim_matches('/') == "calendar" {
                    self.client.user_path.clone()
                } else {
                    self.coll_path(collection)
                };
                format!(
                    "{base}/calendarView/delta?startDateTime={}&endDateTime={}",
                    fmt(start),
                    fmt(end)
                )
            }
            _ => format!("{}/delta", self.items_path(collection, kind)),
        }
    }

    /// One request: throttling and unavailability are waited out (for a request that is not
    /// `idempotent`, only answers that say nothing was done: 429 and 503); 404, 409, 410 and
    /// 412 come back for the caller to read; any other refusal is the classified error.
    async fn send(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, String)],
        idempotent: bool,
        what: &str,
    ) -> Result<Response> {
        let body = body.map(|b| ("application/json", Bytes::from(b.to_string())));
        let mut tries = 0;
        loop {
            let resp = self
                .client
                .once(&method, path, &body, extra, MAX_JSON, what)
                .await?;
            if (200..300).contains(&resp.status) || matches!(resp.status, 404 | 409 | 410 | 412) {
                return Ok(resp);
            }
            let err = self.client.refusal(&resp, what);
            let repeatable = idempotent || matches!(resp.status, 429 | 503);
            if err.is_transient() && repeatable && tries < THROTTLE_TRIES {
                self.client.wait_out(&err, tries).await;
                tries += 1;
                continue;
            }
            return Err(err);
        }
    }

    /// Whether a 404 answer says the item is not there (not: the mailbox is not).
    fn missing(&self, resp: &Response, what: &str) -> Result<bool> {
        if resp.status != 404 {
            return Ok(false);
        }
        let err = self.client.refusal(resp, what);
        match err.code.as_deref() {
            Some("item_not_found" | "not_found") => Ok(true),
            _ => Err(err),
        }
    }

    fn json(resp: &Response, what: &str) -> Result<Value> {
        serde_json::from_slice(&resp.body)
            .map_err(|e| protocol(format!("{what}: Graph's answer is not JSON: {e}")))
    }

    fn item(&mut self, kind: RecordType, entity: Value) -> std::result::Result<RemoteItem, String> {
        let id = entity["id"].as_str().ok_or("no id")?.to_owned();
        let version = entity["@odata.etag"]
            .as_str()
            .or_else(|| entity["changeKey"].as_str())
            .ok_or("no @odata.etag")?
            .to_owned();
        let values = itemmap::to_values(kind, &entity)?;
        self.seen.insert(id.clone(), (version.clone(), entity));
        Ok(RemoteItem {
            id,
            version,
            kind,
            values,
        })
    }

    /// Keeps the entity a write answered with as the item's last state. The answer to a write
    /// carries no extended properties or linked resources: those written are merged in
    /// (extended properties by id, over the previous state's).
    fn remember(
        &mut self,
        kind: RecordType,
        id: &str,
        version: &str,
        mut entity: Value,
        written: &Value,
        previous: Option<&Value>,
    ) {
        if entity.get("singleValueExtendedProperties").is_none() && kind != RecordType::Task {
            let mut props: Vec<Value> = previous
                .and_then(|p| p["singleValueExtendedProperties"].as_array().cloned())
                .unwrap_or_default();
            for w in written["singleValueExtendedProperties"]
                .as_array()
                .into_iter()
                .flatten()
            {
                props.retain(|p| {
                    !p["id"]
                        .as_str()
                        .zip(w["id"].as_str())
                        .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
                });
                props.push(w.clone());
            }
            entity["singleValueExtendedProperties"] = Value::Array(props);
        }
        if entity.get("linkedResources").is_none() {
            let links = written
                .get("linkedResources")
                .or_else(|| previous.and_then(|p| p.get("linkedResources")))
                .cloned();
            if let Some(l) = links {
                entity["linkedResources"] = l;
            }
        }
        self.seen
            .insert(id.to_owned(), (version.to_owned(), entity));
    }

    /// The item's entity with its uid and stamp (`None`: gone).
    async fn read(
        &mut self,
        collection: &str,
        kind: RecordType,
        id: &str,
    ) -> Result<Option<Value>> {
        let path = format!("{}?{}", self.item_path(collection, kind, id), expand(kind));
        let what = format!("reading the item {id}");
        let resp = self
            .send(
                hyper::Method::GET,
                &path,
                None,
                &[(TEXT_BODIES.0, TEXT_BODIES.1.to_owned())],
                true,
                &what,
            )
            .await?;
        if self.missing(&resp, &what)? {
            return Ok(None);
        }
        if !(200..300).contains(&resp.status) {
            return Err(self.client.refusal(&resp, &what));
        }
        Self::json(&resp, &what).map(Some)
    }

    /// Sends `requests` (each with its index as `id`) as one `$batch`; the answers with the
    /// index of their request.
    async fn batch(&mut self, requests: Vec<Value>, what: &str) -> Result<Vec<(usize, BatchPart)>> {
        #[derive(Deserialize)]
        struct Answer {
            responses: Vec<BatchPart>,
        }
        let body = serde_json::json!({ "requests": requests });
        let resp = self
            .send(
                hyper::Method::POST,
                "/v1.0/$batch",
                Some(&body),
                &[],
                true,
                what,
            )
            .await?;
        if !(200..300).contains(&resp.status) {
            return Err(self.client.refusal(&resp, what));
        }
        let answer: Answer = serde_json::from_slice(&resp.body)
            .map_err(|e| protocol(format!("{what}: Graph's answer is not a batch answer: {e}")))?;
        Ok(answer
            .responses
            .into_iter()
            .filter_map(|p| Some((p.id.parse().ok()?, p)))
            .collect())
    }

    /// Up to [`MAX_BATCH`] items with their uid and stamp in one `$batch` round trip, in
    /// `ids`' order (`None`: gone). Items the batch could not give (throttled or unavailable
    /// there) are read one by one, which waits throttling out; any other refusal of an item is
    /// its error.
    async fn read_many(
        &mut self,
        collection: &str,
        kind: RecordType,
        ids: &[String],
    ) -> Result<Vec<Option<Value>>> {
        if ids.len() < 2 {
            let mut out = Vec::new();
            for id in ids {
                out.push(self.read(collection, kind, id).await?);
            }
            return Ok(out);
        }
        let requests: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(n, id)| {
                let path = self.item_path(collection, kind, id);
                serde_json::json!({
                    "id": n.to_string(),
                    "method": "GET",
                    "url": format!("{}?{}", path.trim_start_matches("/v1.0"), expand(kind)),
                    "headers": {TEXT_BODIES.0: TEXT_BODIES.1},
                })
            })
            .collect();
        let what = format!(
            "reading {} changed items of {collection} ($batch)",
            ids.len()
        );
        let mut out: Vec<Option<Option<Value>>> = vec![None; ids.len()];
        for (n, part) in self.batch(requests, &what).await? {
            if let Some(slot) = out.get_mut(n) {
                // Read again below, one by one (waiting as asked), when the batch could not.
                *slot = part.outcome("reading a changed item")?;
            }
        }
        let mut done = Vec::with_capacity(ids.len());
        for (id, got) in ids.iter().zip(out) {
            done.push(match got {
                Some(entity) => entity,
                None => self.read(collection, kind, id).await?,
            });
        }
        Ok(done)
    }

    async fn fetch(
        &mut self,
        collection: &str,
        kind: RecordType,
        id: &str,
    ) -> Result<Option<RemoteItem>> {
        let Some(mut entity) = self.read(collection, kind, id).await? else {
            return Ok(None);
        };
        if kind == RecordType::Appointment {
            self.add_instances(collection, &mut [&mut entity]).await?;
        }
        self.item(kind, entity).map(Some).map_err(|why| {
            protocol(format!("the item {id} cannot be read: {why}")).with_code("unreadable_item")
        })
    }

    async fn conflict_or_gone(
        &mut self,
        collection: &str,
        kind: RecordType,
        id: &str,
    ) -> Result<Written> {
        Ok(match self.fetch(collection, kind, id).await? {
            Some(current) => Written::Conflict { current },
            None => Written::Gone,
        })
    }

    /// The item of `collection` that carries `uid`, if any.
    async fn find_uid(
        &mut self,
        collection: &str,
        kind: RecordType,
        uid: &str,
    ) -> Result<Option<RemoteItem>> {
        let filter = if kind == RecordType::Task {
            format!(
                "linkedResources/any(r: r/applicationName eq {} and r/externalId eq {})",
                literal(APPLICATION),
                literal(uid)
            )
        } else {
            format!(
                "singleValueExtendedProperties/Any(ep: ep/id eq {} and ep/value eq {})",
                literal(UID_PROPERTY),
                literal(uid)
            )
        };
        let path = format!(
            "{}?$filter={}&{}",
            self.items_path(collection, kind),
            segment(&filter),
            expand(kind)
        );
        let what = format!("looking for the item with uid {uid}");
        let page: Page = self
            .client
            .get_json(&path, &[(TEXT_BODIES.0, TEXT_BODIES.1.to_owned())], &what)
            .await?;
        let Some(mut entity) = page.value.into_iter().next() else {
            return Ok(None);
        };
        if kind == RecordType::Appointment {
            self.add_instances(collection, &mut [&mut entity]).await?;
        }
        self.item(kind, entity).map(Some).map_err(|why| {
            protocol(format!("the item with uid {uid} cannot be read: {why}"))
                .with_code("unreadable_item")
        })
    }

    /// The path listing series `id`'s instances between `from` and `to`.
    fn instances_path(
        &self,
        collection: &str,
        id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> String {
        format!(
            "{}/instances?startDateTime={}&endDateTime={}&$select={INSTANCE_SELECT}&$top={INSTANCES_PAGE}",
            self.item_path(collection, RecordType::Appointment, id),
            segment(&rfc3339(from)),
            segment(&rfc3339(to)),
        )
    }

    /// An instance listing's instances, its `@odata.nextLink` pages followed (`page`: the
    /// first page's JSON).
    async fn instance_pages(&mut self, mut page: Value, what: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        for _ in 0..MAX_PAGES {
            out.extend(page["value"].as_array().cloned().unwrap_or_default());
            let Some(next) = page["@odata.nextLink"].as_str().map(str::to_owned) else {
                return Ok(out);
            };
            let path = self.client.own_path(&next)?;
            let resp = self
                .send(hyper::Method::GET, &path, None, &[], true, what)
                .await?;
            if !(200..300).contains(&resp.status) {
                return Err(self.client.refusal(&resp, what));
            }
            page = Self::json(&resp, what)?;
        }
        Err(protocol(format!(
            "{what}: more than {MAX_PAGES} pages of instances"
        )))
    }

    /// Series `id`'s instances between `from` and `to` (`None`: the series is gone).
    async fn instances(
        &mut self,
        collection: &str,
        id: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Option<Vec<Value>>> {
        let path = self.instances_path(collection, id, from, to);
        let what = format!("listing the occurrences of the series {id}");
        let resp = self
            .send(hyper::Method::GET, &path, None, &[], true, &what)
            .await?;
        if self.missing(&resp, &what)? {
            return Ok(None);
        }
        if !(200..300).contains(&resp.status) {
            return Err(self.client.refusal(&resp, &what));
        }
        let page = Self::json(&resp, &what)?;
        self.instance_pages(page, &what).await.map(Some)
    }

    /// Puts the instances of each series master among `entities` into it ([`INSTANCES`]),
    /// listed over the window, [`MAX_BATCH`] series to a `$batch` round trip. A series gone
    /// meanwhile keeps no instances (the next delta reports it).
    async fn add_instances(&mut self, collection: &str, entities: &mut [&mut Value]) -> Result<()> {
        let (from, to) = self.window.span();
        let span = |list: Vec<Value>| serde_json::json!({"start": rfc3339(from), "end": rfc3339(to), "value": list});
        let mut series: Vec<&mut Value> = entities
            .iter_mut()
            .map(|e| &mut **e)
            .filter(|e| is_series(e) && e["id"].is_string())
            .collect();
        for chunk in series.chunks_mut(MAX_BATCH) {
            let ids: Vec<String> = chunk
                .iter()
                .map(|e| e["id"].as_str().unwrap_or_default().to_owned())
                .collect();
            let mut got: Vec<Option<Option<Vec<Value>>>> = vec![None; ids.len()];
            if ids.len() > 1 {
                let requests: Vec<Value> = ids
                    .iter()
                    .enumerate()
                    .map(|(n, id)| {
                        let path = self.instances_path(collection, id, from, to);
                        serde_json::json!({
                            "id": n.to_string(),
                            "method": "GET",
                            "url": path.trim_start_matches("/v1.0"),
                        })
                    })
                    .collect();
                let what = format!(
                    "listing the occurrences of {} series of {collection} ($batch)",
                    ids.len()
                );
                for (n, part) in self.batch(requests, &what).await? {
                    if n >= ids.len() {
                        continue;
                    }
                    // Listed again below, one by one (waiting as asked), when the batch could not.
                    got[n] = match part.outcome("listing the occurrences of a series")? {
                        Some(Some(page)) => {
                            let what = format!("listing the occurrences of the series {}", ids[n]);
                            Some(Some(self.instance_pages(page, &what).await?))
                        }
                        Some(None) => Some(None),
                        None => None,
                    };
                }
            }
            for (n, entity) in chunk.iter_mut().enumerate() {
                let list = match got[n].take() {
                    Some(l) => l,
                    None => self.instances(collection, &ids[n], from, to).await?,
                };
                if let Some(list) = list {
                    entity[INSTANCES] = span(list);
                }
            }
        }
        Ok(())
    }

    /// After the master `id` of a series was written with `values`: writes the exceptions
    /// the values have and the series lacks (see [`itemmap::exception_writes`]) to its
    /// instances, and answers the master's version after them (`None`: nothing written).
    async fn write_exceptions(
        &mut self,
        collection: &str,
        id: &str,
        values: &Value,
    ) -> Result<Option<String>> {
        if values["rrule"].as_str().is_none_or(str::is_empty) {
            return Ok(None);
        }
        let Some((_, master)) = self.seen.get(id).cloned() else {
            return Ok(None);
        };
        // Over the window and every occurrence the values name.
        let (mut from, mut to) = self.window.span();
        for field in ["exdates", "overrides"] {
            for v in values[field].as_array().into_iter().flatten() {
                let t = v.get("recurrence_id").unwrap_or(v);
                if let Some(t) = t
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                {
                    let t = t.with_timezone(&Utc);
                    from = from.min(t - chrono::TimeDelta::days(1));
                    to = to.max(t + chrono::TimeDelta::days(1));
                }
            }
        }
        let Some(list) = self.instances(collection, id, from, to).await? else {
            return Ok(None); // gone: the next delta says so
        };
        let mut entity = master;
        entity[INSTANCES] =
            serde_json::json!({"start": rfc3339(from), "end": rfc3339(to), "value": list});
        let have = itemmap::to_values(RecordType::Appointment, &entity)
            .map_err(|e| protocol(format!("the series {id} cannot be read: {e}")))?;
        let writes = itemmap::exception_writes(values, &have)
            .map_err(|e| protocol(e).with_code(crate::items::UNMAPPABLE_VALUES))?;
        if writes.is_empty() {
            return Ok(None);
        }
        for w in writes {
            let original = w.original_start();
            let instance = list.iter().find(|i| {
                let at = i["originalStart"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc));
                at == Some(original)
            });
            let at = rfc3339(original);
            let Some(occurrence) = instance.and_then(|i| i["id"].as_str()) else {
                return Err(protocol(format!(
                    "the series {id} has no occurrence at {at} to {}",
                    if matches!(w, InstanceWrite::Cancel(_)) {
                        "cancel"
                    } else {
                        "change"
                    }
                ))
                .with_code(crate::items::UNMAPPABLE_VALUES));
            };
            let path = self.item_path(collection, RecordType::Appointment, occurrence);
            let (method, body, what) = match &w {
                InstanceWrite::Cancel(_) => (
                    hyper::Method::DELETE,
                    None,
                    format!("cancelling the occurrence at {at} of the series {id}"),
                ),
                InstanceWrite::Change(_, b) => (
                    hyper::Method::PATCH,
                    Some(b),
                    format!("changing the occurrence at {at} of the series {id}"),
                ),
            };
            let resp = self.send(method, &path, body, &[], true, &what).await?;
            if !(200..300).contains(&resp.status) {
                return Err(self.client.refusal(&resp, &what));
            }
        }
        // A change to an occurrence changes its master: its version after the writes.
        match self.fetch(collection, RecordType::Appointment, id).await? {
            Some(item) => Ok(Some(item.version)),
            None => Ok(None),
        }
    }

    fn token_invalid(&self, resp: &Response, collection: &str) -> Option<ConnectError> {
        let code = codes::GraphError::parse(&resp.body).code;
        let invalid = resp.status == 410
            || (matches!(resp.status, 400 | 404 | 409)
                && INVALID_TOKEN_CODES
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&code)));
        invalid.then(|| {
            protocol(format!(
                "Microsoft Graph no longer accepts the delta link of {collection} ({} {code}): \
                 reading the collection from the start",
                resp.status
            ))
            .with_code(DELTA_TOKEN_INVALID)
        })
    }
}

impl ItemStore for GraphItemStore {
    async fn changes(
        &mut self,
        collection: &str,
        since: Option<&ServerTokenCursor>,
    ) -> Result<ChangeSet> {
        let kind = kind_of(collection)?;
        let mut path = match since {
            Some(t) => self.client.own_path(&t.token)?,
            None => self.delta_start(collection, kind),
        };
        let prefer = format!("odata.maxpagesize={}", self.page);
        let what = format!("reading the changes of {collection}");
        let mut set = ChangeSet::default();
        let mut changed: Vec<String> = Vec::new();
        let mut removed: Vec<String> = Vec::new();
        let mut done = false;
        for _ in 0..MAX_PAGES {
            let resp = self
                .send(
                    hyper::Method::GET,
                    &path,
                    None,
                    &[("Prefer", prefer.clone())],
                    true,
                    &what,
                )
                .await?;
            if let Some(e) = self.token_invalid(&resp, collection) {
                return Err(e);
            }
            if !(200..300).contains(&resp.status) {
                return Err(self.client.refusal(&resp, &what));
            }
            let page: Page = serde_json::from_slice(&resp.body).map_err(|e| {
                protocol(format!("{what}: Graph's answer is not a delta page: {e}"))
            })?;
            for entry in page.value {
                let Some(id) = entry["id"].as_str().map(str::to_owned) else {
                    continue;
                };
                let master = entry["seriesMasterId"]
                    .as_str()
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned);
                if entry.get("@removed").is_some() {
                    changed.retain(|c| *c != id);
                    if !removed.contains(&id) {
                        removed.push(id);
                    }
                    continue;
                }
                let id = match master {
                    Some(m) if kind == RecordType::Appointment => {
                        self.occurrences.insert(id, m.clone());
                        m
                    }
                    _ => id,
                };
                removed.retain(|r| *r != id);
                if !changed.contains(&id) {
                    changed.push(id);
                }
            }
            if let Some(next) = page.next {
                path = self.client.own_path(&next)?;
                set.next = Some(ServerTokenCursor { token: next });
                continue;
            }
            let delta = page.delta.ok_or_else(|| {
                protocol(format!(
                    "{what}: Graph's delta page has neither a next link nor a delta link"
                ))
            })?;
            self.client.own_path(&delta)?;
            set.next = Some(ServerTokenCursor { token: delta });
            done = true;
            break;
        }
        set.more = !done;
        // Removed from the view: deleted, or (events) out of the window, or an occurrence.
        let mut deleted: Vec<String> = Vec::new();
        if kind == RecordType::Appointment {
            let mut masters: Vec<String> = Vec::new();
            for chunk in removed.chunks(MAX_BATCH) {
                let entities = self.read_many(collection, kind, chunk).await?;
                for (id, entity) in chunk.iter().zip(entities) {
                    match entity {
                        Some(entity) => {
                            let id = entity["seriesMasterId"]
                                .as_str()
                                .filter(|m| !m.is_empty())
                                .map_or_else(|| id.clone(), str::to_owned);
                            if !changed.contains(&id) {
                                changed.push(id);
                            }
                        }
                        None => {
                            if let Some(m) = self.occurrences.get(id)
                                && !masters.contains(m)
                            {
                                masters.push(m.clone());
                            }
                            deleted.push(id.clone());
                        }
                    }
                }
            }
            // A series some of whose occurrences left: gone, or changed.
            for m in masters {
                if changed.contains(&m) {
                    continue;
                }
                if self.read(collection, kind, &m).await?.is_some() {
                    changed.push(m);
                } else {
                    deleted.push(m);
                }
            }
        } else {
            deleted = removed;
        }
        let mut reported: HashSet<String> = HashSet::new();
        changed.retain(|id| reported.insert(id.clone()));
        for chunk in changed.chunks(MAX_BATCH) {
            let mut entities = self.read_many(collection, kind, chunk).await?;
            if kind == RecordType::Appointment {
                let mut found: Vec<&mut Value> = entities.iter_mut().flatten().collect();
                self.add_instances(collection, &mut found).await?;
            }
            for (id, entity) in chunk.iter().zip(entities) {
                // Gone between the delta and now: the next delta reports it.
                let Some(entity) = entity else { continue };
                match self.item(kind, entity) {
                    Ok(item) => set.changed.push(item),
                    Err(why) => set.unreadable.push((id.clone(), why)),
                }
            }
        }
        if since.is_some() {
            set.deleted = deleted;
        }
        Ok(set)
    }

    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<RemoteItem>> {
        let kind = kind_of(collection)?;
        self.fetch(collection, kind, id).await
    }

    async fn create(
        &mut self,
        collection: &str,
        kind: RecordType,
        values: &Value,
    ) -> Result<Written> {
        let coll_kind = kind_of(collection)?;
        if coll_kind != kind {
            return Err(protocol(format!(
                "{collection} holds {coll_kind:?} items, not {kind:?}"
            ))
            .with_code("invalid_collection"));
        }
        let uid = values["uid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| protocol("an item to create needs a uid"))?;
        // Made before (a create repeated after a lost answer).
        if let Some(current) = self.find_uid(collection, kind, uid).await? {
            return Ok(Written::Conflict { current });
        }
        let body = itemmap::from_values(kind, values, None)
            .map_err(|e| protocol(e).with_code(crate::items::UNMAPPABLE_VALUES))?;
        if kind == RecordType::Appointment {
            // Refused before anything is written: a new series has no exceptions yet.
            itemmap::exception_writes(values, &without_exceptions(values))
                .map_err(|e| protocol(e).with_code(crate::items::UNMAPPABLE_VALUES))?;
        }
        let path = self.items_path(collection, kind);
        let what = format!("creating an item in {collection}");
        // An event is idempotent by its transactionId; a contact or task is not.
        let idempotent = kind == RecordType::Appointment;
        let resp = self
            .send(
                hyper::Method::POST,
                &path,
                Some(&body),
                &[],
                idempotent,
                &what,
            )
            .await?;
        if !(200..300).contains(&resp.status) {
            return Err(self.client.refusal(&resp, &what));
        }
        let entity = Self::json(&resp, &what)?;
        let id = entity["id"]
            .as_str()
            .ok_or_else(|| protocol(format!("{what}: the answer has no id")))?
            .to_owned();
        let version = entity["@odata.etag"]
            .as_str()
            .or_else(|| entity["changeKey"].as_str())
            .unwrap_or_default()
            .to_owned();
        self.remember(kind, &id, &version, entity, &body, None);
        let version = match self.write_exceptions(collection, &id, values).await? {
            Some(v) if kind == RecordType::Appointment => v,
            _ => version,
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
        let kind = kind_of(collection)?;
        let existing = match self.seen.get(id) {
            Some((v, e)) if v == if_version => e.clone(),
            _ => match self.fetch(collection, kind, id).await? {
                Some(item) if item.version == if_version => self
                    .seen
                    .get(id)
                    .map(|(_, e)| e.clone())
                    .unwrap_or_default(),
                Some(current) => return Ok(Written::Conflict { current }),
                None => return Ok(Written::Gone),
            },
        };
        let body = itemmap::patch_body(kind, values, &existing)
            .map_err(|e| protocol(e).with_code(crate::items::UNMAPPABLE_VALUES))?;
        if kind == RecordType::Appointment {
            // Refused before anything is written, against the exceptions the series has as
            // last read (none once a new pattern is written: Exchange drops them).
            let have = if body.get("recurrence").is_some() || existing.get(INSTANCES).is_none() {
                None
            } else {
                itemmap::to_values(kind, &existing).ok()
            };
            let have = have.unwrap_or_else(|| without_exceptions(values));
            itemmap::exception_writes(values, &have)
                .map_err(|e| protocol(e).with_code(crate::items::UNMAPPABLE_VALUES))?;
        }
        if body.as_object().is_some_and(|b| b.is_empty()) {
            // Nothing to write: the item only has to still be at that version.
            return Ok(match self.fetch(collection, kind, id).await? {
                Some(item) if item.version == if_version => {
                    let version = match self.write_exceptions(collection, id, values).await? {
                        Some(v) => v,
                        None => item.version,
                    };
                    Written::Done {
                        id: id.to_owned(),
                        version,
                    }
                }
                Some(current) => Written::Conflict { current },
                None => Written::Gone,
            });
        }
        let path = self.item_path(collection, kind, id);
        let what = format!("updating the item {id}");
        let resp = self
            .send(
                hyper::Method::PATCH,
                &path,
                Some(&body),
                &[("If-Match", if_version.to_owned())],
                true,
                &what,
            )
            .await?;
        match resp.status {
            200..=299 => {
                let entity = Self::json(&resp, &what)?;
                let version = entity["@odata.etag"]
                    .as_str()
                    .or_else(|| entity["changeKey"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                self.remember(kind, id, &version, entity, &body, Some(&existing));
                let version = match self.write_exceptions(collection, id, values).await? {
                    Some(v) if kind == RecordType::Appointment => v,
                    _ => version,
                };
                Ok(Written::Done {
                    id: id.to_owned(),
                    version,
                })
            }
            412 | 409 => self.conflict_or_gone(collection, kind, id).await,
            404 if self.missing(&resp, &what)? => Ok(Written::Gone),
            _ => Err(self.client.refusal(&resp, &what)),
        }
    }

    async fn delete(&mut self, collection: &str, id: &str, if_version: &str) -> Result<Written> {
        let kind = kind_of(collection)?;
        let path = self.item_path(collection, kind, id);
        let what = format!("deleting the item {id}");
        let resp = self
            .send(
                hyper::Method::DELETE,
                &path,
                None,
                &[("If-Match", if_version.to_owned())],
                true,
                &what,
            )
            .await?;
        match resp.status {
            200..=299 => {
                self.seen.remove(id);
                Ok(Written::Done {
                    id: id.to_owned(),
                    version: String::new(),
                })
            }
            412 | 409 => self.conflict_or_gone(collection, kind, id).await,
            404 if self.missing(&resp, &what)? => Ok(Written::Gone),
            _ => Err(self.client.refusal(&resp, &what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_name_their_kind() {
        assert_eq!(kind_of("calendar").unwrap(), RecordType::Appointment);
        assert_eq!(kind_of("calendars/AAMk=").unwrap(), RecordType::Appointment);
        assert_eq!(kind_of("contacts").unwrap(), RecordType::Contact);
        assert_eq!(kind_of("contactFolders/x").unwrap(), RecordType::Contact);
        assert_eq!(kind_of("todo/lists/x").unwrap(), RecordType::Task);
        assert!(kind_of("mailFolders/inbox").is_err());
        assert!(expand(RecordType::Contact).contains("singleValueExtendedProperties"));
    }
}
