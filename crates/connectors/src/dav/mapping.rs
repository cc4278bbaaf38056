//! A CalDAV calendar object (iCalendar `VEVENT`/`VTODO`) or a CardDAV vCard ↔ the synchronized
//! values of an appointment, task or contact (`serversync_model::itemvalues`). Pure, no I/O
//! (only [`from_values`] reads the clock, for `DTSTAMP`/`COMPLETED`).
//!
//! - [`to_values`] reads a text into a JSON object of values (every field present, `null` or
//!   `[]` when the text has none — except `all_day`, present only when `true`, as in
//!   `itemvalues`). Times are RFC 3339 UTC with second precision; `TZID` local times are
//!   converted with the IANA database (chrono-tz), or with the object's own `VTIMEZONE` when
//!   the name is not an IANA one (Outlook's `W. Europe Standard Time`); floating times are
//!   read as UTC.
//! - [`from_values`] writes values back: into the server's current text when updating, so
//!   what is not mapped (alarms, `X-` properties, parameters such as `PARTSTAT`, a vCard's
//!   groups and version) is kept and only the mapped properties change (removed when their
//!   value is `null` or absent); or into a new object (`VERSION:2.0`, [`PRODID`], `DTSTAMP`;
//!   a vCard 4.0).
//!
//! Besides the fields of `itemvalues`, the meta fields: `uid` (UID), `categories` (every
//! CATEGORIES), `stamp` ([`STAMP_PROPERTY`]) and `modified` (LAST-MODIFIED, a vCard's REV;
//! a write sets it to now).
//!
//! Writing then reading gives back the same values (but `modified`), with these
//! normalizations: emails are
//! lower-cased, an override's `subject`/`location`/`description` equal to the series' reads
//! as absent (an override inherits them), an all-day event has no `time_zone`, and a
//! `time_zone` chrono-tz does not know is written as UTC (and reads back as `null`).
//!
//! Bounds: the text is parsed by [`vobject::parse`] (4 MiB, nesting 8, 50,000 lines); every
//! date computation is checked, so a hostile text gives an error, never a panic.

use super::vobject::{
    self, Component, Property, VobjectError, escape_text, split_raw, unescape_text,
};
use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset, SecondsFormat,
    TimeDelta, TimeZone, Utc, Weekday,
};
use chrono_tz::{OffsetComponents, OffsetName, Tz};
use serde_json::{Map, Value, json};
use serversync_model::webhook::RecordType;
use std::collections::{HashMap, HashSet};

/// The `PRODID` of the calendar objects and vCards serversync creates.
pub const PRODID: &str = "-//serversync//serversync//EN";
/// The property that carries the `stamp` value (the organization that synchronizes an item).
pub const STAMP_PROPERTY: &str = "X-SERVERSYNC-ORG";

/// Why a text cannot be read as values, or values cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    /// Not a well-formed iCalendar or vCard text.
    #[error("unreadable iCalendar/vCard text: {0}")]
    Syntax(#[from] VobjectError),
    /// Well-formed, but not what the record type needs (`the calendar object has no VEVENT`,
    /// `DTSTART 20261301 is not a date`).
    #[error("{0}")]
    Content(String),
    /// The values cannot be written (`start: "tomorrow" is not an RFC 3339 time`).
    #[error("values: {0}")]
    Values(String),
    #[error("{0:?} records are not synchronized with CalDAV or CardDAV")]
    Unsupported(RecordType),
}

fn content(what: impl Into<String>) -> MappingError {
    MappingError::Content(what.into())
}

fn bad(what: impl Into<String>) -> MappingError {
    MappingError::Values(what.into())
}

/// The values of an appointment (`VEVENT`), task (`VTODO`) or contact (`VCARD`) text.
pub fn to_values(kind: RecordType, text: &str) -> Result<Value, MappingError> {
    let tree = vobject::parse(text)?;
    let values = match kind {
        RecordType::Appointment => appointment_values(root(&tree, "VCALENDAR")?)?,
        RecordType::Task => task_values(root(&tree, "VCALENDAR")?)?,
        RecordType::Contact => contact_values(root(&tree, "VCARD")?),
        other => return Err(MappingError::Unsupported(other)),
    };
    Ok(Value::Object(values))
}

/// `values` written as a calendar object or vCard.
///
/// `existing`: the server's current text when updating (its unmapped properties, components
/// such as VALARM, and parameters are kept; mapped properties whose value is null/absent are
/// removed); None when creating. `values` must contain `uid` when creating (error otherwise).
pub fn from_values(
    kind: RecordType,
    values: &Value,
    existing: Option<&str>,
) -> Result<String, MappingError> {
    let v = In(values
        .as_object()
        .ok_or_else(|| bad(format!("{} is not an object", shorten(values))))?);
    let tree = match kind {
        RecordType::Appointment => write_appointment(&v, existing)?,
        RecordType::Task => write_task(&v, existing)?,
        RecordType::Contact => write_contact(&v, existing)?,
        other => return Err(MappingError::Unsupported(other)),
    };
    Ok(tree.iter().map(Component::to_text).collect())
}

fn shorten(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

fn root<'a>(tree: &'a [Component], name: &str) -> Result<&'a Component, MappingError> {
    tree.iter()
        .find(|c| c.name == name)
        .ok_or_else(|| content(format!("the text has no {name}")))
}

// ---------------------------------------------------------------------------------------------
// Reading

/// A property's TEXT value, `None` when absent or empty.
fn text_of(c: &Component, name: &str) -> Option<String> {
    c.prop(name).map(Property::text).filter(|s| !s.is_empty())
}

/// The lower-cased address of a CAL-ADDRESS (`mailto:` stripped) or an EMAIL.
fn address(raw: &str) -> Option<String> {
    let s = raw.trim();
    let s = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("mailto:") => &s[7..],
        _ => s,
    };
    let s = s.trim().to_lowercase();
    (!s.is_empty()).then_some(s)
}

fn categories_of(c: &Component) -> Vec<String> {
    c.props("CATEGORIES")
        .flat_map(|p| split_raw(&p.value, ','))
        .map(|raw| unescape_text(raw).trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The property that says when a component last changed: `LAST-MODIFIED`, a vCard's `REV`.
fn modified_property(c: &Component) -> &'static str {
    if c.name == "VCARD" {
        "REV"
    } else {
        "LAST-MODIFIED"
    }
}

/// `uid`, `categories`, `stamp`, `modified` (null when absent or unreadable).
fn meta(c: &Component, out: &mut Map<String, Value>) {
    out.insert("uid".into(), json!(text_of(c, "UID")));
    out.insert("categories".into(), json!(categories_of(c)));
    out.insert("stamp".into(), json!(text_of(c, STAMP_PROPERTY)));
    let modified = c
        .prop(modified_property(c))
        .and_then(|p| read_when(p, c).ok())
        .map(|w| time(w.utc));
    out.insert("modified".into(), json!(modified));
}

fn time(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// A DATE or DATE-TIME value read.
#[derive(Debug, Clone, Copy)]
struct When {
    utc: DateTime<Utc>,
    /// A DATE (all day).
    date: bool,
    /// The IANA zone of its TZID, when chrono-tz knows it.
    zone: Option<Tz>,
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// `YYYYMMDD`.
fn parse_date(v: &str) -> Option<NaiveDate> {
    if v.len() != 8 || !v.is_ascii() {
        return None;
    }
    NaiveDate::from_ymd_opt(digits(&v[..4])? as i32, digits(&v[4..6])?, digits(&v[6..])?)
}

/// `YYYYMMDDTHHMMSS` with an optional `Z` (true when present).
fn parse_date_time(v: &str) -> Option<(NaiveDateTime, bool)> {
    let (v, utc) = match v.strip_suffix(['Z', 'z']) {
        Some(v) => (v, true),
        None => (v, false),
    };
    if v.len() != 15 || !v.is_ascii() || !v[8..9].eq_ignore_ascii_case("T") {
        return None;
    }
    let date = parse_date(&v[..8])?;
    // A leap second (60) is read as :59.
    let second = digits(&v[13..])?.min(59);
    let t = NaiveTime::from_hms_opt(digits(&v[9..11])?, digits(&v[11..13])?, second)?;
    Some((date.and_time(t), utc))
}

fn midnight(d: NaiveDate) -> DateTime<Utc> {
    d.and_time(NaiveTime::MIN).and_utc()
}

fn read_when(p: &Property, cal: &Component) -> Result<When, MappingError> {
    read_when_value(p, &p.value, cal)
}

/// One DATE or DATE-TIME value of `p` (EXDATE values are lists).
fn read_when_value(p: &Property, raw: &str, cal: &Component) -> Result<When, MappingError> {
    // Some writers put ISO 8601 separators in: 2026-12-10T10:00:00.
    let v: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let as_date = p
        .param("VALUE")
        .is_some_and(|t| t.eq_ignore_ascii_case("DATE"))
        || v.len() == 8;
    if as_date {
        let d = parse_date(&v)
            .ok_or_else(|| content(format!("{} {} is not a date", p.name, raw.trim())))?;
        return Ok(When {
            utc: midnight(d),
            date: true,
            zone: None,
        });
    }
    let (local, utc) = parse_date_time(&v)
        .ok_or_else(|| content(format!("{} {} is not a date-time", p.name, raw.trim())))?;
    let zone_id = p.param("TZID").filter(|_| !utc);
    let Some(id) = zone_id else {
        // UTC, or floating (read as UTC).
        return Ok(When {
            utc: local.and_utc(),
            date: false,
            zone: None,
        });
    };
    if let Some(tz) = known_zone(id) {
        return Ok(When {
            utc: local_to_utc(tz, local),
            date: false,
            zone: Some(tz),
        });
    }
    let offset = vtimezone_offset(cal, id, local).unwrap_or(0);
    let utc = local
        .checked_sub_signed(TimeDelta::seconds(offset.into()))
        .ok_or_else(|| content(format!("{} {} is out of range", p.name, raw.trim())))?;
    Ok(When {
        utc: utc.and_utc(),
        date: false,
        zone: None,
    })
}

/// The IANA zone named by a TZID, also when a prefix precedes it
/// (`/mozilla.org/20050126_1/Europe/Berlin`).
fn known_zone(id: &str) -> Option<Tz> {
    let id = id.trim();
    id.parse::<Tz>().ok().or_else(|| {
        id.match_indices('/')
            .find_map(|(i, _)| id[i + 1..].parse::<Tz>().ok())
    })
}

/// A local time in `tz` as UTC: the earlier of an ambiguous time, and a time in a gap with
/// the offset before the gap (RFC 5545 §3.3.5).
fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => {
            let before = local
                .checked_sub_signed(TimeDelta::days(1))
                .unwrap_or(local);
            let offset = tz.offset_from_utc_datetime(&before).fix().local_minus_utc();
            local
                .checked_sub_signed(TimeDelta::seconds(offset.into()))
                .unwrap_or(local)
                .and_utc()
        }
    }
}

/// `±HHMM[SS]` in seconds.
fn parse_offset(raw: &str) -> Option<i32> {
    let s = raw.trim();
    let (sign, s) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    if !(s.len() == 4 || s.len() == 6) || !s.is_ascii() {
        return None;
    }
    let h = digits(&s[..2])?;
    let m = digits(&s[2..4])?;
    let sec = if s.len() == 6 { digits(&s[4..])? } else { 0 };
    (h < 24 && m < 60 && sec < 60).then(|| sign * (h * 3600 + m * 60 + sec) as i32)
}

/// The UTC offset at `local` by the object's own VTIMEZONE named `id`: the observance
/// (STANDARD/DAYLIGHT, yearly rules by month and weekday) with the latest onset before it.
fn vtimezone_offset(cal: &Component, id: &str, local: NaiveDateTime) -> Option<i32> {
    let vtz = cal.components.iter().find(|c| {
        c.name == "VTIMEZONE" && c.prop("TZID").is_some_and(|p| p.value.trim() == id.trim())
    })?;
    let mut latest: Option<(NaiveDateTime, i32)> = None;
    let mut earliest: Option<(NaiveDateTime, i32)> = None;
    for obs in &vtz.components {
        let Some(start) = obs
            .prop("DTSTART")
            .and_then(|p| parse_date_time(p.value.trim()))
            .map(|(t, _)| t)
        else {
            continue;
        };
        let Some(to) = obs.prop("TZOFFSETTO").and_then(|p| parse_offset(&p.value)) else {
            continue;
        };
        let from = obs
            .prop("TZOFFSETFROM")
            .and_then(|p| parse_offset(&p.value))
            .unwrap_or(to);
        if earliest.is_none_or(|(t, _)| start < t) {
            earliest = Some((start, from));
        }
        let onset = obs
            .prop("RRULE")
            .and_then(|r| yearly_onset(&r.value, start, local))
            .or((start <= local).then_some(start));
        if let Some(onset) = onset
            && latest.is_none_or(|(t, _)| onset > t)
        {
            latest = Some((onset, to));
        }
    }
    latest.or(earliest).map(|(_, offset)| offset)
}

/// The latest onset not after `local` of a `FREQ=YEARLY;BYMONTH=m;BYDAY=nDD` rule starting at
/// `start`.
fn yearly_onset(rule: &str, start: NaiveDateTime, local: NaiveDateTime) -> Option<NaiveDateTime> {
    let mut month = start.month();
    let mut by_day: Option<(i32, Weekday)> = None;
    let mut until: Option<NaiveDateTime> = None;
    let mut yearly = false;
    for part in rule.split(';') {
        let (k, v) = part.split_once('=')?;
        match k.trim().to_ascii_uppercase().as_str() {
            "FREQ" => yearly = v.trim().eq_ignore_ascii_case("YEARLY"),
            "BYMONTH" => month = digits(v.trim())?,
            "BYDAY" => by_day = Some(parse_by_day(v.trim())?),
            "UNTIL" => {
                let v = v.trim();
                until = parse_date_time(v)
                    .map(|(t, _)| t)
                    .or_else(|| parse_date(v).map(|d| d.and_time(NaiveTime::MIN)));
            }
            _ => {}
        }
    }
    if !yearly {
        return None;
    }
    let mut years = vec![local.year(), local.year() - 1];
    if let Some(u) = until {
        years.extend([u.year(), u.year() - 1]);
    }
    years
        .into_iter()
        .filter_map(|y| {
            let day = match by_day {
                Some((n, wd)) => nth_weekday(y, month, n, wd)?,
                None => NaiveDate::from_ymd_opt(y, month, start.day())?,
            };
            Some(day.and_time(start.time()))
        })
        .filter(|t| *t <= local && *t >= start && until.is_none_or(|u| *t <= u))
        .max()
}

const WEEKDAYS: [&str; 7] = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];

/// `-1SU`, `2SU`, `SU` (the first).
fn parse_by_day(v: &str) -> Option<(i32, Weekday)> {
    if v.len() < 2 || !v.is_ascii() {
        return None;
    }
    let (n, wd) = v.split_at(v.len() - 2);
    let i = WEEKDAYS.iter().position(|w| w.eq_ignore_ascii_case(wd))?;
    let n = if n.is_empty() { 1 } else { n.parse().ok()? };
    Some((n, Weekday::try_from(i as u8).ok()?))
}

fn last_day_of_month(year: i32, month: u32) -> Option<NaiveDate> {
    let (y, m) = if month == 12 {
        (year.checked_add(1)?, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)?.pred_opt()
}

/// The `n`th `wd` of the month (from the end when negative).
fn nth_weekday(year: i32, month: u32, n: i32, wd: Weekday) -> Option<NaiveDate> {
    if n > 0 {
        NaiveDate::from_weekday_of_month_opt(year, month, wd, u8::try_from(n).ok()?)
    } else if n < 0 {
        let last = last_day_of_month(year, month)?;
        let back = (last.weekday().num_days_from_monday() + 7 - wd.num_days_from_monday()) % 7;
        let weeks = u64::try_from(-(n + 1)).ok()?;
        let d = last.checked_sub_days(chrono::Days::new(u64::from(back) + 7 * weeks))?;
        (d.month() == month).then_some(d)
    } else {
        None
    }
}

/// An RFC 5545 DURATION (`PT1H30M`, `P1D`, `-P2W`).
fn parse_duration(raw: &str) -> Option<TimeDelta> {
    let s = raw.trim();
    let (negative, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let s = s.strip_prefix(['P', 'p'])?;
    let mut seconds: i64 = 0;
    let mut number = String::new();
    let mut in_time = false;
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if number.len() >= 9 {
                return None;
            }
            number.push(c);
            continue;
        }
        if c.eq_ignore_ascii_case(&'T') {
            if in_time || !number.is_empty() {
                return None;
            }
            in_time = true;
            continue;
        }
        let n: i64 = number.parse().ok()?;
        number.clear();
        let unit = match (c.to_ascii_uppercase(), in_time) {
            ('W', false) => 7 * 86_400,
            ('D', false) => 86_400,
            ('H', true) => 3_600,
            ('M', true) => 60,
            ('S', true) => 1,
            _ => return None,
        };
        seconds = seconds.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    if !number.is_empty() || !any {
        return None;
    }
    TimeDelta::try_seconds(if negative { -seconds } else { seconds })
}

fn add(t: DateTime<Utc>, d: TimeDelta, what: &str) -> Result<DateTime<Utc>, MappingError> {
    t.checked_add_signed(d)
        .ok_or_else(|| content(format!("{what} is out of range")))
}

/// DTSTART and the end (DTEND, or DTSTART + DURATION, or a day after a DATE, or DTSTART).
fn read_span(c: &Component, cal: &Component) -> Result<(When, DateTime<Utc>), MappingError> {
    let start = read_when(
        c.prop("DTSTART")
            .ok_or_else(|| content(format!("the {} has no DTSTART", c.name)))?,
        cal,
    )?;
    let end = if let Some(p) = c.prop("DTEND") {
        read_when(p, cal)?.utc
    } else if let Some(p) = c.prop("DURATION") {
        let d = parse_duration(&p.value)
            .ok_or_else(|| content(format!("DURATION {} is not a duration", p.value.trim())))?;
        add(start.utc, d, "DTSTART + DURATION")?
    } else if start.date {
        add(start.utc, TimeDelta::days(1), "DTSTART")?
    } else {
        start.utc
    };
    Ok((start, end))
}

fn is_status(c: &Component, status: &str) -> bool {
    c.prop("STATUS")
        .is_some_and(|p| p.value.trim().eq_ignore_ascii_case(status))
}

fn uid_of(c: &Component) -> Option<String> {
    text_of(c, "UID")
}

/// The VEVENT/VTODO that is not an override: the first without RECURRENCE-ID, else the first.
fn master_index(cal: &Component, name: &str) -> Option<usize> {
    let mut of_kind = cal
        .components
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name == name);
    let first = of_kind.clone().next().map(|(i, _)| i);
    of_kind
        .find(|(_, c)| c.prop("RECURRENCE-ID").is_none())
        .map(|(i, _)| i)
        .or(first)
}

/// The overrides of `master` (the index of the VEVENT in `cal`): the other VEVENTs of its UID
/// with a RECURRENCE-ID, by index.
fn override_indices(cal: &Component, master: usize) -> Vec<usize> {
    let uid = uid_of(&cal.components[master]);
    cal.components
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            *i != master
                && c.name == cal.components[master].name
                && c.prop("RECURRENCE-ID").is_some()
                && uid_of(c) == uid
        })
        .map(|(i, _)| i)
        .collect()
}

fn exdates_of(ev: &Component, cal: &Component) -> Result<Vec<DateTime<Utc>>, MappingError> {
    let mut out = Vec::new();
    for p in ev.props("EXDATE") {
        for raw in p.value.split(',').filter(|r| !r.trim().is_empty()) {
            out.push(read_when_value(p, raw, cal)?.utc);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn appointment_values(cal: &Component) -> Result<Map<String, Value>, MappingError> {
    let m =
        master_index(cal, "VEVENT").ok_or_else(|| content("the calendar object has no VEVENT"))?;
    let master = &cal.components[m];
    let (start, end) = read_span(master, cal)?;
    let texts = [
        ("subject", "SUMMARY"),
        ("location", "LOCATION"),
        ("description", "DESCRIPTION"),
    ];
    let mut out = Map::new();
    for (field, prop) in texts {
        out.insert(field.into(), json!(text_of(master, prop)));
    }
    out.insert("start".into(), time(start.utc));
    out.insert("end".into(), time(end));
    if start.date {
        out.insert("all_day".into(), json!(true));
    }
    out.insert("time_zone".into(), json!(start.zone.map(Tz::name)));
    out.insert(
        "organizer".into(),
        json!(master.prop("ORGANIZER").and_then(|p| address(&p.value))),
    );
    let mut attendees: Vec<String> = master
        .props("ATTENDEE")
        .filter_map(|p| address(&p.value))
        .collect();
    attendees.sort();
    attendees.dedup();
    out.insert("attendees".into(), json!(attendees));
    out.insert(
        "state".into(),
        json!(if is_status(master, "CANCELLED") {
            "canceled"
        } else {
            "open"
        }),
    );
    let rrule = master
        .prop("RRULE")
        .map(|p| p.value.trim())
        .filter(|r| !r.is_empty());
    out.insert("rrule".into(), json!(rrule));
    let exdates = exdates_of(master, cal)?;
    out.insert("exdates".into(), exdates.into_iter().map(time).collect());

    let duration = end - start.utc;
    let mut overrides: Vec<(DateTime<Utc>, Value)> = Vec::new();
    for i in override_indices(cal, m) {
        let ev = &cal.components[i];
        let Some(rid) = ev.prop("RECURRENCE-ID") else {
            continue;
        };
        let rid = read_when(rid, cal)?.utc;
        let (o_start, o_end) = if ev.prop("DTSTART").is_some() {
            let (s, e) = read_span(ev, cal)?;
            (s.utc, e)
        } else {
            (rid, add(rid, duration, "RECURRENCE-ID + the duration")?)
        };
        let mut o = Map::new();
        o.insert("recurrence_id".into(), time(rid));
        o.insert("start".into(), time(o_start));
        o.insert("end".into(), time(o_end));
        for (field, prop) in texts {
            let v = text_of(ev, prop);
            if v.is_some() && v != text_of(master, prop) {
                o.insert(field.into(), json!(v));
            }
        }
        overrides.push((rid, Value::Object(o)));
    }
    overrides.sort_by_key(|(t, _)| *t);
    overrides.dedup_by_key(|(t, _)| *t);
    out.insert(
        "overrides".into(),
        overrides.into_iter().map(|(_, o)| o).collect(),
    );
    meta(master, &mut out);
    Ok(out)
}

fn task_values(cal: &Component) -> Result<Map<String, Value>, MappingError> {
    let t =
        master_index(cal, "VTODO").ok_or_else(|| content("the calendar object has no VTODO"))?;
    let todo = &cal.components[t];
    let mut out = Map::new();
    out.insert("subject".into(), json!(text_of(todo, "SUMMARY")));
    out.insert("description".into(), json!(text_of(todo, "DESCRIPTION")));
    let due = match todo.prop("DUE") {
        Some(p) => Some(time(read_when(p, cal)?.utc)),
        None => None,
    };
    out.insert("due".into(), json!(due));
    let state = if is_status(todo, "COMPLETED") {
        "completed"
    } else if is_status(todo, "CANCELLED") {
        "canceled"
    } else {
        "open"
    };
    let percent = todo
        .prop("PERCENT-COMPLETE")
        .and_then(|p| p.value.trim().parse::<i64>().ok())
        .map(|p| p.clamp(0, 100))
        .unwrap_or(if state == "completed" { 100 } else { 0 });
    out.insert("percent_complete".into(), json!(percent));
    out.insert("state".into(), json!(state));
    meta(todo, &mut out);
    Ok(out)
}

/// `N` (family; given; additional; prefixes; suffixes) as a display name.
fn name_from_n(card: &Component) -> Option<String> {
    let n = card.prop("N")?;
    let parts: Vec<String> = split_raw(&n.value, ';')
        .into_iter()
        .map(|raw| {
            split_raw(raw, ',')
                .into_iter()
                .map(unescape_text)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let part = |i: usize| parts.get(i).map(|s| s.trim()).unwrap_or("");
    let name = [part(3), part(1), part(2), part(0), part(4)]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    (!name.is_empty()).then_some(name)
}

fn phone(p: &Property) -> Option<String> {
    let v = p.text();
    let v = v.trim();
    let v = match v.get(..4) {
        Some(prefix) if prefix.eq_ignore_ascii_case("tel:") => v[4..].trim(),
        _ => v,
    };
    (!v.is_empty()).then(|| v.to_owned())
}

fn company(p: &Property) -> Option<String> {
    let first = split_raw(&p.value, ';').into_iter().next()?;
    let c = unescape_text(first).trim().to_owned();
    (!c.is_empty()).then_some(c)
}

fn contact_values(card: &Component) -> Map<String, Value> {
    let mut out = Map::new();
    let full_name = card
        .prop("FN")
        .map(Property::text)
        .filter(|s| !s.trim().is_empty())
        .or_else(|| name_from_n(card));
    out.insert("full_name".into(), json!(full_name));
    let emails: Vec<String> = card
        .props("EMAIL")
        .filter_map(|p| address(&p.text()))
        .collect();
    out.insert("emails".into(), json!(emails));
    out.insert("company".into(), json!(card.prop("ORG").and_then(company)));
    out.insert("job_title".into(), json!(text_of(card, "TITLE")));
    let phones: Vec<String> = card.props("TEL").filter_map(phone).collect();
    out.insert("phones".into(), json!(phones));
    meta(card, &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// Writing

/// The values being written, with typed getters whose errors name the field.
struct In<'a>(&'a Map<String, Value>);

impl In<'_> {
    fn get(&self, field: &str) -> &Value {
        self.0.get(field).unwrap_or(&Value::Null)
    }

    /// A string, `None` when null, absent or empty.
    fn text(&self, field: &str) -> Result<Option<String>, MappingError> {
        match self.get(field) {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(bad(format!("{field}: {} is not a string", shorten(other)))),
        }
    }

    /// A string written raw (not as TEXT): it must not break the content line.
    fn raw(&self, field: &str) -> Result<Option<String>, MappingError> {
        let v = self.text(field)?;
        if let Some(s) = &v {
            check_raw(field, s)?;
        }
        Ok(v)
    }

    fn time(&self, field: &str) -> Result<Option<DateTime<Utc>>, MappingError> {
        parse_time(self.get(field), field)
    }

    fn strings(&self, field: &str) -> Result<Vec<String>, MappingError> {
        match self.get(field) {
            Value::Null => Ok(Vec::new()),
            Value::Array(a) => a
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(bad(format!("{field}: {} is not a string", shorten(other)))),
                })
                .filter(|s| s.as_ref().is_ok_and(|s| !s.trim().is_empty()) || s.is_err())
                .collect(),
            other => Err(bad(format!("{field}: {} is not an array", shorten(other)))),
        }
    }

    /// Email addresses: lower-cased, written raw.
    fn addresses(&self, field: &str) -> Result<Vec<String>, MappingError> {
        let mut out = Vec::new();
        for e in self.strings(field)? {
            let e = e.trim().to_lowercase();
            check_raw(field, &e)?;
            out.push(e);
        }
        Ok(out)
    }
}

fn check_raw(field: &str, s: &str) -> Result<(), MappingError> {
    if s.chars().any(char::is_control) {
        return Err(bad(format!("{field}: {s:?} holds a control character")));
    }
    Ok(())
}

fn parse_time(v: &Value, field: &str) -> Result<Option<DateTime<Utc>>, MappingError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| bad(format!("{field}: {s:?} is not an RFC 3339 time ({e})"))),
        other => Err(bad(format!("{field}: {} is not a time", shorten(other)))),
    }
}

/// How DATE/DATE-TIME values are written.
#[derive(Debug, Clone, Copy)]
enum Form {
    Date,
    Zone(Tz),
    Utc,
}

fn format_when(t: DateTime<Utc>, form: Form) -> String {
    match form {
        Form::Date => t.format("%Y%m%d").to_string(),
        Form::Zone(tz) => t.with_timezone(&tz).format("%Y%m%dT%H%M%S").to_string(),
        Form::Utc => t.format("%Y%m%dT%H%M%SZ").to_string(),
    }
}

fn now_stamp() -> String {
    format_when(Utc::now(), Form::Utc)
}

/// Puts `p` in place of the first property of its name (the others of that name removed), or
/// appends it.
fn put(c: &mut Component, p: Property) {
    replace_all(c, &p.name.clone(), vec![p]);
}

/// Replaces every property named `name` with `props`, where the first of them was (or at the
/// end).
fn replace_all(c: &mut Component, name: &str, props: Vec<Property>) {
    let at = c
        .properties
        .iter()
        .position(|p| p.name.eq_ignore_ascii_case(name));
    c.remove(name);
    let at = at.unwrap_or(c.properties.len());
    c.properties.splice(at..at, props);
}

/// A DATE/DATE-TIME property `name` set to `values` in `form`, keeping the group and the
/// parameters other than VALUE and TZID of the property it replaces.
fn when_property(c: &Component, name: &str, values: &[DateTime<Utc>], form: Form) -> Property {
    let mut p = match c.prop(name) {
        Some(old) => Property {
            value: String::new(),
            ..old.clone()
        },
        None => Property::new(name, ""),
    };
    p.remove_param("VALUE");
    p.remove_param("TZID");
    match form {
        Form::Date => p.set_param("VALUE", "DATE"),
        Form::Zone(tz) => p.set_param("TZID", tz.name()),
        Form::Utc => {}
    }
    p.value = values
        .iter()
        .map(|t| format_when(*t, form))
        .collect::<Vec<_>>()
        .join(",");
    p
}

fn put_when(c: &mut Component, name: &str, t: DateTime<Utc>, form: Form) {
    let p = when_property(c, name, &[t], form);
    put(c, p);
}

/// Sets a TEXT property, leaving it untouched when it already says `value`; removes it for
/// `None`.
fn set_text(c: &mut Component, name: &str, value: Option<&str>) {
    match value {
        None => c.remove(name),
        Some(v) => {
            let same = c.props(name).count() == 1 && c.prop(name).is_some_and(|p| p.text() == v);
            if !same {
                c.set(name, escape_text(v));
            }
        }
    }
}

fn set_raw(c: &mut Component, name: &str, value: Option<&str>) {
    match value {
        None => c.remove(name),
        Some(v) => {
            if !(c.props(name).count() == 1 && c.prop(name).is_some_and(|p| p.value == v)) {
                c.set(name, v);
            }
        }
    }
}

/// `uid` (kept when the values have none), `categories`, `stamp`; `LAST-MODIFIED`/`REV` set
/// to now (the values' `modified` is not written: the write is the latest change).
fn write_meta(c: &mut Component, v: &In) -> Result<(), MappingError> {
    let modified = modified_property(c);
    if !matches!(v.get("modified"), Value::Null | Value::String(_)) {
        return Err(bad("modified: not a time"));
    }
    put(c, Property::new(modified, now_stamp()));
    if let Some(uid) = v.text("uid")? {
        set_text(c, "UID", Some(&uid));
    }
    let categories: Vec<String> = v
        .strings("categories")?
        .into_iter()
        .map(|s| s.trim().to_owned())
        .collect();
    if categories_of(c) != categories {
        let props = if categories.is_empty() {
            vec![]
        } else {
            let raw: Vec<String> = categories.iter().map(|s| escape_text(s)).collect();
            vec![Property::new("CATEGORIES", raw.join(","))]
        };
        replace_all(c, "CATEGORIES", props);
    }
    set_text(c, STAMP_PROPERTY, v.text("stamp")?.as_deref());
    Ok(())
}

/// The existing text's tree and the index of its `root` component, or a new tree.
fn load(
    existing: Option<&str>,
    root: &str,
    v: &In,
) -> Result<(Vec<Component>, usize), MappingError> {
    if let Some(text) = existing {
        let tree = vobject::parse(text)?;
        let i = tree
            .iter()
            .position(|c| c.name == root)
            .ok_or_else(|| content(format!("the existing text has no {root}")))?;
        return Ok((tree, i));
    }
    if v.text("uid")?.is_none() {
        return Err(bad("uid: a new object needs one"));
    }
    let mut c = Component::new(root);
    if root == "VCALENDAR" {
        c.properties.push(Property::new("PRODID", PRODID));
        c.properties.push(Property::new("VERSION", "2.0"));
    } else {
        c.properties.push(Property::new("VERSION", "4.0"));
        c.properties.push(Property::new("PRODID", PRODID));
    }
    Ok((vec![c], 0))
}

/// The VEVENT/VTODO to write into: the existing master (an error when the existing object has
/// none), or a new one.
fn take_master(
    cal: &mut Component,
    name: &str,
    creating: bool,
    v: &In,
) -> Result<(usize, Component), MappingError> {
    match master_index(cal, name) {
        Some(i) => Ok((i, cal.components.remove(i))),
        None if creating => Ok((cal.components.len(), new_with_uid(name, v)?)),
        None => Err(content(format!("the calendar object has no {name}"))),
    }
}

/// A new VEVENT/VTODO, its UID first.
fn new_with_uid(name: &str, v: &In) -> Result<Component, MappingError> {
    let mut c = Component::new(name);
    if let Some(uid) = v.text("uid")? {
        c.properties.push(Property::new("UID", escape_text(&uid)));
    }
    Ok(c)
}

/// One override of the values.
struct Override {
    recurrence_id: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    subject: Option<String>,
    location: Option<String>,
    description: Option<String>,
}

fn overrides_of(v: &In) -> Result<Vec<Override>, MappingError> {
    let list = match v.get("overrides") {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => {
            return Err(bad(format!(
                "overrides: {} is not an array",
                shorten(other)
            )));
        }
    };
    let mut out = Vec::new();
    for o in list {
        let o = In(o
            .as_object()
            .ok_or_else(|| bad(format!("overrides: {} is not an object", shorten(o))))?);
        let need = |f: &str| {
            o.time(f)?
                .ok_or_else(|| bad(format!("overrides.{f}: a changed occurrence needs it")))
        };
        out.push(Override {
            recurrence_id: need("recurrence_id")?,
            start: need("start")?,
            end: need("end")?,
            subject: o.text("subject")?,
            location: o.text("location")?,
            description: o.text("description")?,
        });
    }
    out.sort_by_key(|o| o.recurrence_id);
    out.dedup_by_key(|o| o.recurrence_id);
    Ok(out)
}

fn write_appointment(v: &In, existing: Option<&str>) -> Result<Vec<Component>, MappingError> {
    let start = v
        .time("start")?
        .ok_or_else(|| bad("start: an appointment needs a start"))?;
    let end = v.time("end")?;
    if end.is_some_and(|e| e < start) {
        return Err(bad("end: the appointment ends before it starts"));
    }
    let all_day = match v.get("all_day") {
        Value::Null => false,
        Value::Bool(b) => *b,
        other => return Err(bad(format!("all_day: {} is not a boolean", shorten(other)))),
    };
    let zone = v.text("time_zone")?.and_then(|z| known_zone(&z));
    let form = match (all_day, zone) {
        (true, _) => Form::Date,
        (false, Some(tz)) => Form::Zone(tz),
        (false, None) => Form::Utc,
    };
    let subject = v.text("subject")?;
    let location = v.text("location")?;
    let description = v.text("description")?;
    let organizer = v.raw("organizer")?.map(|o| o.trim().to_lowercase());
    let mut attendees = v.addresses("attendees")?;
    attendees.sort();
    attendees.dedup();
    let rrule = v.raw("rrule")?;
    let mut exdates = Vec::new();
    for t in v.strings("exdates")? {
        exdates.extend(parse_time(&Value::String(t), "exdates")?);
    }
    exdates.sort();
    exdates.dedup();
    let overrides = overrides_of(v)?;

    let (mut tree, root) = load(existing, "VCALENDAR", v)?;
    let cal = &mut tree[root];
    let m = match master_index(cal, "VEVENT") {
        Some(m) => m,
        None if existing.is_none() => {
            cal.components.push(new_with_uid("VEVENT", v)?);
            cal.components.len() - 1
        }
        None => return Err(content("the calendar object has no VEVENT")),
    };
    // The existing overrides, with the instant each replaces.
    let indices = override_indices(cal, m);
    let mut old: HashMap<DateTime<Utc>, Component> = HashMap::new();
    for &i in &indices {
        let c = &cal.components[i];
        if let Some(rid) = c.prop("RECURRENCE-ID").and_then(|p| read_when(p, cal).ok()) {
            old.entry(rid.utc).or_insert_with(|| c.clone());
        }
    }

    let mut ev = cal.components[m].clone();
    write_event_fields(
        &mut ev,
        &EventFields {
            start,
            end,
            form,
            subject: subject.as_deref(),
            location: location.as_deref(),
            description: description.as_deref(),
        },
    );
    if v.text("state")?.as_deref() == Some("canceled") {
        set_raw(&mut ev, "STATUS", Some("CANCELLED"));
    } else if is_status(&ev, "CANCELLED") {
        set_raw(&mut ev, "STATUS", Some("CONFIRMED"));
    }
    write_parties(&mut ev, organizer.as_deref(), &attendees);
    set_raw(&mut ev, "RRULE", rrule.as_deref());
    // Rewritten in the form of DTSTART, as RFC 5545 wants (one property for all).
    let props = if exdates.is_empty() {
        vec![]
    } else {
        vec![when_property(&ev, "EXDATE", &exdates, form)]
    };
    replace_all(&mut ev, "EXDATE", props);
    write_meta(&mut ev, v)?;

    let uid = text_of(&ev, "UID");
    let mut events = vec![];
    for o in &overrides {
        let mut c = match old.remove(&o.recurrence_id) {
            Some(c) => c,
            None => {
                // A new override is for the same people as the series.
                let mut c = Component::new("VEVENT");
                c.properties.push(Property::new(
                    "UID",
                    escape_text(uid.as_deref().unwrap_or("")),
                ));
                c.properties.extend(
                    ev.properties
                        .iter()
                        .filter(|p| p.name == "ORGANIZER" || p.name == "ATTENDEE")
                        .cloned(),
                );
                c
            }
        };
        set_text(&mut c, "UID", uid.as_deref());
        put_when(&mut c, "RECURRENCE-ID", o.recurrence_id, form);
        write_event_fields(
            &mut c,
            &EventFields {
                start: o.start,
                end: Some(o.end),
                form,
                // An override without its own text inherits the series'.
                subject: o.subject.as_deref().or(subject.as_deref()),
                location: o.location.as_deref().or(location.as_deref()),
                description: o.description.as_deref().or(description.as_deref()),
            },
        );
        events.push(c);
    }
    // The master where it was, the overrides (the old ones removed) right after it.
    for &i in indices.iter().rev() {
        cal.components.remove(i);
    }
    let m = m - indices.iter().filter(|&&i| i < m).count();
    cal.components[m] = ev;
    cal.components.splice(m + 1..m + 1, events);
    if let Form::Zone(tz) = form {
        ensure_vtimezone(cal, tz, start);
    }
    prune_vtimezones(cal);
    Ok(tree)
}

struct EventFields<'a> {
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    form: Form,
    subject: Option<&'a str>,
    location: Option<&'a str>,
    description: Option<&'a str>,
}

/// DTSTAMP, DTSTART, DTEND (DURATION removed), SUMMARY, LOCATION, DESCRIPTION.
fn write_event_fields(c: &mut Component, f: &EventFields) {
    set_raw(c, "DTSTAMP", Some(&now_stamp()));
    put_when(c, "DTSTART", f.start, f.form);
    c.remove("DURATION");
    match f.end {
        Some(end) => put_when(c, "DTEND", end, f.form),
        None => c.remove("DTEND"),
    }
    set_text(c, "SUMMARY", f.subject);
    set_text(c, "LOCATION", f.location);
    set_text(c, "DESCRIPTION", f.description);
}

/// ORGANIZER and ATTENDEEs: an existing property is kept (with PARTSTAT, CN…) while its
/// address is still there.
fn write_parties(ev: &mut Component, organizer: Option<&str>, attendees: &[String]) {
    match organizer {
        None => ev.remove("ORGANIZER"),
        Some(o) => {
            let same = ev
                .prop("ORGANIZER")
                .and_then(|p| address(&p.value))
                .is_some_and(|a| a == o);
            if !same {
                put(ev, Property::new("ORGANIZER", format!("mailto:{o}")));
            }
        }
    }
    let mut kept = by_key(ev, "ATTENDEE", |p| address(&p.value));
    let props: Vec<Property> = attendees
        .iter()
        .map(|a| {
            kept.remove(a)
                .unwrap_or_else(|| Property::new("ATTENDEE", format!("mailto:{a}")))
        })
        .collect();
    replace_all(ev, "ATTENDEE", props);
}

/// The properties named `name` by `key` (the first of each key), to keep those still wanted
/// with their parameters.
fn by_key(
    c: &Component,
    name: &str,
    key: impl Fn(&Property) -> Option<String>,
) -> HashMap<String, Property> {
    let mut out = HashMap::new();
    for p in c.props(name) {
        if let Some(k) = key(p) {
            out.entry(k).or_insert_with(|| p.clone());
        }
    }
    out
}

/// Adds a VTIMEZONE for `tz` (before the first VEVENT/VTODO) when the calendar has none.
fn ensure_vtimezone(cal: &mut Component, tz: Tz, around: DateTime<Utc>) {
    let has = cal.components.iter().any(|c| {
        c.name == "VTIMEZONE" && c.prop("TZID").is_some_and(|p| p.value.trim() == tz.name())
    });
    if !has {
        let at = cal
            .components
            .iter()
            .position(|c| c.name != "VTIMEZONE")
            .unwrap_or(cal.components.len());
        // Observances from the year before, so the whole year of `around` is covered.
        cal.components
            .insert(at, vtimezone(tz, around.year().saturating_sub(1)));
    }
}

fn tzids(c: &Component, out: &mut HashSet<String>) {
    for p in &c.properties {
        if let Some(id) = p.param("TZID") {
            out.insert(id.trim().to_owned());
        }
    }
    for sub in &c.components {
        tzids(sub, out);
    }
}

/// Removes the VTIMEZONEs no TZID parameter refers to any more.
fn prune_vtimezones(cal: &mut Component) {
    let mut used = HashSet::new();
    for c in cal.components.iter().filter(|c| c.name != "VTIMEZONE") {
        tzids(c, &mut used);
    }
    cal.components.retain(|c| {
        c.name != "VTIMEZONE"
            || c.prop("TZID")
                .is_some_and(|p| used.contains(p.value.trim()))
    });
}

fn format_offset(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let a = seconds.unsigned_abs();
    let (h, m, s) = (a / 3600, a % 3600 / 60, a % 60);
    if s == 0 {
        format!("{sign}{h:02}{m:02}")
    } else {
        format!("{sign}{h:02}{m:02}{s:02}")
    }
}

/// A VTIMEZONE for `tz` from its transitions in `year`: two (daylight saving time) become
/// yearly rules; none, one standard observance; otherwise each transition once.
fn vtimezone(tz: Tz, year: i32) -> Component {
    let offset = |t: NaiveDateTime| tz.offset_from_utc_datetime(&t);
    let seconds = |t: NaiveDateTime| offset(t).fix().local_minus_utc();
    let mut vtz = Component::new("VTIMEZONE");
    vtz.properties.push(Property::new("TZID", tz.name()));
    // An observance with the offsets at the UTC instant `at`, starting at local time `local`.
    let observance = |at: NaiveDateTime, local: NaiveDateTime, from: i32, rule: Option<String>| {
        let o = offset(at);
        let kind = if o.dst_offset() > TimeDelta::zero() {
            "DAYLIGHT"
        } else {
            "STANDARD"
        };
        let mut c = Component::new(kind);
        c.properties.extend([
            Property::new("DTSTART", local.format("%Y%m%dT%H%M%S").to_string()),
            Property::new("TZOFFSETFROM", format_offset(from)),
            Property::new("TZOFFSETTO", format_offset(o.fix().local_minus_utc())),
        ]);
        if let Some(name) = o.abbreviation().filter(|n| !n.is_empty()) {
            c.properties
                .push(Property::new("TZNAME", escape_text(name)));
        }
        if let Some(rule) = rule {
            c.properties.push(Property::new("RRULE", rule));
        }
        c
    };
    // The onset of a transition in the offset before it.
    let local = |at: NaiveDateTime, from: i32| {
        at.checked_add_signed(TimeDelta::seconds(from.into()))
            .unwrap_or(at)
    };
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)
        .unwrap_or_default()
        .and_time(NaiveTime::MIN);
    let (Some(first), Some(last)) = (
        NaiveDate::from_ymd_opt(year, 1, 1),
        NaiveDate::from_ymd_opt(year.saturating_add(1), 1, 1),
    ) else {
        vtz.components
            .push(observance(epoch, epoch, seconds(epoch), None));
        return vtz;
    };
    let mut transitions: Vec<(NaiveDateTime, i32)> = Vec::new();
    let mut day = first.and_time(NaiveTime::MIN);
    let end = last.and_time(NaiveTime::MIN);
    while day < end {
        let next = day + TimeDelta::days(1);
        let before = seconds(day);
        if seconds(next) != before {
            // The first second with the new offset.
            let (mut lo, mut hi) = (0i64, 86_400i64);
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                if seconds(day + TimeDelta::seconds(mid)) == before {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            transitions.push((day + TimeDelta::seconds(hi), before));
        }
        day = next;
    }
    // Before the year's transitions: the offset it starts with, from 1970 on.
    let start = first.and_time(NaiveTime::MIN);
    let base = observance(start, epoch, seconds(start), None);
    match transitions.len() {
        0 => vtz.components.push(base),
        2 => {
            for (at, from) in transitions {
                let d = local(at, from).date();
                let n = match last_day_of_month(d.year(), d.month()) {
                    Some(l) if d.day() + 7 > l.day() => -1,
                    _ => (d.day() as i32 - 1) / 7 + 1,
                };
                let wd = WEEKDAYS[d.weekday().num_days_from_monday() as usize];
                let rule = format!("FREQ=YEARLY;BYMONTH={};BYDAY={n}{wd}", d.month());
                vtz.components
                    .push(observance(at, local(at, from), from, Some(rule)));
            }
        }
        _ => {
            vtz.components.push(base);
            for (at, from) in transitions {
                vtz.components
                    .push(observance(at, local(at, from), from, None));
            }
        }
    }
    vtz
}

fn write_task(v: &In, existing: Option<&str>) -> Result<Vec<Component>, MappingError> {
    let due = v.time("due")?;
    let percent = match v.get("percent_complete") {
        Value::Null => 0,
        p => p
            .as_u64()
            .filter(|p| *p <= 100)
            .ok_or_else(|| bad(format!("percent_complete: {} is not 0 to 100", shorten(p))))?,
    };
    let state = v.text("state")?;
    let (completed, canceled) = match state.as_deref() {
        Some("completed") => (true, false),
        Some("canceled") => (false, true),
        _ => (false, false),
    };
    let (mut tree, root) = load(existing, "VCALENDAR", v)?;
    let cal = &mut tree[root];
    let (at, mut todo) = take_master(cal, "VTODO", existing.is_none(), v)?;
    set_raw(&mut todo, "DTSTAMP", Some(&now_stamp()));
    set_text(&mut todo, "SUMMARY", v.text("subject")?.as_deref());
    set_text(&mut todo, "DESCRIPTION", v.text("description")?.as_deref());
    let mut zone = None;
    match due {
        None => todo.remove("DUE"),
        Some(due) => {
            // The form of the DUE there was: a date stays a date (at midnight), a zone a zone.
            let old = todo.prop("DUE").and_then(|p| read_when(p, cal).ok());
            let form = match old {
                Some(w) if w.date && due.time() == NaiveTime::MIN => Form::Date,
                Some(When {
                    zone: Some(tz),
                    date: false,
                    ..
                }) => Form::Zone(tz),
                _ => Form::Utc,
            };
            if let Form::Zone(tz) = form {
                zone = Some((tz, due));
            }
            put_when(&mut todo, "DUE", due, form);
            todo.remove("DURATION");
        }
    }
    let status = if completed {
        "COMPLETED"
    } else if canceled {
        "CANCELLED"
    } else if is_status(&todo, "IN-PROCESS") || is_status(&todo, "NEEDS-ACTION") {
        ""
    } else {
        "NEEDS-ACTION"
    };
    if !status.is_empty() {
        set_raw(&mut todo, "STATUS", Some(status));
    }
    if completed {
        if todo.prop("COMPLETED").is_none() {
            todo.set("COMPLETED", now_stamp());
        }
    } else {
        todo.remove("COMPLETED");
    }
    if percent == 0 && !completed {
        todo.remove("PERCENT-COMPLETE");
    } else {
        set_raw(&mut todo, "PERCENT-COMPLETE", Some(&percent.to_string()));
    }
    write_meta(&mut todo, v)?;
    cal.components.insert(at, todo);
    if let Some((tz, around)) = zone {
        ensure_vtimezone(cal, tz, around);
    }
    Ok(tree)
}

/// `N:Last;First;;;` from a full name (the last word is the family name).
fn n_value(full_name: Option<&str>) -> String {
    let name = full_name.unwrap_or("").trim();
    let (first, last) = match name.rsplit_once(char::is_whitespace) {
        Some((first, last)) => (first.trim(), last),
        None => ("", name),
    };
    format!("{};{};;;", escape_text(last), escape_text(first))
}

fn write_contact(v: &In, existing: Option<&str>) -> Result<Vec<Component>, MappingError> {
    let full_name = v.text("full_name")?;
    let emails = v.addresses("emails")?;
    let company = v.text("company")?;
    let job_title = v.text("job_title")?;
    let phones: Vec<String> = v
        .strings("phones")?
        .into_iter()
        .map(|p| p.trim().to_owned())
        .collect();
    let (mut tree, root) = load(existing, "VCARD", v)?;
    let card = &mut tree[root];
    let v3 = card
        .prop("VERSION")
        .is_some_and(|p| p.value.trim().starts_with('3'));
    if let Some(uid) = v.text("uid")? {
        set_text(card, "UID", Some(&uid));
    }
    let old_name = card.prop("FN").map(Property::text);
    set_text(card, "FN", Some(full_name.as_deref().unwrap_or("")));
    // N is rebuilt when the name changed (a structured N that gives the name stays).
    let changed = old_name.as_deref() != Some(full_name.as_deref().unwrap_or(""))
        && name_from_n(card) != full_name;
    if card.prop("N").is_none() || changed {
        set_raw(card, "N", Some(&n_value(full_name.as_deref())));
    }
    let mut kept = by_key(card, "EMAIL", |p| address(&p.text()));
    let props: Vec<Property> = emails
        .iter()
        .map(|e| {
            kept.remove(e).unwrap_or_else(|| {
                let mut p = Property::new("EMAIL", escape_text(e));
                if v3 {
                    p.set_param("TYPE", "INTERNET");
                }
                p
            })
        })
        .collect();
    replace_all(card, "EMAIL", props);
    match company {
        None => card.remove("ORG"),
        Some(company) => {
            let old = card.prop("ORG").map(|p| p.value.clone());
            match old {
                Some(raw) => {
                    let parts = split_raw(&raw, ';');
                    if unescape_text(parts[0]).trim() != company {
                        let mut value = escape_text(&company);
                        for rest in &parts[1..] {
                            value.push(';');
                            value.push_str(rest);
                        }
                        card.set("ORG", value);
                    }
                }
                None => card.set("ORG", escape_text(&company)),
            }
        }
    }
    set_text(card, "TITLE", job_title.as_deref());
    let mut kept = by_key(card, "TEL", phone);
    let props: Vec<Property> = phones
        .iter()
        .map(|t| {
            kept.remove(t)
                .unwrap_or_else(|| Property::new("TEL", escape_text(t)))
        })
        .collect();
    replace_all(card, "TEL", props);
    write_meta(card, v)?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(kind: RecordType, text: &str) -> Value {
        to_values(kind, text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// Writes `v` (into `existing`), reads it back and checks it is `v` again; the text.
    /// (`modified` is the time of the write: checked, then left out.)
    fn round_trip(kind: RecordType, v: &Value, existing: Option<&str>) -> String {
        let text = from_values(kind, v, existing).unwrap();
        let mut back = values(kind, &text);
        let modified = back.as_object_mut().unwrap().remove("modified").unwrap();
        assert!(
            parse_time(&modified, "modified").unwrap().is_some(),
            "{text}"
        );
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("modified");
        assert_eq!(back, v, "{text}");
        text
    }

    fn crlf(s: &str) -> String {
        s.lines()
            .map(|l| format!("{}\r\n", l.trim_start()))
            .collect()
    }

    fn appointment() -> Value {
        json!({
            "subject": "Review; Q4, part 1",
            "location": "Room 1",
            "description": "Line one\nLine two",
            "start": "2026-12-10T09:00:00Z",
            "end": "2026-12-10T10:00:00Z",
            "time_zone": null,
            "organizer": "ann@example.com",
            "attendees": ["bob@example.com", "carol@example.com"],
            "state": "open",
            "rrule": null,
            "exdates": [],
            "overrides": [],
            "uid": "evt-1@serversync",
            "categories": ["Tracked to Contoso", "Blue, dark"],
            "stamp": "org_1",
        })
    }

    #[test]
    fn a_new_appointment_round_trips() {
        let v = appointment();
        let text = round_trip(RecordType::Appointment, &v, None);
        assert!(
            text.starts_with(
                "BEGIN:VCALENDAR\r\nPRODID:-//serversync//serversync//EN\r\nVERSION:2.0\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("\r\nDTSTAMP:"), "{text}");
        assert!(text.contains("DTSTART:20261210T090000Z\r\n"), "{text}");
        assert!(
            text.contains("SUMMARY:Review\\; Q4\\, part 1\r\n"),
            "{text}"
        );
        assert!(
            text.contains("CATEGORIES:Tracked to Contoso,Blue\\, dark\r\n"),
            "{text}"
        );
        assert!(text.contains("X-SERVERSYNC-ORG:org_1\r\n"), "{text}");
        assert!(!text.contains("VTIMEZONE"), "{text}");
    }

    #[test]
    fn creating_needs_a_uid_and_a_start() {
        let mut v = appointment();
        v["uid"] = Value::Null;
        let e = from_values(RecordType::Appointment, &v, None).unwrap_err();
        assert_eq!(e.to_string(), "values: uid: a new object needs one");
        let mut v = appointment();
        v["start"] = json!("tomorrow");
        let e = from_values(RecordType::Appointment, &v, None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("values: start: \"tomorrow\" is not an RFC 3339"),
            "{e}"
        );
        let e = from_values(RecordType::Account, &v, None).unwrap_err();
        assert!(matches!(e, MappingError::Unsupported(RecordType::Account)));
        assert!(to_values(RecordType::Lead, "").is_err());
    }

    #[test]
    fn a_recurring_event_with_a_moved_and_a_cancelled_occurrence_round_trips() {
        let mut v = appointment();
        v["time_zone"] = json!("Europe/Berlin");
        v["rrule"] = json!("FREQ=WEEKLY;COUNT=4");
        v["exdates"] = json!(["2026-12-24T09:00:00Z"]);
        v["overrides"] = json!([{
            "recurrence_id": "2026-12-17T09:00:00Z",
            "start": "2026-12-17T11:00:00Z",
            "end": "2026-12-17T12:00:00Z",
            "location": "Room 2",
        }]);
        let text = round_trip(RecordType::Appointment, &v, None);
        assert!(
            text.contains("DTSTART;TZID=Europe/Berlin:20261210T100000\r\n"),
            "{text}"
        );
        assert!(
            text.contains("EXDATE;TZID=Europe/Berlin:20261224T100000\r\n"),
            "{text}"
        );
        assert!(
            text.contains("RECURRENCE-ID;TZID=Europe/Berlin:20261217T100000\r\n"),
            "{text}"
        );
        assert!(
            text.contains("BEGIN:VTIMEZONE\r\nTZID:Europe/Berlin\r\n"),
            "{text}"
        );
        assert!(
            text.contains("RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU"),
            "{text}"
        );
        assert!(text.contains("TZOFFSETTO:+0200"), "{text}");
        assert_eq!(text.matches("BEGIN:VEVENT").count(), 2);
        // The override inherits the series' subject; attendees are copied to it.
        let ov = &text[text.rfind("BEGIN:VEVENT").unwrap()..];
        assert!(ov.contains("SUMMARY:Review\\; Q4\\, part 1"), "{ov}");
        assert!(ov.contains("ATTENDEE:mailto:bob@example.com"), "{ov}");

        // Moving the override again updates it in place; dropping it removes it.
        let mut v2 = v.clone();
        v2["overrides"][0]["start"] = json!("2026-12-17T13:00:00Z");
        v2["overrides"][0]["end"] = json!("2026-12-17T14:00:00Z");
        let text2 = round_trip(RecordType::Appointment, &v2, Some(&text));
        assert_eq!(text2.matches("BEGIN:VEVENT").count(), 2);
        let mut v3 = v2.clone();
        v3["overrides"] = json!([]);
        v3["rrule"] = Value::Null;
        v3["exdates"] = json!([]);
        v3["time_zone"] = Value::Null;
        let text3 = round_trip(RecordType::Appointment, &v3, Some(&text2));
        assert_eq!(text3.matches("BEGIN:VEVENT").count(), 1);
        assert!(
            !text3.contains("RRULE:FREQ=WEEKLY") && !text3.contains("EXDATE"),
            "{text3}"
        );
        assert!(
            !text3.contains("VTIMEZONE"),
            "an unused VTIMEZONE goes: {text3}"
        );
    }

    #[test]
    fn a_tzid_event_is_read_in_utc_with_its_zone() {
        let text = crlf(
            "BEGIN:VCALENDAR
            VERSION:2.0
            BEGIN:VEVENT
            UID:tz-1
            DTSTART;TZID=Europe/Berlin:20260710T100000
            DTEND;TZID=America/New_York:20260710T060000
            EXDATE;TZID=Europe/Berlin:20260717T100000,20260724T100000
            EXDATE:20260731T080000Z
            RRULE:FREQ=WEEKLY
            SUMMARY:Summer
            END:VEVENT
            END:VCALENDAR",
        );
        let v = values(RecordType::Appointment, &text);
        assert_eq!(v["start"], "2026-07-10T08:00:00Z");
        assert_eq!(v["end"], "2026-07-10T10:00:00Z");
        assert_eq!(v["time_zone"], "Europe/Berlin");
        assert_eq!(
            v["exdates"],
            json!([
                "2026-07-17T08:00:00Z",
                "2026-07-24T08:00:00Z",
                "2026-07-31T08:00:00Z"
            ])
        );
        assert_eq!(v["rrule"], "FREQ=WEEKLY");
        round_trip(RecordType::Appointment, &v, Some(&text));
        round_trip(RecordType::Appointment, &v, None);
    }

    #[test]
    fn an_unknown_tzid_uses_the_objects_vtimezone() {
        let text = crlf(
            "BEGIN:VCALENDAR
            BEGIN:VTIMEZONE
            TZID:W. Europe Standard Time
            BEGIN:STANDARD
            DTSTART:16010101T030000
            TZOFFSETFROM:+0200
            TZOFFSETTO:+0100
            RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10
            END:STANDARD
            BEGIN:DAYLIGHT
            DTSTART:16010101T020000
            TZOFFSETFROM:+0100
            TZOFFSETTO:+0200
            RRULE:FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3
            END:DAYLIGHT
            END:VTIMEZONE
            BEGIN:VEVENT
            UID:w-1
            DTSTART;TZID=W. Europe Standard Time:20260710T100000
            DTEND;TZID=W. Europe Standard Time:20261210T100000
            END:VEVENT
            END:VCALENDAR",
        );
        let v = values(RecordType::Appointment, &text);
        assert_eq!(v["start"], "2026-07-10T08:00:00Z");
        assert_eq!(v["end"], "2026-12-10T09:00:00Z");
        assert_eq!(v["time_zone"], Value::Null);
        // Mozilla-style prefixed names are IANA names after all.
        let t = text.replace(
            "W. Europe Standard Time",
            "/mozilla.org/20050126_1/Europe/Berlin",
        );
        let v = values(RecordType::Appointment, &t);
        assert_eq!(v["time_zone"], "Europe/Berlin");
        assert_eq!(v["start"], "2026-07-10T08:00:00Z");
    }

    #[test]
    fn an_all_day_event_round_trips() {
        let text = crlf(
            "BEGIN:VCALENDAR
            BEGIN:VEVENT
            UID:day-1
            DTSTART;VALUE=DATE:20261224
            SUMMARY:Holiday
            END:VEVENT
            END:VCALENDAR",
        );
        let v = values(RecordType::Appointment, &text);
        assert_eq!(v["all_day"], true);
        assert_eq!(v["start"], "2026-12-24T00:00:00Z");
        assert_eq!(v["end"], "2026-12-25T00:00:00Z");
        let mut v2 = v.clone();
        v2["end"] = json!("2026-12-27T00:00:00Z");
        v2["exdates"] = json!(["2026-12-25T00:00:00Z"]);
        v2["rrule"] = json!("FREQ=DAILY;COUNT=3");
        let out = round_trip(RecordType::Appointment, &v2, Some(&text));
        assert!(out.contains("DTSTART;VALUE=DATE:20261224\r\n"), "{out}");
        assert!(out.contains("DTEND;VALUE=DATE:20261227\r\n"), "{out}");
        assert!(out.contains("EXDATE;VALUE=DATE:20261225\r\n"), "{out}");
        v2.as_object_mut().unwrap().remove("all_day");
        v2["exdates"] = json!([]);
        let out = round_trip(RecordType::Appointment, &v2, Some(&out));
        assert!(out.contains("DTSTART:20261224T000000Z\r\n"), "{out}");
    }

    #[test]
    fn an_update_keeps_alarms_x_properties_and_partstat() {
        let text = crlf(
            "BEGIN:VCALENDAR
            VERSION:2.0
            PRODID:-//Apple Inc.//macOS 15//EN
            BEGIN:VEVENT
            UID:keep-1
            DTSTAMP:20260101T000000Z
            LAST-MODIFIED:20261101T120000Z
            DTSTART:20261210T090000Z
            DURATION:PT1H
            SUMMARY;LANGUAGE=en:Review
            ORGANIZER;CN=Ann:mailto:Ann@Example.com
            ATTENDEE;CN=Bob;PARTSTAT=ACCEPTED:mailto:bob@example.com
            ATTENDEE;PARTSTAT=DECLINED:mailto:dave@example.com
            X-APPLE-TRAVEL-ADVISORY-BEHAVIOR:AUTOMATIC
            CATEGORIES:Work
            STATUS:CONFIRMED
            BEGIN:VALARM
            ACTION:DISPLAY
            TRIGGER:-PT15M
            DESCRIPTION:Reminder
            END:VALARM
            END:VEVENT
            END:VCALENDAR",
        );
        let v = values(RecordType::Appointment, &text);
        assert_eq!(v["end"], "2026-12-10T10:00:00Z", "DURATION");
        assert_eq!(v["modified"], "2026-11-01T12:00:00Z");
        assert_eq!(v["organizer"], "ann@example.com");
        assert_eq!(
            v["attendees"],
            json!(["bob@example.com", "dave@example.com"])
        );
        assert_eq!(v["categories"], json!(["Work"]));
        let mut v2 = v.clone();
        v2["subject"] = json!("Review 2");
        v2["attendees"] = json!(["bob@example.com", "erin@example.com"]);
        v2["state"] = json!("canceled");
        v2["location"] = json!("Room 9");
        let out = round_trip(RecordType::Appointment, &v2, Some(&text));
        for kept in [
            "PRODID:-//Apple Inc.//macOS 15//EN",
            "BEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT15M\r\nDESCRIPTION:Reminder\r\nEND:VALARM",
            "X-APPLE-TRAVEL-ADVISORY-BEHAVIOR:AUTOMATIC",
            "ATTENDEE;CN=Bob;PARTSTAT=ACCEPTED:mailto:bob@example.com",
            "ORGANIZER;CN=Ann:mailto:Ann@Example.com",
            "SUMMARY;LANGUAGE=en:Review 2",
            "CATEGORIES:Work",
            "STATUS:CANCELLED",
            "ATTENDEE:mailto:erin@example.com",
            "DTEND:20261210T100000Z",
        ] {
            assert!(out.contains(kept), "{kept} in\n{out}");
        }
        assert!(!out.contains("dave@") && !out.contains("DURATION"), "{out}");
        // Clearing a mapped field removes its property.
        let mut v3 = v2.clone();
        v3["location"] = Value::Null;
        v3["categories"] = json!([]);
        v3["organizer"] = Value::Null;
        let out = round_trip(RecordType::Appointment, &v3, Some(&out));
        assert!(
            !out.contains("LOCATION") && !out.contains("CATEGORIES"),
            "{out}"
        );
        assert!(
            !out.contains("ORGANIZER") && out.contains("BEGIN:VALARM"),
            "{out}"
        );
    }

    #[test]
    fn overrides_are_read_from_the_same_uid() {
        let text = crlf(
            "BEGIN:VCALENDAR
            BEGIN:VEVENT
            UID:r-1
            DTSTART:20261210T090000Z
            DTEND:20261210T100000Z
            RRULE:FREQ=DAILY;COUNT=5
            SUMMARY:Standup
            END:VEVENT
            BEGIN:VEVENT
            UID:r-1
            RECURRENCE-ID:20261212T090000Z
            DTSTART:20261212T093000Z
            DURATION:PT30M
            SUMMARY:Standup (late)
            END:VEVENT
            BEGIN:VEVENT
            UID:r-1
            RECURRENCE-ID:20261211T090000Z
            DTSTART:20261211T080000Z
            DTEND:20261211T090000Z
            SUMMARY:Standup
            END:VEVENT
            BEGIN:VEVENT
            UID:other
            RECURRENCE-ID:20261213T090000Z
            DTSTART:20261213T080000Z
            END:VEVENT
            END:VCALENDAR",
        );
        let v = values(RecordType::Appointment, &text);
        assert_eq!(
            v["overrides"],
            json!([
                {"recurrence_id": "2026-12-11T09:00:00Z", "start": "2026-12-11T08:00:00Z",
                 "end": "2026-12-11T09:00:00Z"},
                {"recurrence_id": "2026-12-12T09:00:00Z", "start": "2026-12-12T09:30:00Z",
                 "end": "2026-12-12T10:00:00Z", "subject": "Standup (late)"},
            ])
        );
        let out = round_trip(RecordType::Appointment, &v, Some(&text));
        assert!(
            out.contains("UID:other"),
            "another UID's event is left alone: {out}"
        );
    }

    #[test]
    fn content_errors_say_what_is_wrong() {
        let cal = |body: &str| format!("BEGIN:VCALENDAR\r\n{body}END:VCALENDAR\r\n");
        let e = to_values(RecordType::Appointment, &cal("")).unwrap_err();
        assert_eq!(e.to_string(), "the calendar object has no VEVENT");
        let e = to_values(RecordType::Task, &cal("")).unwrap_err();
        assert_eq!(e.to_string(), "the calendar object has no VTODO");
        let e = to_values(
            RecordType::Appointment,
            &cal("BEGIN:VEVENT\r\nDTSTART;VALUE=DATE:20261301\r\nEND:VEVENT\r\n"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "DTSTART 20261301 is not a date");
        let e = to_values(
            RecordType::Appointment,
            &cal("BEGIN:VEVENT\r\nDTSTART:20261210T250000Z\r\nEND:VEVENT\r\n"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "DTSTART 20261210T250000Z is not a date-time");
        let e = to_values(RecordType::Contact, "BEGIN:VCARD\r\nFN:x\r\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unreadable iCalendar/vCard text: line 1: BEGIN:VCARD has no END"
        );
        let e = to_values(RecordType::Contact, &cal("")).unwrap_err();
        assert_eq!(e.to_string(), "the text has no VCARD");
        let e = from_values(RecordType::Task, &json!({}), Some(&cal(""))).unwrap_err();
        assert_eq!(e.to_string(), "the calendar object has no VTODO");
    }

    fn task() -> Value {
        json!({
            "subject": "Call back",
            "description": null,
            "due": "2026-12-11T16:00:00Z",
            "percent_complete": 0,
            "state": "open",
            "uid": "task-1",
            "categories": [],
            "stamp": null,
        })
    }

    #[test]
    fn tasks_round_trip() {
        let v = task();
        let text = round_trip(RecordType::Task, &v, None);
        assert!(
            text.contains("BEGIN:VTODO") && text.contains("STATUS:NEEDS-ACTION"),
            "{text}"
        );
        let mut v2 = v.clone();
        v2["state"] = json!("completed");
        v2["percent_complete"] = json!(100);
        let text2 = round_trip(RecordType::Task, &v2, Some(&text));
        assert!(
            text2.contains("STATUS:COMPLETED") && text2.contains("\r\nCOMPLETED:"),
            "{text2}"
        );
        v2["percent_complete"] = json!(40);
        v2["state"] = json!("canceled");
        v2["due"] = Value::Null;
        let text3 = round_trip(RecordType::Task, &v2, Some(&text2));
        assert!(
            !text3.contains("\r\nCOMPLETED:") && !text3.contains("DUE"),
            "{text3}"
        );
        v2["percent_complete"] = json!(101);
        assert!(from_values(RecordType::Task, &v2, None).is_err());
    }

    #[test]
    fn task_dates_statuses_and_percentages_are_read() {
        let text = crlf(
            "BEGIN:VCALENDAR
            BEGIN:VTODO
            UID:t-2
            SUMMARY:Renew
            DUE;VALUE=DATE:20261231
            STATUS:COMPLETED
            X-CUSTOM:kept
            END:VTODO
            END:VCALENDAR",
        );
        let v = values(RecordType::Task, &text);
        assert_eq!(v["due"], "2026-12-31T00:00:00Z");
        assert_eq!(v["percent_complete"], 100);
        assert_eq!(v["state"], "completed");
        let mut v2 = v.clone();
        v2["due"] = json!("2027-01-15T00:00:00Z");
        v2["state"] = json!("open");
        v2["percent_complete"] = json!(0);
        let out = round_trip(RecordType::Task, &v2, Some(&text));
        assert!(
            out.contains("DUE;VALUE=DATE:20270115\r\n") && out.contains("X-CUSTOM:kept"),
            "{out}"
        );
        let zoned = text.replace(
            "DUE;VALUE=DATE:20261231",
            "DUE;TZID=Europe/Berlin:20261231T170000",
        );
        let v = values(RecordType::Task, &zoned);
        assert_eq!(v["due"], "2026-12-31T16:00:00Z");
        let out = round_trip(RecordType::Task, &v, Some(&zoned));
        assert!(
            out.contains("DUE;TZID=Europe/Berlin:20261231T170000"),
            "{out}"
        );
        assert!(out.contains("BEGIN:VTIMEZONE"), "{out}");
    }

    #[test]
    fn a_new_contact_is_a_vcard_4() {
        let v = json!({
            "full_name": "Ann Marie Lee",
            "emails": ["ann@example.com", "a.lee@example.org"],
            "company": "Fabrikam; Inc.",
            "job_title": "Buyer",
            "phones": ["+1 555 0100", "+1 555 0101"],
            "uid": "urn:uuid:0f5c6d3e-1",
            "categories": ["Tracked to Contoso"],
            "stamp": "org_1",
        });
        let text = round_trip(RecordType::Contact, &v, None);
        assert!(text.starts_with("BEGIN:VCARD\r\nVERSION:4.0\r\n"), "{text}");
        assert!(text.contains("N:Lee;Ann Marie;;;\r\n"), "{text}");
        assert!(text.contains("ORG:Fabrikam\\; Inc.\r\n"), "{text}");
        assert!(text.contains("TEL:+1 555 0100\r\n"), "{text}");
    }

    #[test]
    fn an_apple_vcard_3_keeps_its_version_and_syntax() {
        let text = crlf(
            "BEGIN:VCARD
            VERSION:3.0
            PRODID:-//Apple Inc.//iPhone OS 17.0//EN
            N:Lee;Ann;;;
            FN:Ann Lee
            ORG:Fabrikam;Sales;
            TITLE:Buyer
            item1.EMAIL;type=INTERNET;type=pref:Ann@Example.com
            item1.X-ABLabel:_$!<Other>!$_
            EMAIL;type=INTERNET;type=WORK:ann.lee@fabrikam.com
            TEL;type=CELL;type=VOICE;type=pref:+1 (555) 010-0100
            item2.TEL:tel:+15550100101
            PHOTO;ENCODING=b;TYPE=JPEG:/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgICAgMCAgIDAwMDBAYEBAQEBAgGBgUGCQgKCgkICQkKDA8MCgsOCwkJDRENDg8QEBEQCgwSExIQEw8QEBD/
            CATEGORIES:Customers,VIP
            UID:8C4C2C7E-1F2B-4C33-9A0B-1E0B5C8D0A11
            REV:2026-11-02T08:15:00Z
            END:VCARD",
        );
        let v = values(RecordType::Contact, &text);
        assert_eq!(
            v,
            json!({
                "full_name": "Ann Lee",
                "emails": ["ann@example.com", "ann.lee@fabrikam.com"],
                "company": "Fabrikam",
                "job_title": "Buyer",
                "phones": ["+1 (555) 010-0100", "+15550100101"],
                "uid": "8C4C2C7E-1F2B-4C33-9A0B-1E0B5C8D0A11",
                "categories": ["Customers", "VIP"],
                "stamp": null,
                "modified": "2026-11-02T08:15:00Z",
            })
        );
        let mut v2 = v.clone();
        v2["full_name"] = json!("Ann Lee-Smith");
        v2["company"] = json!("Contoso");
        v2["emails"] = json!(["ann@example.com", "ann@contoso.com"]);
        v2["stamp"] = json!("org_1");
        let out = round_trip(RecordType::Contact, &v2, Some(&text));
        for kept in [
            "VERSION:3.0",
            "item1.EMAIL;TYPE=INTERNET;TYPE=pref:Ann@Example.com",
            // Names are upper-cased (they are case-insensitive).
            "item1.X-ABLABEL:_$!<Other>!$_",
            "EMAIL;TYPE=INTERNET:ann@contoso.com",
            "N:Lee-Smith;Ann;;;",
            "ORG:Contoso;Sales;",
            "item2.TEL:tel:+15550100101",
            "PHOTO;ENCODING=b;TYPE=JPEG:/9j/",
            "X-SERVERSYNC-ORG:org_1",
        ] {
            assert!(out.contains(kept), "{kept} in\n{out}");
        }
        assert!(!out.contains("fabrikam.com"), "{out}");
    }

    #[test]
    fn a_contact_without_fn_is_named_from_n() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nN:Lee;Ann;M.;Dr.;\r\nEND:VCARD\r\n";
        let v = values(RecordType::Contact, text);
        assert_eq!(v["full_name"], "Dr. Ann M. Lee");
        assert_eq!(v["emails"], json!([]));
        assert_eq!(v["company"], Value::Null);
        let out = round_trip(RecordType::Contact, &v, Some(text));
        assert!(out.contains("\r\nN:Lee;Ann;M.;Dr.;\r\n"), "{out}");
        assert!(out.contains("\r\nFN:Dr. Ann M. Lee\r\n"), "{out}");
    }

    #[test]
    fn hostile_values_are_errors_not_panics() {
        let mut v = appointment();
        v["rrule"] = json!("FREQ=DAILY\r\nX-EVIL:1");
        assert!(from_values(RecordType::Appointment, &v, None).is_err());
        let mut v = appointment();
        v["attendees"] = json!([1]);
        assert!(from_values(RecordType::Appointment, &v, None).is_err());
        let text = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART:99991231T235959Z\r\n\
            DURATION:P999999999W\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        assert!(to_values(RecordType::Appointment, text).is_err());
        let text = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nDTSTART;TZID=Europe/Berlin:00000101T000000\r\n\
            END:VEVENT\r\nEND:VCALENDAR\r\n";
        let v = values(RecordType::Appointment, text);
        let _ = from_values(RecordType::Appointment, &v, Some(text));
    }

    #[test]
    fn durations_and_offsets() {
        assert_eq!(parse_duration("PT1H30M"), Some(TimeDelta::minutes(90)));
        assert_eq!(parse_duration("-P1W2D"), Some(TimeDelta::days(-9)));
        assert_eq!(parse_duration("P1DT1S"), Some(TimeDelta::seconds(86_401)));
        for bad in ["", "P", "PT", "P1H", "PT1D", "P1", "1D", "P1TT1H"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        assert_eq!(parse_offset("+0530"), Some(19_800));
        assert_eq!(parse_offset("-001730"), Some(-1_050));
        assert_eq!(format_offset(-1_050), "-001730");
        assert_eq!(format_offset(3_600), "+0100");
    }

    #[test]
    fn generated_vtimezones_follow_the_zone() {
        let ny = vtimezone("America/New_York".parse().unwrap(), 2026).to_text();
        assert!(ny.contains("DTSTART:20260308T020000\r\nTZOFFSETFROM:-0500\r\nTZOFFSETTO:-0400\r\nTZNAME:EDT\r\nRRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=2SU"), "{ny}");
        assert!(
            ny.contains("RRULE:FREQ=YEARLY;BYMONTH=11;BYDAY=1SU"),
            "{ny}"
        );
        let tokyo = vtimezone("Asia/Tokyo".parse().unwrap(), 2026).to_text();
        assert!(tokyo.contains("BEGIN:STANDARD\r\nDTSTART:19700101T000000\r\nTZOFFSETFROM:+0900\r\nTZOFFSETTO:+0900"), "{tokyo}");
        // The generated VTIMEZONE is read back like a foreign one.
        let cal = Component {
            name: "VCALENDAR".into(),
            properties: vec![],
            components: vec![vtimezone("America/New_York".parse().unwrap(), 2025)],
        };
        let local = |s: &str| parse_date_time(s).unwrap().0;
        assert_eq!(
            vtimezone_offset(&cal, "America/New_York", local("20260710T100000")),
            Some(-4 * 3600)
        );
        assert_eq!(
            vtimezone_offset(&cal, "America/New_York", local("20270110T100000")),
            Some(-5 * 3600)
        );
    }
}
