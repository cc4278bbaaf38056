//! Tasks: list (by owner, state), create, read, change (partially), delete.

use super::records::{limit, nullable, required, text};
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
use serversync_model::crm::{ActivityState, RecordRef, Task};
use serversync_model::{ActivityId, UserId, ValidationErrors};
use utoipa::{IntoParams, ToSchema};

/// A new task.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub subject: String,
    pub description: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    /// 0-100, default 0.
    #[serde(default)]
    pub percent_complete: u32,
    /// Default: open.
    pub state: Option<ActivityState>,
    /// Default: the caller.
    pub owner_id: Option<UserId>,
    pub regarding: Option<RecordRef>,
}

/// The fields of a task to change; absent fields are kept, `null` clears an optional one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskChanges {
    pub subject: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub due_at: Option<Option<DateTime<Utc>>>,
    /// 0-100.
    pub percent_complete: Option<u32>,
    pub state: Option<ActivityState>,
    /// The version you read: the change is refused (409) if someone changed the task since.
    /// Absent: the last write wins.
    pub version: Option<i64>,
}

/// Filters of the task list; all given must match. Unknown parameters are refused.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// Owned by this user (id).
    pub owner: Option<UserId>,
    pub state: Option<ActivityState>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-1000, default 100.
    pub limit: Option<u32>,
}

/// The percentage as stored, or the problem naming `percent_complete`.
fn percent(e: &mut ValidationErrors, p: u32) -> u8 {
    match u8::try_from(p) {
        Ok(p @ 0..=100) => p,
        _ => {
            e.push(
                "out_of_range",
                "percent_complete",
                "percent_complete must be between 0 and 100",
            );
            0
        }
    }
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/tasks", tag = "records", params(("org" = String, Path), TaskQuery),
    responses((status = 200, body = ListPage, description = "Tasks matching every filter, in creation order"), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn list_tasks(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<TaskQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = limit(q.limit)?;
    let f = RecordFilter {
        owner: q.owner,
        state: q.state,
        ..RecordFilter::default()
    };
    Ok(Json(page(
        s.admin
            .list_records_where::<Task>(&c, org.id, &f, q.after.as_deref(), limit)
            .await?,
        &[],
    )))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/tasks", tag = "records", params(("org" = String, Path)), request_body = NewTask,
    responses((status = 201, body = Task), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let r: NewTask = body.parse()?;
    let mut e = ValidationErrors::default();
    required(&mut e, "subject", &r.subject);
    let percent_complete = percent(&mut e, r.percent_complete);
    e.into_result().map_err(|e| Problem::invalid(&e))?;
    let now = Utc::now();
    let record = Task {
        id: ActivityId::new(),
        org_id: org.id,
        subject: r.subject,
        description: text(r.description),
        due_at: r.due_at,
        percent_complete,
        owner_id: r.owner_id.unwrap_or(c.user.id),
        regarding: r.regarding,
        state: r.state.unwrap_or(ActivityState::Open),
        created_at: now,
        updated_at: now,
    };
    Ok((
        StatusCode::CREATED,
        Json(doc(&s.admin.create_record(&c, &record).await?, &[])),
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/tasks/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Task), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, tid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let tid: ActivityId = id("id", &tid)?;
    Ok(Json(doc(
        &s.admin.record::<Task>(&c, org.id, &tid.to_string()).await?,
        &[],
    )))
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/tasks/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    request_body(content = TaskChanges, description = "The fields to change; include `version` to refuse concurrent changes."),
    responses((status = 200, body = Task), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, tid)): P<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let tid: ActivityId = id("id", &tid)?;
    let ch: TaskChanges = body.parse()?;
    let mut e = ValidationErrors::default();
    if let Some(subject) = &ch.subject {
        required(&mut e, "subject", subject);
    }
    let percent_complete = ch.percent_complete.map(|p| percent(&mut e, p));
    e.into_result().map_err(|e| Problem::invalid(&e))?;
    let mut t = s
        .admin
        .record::<Task>(&c, org.id, &tid.to_string())
        .await?
        .value;
    if let Some(v) = ch.subject {
        t.subject = v;
    }
    if let Some(v) = ch.description {
        t.description = text(v);
    }
    if let Some(v) = ch.due_at {
        t.due_at = v;
    }
    if let Some(v) = percent_complete {
        t.percent_complete = v;
    }
    if let Some(v) = ch.state {
        t.state = v;
    }
    t.updated_at = Utc::now();
    Ok(Json(doc(
        &s.admin.update_record(&c, org.id, &t, ch.version).await?,
        &[],
    )))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/tasks/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_task(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, tid)): P<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = org(&s, &c, &o).await?;
    let tid: ActivityId = id("id", &tid)?;
    s.admin
        .delete_record::<Task>(&c, org.id, &tid.to_string())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
