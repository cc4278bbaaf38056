//! Request bodies and response documents.
//!
//! Bodies are read as JSON values first (a syntax error is a 400 naming the position), then
//! deserialized with the failing field's path (a type error is a 422 naming the field).
//! Updates are JSON merge patches (RFC 7396) over the current record; read-only fields are
//! refused; write-only secret fields (`password`…) take plaintext and come back as `********`.

use crate::problem::Problem;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use serversync_model::{Secret, ValidationErrors};

/// Largest request body accepted, unless a route says otherwise ([`Body`]'s `LIMIT`).
pub const MAX_BODY: usize = 1 << 20;

/// Largest body of a composed email: its attachments in base64 (4 bytes for every 3) at their
/// limit, plus 2 MiB for the text, the HTML and the rest of the JSON.
pub const COMPOSE_BODY: usize =
    serversync_engine::compose::MAX_ATTACHMENTS_BYTES.div_ceil(3) * 4 + (2 << 20);

/// A JSON request body of at most `LIMIT` bytes, parsed but not yet typed.
pub struct Body<const LIMIT: usize = MAX_BODY>(pub Value);

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for Body<LIMIT> {
    type Rejection = Problem;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !(ct.starts_with("application/json") || ct.starts_with("application/merge-patch+json")) {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::to_bytes(req.into_body(), LIMIT)
            .await
            .map_err(|e| {
                if e.into_inner().is::<http_body_util::LengthLimitError>() {
                    Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        format!("the body must be at most {LIMIT} bytes"),
                    )
                } else {
                    // The server's body timeout, or the client went away.
                    Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "body_incomplete",
                        "the request body stopped arriving before it was complete: send it again",
                    )
                }
            })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::bad_request(
                "malformed_json",
                None,
                format!(
                    "the body is not valid JSON ({e}): fix the syntax at line {}, column {}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        if !value.is_object() {
            return Err(Problem::bad_request(
                "not_an_object",
                None,
                "the body must be a JSON object",
            ));
        }
        Ok(Body(value))
    }
}

impl<const LIMIT: usize> Body<LIMIT> {
    /// Deserializes into `T`, naming the failing field.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, Problem> {
        parse(self.0)
    }

    /// Removes and returns a field.
    pub fn take(&mut self, key: &str) -> Option<Value> {
        self.0.as_object_mut().and_then(|o| o.remove(key))
    }

    /// Refuses fields the client may not set.
    pub fn refuse(&self, read_only: &[&str]) -> Result<(), Problem> {
        let mut errors = ValidationErrors::default();
        if let Some(o) = self.0.as_object() {
            for k in read_only {
                if o.contains_key(*k) {
                    errors.push(
                        "read_only",
                        k,
                        "is set by serversync: remove it from the request",
                    );
                }
            }
        }
        errors.into_result().map_err(|e| Problem::invalid(&e))
    }

    /// Takes a write-only secret (`"password": "…"`): `Some(None)` when explicitly null.
    pub fn take_secret(&mut self, path: &[&str]) -> Result<Option<Option<Secret>>, Problem> {
        let mut cur = &mut self.0;
        for p in &path[..path.len() - 1] {
            match cur.get_mut(*p) {
                Some(v) if v.is_object() => cur = v,
                _ => return Ok(None),
            }
        }
        let last = path[path.len() - 1];
        let field = path.join(".");
        match cur.as_object_mut().and_then(|o| o.remove(last)) {
            None => Ok(None),
            Some(Value::Null) => Ok(Some(None)),
            Some(Value::String(s)) if s.is_empty() => Err(Problem::invalid(&one(
                "required",
                &field,
                "must not be empty: omit the field to keep the stored value",
            ))),
            Some(Value::String(s)) if s.len() > 4096 => Err(Problem::invalid(&one(
                "too_long",
                &field,
                "must be at most 4096 characters",
            ))),
            Some(Value::String(s)) => Ok(Some(Some(Secret::new(s)))),
            Some(_) => Err(Problem::invalid(&one(
                "invalid_type",
                &field,
                "must be a string",
            ))),
        }
    }
}

fn one(code: &str, field: &str, message: &str) -> ValidationErrors {
    let mut e = ValidationErrors::default();
    e.push(code, field, message);
    e
}

/// Deserializes a value, naming the failing field.
pub fn parse<T: DeserializeOwned>(v: Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        let msg = e.inner().to_string();
        let code = if msg.starts_with("missing field") {
            "required"
        } else if msg.starts_with("unknown field") {
            "unknown_field"
        } else if msg.starts_with("unknown variant") {
            "invalid_value"
        } else {
            "invalid_type"
        };
        let field = if field.is_empty() {
            // serde reports a missing field at the parent: name it.
            msg.split('`').nth(1).unwrap_or("").to_owned()
        } else {
            field
        };
        Problem::invalid(&one(
            code,
            &field,
            &format!("{msg}: see the OpenAPI document for the expected type"),
        ))
    })
}

/// RFC 7396 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Applies a merge patch to a record, naming the failing field if the result is not valid.
/// Fields the record does not have are refused (a typo must not be a silent no-op).
pub fn patched<T: Serialize + DeserializeOwned>(current: &T, patch: &Value) -> Result<T, Problem> {
    let mut v = serde_json::to_value(current)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut unknown = ValidationErrors::default();
    unknown_fields(&v, patch, "", &mut unknown);
    unknown.into_result().map_err(|e| Problem::invalid(&e))?;
    merge(&mut v, patch);
    parse(v)
}

fn unknown_fields(current: &Value, patch: &Value, prefix: &str, out: &mut ValidationErrors) {
    let (Some(c), Some(p)) = (current.as_object(), patch.as_object()) else {
        return;
    };
    for (k, v) in p {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match c.get(k) {
            None => out.push(
                "unknown_field",
                &path,
                "is not a field of this record: check the spelling against the OpenAPI document",
            ),
            Some(inner) => unknown_fields(inner, v, &path, out),
        }
    }
}

/// A record as a response document: the record's fields, `version`, and write-only fields
/// (given as paths) shown as `"********"` when set.
pub fn document<T: Serialize>(value: &T, version: i64, secret_paths: &[&[&str]]) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or(Value::Null);
    for path in secret_paths {
        redact(&mut v, path);
    }
    if let Some(o) = v.as_object_mut() {
        o.insert("version".into(), Value::from(version));
    }
    v
}

fn redact(v: &mut Value, path: &[&str]) {
    let Some(o) = v.as_object_mut() else { return };
    match path {
        [last] => {
            if let Some(x) = o.get_mut(*last)
                && !x.is_null()
            {
                *x = Value::String(serversync_model::secret::REDACTED.into());
            }
        }
        [first, rest @ ..] => {
            if let Some(x) = o.get_mut(*first) {
                redact(x, rest);
            }
        }
        [] => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn documents_hide_secrets() {
        let v = document(
            &json!({"password": "id", "oauth": {"client_secret": "id2"}, "x": null}),
            3,
            &[&["password"], &["oauth", "client_secret"], &["x"]],
        );
        assert_eq!(
            v,
            json!({"password": "********", "oauth": {"client_secret": "********"}, "x": null, "version": 3})
        );
    }
}
