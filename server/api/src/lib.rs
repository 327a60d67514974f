//! The HTTP API's wire types: what the node answers and what `meridian-client` reads, one set
//! of serde structs for both. The server fills `V` with stored JSON as [`Json`] (spliced in as
//! it is stored, never parsed into a tree), the client with `serde_json::Value`. With the
//! `openapi` feature the types carry their OpenAPI schemas, from which the server's
//! `/openapi.json` is generated.
//!
//! # Layout
//! - this file: documents, lists, deletions, errors.
//! - `events`: the data of change stream events.

use serde::{Deserialize, Serialize};

pub use meridian_crdt::{Conflict, ConflictValue, Violation};

mod events;
pub use events::{Change, DocumentEvent, Stamp};

/// Stored JSON, written out as it is.
pub type Json = Box<serde_json::value::RawValue>;

/// Stored JSON as [`Json`]: the store wrote it, so it is valid; serde_json checks it once more
/// on the way (a scan, not a parse into a tree).
pub fn json(stored: String) -> Json {
    serde_json::value::RawValue::from_string(stored).expect("stored JSON is valid")
}

/// A document: the answer to a read or a write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Document<V = serde_json::Value> {
    pub collection: String,
    pub id: String,
    /// The document's JSON object.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: V,
    /// An opaque version; it changes with every change of the document.
    pub version: String,
    /// The document's automerge-repo URL (`automerge:` + its DocumentId), for `/v1/sync`; the
    /// same on every node, computable offline (docs/sync.md).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^automerge:[1-9A-HJ-NP-Za-km-z]+$")
    )]
    pub automerge_url: String,
    /// With `?conflicts=true`: every field with concurrent values, the visible winner first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflicts: Option<Vec<Conflict>>,
    /// Only when the collection has a schema the document breaks (concurrent writes, each
    /// valid, can merge into such a document).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// The answer to a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Deleted {
    pub collection: String,
    pub id: String,
    /// Always true.
    pub deleted: bool,
    pub version: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^automerge:[1-9A-HJ-NP-Za-km-z]+$")
    )]
    pub automerge_url: String,
}

/// One document of a list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Item<V = serde_json::Value> {
    pub id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: V,
    pub version: String,
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^automerge:[1-9A-HJ-NP-Za-km-z]+$")
    )]
    pub automerge_url: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// One page of a collection, in id order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<V = serde_json::Value> {
    pub items: Vec<Item<V>>,
    /// The cursor for the next page (`?after=`), or null after the last.
    pub next: Option<String>,
}

/// Every refusal and failure: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: Error,
}

/// What went wrong, for programs (`code`) and for people (`message`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Error {
    pub code: Code,
    pub message: String,
    /// `session_unavailable`: the node (region) that has the session's data (for
    /// `unknown_session_node`: the node no region has)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// ...and where clients reach it, if it is a peer: its `--peer-public-url`, else the URL
    /// this node replicates with it over; null if neither is known. Present with `region`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "present")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
    pub url: Option<Option<String>>,
    /// `schema_violation`: every rule the write would break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Violation>>,
    /// `incompatible_schema`: what the new version would refuse...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasons: Option<Vec<String>>,
    /// ...and the stored documents it would break.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<Broken>,
    /// `collection_elsewhere`: the regions the collection lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<Vec<RegionUrl>>,
}

/// A region, and where clients reach it (its `--peer-public-url`, else the URL the answering
/// node replicates with it over; null if neither is known).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionUrl {
    pub id: String,
    pub url: Option<String>,
}

/// The error codes: stable, for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Code {
    BadRequest,
    InvalidId,
    InvalidSessionToken,
    Unauthorized,
    /// 401: a scoped token (JWT) that does not verify: signature, audience, claims or alg.
    InvalidToken,
    /// 401: a scoped token past its `exp` (or before its `nbf`): mint a new one.
    TokenExpired,
    /// 401: a scoped token whose `jti` or `sub` the auth file revokes.
    TokenRevoked,
    Forbidden,
    TooManyRequests,
    /// 429: this token's `sub` (or this API key) made more requests than its rate; retry after
    /// `Retry-After`.
    RateLimited,
    SessionUnavailable,
    /// 400: the session token names a node this cluster does not have, so no region can ever
    /// cover it; `region` names it. Drop that entry from the token.
    UnknownSessionNode,
    NotFound,
    /// 410: the session token names a region removed from the cluster, past what this node
    /// merged of it (its last cursor into that region's feed); `region` names it. Read in a
    /// region that holds it, or start a new session.
    SessionRegionRemoved,
    /// 404: no region of that id in the cluster's membership.
    UnknownRegion,
    /// 409: the region was removed from the cluster and its id cannot be added again (its
    /// automerge sequence numbers are taken); or this node itself was removed and takes no
    /// changes (writes, membership changes).
    RegionRemoved,
    /// 409: removing a region was refused because its feed could not be read to the end from
    /// this node (unreachable, or behind): its unreplicated writes would be lost. Retry once it
    /// answers, or force.
    RegionNotCaughtUp,
    /// 421: the collection is placed in other regions only; this region neither holds nor
    /// serves its documents. `regions` names where it lives, with their URLs.
    CollectionElsewhere,
    InvalidSchema,
    SchemaViolation,
    IncompatibleSchema,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    UpgradeRequired,
    Unprocessable,
    Overloaded,
    /// 503: the node is draining before it stops; `region` and `url` name a peer to use instead.
    Draining,
    Timeout,
    Unavailable,
    /// 507: the node's disk is below the free space it keeps; reads go on.
    InsufficientStorage,
    /// 503: the document is damaged on this node and being fetched again from a peer region;
    /// retry, or read it in another region.
    DocumentDamaged,
    /// 503: this node lost writes in a log repair and takes none until its peers have given
    /// back what they hold; write in another region meanwhile. Reads go on.
    Recovering,
    Internal,
    Unreachable,
}

/// A field that is either absent (`None`) or present, possibly as null (`Some(None)`).
mod present {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().expect("skipped when absent").serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// Stored documents a schema would break: how many, and some of their ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Broken {
    pub count: u64,
    pub ids: Vec<String>,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            region: None,
            url: None,
            errors: None,
            reasons: None,
            broken: None,
            regions: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_is_written_with_its_stored_json_as_it_is_and_read_back_as_values() {
        let doc = Document {
            collection: "users".into(),
            id: "ada".into(),
            value: json(r#"{"name":"Ada","n":1.50}"#.into()),
            version: "v1".into(),
            automerge_url: "automerge:x".into(),
            conflicts: None,
            violations: vec![],
        };
        let text = serde_json::to_string(&doc).unwrap();
        assert_eq!(
            text,
            r#"{"collection":"users","id":"ada","value":{"name":"Ada","n":1.50},"version":"v1","automerge_url":"automerge:x"}"#,
            "stored JSON is spliced in byte for byte; absent conflicts and violations are left out"
        );
        let read: Document = serde_json::from_str(&text).unwrap();
        assert_eq!(read.value["name"], "Ada");
        assert_eq!(read.conflicts, None);
        let with_none = Document {
            conflicts: Some(vec![]),
            ..doc
        };
        assert!(serde_json::to_string(&with_none)
            .unwrap()
            .ends_with(r#""conflicts":[]}"#));
    }

    #[test]
    fn errors_name_their_code_and_only_the_details_that_apply() {
        let mut e = Error::new(Code::SessionUnavailable, "behind");
        e.region = Some("us".into());
        e.url = Some(None);
        let text = serde_json::to_string(&ErrorBody { error: e.clone() }).unwrap();
        assert_eq!(
            text,
            r#"{"error":{"code":"session_unavailable","message":"behind","region":"us","url":null}}"#
        );
        let back: ErrorBody = serde_json::from_str(&text).unwrap();
        assert_eq!(back.error, e);
        let plain = serde_json::to_string(&Error::new(Code::NotFound, "no document")).unwrap();
        assert_eq!(plain, r#"{"code":"not_found","message":"no document"}"#);
        let back: Error = serde_json::from_str(&plain).unwrap();
        assert_eq!((back.region, back.url), (None, None));
    }
}
