//! What the OpenAPI description says about requests: the grammar of names, JSON values and
//! ops as the node checks them, the headers and query parameters, and the shared error
//! responses. Answers are described by `meridian-api`'s types themselves.

use std::borrow::Cow;

use serde_json::json;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, PartialSchema, ToResponse, ToSchema};

/// A schema given in JSON Schema's own words: for the grammars (names, JSON values, ops) that
/// the node checks by hand rather than through a Rust type.
fn given(schema: serde_json::Value) -> RefOr<Schema> {
    serde_json::from_value(schema).expect("a valid schema object")
}

/// Declares a named schema from JSON Schema.
macro_rules! grammar {
    ($(#[$doc:meta])* $name:ident = $schema:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                given($schema)
            }
        }
        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

const POINTER: &str = "^(/([^~]|~[01])*)*$";

grammar!(
    /// A document id (`meridian_crdt::validate_name`).
    Name = json!({"type": "string", "pattern": "^[A-Za-z0-9._~@:-]{1,200}$"})
);
grammar!(
    /// A collection name: a name not beginning with `_`.
    Collection = json!({"type": "string", "pattern": "^[A-Za-z0-9.~@:-][A-Za-z0-9._~@:-]{0,199}$",
        "description": "a collection name; names beginning with _ are reserved for Meridian (400 invalid_id)"})
);
grammar!(
    /// Any JSON value as the node takes it (`meridian_crdt::json`).
    JsonValue = json!({
        "description": "Any JSON value; numbers must fit a 64-bit signed integer when they are integers (bounded here for all numbers); at most 64 levels of nesting.",
        // anyOf: every integer is also a number
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "string"},
            {"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX},
            {"type": "number", "minimum": i64::MIN, "maximum": i64::MAX},
            {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
            {"$ref": "#/components/schemas/JsonObject"}
        ]
    })
);
grammar!(
    /// A JSON object: a document's value, a PUT body, a merge patch.
    JsonObject = json!({"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JsonValue"}})
);
grammar!(
    /// The body of `POST .../ops` (`meridian_crdt::parse_ops`).
    Ops = json!({"type": "object", "additionalProperties": false, "required": ["ops"],
        "properties": {"ops": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Op"}}}})
);
grammar!(
    /// One op, by its `op`.
    Op = json!({"oneOf": [
        op("set", &[("value", json!({"$ref": "#/components/schemas/JsonValue"}))], &["value"]),
        op("remove", &[], &[]),
        op("increment", &[("by", json!({"type": "integer", "minimum": i64::MIN, "maximum": i64::MAX}))], &["by"]),
        op("insert", &[("value", json!({"$ref": "#/components/schemas/JsonValue"}))], &["value"]),
        op("splice", &[
            ("index", json!({"type": "integer", "minimum": 0, "maximum": i64::MAX, "description": "Unicode code points"})),
            ("delete", json!({"type": "integer", "minimum": 0, "maximum": i64::MAX, "default": 0})),
            ("insert", json!({"type": "string", "default": ""})),
        ], &["index"]),
    ], "discriminator": {"propertyName": "op"}})
);
grammar!(
    /// A collection's JSON Schema, as stored (`docs/schemas.md`).
    CollectionSchema = json!({"type": "object",
        "description": "a JSON Schema (draft 2020-12) for the collection's documents, with the keyword x-merge (lww, counter, text, list) on properties; see docs/schemas.md"})
);

/// One op of the ops body: its name, its fields beside `op` and `path`, which are required.
fn op(name: &str, fields: &[(&str, serde_json::Value)], required: &[&str]) -> serde_json::Value {
    let mut properties = serde_json::Map::new();
    properties.insert("op".into(), json!({"type": "string", "enum": [name]}));
    properties.insert(
        "path".into(),
        json!({"type": "string", "pattern": POINTER, "description": "JSON Pointer (RFC 6901)"}),
    );
    for (k, v) in fields {
        properties.insert((*k).into(), v.clone());
    }
    let mut req = vec!["op", "path"];
    req.extend(required);
    json!({"type": "object", "additionalProperties": false, "required": req, "properties": properties})
}

/// A stored schema version: `GET` and `PUT /v1/_schemas/{collection}`.
#[derive(ToSchema)]
#[allow(dead_code)] // a description only: the handlers answer it with serde_json
pub(crate) struct SchemaVersion {
    collection: String,
    #[schema(value_type = CollectionSchema)]
    schema: serde_json::Value,
    /// Opaque; the same on every region that holds the same version.
    version: String,
    #[schema(nullable = false)]
    broken: Option<meridian_api::Broken>,
}

/// A document's place.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct DocAt {
    #[param(value_type = Collection)]
    collection: String,
    #[param(value_type = Name)]
    id: String,
}

/// A collection's place.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct CollectionAt {
    #[param(value_type = Collection)]
    collection: String,
}

/// Session guarantees across regions (`docs/replication.md`).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct Session {
    /// The session token from an earlier answer (any region). The request is answered only from
    /// state covering it. Every /v1 answer carries the updated token in the same header.
    /// Format: node=hex time, comma-separated, at most 64 nodes; a node named twice counts with
    /// its later time.
    #[param(
        required = false,
        rename = "Meridian-Session",
        pattern = "^([A-Za-z0-9._-]{1,16}=[0-9a-fA-F]{1,16}(,[A-Za-z0-9._-]{1,16}=[0-9a-fA-F]{1,16}){0,63})?$"
    )]
    session: String,
    /// Wait at most this long (capped by the node's bound, default 1000) for this node to cover
    /// the session token.
    #[param(
        required = false,
        rename = "Meridian-Max-Wait-Ms",
        minimum = 0,
        maximum = 9223372036854775807_i64
    )]
    max_wait: i64,
}

/// A write applied once, however often it is sent.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct Idempotent {
    /// A retry with the same key returns the first answer and applies nothing again (kept at
    /// least 24 h). The same key with a different request is 422.
    #[param(
        required = false,
        rename = "Idempotency-Key",
        pattern = "^[!-~]{1,255}$"
    )]
    key: String,
}

/// A change stream instead of JSON (`docs/changes.md`).
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub(crate) struct Stream {
    /// text/event-stream answers a Server-Sent Events stream of changes instead of JSON.
    #[param(required = false, rename = "Accept")]
    accept: String,
    /// With Accept: text/event-stream: resume the change stream after this event (the id: of
    /// an event).
    #[param(
        required = false,
        rename = "Last-Event-ID",
        pattern = "^[0-9a-fA-F]{16}-[0-9]+$"
    )]
    last_event_id: String,
}

/// `?conflicts=`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Read {
    /// Include the concurrent values of conflicting fields.
    #[param(required = false)]
    conflicts: bool,
}

/// A page of a list.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Paging {
    /// Page size; values above 1000 are treated as 1000.
    #[param(required = false, minimum = 1, maximum = 9223372036854775807_i64)]
    limit: i64,
    /// The `next` cursor of the previous page.
    #[param(required = false, value_type = Name)]
    after: String,
}

/// `?invalid=`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct OnlyInvalid {
    /// Only the documents that break the collection's schema (a page may then hold fewer items
    /// than limit).
    #[param(required = false)]
    invalid: bool,
}

/// `?force=`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(crate) struct Force {
    /// Store an incompatible version anyway.
    #[param(required = false)]
    force: bool,
}

/// An error.
#[derive(ToResponse)]
#[response(description = "an error")]
#[allow(dead_code)]
pub(crate) struct Error(meridian_api::ErrorBody);

/// 401.
#[derive(ToResponse)]
#[response(
    description = "no key or token, a malformed, unknown or expired key (unauthorized), a token that does not verify (invalid_token), is expired or not yet valid (token_expired), or is revoked (token_revoked)",
    headers(("WWW-Authenticate" = String))
)]
#[allow(dead_code)]
pub(crate) struct Unauthorized(meridian_api::ErrorBody);

/// 403.
#[derive(ToResponse)]
#[response(
    description = "the key or token lacks the access this request needs; the message names it"
)]
#[allow(dead_code)]
pub(crate) struct Forbidden(meridian_api::ErrorBody);

/// 429.
#[derive(ToResponse)]
#[response(
    description = "too many failed authentications from this address (too_many_requests), or this token's sub or this key over its request rate (rate_limited)",
    headers(("Retry-After" = i64))
)]
#[allow(dead_code)]
pub(crate) struct TooManyRequests(meridian_api::ErrorBody);

/// The answer to `DELETE /v1/_schemas/{collection}`.
#[derive(ToSchema)]
#[allow(dead_code)] // a description only: the handler answers it with serde_json
pub(crate) struct SchemaDeleted {
    collection: String,
    /// Always true.
    deleted: bool,
    version: String,
}
