//! Leases: one owner per resource at a time, with a fencing epoch.
//!
//! The same SQL runs on SQLite and PostgreSQL: an upsert that only takes the row over when the
//! previous lease has run out, returning the new epoch. Each acquisition
//! increments the epoch, so writes made under an older lease can be refused.

use crate::{Store, StoreError, dispatch, dispatch_read, from_ms, now_ms};
use serversync_model::sync::Lease;
use sqlx::Row;
use std::time::Duration;

/// Leases renewed by one statement of [`Store::renew_leases`] (two parameters each; SQLite
/// allows 32,766 parameters, PostgreSQL 65,535).
pub const RENEW_CHUNK: usize = 1000;

/// Proof of holding a lease: resource, owner and epoch. Pass it to fenced writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseGuard {
    pub resource: String,
    pub owner: String,
    pub epoch: i64,
}

impl Store {
    /// Takes `resource` for `owner` for `ttl` if it is free or expired. `None` while anyone —
    /// including `owner` itself — holds it: a worker never claims the same work twice.
    pub async fn acquire_lease(
        &self,
        resource: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<LeaseGuard>, StoreError> {
        let now = now_ms();
        let until = now + ttl.as_millis() as i64;
        let epoch: Option<i64> = dispatch!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO leases (resource, owner, epoch, lease_until) VALUES ($1, $2, 1, $3) \
                 ON CONFLICT (resource) DO UPDATE SET owner = excluded.owner, epoch = leases.epoch + 1, \
                 lease_until = excluded.lease_until \
                 WHERE leases.lease_until <= $4 \
                 RETURNING epoch",
            )
            .bind(resource)
            .bind(owner)
            .bind(until)
            .bind(now)
            .fetch_optional(pool)
            .await?
            .map(|r| r.try_get::<i64, _>("epoch"))
            .transpose()?
        });
        Ok(epoch.map(|epoch| LeaseGuard {
            resource: resource.to_owned(),
            owner: owner.to_owned(),
            epoch,
        }))
    }

    /// Extends a held lease. Fails with [`StoreError::LeaseLost`] if it was taken over.
    pub async fn renew_lease(&self, g: &LeaseGuard, ttl: Duration) -> Result<(), StoreError> {
        let now = now_ms();
        let until = now + ttl.as_millis() as i64;
        let n = dispatch!(&self.db, pool => {
            sqlx::query("UPDATE leases SET lease_until = $1 WHERE resource = $2 AND owner = $3 AND epoch = $4 AND lease_until > $5")
                .bind(until)
                .bind(&g.resource)
                .bind(&g.owner)
                .bind(g.epoch)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost {
                resource: g.resource.clone(),
                epoch: g.epoch,
            })
        }
    }

    /// Renews many leases of `owner` at once — one statement per [`RENEW_CHUNK`] leases —
    /// each only if it is still held under the same epoch and has not run out. Returns the
    /// leases renewed; the others were lost (taken over, released or expired), and writes
    /// fenced by them fail.
    pub async fn renew_leases(
        &self,
        owner: &str,
        held: &[(String, i64)],
        ttl: Duration,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let mut renewed = Vec::with_capacity(held.len());
        for chunk in held.chunks(RENEW_CHUNK) {
            let now = now_ms();
            let until = now + ttl.as_millis() as i64;
            let pairs = (0..chunk.len())
                .map(|i| format!("(${}, ${})", 4 + 2 * i, 5 + 2 * i))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "UPDATE leases SET lease_until = $1 WHERE owner = $2 AND lease_until > $3 \
                 AND (resource, epoch) IN (VALUES {pairs}) RETURNING resource, epoch"
            );
            dispatch!(&self.db, pool => {
                // Only placeholders are formatted in; every value is bound.
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(until).bind(owner).bind(now);
                for (resource, epoch) in chunk {
                    q = q.bind(resource).bind(*epoch);
                }
                for r in q.fetch_all(pool).await? {
                    renewed.push((r.try_get::<String, _>("resource")?, r.try_get::<i64, _>("epoch")?));
                }
            });
        }
        Ok(renewed)
    }

    /// Gives a lease up at once (clean shutdown), so another worker can take it immediately.
    pub async fn release_lease(&self, g: &LeaseGuard) -> Result<(), StoreError> {
        dispatch!(&self.db, pool => {
            sqlx::query("UPDATE leases SET lease_until = 0 WHERE resource = $1 AND owner = $2 AND epoch = $3")
                .bind(&g.resource)
                .bind(&g.owner)
                .bind(g.epoch)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Releases every lease `owner` holds; returns how many.
    pub async fn release_all_leases(&self, owner: &str) -> Result<u64, StoreError> {
        Ok(dispatch!(&self.db, pool => {
            sqlx::query("UPDATE leases SET lease_until = 0 WHERE owner = $1 AND lease_until > 0")
                .bind(owner)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// How many leases whose resource starts with `prefix` are held now (e.g. `worker:` for
    /// the live workers, which hold a heartbeat lease each).
    pub async fn count_live_leases(&self, prefix: &str) -> Result<u64, StoreError> {
        let n: i64 = dispatch_read!(&self.db, pool => {
            sqlx::query("SELECT COUNT(*) AS n FROM leases WHERE substr(resource, 1, $1) = $2 AND lease_until > $3")
                .bind(prefix.chars().count() as i32)
                .bind(prefix)
                .bind(now_ms())
                .fetch_one(pool)
                .await?
                .try_get("n")?
        });
        Ok(n.max(0) as u64)
    }

    pub async fn get_lease(&self, resource: &str) -> Result<Option<Lease>, StoreError> {
        Ok(dispatch_read!(&self.db, pool => {
            sqlx::query("SELECT resource, owner, epoch, lease_until FROM leases WHERE resource = $1")
                .bind(resource)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<Lease, sqlx::Error> {
                    Ok(Lease { resource: r.try_get("resource")?, owner: r.try_get("owner")?, epoch: r.try_get("epoch")?, until: from_ms(r.try_get("lease_until")?) })
                })
                .transpose()?
        }))
    }
}
