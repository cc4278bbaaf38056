//! Retention: removing what is no longer needed, oldest first, at most `limit` rows per call in
//! one short transaction (so SQLite's single write lock is never held for long and the caller
//! can stop between batches). Each call returns how many rows it removed; fewer than `limit`
//! means nothing more is due. The engine's pruner decides the cut-offs (`before`).
//!
//! What is never removed: a change the webhook endpoints of its organization have not all
//! delivered; a raw copy of a message not tracked as an activity, or whose activity is gone; a
//! blob still referenced by another item's raw copy, by any attachment or as a body (bodies and
//! attachments are stored with `blobs.attachment` set: kept).

use crate::{Backend, Store, StoreError, dispatch, now_ms};
use serversync_model::item::MailItem;
use serversync_model::{OrgId, Timestamp};
use sqlx::Row;
use std::collections::BTreeSet;

/// How large the database is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSize {
    pub backend: Backend,
    /// Everything the database takes on disk: SQLite's file (pages × page size), its
    /// write-ahead log and its pack files (raw messages, bodies, attachments: see `packs`);
    /// PostgreSQL's `pg_database_size`.
    pub bytes: u64,
    /// SQLite: the write-ahead log (`<file>-wal`), included in `bytes`.
    pub wal_bytes: Option<u64>,
    /// SQLite: free pages inside the file, reused before the file grows (removed rows free
    /// pages; `VACUUM` gives them back to the file system).
    pub free_bytes: Option<u64>,
}

fn limit_of(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 10_000))
}

impl Store {
    /// Removes webhook delivery log entries recorded before `before`.
    pub async fn prune_webhook_deliveries(
        &self,
        before: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        Ok(dispatch!(&self.db, pool => {
            sqlx::query(
                "DELETE FROM webhook_deliveries WHERE id IN \
                 (SELECT id FROM webhook_deliveries WHERE at < $1 ORDER BY at LIMIT $2)",
            )
            .bind(before.timestamp_millis())
            .bind(limit_of(limit))
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Removes audit entries written before `before`.
    pub async fn prune_audit(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        Ok(dispatch!(&self.db, pool => {
            sqlx::query(
                "DELETE FROM audit_log WHERE seq IN \
                 (SELECT seq FROM audit_log WHERE at < $1 ORDER BY at LIMIT $2)",
            )
            .bind(before.timestamp_millis())
            .bind(limit_of(limit))
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Removes changes of `org` written before `before` that every webhook endpoint of the
    /// organization (active or paused) has delivered — its cursor is at or past them. Without
    /// endpoints the horizon alone decides: a reader of the feed must read within it.
    pub async fn prune_changes(
        &self,
        org: OrgId,
        before: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let org = org.to_string();
        Ok(dispatch!(&self.db, pool => {
            // Cursors only move forward, so a bound read now stays safe.
            let delivered: Option<i64> = sqlx::query(
                "SELECT MIN(cursor_seq) AS n FROM webhook_state WHERE org_id = $1",
            )
            .bind(&org)
            .fetch_one(pool)
            .await?
            .try_get("n")?;
            sqlx::query(
                "DELETE FROM changes WHERE seq IN \
                 (SELECT seq FROM changes WHERE org_id = $1 AND seq <= $2 AND at < $3 ORDER BY seq LIMIT $4)",
            )
            .bind(&org)
            .bind(delivered.unwrap_or(i64::MAX))
            .bind(before.timestamp_millis())
            .bind(limit_of(limit))
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Removes expired web sessions (API tokens named "web session") whose expiry is before
    /// `before`.
    pub async fn prune_sessions(&self, before: Timestamp, limit: u32) -> Result<u64, StoreError> {
        Ok(dispatch!(&self.db, pool => {
            sqlx::query(
                "DELETE FROM api_tokens WHERE id IN (SELECT id FROM api_tokens \
                 WHERE session_until IS NOT NULL AND session_until < $1 ORDER BY session_until LIMIT $2)",
            )
            .bind(before.timestamp_millis())
            .bind(limit_of(limit))
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// Removes the raw copies of messages stored before `before` and tracked as an activity
    /// that still exists: each item's document says `raw_kept: false` and gets `note` at the
    /// end of its trace, and a raw message no other item keeps and that is no attachment is
    /// deleted in the same transaction. How many items lost their raw copy.
    pub async fn prune_raw_copies(
        &self,
        before: Timestamp,
        limit: u32,
        note: &str,
    ) -> Result<u64, StoreError> {
        let now = now_ms();
        let postgres = self.backend() == Backend::Postgres;
        // Ranges of pack files (see `packs`) whose blobs were removed: freed once committed.
        let mut freed: Vec<(String, i64, i64)> = Vec::new();
        let n = dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let rows = sqlx::query(
                "SELECT m.id, m.doc, m.trace_tail, m.raw_sha256 FROM mail_items m \
                 WHERE m.raw_kept AND m.activity_id IS NOT NULL AND m.created_at < $1 \
                 AND EXISTS (SELECT 1 FROM activities a WHERE a.id = m.activity_id) \
                 ORDER BY m.created_at LIMIT $2",
            )
            .bind(before.timestamp_millis())
            .bind(limit_of(limit))
            .fetch_all(&mut *tx)
            .await?;
            let mut shas = BTreeSet::new();
            for r in &rows {
                let id: String = r.try_get("id")?;
                let doc: String = r.try_get("doc")?;
                let corrupt = |e: serde_json::Error| StoreError::Corrupt {
                    entity: "mail item",
                    id: id.clone(),
                    cause: e.to_string(),
                };
                let mut item: MailItem = serde_json::from_str(&doc).map_err(corrupt)?;
                let tail: Option<String> = r.try_get("trace_tail")?;
                let mut tail = crate::entity::trace_tail_of("mail item", &id, tail.as_deref())?;
                if item.raw_kept {
                    item.raw_kept = false;
                    tail.push(note.to_owned());
                }
                // The document keeps the shape it was read in (the bodies of an earlier row
                // inline); the note goes to the end of the trace, in `trace_tail`.
                let doc = serde_json::to_string(&item).map_err(corrupt)?;
                let tail = serde_json::to_string(&tail).map_err(corrupt)?;
                sqlx::query(
                    "UPDATE mail_items SET doc = $1, raw_kept = FALSE, updated_at = $2, version = version + 1, trace_tail = $4 WHERE id = $3",
                )
                .bind(&doc)
                .bind(now)
                .bind(&id)
                .bind(&tail)
                .execute(&mut *tx)
                .await?;
                if let Some(sha) = r.try_get::<Option<String>, _>("raw_sha256")? {
                    shas.insert(sha);
                }
            }
            for sha in &shas {
                if postgres {
                    // Waits for an intake storing the same bytes right now (it locks the row
                    // too), so its new reference is seen below.
                    sqlx::query("SELECT sha256 FROM blobs WHERE sha256 = $1 FOR UPDATE")
                        .bind(sha)
                        .fetch_optional(&mut *tx)
                        .await?;
                }
                let gone = sqlx::query(
                    "DELETE FROM blobs WHERE sha256 = $1 AND NOT attachment \
                     AND NOT EXISTS (SELECT 1 FROM mail_items WHERE raw_sha256 = $1 AND raw_kept) \
                     RETURNING pack, pack_offset, size",
                )
                .bind(sha)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(r) = gone
                    && let (Some(pack), Some(offset)) = (r.try_get("pack")?, r.try_get("pack_offset")?)
                {
                    freed.push((pack, offset, r.try_get("size")?));
                }
            }
            tx.commit().await?;
            rows.len() as u64
        });
        if let Some(packs) = self.packs().cloned()
            && !freed.is_empty()
        {
            // A crash before this leaves the ranges allocated: disk space only.
            let _ = tokio::task::spawn_blocking(move || packs.punch(&freed)).await;
        }
        Ok(n)
    }

    /// How large the database is (see [`DatabaseSize`]).
    pub async fn database_size(&self) -> Result<DatabaseSize, StoreError> {
        match &self.db {
            crate::Db::Sqlite(db) => {
                let pool = &db.readers;
                let pragma = |name: &'static str| async move {
                    let sql = format!("PRAGMA {name}");
                    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .fetch_one(pool)
                        .await?;
                    Ok::<i64, StoreError>(row.try_get(0)?)
                };
                let page = pragma("page_size").await?.max(0) as u64;
                let pages = pragma("page_count").await?.max(0) as u64;
                let free = pragma("freelist_count").await?.max(0) as u64;
                let file: String = sqlx::query("PRAGMA database_list")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .find(|r| r.try_get::<String, _>("name").is_ok_and(|n| n == "main"))
                    .map(|r| r.try_get::<String, _>("file"))
                    .transpose()?
                    .unwrap_or_default();
                let wal = match file.is_empty() {
                    true => 0,
                    false => std::fs::metadata(format!("{file}-wal")).map_or(0, |m| m.len()),
                };
                let packs = match db.packs.clone() {
                    Some(p) => tokio::task::spawn_blocking(move || p.disk_bytes())
                        .await
                        .unwrap_or(0),
                    None => 0,
                };
                Ok(DatabaseSize {
                    backend: Backend::Sqlite,
                    bytes: pages * page + wal + packs,
                    wal_bytes: Some(wal),
                    free_bytes: Some(free * page),
                })
            }
            crate::Db::Postgres(pool) => {
                let n: i64 = sqlx::query("SELECT pg_database_size(current_database()) AS n")
                    .fetch_one(pool)
                    .await?
                    .try_get("n")?;
                Ok(DatabaseSize {
                    backend: Backend::Postgres,
                    bytes: n.max(0) as u64,
                    wal_bytes: None,
                    free_bytes: None,
                })
            }
        }
    }
}
