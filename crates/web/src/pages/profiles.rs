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
                incoming: match (&p.incoming, p.auto_discover) {
                    (None, true) => "Autodiscover".into(),
                    (i, _) => endpoint(i.as_ref()),
                },
                outgoing: match (&p.outgoing, p.server_type.is_exchange()) {
                    (None, true) if p.auto_discover => "Autodiscover".into(),
                    (None, true) => "The EWS URL".into(),
                    (o, _) => endpoint(o.as_ref()),
                },
                name: p.name,
                server_type: words(&p.server_type),
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

/// Exchange Server's HTTP authentication protocols (`auth_protocol`).
const AUTH_PROTOCOLS: &[(&str, &str)] = &[
    ("auto_detect", "Auto-detect (NTLM, then Basic)"),
    ("ntlm", "NTLM (Windows authentication)"),
    ("negotiate", "Negotiate (NTLM)"),
    ("basic", "Basic (over TLS)"),
    // The model's wire name of `AuthProtocol::OAuth` (serde's snake_case of "OAuth").
    ("oauth", "OAuth (hybrid modern authentication)"),
];

/// Exchange Server versions a profile can name (`exchange_version`); empty: read from the
/// server. The older versions are refused by the profile's validation, so they are not offered.
const EXCHANGE_VERSIONS: &[(&str, &str)] = &[
    ("", "Read from the server"),
    ("exchange2013_sp1", "Exchange Server 2013 SP1"),
    ("exchange2016", "Exchange Server 2016"),
    ("exchange2019", "Exchange Server 2019"),
    (
        "exchange_subscription_edition",
        "Exchange Server Subscription Edition",
    ),
];

/// Exchange Online's Microsoft identity clouds (`oauth.authority`).
const AUTHORITIES: &[(&str, &str)] = &[
    ("automatic", "Automatic"),
    ("public", "Public (worldwide and GCC)"),
    ("us_government", "US Government (GCC High, DoD)"),
    ("china", "China (21Vianet)"),
];

/// A write-only secret's field (`what`: "password" or "secret"): never shown back, so an
/// existing profile's form says whether one is set and that empty keeps it.
fn secret(name: &str, label: &str, what: &str, creating: bool) -> Field {
    Field::new(name, label, Kind::Password).hint(&if creating {
        "Stored encrypted; never shown again.".to_owned()
    } else {
        format!("Leave empty to keep the stored {what}.")
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
                    secret("password", "Password", "password", creating),
                ],
            ));
            out.push(Section::new(
                "Gmail OAuth client",
                "Only when the authentication type is \"Gmail OAuth\": the OAuth client from Google Cloud (scope https://mail.google.com/). Each mailbox's password holds the refresh token its account granted.",
                vec![
                    Field::new("oauth.client_id", "Client id", Kind::Text),
                    secret("oauth.client_secret", "Client secret", "secret", creating),
                    Field::new("oauth.token_endpoint", "Token endpoint", Kind::Text)
                        .hint("Empty: Google's, https://oauth2.googleapis.com/token."),
                ],
            ));
        }
        // Exchange Online: Microsoft Graph, found from the authority (Autodiscover on and fixed,
        // no server locations, no impersonation); the app signs in server to server.
        ServerType::ExchangeOnline => out.push(Section::new(
            "Microsoft Entra app registration",
            "The app registered in the Microsoft 365 tenant, with the Mail.ReadWrite and Mail.Send application permissions (admin consent granted). Mailboxes are found through Microsoft Graph: no server locations.",
            vec![
                Field::new("oauth.tenant_id", "Directory (tenant) id", Kind::Text)
                    .required()
                    .hint("The tenant's GUID, or its domain such as contoso.onmicrosoft.com."),
                Field::new("oauth.client_id", "Application (client) id", Kind::Text).required(),
                secret("oauth.client_secret", "Client secret", "secret", creating),
                Field::new("oauth.client_certificate", "Or: certificate and private key", Kind::SecretText)
                    .hint(&format!(
                        "Instead of a secret: the certificate uploaded to the app registration and its RSA private key, both PEM, pasted together; tokens are then asked for with a signed assertion. {}",
                        if creating { "Stored encrypted; never shown again." } else { "Leave empty to keep the stored certificate." }
                    )),
                Field::new("oauth.authority", "Authority", Kind::Select)
                    .options(AUTHORITIES)
                    .hint("The Microsoft cloud that issues the tokens. Automatic: found from the tenant."),
            ],
        )),
        _ => {
            out.push(Section::new(
                "Server location",
                "",
                vec![
                    Field::new(
                        "auto_discover",
                        "Find the server through Autodiscover",
                        Kind::Checkbox,
                    )
                    .hint("Recommended: each mailbox's EWS URL is looked up from its email address (https://<domain>, then https://autodiscover.<domain>). Off: enter the EWS URL."),
                    Field::new("incoming.location", "EWS URL", Kind::Text)
                        .hint("Only when Autodiscover is off, such as https://mail.example.com/EWS/Exchange.asmx. Email is sent over the same URL."),
                    Field::new(
                        "exchange_version",
                        "Exchange version",
                        Kind::Select,
                    )
                    .options(EXCHANGE_VERSIONS)
                    .hint("Empty: read from the server at each test. Exchange Server 2013 SP1 or newer."),
                ],
            ));
            out.push(Section::new(
                "Service account",
                "The account that signs in to Exchange (impersonation, or credentials in the profile).",
                vec![
                    Field::new("auth_protocol", "Authentication protocol", Kind::Select)
                        .options(AUTH_PROTOCOLS)
                        .hint("How the account signs in over HTTPS. FIPS mode refuses NTLM and Negotiate."),
                    Field::new("use_impersonation", "Use impersonation", Kind::Checkbox).hint(
                        "The service account holds the ApplicationImpersonation role; each \
                         mailbox is opened as itself by its primary SMTP address.",
                    ),
                    Field::new("username", "Service account user name", Kind::Text)
                        .hint("DOMAIN\\user or user@domain"),
                    secret("password", "Service account password", "password", creating),
                ],
            ));
        }
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
    ews_endpoint(st, &mut body);
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

/// Exchange Server's form has only the EWS URL: the endpoint's port and TLS come from the URL
/// (https: implicit TLS, port 443 unless the URL names one; http: no TLS, port 80), and the
/// outgoing endpoint is cleared, as email is sent over the same URL.
fn ews_endpoint(t: ServerType, body: &mut Value) {
    if !matches!(
        t,
        ServerType::ExchangeServer | ServerType::ExchangeServerHybrid
    ) {
        return;
    }
    let Some(url) = body["incoming"]["location"].as_str().map(str::to_owned) else {
        return;
    };
    let (tls, default_port, rest) = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => ("none", 80, rest),
        Some((_, rest)) => ("implicit", 443, rest),
        None => ("implicit", 443, url.as_str()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // The port after the host (an IPv6 literal is in brackets).
    let host_end = authority.rfind(']').unwrap_or(0);
    let port = authority[host_end..]
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(default_port);
    body["incoming"]["port"] = Value::from(port);
    body["incoming"]["tls"] = Value::from(tls);
    body["outgoing"] = Value::Null;
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
    let mut body = forms::to_json(&secs, &form);
    ews_endpoint(st, &mut body);
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
    use serversync_model::profile::{AuthProtocol, AuthenticationType, ExchangeVersion};

    fn submitted(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// JSON merge patch (RFC 7396), as the API applies the form's JSON to a new profile.
    fn merge(target: &mut Value, patch: &Value) {
        match patch {
            Value::Object(p) => {
                if !target.is_object() {
                    *target = Value::Object(Default::default());
                }
                let t = target.as_object_mut().unwrap();
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            other => *target = other.clone(),
        }
    }

    /// The field `name` of a form.
    fn field<'a>(form: &'a [Section], name: &str) -> &'a forms::Field {
        form.iter()
            .flat_map(|s| &s.fields)
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no {name} field"))
    }

    /// The profile the API makes of a posted Exchange Server form (secrets aside).
    fn posted(form: &[(&str, &str)]) -> EmailServerProfile {
        posted_as(ServerType::ExchangeServer, form)
    }

    /// The profile the API makes of a posted form of type `t` (secrets aside).
    fn posted_as(t: ServerType, form: &[(&str, &str)]) -> EmailServerProfile {
        let secs = sections(t, true);
        let mut body = forms::to_json(&secs, &submitted(form));
        ews_endpoint(t, &mut body);
        body.as_object_mut().unwrap().remove("password");
        if let Some(oauth) = body.get_mut("oauth").and_then(Value::as_object_mut) {
            oauth.remove("client_secret");
        }
        let base = EmailServerProfile::new(
            serversync_model::OrgId::new(),
            "",
            t,
            serversync_model::UserId::new(),
            chrono::Utc::now(),
        );
        let mut doc = serde_json::to_value(&base).unwrap();
        merge(&mut doc, &body);
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn an_exchange_server_profile_has_its_fields_and_posts_a_valid_profile() {
        let form = sections(ServerType::ExchangeServer, true);
        assert!(field(&form, "auto_discover").is_checkbox());
        assert!(field(&form, "use_impersonation").is_checkbox());
        assert!(
            field(&form, "use_impersonation")
                .hint
                .contains("ApplicationImpersonation")
        );
        assert!(field(&form, "username").hint.contains("DOMAIN\\user"));
        assert!(field(&form, "password").kind == Kind::Password);
        assert_eq!(field(&form, "incoming.location").label, "EWS URL");
        // Every choice is a wire name of the model.
        let protocols = &field(&form, "auth_protocol").options;
        assert_eq!(protocols.len(), 5);
        for (v, _) in protocols {
            serde_json::from_value::<AuthProtocol>(Value::String(v.clone()))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
        }
        let versions = &field(&form, "exchange_version").options;
        assert_eq!(versions[0], ("".into(), "Read from the server".into()));
        for (v, _) in &versions[1..] {
            let version = serde_json::from_value::<ExchangeVersion>(Value::String(v.clone()))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
            assert!(version.is_supported(), "{v}");
        }
        assert!(
            sections(ServerType::ExchangeServerHybrid, false)
                .iter()
                .flat_map(|s| &s.fields)
                .any(|f| f.name == "auth_protocol"),
            "the hybrid type has the Exchange fields too"
        );

        // A new profile's defaults fill the form: Autodiscover on, auto-detect, version empty.
        let mut filled = sections(ServerType::ExchangeServer, true);
        let template = EmailServerProfile::new(
            serversync_model::OrgId::new(),
            "",
            ServerType::ExchangeServer,
            serversync_model::UserId::new(),
            chrono::Utc::now(),
        );
        forms::fill(&mut filled, &serde_json::to_value(&template).unwrap());
        let value = |name: &str| field(&filled, name).value.clone();
        assert_eq!(value("auto_discover"), "true");
        assert_eq!(value("auth_protocol"), "auto_detect");
        assert_eq!(value("exchange_version"), "");

        // Autodiscover, impersonation, the service account: valid as posted.
        let p = posted(&[
            ("name", "Exchange"),
            ("authentication", "impersonation"),
            ("auto_discover", "false"),
            ("auto_discover", "true"),
            ("incoming.location", ""),
            ("exchange_version", ""),
            ("auth_protocol", "ntlm"),
            ("use_impersonation", "false"),
            ("use_impersonation", "true"),
            ("username", "CONTOSO\\svc-sync"),
            ("password", "secret"),
        ]);
        assert!(p.auto_discover && p.use_impersonation);
        assert_eq!(p.authentication, AuthenticationType::Impersonation);
        assert_eq!(p.auth_protocol, AuthProtocol::Ntlm);
        assert_eq!(p.exchange_version, None);
        assert_eq!(p.username.as_deref(), Some("CONTOSO\\svc-sync"));
        assert!(p.incoming.is_none() && p.outgoing.is_none());
        p.validate(false).expect("valid");
        assert!(
            p.validate(true).is_err(),
            "FIPS mode refuses NTLM: the form shows the API's message"
        );

        // Autodiscover off: the EWS URL alone, its port and TLS from the URL; a version.
        let p = posted(&[
            ("name", "Exchange"),
            ("authentication", "impersonation"),
            ("auto_discover", "false"),
            (
                "incoming.location",
                "https://mail.contoso.test:8443/EWS/Exchange.asmx",
            ),
            ("exchange_version", "exchange2019"),
            ("auth_protocol", "basic"),
            ("use_impersonation", "true"),
            ("username", "svc-sync@contoso.test"),
        ]);
        let ews = p.incoming.as_ref().expect("the EWS URL");
        assert_eq!(
            (ews.location.as_str(), ews.port, ews.tls),
            (
                "https://mail.contoso.test:8443/EWS/Exchange.asmx",
                8443,
                serversync_model::profile::TlsMode::Implicit
            )
        );
        assert!(p.outgoing.is_none(), "sent over the same URL");
        assert_eq!(p.exchange_version, Some(ExchangeVersion::Exchange2019));
        p.validate(false)
            .expect("valid without an outgoing location");
        p.validate(true).expect("basic over TLS is FIPS-compliant");
        let p = posted(&[
            ("name", "Exchange"),
            ("username", "svc"),
            ("auto_discover", "false"),
            (
                "incoming.location",
                "https://mail.contoso.test/EWS/Exchange.asmx",
            ),
        ]);
        assert_eq!(p.incoming.unwrap().port, 443);

        // Autodiscover off without a URL: the API names the field to fill.
        let err = posted(&[
            ("name", "Exchange"),
            ("username", "svc"),
            ("auto_discover", "false"),
        ])
        .validate(false)
        .unwrap_err();
        assert!(err.0.iter().any(|e| e.field == "incoming"), "{err}");
    }

    #[test]
    fn an_imap_profile_can_be_set_up_for_gmail_oauth() {
        let form = sections(ServerType::ImapSmtp, true);
        let auth = field(&form, "authentication");
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
    #[test]
    fn an_exchange_online_profile_has_the_app_registration_and_nothing_of_ews() {
        use serversync_model::profile::OAuthAuthority;
        let form = sections(ServerType::ExchangeOnline, true);
        let names: Vec<&str> = form
            .iter()
            .flat_map(|s| &s.fields)
            .map(|f| f.name.as_str())
            .collect();
        for absent in [
            "auto_discover",
            "incoming.location",
            "incoming.port",
            "outgoing.location",
            "use_impersonation",
            "auth_protocol",
            "username",
            "password",
            "exchange_version",
        ] {
            assert!(!names.contains(&absent), "{absent} in {names:?}");
        }
        assert_eq!(
            field(&form, "oauth.tenant_id").label,
            "Directory (tenant) id"
        );
        assert_eq!(
            field(&form, "oauth.client_id").label,
            "Application (client) id"
        );
        assert!(field(&form, "oauth.client_secret").kind == Kind::Password);
        let auth: Vec<&str> = field(&form, "authentication")
            .options
            .iter()
            .map(|(v, _)| v.as_str())
            .collect();
        assert_eq!(auth, ["server_to_server"]);
        // Every authority is a wire name of the model.
        let authorities = &field(&form, "oauth.authority").options;
        assert_eq!(authorities.len(), 4);
        for (v, _) in authorities {
            serde_json::from_value::<OAuthAuthority>(Value::String(v.clone()))
                .unwrap_or_else(|e| panic!("{v}: {e}"));
        }

        // A new profile's defaults: server to server, Autodiscover on (not on the form), automatic.
        let mut filled = sections(ServerType::ExchangeOnline, true);
        let mut template = EmailServerProfile::new(
            serversync_model::OrgId::new(),
            "",
            ServerType::ExchangeOnline,
            serversync_model::UserId::new(),
            chrono::Utc::now(),
        );
        forms::fill(&mut filled, &serde_json::to_value(&template).unwrap());
        let value = |name: &str| field(&filled, name).value.clone();
        assert_eq!(value("authentication"), "server_to_server");
        assert!(template.auto_discover);

        // As posted: valid, Autodiscover still on, no server locations, no impersonation.
        let p = posted_as(
            ServerType::ExchangeOnline,
            &[
                ("name", "Contoso 365"),
                ("authentication", "server_to_server"),
                ("oauth.tenant_id", "6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e"),
                ("oauth.client_id", "0a1b2c3d-1111-4222-8333-944455566677"),
                ("oauth.client_secret", "s3cret"),
                ("oauth.authority", "us_government"),
            ],
        );
        p.validate(false).unwrap();
        assert_eq!(p.authentication, AuthenticationType::ServerToServer);
        assert!(p.auto_discover && !p.use_impersonation);
        assert!(p.incoming.is_none() && p.outgoing.is_none());
        let oauth = p.oauth.as_ref().unwrap();
        assert_eq!(
            oauth.tenant_id.as_deref(),
            Some("6f1c2d3e-4b5a-4c6d-8e7f-901a2b3c4d5e")
        );
        assert_eq!(oauth.authority, OAuthAuthority::UsGovernment);

        // A blank tenant id: the API's problem names oauth.tenant_id, marked on its field.
        let err = posted_as(
            ServerType::ExchangeOnline,
            &[
                ("name", "Contoso 365"),
                ("oauth.tenant_id", "  "),
                ("oauth.client_id", "app"),
            ],
        )
        .validate(false)
        .unwrap_err();
        let problem = Problem {
            detail: err.to_string(),
            fields: err
                .0
                .iter()
                .map(|e| (e.field.clone(), e.message.clone()))
                .collect(),
            status: 422,
        };
        forms::refill(
            &mut filled,
            &submitted(&[("oauth.tenant_id", "  ")]),
            &problem,
        );
        assert!(
            field(&filled, "oauth.tenant_id").error.is_some(),
            "{problem:?}"
        );

        // A stored profile's secret is never shown back: the form says whether it is set.
        template.oauth = p.oauth.clone();
        let mut stored = serde_json::to_value(&template).unwrap();
        stored["oauth"]["client_secret"] = Value::from("********");
        let mut edit = sections(ServerType::ExchangeOnline, false);
        forms::fill(&mut edit, &stored);
        let secret = field(&edit, "oauth.client_secret");
        assert_eq!((secret.value.as_str(), secret.secret_state()), ("", "set"));
        assert!(secret.hint.contains("keep the stored secret"));
        stored["oauth"]["client_secret"] = Value::Null;
        forms::fill(&mut edit, &stored);
        let secret = field(&edit, "oauth.client_secret");
        assert_eq!(secret.secret_state(), "not set");

        // The certificate instead of a secret: a text area, posted as the PEM text, and on a
        // stored profile only "set" (its text is never put back into the page).
        let cert = field(&form, "oauth.client_certificate");
        assert!(cert.is_textarea() && cert.is_secret());
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----";
        let json = forms::to_json(
            &form,
            &submitted(&[("oauth.client_certificate", &format!("{pem}\n"))]),
        );
        assert_eq!(json["oauth"]["client_certificate"], pem);
        stored["oauth"]["client_certificate"] = Value::from("********");
        forms::fill(&mut edit, &stored);
        let cert = field(&edit, "oauth.client_certificate");
        assert_eq!((cert.value.as_str(), cert.secret_state()), ("", "set"));
        assert!(cert.hint.contains("keep the stored certificate"));
        forms::refill(
            &mut edit,
            &submitted(&[("oauth.client_certificate", pem)]),
            &Problem::default(),
        );
        assert!(field(&edit, "oauth.client_certificate").value.is_empty());
    }
}
