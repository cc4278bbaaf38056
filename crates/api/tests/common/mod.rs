//! A serversync instance in-process (store + engine + API router) on SQLite or PostgreSQL,
//! trusting the test environment's CA, and helpers to call its API.

#![allow(dead_code, unused_macros, unused_imports)]

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use serversync_connectors::TlsTrust;
use serversync_engine::{Engine, EngineConfig};
use serversync_store::{Backend, Store};
use serversync_testkit::{PgDatabase, TestEnv};
use serversync_vault::MasterKey;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Log lines written while tests run (to check that no secret is ever logged).
pub static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogWriter;
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .try_init();
}

pub fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

pub enum DbGuard {
    Sqlite(tempfile::TempDir),
    Postgres(PgDatabase),
}

pub struct Instance {
    pub app: Router,
    pub store: Store,
    pub token: String,
    shutdown: CancellationToken,
    _db: DbGuard,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub enum Trust {
    TestCa,
    SystemOnly,
}

impl Instance {
    /// An instance whose test servers (on this machine) are allowed by its network policy.
    pub async fn start(backend: Backend, trust: Trust) -> Instance {
        Self::start_with(
            backend,
            trust,
            serversync_connectors::NetworkPolicy::loopback_allowed(),
        )
        .await
    }

    /// An instance with this network policy (the production default refuses the test servers).
    pub async fn start_with(
        backend: Backend,
        trust: Trust,
        network: serversync_connectors::NetworkPolicy,
    ) -> Instance {
        capture_logs();
        let env = TestEnv::from_env();
        let (url, guard) = match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                (
                    format!("sqlite://{}", dir.path().join("s.db").display()),
                    DbGuard::Sqlite(dir),
                )
            }
            Backend::Postgres => {
                let db = env.pg_database().await.unwrap();
                (db.url().to_owned(), DbGuard::Postgres(db))
            }
        };
        let store = Store::open(&url, MasterKey::generate().unwrap())
            .await
            .unwrap();
        let trust = match trust {
            Trust::TestCa => TlsTrust::with_extra_ca_files([&env.ca_cert]).unwrap(),
            Trust::SystemOnly => TlsTrust::system_only().unwrap(),
        };
        let config = EngineConfig {
            network: Arc::new(network),
            tick: Duration::from_millis(200),
            ..EngineConfig::new(Arc::new(trust))
        };
        let engine = Engine::new(store.clone(), config);
        let admin = engine.admin();
        let (_, token) = admin
            .bootstrap()
            .await
            .unwrap()
            .expect("fresh installation");
        let shutdown = CancellationToken::new();
        tokio::spawn(engine.run(shutdown.clone()));
        let metrics = PrometheusBuilder::new().build_recorder().handle();
        let app = serversync_api::router(serversync_api::AppState {
            store: store.clone(),
            metrics,
            admin,
            metrics_token: None,
        });
        Instance {
            app,
            store,
            token,
            shutdown,
            _db: guard,
        }
    }

    /// Sends a request with the bootstrap administrator's token.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.token, method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let (status, _ct, text) = self
            .raw(
                token,
                method,
                path,
                body.map(|b| b.to_string()),
                "application/json",
            )
            .await;
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Any request; returns status, content type and body text.
    pub async fn raw(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<String>,
        content_type: &str,
    ) -> (u16, String, String) {
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {token}"));
        if body.is_some() {
            req = req.header("content-type", content_type);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ct, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Creates a user with a mailbox password (for profiles with credentials per mailbox).
    pub async fn user(&self, name: &str, email: &str, password: &str) -> Value {
        self.ok(
            "POST",
            "/api/v1/orgs/default/users",
            Some(json!({"full_name": name, "email": email, "mailbox_password": password})),
        )
        .await
    }

    /// Waits (bounded) for a job to finish and returns it.
    pub async fn wait_job(&self, job_id: &str) -> Value {
        for _ in 0..900 {
            let j = self
                .ok("GET", &format!("/api/v1/orgs/default/jobs/{job_id}"), None)
                .await;
            if !matches!(j["status"].as_str(), Some("queued" | "running")) {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {job_id} did not finish within 90 s");
    }
}

/// An IMAP/SMTP profile for the test servers.
pub fn imap_profile(name: &str) -> Value {
    let env = TestEnv::from_env();
    json!({
        "name": name,
        "server_type": "imap_smtp",
        "incoming": {"location": "localhost", "port": env.imaps_port(), "tls": "implicit"},
        "outgoing": {"location": "localhost", "port": env.submission_port(), "tls": "start_tls"},
    })
}

pub fn pop3_profile(name: &str) -> Value {
    let env = TestEnv::from_env();
    json!({
        "name": name,
        "server_type": "pop3_smtp",
        "incoming": {"location": "localhost", "port": env.pop3s_port(), "tls": "implicit"},
        "outgoing": {"location": "localhost", "port": env.submission_port(), "tls": "start_tls"},
    })
}

macro_rules! both {
    ($name:ident, |$backend:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn run($backend: Backend) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(Backend::Postgres).await
            }
        }
    };
}
pub(crate) use both;
