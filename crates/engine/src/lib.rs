//! The synchronization engine.
//!
//! One [`Engine`] runs per `serversync serve` process. It has a worker identity under which it
//! takes leases in the store — on mailboxes and on jobs — so several processes on one
//! PostgreSQL share the work and a dead worker's work is taken over when its leases run out.
//! Administration ([`admin`]) and the retry policy ([`policy`]) live here too; the pipelines
//! (incoming, outgoing, appointments/contacts/tasks) plug into the main loop. The engine talks
//! to mail servers only through `serversync-connectors` and knows nothing of HTTP.

mod activities;
pub mod admin;
pub mod alerts_email;
mod bounces;
pub mod compose;
pub mod domains;
pub mod graph_notify;
mod health;
mod incoming;
pub mod intake;
mod jobs;
mod leases;
mod listing;
pub mod lmtp;
mod oauth;
pub mod outgoing;
pub mod policy;
pub mod records;
pub mod retention;
mod router;
mod session;
pub mod sign_in;
mod slots;
mod supervisor;
pub mod test_enable;
pub mod twoway;
pub mod webhooks;

use serversync_connectors::{ConnectOptions, NetworkPolicy, TlsTrust};
use serversync_model::webhook::ChangeOrigin;
use serversync_store::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use admin::{Admin, AdminError};
pub use retention::RetentionConfig;
pub use sign_in::{AuthConfig, ThrottleConfig};
pub use webhooks::WebhookConfig;

/// The organization's email settings, or the defaults when none were saved.
pub(crate) async fn org_settings(
    store: &Store,
    org: serversync_model::OrgId,
) -> Result<serversync_model::settings::EmailSettings, serversync_store::StoreError> {
    Ok(store
        .get::<serversync_model::settings::EmailSettings>(&org.to_string())
        .await?
        .map(|s| s.value)
        .unwrap_or_else(|| serversync_model::settings::EmailSettings::new(org)))
}

/// Engine settings (from the `[engine]` and `[tls]` sections of the configuration).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How often the main loop looks for work.
    pub tick: Duration,
    /// How long a lease on a mailbox or job lasts without renewal.
    pub lease_ttl: Duration,
    /// Certificate authorities trusted for connections to mail servers (and webhooks).
    pub tls_trust: Arc<TlsTrust>,
    /// Where mail servers and webhooks may be (checked on the resolved address at connect
    /// time), plain text, FIPS mode: the `[network]`, `[tls]` and `[webhooks]` settings.
    pub network: Arc<NetworkPolicy>,
    /// Mailboxes tested at once by one test-and-enable job.
    pub test_concurrency: usize,
    /// Webhook delivery: polling, retry back-off, pausing.
    pub webhooks: WebhookConfig,
    /// Token lifetimes, password hashing and the sign-in throttle.
    pub auth: AuthConfig,
    /// What the pruner removes, and when.
    pub retention: RetentionConfig,
    /// How a failing profile's owner is emailed when their own mailbox cannot send.
    pub alerts: alerts_email::AlertsConfig,
    /// The HTTPS port Exchange Autodiscover is asked at (`[exchange] autodiscover_port`).
    pub autodiscover_port: u16,
    /// Microsoft Graph's root instead of the profile's cloud's (`[exchange] graph_url`): for a
    /// cloud not listed, or a test double.
    pub graph_url: Option<String>,
    /// Microsoft Entra ID's root instead of the profile's cloud's (`[exchange] login_url`).
    pub login_url: Option<String>,
    /// This installation's public HTTPS address, where Microsoft Graph posts change
    /// notifications (`[exchange] notification_url`); none: Exchange Online mailboxes poll.
    pub notification_url: Option<String>,
}

impl EngineConfig {
    /// The defaults, with the production [`NetworkPolicy`] (public addresses only).
    pub fn new(tls_trust: Arc<TlsTrust>) -> Self {
        Self {
            tick: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(30),
            network: Arc::new(NetworkPolicy::default().with_fips(tls_trust.fips())),
            tls_trust,
            test_concurrency: 4,
            webhooks: WebhookConfig::default(),
            auth: AuthConfig::default(),
            retention: RetentionConfig::default(),
            alerts: alerts_email::AlertsConfig::default(),
            autodiscover_port: 443,
            graph_url: None,
            login_url: None,
            notification_url: None,
        }
    }
}

impl EngineConfig {
    /// How to connect to a mail server: this configuration's trust and policy, `timeout` for
    /// each step.
    pub(crate) fn connect_options(&self, timeout: Duration) -> ConnectOptions {
        ConnectOptions::new(self.tls_trust.clone())
            .with_policy(self.network.clone())
            .with_timeout(timeout)
    }
}

/// State of the engine, for health reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    Starting,
    Running,
    Stopped,
}

pub struct Engine {
    store: Store,
    config: EngineConfig,
    worker_id: String,
    state: tokio::sync::watch::Sender<EngineState>,
    wake: Arc<Notify>,
    /// Shared by every [`Admin`] of this engine (one throttle per process).
    sign_in: Arc<sign_in::SignIn>,
}

impl Engine {
    pub fn new(store: Store, config: EngineConfig) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let worker_id = format!(
            "{host}-{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Self {
            store,
            sign_in: Arc::new(sign_in::SignIn::new(config.auth.clone())),
            config,
            worker_id,
            state: tokio::sync::watch::channel(EngineState::Starting).0,
            wake: Arc::new(Notify::new()),
        }
    }

    /// The administration service, wired to wake this engine when it queues a job. Its
    /// record writes are tagged `api` on the change feed.
    pub fn admin(&self) -> Admin {
        self.admin_on(&self.store)
    }

    /// [`Engine::admin`] over `store`: the same database through another handle, e.g. one
    /// with a connection pool of its own ([`Store::with_own_pool`]).
    pub fn admin_on(&self, store: &Store) -> Admin {
        let store = store.with_origin(ChangeOrigin::Api);
        Admin::sharing(store, self.wake.clone(), self.sign_in.clone())
            .with_network(self.config.network.clone())
    }

    /// What wakes this engine at once (instead of at its next tick), e.g. when the Email
    /// Router recorded a message for the tracker.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// The identity this process holds leases under.
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// Watch the engine's state.
    pub fn state(&self) -> tokio::sync::watch::Receiver<EngineState> {
        self.state.subscribe()
    }

    /// Keeps this worker's heartbeat lease (`worker:<id>`) and returns how many workers are
    /// alive, this one included.
    async fn heartbeat(&self, held: &mut Option<serversync_store::LeaseGuard>) -> u64 {
        let renewed = match held {
            Some(g) => self
                .store
                .renew_lease(g, self.config.lease_ttl)
                .await
                .is_ok(),
            None => false,
        };
        if !renewed {
            *held = self
                .store
                .acquire_lease(
                    &format!("worker:{}", self.worker_id),
                    &self.worker_id,
                    self.config.lease_ttl,
                )
                .await
                .ok()
                .flatten();
        }
        self.store
            .count_live_leases("worker:")
            .await
            .unwrap_or(1)
            .max(1)
    }

    /// Runs until `shutdown` is cancelled, then stops its jobs and releases every lease this
    /// worker holds so other workers can take the work over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(worker = %self.worker_id, tick_ms = self.config.tick.as_millis() as u64, "engine started");
        self.state.send_replace(EngineState::Running);
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut running = tokio::task::JoinSet::new();
        let workers_stop = shutdown.child_token();
        let (store, ttl) = (&self.store, self.config.lease_ttl);
        // The long-held leases (a mailbox's, its connection slot's) renewed together, by one
        // task, instead of each by its own timer.
        let leases = leases::Leases::new(&self.worker_id, ttl);
        // It runs until the incoming sessions are drained.
        let renew_stop = CancellationToken::new();
        let renewer = tokio::spawn(leases.clone().run(self.store.clone(), renew_stop.clone()));
        // Every mailbox and profile, listed again only when changed: incoming and two-way
        // sync look at them on every tick.
        let listing = std::sync::Arc::new(listing::Listing::default());
        // The pipelines with one task per unit of work (mailbox, sending mailbox, endpoint),
        // each under its lease.
        let mut incoming = supervisor::Supervisor::new(
            store.clone(),
            &self.worker_id,
            ttl,
            incoming::Incoming {
                store: self.store.clone(),
                config: self.config.clone(),
                stored: self.wake.clone(),
                leases: leases.clone(),
                listing: listing.clone(),
                shared: Default::default(),
            },
        );
        let mut outgoing = supervisor::Supervisor::new(
            store.clone(),
            &self.worker_id,
            ttl,
            outgoing::Outgoing {
                store: self.store.clone(),
                config: self.config.clone(),
            },
        );
        let mut hooks = supervisor::Supervisor::new(
            store.clone(),
            &self.worker_id,
            ttl,
            webhooks::Deliveries {
                store: self.store.clone(),
                config: self.config.clone(),
            },
        );
        let mut items = supervisor::Supervisor::new(
            store.clone(),
            &self.worker_id,
            ttl,
            twoway::Items {
                store: self.store.clone(),
                config: self.config.clone(),
                listing,
            },
        );
        let mut heartbeat: Option<serversync_store::LeaseGuard> = None;
        // The tracker (stored messages → activities): one pass at a time per worker; the
        // organizations are shared among workers by the `tracker:<org>` leases.
        let mut tracker: Option<tokio::task::JoinHandle<()>> = None;
        // The pruner: a pass when the lease `pruner` is free (it is held for the interval
        // after each pass); asked at most once a minute.
        let mut pruner: Option<tokio::task::JoinHandle<()>> = None;
        let mut prune_check = tokio::time::Instant::now();
        let ctx = jobs::JobContext {
            store: self.store.clone(),
            config: self.config.clone(),
            worker_id: self.worker_id.clone(),
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                _ = self.wake.notified() => {}
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Err(e) = done {
                        tracing::error!(error = %e, "job task failed");
                    }
                    continue;
                }
            }
            metrics::counter!("serversync_engine_ticks_total").increment(1);
            let workers = self.heartbeat(&mut heartbeat).await;
            incoming.tick(workers, &workers_stop).await;
            if tracker.as_ref().is_none_or(|t| t.is_finished()) {
                let (store, worker, ttl) = (
                    self.store.clone(),
                    self.worker_id.clone(),
                    self.config.lease_ttl,
                );
                tracker = Some(tokio::spawn(async move {
                    match records::run_once(&store, &worker, ttl).await {
                        Ok(0) => {}
                        Ok(n) => tracing::debug!(items = n, "tracked stored messages"),
                        Err(e) => tracing::warn!(error = %e, "tracking stored messages failed"),
                    }
                }));
            }
            if pruner.as_ref().is_none_or(|t| t.is_finished())
                && tokio::time::Instant::now() >= prune_check
            {
                prune_check = tokio::time::Instant::now()
                    + self.config.retention.interval.min(Duration::from_secs(60));
                let (store, worker, ttl, config, stop) = (
                    self.store.clone(),
                    self.worker_id.clone(),
                    self.config.lease_ttl,
                    self.config.retention.clone(),
                    workers_stop.child_token(),
                );
                pruner = Some(tokio::spawn(async move {
                    if let Err(e) = retention::run_once(&store, &worker, ttl, &config, &stop).await
                    {
                        tracing::warn!(error = %e, "pruning failed; the next pass tries again");
                    }
                }));
            }
            outgoing.tick(workers, &workers_stop).await;
            hooks.tick(workers, &workers_stop).await;
            items.tick(workers, &workers_stop).await;
            match jobs::claim(&ctx).await {
                Ok(claimed) => {
                    for (job, lease) in claimed {
                        running.spawn(jobs::run(ctx.clone(), job, lease));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "looking for jobs failed"),
            }
        }
        running.shutdown().await;
        workers_stop.cancel();
        if let Some(t) = tracker
            && tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
        {
            tracing::warn!("the tracker did not stop within 10 s");
        }
        if let Some(t) = pruner
            && tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
        {
            tracing::warn!("the pruner did not stop within 10 s");
        }
        outgoing.drain().await;
        hooks.drain().await;
        items.drain().await;
        incoming.drain().await;
        renew_stop.cancel();
        let _ = renewer.await;
        match self.store.release_all_leases(&self.worker_id).await {
            Ok(n) => tracing::info!(worker = %self.worker_id, released = n, "engine stopped"),
            Err(e) => {
                tracing::warn!(worker = %self.worker_id, error = %e, "engine stopped; releasing leases failed, they expire on their own")
            }
        }
        self.state.send_replace(EngineState::Stopped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_vault::MasterKey;

    #[tokio::test]
    async fn stops_cleanly_and_releases_its_leases() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("e.db").display());
        let store = Store::open(&url, MasterKey::generate().unwrap())
            .await
            .unwrap();
        let trust = Arc::new(TlsTrust::system_only().unwrap());
        let engine = Engine::new(
            store.clone(),
            EngineConfig {
                tick: Duration::from_millis(10),
                ..EngineConfig::new(trust)
            },
        );
        let worker = engine.worker_id().to_owned();
        let held = store
            .acquire_lease("mailbox:x", &worker, Duration::from_secs(60))
            .await
            .unwrap()
            .unwrap();
        let mut state = engine.state();
        let token = CancellationToken::new();
        let task = tokio::spawn(engine.run(token.clone()));
        state
            .wait_for(|s| *s == EngineState::Running)
            .await
            .unwrap();
        token.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("engine stops promptly")
            .unwrap();
        assert_eq!(*state.borrow(), EngineState::Stopped);
        let other = store
            .acquire_lease("mailbox:x", "other", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            other.map(|g| g.epoch),
            Some(held.epoch + 1),
            "released at shutdown, taken at once"
        );
    }
}
