//! JSON schemas for types whose serde form is not derived (ids, secrets).

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};

pub(crate) fn uuid_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .into()
}

pub(crate) fn secret_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
        .write_only(true)
        .description(Some(
            "Write-only: never returned; responses show ******** when set.",
        ))
        .into()
}

pub(crate) fn change_origin_schema() -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(
            "^(api|tracker|system|sync:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$",
        ))
        .description(Some(
            "Who made the change: `api` (through the API, the web admin center or the CLI), \
             `sync:<mailbox id>` (a syncer writing what it read from that mailbox's server), \
             `tracker` (email tracking), `system` (anything else, and changes recorded before \
             origins were kept).",
        ))
        .into()
}
