//! Path and query extractors whose rejections are problem documents naming the parameter.

use crate::problem::Problem;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::IntoParams;

/// Path parameters.
pub struct P<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for P<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| P(v))
            .map_err(|e| {
                Problem::bad_request(
                    "invalid_path",
                    None,
                    format!("{}: check the URL", e.body_text()),
                )
            })
    }
}

/// Query parameters.
pub struct Q<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Q<T> {
    type Rejection = Problem;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| {
                let text = e.body_text();
                let field = query_field(&text);
                let p = Problem::bad_request(
                    "invalid_query",
                    None,
                    format!("{text}: check the query parameters"),
                );
                match field {
                    Some(f) => p.field(f),
                    None => p,
                }
            })
    }
}

/// The parameter a query rejection is about: the path before the message
/// (`decision: unknown variant …`), else the name in backticks (`missing field `x``).
fn query_field(text: &str) -> Option<String> {
    let rest = text.split_once("query string: ").map_or(text, |(_, r)| r);
    if let Some((path, _)) = rest.split_once(": ")
        && !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'))
    {
        return Some(path.to_owned());
    }
    text.split('`').nth(1).map(str::to_owned)
}

/// Paging of lists: `limit` (1–1000, default 100) items after the cursor `after` (the `next`
/// of the previous page).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    pub after: Option<String>,
    pub limit: Option<u32>,
}

impl Paging {
    pub fn limit(&self) -> Result<u32, Problem> {
        match self.limit {
            None => Ok(100),
            Some(l @ 1..=1000) => Ok(l),
            Some(_) => Err(Problem::bad_request(
                "out_of_range",
                Some("limit"),
                "limit must be between 1 and 1000",
            )),
        }
    }
}

/// Parses an id from the path, naming the parameter when it is not a UUID.
pub fn id<T: std::str::FromStr>(name: &str, raw: &str) -> Result<T, Problem> {
    raw.parse().map_err(|_| {
        Problem::bad_request(
            "invalid_id",
            Some(name),
            format!("{name} must be a UUID, got {raw:?}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::query_field;

    #[test]
    fn query_problems_name_the_parameter_not_the_value() {
        assert_eq!(
            query_field(
                "Failed to deserialize query string: decision: unknown variant `maybe`, expected one of `stored`, `skipped`"
            ),
            Some("decision".into())
        );
        assert_eq!(
            query_field("Failed to deserialize query string: limit: invalid digit found in string"),
            Some("limit".into())
        );
        assert_eq!(
            query_field("Failed to deserialize query string: missing field `x`"),
            Some("x".into())
        );
    }
}
