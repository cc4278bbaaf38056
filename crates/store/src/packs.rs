//! Pack files: on a file-backed SQLite store, the raw messages, bodies and attachments that
//! intake stores are kept in append-only files beside the database
//! (`<database>-blobs/<name>.pack`), and their `blobs` row holds where (`pack`, `pack_offset`)
//! instead of the bytes.
//!
//! Why: through SQLite every byte is written twice (the WAL, then the database file by the
//! checkpoint), on the one writer's thread that every other write waits for. A pack is written
//! once, sequentially, by the task storing the batch, before the batch's transaction starts,
//! and made durable (`fdatasync`) before the rows that reference it commit: a committed row
//! always has its bytes. A batch whose transaction never commits (a crash, a message stored
//! already) leaves its bytes unreferenced in the pack, where they cost disk space only.
//!
//! Each store handle appends to a pack of its own (a new name per process and per
//! [`PACK_LIMIT`]), so two processes on one database never write the same file. Removing a
//! blob (raw-message retention) frees its range with `fallocate(PUNCH_HOLE)`; the file keeps
//! its length, sparse. A read of an item or an activity reads its packed bodies here (a
//! few kilobytes each, from the page cache as a rule), beside the row's query.

use crate::StoreError;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where a pack file holds a blob, as one column of a query on `blobs`: `pack:offset:size`,
/// NULL when the row holds the bytes. Read back by [`bytes_of`].
pub(crate) const PACK_LOC: &str = "blobs.pack || ':' || blobs.pack_offset || ':' || blobs.size";

/// A blob's bytes as selected with [`PACK_LOC`]: the row's own (`data`), or, when a pack holds
/// them (`loc`), read from it on the calling thread. `what` names the blob in errors.
pub(crate) fn bytes_of(
    packs: Option<&Packs>,
    what: &str,
    data: Vec<u8>,
    loc: Option<&str>,
) -> Result<Vec<u8>, StoreError> {
    let Some(loc) = loc else {
        return Ok(data);
    };
    let corrupt = |cause: String| StoreError::Corrupt {
        entity: "blob",
        id: what.to_owned(),
        cause,
    };
    let packs = packs.ok_or_else(|| {
        corrupt(format!(
            "it is in pack file {loc:?}, and this database has none"
        ))
    })?;
    let mut at = loc.rsplitn(3, ':');
    let (Some(size), Some(offset), Some(pack)) = (at.next(), at.next(), at.next()) else {
        return Err(corrupt(format!("pack location {loc:?}")));
    };
    let (Ok(offset), Ok(size)) = (offset.parse(), size.parse()) else {
        return Err(corrupt(format!("pack location {loc:?}")));
    };
    packs.read(pack, offset, size)
}

/// Runs `f` on the blocking pool; a task that stopped (panicked) is an error about `id`.
pub(crate) async fn blocking<T: Send + 'static>(
    id: &str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Corrupt {
            entity: "blob pack",
            id: id.to_owned(),
            cause: format!("stopped: {e}"),
        })?
}

/// A pack file is closed for appends past this size, and a new one started.
const PACK_LIMIT: u64 = 1 << 30;

/// The pack files of one SQLite database.
#[derive(Debug)]
pub(crate) struct Packs {
    dir: PathBuf,
    current: Mutex<Option<Current>>,
}

#[derive(Debug)]
struct Current {
    name: String,
    file: Arc<File>,
    len: u64,
}

impl Packs {
    /// The packs beside the database file `db` (`<db>-blobs/`), created on first append.
    pub(crate) fn beside(db: &Path) -> Packs {
        let mut dir = db.as_os_str().to_owned();
        dir.push("-blobs");
        Packs {
            dir: PathBuf::from(dir),
            current: Mutex::new(None),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pack"))
    }

    /// Appends `parts` (a batch's blobs) one after the other to this handle's pack and makes
    /// them durable; the pack's name and where they start. The bytes are written from where
    /// they are, on the calling thread (into the page cache: a copy like any other, and no
    /// second copy of the batch for another thread), and synced (`fdatasync`, the wait on the
    /// disk) on the blocking pool.
    pub(crate) async fn append(
        self: &Arc<Self>,
        parts: &[&[u8]],
    ) -> Result<(String, i64), StoreError> {
        // The range is taken under the lock, written and synced outside it: batches of
        // several mailboxes append side by side.
        let (name, file, start) = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            let c = match cur.take() {
                Some(c) if c.len < PACK_LIMIT => cur.insert(c),
                _ => cur.insert(self.create()?),
            };
            let start = c.len;
            c.len += parts.iter().map(|p| p.len() as u64).sum::<u64>();
            (c.name.clone(), c.file.clone(), start)
        };
        let mut at = start;
        for part in parts {
            file.write_all_at(part, at)
                .map_err(|e| self.error(&name, "writing", e))?;
            at += part.len() as u64;
        }
        let (packs, synced) = (self.clone(), name.clone());
        blocking(&name, move || {
            file.sync_data()
                .map_err(|e| packs.error(&synced, "writing", e))
        })
        .await?;
        Ok((name, start as i64))
    }

    /// A new pack, named by a time-ordered UUID; its directory entry made durable.
    fn create(&self) -> Result<Current, StoreError> {
        serversync_vault::create_private_dir(&self.dir)
            .map_err(|e| self.error("", "creating the directory of", e))?;
        let name = uuid::Uuid::now_v7().simple().to_string();
        let path = self.path(&name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.error(&name, "creating", e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.error(&name, "syncing the directory of", e))?;
        Ok(Current {
            name,
            file: Arc::new(file),
            len: 0,
        })
    }

    /// The `size` bytes at `offset` of pack `name`. Blocking.
    pub(crate) fn read(&self, name: &str, offset: i64, size: i64) -> Result<Vec<u8>, StoreError> {
        let io = |e: std::io::Error| self.error(name, "reading", e);
        let file = File::open(self.path(checked(name)?)).map_err(io)?;
        let mut buf = vec![0; usize::try_from(size).unwrap_or(0)];
        file.read_exact_at(&mut buf, u64::try_from(offset).unwrap_or(0))
            .map_err(io)?;
        Ok(buf)
    }

    /// Frees the ranges of removed blobs (`fallocate` punching holes; the files keep their
    /// length). A range that cannot be freed costs disk space only: logged. Blocking.
    pub(crate) fn punch(&self, ranges: &[(String, i64, i64)]) {
        for (name, offset, size) in ranges {
            let r = checked(name).and_then(|n| {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(self.path(n))
                    .map_err(|e| self.error(n, "opening", e))?;
                rustix::fs::fallocate(
                    &file,
                    rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
                    u64::try_from(*offset).unwrap_or(0),
                    u64::try_from(*size).unwrap_or(0),
                )
                .map_err(|e| self.error(n, "freeing a range of", e.into()))
            });
            if let Err(e) = r {
                tracing::warn!(error = %e, "a removed blob's space in its pack file was not freed");
            }
        }
    }

    /// Bytes the pack files take on disk (allocated blocks: freed ranges do not count).
    pub(crate) fn disk_bytes(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        dir.filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.blocks() * 512)
            .sum()
    }

    fn error(&self, name: &str, what: &'static str, e: std::io::Error) -> StoreError {
        StoreError::BlobFile {
            path: match name {
                "" => self.dir.display().to_string(),
                n => self.path(n).display().to_string(),
            },
            what,
            cause: e,
        }
    }
}

/// A pack name as this module makes them (hex digits): a name read from the database never
/// reaches outside the pack directory.
fn checked(name: &str) -> Result<&str, StoreError> {
    if !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(name)
    } else {
        Err(StoreError::Corrupt {
            entity: "blob",
            id: name.chars().take(64).collect(),
            cause: "the pack name is not one this store makes".into(),
        })
    }
}
