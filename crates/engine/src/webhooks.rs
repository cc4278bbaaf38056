//! Webhooks: delivery of the CRM change feed to HTTP endpoints, and their administration.
//!
//! One delivery task per active endpoint with events waiting, under the lease `webhook:<id>`
//! (so with several workers each endpoint has exactly one sender). The task sends the changes
//! after the endpoint's cursor **in order, one at a time**: a POST whose JSON body is the
//! [`Change`] (with its stable `event_id`), signed with the endpoint's secret:
//!
//! - `X-Serversync-Event-Id: evt_<seq>`
//! - `X-Serversync-Timestamp: <unix seconds>`
//! - `X-Serversync-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`
//!
//! A 2xx answer moves the cursor past the event (fenced by the lease: a worker that lost the
//! endpoint cannot move it). Anything else is a failure: the same event is tried again after an
//! exponential, jittered delay (`retry_base` doubling up to `retry_max`); every attempt is in the
//! delivery log. After `max_failures` failures in a row the endpoint is paused and the
//! organization's administrators get an alert; nothing is dropped — resuming continues from the
//! cursor. Delivery is at least once (a receiver that committed but did not answer gets the
//! event again), so receivers deduplicate by event id.

use crate::EngineConfig;
use crate::admin::{Admin, AdminError, Result};
use serversync_connectors::NetworkPolicy;
use serversync_connectors::http::describe;
use serversync_model::alert::{Alert, Severity};
use serversync_model::audit::Actor;
use serversync_model::auth::Caller;
use serversync_model::org::{Privilege, Role, User, effective_privileges};
use serversync_model::webhook::{
    Change, RecordType, WebhookDelivery, WebhookEndpoint, WebhookState, WebhookStatus, retry_delay,
    validate_endpoint,
};
use serversync_model::{OrgId, Secret, SecretId, UserId, WebhookId};
use serversync_store::{LeaseGuard, NewAuditEntry, NewDelivery, Store, StoreError, Stored};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// How often an idle delivery task looks for new changes.
    pub poll: Duration,
    /// First retry delay; it doubles with each failure in a row.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Failures in a row after which the endpoint is paused.
    pub max_failures: u32,
    /// Time limit of one POST.
    pub timeout: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            max_failures: 15,
            timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) fn resource(id: WebhookId) -> String {
    format!("webhook:{id}")
}

/// The signature header value for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    format!(
        "sha256={}",
        serversync_vault::hmac_sha256_hex(secret.as_bytes(), &signed)
    )
}

fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 % 1000) as f64 / 1000.0
}

/// Why a delivery task stopped.
enum Stop {
    Done,
    Store(StoreError),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

struct Task {
    store: Store,
    config: EngineConfig,
    id: WebhookId,
    lease: LeaseGuard,
    stop: CancellationToken,
    http: reqwest::Client,
    renewed: Instant,
}

/// Delivers to one endpoint until it is paused or deleted, the lease is lost, or `stop`.
pub(crate) async fn run(
    store: Store,
    config: EngineConfig,
    id: WebhookId,
    lease: LeaseGuard,
    stop: CancellationToken,
) {
    let http = match serversync_connectors::http::client(
        &config.tls_trust,
        config.network.clone(),
        WEBHOOK_RECEIVERS,
        concat!("serversync-webhooks/", env!("CARGO_PKG_VERSION")),
        config.webhooks.timeout,
    ) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(webhook = %id, error = %e, "cannot set up the HTTP client for webhooks");
            let _ = store.release_lease(&lease).await;
            return;
        }
    };
    let mut t = Task {
        store,
        config,
        id,
        lease,
        stop,
        http,
        renewed: Instant::now(),
    };
    match t.deliver_loop().await {
        Ok(()) | Err(Stop::Done) => {}
        Err(Stop::Store(StoreError::LeaseLost { .. })) => {
            tracing::info!(webhook = %id, "webhook lease lost; another worker delivers now");
        }
        Err(Stop::Store(e)) => {
            tracing::warn!(webhook = %id, error = %e, "webhook delivery stopped")
        }
    }
    let _ = t.store.release_lease(&t.lease).await;
}

impl Task {
    /// Waits `d` (renewing the lease); `Err(Done)` when told to stop.
    async fn wait(&mut self, d: Duration) -> Result<(), Stop> {
        let renew_every = self.config.lease_ttl / 3;
        let until = Instant::now() + d;
        loop {
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let next_renew = self.renewed + renew_every;
            if now >= next_renew {
                self.store
                    .renew_lease(&self.lease, self.config.lease_ttl)
                    .await?;
                self.renewed = Instant::now();
                continue;
            }
            tokio::select! {
                _ = self.stop.cancelled() => return Err(Stop::Done),
                _ = tokio::time::sleep(until.min(next_renew) - now) => {}
            }
        }
    }

    async fn deliver_loop(&mut self) -> Result<(), Stop> {
        loop {
            if self.stop.is_cancelled() {
                return Err(Stop::Done);
            }
            self.wait(Duration::ZERO).await?;
            let Some(ep) = self
                .store
                .get::<WebhookEndpoint>(&self.id.to_string())
                .await?
            else {
                return Ok(());
            };
            let Some(st) = self.store.webhook_status(self.id).await? else {
                return Ok(());
            };
            if st.state == WebhookState::Paused {
                return Ok(());
            }
            if let Some(at) = st.next_attempt_at {
                let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
                if !left.is_zero() {
                    self.wait(left).await?;
                    continue;
                }
            }
            let batch = self
                .store
                .changes_after(ep.value.org_id, st.cursor, 100)
                .await?;
            if batch.is_empty() {
                let poll = self.config.webhooks.poll;
                self.wait(poll).await?;
                continue;
            }
            let secret = self.store.get_secret(ep.value.secret_id).await?;
            let mut skipped: Option<i64> = None;
            for change in &batch {
                if !ep.value.wants(change.record_type) {
                    skipped = Some(change.seq);
                    continue;
                }
                if self.stop.is_cancelled() {
                    return Err(Stop::Done);
                }
                match self
                    .send(&ep.value, &secret, change, st.consecutive_failures + 1)
                    .await
                {
                    Ok(()) => {
                        self.store
                            .webhook_advance(&self.lease, self.id, change.seq)
                            .await?;
                        skipped = None;
                    }
                    Err(error) => {
                        if let Some(s) = skipped.take() {
                            self.store.webhook_advance(&self.lease, self.id, s).await?;
                        }
                        self.failed(&ep.value, &st, change, &error).await?;
                        break;
                    }
                }
                // Only the first event of a batch can be a retry.
                if st.consecutive_failures > 0 {
                    break;
                }
            }
            if let Some(s) = skipped {
                self.store.webhook_advance(&self.lease, self.id, s).await?;
            }
        }
    }

    /// One POST; `Err` with what went wrong unless the receiver answered 2xx.
    async fn send(
        &mut self,
        ep: &WebhookEndpoint,
        secret: &Secret,
        change: &Change,
        attempt: u32,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(change).map_err(|e| e.to_string())?;
        let ts = chrono::Utc::now().timestamp();
        let sig = signature(secret.expose(), ts, &body);
        let started = Instant::now();
        let res = match url_refusal(&self.config.network, &ep.url) {
            // Checked again at delivery: the policy may have changed since the URL was saved.
            Some(why) => Err(why),
            None => self
                .http
                .post(ep.url.as_str())
                .header("content-type", "application/json")
                .header("x-serversync-event-id", change.event_id.as_str())
                .header("x-serversync-timestamp", ts.to_string())
                .header("x-serversync-signature", sig)
                .body(body)
                .send()
                .await
                .map_err(|e| describe(&e)),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let (ok, status, error) = match res {
            Ok(r) if r.status().is_success() => (true, Some(r.status().as_u16()), None),
            Ok(r) => (
                false,
                Some(r.status().as_u16()),
                Some(format!("the endpoint answered HTTP {}", r.status())),
            ),
            Err(e) => (false, None, Some(e)),
        };
        metrics::counter!("serversync_webhook_attempts_total", "ok" => ok.to_string()).increment(1);
        let logged = self
            .store
            .record_delivery(&NewDelivery {
                webhook_id: ep.id,
                event_id: change.event_id.clone(),
                seq: change.seq,
                attempt,
                ok,
                status,
                error: error.clone(),
                duration_ms,
            })
            .await;
        if let Err(e) = logged {
            tracing::warn!(webhook = %ep.id, error = %e, "writing the delivery log failed");
        }
        match error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    async fn failed(
        &mut self,
        ep: &WebhookEndpoint,
        st: &WebhookStatus,
        change: &Change,
        error: &str,
    ) -> Result<(), Stop> {
        let cfg = &self.config.webhooks;
        let failures = st.consecutive_failures.saturating_add(1);
        let pause = failures >= cfg.max_failures;
        let delay = retry_delay(failures, cfg.retry_base, cfg.retry_max, jitter());
        let next = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        self.store
            .webhook_failed(&self.lease, self.id, failures, next, error, pause)
            .await?;
        if pause {
            tracing::warn!(webhook = %ep.id, failures, event = %change.event_id, "webhook endpoint paused after repeated failures");
            let recipients = org_admins(&self.store, ep.org_id).await.unwrap_or_default();
            let alert = Alert::new(
                ep.org_id,
                Severity::Error,
                "webhook_paused",
                format!(
                    "Webhook endpoint {} ({}) was paused after {failures} failed deliveries in a row \
                     (last: {error}). Events are kept from {} on: fix the receiver, then resume the \
                     endpoint (POST /api/v1/orgs/{{org}}/webhooks/{}/resume).",
                    ep.url, ep.id, change.event_id, ep.id
                ),
                recipients,
            );
            self.store.insert(&alert).await?;
            return Err(Stop::Done);
        }
        tracing::info!(webhook = %ep.id, failures, retry_in_ms = delay.as_millis() as u64, error, "webhook delivery failed; will retry");
        Ok(())
    }
}

/// Webhook receivers must be public unless the installation allows their range.
const WEBHOOK_RECEIVERS: serversync_connectors::http::Purpose =
    serversync_connectors::http::Purpose {
        refused: "deliver webhooks to loopback, private, link-local or reserved addresses",
        fix: "use a public receiver, or ask the installation's administrator to allow the range \
          (network.allow_ranges)",
    };

/// Why the policy refuses a webhook URL as it is written (scheme, an IP address as host);
/// host names are checked when they are resolved.
fn url_refusal(policy: &NetworkPolicy, url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    if parsed.scheme() == "http" && !policy.allows_http_webhooks() {
        return Some(
            "webhooks are delivered over https:// only (signed events carry CRM records): use \
             an https:// URL, or ask the installation's administrator to allow plain HTTP \
             (webhooks.allow_http)"
                .into(),
        );
    }
    serversync_connectors::http::refused_ip(policy, &parsed).map(|(ip, class)| {
        format!(
            "{ip} is {class}, and this installation does not deliver webhooks to loopback, \
             private, link-local or reserved addresses: use a public receiver, or ask the \
             installation's administrator to allow the range (network.allow_ranges)"
        )
    })
}

/// Users of the organization who manage its configuration (they get webhook alerts).
async fn org_admins(store: &Store, org: OrgId) -> Result<Vec<UserId>, StoreError> {
    let roles: Vec<Role> = store
        .list_all::<Role>(Some(org), &[])
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    Ok(store
        .list_all::<User>(Some(org), &[])
        .await?
        .into_iter()
        .map(|u| u.value)
        .filter(|u| {
            !u.disabled
                && effective_privileges(u, &roles).contains(&Privilege::ManageEmailConfiguration)
        })
        .map(|u| u.id)
        .collect())
}

// ---- administration ---------------------------------------------------------------------------

/// A new endpoint, or changes to one (`None`: unchanged).
#[derive(Debug, Default, Clone)]
pub struct WebhookInput {
    pub url: Option<String>,
    pub description: Option<String>,
    pub secret: Option<Secret>,
    pub record_types: Option<Vec<RecordType>>,
}

/// Managing webhooks exports every CRM record: it needs "read records" and "manage email
/// configuration" (a system administrator).
fn require_webhooks(c: &Caller) -> Result<()> {
    c.require(Privilege::ReadRecords)?;
    c.require(Privilege::ManageEmailConfiguration)?;
    Ok(())
}

/// The URL checks of the network policy, as a problem with the `url` field.
fn check_url(policy: &NetworkPolicy, url: &str) -> Result<()> {
    match url_refusal(policy, url) {
        None => Ok(()),
        Some(why) => {
            let mut e = serversync_model::ValidationErrors::default();
            e.push("url_not_allowed", "url", why);
            Err(AdminError::Invalid(e))
        }
    }
}

fn check_secret(s: &Secret) -> Result<()> {
    if s.expose().len() < 16 {
        let mut e = serversync_model::ValidationErrors::default();
        e.push(
            "too_short",
            "secret",
            "use a signing secret of at least 16 characters",
        );
        return Err(AdminError::Invalid(e));
    }
    Ok(())
}

impl Admin {
    /// The change feed of an organization after `after_seq`, without the changes made with
    /// origin `exclude` (a two-way syncer skips its own writes): for whoever may read records.
    pub async fn changes(
        &self,
        c: &Caller,
        org: OrgId,
        after_seq: i64,
        limit: u32,
        exclude: Option<serversync_model::webhook::ChangeOrigin>,
    ) -> Result<Vec<Change>> {
        c.require(Privilege::ReadRecords)?;
        let store = self.store();
        Ok(match exclude {
            Some(origin) => {
                store
                    .changes_after_excluding(org, after_seq, limit, origin)
                    .await?
            }
            None => store.changes_after(org, after_seq, limit).await?,
        })
    }

    pub async fn webhook(
        &self,
        c: &Caller,
        org: OrgId,
        id: WebhookId,
    ) -> Result<(Stored<WebhookEndpoint>, WebhookStatus)> {
        require_webhooks(c)?;
        let not_found = || AdminError::NotFound {
            entity: "webhook endpoint",
            id: id.to_string(),
        };
        let ep = self
            .store()
            .get::<WebhookEndpoint>(&id.to_string())
            .await?
            .filter(|e| e.value.org_id == org)
            .ok_or_else(not_found)?;
        let st = self
            .store()
            .webhook_status(id)
            .await?
            .ok_or_else(not_found)?;
        Ok((ep, st))
    }

    pub async fn list_webhooks(
        &self,
        c: &Caller,
        org: OrgId,
    ) -> Result<Vec<(Stored<WebhookEndpoint>, WebhookStatus)>> {
        require_webhooks(c)?;
        let mut out = Vec::new();
        for ep in self
            .store()
            .list_all::<WebhookEndpoint>(Some(org), &[])
            .await?
        {
            if let Some(st) = self.store().webhook_status(ep.value.id).await? {
                out.push((ep, st));
            }
        }
        Ok(out)
    }

    pub async fn create_webhook(
        &self,
        c: &Caller,
        org: OrgId,
        input: WebhookInput,
    ) -> Result<(Stored<WebhookEndpoint>, WebhookStatus)> {
        require_webhooks(c)?;
        let url = input.url.unwrap_or_default().trim().to_owned();
        let description = input.description.unwrap_or_default();
        validate_endpoint(&url, &description)?;
        check_url(self.network(), &url)?;
        let Some(secret) = input.secret else {
            let mut e = serversync_model::ValidationErrors::default();
            e.push("required", "secret", "give the endpoint a signing secret");
            return Err(AdminError::Invalid(e));
        };
        check_secret(&secret)?;
        let secret_id: SecretId = self.store().put_secret(Some(org), &secret).await?;
        let ep = WebhookEndpoint {
            id: WebhookId::new(),
            org_id: org,
            url,
            description,
            secret_id,
            record_types: input.record_types.unwrap_or_default(),
            created_at: chrono::Utc::now(),
        };
        let created = self
            .store()
            .create_webhook(
                &ep,
                Some(NewAuditEntry::create(Actor::User(c.user.id), &ep)),
            )
            .await;
        if created.is_err() {
            let _ = self.store().delete_secret(secret_id).await;
        }
        created?;
        self.webhook(c, org, ep.id).await
    }

    pub async fn update_webhook(
        &self,
        c: &Caller,
        org: OrgId,
        id: WebhookId,
        input: WebhookInput,
    ) -> Result<(Stored<WebhookEndpoint>, WebhookStatus)> {
        let (before, _) = self.webhook(c, org, id).await?;
        let mut ep = before.value.clone();
        if let Some(u) = input.url {
            ep.url = u.trim().to_owned();
        }
        if let Some(d) = input.description {
            ep.description = d;
        }
        if let Some(t) = input.record_types {
            ep.record_types = t;
        }
        validate_endpoint(&ep.url, &ep.description)?;
        check_url(self.network(), &ep.url)?;
        if let Some(s) = &input.secret {
            check_secret(s)?;
            self.store().replace_secret(ep.secret_id, s).await?;
        }
        self.store()
            .update_audited(
                &ep,
                Some(before.version),
                Some(NewAuditEntry::update(
                    Actor::User(c.user.id),
                    &before.value,
                    &ep,
                )),
            )
            .await?;
        self.webhook(c, org, id).await
    }

    pub async fn delete_webhook(&self, c: &Caller, org: OrgId, id: WebhookId) -> Result<()> {
        let (ep, _) = self.webhook(c, org, id).await?;
        self.store()
            .delete_webhook(
                &ep.value,
                Some(NewAuditEntry::delete(Actor::User(c.user.id), &ep.value)),
            )
            .await?;
        Ok(())
    }

    /// Resumes a paused endpoint: delivery continues from its cursor, failures forgotten.
    pub async fn resume_webhook(
        &self,
        c: &Caller,
        org: OrgId,
        id: WebhookId,
    ) -> Result<(Stored<WebhookEndpoint>, WebhookStatus)> {
        let (ep, _) = self.webhook(c, org, id).await?;
        self.store()
            .set_webhook_state(id, WebhookState::Active)
            .await?;
        self.store()
            .append_audit(NewAuditEntry::change(
                Actor::User(c.user.id),
                "resume",
                Some(&ep.value),
                Some(&ep.value),
            ))
            .await?;
        self.wake_engine();
        self.webhook(c, org, id).await
    }

    pub async fn webhook_deliveries(
        &self,
        c: &Caller,
        org: OrgId,
        id: WebhookId,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>> {
        self.webhook(c, org, id).await?;
        Ok(self.store().list_deliveries(id, after_id, limit).await?)
    }
}

/// Webhook delivery as a [`crate::supervisor::Pipeline`]: one task per active endpoint with
/// events waiting, under `webhook:<id>`.
pub(crate) struct Deliveries {
    pub store: Store,
    pub config: EngineConfig,
}

impl crate::supervisor::Pipeline for Deliveries {
    type Id = WebhookId;
    const NAME: &'static str = "webhooks";
    const DRAIN: Duration = Duration::from_secs(10);
    const FAIR_SHARE: bool = false;

    async fn due(&self) -> Result<Vec<WebhookId>, StoreError> {
        Ok(self
            .store
            .webhooks_due()
            .await?
            .into_iter()
            .map(|h| h.id)
            .collect())
    }
    fn resource(id: WebhookId) -> String {
        resource(id)
    }
    fn run(
        &self,
        id: WebhookId,
        lease: LeaseGuard,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        run(self.store.clone(), self.config.clone(), id, lease, stop)
    }
}
