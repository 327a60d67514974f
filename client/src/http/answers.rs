//! The node's answers, typed: the API's own wire types (`meridian-api`, from which the node's
//! `GET /openapi.json` is generated), with JSON values as `serde_json::Value`.

/// A document as the node answers it. `conflicts` is set by
/// [`crate::Client::get_with_conflicts`]: fields with concurrent values, winner first.
pub type Doc = meridian_api::Document;

/// The answer to a DELETE.
pub use meridian_api::Deleted;

/// One document of a list.
pub type Item = meridian_api::Item;

/// One page of a collection.
pub type Page = meridian_api::Page;

/// The answer to a PUT, PATCH or ops.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub doc: Doc,
    /// The write made the document exist.
    pub created: bool,
    /// A retry got the stored answer of an earlier try (the write applied once).
    pub replayed: bool,
}
