//! The node's answers, typed (the document shape of `GET /openapi.json`).

use meridian_crdt::Conflict;
use serde::Deserialize;
use serde_json::Value;

/// A document as the node answers it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Doc {
    pub collection: String,
    pub id: String,
    pub value: Value,
    pub version: String,
    /// Its automerge-repo URL: open it offline with [`crate::Replicas::open_doc`].
    pub automerge_url: String,
    /// With [`crate::Client::get_with_conflicts`]: fields with concurrent values, winner first.
    #[serde(default)]
    pub conflicts: Vec<Conflict>,
}

/// The answer to a PUT, PATCH or ops.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub doc: Doc,
    /// The write made the document exist.
    pub created: bool,
    /// A retry got the stored answer of an earlier try (the write applied once).
    pub replayed: bool,
}

/// The answer to a DELETE.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Deleted {
    pub collection: String,
    pub id: String,
    pub version: String,
    pub automerge_url: String,
}

/// One document of a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Item {
    pub id: String,
    pub value: Value,
    pub version: String,
    pub automerge_url: String,
}

/// One page of a collection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Page {
    pub items: Vec<Item>,
    /// The cursor for the next page, if there may be one.
    pub next: Option<String>,
}
