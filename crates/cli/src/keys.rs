//! `serversync keys rotate`: a new master key without ever losing a secret.
//!
//! Order of operations, so a crash at any point loses nothing:
//! 1. the new key is written to `<key file>.new` (or `--out`), synced;
//! 2. every secret is re-encrypted under it in one database transaction;
//! 3. the old key file becomes `<key file>.previous` and `.new` becomes the key file.
//!
//! A crash between 2 and 3 leaves a database sealed under `.new`: the next start notices that the
//! key file no longer matches, finds `.new` matching, and finishes step 3.

use crate::config::{Config, MASTER_KEY_ENV};
use anyhow::{Context, Result, bail};
use serversync_store::Store;
use serversync_vault::{KeySource, MasterKey};
use std::path::{Path, PathBuf};

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub async fn rotate(cfg: Config, out: Option<PathBuf>) -> Result<()> {
    let store = crate::serve::open_store(&cfg).await?;
    let old_id = store.master_key().id().to_owned();
    let key_file = cfg.key_file();
    let from_env = matches!(store.master_key().source(), KeySource::Env(_));
    let new_key = MasterKey::generate()?;
    let new_id = new_key.id().to_owned();

    let staged = if from_env {
        let Some(out) = out else {
            bail!(
                "the master key comes from {MASTER_KEY_ENV}: give --out FILE to receive the new key"
            );
        };
        out
    } else {
        let staged = with_suffix(&key_file, ".new");
        if staged.exists() {
            bail!(
                "{} exists: an earlier rotation did not finish; start serversync once (it completes \
                 the rotation) or remove the file if it belongs to no database",
                staged.display()
            );
        }
        staged
    };
    new_key.write_new_file(&staged)?;

    let (store, count) = match store.rotate_master_key(new_key).await {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e).context("key rotation failed; nothing was changed");
        }
    };
    store.close().await;

    if from_env {
        println!(
            "re-encrypted {count} secrets under key {new_id} (was {old_id}); set {MASTER_KEY_ENV} \
             to the content of {} before starting serversync again",
            staged.display()
        );
    } else {
        promote(&key_file, &staged)?;
        println!(
            "re-encrypted {count} secrets under key {new_id} (was {old_id}); {} holds the new key, \
             the old one is in {}",
            key_file.display(),
            with_suffix(&key_file, ".previous").display()
        );
    }
    Ok(())
}

fn promote(key_file: &Path, staged: &Path) -> Result<()> {
    let previous = with_suffix(key_file, ".previous");
    if key_file.exists() {
        std::fs::rename(key_file, &previous).with_context(|| {
            format!(
                "cannot move {} to {}",
                key_file.display(),
                previous.display()
            )
        })?;
    }
    std::fs::rename(staged, key_file)
        .with_context(|| format!("cannot move {} to {}", staged.display(), key_file.display()))
}

/// Called when the key file does not match the database: if `<key file>.new` does, an earlier
/// rotation committed but did not swap the files; finish it.
pub async fn finish_interrupted_rotation(url: &str, key_file: &Path) -> Result<Option<Store>> {
    let staged = with_suffix(key_file, ".new");
    let Ok(text) = std::fs::read_to_string(&staged) else {
        return Ok(None);
    };
    let key = MasterKey::from_base64(&text, KeySource::File(key_file.to_owned()))?;
    match Store::open(url, key).await {
        Ok(store) => {
            promote(key_file, &staged)?;
            tracing::warn!(key_file = %key_file.display(), "finished an interrupted master key rotation");
            Ok(Some(store))
        }
        Err(_) => Ok(None),
    }
}
