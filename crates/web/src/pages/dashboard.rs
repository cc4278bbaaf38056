//! The sync monitoring dashboard: mailboxes by status, items processed and failed per hour,
//! arrival latency, per-profile health, and the mailboxes that need attention first; for
//! installation administrators also the size of the database.

use super::mailboxes::is_active;
use super::{Page, duration, error, render, when};
use crate::Web;
use crate::charts;
use crate::session::Session;
use askama::Template;
use axum::extract::State;
use axum::response::Response;
use chrono::{Duration, Timelike, Utc};
use serversync_model::MailboxId;
use serversync_model::item::{ItemDecision, MailItem};
use serversync_model::mailbox::{ApprovalStatus, RunStatus};
use serversync_model::org::Privilege;

pub struct ProfileHealth {
    pub id: String,
    pub name: String,
    pub mailboxes: usize,
    pub active: usize,
    pub failing: usize,
}

pub struct Attention {
    pub id: String,
    pub email: String,
    pub problem: String,
    pub since: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    page: Page,
    status_chart: String,
    items_chart: String,
    /// p50, p95, p99 and how many live arrivals they are of.
    latency: Option<(String, String, String, usize)>,
    /// Messages stored in the last 24 hours that arrived before their mailbox was watched
    /// (the first synchronization's history): not in the latency.
    backfill: usize,
    profiles: Vec<ProfileHealth>,
    attention: Vec<Attention>,
    totals: (usize, usize, usize),
    /// Installation administrators: the database (engine, size, and what the size holds).
    database: Option<(String, String, String)>,
}

/// Bytes for people: "812 KiB", "3.4 GiB".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} bytes"),
        _ if v < 10.0 => format!("{v:.1} {}", UNITS[unit]),
        _ => format!("{v:.0} {}", UNITS[unit]),
    }
}

/// Percentile of sorted values (nearest rank).
fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn page(State(web): State<Web>, s: Session) -> Response {
    let mailboxes = match web
        .admin
        .list_mailboxes(&s.caller, s.org.id, &Default::default(), None, 10_000)
        .await
    {
        Ok(p) => p.items.into_iter().map(|m| m.value).collect::<Vec<_>>(),
        Err(e) => return error(&s, e),
    };
    let count = |f: &dyn Fn(&serversync_model::mailbox::Mailbox) -> bool| {
        mailboxes.iter().filter(|m| f(m)).count() as u64
    };
    let status_chart = charts::bars(
        "Mailboxes by status",
        &[
            (
                "Success".into(),
                count(&|m| m.overall_status() == RunStatus::Success),
                "#1a7f37",
            ),
            (
                "Failure".into(),
                count(&|m| m.overall_status() == RunStatus::Failure),
                "#b42318",
            ),
            (
                "Not run".into(),
                count(&|m| m.overall_status() == RunStatus::NotRun),
                "#9aa4b0",
            ),
            (
                "Pending approval".into(),
                count(&|m| m.approval == ApprovalStatus::PendingApproval),
                "#9a6700",
            ),
            ("Active".into(), count(&|m| is_active(m)), "#0b5cad"),
        ],
    );

    // Items of the last 24 hours, per hour, and their arrival latency.
    let now = Utc::now();
    let since = now - Duration::hours(24);
    // Every mailbox's with "read mailboxes", else those of the mailboxes the caller owns.
    let scopes: Vec<Option<MailboxId>> = if s.caller.has(Privilege::ReadMailboxes) {
        vec![None]
    } else {
        mailboxes.iter().map(|m| Some(m.id)).collect()
    };
    let mut items: Vec<MailItem> = Vec::new();
    for scope in scopes {
        let mut after: Option<String> = None;
        for _ in 0..20 {
            let page = match web
                .admin
                .items_since(&s.caller, s.org.id, scope, since, after.as_deref(), 1000)
                .await
            {
                Ok(p) => p,
                Err(e) => return error(&s, e),
            };
            items.extend(page.items.into_iter().map(|i| i.value));
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
    }
    let start_hour = since
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .unwrap_or(since);
    let mut slots: Vec<(String, u64, u64)> = (0..=24)
        .map(|h| {
            (
                (start_hour + Duration::hours(h))
                    .format("%H:00")
                    .to_string(),
                0,
                0,
            )
        })
        .collect();
    // Arrival latency counts only live arrivals: mail the server received after the mailbox was
    // tested and enabled (from then on it is watched). What the first synchronization takes
    // in — history from before — arrived long before anyone watched, and is left out.
    let watched_since: std::collections::HashMap<MailboxId, chrono::DateTime<Utc>> = mailboxes
        .iter()
        .filter_map(|m| m.test_completed_on.map(|t| (m.id, t)))
        .collect();
    let mut latencies = Vec::new();
    let mut backfill = 0usize;
    for i in &items {
        let slot = ((i.created_at - start_hour).num_hours()).clamp(0, 24) as usize;
        match i.decision {
            ItemDecision::Failed => slots[slot].2 += 1,
            _ => slots[slot].1 += 1,
        }
        if i.decision == ItemDecision::Stored {
            match watched_since.get(&i.mailbox_id) {
                Some(since) if i.received_at >= *since => {
                    latencies.push((i.created_at - i.received_at).num_milliseconds().max(0))
                }
                _ => backfill += 1,
            }
        }
    }
    latencies.sort_unstable();
    let latency = (!latencies.is_empty()).then(|| {
        (
            duration(percentile(&latencies, 50.0)),
            duration(percentile(&latencies, 95.0)),
            duration(percentile(&latencies, 99.0)),
            latencies.len(),
        )
    });
    let items_chart = charts::columns(
        "Items processed and failed per hour (last 24 hours)",
        &slots,
    );

    let profiles = match web.admin.list_profiles(s.org.id, None, 500).await {
        Ok(p) => p.items,
        Err(e) => return error(&s, e),
    };
    let profiles = profiles
        .into_iter()
        .map(|p| {
            let mine: Vec<_> = mailboxes
                .iter()
                .filter(|m| m.profile_id == Some(p.value.id))
                .collect();
            ProfileHealth {
                id: p.value.id.to_string(),
                name: p.value.name,
                mailboxes: mine.len(),
                active: mine.iter().filter(|m| is_active(m)).count(),
                failing: mine
                    .iter()
                    .filter(|m| m.overall_status() == RunStatus::Failure)
                    .count(),
            }
        })
        .collect();
    let mut attention: Vec<_> = mailboxes
        .iter()
        .filter(|m| m.overall_status() == RunStatus::Failure || m.telemetry.last_error.is_some())
        .collect();
    // Failing first, then by how long ago they last synced.
    attention.sort_by_key(|m| {
        (
            m.overall_status() != RunStatus::Failure,
            m.telemetry.last_successful_sync,
        )
    });
    let attention = attention
        .into_iter()
        .take(20)
        .map(|m| Attention {
            id: m.id.to_string(),
            email: m.email.clone(),
            problem: m
                .telemetry
                .last_error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "a direction failed its test".into()),
            since: when(m.telemetry.last_successful_sync),
        })
        .collect();
    let totals = (
        mailboxes.len(),
        items.len(),
        items
            .iter()
            .filter(|i| i.decision == ItemDecision::Failed)
            .count(),
    );
    let database = match s.caller.user.installation_admin {
        false => None,
        true => match web.admin.database_size(&s.caller).await {
            Ok(d) => {
                let engine = match d.backend {
                    serversync_store::Backend::Sqlite => "SQLite",
                    serversync_store::Backend::Postgres => "PostgreSQL",
                };
                let detail = match (d.wal_bytes, d.free_bytes) {
                    (Some(wal), Some(free)) => format!(
                        "The file and its write-ahead log ({}); {} of the file is free pages, reused before it grows.",
                        bytes(wal),
                        bytes(free)
                    ),
                    _ => "pg_database_size of this database.".to_owned(),
                };
                Some((engine.to_owned(), bytes(d.bytes), detail))
            }
            Err(e) => return error(&s, e),
        },
    };
    render(&DashboardPage {
        page: Page::new(&s, "Sync dashboard", "dashboard"),
        status_chart,
        items_chart,
        latency,
        backfill,
        profiles,
        attention,
        totals,
        database,
    })
}
