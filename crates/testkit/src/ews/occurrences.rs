//! Occurrences of recurring calendar items ([MS-OXWSMTGS] 2.2.4.x, 3.1.4): a series'
//! occurrences counted from its `Recurrence` (pattern and range) in its `StartTimeZone`, the
//! `OccurrenceItemId` (`RecurringMasterId` + 1-based `InstanceIndex`) and the ItemIds of
//! occurrences, and what `DeleteItem` and `UpdateItem` of one occurrence do to the master: a
//! `DeletedOccurrence` (its original start), or a `ModifiedOccurrence` (`ItemId`, `Start`,
//! `End`, `OriginalStart`; the properties an update gave the occurrence are kept beside them
//! and never rendered there). `GetItem` of an occurrence renders the master's properties with
//! the occurrence's over them (`CalendarItemType` `Occurrence` or `Exception`).
//!
//! Errors as Exchange answers them: an index past the series' end (or below 1)
//! `ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange`, an occurrence deleted before
//! `ErrorCalendarOccurrenceIsDeletedFromRecurrence`, a master that is no series
//! `ErrorCalendarCannotUseIdForRecurringMasterId`, an occurrence moved onto or past the day of
//! its neighbour `ErrorOccurrenceCrossingBoundary`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

use super::pim::Refusal;
use super::store::Pim;
use super::xml::{Node, write};

pub(super) const OUT_OF_RANGE: Refusal = (
    "ErrorCalendarOccurrenceIndexIsOutOfRecurrenceRange",
    "Occurrence index is out of recurrence range.",
);
pub(super) const DELETED: Refusal = (
    "ErrorCalendarOccurrenceIsDeletedFromRecurrence",
    "Occurrence with this index was previously deleted from the recurrence.",
);
pub(super) const NOT_A_SERIES: Refusal = (
    "ErrorCalendarCannotUseIdForRecurringMasterId",
    "The Id is not the Id of a recurring master.",
);
const CROSSING: Refusal = (
    "ErrorOccurrenceCrossingBoundary",
    "An occurrence cannot be moved to or past the day of an adjacent occurrence.",
);

/// Days past the start date looked at.
const MAX_DAYS: u64 = 36_600;

/// Windows time zone ids the double knows (others count in UTC).
const ZONES: &[(&str, &str)] = &[
    ("UTC", "UTC"),
    ("GMT Standard Time", "Europe/London"),
    ("W. Europe Standard Time", "Europe/Berlin"),
    ("Romance Standard Time", "Europe/Paris"),
    ("Central Europe Standard Time", "Europe/Budapest"),
    ("Central European Standard Time", "Europe/Warsaw"),
    ("FLE Standard Time", "Europe/Helsinki"),
    ("GTB Standard Time", "Europe/Bucharest"),
    ("Eastern Standard Time", "America/New_York"),
    ("Central Standard Time", "America/Chicago"),
    ("Mountain Standard Time", "America/Denver"),
    ("Pacific Standard Time", "America/Los_Angeles"),
    ("India Standard Time", "Asia/Kolkata"),
    ("China Standard Time", "Asia/Shanghai"),
    ("Tokyo Standard Time", "Asia/Tokyo"),
    ("AUS Eastern Standard Time", "Australia/Sydney"),
];

fn weekday(name: &str) -> Option<Weekday> {
    Some(match name {
        "Monday" => Weekday::Mon,
        "Tuesday" => Weekday::Tue,
        "Wednesday" => Weekday::Wed,
        "Thursday" => Weekday::Thu,
        "Friday" => Weekday::Fri,
        "Saturday" => Weekday::Sat,
        "Sunday" => Weekday::Sun,
        _ => return None,
    })
}

const MONTHS: [&str; 12] = [
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

fn date(s: &str) -> Option<NaiveDate> {
    let s = s.trim();
    NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").ok()
}

pub(super) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

pub(super) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A series' pattern and range.
struct Series {
    pattern: String,
    interval: i64,
    days: Vec<Weekday>,
    index: i32,
    day_of_month: u32,
    month: u32,
    first_day: Weekday,
    start_date: NaiveDate,
    count: Option<u64>,
    end_date: Option<NaiveDate>,
}

impl Series {
    fn of(rec: &Node) -> Option<Series> {
        let range = rec
            .children
            .iter()
            .find(|c| c.child("StartDate").is_some())?;
        let p = rec
            .children
            .iter()
            .find(|c| c.child("StartDate").is_none())?;
        let start_date = date(range.child_text("StartDate")?)?;
        Some(Series {
            pattern: p.name.clone(),
            interval: p
                .child_text("Interval")
                .and_then(|i| i.trim().parse().ok())
                .filter(|i| *i >= 1)
                .unwrap_or(1),
            days: p
                .child_text("DaysOfWeek")
                .unwrap_or("")
                .split_whitespace()
                .filter_map(weekday)
                .collect(),
            index: match p.child_text("DayOfWeekIndex").map(str::trim) {
                Some("First") => 1,
                Some("Second") => 2,
                Some("Third") => 3,
                Some("Fourth") => 4,
                Some("Last") => -1,
                _ => 0,
            },
            day_of_month: p
                .child_text("DayOfMonth")
                .and_then(|d| d.trim().parse().ok())
                .unwrap_or(start_date.day()),
            month: p
                .child_text("Month")
                .and_then(|m| MONTHS.iter().position(|x| *x == m.trim()))
                .map_or(start_date.month(), |i| i as u32 + 1),
            first_day: p
                .child_text("FirstDayOfWeek")
                .and_then(|d| weekday(d.trim()))
                .unwrap_or(Weekday::Mon),
            start_date,
            count: (range.name == "NumberedRecurrence")
                .then(|| range.child_text("NumberOfOccurrences")?.trim().parse().ok())
                .flatten(),
            end_date: (range.name == "EndDateRecurrence")
                .then(|| date(range.child_text("EndDate")?))
                .flatten(),
        })
    }

    fn months(&self, d: NaiveDate) -> i64 {
        (i64::from(d.year()) - i64::from(self.start_date.year())) * 12 + i64::from(d.month())
            - i64::from(self.start_date.month())
    }

    fn relative(&self, d: NaiveDate) -> bool {
        if !self.days.contains(&d.weekday()) {
            return false;
        }
        let month: Vec<NaiveDate> = (0..31)
            .filter_map(|n| d.with_day(1)?.checked_add_days(Days::new(n)))
            .filter(|x| x.month() == d.month() && self.days.contains(&x.weekday()))
            .collect();
        let pick = match self.index {
            -1 => month.last(),
            n if n >= 1 => month.get(n as usize - 1),
            _ => None,
        };
        pick == Some(&d)
    }

    fn matches(&self, d: NaiveDate) -> bool {
        match self.pattern.as_str() {
            "DailyRecurrence" => (d - self.start_date).num_days() % self.interval == 0,
            "WeeklyRecurrence" => {
                let week = |x: NaiveDate| {
                    x - Days::new(u64::from(
                        (7 + x.weekday().num_days_from_monday()
                            - self.first_day.num_days_from_monday())
                            % 7,
                    ))
                };
                (week(d) - week(self.start_date)).num_days() / 7 % self.interval == 0
                    && self.days.contains(&d.weekday())
            }
            "AbsoluteMonthlyRecurrence" => {
                self.months(d) % self.interval == 0 && d.day() == self.day_of_month
            }
            "RelativeMonthlyRecurrence" => self.months(d) % self.interval == 0 && self.relative(d),
            "AbsoluteYearlyRecurrence" => d.month() == self.month && d.day() == self.day_of_month,
            "RelativeYearlyRecurrence" => d.month() == self.month && self.relative(d),
            _ => false,
        }
    }

    /// The local date of occurrence `index` (1-based).
    fn nth(&self, index: u64) -> Option<NaiveDate> {
        if index == 0 || self.count.is_some_and(|c| index > c) {
            return None;
        }
        let mut n = 0;
        for k in 0..MAX_DAYS {
            let d = self.start_date.checked_add_days(Days::new(k))?;
            if self.end_date.is_some_and(|e| d > e) {
                return None;
            }
            if self.matches(d) {
                n += 1;
                if n == index {
                    return Some(d);
                }
            }
        }
        None
    }
}

/// The zone a calendar item's times are counted in.
fn zone(pim: &Pim) -> Tz {
    pim.field("StartTimeZone")
        .and_then(|z| z.attr("Id"))
        .and_then(|id| ZONES.iter().find(|(w, _)| *w == id))
        .and_then(|(_, iana)| iana.parse().ok())
        .unwrap_or(Tz::UTC)
}

fn field_time(pim: &Pim, name: &str) -> Option<DateTime<Utc>> {
    parse_time(&pim.field(name)?.text)
}

fn instant(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    zone.from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// The original start of occurrence `index` of the series `pim`.
pub(super) fn original_start(pim: &Pim, index: i64) -> Result<DateTime<Utc>, Refusal> {
    let rec = pim.field("Recurrence").ok_or(NOT_A_SERIES)?;
    let series = Series::of(rec).ok_or(NOT_A_SERIES)?;
    let start = field_time(pim, "Start").ok_or(NOT_A_SERIES)?;
    let z = zone(pim);
    let local_time: NaiveTime = start.with_timezone(&z).time();
    let index = u64::try_from(index).map_err(|_| OUT_OF_RANGE)?;
    let day = series.nth(index).ok_or(OUT_OF_RANGE)?;
    instant(z, day.and_time(local_time)).ok_or(OUT_OF_RANGE)
}

/// The index of the occurrence that started at `original` (bounded search).
pub(super) fn index_of(pim: &Pim, original: DateTime<Utc>) -> Option<i64> {
    (1..=5_000).find_map(|i| match original_start(pim, i) {
        Ok(t) if t == original => Some(Some(i)),
        Ok(t) if t > original => Some(None),
        Ok(_) => None,
        Err(_) => Some(None),
    })?
}

/// The ItemId of the occurrence of series `master` that originally starts at `original`.
pub(super) fn occurrence_id(master: &str, original: DateTime<Utc>) -> String {
    format!(
        "AAMkA{}",
        B64.encode(format!("occurrence|{master}|{}", original.timestamp()))
    )
}

/// (master id, original start) of an occurrence's ItemId.
pub(super) fn decode_occurrence_id(id: &str) -> Option<(String, DateTime<Utc>)> {
    let raw = String::from_utf8(B64.decode(id.get(5..)?).ok()?).ok()?;
    let rest = raw.strip_prefix("occurrence|")?;
    let (master, secs) = rest.rsplit_once('|')?;
    Some((
        master.to_string(),
        DateTime::from_timestamp(secs.parse().ok()?, 0)?,
    ))
}

pub(super) fn deleted(pim: &Pim) -> Vec<DateTime<Utc>> {
    pim.field("DeletedOccurrences")
        .map(|d| {
            d.children
                .iter()
                .filter_map(|o| parse_time(o.child_text("Start")?))
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn modified(pim: &Pim, original: DateTime<Utc>) -> Option<&Node> {
    pim.field("ModifiedOccurrences")?.children.iter().find(|o| {
        o.child_text("OriginalStart")
            .and_then(parse_time)
            .is_some_and(|t| t == original)
    })
}

fn leaf(name: &str, text: &str) -> Node {
    Node {
        name: name.to_string(),
        text: text.to_string(),
        ..Node::default()
    }
}

/// Resolves an `OccurrenceItemId`'s index of the series `pim` to its original start; an
/// occurrence deleted before is refused.
pub(super) fn resolve(pim: &Pim, index: &str) -> Result<DateTime<Utc>, Refusal> {
    if pim.kind != "CalendarItem" || pim.field("Recurrence").is_none() {
        return Err(NOT_A_SERIES);
    }
    let index: i64 = index.trim().parse().map_err(|_| OUT_OF_RANGE)?;
    let original = original_start(pim, index)?;
    if deleted(pim).contains(&original) {
        return Err(DELETED);
    }
    Ok(original)
}

/// Cancels the occurrence of `pim` that originally starts at `original` (a
/// `DeletedOccurrence`; a modification of it is gone).
pub(super) fn cancel(pim: &mut Pim, original: DateTime<Utc>) -> Result<(), Refusal> {
    if deleted(pim).contains(&original) {
        return Err(DELETED);
    }
    remove_modified(pim, original);
    let mut all = deleted(pim);
    all.push(original);
    all.sort();
    pim.put(Node {
        name: "DeletedOccurrences".into(),
        children: all
            .into_iter()
            .map(|t| Node {
                name: "DeletedOccurrence".into(),
                children: vec![leaf("Start", &time(t))],
                ..Node::default()
            })
            .collect(),
        ..Node::default()
    });
    Ok(())
}

fn remove_modified(pim: &mut Pim, original: DateTime<Utc>) {
    let Some(mut m) = pim.field("ModifiedOccurrences").cloned() else {
        return;
    };
    m.children.retain(|o| {
        o.child_text("OriginalStart")
            .and_then(parse_time)
            .is_none_or(|t| t != original)
    });
    if m.children.is_empty() {
        pim.remove("ModifiedOccurrences");
    } else {
        pim.put(m);
    }
}

/// The occurrence of the series `pim` that originally starts at `original`, as a calendar
/// item of its own: the master's properties with the occurrence's over them.
pub(super) fn occurrence(pim: &Pim, original: DateTime<Utc>) -> Pim {
    let mut occ = pim.clone();
    for f in [
        "Recurrence",
        "ModifiedOccurrences",
        "DeletedOccurrences",
        "FirstOccurrence",
        "LastOccurrence",
    ] {
        occ.remove(f);
    }
    let length = field_time(pim, "End")
        .zip(field_time(pim, "Start"))
        .map_or(chrono::Duration::zero(), |(e, s)| e - s);
    occ.put(leaf("Start", &time(original)));
    occ.put(leaf("End", &time(original + length)));
    let own = modified(pim, original);
    for f in own.map(|o| o.children.as_slice()).unwrap_or_default() {
        if f.name != "ItemId" {
            occ.put(f.clone());
        }
    }
    occ.put(leaf("OriginalStart", &time(original)));
    occ.put(leaf(
        "CalendarItemType",
        if own.is_some() {
            "Exception"
        } else {
            "Occurrence"
        },
    ));
    occ.put(leaf("IsRecurring", "true"));
    occ
}

/// Applies an update to the occurrence of `pim` that originally starts at `original`: the
/// changed properties are kept on its `ModifiedOccurrence`. `apply` changes the occurrence
/// as a calendar item of its own.
pub(super) fn modify(
    pim: &mut Pim,
    master_id: &str,
    original: DateTime<Utc>,
    apply: impl FnOnce(&mut Pim) -> Result<(), Refusal>,
) -> Result<String, Refusal> {
    let before = occurrence(pim, original);
    let mut after = before.clone();
    apply(&mut after)?;
    for f in ["Recurrence", "ModifiedOccurrences", "DeletedOccurrences"] {
        if after.field(f).is_some() {
            return Err((
                "ErrorInvalidPropertySet",
                "Set action is invalid for property.",
            ));
        }
    }
    let start = field_time(&after, "Start").ok_or(CROSSING)?;
    let end = field_time(&after, "End").ok_or(CROSSING)?;
    if end < start {
        return Err((
            "ErrorCalendarEndDateIsEarlierThanStartDate",
            "EndDate is earlier than StartDate",
        ));
    }
    // Not onto or past the day of a neighbour that is still there (where it is now, moved
    // or not).
    if let Some(i) = index_of(pim, original) {
        let z = zone(pim);
        let day = start.with_timezone(&z).date_naive();
        let gone = deleted(pim);
        let at = |i: i64| -> Option<Option<NaiveDate>> {
            let o = original_start(pim, i).ok()?;
            Some((!gone.contains(&o)).then(|| {
                modified(pim, o)
                    .and_then(|m| m.child_text("Start"))
                    .and_then(parse_time)
                    .unwrap_or(o)
                    .with_timezone(&z)
                    .date_naive()
            }))
        };
        let previous = (1..i).rev().find_map(|j| at(j).flatten());
        let next = (i + 1..i + 1000).map_while(at).flatten().next();
        if previous.is_some_and(|p| day <= p) || next.is_some_and(|n| day >= n) {
            return Err(CROSSING);
        }
    }
    let id = occurrence_id(master_id, original);
    let mut node = Node {
        name: "Occurrence".into(),
        children: vec![
            Node {
                name: "ItemId".into(),
                attrs: vec![("Id".into(), id.clone())],
                ..Node::default()
            },
            leaf("Start", &time(start)),
            leaf("End", &time(end)),
            leaf("OriginalStart", &time(original)),
        ],
        ..Node::default()
    };
    // What the occurrence has of its own besides its times (kept, not rendered here).
    for f in &after.fields {
        if matches!(
            f.name.as_str(),
            "Start" | "End" | "OriginalStart" | "CalendarItemType" | "IsRecurring"
        ) {
            continue;
        }
        if pim.field(&f.name).map(write) != Some(write(f)) {
            node.children.push(f.clone());
        }
    }
    remove_modified(pim, original);
    let mut all = pim.field("ModifiedOccurrences").cloned().unwrap_or(Node {
        name: "ModifiedOccurrences".into(),
        ..Node::default()
    });
    all.children.push(node);
    all.children
        .sort_by_key(|o| o.child_text("OriginalStart").and_then(parse_time));
    pim.put(all);
    Ok(id)
}

/// `ModifiedOccurrences` as the schema has it (`ItemId`, `Start`, `End`, `OriginalStart`).
pub(super) fn rendered(modified: &Node) -> Node {
    let mut m = modified.clone();
    for o in &mut m.children {
        o.children.retain(|c| {
            matches!(
                c.name.as_str(),
                "ItemId" | "Start" | "End" | "OriginalStart"
            )
        });
    }
    m
}
