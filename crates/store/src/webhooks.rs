//! Webhook endpoints: configuration (an entity), delivery state (cursor, failures, paused) and
//! the delivery log. The delivery worker's writes are fenced by its lease `webhook:<id>`.

use crate::{
    LeaseGuard, Store, StoreError, Stored, audit::NewAuditEntry, dispatch, dispatch_read, from_ms,
    now_ms,
};
use serversync_model::webhook::{WebhookDelivery, WebhookEndpoint, WebhookState, WebhookStatus};
use serversync_model::{OrgId, WebhookId, wire_name};
use sqlx::Row;

/// Only while `$lease` is the current, unexpired lease (parameters `$lease_res`, `$lease_owner`,
/// `$lease_epoch`, `$now` are bound by the caller in this order after its own).
const FENCE: &str = "EXISTS (SELECT 1 FROM leases WHERE resource = $100 AND owner = $101 AND epoch = $102 AND lease_until > $103)";

fn fence(n: usize) -> String {
    FENCE
        .replace("$100", &format!("${n}"))
        .replace("$101", &format!("${}", n + 1))
        .replace("$102", &format!("${}", n + 2))
        .replace("$103", &format!("${}", n + 3))
}

/// A webhook endpoint that has events waiting.
#[derive(Debug, Clone, PartialEq)]
pub struct DueWebhook {
    pub id: WebhookId,
    pub org_id: OrgId,
}

/// The outcome of one attempt, to record in the delivery log.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub webhook_id: WebhookId,
    pub event_id: String,
    pub seq: i64,
    pub attempt: u32,
    pub ok: bool,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

fn lost(lease: &LeaseGuard) -> StoreError {
    StoreError::LeaseLost {
        resource: lease.resource.clone(),
        epoch: lease.epoch,
    }
}

impl Store {
    /// Creates an endpoint, active, with its cursor at the organization's newest change: it is
    /// sent what changes from now on.
    pub async fn create_webhook(
        &self,
        e: &WebhookEndpoint,
        audit: Option<NewAuditEntry>,
    ) -> Result<Stored<WebhookEndpoint>, StoreError> {
        let doc = serde_json::to_string(e).map_err(|err| StoreError::Corrupt {
            entity: "webhook endpoint",
            id: e.id.to_string(),
            cause: err.to_string(),
        })?;
        let now = now_ms();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            sqlx::query("INSERT INTO webhooks (id, org_id, doc, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $4)")
                .bind(e.id.to_string())
                .bind(e.org_id.to_string())
                .bind(&doc)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO webhook_state (webhook_id, org_id, state, cursor_seq, failures, updated_at) \
                 SELECT $1, $2, $3, COALESCE(MAX(seq), 0), 0, $4 FROM changes WHERE org_id = $2",
            )
            .bind(e.id.to_string())
            .bind(e.org_id.to_string())
            .bind(wire_name(&WebhookState::Active))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if let Some(a) = audit {
                crate::audit::append_in!(tx, a);
            }
            tx.commit().await?;
        });
        Ok(Stored {
            value: e.clone(),
            version: 1,
            created_at: from_ms(now),
            updated_at: from_ms(now),
        })
    }

    /// Deletes an endpoint with its state, delivery log and signing secret.
    pub async fn delete_webhook(
        &self,
        e: &WebhookEndpoint,
        audit: Option<NewAuditEntry>,
    ) -> Result<bool, StoreError> {
        let id = e.id.to_string();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let n = sqlx::query("DELETE FROM webhooks WHERE id = $1").bind(&id).execute(&mut *tx).await?.rows_affected();
            sqlx::query("DELETE FROM webhook_state WHERE webhook_id = $1").bind(&id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_id = $1").bind(&id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM secrets WHERE id = $1").bind(e.secret_id.to_string()).execute(&mut *tx).await?;
            if n > 0 && let Some(a) = audit {
                crate::audit::append_in!(tx, a);
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    pub async fn webhook_status(&self, id: WebhookId) -> Result<Option<WebhookStatus>, StoreError> {
        dispatch_read!(&self.db, pool => {
            let row = sqlx::query(
                "SELECT state, cursor_seq, failures, next_attempt_at, last_error, paused_at FROM webhook_state WHERE webhook_id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(pool)
            .await?;
            row.map(|r| -> Result<WebhookStatus, StoreError> {
                let state: String = r.try_get("state")?;
                Ok(WebhookStatus {
                    state: if state == wire_name(&WebhookState::Paused) { WebhookState::Paused } else { WebhookState::Active },
                    cursor: r.try_get("cursor_seq")?,
                    consecutive_failures: u32::try_from(r.try_get::<i64, _>("failures")?).unwrap_or(u32::MAX),
                    next_attempt_at: r.try_get::<Option<i64>, _>("next_attempt_at")?.map(from_ms),
                    last_error: r.try_get("last_error")?,
                    paused_at: r.try_get::<Option<i64>, _>("paused_at")?.map(from_ms),
                })
            }).transpose()
        })
    }

    /// Active endpoints with changes after their cursor (whether or not a retry is due yet).
    pub async fn webhooks_due(&self) -> Result<Vec<DueWebhook>, StoreError> {
        dispatch_read!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT s.webhook_id, s.org_id FROM webhook_state s WHERE s.state = $1 \
                 AND EXISTS (SELECT 1 FROM changes c WHERE c.org_id = s.org_id AND c.seq > s.cursor_seq) \
                 ORDER BY s.webhook_id",
            )
            .bind(wire_name(&WebhookState::Active))
            .fetch_all(pool)
            .await?;
            rows.iter().filter_map(|r| {
                let id: String = match r.try_get("webhook_id") { Ok(v) => v, Err(e) => return Some(Err(e.into())) };
                let org: String = match r.try_get("org_id") { Ok(v) => v, Err(e) => return Some(Err(e.into())) };
                Some(Ok(DueWebhook { id: id.parse().ok()?, org_id: org.parse().ok()? }))
            }).collect()
        })
    }

    /// Moves the cursor to `seq` after a delivery (or past events the filter skips) and clears
    /// the failure count. Fenced: fails with `LeaseLost` unless `lease` is still held.
    pub async fn webhook_advance(
        &self,
        lease: &LeaseGuard,
        id: WebhookId,
        seq: i64,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE webhook_state SET cursor_seq = $1, failures = 0, next_attempt_at = NULL, last_error = NULL, updated_at = $2 \
             WHERE webhook_id = $3 AND cursor_seq <= $1 AND {}",
            fence(4)
        );
        let now = now_ms();
        let n = dispatch!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(seq).bind(now).bind(id.to_string())
                .bind(&lease.resource).bind(&lease.owner).bind(lease.epoch).bind(now)
                .execute(pool).await?.rows_affected()
        });
        if n == 1 { Ok(()) } else { Err(lost(lease)) }
    }

    /// Records a failed attempt: the failure count, when to try again, and — with `pause` —
    /// pauses the endpoint. The cursor does not move. Fenced like [`Store::webhook_advance`].
    pub async fn webhook_failed(
        &self,
        lease: &LeaseGuard,
        id: WebhookId,
        failures: u32,
        next_attempt_at: serversync_model::Timestamp,
        error: &str,
        pause: bool,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE webhook_state SET failures = $1, next_attempt_at = $2, last_error = $3, state = $4, \
             paused_at = $5, updated_at = $6 WHERE webhook_id = $7 AND state = $8 AND {}",
            fence(9)
        );
        let now = now_ms();
        let state = if pause {
            WebhookState::Paused
        } else {
            WebhookState::Active
        };
        let n = dispatch!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(i64::from(failures))
                .bind(next_attempt_at.timestamp_millis())
                .bind(error)
                .bind(wire_name(&state))
                .bind(pause.then_some(now))
                .bind(now)
                .bind(id.to_string())
                .bind(wire_name(&WebhookState::Active))
                .bind(&lease.resource).bind(&lease.owner).bind(lease.epoch).bind(now)
                .execute(pool).await?.rows_affected()
        });
        if n == 1 { Ok(()) } else { Err(lost(lease)) }
    }

    /// Sets an endpoint active (failures cleared, delivery from its cursor at once) or paused.
    /// `false` if there is no such endpoint.
    pub async fn set_webhook_state(
        &self,
        id: WebhookId,
        state: WebhookState,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = dispatch!(&self.db, pool => {
            match state {
                WebhookState::Active => sqlx::query(
                    "UPDATE webhook_state SET state = $1, failures = 0, next_attempt_at = NULL, paused_at = NULL, updated_at = $2 WHERE webhook_id = $3",
                ),
                WebhookState::Paused => sqlx::query(
                    "UPDATE webhook_state SET state = $1, paused_at = $2, updated_at = $2 WHERE webhook_id = $3",
                ),
            }
            .bind(wire_name(&state))
            .bind(now)
            .bind(id.to_string())
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Appends an attempt to the delivery log.
    pub async fn record_delivery(&self, d: &NewDelivery) -> Result<(), StoreError> {
        dispatch!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO webhook_deliveries (webhook_id, event_id, seq, at, attempt, ok, status, error, duration_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(d.webhook_id.to_string())
            .bind(&d.event_id)
            .bind(d.seq)
            .bind(now_ms())
            .bind(i64::from(d.attempt))
            .bind(d.ok)
            .bind(d.status.map(i64::from))
            .bind(&d.error)
            .bind(i64::try_from(d.duration_ms).unwrap_or(i64::MAX))
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The delivery log of an endpoint, oldest first, after the entry `after_id`.
    pub async fn list_deliveries(
        &self,
        id: WebhookId,
        after_id: i64,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let limit = i64::from(limit.clamp(1, 1000));
        dispatch_read!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT id, event_id, seq, at, attempt, ok, status, error, duration_ms FROM webhook_deliveries \
                 WHERE webhook_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(id.to_string())
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| -> Result<WebhookDelivery, StoreError> {
                Ok(WebhookDelivery {
                    id: r.try_get("id")?,
                    webhook_id: id,
                    event_id: r.try_get("event_id")?,
                    seq: r.try_get("seq")?,
                    at: from_ms(r.try_get("at")?),
                    attempt: u32::try_from(r.try_get::<i64, _>("attempt")?).unwrap_or(u32::MAX),
                    ok: r.try_get("ok")?,
                    status: r.try_get::<Option<i64>, _>("status")?.and_then(|s| u16::try_from(s).ok()),
                    error: r.try_get("error")?,
                    duration_ms: u64::try_from(r.try_get::<i64, _>("duration_ms")?).unwrap_or(0),
                })
            }).collect()
        })
    }
}
