//! Per-folder synchronization cursors, written only under a valid lease. A cursor is typed by
//! protocol ([`FolderCursor`]); rows in the shape written before that read as IMAP cursors.

use crate::{LeaseGuard, Store, StoreError, dispatch, dispatch_read, now_ms};
use serversync_model::MailboxId;
use serversync_model::sync::FolderCursor;
use sqlx::Row;

impl Store {
    pub async fn get_cursor(
        &self,
        mailbox: MailboxId,
        folder: &str,
    ) -> Result<Option<FolderCursor>, StoreError> {
        let doc: Option<String> = dispatch_read!(&self.db, pool => {
            sqlx::query("SELECT doc FROM folder_state WHERE mailbox_id = $1 AND folder = $2")
                .bind(mailbox.to_string())
                .bind(folder)
                .fetch_optional(pool)
                .await?
                .map(|r| r.try_get::<String, _>("doc"))
                .transpose()?
        });
        doc.map(|d| {
            serde_json::from_str(&d).map_err(|e| StoreError::Corrupt {
                entity: "folder cursor",
                id: format!("{mailbox}/{folder}"),
                cause: e.to_string(),
            })
        })
        .transpose()
    }

    /// Writes a cursor only if `lease` is still the current, unexpired lease (fencing): a worker
    /// that lost its mailbox cannot move the cursor. Takes any form of cursor (`&ImapCursor`,
    /// `&FolderCursor`, …); it is stored typed (`{"kind": …}`).
    pub async fn put_cursor(
        &self,
        lease: &LeaseGuard,
        mailbox: MailboxId,
        folder: &str,
        cursor: impl Into<FolderCursor>,
    ) -> Result<(), StoreError> {
        let cursor: FolderCursor = cursor.into();
        let r = self.put_cursor_once(lease, mailbox, folder, &cursor).await;
        self.note_write(&r);
        r
    }

    async fn put_cursor_once(
        &self,
        lease: &LeaseGuard,
        mailbox: MailboxId,
        folder: &str,
        cursor: &FolderCursor,
    ) -> Result<(), StoreError> {
        let doc = serde_json::to_string(cursor).map_err(|e| StoreError::Corrupt {
            entity: "folder cursor",
            id: format!("{mailbox}/{folder}"),
            cause: e.to_string(),
        })?;
        let n = dispatch!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO folder_state (mailbox_id, folder, doc, epoch, updated_at) \
                 SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM leases WHERE resource = $6 AND owner = $7 AND epoch = $4 AND lease_until > $5) \
                 ON CONFLICT (mailbox_id, folder) DO UPDATE SET doc = excluded.doc, epoch = excluded.epoch, updated_at = excluded.updated_at",
            )
            .bind(mailbox.to_string())
            .bind(folder)
            .bind(&doc)
            .bind(lease.epoch)
            .bind(now_ms())
            .bind(&lease.resource)
            .bind(&lease.owner)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost {
                resource: lease.resource.clone(),
                epoch: lease.epoch,
            })
        }
    }
}
