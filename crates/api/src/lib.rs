//! The HTTP surface of serversync: `/healthz`, `/readyz`, `/metrics`, and the REST API under
//! `/api/v1` with its OpenAPI document at `/api/v1/openapi.json`. Handlers translate between
//! HTTP and the engine's administration service; no business rule lives here.

mod auth;
mod extract;
pub mod graph;
mod json;
pub mod problem;
pub mod v1;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serversync_model::Secret;
use serversync_store::Store;
use std::time::Instant;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: PrometheusHandle,
    pub admin: serversync_engine::Admin,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <this token>`.
    pub metrics_token: Option<Secret>,
}

pub fn router(state: AppState) -> Router {
    let (api, openapi) = v1::router().split_for_parts();
    let openapi = std::sync::Arc::new(v1::finish_document(&openapi));
    Router::new()
        .merge(api)
        .merge(graph::routes())
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = openapi.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { problem::Problem::not_found("route") })
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn(track_requests))
        // No response is ever to be read as another type than it says (an attachment's HTML
        // as a page of this site, above all).
        .layer(middleware::map_response(|mut r: Response| async move {
            r.headers_mut().insert(
                header::X_CONTENT_TYPE_OPTIONS,
                header::HeaderValue::from_static("nosniff"),
            );
            r
        }))
        // Bodies are read by `json::Body`, whose limit is per route (compose takes its
        // attachments' size); this bounds any other extractor.
        .layer(axum::extract::DefaultBodyLimit::max(json::MAX_BODY))
        .with_state(state)
}

/// Liveness: the process serves HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the database answers. The causes of a failure go to the log, not to the caller
/// (this route needs no token).
async fn readyz(State(s): State<AppState>) -> Response {
    let not_ready = |database: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "not_ready", "database": database })),
        )
            .into_response()
    };
    match s.store.ping().await {
        Ok(()) if let Some(full) = s.store.storage_full() => not_ready(format!(
            "out of disk space since {}: synchronized mail cannot be stored until space is freed",
            full.since.to_rfc3339()
        )),
        Ok(()) => Json(serde_json::json!({ "status": "ready", "database": "ok" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            not_ready("the database does not answer; the server log says why".into())
        }
    }
}

/// Prometheus metrics; with `metrics_token` set, only for `Authorization: Bearer <token>`.
async fn metrics_text(State(s): State<AppState>, headers: header::HeaderMap) -> Response {
    if let Some(token) = &s.metrics_token {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !same_bytes(sent.as_bytes(), token.expose().as_bytes()) {
            return problem::Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "/metrics needs `Authorization: Bearer <token>` with the token of server.metrics_token",
            )
            .into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Equality in a time that does not depend on where the first difference is.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts and times every request by route template (never by raw path, so ids do not explode
/// the label set).
async fn track_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("serversync_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("serversync_http_request_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use metrics_exporter_prometheus::PrometheusBuilder;
    use tower::ServiceExt;

    async fn get_text(app: &Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .clone()
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn app(token: Option<&str>) -> (Router, Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let store = Store::open(&url, serversync_vault::MasterKey::generate().unwrap())
            .await
            .unwrap();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("serversync_engine_ticks_total").increment(1);
        });
        let admin = serversync_engine::Admin::new(store.clone(), Default::default());
        let app = router(AppState {
            store: store.clone(),
            metrics: handle,
            admin,
            metrics_token: token.map(Secret::new),
        });
        (app, store, dir)
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let (app, store, _dir) = app(None).await;
        assert_eq!(get_text(&app, "/healthz").await.0, StatusCode::OK);
        let (status, body) = get_text(&app, "/readyz").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, body) = get_text(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("serversync_engine_ticks_total 1"), "{body}");
        store.close().await;
        let (status, body) = get_text(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body.contains("not_ready"));
    }

    /// `/readyz` needs no token: it says that the database does not answer, never the
    /// database's own error text (which names hosts, users, paths).
    #[tokio::test]
    async fn readiness_does_not_show_database_errors() {
        let (app, store, _dir) = app(None).await;
        store.close().await;
        let (status, body) = get_text(&app, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "status": "not_ready",
                "database": "the database does not answer; the server log says why",
            })
        );
    }

    /// With a metrics token, `/metrics` answers only the bearer of that token; health and
    /// readiness stay open.
    #[tokio::test]
    async fn metrics_can_require_a_token() {
        let (app, _store, _dir) = app(Some("scrape-me-0123456789")).await;
        let get = |auth: Option<&'static str>| {
            let app = app.clone();
            async move {
                let mut req = axum::http::Request::get("/metrics");
                if let Some(a) = auth {
                    req = req.header(header::AUTHORIZATION, a);
                }
                let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8(body.to_vec()).unwrap())
            }
        };
        for refused in [
            None,
            Some("Bearer wrong"),
            Some("Bearer scrape-me-012345678"),
        ] {
            let (status, body) = get(refused).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{refused:?}: {body}");
            assert!(!body.contains("serversync_engine_ticks_total"), "{body}");
        }
        let (status, body) = get(Some("Bearer scrape-me-0123456789")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("serversync_engine_ticks_total 1"), "{body}");
        assert_eq!(get_text(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(get_text(&app, "/readyz").await.0, StatusCode::OK);
    }
}
