//! Placement: a collection limited to a set of regions.
//!
//! The placement is a document every region holds, `_regions/placement`, replicated like the
//! membership document beside it (so every region knows where each collection lives, also the
//! ones outside). One scalar field per placed collection, its name, holding the regions as a
//! sorted, comma-separated list; a collection with no field goes everywhere. Two regions
//! placing one collection concurrently: the later write wins, everywhere alike.
//!
//! What a placement means, applied by the store and the replication layer: a region outside a
//! collection's placement neither receives its documents (a feed page, a digest, a repair
//! answer to it leave them out, and it drops any that arrive anyway) nor serves them; two
//! regions compare in anti-entropy only what both should hold. Pure: parsing, the questions
//! asked of it, and the patches that change it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::key::DocKey;

/// The collection of the placement document (beside the membership document).
pub const PLACEMENT_COLLECTION: &str = "_regions";
/// The placement document's id.
pub const PLACEMENT_DOC: &str = "placement";

/// Where each placed collection lives (collections not named go to every region).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    placed: BTreeMap<String, BTreeSet<String>>,
}

impl Placement {
    /// The placement document's key.
    pub fn key() -> DocKey {
        DocKey::new(PLACEMENT_COLLECTION, PLACEMENT_DOC).expect("a valid key")
    }

    /// Reads the document's fields; a field of another shape, or an empty list, places nothing.
    pub fn parse(doc: &Map<String, Value>) -> Placement {
        let mut placed = BTreeMap::new();
        for (collection, v) in doc {
            let Some(list) = v.as_str() else { continue };
            let regions: BTreeSet<String> = list
                .split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect();
            if !regions.is_empty() && !collection.starts_with('_') {
                placed.insert(collection.clone(), regions);
            }
        }
        Placement { placed }
    }

    /// Parses the document's JSON as stored (anything else places nothing).
    pub fn from_json(json: &str) -> Placement {
        serde_json::from_str::<Map<String, Value>>(json)
            .map(|m| Placement::parse(&m))
            .unwrap_or_default()
    }

    /// The regions `collection` is limited to, if it is placed.
    pub fn regions_of(&self, collection: &str) -> Option<&BTreeSet<String>> {
        self.placed.get(collection)
    }

    /// Whether `region` holds `collection` (Meridian's own collections go everywhere).
    pub fn holds(&self, collection: &str, region: &str) -> bool {
        self.placed
            .get(collection)
            .is_none_or(|regions| regions.contains(region))
    }

    /// Whether both regions hold `collection`: what two regions may send each other.
    pub fn shares(&self, collection: &str, a: &str, b: &str) -> bool {
        self.holds(collection, a) && self.holds(collection, b)
    }

    /// The placed collections that `a` and `b` do not both hold: what their anti-entropy
    /// digests leave out.
    pub fn not_shared(&self, a: &str, b: &str) -> Vec<&str> {
        self.placed
            .iter()
            .filter(|(_, r)| !(r.contains(a) && r.contains(b)))
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// Every placed collection and its regions.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BTreeSet<String>)> {
        self.placed.iter().map(|(c, r)| (c.as_str(), r))
    }

    pub fn is_empty(&self) -> bool {
        self.placed.is_empty()
    }

    /// The patch that places `collection` in `regions` (none: everywhere again).
    pub fn patch(collection: &str, regions: &BTreeSet<String>) -> Map<String, Value> {
        let value = if regions.is_empty() {
            Value::Null
        } else {
            Value::String(regions.iter().cloned().collect::<Vec<_>>().join(","))
        };
        Map::from_iter([(collection.to_owned(), value)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(r: &[&str]) -> BTreeSet<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_placed_collection_is_held_by_its_regions_only() {
        let p = Placement::parse(
            json!({"users": "eu,us", "logs": "", "_schemas": "us", "odd": 3})
                .as_object()
                .unwrap(),
        );
        assert_eq!(p.regions_of("users"), Some(&set(&["eu", "us"])));
        assert!(p.holds("users", "us") && p.holds("users", "eu") && !p.holds("users", "ap"));
        // unplaced, an empty list, a value of another shape, Meridian's own: everywhere
        for c in ["settings", "logs", "odd", "_schemas"] {
            assert!(p.holds(c, "ap"), "{c}");
        }
        assert!(p.shares("users", "us", "eu"));
        assert!(!p.shares("users", "us", "ap") && !p.shares("users", "ap", "us"));
        assert!(p.shares("settings", "us", "ap"));
        assert_eq!(p.not_shared("us", "eu"), Vec::<&str>::new());
        assert_eq!(p.not_shared("us", "ap"), vec!["users"]);
        assert_eq!(p.not_shared("ap", "ap"), vec!["users"]);
    }

    #[test]
    fn patches_round_trip_and_an_empty_set_clears() {
        let patch = Placement::patch("users", &set(&["us", "eu"]));
        assert_eq!(Value::Object(patch.clone()), json!({"users": "eu,us"}));
        let p = Placement::parse(&patch);
        assert_eq!(p.regions_of("users"), Some(&set(&["eu", "us"])));
        assert_eq!(
            Value::Object(Placement::patch("users", &BTreeSet::new())),
            json!({"users": null})
        );
        assert_eq!(Placement::from_json("not json"), Placement::default());
        assert_eq!(
            Placement::from_json(r#"{"users":"us"}"#).regions_of("users"),
            Some(&set(&["us"]))
        );
    }
}
