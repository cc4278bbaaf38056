//! The change feed: one row per create, update or delete of a CRM record, written in the same
//! transaction as the record (from the generic [`Entity`](crate::Entity) paths, for entities
//! whose `FEED` names a record type). Each row carries its origin (who made the change: the
//! writing [`Store`] handle's, see [`Store::with_origin`]).
//!
//! **Commit order.** A reader pages with `seq > after`, so the feed is only sound if no row can
//! become visible with a `seq` lower than one a reader has already seen.
//! - SQLite has a single writer: `seq` is assigned under the database write lock, held until
//!   commit, so rows commit in `seq` order.
//! - PostgreSQL assigns sequence values before commit, so two transactions could commit in the
//!   opposite order of their `seq`, and a reader between the two commits would skip the lower
//!   one for good. Every transaction that writes a change therefore first takes
//!   `pg_advisory_xact_lock` on its organization (`changes:<org>`), *before* touching the
//!   record (taking it later could deadlock against a row lock). The lock is held until commit
//!   or rollback, so within an organization the next change's `seq` is drawn only after the
//!   previous change committed: per organization, `seq` order is commit order. Readers filter by
//!   organization, so interleaving with other organizations' `seq` values does not matter.

use crate::{Entity, Store, StoreError, dispatch_read, from_ms};
use serversync_model::OrgId;
use serversync_model::crm::{Account, Appointment, Contact, EmailActivity, Lead, QueueItem, Task};
use serversync_model::webhook::{Change, ChangeOp, ChangeOrigin, RecordType};
use sqlx::Row;
use std::collections::HashMap;

pub(crate) const LOCK_FEED: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

pub(crate) const INSERT_CHANGE: &str = "INSERT INTO changes (org_id, record_type, record_id, op, version, at, doc, origin) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

pub(crate) fn lock_key(org: &str) -> String {
    format!("changes:{org}")
}

/// On PostgreSQL, takes the organization's change-feed lock inside the open transaction `$tx`.
macro_rules! lock_feed_in {
    ($store:expr, $tx:ident, $org:expr) => {{
        if $store.backend() == $crate::Backend::Postgres {
            sqlx::query($crate::changes::LOCK_FEED)
                .bind($crate::changes::lock_key(&$org))
                .execute(&mut *$tx)
                .await?;
        }
    }};
}
pub(crate) use lock_feed_in;

/// Appends a change inside the open transaction `$tx`, with the store's origin.
macro_rules! record_change_in {
    ($store:expr, $tx:ident, $org:expr, $rt:expr, $id:expr, $op:expr, $version:expr, $doc:expr) => {{
        sqlx::query($crate::changes::INSERT_CHANGE)
            .bind($org)
            .bind(serversync_model::wire_name(&$rt))
            .bind($id)
            .bind(serversync_model::wire_name(&$op))
            .bind($version)
            .bind($crate::now_ms())
            .bind($doc)
            .bind($store.origin.to_string())
            .execute(&mut *$tx)
            .await?;
    }};
}
pub(crate) use record_change_in;

/// Appends the changes `$rows` (`(org, record type, record id, op, version)`, in this order)
/// inside the open transaction `$tx` with the store's origin, many rows a statement. The rows
/// carry no copy of the document: the feed reads the record.
macro_rules! record_changes_in {
    ($store:expr, $tx:ident, $rows:expr) => {{
        let rows: &[(
            &String,
            serversync_model::webhook::RecordType,
            &String,
            serversync_model::webhook::ChangeOp,
            i64,
        )] = $rows;
        let origin = $store.origin.to_string();
        let at = $crate::now_ms();
        for chunk in rows.chunks(500) {
            let sql = format!(
                "{} VALUES {}",
                $crate::changes::INSERT_CHANGE
                    .split(" VALUES ")
                    .next()
                    .unwrap_or_default(),
                $crate::only_value_rows(&*$tx, chunk.len(), 8)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (org, rt, id, op, version) in chunk {
                q = q
                    .bind(*org)
                    .bind(serversync_model::wire_name(rt))
                    .bind(*id)
                    .bind(serversync_model::wire_name(op))
                    .bind(*version)
                    .bind(at)
                    .bind("")
                    .bind(&origin);
            }
            q.execute(&mut *$tx).await?;
        }
    }};
}
pub(crate) use record_changes_in;

fn parse<T: serde::de::DeserializeOwned>(s: &str, seq: i64) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|e| {
        StoreError::Corrupt {
            entity: "change",
            id: seq.to_string(),
            cause: e.to_string(),
        }
    })
}

impl Store {
    /// Changes of `org` with `seq > after_seq`, in `seq` (= commit) order, at most `limit`
    /// (1‥1000).
    pub async fn changes_after(
        &self,
        org: OrgId,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        self.changes_after_filtered(org, after_seq, limit, None)
            .await
    }

    /// Like [`Store::changes_after`], without the changes made with origin `exclude` (a
    /// two-way syncer passes its own `sync:<mailbox id>` to skip its own writes). The rows
    /// left out are skipped by the query, so a page holds up to `limit` of the others.
    pub async fn changes_after_excluding(
        &self,
        org: OrgId,
        after_seq: i64,
        limit: u32,
        exclude: ChangeOrigin,
    ) -> Result<Vec<Change>, StoreError> {
        self.changes_after_filtered(org, after_seq, limit, Some(exclude))
            .await
    }

    async fn changes_after_filtered(
        &self,
        org: OrgId,
        after_seq: i64,
        limit: u32,
        exclude: Option<ChangeOrigin>,
    ) -> Result<Vec<Change>, StoreError> {
        let limit = i64::from(limit.clamp(1, 1000));
        // `origin <> ''` (no origin is empty) when nothing is excluded: one statement.
        let exclude = exclude.map(|o| o.to_string()).unwrap_or_default();
        let rows: Vec<(Change, String)> = dispatch_read!(&self.db, pool => {
            let rows = sqlx::query(
                "SELECT seq, record_type, record_id, op, version, at, doc, origin FROM changes \
                 WHERE org_id = $1 AND seq > $2 AND origin <> $4 ORDER BY seq LIMIT $3",
            )
            .bind(org.to_string())
            .bind(after_seq)
            .bind(limit)
            .bind(exclude)
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| {
                let seq: i64 = r.try_get("seq")?;
                let record_type: RecordType = parse(r.try_get("record_type")?, seq)?;
                let op: ChangeOp = parse(r.try_get("op")?, seq)?;
                let doc: String = r.try_get("doc")?;
                let origin: &str = r.try_get("origin")?;
                let origin: ChangeOrigin = origin.parse().map_err(|cause| StoreError::Corrupt {
                    entity: "change",
                    id: seq.to_string(),
                    cause,
                })?;
                Ok((Change {
                    seq,
                    event_id: Change::event_id_for(seq),
                    event_type: Change::event_type_for(record_type, op),
                    org_id: org,
                    record_type,
                    record_id: r.try_get("record_id")?,
                    op,
                    version: r.try_get("version")?,
                    at: from_ms(r.try_get("at")?),
                    record: serde_json::Value::Null,
                    origin,
                }, doc))
            }).collect::<Result<_, StoreError>>()?
        });
        // Rows that keep no document (creates and updates since migration 0020) get the record
        // as it is now; a record deleted since, its last document from its delete row.
        let mut wanted: HashMap<RecordType, Vec<String>> = HashMap::new();
        for (c, doc) in &rows {
            if doc.is_empty() {
                wanted
                    .entry(c.record_type)
                    .or_default()
                    .push(c.record_id.clone());
            }
        }
        let mut now: HashMap<(RecordType, String), serde_json::Value> = HashMap::new();
        for (rt, ids) in wanted {
            for (id, v) in self.records_now(rt, &ids).await? {
                now.insert((rt, id), v);
            }
            let gone: Vec<String> = ids
                .into_iter()
                .filter(|id| !now.contains_key(&(rt, id.clone())))
                .collect();
            if !gone.is_empty() {
                for (id, v) in self.deleted_docs(org, &gone).await? {
                    now.insert((rt, id), v);
                }
            }
        }
        rows.into_iter()
            .map(|(mut c, doc)| {
                c.record = if doc.is_empty() {
                    now.get(&(c.record_type, c.record_id.clone()))
                        .cloned()
                        // Nothing left to read (its delete row was pruned): what identifies it.
                        .unwrap_or_else(|| serde_json::json!({ "id": c.record_id }))
                } else {
                    serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt {
                        entity: "change",
                        id: c.seq.to_string(),
                        cause: e.to_string(),
                    })?
                };
                Ok(c)
            })
            .collect()
    }

    /// The records of type `rt` with these ids that exist, as JSON (bodies included).
    async fn records_now(
        &self,
        rt: RecordType,
        ids: &[String],
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        async fn read<E: Entity>(
            store: &Store,
            ids: &[String],
        ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
            store
                .get_many::<E>(ids)
                .await?
                .into_iter()
                .map(|s| {
                    let v = serde_json::to_value(&s.value).map_err(|e| StoreError::Corrupt {
                        entity: E::NAME,
                        id: s.value.id(),
                        cause: e.to_string(),
                    })?;
                    Ok((s.value.id(), v))
                })
                .collect()
        }
        match rt {
            RecordType::Account => read::<Account>(self, ids).await,
            RecordType::Contact => read::<Contact>(self, ids).await,
            RecordType::Lead => read::<Lead>(self, ids).await,
            RecordType::EmailActivity => read::<EmailActivity>(self, ids).await,
            RecordType::Appointment => read::<Appointment>(self, ids).await,
            RecordType::Task => read::<Task>(self, ids).await,
            RecordType::QueueItem => read::<QueueItem>(self, ids).await,
        }
    }

    /// The last documents kept by the delete rows of these records of `org`.
    async fn deleted_docs(
        &self,
        org: OrgId,
        ids: &[String],
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        const CHUNK: usize = 500;
        let mut out = HashMap::new();
        for chunk in ids.chunks(CHUNK) {
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT seq, record_id, doc FROM changes WHERE org_id = $1 AND op = 'deleted' AND doc <> '' \
                 AND record_id IN ({}) ORDER BY seq",
                placeholders.join(", ")
            );
            let rows: Vec<(i64, String, String)> = dispatch_read!(&self.db, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(org.to_string());
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get("seq")?, r.try_get("record_id")?, r.try_get("doc")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (seq, id, doc) in rows {
                let v = serde_json::from_str(&doc).map_err(|e| StoreError::Corrupt {
                    entity: "change",
                    id: seq.to_string(),
                    cause: e.to_string(),
                })?;
                // In seq order: the last delete wins.
                out.insert(id, v);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The newest committed change of `org` (0 when there is none).
    pub async fn latest_change_seq(&self, org: OrgId) -> Result<i64, StoreError> {
        dispatch_read!(&self.db, pool => {
            let n: Option<i64> = sqlx::query("SELECT MAX(seq) AS n FROM changes WHERE org_id = $1")
                .bind(org.to_string())
                .fetch_one(pool)
                .await?
                .try_get("n")?;
            Ok(n.unwrap_or(0))
        })
    }
}
