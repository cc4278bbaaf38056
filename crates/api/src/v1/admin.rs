//! Alerts, jobs, the audit log, and the installation's database size.

use super::{ListPage, org, page};
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, Paging, Q, id};
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serversync_model::MailboxId;
use serversync_model::alert::Alert;
use serversync_model::audit::AuditEntry;
use serversync_model::job::Job;
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertQuery {
    pub mailbox_id: Option<MailboxId>,
    pub after: Option<String>,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/alerts", tag = "alerts", params(("org" = String, Path), AlertQuery), responses((status = 200, body = ListPage)))]
pub async fn list_alerts(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<AlertQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = Paging {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    Ok(Json(page(
        s.admin
            .list_alerts(&c, org.id, q.mailbox_id, q.after.as_deref(), limit)
            .await?,
        &[],
    )))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/alerts/{id}/dismiss", tag = "alerts", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = Alert), (status = 404, body = Problem)))]
pub async fn dismiss_alert(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
) -> ApiResult<Json<Alert>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(
        s.admin.dismiss_alert(&c, org.id, id("id", &aid)?).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/jobs", tag = "jobs", params(("org" = String, Path), Paging), responses((status = 200, body = ListPage)))]
pub async fn list_jobs(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(p): Q<Paging>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(page(
        s.admin
            .list_jobs(&c, org.id, p.after.as_deref(), p.limit()?)
            .await?,
        &[],
    )))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/jobs/{id}", tag = "jobs", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = Job), (status = 404, body = Problem)))]
pub async fn get_job(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, jid)): P<(String, String)>,
) -> ApiResult<Json<Job>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(s.admin.job(&c, org.id, id("id", &jid)?).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Oldest first: the entries after this sequence number.
    pub after: Option<i64>,
    /// Newest first: the entries before this sequence number (the `seq` of the last entry of
    /// the previous page).
    pub before: Option<i64>,
    /// Newest first, from the newest entry (implied by `before`).
    #[serde(default)]
    pub newest_first: bool,
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/audit", tag = "audit", params(("org" = String, Path), AuditQuery), responses((status = 200, body = [AuditEntry]), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn audit(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<AuditQuery>,
) -> ApiResult<Json<Vec<AuditEntry>>> {
    let org = org(&s, &c, &o).await?;
    let limit = Paging {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    if q.after.is_some() && (q.before.is_some() || q.newest_first) {
        return Err(Problem::new(
            axum::http::StatusCode::BAD_REQUEST,
            "conflicting_parameters",
            "give `after` (oldest first) or `before`/`newest_first` (newest first), not both",
        )
        .field("before"));
    }
    Ok(Json(if q.before.is_some() || q.newest_first {
        s.admin.audit_newest(&c, org.id, q.before, limit).await?
    } else {
        s.admin
            .audit(&c, org.id, q.after.unwrap_or(0), limit)
            .await?
    }))
}

/// How large the database is (shared by every organization of the installation).
#[derive(Serialize, ToSchema)]
pub struct DatabaseSize {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Everything the database takes on disk: SQLite's file (page count × page size) plus its
    /// write-ahead log; PostgreSQL's `pg_database_size`.
    pub size_bytes: u64,
    /// SQLite: the write-ahead log, included in `size_bytes`.
    pub wal_bytes: Option<u64>,
    /// SQLite: free pages inside the file, reused before it grows (`VACUUM` returns them).
    pub free_bytes: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/installation/database", tag = "installation", responses((status = 200, body = DatabaseSize), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn database_size(
    State(s): State<AppState>,
    Auth(c): Auth,
) -> ApiResult<Json<DatabaseSize>> {
    let d = s.admin.database_size(&c).await?;
    Ok(Json(DatabaseSize {
        backend: match d.backend {
            serversync_store::Backend::Sqlite => "sqlite",
            serversync_store::Backend::Postgres => "postgres",
        },
        size_bytes: d.bytes,
        wal_bytes: d.wal_bytes,
        free_bytes: d.free_bytes,
    }))
}
