//! The occurrences of a recurring series as Exchange counts them: an EWS `Recurrence` (pattern
//! and range) expanded day by day in the series' time zone, so an occurrence's start (an
//! exdate, an override's `recurrence_id`) becomes the 1-based `InstanceIndex` of an
//! `OccurrenceItemId`. Pure; bounded ([`MAX_DAYS`] days from the start date).
//!
//! Patterns: daily, weekly (weeks begin on `FirstDayOfWeek`, Monday when not said, as
//! iCalendar's WKST), absolute and relative monthly and yearly. An absolute day of the month
//! that a month does not have (the 31st in April) is skipped, as iCalendar does.

use super::items::{DAYS, INDEXES, MONTHS};
use super::xml::Element;
use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

/// Days past the start date that are looked at (a little over 100 years).
pub const MAX_DAYS: u64 = 36_600;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Daily,
    Weekly,
    AbsoluteMonthly,
    RelativeMonthly,
    AbsoluteYearly,
    RelativeYearly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Count(u32),
    Date(NaiveDate),
    Never,
}

/// A series' pattern and range.
#[derive(Debug, Clone)]
pub struct Series {
    kind: Kind,
    interval: u32,
    days: Vec<Weekday>,
    /// 1‥4, or -1 for the last.
    index: i32,
    day_of_month: u32,
    month: u32,
    first_day: Weekday,
    start_date: NaiveDate,
    end: End,
}

fn weekday(name: &str) -> Option<Weekday> {
    DAYS.iter().find(|(_, n, _)| *n == name).map(|(_, _, w)| *w)
}

fn date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.get(..10).unwrap_or(s), "%Y-%m-%d").ok()
}

impl Series {
    /// The series of a `Recurrence` element (local names; prefixes stripped).
    pub fn parse(rec: &Element) -> Result<Series, String> {
        let mut pattern = None;
        let mut range = None;
        for c in &rec.children {
            if c.child("StartDate").is_some() {
                range = Some(c);
            } else {
                pattern = Some(c);
            }
        }
        let pattern = pattern.ok_or("the recurrence has no pattern")?;
        let range = range.ok_or("the recurrence has no range")?;
        let kind = match pattern.name.as_str() {
            "DailyRecurrence" => Kind::Daily,
            "WeeklyRecurrence" => Kind::Weekly,
            "AbsoluteMonthlyRecurrence" => Kind::AbsoluteMonthly,
            "RelativeMonthlyRecurrence" => Kind::RelativeMonthly,
            "AbsoluteYearlyRecurrence" => Kind::AbsoluteYearly,
            "RelativeYearlyRecurrence" => Kind::RelativeYearly,
            other => return Err(format!("the pattern {other} has no occurrences here")),
        };
        let interval = pattern
            .text_of("Interval")
            .map_or(Ok(1), |i| i.trim().parse::<u32>())
            .ok()
            .filter(|i| *i >= 1)
            .ok_or("Interval is not a positive number")?;
        let days = pattern
            .text_of("DaysOfWeek")
            .unwrap_or_default()
            .split_whitespace()
            .map(|d| weekday(d).ok_or_else(|| format!("DaysOfWeek {d:?} is not one day")))
            .collect::<Result<Vec<_>, _>>()?;
        let index = match pattern.text_of("DayOfWeekIndex") {
            None => 0,
            Some(name) => INDEXES
                .iter()
                .find(|(_, n)| *n == name)
                .map(|(i, _)| *i)
                .ok_or_else(|| format!("DayOfWeekIndex {name:?}"))?,
        };
        let start_date = range
            .text_of("StartDate")
            .and_then(date)
            .ok_or("StartDate is not a date")?;
        let day_of_month = match pattern.text_of("DayOfMonth") {
            Some(d) => d
                .trim()
                .parse()
                .ok()
                .filter(|d| (1..=31).contains(d))
                .ok_or("DayOfMonth is not a day")?,
            None => start_date.day(),
        };
        let month = match pattern.text_of("Month") {
            Some(m) => MONTHS
                .iter()
                .position(|x| *x == m.trim())
                .map(|i| i as u32 + 1)
                .ok_or_else(|| format!("Month {m:?}"))?,
            None => start_date.month(),
        };
        let first_day = match pattern.text_of("FirstDayOfWeek") {
            Some(d) => weekday(d.trim()).ok_or_else(|| format!("FirstDayOfWeek {d:?}"))?,
            None => Weekday::Mon,
        };
        let end = match range.name.as_str() {
            "NumberedRecurrence" => End::Count(
                range
                    .text_of("NumberOfOccurrences")
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or("NumberOfOccurrences is not a number")?,
            ),
            "EndDateRecurrence" => End::Date(
                range
                    .text_of("EndDate")
                    .and_then(date)
                    .ok_or("EndDate is not a date")?,
            ),
            "NoEndRecurrence" => End::Never,
            other => return Err(format!("the range {other} has no occurrences here")),
        };
        if matches!(kind, Kind::RelativeMonthly | Kind::RelativeYearly)
            && (days.is_empty() || index == 0)
        {
            return Err("a relative pattern needs days and a position".into());
        }
        if kind == Kind::Weekly && days.is_empty() {
            return Err("a weekly pattern needs days".into());
        }
        Ok(Series {
            kind,
            interval,
            days,
            index,
            day_of_month,
            month,
            first_day,
            start_date,
            end,
        })
    }

    fn months_since_start(&self, day: NaiveDate) -> i64 {
        (i64::from(day.year()) - i64::from(self.start_date.year())) * 12 + i64::from(day.month())
            - i64::from(self.start_date.month())
    }

    /// Whether `day` is the `index`th of the pattern's weekdays in its month.
    fn is_relative_day(&self, day: NaiveDate) -> bool {
        if !self.days.contains(&day.weekday()) {
            return false;
        }
        let Some(first) = day.with_day(1) else {
            return false;
        };
        let mut matching = Vec::new();
        let mut d = first;
        while d.month() == day.month() {
            if self.days.contains(&d.weekday()) {
                matching.push(d);
            }
            match d.succ_opt() {
                Some(n) => d = n,
                None => break,
            }
        }
        let pick = match self.index {
            -1 => matching.last(),
            n if n >= 1 => matching.get(n as usize - 1),
            _ => None,
        };
        pick == Some(&day)
    }

    fn matches(&self, day: NaiveDate) -> bool {
        let interval = i64::from(self.interval);
        match self.kind {
            Kind::Daily => (day - self.start_date).num_days() % interval == 0,
            Kind::Weekly => {
                let week_start = |d: NaiveDate| {
                    let back = (7 + d.weekday().num_days_from_monday()
                        - self.first_day.num_days_from_monday())
                        % 7;
                    d - Days::new(u64::from(back))
                };
                let weeks = (week_start(day) - week_start(self.start_date)).num_days() / 7;
                weeks % interval == 0 && self.days.contains(&day.weekday())
            }
            Kind::AbsoluteMonthly => {
                self.months_since_start(day) % interval == 0 && day.day() == self.day_of_month
            }
            Kind::RelativeMonthly => {
                self.months_since_start(day) % interval == 0 && self.is_relative_day(day)
            }
            Kind::AbsoluteYearly => day.month() == self.month && day.day() == self.day_of_month,
            Kind::RelativeYearly => day.month() == self.month && self.is_relative_day(day),
        }
    }

    /// The local dates of the occurrences, in order (bounded by [`MAX_DAYS`]).
    pub fn dates(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        let mut count = 0u32;
        (0..MAX_DAYS)
            .map_while(move |n| self.start_date.checked_add_days(Days::new(n)))
            .take_while(move |d| match self.end {
                End::Date(e) => *d <= e,
                _ => true,
            })
            .filter(move |d| self.matches(*d))
            .take_while(move |_| {
                count += 1;
                match self.end {
                    End::Count(n) => count <= n,
                    _ => true,
                }
            })
    }
}

/// The UTC instant of a local time in `zone` (the earlier of two; past a gap, an hour on).
pub fn instant(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    zone.from_local_datetime(&local)
        .earliest()
        .or_else(|| {
            zone.from_local_datetime(&(local + chrono::Duration::hours(1)))
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

/// The 1-based index of the occurrence starting at `at` of a series whose occurrences start
/// at `time` (local, in `zone`); `None` when no occurrence starts then.
pub fn instance_index(
    series: &Series,
    zone: Tz,
    time: NaiveTime,
    at: DateTime<Utc>,
) -> Option<u32> {
    for (i, d) in series.dates().enumerate() {
        let t = instant(zone, d.and_time(time))?;
        if t == at {
            return u32::try_from(i + 1).ok();
        }
        if t > at {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(xml: &str) -> Series {
        Series::parse(&Element::parse(xml.as_bytes()).unwrap()).unwrap()
    }

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn patterns_expand_as_exchange_counts_them() {
        let weekly = series(
            "<Recurrence><WeeklyRecurrence><Interval>2</Interval><DaysOfWeek>Monday Wednesday</DaysOfWeek></WeeklyRecurrence><NumberedRecurrence><StartDate>2026-12-09</StartDate><NumberOfOccurrences>4</NumberOfOccurrences></NumberedRecurrence></Recurrence>",
        );
        let got: Vec<NaiveDate> = weekly.dates().collect();
        assert_eq!(
            got,
            vec![
                d("2026-12-09"),
                d("2026-12-21"),
                d("2026-12-23"),
                d("2027-01-04")
            ]
        );
        let last_friday = series(
            "<Recurrence><RelativeMonthlyRecurrence><Interval>1</Interval><DaysOfWeek>Friday</DaysOfWeek><DayOfWeekIndex>Last</DayOfWeekIndex></RelativeMonthlyRecurrence><EndDateRecurrence><StartDate>2026-12-01</StartDate><EndDate>2027-02-28</EndDate></EndDateRecurrence></Recurrence>",
        );
        let got: Vec<NaiveDate> = last_friday.dates().collect();
        assert_eq!(got, vec![d("2026-12-25"), d("2027-01-29"), d("2027-02-26")]);
        let monthly = series(
            "<Recurrence><AbsoluteMonthlyRecurrence><Interval>1</Interval><DayOfMonth>31</DayOfMonth></AbsoluteMonthlyRecurrence><NumberedRecurrence><StartDate>2027-01-31</StartDate><NumberOfOccurrences>3</NumberOfOccurrences></NumberedRecurrence></Recurrence>",
        );
        let got: Vec<NaiveDate> = monthly.dates().collect();
        assert_eq!(got, vec![d("2027-01-31"), d("2027-03-31"), d("2027-05-31")]);
        let daily = series(
            "<Recurrence><DailyRecurrence><Interval>3</Interval></DailyRecurrence><NoEndRecurrence><StartDate>2026-12-10</StartDate></NoEndRecurrence></Recurrence>",
        );
        assert_eq!(daily.dates().nth(2), Some(d("2026-12-16")));
        let yearly = series(
            "<Recurrence><RelativeYearlyRecurrence><DaysOfWeek>Thursday</DaysOfWeek><DayOfWeekIndex>Fourth</DayOfWeekIndex><Month>November</Month></RelativeYearlyRecurrence><NumberedRecurrence><StartDate>2026-11-26</StartDate><NumberOfOccurrences>2</NumberOfOccurrences></NumberedRecurrence></Recurrence>",
        );
        let got: Vec<NaiveDate> = yearly.dates().collect();
        assert_eq!(got, vec![d("2026-11-26"), d("2027-11-25")]);
    }

    #[test]
    fn an_instant_is_indexed_in_the_series_time_zone() {
        // Weekly in Berlin across the end of summer time: 09:00 local stays 09:00 local.
        let weekly = series(
            "<Recurrence><WeeklyRecurrence><Interval>1</Interval><DaysOfWeek>Thursday</DaysOfWeek></WeeklyRecurrence><NumberedRecurrence><StartDate>2026-10-15</StartDate><NumberOfOccurrences>4</NumberOfOccurrences></NumberedRecurrence></Recurrence>",
        );
        let zone: Tz = "Europe/Berlin".parse().unwrap();
        let nine = NaiveTime::from_hms_opt(9, 0, 0).unwrap();
        let third = Utc.with_ymd_and_hms(2026, 10, 29, 8, 0, 0).unwrap();
        assert_eq!(instance_index(&weekly, zone, nine, third), Some(3));
        let first = Utc.with_ymd_and_hms(2026, 10, 15, 7, 0, 0).unwrap();
        assert_eq!(instance_index(&weekly, zone, nine, first), Some(1));
        // Not an occurrence: an hour off, a day off, past the end.
        for t in [
            Utc.with_ymd_and_hms(2026, 10, 29, 7, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 10, 30, 8, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 12, 8, 0, 0).unwrap(),
        ] {
            assert_eq!(instance_index(&weekly, zone, nine, t), None, "{t}");
        }
    }
}
