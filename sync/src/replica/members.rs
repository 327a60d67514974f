//! Which regions a node follows, changed while nodes run.
//!
//! The set is a document every region holds, `_regions/members`, replicated like any other (by
//! the feeds and anti-entropy), so changing it needs no agreement between regions: a node
//! follows the regions its `--peer` flags name and the ones the document names, less the ones
//! it marks removed, less itself. The document's fields are flat, one scalar per region and
//! fact, so that regions writing it concurrently never conflict over a nested object:
//! `url:<id>` (where to reach it; the newest write wins) and `removed:<id>` (the HLC time it
//! was removed; never unset). A removal therefore wins over any concurrent or later add:
//! re-adding an id is refused, because a region coming back under it would reuse its automerge
//! actor's sequence numbers, which the others hold already.
//!
//! A cluster whose membership never changed at runtime has no such document: the flags are the
//! whole set. The first change writes it; from then on each node adds the regions only its own
//! flags name (`Plan::fill`), so that a region that joined through one seed learns of all.
//!
//! Everything here is pure (`Members::parse`, `plan`, `add`, `remove`); `Replica` reads the
//! document, writes the patches and starts and stops following peers.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::Peer;
use meridian_crdt::NodeId;

/// The collection of the membership document (collections beginning with `_` are Meridian's).
pub const REGIONS: &str = "_regions";
/// The membership document's id.
pub const MEMBERS: &str = "members";

const URL: &str = "url:";
const REMOVED: &str = "removed:";

/// What the membership document says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// Regions added, and where they are reached.
    pub urls: BTreeMap<String, String>,
    /// Regions removed, and the HLC time of the removal (displayed).
    pub removed: BTreeMap<String, String>,
}

/// Why a membership change is refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberError {
    /// The id or the URL is malformed.
    Invalid(String),
    /// The region was removed (at `at`); its id cannot come back.
    Removed { id: String, at: String },
    /// No such region in the set.
    Unknown(String),
    /// A node is asked to add or remove itself.
    Myself(String),
}

impl std::fmt::Display for MemberError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MemberError::Invalid(m) => f.write_str(m),
            MemberError::Removed { id, at } => write!(
                f,
                "region {id} was removed at {at} and cannot be added again under that id: its \
                 changes carry automerge sequence numbers the other regions hold, which a new \
                 data dir under the same id would reuse. Start the region with a new data dir \
                 and a new node id, and add that"
            ),
            MemberError::Unknown(id) => write!(f, "no region {id} in this cluster"),
            MemberError::Myself(id) => write!(
                f,
                "{id} is this node: add or remove a region through another region's node"
            ),
        }
    }
}

impl std::error::Error for MemberError {}

/// What a node does with the set: the peers to follow and what it knows of the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Peers to follow, by id.
    pub follow: Vec<Peer>,
    /// Removed regions, with the time of their removal.
    pub removed: BTreeMap<String, String>,
    /// This node itself was removed (at that time): it follows nobody and takes no writes.
    pub me_removed: Option<String>,
    /// Flags the document does not name: added to it once it exists.
    pub fill: Map<String, Value>,
    /// Flags naming removed regions, ignored.
    pub ignored: Vec<String>,
}

impl Members {
    /// Reads the document's fields; fields of another shape are ignored (a newer release's).
    pub fn parse(doc: &Map<String, Value>) -> Members {
        let mut m = Members::default();
        for (k, v) in doc {
            let Some(v) = v.as_str() else { continue };
            if let Some(id) = k.strip_prefix(URL) {
                m.urls.insert(id.to_owned(), v.to_owned());
            } else if let Some(id) = k.strip_prefix(REMOVED) {
                m.removed.insert(id.to_owned(), v.to_owned());
            }
        }
        m
    }

    /// Whether the document exists at all (a cluster whose set never changed has none).
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty() && self.removed.is_empty()
    }

    /// The peers `me` follows given its `seeds` (the `--peer` flags): the document's URL for a
    /// region wins over a flag's (it is the runtime setting).
    pub fn plan(&self, seeds: &[Peer], me: &str) -> Plan {
        let mut follow: BTreeMap<String, String> = BTreeMap::new();
        let mut plan = Plan {
            removed: self.removed.clone(),
            me_removed: self.removed.get(me).cloned(),
            ..Plan::default()
        };
        for s in seeds {
            let id = s.id.as_str();
            if self.removed.contains_key(id) {
                plan.ignored.push(id.to_owned());
                continue;
            }
            if !self.is_empty() && !self.urls.contains_key(id) && id != me {
                plan.fill
                    .insert(format!("{URL}{id}"), Value::String(s.addr.clone()));
            }
            follow.insert(id.to_owned(), s.addr.clone());
        }
        for (id, url) in &self.urls {
            if !self.removed.contains_key(id) {
                follow.insert(id.clone(), url.clone());
            }
        }
        follow.remove(me);
        if plan.me_removed.is_none() {
            plan.follow = follow
                .into_iter()
                .filter_map(|(id, addr)| {
                    Some(Peer {
                        id: NodeId::new(&id).ok()?,
                        addr,
                    })
                })
                .collect();
        }
        plan
    }

    /// The patch that adds region `id` at `url`, given what `me` follows now (`current`, the
    /// regions the flags brought: the first change writes them all, so that the joining region
    /// learns of every one). `None`: it is there already, at that URL.
    pub fn add(
        &self,
        id: &str,
        url: &str,
        me: &str,
        current: &[Peer],
    ) -> Result<Option<Map<String, Value>>, MemberError> {
        NodeId::new(id).map_err(|e| MemberError::Invalid(e.to_string()))?;
        check_url(url)?;
        if id == me {
            return Err(MemberError::Myself(id.to_owned()));
        }
        if let Some(at) = self.removed.get(id) {
            return Err(MemberError::Removed {
                id: id.to_owned(),
                at: at.clone(),
            });
        }
        if self.urls.get(id).map(String::as_str) == Some(url) {
            return Ok(None);
        }
        let mut patch = self.unnamed(current);
        patch.insert(format!("{URL}{id}"), Value::String(url.to_owned()));
        Ok(Some(patch))
    }

    /// The patch that removes region `id` at `now` (the HLC time, displayed), with the regions
    /// `current` as in [`Members::add`]. `None`: it was removed already.
    pub fn remove(
        &self,
        id: &str,
        me: &str,
        now: &str,
        current: &[Peer],
    ) -> Result<Option<Map<String, Value>>, MemberError> {
        NodeId::new(id).map_err(|e| MemberError::Invalid(e.to_string()))?;
        if id == me {
            return Err(MemberError::Myself(id.to_owned()));
        }
        if self.removed.contains_key(id) {
            return Ok(None);
        }
        if !self.urls.contains_key(id) && !current.iter().any(|p| p.id.as_str() == id) {
            return Err(MemberError::Unknown(id.to_owned()));
        }
        let mut patch = self.unnamed(current);
        patch.insert(format!("{REMOVED}{id}"), Value::String(now.to_owned()));
        Ok(Some(patch))
    }
}

impl Members {
    /// The fields naming what `current` follows that the document does not name yet: every
    /// change writes them, so that a region reached through it learns of all.
    fn unnamed(&self, current: &[Peer]) -> Map<String, Value> {
        current
            .iter()
            .filter(|p| {
                let id = p.id.as_str();
                !self.urls.contains_key(id) && !self.removed.contains_key(id)
            })
            .map(|p| {
                (
                    format!("{URL}{}", p.id.as_str()),
                    Value::String(p.addr.clone()),
                )
            })
            .collect()
    }
}

/// A peer URL: `http://` or `https://`, a host, no path beyond `/`, no query.
pub fn check_url(url: &str) -> Result<(), MemberError> {
    let bad = |why: &str| Err(MemberError::Invalid(format!("region URL {url:?}: {why}")));
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return bad("must begin with http:// or https://");
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    if host.is_empty() {
        return bad("has no host");
    }
    if host.len() > 200 {
        return bad("is longer than 200 bytes");
    }
    if host.contains(['/', '?', '#', ' ', '@']) || host.chars().any(|c| c.is_control()) {
        return bad("must be scheme://host[:port], without a path, query or user");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, addr: &str) -> Peer {
        Peer {
            id: NodeId::new(id).unwrap(),
            addr: addr.into(),
        }
    }

    fn doc(fields: &[(&str, &str)]) -> Members {
        let map: Map<String, Value> = fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        Members::parse(&map)
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.follow.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn without_a_document_the_flags_are_the_set() {
        let seeds = [peer("eu", "http://eu"), peer("ap", "http://ap")];
        let plan = Members::default().plan(&seeds, "us");
        assert_eq!(ids(&plan), ["ap", "eu"]);
        assert!(
            plan.fill.is_empty(),
            "no document is written for a static set"
        );
        // a node's own id among its flags (one list for every node) is not followed
        let plan = Members::default().plan(&[peer("us", "http://us")], "us");
        assert!(plan.follow.is_empty());
    }

    #[test]
    fn the_document_adds_regions_and_removal_wins_over_flags_and_urls() {
        let seeds = [peer("eu", "http://eu-old")];
        let m = doc(&[
            ("url:eu", "http://eu-new"),
            ("url:ap", "http://ap"),
            ("url:sa", "http://sa"),
            ("removed:sa", "1"),
        ]);
        let plan = m.plan(&seeds, "us");
        assert_eq!(ids(&plan), ["ap", "eu"]);
        assert_eq!(plan.follow[1].addr, "http://eu-new", "the runtime URL wins");
        assert_eq!(plan.removed.keys().collect::<Vec<_>>(), ["sa"]);
        // a flag naming a removed region is ignored, and said so
        let plan = m.plan(&[peer("sa", "http://sa")], "us");
        assert_eq!(plan.ignored, ["sa"]);
        assert!(!ids(&plan).contains(&"sa"));
    }

    #[test]
    fn once_the_document_exists_each_node_adds_what_only_its_flags_name() {
        let m = doc(&[("url:ap", "http://ap")]);
        let plan = m.plan(&[peer("eu", "http://eu"), peer("ap", "http://x")], "us");
        assert_eq!(
            plan.fill.keys().collect::<Vec<_>>(),
            ["url:eu"],
            "only what the document lacks"
        );
    }

    #[test]
    fn a_removed_node_follows_nobody() {
        let m = doc(&[("url:eu", "http://eu"), ("removed:us", "7")]);
        let plan = m.plan(&[peer("eu", "http://eu")], "us");
        assert_eq!(plan.me_removed.as_deref(), Some("7"));
        assert!(plan.follow.is_empty());
    }

    #[test]
    fn adds_write_the_flags_with_them_and_repeat_as_no_change() {
        let current = [peer("eu", "http://eu")];
        let patch = Members::default()
            .add("ap", "http://ap:7070", "us", &current)
            .unwrap()
            .unwrap();
        assert_eq!(patch.keys().collect::<Vec<_>>(), ["url:ap", "url:eu"]);
        let m = Members::parse(&patch);
        assert_eq!(m.add("ap", "http://ap:7070", "us", &current), Ok(None));
        // a new URL for a region is a change
        let moved = m.add("ap", "http://ap2", "us", &current).unwrap().unwrap();
        assert_eq!(moved.keys().collect::<Vec<_>>(), ["url:ap"]);
    }

    #[test]
    fn bad_changes_are_refused_with_why() {
        let m = doc(&[("url:eu", "http://eu"), ("removed:eu", "5")]);
        assert!(matches!(
            m.add("eu", "http://eu", "us", &[]),
            Err(MemberError::Removed { .. })
        ));
        let msg = m.add("eu", "http://eu", "us", &[]).unwrap_err().to_string();
        assert!(msg.contains("sequence numbers"), "{msg}");
        assert_eq!(
            m.add("us", "http://us", "us", &[]),
            Err(MemberError::Myself("us".into()))
        );
        assert_eq!(
            m.remove("ap", "us", "9", &[]),
            Err(MemberError::Unknown("ap".into()))
        );
        assert_eq!(m.remove("eu", "us", "9", &[]), Ok(None), "removed already");
        for (id, url) in [
            ("a b", "http://x"),
            ("ok", "ftp://x"),
            ("ok", "http://"),
            ("ok", "http://x/path"),
            ("ok", "http://u@x"),
            ("ok", "http://x?q"),
        ] {
            assert!(
                matches!(m.add(id, url, "us", &[]), Err(MemberError::Invalid(_))),
                "{id} {url}"
            );
        }
        assert_eq!(check_url("https://eu.example:7443/"), Ok(()));
    }

    #[test]
    fn concurrent_adds_and_removes_converge_to_removed() {
        // the document's fields are scalars merged one by one: any order of the same writes
        let add = Members::default()
            .add("ap", "http://ap", "us", &[])
            .unwrap()
            .unwrap();
        let remove = Members::parse(&add)
            .remove("ap", "eu", "3", &[])
            .unwrap()
            .unwrap();
        let mut a = add.clone();
        a.extend(remove.clone());
        let mut b = remove;
        b.extend(add);
        assert_eq!(Members::parse(&a), Members::parse(&b));
        assert!(Members::parse(&a).plan(&[], "us").follow.is_empty());
    }
}
