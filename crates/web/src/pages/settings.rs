//! The organization's email settings (defaults for new mailboxes, approval, tracking,
//! outgoing, retries).

use super::forms::{self, Field, Kind, Section, value};
use super::{Page, done, error, render};
use crate::Web;
use crate::session::Session;
use askama::Template;
use axum::Form;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::Response;
use serde::Deserialize;

// "Forward mailbox" is not offered: the API refuses it until it is built.
const INCOMING: [(&str, &str); 3] = [
    ("server_side_sync", "Server-side synchronization"),
    ("email_router", "Email Router"),
    ("none", "None"),
];
const OUTGOING: [(&str, &str); 3] = [
    ("server_side_sync", "Server-side synchronization"),
    ("email_router", "Email Router"),
    ("none", "None"),
];
const ACT: [(&str, &str); 3] = [
    ("server_side_sync", "Server-side synchronization"),
    ("outlook_client", "Microsoft Dynamics 365 for Outlook"),
    ("none", "None"),
];
const TRACKING: [(&str, &str); 5] = [
    ("all_email", "All email messages"),
    (
        "in_response_to_crm_email",
        "Email messages in response to CRM email",
    ),
    (
        "from_leads_contacts_accounts",
        "Email messages from leads, contacts and accounts",
    ),
    (
        "from_email_enabled_records",
        "Email messages from records that are email enabled",
    ),
    ("none", "No email messages"),
];

const CONFLICTS: [(&str, &str); 3] = [
    ("latest_change_wins", "The latest change wins"),
    ("crm_wins", "CRM wins"),
    ("server_wins", "The mail server wins"),
];

fn sections(profiles: Vec<(String, String)>) -> Vec<Section> {
    let mut profile = Field::new("default_profile_id", "Server profile", Kind::Select)
        .hint("The profile new mailboxes get, and \"apply default email settings\" sets.");
    profile.options = std::iter::once((String::new(), "— none —".to_owned()))
        .chain(profiles)
        .collect();
    vec![
        Section::new(
            "Configure default synchronization method",
            "",
            vec![
                profile,
                Field::new("default_incoming", "Incoming email", Kind::Select).options(&INCOMING),
                Field::new("default_outgoing", "Outgoing email", Kind::Select).options(&OUTGOING),
                Field::new(
                    "default_act",
                    "Appointments, contacts and tasks",
                    Kind::Select,
                )
                .options(&ACT),
                Field::new(
                    "conflict_policy",
                    "Two-way sync conflicts",
                    Kind::Select,
                )
                .options(&CONFLICTS)
                .hint("Appointments, contacts and tasks: when a field changed in CRM and in the mailbox since the last synchronization, which value is kept (the owner is alerted with both)."),
            ],
        ),
        Section::new(
            "Email form options",
            "",
            vec![
                Field::new(
                    "require_approved_users",
                    "Process email only for approved users",
                    Kind::Checkbox,
                ),
                Field::new(
                    "require_approved_queues",
                    "Process email only for approved queues",
                    Kind::Checkbox,
                ),
                Field::new(
                    "save_outgoing_to_sent",
                    "Keep a copy of sent email in the Sent folder (IMAP)",
                    Kind::Checkbox,
                ),
                Field::new(
                    "max_attachment_kb",
                    "Maximum attachment size (KB)",
                    Kind::Number,
                )
                .hint("0–131072. Larger attachments are recorded without their bytes."),
            ],
        ),
        Section::new(
            "Tracking",
            "",
            vec![
                Field::new("default_user_tracking", "Track for users", Kind::Select)
                    .options(&TRACKING),
                Field::new("default_queue_tracking", "Track for queues", Kind::Select)
                    .options(&TRACKING),
                Field::new(
                    "correlation_by_headers",
                    "Use correlation to track email conversations",
                    Kind::Checkbox,
                ),
                Field::new("smart_matching", "Use smart matching", Kind::Checkbox),
                Field::new(
                    "tracking_token.enabled",
                    "Use tracking token",
                    Kind::Checkbox,
                ),
                Field::new("tracking_token.prefix", "Tracking token prefix", Kind::Text),
                Field::new(
                    "track_user_to_user_as_two_activities",
                    "Track email between users as two activities",
                    Kind::Checkbox,
                ),
            ],
        ),
        Section::new(
            "Errors and retries",
            "",
            vec![
                Field::new(
                    "retry.max_attempts",
                    "Attempts before a mailbox is disabled",
                    Kind::Number,
                ),
                Field::new(
                    "retry.interval_seconds",
                    "Seconds between attempts",
                    Kind::Number,
                ),
            ],
        ),
    ]
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    page: Page,
    sections: Vec<Section>,
    problem: Option<String>,
    installation: Installation,
}

/// The installation's connection rules (configuration, not editable here), shown so an
/// organization knows what its profiles and webhooks may use.
pub struct Installation {
    /// `on (FIPS-validated aws-lc module)` or `off`.
    pub fips: String,
    /// Non-public ranges servers and webhooks may be at, or "none".
    pub allowed_ranges: String,
    /// Where `tls: none` is allowed.
    pub plaintext_ranges: String,
    pub http_webhooks: bool,
}

fn installation(web: &Web) -> Installation {
    fn list<T: ToString>(r: &[T]) -> String {
        if r.is_empty() {
            "none".to_owned()
        } else {
            r.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
        }
    }
    let n = web.admin.network();
    Installation {
        fips: if n.fips() {
            "on: FIPS-validated cryptography only; no Outlook.com preset, NTLM or connections \
             without TLS"
                .into()
        } else {
            "off".into()
        },
        allowed_ranges: list(n.allow_ranges()),
        plaintext_ranges: if n.fips() {
            "none (FIPS mode)".into()
        } else {
            list(n.plaintext_ranges())
        },
        http_webhooks: n.allows_http_webhooks(),
    }
}

#[derive(Deserialize)]
pub struct Notice {
    done: Option<String>,
}

async fn profile_options(web: &Web, s: &Session) -> Vec<(String, String)> {
    web.admin
        .list_profiles(s.org.id, None, 500)
        .await
        .map(|p| {
            p.items
                .into_iter()
                .map(|p| (p.value.id.to_string(), p.value.name))
                .collect()
        })
        .unwrap_or_default()
}

pub async fn form(State(web): State<Web>, s: Session, Query(q): Query<Notice>) -> Response {
    let doc = match web.api(&s, Method::GET, "/email-settings", None).await {
        Ok(d) => d,
        Err(p) => return error(&s, p.detail),
    };
    let mut secs = sections(profile_options(&web, &s).await);
    forms::fill(&mut secs, &doc);
    render(&SettingsPage {
        page: Page::new(&s, "Email settings", "settings").with_notice(q.done),
        sections: secs,
        problem: None,
        installation: installation(&web),
    })
}

pub async fn save(
    State(web): State<Web>,
    s: Session,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut secs = sections(profile_options(&web, &s).await);
    let mut body = forms::to_json(&secs, &form);
    if value(&form, "default_profile_id").is_empty() {
        body["default_profile_id"] = serde_json::Value::Null;
    }
    match web
        .api(&s, Method::PATCH, "/email-settings", Some(body))
        .await
    {
        Ok(_) => done("/settings", "The email settings were saved."),
        Err(p) => {
            forms::refill(&mut secs, &form, &p);
            let mut r = render(&SettingsPage {
                page: Page::new(&s, "Email settings", "settings"),
                sections: secs,
                problem: Some(p.detail),
                installation: installation(&web),
            });
            *r.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            r
        }
    }
}
