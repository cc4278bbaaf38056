//! Per-organization counters (table `counters`): the tracking-token counter, and the
//! per-minute send counters behind a mailbox's send-rate limit.

use crate::{Store, StoreError, dispatch, dispatch_read};
use serversync_model::OrgId;
use sqlx::Row;

impl Store {
    /// Advances the organization's counter `name` by one and returns its new value (1 the
    /// first time). Atomic: two callers never get the same value.
    pub async fn next_counter(&self, org: OrgId, name: &str) -> Result<u64, StoreError> {
        let v: i64 = dispatch!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO counters (org_id, name, value) VALUES ($1, $2, 1) \
                 ON CONFLICT (org_id, name) DO UPDATE SET value = counters.value + 1 RETURNING value",
            )
            .bind(org.to_string())
            .bind(name)
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>("value")?
        });
        Ok(v as u64)
    }

    /// Advances the organization's counter `name` by `n` (a block of values taken at once;
    /// a negative `n` gives back what was taken and not used) and returns its new value.
    /// Atomic: the blocks of two callers never overlap.
    pub async fn add_counter(&self, org: OrgId, name: &str, n: i64) -> Result<i64, StoreError> {
        Ok(dispatch!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO counters (org_id, name, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (org_id, name) DO UPDATE SET value = counters.value + $3 RETURNING value",
            )
            .bind(org.to_string())
            .bind(name)
            .bind(n)
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>("value")?
        }))
    }

    /// The current value of a counter (0 when never advanced).
    pub async fn counter(&self, org: OrgId, name: &str) -> Result<u64, StoreError> {
        let v: Option<i64> = dispatch_read!(&self.db, pool => {
            sqlx::query("SELECT value FROM counters WHERE org_id = $1 AND name = $2")
                .bind(org.to_string())
                .bind(name)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get::<i64, _>("value"))
                .transpose()?
        });
        Ok(v.unwrap_or(0) as u64)
    }

    /// Removes the counters whose names start with `prefix` and sort before `before`
    /// (per-minute counters name their minute right after the prefix).
    pub async fn prune_counters(&self, prefix: &str, before: &str) -> Result<u64, StoreError> {
        let like = format!("{}%", prefix.replace('%', "\\%").replace('_', "\\_"));
        Ok(dispatch!(&self.db, pool => {
            sqlx::query("DELETE FROM counters WHERE name LIKE $1 ESCAPE '\\' AND name < $2")
                .bind(like)
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }
}
