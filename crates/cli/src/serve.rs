//! `serversync serve` and `serversync migrate`.

use crate::config::{Config, MASTER_KEY_ENV};
use anyhow::{Context, Result, anyhow};
use metrics_exporter_prometheus::PrometheusBuilder;
use serversync_engine::Engine;
use serversync_store::{Store, StoreError, redact_url};
use serversync_vault::MasterKey;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The most PostgreSQL connections the API and the admin center use at once (besides the
/// engine's own pool).
const API_POOL_CONNECTIONS: u32 = 8;

/// Loads the master key and opens (migrating) the store, finishing a key rotation that was
/// interrupted after its database commit.
pub async fn open_store(cfg: &Config) -> Result<Store> {
    let url = cfg.database_url();
    let key_file = cfg.key_file();
    let env_key = std::env::var(MASTER_KEY_ENV).ok();
    let key = MasterKey::load(MASTER_KEY_ENV, env_key.as_deref(), &key_file)?;
    let from_file = env_key.as_deref().is_none_or(|v| v.trim().is_empty());
    match Store::open(&url, key).await {
        Ok(s) => Ok(s),
        Err(e @ StoreError::WrongMasterKey { .. }) if from_file => {
            if let Some(store) = crate::keys::finish_interrupted_rotation(&url, &key_file).await? {
                return Ok(store);
            }
            Err(e.into())
        }
        Err(e @ StoreError::Unreachable { .. }) => Err(anyhow!(
            "{e}; check database.url / SERVERSYNC_DATABASE_URL and that the database server is running"
        )),
        Err(e) => Err(e.into()),
    }
}

pub async fn migrate(cfg: Config) -> Result<()> {
    let store = open_store(&cfg).await?;
    println!(
        "database {} is up to date; master key {} matches",
        redact_url(&cfg.database_url()),
        store.master_key().id()
    );
    store.close().await;
    Ok(())
}

pub async fn run(cfg: Config) -> Result<()> {
    let addr = cfg.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            "another process uses this port: stop it, or choose another address with --listen / SERVERSYNC_LISTEN / server.listen"
        } else {
            "choose another address with --listen / SERVERSYNC_LISTEN / server.listen"
        };
        anyhow!("cannot listen on {addr}: {e}; {hint}")
    })?;
    let lmtp_listener = match cfg.lmtp_addr()? {
        None => None,
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
                "another process uses this port: stop it, or choose another address with --lmtp-listen / SERVERSYNC_LMTP_LISTEN / router.lmtp_listen"
            } else {
                "choose another address with --lmtp-listen / SERVERSYNC_LMTP_LISTEN / router.lmtp_listen"
            };
            anyhow!("cannot listen for LMTP on {addr}: {e}; {hint}")
        })?),
    };
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let store = open_store(&cfg).await?;
    tracing::info!(
        database = %redact_url(&cfg.database_url()),
        backend = ?store.backend(),
        key_id = store.master_key().id(),
        key_source = %store.master_key().source(),
        "store ready"
    );

    let shutdown = CancellationToken::new();
    let engine = Engine::new(store.clone(), cfg.engine()?);
    // The API and the admin center get database connections of their own (PostgreSQL): when
    // many mailboxes reconnect at once their sessions can hold every connection of the
    // engine's pool, and the administrator must still be able to look and act.
    let api_store = store.with_own_pool(API_POOL_CONNECTIONS);
    let admin = engine.admin_on(&api_store);
    let waker = engine.waker();
    if let Some((user, token)) = admin
        .bootstrap()
        .await
        .context("creating the first administrator")?
    {
        // Written once, never logged: only a hash of the token is stored.
        let file = cfg.first_token_file();
        write_private_file(&file, &format!("{token}\n")).map_err(|e| {
            anyhow!(
                "cannot write the first administrator's API token to {}: {e}; the installation is set up, \
                 so make a token with `serversync admin token create --user {}` instead",
                file.display(),
                user.email
            )
        })?;
        tracing::warn!(
            user = %user.email,
            file = %file.display(),
            "first start: created organization \"default\" and administrator {}; its API token is in {} (mode 0600, written only now: keep it safe, then delete the file)",
            user.email,
            file.display()
        );
    }
    let engine_task = tokio::spawn(engine.run(shutdown.clone()));
    let lmtp_task = match lmtp_listener {
        Some(l) => {
            tracing::info!("Email Router listening on lmtp://{}", l.local_addr()?);
            Some(tokio::spawn(serversync_engine::lmtp::serve(
                l,
                store.clone(),
                serversync_engine::lmtp::LmtpConfig {
                    stored: Some(waker),
                    ..cfg.lmtp()
                },
                shutdown.clone(),
            )))
        }
        None => None,
    };

    let api = serversync_api::router(serversync_api::AppState {
        store: api_store,
        metrics,
        admin: admin.clone(),
        metrics_token: cfg.server.metrics_token.clone(),
    });
    // The admin center at `/`, next to the API (which it calls in-process for writes).
    let app = serversync_web::router_behind(admin, api.clone(), cfg.server.trusted_proxies.clone())
        .merge(api);
    let local = listener.local_addr()?;
    tracing::info!("listening on http://{local}");
    let signal = shutdown_signal();
    let served = serve_http(listener, app, HttpLimits::of(&cfg), async move {
        signal.await;
        tracing::info!("shutdown requested; finishing requests");
    })
    .await;

    shutdown.cancel();
    if let Some(task) = lmtp_task {
        // Deliveries in progress finish; one cut short is not acknowledged, so the MTA
        // delivers it again.
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .is_err()
        {
            tracing::warn!("LMTP sessions did not finish within 30 s; closed");
            abort.abort();
        }
    }
    if tokio::time::timeout(Duration::from_secs(30), engine_task)
        .await
        .is_err()
    {
        tracing::warn!("engine did not stop within 30 s");
    }
    store.close().await;
    tracing::info!("stopped");
    served.context("HTTP server failed")
}

/// Writes `content` to a new file only its owner may read (mode 0600), replacing a file of
/// that name (never writing through a link planted there).
fn write_private_file(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(path)?;
    f.write_all(content.as_bytes())?;
    f.sync_all()
}

/// The HTTP server's limits against slow and numerous clients (`[server]` in the
/// configuration).
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// For a request's whole header, and for an idle connection's next request.
    pub header_timeout: Duration,
    /// For each piece of a request body.
    pub body_timeout: Duration,
    /// For receiving a whole request and beginning its response.
    pub request_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl HttpLimits {
    pub fn of(cfg: &Config) -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(cfg.server.header_timeout_seconds),
            body_timeout: Duration::from_secs(cfg.server.body_timeout_seconds),
            request_timeout: Duration::from_secs(cfg.server.request_timeout_seconds),
            max_connections: cfg.server.max_connections,
        }
    }
}

/// Serves HTTP/1.1 until `shutdown`, then lets the requests in progress finish.
///
/// A connection is accepted only when one of `max_connections` slots is free (the others wait
/// in the listen queue); a client that does not send its header within `header_timeout` (or
/// stays idle that long between requests) is disconnected; a body that stalls for
/// `body_timeout`, or a request not answered within `request_timeout`, ends with 408.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use std::sync::Arc;
    use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

    let service = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(RequestBodyTimeoutLayer::new(limits.body_timeout))
        .service(app);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, then accept again.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // The peer address reaches the handlers as axum's `ConnectInfo` (sign-in throttling
        // per client).
        let service = hyper_util::service::TowerToHyperService::new(
            tower::ServiceBuilder::new()
                .layer(tower_http::add_extension::AddExtensionLayer::new(
                    axum::extract::ConnectInfo(peer),
                ))
                .service(service.clone()),
        );
        let mut stopped = stopped.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot: all slots back means all connections are done.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the server");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
