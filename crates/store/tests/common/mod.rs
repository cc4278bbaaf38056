//! What every store test file shares: the database one test runs on.

use serversync_store::Backend;
use serversync_testkit::{PgDatabase, TestEnv};

/// Keeps the database of one test alive: a temporary SQLite file, or a fresh PostgreSQL
/// database of the test environment.
pub enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

impl Db {
    pub async fn new(backend: Backend) -> Db {
        match backend {
            Backend::Sqlite => Db::Sqlite(tempfile::tempdir().unwrap()),
            Backend::Postgres => Db::Postgres(TestEnv::from_env().pg_database().await.unwrap()),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}", dir.path().join("serversync.db").display()),
            Db::Postgres(db) => db.url().to_owned(),
        }
    }

    /// The SQLite database's file (none on PostgreSQL).
    #[allow(dead_code)] // not every test file looks at the file itself
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self {
            Db::Sqlite(dir) => Some(dir.path().join("serversync.db")),
            Db::Postgres(_) => None,
        }
    }

    /// The pack files beside the SQLite database (`<file>-blobs/*.pack`), sorted; none yet
    /// (or on PostgreSQL): empty.
    #[allow(dead_code)] // not every test file looks at the packs
    pub fn pack_files(&self) -> Vec<std::path::PathBuf> {
        let Some(file) = self.sqlite_file() else {
            return Vec::new();
        };
        let mut dir = file.into_os_string();
        dir.push("-blobs");
        let mut files: Vec<_> = std::fs::read_dir(std::path::PathBuf::from(dir))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort();
        files
    }
}
