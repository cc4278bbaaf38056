use serversync_model::{ErrorKind, ValidationErrors};
use serversync_vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database URL {url} is not valid: {cause}")]
    BadUrl { url: String, cause: String },
    #[error("cannot reach the database at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("database migration failed: {0}")]
    Migration(String),
    #[error(
        "the master key ({current}, from {source_name}) is not the key this database's secrets \
         were encrypted with (key id {expected}); nothing was changed. Supply the original key \
         (SERVERSYNC_MASTER_KEY or the key file), or restore the key file from backup"
    )]
    WrongMasterKey {
        current: String,
        expected: String,
        source_name: String,
    },
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },
    #[error("{entity} conflicts with an existing one: {detail}")]
    Conflict {
        entity: &'static str,
        detail: String,
    },
    #[error("{entity} {id} was changed by someone else (expected version {expected})")]
    VersionMismatch {
        entity: &'static str,
        id: String,
        expected: i64,
    },
    #[error("{entity} is not valid: {errors}")]
    Invalid {
        entity: &'static str,
        errors: ValidationErrors,
    },
    #[error("lease on {resource} is no longer held by this worker (epoch {epoch})")]
    LeaseLost { resource: String, epoch: i64 },
    #[error("stored {entity} {id} cannot be read: {cause}")]
    Corrupt {
        entity: &'static str,
        id: String,
        cause: String,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A pack file beside an SQLite database (raw messages, bodies, attachments) failed.
    #[error("{what} the blob pack file {path} failed: {cause}")]
    BlobFile {
        path: String,
        what: &'static str,
        cause: std::io::Error,
    },
}

impl StoreError {
    /// The database's storage is full (SQLite `SQLITE_FULL` "database or disk is full",
    /// PostgreSQL `53100 disk_full`): nothing was written, and retrying succeeds once there is
    /// space again.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(d)) => {
                matches!(d.code().as_deref(), Some("13" | "53100"))
                    || d.message().contains("database or disk is full")
            }
            StoreError::BlobFile { cause, .. } => {
                cause.kind() == std::io::ErrorKind::StorageFull
                    || cause.kind() == std::io::ErrorKind::QuotaExceeded
            }
            _ => false,
        }
    }

    /// SQLite's database is locked by another writer for longer than the busy timeout
    /// (`SQLITE_BUSY`): retrying later succeeds.
    pub fn is_busy(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(d)) => {
                matches!(d.code().as_deref(), Some("5" | "517"))
                    || d.message().contains("database is locked")
            }
            _ => false,
        }
    }

    /// The database server ended the connection (PostgreSQL shutting down or restarting:
    /// `57P01`–`57P03`, or a connection exception, class `08`): retrying succeeds once it is
    /// back.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(d)) => d
                .code()
                .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
            _ => false,
        }
    }

    /// PostgreSQL ended the transaction for contention — a deadlock it broke (`40P01`) or a
    /// serialization failure (`40001`): nothing was written, and running it again succeeds.
    pub fn is_contention(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(d)) => {
                matches!(d.code().as_deref(), Some("40P01" | "40001"))
            }
            _ => false,
        }
    }

    /// How the retry policy should treat this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Unreachable { .. } => ErrorKind::Transient,
            _ if self.is_storage_full()
                || self.is_connection_lost()
                || self.is_busy()
                || self.is_contention() =>
            {
                ErrorKind::Transient
            }
            StoreError::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => ErrorKind::Transient,
                _ => ErrorKind::Bug,
            },
            // A file the disk could not write or read now (I/O, permissions fixed by the
            // admin): tried again later.
            StoreError::BlobFile { .. } => ErrorKind::Transient,
            StoreError::BadUrl { .. } | StoreError::WrongMasterKey { .. } => ErrorKind::Config,
            StoreError::NotFound { .. }
            | StoreError::Conflict { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::Invalid { .. }
            | StoreError::LeaseLost { .. } => ErrorKind::Permanent,
            StoreError::Migration(_) | StoreError::Corrupt { .. } | StoreError::Vault(_) => {
                ErrorKind::Bug
            }
        }
    }
}
