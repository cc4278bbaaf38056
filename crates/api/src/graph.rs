//! Where Microsoft Graph posts change notifications and lifecycle events for Exchange Online
//! mailboxes (`POST /api/v1/graph/notifications/{mailbox}`, `POST
//! /api/v1/graph/lifecycle/{mailbox}`). They carry no token: Graph proves itself with the
//! subscription's `clientState`, which [`serversync_engine::graph_notify`] checks; the
//! validation handshake (`?validationToken=…`) is echoed as `text/plain`. Bodies are bounded
//! by [`serversync_engine::graph_notify::MAX_BODY`].

use crate::AppState;
use crate::problem::Problem;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serversync_engine::graph_notify::{self, Answer};
use std::collections::HashMap;

/// The two routes, with their own body limit.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            &format!("{}/{{mailbox}}", graph_notify::NOTIFICATIONS_PATH),
            post(notification),
        )
        .route(
            &format!("{}/{{mailbox}}", graph_notify::LIFECYCLE_PATH),
            post(lifecycle),
        )
        .layer(axum::extract::DefaultBodyLimit::max(graph_notify::MAX_BODY))
}

async fn notification(
    State(s): State<AppState>,
    Path(mailbox): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let token = q.get("validationToken").map(String::as_str);
    answer(graph_notify::notification(&s.store, &mailbox, token, &body).await)
}

async fn lifecycle(
    State(s): State<AppState>,
    Path(mailbox): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let token = q.get("validationToken").map(String::as_str);
    answer(graph_notify::lifecycle(&s.store, &mailbox, token, &body).await)
}

fn answer(r: Result<Answer, serversync_store::StoreError>) -> Response {
    match r {
        Ok(Answer::Validation(t)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            t,
        )
            .into_response(),
        Ok(Answer::Accepted) => StatusCode::ACCEPTED.into_response(),
        Ok(Answer::Invalid { field, message }) => {
            Problem::bad_request("invalid_notification", Some(field), message).into_response()
        }
        Err(e) => Problem::from(serversync_engine::AdminError::Store(e)).into_response(),
    }
}
