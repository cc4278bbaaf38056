//! Appointments: list (by owner, start time, state), create, read, change (partially),
//! delete. Organizer and attendees are given as email addresses; the parties keep what the
//! tracker resolved them to while their address stays.

use super::records::{check_span, email, emails, limit, nullable, required, text};
use super::{ListPage, doc, org, page};
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, Q, id};
use crate::json::Body;
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use serversync_engine::admin::RecordFilter;
use serversync_model::crm::{
    ActivityParty, ActivityState, Appointment, PartyRole, RecordRef, Recurrence,
};
use serversync_model::{ActivityId, UserId, ValidationErrors};
use utoipa::{IntoParams, ToSchema};

/// A new appointment.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAppointment {
    pub subject: String,
    pub location: Option<String>,
    pub description: Option<String>,
    pub starts_at: DateTime<Utc>,
    /// At or after `starts_at`.
    pub ends_at: DateTime<Utc>,
    #[serde(default)]
    pub all_day: bool,
    /// The IANA time zone the meeting is planned in (`Europe/Paris`).
    pub time_zone: Option<String>,
    /// The organizer's email address.
    pub organizer: Option<String>,
    /// The attendees' email addresses.
    #[serde(default)]
    pub attendees: Vec<String>,
    /// Default: open.
    pub state: Option<ActivityState>,
    /// For a recurring series: the iCalendar RRULE (`FREQ=WEEKLY;COUNT=10`) and its exceptions.
    pub recurrence: Option<Recurrence>,
    /// Default: the caller.
    pub owner_id: Option<UserId>,
    pub regarding: Option<RecordRef>,
}

/// The fields of an appointment to change; absent fields are kept, `null` clears an optional
/// one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppointmentChanges {
    pub subject: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub location: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    pub all_day: Option<bool>,
    /// IANA time zone name.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub time_zone: Option<Option<String>>,
    /// The organizer's email address.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub organizer: Option<Option<String>>,
    /// The attendees' email addresses: replaces the list.
    pub attendees: Option<Vec<String>>,
    pub state: Option<ActivityState>,
    /// Replaces the rule and its exceptions; `null` makes it a single appointment.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Recurrence>)]
    pub recurrence: Option<Option<Recurrence>>,
    /// The version you read: the change is refused (409) if someone changed the appointment
    /// since. Absent: the last write wins.
    pub version: Option<i64>,
}

/// Filters of the appointment list; all given must match. Unknown parameters are refused.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AppointmentQuery {
    /// Owned by this user (id).
    pub owner: Option<UserId>,
    /// Starting at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Starting before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    pub state: Option<ActivityState>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-1000, default 100.
    pub limit: Option<u32>,
}

/// Refuses a name that is not in the IANA time zone database.
fn time_zone(e: &mut ValidationErrors, tz: &str) {
    if tz.parse::<chrono_tz::Tz>().is_err() {
        e.push(
            "invalid_time_zone",
            "time_zone",
            format!(
                "{tz:?} is not an IANA time zone name such as Europe/Paris or America/New_York"
            ),
        );
    }
}

/// Refuses a rule that is not `KEY=VALUE` parts with a known `FREQ`, and changed occurrences
/// that end before they start.
fn recurrence(e: &mut ValidationErrors, r: &Recurrence) {
    const FREQS: [&str; 7] = [
        "SECONDLY", "MINUTELY", "HOURLY", "DAILY", "WEEKLY", "MONTHLY", "YEARLY",
    ];
    let rule = r.rule.trim();
    let rule = rule.strip_prefix("RRULE:").unwrap_or(rule);
    let parts: Option<Vec<(&str, &str)>> = rule.split(';').map(|p| p.split_once('=')).collect();
    let ok = parts.is_some_and(|parts| {
        parts.iter().all(|(k, v)| !k.is_empty() && !v.is_empty())
            && parts
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("FREQ"))
                .map(|(_, v)| FREQS.iter().any(|f| f.eq_ignore_ascii_case(v)))
                .eq([true])
    });
    if !ok {
        e.push(
            "invalid_rule",
            "recurrence.rule",
            "enter an iCalendar RRULE with one FREQ, such as FREQ=WEEKLY;COUNT=10",
        );
    }
    for (i, o) in r.changed.iter().enumerate() {
        if o.ends_at < o.starts_at {
            e.push(
                "ends_before_start",
                &format!("recurrence.changed[{i}].ends_at"),
                "a changed occurrence cannot end before it starts",
            );
        }
    }
}

fn ends_before_start(e: &mut ValidationErrors, field: &str) {
    e.push(
        "ends_before_start",
        field,
        "an appointment cannot end before it starts",
    );
}

/// The organizer for `address`: the current one when it has the same address (its name and
/// resolution kept).
fn organizer(current: Option<ActivityParty>, address: String) -> ActivityParty {
    match current {
        Some(p) if p.address.eq_ignore_ascii_case(&address) => p,
        _ => ActivityParty {
            role: PartyRole::From,
            address,
            display_name: None,
            resolved: None,
        },
    }
}

/// The attendees for `addresses`, in their order: a current attendee with the same address is
/// kept as it is; repeated addresses count once.
fn attendees(current: &[ActivityParty], addresses: Vec<String>) -> Vec<ActivityParty> {
    let mut out: Vec<ActivityParty> = Vec::new();
    for a in addresses {
        if out.iter().any(|p| p.address.eq_ignore_ascii_case(&a)) {
            continue;
        }
        out.push(
            current
                .iter()
                .find(|p| p.address.eq_ignore_ascii_case(&a))
                .cloned()
                .unwrap_or(ActivityParty {
                    role: PartyRole::To,
                    address: a,
                    display_name: None,
                    resolved: None,
                }),
        );
    }
    out
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/appointments", tag = "records", params(("org" = String, Path), AppointmentQuery),
    responses((status = 200, body = ListPage, description = "Appointments matching every filter, in creation order"), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn list_appointments(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<AppointmentQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = limit(q.limit)?;
    check_span(q.since, q.until)?;
    let f = RecordFilter {
        owner: q.owner,
        state: q.state,
        since: q.since,
        until: q.until,
    };
    Ok(Json(page(
        s.admin
            .list_records_where::<Appointment>(&c, org.id, &f, q.after.as_deref(), limit)
            .await?,
        &[],
    )))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/appointments", tag = "records", params(("org" = String, Path)), request_body = NewAppointment,
    responses((status = 201, body = Appointment), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_appointment(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let r: NewAppointment = body.parse()?;
    let mut e = ValidationErrors::default();
    required(&mut e, "subject", &r.subject);
    if r.ends_at < r.starts_at {
        ends_before_start(&mut e, "ends_at");
    }
    if let Some(tz) = &r.time_zone {
        time_zone(&mut e, tz);
    }
    if let Some(m) = &r.organizer {
        email(&mut e, "organizer", m);
    }
    emails(&mut e, "attendees", &r.attendees);
    if let Some(rec) = &r.recurrence {
        recurrence(&mut e, rec);
    }
    e.into_result().map_err(|e| Problem::invalid(&e))?;
    let now = Utc::now();
    let record = Appointment {
        id: ActivityId::new(),
        org_id: org.id,
        subject: r.subject,
        location: text(r.location),
        description: text(r.description),
        starts_at: r.starts_at,
        ends_at: r.ends_at,
        all_day: r.all_day,
        organizer: text(r.organizer).map(|a| organizer(None, a)),
        attendees: attendees(&[], r.attendees),
        owner_id: r.owner_id.unwrap_or(c.user.id),
        regarding: r.regarding,
        state: r.state.unwrap_or(ActivityState::Open),
        ical_uid: None,
        time_zone: text(r.time_zone),
        recurrence: r.recurrence,
        created_at: now,
        updated_at: now,
    };
    Ok((
        StatusCode::CREATED,
        Json(doc(&s.admin.create_record(&c, &record).await?, &[])),
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/appointments/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Appointment), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_appointment(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let aid: ActivityId = id("id", &aid)?;
    Ok(Json(doc(
        &s.admin
            .record::<Appointment>(&c, org.id, &aid.to_string())
            .await?,
        &[],
    )))
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/appointments/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    request_body(content = AppointmentChanges, description = "The fields to change; include `version` to refuse concurrent changes."),
    responses((status = 200, body = Appointment), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_appointment(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let aid: ActivityId = id("id", &aid)?;
    let ch: AppointmentChanges = body.parse()?;
    let mut e = ValidationErrors::default();
    if let Some(subject) = &ch.subject {
        required(&mut e, "subject", subject);
    }
    if let Some(Some(tz)) = &ch.time_zone {
        time_zone(&mut e, tz);
    }
    if let Some(Some(m)) = &ch.organizer {
        email(&mut e, "organizer", m);
    }
    if let Some(list) = &ch.attendees {
        emails(&mut e, "attendees", list);
    }
    if let Some(Some(rec)) = &ch.recurrence {
        recurrence(&mut e, rec);
    }
    e.into_result().map_err(|e| Problem::invalid(&e))?;
    let mut a = s
        .admin
        .record::<Appointment>(&c, org.id, &aid.to_string())
        .await?
        .value;
    let moved = (ch.starts_at.is_some(), ch.ends_at.is_some());
    if let Some(v) = ch.subject {
        a.subject = v;
    }
    if let Some(v) = ch.location {
        a.location = text(v);
    }
    if let Some(v) = ch.description {
        a.description = text(v);
    }
    if let Some(v) = ch.starts_at {
        a.starts_at = v;
    }
    if let Some(v) = ch.ends_at {
        a.ends_at = v;
    }
    if let Some(v) = ch.all_day {
        a.all_day = v;
    }
    if let Some(v) = ch.time_zone {
        a.time_zone = text(v);
    }
    if let Some(v) = ch.organizer {
        a.organizer = text(v).map(|address| organizer(a.organizer.take(), address));
    }
    if let Some(list) = ch.attendees {
        a.attendees = attendees(&a.attendees, list);
    }
    if let Some(v) = ch.state {
        a.state = v;
    }
    if let Some(v) = ch.recurrence {
        a.recurrence = v;
    }
    if moved != (false, false) && a.ends_at < a.starts_at {
        let mut e = ValidationErrors::default();
        ends_before_start(&mut e, if moved.1 { "ends_at" } else { "starts_at" });
        return Err(Problem::invalid(&e));
    }
    a.updated_at = Utc::now();
    Ok(Json(doc(
        &s.admin.update_record(&c, org.id, &a, ch.version).await?,
        &[],
    )))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/appointments/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_appointment(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = org(&s, &c, &o).await?;
    let aid: ActivityId = id("id", &aid)?;
    s.admin
        .delete_record::<Appointment>(&c, org.id, &aid.to_string())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule_errors(rule: &str) -> Vec<String> {
        let mut e = ValidationErrors::default();
        recurrence(
            &mut e,
            &Recurrence {
                rule: rule.into(),
                cancelled: Vec::new(),
                changed: Vec::new(),
            },
        );
        e.0.into_iter().map(|x| x.field).collect()
    }

    #[test]
    fn rules_need_one_known_frequency() {
        assert!(rule_errors("FREQ=WEEKLY;COUNT=10").is_empty());
        assert!(rule_errors("RRULE:FREQ=daily;INTERVAL=2").is_empty());
        for bad in [
            "",
            "WEEKLY",
            "COUNT=3",
            "FREQ=FORTNIGHTLY",
            "FREQ=DAILY;FREQ=WEEKLY",
            "FREQ=DAILY;;",
        ] {
            assert_eq!(rule_errors(bad), ["recurrence.rule"], "{bad:?}");
        }
    }

    #[test]
    fn time_zones_are_iana_names() {
        for (tz, ok) in [
            ("Europe/Paris", true),
            ("America/Argentina/Buenos_Aires", true),
            ("UTC", true),
            ("Mars/Olympus_Mons", false),
            ("W. Europe Standard Time", false),
            ("europe/paris", false),
        ] {
            let mut e = ValidationErrors::default();
            time_zone(&mut e, tz);
            assert_eq!(e.is_empty(), ok, "{tz}");
        }
    }

    #[test]
    fn attendees_keep_their_resolution_and_count_once() {
        let ann = ActivityParty {
            role: PartyRole::To,
            address: "Ann@x.test".into(),
            display_name: Some("Ann".into()),
            resolved: None,
        };
        let got = attendees(
            std::slice::from_ref(&ann),
            vec![
                "bob@x.test".into(),
                "ann@x.test".into(),
                "BOB@x.test".into(),
            ],
        );
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].address, "bob@x.test");
        assert_eq!(got[1], ann);
    }
}
