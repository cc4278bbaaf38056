//! Contacts: list, create, read, change (partially), delete.

use super::records::{emails, nullable, required, text};
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
use serversync_model::crm::Contact;
use serversync_model::{AccountId, ContactId, UserId, ValidationErrors};
use utoipa::ToSchema;

/// A new contact.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewContact {
    /// The person's full name (`full_name` is accepted too).
    #[serde(alias = "full_name")]
    pub name: String,
    #[serde(default)]
    pub emails: Vec<String>,
    /// Default: the caller.
    pub owner_id: Option<UserId>,
    /// The account they belong to.
    pub account_id: Option<AccountId>,
    /// The company the person works for, as written on their card.
    pub company: Option<String>,
    pub job_title: Option<String>,
    /// Telephone numbers, in order.
    #[serde(default)]
    pub phones: Vec<String>,
}

/// The fields of a contact to change; absent fields are kept, `null` clears an optional one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactChanges {
    pub full_name: Option<String>,
    /// Replaces the list.
    pub emails: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub company: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub job_title: Option<Option<String>>,
    /// Replaces the list.
    pub phones: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<AccountId>)]
    pub account_id: Option<Option<AccountId>>,
    /// The version you read: the change is refused (409) if someone changed the contact
    /// since. Absent: the last write wins.
    pub version: Option<i64>,
}

/// Refuses a phone number without a digit, or longer than 64 characters.
fn phones(e: &mut ValidationErrors, list: &[String]) {
    for (i, p) in list.iter().enumerate() {
        if !p.chars().any(|c| c.is_ascii_digit()) || p.chars().count() > 64 {
            e.push(
                "invalid_phone",
                &format!("phones[{i}]"),
                "enter a telephone number such as +1 555 0100 (at most 64 characters)",
            );
        }
    }
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/contacts", tag = "records", params(("org" = String, Path), Paging), responses((status = 200, body = ListPage), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn list_contacts(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(p): Q<Paging>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(page(
        s.admin
            .list_records::<Contact>(&c, org.id, p.after.as_deref(), p.limit()?)
            .await?,
        &[],
    )))
}

#[utoipa::path(post, path = "/api/v1/orgs/{org}/contacts", tag = "records", params(("org" = String, Path)), request_body = NewContact,
    responses((status = 201, body = Contact), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn create_contact(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = org(&s, &c, &o).await?;
    let r: NewContact = body.parse()?;
    let mut e = ValidationErrors::default();
    required(&mut e, "name", &r.name);
    emails(&mut e, "emails", &r.emails);
    phones(&mut e, &r.phones);
    e.into_result().map_err(|e| Problem::invalid(&e))?;
    let record = Contact {
        id: ContactId::new(),
        org_id: org.id,
        full_name: r.name,
        emails: r.emails,
        account_id: r.account_id,
        company: text(r.company),
        job_title: text(r.job_title),
        phones: r.phones,
        owner_id: r.owner_id.unwrap_or(c.user.id),
        created_at: chrono::Utc::now(),
    };
    Ok((
        StatusCode::CREATED,
        Json(doc(&s.admin.create_record(&c, &record).await?, &[])),
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/contacts/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Contact), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get_contact(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, cid)): P<(String, String)>,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let cid: ContactId = id("id", &cid)?;
    Ok(Json(doc(
        &s.admin
            .record::<Contact>(&c, org.id, &cid.to_string())
            .await?,
        &[],
    )))
}

#[utoipa::path(patch, path = "/api/v1/orgs/{org}/contacts/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    request_body(content = ContactChanges, description = "The fields to change; include `version` to refuse concurrent changes."),
    responses((status = 200, body = Contact), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_contact(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, cid)): P<(String, String)>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let org = org(&s, &c, &o).await?;
    let cid: ContactId = id("id", &cid)?;
    let ch: ContactChanges = body.parse()?;
    let mut e = ValidationErrors::default();
    if let Some(n) = &ch.full_name {
        required(&mut e, "full_name", n);
    }
    if let Some(list) = &ch.emails {
        emails(&mut e, "emails", list);
    }
    if let Some(list) = &ch.phones {
        phones(&mut e, list);
    }
    e.into_result().map_err(|e| Problem::invalid(&e))?;
    let mut r = s
        .admin
        .record::<Contact>(&c, org.id, &cid.to_string())
        .await?
        .value;
    if let Some(n) = ch.full_name {
        r.full_name = n;
    }
    if let Some(list) = ch.emails {
        r.emails = list;
    }
    if let Some(v) = ch.company {
        r.company = text(v);
    }
    if let Some(v) = ch.job_title {
        r.job_title = text(v);
    }
    if let Some(list) = ch.phones {
        r.phones = list;
    }
    if let Some(a) = ch.account_id {
        r.account_id = a;
    }
    Ok(Json(doc(
        &s.admin.update_record(&c, org.id, &r, ch.version).await?,
        &[],
    )))
}

#[utoipa::path(delete, path = "/api/v1/orgs/{org}/contacts/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_contact(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, cid)): P<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = org(&s, &c, &o).await?;
    let cid: ContactId = id("id", &cid)?;
    s.admin
        .delete_record::<Contact>(&c, org.id, &cid.to_string())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
