//! Alerts, jobs (with live progress through htmx polling) and the audit log.

use super::{Page, error, render, when, words};
use crate::Web;
use crate::session::Session;
use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
pub struct Notice {
    done: Option<String>,
}

pub struct AlertRow {
    pub when: String,
    pub severity: String,
    pub mailbox_id: String,
    pub mailbox: String,
    pub step: String,
    pub message: String,
}

#[derive(Template)]
#[template(path = "alerts.html")]
struct AlertsPage {
    page: Page,
    rows: Vec<AlertRow>,
    filtered: bool,
}

/// Alerts shown on the page, newest first.
const ALERTS_PAGE: u32 = 500;

#[derive(serde::Deserialize, Default)]
pub struct AlertsQuery {
    /// Only this mailbox's alerts.
    mailbox: Option<String>,
}

pub async fn alerts(
    State(web): State<Web>,
    s: Session,
    axum::extract::Query(q): axum::extract::Query<AlertsQuery>,
) -> Response {
    let mailbox = q.mailbox.as_deref().and_then(|m| m.parse().ok());
    let found = match web
        .admin
        .newest_alerts(&s.caller, s.org.id, mailbox, ALERTS_PAGE)
        .await
    {
        Ok(a) => a,
        Err(e) => return error(&s, e),
    };
    let emails: HashMap<_, _> = web
        .admin
        .list_mailboxes(&s.caller, s.org.id, &Default::default(), None, 10_000)
        .await
        .map(|p| {
            p.items
                .into_iter()
                .map(|m| (m.value.id, m.value.email))
                .collect()
        })
        .unwrap_or_default();
    let rows: Vec<AlertRow> = found
        .into_iter()
        .map(|a| AlertRow {
            when: when(Some(a.created_at)),
            severity: serversync_model::wire_name(&a.severity),
            mailbox_id: a.mailbox_id.map(|m| m.to_string()).unwrap_or_default(),
            mailbox: a
                .mailbox_id
                .and_then(|m| emails.get(&m).cloned())
                .unwrap_or_default(),
            step: a.step.map(|s| words(&s)).unwrap_or_default(),
            message: a.message,
        })
        .collect();
    render(&AlertsPage {
        page: Page::new(&s, "Alerts", "alerts"),
        rows,
        filtered: mailbox.is_some(),
    })
}

pub struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub done: u32,
    pub total: u32,
    pub created: String,
    pub finished: String,
    pub failures: Vec<String>,
    pub certificates: Vec<CertRow>,
}

/// A certificate a server presented during test and enable, with what a person checks
/// before pinning it.
pub struct CertRow {
    pub direction: String,
    pub server: String,
    pub subject: String,
    pub issuer: String,
    pub valid: String,
    pub names: String,
    pub sha256: String,
    pub self_signed: bool,
    pub pinned: bool,
    /// Shown with a "pin" button: the test failed, and the profile does not pin it yet.
    pub can_pin: bool,
    pub profile_id: String,
}

fn day(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "?".into())
}

fn cert_rows(results: &[serversync_model::job::JobItemResult]) -> Vec<CertRow> {
    let mut out = Vec::new();
    for r in results {
        for c in &r.certificates {
            let i = &c.certificate;
            out.push(CertRow {
                direction: c.direction.clone(),
                server: c.server.clone(),
                subject: i.subject.clone(),
                issuer: i.issuer.clone(),
                valid: format!("{} to {}", day(i.not_before), day(i.not_after)),
                names: i.names.join(", "),
                sha256: i.sha256.clone(),
                self_signed: i.self_signed,
                pinned: c.pinned,
                can_pin: !r.ok && !c.pinned,
                profile_id: c.profile_id.to_string(),
            });
        }
    }
    out
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    page: Page,
    rows: Vec<JobRow>,
    running: bool,
    /// For the pin forms of the included table.
    csrf: String,
}

#[derive(Template)]
#[template(path = "jobs_table.html")]
struct JobsTable {
    rows: Vec<JobRow>,
    running: bool,
    csrf: String,
}

async fn job_rows(web: &Web, s: &Session) -> Result<Vec<JobRow>, Response> {
    let jobs = web
        .admin
        .list_jobs(&s.caller, s.org.id, None, 1000)
        .await
        .map_err(|e| error(s, e))?
        .items;
    let mut rows: Vec<JobRow> = jobs
        .into_iter()
        .map(|j| {
            let j = j.value;
            JobRow {
                id: j.id.to_string(),
                kind: words(&j.kind),
                status: serversync_model::wire_name(&j.status),
                done: j.done,
                total: j.total,
                created: when(Some(j.created_at)),
                finished: when(j.finished_at),
                failures: j
                    .results
                    .iter()
                    .filter(|r| !r.ok)
                    .map(|r| r.message.clone())
                    .collect(),
                certificates: cert_rows(&j.results),
            }
        })
        .collect();
    rows.reverse();
    rows.truncate(50);
    Ok(rows)
}

fn running(rows: &[JobRow]) -> bool {
    rows.iter()
        .any(|r| r.status == "queued" || r.status == "running")
}

pub async fn jobs(State(web): State<Web>, s: Session, Query(q): Query<Notice>) -> Response {
    match job_rows(&web, &s).await {
        Ok(rows) => {
            let page = Page::new(&s, "Jobs", "jobs").with_notice(q.done);
            render(&JobsPage {
                csrf: page.csrf.clone(),
                page,
                running: running(&rows),
                rows,
            })
        }
        Err(r) => r,
    }
}

/// The jobs table alone, polled by htmx while a job runs.
pub async fn jobs_table(State(web): State<Web>, s: Session) -> Response {
    match job_rows(&web, &s).await {
        Ok(rows) => render(&JobsTable {
            running: running(&rows),
            rows,
            csrf: Page::new(&s, "Jobs", "jobs").csrf,
        }),
        Err(r) => r,
    }
}

pub struct AuditRow {
    pub when: String,
    pub actor: String,
    pub action: String,
    pub entity: String,
    pub id: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    page: Page,
    rows: Vec<AuditRow>,
    page_size: u32,
    first_page: bool,
    /// The `before` of the next (older) page, when there are older entries.
    older: Option<i64>,
}

/// Entries shown per page of the audit log.
const AUDIT_PAGE: u32 = 100;

#[derive(Deserialize)]
pub struct AuditQuery {
    before: Option<i64>,
}

/// The audit log, newest first, [`AUDIT_PAGE`] entries a page; "Older entries" continues
/// before the last entry shown.
pub async fn audit(State(web): State<Web>, s: Session, Query(q): Query<AuditQuery>) -> Response {
    let mut entries = match web
        .admin
        .audit_newest(&s.caller, s.org.id, q.before, AUDIT_PAGE + 1)
        .await
    {
        Ok(e) => e,
        Err(e) => return error(&s, e),
    };
    let more = entries.len() > AUDIT_PAGE as usize;
    entries.truncate(AUDIT_PAGE as usize);
    let older = entries.last().map(|e| e.seq).filter(|_| more);
    let rows: Vec<AuditRow> = entries
        .into_iter()
        .map(|e| {
            let v = serde_json::to_value(&e).unwrap_or_default();
            let text = |k: &str| match &v[k] {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => String::new(),
                other => other.to_string(),
            };
            AuditRow {
                when: text("at")
                    .chars()
                    .take(19)
                    .collect::<String>()
                    .replace('T', " "),
                actor: text("actor"),
                action: text("action"),
                entity: text("entity"),
                id: text("entity_id"),
            }
        })
        .collect();
    render(&AuditPage {
        page: Page::new(&s, "Audit log", "audit"),
        rows,
        page_size: AUDIT_PAGE,
        first_page: q.before.is_none(),
        older,
    })
}
