//! The store: the only place that speaks SQL.
//!
//! One API over two backends, chosen by the database URL: embedded **SQLite** (a file created on
//! first start; the default) and **PostgreSQL** (`postgres://…`, for several workers). The
//! backends are a closed enum, so every operation is a visible `match` (see [`dispatch!`]);
//! the SQL is shared wherever both dialects accept it and split only where they do not.
//!
//! Entities are stored as a JSON document plus the columns that queries filter on ([`Entity`]).
//! Secrets are sealed with the master key before they reach a table ([`secrets`]). Work
//! ownership uses leases with fencing epochs ([`lease`]). Writes of CRM records also append to
//! the change feed in the same transaction ([`changes`]), which webhook endpoints follow.

mod audit;
mod changes;
mod counters;
mod data_migration;
mod entity;
mod error;
mod items;
mod lease;
mod lookups;
mod outgoing;
mod packs;
mod remote_links;
mod retention;
mod secrets;
mod sync_state;
mod webhooks;

pub use audit::NewAuditEntry;
pub use entity::{Col, Entity, EntityWrite, Filter, Page, Stored};
pub use error::StoreError;
pub use items::{ItemInsert, ItemRow, Remap};
pub use lease::LeaseGuard;
pub use lookups::{ActivityKey, AddressMatch};
pub use remote_links::Expected;
pub use retention::DatabaseSize;
pub use webhooks::{DueWebhook, NewDelivery};

use serversync_model::webhook::ChangeOrigin;
use serversync_vault::MasterKey;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqliteDb),
    Postgres(PgPool),
}

/// SQLite's two pools: every write goes through the one connection of `writer`, so writers
/// queue in the pool (first come, first served) instead of meeting in SQLite's lock — no
/// writer spins in the busy handler or fails with "database is locked" when a read
/// transaction cannot be upgraded — and reads that need no transaction run on `readers`
/// (read-only connections: in WAL mode they read the last commit while the writer writes).
#[derive(Debug, Clone)]
pub(crate) struct SqliteDb {
    pub(crate) writer: SqlitePool,
    pub(crate) readers: SqlitePool,
    /// Copies the WAL into the database file on its own connection (none in memory).
    checkpointer: Option<Arc<Checkpointer>>,
    /// Raw messages, bodies and attachments in pack files beside the database (none in
    /// memory).
    pub(crate) packs: Option<Arc<packs::Packs>>,
}

/// How often the checkpointer copies what the WAL holds into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// WAL frames (32 MB at SQLite's 4 KB pages) past which the checkpointer has the WAL started
/// again from its beginning.
const WAL_RESTART_FRAMES: i64 = 8192;

/// The size SQLite cuts the WAL file back to when it starts the WAL again.
const WAL_SIZE_LIMIT: &str = "67108864";

/// The writer does not checkpoint (`wal_autocheckpoint = 0`): copying the WAL into the
/// database file — as much work as the write itself for large messages — would run inside a
/// commit on the writer's thread, and every writer behind it would wait. A task does it
/// instead, every [`CHECKPOINT_EVERY`], on a connection of its own: a passive checkpoint,
/// which never blocks the writer or the readers.
///
/// A passive checkpoint alone never lets the WAL start again while mail is written without a
/// pause: SQLite restarts the WAL only at a writer's first write after a checkpoint copied all
/// of it, and a continuous writer has always added more by then (the ingest benchmark's WAL
/// grew to 900 MB for 240 MB of mail, every frame appended to new space in the file). Past
/// [`WAL_RESTART_FRAMES`] a restarting checkpoint follows the passive one, queued on the
/// writer like any write (a checkpoint of its own connection would take SQLite's write lock
/// from under the writer, whose transactions then fail with "database is locked"): it copies
/// what the passive one left (usually the little written since; on a loaded machine, where
/// the passive copy never catches up with a writer that does not pause, more — the writers
/// then wait for it, which bounds the WAL), waits for the readers to leave the WAL
/// (milliseconds), and the next write starts the WAL again, SQLite cutting the file back to
/// [`WAL_SIZE_LIMIT`].
/// Stopped when the last handle of the store is dropped or the store is closed.
#[derive(Debug)]
struct Checkpointer {
    pool: SqlitePool,
    task: tokio::task::AbortHandle,
}

impl Checkpointer {
    fn start(pool: SqlitePool, writer: SqlitePool) -> Self {
        let task = tokio::spawn({
            let pool = pool.clone();
            async move {
                let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                loop {
                    tick.tick().await;
                    if pool.is_closed() {
                        return;
                    }
                    if let Err(e) = Self::checkpoint(&pool, &writer).await {
                        tracing::warn!(error = %e, "checkpointing the SQLite WAL failed; trying again");
                    }
                }
            }
        })
        .abort_handle();
        Checkpointer { pool, task }
    }

    async fn checkpoint(pool: &SqlitePool, writer: &SqlitePool) -> Result<(), sqlx::Error> {
        use sqlx::Row;
        let r = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(pool)
            .await?;
        let frames: i64 = r.try_get(1)?;
        if frames >= WAL_RESTART_FRAMES {
            sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                .execute(writer)
                .await?;
        }
        Ok(())
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A PostgreSQL pool of at most `max` connections. A connection given back drops the buffers
/// a large statement grew (sqlx keeps them otherwise): a test-and-enable job's document or an
/// ingest batch of 16 MB would stay allocated on every connection that ever carried one.
fn pg_pool_options(max: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(10))
        .after_release(|conn, _| {
            Box::pin(async move {
                sqlx::Connection::shrink_buffers(conn);
                Ok(true)
            })
        })
}

/// Runs `$body` with `$pool` bound to the backend's pool — on SQLite the single writer's — ;
/// the body is compiled once per backend. Every statement that writes, and every transaction,
/// goes through this one.
macro_rules! dispatch {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite(db) => {
                let $pool = &db.writer;
                $body
            }
            $crate::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use dispatch;

/// Like [`dispatch!`], for a body that only reads, outside any transaction: on SQLite `$pool`
/// is the readers' pool, so reads never queue behind the writer.
macro_rules! dispatch_read {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::Db::Sqlite(db) => {
                let $pool = &db.readers;
                $body
            }
            $crate::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use dispatch_read;

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Db,
    pub(crate) key: Arc<MasterKey>,
    /// Set when storing a synchronized message failed for lack of disk space, cleared by the
    /// next committed cursor; shared by every clone (the engine writes, `/readyz` reads).
    pub(crate) storage_full: Arc<std::sync::Mutex<Option<StorageFull>>>,
    /// The origin written on the change-feed rows of this handle's writes.
    pub(crate) origin: ChangeOrigin,
}

/// The database ran out of disk space while storing synchronized mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFull {
    pub since: chrono::DateTime<chrono::Utc>,
    /// The database's own words.
    pub message: String,
}

impl Store {
    /// A handle on the same database whose writes record `origin` on the change feed (the
    /// default is [`ChangeOrigin::System`]): the API's handle says `api`, the tracker's
    /// `tracker`, a two-way syncer's `sync:<mailbox id>`.
    pub fn with_origin(&self, origin: ChangeOrigin) -> Store {
        Store {
            origin,
            ..self.clone()
        }
    }

    /// The origin this handle's writes record on the change feed.
    pub fn origin(&self) -> ChangeOrigin {
        self.origin
    }

    /// The pack files of a file-backed SQLite store (see [`packs`]).
    pub(crate) fn packs(&self) -> Option<&Arc<packs::Packs>> {
        match &self.db {
            Db::Sqlite(db) => db.packs.as_ref(),
            Db::Postgres(_) => None,
        }
    }

    /// Whether storing synchronized mail is failing for lack of disk space (since when, and
    /// the database's error), until a cursor is committed again.
    pub fn storage_full(&self) -> Option<StorageFull> {
        self.storage_full.lock().map(|g| g.clone()).unwrap_or(None)
    }

    pub(crate) fn note_write<T>(&self, r: &Result<T, StoreError>) {
        let Ok(mut g) = self.storage_full.lock() else {
            return;
        };
        match r {
            Err(e) if e.is_storage_full() && g.is_none() => {
                tracing::error!(error = %e, "the database is out of disk space: synchronized mail cannot be stored until space is freed");
                *g = Some(StorageFull {
                    since: chrono::Utc::now(),
                    message: e.to_string(),
                });
            }
            Ok(_) if g.is_some() => {
                tracing::info!("the database has disk space again");
                *g = None;
            }
            _ => {}
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("key", &self.key)
            .field("origin", &self.origin)
            .finish()
    }
}

/// Removes the password from a database URL so it can be shown.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:********@{host}")
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Connects to `url` (`sqlite://path`, `sqlite:path`, a plain file path, or
    /// `postgres://…`), applies pending migrations and checks that `key` is the master key this
    /// database's secrets were sealed with. A first start seals a check value with `key`.
    pub async fn open(url: &str, key: MasterKey) -> Result<Store, StoreError> {
        let store = Self::connect(url, key).await?;
        store.migrate().await?;
        store.check_master_key().await?;
        Ok(store)
    }

    /// Connects without migrating or checking the key.
    pub async fn connect(url: &str, key: MasterKey) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        let unreachable = |e: sqlx::Error| StoreError::Unreachable {
            url: shown.clone(),
            cause: e.to_string(),
        };
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::BadUrl {
                    url: shown.clone(),
                    cause: e.to_string(),
                })?
                // Every statement planned for its values: the store's statements are prepared
                // and reused, and after five runs PostgreSQL may switch to one generic plan —
                // for "an organization's emails in status S, newest first" a backward scan of
                // every activity, 70 ms at 100,000 activities for a status that has none
                // (the pages benchmark found it), where the value's own plan takes 0.1 ms.
                .options([("plan_cache_mode", "force_custom_plan")]);
            let pool = pg_pool_options(16)
                .connect_with(opts)
                .await
                .map_err(unreachable)?;
            Db::Postgres(pool)
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            if path.contains("://") {
                return Err(StoreError::BadUrl {
                    url: shown,
                    cause: "use postgres://… for PostgreSQL or sqlite://PATH for SQLite".into(),
                });
            }
            let private = |e: std::io::Error, what: String| StoreError::Unreachable {
                url: shown.clone(),
                cause: format!("{what}: {e}"),
            };
            let file = std::path::Path::new(path);
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                serversync_vault::create_private_dir(dir).map_err(|e| {
                    private(e, format!("cannot create directory {}", dir.display()))
                })?;
            }
            // Every tracked email is in this file: readable by its owner only, whatever the
            // umask (SQLite gives the -wal and -shm files the database file's mode).
            if !path.starts_with(':') && !path.contains("mode=memory") {
                serversync_vault::create_private_file(file)
                    .map_err(|e| private(e, format!("cannot create {}", file.display())))?;
            }
            let opts = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let writer = SqlitePoolOptions::new()
                .max_connections(1)
                // Kept open for good: the WAL and its index stay, for the read-only readers.
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                // Writers wait their turn here, not in SQLite's busy handler.
                .acquire_timeout(Duration::from_secs(60))
                // A connection must never go back to the pool inside a transaction: when a
                // write fails with SQLITE_FULL (a full disk) SQLite can leave the transaction
                // open, and that connection then holds the write lock for good — every other
                // writer gets "database is locked", even after space is freed. `BEGIN` fails
                // on such a connection, which is then closed (and so rolled back).
                .after_release(|conn, _| {
                    Box::pin(async move {
                        use sqlx::{Connection, Executor};
                        // SQLite may roll a transaction back by itself (on SQLITE_FULL); sqlx
                        // then still counts it open, and would refuse the next `BEGIN
                        // IMMEDIATE` on this connection for good.
                        if conn.is_in_transaction() || conn.execute("BEGIN").await.is_err() {
                            tracing::warn!(
                                "closing an SQLite connection left inside a transaction"
                            );
                            return Ok(false);
                        }
                        Ok(conn.execute("ROLLBACK").await.is_ok())
                    })
                })
                .connect_with(
                    opts.clone()
                        .pragma("wal_autocheckpoint", "0")
                        // A batch of synchronized mail writes more pages than the default
                        // page cache (2 MB) holds. SQLite then spills dirty pages to the WAL in
                        // the middle of the transaction, copying each into a statement journal
                        // first: 12 % of the writer's time in the ingest benchmark. Spilling
                        // now starts at 32 MB of dirty pages; the cache shrinks back to its
                        // size at commit.
                        .pragma("cache_spill", "8192")
                        // Statement journals (the pages a statement inside a transaction
                        // changes, kept to undo that statement alone) in memory, not in a
                        // temporary file: their writes were 12 % of `serve`'s time sending
                        // email (the outgoing benchmark).
                        .pragma("temp_store", "memory")
                        // The writer starts the WAL again; the file is then cut back to this.
                        .pragma("journal_size_limit", WAL_SIZE_LIMIT),
                )
                .await
                .map_err(unreachable)?;
            // An in-memory database is private to its connection: there, reads go to the
            // writer too, and there is no WAL.
            let (readers, checkpointer) = if path.starts_with(':') || path.contains("mode=memory") {
                (writer.clone(), None)
            } else {
                let checkpointer = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts.clone().create_if_missing(false))
                    .await
                    .map_err(unreachable)?;
                let readers = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(
                        opts.read_only(true)
                            .create_if_missing(false)
                            // Reads are small lookups, and the kernel caches the file too:
                            // 512 KB of pages each instead of 2 MB (eight of them).
                            .pragma("cache_size", "-512"),
                    )
                    .await
                    .map_err(unreachable)?;
                (
                    readers,
                    Some(Arc::new(Checkpointer::start(checkpointer, writer.clone()))),
                )
            };
            // Raw messages, bodies and attachments beside the file (none in memory).
            let packs = checkpointer
                .as_ref()
                .map(|_| Arc::new(packs::Packs::beside(file)));
            // A database created by an earlier version may still be readable by others.
            for suffix in ["", "-wal", "-shm"] {
                let f = format!("{path}{suffix}");
                if std::path::Path::new(&f).exists() {
                    serversync_vault::make_private(std::path::Path::new(&f))
                        .map_err(|e| private(e, format!("cannot make {f} private (mode 0600)")))?;
                }
            }
            Db::Sqlite(SqliteDb {
                writer,
                readers,
                checkpointer,
                packs,
            })
        };
        Ok(Store {
            db,
            key: Arc::new(key),
            storage_full: Default::default(),
            origin: ChangeOrigin::System,
        })
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    /// Applies pending migrations: the SQL migrations, then the data migrations that move
    /// existing rows into the new shape batch by batch (resumable; see `data_migration`).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let r = match &self.db {
            Db::Sqlite(db) => SQLITE_MIGRATIONS.run(&db.writer).await,
            Db::Postgres(p) => POSTGRES_MIGRATIONS.run(p).await,
        };
        r.map_err(|e| StoreError::Migration(e.to_string()))?;
        self.migrate_data().await
    }

    /// Applies the SQL migrations up to `version` only, and no data migration: builds a
    /// database as an earlier release left it, for upgrade tests.
    #[doc(hidden)]
    pub async fn migrate_schema_to(&self, version: i64) -> Result<(), StoreError> {
        let r = match &self.db {
            Db::Sqlite(db) => SQLITE_MIGRATIONS.run_to(version, &db.writer).await,
            Db::Postgres(p) => POSTGRES_MIGRATIONS.run_to(version, p).await,
        };
        r.map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// Readiness: the database answers a query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(&self.db, pool => {
            sqlx::query("SELECT 1").execute(pool).await.map(|_| ()).map_err(StoreError::from)
        })
    }

    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(db) => {
                db.readers.close().await;
                if let Some(c) = &db.checkpointer {
                    c.task.abort();
                    c.pool.close().await;
                }
                db.writer.close().await;
            }
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// The same database through a connection pool of its own of at most `max_connections`
    /// (PostgreSQL; connections opened when first needed), so that what uses it — the API and
    /// the admin center — never waits for a connection behind the engine's sessions, which can
    /// hold all of theirs while many mailboxes reconnect at once. On SQLite every write goes
    /// through the one writer whatever the pool, so this is the same store.
    pub fn with_own_pool(&self, max_connections: u32) -> Store {
        match &self.db {
            Db::Postgres(pool) => Store {
                db: Db::Postgres(
                    pg_pool_options(max_connections.max(1))
                        .connect_lazy_with((*pool.connect_options()).clone()),
                ),
                ..self.clone()
            },
            Db::Sqlite(_) => self.clone(),
        }
    }

    /// Takes `n` connections of this store's pool (the writer's on SQLite) and holds them
    /// until the value is dropped: for tests of what happens when the pool is exhausted.
    #[doc(hidden)]
    pub async fn hold_connections(&self, n: usize) -> Result<HeldConnections, StoreError> {
        let mut held = HeldConnections::default();
        for _ in 0..n {
            match &self.db {
                Db::Postgres(p) => held.postgres.push(p.acquire().await?),
                Db::Sqlite(db) => held.sqlite.push(db.writer.acquire().await?),
            }
        }
        Ok(held)
    }

    /// The master key this store seals with.
    pub fn master_key(&self) -> &MasterKey {
        &self.key
    }
}

/// Connections held by [`Store::hold_connections`].
#[doc(hidden)]
#[derive(Default)]
pub struct HeldConnections {
    postgres: Vec<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    sqlite: Vec<sqlx::pool::PoolConnection<sqlx::Sqlite>>,
}

/// `$first, $first+1, …` for `n` values.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($first, …), (…), …`: `rows` rows of `cols` placeholders each, for a multi-row `VALUES`.
pub(crate) fn value_rows(first: usize, rows: usize, cols: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", placeholders(first + r * cols, cols)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Begins a write transaction on `pool` (the writer's on SQLite). On SQLite it takes the
/// write lock at once (`BEGIN IMMEDIATE`), waiting in SQLite's busy handler while another
/// process holds it (a CLI command, or another process's checkpointer starting the WAL
/// again). A deferred transaction that reads first could not wait there: SQLite answers its
/// first write "database is locked" at once rather than risk a deadlock.
pub(crate) async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    if DB::NAME == "SQLite" {
        pool.begin_with("BEGIN IMMEDIATE").await
    } else {
        pool.begin().await
    }
}

/// Whether statements sent on `conn` go to SQLite.
fn on_sqlite<C: sqlx::Connection>(_: &C) -> bool {
    <C::Database as sqlx::Database>::NAME == "SQLite"
}

/// [`placeholders`]`(1, n)` for a statement sent on `conn` whose only parameters they are,
/// in order. On SQLite they are anonymous (`?`): sqlx binds a numbered parameter by asking
/// SQLite its name, which walks the statement's list of names — quadratic in the parameters:
/// a change-feed insert of 4,000 took 10 % of the writer's time in the ingest benchmark.
pub(crate) fn only_placeholders<C: sqlx::Connection>(conn: &C, n: usize) -> String {
    if on_sqlite(conn) {
        vec!["?"; n].join(", ")
    } else {
        placeholders(1, n)
    }
}

/// [`value_rows`]`(1, rows, cols)` for a statement sent on `conn` whose only parameters they
/// are, in order (anonymous on SQLite: see [`only_placeholders`]).
pub(crate) fn only_value_rows<C: sqlx::Connection>(conn: &C, rows: usize, cols: usize) -> String {
    if on_sqlite(conn) {
        let row = format!("({})", vec!["?"; cols].join(", "));
        vec![row.as_str(); rows].join(", ")
    } else {
        value_rows(1, rows, cols)
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn from_ms(ms: i64) -> serversync_model::Timestamp {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
