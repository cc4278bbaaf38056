//! Outgoing email: compose (draft or send), send a draft or try a failed email again, and the
//! Email Router handoff (claim pending emails with a lease, then report each one).

use super::org;
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, id};
use crate::json::Body;
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serversync_model::auth::Caller;
use serversync_model::crm::{EmailActivity, NewEmail, RouterSend};
use serversync_model::{MailboxId, OrgId, ValidationErrors};
use utoipa::ToSchema;

/// An email activity with, while it waits in pending send, the reason it has not gone out.
#[derive(Serialize, ToSchema)]
pub struct EmailActivityView {
    #[serde(flatten)]
    pub activity: EmailActivity,
    /// Why a pending email has not been sent yet (mailbox not approved, not tested and
    /// enabled, postponed, scheduled, retrying, rate-limited, or waiting for the Email Router);
    /// absent when it is not waiting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_waiting: Option<String>,
}

pub(crate) async fn view(
    s: &AppState,
    c: &Caller,
    org: OrgId,
    activity: EmailActivity,
) -> ApiResult<EmailActivityView> {
    let send_waiting = s.admin.send_waiting(c, org, &activity).await?;
    Ok(EmailActivityView {
        activity,
        send_waiting,
    })
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/activities", tag = "outgoing", params(("org" = String, Path)), request_body = NewEmail,
    responses((status = 201, body = EmailActivityView, description = "The email activity: a draft, or pending send"),
        (status = 403, body = Problem, description = "Not allowed to send from this mailbox (`missing_privilege`, `send_as_not_allowed`, `no_queue_access`)"),
        (status = 413, body = Problem, description = "The body is larger than attachments of 25 MB in base64 need (`body_too_large`)"),
        (status = 422, body = Problem)))]
pub async fn compose(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body<{ crate::json::COMPOSE_BODY }>,
) -> ApiResult<(StatusCode, Json<EmailActivityView>)> {
    let org = org(&s, &c, &o).await?;
    let new: NewEmail = body.parse()?;
    let a = s.admin.compose_email(&c, org.id, new).await?;
    Ok((StatusCode::CREATED, Json(view(&s, &c, org.id, a).await?)))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/activities/{id}/send", tag = "outgoing", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = EmailActivityView, description = "Back in pending send"),
        (status = 409, body = Problem, description = "Not a draft, failed or outcome-unknown outgoing email (`not_sendable`)"),
        (status = 404, body = Problem)))]
pub async fn send(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
) -> ApiResult<Json<EmailActivityView>> {
    let org = org(&s, &c, &o).await?;
    let a = s.admin.send_activity(&c, org.id, id("id", &aid)?).await?;
    Ok(Json(view(&s, &c, org.id, a).await?))
}

/// An Email Router asks for work.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    /// Only this mailbox's emails.
    #[serde(default)]
    pub mailbox: Option<MailboxId>,
    /// At most this many (1–100; default 10).
    #[serde(default)]
    pub limit: Option<u32>,
    /// How long the router holds them before it must report (30–3600 s; default 300).
    #[serde(default)]
    pub lease_seconds: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/outgoing/claims", tag = "outgoing", params(("org" = String, Path)), request_body = ClaimRequest,
    responses((status = 200, body = Vec<RouterSend>, description = "Emails now held by the caller (status sending): send each, then report it before its claim runs out; an email whose claim runs out becomes outcome unknown"),
        (status = 422, body = Problem)))]
pub async fn claim(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<Json<Vec<RouterSend>>> {
    let org = org(&s, &c, &o).await?;
    let r: ClaimRequest = body.parse()?;
    let mut e = ValidationErrors::default();
    let limit = r.limit.unwrap_or(10);
    if !(1..=100).contains(&limit) {
        e.push("out_of_range", "limit", "must be between 1 and 100");
    }
    let lease = r.lease_seconds.unwrap_or(300);
    if !(30..=3600).contains(&lease) {
        e.push(
            "out_of_range",
            "lease_seconds",
            "must be between 30 and 3600",
        );
    }
    e.into_result().map_err(|e| Problem::invalid(&e))?;
    Ok(Json(
        s.admin
            .claim_for_router(
                &c,
                org.id,
                r.mailbox,
                limit,
                chrono::Duration::seconds(lease.into()),
            )
            .await?,
    ))
}

/// What became of an email the router claimed.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterReport {
    pub claim_id: String,
    pub outcome: RouterOutcome,
    /// The server's reply or the reason, for a failed email.
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RouterOutcome {
    Sent,
    Failed,
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/activities/{id}/router-report", tag = "outgoing", params(("org" = String, Path), ("id" = String, Path)), request_body = RouterReport,
    responses((status = 200, body = EmailActivity, description = "Sent or failed, as reported"),
        (status = 409, body = Problem, description = "The claim is not held (it ran out, or another id): `claim_not_held`"),
        (status = 404, body = Problem)))]
pub async fn router_report(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
    body: Body,
) -> ApiResult<Json<EmailActivity>> {
    let org = org(&s, &c, &o).await?;
    let r: RouterReport = body.parse()?;
    Ok(Json(
        s.admin
            .report_router_send(
                &c,
                org.id,
                id("id", &aid)?,
                &r.claim_id,
                r.outcome == RouterOutcome::Sent,
                r.error,
            )
            .await?,
    ))
}
