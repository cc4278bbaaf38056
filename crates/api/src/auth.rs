//! Bearer-token authentication: the `Auth` extractor resolves the token to a caller.

use crate::AppState;
use crate::problem::Problem;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serversync_model::auth::Caller;

/// The authenticated caller of a request.
pub struct Auth(pub Caller);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauthenticated =
            |detail: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail);
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthenticated(
                "send an API token as `Authorization: Bearer <token>`",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() < 512)
            .ok_or_else(|| unauthenticated("the Authorization header must be `Bearer <token>`"))?;
        Ok(Auth(state.admin.authenticate(token).await?))
    }
}
