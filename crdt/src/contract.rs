//! What a collection's contract (its schema) asks of the document model: how each field merges,
//! and which rules a document breaks. The server builds contracts from JSON Schemas; the model
//! only asks these two questions, so it knows nothing of JSON Schema.

use std::fmt::Debug;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How concurrent writes to one field merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Merge {
    /// The later write (by hybrid time) wins; the other values stay readable as conflicts.
    #[default]
    Lww,
    /// An integer changed only by `increment`: concurrent increments add up.
    Counter,
    /// A string edited as text: a write becomes the smallest splice, so concurrent edits of
    /// different parts both survive.
    Text,
    /// A list written element-wise: a write inserts and removes only the elements that differ,
    /// so concurrent inserts and removes both survive.
    List,
}

/// One rule a document breaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Violation {
    /// A JSON Pointer to the offending value (`""` for the document itself).
    pub path: String,
    pub message: String,
}

/// A collection's contract.
pub trait Contract: Send + Sync + Debug {
    /// How the field at `path` (JSON Pointer tokens, list indexes as decimal strings) merges.
    fn merge_at(&self, path: &[String]) -> Merge;
    /// The rules `value` (a rendered document) breaks, in a stable order; empty if none.
    fn violations(&self, value: &Value) -> Vec<Violation>;
    /// An upper bound of the counters one PUT or merge patch may create (see
    /// [`crate::Edit::counter_bound`]).
    fn counter_fields(&self) -> usize;
}
