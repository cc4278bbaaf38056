//! The admin center at scale: how fast `serve` answers its pages when the organization holds
//! N email activities (100,000 by default), on SQLite and on PostgreSQL.
//!
//! The store of a fresh database gets 1,000 contacts and N email activities (received mail
//! from those contacts and from unknown senders over the last three years, a few sent, waiting
//! and failed outgoing emails) written directly (on PostgreSQL then `ANALYZE`d, as autovacuum
//! would soon after), then `serve` starts and every page is asked
//! for with the administrator's session a few times; the table gives the median, the 95th
//! percentile and the slowest answer.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use chrono::Utc;
use serversync_model::crm::{
    ActivityParty, Contact, Direction, EmailActivity, EmailStatus, PartyRole, RecordRef,
};
use serversync_model::{ActivityId, ContactId, OrgId, UserId};

use crate::latency::percentile;
use crate::setup::{Serve, World};

/// Contacts in the organization.
const CONTACTS: usize = 1_000;
/// Answers timed per page (after two not timed).
pub const SAMPLES: usize = 20;
/// Concurrent writers while seeding.
const WRITERS: usize = 8;

/// One page's figures on one backend.
#[derive(Debug, Clone)]
pub struct Row {
    pub backend: String,
    pub page: String,
    pub path: String,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    pub kb: f64,
}

/// The benchmark's figures.
#[derive(Debug, Clone, Default)]
pub struct PagesBench {
    pub activities: usize,
    pub rows: Vec<Row>,
}

impl PagesBench {
    /// The slowest page's 95th percentile, in ms.
    pub fn worst_p95(&self) -> f64 {
        self.rows.iter().map(|r| r.p95_ms).fold(0.0, f64::max)
    }
}

fn contact(i: usize, org: OrgId, owner: UserId) -> Contact {
    Contact {
        id: ContactId::new(),
        org_id: org,
        full_name: format!("Customer {i}"),
        emails: vec![format!("customer{i}@example.com")],
        account_id: None,
        company: Some(format!("Company {}", i % 50)),
        job_title: None,
        phones: Vec::new(),
        owner_id: owner,
        created_at: Utc::now(),
    }
}

/// Activity `i`: mostly received mail (every third from an unknown sender), one in 50 sent,
/// one in 500 waiting to be sent and one in 500 failed with the server's reply; dated over the
/// last three years, newest last.
fn activity(i: usize, n: usize, org: OrgId, owner: UserId, contacts: &[Contact]) -> EmailActivity {
    let now = Utc::now();
    let at = now - chrono::Duration::minutes(((n - i) as i64) * (3 * 365 * 24 * 60) / n as i64);
    let c = &contacts[i % contacts.len()];
    let (from, resolved) = if i.is_multiple_of(3) {
        (
            format!("someone{}@unknown{}.example", i % 997, i % 13),
            None,
        )
    } else {
        (c.emails[0].clone(), Some(RecordRef::Contact(c.id)))
    };
    let (direction, status, send_error) = match i % 500 {
        7 => (Direction::Outgoing, EmailStatus::PendingSend, None),
        8 => (
            Direction::Outgoing,
            EmailStatus::Failed,
            Some("550 5.1.1 <nobody@example.test>: Recipient address rejected".to_owned()),
        ),
        k if k % 50 == 0 => (Direction::Outgoing, EmailStatus::Sent, None),
        _ => (Direction::Incoming, EmailStatus::Received, None),
    };
    let party = |role, address: String, resolved| ActivityParty {
        role,
        address,
        display_name: None,
        resolved,
    };
    EmailActivity {
        id: ActivityId::new(),
        org_id: org,
        subject: format!("Order {i} for part {}", i % 211),
        text_body: Some(format!("Hello,\nplease confirm order {i}.\nRegards")),
        html_body: None,
        direction,
        status,
        owner_id: owner,
        parties: vec![
            party(PartyRole::From, from, resolved),
            party(PartyRole::To, "sales@example.test".into(), None),
        ],
        attachments: Vec::new(),
        regarding: None,
        tracking_token: None,
        message_id: Some(format!("bench-{i}@example.com")),
        in_reply_to: None,
        references: Vec::new(),
        content_key: None,
        conversation_id: Some(format!("conv-{}", i / 3)),
        mailbox_ids: Vec::new(),
        item_ids: Vec::new(),
        sent_at: Some(at),
        received_at: Some(at),
        send_after: None,
        delivery_attempts: u32::from(status == EmailStatus::Failed),
        send_error,
        router_claim: None,
        send_trace: Vec::new(),
        created_at: at,
        updated_at: at,
    }
}

/// Seeds a fresh store at `url` with [`CONTACTS`] contacts and `n` activities, starts `serve`
/// and times each page.
pub async fn run(
    bin: &Path,
    dir: &Path,
    url: &str,
    backend: &str,
    ca: &Path,
    n: usize,
) -> Result<Vec<Row>> {
    std::fs::create_dir_all(dir)?;
    let world = World::new(url).await?;
    let (org, owner) = (world.org.id, world.admin.id);
    let contacts: Vec<Contact> = (0..CONTACTS).map(|i| contact(i, org, owner)).collect();
    for c in &contacts {
        world.store.insert(c).await?;
    }
    let seeding = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (store, contacts) = (world.store.clone(), contacts.clone());
        writers.spawn(async move {
            for i in (w..n).step_by(WRITERS) {
                store.insert(&activity(i, n, org, owner, &contacts)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = writers.join_next().await {
        r??;
    }
    eprintln!(
        "bench: {backend}: {n} activities stored in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );
    if url.starts_with("postgres") {
        // The planner's statistics, as autovacuum would have them a minute after a load
        // (without them it picks a bitmap scan of all 100,000 rows for the first page).
        crate::setup::psql(url, "ANALYZE")?;
    }
    let some = world
        .store
        .list_all::<EmailActivity>(Some(org), &[])
        .await?;
    ensure!(
        some.len() == n,
        "{} activities stored, {n} expected",
        some.len()
    );
    let one = some[n / 2].value.id;
    drop(some);
    let serve = Serve::start(bin, dir, &world, ca).await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let cookie = format!("ss_session={}", world.token);
    let pages = [
        ("dashboard", "/".to_owned()),
        ("email activities, first page", "/activities".to_owned()),
        (
            "activities, search by subject",
            "/activities?subject=part%20117".to_owned(),
        ),
        (
            "activities, by sender",
            "/activities?from=customer42%40example.com".to_owned(),
        ),
        ("one activity", format!("/activities/{one}")),
        ("outgoing queue", "/outgoing".to_owned()),
        ("queue items", "/queue-items".to_owned()),
        (
            "activities, by Message-ID",
            format!("/activities?message_id=bench-{}%40example.com", n / 3),
        ),
        (
            "a contact's record",
            format!("/records/contact/{}", contacts[42].id),
        ),
        ("mailboxes", "/mailboxes".to_owned()),
        ("alerts", "/alerts".to_owned()),
    ];
    let mut rows = Vec::new();
    for (page, path) in pages {
        let mut times = Vec::with_capacity(SAMPLES);
        let mut bytes = 0;
        for k in 0..SAMPLES + 2 {
            let t = Instant::now();
            let r = http
                .get(serve.url(&path))
                .header("Cookie", &cookie)
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            let status = r.status();
            let body = r.bytes().await?;
            ensure!(status.is_success(), "{path}: {status}");
            if k >= 2 {
                times.push(t.elapsed().as_secs_f64() * 1000.0);
                bytes = body.len();
            }
        }
        times.sort_by(f64::total_cmp);
        rows.push(Row {
            backend: backend.into(),
            page: page.into(),
            path,
            p50_ms: percentile(&times, 50.0),
            p95_ms: percentile(&times, 95.0),
            max_ms: times.last().copied().unwrap_or_default(),
            kb: bytes as f64 / 1024.0,
        });
    }
    serve.proc.stop(Duration::ZERO)?;
    world.store.close().await;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_activities_span_three_years_with_every_outgoing_state() {
        let (org, owner) = (OrgId::new(), UserId::new());
        let contacts: Vec<Contact> = (0..10).map(|i| contact(i, org, owner)).collect();
        let n = 2_000;
        let all: Vec<EmailActivity> = (0..n)
            .map(|i| activity(i, n, org, owner, &contacts))
            .collect();
        let now = Utc::now();
        let first = all[0].received_at.unwrap();
        assert!(now - first > chrono::Duration::days(3 * 365 - 2), "{first}");
        assert!(all.windows(2).all(|w| w[0].received_at <= w[1].received_at));
        for status in [
            EmailStatus::Received,
            EmailStatus::Sent,
            EmailStatus::PendingSend,
            EmailStatus::Failed,
        ] {
            assert!(all.iter().any(|a| a.status == status), "{status:?}");
        }
        let failed = all
            .iter()
            .find(|a| a.status == EmailStatus::Failed)
            .unwrap();
        assert!(failed.send_error.as_deref().unwrap().starts_with("550"));
        let resolved = all
            .iter()
            .filter(|a| a.parties[0].resolved.is_some())
            .count();
        assert!(resolved > n / 2 && resolved < n, "{resolved}");
    }
}
