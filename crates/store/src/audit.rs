//! The append-only audit log.

use crate::entity::Entity;
use crate::{Store, StoreError, dispatch, dispatch_read, from_ms};
use serversync_model::OrgId;
use serversync_model::audit::{Actor, AuditEntry};
use sqlx::Row;

/// An audit entry to append, written in the same transaction as the change it records.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    pub org_id: Option<OrgId>,
    pub actor: Actor,
    pub action: String,
    pub entity: String,
    pub entity_id: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Secret fields serialize redacted, so the snapshots never contain a secret.
fn snapshot<E: Entity>(e: &E) -> Option<serde_json::Value> {
    serde_json::to_value(e).ok()
}

impl NewAuditEntry {
    pub fn create<E: Entity>(actor: Actor, e: &E) -> Self {
        Self::change(actor, "create", None, Some(e))
    }
    pub fn update<E: Entity>(actor: Actor, before: &E, after: &E) -> Self {
        Self::change(actor, "update", Some(before), Some(after))
    }
    pub fn delete<E: Entity>(actor: Actor, e: &E) -> Self {
        Self::change(actor, "delete", Some(e), None)
    }
    /// A change with a named action (`approve`, `test_and_enable`…).
    pub fn change<E: Entity>(
        actor: Actor,
        action: &str,
        before: Option<&E>,
        after: Option<&E>,
    ) -> Self {
        let any = after.or(before);
        Self {
            org_id: any.and_then(|e| e.org_id()),
            actor,
            action: action.to_owned(),
            entity: E::NAME.to_owned(),
            entity_id: any.map(|e| e.id()).unwrap_or_default(),
            before: before.and_then(snapshot),
            after: after.and_then(snapshot),
        }
    }
}

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (org_id, at, actor, action, entity, entity_id, before_doc, after_doc) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Appends `$a` inside the open transaction `$tx`.
macro_rules! append_in {
    ($tx:ident, $a:expr) => {{
        let a: $crate::audit::NewAuditEntry = $a;
        sqlx::query($crate::audit::INSERT_AUDIT)
            .bind(a.org_id.map(|o| o.to_string()))
            .bind($crate::now_ms())
            .bind(serde_json::to_string(&a.actor).unwrap_or_default())
            .bind(a.action)
            .bind(a.entity)
            .bind(a.entity_id)
            .bind(a.before.map(|v| v.to_string()))
            .bind(a.after.map(|v| v.to_string()))
            .execute(&mut *$tx)
            .await?;
    }};
}
pub(crate) use append_in;

impl Store {
    /// Appends an audit entry on its own.
    pub async fn append_audit(&self, a: NewAuditEntry) -> Result<(), StoreError> {
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            append_in!(tx, a);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Audit entries of an organization (or all with `None`), oldest first, after `after_seq`.
    pub async fn list_audit(
        &self,
        org: Option<OrgId>,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = if org.is_some() {
            "SELECT seq, org_id, at, actor, action, entity, entity_id, before_doc, after_doc FROM audit_log \
             WHERE seq > $1 AND org_id = $3 ORDER BY seq LIMIT $2"
        } else {
            "SELECT seq, org_id, at, actor, action, entity, entity_id, before_doc, after_doc FROM audit_log \
             WHERE seq > $1 ORDER BY seq LIMIT $2"
        };
        self.query_audit(sql, org, after_seq, limit).await
    }

    /// Audit entries of an organization (or all with `None`), newest first, before
    /// `before_seq` (from the newest when `None`): the next page starts before the last `seq`.
    pub async fn list_audit_newest(
        &self,
        org: Option<OrgId>,
        before_seq: Option<i64>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = if org.is_some() {
            "SELECT seq, org_id, at, actor, action, entity, entity_id, before_doc, after_doc FROM audit_log \
             WHERE seq < $1 AND org_id = $3 ORDER BY seq DESC LIMIT $2"
        } else {
            "SELECT seq, org_id, at, actor, action, entity, entity_id, before_doc, after_doc FROM audit_log \
             WHERE seq < $1 ORDER BY seq DESC LIMIT $2"
        };
        self.query_audit(sql, org, before_seq.unwrap_or(i64::MAX), limit)
            .await
    }

    async fn query_audit(
        &self,
        sql: &'static str,
        org: Option<OrgId>,
        seq: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::from(limit.clamp(1, 1000));
        dispatch_read!(&self.db, pool => {
            let mut q = sqlx::query(sql).bind(seq).bind(limit);
            if let Some(o) = org {
                q = q.bind(o.to_string());
            }
            let rows = q.fetch_all(pool).await?;
            rows.iter().map(|r| {
                let json = |col: &str| -> Result<Option<serde_json::Value>, StoreError> {
                    Ok(r.try_get::<Option<String>, _>(col)?.and_then(|s| serde_json::from_str(&s).ok()))
                };
                let actor: String = r.try_get("actor")?;
                Ok(AuditEntry {
                    seq: r.try_get("seq")?,
                    org_id: r.try_get::<Option<String>, _>("org_id")?.and_then(|s| s.parse().ok()),
                    at: from_ms(r.try_get("at")?),
                    actor: serde_json::from_str(&actor).unwrap_or(Actor::System(actor)),
                    action: r.try_get("action")?,
                    entity: r.try_get("entity")?,
                    entity_id: r.try_get("entity_id")?,
                    before: json("before_doc")?,
                    after: json("after_doc")?,
                })
            }).collect()
        })
    }
}
