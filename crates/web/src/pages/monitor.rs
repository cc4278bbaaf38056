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
}

pub async fn alerts(State(web): State<Web>, s: Session) -> Response {
    let found = match web
        .admin
        .list_alerts(&s.caller, s.org.id, None, None, 1000)
        .await
    {
        Ok(p) => p.items,
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
    let mut rows: Vec<AlertRow> = found
        .into_iter()
        .map(|a| {
            let a = a.value;
            AlertRow {
                when: when(Some(a.created_at)),
                severity: serversync_model::wire_name(&a.severity),
                mailbox_id: a.mailbox_id.map(|m| m.to_string()).unwrap_or_default(),
                mailbox: a
                    .mailbox_id
                    .and_then(|m| emails.get(&m).cloned())
                    .unwrap_or_default(),
                step: a.step.map(|s| words(&s)).unwrap_or_default(),
                message: a.message,
            }
        })
        .collect();
    rows.reverse();
    render(&AlertsPage {
        page: Page::new(&s, "Alerts", "alerts"),
        rows,
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
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    page: Page,
    rows: Vec<JobRow>,
    running: bool,
}

#[derive(Template)]
#[template(path = "jobs_table.html")]
struct JobsTable {
    rows: Vec<JobRow>,
    running: bool,
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
        Ok(rows) => render(&JobsPage {
            page: Page::new(&s, "Jobs", "jobs").with_notice(q.done),
            running: running(&rows),
            rows,
        }),
        Err(r) => r,
    }
}

/// The jobs table alone, polled by htmx while a job runs.
pub async fn jobs_table(State(web): State<Web>, s: Session) -> Response {
    match job_rows(&web, &s).await {
        Ok(rows) => render(&JobsTable {
            running: running(&rows),
            rows,
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
