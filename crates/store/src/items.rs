//! Item-level records and the content-addressed blob store for raw messages, bodies and
//! attachments.

use crate::LeaseGuard;
use crate::entity::{Col, Entity, EntityWrite, body_sha, decode_row, run_writes_in, select_list};
use crate::{Store, StoreError, dispatch, dispatch_read, now_ms};
use serversync_model::item::{ItemDecision, ItemSource, MailItem};
use serversync_model::{ActivityId, ItemId, MailboxId, OrgId};
use sqlx::Row;
use std::collections::HashMap;

/// An item to store and its blobs (SHA-256, content): raw message, attachments.
pub type ItemRow<'a> = (&'a MailItem, &'a [(&'a str, &'a [u8])]);

/// How a blob insert stores a blob once. A blob stored again as an attachment is marked so,
/// and the existing row is locked either way (`DO UPDATE … WHERE` locks even when it changes
/// nothing): on PostgreSQL the pruner, which locks a blob before removing it, then either sees
/// the new reference or has removed the row first, in which case the insert writes it anew.
/// A row stays as it was stored, whether it holds the bytes or a pack file does.
pub(crate) const BLOB_CONFLICT: &str = "ON CONFLICT (sha256) DO UPDATE SET attachment = TRUE WHERE excluded.attachment AND NOT blobs.attachment";

/// A blob to store: its bytes; whether it is kept for good (an attachment or a body; else a
/// raw message, which retention may remove); and where a pack file holds it already (see
/// [`crate::packs`]), for the row to point at instead of holding the bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlobIn<'a> {
    pub(crate) data: &'a [u8],
    pub(crate) kept: bool,
    pub(crate) packed: Option<(&'a str, i64)>,
}

impl<'a> BlobIn<'a> {
    /// Bytes kept for good (a body), held by the row.
    pub(crate) fn kept(data: &'a [u8]) -> Self {
        BlobIn {
            data,
            kept: true,
            packed: None,
        }
    }

    /// The bytes the row's insert carries (none when a pack holds them).
    pub(crate) fn bound_len(&self) -> usize {
        if self.packed.is_some() {
            0
        } else {
            self.data.len()
        }
    }
}

/// Blobs to store in one transaction, by SHA-256 (so in SHA-256 order).
pub(crate) type Blobs<'a> = std::collections::BTreeMap<&'a str, BlobIn<'a>>;

/// An item's document as stored, and its bodies (SHA-256, text).
type ItemDoc<'a> = (String, Option<(String, &'a str)>, Option<(String, &'a str)>);

/// Rows of one multi-row item insert (16 parameters each).
const ITEM_ROWS: usize = 64;

/// Rows of one multi-row blob insert, and the bytes it may carry.
pub(crate) const BLOB_ROWS: usize = 64;
pub(crate) const BLOB_BYTES: usize = 8 << 20;

/// Stores `$blobs` ([`Blobs`]) inside the open transaction `$tx` with a few statements for the
/// whole set: one query finds those kept already, multi-row inserts write the others, in
/// SHA-256 order. One already kept is neither written nor locked: bodies and attachments
/// shared by many messages (the same signature image, the same text in several mailboxes)
/// would otherwise have every transaction storing them queue on one row lock (`DO UPDATE …
/// WHERE` locks even when it changes nothing) — and, in another order, deadlock. A kept blob
/// is never removed, so there is no race with the pruner to guard against.
macro_rules! store_blobs_in {
    ($tx:ident, $blobs:expr, $now:expr) => {{
        let blobs: &$crate::items::Blobs<'_> = $blobs;
        let mut kept: std::collections::HashSet<String> = std::collections::HashSet::new();
        let asked: Vec<&str> = blobs
            .iter()
            .filter(|(_, b)| b.kept)
            .map(|(sha, _)| *sha)
            .collect();
        for chunk in asked.chunks(500) {
            let sql = format!(
                "SELECT sha256 FROM blobs WHERE attachment AND sha256 IN ({})",
                $crate::only_placeholders(&*$tx, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for sha in chunk {
                q = q.bind(*sha);
            }
            for r in q.fetch_all(&mut *$tx).await? {
                kept.insert(sqlx::Row::try_get(&r, "sha256")?);
            }
        }
        let todo: Vec<(&str, &$crate::items::BlobIn<'_>)> = blobs
            .iter()
            .filter(|(sha, _)| !kept.contains(**sha))
            .map(|(sha, b)| (*sha, b))
            .collect();
        let mut rest = todo.as_slice();
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len()
                && n < $crate::items::BLOB_ROWS
                && (n == 0 || bytes + rest[n].1.bound_len() <= $crate::items::BLOB_BYTES)
            {
                bytes += rest[n].1.bound_len();
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            let sql = format!(
                "INSERT INTO blobs (sha256, size, data, created_at, attachment, pack, pack_offset) VALUES {} {}",
                $crate::only_value_rows(&*$tx, chunk.len(), 7),
                $crate::items::BLOB_CONFLICT
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (sha, b) in chunk {
                // In a pack: the row holds where, not the bytes.
                let data: &[u8] = if b.packed.is_some() { &[] } else { b.data };
                q = q
                    .bind(*sha)
                    .bind(b.data.len() as i64)
                    .bind(data)
                    .bind($now)
                    .bind(b.kept)
                    .bind(b.packed.map(|(pack, _)| pack))
                    .bind(b.packed.map(|(_, offset)| offset));
            }
            q.execute(&mut *$tx).await?;
        }
    }};
}
pub(crate) use store_blobs_in;

/// What happened to an item handed to [`Store::insert_item`].
#[derive(Debug)]
pub enum ItemInsert {
    /// Recorded.
    Inserted,
    /// The mailbox already had a message with this source key: nothing was written.
    Duplicate,
}

/// What [`Store::remap_renumbered_item`] found for a message of a renumbered folder.
#[derive(Debug, Clone, PartialEq)]
pub enum Remap {
    /// This item, recorded under the earlier source `from`, now carries the new source.
    Mapped { item: ItemId, from: ItemSource },
    /// The mailbox already has an item under the new source (mapped or stored before).
    Already,
    /// No earlier item of the folder has the same Message-ID and content. `same_message_id`:
    /// how many items of the mailbox share the Message-ID (other content, or already taken).
    Unmatched { same_message_id: usize },
}

impl Store {
    /// Stores an item and its blobs (raw message, attachments) in one transaction. Idempotent
    /// per mailbox and source key, so a message fetched again after a crash is not stored twice.
    pub async fn insert_item(
        &self,
        item: &MailItem,
        blobs: &[(&str, &[u8])],
    ) -> Result<ItemInsert, StoreError> {
        let mut r = self.insert_items(&[(item, blobs)]).await?;
        Ok(r.pop().unwrap_or(ItemInsert::Duplicate))
    }

    /// Stores items with their blobs in one transaction (one commit for a batch of fetched
    /// messages); what happened to each, in order. Idempotent like [`Store::insert_item`].
    pub async fn insert_items(&self, items: &[ItemRow<'_>]) -> Result<Vec<ItemInsert>, StoreError> {
        let r = self.insert_items_once(items).await;
        if r.is_err() {
            self.note_write(&r);
        }
        r
    }

    async fn insert_items_once(
        &self,
        items: &[ItemRow<'_>],
    ) -> Result<Vec<ItemInsert>, StoreError> {
        // The document without the bodies, which are blobs referenced by SHA-256.
        let docs = items
            .iter()
            .map(|(item, _)| {
                let doc = item.doc().map_err(|e| StoreError::Corrupt {
                    entity: "mail item",
                    id: item.id.to_string(),
                    cause: e.to_string(),
                })?;
                let [text, html] = item.bodies();
                Ok((
                    doc,
                    text.map(|t| (body_sha(t), t)),
                    html.map(|h| (body_sha(h), h)),
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let packed = self.pack_blobs(items, &docs).await?;
        let now = now_ms();
        let mut inserted: std::collections::HashSet<String> = std::collections::HashSet::new();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            // Many rows a statement; those inserted (not already kept) come back.
            let rows: Vec<_> = items.iter().zip(&docs).collect();
            for chunk in rows.chunks(ITEM_ROWS) {
                let sql = format!(
                    "INSERT INTO mail_items (id, org_id, doc, version, created_at, updated_at, mailbox_id, source_key, message_id, decision, raw_sha256, raw_kept, from_addr, received_ms, text_sha256, html_sha256) \
                     VALUES {} ON CONFLICT (mailbox_id, source_key) DO NOTHING RETURNING id",
                    crate::only_value_rows(&*tx, chunk.len(), 16)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for ((item, _), (doc, text, html)) in chunk {
                    q = q
                        .bind(item.id.to_string())
                        .bind(item.org_id.to_string())
                        .bind(doc)
                        .bind(1_i64)
                        .bind(now)
                        .bind(now)
                        .bind(item.mailbox_id.to_string())
                        .bind(&item.source_key)
                        .bind(item.message_id.as_deref())
                        .bind(serversync_model::wire_name(&item.decision))
                        .bind(&item.raw_sha256)
                        .bind(item.raw_kept)
                        .bind(item.from.as_ref().map(|f| f.to_lowercase()))
                        .bind(item.received_at.timestamp_millis())
                        .bind(text.as_ref().map(|(sha, _)| sha))
                        .bind(html.as_ref().map(|(sha, _)| sha));
                }
                for r in q.fetch_all(&mut *tx).await? {
                    inserted.insert(r.try_get("id")?);
                }
            }
            // The new items' bodies, once each, kept (never a raw copy retention may remove);
            // every blob but the raw message itself is an attachment. After the items, in
            // SHA-256 order: two transactions storing the same new blobs (the same attachment
            // or body in several mailboxes) wait for each other in one order, never in a
            // cycle (PostgreSQL's deadlock).
            let mut new_blobs = Blobs::new();
            for ((item, blobs), (_, text, html)) in items.iter().zip(&docs) {
                if !inserted.contains(&item.id.to_string()) {
                    continue;
                }
                let bodies = text.iter().chain(html.iter());
                let bodies = bodies.map(|(sha, body)| (sha.as_str(), body.as_bytes(), true));
                let others = blobs.iter().map(|(sha, data)| (*sha, *data, *sha != item.raw_sha256));
                for (sha, data, kept) in bodies.chain(others) {
                    let e = new_blobs.entry(sha).or_insert(BlobIn {
                        data,
                        kept,
                        packed: packed.get(sha).map(|(pack, at)| (pack.as_str(), *at)),
                    });
                    e.kept |= kept;
                }
            }
            store_blobs_in!(tx, &new_blobs, now);
            tx.commit().await?;
        });
        let out = items
            .iter()
            .map(|(item, _)| {
                if inserted.contains(&item.id.to_string()) {
                    ItemInsert::Inserted
                } else {
                    ItemInsert::Duplicate
                }
            })
            .collect();
        Ok(out)
    }

    /// On a file-backed SQLite store: appends the batch's bodies, raw messages and attachments
    /// not stored yet to this handle's pack file, durably, before the batch's transaction (see
    /// [`crate::packs`]); where each went. A blob found stored already is not appended again;
    /// one stored by another writer meanwhile is kept as that writer stored it, and this copy's
    /// bytes stay unreferenced.
    async fn pack_blobs(
        &self,
        items: &[ItemRow<'_>],
        docs: &[ItemDoc<'_>],
    ) -> Result<HashMap<String, (String, i64)>, StoreError> {
        let crate::Db::Sqlite(db) = &self.db else {
            return Ok(HashMap::new());
        };
        let Some(packs) = &db.packs else {
            return Ok(HashMap::new());
        };
        let bodies = docs
            .iter()
            .flat_map(|(_, text, html)| [text, html])
            .flatten()
            .map(|(sha, body)| (sha.as_str(), body.as_bytes()));
        let others = items.iter().flat_map(|(_, blobs)| blobs.iter().copied());
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<(&str, &[u8])> = bodies
            .chain(others)
            .filter(|(sha, _)| seen.insert(*sha))
            .collect();
        let mut stored = std::collections::HashSet::new();
        for chunk in todo.chunks(500) {
            let sql = format!(
                "SELECT sha256 FROM blobs WHERE sha256 IN ({})",
                vec!["?"; chunk.len()].join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (sha, _) in chunk {
                q = q.bind(*sha);
            }
            for r in q.fetch_all(&db.readers).await? {
                stored.insert(r.try_get::<String, _>("sha256")?);
            }
        }
        todo.retain(|(sha, _)| !stored.contains(*sha));
        if todo.is_empty() {
            return Ok(HashMap::new());
        }
        let parts: Vec<&[u8]> = todo.iter().map(|(_, data)| *data).collect();
        let (pack, start) = packs.append(&parts).await?;
        let mut at = start;
        Ok(todo
            .into_iter()
            .map(|(sha, data)| {
                let loc = (pack.clone(), at);
                at += data.len() as i64;
                (sha.to_owned(), loc)
            })
            .collect())
    }

    /// Re-maps one message of a renumbered folder (its numbering — IMAP UIDVALIDITY — changed)
    /// to what the mailbox already has. `source` is the message's new place (folder, numbering,
    /// position);
    /// `message_id` and `raw_sha256` are those of the bytes intake would record. An item of
    /// the same mailbox and folder from an *earlier* numbering with the same Message-ID (or
    /// none on both) *and* the same content takes the new source, and `note(old source)` is
    /// appended to its trace; each old item is taken at most once, so distinct messages that
    /// share a Message-ID, or identical copies, each keep or get their own item. Written only
    /// under `lease` (fencing). Nothing matching: [`Remap::Unmatched`], and the caller stores
    /// the message as new.
    pub async fn remap_renumbered_item(
        &self,
        lease: &LeaseGuard,
        mailbox: MailboxId,
        source: &ItemSource,
        message_id: Option<&str>,
        raw_sha256: &str,
        note: impl FnOnce(&ItemSource) -> String,
    ) -> Result<Remap, StoreError> {
        let (Some(folder), Some(numbering)) = (source.folder(), source.numbering()) else {
            return Ok(Remap::Unmatched { same_message_id: 0 });
        };
        let key = source.key(raw_sha256);
        let mut note = Some(note);
        let now = now_ms();
        let out = dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let known = sqlx::query("SELECT 1 AS one FROM mail_items WHERE mailbox_id = $1 AND source_key = $2")
                .bind(mailbox.to_string())
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if known {
                return Ok(Remap::Already);
            }
            // Same content first (indexed); the Message-ID and folder are compared on the
            // decoded rows, of which there are few.
            let rows: Vec<(String, String, Option<String>)> = sqlx::query("SELECT id, doc, trace_tail FROM mail_items WHERE mailbox_id = $1 AND raw_sha256 = $2 ORDER BY id")
                .bind(mailbox.to_string())
                .bind(raw_sha256)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("id")?, r.try_get::<String, _>("doc")?, r.try_get::<Option<String>, _>("trace_tail")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let mut mapped = None;
            for (id, doc, tail) in rows {
                let corrupt = |e: serde_json::Error| StoreError::Corrupt {
                    entity: "mail item",
                    id: id.clone(),
                    cause: e.to_string(),
                };
                let mut item: MailItem = serde_json::from_str(&doc).map_err(corrupt)?;
                let earlier = item.source.folder() == Some(folder)
                    && item.source.numbering().is_some_and(|n| n != numbering);
                if !earlier || item.message_id.as_deref() != message_id {
                    continue;
                }
                let old_key = std::mem::replace(&mut item.source_key, key.clone());
                let old = std::mem::replace(&mut item.source, source.clone());
                // The note goes after every trace line so far: at the end of `trace_tail`.
                let mut tail = crate::entity::trace_tail_of("mail item", &id, tail.as_deref())?;
                if let Some(note) = note.take() {
                    tail.push(note(&old));
                }
                let tail = serde_json::to_string(&tail).map_err(corrupt)?;
                // Written back in the shape it was read (bodies inline in an earlier row's
                // document), so nothing is lost here.
                let doc = serde_json::to_string(&item).map_err(corrupt)?;
                let n = sqlx::query(
                    "UPDATE mail_items SET doc = $1, source_key = $2, version = version + 1, updated_at = $3, trace_tail = $9 \
                     WHERE id = $4 AND source_key = $5 \
                     AND EXISTS (SELECT 1 FROM leases WHERE resource = $6 AND owner = $7 AND epoch = $8 AND lease_until > $3)",
                )
                .bind(&doc)
                .bind(&key)
                .bind(now)
                .bind(&id)
                .bind(&old_key)
                .bind(&lease.resource)
                .bind(&lease.owner)
                .bind(lease.epoch)
                .bind(&tail)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if n != 1 {
                    return Err(lease_lost(lease));
                }
                mapped = Some(Remap::Mapped { item: item.id, from: old });
                break;
            }
            let out = match mapped {
                Some(m) => m,
                None => {
                    let same: i64 = match message_id {
                        Some(mid) => sqlx::query("SELECT COUNT(*) AS n FROM mail_items WHERE org_id = (SELECT org_id FROM mail_items WHERE mailbox_id = $1 LIMIT 1) AND mailbox_id = $1 AND message_id = $2")
                            .bind(mailbox.to_string())
                            .bind(mid)
                            .fetch_one(&mut *tx)
                            .await?
                            .try_get("n")?,
                        None => 0,
                    };
                    Remap::Unmatched { same_message_id: same as usize }
                }
            };
            tx.commit().await?;
            out
        });
        Ok(out)
    }

    /// Which of `source_keys` the mailbox already has items for, with each item's decision
    /// (POP3 UIDL listings: only the messages not yet recorded are fetched, and only stored or
    /// failed ones may be deleted). Asks in chunks, so a long listing costs a few indexed
    /// lookups rather than one query per message.
    pub async fn item_decisions(
        &self,
        mailbox: MailboxId,
        source_keys: &[String],
    ) -> Result<HashMap<String, ItemDecision>, StoreError> {
        /// Placeholders per query: well under SQLite's and PostgreSQL's bind limits.
        const CHUNK: usize = 500;
        let mut found = HashMap::new();
        for chunk in source_keys.chunks(CHUNK) {
            // Only placeholders are assembled; every value is bound.
            let placeholders: Vec<String> =
                (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT source_key, decision FROM mail_items WHERE mailbox_id = $1 AND source_key IN ({})",
                placeholders.join(", ")
            );
            let rows: Vec<(String, String)> = dispatch_read!(&self.db, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(mailbox.to_string());
                for k in chunk {
                    q = q.bind(k);
                }
                q.fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get::<String, _>("source_key")?, r.try_get::<String, _>("decision")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            });
            for (key, decision) in rows {
                let d = serde_json::from_value(serde_json::Value::String(decision.clone()))
                    .map_err(|e| StoreError::Corrupt {
                        entity: "mail item",
                        id: key.clone(),
                        cause: format!("decision {decision:?}: {e}"),
                    })?;
                found.insert(key, d);
            }
        }
        Ok(found)
    }

    /// The bytes stored under a SHA-256 (read from its pack file, when one holds them, on the
    /// blocking pool).
    pub async fn get_blob(&self, sha256: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = format!(
            "SELECT data, {} AS loc FROM blobs WHERE sha256 = $1",
            crate::packs::PACK_LOC
        );
        let row = dispatch_read!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(sha256)
                .fetch_optional(pool)
                .await?
                .map(|r| Ok::<_, sqlx::Error>((r.try_get::<Vec<u8>, _>("data")?, r.try_get::<Option<String>, _>("loc")?)))
                .transpose()?
        });
        let Some((data, loc)) = row else {
            return Ok(None);
        };
        if loc.is_none() {
            return Ok(Some(data));
        }
        let (packs, sha) = (self.packs().cloned(), sha256.to_owned());
        let data = crate::packs::blocking(sha256, move || {
            crate::packs::bytes_of(packs.as_deref(), &sha, data, loc.as_deref())
        })
        .await?;
        Ok(Some(data))
    }

    /// Items of a mailbox, oldest first.
    pub async fn list_items(
        &self,
        mailbox: MailboxId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<crate::Page<MailItem>, StoreError> {
        self.list_items_with(mailbox, None, after, limit).await
    }

    /// Items of a mailbox with one decision (all when `None`), oldest first.
    pub async fn list_items_with(
        &self,
        mailbox: MailboxId,
        decision: Option<ItemDecision>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<crate::Page<MailItem>, StoreError> {
        let mut filters = vec![("mailbox_id", Col::text(mailbox))];
        if let Some(d) = decision {
            filters.push(("decision", Col::text(serversync_model::wire_name(&d))));
        }
        self.list::<MailItem>(None, &filters, after, limit).await
    }

    /// How many items a mailbox has per decision (for telemetry and tests).
    pub async fn count_items(&self, mailbox: MailboxId) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(dispatch_read!(&self.db, pool => {
            sqlx::query("SELECT decision, COUNT(*) AS n FROM mail_items WHERE mailbox_id = $1 GROUP BY decision ORDER BY decision")
                .bind(mailbox.to_string())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<String, _>("decision")?, r.try_get::<i64, _>("n")?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        }))
    }
}

impl Entity for MailItem {
    const TABLE: &'static str = "mail_items";
    const NAME: &'static str = "mail item";
    fn id(&self) -> String {
        self.id.to_string()
    }
    fn org_id(&self) -> Option<serversync_model::OrgId> {
        Some(self.org_id)
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        vec![
            ("mailbox_id", Col::text(self.mailbox_id)),
            ("source_key", Col::text(&self.source_key)),
            ("message_id", Col::opt_text(self.message_id.as_ref())),
            ("raw_sha256", Col::text(&self.raw_sha256)),
            ("raw_kept", Col::Bool(self.raw_kept)),
            (
                "from_addr",
                Col::opt_text(self.from.as_ref().map(|f| f.to_lowercase())),
            ),
            (
                "received_ms",
                Col::Int(Some(self.received_at.timestamp_millis())),
            ),
            (
                "decision",
                Col::text(serversync_model::wire_name(&self.decision)),
            ),
            // A whole item written through the generic path carries its whole trace in its
            // document.
            ("trace_tail", Col::Text(None)),
        ]
    }
    const BODIES: bool = true;
    const TRACE_TAIL: bool = true;
    fn bodies(&self) -> [Option<&str>; 2] {
        [self.text_body.as_deref(), self.html_body.as_deref()]
    }
    fn set_bodies(&mut self, text: Option<String>, html: Option<String>) {
        // A body inline in the document wins: only a writer of the earlier shape puts one there.
        if self.text_body.is_none() {
            self.text_body = text;
        }
        if self.html_body.is_none() {
            self.html_body = html;
        }
    }
    fn extend_trace(&mut self, lines: Vec<String>) {
        self.trace.extend(lines);
    }
    fn doc(&self) -> serde_json::Result<String> {
        serde_json::to_string(&MailItem {
            text_body: None,
            html_body: None,
            ..self.clone()
        })
    }
}

impl Store {
    /// Organizations that have stored items the tracker has not finished with.
    pub async fn orgs_with_untracked_items(&self) -> Result<Vec<OrgId>, StoreError> {
        let ids: Vec<String> = dispatch_read!(&self.db, pool => {
            sqlx::query("SELECT DISTINCT org_id FROM mail_items WHERE tracked_at IS NULL AND decision = 'stored'")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.try_get::<String, _>("org_id"))
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        ids.iter()
            .map(|s| {
                s.parse().map_err(|e: uuid::Error| StoreError::Corrupt {
                    entity: "mail item",
                    id: s.clone(),
                    cause: format!("org id: {e}"),
                })
            })
            .collect()
    }

    /// Stored items of `org` the tracker has not finished with, oldest first, at most `limit`.
    /// Whatever commits later — even with an older id — is found by the next call.
    pub async fn untracked_items(
        &self,
        org: OrgId,
        limit: u32,
    ) -> Result<Vec<MailItem>, StoreError> {
        let sql = format!(
            "SELECT {} FROM mail_items WHERE org_id = $1 AND tracked_at IS NULL AND decision = 'stored' ORDER BY id LIMIT $2",
            select_list::<MailItem>()
        );
        dispatch_read!(&self.db, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(org.to_string())
                .bind(i64::from(limit.clamp(1, 1000)))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| decode_row!(MailItem, r, self.packs()).map(|s| s.value))
                .collect()
        })
    }

    /// Commits a batch of the tracker's work in one transaction (one commit for the batch, not
    /// several for each item): the entity writes (activities, links, queue items, their change
    /// rows), then each item's trace appended and the item marked tracked, with the activity
    /// it was tracked as (kept for retention: only such items' raw copies may be removed). All or nothing:
    /// nothing is written when the lease is gone (`LeaseLost`), an item was already marked
    /// (`Conflict`) or an update does not find its expected version (`VersionMismatch`).
    pub async fn commit_tracking(
        &self,
        lease: &LeaseGuard,
        writes: &[EntityWrite],
        finished: &[(ItemId, Option<ActivityId>, Vec<String>)],
    ) -> Result<(), StoreError> {
        let now = now_ms();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            run_writes_in!(self, tx, writes, now);
            for chunk in finished.chunks(FINISH_ROWS) {
                match finish_in!(tx, lease, chunk, now) {
                    Finish::Done => {}
                    Finish::Already(item) => {
                        return Err(StoreError::Conflict {
                            entity: "mail item",
                            detail: format!("item {item} was already tracked"),
                        });
                    }
                    Finish::Lost => return Err(lease_lost(lease)),
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }
}

fn lease_lost(lease: &LeaseGuard) -> StoreError {
    StoreError::LeaseLost {
        resource: lease.resource.clone(),
        epoch: lease.epoch,
    }
}

/// Items marked tracked by one statement.
const FINISH_ROWS: usize = 100;

/// How marking items tracked went.
#[derive(Debug)]
enum Finish {
    Done,
    /// This one was marked already: nothing may be written.
    Already(String),
    /// The lease is gone: nothing was written.
    Lost,
}

/// Appends to each item's trace (its `trace_tail`) its lines and marks it tracked (as its
/// activity, if any) inside the open transaction `$tx`, fenced by `$lease`, for a slice of
/// `(ItemId, Option<ActivityId>, Vec<String>)`: one query reads the tails, one statement
/// writes them all. Evaluates to a [`Finish`].
macro_rules! finish_in {
    ($tx:ident, $lease:expr, $items:expr, $now:expr) => {{
        let items: &[(ItemId, Option<ActivityId>, Vec<String>)] = $items;
        let ids: Vec<String> = items.iter().map(|(id, _, _)| id.to_string()).collect();
        // Only the traces' tails are read and written, never the documents (issue 19).
        let sql = format!(
            "SELECT id, trace_tail FROM mail_items WHERE tracked_at IS NULL AND id IN ({})",
            $crate::only_placeholders(&*$tx, ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &ids {
            q = q.bind(id);
        }
        let mut tails: HashMap<String, Option<String>> = HashMap::new();
        for r in q.fetch_all(&mut *$tx).await? {
            tails.insert(r.try_get("id")?, r.try_get("trace_tail")?);
        }
        match ids.iter().find(|id| !tails.contains_key(*id)) {
            Some(id) => Finish::Already(id.clone()),
            None => {
                // UPDATE … SET x = CASE id WHEN … END for every item at once.
                let n = ids.len();
                let mut binds: Vec<Option<String>> = Vec::with_capacity(3 * n);
                let (mut tail_case, mut activity_case) = (String::new(), String::new());
                for ((id, (_, activity, lines)), i) in ids.iter().zip(items).zip(0..) {
                    let mut all = $crate::entity::trace_tail_of(
                        "mail item",
                        id,
                        tails.get(id).cloned().flatten().as_deref(),
                    )?;
                    all.extend(lines.iter().cloned());
                    let tail = serde_json::to_string(&all).map_err(|e| StoreError::Corrupt {
                        entity: "mail item",
                        id: id.clone(),
                        cause: e.to_string(),
                    })?;
                    let p = 5 + 3 * i;
                    tail_case.push_str(&format!(" WHEN ${p} THEN ${}", p + 1));
                    activity_case.push_str(&format!(" WHEN ${p} THEN ${}", p + 2));
                    binds.extend([Some(id.clone()), Some(tail), activity.map(|a| a.to_string())]);
                }
                let sql = format!(
                    "UPDATE mail_items SET trace_tail = CASE id{tail_case} END, activity_id = CASE id{activity_case} END, \
                     tracked_at = $1, updated_at = $1, version = version + 1 \
                     WHERE tracked_at IS NULL AND id IN ({}) \
                     AND EXISTS (SELECT 1 FROM leases WHERE resource = $2 AND owner = $3 AND epoch = $4 AND lease_until > $1)",
                    (0..n).map(|i| format!("${}", 5 + 3 * i)).collect::<Vec<_>>().join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind($now)
                    .bind(&$lease.resource)
                    .bind(&$lease.owner)
                    .bind($lease.epoch);
                for b in binds {
                    q = q.bind(b);
                }
                if q.execute(&mut *$tx).await?.rows_affected() == n as u64 {
                    Finish::Done
                } else {
                    Finish::Lost
                }
            }
        }
    }};
}
use finish_in;

impl Store {
    /// Stores attachments (content-addressed, so storing one twice keeps one copy).
    pub async fn put_blobs(&self, blobs: &[(&str, &[u8])]) -> Result<(), StoreError> {
        // In SHA-256 order, like intake's (see `insert_items`).
        let blobs: Blobs<'_> = blobs
            .iter()
            .map(|(sha, data)| (*sha, BlobIn::kept(data)))
            .collect();
        let now = now_ms();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            store_blobs_in!(tx, &blobs, now);
            tx.commit().await?;
        });
        Ok(())
    }
}
