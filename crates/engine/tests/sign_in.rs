//! Password sign-in under load: the engine's leases keep being renewed while many wrong
//! sign-ins are hashed, on SQLite and PostgreSQL.

use serversync_connectors::TlsTrust;
use serversync_engine::{Engine, EngineConfig};
use serversync_store::{Backend, Store};
use serversync_testkit::{PgDatabase, TestEnv};
use serversync_vault::MasterKey;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[allow(dead_code)]
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

async fn open(backend: Backend) -> (Store, Db) {
    let (url, db) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (
                format!("sqlite://{}", dir.path().join("s.db").display()),
                Db::Sqlite(dir),
            )
        }
        Backend::Postgres => {
            let db = TestEnv::from_env().pg_database().await.unwrap();
            (db.url().to_owned(), Db::Postgres(db))
        }
    };
    let store = Store::open(&url, MasterKey::generate().unwrap())
        .await
        .unwrap();
    (store, db)
}

/// 50 wrong sign-ins at once (different addresses from different clients, so no throttle
/// stops them before the password is checked) while the engine holds its heartbeat lease with a
/// 3 s lifetime, renewed every 100 ms tick. The lease is never lost: same epoch, same owner,
/// renewed again after the storm. With the hashing on the async runtime the two runtime
/// threads were busy hashing for several seconds, the lease ran out and was taken again (a new
/// epoch).
async fn leases_are_renewed_during_a_storm_of_wrong_sign_ins(backend: Backend) {
    let (store, _db) = open(backend).await;
    let config = EngineConfig {
        tick: Duration::from_millis(100),
        lease_ttl: Duration::from_secs(3),
        ..EngineConfig::new(Arc::new(TlsTrust::system_only().unwrap()))
    };
    let engine = Engine::new(store.clone(), config);
    let admin = engine.admin();
    admin.bootstrap().await.unwrap().expect("fresh store");
    let resource = format!("worker:{}", engine.worker_id());
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(engine.run(shutdown.clone()));

    let mut lease = None;
    for _ in 0..200 {
        lease = store.get_lease(&resource).await.unwrap();
        if lease.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = lease.expect("the engine takes its heartbeat lease within 10 s");

    let mut storm = tokio::task::JoinSet::new();
    for i in 0..50u8 {
        let admin = admin.clone();
        storm.spawn(async move {
            let client = std::net::IpAddr::from([192, 0, 2, i]);
            admin
                .authenticate_password(
                    "default",
                    &format!("nobody{i}@example.test"),
                    "not the password",
                    Some(client),
                )
                .await
        });
    }
    let mut refused = 0;
    while let Some(r) = storm.join_next().await {
        assert!(r.unwrap().is_err(), "a wrong sign-in was accepted");
        refused += 1;
    }
    assert_eq!(refused, 50);
    let storm_over = chrono::Utc::now();

    // A renewal after the storm (bounded wait), and it is still the same lease.
    let mut after = None;
    for _ in 0..200 {
        let l = store.get_lease(&resource).await.unwrap().unwrap();
        if l.until > storm_over + chrono::Duration::seconds(2) {
            after = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = after.expect("the heartbeat lease is renewed within 10 s of the storm");
    assert_eq!(
        (after.epoch, &after.owner),
        (before.epoch, &before.owner),
        "the heartbeat lease ran out during the sign-ins and was taken again"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), run).await;
    store.close().await;
}

mod leases_survive_50_concurrent_wrong_sign_ins {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        leases_are_renewed_during_a_storm_of_wrong_sign_ins(Backend::Sqlite).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        leases_are_renewed_during_a_storm_of_wrong_sign_ins(Backend::Postgres).await
    }
}
