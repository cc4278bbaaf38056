//! The HTTP surface of serversync: `/healthz`, `/readyz`, `/metrics`, and the REST API under
//! `/api/v1` with its OpenAPI document at `/api/v1/openapi.json`. Handlers translate between
//! HTTP and the engine's administration service; no business rule lives here.

mod auth;
mod extract;
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
use serversync_store::Store;
use std::time::Instant;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub metrics: PrometheusHandle,
    pub admin: serversync_engine::Admin,
}

pub fn router(state: AppState) -> Router {
    let (api, openapi) = v1::router().split_for_parts();
    let openapi = std::sync::Arc::new(v1::finish_document(&openapi));
    Router::new()
        .merge(api)
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
        // Composed email carries its attachments (base64) in the request.
        .layer(axum::extract::DefaultBodyLimit::max(
            serversync_engine::compose::MAX_ATTACHMENTS_BYTES / 3 * 4 + (1 << 20),
        ))
        .with_state(state)
}

/// Liveness: the process serves HTTP.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the database answers.
async fn readyz(State(s): State<AppState>) -> Response {
    match s.store.ping().await {
        Ok(()) if let Some(full) = s.store.storage_full() => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "not_ready",
                "database": format!(
                    "out of disk space since {}: synchronized mail cannot be stored until space is freed ({})",
                    full.since.to_rfc3339(),
                    full.message
                ),
            })),
        )
            .into_response(),
        Ok(()) => Json(serde_json::json!({ "status": "ready", "database": "ok" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "status": "not_ready", "database": e.to_string() })),
            )
                .into_response()
        }
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
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

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let store = Store::open(&url, serversync_vault::MasterKey::generate().unwrap())
            .await
            .unwrap();
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let admin = serversync_engine::Admin::new(store.clone(), Default::default());
        let app = router(AppState {
            store: store.clone(),
            metrics: handle,
            admin,
        });
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("serversync_engine_ticks_total").increment(1);
        });
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
}
