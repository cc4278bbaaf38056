//! Email server profiles and organization email settings.

use super::{ListPage, doc, org, page};
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, Paging, Q, id};
use crate::json::{Body, parse, patched};
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use serversync_engine::admin::ProfileSecrets;
use serversync_model::job::Job;
use serversync_model::profile::{EmailServerProfile, Preset, ServerType};
use serversync_model::settings::EmailSettings;
use serversync_model::{ProfileId, UserId, ValidationErrors};

/// Write-only fields of a profile.
pub(crate) const PROFILE_SECRETS: &[&[&str]] = &[
    &["password"],
    &["outgoing_password"],
    &["oauth", "client_secret"],
    &["oauth", "client_certificate"],
];
const READ_ONLY: &[&str] = &["id", "org_id", "created_at", "updated_at"];

fn take_secrets(body: &mut Body) -> Result<ProfileSecrets, Problem> {
    let mut s = ProfileSecrets::default();
    let mut cleared = ValidationErrors::default();
    for (path, slot) in [
        (&["password"][..], &mut s.password),
        (&["outgoing_password"], &mut s.outgoing_password),
        (&["oauth", "client_secret"], &mut s.oauth_client_secret),
        (
            &["oauth", "client_certificate"],
            &mut s.oauth_client_certificate,
        ),
    ] {
        match body.take_secret(path)? {
            Some(Some(v)) => *slot = Some(v),
            Some(None) => cleared.push(
                "not_clearable",
                &path.join("."),
                "write-only fields can be replaced but not cleared: send a new value",
            ),
            None => {}
        }
    }
    cleared.into_result().map_err(|e| Problem::invalid(&e))?;
    Ok(s)
}

fn version(body: &mut Body) -> Result<Option<i64>, Problem> {
    match body.take("version") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            Problem::bad_request(
                "invalid_type",
                Some("version"),
                "version must be an integer (the version you read)",
            )
        }),
    }
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/profiles", tag = "profiles", params(("org" = String, Path), Paging), responses((status = 200, body = ListPage)))]
pub async fn list_profiles(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(p): Q<Paging>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    c.require(serversync_model::org::Privilege::ReadMailboxes)
        .map_err(serversync_engine::AdminError::from)?;
    Ok(Json(page(
        s.admin
            .list_profiles(org.id, p.after.as_deref(), p.limit()?)
            .await?,
        PROFILE_SECRETS,
    )))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/profiles", tag = "profiles", params(("org" = String, Path)),
    request_body(content = EmailServerProfile, description = "`name` and `server_type` (or `preset`: gmail, yahoo, outlook_com, exchange_online) are required; every other field takes its reference default. `password`, `outgoing_password`, `oauth.client_secret` and `oauth.client_certificate` (the app registration's certificate and RSA private key, PEM) take plaintext and are never returned."),
    responses((status = 201, body = EmailServerProfile), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_profile(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    mut body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    body.refuse(READ_ONLY)?;
    body.take("version");
    let secrets = take_secrets(&mut body)?;
    let name: String = match body.0.get("name") {
        Some(v) => parse(v.clone())
            .map_err(|_| Problem::invalid(&one("invalid_type", "name", "must be a string")))?,
        None => {
            return Err(Problem::invalid(&one(
                "required",
                "name",
                "give the profile a meaningful name",
            )));
        }
    };
    let owner: UserId = match body.0.get("owner_id") {
        Some(v) => parse(v.clone())
            .map_err(|_| Problem::invalid(&one("invalid_id", "owner_id", "must be a user id")))?,
        None => c.user.id,
    };
    let now = chrono::Utc::now();
    let base = match (
        body.0.get("preset").filter(|v| !v.is_null()),
        body.0.get("server_type"),
    ) {
        (Some(p), _) => {
            let preset: Preset = parse(p.clone()).map_err(|_| {
                Problem::invalid(&one(
                    "invalid_value",
                    "preset",
                    "use gmail, yahoo, outlook_com or exchange_online",
                ))
            })?;
            EmailServerProfile::from_preset(org.id, &name, preset, owner, now)
        }
        (None, Some(t)) => {
            let t: ServerType = parse(t.clone()).map_err(|_| Problem::invalid(&one("invalid_value", "server_type", "use exchange_server, exchange_server_hybrid, exchange_online, imap_smtp or pop3_smtp")))?;
            EmailServerProfile::new(org.id, &name, t, owner, now)
        }
        (None, None) => {
            return Err(Problem::invalid(&one(
                "required",
                "server_type",
                "choose a server type (or a preset)",
            )));
        }
    };
    let profile = patched(&base, &body.0)?;
    let profile = EmailServerProfile {
        id: base.id,
        org_id: org.id,
        created_at: now,
        updated_at: now,
        ..profile
    };
    let stored = s.admin.create_profile(&c, &org, profile, secrets).await?;
    Ok((StatusCode::CREATED, Json(doc(&stored, PROFILE_SECRETS))))
}

fn one(code: &str, field: &str, message: &str) -> ValidationErrors {
    let mut e = ValidationErrors::default();
    e.push(code, field, message);
    e
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/profiles/{id}", tag = "profiles", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = EmailServerProfile), (status = 404, body = Problem)))]
pub async fn get_profile(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, pid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    c.require(serversync_model::org::Privilege::ReadMailboxes)
        .map_err(serversync_engine::AdminError::from)?;
    let stored = s
        .admin
        .profile_stored(org.id, id::<ProfileId>("id", &pid)?)
        .await?;
    Ok(Json(doc(&stored, PROFILE_SECRETS)))
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/profiles/{id}", tag = "profiles", params(("org" = String, Path), ("id" = String, Path)),
    request_body(content = EmailServerProfile, description = "JSON merge patch of the profile; include `version` to refuse concurrent changes."),
    responses((status = 200, body = EmailServerProfile), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_profile(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, pid)): P<(String, String)>,
    mut body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let pid: ProfileId = id("id", &pid)?;
    body.refuse(READ_ONLY)?;
    let expected = version(&mut body)?;
    let secrets = take_secrets(&mut body)?;
    let current = s.admin.profile_stored(org.id, pid).await?;
    let mut next = patched(&current.value, &body.0)?;
    next.id = pid;
    next.password = current.value.password;
    next.outgoing_password = current.value.outgoing_password;
    if let (Some(n), Some(cur)) = (next.oauth.as_mut(), current.value.oauth.as_ref()) {
        n.client_secret = cur.client_secret;
        n.client_certificate = cur.client_certificate;
    }
    let stored = s
        .admin
        .update_profile(&c, &org, next, secrets, expected)
        .await?;
    Ok(Json(doc(&stored, PROFILE_SECRETS)))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/profiles/{id}", tag = "profiles", params(("org" = String, Path), ("id" = String, Path)), responses((status = 204), (status = 409, body = Problem)))]
pub async fn delete_profile(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, pid)): P<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = org(&s, &c, &o).await?;
    s.admin.delete_profile(&c, org.id, id("id", &pid)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/profiles/{id}/default", tag = "profiles", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = EmailServerProfile, description = "The profile, now the default for new mailboxes")))]
pub async fn make_default(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, pid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let stored = s
        .admin
        .set_default_profile(&c, org.id, id("id", &pid)?)
        .await?;
    Ok(Json(doc(&stored, PROFILE_SECRETS)))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/profiles/{id}/test-enable", tag = "profiles", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 202, body = Job, description = "Test and enable of every mailbox of the profile, queued")))]
pub async fn test_enable_profile(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, pid)): P<(String, String)>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let org = org(&s, &c, &o).await?;
    let job = s
        .admin
        .enqueue_test_and_enable_profile(&c, org.id, id("id", &pid)?)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/email-settings", tag = "settings", params(("org" = String, Path)), responses((status = 200, body = EmailSettings)))]
pub async fn get_settings(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(doc(&s.admin.settings(org.id).await?, &[])))
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/email-settings", tag = "settings", params(("org" = String, Path)),
    request_body(content = EmailSettings, description = "JSON merge patch; include `version` to refuse concurrent changes."),
    responses((status = 200, body = EmailSettings), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn update_settings(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    mut body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    body.refuse(&["org_id"])?;
    let expected = version(&mut body)?;
    let current = s.admin.settings(org.id).await?;
    let next = patched(&current.value, &body.0)?;
    Ok(Json(doc(
        &s.admin.update_settings(&c, org.id, next, expected).await?,
        &[],
    )))
}
