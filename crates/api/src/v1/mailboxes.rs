//! Mailboxes and their bulk actions.

use super::orgs::MAILBOX_SECRETS;
use super::{ListPage, doc, org, page};
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, Paging, Q, id};
use crate::json::{Body, patched};
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use serversync_engine::admin::MailboxFilter;
use serversync_model::item::ItemDecision;
use serversync_model::job::Job;
use serversync_model::mailbox::{ApprovalStatus, Mailbox, RunStatus};
use serversync_model::{MailboxId, ProfileId, UserId};
use utoipa::{IntoParams, ToSchema};

const READ_ONLY: &[&str] = &[
    "id",
    "org_id",
    "regarding",
    "owner_id",
    "approval",
    "incoming",
    "outgoing",
    "act",
    "test_completed_on",
    "telemetry",
    "created_at",
    "updated_at",
];

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MailboxQuery {
    pub profile_id: Option<ProfileId>,
    pub approval: Option<ApprovalStatus>,
    /// Overall status.
    pub status: Option<RunStatus>,
    pub owner_id: Option<UserId>,
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/mailboxes", tag = "mailboxes", params(("org" = String, Path), MailboxQuery), responses((status = 200, body = ListPage)))]
pub async fn list_mailboxes(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<MailboxQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = Paging {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    let f = MailboxFilter {
        profile_id: q.profile_id,
        approval: q.approval,
        status: q.status.map(|st| serversync_model::wire_name(&st)),
        owner_id: q.owner_id,
    };
    let found = s
        .admin
        .list_mailboxes(&c, org.id, &f, q.after.as_deref(), limit)
        .await?;
    let statuses: Vec<Value> = found
        .items
        .iter()
        .map(|m| serde_json::to_value(m.value.overall_status()).unwrap_or(Value::Null))
        .collect();
    let mut list = page(found, MAILBOX_SECRETS);
    for (item, status) in list.items.iter_mut().zip(statuses) {
        item["overall_status"] = status;
    }
    Ok(Json(list))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/mailboxes/{id}", tag = "mailboxes", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = Mailbox), (status = 404, body = Problem)))]
pub async fn get_mailbox(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, mid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let m = s.admin.mailbox(&c, org.id, id("id", &mid)?).await?;
    let mut d = doc(&m, MAILBOX_SECRETS);
    d["overall_status"] = serde_json::to_value(m.value.overall_status()).unwrap_or(Value::Null);
    Ok(Json(d))
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/mailboxes/{id}", tag = "mailboxes", params(("org" = String, Path), ("id" = String, Path)),
    request_body(content = Mailbox, description = "JSON merge patch: profile_id, delivery methods, credentials (`username`, write-only `password`), options; include `version` to refuse concurrent changes. A changed configuration disables the mailbox until it is tested and enabled again."),
    responses((status = 200, body = Mailbox), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_mailbox(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, mid)): P<(String, String)>,
    mut body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let mid: MailboxId = id("id", &mid)?;
    body.refuse(READ_ONLY)?;
    let expected = match body.take("version") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            Problem::bad_request(
                "invalid_type",
                Some("version"),
                "version must be an integer",
            )
        })?),
    };
    let password = match body.take_secret(&["password"])? {
        Some(Some(p)) => Some(p),
        Some(None) => {
            return Err(Problem::bad_request(
                "not_clearable",
                Some("password"),
                "the password can be replaced but not cleared",
            ));
        }
        None => None,
    };
    let current = s.admin.mailbox(&c, org.id, mid).await?;
    let mut next = patched(&current.value, &body.0)?;
    next.id = mid;
    let stored = s
        .admin
        .update_mailbox(&c, org.id, next, password, expected)
        .await?;
    Ok(Json(doc(&stored, MAILBOX_SECRETS)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub mailbox_ids: Vec<MailboxId>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApplyDefaults {
    pub mailbox_ids: Vec<MailboxId>,
    /// Then test and enable the mailboxes (default true, as the reference does).
    #[serde(default = "yes")]
    pub test_and_enable: bool,
}

fn yes() -> bool {
    true
}

fn selection(ids: &[MailboxId]) -> Result<(), Problem> {
    if ids.is_empty() || ids.len() > 1000 {
        return Err(Problem::bad_request(
            "out_of_range",
            Some("mailbox_ids"),
            "select between 1 and 1000 mailboxes",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/mailboxes/apply-defaults", tag = "mailboxes", params(("org" = String, Path)), request_body = ApplyDefaults,
    responses((status = 202, description = "{ mailboxes, job }: defaults applied; the test-and-enable job, if requested"), (status = 200, description = "{ mailboxes }: defaults applied, no job")))]
pub async fn apply_defaults(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let r: ApplyDefaults = body.parse()?;
    selection(&r.mailbox_ids)?;
    let (mailboxes, job) = s
        .admin
        .apply_default_settings(&c, org.id, &r.mailbox_ids, r.test_and_enable)
        .await?;
    let docs: Vec<Value> = mailboxes.iter().map(|m| doc(m, MAILBOX_SECRETS)).collect();
    let status = if job.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "mailboxes": docs, "job": job }))))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/mailboxes/approve", tag = "mailboxes", params(("org" = String, Path)), request_body = Selection,
    responses((status = 200, description = "{ mailboxes }"), (status = 403, body = Problem)))]
pub async fn approve(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    approval(s, c, o, body, true).await
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/mailboxes/reject", tag = "mailboxes", params(("org" = String, Path)), request_body = Selection,
    responses((status = 200, description = "{ mailboxes }"), (status = 403, body = Problem)))]
pub async fn reject(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<Json<Value>> {
    approval(s, c, o, body, false).await
}

async fn approval(
    s: AppState,
    c: serversync_model::auth::Caller,
    o: String,
    body: Body,
    approve: bool,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let r: Selection = body.parse()?;
    selection(&r.mailbox_ids)?;
    let ms = s
        .admin
        .set_approval(&c, org.id, &r.mailbox_ids, approve)
        .await?;
    let docs: Vec<Value> = ms.iter().map(|m| doc(m, MAILBOX_SECRETS)).collect();
    Ok(Json(json!({ "mailboxes": docs })))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/mailboxes/test-enable", tag = "mailboxes", params(("org" = String, Path)), request_body = Selection,
    responses((status = 202, body = Job, description = "Queued; follow it at /jobs/{id}"), (status = 403, body = Problem)))]
pub async fn test_enable(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let org = org(&s, &c, &o).await?;
    let r: Selection = body.parse()?;
    selection(&r.mailbox_ids)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(
            s.admin
                .enqueue_test_and_enable(&c, org.id, r.mailbox_ids)
                .await?,
        ),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemQuery {
    /// Only items with this decision.
    #[param(inline)]
    pub decision: Option<ItemDecision>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/mailboxes/{id}/items", tag = "mailboxes", params(("org" = String, Path), ("id" = String, Path), ItemQuery),
    responses((status = 200, body = ListPage, description = "Every message seen in the mailbox, oldest first, with its decision (stored / skipped / failed) and the reasons (`trace`)"), (status = 404, body = Problem)))]
pub async fn list_items(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, mid)): P<(String, String)>,
    Q(q): Q<ItemQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = Paging {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    Ok(Json(page(
        s.admin
            .items(
                &c,
                org.id,
                id("id", &mid)?,
                q.decision,
                q.after.as_deref(),
                limit,
            )
            .await?,
        &[],
    )))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/mailboxes/{id}/sync-now", tag = "mailboxes", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 202, body = Mailbox, description = "Requested: `telemetry.sync_requested_at` is set, a postponed retry is cleared, and the engine synchronizes the mailbox's incoming email at once"),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "`mailbox_not_enabled`: test and enable the mailbox first; `not_server_side_sync`: the mailbox does not receive email by server-side synchronization")))]
pub async fn sync_now(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, mid)): P<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let m = s.admin.sync_now(&c, org.id, id("id", &mid)?).await?;
    Ok((StatusCode::ACCEPTED, Json(doc(&m, MAILBOX_SECRETS))))
}
