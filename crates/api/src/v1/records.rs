//! The CRM records needed to try things: accounts, contacts, leads.

use super::{ListPage, doc, org, page};
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, Paging, Q, id};
use crate::json::Body;
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use serversync_model::crm::{Account, Contact, EmailActivity, Lead, QueueItem};
use serversync_model::validate::is_email_address;
use serversync_model::{AccountId, ContactId, LeadId, UserId, ValidationErrors};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// Account name, or the person's full name.
    pub name: String,
    #[serde(default)]
    pub emails: Vec<String>,
    /// Default: the caller.
    pub owner_id: Option<UserId>,
    /// Contacts: the account they belong to.
    pub account_id: Option<AccountId>,
    /// Leads: the company.
    pub company: Option<String>,
}

fn check(r: &NewRecord) -> Result<(), Problem> {
    let mut e = ValidationErrors::default();
    if r.name.trim().is_empty() {
        e.push("required", "name", "enter a name");
    }
    for (i, m) in r.emails.iter().enumerate() {
        if !is_email_address(m) {
            e.push(
                "invalid_email",
                &format!("emails[{i}]"),
                "enter an email address such as name@example.com",
            );
        }
    }
    e.into_result().map_err(|e| Problem::invalid(&e))
}

macro_rules! records {
    ($list:ident, $create:ident, $path:literal, $tag:literal, $t:ty, |$r:ident, $org:ident, $owner:ident, $now:ident| $build:expr) => {
        #[utoipa::path(get, path = $path, tag = $tag, params(("org" = String, Path), Paging), responses((status = 200, body = ListPage)))]
        pub async fn $list(State(s): State<AppState>, Auth(c): Auth, P(o): P<String>, Q(p): Q<Paging>) -> ApiResult<Json<ListPage>> {
            let org = org(&s, &c, &o).await?;
            Ok(Json(page(s.admin.list_records::<$t>(&c, org.id, p.after.as_deref(), p.limit()?).await?, &[])))
        }

        #[utoipa::path(post, path = $path, tag = $tag, params(("org" = String, Path)), request_body = NewRecord, responses((status = 201, body = $t), (status = 422, body = Problem)))]
        pub async fn $create(State(s): State<AppState>, Auth(c): Auth, P(o): P<String>, body: Body) -> ApiResult<(StatusCode, Json<Value>)> {
            let $org = org(&s, &c, &o).await?;
            let $r: NewRecord = body.parse()?;
            check(&$r)?;
            let $owner = $r.owner_id.unwrap_or(c.user.id);
            let $now = chrono::Utc::now();
            let record: $t = $build;
            Ok((StatusCode::CREATED, Json(doc(&s.admin.create_record(&c, &record).await?, &[]))))
        }
    };
}

records!(
    list_accounts,
    create_account,
    "/api/v1/orgs/{org}/accounts",
    "records",
    Account,
    |r, org, owner, now| Account {
        id: AccountId::new(),
        org_id: org.id,
        name: r.name,
        emails: r.emails,
        owner_id: owner,
        created_at: now
    }
);
records!(
    list_contacts,
    create_contact,
    "/api/v1/orgs/{org}/contacts",
    "records",
    Contact,
    |r, org, owner, now| Contact {
        id: ContactId::new(),
        org_id: org.id,
        full_name: r.name,
        emails: r.emails,
        account_id: r.account_id,
        owner_id: owner,
        created_at: now
    }
);
records!(
    list_leads,
    create_lead,
    "/api/v1/orgs/{org}/leads",
    "records",
    Lead,
    |r, org, owner, now| Lead {
        id: LeadId::new(),
        org_id: org.id,
        full_name: r.name,
        company: r.company,
        emails: r.emails,
        owner_id: owner,
        created_at: now
    }
);

#[utoipa::path(get, path = "/api/v1/orgs/{org}/activities", tag = "records", params(("org" = String, Path), Paging), responses((status = 200, body = ListPage)))]
pub async fn list_activities(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(p): Q<Paging>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(page(
        s.admin
            .list_email_activities(&c, org.id, p.after.as_deref(), p.limit()?)
            .await?,
        &[],
    )))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/activities/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = EmailActivity), (status = 404, body = Problem)))]
pub async fn get_activity(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
) -> ApiResult<Json<EmailActivity>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(
        s.admin.email_activity(&c, org.id, id("id", &aid)?).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/queue-items", tag = "records", params(("org" = String, Path), Paging), responses((status = 200, body = ListPage)))]
pub async fn list_queue_items(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(p): Q<Paging>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(page(
        s.admin
            .list_records::<QueueItem>(&c, org.id, p.after.as_deref(), p.limit()?)
            .await?,
        &[],
    )))
}
