//! The one way the engine runs a pipeline: find the due work, take a lease on each unit,
//! spawn a task per unit, and drain the tasks at shutdown.
//!
//! A pipeline (incoming mail per mailbox, outgoing mail per sending mailbox, webhook
//! deliveries per endpoint, and the appointments/contacts/tasks sync to come) says only what
//! is due, the lease resource of a unit, and how to run a unit under its lease; its task
//! renews the lease itself and releases it when it ends. The [`Supervisor`] keeps at most one
//! task per unit in this process, and for pipelines that share work fairly among live workers
//! takes at most its share and hands the surplus back.

use serversync_store::{LeaseGuard, Store, StoreError};
use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a pipeline tells the [`Supervisor`].
pub(crate) trait Pipeline: Send + Sync + 'static {
    /// What one task works on (a mailbox, a webhook endpoint).
    type Id: Copy + Eq + Hash + Display + Send + Sync + 'static;
    /// For logs: "mailbox", "sender", "webhook".
    const NAME: &'static str;
    /// How long a task is waited for at shutdown before the engine goes on without it.
    const DRAIN: Duration;
    /// Whether the live workers share the due units: each takes at most due ÷ workers
    /// (rounded up) and stops what is above that, so a worker that joins gets work at once.
    const FAIR_SHARE: bool;

    /// The units that have work now, in the order they should be taken.
    fn due(&self) -> impl Future<Output = Result<Vec<Self::Id>, StoreError>> + Send;
    /// The lease that makes one worker the only one working on `id`.
    fn resource(id: Self::Id) -> String;
    /// Works on `id` under `lease` until `stop` or until there is nothing left; releases the
    /// lease when done.
    fn run(
        &self,
        id: Self::Id,
        lease: LeaseGuard,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static;
}

/// The tasks of one pipeline in this process.
pub(crate) struct Supervisor<P: Pipeline> {
    pipeline: P,
    store: Store,
    /// The identity the leases are taken under, and how long each lasts without renewal.
    worker_id: String,
    lease_ttl: Duration,
    running: HashMap<P::Id, (JoinHandle<()>, CancellationToken)>,
}

impl<P: Pipeline> Supervisor<P> {
    pub(crate) fn new(store: Store, worker_id: &str, lease_ttl: Duration, pipeline: P) -> Self {
        Self {
            pipeline,
            store,
            worker_id: worker_id.to_owned(),
            lease_ttl,
            running: HashMap::new(),
        }
    }

    /// One look for due work: forgets finished tasks, hands back the surplus above the fair
    /// share (for fair pipelines), and starts a task for every due unit whose lease it gets.
    /// `workers` is the number of live workers, this one included.
    pub(crate) async fn tick(&mut self, workers: u64, stop: &CancellationToken) {
        self.running.retain(|_, (task, _)| !task.is_finished());
        let due = match self.pipeline.due().await {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(pipeline = P::NAME, error = %e, "looking for due work failed");
                return;
            }
        };
        let share = if P::FAIR_SHARE {
            due.len().div_ceil(workers.max(1) as usize)
        } else {
            usize::MAX
        };
        let active = || self.running.iter().filter(|(_, (_, s))| !s.is_cancelled());
        let surplus = active().count().saturating_sub(share);
        for (id, (_, task_stop)) in active().take(surplus) {
            tracing::info!(pipeline = P::NAME, %id, share, "handing the work over to another worker");
            task_stop.cancel();
        }
        for id in due {
            if self.running.contains_key(&id) || self.running.len() >= share {
                continue;
            }
            match self
                .store
                .acquire_lease(&P::resource(id), &self.worker_id, self.lease_ttl)
                .await
            {
                Ok(Some(lease)) => {
                    let task_stop = stop.child_token();
                    let task = tokio::spawn(self.pipeline.run(id, lease, task_stop.clone()));
                    self.running.insert(id, (task, task_stop));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(pipeline = P::NAME, %id, error = %e, "taking the lease failed")
                }
            }
        }
    }

    /// Stops every task (through the token each was given) and waits for each at most
    /// [`Pipeline::DRAIN`].
    pub(crate) async fn drain(self) {
        for (_, stop) in self.running.values() {
            stop.cancel();
        }
        for (id, (task, _)) in self.running {
            if tokio::time::timeout(P::DRAIN, task).await.is_err() {
                tracing::warn!(pipeline = P::NAME, %id, drain_s = P::DRAIN.as_secs(), "a task did not stop in time");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serversync_vault::MasterKey;
    use std::sync::{Arc, Mutex};

    /// Units 0..n are due; each task records that it ran and then waits for its stop.
    struct Fake {
        due: Vec<u32>,
        started: Arc<Mutex<Vec<u32>>>,
        store: Store,
    }

    impl Pipeline for Fake {
        type Id = u32;
        const NAME: &'static str = "fake";
        const DRAIN: Duration = Duration::from_secs(5);
        const FAIR_SHARE: bool = true;

        async fn due(&self) -> Result<Vec<u32>, StoreError> {
            Ok(self.due.clone())
        }
        fn resource(id: u32) -> String {
            format!("fake:{id}")
        }
        fn run(
            &self,
            id: u32,
            lease: LeaseGuard,
            stop: CancellationToken,
        ) -> impl Future<Output = ()> + Send + 'static {
            let (started, store) = (self.started.clone(), self.store.clone());
            async move {
                started.lock().unwrap().push(id);
                stop.cancelled().await;
                store.release_lease(&lease).await.unwrap();
            }
        }
    }

    /// The units whose task has started, once `n` have (the tasks run when scheduled).
    async fn started_once(started: &Mutex<Vec<u32>>, n: usize) -> Vec<u32> {
        for _ in 0..250 {
            if started.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut got = started.lock().unwrap().clone();
        got.sort();
        got
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let store = Store::open(&url, MasterKey::generate().unwrap())
            .await
            .unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn takes_its_fair_share_once_and_skips_leased_units() {
        let (_d, store) = store().await;
        let ttl = Duration::from_secs(60);
        // Another worker already holds unit 0.
        store
            .acquire_lease("fake:0", "other", ttl)
            .await
            .unwrap()
            .unwrap();
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut sup = Supervisor::new(
            store.clone(),
            "me",
            ttl,
            Fake {
                due: (0..6).collect(),
                started: started.clone(),
                store: store.clone(),
            },
        );
        let stop = CancellationToken::new();
        // Two live workers: a share of 3 of the 6 due units, unit 0 not among them.
        sup.tick(2, &stop).await;
        sup.tick(2, &stop).await;
        assert_eq!(
            started_once(&started, 3).await,
            vec![1, 2, 3],
            "three units, each once, not the leased one"
        );
        sup.drain().await;
        for id in 1..=3 {
            assert!(
                store
                    .acquire_lease(&format!("fake:{id}"), "other", ttl)
                    .await
                    .unwrap()
                    .is_some(),
                "unit {id} is free after the drain"
            );
        }
    }

    #[tokio::test]
    async fn hands_back_what_is_above_its_share_when_a_worker_joins() {
        let (_d, store) = store().await;
        let ttl = Duration::from_secs(60);
        let started = Arc::new(Mutex::new(Vec::new()));
        let mut sup = Supervisor::new(
            store.clone(),
            "me",
            ttl,
            Fake {
                due: (0..4).collect(),
                started: started.clone(),
                store: store.clone(),
            },
        );
        let stop = CancellationToken::new();
        sup.tick(1, &stop).await;
        assert_eq!(
            started_once(&started, 4).await,
            vec![0, 1, 2, 3],
            "alone, it takes everything"
        );
        // A second worker joins: two units are stopped and their leases released.
        sup.tick(2, &stop).await;
        // Another worker takes each unit as it is released (a lease is taken only when free).
        let mut taken = std::collections::BTreeSet::new();
        for _ in 0..100 {
            for id in 0..4 {
                if store
                    .acquire_lease(&format!("fake:{id}"), "other", ttl)
                    .await
                    .unwrap()
                    .is_some()
                {
                    taken.insert(id);
                }
            }
            if taken.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And no more than that: the other two stay with this worker.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for id in 0..4 {
            if store
                .acquire_lease(&format!("fake:{id}"), "other", ttl)
                .await
                .unwrap()
                .is_some()
            {
                taken.insert(id);
            }
        }
        assert_eq!(taken.len(), 2, "half of the units handed over: {taken:?}");
        sup.drain().await;
    }
}
