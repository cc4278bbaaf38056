//! Writes through the REST API, in-process: the same JSON, validation and privilege checks as
//! every other client. A refusal comes back as a [`Problem`] whose field messages the forms
//! show next to their fields.

use crate::Web;
use crate::session::Session;
use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use serde_json::Value;
use std::collections::BTreeMap;
use tower::ServiceExt;

/// What the API refused, in words for the page.
#[derive(Debug, Default, Clone)]
pub struct Problem {
    /// The sentence for the top of the form.
    pub detail: String,
    /// Messages by field path (`incoming.port`, `advanced.max_sends_per_minute`…).
    pub fields: BTreeMap<String, String>,
    /// The API's HTTP status (0 when the request never reached it).
    pub status: u16,
}

impl Problem {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

impl Web {
    /// Calls `/api/v1/orgs/{the session's org}{path}` as the session's user.
    pub async fn api(
        &self,
        s: &Session,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, Problem> {
        let uri = format!("/api/v1/orgs/{}{path}", s.org.id);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {}", s.token));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = match req.body(body.map(|b| Body::from(b.to_string())).unwrap_or_default()) {
            Ok(r) => r,
            Err(e) => {
                return Err(Problem {
                    detail: format!("the request could not be built: {e}"),
                    ..Default::default()
                });
            }
        };
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        let mut p = Problem {
            detail: v["detail"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("the server answered {status}")),
            status: status.as_u16(),
            ..Default::default()
        };
        for e in v["errors"].as_array().into_iter().flatten() {
            if let (Some(f), Some(m)) = (e["field"].as_str(), e["message"].as_str()) {
                p.fields.insert(f.to_owned(), m.to_owned());
            }
        }
        if let (Some(f), true) = (v["field"].as_str(), p.fields.is_empty()) {
            p.fields.insert(f.to_owned(), p.detail.clone());
        }
        Err(p)
    }
}
