//! Which of a field's concurrent values wins: the one whose change has the latest stamp.
//!
//! A node's change carries its HLC stamp in its message. A client's change (automerge-repo
//! sync) carries none: it takes the stamp of the node that accepted it. That node makes, in the
//! same durable commit, an empty *stamp change* whose message is its HLC stamp and whose
//! dependencies are its heads, which include the client's changes. So a client change's stamp is
//! the earliest stamp of any node change that has it in its history: a pure function of the
//! history, the same on every node and every client that holds it, and it travels with the
//! document through feeds, anti-entropy and client sync without any side channel. A client
//! change no node has stamped yet (a client's own edit before it syncs) ranks *pending*, after
//! every stamped one: on the client it shows as the latest write, as it is there.

use std::collections::HashMap;

use automerge::transaction::Transaction;
use automerge::{Automerge, ChangeHash, ObjId, Prop, ReadDoc, Value as AmValue};
use uhlc::Timestamp;

use super::counter::is_counter_actor;
use super::layout::{genesis_hash, is_node_actor};
use crate::hlc::parse_stamp;

/// Where an op's change stands in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Rank {
    /// Genesis (and a node change without a readable stamp, which no node writes): first.
    Genesis,
    Stamped(Timestamp),
    /// A client change no node has stamped yet, or an op of the open transaction: last.
    Pending,
}

/// Ordering key of one op: its rank, then actor, then op counter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OpOrder {
    pub(crate) rank: Rank,
    pub(crate) actor: Vec<u8>,
    pub(crate) counter: u64,
}

/// A document that can tell which change an op belongs to and read a change's message.
pub(crate) trait History: ReadDoc {
    fn change_of(&self, id: &ObjId) -> Option<ChangeHash>;
    fn message_of(&self, hash: &ChangeHash) -> Option<String>;
}

impl History for Automerge {
    fn change_of(&self, id: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(id)
    }
    fn message_of(&self, hash: &ChangeHash) -> Option<String> {
        self.get_change_meta_by_hash(hash)
            .and_then(|m| m.message.map(|s| s.into_owned()))
    }
}

impl History for Transaction<'_> {
    fn change_of(&self, id: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(id)
    }
    fn message_of(&self, hash: &ChangeHash) -> Option<String> {
        // a transaction exposes only whole changes; this runs for conflicting fields only
        self.get_change_by_hash(hash)
            .and_then(|c| c.message().map(str::to_owned))
    }
}

/// Stamps of changes without their own (client changes): for each, the earliest stamp of a node
/// change that has it in its history, or `None` while there is none. Kept up to date as
/// changes arrive; empty for a document only nodes ever wrote.
#[derive(Debug, Clone, Default)]
pub(crate) struct Adopted(HashMap<ChangeHash, Option<Timestamp>>);

/// One change's place in the history, as [`Adopted`] needs it.
pub(crate) struct Meta {
    pub(crate) hash: ChangeHash,
    pub(crate) deps: Vec<ChangeHash>,
    /// The node's stamp, for a node change.
    pub(crate) stamp: Option<Timestamp>,
    /// A counter's creation change (see `counter`): never stamped, ranks with genesis.
    pub(crate) counter: bool,
}

/// The metadata of `hashes` (cheap in automerge 0.12: no change is rebuilt).
pub(crate) fn metas(am: &Automerge, hashes: &[ChangeHash]) -> Vec<Meta> {
    hashes
        .iter()
        .filter_map(|h| am.get_change_meta_by_hash(h))
        .map(|m| Meta {
            hash: m.hash,
            stamp: node_stamp(m.actor.to_bytes(), m.message.as_deref()),
            counter: is_counter_actor(m.actor.to_bytes()),
            deps: m.deps,
        })
        .collect()
}

/// The stamp of a node's change: its actor is a node id and its message an HLC stamp.
pub(crate) fn node_stamp(actor: &[u8], message: Option<&str>) -> Option<Timestamp> {
    if !is_node_actor(actor) {
        return None;
    }
    message.and_then(parse_stamp)
}

impl Adopted {
    /// From the whole history (at load).
    pub(crate) fn of(am: &Automerge) -> Adopted {
        let all: Vec<ChangeHash> = am.get_changes_meta(&[]).iter().map(|m| m.hash).collect();
        let mut a = Adopted::default();
        a.added(am, &all);
        a
    }

    /// Takes note of changes just added to the document (any order).
    pub(crate) fn added(&mut self, am: &Automerge, hashes: &[ChangeHash]) {
        let genesis = genesis_hash();
        let metas = metas(am, hashes);
        for m in &metas {
            if m.stamp.is_none() && m.hash != genesis && !m.counter {
                self.0.entry(m.hash).or_insert(None);
            }
        }
        if self.0.is_empty() {
            return;
        }
        for m in &metas {
            if let Some(stamp) = m.stamp {
                self.adopt(am, &m.deps, stamp);
            }
        }
    }

    /// A node change stamped `stamp` has `deps` in its history: every client change it reaches
    /// through client changes takes the stamp, unless it has an earlier one. The walk stops at
    /// node changes, which hold their own stamps, and at client changes stamped earlier.
    fn adopt(&mut self, am: &Automerge, deps: &[ChangeHash], stamp: Timestamp) {
        let mut stack: Vec<ChangeHash> = deps.to_vec();
        while let Some(h) = stack.pop() {
            let Some(current) = self.0.get_mut(&h) else {
                continue; // a node change or genesis
            };
            if current.is_some_and(|c| c <= stamp) {
                continue;
            }
            *current = Some(stamp);
            if let Some(m) = am.get_change_meta_by_hash(&h) {
                stack.extend(m.deps);
            }
        }
    }

    /// The stamp of a change without its own: `None` if it is a node change or genesis;
    /// `Some(None)` while pending.
    pub(crate) fn get(&self, hash: &ChangeHash) -> Option<Option<Timestamp>> {
        self.0.get(hash).copied()
    }

    /// True if some client change has no stamp yet.
    pub(crate) fn any_pending(&self) -> bool {
        self.0.values().any(Option::is_none)
    }
}

/// Ranks ops, caching each change's rank for one pass over a document.
pub(crate) struct Ranker<'a> {
    adopted: &'a Adopted,
    cache: HashMap<ChangeHash, Rank>,
}

impl<'a> Ranker<'a> {
    pub(crate) fn new(adopted: &'a Adopted) -> Self {
        Ranker {
            adopted,
            cache: HashMap::new(),
        }
    }

    pub(crate) fn order<D: History>(&mut self, doc: &D, id: &ObjId) -> OpOrder {
        let (counter, actor) = match id {
            ObjId::Id(counter, actor, _) => (*counter, actor.to_bytes().to_vec()),
            ObjId::Root => (0, vec![]),
        };
        let rank = match doc.change_of(id) {
            None => Rank::Pending, // an op of the open transaction
            Some(h) => match self.cache.get(&h) {
                Some(r) => *r,
                None => {
                    let r = self.rank_of(doc, &h, &actor);
                    self.cache.insert(h, r);
                    r
                }
            },
        };
        OpOrder {
            rank,
            actor,
            counter,
        }
    }

    fn rank_of<D: History>(&self, doc: &D, hash: &ChangeHash, actor: &[u8]) -> Rank {
        if *hash == genesis_hash() || is_counter_actor(actor) {
            return Rank::Genesis;
        }
        if is_node_actor(actor) {
            return match doc.message_of(hash).as_deref().and_then(parse_stamp) {
                Some(ts) => Rank::Stamped(ts),
                None => Rank::Genesis,
            };
        }
        match self.adopted.get(hash) {
            Some(Some(ts)) => Rank::Stamped(ts),
            _ => Rank::Pending,
        }
    }

    /// All values of `prop` in `obj`, winner (latest) first.
    pub(crate) fn ranked<'d, D: History>(
        &mut self,
        doc: &'d D,
        obj: &ObjId,
        prop: Prop,
    ) -> Vec<(AmValue<'d>, ObjId)> {
        let mut all = doc.get_all(obj, prop).unwrap_or_default();
        if all.len() > 1 {
            all.sort_by_cached_key(|(_, id)| std::cmp::Reverse(self.order(doc, id)));
        }
        all
    }
}

/// The node id behind a stamp (its HLC id is the node id's bytes).
pub(crate) fn stamp_node(ts: &Timestamp) -> String {
    let id = ts.get_id();
    String::from_utf8_lossy(&id.to_le_bytes()[..id.size()]).into_owned()
}
