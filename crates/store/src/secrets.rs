//! Secrets sealed under the master key, and master-key checks and rotation.

use crate::{Store, StoreError, dispatch, dispatch_read, now_ms};
use serversync_model::{OrgId, Secret, SecretId};
use serversync_vault::{MasterKey, Sealed};
use sqlx::Row;

/// The value sealed in the keyring row to recognise the master key.
const KEY_CHECK: &[u8] = b"serversync master key check v1";
const KEY_CHECK_AAD: &[u8] = b"keyring";

fn aad(id: &str) -> Vec<u8> {
    format!("secret:{id}").into_bytes()
}

impl Store {
    /// Seals and stores a new secret, returning its id. The plaintext never reaches the table.
    pub async fn put_secret(
        &self,
        org: Option<OrgId>,
        secret: &Secret,
    ) -> Result<SecretId, StoreError> {
        let id = SecretId::new();
        let sealed = self.key.seal_secret(secret, &aad(&id.to_string()))?;
        let now = now_ms();
        dispatch!(&self.db, pool => {
            sqlx::query("INSERT INTO secrets (id, org_id, key_id, nonce, ciphertext, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)")
                .bind(id.to_string())
                .bind(org.map(|o| o.to_string()))
                .bind(&sealed.key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(id)
    }

    /// Replaces the value of an existing secret.
    pub async fn replace_secret(&self, id: SecretId, secret: &Secret) -> Result<(), StoreError> {
        let sealed = self.key.seal_secret(secret, &aad(&id.to_string()))?;
        let n = dispatch!(&self.db, pool => {
            sqlx::query("UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3, updated_at = $4 WHERE id = $5")
                .bind(&sealed.key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(now_ms())
                .bind(id.to_string())
                .execute(pool)
                .await?
                .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound {
                entity: "secret",
                id: id.to_string(),
            });
        }
        Ok(())
    }

    /// Opens a stored secret.
    pub async fn get_secret(&self, id: SecretId) -> Result<Secret, StoreError> {
        let sealed = dispatch_read!(&self.db, pool => {
            let row = sqlx::query("SELECT key_id, nonce, ciphertext FROM secrets WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?;
            match row {
                None => return Err(StoreError::NotFound { entity: "secret", id: id.to_string() }),
                Some(r) => Sealed { key_id: r.try_get("key_id")?, nonce: r.try_get("nonce")?, ciphertext: r.try_get("ciphertext")? },
            }
        });
        Ok(self.key.open_secret(&sealed, &aad(&id.to_string()))?)
    }

    pub async fn delete_secret(&self, id: SecretId) -> Result<(), StoreError> {
        dispatch!(&self.db, pool => {
            sqlx::query("DELETE FROM secrets WHERE id = $1").bind(id.to_string()).execute(pool).await?;
        });
        Ok(())
    }

    /// Verifies the master key against the keyring row, creating the row on first start.
    /// A wrong key is reported and nothing is written.
    pub(crate) async fn check_master_key(&self) -> Result<(), StoreError> {
        let row: Option<Sealed> = dispatch!(&self.db, pool => {
            sqlx::query("SELECT key_id, nonce, ciphertext FROM keyring WHERE id = 1")
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<Sealed, sqlx::Error> {
                    Ok(Sealed { key_id: r.try_get("key_id")?, nonce: r.try_get("nonce")?, ciphertext: r.try_get("ciphertext")? })
                })
                .transpose()?
        });
        match row {
            Some(sealed) => match self.key.open(&sealed, KEY_CHECK_AAD) {
                Ok(v) if v == KEY_CHECK => Ok(()),
                _ => Err(StoreError::WrongMasterKey {
                    current: self.key.id().to_owned(),
                    expected: sealed.key_id,
                    source_name: self.key.source().to_string(),
                }),
            },
            None => {
                let sealed = self.key.seal(KEY_CHECK, KEY_CHECK_AAD)?;
                dispatch!(&self.db, pool => {
                    sqlx::query("INSERT INTO keyring (id, key_id, nonce, ciphertext, rotated_at) VALUES (1, $1, $2, $3, $4) ON CONFLICT (id) DO NOTHING")
                        .bind(&sealed.key_id)
                        .bind(&sealed.nonce)
                        .bind(&sealed.ciphertext)
                        .bind(now_ms())
                        .execute(pool)
                        .await?;
                });
                // Someone else may have won the race with another key: check again.
                Box::pin(self.check_master_key()).await
            }
        }
    }

    /// Re-encrypts every secret and the key check under `new_key` in one transaction, and
    /// returns a store that uses the new key plus the number of secrets re-encrypted. If
    /// anything fails, nothing changes and the old key stays valid.
    pub async fn rotate_master_key(self, new_key: MasterKey) -> Result<(Store, u64), StoreError> {
        let old = self.key.clone();
        let check = new_key.seal(KEY_CHECK, KEY_CHECK_AAD)?;
        let count = dispatch!(&self.db, pool => {
            let mut tx = crate::begin(pool).await?;
            let rows = sqlx::query("SELECT id, key_id, nonce, ciphertext FROM secrets ORDER BY id")
                .fetch_all(&mut *tx)
                .await?;
            let mut n = 0u64;
            for r in rows {
                let id: String = r.try_get("id")?;
                let sealed = Sealed { key_id: r.try_get("key_id")?, nonce: r.try_get("nonce")?, ciphertext: r.try_get("ciphertext")? };
                let plain = old.open(&sealed, &aad(&id))?;
                let resealed = new_key.seal(&plain, &aad(&id))?;
                sqlx::query("UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3, updated_at = $4 WHERE id = $5")
                    .bind(&resealed.key_id)
                    .bind(&resealed.nonce)
                    .bind(&resealed.ciphertext)
                    .bind(now_ms())
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
                n += 1;
            }
            let updated = sqlx::query("UPDATE keyring SET key_id = $1, nonce = $2, ciphertext = $3, rotated_at = $4 WHERE id = 1 AND key_id = $5")
                .bind(&check.key_id)
                .bind(&check.nonce)
                .bind(&check.ciphertext)
                .bind(now_ms())
                .bind(old.id())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if updated != 1 {
                return Err(StoreError::WrongMasterKey {
                    current: old.id().to_owned(),
                    expected: "another key".into(),
                    source_name: old.source().to_string(),
                });
            }
            tx.commit().await?;
            n
        });
        Ok((
            Store {
                db: self.db,
                key: std::sync::Arc::new(new_key),
                storage_full: self.storage_full,
                origin: self.origin,
            },
            count,
        ))
    }

    /// Key id recorded in the database (the fingerprint of the key that sealed its secrets).
    pub async fn stored_key_id(&self) -> Result<Option<String>, StoreError> {
        Ok(dispatch_read!(&self.db, pool => {
            sqlx::query("SELECT key_id FROM keyring WHERE id = 1").fetch_optional(pool).await?
                .map(|r| r.try_get::<String, _>("key_id")).transpose()?
        }))
    }
}
