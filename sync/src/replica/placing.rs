//! Changing where a collection lives (see `meridian_crdt::Placement` for what it means): the
//! placement document is written here like the membership document, and reaches the other
//! regions by the feeds and anti-entropy. The store applies each version as it becomes durable.

use std::collections::BTreeSet;

use meridian_crdt::{Edit, NodeId, Placement};
use serde::Serialize;

use super::members::MemberError;
use super::regions::RegionsError;
use super::{Replica, Transport};

/// The placement as this node holds it (`GET /v1/_placement`).
#[derive(Debug, Clone, Serialize)]
pub struct PlacementReport {
    pub node: String,
    /// Each placed collection; the others go to every region.
    pub collections: Vec<PlacedCollection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacedCollection {
    pub collection: String,
    pub regions: Vec<String>,
    /// Whether this node holds it.
    pub here: bool,
}

impl<T: Transport> Replica<T> {
    pub fn placement(&self) -> PlacementReport {
        let p = self.shared.store.placement();
        let me = self.shared.me.as_str();
        PlacementReport {
            node: me.to_owned(),
            collections: p
                .iter()
                .map(|(c, r)| PlacedCollection {
                    collection: c.to_owned(),
                    regions: r.iter().cloned().collect(),
                    here: r.contains(me),
                })
                .collect(),
        }
    }

    /// Limits `collection` to `regions` (each this node or one it follows), durably here before
    /// this returns; the other regions apply it once the change reaches them.
    pub async fn place(
        &self,
        collection: &str,
        regions: &[String],
    ) -> Result<PlacementReport, RegionsError> {
        check_collection(collection)?;
        if regions.is_empty() {
            return Err(MemberError::Invalid(
                "a placement names at least one region; to send the collection everywhere \
                 again, remove its placement instead (DELETE)"
                    .into(),
            )
            .into());
        }
        let known: BTreeSet<String> = self
            .peers()
            .iter()
            .map(|p| p.peer.id.to_string())
            .chain([self.shared.me.clone()])
            .collect();
        let mut set = BTreeSet::new();
        for r in regions {
            NodeId::new(r).map_err(|e| MemberError::Invalid(format!("region {r:?}: {e}")))?;
            if let Some(at) = self.shared.membership.lock().removed.get(r) {
                return Err(MemberError::Removed {
                    id: r.clone(),
                    at: at.clone(),
                }
                .into());
            }
            if !known.contains(r) {
                return Err(MemberError::Unknown(r.clone()).into());
            }
            set.insert(r.clone());
        }
        self.write_placement(collection, &set).await
    }

    /// Sends `collection` to every region again (regions outside it get its documents by
    /// anti-entropy).
    pub async fn unplace(&self, collection: &str) -> Result<PlacementReport, RegionsError> {
        check_collection(collection)?;
        self.write_placement(collection, &BTreeSet::new()).await
    }

    async fn write_placement(
        &self,
        collection: &str,
        regions: &BTreeSet<String>,
    ) -> Result<PlacementReport, RegionsError> {
        if let Some(at) = self.removed_at() {
            return Err(RegionsError::Departed(at));
        }
        let current = self.shared.store.placement();
        let unchanged = match current.regions_of(collection) {
            Some(r) => r == regions,
            None => regions.is_empty(),
        };
        if !unchanged {
            self.shared
                .store
                .write(
                    &Placement::key(),
                    Edit::Patch(Placement::patch(collection, regions)),
                    None,
                )
                .await?;
        }
        Ok(self.placement())
    }
}

fn check_collection(collection: &str) -> Result<(), MemberError> {
    meridian_crdt::validate_name("collection", collection)
        .map_err(|e| MemberError::Invalid(e.to_string()))?;
    if collection.starts_with('_') {
        return Err(MemberError::Invalid(format!(
            "collection {collection:?} is Meridian's own (it begins with _): it goes to every region"
        )));
    }
    Ok(())
}
