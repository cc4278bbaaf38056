//! Microsoft Graph v1.0 JSON (`event`, `contact`, `todoTask`) ↔ the synchronized values of an
//! appointment, contact or task (`serversync_model::itemvalues`). Pure, no I/O, no clock.
//!
//! - [`to_values`] reads an entity into a JSON object of values (every field present, `null`
//!   or `[]` when the entity has none — except `all_day`, present only when `true`, as in
//!   `itemvalues`). Times become RFC 3339 UTC with second precision: a `dateTimeTimeZone` is
//!   read in its zone, an IANA name, `UTC` or one of the Windows names of [`WINDOWS_ZONES`]
//!   (Graph answers in UTC unless asked otherwise, and keeps the zone the event was written in
//!   as `originalStartTimeZone`, which becomes `time_zone`). A zone it does not know makes the
//!   entity unreadable (an error), never a silently shifted time.
//! - [`from_values`] writes the JSON body of a `POST` or `PATCH`: only the mapped properties.
//!
//! Meta fields: `uid` and `stamp` travel in single-value extended properties ([`UID_PROPERTY`],
//! [`STAMP_PROPERTY`]) on events and contacts; a `todoTask` has none, so they travel in a
//! `linkedResource` of application [`APPLICATION`] (`externalId` = uid, `displayName` =
//! stamp). An event created by serversync also carries `transactionId` = uid (Graph's
//! idempotent create); an event without our property reads its uid from `transactionId`, else
//! `iCalUId`. `categories` is Graph's `categories`; `modified` is `lastModifiedDateTime`.
//!
//! What is not mapped, by kind:
//! - event: `organizer` is read, never written (Graph makes the mailbox the organizer);
//!   `state` `canceled` is read from `isCancelled`, never written (cancelling is Graph's
//!   `cancel` action, which mails the attendees); an `rrule` Graph's `patternedRecurrence` cannot express (`BYSETPOS`, `BYHOUR`, several
//!   `BYMONTHDAY`s, `FREQ=HOURLY`…) cannot be written (an error).
//! - a series' exceptions: Graph keeps them as instances of their own, not in the master. The
//!   caller reads the instances of a series master (`GET events/{id}/instances` over a span)
//!   and puts them into the entity as [`INSTANCES`]; [`to_values`] then reads `exdates` (the
//!   pattern's occurrences in the span that are not listed, [`pattern_starts`]) and
//!   `overrides` (instances of type `exception`: `originalStart` → `recurrence_id`, their
//!   `start`/`end`, and `subject`/`location` where they differ from the master's; an
//!   exception that differs in nothing is not one). Without [`INSTANCES`] both read empty.
//!   Exceptions outside the span are not read; an exception moved out of the span reads as
//!   cancelled. [`exception_writes`] says what to write to the instances so the server holds
//!   the values' exceptions: a cancel (`DELETE` of the occurrence) or a change (`PATCH` of
//!   `start`, `end`, `subject`, `location`). Graph cannot restore a cancelled occurrence, nor
//!   write an occurrence's own `description`: values that ask for either are an error.
//! - contact: at most three `emails` (Graph's `emailAddresses` holds three; the rest are not
//!   written); `phones` read as `businessPhones`, then `mobilePhone`, then `homePhones`; a
//!   write keeps a number in the field it was read from and puts new numbers in
//!   `businessPhones`.
//! - task: To Do has no percentage: `status` `notStarted` reads as 0, `inProgress` as 50,
//!   `completed` as 100 (state `completed`), `deferred` as state `canceled`; a write sends
//!   `completed` for state completed or 100 %, `deferred` for canceled, `inProgress` for
//!   1‥99 %, else `notStarted`.
//!
//! Writing then reading gives back the same values (but `modified`), with the normalizations
//! above and these: emails are lower-cased, attendees sorted, an `rrule` is written back in the
//! order `FREQ;INTERVAL;BYDAY;BYMONTHDAY;BYMONTH;COUNT|UNTIL` without the parts that repeat the
//! start (`INTERVAL=1`, a weekly `BYDAY` of the start's weekday…), an all-day event has no
//! `time_zone`, and a `time_zone` that is not known is written as UTC (and reads back `null`).

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde_json::{Map, Value, json};
use serversync_model::webhook::RecordType;

/// The single-value extended property holding the item's uid (a string property in our own
/// property set).
pub const UID_PROPERTY: &str = "String {3f0c5a8e-9d41-4b6a-a7e2-51c9d2b6e804} Name serversyncUid";
/// The single-value extended property holding the item's stamp (the synchronizing
/// organization).
pub const STAMP_PROPERTY: &str =
    "String {3f0c5a8e-9d41-4b6a-a7e2-51c9d2b6e804} Name serversyncStamp";
/// The `applicationName` of the `linkedResource` that carries a task's uid and stamp.
pub const APPLICATION: &str = "serversync";
/// The key under which a series master's entity carries its instances as read:
/// `{"start": …, "end": …, "value": [instances]}` (the span they were listed over, RFC 3339,
/// and the answer's `value`). An annotation of ours, never sent to Graph.
pub const INSTANCES: &str = "@serversync.instances";

/// Windows time-zone names Graph uses and their IANA zone (CLDR's `windowsZones`, territory
/// `001`), for the zones most mailboxes use. Others are read as an error.
pub const WINDOWS_ZONES: &[(&str, &str)] = &[
    ("UTC", "UTC"),
    ("GMT Standard Time", "Europe/London"),
    ("Greenwich Standard Time", "Atlantic/Reykjavik"),
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("Romance Standard Time", "Europe/Paris"),
    ("Central Europe Standard Time", "Europe/Budapest"),
    ("Central European Standard Time", "Europe/Warsaw"),
    ("E. Europe Standard Time", "Europe/Chisinau"),
    ("FLE Standard Time", "Europe/Kiev"),
    ("GTB Standard Time", "Europe/Bucharest"),
    ("Russian Standard Time", "Europe/Moscow"),
    ("Eastern Standard Time", "America/New_York"),
    ("Central Standard Time", "America/Chicago"),
    ("Mountain Standard Time", "America/Denver"),
    ("US Mountain Standard Time", "America/Phoenix"),
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("Alaskan Standard Time", "America/Anchorage"),
    ("Hawaiian Standard Time", "Pacific/Honolulu"),
    ("Atlantic Standard Time", "America/Halifax"),
    ("E. South America Standard Time", "America/Sao_Paulo"),
    ("India Standard Time", "Asia/Calcutta"),
    ("China Standard Time", "Asia/Shanghai"),
    ("Tokyo Standard Time", "Asia/Tokyo"),
    ("Korea Standard Time", "Asia/Seoul"),
    ("Singapore Standard Time", "Asia/Singapore"),
    ("AUS Eastern Standard Time", "Australia/Sydney"),
    ("New Zealand Standard Time", "Pacific/Auckland"),
    ("South Africa Standard Time", "Africa/Johannesburg"),
    ("Arabian Standard Time", "Asia/Dubai"),
    ("Israel Standard Time", "Asia/Jerusalem"),
    ("Turkey Standard Time", "Europe/Istanbul"),
];

/// The zone a Graph `timeZone` names: IANA, `UTC` (also `tzone://Microsoft/Utc`), or a
/// Windows name of [`WINDOWS_ZONES`].
pub fn zone(name: &str) -> Option<Tz> {
    let n = name.trim();
    if n.eq_ignore_ascii_case("utc") || n.eq_ignore_ascii_case("tzone://Microsoft/Utc") {
        return Some(Tz::UTC);
    }
    if let Ok(tz) = n.parse::<Tz>() {
        return Some(tz);
    }
    WINDOWS_ZONES
        .iter()
        .find(|(w, _)| w.eq_ignore_ascii_case(n))
        .and_then(|(_, iana)| iana.parse::<Tz>().ok())
}

/// The IANA name for a Graph zone name, when it is not UTC.
fn iana_name(name: &str) -> Option<String> {
    let tz = zone(name)?;
    (tz != Tz::UTC).then(|| tz.name().to_owned())
}

fn time(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn text(v: &Value) -> Option<String> {
    v.as_str()
        .map(str::trim_end)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn opt(v: Option<String>) -> Value {
    v.map_or(Value::Null, Value::String)
}

/// A local time in `tz` as UTC: the earlier of an ambiguous time, the offset before a gap.
fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => {
            let shifted = local + chrono::TimeDelta::hours(1);
            match tz.from_local_datetime(&shifted) {
                LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                    t.with_timezone(&Utc) - chrono::TimeDelta::hours(1)
                }
                LocalResult::None => local.and_utc(),
            }
        }
    }
}

/// Graph's `dateTime` (`2026-12-10T09:00:00.0000000`, fractions and a trailing `Z` allowed).
fn parse_local(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim().trim_end_matches('Z');
    NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
        .ok()
}

fn format_local(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S.0000000").to_string()
}

/// A `dateTimeTimeZone` as (local time, zone).
fn read_dttz(v: &Value, field: &str) -> Result<Option<(NaiveDateTime, Tz)>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let raw = v["dateTime"]
        .as_str()
        .ok_or_else(|| format!("{field}: no dateTime"))?;
    let local = parse_local(raw).ok_or_else(|| format!("{field}: {raw:?} is not a dateTime"))?;
    let zname = v["timeZone"].as_str().unwrap_or("UTC");
    let tz = zone(zname).ok_or_else(|| format!("{field}: the time zone {zname:?} is not known"))?;
    Ok(Some((local, tz)))
}

fn parse_values_time(v: &Value, field: &str) -> Result<Option<DateTime<Utc>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 time ({e})")),
        other => Err(format!("{field}: {other} is not a time")),
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The value of the extended property `id` of an entity read with
/// `$expand=singleValueExtendedProperties`.
fn extended(entity: &Value, id: &str) -> Option<String> {
    entity["singleValueExtendedProperties"]
        .as_array()?
        .iter()
        .find(|p| p["id"].as_str().is_some_and(|i| i.eq_ignore_ascii_case(id)))
        .and_then(|p| text(&p["value"]))
}

/// Our `linkedResource` of a task.
fn own_link(entity: &Value) -> Option<&Value> {
    entity["linkedResources"]
        .as_array()?
        .iter()
        .find(|l| l["applicationName"].as_str() == Some(APPLICATION))
}

fn meta(entity: &Value, out: &mut Map<String, Value>, uid: Option<String>, stamp: Option<String>) {
    out.insert("uid".into(), opt(uid));
    out.insert("stamp".into(), opt(stamp));
    out.insert(
        "categories".into(),
        Value::Array(
            strings(&entity["categories"])
                .into_iter()
                .map(Value::String)
                .collect(),
        ),
    );
    let modified = entity["lastModifiedDateTime"]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| time(t.with_timezone(&Utc)));
    out.insert("modified".into(), modified.unwrap_or(Value::Null));
}

/// The values of a Graph entity of `kind` (an `event`, `contact` or `todoTask`).
pub fn to_values(kind: RecordType, entity: &Value) -> Result<Value, String> {
    if !entity.is_object() {
        return Err("not a JSON object".into());
    }
    let mut out = Map::new();
    match kind {
        RecordType::Appointment => event_values(entity, &mut out)?,
        RecordType::Contact => contact_values(entity, &mut out),
        RecordType::Task => task_values(entity, &mut out)?,
        other => return Err(format!("{other:?} items are not synchronized with Graph")),
    }
    Ok(Value::Object(out))
}

fn event_values(e: &Value, out: &mut Map<String, Value>) -> Result<(), String> {
    let all_day = e["isAllDay"].as_bool().unwrap_or(false);
    let (start_local, start_tz) =
        read_dttz(&e["start"], "start")?.ok_or("an event needs a start")?;
    let (end_local, end_tz) = read_dttz(&e["end"], "end")?.ok_or("an event needs an end")?;
    let (start, end) = if all_day {
        (
            start_local.date().and_time(Default::default()).and_utc(),
            end_local.date().and_time(Default::default()).and_utc(),
        )
    } else {
        (
            local_to_utc(start_tz, start_local),
            local_to_utc(end_tz, end_local),
        )
    };
    if end < start {
        return Err("end: the event ends before it starts".into());
    }
    let zone_name = e["originalStartTimeZone"]
        .as_str()
        .or_else(|| e["start"]["timeZone"].as_str())
        .unwrap_or("UTC");
    let time_zone = if all_day {
        None
    } else {
        match iana_name(zone_name) {
            Some(n) => Some(n),
            None if zone(zone_name).is_some() => None,
            None => return Err(format!("the time zone {zone_name:?} is not known")),
        }
    };
    let mut attendees: Vec<String> = e["attendees"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["emailAddress"]["address"].as_str())
        .map(|a| a.trim().to_lowercase())
        .filter(|a| !a.is_empty())
        .collect();
    attendees.sort();
    attendees.dedup();
    let rrule = if e["recurrence"].is_object() {
        Some(recurrence_to_rrule(
            &e["recurrence"],
            start_local,
            start_tz,
            all_day,
        )?)
    } else {
        None
    };
    let uid = extended(e, UID_PROPERTY)
        .or_else(|| text(&e["transactionId"]))
        .or_else(|| text(&e["iCalUId"]));
    meta(e, out, uid, extended(e, STAMP_PROPERTY));
    out.insert("subject".into(), opt(text(&e["subject"])));
    out.insert("location".into(), opt(text(&e["location"]["displayName"])));
    out.insert("description".into(), opt(body_text(&e["body"])));
    out.insert("start".into(), time(start));
    out.insert("end".into(), time(end));
    if all_day {
        out.insert("all_day".into(), json!(true));
    }
    out.insert("time_zone".into(), opt(time_zone));
    out.insert(
        "organizer".into(),
        opt(e["organizer"]["emailAddress"]["address"]
            .as_str()
            .map(|a| a.trim().to_lowercase())
            .filter(|a| !a.is_empty())),
    );
    out.insert("attendees".into(), json!(attendees));
    out.insert(
        "state".into(),
        json!(if e["isCancelled"].as_bool() == Some(true) {
            "canceled"
        } else {
            "open"
        }),
    );
    out.insert("rrule".into(), opt(rrule));
    let (exdates, overrides) = match e.get(INSTANCES) {
        Some(inst) if e["recurrence"].is_object() => series_exceptions(e, inst, start, end)?,
        _ => (Vec::new(), Vec::new()),
    };
    out.insert(
        "exdates".into(),
        Value::Array(exdates.into_iter().map(time).collect()),
    );
    out.insert("overrides".into(), Value::Array(overrides));
    Ok(())
}

/// The zone a series' pattern runs in: the range's `recurrenceTimeZone`, else the zone the
/// event was written in, else its `start`'s.
fn series_zone(e: &Value) -> Tz {
    [
        &e["recurrence"]["range"]["recurrenceTimeZone"],
        &e["originalStartTimeZone"],
        &e["start"]["timeZone"],
    ]
    .into_iter()
    .filter_map(Value::as_str)
    .find_map(zone)
    .unwrap_or(Tz::UTC)
}

/// An instance's `start`/`end` as UTC (an all-day one at midnight UTC, as values keep it).
fn instance_time(v: &Value, field: &str, all_day: bool) -> Result<DateTime<Utc>, String> {
    let (local, tz) = read_dttz(v, field)?.ok_or_else(|| format!("{field}: missing"))?;
    Ok(if all_day {
        local.date().and_time(Default::default()).and_utc()
    } else {
        local_to_utc(tz, local)
    })
}

/// The original start of an instance: its `originalStart`, else (an occurrence) its start.
fn original_start(i: &Value, all_day: bool) -> Result<DateTime<Utc>, String> {
    match i["originalStart"].as_str() {
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("originalStart: {s:?} is not a time ({e})")),
        None => instance_time(&i["start"], "start", all_day),
    }
}

/// The exdates and overrides of series master `e` (starting at `start`, ending at `end`)
/// from its instances as read (`inst`, see [`INSTANCES`]).
fn series_exceptions(
    e: &Value,
    inst: &Value,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(Vec<DateTime<Utc>>, Vec<Value>), String> {
    let span = |k: &str| {
        parse_values_time(&inst[k], &format!("{INSTANCES}.{k}"))?
            .ok_or_else(|| format!("{INSTANCES}.{k}: missing"))
    };
    let (from, to) = (span("start")?, span("end")?);
    let all_day = e["isAllDay"].as_bool().unwrap_or(false);
    let length = end - start;
    let listed = inst["value"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut originals = Vec::new();
    let mut overrides: Vec<(DateTime<Utc>, Value)> = Vec::new();
    let master_subject = text(&e["subject"]);
    let master_location = text(&e["location"]["displayName"]);
    for i in listed {
        let original = original_start(i, all_day)?;
        originals.push(original);
        if i["type"].as_str() != Some("exception") {
            continue;
        }
        let s = instance_time(&i["start"], "start", all_day)?;
        let t = instance_time(&i["end"], "end", all_day)?;
        let subject = text(&i["subject"]).filter(|x| Some(x) != master_subject.as_ref());
        let location =
            text(&i["location"]["displayName"]).filter(|x| Some(x) != master_location.as_ref());
        if s == original && t == original + length && subject.is_none() && location.is_none() {
            continue; // an exception that is the occurrence again
        }
        let mut o = Map::new();
        o.insert("recurrence_id".into(), time(original));
        o.insert("start".into(), time(s));
        o.insert("end".into(), time(t));
        if let Some(x) = subject {
            o.insert("subject".into(), json!(x));
        }
        if let Some(x) = location {
            o.insert("location".into(), json!(x));
        }
        overrides.push((original, Value::Object(o)));
    }
    overrides.sort_by_key(|(t, _)| *t);
    overrides.dedup_by_key(|(t, _)| *t);
    let mut exdates: Vec<DateTime<Utc>> = pattern_starts(e, start, to)?
        .into_iter()
        .filter(|s| *s < to && *s + length > from && !originals.contains(s))
        .collect();
    exdates.sort();
    exdates.dedup();
    Ok((exdates, overrides.into_iter().map(|(_, o)| o).collect()))
}

/// The starts (UTC) of the occurrences of series master `e`'s pattern that begin before
/// `until`, at most 5,000: daily, weekly, absolute and relative monthly and yearly patterns
/// with a numbered, end-date or no-end range, in the series' zone. `start` is the master's
/// start (UTC).
pub fn pattern_starts(
    e: &Value,
    start: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<DateTime<Utc>>, String> {
    let rec = &e["recurrence"];
    let p = &rec["pattern"];
    let r = &rec["range"];
    let all_day = e["isAllDay"].as_bool().unwrap_or(false);
    let tz = series_zone(e);
    let local_start = if all_day {
        start.naive_utc()
    } else {
        start.with_timezone(&tz).naive_local()
    };
    let to_utc = |l: NaiveDateTime| {
        if all_day {
            l.and_utc()
        } else {
            local_to_utc(tz, l)
        }
    };
    let date = |v: &Value| {
        v.as_str()
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let first = date(&r["startDate"]).unwrap_or(local_start.date());
    let interval = i64::try_from(p["interval"].as_u64().unwrap_or(1).max(1)).unwrap_or(1);
    let range = r["type"].as_str().unwrap_or("noEnd");
    let count = (range == "numbered").then(|| r["numberOfOccurrences"].as_u64().unwrap_or(1));
    let end_date = if range == "endDate" {
        Some(date(&r["endDate"]).ok_or("recurrence: the range has no endDate")?)
    } else {
        None
    };
    let days: Vec<Weekday> = strings(&p["daysOfWeek"])
        .iter()
        .filter_map(|d| day_by_graph(d).map(|x| x.1))
        .collect();
    let index = p["index"].as_str().unwrap_or("first");
    let index = INDEXES
        .iter()
        .find(|(_, s)| s.eq_ignore_ascii_case(index))
        .map_or(1, |(n, _)| *n);
    let relative = |d: NaiveDate| {
        days.contains(&d.weekday())
            && if index == -1 {
                (d + chrono::TimeDelta::days(7)).month() != d.month()
            } else {
                i64::from((d.day() - 1) / 7 + 1) == i64::from(index)
            }
    };
    let month_of = p["month"].as_u64().unwrap_or(first.month().into());
    let day_of = p["dayOfMonth"].as_u64().unwrap_or(first.day().into());
    let months = |d: NaiveDate| {
        i64::from((d.year() - first.year()) * 12 + d.month() as i32 - first.month() as i32)
    };
    let week_start = p["firstDayOfWeek"]
        .as_str()
        .and_then(day_by_graph)
        .map_or(Weekday::Sun, |x| x.1);
    let first_week = first
        - chrono::TimeDelta::days(
            ((7 + first.weekday().num_days_from_monday() - week_start.num_days_from_monday()) % 7)
                .into(),
        );
    let kind = p["type"].as_str().unwrap_or("");
    let time = local_start.time();
    let mut out = Vec::new();
    let mut hits = 0u64;
    let mut day = first;
    // At most a hundred years of days.
    for _ in 0..36_600 {
        if out.len() >= 5_000
            || count.is_some_and(|c| hits >= c)
            || end_date.is_some_and(|e| day > e)
            || to_utc(day.and_time(time)) >= until
        {
            break;
        }
        let hit = match kind {
            "daily" => (day - first).num_days() % interval == 0,
            "weekly" => {
                (day - first_week).num_days().div_euclid(7) % interval == 0
                    && days.contains(&day.weekday())
            }
            "absoluteMonthly" => months(day) % interval == 0 && u64::from(day.day()) == day_of,
            "relativeMonthly" => months(day) % interval == 0 && relative(day),
            "absoluteYearly" => {
                months(day) % (12 * interval) == 0
                    && u64::from(day.month()) == month_of
                    && u64::from(day.day()) == day_of
            }
            "relativeYearly" => {
                u64::from(day.month()) == month_of
                    && i64::from(day.year() - first.year()) % interval == 0
                    && relative(day)
            }
            other => return Err(format!("recurrence: the pattern {other:?} is not known")),
        };
        if hit {
            hits += 1;
            out.push(to_utc(day.and_time(time)));
        }
        day += chrono::TimeDelta::days(1);
    }
    Ok(out)
}

/// A write to one instance of a series, by its original start.
#[derive(Debug, Clone, PartialEq)]
pub enum InstanceWrite {
    /// Delete (cancel) the occurrence.
    Cancel(DateTime<Utc>),
    /// `PATCH` the occurrence with this body.
    Change(DateTime<Utc>, Value),
}

impl InstanceWrite {
    /// The original start of the occurrence written.
    pub fn original_start(&self) -> DateTime<Utc> {
        match self {
            InstanceWrite::Cancel(t) | InstanceWrite::Change(t, _) => *t,
        }
    }
}

fn override_key(o: &Value) -> Value {
    let mut k = Map::new();
    for f in [
        "recurrence_id",
        "start",
        "end",
        "subject",
        "location",
        "description",
    ] {
        if let Some(v) = o.get(f).filter(|v| !v.is_null()) {
            k.insert(f.into(), v.clone());
        }
    }
    Value::Object(k)
}

fn values_times(v: &Value, field: &str) -> Result<Vec<DateTime<Utc>>, String> {
    let mut out = Vec::new();
    for t in v[field].as_array().into_iter().flatten() {
        out.extend(parse_values_time(t, field)?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// What to write to the instances of a series so that it holds the exceptions of `values`,
/// given the exceptions it has (`have`: the values read from the server, or empty ones for a
/// series just created or whose pattern is rewritten). An error names what Graph cannot do:
/// restore an occurrence cancelled on the server, or give an occurrence its own description.
pub fn exception_writes(values: &Value, have: &Value) -> Result<Vec<InstanceWrite>, String> {
    if text(&values["rrule"]).is_none() {
        return Ok(Vec::new());
    }
    let want_ex = values_times(values, "exdates")?;
    let have_ex = values_times(have, "exdates")?;
    let restored: Vec<String> = have_ex
        .iter()
        .filter(|t| !want_ex.contains(t))
        .map(|t| time(*t).as_str().unwrap_or_default().to_owned())
        .collect();
    if !restored.is_empty() {
        return Err(format!(
            "exdates: the occurrence(s) of {} cancelled on the server cannot be restored over              Microsoft Graph (a cancelled occurrence cannot be un-cancelled)",
            restored.join(", ")
        ));
    }
    let overrides = |v: &Value| -> Result<Vec<(DateTime<Utc>, Value)>, String> {
        let mut out = Vec::new();
        for o in v["overrides"].as_array().into_iter().flatten() {
            let rid = parse_values_time(&o["recurrence_id"], "overrides.recurrence_id")?
                .ok_or("overrides.recurrence_id: a changed occurrence needs it")?;
            out.push((rid, o.clone()));
        }
        Ok(out)
    };
    let want_ov = overrides(values)?;
    let have_ov = overrides(have)?;
    let all_day = values["all_day"].as_bool().unwrap_or(false);
    let zone_name = text(&values["time_zone"]).filter(|z| zone(z).is_some());
    let tz = zone_name.as_deref().and_then(zone).unwrap_or(Tz::UTC);
    let tz_name = zone_name.unwrap_or_else(|| "UTC".into());
    let at = |t: DateTime<Utc>| {
        let local = if all_day {
            t.date_naive().and_time(Default::default())
        } else {
            t.with_timezone(&tz).naive_local()
        };
        json!({"dateTime": format_local(local), "timeZone": tz_name})
    };
    let start = parse_values_time(&values["start"], "start")?.ok_or("start: an event needs one")?;
    let end = parse_values_time(&values["end"], "end")?.ok_or("end: an event needs one")?;
    let length = end - start;
    let master_subject = text(&values["subject"]).unwrap_or_default();
    let master_location = text(&values["location"]).unwrap_or_default();
    let mut writes = Vec::new();
    for t in &want_ex {
        if !have_ex.contains(t) {
            writes.push(InstanceWrite::Cancel(*t));
        }
    }
    for (rid, o) in &want_ov {
        if want_ex.contains(rid) {
            continue;
        }
        if text(&o["description"]).is_some() {
            return Err(format!(
                "overrides.description: the occurrence of {} has a description of its own,                  which is not written over Microsoft Graph",
                time(*rid).as_str().unwrap_or_default()
            ));
        }
        let same = have_ov
            .iter()
            .any(|(h, ho)| h == rid && override_key(ho) == override_key(o));
        if same {
            continue;
        }
        let s = parse_values_time(&o["start"], "overrides.start")?
            .ok_or("overrides.start: a changed occurrence needs it")?;
        let e = parse_values_time(&o["end"], "overrides.end")?
            .ok_or("overrides.end: a changed occurrence needs it")?;
        writes.push(InstanceWrite::Change(
            *rid,
            json!({
                "start": at(s), "end": at(e),
                "subject": text(&o["subject"]).unwrap_or_else(|| master_subject.clone()),
                "location": {"displayName":
                    text(&o["location"]).unwrap_or_else(|| master_location.clone())},
            }),
        ));
    }
    // An exception the values no longer have: the occurrence as the pattern has it again.
    for (rid, _) in &have_ov {
        if want_ov.iter().any(|(w, _)| w == rid) || want_ex.contains(rid) {
            continue;
        }
        writes.push(InstanceWrite::Change(
            *rid,
            json!({
                "start": at(*rid), "end": at(*rid + length),
                "subject": master_subject, "location": {"displayName": master_location},
            }),
        ));
    }
    Ok(writes)
}

/// An `itemBody`'s text (HTML reduced to its text, in case Graph ignored
/// `Prefer: outlook.body-content-type="text"`).
fn body_text(b: &Value) -> Option<String> {
    let content = b["content"].as_str()?;
    if b["contentType"]
        .as_str()
        .is_some_and(|c| c.eq_ignore_ascii_case("html"))
    {
        let mut out = String::new();
        let mut in_tag = false;
        for c in content.chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => out.push(c),
                _ => {}
            }
        }
        let out = out
            .replace("&nbsp;", " ")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&amp;", "&");
        text(&Value::String(out.trim().to_owned()))
    } else {
        text(&Value::String(content.to_owned()))
    }
}

fn contact_values(c: &Value, out: &mut Map<String, Value>) {
    let name = text(&c["displayName"]).or_else(|| {
        let parts: Vec<String> = ["givenName", "middleName", "surname"]
            .iter()
            .filter_map(|k| text(&c[*k]))
            .collect();
        (!parts.is_empty()).then(|| parts.join(" "))
    });
    let emails: Vec<String> = c["emailAddresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str())
        .map(|a| a.trim().to_lowercase())
        .filter(|a| !a.is_empty())
        .collect();
    let mut phones = strings(&c["businessPhones"]);
    phones.extend(text(&c["mobilePhone"]));
    phones.extend(strings(&c["homePhones"]));
    phones.retain(|p| !p.trim().is_empty());
    meta(
        c,
        out,
        extended(c, UID_PROPERTY),
        extended(c, STAMP_PROPERTY),
    );
    out.insert("full_name".into(), opt(name));
    out.insert("emails".into(), json!(emails));
    out.insert("company".into(), opt(text(&c["companyName"])));
    out.insert("job_title".into(), opt(text(&c["jobTitle"])));
    out.insert("phones".into(), json!(phones));
}

fn task_values(t: &Value, out: &mut Map<String, Value>) -> Result<(), String> {
    let due = read_dttz(&t["dueDateTime"], "dueDateTime")?.map(|(l, tz)| local_to_utc(tz, l));
    let (state, percent) = match t["status"].as_str().unwrap_or("notStarted") {
        "completed" => ("completed", 100),
        "inProgress" => ("open", 50),
        "deferred" => ("canceled", 0),
        "notStarted" | "waitingOnOthers" => ("open", 0),
        other => return Err(format!("status: {other:?} is not a todoTask status")),
    };
    let link = own_link(t);
    meta(
        t,
        out,
        link.and_then(|l| text(&l["externalId"])),
        link.and_then(|l| text(&l["displayName"])),
    );
    out.insert("subject".into(), opt(text(&t["title"])));
    out.insert("description".into(), opt(body_text(&t["body"])));
    out.insert("due".into(), due.map_or(Value::Null, time));
    out.insert("percent_complete".into(), json!(percent));
    out.insert("state".into(), json!(state));
    Ok(())
}

/// The JSON body that writes `values` as an entity of `kind`: a new one (`existing` `None`,
/// for a `POST`) or a change of `existing` (the entity as last read, for a `PATCH`).
pub fn from_values(
    kind: RecordType,
    values: &Value,
    existing: Option<&Value>,
) -> Result<Value, String> {
    if !values.is_object() {
        return Err("values are not a JSON object".into());
    }
    let mut out = Map::new();
    match kind {
        RecordType::Appointment => write_event(values, existing, &mut out)?,
        RecordType::Contact => write_contact(values, existing, &mut out),
        RecordType::Task => write_task(values, existing, &mut out)?,
        other => return Err(format!("{other:?} items are not synchronized with Graph")),
    }
    if let Some(c) = values.get("categories") {
        out.insert(
            "categories".into(),
            Value::Array(strings(c).into_iter().map(Value::String).collect()),
        );
    }
    if kind != RecordType::Task {
        let mut props = Vec::new();
        if existing.is_none()
            && let Some(uid) = text(&values["uid"])
        {
            props.push(json!({"id": UID_PROPERTY, "value": uid}));
        }
        if let Some(stamp) = text(&values["stamp"]) {
            props.push(json!({"id": STAMP_PROPERTY, "value": stamp}));
        }
        if !props.is_empty() {
            out.insert("singleValueExtendedProperties".into(), Value::Array(props));
        }
    }
    Ok(Value::Object(out))
}

/// The Graph properties each group of values is written in (a group is sent when one of
/// its values changed).
fn groups(kind: RecordType) -> &'static [(&'static [&'static str], &'static [&'static str])] {
    match kind {
        RecordType::Appointment => &[
            (&["subject"], &["subject"]),
            (&["body"], &["description"]),
            (&["location"], &["location"]),
            (&["attendees"], &["attendees"]),
            (&["categories"], &["categories"]),
            (&["singleValueExtendedProperties"], &["stamp"]),
            (
                &["start", "end", "isAllDay"],
                &["start", "end", "all_day", "time_zone"],
            ),
            (&["recurrence"], &["rrule", "start", "all_day", "time_zone"]),
        ],
        RecordType::Contact => &[
            (&["displayName", "givenName", "surname"], &["full_name"]),
            (&["emailAddresses"], &["emails"]),
            (&["companyName"], &["company"]),
            (&["jobTitle"], &["job_title"]),
            (
                &["businessPhones", "mobilePhone", "homePhones"],
                &["phones"],
            ),
            (&["categories"], &["categories"]),
            (&["singleValueExtendedProperties"], &["stamp"]),
        ],
        _ => &[
            (&["title"], &["subject"]),
            (&["body"], &["description"]),
            (&["dueDateTime"], &["due"]),
            (&["status"], &["state", "percent_complete"]),
            (&["categories"], &["categories"]),
        ],
    }
}

/// The body of a `PATCH` that writes `values` over `existing` (the entity as last read): only
/// the properties whose values changed, so an unchanged meeting's attendees are not sent an
/// update and what another client changed meanwhile in other properties is not rewritten.
/// Everything when `existing` cannot be read.
pub fn patch_body(kind: RecordType, values: &Value, existing: &Value) -> Result<Value, String> {
    let mut full = from_values(kind, values, Some(existing))?;
    let (Ok(old), Ok(new)) = (to_values(kind, existing), to_values(kind, &full)) else {
        return Ok(full);
    };
    let same = |fields: &[&str]| fields.iter().all(|f| old[*f] == new[*f]);
    if let Some(map) = full.as_object_mut() {
        for (props, fields) in groups(kind) {
            if same(fields) {
                for p in *props {
                    map.remove(*p);
                }
            }
        }
    }
    Ok(full)
}

fn write_event(
    v: &Value,
    existing: Option<&Value>,
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    let start = parse_values_time(&v["start"], "start")?.ok_or("start: an event needs one")?;
    let end = parse_values_time(&v["end"], "end")?.ok_or("end: an event needs one")?;
    if end < start {
        return Err("end: the appointment ends before it starts".into());
    }
    let all_day = v["all_day"].as_bool().unwrap_or(false);
    let zone_name = text(&v["time_zone"]).filter(|z| zone(z).is_some());
    let tz = zone_name.as_deref().and_then(zone).unwrap_or(Tz::UTC);
    let tz_name = zone_name.clone().unwrap_or_else(|| "UTC".into());
    let (start_local, end_local) = if all_day {
        (
            start.date_naive().and_time(Default::default()),
            end.date_naive().and_time(Default::default()),
        )
    } else {
        (
            start.with_timezone(&tz).naive_local(),
            end.with_timezone(&tz).naive_local(),
        )
    };
    out.insert(
        "subject".into(),
        json!(text(&v["subject"]).unwrap_or_default()),
    );
    out.insert(
        "body".into(),
        json!({"contentType": "text", "content": text(&v["description"]).unwrap_or_default()}),
    );
    out.insert(
        "start".into(),
        json!({"dateTime": format_local(start_local), "timeZone": tz_name}),
    );
    out.insert(
        "end".into(),
        json!({"dateTime": format_local(end_local), "timeZone": tz_name}),
    );
    out.insert("isAllDay".into(), json!(all_day));
    out.insert(
        "location".into(),
        json!({"displayName": text(&v["location"]).unwrap_or_default()}),
    );
    let attendees: Vec<Value> = strings(&v["attendees"])
        .into_iter()
        .map(|a| json!({"emailAddress": {"address": a}, "type": "required"}))
        .collect();
    out.insert("attendees".into(), Value::Array(attendees));
    match text(&v["rrule"]) {
        Some(rule) => {
            out.insert(
                "recurrence".into(),
                rrule_to_recurrence(&rule, start_local, tz, &tz_name, all_day)?,
            );
        }
        None if existing.is_some_and(|e| e["recurrence"].is_object()) => {
            out.insert("recurrence".into(), Value::Null);
        }
        None => {}
    }
    if existing.is_none()
        && let Some(uid) = text(&v["uid"])
    {
        out.insert("transactionId".into(), json!(uid));
    }
    Ok(())
}

fn write_contact(v: &Value, existing: Option<&Value>, out: &mut Map<String, Value>) {
    let name = text(&v["full_name"]);
    let (given, surname) = match name.as_deref().map(str::trim) {
        Some(n) => match n.rsplit_once(' ') {
            Some((g, s)) => (Some(g.trim().to_owned()), Some(s.to_owned())),
            None => (Some(n.to_owned()), None),
        },
        None => (None, None),
    };
    out.insert("displayName".into(), opt(name.clone()));
    out.insert("givenName".into(), opt(given));
    out.insert("surname".into(), opt(surname));
    let emails: Vec<Value> = strings(&v["emails"])
        .into_iter()
        .take(3)
        .map(|a| json!({"address": a, "name": name.clone().unwrap_or_else(|| a.clone())}))
        .collect();
    out.insert("emailAddresses".into(), Value::Array(emails));
    out.insert("companyName".into(), opt(text(&v["company"])));
    out.insert("jobTitle".into(), opt(text(&v["job_title"])));
    let phones = strings(&v["phones"]);
    let old_mobile = existing.and_then(|e| text(&e["mobilePhone"]));
    let old_home = existing
        .map(|e| strings(&e["homePhones"]))
        .unwrap_or_default();
    let mut business = Vec::new();
    let mut home = Vec::new();
    let mut mobile = None;
    for p in phones {
        if mobile.is_none() && old_mobile.as_deref() == Some(p.as_str()) {
            mobile = Some(p);
        } else if old_home.contains(&p) {
            home.push(p);
        } else {
            business.push(p);
        }
    }
    out.insert("businessPhones".into(), json!(business));
    out.insert("mobilePhone".into(), opt(mobile));
    out.insert("homePhones".into(), json!(home));
}

fn write_task(
    v: &Value,
    existing: Option<&Value>,
    out: &mut Map<String, Value>,
) -> Result<(), String> {
    out.insert(
        "title".into(),
        json!(text(&v["subject"]).unwrap_or_default()),
    );
    out.insert(
        "body".into(),
        json!({"contentType": "text", "content": text(&v["description"]).unwrap_or_default()}),
    );
    let due = parse_values_time(&v["due"], "due")?;
    out.insert(
        "dueDateTime".into(),
        due.map_or(
            Value::Null,
            |d| json!({"dateTime": format_local(d.naive_utc()), "timeZone": "UTC"}),
        ),
    );
    let percent = v["percent_complete"].as_u64().unwrap_or(0);
    if percent > 100 {
        return Err(format!("percent_complete: {percent} is not 0 to 100"));
    }
    let status = match v["state"].as_str() {
        Some("completed") => "completed",
        Some("canceled") => "deferred",
        _ if percent >= 100 => "completed",
        _ if percent > 0 => "inProgress",
        _ => "notStarted",
    };
    out.insert("status".into(), json!(status));
    if existing.is_none()
        && let Some(uid) = text(&v["uid"])
    {
        let mut link = json!({"applicationName": APPLICATION, "externalId": uid});
        link["displayName"] = json!(text(&v["stamp"]).unwrap_or_else(|| APPLICATION.to_owned()));
        out.insert("linkedResources".into(), json!([link]));
    }
    Ok(())
}

const DAYS: [(&str, &str, Weekday); 7] = [
    ("MO", "monday", Weekday::Mon),
    ("TU", "tuesday", Weekday::Tue),
    ("WE", "wednesday", Weekday::Wed),
    ("TH", "thursday", Weekday::Thu),
    ("FR", "friday", Weekday::Fri),
    ("SA", "saturday", Weekday::Sat),
    ("SU", "sunday", Weekday::Sun),
];

const INDEXES: [(i32, &str); 5] = [
    (1, "first"),
    (2, "second"),
    (3, "third"),
    (4, "fourth"),
    (-1, "last"),
];

fn day_by_ical(s: &str) -> Option<(&'static str, Weekday)> {
    DAYS.iter()
        .find(|(i, _, _)| i.eq_ignore_ascii_case(s))
        .map(|(_, g, w)| (*g, *w))
}

fn day_by_graph(s: &str) -> Option<(&'static str, Weekday)> {
    DAYS.iter()
        .find(|(_, g, _)| g.eq_ignore_ascii_case(s))
        .map(|(i, _, w)| (*i, *w))
}

fn ical_day(w: Weekday) -> &'static str {
    DAYS.iter().find(|d| d.2 == w).map_or("MO", |d| d.0)
}

fn graph_day(w: Weekday) -> &'static str {
    DAYS.iter().find(|d| d.2 == w).map_or("monday", |d| d.1)
}

/// An RFC 5545 `RRULE` as Graph's `patternedRecurrence` (see the module documentation for
/// what cannot be expressed).
pub fn rrule_to_recurrence(
    rule: &str,
    start_local: NaiveDateTime,
    tz: Tz,
    tz_name: &str,
    all_day: bool,
) -> Result<Value, String> {
    let mut freq = None;
    let mut interval = 1u32;
    let mut by_day: Vec<(i32, Weekday)> = Vec::new();
    let mut by_month_day = None;
    let mut by_month = None;
    let mut count = None;
    let mut until = None;
    let bad = |part: &str| format!("rrule: {part} cannot be expressed in Graph's recurrence");
    for part in rule.trim().trim_start_matches("RRULE:").split(';') {
        let Some((k, v)) = part.split_once('=') else {
            if part.trim().is_empty() {
                continue;
            }
            return Err(bad(part));
        };
        match k.trim().to_ascii_uppercase().as_str() {
            "FREQ" => freq = Some(v.trim().to_ascii_uppercase()),
            "INTERVAL" => interval = v.trim().parse().map_err(|_| bad(part))?,
            "BYDAY" => {
                for d in v.split(',') {
                    let d = d.trim();
                    let split = d.len().saturating_sub(2);
                    let (n, name) = d.split_at(split);
                    let n: i32 = if n.is_empty() {
                        0
                    } else {
                        n.trim_start_matches('+').parse().map_err(|_| bad(part))?
                    };
                    let (_, w) = day_by_ical(name).ok_or_else(|| bad(part))?;
                    by_day.push((n, w));
                }
            }
            "BYMONTHDAY" => by_month_day = Some(v.trim().parse::<u32>().map_err(|_| bad(part))?),
            "BYMONTH" => by_month = Some(v.trim().parse::<u32>().map_err(|_| bad(part))?),
            "COUNT" => count = Some(v.trim().parse::<u32>().map_err(|_| bad(part))?),
            "UNTIL" => until = Some(v.trim().to_owned()),
            "WKST" => {}
            _ => return Err(bad(part)),
        }
    }
    if interval == 0 {
        return Err(bad("INTERVAL=0"));
    }
    let day = |w: &Weekday| graph_day(*w);
    let start_date = start_local.date();
    let ordinal = |n: i32| {
        INDEXES
            .iter()
            .find(|(i, _)| *i == n)
            .map(|(_, s)| *s)
            .ok_or_else(|| bad(&format!("BYDAY ordinal {n}")))
    };
    let pattern = match freq.as_deref() {
        Some("DAILY") if by_day.is_empty() && by_month_day.is_none() && by_month.is_none() => {
            json!({"type": "daily", "interval": interval})
        }
        Some("WEEKLY") if by_month_day.is_none() && by_month.is_none() => {
            if by_day.iter().any(|(n, _)| *n != 0) {
                return Err(bad("BYDAY with an ordinal in a weekly rule"));
            }
            let days: Vec<&str> = if by_day.is_empty() {
                vec![day(&start_date.weekday())]
            } else {
                by_day.iter().map(|(_, w)| day(w)).collect()
            };
            json!({"type": "weekly", "interval": interval, "daysOfWeek": days, "firstDayOfWeek": "monday"})
        }
        Some("MONTHLY") if by_month.is_none() => match (by_day.as_slice(), by_month_day) {
            ([], d) => json!({"type": "absoluteMonthly", "interval": interval,
                "dayOfMonth": d.unwrap_or(start_date.day())}),
            ([(n, w)], None) if *n != 0 => json!({"type": "relativeMonthly", "interval": interval,
                "daysOfWeek": [day(w)], "index": ordinal(*n)?}),
            _ => return Err(bad("this monthly rule")),
        },
        Some("YEARLY") => {
            let month = by_month.unwrap_or(start_date.month());
            match (by_day.as_slice(), by_month_day) {
                ([], d) => json!({"type": "absoluteYearly", "interval": interval,
                    "month": month, "dayOfMonth": d.unwrap_or(start_date.day())}),
                ([(n, w)], None) if *n != 0 => json!({"type": "relativeYearly",
                    "interval": interval, "month": month, "daysOfWeek": [day(w)],
                    "index": ordinal(*n)?}),
                _ => return Err(bad("this yearly rule")),
            }
        }
        _ => return Err(bad(&format!("FREQ={}", freq.as_deref().unwrap_or("")))),
    };
    let start = start_date.format("%Y-%m-%d").to_string();
    let range = match (count, until) {
        (Some(_), Some(_)) => return Err(bad("COUNT with UNTIL")),
        (Some(n), None) => json!({"type": "numbered", "numberOfOccurrences": n,
            "startDate": start, "recurrenceTimeZone": tz_name}),
        (None, Some(u)) => {
            let date = until_date(&u, tz, all_day).ok_or_else(|| bad(&format!("UNTIL={u}")))?;
            json!({"type": "endDate", "endDate": date.format("%Y-%m-%d").to_string(),
                "startDate": start, "recurrenceTimeZone": tz_name})
        }
        (None, None) => {
            json!({"type": "noEnd", "startDate": start, "recurrenceTimeZone": tz_name})
        }
    };
    Ok(json!({"pattern": pattern, "range": range}))
}

/// The local date of an `UNTIL` (a date, or a UTC date-time read in the event's zone).
fn until_date(u: &str, tz: Tz, _all_day: bool) -> Option<NaiveDate> {
    if u.len() == 8 {
        return NaiveDate::parse_from_str(u, "%Y%m%d").ok();
    }
    let t = NaiveDateTime::parse_from_str(u.trim_end_matches('Z'), "%Y%m%dT%H%M%S").ok()?;
    if u.ends_with('Z') {
        Some(t.and_utc().with_timezone(&tz).date_naive())
    } else {
        Some(t.date())
    }
}

/// Graph's `patternedRecurrence` as an RFC 5545 `RRULE` value (the normalized form of the
/// module documentation).
pub fn recurrence_to_rrule(
    r: &Value,
    start_local: NaiveDateTime,
    tz: Tz,
    all_day: bool,
) -> Result<String, String> {
    let p = &r["pattern"];
    let interval = p["interval"].as_u64().unwrap_or(1).max(1);
    let start_date = start_local.date();
    let mut parts: Vec<String> = Vec::new();
    let days = || -> Result<Vec<Weekday>, String> {
        strings(&p["daysOfWeek"])
            .iter()
            .map(|d| {
                day_by_graph(d)
                    .map(|x| x.1)
                    .ok_or_else(|| format!("recurrence: {d:?} is not a day of the week"))
            })
            .collect()
    };
    let index = || -> Result<i32, String> {
        let i = p["index"].as_str().unwrap_or("first");
        INDEXES
            .iter()
            .find(|(_, s)| s.eq_ignore_ascii_case(i))
            .map(|(n, _)| *n)
            .ok_or_else(|| format!("recurrence: {i:?} is not an index"))
    };
    let kind = p["type"].as_str().unwrap_or("");
    let freq = match kind {
        "daily" => "DAILY",
        "weekly" => "WEEKLY",
        "absoluteMonthly" | "relativeMonthly" => "MONTHLY",
        "absoluteYearly" | "relativeYearly" => "YEARLY",
        other => return Err(format!("recurrence: the pattern {other:?} is not known")),
    };
    parts.push(format!("FREQ={freq}"));
    if interval != 1 {
        parts.push(format!("INTERVAL={interval}"));
    }
    match kind {
        "weekly" => {
            let d = days()?;
            if d != [start_date.weekday()] {
                let list: Vec<&str> = d.iter().map(|w| ical_day(*w)).collect();
                parts.push(format!("BYDAY={}", list.join(",")));
            }
        }
        "relativeMonthly" | "relativeYearly" => {
            let d = days()?;
            let [w] = d.as_slice() else {
                return Err("recurrence: a relative pattern with several days".into());
            };
            parts.push(format!("BYDAY={}{}", index()?, ical_day(*w)));
        }
        _ => {}
    }
    if matches!(kind, "absoluteMonthly" | "absoluteYearly") {
        let d = p["dayOfMonth"].as_u64().unwrap_or(start_date.day().into());
        if d != u64::from(start_date.day()) {
            parts.push(format!("BYMONTHDAY={d}"));
        }
    }
    if matches!(kind, "absoluteYearly" | "relativeYearly") {
        let m = p["month"].as_u64().unwrap_or(start_date.month().into());
        if m != u64::from(start_date.month()) || kind == "relativeYearly" {
            parts.push(format!("BYMONTH={m}"));
        }
    }
    let range = &r["range"];
    match range["type"].as_str().unwrap_or("noEnd") {
        "numbered" => parts.push(format!(
            "COUNT={}",
            range["numberOfOccurrences"].as_u64().unwrap_or(1)
        )),
        "endDate" => {
            let raw = range["endDate"].as_str().unwrap_or("");
            let d = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
                .map_err(|_| format!("recurrence: endDate {raw:?} is not a date"))?;
            if all_day {
                parts.push(format!("UNTIL={}", d.format("%Y%m%d")));
            } else {
                let last = local_to_utc(tz, d.and_time(start_local.time()));
                parts.push(format!("UNTIL={}", last.format("%Y%m%dT%H%M%SZ")));
            }
        }
        "noEnd" => {}
        other => return Err(format!("recurrence: the range {other:?} is not known")),
    }
    Ok(parts.join(";"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Value {
        json!({
            "uid": "u-1", "stamp": "Contoso", "categories": ["Tracked to Contoso"],
            "subject": "Review", "location": "Room 1", "description": "Agenda",
            "start": "2026-12-10T08:00:00Z", "end": "2026-12-10T09:00:00Z",
            "time_zone": "Europe/Berlin", "attendees": ["ann@example.com", "bob@example.com"],
            "rrule": "FREQ=WEEKLY;COUNT=4",
        })
    }

    /// What Graph would answer after storing `body`.
    fn served(mut body: Value) -> Value {
        body["lastModifiedDateTime"] = json!("2026-12-01T10:00:00.1234567Z");
        body["organizer"] = json!({"emailAddress": {"address": "Alice@Contoso.test"}});
        body
    }

    #[test]
    fn events_round_trip_with_zone_and_recurrence() {
        let v = event();
        let body = from_values(RecordType::Appointment, &v, None).unwrap();
        assert_eq!(body["start"]["dateTime"], "2026-12-10T09:00:00.0000000");
        assert_eq!(body["start"]["timeZone"], "Europe/Berlin");
        assert_eq!(body["transactionId"], "u-1");
        assert_eq!(
            body["recurrence"]["pattern"]["daysOfWeek"],
            json!(["thursday"])
        );
        assert_eq!(body["recurrence"]["range"]["numberOfOccurrences"], 4);
        let back = to_values(RecordType::Appointment, &served(body)).unwrap();
        for k in [
            "uid",
            "stamp",
            "categories",
            "subject",
            "location",
            "description",
            "start",
            "end",
            "time_zone",
            "attendees",
            "rrule",
        ] {
            assert_eq!(back[k], v[k], "{k}");
        }
        assert_eq!(back["organizer"], "alice@contoso.test");
        assert_eq!(back["modified"], "2026-12-01T10:00:00Z");
        assert_eq!(back["state"], "open");
    }

    #[test]
    fn graph_answers_in_utc_and_windows_zones_are_read() {
        let e = json!({
            "subject": "x", "isAllDay": false,
            "start": {"dateTime": "2026-07-01T08:00:00.0000000", "timeZone": "UTC"},
            "end": {"dateTime": "2026-07-01T09:00:00.0000000", "timeZone": "UTC"},
            "originalStartTimeZone": "W. Europe Standard Time",
        });
        let v = to_values(RecordType::Appointment, &e).unwrap();
        assert_eq!(v["start"], "2026-07-01T08:00:00Z");
        assert_eq!(v["time_zone"], "Europe/Berlin");
        let mut bad = e.clone();
        bad["start"]["timeZone"] = json!("Mars Standard Time");
        assert!(
            to_values(RecordType::Appointment, &bad)
                .unwrap_err()
                .contains("Mars")
        );
    }

    #[test]
    fn rrules_normalize_and_refuse_what_graph_cannot_say() {
        let start = NaiveDate::from_ymd_opt(2026, 12, 10)
            .unwrap()
            .and_hms_opt(9, 0, 0)
            .unwrap();
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        for rule in [
            "FREQ=DAILY;INTERVAL=2;COUNT=5",
            "FREQ=WEEKLY;BYDAY=MO,TH",
            "FREQ=MONTHLY;BYDAY=-1FR;COUNT=3",
            "FREQ=MONTHLY;BYMONTHDAY=15",
            "FREQ=YEARLY;UNTIL=20301210T080000Z",
        ] {
            let r = rrule_to_recurrence(rule, start, tz, "Europe/Berlin", false).unwrap();
            assert_eq!(recurrence_to_rrule(&r, start, tz, false).unwrap(), rule);
        }
        assert!(rrule_to_recurrence("FREQ=HOURLY", start, tz, "x", false).is_err());
        assert!(rrule_to_recurrence("FREQ=MONTHLY;BYSETPOS=2", start, tz, "x", false).is_err());
    }

    #[test]
    fn a_patch_sends_only_what_changed() {
        let v = event();
        let stored = served(from_values(RecordType::Appointment, &v, None).unwrap());
        let same = patch_body(RecordType::Appointment, &v, &stored).unwrap();
        assert_eq!(same, json!({}), "nothing changed, nothing sent");
        let mut moved = v.clone();
        moved["subject"] = json!("Review (moved)");
        moved["start"] = json!("2026-12-10T10:00:00Z");
        moved["end"] = json!("2026-12-10T11:00:00Z");
        let p = patch_body(RecordType::Appointment, &moved, &stored).unwrap();
        let mut keys: Vec<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["end", "isAllDay", "recurrence", "start", "subject"],
            "attendees are not sent again"
        );
    }

    #[test]
    fn contacts_and_tasks_round_trip() {
        let c = json!({"uid": "c-1", "stamp": "Contoso", "categories": [],
            "full_name": "Ann Marie Lee", "emails": ["ann@example.com"], "company": "Fabrikam",
            "job_title": "Buyer", "phones": ["+1 555 0100", "+1 555 0199"]});
        let body = from_values(RecordType::Contact, &c, None).unwrap();
        assert_eq!(body["givenName"], "Ann Marie");
        assert_eq!(body["surname"], "Lee");
        let back = to_values(RecordType::Contact, &served(body.clone())).unwrap();
        for k in [
            "uid",
            "stamp",
            "full_name",
            "emails",
            "company",
            "job_title",
            "phones",
        ] {
            assert_eq!(back[k], c[k], "{k}");
        }
        // A number read from mobilePhone stays there.
        let mut read = body;
        read["mobilePhone"] = json!("+1 555 0199");
        read["businessPhones"] = json!(["+1 555 0100"]);
        let again = from_values(RecordType::Contact, &c, Some(&read)).unwrap();
        assert_eq!(again["mobilePhone"], "+1 555 0199");
        assert_eq!(again["businessPhones"], json!(["+1 555 0100"]));
        assert!(
            again.get("singleValueExtendedProperties").is_some(),
            "stamp"
        );

        for (state, pct, status) in [
            ("open", 0, "notStarted"),
            ("open", 50, "inProgress"),
            ("completed", 100, "completed"),
            ("canceled", 0, "deferred"),
        ] {
            let t = json!({"uid": "t-1", "stamp": "Contoso", "subject": "Call",
                "description": "about it", "due": "2026-12-10T17:00:00Z",
                "percent_complete": pct, "state": state});
            let body = from_values(RecordType::Task, &t, None).unwrap();
            assert_eq!(body["status"], status);
            let back = to_values(RecordType::Task, &served(body)).unwrap();
            for k in [
                "uid",
                "stamp",
                "subject",
                "description",
                "due",
                "percent_complete",
                "state",
            ] {
                assert_eq!(back[k], t[k], "{k} {state}");
            }
        }
    }
}
