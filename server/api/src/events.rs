//! The data of the change stream's events (`text/event-stream`; see `docs/changes.md`).

use serde::{Deserialize, Serialize};

/// A `change` event: the document after the change, and who made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Change<V = serde_json::Value> {
    pub collection: String,
    pub id: String,
    /// The document's JSON object; null when the change deleted it.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub value: Option<V>,
    pub version: String,
    pub deleted: bool,
    /// Null only for a damaged stored key.
    pub automerge_url: Option<String>,
    /// The node and stamp of the change's last part (null if no node stamped it).
    pub node: Option<String>,
    pub hlc: Option<String>,
    /// Every node stamp of the change, in order.
    pub changes: Vec<Stamp>,
}

/// A node's stamp on a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stamp {
    pub node: String,
    pub hlc: String,
}

/// A `document` event: the document as it is when a stream opens on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DocumentEvent<V = serde_json::Value> {
    pub collection: String,
    pub id: String,
    /// Null when the document does not exist or is deleted.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub value: Option<V>,
    /// Null when the document never existed here.
    pub version: Option<String>,
    pub deleted: bool,
    pub automerge_url: String,
}
