//! Asynchronous jobs (test and enable): queued in the store, claimed under a lease by any
//! worker, resumed by another worker if this one dies (mailboxes already done are kept).

use crate::EngineConfig;
use futures::StreamExt;
use serversync_model::job::{Job, JobKind, JobStatus};
use serversync_store::{Col, LeaseGuard, Store, StoreError};

#[derive(Clone)]
pub(crate) struct JobContext {
    pub store: Store,
    pub config: EngineConfig,
    pub worker_id: String,
}

fn resource(job: &Job) -> String {
    format!("job:{}", job.id)
}

/// Queued jobs, and running jobs whose worker is gone, that this worker now holds.
pub(crate) async fn claim(ctx: &JobContext) -> Result<Vec<(Job, LeaseGuard)>, StoreError> {
    let mut out = Vec::new();
    for status in ["queued", "running"] {
        for j in ctx
            .store
            .list_all::<Job>(None, &[("status", Col::text(status))])
            .await?
        {
            // A running job's lease is free only if its worker stopped or died: resume it.
            if let Some(lease) = ctx
                .store
                .acquire_lease(&resource(&j.value), &ctx.worker_id, ctx.config.lease_ttl)
                .await?
            {
                out.push((j.value, lease));
            }
        }
    }
    Ok(out)
}

/// How often a running job's progress is written.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) async fn run(ctx: JobContext, job: Job, lease: LeaseGuard) {
    let id = job.id;
    if let Err(e) = run_inner(&ctx, job, &lease).await {
        tracing::warn!(job = %id, error = %e, "job interrupted; another worker resumes it when the lease expires");
    }
    let _ = ctx.store.release_lease(&lease).await;
}

async fn run_inner(ctx: &JobContext, mut job: Job, lease: &LeaseGuard) -> Result<(), StoreError> {
    // Re-read: the copy from the claim may be stale.
    let stored = ctx.store.fetch::<Job>(&job.id.to_string()).await?;
    job = stored.value;
    if !matches!(job.status, JobStatus::Queued | JobStatus::Running) {
        return Ok(());
    }
    job.status = JobStatus::Running;
    job.started_at.get_or_insert_with(chrono::Utc::now);
    ctx.store.update(&job, None).await?;
    tracing::info!(job = %job.id, kind = ?job.kind, total = job.total, "job started");

    match job.kind {
        JobKind::TestAndEnable => {
            let done: std::collections::HashSet<_> =
                job.results.iter().map(|r| r.mailbox_id).collect();
            let remaining: Vec<_> = job
                .mailbox_ids
                .iter()
                .copied()
                .filter(|m| !done.contains(m))
                .collect();
            let store = ctx.store.clone();
            let config = ctx.config.clone();
            // Each test runs as its own task: a test must never sit suspended inside a store
            // transaction (holding SQLite's write lock) while this loop writes the job's
            // progress, which would wait for that lock until the busy timeout.
            let mut results = futures::stream::iter(remaining)
                .map(|m| {
                    let store = store.clone();
                    let config = config.clone();
                    let test = tokio::spawn(async move {
                        crate::test_enable::test_and_enable(&store, &config, m).await
                    });
                    async move { (m, test.await) }
                })
                .buffer_unordered(ctx.config.test_concurrency.max(1));
            // Progress is written at most every PROGRESS_EVERY (and at the end), not after
            // each mailbox: the job's document holds every result, and rewriting it per
            // result made enabling 10,000 mailboxes quadratic. A result not written yet when
            // the worker stops is tested again by the worker that resumes the job.
            let mut written = std::time::Instant::now();
            while let Some((m, r)) = results.next().await {
                let item = match r {
                    Ok(Ok(item)) => item,
                    Err(e) => serversync_model::job::JobItemResult {
                        mailbox_id: m,
                        ok: false,
                        message: format!("internal error: the test stopped ({e})"),
                        certificates: Vec::new(),
                    },
                    Ok(Err(e)) => serversync_model::job::JobItemResult {
                        mailbox_id: m,
                        ok: false,
                        message: format!("internal error: {e}"),
                        certificates: Vec::new(),
                    },
                };
                job.results.push(item);
                job.done = job.results.len() as u32;
                if written.elapsed() >= PROGRESS_EVERY {
                    ctx.store.renew_lease(lease, ctx.config.lease_ttl).await?;
                    ctx.store.update(&job, None).await?;
                    written = std::time::Instant::now();
                }
            }
        }
        JobKind::ApplyDefaultSettings | JobKind::KeyRotation => {}
    }
    job.status = if job.results.iter().all(|r| r.ok) {
        JobStatus::Succeeded
    } else {
        JobStatus::CompletedWithFailures
    };
    job.finished_at = Some(chrono::Utc::now());
    ctx.store.renew_lease(lease, ctx.config.lease_ttl).await?;
    ctx.store.update(&job, None).await?;
    tracing::info!(job = %job.id, status = ?job.status, "job finished");
    Ok(())
}
