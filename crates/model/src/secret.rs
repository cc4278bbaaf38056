//! A value that must never be shown: passwords, client secrets, tokens, keys.
//!
//! `Secret` redacts itself in `Debug`, `Display` and serialization. It can be deserialized (so
//! an API request or a config file can carry one in) but never serialized back out: secrets are
//! write-only. Code that really needs the value calls [`Secret::expose`], which is easy to grep.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What a redacted secret looks like wherever it is shown.
pub const REDACTED: &str = "********";

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret value. Only for handing to a server or to the encryption layer.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Secret {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::openapi::secret_schema()
    }
}
#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Secret {}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_its_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(format!("{s}"), REDACTED);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
        let back: Secret = serde_json::from_str("\"in-value\"").unwrap();
        assert_eq!(back.expose(), "in-value");
    }
}
