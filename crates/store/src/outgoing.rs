//! Outgoing work, found through the `activities_send_due` index (`send_mailbox`, `due_at`;
//! see `EmailActivity::send_due`): which mailboxes have email due, and a mailbox's due email
//! in due order. Neither reads an email that is not due, however many wait.

use crate::entity::{EntityWrite, prepare_writes_in, run_write_in};
use crate::{Col, Entity, Page, Store, StoreError, Stored, dispatch, dispatch_read, now_ms};
use serversync_model::crm::{EmailActivity, EmailStatus};
use serversync_model::{MailboxId, Timestamp, wire_name};
use sqlx::Row;

/// Every sending mailbox with an email in `status` — one index probe per mailbox (a loose
/// index scan: the next mailbox after the last one found) — of which those whose earliest
/// email is due at `now`.
const DUE_MAILBOXES: &str = "\
WITH RECURSIVE boxes(mailbox) AS (
    SELECT MIN(send_mailbox) FROM activities WHERE status = $1 AND send_mailbox IS NOT NULL
    UNION ALL
    SELECT (SELECT MIN(a.send_mailbox) FROM activities a
            WHERE a.status = $1 AND a.send_mailbox IS NOT NULL AND a.send_mailbox > boxes.mailbox)
    FROM boxes WHERE boxes.mailbox IS NOT NULL
)
SELECT mailbox FROM boxes
WHERE mailbox IS NOT NULL
  AND (SELECT MIN(a.due_at) FROM activities a
       WHERE a.status = $1 AND a.send_mailbox IS NOT NULL AND a.send_mailbox = boxes.mailbox) <= $2";

impl Store {
    /// The mailboxes that have an outgoing email in `status` due at `now` (pending send:
    /// its send-after time has come; sending: its Email Router claim ran out, or it has none).
    pub async fn send_due_mailboxes(
        &self,
        status: EmailStatus,
        now: Timestamp,
    ) -> Result<Vec<MailboxId>, StoreError> {
        let rows: Vec<String> = dispatch_read!(&self.db, pool => {
            sqlx::query(DUE_MAILBOXES)
                .bind(wire_name(&status))
                .bind(now.timestamp_millis())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("mailbox"))
                .collect::<Result<_, _>>()?
        });
        Ok(rows.iter().filter_map(|m| m.parse().ok()).collect())
    }

    /// Up to `limit` outgoing emails in `status` sent from `mailbox` and due at `now`, the
    /// earliest due first, after the cursor `after` (the `next` of the previous page).
    pub async fn send_due_emails(
        &self,
        status: EmailStatus,
        mailbox: MailboxId,
        now: Timestamp,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<EmailActivity>, StoreError> {
        let limit = limit.clamp(1, 1000);
        // The cursor is `<due_at>:<id>` (ours; anything else starts from the beginning).
        let after = after
            .and_then(|a| a.split_once(':'))
            .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id.to_owned())));
        let mut sql = format!(
            "SELECT {}, due_at FROM activities \
             WHERE status = $1 AND send_mailbox IS NOT NULL AND send_mailbox = $2 AND due_at <= $3",
            crate::entity::select_list::<EmailActivity>()
        );
        if after.is_some() {
            sql.push_str(" AND (due_at, id) > ($4, $5)");
        }
        sql.push_str(&format!(" ORDER BY due_at, id LIMIT {}", limit + 1));
        let mut rows: Vec<(Stored<EmailActivity>, i64)> = dispatch_read!(&self.db, pool => {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(wire_name(&status))
                .bind(mailbox.to_string())
                .bind(now.timestamp_millis());
            if let Some((due, id)) = &after {
                q = q.bind(*due).bind(id.clone());
            }
            q.fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        crate::entity::decode_row!(EmailActivity, r, self.packs())?,
                        r.try_get::<i64, _>("due_at")?,
                    ))
                })
                .collect::<Result<_, StoreError>>()?
        });
        let next = if rows.len() > limit as usize {
            rows.truncate(limit as usize);
            rows.last().map(|(s, due)| format!("{due}:{}", s.value.id))
        } else {
            None
        };
        Ok(Page {
            items: rows.into_iter().map(|(s, _)| s).collect(),
            next,
        })
    }

    /// Several updates in one transaction (one commit), each only from the version it was
    /// read at (`previous`): an update that finds another version (someone changed the
    /// entity meanwhile) is left out — its answer is `None` — and the others are written.
    /// Link rows are rewritten only for an entity whose links changed
    /// ([`EntityWrite::update_from`]).
    pub async fn update_each<E: Entity>(
        &self,
        updates: &[(&E, &Stored<E>)],
    ) -> Result<Vec<Option<Stored<E>>>, StoreError> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        let writes = updates
            .iter()
            .map(|(e, previous)| {
                EntityWrite::update_from(&previous.value, *e, Some(previous.version))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let now = now_ms();
        let rows: Vec<Option<(i64, i64)>> = dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let mut rows = Vec::with_capacity(writes.len());
            let mut fed = Vec::new();
            prepare_writes_in!(self, tx, &writes, now);
            for w in &writes {
                let row = run_write_in!(unfed: self, tx, w, now);
                if let (Some((version, _)), Some((org, rt))) = (row, &w.feed) {
                    fed.push((org, *rt, &w.id, w.op(), version));
                }
                rows.push(row);
            }
            // The change-feed rows of all of them in one statement.
            crate::changes::record_changes_in!(self, tx, &fed);
            tx.commit().await?;
            rows
        });
        writes
            .iter()
            .zip(rows)
            .map(|(w, row)| {
                row.map(|(v, created)| w.stored(v, created, now))
                    .transpose()
            })
            .collect()
    }
}
