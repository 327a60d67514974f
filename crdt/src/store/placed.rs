//! The placement this node holds (see [`crate::Placement`]): read from its document at open,
//! and again whenever a new version of the document is durable here, by any path (a local
//! admin write, a peer's feed or repair, a heal). The replication layer asks it what to send
//! and take; reads and writes of a collection placed elsewhere are refused here, whichever
//! surface they come through (HTTP, sync clients).

use std::sync::Arc;

use super::{Inner, Store};
use crate::error::{Error, Result};
use crate::key::DocKey;
use crate::placement::{Placement, PLACEMENT_COLLECTION, PLACEMENT_DOC};
use crate::record::DocRecord;

/// What a stored record of the placement document says (a deleted one places nothing).
pub(super) fn of_record(rec: Option<&DocRecord>) -> Placement {
    match rec {
        Some(rec) if rec.state == crate::doc::State::Live => Placement::from_json(&rec.json),
        _ => Placement::default(),
    }
}

impl Inner {
    /// A new version of `key` is durable: if it is the placement document, it now holds.
    pub(super) fn placement_written(&self, key: &DocKey, rec: &DocRecord) {
        if key.collection() != PLACEMENT_COLLECTION || key.id() != PLACEMENT_DOC {
            return;
        }
        let new = of_record(Some(rec));
        let mut current = self.placement.write();
        if **current != new {
            tracing::info!(placement = ?new, "the placement changed");
            *current = Arc::new(new);
        }
    }

    /// `Err(Elsewhere)` when this node is outside `collection`'s placement.
    pub(super) fn check_placed(&self, collection: &str) -> Result<()> {
        let placement = self.placement.read();
        match placement.regions_of(collection) {
            Some(regions) if !regions.contains(self.node.as_str()) => Err(Error::Elsewhere {
                collection: collection.to_owned(),
                regions: regions.iter().cloned().collect(),
            }),
            _ => Ok(()),
        }
    }
}

impl Store {
    /// The placement as this node holds it now.
    pub fn placement(&self) -> Arc<Placement> {
        self.inner.placement.read().clone()
    }

    /// Whether this node holds `collection`'s documents (it is not placed elsewhere).
    pub fn holds(&self, collection: &str) -> bool {
        self.inner.check_placed(collection).is_ok()
    }

    /// `Err(Elsewhere)` naming where `collection` lives when this node is outside it.
    pub fn check_placed(&self, collection: &str) -> Result<()> {
        self.inner.check_placed(collection)
    }
}
