//! CRM records: accounts, leads, email activities (filters, thread, attachment download) and
//! queue items; what the record routes share (validation of addresses, PATCH bodies). Contacts,
//! appointments and tasks have modules of their own.

use super::{ListPage, doc, org, page};
use crate::AppState;
use crate::auth::Auth;
use crate::extract::{P, Paging, Q, id};
use crate::json::Body;
use crate::problem::{ApiResult, Problem};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serversync_engine::admin::{ActivityFilter, AttachmentContent};
use serversync_model::crm::{Account, EmailActivity, Lead, RecordRef};
use serversync_model::validate::is_email_address;
use serversync_model::{AccountId, LeadId, MailboxId, QueueId, UserId, ValidationErrors};
use utoipa::{IntoParams, ToSchema};

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecord {
    /// Account name, or the person's full name.
    pub name: String,
    #[serde(default)]
    pub emails: Vec<String>,
    /// Default: the caller.
    pub owner_id: Option<UserId>,
    /// Leads: the company.
    pub company: Option<String>,
}

fn check(r: &NewRecord) -> Result<(), Problem> {
    let mut e = ValidationErrors::default();
    required(&mut e, "name", &r.name);
    emails(&mut e, "emails", &r.emails);
    e.into_result().map_err(|e| Problem::invalid(&e))
}

/// Refuses a blank required text.
pub(super) fn required(e: &mut ValidationErrors, field: &str, value: &str) {
    if value.trim().is_empty() {
        e.push(
            "required",
            field,
            format!("enter a {}", field.replace('_', " ")),
        );
    }
}

/// Refuses each entry of `list` that is not an email address, naming it (`emails[1]`).
pub(super) fn emails(e: &mut ValidationErrors, field: &str, list: &[String]) {
    for (i, m) in list.iter().enumerate() {
        email(e, &format!("{field}[{i}]"), m);
    }
}

pub(super) fn email(e: &mut ValidationErrors, field: &str, m: &str) {
    if !is_email_address(m) {
        e.push(
            "invalid_email",
            field,
            "enter an email address such as name@example.com",
        );
    }
}

/// An optional text as stored: blank is none.
pub(super) fn text(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// For PATCH bodies: `Some(None)` for an explicit `null` (clear the field), `None` when the
/// field is absent (keep it). Used with `#[serde(default, deserialize_with = "nullable")]`.
pub(super) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A list for a page of records, with its query problems named.
pub(super) fn limit(l: Option<u32>) -> Result<u32, Problem> {
    Paging {
        after: None,
        limit: l,
    }
    .limit()
}

/// Refuses `until` not later than `since`.
pub(super) fn check_span(
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<(), Problem> {
    match (since, until) {
        (Some(a), Some(b)) if a >= b => Err(Problem::bad_request(
            "out_of_range",
            Some("until"),
            "until must be later than since",
        )),
        _ => Ok(()),
    }
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

/// Filters of the email activity list; all given must match. Unknown parameters are refused.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ActivityQuery {
    /// Seen through this mailbox (id).
    pub mailbox: Option<MailboxId>,
    /// Set regarding this record, as `type:id` (`contact:…`, `account:…`, `lead:…`, `user:…`,
    /// `queue:…`, `activity:…`).
    pub regarding: Option<String>,
    /// Of this conversation.
    pub conversation: Option<String>,
    /// Received (else sent) at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Received (else sent) before this time (RFC 3339).
    pub until: Option<DateTime<Utc>>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-1000, default 100.
    pub limit: Option<u32>,
}

/// Parses `type:id` into a record reference.
fn regarding(raw: &str) -> Result<RecordRef, Problem> {
    let bad = || {
        Problem::bad_request(
            "invalid_regarding",
            Some("regarding"),
            format!(
                "regarding must be `type:id` with type one of user, queue, contact, account, lead, activity and a UUID, got {raw:?}"
            ),
        )
    };
    let (t, i) = raw.split_once(':').ok_or_else(bad)?;
    serde_json::from_value(serde_json::json!({"type": t, "id": i})).map_err(|_| bad())
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/activities", tag = "records", params(("org" = String, Path), ActivityQuery),
    responses((status = 200, body = ListPage, description = "Email activities matching every filter, in creation order"), (status = 400, body = Problem)))]
pub async fn list_activities(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<ActivityQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = limit(q.limit)?;
    check_span(q.since, q.until)?;
    let f = ActivityFilter {
        mailbox: q.mailbox,
        regarding: q.regarding.as_deref().map(regarding).transpose()?,
        conversation: q.conversation,
        since: q.since,
        until: q.until,
        ..Default::default()
    };
    Ok(Json(page(
        s.admin
            .list_email_activities(&c, org.id, &f, q.after.as_deref(), limit)
            .await?,
        &[],
    )))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/activities/{id}", tag = "records", params(("org" = String, Path), ("id" = String, Path)), responses((status = 200, body = super::outgoing::EmailActivityView), (status = 404, body = Problem)))]
pub async fn get_activity(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
) -> ApiResult<Json<super::outgoing::EmailActivityView>> {
    let org = org(&s, &c, &o).await?;
    let a = s.admin.email_activity(&c, org.id, id("id", &aid)?).await?;
    Ok(Json(super::outgoing::view(&s, &c, org.id, a).await?))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/activities/{id}/thread", tag = "records", params(("org" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Vec<EmailActivity>, description = "The activities of the same conversation (the activity itself included), oldest first"), (status = 404, body = Problem)))]
pub async fn activity_thread(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid)): P<(String, String)>,
) -> ApiResult<Json<Vec<EmailActivity>>> {
    let org = org(&s, &c, &o).await?;
    Ok(Json(
        s.admin.activity_thread(&c, org.id, id("id", &aid)?).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/activities/{id}/attachments/{sha256}", tag = "records",
    params(("org" = String, Path), ("id" = String, Path), ("sha256" = String, Path, description = "The attachment's SHA-256 (hex)")),
    responses((status = 200, content_type = "application/octet-stream", body = Vec<u8>, description = "The attachment's bytes, with its content type and `Content-Disposition: attachment`"),
        (status = 404, body = Problem, description = "No such activity or attachment, or its bytes were not kept (`attachment_dropped`, with the reason)")))]
pub async fn activity_attachment(
    State(s): State<AppState>,
    Auth(c): Auth,
    P((o, aid, sha)): P<(String, String, String)>,
) -> ApiResult<Response> {
    let org = org(&s, &c, &o).await?;
    let aid = id("id", &aid)?;
    if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Problem::bad_request(
            "invalid_sha256",
            Some("sha256"),
            format!("sha256 must be 64 hexadecimal digits, got {sha:?}"),
        ));
    }
    let (att, content) = s.admin.activity_attachment(&c, org.id, aid, &sha).await?;
    let bytes = match content {
        AttachmentContent::Bytes(b) => b,
        AttachmentContent::Dropped(reason) => {
            return Err(Problem::new(
                StatusCode::NOT_FOUND,
                "attachment_dropped",
                format!(
                    "the bytes of attachment {:?} were not kept: {reason}",
                    att.file_name
                ),
            )
            .field("sha256"));
        }
    };
    let content_type = HeaderValue::from_str(&att.content_type)
        .ok()
        .filter(|_| att.content_type.contains('/'))
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(&content_disposition(&att.file_name))
        .unwrap_or(HeaderValue::from_static("attachment"));
    // The bytes came from outside: a file to save, never a page of this site (the router adds
    // `X-Content-Type-Options: nosniff` to every response).
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; sandbox"),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// `attachment; filename="…"` with an ASCII fallback and, for other names, `filename*` (RFC 6266).
fn content_disposition(name: &str) -> String {
    let name = if name.trim().is_empty() {
        "attachment"
    } else {
        name
    };
    let ascii: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut v = format!("attachment; filename=\"{ascii}\"");
    if ascii != name {
        let encoded: String = name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        v.push_str(&format!("; filename*=UTF-8''{encoded}"));
    }
    v
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct QueueItemQuery {
    /// Only items of this queue (id).
    pub queue: Option<QueueId>,
    /// The `next` of the previous page.
    pub after: Option<String>,
    /// 1-1000, default 100.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/orgs/{org}/queue-items", tag = "records", params(("org" = String, Path), QueueItemQuery), responses((status = 200, body = ListPage), (status = 400, body = Problem)))]
pub async fn list_queue_items(
    State(s): State<AppState>,
    Auth(c): Auth,
    P(o): P<String>,
    Q(q): Q<QueueItemQuery>,
) -> ApiResult<Json<ListPage>> {
    let org = org(&s, &c, &o).await?;
    let limit = Paging {
        after: None,
        limit: q.limit,
    }
    .limit()?;
    Ok(Json(page(
        s.admin
            .list_queue_items(&c, org.id, q.queue, q.after.as_deref(), limit)
            .await?,
        &[],
    )))
}

#[cfg(test)]
mod tests {
    use super::content_disposition;

    #[test]
    fn attachment_names_are_quoted_safely() {
        assert_eq!(
            content_disposition("report.pdf"),
            "attachment; filename=\"report.pdf\""
        );
        assert_eq!(
            content_disposition("a\"b.txt"),
            "attachment; filename=\"a_b.txt\"; filename*=UTF-8''a%22b.txt"
        );
        assert_eq!(
            content_disposition("Übersicht.pdf"),
            "attachment; filename=\"_bersicht.pdf\"; filename*=UTF-8''%C3%9Cbersicht.pdf"
        );
    }
}
