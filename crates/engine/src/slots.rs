//! Connection slots: a profile's "maximum concurrent connections" across every worker. A
//! slot is a lease `conn:<scope>:<n>` (n < max) held while a connection is open. Incoming
//! sessions use the scope `profile:<id>` or `mailbox:<id>`; SMTP submission has its own,
//! `smtp:profile:<id>`, so mailboxes waiting in IDLE never starve sending.

use serversync_store::{LeaseGuard, Store, StoreError};
use std::time::Duration;

pub(crate) struct ConnSlot(LeaseGuard);

impl ConnSlot {
    /// Takes a free slot of `scope` (`max` of them), trying them from a random start so
    /// workers spread out; `None` when every slot is taken.
    pub async fn acquire_in(
        store: &Store,
        scope: &str,
        max: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<ConnSlot>, StoreError> {
        let max = max.max(1);
        let start = (jitter_seed() % u64::from(max)) as u32;
        for i in 0..max {
            let n = (start + i) % max;
            if let Some(g) = store
                .acquire_lease(&format!("conn:{scope}:{n}"), owner, ttl)
                .await?
            {
                return Ok(Some(ConnSlot(g)));
            }
        }
        Ok(None)
    }

    /// The slot's lease.
    pub fn lease(&self) -> &LeaseGuard {
        &self.0
    }

    pub async fn renew(&self, store: &Store, ttl: Duration) -> Result<(), StoreError> {
        store.renew_lease(&self.0, ttl).await
    }

    pub async fn release(self, store: &Store) {
        let _ = store.release_lease(&self.0).await;
    }
}

/// A random number, to spread workers over slots and to jitter reconnect delays.
pub(crate) fn jitter_seed() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}
