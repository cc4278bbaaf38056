//! Entities: a JSON document per row plus the columns queries need.
//!
//! SQL here is assembled from table and column names that are constants of this crate (never
//! from input); every value is a bound parameter. That is what `AssertSqlSafe` asserts.

use crate::changes::{lock_feed_in, record_change_in};
use crate::lookups::ActivityKey;
use crate::packs::PACK_LOC;
use crate::{Store, StoreError, audit::NewAuditEntry, dispatch, dispatch_read, from_ms, now_ms};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serversync_model::alert::Alert;
use serversync_model::auth::ApiToken;
use serversync_model::crm::{Account, Appointment, Contact, EmailActivity, Lead, QueueItem, Task};
use serversync_model::job::Job;
use serversync_model::mailbox::{Mailbox, MailboxRegarding};
use serversync_model::org::{Domain, Organization, Queue, Role, User};
use serversync_model::profile::EmailServerProfile;
use serversync_model::settings::EmailSettings;
use serversync_model::webhook::{ChangeOp, RecordType, WebhookEndpoint};
use serversync_model::{OrgId, Timestamp, wire_name};
use sqlx::Row;

/// A value for an indexed column.
#[derive(Debug, Clone, PartialEq)]
pub enum Col {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(bool),
}

impl Col {
    pub fn text(s: impl ToString) -> Col {
        Col::Text(Some(s.to_string()))
    }
    pub fn opt_text<T: ToString>(s: Option<T>) -> Col {
        Col::Text(s.map(|s| s.to_string()))
    }
}

/// Something stored as a row of its own table.
pub trait Entity: Serialize + DeserializeOwned + Send + Sync {
    const TABLE: &'static str;
    /// Human name for messages and the audit log.
    const NAME: &'static str;
    fn id(&self) -> String;
    fn org_id(&self) -> Option<OrgId>;
    /// Indexed columns and their values (names are fixed by code, never by input).
    fn columns(&self) -> Vec<(&'static str, Col)> {
        Vec::new()
    }
    /// CRM records: the record type under which every insert, update and delete is written to
    /// the change feed, in the same transaction. `None` (the default): not in the feed.
    const FEED: Option<RecordType> = None;
    /// Link rows kept with the entity, as `(table, entity id column, linked id column)`; the
    /// table also has `org_id`. Written in the same transaction as every insert and update
    /// (replaced), removed with the entity. `None` (the default): no links.
    const LINKS: Option<(&'static str, &'static str, &'static str)> = None;
    /// The ids the entity links to (see [`Entity::LINKS`]).
    fn linked_ids(&self) -> Vec<String> {
        Vec::new()
    }
    /// Further columns written on each of the entity's link rows, the same on every one
    /// (see [`Entity::LINKS`]; the address index keeps the record's type and owner there).
    fn link_columns(&self) -> Vec<(&'static str, Col)> {
        Vec::new()
    }
    /// Email bodies are stored once, as content-addressed blobs referenced by the row's
    /// `text_sha256` and `html_sha256` columns, not in its document (see [`Entity::bodies`]).
    /// Every read puts them back. `false` (the default): the document is the whole record.
    const BODIES: bool = false;
    /// Trace lines appended after the row was written are kept in its `trace_tail` column (a
    /// JSON array) and put back after the document's own on every read.
    const TRACE_TAIL: bool = false;
    /// The bodies kept as blobs (text, HTML), with [`Entity::BODIES`].
    fn bodies(&self) -> [Option<&str>; 2] {
        [None, None]
    }
    /// Puts back the bodies read from blobs where the document has none.
    fn set_bodies(&mut self, _text: Option<String>, _html: Option<String>) {}
    /// Puts back the trace lines kept in `trace_tail`, after the document's own.
    fn extend_trace(&mut self, _lines: Vec<String>) {}
    /// The document stored in the row: the record without what is kept elsewhere.
    fn doc(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

/// The columns every read of `E` selects: the document, its version and timestamps, and for
/// entities with parts kept outside the document ([`Entity::BODIES`], [`Entity::TRACE_TAIL`])
/// those parts, read in the same statement (the bodies, or where a pack file holds them, by
/// correlated sub-queries on `blobs`).
pub(crate) fn select_list<E: Entity>() -> String {
    let mut s = String::from("id, doc, version, created_at, updated_at");
    if E::BODIES {
        let t = E::TABLE;
        s.push_str(&format!(
            ", {t}.text_sha256 AS text_sha256, {t}.html_sha256 AS html_sha256"
        ));
        for part in ["text", "html"] {
            s.push_str(&format!(
                ", (SELECT data FROM blobs WHERE blobs.sha256 = {t}.{part}_sha256) AS {part}_data, \
                 (SELECT {PACK_LOC} FROM blobs WHERE blobs.sha256 = {t}.{part}_sha256) AS {part}_loc"
            ));
        }
    }
    if E::TRACE_TAIL {
        s.push_str(", trace_tail");
    }
    s
}

/// A body's blob as selected: its SHA-256 (`None` when the row references none: the document
/// holds it, as rows of the earlier shape do), the row's bytes, and where a pack file holds
/// them instead ([`crate::packs::PACK_LOC`]).
pub(crate) struct BodyBlob {
    pub(crate) sha: Option<String>,
    pub(crate) data: Option<Vec<u8>>,
    pub(crate) loc: Option<String>,
}

/// A body read back from its blob, from the row or from the pack file holding it (a read of a
/// few kilobytes, from the page cache as a rule, on the calling thread); an error when the
/// referenced blob is missing.
pub(crate) fn body_of(
    entity: &'static str,
    id: &str,
    blob: BodyBlob,
    packs: Option<&std::sync::Arc<crate::packs::Packs>>,
) -> Result<Option<String>, StoreError> {
    let Some(sha) = blob.sha else {
        return Ok(None);
    };
    let corrupt = |cause: String| StoreError::Corrupt {
        entity,
        id: id.to_owned(),
        cause,
    };
    let Some(data) = blob.data else {
        return Err(corrupt(format!("body blob {sha} is missing")));
    };
    let packs = packs.map(std::sync::Arc::as_ref);
    let data = crate::packs::bytes_of(packs, &sha, data, blob.loc.as_deref())?;
    String::from_utf8(data)
        .map(Some)
        .map_err(|e| corrupt(format!("body blob {sha}: {e}")))
}

/// The trace lines kept in a row's `trace_tail` column.
pub(crate) fn trace_tail_of(
    entity: &'static str,
    id: &str,
    tail: Option<&str>,
) -> Result<Vec<String>, StoreError> {
    match tail {
        None | Some("") => Ok(Vec::new()),
        Some(t) => serde_json::from_str(t).map_err(|e| StoreError::Corrupt {
            entity,
            id: id.to_owned(),
            cause: format!("trace_tail: {e}"),
        }),
    }
}

/// Decodes a row selected with [`select_list`] into a `Stored<E>`, its outside parts put back;
/// evaluates to a `Result`.
macro_rules! decode_row {
    ($e:ty, $r:expr, $packs:expr) => {{
        let r = $r;
        (|| -> Result<$crate::entity::Stored<$e>, $crate::StoreError> {
            let id: String = sqlx::Row::try_get(r, "id")?;
            let mut s = $crate::entity::decode::<$e>(
                id.clone(),
                sqlx::Row::try_get::<&str, _>(r, "doc")?,
                sqlx::Row::try_get(r, "version")?,
                sqlx::Row::try_get(r, "created_at")?,
                sqlx::Row::try_get(r, "updated_at")?,
            )?;
            if <$e as $crate::entity::Entity>::BODIES {
                let name = <$e as $crate::entity::Entity>::NAME;
                let body = |[sha, data, loc]: [&str; 3]| {
                    let blob = $crate::entity::BodyBlob {
                        sha: sqlx::Row::try_get(r, sha)?,
                        data: sqlx::Row::try_get(r, data)?,
                        loc: sqlx::Row::try_get(r, loc)?,
                    };
                    $crate::entity::body_of(name, &id, blob, $packs)
                };
                let text = body(["text_sha256", "text_data", "text_loc"])?;
                let html = body(["html_sha256", "html_data", "html_loc"])?;
                $crate::entity::Entity::set_bodies(&mut s.value, text, html);
            }
            if <$e as $crate::entity::Entity>::TRACE_TAIL {
                let tail: Option<&str> = sqlx::Row::try_get(r, "trace_tail")?;
                let lines =
                    $crate::entity::trace_tail_of(<$e as $crate::entity::Entity>::NAME, &id, tail)?;
                if !lines.is_empty() {
                    $crate::entity::Entity::extend_trace(&mut s.value, lines);
                }
            }
            Ok(s)
        })()
    }};
}
pub(crate) use decode_row;

/// SHA-256 (hex) of a body, its blob's key.
pub(crate) fn body_sha(body: &str) -> String {
    serversync_vault::sha256_hex(body.as_bytes())
}

/// The columns written for `e`: its own, plus the body references with [`Entity::BODIES`];
/// and the bodies to store as blobs (SHA-256, text).
/// Bodies to store as blobs with a row: (SHA-256, text).
type Bodies = Vec<(String, String)>;

fn write_cols<E: Entity>(e: &E) -> (Vec<(&'static str, Col)>, Bodies) {
    let mut cols = e.columns();
    let mut blobs = Vec::new();
    if E::BODIES {
        let [text, html] = e.bodies();
        for (name, body) in [("text_sha256", text), ("html_sha256", html)] {
            let sha = body.map(body_sha);
            if let (Some(sha), Some(b)) = (&sha, body) {
                blobs.push((sha.clone(), b.to_owned()));
            }
            cols.push((name, Col::Text(sha)));
        }
    }
    (cols, blobs)
}

/// A condition of [`Store::list_where`].
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// The column equals the value (`IS NULL` for a missing value).
    Eq(&'static str, Col),
    /// The integer column is at least the value.
    AtLeast(&'static str, i64),
    /// The integer column is less than the value.
    Below(&'static str, i64),
    /// The entity links to this id (see [`Entity::LINKS`]).
    LinkedTo(String),
    /// The text column contains the value (case as stored; `%`, `_` and `\` in the value match
    /// themselves).
    Contains(&'static str, String),
}

/// The order of a listing: by id (time-ordered) ascending after a cursor, or descending
/// before one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Oldest,
    Newest,
}

/// An entity as stored, with its optimistic-concurrency version and timestamps.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<E> {
    pub value: E,
    pub version: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One page of a list, with the cursor for the next page.
#[derive(Debug, Clone)]
pub struct Page<E> {
    pub items: Vec<Stored<E>>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next: Option<String>,
}

macro_rules! bind_col {
    ($q:expr, $col:expr) => {
        match $col {
            Col::Text(v) => $q.bind(v.clone()),
            Col::Int(v) => $q.bind(*v),
            Col::Bool(v) => $q.bind(*v),
        }
    };
}

pub(crate) fn decode<E: Entity>(
    row_id: String,
    doc: &str,
    version: i64,
    c: i64,
    u: i64,
) -> Result<Stored<E>, StoreError> {
    let value = serde_json::from_str(doc).map_err(|e| StoreError::Corrupt {
        entity: E::NAME,
        id: row_id,
        cause: e.to_string(),
    })?;
    Ok(Stored {
        value,
        version,
        created_at: from_ms(c),
        updated_at: from_ms(u),
    })
}

fn to_doc<E: Entity>(e: &E) -> Result<String, StoreError> {
    e.doc().map_err(|err| StoreError::Corrupt {
        entity: E::NAME,
        id: e.id(),
        cause: err.to_string(),
    })
}

/// Replaces the link rows of the write `$w` (see [`Entity::LINKS`]) inside transaction `$tx`
/// (an insert's row has none to replace).
macro_rules! write_links_in {
    ($tx:ident, $w:expr) => {{
        let w: &$crate::entity::EntityWrite = $w;
        if let Some((table, own, _)) = w.links
            && w.update.is_some()
        {
            let del = format!("DELETE FROM {table} WHERE {own} = $1");
            sqlx::query(sqlx::AssertSqlSafe(del.as_str()))
                .bind(&w.id)
                .execute(&mut *$tx)
                .await?;
        }
        $crate::entity::insert_links_in!($tx, &[w]);
    }};
}

/// Inserts the link rows of writes of one kind (the same [`Entity::LINKS`] and link columns)
/// inside transaction `$tx`, many rows a statement.
macro_rules! insert_links_in {
    ($tx:ident, $writes:expr) => {{
        let writes: &[&$crate::entity::EntityWrite] = $writes;
        if let Some(first) = writes.first()
            && let Some((table, own, other)) = first.links
        {
            let names: String = first.link_cols.iter().map(|(n, _)| format!(", {n}")).collect();
            let per_link = 3 + first.link_cols.len();
            let links: Vec<(&$crate::entity::EntityWrite, &String)> = writes
                .iter()
                .flat_map(|w| w.link_ids.iter().map(move |l| (*w, l)))
                .collect();
            for chunk in links.chunks((30_000 / per_link).clamp(1, 200)) {
                let ins = format!(
                    "INSERT INTO {table} ({own}, {other}, org_id{names}) VALUES {} ON CONFLICT DO NOTHING",
                    $crate::only_value_rows(&*$tx, chunk.len(), per_link)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(ins));
                for (w, l) in chunk {
                    q = q.bind(&w.id).bind(*l).bind(&w.org);
                    for (_, c) in &w.link_cols {
                        q = $crate::entity::bind_col!(q, c);
                    }
                }
                q.execute(&mut *$tx).await?;
            }
        }
    }};
}

pub(crate) use {bind_col, insert_links_in, write_links_in};

/// Turns a unique-constraint violation into a readable conflict.
pub(crate) fn conflict(entity: &'static str, err: sqlx::Error) -> StoreError {
    match &err {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict {
            entity,
            detail: d.message().to_owned(),
        },
        _ => StoreError::Database(err),
    }
}

/// An insert, or an update (optionally only from an expected version), of one entity,
/// prepared from it and run inside a transaction by [`run_write_in!`]: the row, its link
/// rows and its change-feed entry. [`Store::insert`] and [`Store::update`] run one alone;
/// [`Store::commit_tracking`] runs many in one transaction.
#[derive(Debug)]
pub struct EntityWrite {
    pub(crate) sql: String,
    /// The stored document: the record without what is kept outside it.
    pub(crate) doc: String,
    /// Bodies stored as blobs with the row (SHA-256, text), see [`Entity::BODIES`].
    pub(crate) blobs: Vec<(String, String)>,
    pub(crate) cols: Vec<(&'static str, Col)>,
    pub(crate) id: String,
    pub(crate) org: Option<String>,
    pub(crate) links: Option<(&'static str, &'static str, &'static str)>,
    pub(crate) link_ids: Vec<String>,
    pub(crate) link_cols: Vec<(&'static str, Col)>,
    /// The organization and record type of the change feed, for fed entities.
    pub(crate) feed: Option<(String, RecordType)>,
    pub(crate) entity: &'static str,
    /// `None` for an insert.
    pub(crate) update: Option<Option<i64>>,
}

impl EntityWrite {
    /// The bodies stored with the row, as blobs kept for good.
    pub(crate) fn blob_set(&self) -> crate::items::Blobs<'_> {
        self.blobs
            .iter()
            .map(|(sha, body)| (sha.as_str(), crate::items::BlobIn::kept(body.as_bytes())))
            .collect()
    }

    pub fn insert<E: Entity>(e: &E) -> Result<Self, StoreError> {
        let (cols, blobs) = write_cols(e);
        let mut names = vec!["id", "org_id", "doc", "version", "created_at", "updated_at"];
        names.extend(cols.iter().map(|(n, _)| *n));
        let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            E::TABLE,
            names.join(", "),
            params.join(", ")
        );
        Self::new(e, sql, cols, blobs, None)
    }

    pub fn update<E: Entity>(e: &E, expected_version: Option<i64>) -> Result<Self, StoreError> {
        let (cols, blobs) = write_cols(e);
        let mut sets = vec![
            "doc = $1".to_owned(),
            "version = version + 1".to_owned(),
            "updated_at = $2".to_owned(),
        ];
        for (i, (n, _)) in cols.iter().enumerate() {
            sets.push(format!("{n} = ${}", i + 3));
        }
        let id_param = cols.len() + 3;
        let mut sql = format!(
            "UPDATE {} SET {} WHERE id = ${id_param}",
            E::TABLE,
            sets.join(", ")
        );
        if expected_version.is_some() {
            sql.push_str(&format!(" AND version = ${}", id_param + 1));
        }
        sql.push_str(" RETURNING version, created_at");
        Self::new(e, sql, cols, blobs, Some(expected_version))
    }

    /// Like [`EntityWrite::update`] from the stored `previous` value: when the entity links
    /// to the same ids as before, its link rows are left as they are rather than deleted and
    /// written again (most updates — a status, a result — change no link).
    pub fn update_from<E: Entity>(
        previous: &E,
        e: &E,
        expected_version: Option<i64>,
    ) -> Result<Self, StoreError> {
        let mut w = Self::update(e, expected_version)?;
        if w.links.is_some() && previous.linked_ids() == w.link_ids {
            w.links = None;
            w.link_ids.clear();
        }
        Ok(w)
    }

    fn new<E: Entity>(
        e: &E,
        sql: String,
        cols: Vec<(&'static str, Col)>,
        blobs: Vec<(String, String)>,
        update: Option<Option<i64>>,
    ) -> Result<Self, StoreError> {
        let org = e.org_id().map(|o| o.to_string());
        Ok(EntityWrite {
            sql,
            doc: to_doc(e)?,
            blobs,
            cols,
            id: e.id(),
            feed: E::FEED.zip(org.clone()).map(|(rt, o)| (o, rt)),
            org,
            links: E::LINKS,
            link_ids: e.linked_ids(),
            link_cols: e.link_columns(),
            entity: E::NAME,
            update,
        })
    }

    /// What the change feed records for this write.
    pub(crate) fn op(&self) -> serversync_model::webhook::ChangeOp {
        match self.update {
            Some(_) => serversync_model::webhook::ChangeOp::Updated,
            None => serversync_model::webhook::ChangeOp::Created,
        }
    }

    /// The error for an update that found no row at its expected version.
    pub(crate) fn not_written(&self) -> StoreError {
        match self.update {
            Some(Some(expected)) => StoreError::VersionMismatch {
                entity: self.entity,
                id: self.id.clone(),
                expected,
            },
            _ => StoreError::NotFound {
                entity: self.entity,
                id: self.id.clone(),
            },
        }
    }

    /// The stored form once written as `version` (`created`, `now`: unix ms).
    pub(crate) fn stored<E: Entity>(
        &self,
        version: i64,
        created: i64,
        now: i64,
    ) -> Result<Stored<E>, StoreError> {
        let mut s = decode::<E>(self.id.clone(), &self.doc, version, created, now)?;
        if E::BODIES {
            let body = |col: &str| {
                let sha = self.cols.iter().find_map(|(n, c)| match c {
                    Col::Text(Some(sha)) if *n == col => Some(sha),
                    _ => None,
                })?;
                self.blobs
                    .iter()
                    .find(|(s, _)| s == sha)
                    .map(|(_, b)| b.clone())
            };
            s.value.set_bodies(body("text_sha256"), body("html_sha256"));
        }
        Ok(s)
    }
}

/// Runs an [`EntityWrite`] inside the open transaction `$tx` at `$now` (unix ms); evaluates to
/// `Some((version, created_at))`, or `None` when an update found no row (or not the
/// expected version).
macro_rules! run_write_in {
    // The write alone: its organization's feed is locked and its bodies are stored already
    // ([`crate::entity::prepare_writes_in`], for many writes in one transaction).
    (prepared: $store:expr, $tx:ident, $w:expr, $now:expr) => {{
        let w: &$crate::entity::EntityWrite = $w;
        let row = $crate::entity::run_write_in!(unfed: $store, $tx, w, $now);
        if let (Some((version, _)), Some((org, rt))) = (row, &w.feed) {
            $crate::changes::record_changes_in!($store, $tx, &[(org, *rt, &w.id, w.op(), version)]);
        }
        row
    }};
    // The write alone, prepared, without its change-feed row: the caller records it (many
    // writes' rows in one statement, [`crate::changes::record_changes_in`]).
    (unfed: $store:expr, $tx:ident, $w:expr, $now:expr) => {{
        let w: &$crate::entity::EntityWrite = $w;
        let row = match w.update {
            None => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(w.sql.as_str()))
                    .bind(&w.id)
                    .bind(&w.org)
                    .bind(&w.doc)
                    .bind(1_i64)
                    .bind($now)
                    .bind($now);
                for (_, c) in &w.cols {
                    q = $crate::entity::bind_col!(q, c);
                }
                q.execute(&mut *$tx)
                    .await
                    .map_err(|e| $crate::entity::conflict(w.entity, e))?;
                Some((1_i64, $now))
            }
            Some(expected) => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(w.sql.as_str()))
                    .bind(&w.doc)
                    .bind($now);
                for (_, c) in &w.cols {
                    q = $crate::entity::bind_col!(q, c);
                }
                q = q.bind(&w.id);
                if let Some(v) = expected {
                    q = q.bind(v);
                }
                match q
                    .fetch_optional(&mut *$tx)
                    .await
                    .map_err(|e| $crate::entity::conflict(w.entity, e))?
                {
                    Some(r) => Some((
                        sqlx::Row::try_get::<i64, _>(&r, "version")?,
                        sqlx::Row::try_get::<i64, _>(&r, "created_at")?,
                    )),
                    None => None,
                }
            }
        };
        if row.is_some() {
            $crate::entity::write_links_in!($tx, w);
        }
        row
    }};
    ($store:expr, $tx:ident, $w:expr, $now:expr) => {{
        let w: &$crate::entity::EntityWrite = $w;
        if let Some((org, _)) = &w.feed {
            $crate::changes::lock_feed_in!($store, $tx, org);
        }
        // The bodies, stored once: a body already stored (the item's, for the activity made
        // from it) is not written again. Kept (`attachment`): retention never removes them.
        $crate::items::store_blobs_in!($tx, &w.blob_set(), $now);
        $crate::entity::run_write_in!(prepared: $store, $tx, w, $now)
    }};
}
pub(crate) use run_write_in;

/// Before many writes in the open transaction `$tx` ([`run_write_in!`] with `prepared:`):
/// locks the feed of each of their organizations once, in order, and stores all their
/// bodies with one set of blob statements.
macro_rules! prepare_writes_in {
    ($store:expr, $tx:ident, $writes:expr, $now:expr) => {{
        let writes: &[$crate::entity::EntityWrite] = $writes;
        let orgs: std::collections::BTreeSet<&String> = writes
            .iter()
            .filter_map(|w| w.feed.as_ref().map(|(org, _)| org))
            .collect();
        for org in orgs {
            $crate::changes::lock_feed_in!($store, $tx, org);
        }
        let mut blobs = $crate::items::Blobs::new();
        for w in writes {
            blobs.extend(w.blob_set());
        }
        $crate::items::store_blobs_in!($tx, &blobs, $now);
    }};
}
pub(crate) use prepare_writes_in;

/// Inserts new records of one kind inside the open transaction `$tx`, many rows a statement:
/// `$writes` are inserts with the same statement and link columns, their feeds locked and
/// bodies stored ([`prepare_writes_in!`]). The rows, then their link rows, then their
/// change-feed entries, each a few statements for the whole set.
macro_rules! insert_many_in {
    ($store:expr, $tx:ident, $writes:expr, $now:expr) => {{
        let writes: &[&$crate::entity::EntityWrite] = $writes;
        if let Some(first) = writes.first() {
            let per_row = 6 + first.cols.len();
            let head = first.sql.split(" VALUES ").next().unwrap_or_default();
            for chunk in writes.chunks((30_000 / per_row).clamp(1, 100)) {
                let sql = format!(
                    "{head} VALUES {}",
                    $crate::only_value_rows(&*$tx, chunk.len(), per_row)
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for w in chunk {
                    q = q
                        .bind(&w.id)
                        .bind(&w.org)
                        .bind(&w.doc)
                        .bind(1_i64)
                        .bind($now)
                        .bind($now);
                    for (_, c) in &w.cols {
                        q = $crate::entity::bind_col!(q, c);
                    }
                }
                q.execute(&mut *$tx)
                    .await
                    .map_err(|e| $crate::entity::conflict(first.entity, e))?;
            }
            $crate::entity::insert_links_in!($tx, writes);
            let fed: Vec<_> = writes
                .iter()
                .filter_map(|w| {
                    w.feed
                        .as_ref()
                        .map(|(org, rt)| (org, *rt, &w.id, w.op(), 1_i64))
                })
                .collect();
            $crate::changes::record_changes_in!($store, $tx, &fed);
        }
    }};
}
pub(crate) use insert_many_in;

/// Runs many writes inside the open transaction `$tx`: feeds locked and bodies stored once
/// ([`prepare_writes_in!`]), the inserts of each kind many rows a statement
/// ([`insert_many_in!`]), then the updates one by one. Returns from the enclosing function
/// with the write's error when an update finds no row at its expected version.
macro_rules! run_writes_in {
    ($store:expr, $tx:ident, $writes:expr, $now:expr) => {{
        let writes: &[$crate::entity::EntityWrite] = $writes;
        $crate::entity::prepare_writes_in!($store, $tx, writes, $now);
        // Inserts grouped by statement and link columns, in the order each kind first comes.
        let mut kinds: Vec<(String, Vec<&$crate::entity::EntityWrite>)> = Vec::new();
        for w in writes.iter().filter(|w| w.update.is_none()) {
            let key = format!("{}|{:?}", w.sql, w.link_cols.iter().map(|(n, _)| *n).collect::<Vec<_>>());
            match kinds.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) => g.push(w),
                None => kinds.push((key, vec![w])),
            }
        }
        for (_, g) in &kinds {
            $crate::entity::insert_many_in!($store, $tx, g, $now);
        }
        let mut fed = Vec::new();
        for w in writes.iter().filter(|w| w.update.is_some()) {
            let Some((version, _)) = $crate::entity::run_write_in!(unfed: $store, $tx, w, $now)
            else {
                return Err(w.not_written());
            };
            if let Some((org, rt)) = &w.feed {
                fed.push((org, *rt, &w.id, w.op(), version));
            }
        }
        $crate::changes::record_changes_in!($store, $tx, &fed);
    }};
}
pub(crate) use run_writes_in;

impl Store {
    /// Inserts a new entity.
    pub async fn insert<E: Entity>(&self, e: &E) -> Result<Stored<E>, StoreError> {
        self.insert_audited(e, None).await
    }

    /// Inserts a new entity and, in the same transaction, an audit entry.
    pub async fn insert_audited<E: Entity>(
        &self,
        e: &E,
        audit: Option<NewAuditEntry>,
    ) -> Result<Stored<E>, StoreError> {
        let w = EntityWrite::insert(e)?;
        let now = now_ms();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            run_write_in!(self, tx, &w, now);
            if let Some(a) = audit {
                crate::audit::append_in!(tx, a);
            }
            tx.commit().await?;
        });
        w.stored(1, now, now)
    }

    pub async fn get<E: Entity>(&self, id: &str) -> Result<Option<Stored<E>>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE id = $1",
            select_list::<E>(),
            E::TABLE
        );
        dispatch_read!(&self.db, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await?;
            row.map(|r| decode_row!(E, &r, self.packs())).transpose()
        })
    }

    /// The entities with these ids that exist (in no particular order), read in chunks.
    pub(crate) async fn get_many<E: Entity>(
        &self,
        ids: &[String],
    ) -> Result<Vec<Stored<E>>, StoreError> {
        /// Placeholders per query: well under SQLite's and PostgreSQL's bind limits.
        const CHUNK: usize = 500;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {} FROM {} WHERE id IN ({})",
                select_list::<E>(),
                E::TABLE,
                placeholders.join(", ")
            );
            dispatch_read!(&self.db, pool => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
                for id in chunk {
                    q = q.bind(id);
                }
                for r in q.fetch_all(pool).await? {
                    out.push(decode_row!(E, &r, self.packs())?);
                }
            });
        }
        Ok(out)
    }

    /// Like [`Store::get`], but a missing entity is an error.
    pub async fn fetch<E: Entity>(&self, id: &str) -> Result<Stored<E>, StoreError> {
        self.get(id).await?.ok_or_else(|| StoreError::NotFound {
            entity: E::NAME,
            id: id.to_owned(),
        })
    }

    /// Replaces an entity. With `expected_version`, fails if someone else changed it meanwhile.
    pub async fn update<E: Entity>(
        &self,
        e: &E,
        expected_version: Option<i64>,
    ) -> Result<Stored<E>, StoreError> {
        self.update_audited(e, expected_version, None).await
    }

    pub async fn update_audited<E: Entity>(
        &self,
        e: &E,
        expected_version: Option<i64>,
        audit: Option<NewAuditEntry>,
    ) -> Result<Stored<E>, StoreError> {
        let w = EntityWrite::update(e, expected_version)?;
        let now = now_ms();
        let row: Option<(i64, i64)> = dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let row = run_write_in!(self, tx, &w, now);
            if row.is_some() {
                if let Some(a) = audit {
                    crate::audit::append_in!(tx, a);
                }
                tx.commit().await?;
            }
            row
        });
        match row {
            Some((version, created)) => w.stored(version, created, now),
            None => match expected_version {
                Some(v) if self.get::<E>(&e.id()).await?.is_some() => {
                    Err(StoreError::VersionMismatch {
                        entity: E::NAME,
                        id: e.id(),
                        expected: v,
                    })
                }
                _ => Err(StoreError::NotFound {
                    entity: E::NAME,
                    id: e.id(),
                }),
            },
        }
    }

    /// Runs several entity writes and their audit entries in one transaction: all or nothing
    /// (an update that does not find its expected version fails the whole).
    pub async fn write_all_audited(
        &self,
        writes: &[EntityWrite],
        audit: Vec<NewAuditEntry>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            run_writes_in!(self, tx, writes, now);
            for a in audit {
                crate::audit::append_in!(tx, a);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Deletes an entity; `false` if it did not exist.
    pub async fn delete<E: Entity>(
        &self,
        id: &str,
        audit: Option<NewAuditEntry>,
    ) -> Result<bool, StoreError> {
        if let Some(rt) = E::FEED {
            return self.delete_in_feed::<E>(id, rt, audit).await;
        }
        let sql = format!("DELETE FROM {} WHERE id = $1", E::TABLE);
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let n = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).execute(&mut *tx).await?.rows_affected();
            if let Some((table, own, _)) = E::LINKS {
                let del = format!("DELETE FROM {table} WHERE {own} = $1");
                sqlx::query(sqlx::AssertSqlSafe(del.as_str())).bind(id).execute(&mut *tx).await?;
            }
            if n > 0
                && let Some(a) = audit
            {
                crate::audit::append_in!(tx, a);
            }
            tx.commit().await?;
            Ok(n > 0)
        })
    }

    /// Deletes a CRM record and writes its `deleted` change (with the record as it was) in the
    /// same transaction.
    async fn delete_in_feed<E: Entity>(
        &self,
        id: &str,
        rt: RecordType,
        audit: Option<NewAuditEntry>,
    ) -> Result<bool, StoreError> {
        let org_sql = format!("SELECT org_id FROM {} WHERE id = $1", E::TABLE);
        let sql = format!(
            "DELETE FROM {} WHERE id = $1 RETURNING org_id, doc, version{}",
            E::TABLE,
            if E::BODIES {
                ", text_sha256, html_sha256"
            } else {
                ""
            }
        );
        dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            if self.backend() == crate::Backend::Postgres {
                // The organization's feed lock comes before the row lock (see `changes`).
                let org: Option<String> = sqlx::query(sqlx::AssertSqlSafe(org_sql.as_str()))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|r| r.try_get::<String, _>("org_id"))
                    .transpose()?;
                match org {
                    Some(org) => lock_feed_in!(self, tx, org),
                    None => return Ok(false),
                }
            }
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(&mut *tx).await?;
            let Some(row) = row else {
                return Ok(false);
            };
            let org: String = row.try_get("org_id")?;
            let mut doc: String = row.try_get("doc")?;
            let version: i64 = row.try_get("version")?;
            if E::BODIES {
                // The deleted record's last document, whole: its row is gone, so the feed
                // cannot read it later.
                let mut bodies = Vec::new();
                for col in ["text_sha256", "html_sha256"] {
                    let sha: Option<String> = row.try_get(col)?;
                    let (data, loc) = match &sha {
                        Some(sha) => {
                            let sql = format!("SELECT data, {PACK_LOC} AS loc FROM blobs WHERE sha256 = $1");
                            match sqlx::query(sqlx::AssertSqlSafe(sql)).bind(sha).fetch_optional(&mut *tx).await? {
                                Some(r) => (Some(r.try_get::<Vec<u8>, _>("data")?), r.try_get::<Option<String>, _>("loc")?),
                                None => (None, None),
                            }
                        }
                        None => (None, None),
                    };
                    let blob = crate::entity::BodyBlob { sha, data, loc };
                    bodies.push(crate::entity::body_of(E::NAME, id, blob, self.packs())?);
                }
                let mut e = decode::<E>(id.to_owned(), &doc, version, 0, 0)?.value;
                let html = bodies.pop().flatten();
                let text = bodies.pop().flatten();
                e.set_bodies(text, html);
                doc = serde_json::to_string(&e).map_err(|err| StoreError::Corrupt {
                    entity: E::NAME,
                    id: id.to_owned(),
                    cause: err.to_string(),
                })?;
            }
            if let Some((table, own, _)) = E::LINKS {
                let del = format!("DELETE FROM {table} WHERE {own} = $1");
                sqlx::query(sqlx::AssertSqlSafe(del.as_str())).bind(id).execute(&mut *tx).await?;
            }
            record_change_in!(self, tx, &org, rt, id, ChangeOp::Deleted, version, &doc);
            if let Some(a) = audit {
                crate::audit::append_in!(tx, a);
            }
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Lists entities of an organization (or all, for organizations themselves) in id order —
    /// ids are time-ordered — matching every `(column, value)` filter, `limit` at a time after
    /// the cursor `after`.
    pub async fn list<E: Entity>(
        &self,
        org: Option<OrgId>,
        filters: &[(&'static str, Col)],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<E>, StoreError> {
        let filters: Vec<Filter> = filters
            .iter()
            .map(|(n, c)| Filter::Eq(n, c.clone()))
            .collect();
        self.list_where(org, &filters, after, limit).await
    }

    /// Like [`Store::list`], with any [`Filter`]s.
    pub async fn list_where<E: Entity>(
        &self,
        org: Option<OrgId>,
        filters: &[Filter],
        after: Option<&str>,
        limit: u32,
    ) -> Result<Page<E>, StoreError> {
        self.list_ordered(org, filters, after, limit, Order::Oldest)
            .await
    }

    /// Like [`Store::list_where`], newest first: `limit` at a time before the cursor `before`
    /// (the page's `next` is the cursor of the next, older, page).
    pub async fn list_newest<E: Entity>(
        &self,
        org: Option<OrgId>,
        filters: &[Filter],
        before: Option<&str>,
        limit: u32,
    ) -> Result<Page<E>, StoreError> {
        self.list_ordered(org, filters, before, limit, Order::Newest)
            .await
    }

    async fn list_ordered<E: Entity>(
        &self,
        org: Option<OrgId>,
        filters: &[Filter],
        after: Option<&str>,
        limit: u32,
        order: Order,
    ) -> Result<Page<E>, StoreError> {
        let limit = limit.clamp(1, 1000);
        let mut sql = format!(
            "SELECT {} FROM {}{}",
            select_list::<E>(),
            E::TABLE,
            where_clause_ordered::<E>(org, filters, after, order)
        );
        sql.push_str(&format!(
            " ORDER BY id{} LIMIT {}",
            match order {
                Order::Oldest => "",
                Order::Newest => " DESC",
            },
            limit + 1
        ));
        let mut items: Vec<Stored<E>> = dispatch_read!(&self.db, pool => {
            let q = bind_filters!(sqlx::query(sqlx::AssertSqlSafe(sql.as_str())), E, org, filters, after);
            let rows = q.fetch_all(pool).await?;
            rows.iter()
                .map(|r| decode_row!(E, r, self.packs()))
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|s| s.value.id())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// How many entities match the filters, counted by the database (no document is read
    /// when an index covers the filters).
    pub async fn count_where<E: Entity>(
        &self,
        org: Option<OrgId>,
        filters: &[Filter],
    ) -> Result<u64, StoreError> {
        let sql = format!(
            "SELECT COUNT(*) FROM {}{}",
            E::TABLE,
            where_clause::<E>(org, filters, None)
        );
        let n: i64 = dispatch_read!(&self.db, pool => {
            let q = bind_filters!(sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())), E, org, filters, None::<&str>);
            q.fetch_one(pool).await?
        });
        Ok(n.max(0) as u64)
    }

    /// Every entity matching the filters (for small sets such as roles).
    /// A fingerprint of every row of `E` (how many, the sum of their versions, the latest
    /// created and updated): an insert, an update or a delete changes it. One aggregate query,
    /// for a caller that keeps a listing and reads it again only when this changes.
    pub async fn fingerprint<E: Entity>(&self) -> Result<[i64; 4], StoreError> {
        let sql = format!(
            "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(version), 0) AS BIGINT) AS v, \
             COALESCE(MAX(created_at), 0) AS c, COALESCE(MAX(updated_at), 0) AS u FROM {}",
            E::TABLE
        );
        dispatch_read!(&self.db, pool => {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_one(pool).await?;
            Ok([
                r.try_get::<i64, _>("n")?,
                r.try_get::<i64, _>("v")?,
                r.try_get::<i64, _>("c")?,
                r.try_get::<i64, _>("u")?,
            ])
        })
    }

    pub async fn list_all<E: Entity>(
        &self,
        org: Option<OrgId>,
        filters: &[(&'static str, Col)],
    ) -> Result<Vec<Stored<E>>, StoreError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list::<E>(org, filters, after.as_deref(), 1000).await?;
            out.extend(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }
}

/// ` WHERE …` for a listing's organization, filters and keyset position (`$n` parameters in
/// the order [`bind_filters!`] binds them), or nothing when there is no condition.
fn where_clause<E: Entity>(org: Option<OrgId>, filters: &[Filter], after: Option<&str>) -> String {
    where_clause_ordered::<E>(org, filters, after, Order::Oldest)
}

/// [`where_clause`], with the keyset position before the cursor for [`Order::Newest`].
fn where_clause_ordered<E: Entity>(
    org: Option<OrgId>,
    filters: &[Filter],
    after: Option<&str>,
    order: Order,
) -> String {
    let mut conds = Vec::new();
    let mut n = 0;
    let mut next_param = || {
        n += 1;
        format!("${n}")
    };
    if org.is_some() {
        conds.push(format!("org_id = {}", next_param()));
    }
    for f in filters {
        match f {
            Filter::Eq(name, Col::Text(None) | Col::Int(None)) => {
                conds.push(format!("{name} IS NULL"))
            }
            Filter::Eq(name, _) => conds.push(format!("{name} = {}", next_param())),
            Filter::AtLeast(name, _) => conds.push(format!("{name} >= {}", next_param())),
            Filter::Below(name, _) => conds.push(format!("{name} < {}", next_param())),
            Filter::Contains(name, _) => {
                conds.push(format!("{name} LIKE {} ESCAPE '\\'", next_param()))
            }
            Filter::LinkedTo(_) => match E::LINKS {
                Some((table, own, other)) => conds.push(format!(
                    "id IN (SELECT {own} FROM {table} WHERE {other} = {})",
                    next_param()
                )),
                None => conds.push("1 = 0".to_owned()),
            },
        }
    }
    if after.is_some() {
        let op = match order {
            Order::Oldest => ">",
            Order::Newest => "<",
        };
        conds.push(format!("id {op} {}", next_param()));
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// `%value%` for `LIKE … ESCAPE '\'`, the value's own `%`, `_` and `\` escaped.
fn like_pattern(v: &str) -> String {
    let mut p = String::with_capacity(v.len() + 2);
    p.push('%');
    for c in v.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Binds the parameters of [`where_clause`] to a query, in its order.
macro_rules! bind_filters {
    ($q:expr, $e:ty, $org:expr, $filters:expr, $after:expr) => {{
        let mut q = $q;
        if let Some(o) = $org {
            q = q.bind(o.to_string());
        }
        for f in $filters {
            match f {
                Filter::Eq(_, Col::Text(None) | Col::Int(None)) => {}
                Filter::Eq(_, c) => q = bind_col!(q, c),
                Filter::AtLeast(_, v) | Filter::Below(_, v) => q = q.bind(*v),
                Filter::Contains(_, v) => q = q.bind(like_pattern(v)),
                Filter::LinkedTo(v) => {
                    if <$e as Entity>::LINKS.is_some() {
                        q = q.bind(v.clone());
                    }
                }
            }
        }
        if let Some(a) = $after {
            q = q.bind(a.to_owned());
        }
        q
    }};
}
use bind_filters;

// ---- the model's entities -------------------------------------------------------------------

macro_rules! entity {
    ($t:ty, $table:literal, $name:literal, |$s:ident| $org:expr, [$($col:literal => $val:expr),* $(,)?]) => {
        entity!($t, $table, $name, None, |$s| $org, [$($col => $val),*], None, |_s| Vec::new(), |_s| Vec::new());
    };
    ($t:ty, $table:literal, $name:literal, feed $rt:ident, |$s:ident| $org:expr, [$($col:literal => $val:expr),* $(,)?]) => {
        entity!($t, $table, $name, Some(RecordType::$rt), |$s| $org, [$($col => $val),*], None, |_s| Vec::new(), |_s| Vec::new());
    };
    ($t:ty, $table:literal, $name:literal, feed $rt:ident, |$s:ident| $org:expr, [$($col:literal => $val:expr),* $(,)?], links $links:expr => $ids:expr) => {
        entity!($t, $table, $name, Some(RecordType::$rt), |$s| $org, [$($col => $val),*], Some($links), |$s| $ids, |_s| Vec::new());
    };
    // A record with email addresses the tracker resolves: its rows in the address index.
    ($t:ty, $table:literal, $name:literal, $feed:expr, |$s:ident| $org:expr, [$($col:literal => $val:expr),* $(,)?], addresses $kind:literal => |$a:ident| $addrs:expr, owner $owner:expr, disabled $dis:expr) => {
        entity!($t, $table, $name, $feed, |$s| $org, [$($col => $val),*], Some(crate::lookups::ADDRESS_LINKS), |$a| crate::lookups::address_ids($addrs), |$a| crate::lookups::address_columns($kind, $owner, $dis));
    };
    ($t:ty, $table:literal, $name:literal, $feed:expr, |$s:ident| $org:expr, [$($col:literal => $val:expr),* $(,)?], $links:expr, |$ls:ident| $ids:expr, |$lc:ident| $lcols:expr) => {
        impl Entity for $t {
            const TABLE: &'static str = $table;
            const NAME: &'static str = $name;
            const FEED: Option<RecordType> = $feed;
            const LINKS: Option<(&'static str, &'static str, &'static str)> = $links;
            #[allow(unused_variables)]
            fn linked_ids(&self) -> Vec<String> {
                let $ls = self;
                $ids
            }
            #[allow(unused_variables)]
            fn link_columns(&self) -> Vec<(&'static str, Col)> {
                let $lc = self;
                $lcols
            }
            fn id(&self) -> String {
                self.id.to_string()
            }
            #[allow(unused_variables)]
            fn org_id(&self) -> Option<OrgId> {
                let $s = self;
                $org
            }
            #[allow(unused_variables)]
            fn columns(&self) -> Vec<(&'static str, Col)> {
                let $s = self;
                vec![$(($col, $val)),*]
            }
        }
    };
}

entity!(Organization, "organizations", "organization", |s| None, ["name" => Col::text(&s.name)]);
entity!(User, "users", "user", None, |s| Some(s.org_id), ["email" => Col::text(s.email.to_lowercase())],
    addresses "user" => |a| std::iter::once(&a.email), owner Some(a.id), disabled a.disabled);
entity!(Queue, "queues", "queue", None, |s| Some(s.org_id), ["email" => Col::text(s.email.to_lowercase())],
    addresses "queue" => |a| std::iter::once(&a.email), owner Some(a.owner_id), disabled false);
entity!(Role, "roles", "role", |s| Some(s.org_id), ["name" => Col::text(&s.name)]);
entity!(EmailServerProfile, "profiles", "email server profile", |s| Some(s.org_id), [
    "name" => Col::text(&s.name),
    "server_type" => Col::text(wire_name(&s.server_type)),
    "is_default" => Col::Bool(s.is_default),
]);
entity!(Mailbox, "mailboxes", "mailbox", |s| Some(s.org_id), [
    "email" => Col::text(s.email.to_lowercase()),
    "owner_id" => Col::text(s.owner_id),
    "regarding_id" => Col::text(match s.regarding { MailboxRegarding::User(u) => u.to_string(), MailboxRegarding::Queue(q) => q.to_string() }),
    "profile_id" => Col::opt_text(s.profile_id),
    "approval" => Col::text(wire_name(&s.approval)),
    "overall_status" => Col::text(wire_name(&s.overall_status())),
]);
entity!(Account, "accounts", "account", Some(RecordType::Account), |s| Some(s.org_id), ["owner_id" => Col::text(s.owner_id)],
    addresses "account" => |a| &a.emails, owner Some(a.owner_id), disabled false);
entity!(Contact, "contacts", "contact", Some(RecordType::Contact), |s| Some(s.org_id), ["owner_id" => Col::text(s.owner_id)],
    addresses "contact" => |a| &a.emails, owner Some(a.owner_id), disabled false);
entity!(Lead, "leads", "lead", Some(RecordType::Lead), |s| Some(s.org_id), ["owner_id" => Col::text(s.owner_id)],
    addresses "lead" => |a| &a.emails, owner Some(a.owner_id), disabled false);
/// An email activity: its bodies are blobs (stored once, shared with the mail item it was made
/// from), so its document — rewritten whenever a mailbox is linked — stays small.
impl Entity for EmailActivity {
    const TABLE: &'static str = "activities";
    const NAME: &'static str = "email activity";
    const FEED: Option<RecordType> = Some(RecordType::EmailActivity);
    const LINKS: Option<(&'static str, &'static str, &'static str)> =
        Some(("activity_mailboxes", "activity_id", "mailbox_id"));
    const BODIES: bool = true;
    fn linked_ids(&self) -> Vec<String> {
        self.mailbox_ids.iter().map(|m| m.to_string()).collect()
    }
    fn id(&self) -> String {
        self.id.to_string()
    }
    fn org_id(&self) -> Option<OrgId> {
        Some(self.org_id)
    }
    fn columns(&self) -> Vec<(&'static str, Col)> {
        let s = self;
        vec![
            ("kind", Col::text("email")),
            ("status", Col::text(wire_name(&s.status))),
            ("owner_id", Col::text(s.owner_id)),
            ("message_id", Col::opt_text(ActivityKey::MessageId.of(s))),
            (
                "regarding_id",
                Col::opt_text(s.regarding.map(|r| wire_name(&r))),
            ),
            (
                "conversation_id",
                Col::opt_text(ActivityKey::Conversation.of(s)),
            ),
            (
                "tracking_token",
                Col::opt_text(ActivityKey::TrackingToken.of(s)),
            ),
            ("subject_key", Col::opt_text(ActivityKey::SubjectKey.of(s))),
            (
                "occurred_at",
                Col::Int(Some(
                    s.received_at
                        .or(s.sent_at)
                        .unwrap_or(s.created_at)
                        .timestamp_millis(),
                )),
            ),
            (
                "from_addr",
                Col::opt_text(
                    s.parties
                        .iter()
                        .find(|p| p.role == serversync_model::crm::PartyRole::From)
                        .map(|p| p.address.to_lowercase()),
                ),
            ),
            ("send_mailbox", Col::opt_text(s.send_due().map(|(m, _)| m))),
            (
                "due_at",
                Col::Int(s.send_due().map(|(_, t)| t.timestamp_millis())),
            ),
        ]
    }
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
    fn doc(&self) -> serde_json::Result<String> {
        serde_json::to_string(&EmailActivity {
            text_body: None,
            html_body: None,
            ..self.clone()
        })
    }
}
entity!(Appointment, "activities", "appointment", feed Appointment, |s| Some(s.org_id), [
    "kind" => Col::text("appointment"),
    "status" => Col::text(wire_name(&s.state)),
    "owner_id" => Col::text(s.owner_id),
    "message_id" => Col::Text(None),
    "regarding_id" => Col::opt_text(s.regarding.map(|r| wire_name(&r))),
    "conversation_id" => Col::Text(None),
    "occurred_at" => Col::Int(Some(s.starts_at.timestamp_millis())),
]);
entity!(Task, "activities", "task", feed Task, |s| Some(s.org_id), [
    "kind" => Col::text("task"),
    "status" => Col::text(wire_name(&s.state)),
    "owner_id" => Col::text(s.owner_id),
    "message_id" => Col::Text(None),
    "regarding_id" => Col::opt_text(s.regarding.map(|r| wire_name(&r))),
    "conversation_id" => Col::Text(None),
    "occurred_at" => Col::Int(Some(s.due_at.unwrap_or(s.created_at).timestamp_millis())),
]);
entity!(QueueItem, "queue_items", "queue item", feed QueueItem, |s| Some(s.org_id), [
    "queue_id" => Col::text(s.queue_id),
    "activity_id" => Col::text(s.activity_id),
]);
entity!(Alert, "alerts", "alert", |s| Some(s.org_id), [
    "severity" => Col::text(wire_name(&s.severity)),
    "mailbox_id" => Col::opt_text(s.mailbox_id),
    "profile_id" => Col::opt_text(s.profile_id),
]);
entity!(Job, "jobs", "job", |s| Some(s.org_id), [
    "kind" => Col::text(wire_name(&s.kind)),
    "status" => Col::text(wire_name(&s.status)),
]);

entity!(ApiToken, "api_tokens", "API token", |s| Some(s.org_id), [
    "user_id" => Col::text(s.user_id),
    "token_hash" => Col::text(&s.token_hash),
    // Unix ms until which the token lets its user in: 0 once revoked, i64::MAX for never.
    "live_until" => Col::Int(Some(if s.revoked {
        0
    } else {
        s.expires_at.map_or(i64::MAX, |e| e.timestamp_millis())
    })),
    // A web session's expiry, for the pruner; NULL for other tokens.
    "session_until" => Col::Int(
        (s.kind == serversync_model::auth::TokenKind::Session
            || s.name == serversync_model::auth::WEB_SESSION)
            .then_some(s.expires_at)
            .flatten()
            .map(|e| e.timestamp_millis())
    ),
]);

entity!(
    WebhookEndpoint,
    "webhooks",
    "webhook endpoint",
    |s| Some(s.org_id),
    []
);

/// A mail domain: one row per domain (its id), so a domain belongs to one organization.
impl Entity for Domain {
    const TABLE: &'static str = "domains";
    const NAME: &'static str = "domain";
    fn id(&self) -> String {
        self.domain.clone()
    }
    fn org_id(&self) -> Option<OrgId> {
        Some(self.org_id)
    }
}

/// Organization email settings: one row per organization, keyed by the organization id.
impl Entity for EmailSettings {
    const TABLE: &'static str = "email_settings";
    const NAME: &'static str = "email settings";
    fn id(&self) -> String {
        self.org_id.to_string()
    }
    fn org_id(&self) -> Option<OrgId> {
        Some(self.org_id)
    }
}
