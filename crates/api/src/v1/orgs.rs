//! Organizations, users, tokens, queues, roles.

use super::{ListPage, org, page};
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, Paging, Q, id};
use crate::json::Body;
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use serversync_engine::admin::{NewUser, UserChanges};
use serversync_model::auth::ApiToken;
use serversync_model::org::{BuiltinRole, Domain, Organization, Privilege, Role};
use serversync_model::{Secret, UserId};
use utoipa::{IntoParams, ToSchema};

pub(crate) const MAILBOX_SECRETS: &[&[&str]] = &[&["password"]];

#[utoipa::path(get, path = "/api/v1/orgs", tag = "organizations", responses((status = 200, body = [Organization]), (status = 401, body = Problem)))]
pub async fn list_orgs(
    State(s): State<AppState>,
    Auth(c): Auth,
) -> ApiResult<Json<Vec<Organization>>> {
    Ok(Json(s.admin.list_orgs(&c).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrg {
    /// 1-64 lowercase letters, digits and dashes.
    pub name: String,
    pub display_name: String,
}

#[utoipa::path(post, path = "/api/v1/orgs", tag = "organizations", request_body = NewOrg, responses((status = 201, body = Organization), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_org(
    State(s): State<AppState>,
    Auth(c): Auth,
    body: Body,
) -> ApiResult<(StatusCode, Json<Organization>)> {
    let n: NewOrg = body.parse()?;
    Ok((
        StatusCode::CREATED,
        Json(s.admin.create_org(&c, &n.name, &n.display_name).await?),
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}", tag = "organizations", params(("org" = String, Path, description = "Organization id or name")), responses((status = 200, body = Organization), (status = 404, body = Problem)))]
pub async fn get_org(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
) -> ApiResult<Json<Organization>> {
    Ok(Json(org(&s, &c, &o).await?))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/users", tag = "users", params(("org" = String, Path), Paging), responses((status = 200, body = ListPage)))]
pub async fn list_users(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(p): Q<Paging>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(page(
        s.admin
            .list_users(&c, org.id, p.after.as_deref(), p.limit()?)
            .await?,
        USER_SECRETS,
    )))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUserRequest {
    pub full_name: String,
    pub email: String,
    /// Built-in roles: system_administrator, mailbox_approver, basic_user (default basic_user).
    #[serde(default)]
    pub roles: Vec<BuiltinRole>,
    /// Global or Exchange administrator of the Microsoft 365 tenant.
    #[serde(default)]
    pub tenant_exchange_admin: bool,
    /// Mailbox password, for profiles whose credentials are specified by the user or queue.
    #[schema(value_type = Option<String>, format = Password, write_only)]
    pub mailbox_password: Option<Secret>,
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/users", tag = "users", params(("org" = String, Path)), request_body = NewUserRequest,
    responses((status = 201, description = "The user and its new mailbox: { user, mailbox }"), (status = 403, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_user(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let r: NewUserRequest = body.parse()?;
    let roles = if r.roles.is_empty() {
        vec![BuiltinRole::BasicUser]
    } else {
        r.roles
    };
    let (user, mailbox) = s
        .admin
        .create_user(
            &c,
            org.id,
            NewUser {
                full_name: r.full_name,
                email: r.email,
                roles,
                tenant_exchange_admin: r.tenant_exchange_admin,
                password: r.mailbox_password,
            },
        )
        .await?;
    let m = crate::json::document(&mailbox, 1, MAILBOX_SECRETS);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "user": crate::json::document(&user, 1, USER_SECRETS), "mailbox": m })),
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/users/{id}", tag = "users", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, description = "The user"), (status = 404, body = Problem)))]
pub async fn get_user(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, uid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let uid: UserId = id("id", &uid)?;
    if uid != c.user.id && !c.has(Privilege::ManageUsers) && !c.has(Privilege::ReadMailboxes) {
        return Err(Problem::not_found(&format!("user {uid}")));
    }
    let u = s.admin.user(org.id, uid).await?;
    Ok(Json(crate::json::document(&u, 1, USER_SECRETS)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A name to recognize the token by (1-100 characters).
    pub name: String,
    /// Days until the token expires (1-3650); default: `auth.token_lifetime_days` of the
    /// server's configuration.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// A token as the API shows it: never the token itself nor its hash.
fn token_doc(t: &ApiToken) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("token_hash");
    }
    v
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/users/{id}/tokens", tag = "tokens", params(("org" = String, Path), ("id" = String, Path)), request_body = NewToken,
    description = "A new API token for a user: one's own, or (installation administrators only; audited as `create_for_user`) another user's.",
    responses((status = 201, description = "{ token, id, prefix, user_id, expires_at }: the token is shown only in this response"), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create_token(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, uid)): P<(String, String)>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let uid: UserId = id("id", &uid)?;
    let n: NewToken = body.parse()?;
    let (token, t) = s
        .admin
        .issue_token(&c, org.id, uid, &n.name, n.expires_in_days)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "token": token, "id": t.id, "prefix": t.prefix, "user_id": t.user_id, "expires_at": t.expires_at }),
        ),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenQuery {
    /// Only this user's tokens.
    pub user_id: Option<UserId>,
    /// Only tokens still live (neither revoked nor expired).
    #[serde(default)]
    pub live_only: bool,
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/tokens", tag = "tokens", params(("org" = String, Path), TokenQuery),
    description = "API and session tokens of the organization (with manage_users), else the caller's own; never the token or its hash.",
    responses((status = 200, body = ListPage)))]
pub async fn list_tokens(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<TokenQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = Paging {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    let p = s
        .admin
        .list_tokens(
            &c,
            org.id,
            q.user_id,
            q.live_only,
            q.after.as_deref(),
            limit,
        )
        .await?;
    Ok(Json(ListPage {
        items: p.items.iter().map(|t| token_doc(&t.value)).collect(),
        next: p.next,
    }))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/tokens/{id}/revoke", tag = "tokens", params(("org" = String, Path), ("id" = String, Path)),
    description = "Revokes a token: one's own, or (with manage_users) one of a user holding no more privileges than the caller.",
    responses((status = 200, description = "The revoked token"), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_token(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, tid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let t = s.admin.revoke_token(&c, org.id, id("id", &tid)?).await?;
    Ok(Json(token_doc(&t)))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/queues", tag = "queues", params(("org" = String, Path), Paging), responses((status = 200, body = ListPage)))]
pub async fn list_queues(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(p): Q<Paging>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(page(
        s.admin
            .list_queues(org.id, p.after.as_deref(), p.limit()?)
            .await?,
        &[],
    )))
}

/// A user's settings.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    /// Disable (or enable again) the user: a disabled user's tokens and sessions are revoked.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// Let users holding "send as another user" send email on this user's behalf.
    #[serde(default)]
    pub allow_send_as: Option<bool>,
    #[serde(default)]
    pub full_name: Option<String>,
    /// Password for the admin center (at least 12 characters). Write-only.
    #[serde(default)]
    #[schema(value_type = Option<String>, format = Password, write_only)]
    pub password: Option<Secret>,
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/users/{id}", tag = "users", params(("org" = String, Path), ("id" = String, Path)), request_body = UserPatch,
    description = "Changes a user: oneself, or (with manage_users) a user holding no more privileges than the caller; only an installation administrator changes an installation administrator. A new password ends the user's sessions; disabling revokes all their tokens.",
    responses((status = 200, description = "The user"), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update_user(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, uid)): P<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let p: UserPatch = body.parse()?;
    let u = s
        .admin
        .update_user(
            &c,
            org.id,
            id("id", &uid)?,
            UserChanges {
                allow_send_as: p.allow_send_as,
                full_name: p.full_name,
                password: p.password,
                disabled: p.disabled,
            },
        )
        .await?;
    Ok(Json(crate::json::document(&u, 1, USER_SECRETS)))
}

/// Who has read access to a queue.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueMembers {
    pub member_ids: std::collections::BTreeSet<UserId>,
}

#[utoipa::path(put, path = "/api/v1/orgs/{org}/queues/{id}/members", tag = "queues", params(("org" = String, Path), ("id" = String, Path)), request_body = QueueMembers,
    responses((status = 200, description = "The queue"), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn set_queue_members(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, qid)): P<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let m: QueueMembers = body.parse()?;
    let q = s
        .admin
        .set_queue_members(&c, org.id, id("id", &qid)?, m.member_ids)
        .await?;
    Ok(Json(crate::json::document(&q, 1, &[])))
}

/// Write-only fields of a user, shown as "********" when set.
pub const USER_SECRETS: &[&[&str]] = &[&["password"]];

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewQueue {
    pub name: String,
    pub email: String,
    /// Owner of the queue (and of its mailbox); default: the caller.
    pub owner_id: Option<UserId>,
    #[schema(value_type = Option<String>, format = Password, write_only)]
    pub mailbox_password: Option<Secret>,
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/queues", tag = "queues", params(("org" = String, Path)), request_body = NewQueue,
    responses((status = 201, description = "The queue and its new mailbox: { queue, mailbox }"), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_queue(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let n: NewQueue = body.parse()?;
    let (q, m) = s
        .admin
        .create_queue(
            &c,
            org.id,
            &n.name,
            &n.email,
            n.owner_id,
            n.mailbox_password,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "queue": crate::json::document(&q, 1, &[]), "mailbox": crate::json::document(&m, 1, MAILBOX_SECRETS) }),
        ),
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/roles", tag = "users", params(("org" = String, Path)), responses((status = 200, body = [Role])))]
pub async fn list_roles(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
) -> ApiResult<Json<Vec<Role>>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(s.admin.roles(org.id).await?))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/domains", tag = "organizations", params(("org" = String, Path)),
    responses((status = 200, body = [Domain], description = "The mail domains assigned to the organization: the Email Router delivers an address only to the organization holding its domain")))]
pub async fn list_domains(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
) -> ApiResult<Json<Vec<Domain>>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(s.admin.list_domains(&c, org.id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDomain {
    /// A domain name such as `example.com`.
    pub domain: String,
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/domains", tag = "organizations", params(("org" = String, Path)), request_body = NewDomain,
    responses((status = 201, body = Domain, description = "Assigned: only this organization may use addresses in the domain, and the Email Router delivers them here"),
        (status = 403, body = Problem, description = "Only an installation administrator assigns domains: `installation_admin_required`"),
        (status = 409, body = Problem, description = "The domain is already assigned (to this or another organization)"),
        (status = 422, body = Problem)))]
pub async fn assign_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Domain>)> {
    let org = org(&s, &c, &o).await?;
    let n: NewDomain = body.parse()?;
    Ok((
        StatusCode::CREATED,
        Json(s.admin.assign_domain(&c, org.id, &n.domain).await?),
    ))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/domains/{domain}", tag = "organizations", params(("org" = String, Path), ("domain" = String, Path)),
    responses((status = 204, description = "The domain is no longer assigned: the Email Router refuses its addresses until it is assigned again"),
        (status = 403, body = Problem, description = "Only an installation administrator removes domains: `installation_admin_required`"),
        (status = 404, body = Problem)))]
pub async fn remove_domain(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, domain)): P<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = org(&s, &c, &o).await?;
    s.admin.remove_domain(&c, org.id, &domain).await?;
    Ok(StatusCode::NO_CONTENT)
}
