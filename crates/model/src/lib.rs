//! The serversync domain model.
//!
//! Everything a CRM organization configures and everything synchronization produces, with the
//! reference defaults, ranges and rules (SPEC.md, REFERENCE.md part A). This crate is pure: it
//! performs no I/O, knows no SQL, no HTTP and no wire protocol, and has no async code. Other
//! crates store, transmit and act on these types; the rules about what is valid live here.

pub mod alert;
pub mod audit;
pub mod auth;
pub mod certificate;
pub mod crm;
pub mod error;
pub mod ids;
pub mod item;
pub mod itemvalues;
pub mod job;
pub mod mailbox;
pub mod merge;
pub mod org;
pub mod profile;
pub mod secret;
pub mod settings;
pub mod sync;
pub mod track;
pub mod validate;
pub mod webhook;

#[cfg(feature = "openapi")]
mod openapi;

pub use error::{ErrorKind, FailureStep, ValidationError, ValidationErrors};
pub use ids::*;
pub use secret::Secret;

/// The name a value has on the wire and in the store: an enum's serde name
/// (`"pending_approval"`); any other value as its JSON text.
pub fn wire_name<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// Point in time, always UTC.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
