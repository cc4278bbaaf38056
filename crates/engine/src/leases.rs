//! One renewal for all of a worker's long-held leases: instead of a timer and a write per
//! lease, tasks register the leases they hold ([`Leases::keep`]) and one engine-wide task
//! ([`Leases::run`]) renews them all every third of the lease time with
//! [`Store::renew_leases`] (one statement per thousand). A lease that was not renewed —
//! taken over, released, expired — is marked lost, and the task holding it learns it from its
//! [`Kept`] (at once, through a watch channel) and stops. Writes stay fenced by the lease
//! epoch in the store either way; this only makes the task stop soon.

use serversync_store::{LeaseGuard, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The leases this worker keeps renewed. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    owner: String,
    ttl: Duration,
    held: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    epoch: i64,
    /// When the lease was last known to run for `ttl` from (taken or renewed).
    since: Instant,
    lost: watch::Sender<bool>,
}

/// A lease registered for renewal; dropping it stops the renewal (release it separately).
pub(crate) struct Kept {
    leases: Leases,
    resource: String,
    epoch: i64,
    lost: watch::Receiver<bool>,
}

impl Kept {
    /// Whether the lease is gone (another worker may hold it now).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Completes when the lease is gone.
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        // A closed channel means the entry was dropped: lost as well.
        let _ = rx.wait_for(|lost| *lost).await;
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let mut held = self.leases.lock();
        if held
            .get(&self.resource)
            .is_some_and(|e| e.epoch == self.epoch)
        {
            held.remove(&self.resource);
        }
    }
}

impl Leases {
    pub fn new(owner: &str, ttl: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                owner: owner.to_owned(),
                ttl,
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.inner.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How often [`Self::run`] renews: a third of the lease time, so a lease survives two
    /// failed renewals.
    pub fn period(&self) -> Duration {
        self.inner.ttl / 3
    }

    /// Registers a lease just taken (by this worker, for the engine's lease time).
    pub fn keep(&self, g: &LeaseGuard) -> Kept {
        let (tx, rx) = watch::channel(false);
        self.lock().insert(
            g.resource.clone(),
            Entry {
                epoch: g.epoch,
                since: Instant::now(),
                lost: tx,
            },
        );
        Kept {
            leases: self.clone(),
            resource: g.resource.clone(),
            epoch: g.epoch,
            lost: rx,
        }
    }

    /// How many leases are kept now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// One renewal of every kept lease. Those the store did not renew are marked lost; when
    /// the store cannot be reached, those whose time has run out since their last renewal.
    pub async fn renew_once(&self, store: &Store) {
        let started = Instant::now();
        let asked: Vec<(String, i64)> = self
            .lock()
            .iter()
            .map(|(r, e)| (r.clone(), e.epoch))
            .collect();
        if asked.is_empty() {
            return;
        }
        match store
            .renew_leases(&self.inner.owner, &asked, self.inner.ttl)
            .await
        {
            Ok(renewed) => {
                let renewed: std::collections::HashSet<(String, i64)> =
                    renewed.into_iter().collect();
                let mut held = self.lock();
                for lease in &asked {
                    let Some(e) = held.get_mut(&lease.0).filter(|e| e.epoch == lease.1) else {
                        continue;
                    };
                    if renewed.contains(lease) {
                        e.since = started;
                    } else {
                        tracing::info!(resource = %lease.0, epoch = lease.1, "lease lost");
                        e.lost.send_replace(true);
                        held.remove(&lease.0);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, leases = asked.len(), "renewing the leases failed");
                let ttl = self.inner.ttl;
                self.lock().retain(|resource, e| {
                    if e.since.elapsed() < ttl {
                        return true;
                    }
                    tracing::info!(%resource, epoch = e.epoch, "lease ran out while the store was unreachable");
                    e.lost.send_replace(true);
                    false
                });
            }
        }
        metrics::histogram!("serversync_lease_renewal_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    /// Renews every kept lease each [`Self::period`] until `stop`.
    pub async fn run(self, store: Store, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.period());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.renew_once(&store).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_vault::MasterKey;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url, MasterKey::generate().unwrap())
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn one_renewal_keeps_the_held_and_tells_the_holder_of_a_lost_lease() {
        let (_d, store) = store().await;
        let ttl = Duration::from_secs(60);
        let leases = Leases::new("me", ttl);
        let a = store
            .acquire_lease("mailbox:a", "me", ttl)
            .await
            .unwrap()
            .unwrap();
        let b = store
            .acquire_lease("mailbox:b", "me", ttl)
            .await
            .unwrap()
            .unwrap();
        let (ka, kb) = (leases.keep(&a), leases.keep(&b));
        // b is released behind the task's back and taken by another worker.
        store.release_lease(&b).await.unwrap();
        store
            .acquire_lease("mailbox:b", "other", ttl)
            .await
            .unwrap()
            .unwrap();
        leases.renew_once(&store).await;
        assert!(!ka.is_lost(), "a is still held");
        assert!(kb.is_lost(), "b was taken over");
        // The holder waiting on it is woken.
        tokio::time::timeout(Duration::from_secs(5), kb.lost())
            .await
            .expect("the loss is told at once");
        assert_eq!(leases.len(), 1, "only a is renewed from now on");
        assert!(
            store
                .acquire_lease("mailbox:a", "other", ttl)
                .await
                .unwrap()
                .is_none(),
            "a is still this worker's"
        );
        // A task that ends drops its registration: nothing is renewed for it any more.
        drop(ka);
        assert_eq!(leases.len(), 0);
    }
}
