//! The REST API under `/api/v1`. Every route is registered through `utoipa-axum`, so the
//! OpenAPI document at `/api/v1/openapi.json` covers exactly the routes that exist.

mod admin;
mod appointments;
mod contacts;
mod mailboxes;
mod orgs;
mod outgoing;
mod profiles;
mod records;
mod tasks;
mod webhooks;

use crate::AppState;
use crate::problem::Problem;
use serde::Serialize;
use serde_json::Value;
use serversync_model::auth::Caller;
use serversync_model::org::Organization;
use serversync_store::{Page, Stored};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "serversync API", description = "Administration of server-side synchronization: organizations, users, queues, email server profiles, email settings, mailboxes, test and enable, alerts, jobs, audit log, CRM records, their change feed and webhooks. Errors are RFC 9457 problem+json documents with a stable `code` and the offending `field`."),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(Problem, crate::problem::FieldProblem, ListPage))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("API token from `serversync admin token create`"))
                    .build(),
            ),
        );
    }
}

/// A page of a list: `items`, and `next` to pass as `after` for the following page.
#[derive(Serialize, ToSchema)]
pub struct ListPage {
    pub items: Vec<Value>,
    pub next: Option<String>,
}

pub(crate) fn page<T: Serialize>(p: Page<T>, secrets: &[&[&str]]) -> ListPage {
    ListPage {
        items: p
            .items
            .iter()
            .map(|s| crate::json::document(&s.value, s.version, secrets))
            .collect(),
        next: p.next,
    }
}

pub(crate) fn doc<T: Serialize>(s: &Stored<T>, secrets: &[&[&str]]) -> Value {
    crate::json::document(&s.value, s.version, secrets)
}

pub(crate) async fn org(state: &AppState, c: &Caller, key: &str) -> Result<Organization, Problem> {
    Ok(state.admin.org_for(c, key).await?)
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(orgs::list_orgs, orgs::create_org))
        .routes(routes!(orgs::get_org))
        .routes(routes!(orgs::list_users, orgs::create_user))
        .routes(routes!(orgs::get_user, orgs::update_user))
        .routes(routes!(orgs::set_queue_members))
        .routes(routes!(orgs::create_token))
        .routes(routes!(orgs::list_tokens))
        .routes(routes!(orgs::revoke_token))
        .routes(routes!(orgs::list_queues, orgs::create_queue))
        .routes(routes!(orgs::list_roles))
        .routes(routes!(orgs::list_domains, orgs::assign_domain))
        .routes(routes!(orgs::remove_domain))
        .routes(routes!(profiles::list_profiles, profiles::create_profile))
        .routes(routes!(
            profiles::get_profile,
            profiles::update_profile,
            profiles::delete_profile
        ))
        .routes(routes!(profiles::make_default))
        .routes(routes!(profiles::test_enable_profile))
        .routes(routes!(profiles::get_settings, profiles::update_settings))
        .routes(routes!(mailboxes::list_mailboxes))
        .routes(routes!(mailboxes::get_mailbox, mailboxes::update_mailbox))
        .routes(routes!(mailboxes::list_items))
        .routes(routes!(mailboxes::sync_now))
        .routes(routes!(mailboxes::apply_defaults))
        .routes(routes!(mailboxes::approve))
        .routes(routes!(mailboxes::reject))
        .routes(routes!(mailboxes::test_enable))
        .routes(routes!(admin::list_alerts))
        .routes(routes!(admin::dismiss_alert))
        .routes(routes!(admin::list_jobs))
        .routes(routes!(admin::get_job))
        .routes(routes!(admin::audit))
        .routes(routes!(admin::database_size))
        .routes(routes!(records::list_accounts, records::create_account))
        .routes(routes!(contacts::list_contacts, contacts::create_contact))
        .routes(routes!(
            contacts::get_contact,
            contacts::update_contact,
            contacts::delete_contact
        ))
        .routes(routes!(
            appointments::list_appointments,
            appointments::create_appointment
        ))
        .routes(routes!(
            appointments::get_appointment,
            appointments::update_appointment,
            appointments::delete_appointment
        ))
        .routes(routes!(tasks::list_tasks, tasks::create_task))
        .routes(routes!(
            tasks::get_task,
            tasks::update_task,
            tasks::delete_task
        ))
        .routes(routes!(records::list_leads, records::create_lead))
        .routes(routes!(records::list_activities, outgoing::compose))
        .routes(routes!(outgoing::send))
        .routes(routes!(outgoing::claim))
        .routes(routes!(outgoing::router_report))
        .routes(routes!(records::get_activity))
        .routes(routes!(records::activity_thread))
        .routes(routes!(records::activity_attachment))
        .routes(routes!(records::list_queue_items))
        .routes(routes!(webhooks::list_changes))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::update_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::resume_webhook))
        .routes(routes!(webhooks::list_deliveries))
}

/// The served document: every response gets a description (OpenAPI requires one).
pub fn finish_document(openapi: &utoipa::openapi::OpenApi) -> Value {
    let mut doc = serde_json::to_value(openapi).unwrap_or(Value::Null);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in item.values_mut() {
                let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                for (code, r) in responses.iter_mut() {
                    if let Some(r) = r.as_object_mut()
                        && r.get("description")
                            .and_then(Value::as_str)
                            .is_none_or(str::is_empty)
                    {
                        let reason = code
                            .parse::<u16>()
                            .ok()
                            .and_then(|c| axum::http::StatusCode::from_u16(c).ok())
                            .and_then(|c| c.canonical_reason())
                            .unwrap_or("Response");
                        r.insert("description".into(), Value::String(reason.into()));
                    }
                }
            }
        }
    }
    doc
}
