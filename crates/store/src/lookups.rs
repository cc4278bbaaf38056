//! The tracker's batched lookups: a batch of stored messages is resolved and correlated with
//! a handful of queries — one per key kind, each a chunked `IN (…)` — instead of one per
//! address or key per message.
//!
//! - The address index (`address_index`, migration 0019): every address of a user, queue,
//!   contact, account and lead, normalized by `serversync_model::track::normalize_address`,
//!   with the record's type, owner and, for users, whether it is disabled. Kept as the link
//!   rows of those entities ([`crate::Entity::LINKS`]), so it is written in the same
//!   transaction as every insert and update (replaced) and removed with the record.
//! - Email activities by a correlation key (Message-ID / dedupe key, tracking token,
//!   conversation, subject key) for many values at once.
//! - The queue items of many activities at once.
//!
//! SQL here is assembled from constants of this module and numbered placeholders; every value
//! is a bound parameter.

use crate::entity::{Col, decode};
use crate::{Store, StoreError, Stored, dispatch_read, placeholders};
use serversync_model::crm::{EmailActivity, RecordRef};
use serversync_model::track::normalize_address;
use serversync_model::{ActivityId, OrgId, QueueId, UserId};
use sqlx::Row;
use std::collections::BTreeSet;

/// The link table of the address index: (table, record id column, address column).
pub(crate) const ADDRESS_LINKS: (&str, &str, &str) = ("address_index", "record_id", "address");

/// Values per `IN (…)` list (both backends accept far more bound parameters).
const CHUNK: usize = 500;

/// A record's normalized addresses, each once (the rows of the address index).
pub(crate) fn address_ids<'a>(addresses: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    addresses
        .into_iter()
        .map(|a| normalize_address(a))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The columns every address row of a record carries.
pub(crate) fn address_columns(
    kind: &'static str,
    owner: Option<UserId>,
    disabled: bool,
) -> Vec<(&'static str, Col)> {
    vec![
        ("record_type", Col::text(kind)),
        ("owner_id", Col::opt_text(owner)),
        ("disabled", Col::Bool(disabled)),
    ]
}

/// A record an address belongs to, from the address index.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressMatch {
    /// Normalized.
    pub address: String,
    pub record: RecordRef,
    /// The record's owner (users own themselves; a queue its owner).
    pub owner_id: Option<UserId>,
}

/// An indexed column of email activities the tracker looks activities up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActivityKey {
    /// `message_id`: the dedupe key (Message-ID, or content key without one).
    MessageId,
    TrackingToken,
    Conversation,
    SubjectKey,
}

impl ActivityKey {
    pub const ALL: [ActivityKey; 4] = [
        ActivityKey::MessageId,
        ActivityKey::TrackingToken,
        ActivityKey::Conversation,
        ActivityKey::SubjectKey,
    ];

    /// The column of `activities` (an entity column of [`EmailActivity`]).
    pub fn column(self) -> &'static str {
        match self {
            ActivityKey::MessageId => "message_id",
            ActivityKey::TrackingToken => "tracking_token",
            ActivityKey::Conversation => "conversation_id",
            ActivityKey::SubjectKey => "subject_key",
        }
    }

    /// The activity's value of this key: what its [`ActivityKey::column`] holds.
    pub fn of(self, a: &EmailActivity) -> Option<String> {
        match self {
            ActivityKey::MessageId => a.dedupe_key(),
            ActivityKey::TrackingToken => a.tracking_token.clone(),
            ActivityKey::Conversation => a.conversation_id.clone(),
            ActivityKey::SubjectKey => Some(serversync_model::track::normalize_subject(&a.subject))
                .filter(|k| !k.is_empty()),
        }
    }
}

fn record_ref(kind: &str, id: &str) -> Result<RecordRef, StoreError> {
    let bad = |cause: String| StoreError::Corrupt {
        entity: "address index",
        id: id.to_owned(),
        cause,
    };
    let parsed = match kind {
        "user" => id.parse().map(RecordRef::User),
        "queue" => id.parse().map(RecordRef::Queue),
        "contact" => id.parse().map(RecordRef::Contact),
        "account" => id.parse().map(RecordRef::Account),
        "lead" => id.parse().map(RecordRef::Lead),
        other => return Err(bad(format!("unknown record type {other}"))),
    };
    parsed.map_err(|e| bad(e.to_string()))
}

/// The order in which the tracker lists an address's candidates: users, queues, contacts,
/// accounts, leads, each in creation (id) order.
fn kind_rank(r: &RecordRef) -> u8 {
    match r {
        RecordRef::User(_) => 0,
        RecordRef::Queue(_) => 1,
        RecordRef::Contact(_) => 2,
        RecordRef::Account(_) => 3,
        RecordRef::Lead(_) => 4,
        RecordRef::Activity(_) => 5,
    }
}

impl Store {
    /// The enabled records of `org` with any of `addresses` (normalized here), from the
    /// address index: disabled users are left out; ordered by address, then users, queues,
    /// contacts, accounts and leads, each in creation (id) order.
    pub async fn address_matches(
        &self,
        org: OrgId,
        addresses: &[String],
    ) -> Result<Vec<AddressMatch>, StoreError> {
        let wanted: Vec<String> = address_ids(addresses);
        let mut out = Vec::new();
        for chunk in wanted.chunks(CHUNK) {
            let sql = format!(
                "SELECT address, record_type, record_id, owner_id FROM address_index \
                 WHERE org_id = $1 AND disabled = $2 AND address IN ({})",
                placeholders(3, chunk.len())
            );
            let rows: Vec<(String, String, String, Option<String>)> = dispatch_read!(&self.db, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                    .bind(org.to_string())
                    .bind(false);
                for a in chunk {
                    q = q.bind(a.as_str());
                }
                q.fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get("address")?, r.try_get("record_type")?, r.try_get("record_id")?, r.try_get("owner_id")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (address, kind, id, owner) in rows {
                let owner_id = owner
                    .map(|o| {
                        o.parse().map_err(|e: uuid::Error| StoreError::Corrupt {
                            entity: "address index",
                            id: id.clone(),
                            cause: e.to_string(),
                        })
                    })
                    .transpose()?;
                out.push((
                    id.clone(),
                    AddressMatch {
                        address,
                        record: record_ref(&kind, &id)?,
                        owner_id,
                    },
                ));
            }
        }
        out.sort_by(|(ia, a), (ib, b)| {
            (&a.address, kind_rank(&a.record), ia).cmp(&(&b.address, kind_rank(&b.record), ib))
        });
        Ok(out.into_iter().map(|(_, m)| m).collect())
    }

    /// The email activities of `org` whose `key` column is any of `values`, in id order.
    pub async fn email_activities_in(
        &self,
        org: OrgId,
        key: ActivityKey,
        values: &[String],
    ) -> Result<Vec<Stored<EmailActivity>>, StoreError> {
        let wanted: BTreeSet<&String> = values.iter().collect();
        let wanted: Vec<&String> = wanted.into_iter().collect();
        let mut out: Vec<(String, Stored<EmailActivity>)> = Vec::new();
        for chunk in wanted.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, doc, version, created_at, updated_at FROM activities \
                 WHERE org_id = $1 AND kind = 'email' AND {} IN ({})",
                key.column(),
                placeholders(2, chunk.len())
            );
            let rows: Vec<(String, Stored<EmailActivity>)> = dispatch_read!(&self.db, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(org.to_string());
                for v in chunk {
                    q = q.bind(v.as_str());
                }
                q.fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| {
                        let id: String = r.try_get("id")?;
                        let s = decode::<EmailActivity>(id.clone(), r.try_get::<&str, _>("doc")?, r.try_get("version")?, r.try_get("created_at")?, r.try_get("updated_at")?)?;
                        Ok((id, s))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?
            });
            out.extend(rows);
        }
        out.sort_by(|(a, _), (b, _)| a.cmp(b));
        out.dedup_by(|(a, _), (b, _)| a == b);
        Ok(out.into_iter().map(|(_, s)| s).collect())
    }

    /// The queue items (queue, activity) of `org` for any of `activities`.
    pub async fn queue_items_of(
        &self,
        org: OrgId,
        activities: &[ActivityId],
    ) -> Result<Vec<(QueueId, ActivityId)>, StoreError> {
        let mut out = Vec::new();
        for chunk in activities.chunks(CHUNK) {
            let sql = format!(
                "SELECT queue_id, activity_id FROM queue_items WHERE org_id = $1 AND activity_id IN ({})",
                placeholders(2, chunk.len())
            );
            let rows: Vec<(String, String)> = dispatch_read!(&self.db, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(org.to_string());
                for a in chunk {
                    q = q.bind(a.to_string());
                }
                q.fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get("queue_id")?, r.try_get("activity_id")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (q, a) in rows {
                let bad = |e: uuid::Error| StoreError::Corrupt {
                    entity: "queue item",
                    id: a.clone(),
                    cause: e.to_string(),
                };
                out.push((q.parse().map_err(bad)?, a.parse().map_err(bad)?));
            }
        }
        Ok(out)
    }
}
