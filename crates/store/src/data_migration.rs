//! Data migrations: what SQL alone cannot move (SQLite has no SHA-256), run by
//! [`Store::migrate`] after the SQL migrations. Each step works batch by batch, one short
//! transaction per batch that also records how far it got (table `data_migrations`), so a
//! migration killed at any point resumes where it stopped, and running a batch twice changes
//! nothing (a row already in the new shape is left as it is). Rows of the earlier shape stay
//! readable throughout — and afterwards, should a worker of the previous release still write
//! one during an upgrade.
//!
//! Migration 0020 (write each body once):
//! - `items`, `activities`: an item's or email activity's inline `text_body`/`html_body` become
//!   blobs (kept: `attachment` set), referenced by `text_sha256`/`html_sha256`, and the document
//!   loses them. A row written meanwhile (its version changed since it was read) is skipped: it
//!   stays readable in whatever shape it was written. An item's trace stays in its document:
//!   the document's trace is the head, `trace_tail` what was appended since 0020.
//! - `changes`: a create or update row of a record that still exists keeps no document any
//!   more (the feed reads the record); deletes, and rows of records gone since, keep theirs.

use crate::items::{BlobIn, Blobs, store_blobs_in};
use crate::{Store, StoreError, dispatch, entity::body_sha, now_ms};
use sqlx::Row;

/// The steps of the data migrations, in order.
const STEPS: [&str; 3] = ["0020_items", "0020_activities", "0020_changes"];

/// Rows per batch when [`Store::migrate`] runs them.
const BATCH: u32 = 200;

const SAVE_PROGRESS: &str = "INSERT INTO data_migrations (name, cursor, done) VALUES ($1, $2, $3) \
     ON CONFLICT (name) DO UPDATE SET cursor = excluded.cursor, done = excluded.done";

/// Whether the record a change row names still exists (for `changes`, by its record type).
const RECORD_EXISTS: &str = "((record_type IN ('email_activity', 'appointment', 'task') \
       AND EXISTS (SELECT 1 FROM activities r WHERE r.id = changes.record_id)) \
     OR (record_type = 'account' AND EXISTS (SELECT 1 FROM accounts r WHERE r.id = changes.record_id)) \
     OR (record_type = 'contact' AND EXISTS (SELECT 1 FROM contacts r WHERE r.id = changes.record_id)) \
     OR (record_type = 'lead' AND EXISTS (SELECT 1 FROM leads r WHERE r.id = changes.record_id)) \
     OR (record_type = 'queue_item' AND EXISTS (SELECT 1 FROM queue_items r WHERE r.id = changes.record_id)))";

/// Takes the inline bodies out of a document of the earlier shape: the new document and the
/// bodies (text, HTML); `None` when it has none inline.
#[allow(clippy::type_complexity)]
fn take_bodies(
    doc: &str,
) -> Result<Option<(String, Option<String>, Option<String>)>, serde_json::Error> {
    let mut v: serde_json::Value = serde_json::from_str(doc)?;
    let Some(obj) = v.as_object_mut() else {
        return Ok(None);
    };
    let mut take = |k: &str| match obj.get_mut(k) {
        Some(serde_json::Value::String(_)) => {
            match obj.insert(k.to_owned(), serde_json::Value::Null) {
                Some(serde_json::Value::String(s)) => Some(s),
                _ => None,
            }
        }
        _ => None,
    };
    let text = take("text_body");
    let html = take("html_body");
    if text.is_none() && html.is_none() {
        return Ok(None);
    }
    Ok(Some((serde_json::to_string(&v)?, text, html)))
}

impl Store {
    /// Runs every pending data migration to its end (see the module's documentation).
    pub(crate) async fn migrate_data(&self) -> Result<(), StoreError> {
        while !self.migrate_data_batch(BATCH).await? {}
        Ok(())
    }

    /// Runs one batch (at most `limit` rows) of the first unfinished data migration step;
    /// `true` once every step is finished. For tests of an interrupted migration; `migrate`
    /// runs them all.
    #[doc(hidden)]
    pub async fn migrate_data_batch(&self, limit: u32) -> Result<bool, StoreError> {
        let limit = i64::from(limit.clamp(1, 10_000));
        let progress: Vec<(String, String, bool)> = dispatch!(&self.db, pool => {
            sqlx::query("SELECT name, cursor, done FROM data_migrations")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("name")?, r.try_get("cursor")?, r.try_get("done")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        let Some((step, cursor)) =
            STEPS
                .iter()
                .find_map(|step| match progress.iter().find(|(n, _, _)| n == step) {
                    Some((_, _, true)) => None,
                    Some((_, c, false)) => Some((*step, c.clone())),
                    None => Some((*step, String::new())),
                })
        else {
            return Ok(true);
        };
        match step {
            "0020_items" => {
                self.move_bodies("mail_items", "mail item", "", step, &cursor, limit)
                    .await?
            }
            "0020_activities" => {
                self.move_bodies(
                    "activities",
                    "email activity",
                    " AND kind = 'email'",
                    step,
                    &cursor,
                    limit,
                )
                .await?
            }
            _ => self.empty_change_docs(step, &cursor, limit).await?,
        }
        Ok(false)
    }

    /// One batch of `items`/`activities`: bodies out of the documents of `table` after `cursor`.
    async fn move_bodies(
        &self,
        table: &'static str,
        entity: &'static str,
        only: &'static str,
        step: &'static str,
        cursor: &str,
        limit: i64,
    ) -> Result<(), StoreError> {
        let select = format!(
            "SELECT id, doc, version FROM {table} WHERE id > $1{only} ORDER BY id LIMIT $2"
        );
        let update = format!(
            "UPDATE {table} SET doc = $1, text_sha256 = $2, html_sha256 = $3 WHERE id = $4 AND version = $5"
        );
        let now = now_ms();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let rows: Vec<(String, String, i64)> = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                .bind(cursor)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("id")?, r.try_get("doc")?, r.try_get("version")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            for (id, doc, version) in &rows {
                let moved = take_bodies(doc).map_err(|e| StoreError::Corrupt {
                    entity,
                    id: id.clone(),
                    cause: e.to_string(),
                })?;
                let Some((doc, text, html)) = moved else {
                    continue;
                };
                let text = text.map(|t| (body_sha(&t), t));
                let html = html.map(|h| (body_sha(&h), h));
                let blobs: Blobs<'_> = text
                    .iter()
                    .chain(html.iter())
                    .map(|(sha, body)| (sha.as_str(), BlobIn::kept(body.as_bytes())))
                    .collect();
                store_blobs_in!(tx, &blobs, now);
                // Not the record's change: its version stays. A row written since it was read
                // is left as it was written.
                sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                    .bind(&doc)
                    .bind(text.as_ref().map(|(s, _)| s))
                    .bind(html.as_ref().map(|(s, _)| s))
                    .bind(id)
                    .bind(version)
                    .execute(&mut *tx)
                    .await?;
            }
            let last = rows.last().map_or(cursor.to_owned(), |(id, _, _)| id.clone());
            sqlx::query(SAVE_PROGRESS)
                .bind(step)
                .bind(&last)
                .bind((rows.len() as i64) < limit)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// One batch of `changes`: creates and updates after `cursor` (a seq) of records that
    /// still exist keep no document.
    async fn empty_change_docs(
        &self,
        step: &'static str,
        cursor: &str,
        limit: i64,
    ) -> Result<(), StoreError> {
        let after: i64 = cursor.parse().unwrap_or(0);
        let update = format!(
            "UPDATE changes SET doc = '' WHERE seq > $1 AND seq <= $2 AND op <> 'deleted' AND doc <> '' AND {RECORD_EXISTS}"
        );
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let seqs: Vec<i64> = sqlx::query("SELECT seq FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| r.try_get("seq"))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let last = seqs.last().copied().unwrap_or(after);
            if last > after {
                sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
                    .bind(after)
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(SAVE_PROGRESS)
                .bind(step)
                .bind(last.to_string())
                .bind((seqs.len() as i64) < limit)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
