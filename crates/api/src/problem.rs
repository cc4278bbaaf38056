//! RFC 9457 problem details: every API error is `application/problem+json` with a stable
//! machine `code`, the offending `field` when there is one, and a `detail` that names the fix.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serversync_engine::AdminError;
use serversync_model::ValidationErrors;
use utoipa::ToSchema;

/// One invalid field.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldProblem {
    pub code: String,
    pub field: String,
    pub message: String,
}

/// An error response (RFC 9457).
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: u16,
    /// Stable machine-readable code (`invalid_email`, `missing_privilege`, `not_found`…).
    pub code: String,
    pub detail: String,
    /// The first offending field (dotted path), if the problem is about one.
    pub field: Option<String>,
    /// Every invalid field, for validation problems.
    pub errors: Vec<FieldProblem>,
}

/// The wire form of [`Problem`].
#[derive(Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument<'a> {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: &'a str,
    pub status: u16,
    pub detail: &'a str,
    pub code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub errors: &'a [FieldProblem],
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ProblemDocument {
            type_: format!("https://serversync.invalid/problems/{}", self.code),
            title: status.canonical_reason().unwrap_or("Error"),
            status: self.status,
            detail: &self.detail,
            code: &self.code,
            field: self.field.as_deref(),
            errors: &self.errors,
        }
        .serialize(s)
    }
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            field: None,
            errors: Vec::new(),
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn bad_request(code: &str, field: Option<&str>, detail: impl Into<String>) -> Self {
        let p = Problem::new(StatusCode::BAD_REQUEST, code, detail);
        match field {
            Some(f) => p.field(f),
            None => p,
        }
    }

    pub fn invalid(errors: &ValidationErrors) -> Self {
        let first = errors.0.first();
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            first.map(|e| e.code.as_str()).unwrap_or("invalid"),
            errors
                .0
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        );
        p.field = first.map(|e| e.field.clone());
        p.errors = errors
            .0
            .iter()
            .map(|e| FieldProblem {
                code: e.code.clone(),
                field: e.field.clone(),
                message: e.message.clone(),
            })
            .collect();
        p
    }

    pub fn not_found(what: &str) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = (status, axum::Json(&self)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<AdminError> for Problem {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid(v) => Problem::invalid(&v),
            AdminError::Denied(d) => Problem::new(StatusCode::FORBIDDEN, d.code, d.message),
            AdminError::Unauthenticated => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "send a valid API token as `Authorization: Bearer <token>` (create one with `serversync admin token create`)",
            ),
            AdminError::NotFound { entity, id } => Problem::not_found(&format!("{entity} {id}")),
            AdminError::Conflict(d) => Problem::new(StatusCode::CONFLICT, "conflict", d),
            AdminError::WrongState { code, message } => {
                Problem::new(StatusCode::CONFLICT, code, message)
            }
            e @ AdminError::VersionMismatch { .. } => {
                Problem::new(StatusCode::CONFLICT, "version_conflict", e.to_string())
                    .field("version")
            }
            e @ AdminError::Throttled { .. } => {
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "throttled", e.to_string())
            }
            e @ AdminError::Busy => {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string())
            }
            AdminError::Store(e) => {
                tracing::error!(error = %e, "store error in API request");
                let status = if e.kind().is_transient() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                Problem::new(
                    status,
                    "internal",
                    "the request could not be completed; the server log has the details",
                )
            }
        }
    }
}

pub type ApiResult<T> = Result<T, Problem>;

impl utoipa::PartialSchema for Problem {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <ProblemDocument<'static> as utoipa::PartialSchema>::schema()
    }
}

impl utoipa::ToSchema for Problem {
    fn name() -> std::borrow::Cow<'static, str> {
        "Problem".into()
    }
}
