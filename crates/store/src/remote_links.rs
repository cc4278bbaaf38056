//! Remote links: which server item (of which mailbox) a CRM record is synchronized with, as
//! the two-way syncers (EWS, Graph, CalDAV/CardDAV) keep them.
//!
//! One link per record per mailbox and one per remote id per mailbox (the table's primary key
//! and unique constraint). Every call names the organization: a link is written only when its
//! mailbox and its record belong to that organization (checked in the statement that inserts
//! it), and reads and deletes only see the organization's own links. Each link has its own
//! optimistic-concurrency `version`, so two writers cannot overwrite each other unseen.

use crate::entity::conflict;
use crate::{Store, StoreError, Stored, dispatch, dispatch_read, from_ms, now_ms};
use serversync_model::sync::{RemoteLink, SyncDirection};
use serversync_model::webhook::RecordType;
use serversync_model::{MailboxId, OrgId, wire_name};
use sqlx::Row;

const ENTITY: &str = "remote link";

/// What [`Store::put_remote_link`] expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// No link of the record in the mailbox yet (a `Conflict` otherwise).
    New,
    /// The link at this version (a `VersionMismatch` when it changed, `NotFound` when gone).
    Version(i64),
    /// Whatever is there: insert, or replace the link.
    Any,
}

/// A query for "record `rec` of type `t` belongs to organization `org`" (`org`, `rec`: the
/// placeholders to use). Table names are constants.
fn record_exists(t: RecordType, org: &str, rec: &str) -> String {
    let (table, kind) = match t {
        RecordType::Account => ("accounts", ""),
        RecordType::Contact => ("contacts", ""),
        RecordType::Lead => ("leads", ""),
        RecordType::EmailActivity => ("activities", " AND kind = 'email'"),
        RecordType::Appointment => ("activities", " AND kind = 'appointment'"),
        RecordType::Task => ("activities", " AND kind = 'task'"),
        RecordType::QueueItem => ("queue_items", ""),
    };
    format!("SELECT 1 FROM {table} WHERE id = {rec} AND org_id = {org}{kind}")
}

const COLUMNS: &str = "org_id, mailbox_id, record_type, record_id, remote_id, version_tag, \
                       synced_hash, synced_values, direction, version, created_at, updated_at";

fn corrupt(id: String, cause: impl ToString) -> StoreError {
    StoreError::Corrupt {
        entity: ENTITY,
        id,
        cause: cause.to_string(),
    }
}

/// A value from its wire name.
fn wire<T: serde::de::DeserializeOwned>(s: String, id: &str) -> Result<T, StoreError> {
    serde_json::from_value(serde_json::Value::String(s)).map_err(|e| corrupt(id.to_owned(), e))
}

fn decode(r: &impl RowLike) -> Result<Stored<RemoteLink>, StoreError> {
    let mailbox: String = r.text("mailbox_id")?;
    let record_id: String = r.text("record_id")?;
    let id = format!("{mailbox}/{record_id}");
    let record_type: RecordType = wire(r.text("record_type")?, &id)?;
    let direction: SyncDirection = wire(r.text("direction")?, &id)?;
    Ok(Stored {
        value: RemoteLink {
            org_id: r
                .text("org_id")?
                .parse()
                .map_err(|e| corrupt(id.clone(), e))?,
            mailbox_id: mailbox.parse().map_err(|e| corrupt(id.clone(), e))?,
            record_type,
            record_id,
            remote_id: r.text("remote_id")?,
            version_tag: r.opt_text("version_tag")?,
            synced_hash: r.text("synced_hash")?,
            synced_values: serde_json::from_str(&r.text("synced_values")?)
                .map_err(|e| corrupt(id.clone(), e))?,
            direction,
        },
        version: r.int("version")?,
        created_at: from_ms(r.int("created_at")?),
        updated_at: from_ms(r.int("updated_at")?),
    })
}

/// Reads columns the same way from either backend's rows.
trait RowLike {
    fn text(&self, c: &str) -> Result<String, StoreError>;
    fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, c: &str) -> Result<i64, StoreError>;
}

macro_rules! row_like {
    ($t:ty) => {
        impl RowLike for $t {
            fn text(&self, c: &str) -> Result<String, StoreError> {
                Ok(self.try_get(c)?)
            }
            fn opt_text(&self, c: &str) -> Result<Option<String>, StoreError> {
                Ok(self.try_get(c)?)
            }
            fn int(&self, c: &str) -> Result<i64, StoreError> {
                Ok(self.try_get(c)?)
            }
        }
    };
}
row_like!(sqlx::sqlite::SqliteRow);
row_like!(sqlx::postgres::PgRow);

impl Store {
    /// Writes the link of `link.record_id` in `link.mailbox_id` as `expected` says, and
    /// returns it as stored (its version grows by one with every write). Refused with
    /// `NotFound` when the mailbox or (for a new link, or [`Expected::Any`]) the record is not
    /// one of `link.org_id`'s; `Conflict` when another record of the mailbox already has the
    /// same remote id; `Invalid` when a field is (see [`RemoteLink::validate`]).
    pub async fn put_remote_link(
        &self,
        link: &RemoteLink,
        expected: Expected,
    ) -> Result<Stored<RemoteLink>, StoreError> {
        link.validate().map_err(|errors| StoreError::Invalid {
            entity: ENTITY,
            errors,
        })?;
        let now = now_ms();
        let values = serde_json::Value::Object(link.synced_values.clone()).to_string();
        let sql = match expected {
            Expected::Version(_) => "UPDATE remote_links SET remote_id = $5, version_tag = $6, \
                 synced_hash = $7, direction = $8, version = version + 1, updated_at = $9, \
                 synced_values = $10 \
                 WHERE org_id = $1 AND mailbox_id = $2 AND record_id = $4 AND record_type = $3 \
                 AND version = $11 RETURNING version, created_at"
                .to_owned(),
            Expected::New | Expected::Any => {
                let on_conflict = if expected == Expected::New {
                    "DO NOTHING"
                } else {
                    "DO UPDATE SET remote_id = excluded.remote_id, \
                     version_tag = excluded.version_tag, synced_hash = excluded.synced_hash, \
                     synced_values = excluded.synced_values, \
                     direction = excluded.direction, version = remote_links.version + 1, \
                     updated_at = excluded.updated_at \
                     WHERE remote_links.org_id = excluded.org_id \
                     AND remote_links.record_type = excluded.record_type"
                };
                format!(
                    "INSERT INTO remote_links ({COLUMNS}) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $10, $8, 1, $9, $9 \
                     WHERE EXISTS (SELECT 1 FROM mailboxes WHERE id = $2 AND org_id = $1) \
                     AND EXISTS ({}) \
                     ON CONFLICT (mailbox_id, record_id) {on_conflict} \
                     RETURNING version, created_at",
                    record_exists(link.record_type, "$1", "$4")
                )
            }
        };
        let row: Option<(i64, i64)> = dispatch!(&self.db, pool => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(link.org_id.to_string())
                .bind(link.mailbox_id.to_string())
                .bind(wire_name(&link.record_type))
                .bind(&link.record_id)
                .bind(&link.remote_id)
                .bind(&link.version_tag)
                .bind(&link.synced_hash)
                .bind(wire_name(&link.direction))
                .bind(now)
                .bind(&values);
            if let Expected::Version(v) = expected {
                q = q.bind(v);
            }
            let r = q.fetch_optional(pool).await.map_err(|e| conflict(ENTITY, e))?;
            r.map(|r| Ok::<_, StoreError>((r.try_get("version")?, r.try_get("created_at")?))).transpose()?
        });
        match row {
            Some((version, created)) => Ok(Stored {
                value: link.clone(),
                version,
                created_at: from_ms(created),
                updated_at: from_ms(now),
            }),
            None => Err(self.why_not_written(link, expected).await?),
        }
    }

    /// The error for a link write that wrote nothing.
    async fn why_not_written(
        &self,
        link: &RemoteLink,
        expected: Expected,
    ) -> Result<StoreError, StoreError> {
        let id = format!("{}/{}", link.mailbox_id, link.record_id);
        let existing = self
            .get_remote_link(link.org_id, link.mailbox_id, &link.record_id)
            .await?;
        if let Expected::Version(v) = expected {
            return Ok(match existing {
                Some(s) if s.value.record_type == link.record_type => StoreError::VersionMismatch {
                    entity: ENTITY,
                    id,
                    expected: v,
                },
                _ => StoreError::NotFound { entity: ENTITY, id },
            });
        }
        let (org, mailbox) = (link.org_id.to_string(), link.mailbox_id.to_string());
        let check = record_exists(link.record_type, "$1", "$2");
        let (mailbox_ok, record_ok): (bool, bool) = dispatch_read!(&self.db, pool => {
            let m = sqlx::query("SELECT 1 FROM mailboxes WHERE id = $1 AND org_id = $2")
                .bind(&mailbox)
                .bind(&org)
                .fetch_optional(pool)
                .await?
                .is_some();
            let r = sqlx::query(sqlx::AssertSqlSafe(check.as_str()))
            .bind(&org)
            .bind(&link.record_id)
            .fetch_optional(pool)
            .await?
            .is_some();
            (m, r)
        });
        Ok(if !mailbox_ok {
            StoreError::NotFound {
                entity: "mailbox",
                id: mailbox,
            }
        } else if !record_ok {
            StoreError::NotFound {
                entity: record_name(link.record_type),
                id: link.record_id.clone(),
            }
        } else {
            StoreError::Conflict {
                entity: ENTITY,
                detail: match existing {
                    Some(s) if s.value.record_type != link.record_type => format!(
                        "{} {} is linked in mailbox {} as a {}",
                        record_name(link.record_type),
                        link.record_id,
                        link.mailbox_id,
                        record_name(s.value.record_type)
                    ),
                    _ => format!(
                        "{} {} already has a link in mailbox {}",
                        record_name(link.record_type),
                        link.record_id,
                        link.mailbox_id
                    ),
                },
            }
        })
    }

    /// The link of `record_id` in `mailbox`, if the organization has one.
    pub async fn get_remote_link(
        &self,
        org: OrgId,
        mailbox: MailboxId,
        record_id: &str,
    ) -> Result<Option<Stored<RemoteLink>>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM remote_links WHERE org_id = $1 AND mailbox_id = $2 AND record_id = $3"
        );
        dispatch_read!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org.to_string())
                .bind(mailbox.to_string())
                .bind(record_id)
                .fetch_optional(pool)
                .await?
                .map(|r| decode(&r))
                .transpose()
        })
    }

    /// The link of the server's item `remote_id` in `mailbox`, if the organization has one.
    pub async fn get_remote_link_by_remote_id(
        &self,
        org: OrgId,
        mailbox: MailboxId,
        remote_id: &str,
    ) -> Result<Option<Stored<RemoteLink>>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM remote_links WHERE org_id = $1 AND mailbox_id = $2 AND remote_id = $3"
        );
        dispatch_read!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org.to_string())
                .bind(mailbox.to_string())
                .bind(remote_id)
                .fetch_optional(pool)
                .await?
                .map(|r| decode(&r))
                .transpose()
        })
    }

    /// The links of `mailbox` in record-id order, `limit` (1‥1000) at a time after the record
    /// id `after` (pass the last one seen for the next page).
    pub async fn list_remote_links(
        &self,
        org: OrgId,
        mailbox: MailboxId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Stored<RemoteLink>>, StoreError> {
        let limit = i64::from(limit.clamp(1, 1000));
        let sql = format!(
            "SELECT {COLUMNS} FROM remote_links WHERE org_id = $1 AND mailbox_id = $2 \
             AND record_id > $3 ORDER BY record_id LIMIT $4"
        );
        dispatch_read!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(org.to_string())
                .bind(mailbox.to_string())
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(decode)
                .collect()
        })
    }

    /// Removes the link of `record_id` in `mailbox` (only at `expected_version`, when given);
    /// `false` when the organization has no such link (or not at that version).
    pub async fn delete_remote_link(
        &self,
        org: OrgId,
        mailbox: MailboxId,
        record_id: &str,
        expected_version: Option<i64>,
    ) -> Result<bool, StoreError> {
        let n = dispatch!(&self.db, pool => {
            sqlx::query(
                "DELETE FROM remote_links WHERE org_id = $1 AND mailbox_id = $2 AND record_id = $3 \
                 AND ($4 IS NULL OR version = $4)",
            )
            .bind(org.to_string())
            .bind(mailbox.to_string())
            .bind(record_id)
            .bind(expected_version)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n > 0)
    }
}

fn record_name(t: RecordType) -> &'static str {
    match t {
        RecordType::Account => "account",
        RecordType::Contact => "contact",
        RecordType::Lead => "lead",
        RecordType::EmailActivity => "email activity",
        RecordType::Appointment => "appointment",
        RecordType::Task => "task",
        RecordType::QueueItem => "queue item",
    }
}
