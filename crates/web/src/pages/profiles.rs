//! Email server profiles: the list, a form whose fields follow the server type, editing,
//! "make default" and "test & enable mailboxes" of a profile.

use super::forms::{self, Field, Kind, Section, value};
use super::{Page, action, done, error, render, words};
use crate::Web;
use crate::api::Problem;
use crate::session::Session;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;
use serversync_model::profile::{EmailServerProfile, ServerType};

pub struct Row {
    pub id: String,
    pub name: String,
    pub server_type: String,
    pub incoming: String,
    pub outgoing: String,
    pub authentication: String,
    pub is_default: bool,
    pub mailboxes: usize,
}

#[derive(Template)]
#[template(path = "profiles.html")]
struct ListPage {
    page: Page,
    rows: Vec<Row>,
    types: Vec<(&'static str, &'static str)>,
}

/// The server types a new profile can have, with their labels.
const TYPES: [(&str, &str); 5] = [
    ("imap_smtp", "IMAP/SMTP server"),
    ("pop3_smtp", "POP3/SMTP server"),
    ("exchange_server", "Exchange Server (EWS)"),
    ("exchange_server_hybrid", "Exchange Server (hybrid)"),
    ("exchange_online", "Exchange Online (Microsoft 365)"),
];

#[derive(Deserialize)]
pub struct Notice {
    done: Option<String>,
}

fn endpoint(e: Option<&serversync_model::profile::Endpoint>) -> String {
    e.map(|e| format!("{}:{} ({})", e.location, e.port, words(&e.tls)))
        .unwrap_or_else(|| "—".into())
}

pub async fn list(State(web): State<Web>, s: Session, Query(q): Query<Notice>) -> Response {
    if let Err(e) = s
        .caller
        .require(serversync_model::org::Privilege::ReadMailboxes)
    {
        return error(&s, e.message);
    }
    let profiles = match web.admin.list_profiles(s.org.id, None, 500).await {
        Ok(p) => p.items,
        Err(e) => return error(&s, e),
    };
    let mailboxes = match web
        .admin
        .list_mailboxes(&s.caller, s.org.id, &Default::default(), None, 10_000)
        .await
    {
        Ok(m) => m.items,
        Err(e) => return error(&s, e),
    };
    let rows = profiles
        .into_iter()
        .map(|p| {
            let p = p.value;
            Row {
                id: p.id.to_string(),
                mailboxes: mailboxes
                    .iter()
                    .filter(|m| m.value.profile_id == Some(p.id))
                    .count(),
                name: p.name,
                server_type: words(&p.server_type),
                incoming: endpoint(p.incoming.as_ref()),
                outgoing: endpoint(p.outgoing.as_ref()),
                authentication: words(&p.authentication),
                is_default: p.is_default,
            }
        })
        .collect();
    render(&ListPage {
        page: Page::new(&s, "Email server profiles", "profiles").with_notice(q.done),
        rows,
        types: TYPES.to_vec(),
    })
}

/// The form's sections for a server type.
fn sections(t: ServerType, creating: bool) -> Vec<Section> {
    let tls = [
        ("implicit", "TLS (SSL) from the start"),
        ("start_tls", "STARTTLS"),
        ("none", "No encryption (test servers only)"),
    ];
    let mut general = vec![
        Field::new("name", "Name", Kind::Text).required(),
        Field::new("description", "Description", Kind::Text),
    ];
    let auth: &[(&str, &str)] = match t {
        ServerType::ImapSmtp | ServerType::Pop3Smtp => &[
            (
                "credentials_specified_by_user_or_queue",
                "Credentials specified by a user or queue",
            ),
            (
                "credentials_specified_in_profile",
                "Credentials specified in email server profile",
            ),
            ("gmail_oauth", "Gmail OAuth (refresh token per mailbox)"),
        ],
        ServerType::ExchangeOnline => &[(
            "server_to_server",
            "Server-to-server authentication (OAuth)",
        )],
        _ => &[
            (
                "credentials_specified_by_user_or_queue",
                "Credentials specified by a user or queue",
            ),
            (
                "credentials_specified_in_profile",
                "Credentials specified in email server profile",
            ),
            ("impersonation", "Impersonation (service account)"),
            ("hybrid_modern_auth", "Hybrid Modern Authentication"),
        ],
    };
    general.push(
        Field::new("authentication", "Authentication type", Kind::Select)
            .options(auth)
            .hint("Whose credentials sign in to the server: each mailbox's own, or one account in this profile."),
    );
    let mut out = vec![Section::new("General", "", general)];
    match t {
        ServerType::ImapSmtp | ServerType::Pop3Smtp => {
            let incoming = if t == ServerType::ImapSmtp {
                "IMAP"
            } else {
                "POP3"
            };
            out.push(Section::new(
                "Server locations",
                "",
                vec![
                    Field::new(
                        "incoming.location",
                        &format!("Incoming ({incoming}) server"),
                        Kind::Text,
                    )
                    .required()
                    .hint("Host name, such as imap.example.com."),
                    Field::new("incoming.port", "Incoming port", Kind::Number).hint(
                        if t == ServerType::ImapSmtp {
                            "993 with TLS, 143 with STARTTLS."
                        } else {
                            "995 with TLS, 110 with STARTTLS."
                        },
                    ),
                    Field::new("incoming.tls", "Incoming encryption", Kind::Select).options(&tls),
                    Field::new("outgoing.location", "Outgoing (SMTP) server", Kind::Text)
                        .required()
                        .hint("Host name, such as smtp.example.com."),
                    Field::new("outgoing.port", "Outgoing port", Kind::Number)
                        .hint("587 with STARTTLS, 465 with TLS."),
                    Field::new("outgoing.tls", "Outgoing encryption", Kind::Select).options(&tls),
                ],
            ));
            out.push(Section::new(
                "Credentials in the profile",
                "Only when the authentication type is \"credentials specified in email server profile\".",
                vec![
                    Field::new("username", "User name", Kind::Text),
                    Field::new("password", "Password", Kind::Password)
                        .hint(if creating { "Stored encrypted; never shown again." } else { "Leave empty to keep the stored password." }),
                ],
            ));
            out.push(Section::new(
                "Gmail OAuth client",
                "Only when the authentication type is \"Gmail OAuth\": the OAuth client from Google Cloud (scope https://mail.google.com/). Each mailbox's password holds the refresh token its account granted.",
                vec![
                    Field::new("oauth.client_id", "Client id", Kind::Text),
                    Field::new("oauth.client_secret", "Client secret", Kind::Password).hint(
                        if creating {
                            "Stored encrypted; never shown again."
                        } else {
                            "Leave empty to keep the stored secret."
                        },
                    ),
                    Field::new("oauth.token_endpoint", "Token endpoint", Kind::Text)
                        .hint("Empty: Google's, https://oauth2.googleapis.com/token."),
                ],
            ));
        }
        ServerType::ExchangeOnline => out.push(Section::new(
            "Microsoft 365 app registration",
            "The app needs the Mail.ReadWrite and Mail.Send application permissions.",
            vec![
                Field::new("oauth.tenant_id", "Tenant id", Kind::Text).required(),
                Field::new("oauth.client_id", "Application (client) id", Kind::Text).required(),
                Field::new("oauth.client_secret", "Client secret", Kind::Password),
            ],
        )),
        _ => out.push(Section::new(
            "Server location",
            "",
            vec![
                Field::new(
                    "auto_discover",
                    "Find the server through Autodiscover",
                    Kind::Checkbox,
                )
                .hint("Recommended. Off: enter the EWS URL."),
                Field::new("incoming.location", "EWS URL", Kind::Text)
                    .hint("https://mail.example.com/EWS/Exchange.asmx"),
                Field::new("username", "Service account user name", Kind::Text),
                Field::new("password", "Service account password", Kind::Password),
            ],
        )),
    }
    out.push(Section::new(
        "Advanced",
        "",
        vec![
            Field::new(
                "advanced.process_email_from",
                "Process email from",
                Kind::DateTime,
            )
            .hint("Only email received on or after this time is processed (UTC)."),
            Field::new(
                "advanced.min_polling_interval_minutes",
                "Minimum polling interval (minutes)",
                Kind::Number,
            )
            .hint("0–1440. IMAP IDLE still delivers as soon as mail arrives."),
            Field::new(
                "advanced.max_concurrent_connections",
                "Maximum concurrent connections",
                Kind::Number,
            )
            .hint("1–300: connections to the server at once, across all workers."),
            Field::new(
                "advanced.connection_timeout_ms",
                "Connection timeout (ms)",
                Kind::Number,
            )
            .hint("1–100000. Empty: as long as the operating system waits."),
            Field::new(
                "advanced.max_sends_per_minute",
                "Maximum emails sent per mailbox per minute",
                Kind::Number,
            )
            .hint("1–600: serversync is not a bulk mailer."),
            Field::new(
                "advanced.move_failed_to_undeliverable",
                "Move failed email to the Undeliverable folder",
                Kind::Checkbox,
            ),
            Field::new(
                "advanced.email_owner_on_failures",
                "Email the owner when more than half the mailboxes fail",
                Kind::Checkbox,
            ),
            Field::new(
                "advanced.tracked_folders",
                "Folders tracked besides the Inbox",
                Kind::Text,
            )
            .hint("Comma-separated, such as Archive, Projects/Acme."),
        ],
    ));
    out
}

#[derive(Template)]
#[template(path = "profile_form.html")]
struct FormPage {
    page: Page,
    action: String,
    server_type: String,
    type_label: String,
    sections: Vec<Section>,
    problem: Option<String>,
    creating: bool,
    id: String,
}

#[derive(Deserialize)]
pub struct NewQuery {
    server_type: Option<String>,
}

fn server_type(raw: &str) -> Option<ServerType> {
    serde_json::from_value(Value::String(raw.to_owned())).ok()
}

fn label(t: &str) -> String {
    TYPES
        .iter()
        .find(|(v, _)| *v == t)
        .map(|(_, l)| (*l).to_owned())
        .unwrap_or_else(|| t.to_owned())
}

pub async fn new_form(State(_): State<Web>, s: Session, Query(q): Query<NewQuery>) -> Response {
    let t = q.server_type.unwrap_or_else(|| "imap_smtp".into());
    let Some(st) = server_type(&t) else {
        return error(&s, format!("unknown server type {t:?}"));
    };
    let mut secs = sections(st, true);
    // The defaults of a new profile of this type.
    let template = EmailServerProfile::new(s.org.id, "", st, s.caller.user.id, chrono::Utc::now());
    if let Ok(doc) = serde_json::to_value(&template) {
        forms::fill(&mut secs, &doc);
    }
    render(&FormPage {
        page: Page::new(&s, &format!("New {} profile", label(&t)), "profiles"),
        action: "/profiles".into(),
        type_label: label(&t),
        server_type: t,
        sections: secs,
        problem: None,
        creating: true,
        id: String::new(),
    })
}

pub async fn create(
    State(web): State<Web>,
    s: Session,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let t = value(&form, "server_type");
    let Some(st) = server_type(&t) else {
        return error(&s, format!("unknown server type {t:?}"));
    };
    let mut secs = sections(st, true);
    let mut body = forms::to_json(&secs, &form);
    body["server_type"] = Value::String(t.clone());
    match web.api(&s, Method::POST, "/profiles", Some(body)).await {
        Ok(p) => done(
            &format!("/profiles/{}", p["id"].as_str().unwrap_or_default()),
            "The profile was created.",
        ),
        Err(p) => {
            forms::refill(&mut secs, &form, &p);
            form_again(&s, &t, secs, p, true, "/profiles", "")
        }
    }
}

fn form_again(
    s: &Session,
    t: &str,
    sections: Vec<Section>,
    p: Problem,
    creating: bool,
    action: &str,
    id: &str,
) -> Response {
    let mut r = render(&FormPage {
        page: Page::new(s, &format!("{} profile", label(t)), "profiles"),
        action: action.to_owned(),
        type_label: label(t),
        server_type: t.to_owned(),
        sections,
        problem: Some(p.detail),
        creating,
        id: id.to_owned(),
    });
    *r.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    r
}

pub async fn edit_form(
    State(web): State<Web>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<Notice>,
) -> Response {
    let doc = match web
        .api(&s, Method::GET, &format!("/profiles/{id}"), None)
        .await
    {
        Ok(d) => d,
        Err(p) => return error(&s, p.detail),
    };
    let t = doc["server_type"]
        .as_str()
        .unwrap_or("imap_smtp")
        .to_owned();
    let Some(st) = server_type(&t) else {
        return error(&s, format!("unknown server type {t:?}"));
    };
    let mut secs = sections(st, false);
    forms::fill(&mut secs, &doc);
    render(&FormPage {
        page: Page::new(
            &s,
            &format!("Profile {}", doc["name"].as_str().unwrap_or("")),
            "profiles",
        )
        .with_notice(q.done),
        action: format!("/profiles/{id}"),
        type_label: label(&t),
        server_type: t,
        sections: secs,
        problem: None,
        creating: false,
        id,
    })
}

pub async fn update(
    State(web): State<Web>,
    s: Session,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let t = value(&form, "server_type");
    let Some(st) = server_type(&t) else {
        return error(&s, format!("unknown server type {t:?}"));
    };
    let mut secs = sections(st, false);
    let body = forms::to_json(&secs, &form);
    match web
        .api(&s, Method::PATCH, &format!("/profiles/{id}"), Some(body))
        .await
    {
        Ok(_) => done(&format!("/profiles/{id}"), "The profile was saved."),
        Err(p) => {
            forms::refill(&mut secs, &form, &p);
            form_again(&s, &t, secs, p, false, &format!("/profiles/{id}"), &id)
        }
    }
}

pub async fn make_default(State(web): State<Web>, s: Session, Path(id): Path<String>) -> Response {
    let notice = "The profile is now the default for new mailboxes.";
    action(
        &web,
        &s,
        &format!("/profiles/{id}/default"),
        "/profiles",
        notice,
    )
    .await
}

pub async fn test_enable(State(web): State<Web>, s: Session, Path(id): Path<String>) -> Response {
    let notice = "Testing and enabling the profile's mailboxes: follow the job below.";
    action(
        &web,
        &s,
        &format!("/profiles/{id}/test-enable"),
        "/jobs",
        notice,
    )
    .await
}

/// Pins a certificate fingerprint (from a test report) on the profile, through the API's
/// profile update: validated and audited (`pin_certificate`) there.
pub async fn pin(
    State(web): State<Web>,
    s: Session,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let path = format!("/profiles/{id}");
    let profile = match web.api(&s, Method::GET, &path, None).await {
        Ok(p) => p,
        Err(p) => return error(&s, p.detail),
    };
    let mut pins: Vec<serde_json::Value> = profile["pinned_certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let sha256 = forms::value(&form, "sha256");
    if !pins.iter().any(|p| p.as_str() == Some(sha256.as_str())) {
        pins.push(serde_json::Value::String(sha256));
    }
    let body = serde_json::json!({"pinned_certificates": pins, "version": profile["version"]});
    match web.api(&s, Method::PATCH, &path, Some(body)).await {
        Ok(_) => done(
            "/jobs",
            "The certificate is pinned on the profile: test and enable the mailboxes again.",
        ),
        Err(p) => error(&s, p.detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_model::profile::AuthenticationType;

    #[test]
    fn an_imap_profile_can_be_set_up_for_gmail_oauth() {
        let form = sections(ServerType::ImapSmtp, true);
        let auth = form
            .iter()
            .flat_map(|s| &s.fields)
            .find(|f| f.name == "authentication")
            .unwrap();
        assert!(
            auth.options.iter().any(|(v, _)| v == "gmail_oauth"),
            "{:?}",
            auth.options
        );
        let submitted: Vec<(String, String)> = [
            ("name", "Gmail"),
            ("authentication", "gmail_oauth"),
            ("oauth.client_id", "client-1.apps.example"),
            ("oauth.client_secret", "s3cret"),
            ("oauth.token_endpoint", ""),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let json = forms::to_json(&form, &submitted);
        assert_eq!(
            serde_json::from_value::<AuthenticationType>(json["authentication"].clone()).unwrap(),
            AuthenticationType::GmailOAuth
        );
        assert_eq!(json["oauth"]["client_id"], "client-1.apps.example");
        assert_eq!(json["oauth"]["client_secret"], "s3cret");
        assert!(
            json["oauth"].get("token_endpoint").is_none(),
            "empty: Google's"
        );
    }
}
