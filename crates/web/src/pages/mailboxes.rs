//! Mailboxes: the grid with views, filters and bulk actions; the mailbox's page with its status
//! fields, telemetry, alert wall, item-level decisions and "sync now"; its edit form.

use super::forms::{self, Field, Kind, Section, value};
use super::{Page, action, done, error, render, when, words};
use crate::Web;
use crate::names::{Names, ids_in, tracked_activity};
use crate::session::Session;
use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use serversync_engine::admin::{ItemFilter, MailboxFilter};
use serversync_model::mailbox::{
    ApprovalStatus, DirectionStatus, Mailbox, MailboxRegarding, RunStatus,
};
use serversync_model::profile::AuthenticationType;
use serversync_model::{MailboxId, ProfileId};
use std::collections::HashMap;

pub struct Row {
    pub id: String,
    pub name: String,
    pub email: String,
    pub owner: String,
    pub profile: String,
    pub approval: String,
    pub incoming: String,
    pub outgoing: String,
    pub status: String,
    pub status_class: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "mailboxes.html")]
struct ListPage {
    page: Page,
    rows: Vec<Row>,
    view: String,
    status: String,
    approval: String,
    profile_id: String,
    profiles: Vec<(String, String)>,
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    view: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    approval: String,
    #[serde(default)]
    profile_id: String,
    done: Option<String>,
}

/// How a direction reads in the grid: method and state.
fn direction(method: String, d: &DirectionStatus) -> String {
    let state = match (d.enabled, d.status) {
        (true, RunStatus::Success) => "enabled",
        (_, RunStatus::Failure) => "failed",
        (false, RunStatus::Success) => "disabled",
        _ => "not run",
    };
    format!("{method} — {state}")
}

pub(crate) fn is_active(m: &Mailbox) -> bool {
    m.incoming.enabled || m.outgoing.enabled || m.act.enabled
}

pub async fn list(State(web): State<Web>, s: Session, Query(q): Query<ListQuery>) -> Response {
    let f = MailboxFilter {
        profile_id: q.profile_id.parse::<ProfileId>().ok(),
        approval: serde_json::from_value(json!(q.approval)).ok(),
        status: (!q.status.is_empty()).then(|| q.status.clone()),
        owner_id: None,
    };
    let found = match web
        .admin
        .list_mailboxes(&s.caller, s.org.id, &f, None, 1000)
        .await
    {
        Ok(p) => p.items,
        Err(e) => return error(&s, e),
    };
    let profiles: HashMap<ProfileId, String> = web
        .admin
        .list_profiles(s.org.id, None, 500)
        .await
        .map(|p| {
            p.items
                .into_iter()
                .map(|p| (p.value.id, p.value.name))
                .collect()
        })
        .unwrap_or_default();
    let users: HashMap<_, String> = web
        .admin
        .list_users(&s.caller, s.org.id, None, 1000)
        .await
        .map(|p| {
            p.items
                .into_iter()
                .map(|u| (u.value.id, u.value.full_name))
                .collect()
        })
        .unwrap_or_default();
    let rows = found
        .into_iter()
        .map(|m| m.value)
        .filter(|m| match q.view.as_str() {
            "active" => is_active(m),
            "attention" => {
                m.overall_status() == RunStatus::Failure || m.telemetry.last_error.is_some()
            }
            "pending" => m.approval != ApprovalStatus::Approved,
            _ => true,
        })
        .map(|m| {
            let status = m.overall_status();
            Row {
                id: m.id.to_string(),
                owner: match m.regarding {
                    MailboxRegarding::User(u) => {
                        users.get(&u).cloned().unwrap_or_else(|| u.to_string())
                    }
                    MailboxRegarding::Queue(_) => "queue".into(),
                },
                profile: m
                    .profile_id
                    .and_then(|p| profiles.get(&p).cloned())
                    .unwrap_or_else(|| "—".into()),
                approval: words(&m.approval),
                incoming: direction(words(&m.incoming_method), &m.incoming),
                outgoing: direction(words(&m.outgoing_method), &m.outgoing),
                status: words(&status),
                status_class: serversync_model::wire_name(&status),
                last_error: m
                    .telemetry
                    .last_error
                    .as_ref()
                    .map(|e| e.message.clone())
                    .unwrap_or_default(),
                name: m.name,
                email: m.email,
            }
        })
        .collect();
    render(&ListPage {
        page: Page::new(&s, "Mailboxes", "mailboxes").with_notice(q.done),
        rows,
        view: q.view,
        status: q.status,
        approval: q.approval,
        profile_id: q.profile_id,
        profiles: profiles
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    })
}

/// Bulk actions on the selected mailboxes.
pub async fn bulk(
    State(web): State<Web>,
    s: Session,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let ids: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "ids")
        .map(|(_, v)| v.as_str())
        .collect();
    if ids.is_empty() {
        return done("/mailboxes", "Select at least one mailbox first.");
    }
    let (path, what) = match value(&form, "action").as_str() {
        "apply_defaults" => (
            "/mailboxes/apply-defaults",
            "The default email settings were applied",
        ),
        "approve" => ("/mailboxes/approve", "The email addresses were approved"),
        "test_enable" => ("/mailboxes/test-enable", "Testing and enabling"),
        other => return error(&s, format!("unknown action {other:?}")),
    };
    match web
        .api(&s, Method::POST, path, Some(json!({ "mailbox_ids": ids })))
        .await
    {
        Ok(v) if path.ends_with("test-enable") => done(
            "/jobs",
            &format!(
                "{what} {} mailbox(es): job {} follows below.",
                ids.len(),
                v["id"].as_str().unwrap_or_default()
            ),
        ),
        // Applying the defaults also tests and enables the mailboxes (as the reference does).
        Ok(v) if v["job"]["id"].is_string() => done(
            "/mailboxes",
            &format!(
                "{what} ({} mailbox(es)); job {} tests and enables them.",
                ids.len(),
                v["job"]["id"].as_str().unwrap_or_default()
            ),
        ),
        Ok(_) => done(
            "/mailboxes",
            &format!("{what} ({} mailbox(es)).", ids.len()),
        ),
        Err(p) => error(&s, p.detail),
    }
}

pub struct ItemRow {
    pub id: String,
    pub received: String,
    pub from: String,
    pub subject: String,
    pub decision: String,
    /// HTML: the last step of the trace (the decision), records named.
    pub last: String,
    /// HTML: every step of the trace, records named.
    pub trace: Vec<String>,
    /// The email activity it was tracked as (href).
    pub activity: Option<String>,
}

/// The item list's filters and page on a mailbox's page.
#[derive(Deserialize, Default)]
pub struct ItemsQuery {
    #[serde(default)]
    decision: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    before: Option<String>,
    done: Option<String>,
}

pub struct AlertRow {
    pub when: String,
    pub severity: String,
    pub message: String,
    pub step: String,
}

pub struct StatusRow {
    pub direction: &'static str,
    pub method: String,
    pub status: String,
    pub class: String,
    pub at: String,
    pub enabled: bool,
}

#[derive(Template)]
#[template(path = "mailbox.html")]
struct DetailPage {
    page: Page,
    m: Mailbox,
    profile: String,
    statuses: Vec<StatusRow>,
    last_error: Option<(String, String, String)>,
    telemetry: Vec<(&'static str, String)>,
    alerts: Vec<AlertRow>,
    /// More alerts than shown.
    more_alerts: bool,
    items: Vec<ItemRow>,
    iq: ItemsQuery,
    /// The query of the next (older) page of items.
    older: Option<String>,
    /// The filters' query, for "Newest".
    filters: String,
    /// Appointments, contacts and tasks: the latest decisions (when, what), newest first.
    act_decisions: Vec<(String, String)>,
    sections: Vec<Section>,
    problem: Option<String>,
}

fn edit_sections() -> Vec<Section> {
    vec![Section::new(
        "Edit mailbox",
        "A change of configuration disables the mailbox until it is tested and enabled again.",
        vec![
            Field::new("incoming_method", "Incoming email", Kind::Select).options(&[
                ("server_side_sync", "Server-side synchronization"),
                ("email_router", "Email Router"),
                ("none", "None"),
            ]),
            Field::new("outgoing_method", "Outgoing email", Kind::Select).options(&[
                ("server_side_sync", "Server-side synchronization"),
                ("email_router", "Email Router"),
                ("none", "None"),
            ]),
            Field::new("username", "User name", Kind::Text).hint(
                "When the profile takes credentials from each mailbox; empty: the email address.",
            ),
            Field::new("password", "Password", Kind::Password)
                .hint("Stored encrypted; leave empty to keep the stored one."),
            Field::new("process_email_from", "Process email from", Kind::DateTime),
        ],
    )]
}

/// Alerts shown on a mailbox's page (the newest; the rest are on the alerts page).
const ALERTS_SHOWN: usize = 3;

async fn detail_page(
    web: &Web,
    s: &Session,
    id: &str,
    sections: Option<Vec<Section>>,
    problem: Option<String>,
    iq: ItemsQuery,
) -> Response {
    let Ok(mid) = id.parse::<MailboxId>() else {
        return super::with_status(
            error(s, format!("{id:?} is not a mailbox id")),
            axum::http::StatusCode::NOT_FOUND,
        );
    };
    let m = match web.admin.mailbox(&s.caller, s.org.id, mid).await {
        Ok(m) => m.value,
        Err(e) => return super::fail(s, e),
    };
    let stored_profile = match m.profile_id {
        Some(p) => web.admin.profile(s.org.id, p).await.ok(),
        None => None,
    };
    let profile = match (&stored_profile, m.profile_id) {
        (Some(p), _) => p.name.clone(),
        (None, Some(id)) => id.to_string(),
        (None, None) => "—".into(),
    };
    // A user name and password on the mailbox only where its profile signs in with them.
    let own_credentials = stored_profile.as_ref().is_none_or(|p| {
        p.authentication.credentials_on_mailbox()
            || p.authentication == AuthenticationType::GmailOAuth
    });
    let statuses = [
        ("Incoming email", words(&m.incoming_method), &m.incoming),
        ("Outgoing email", words(&m.outgoing_method), &m.outgoing),
        (
            "Appointments, contacts and tasks",
            words(&m.act_method),
            &m.act,
        ),
    ]
    .into_iter()
    .map(|(direction, method, d)| StatusRow {
        direction,
        method,
        status: words(&d.status),
        class: serversync_model::wire_name(&d.status),
        at: when(d.at),
        enabled: d.enabled,
    })
    .collect();
    let t = &m.telemetry;
    let mut telemetry = vec![
        ("Test completed on", when(m.test_completed_on)),
        ("Last sync started", when(t.last_sync_start)),
        ("Last successful sync", when(t.last_successful_sync)),
        (
            "Items processed",
            super::count(usize::try_from(t.items_processed).unwrap_or(usize::MAX)),
        ),
        ("Items failed", t.items_failed.to_string()),
        (
            "Transient failures in a row",
            t.transient_failure_count.to_string(),
        ),
        ("Postponed until", when(t.postponed_until)),
    ];
    // Exchange: where Autodiscover (or the profile) pointed and what the server said it is.
    if let Some(u) = &t.ews_url {
        telemetry.push(("EWS URL", u.clone()));
    }
    if let Some(v) = &t.server_version {
        telemetry.push(("Exchange server version", v.clone()));
    }
    let last_error = t.last_error.as_ref().map(|e| {
        (
            e.step.map(|s| words(&s)).unwrap_or_else(|| "—".into()),
            e.code.clone(),
            e.message.clone(),
        )
    });
    // The newest ones (one more than shown, to know whether there are more).
    let mut alerts: Vec<AlertRow> = web
        .admin
        .newest_alerts(&s.caller, s.org.id, Some(mid), ALERTS_SHOWN as u32 + 1)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|a| AlertRow {
            when: when(Some(a.created_at)),
            severity: serversync_model::wire_name(&a.severity),
            step: a.step.map(|s| words(&s)).unwrap_or_default(),
            message: a.message,
        })
        .collect();
    let more_alerts = alerts.len() > ALERTS_SHOWN;
    alerts.truncate(ALERTS_SHOWN);
    // Items: newest first, a page at a time, filtered; each trace with its records named.
    let f = ItemFilter {
        decision: serde_json::from_value(json!(iq.decision)).ok(),
        from: Some(iq.from.clone()),
        since: super::records::day(&iq.since),
        until: super::records::day(&iq.until).map(|d| d + chrono::Duration::days(1)),
    };
    let page = match web
        .admin
        .items_newest(
            &s.caller,
            s.org.id,
            mid,
            &f,
            iq.before.as_deref(),
            super::records::PAGE_SIZE,
        )
        .await
    {
        Ok(p) => p,
        Err(e) => return super::fail(s, e),
    };
    let mut names = Names::default();
    let refs: Vec<_> = page
        .items
        .iter()
        .flat_map(|i| i.value.trace.iter().flat_map(|l| ids_in(l)))
        .collect();
    names.load(web, s, &refs).await;
    let items: Vec<ItemRow> = page
        .items
        .into_iter()
        .map(|i| i.value)
        .map(|i| ItemRow {
            id: i.id.to_string(),
            received: when(Some(i.received_at)),
            from: i.from.clone().unwrap_or_default(),
            subject: i.subject.clone().unwrap_or_default(),
            decision: words(&i.decision),
            last: i
                .trace
                .last()
                .map(|l| names.trace_line(l))
                .unwrap_or_default(),
            activity: tracked_activity(&i.trace).map(|a| format!("/activities/{a}")),
            trace: i.trace.iter().map(|l| names.trace_line(l)).collect(),
        })
        .collect();
    let filters = super::records::keep(&[
        ("decision", &iq.decision),
        ("from", &iq.from),
        ("since", &iq.since),
        ("until", &iq.until),
    ]);
    let older = page.next.map(|n| {
        let before = super::records::keep(&[("before", &n)]);
        if filters.is_empty() {
            before
        } else {
            format!("{filters}&{before}")
        }
    });
    let act_decisions = t
        .items_sync
        .iter()
        .flat_map(|s| s.decisions.iter())
        .map(|d| (when(Some(d.at)), d.what.clone()))
        .collect();
    let mut sections = sections.unwrap_or_else(|| {
        let mut secs = edit_sections();
        if let Ok(doc) = serde_json::to_value(&m) {
            forms::fill(&mut secs, &doc);
        }
        secs
    });
    if !own_credentials {
        for sec in &mut sections {
            sec.fields
                .retain(|f| f.name != "username" && f.name != "password");
        }
    }
    let unprocessable = problem.is_some();
    let notice = iq.done.clone();
    let mut r = render(&DetailPage {
        page: Page::new(s, &format!("Mailbox {}", m.email), "mailboxes").with_notice(notice),
        m,
        profile,
        statuses,
        last_error,
        telemetry,
        alerts,
        more_alerts,
        items,
        iq,
        older,
        filters,
        act_decisions,
        sections,
        problem,
    });
    if unprocessable {
        *r.status_mut() = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
    }
    r
}

pub async fn detail(
    State(web): State<Web>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<ItemsQuery>,
) -> Response {
    detail_page(&web, &s, &id, None, None, q).await
}

pub async fn update(
    State(web): State<Web>,
    s: Session,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let mut secs = edit_sections();
    let body = forms::to_json(&secs, &form);
    match web
        .api(&s, Method::PATCH, &format!("/mailboxes/{id}"), Some(body))
        .await
    {
        Ok(_) => done(&format!("/mailboxes/{id}"), "The mailbox was saved."),
        Err(p) => {
            forms::refill(&mut secs, &form, &p);
            detail_page(
                &web,
                &s,
                &id,
                Some(secs),
                Some(p.detail),
                ItemsQuery::default(),
            )
            .await
        }
    }
}

pub async fn sync_now(State(web): State<Web>, s: Session, Path(id): Path<String>) -> Response {
    let to = format!("/mailboxes/{id}");
    let notice = "Synchronization was requested: the mailbox syncs within seconds.";
    action(&web, &s, &format!("{to}/sync-now"), &to, notice).await
}

/// Links shown per page.
const LINKS_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct LinksQuery {
    after: Option<String>,
}

pub struct LinkRow {
    kind: &'static str,
    title: String,
    /// HTML: the record's name, a link to its page where it has one.
    record: String,
    direction: &'static str,
    remote: String,
}

#[derive(Template)]
#[template(path = "links.html")]
struct LinksPage {
    page: Page,
    mailbox_id: String,
    mailbox: String,
    conflicts: Vec<(String, String)>,
    rows: Vec<LinkRow>,
    first_page: bool,
    next: Option<String>,
}

/// A mailbox's two-way links (record ↔ server item, the last change's way) and the conflicts
/// and unwritable values its synchronization reported.
pub async fn links(
    State(web): State<Web>,
    s: Session,
    Path(id): Path<String>,
    Query(q): Query<LinksQuery>,
) -> Response {
    use serversync_model::sync::SyncDirection;
    use serversync_model::webhook::RecordType;
    let Ok(mid) = id.parse::<MailboxId>() else {
        return super::with_status(
            error(&s, format!("{id:?} is not a mailbox id")),
            axum::http::StatusCode::NOT_FOUND,
        );
    };
    let m = match web.admin.mailbox(&s.caller, s.org.id, mid).await {
        Ok(m) => m.value,
        Err(e) => return super::fail(&s, e),
    };
    let mut links = match web
        .admin
        .remote_links(&s.caller, s.org.id, mid, q.after.as_deref(), LINKS_PAGE + 1)
        .await
    {
        Ok(l) => l,
        Err(e) => return super::fail(&s, e),
    };
    let next = if links.len() > LINKS_PAGE as usize {
        links.truncate(LINKS_PAGE as usize);
        links.last().map(|l| l.value.record_id.clone())
    } else {
        None
    };
    let rows = links
        .into_iter()
        .map(|l| {
            let l = l.value;
            let text = |k: &str| l.synced_values.get(k).and_then(|v| v.as_str());
            let title = text("subject")
                .or(text("full_name"))
                .unwrap_or("(no title)")
                .to_owned();
            let (kind, record) = match l.record_type {
                RecordType::Contact => (
                    "contact",
                    format!(
                        "<a href=\"/records/contact/{}\">{}</a>",
                        crate::names::esc(&l.record_id),
                        crate::names::esc(&title)
                    ),
                ),
                RecordType::Appointment => ("appointment", crate::names::esc(&title)),
                RecordType::Task => ("task", crate::names::esc(&title)),
                _ => ("record", crate::names::esc(&title)),
            };
            LinkRow {
                kind,
                title,
                record,
                direction: match l.direction {
                    SyncDirection::ToServer => "CRM → server",
                    SyncDirection::FromServer => "server → CRM",
                },
                remote: l.remote_id,
            }
        })
        .collect();
    let conflicts = web
        .admin
        .newest_alerts(&s.caller, s.org.id, Some(mid), 1000)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|a| matches!(a.code.as_str(), "sync_conflict" | "item_unmappable"))
        .take(50)
        .map(|a| (when(Some(a.created_at)), a.message))
        .collect();
    render(&LinksPage {
        page: Page::new(
            &s,
            &format!("Synchronized items of {}", m.email),
            "mailboxes",
        ),
        mailbox_id: mid.to_string(),
        mailbox: m.email,
        conflicts,
        rows,
        first_page: q.after.is_none(),
        next,
    })
}
