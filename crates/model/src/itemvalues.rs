//! The synchronized values of appointments, contacts and tasks: one JSON shape shared by every
//! connector (EWS, Microsoft Graph, CalDAV/CardDAV) and the CRM, so two-way synchronization
//! compares, merges ([`crate::merge`]) and hashes the same thing whatever the server.
//!
//! A value object holds the fields both sides share; absent and `null` are the same. Times are
//! RFC 3339 UTC strings with second precision (`2026-12-10T09:00:00Z`).
//!
//! | type | fields |
//! |---|---|
//! | appointment | `subject`, `location`, `description`, `start`, `end`, `all_day`, `time_zone` (IANA), `organizer` (email), `attendees` (emails, sorted), `state` (`open`/`canceled`), `rrule`, `exdates`, `overrides` (`recurrence_id`, `start`, `end`, `subject`, `location`, `description`) |
//! | task | `subject`, `description`, `due`, `percent_complete` (0‥100), `state` (`open`/`completed`/`canceled`) |
//! | contact | `full_name`, `emails`, `company`, `job_title`, `phones` |
//!
//! Besides these, the server side carries [`META`] fields that are not merged: `uid` (the
//! iCalendar/vCard UID), `categories` (the item's categories, where "Tracked to
//! <organization>" marks an item the user wants in the CRM), `stamp` (the organization
//! that synchronizes the item) and `modified` (when the server's copy last changed, RFC 3339,
//! for the "latest change wins" policy).

use crate::crm::{ActivityParty, ActivityState, Appointment, Contact, Occurrence, PartyRole};
use crate::crm::{Recurrence, Task};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value, json};

/// Fields of a server item that are not merged into the CRM record.
pub const META: [&str; 4] = ["uid", "categories", "stamp", "modified"];

/// The category that marks a server item to be tracked in the CRM (as the reference names it).
pub fn tracked_category(org_name: &str) -> String {
    format!("Tracked to {org_name}")
}

/// `values` without the [`META`] fields and without `null`s or empty arrays: what is merged
/// and hashed.
pub fn synced_fields(values: &Value) -> Map<String, Value> {
    values
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, v)| {
                    !META.contains(&k.as_str())
                        && !v.is_null()
                        && !v.as_array().is_some_and(Vec::is_empty)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The item's categories (`categories`), empty when none.
pub fn categories(values: &Value) -> Vec<String> {
    values["categories"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// RFC 3339 UTC with second precision, the one form times take in values.
pub fn time(t: DateTime<Utc>) -> Value {
    Value::String(t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

fn parse_time(v: &Value, field: &str) -> Result<Option<DateTime<Utc>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| format!("{field}: {s:?} is not an RFC 3339 time ({e})")),
        other => Err(format!("{field}: {other} is not a time")),
    }
}

fn text(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
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

fn object(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_null() && !v.as_array().is_some_and(Vec::is_empty))
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

fn attendee_emails(a: &Appointment) -> Vec<String> {
    let mut emails: Vec<String> = a
        .attendees
        .iter()
        .map(|p| p.address.trim().to_lowercase())
        .collect();
    emails.sort();
    emails.dedup();
    emails
}

/// An appointment's values.
pub fn appointment_values(a: &Appointment) -> Map<String, Value> {
    let r = a.recurrence.as_ref();
    let mut exdates: Vec<DateTime<Utc>> = r.map(|r| r.cancelled.clone()).unwrap_or_default();
    exdates.sort();
    let mut overrides: Vec<&Occurrence> = r.map(|r| r.changed.iter().collect()).unwrap_or_default();
    overrides.sort_by_key(|o| o.original_start);
    object(vec![
        ("subject", json!(a.subject)),
        ("location", json!(a.location)),
        ("description", json!(a.description)),
        ("start", time(a.starts_at)),
        ("end", time(a.ends_at)),
        ("all_day", if a.all_day { json!(true) } else { Value::Null }),
        ("time_zone", json!(a.time_zone)),
        (
            "organizer",
            json!(
                a.organizer
                    .as_ref()
                    .map(|p| p.address.trim().to_lowercase())
            ),
        ),
        ("attendees", json!(attendee_emails(a))),
        (
            "state",
            json!(if a.state == ActivityState::Canceled {
                "canceled"
            } else {
                "open"
            }),
        ),
        ("rrule", json!(r.map(|r| &r.rule))),
        (
            "exdates",
            Value::Array(exdates.into_iter().map(time).collect()),
        ),
        (
            "overrides",
            Value::Array(
                overrides
                    .into_iter()
                    .map(|o| {
                        Value::Object(object(vec![
                            ("recurrence_id", time(o.original_start)),
                            ("start", time(o.starts_at)),
                            ("end", time(o.ends_at)),
                            ("subject", json!(o.subject)),
                            ("location", json!(o.location)),
                            ("description", json!(o.description)),
                        ]))
                    })
                    .collect(),
            ),
        ),
    ])
}

/// Writes `changes` (fields of [`appointment_values`]; `null` clears) into `a`.
pub fn apply_appointment(a: &mut Appointment, changes: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in changes {
        match k.as_str() {
            "subject" => a.subject = text(v).unwrap_or_default(),
            "location" => a.location = text(v),
            "description" => a.description = text(v),
            "start" => {
                a.starts_at = parse_time(v, k)?.ok_or("start: an appointment needs a start")?
            }
            "end" => a.ends_at = parse_time(v, k)?.ok_or("end: an appointment needs an end")?,
            "all_day" => a.all_day = v.as_bool().unwrap_or(false),
            "time_zone" => a.time_zone = text(v),
            "organizer" => {
                a.organizer = text(v).map(|address| ActivityParty {
                    role: PartyRole::From,
                    display_name: a
                        .organizer
                        .as_ref()
                        .filter(|p| p.address.eq_ignore_ascii_case(&address))
                        .and_then(|p| p.display_name.clone()),
                    resolved: a
                        .organizer
                        .as_ref()
                        .filter(|p| p.address.eq_ignore_ascii_case(&address))
                        .and_then(|p| p.resolved),
                    address,
                })
            }
            "attendees" => {
                let emails = strings(v);
                let mut kept: Vec<ActivityParty> = a
                    .attendees
                    .iter()
                    .filter(|p| emails.iter().any(|e| e.eq_ignore_ascii_case(&p.address)))
                    .cloned()
                    .collect();
                for e in emails {
                    if !kept.iter().any(|p| p.address.eq_ignore_ascii_case(&e)) {
                        kept.push(ActivityParty {
                            role: PartyRole::To,
                            address: e,
                            display_name: None,
                            resolved: None,
                        });
                    }
                }
                a.attendees = kept;
            }
            "state" => {
                a.state = match v.as_str() {
                    Some("canceled") => ActivityState::Canceled,
                    // "open" on the server: a completed appointment stays completed (servers
                    // have no such state).
                    _ if a.state == ActivityState::Completed => ActivityState::Completed,
                    _ => ActivityState::Open,
                }
            }
            "rrule" | "exdates" | "overrides" => {}
            other => return Err(format!("{other}: not a field of an appointment")),
        }
    }
    if changes
        .keys()
        .any(|k| matches!(k.as_str(), "rrule" | "exdates" | "overrides"))
    {
        let mut values = appointment_values(a);
        for k in ["rrule", "exdates", "overrides"] {
            if let Some(v) = changes.get(k) {
                values.insert(k.to_owned(), v.clone());
            }
        }
        a.recurrence = recurrence(&values)?;
    }
    if a.ends_at < a.starts_at {
        return Err("end: the appointment ends before it starts".into());
    }
    Ok(())
}

fn recurrence(values: &Map<String, Value>) -> Result<Option<Recurrence>, String> {
    let Some(rule) = values.get("rrule").and_then(text) else {
        return Ok(None);
    };
    let mut cancelled = Vec::new();
    for v in values
        .get("exdates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        cancelled.extend(parse_time(v, "exdates")?);
    }
    let mut changed = Vec::new();
    for o in values
        .get("overrides")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let need = |f: &str| {
            parse_time(&o[f], &format!("overrides.{f}"))?
                .ok_or_else(|| format!("overrides.{f}: a changed occurrence needs it"))
        };
        changed.push(Occurrence {
            original_start: need("recurrence_id")?,
            starts_at: need("start")?,
            ends_at: need("end")?,
            subject: text(&o["subject"]),
            location: text(&o["location"]),
            description: text(&o["description"]),
        });
    }
    Ok(Some(Recurrence {
        rule,
        cancelled,
        changed,
    }))
}

fn task_state(s: ActivityState) -> &'static str {
    match s {
        ActivityState::Open => "open",
        ActivityState::Completed => "completed",
        ActivityState::Canceled => "canceled",
    }
}

/// A task's values.
pub fn task_values(t: &Task) -> Map<String, Value> {
    object(vec![
        ("subject", json!(t.subject)),
        ("description", json!(t.description)),
        ("due", t.due_at.map_or(Value::Null, time)),
        ("percent_complete", json!(t.percent_complete)),
        ("state", json!(task_state(t.state))),
    ])
}

/// Writes `changes` (fields of [`task_values`]; `null` clears) into `t`.
pub fn apply_task(t: &mut Task, changes: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in changes {
        match k.as_str() {
            "subject" => t.subject = text(v).unwrap_or_default(),
            "description" => t.description = text(v),
            "due" => t.due_at = parse_time(v, k)?,
            "percent_complete" => {
                t.percent_complete = match v {
                    Value::Null => 0,
                    v => v
                        .as_u64()
                        .filter(|p| *p <= 100)
                        .ok_or_else(|| format!("percent_complete: {v} is not 0 to 100"))?
                        as u8,
                }
            }
            "state" => {
                t.state = match v.as_str() {
                    Some("completed") => ActivityState::Completed,
                    Some("canceled") => ActivityState::Canceled,
                    _ => ActivityState::Open,
                }
            }
            other => return Err(format!("{other}: not a field of a task")),
        }
    }
    Ok(())
}

/// A contact's values.
pub fn contact_values(c: &Contact) -> Map<String, Value> {
    object(vec![
        ("full_name", json!(c.full_name)),
        (
            "emails",
            json!(
                c.emails
                    .iter()
                    .map(|e| e.trim().to_lowercase())
                    .collect::<Vec<_>>()
            ),
        ),
        ("company", json!(c.company)),
        ("job_title", json!(c.job_title)),
        ("phones", json!(c.phones)),
    ])
}

/// Writes `changes` (fields of [`contact_values`]; `null` clears) into `c`.
pub fn apply_contact(c: &mut Contact, changes: &Map<String, Value>) -> Result<(), String> {
    for (k, v) in changes {
        match k.as_str() {
            "full_name" => c.full_name = text(v).unwrap_or_default(),
            "emails" => c.emails = strings(v),
            "company" => c.company = text(v),
            "job_title" => c.job_title = text(v),
            "phones" => c.phones = strings(v),
            other => return Err(format!("{other}: not a field of a contact")),
        }
    }
    if c.full_name.trim().is_empty() {
        c.full_name = c.emails.first().cloned().unwrap_or_default();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActivityId, ContactId, OrgId, UserId};
    use chrono::TimeZone;

    fn at(h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 10, h, 0, 0).unwrap()
    }

    fn appointment() -> Appointment {
        Appointment {
            id: ActivityId::new(),
            org_id: OrgId::new(),
            subject: "Review".into(),
            location: Some("Room 1".into()),
            description: None,
            starts_at: at(9),
            ends_at: at(10),
            all_day: false,
            organizer: None,
            attendees: vec![],
            owner_id: UserId::new(),
            regarding: None,
            state: ActivityState::Completed,
            ical_uid: None,
            time_zone: Some("Europe/Berlin".into()),
            recurrence: Some(Recurrence {
                rule: "FREQ=WEEKLY;COUNT=4".into(),
                cancelled: vec![at(9) + chrono::Duration::days(14)],
                changed: vec![Occurrence {
                    original_start: at(9) + chrono::Duration::days(7),
                    starts_at: at(11) + chrono::Duration::days(7),
                    ends_at: at(12) + chrono::Duration::days(7),
                    subject: None,
                    location: None,
                    description: None,
                }],
            }),
            created_at: at(0),
            updated_at: at(0),
        }
    }

    #[test]
    fn appointment_values_round_trip_through_the_record() {
        let a = appointment();
        let v = appointment_values(&a);
        assert_eq!(v["start"], "2026-12-10T09:00:00Z");
        assert_eq!(v["exdates"], json!(["2026-12-24T09:00:00Z"]));
        assert_eq!(v["overrides"][0]["start"], "2026-12-17T11:00:00Z");
        assert!(!v.contains_key("description"), "nulls are left out");
        let mut b = appointment();
        b.recurrence = None;
        b.subject = "Other".into();
        apply_appointment(&mut b, &v).unwrap();
        assert_eq!(b.recurrence, a.recurrence);
        assert_eq!(b.subject, "Review");
        assert_eq!(
            b.state,
            ActivityState::Completed,
            "a server's `open` does not reopen a completed appointment"
        );
        assert_eq!(appointment_values(&b), v);
    }

    #[test]
    fn a_bad_value_names_its_field() {
        let mut a = appointment();
        let e = apply_appointment(&mut a, &object(vec![("start", json!("tomorrow"))]));
        assert!(e.unwrap_err().starts_with("start:"));
        let e = apply_appointment(
            &mut a,
            &object(vec![("end", json!("2026-12-10T08:00:00Z"))]),
        );
        assert!(e.unwrap_err().contains("ends before it starts"));
    }

    #[test]
    fn meta_fields_and_empties_are_not_synced_fields() {
        let v = json!({"subject": "x", "uid": "u", "categories": ["Tracked to Contoso"],
            "stamp": "org", "attendees": [], "location": null});
        assert_eq!(Value::Object(synced_fields(&v)), json!({"subject": "x"}));
        assert_eq!(categories(&v), ["Tracked to Contoso"]);
    }

    #[test]
    fn contacts_and_tasks_round_trip() {
        let mut c = Contact {
            id: ContactId::new(),
            org_id: OrgId::new(),
            full_name: "Ann Lee".into(),
            emails: vec!["Ann@Example.com".into()],
            account_id: None,
            company: Some("Fabrikam".into()),
            job_title: None,
            phones: vec!["+1 555 0100".into()],
            owner_id: UserId::new(),
            created_at: at(0),
        };
        let v = contact_values(&c);
        assert_eq!(v["emails"], json!(["ann@example.com"]));
        let mut changes = v.clone();
        changes.insert("job_title".into(), json!("Buyer"));
        changes.insert("company".into(), Value::Null);
        apply_contact(&mut c, &changes).unwrap();
        assert_eq!(c.job_title.as_deref(), Some("Buyer"));
        assert_eq!(c.company, None);

        let mut t = Task {
            id: ActivityId::new(),
            org_id: OrgId::new(),
            subject: "Call".into(),
            description: None,
            due_at: Some(at(17)),
            percent_complete: 0,
            owner_id: UserId::new(),
            regarding: None,
            state: ActivityState::Open,
            created_at: at(0),
            updated_at: at(0),
        };
        apply_task(
            &mut t,
            &object(vec![
                ("state", json!("completed")),
                ("percent_complete", json!(100)),
            ]),
        )
        .unwrap();
        assert_eq!(task_values(&t)["state"], "completed");
        assert!(apply_task(&mut t, &object(vec![("percent_complete", json!(140))])).is_err());
    }
}
