//! One JSON document as an automerge CRDT.
//!
//! # Layout
//! - `layout`: genesis, the root keys `v` and `d`, and the check that client changes keep them.
//! - `order`: which concurrent value wins (HLC stamps; client changes take the stamp of the node
//!   that accepted them).
//! - `remote`: a change received from another node, parsed and checked once.
//! - `render`: the document as JSON, and its conflicts.
//! - `writer`: an open transaction writing values as minimal changes, each field merging as
//!   the collection's contract says (lww, counter, text, list); PUT and merge patch.
//! - `edit`: the [`Edit`] a write asks for, dispatched to the writer.
//! - `ops`: the ops API.
//! - `counter`: counters created alike on every replica, so concurrent first increments add up.
//! - `client`: a node's side of client sync: client changes checked on a copy, then stamped.
//!
//! # Conflicts
//! Concurrent writes to one field leave several values. The visible one is the value whose change
//! has the latest stamp (ties broken by actor, then op counter), not automerge's own op-id order,
//! so the winner is "last writer by hybrid time" on every node. All values stay readable through
//! [`Document::conflicts`].

mod client;
mod counter;
mod edit;
mod layout;
mod ops;
mod order;
mod remote;
mod render;
mod writer;

use std::collections::HashSet;

use automerge::transaction::CommitOptions;
use automerge::{ActorId, Automerge, ChangeHash, ReadDoc, ScalarValue, Value as AmValue, ROOT};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uhlc::Timestamp;

use crate::contract::Contract;
use crate::error::{Error, Result};
use layout::{load_options, user_obj, DELETED};
use order::{Adopted, Ranker};
pub use remote::RemoteChange;
use render::Renderer;

pub use client::{sync_message_carries_changes, ClientChanges, ClientCheck, SyncState};
pub use edit::Edit;
pub use layout::{genesis_bytes, genesis_hash};
pub use ops::{parse_ops, Op};
#[cfg(feature = "store")]
pub(crate) use order::stamp_node;
pub use render::{Conflict, ConflictValue};

/// Whether a document exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Nothing but genesis: never written.
    Absent,
    Live,
    /// Deleted, and not re-created since.
    Deleted,
}

/// What a successful edit did.
#[derive(Debug)]
pub struct Applied {
    /// The new change's raw bytes and hash, or `None` when the edit changed nothing.
    pub change: Option<(ChangeHash, Vec<u8>)>,
    /// The creation changes of counters the edit created (see `counter`), before `change`,
    /// which depends on them.
    pub created: Vec<(ChangeHash, Vec<u8>)>,
    pub before: State,
}

/// A document: an automerge doc, the actor this replica writes as, and the stamps its client
/// changes took.
#[derive(Debug, Clone)]
pub struct Document {
    am: Automerge,
    adopted: Adopted,
    /// `state_of(am)`, once asked, until `am` changes (every write asks before and after:
    /// reading every value of the deletion flag was 4% of a PATCH's CPU).
    state: std::cell::Cell<Option<State>>,
}

impl Document {
    /// A document with nothing but genesis.
    pub fn new(actor: ActorId) -> Self {
        let mut am = layout::genesis_doc();
        am.set_actor(actor);
        Document {
            am,
            adopted: Adopted::default(),
            state: Default::default(),
        }
    }

    /// Loads a snapshot (or genesis, when `None`) and then incremental chunks in order.
    pub fn load<'a>(
        actor: ActorId,
        snapshot: Option<&[u8]>,
        increments: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self> {
        let mut am = match snapshot {
            Some(s) => Automerge::load_with_options(s, load_options())?,
            None => layout::genesis_doc(),
        };
        // one batch: applying 31 changes at once costs a third of applying them one by one
        let batch: Vec<u8> = increments.into_iter().flatten().copied().collect();
        if !batch.is_empty() {
            am.load_incremental(&batch)?;
        }
        if !am.get_missing_deps(&[]).is_empty() {
            return Err(Error::Corrupt(
                "document history has missing changes".into(),
            ));
        }
        am.set_actor(actor);
        let adopted = Adopted::of(&am);
        Ok(Document {
            am,
            adopted,
            state: Default::default(),
        })
    }

    /// The whole history, compressed.
    pub fn save(&self) -> Vec<u8> {
        self.am.save()
    }

    /// The changes after `heads`, compressed (for appending to a saved copy).
    pub fn save_after(&self, heads: &[ChangeHash]) -> Vec<u8> {
        self.am.save_after(heads)
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.am.get_heads()
    }

    /// How many changes the history holds (genesis included).
    pub fn change_count(&self) -> u64 {
        self.am.stats().num_changes
    }

    pub fn actor(&self) -> &ActorId {
        self.am.get_actor()
    }

    /// The opaque version string: a digest of the heads, so it changes with every change and is
    /// equal on two nodes exactly when they hold the same history.
    pub fn version(&self) -> String {
        version_of(&self.heads())
    }

    pub fn state(&self) -> State {
        if let Some(s) = self.state.get() {
            return s;
        }
        let s = state_of(&self.am);
        self.state.set(Some(s));
        s
    }

    /// `am` is about to change (or has): its state is read again when next asked.
    pub(super) fn touched(&self) {
        self.state.set(None);
    }

    /// The rules of `contract` the document breaks (none for a document that is not live).
    pub fn violations(&self, contract: &dyn Contract) -> Vec<crate::contract::Violation> {
        if self.state() != State::Live {
            return vec![];
        }
        contract.violations(&self.value())
    }

    /// The user's JSON object (what a GET returns).
    pub fn value(&self) -> Value {
        value_of(&self.am, &self.adopted)
    }

    /// Every field with concurrent values, winner first, in document order.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut r = Renderer::new(&self.am, Ranker::new(&self.adopted), true);
        r.object(&user_obj(&self.am), automerge::ObjType::Map);
        r.conflicts
    }

    /// Applies `edit` as one change stamped `stamp` (a node's HLC timestamp). On error nothing
    /// changes.
    pub fn apply(&mut self, edit: &Edit, stamp: &Timestamp) -> Result<Applied> {
        self.apply_with(edit, None, &|| stamped(stamp))
    }

    /// Applies `edit` as [`Document::apply`] does, with the fields merging as `contract` says;
    /// a result that breaks the contract is refused (`Error::SchemaViolation`), so nothing
    /// changes. A delete is never refused.
    pub fn apply_checked(
        &mut self,
        edit: &Edit,
        contract: Option<&dyn Contract>,
        stamp: &Timestamp,
    ) -> Result<Applied> {
        self.apply_with(edit, contract, &|| stamped(stamp))
    }

    /// Applies `edit` as a client's change: no stamp (the node that accepts it stamps it), the
    /// wall-clock time in seconds as automerge's advisory time. On error nothing changes.
    pub fn apply_unstamped(&mut self, edit: &Edit) -> Result<Applied> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.apply_with(edit, None, &|| CommitOptions::default().with_time(secs))
    }

    fn apply_with(
        &mut self,
        edit: &Edit,
        contract: Option<&dyn Contract>,
        opts: &dyn Fn() -> CommitOptions,
    ) -> Result<Applied> {
        let before = self.state();
        if matches!(edit, Edit::Delete) && before != State::Live {
            return Err(Error::NotFound);
        }
        self.touched();
        let (hash, creations) = write_edit(
            &mut self.am,
            &self.adopted,
            edit,
            before,
            contract,
            &[],
            opts,
        )?;
        if creations.is_empty() {
            return Ok(self.applied(hash, vec![], before));
        }
        // Counters to create first: on a copy, so that an error later leaves nothing behind.
        let mut am = self.am.clone();
        let (mut created, mut plain) = (Vec::new(), Vec::new());
        let mut pending = creations;
        let hash = loop {
            for (parent, key) in pending {
                match counter::create(&mut am, &parent, &key)? {
                    Some(h) => created.push(h),
                    // created before and since removed: an ordinary counter, in the edit itself
                    None => plain.push((parent, key)),
                }
            }
            let (hash, more) =
                write_edit(&mut am, &self.adopted, edit, before, contract, &plain, opts)?;
            if more.is_empty() {
                break hash;
            }
            pending = more;
        };
        self.am = am;
        self.touched();
        Ok(self.applied(hash, created, before))
    }

    /// Notes the changes an edit made and returns their bytes.
    fn applied(
        &mut self,
        hash: Option<ChangeHash>,
        created: Vec<ChangeHash>,
        before: State,
    ) -> Applied {
        let mut all = created.clone();
        all.extend(hash);
        self.adopted.added(&self.am, &all);
        let bytes = |h: &ChangeHash| {
            self.change_bytes(h)
                .expect("a change just committed is here")
        };
        Applied {
            created: created.iter().map(|h| (*h, bytes(h))).collect(),
            change: hash.map(|h| (h, bytes(&h))),
            before,
        }
    }

    /// Applies changes made elsewhere (raw change bytes), unchecked. Duplicates are ignored.
    pub fn merge_changes<'a>(&mut self, changes: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        let before = self.heads();
        self.touched();
        for c in changes {
            self.am.load_incremental(c)?;
        }
        self.note_added(&before);
        Ok(())
    }

    /// Applies changes received from another node, already parsed. Duplicates are ignored;
    /// changes whose dependencies are missing wait (see [`Document::has_missing_deps`]).
    /// Returns the hashes of the changes applied now.
    pub fn merge_remote<'a>(
        &mut self,
        changes: impl IntoIterator<Item = &'a RemoteChange>,
    ) -> Result<Vec<ChangeHash>> {
        let before = self.heads();
        let changes: Vec<automerge::Change> =
            changes.into_iter().map(|c| c.change.clone()).collect();
        self.touched();
        self.am.apply_changes(changes)?;
        Ok(self.note_added(&before))
    }

    /// Records the stamps of the changes added since `before`; returns their hashes.
    fn note_added(&mut self, before: &[ChangeHash]) -> Vec<ChangeHash> {
        let new: Vec<ChangeHash> = self
            .am
            .get_changes_meta(before)
            .iter()
            .map(|m| m.hash)
            .collect();
        self.adopted.added(&self.am, &new);
        new
    }

    /// Raw bytes of every change after `heads` (all of them for `&[]`), genesis excluded.
    /// Heads this document does not know are ignored, so the answer may repeat changes the
    /// asker has: harmless, merging is idempotent.
    pub fn changes_since(&self, heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        let genesis = genesis_hash();
        let known: Vec<ChangeHash> = heads
            .iter()
            .filter(|h| self.am.get_change_meta_by_hash(h).is_some())
            .copied()
            .collect();
        self.am
            .get_changes(&known)
            .into_iter()
            .filter(|c| c.hash() != genesis)
            .map(|c| c.raw_bytes().to_vec())
            .collect()
    }

    /// True while merged changes wait for changes they depend on (they are not applied yet).
    pub fn has_missing_deps(&self) -> bool {
        !self.am.get_missing_deps(&[]).is_empty()
    }

    /// True if every change in `wanted` is in the history of `heads` (the state those heads
    /// name).
    pub fn history_includes(&self, heads: &[ChangeHash], wanted: &[ChangeHash]) -> bool {
        let known = |h: &ChangeHash| self.am.get_change_meta_by_hash(h).is_some();
        if !heads.iter().all(known) {
            return false;
        }
        let after: HashSet<ChangeHash> = self
            .am
            .get_changes_meta(heads)
            .iter()
            .map(|m| m.hash)
            .collect();
        wanted.iter().all(|w| known(w) && !after.contains(w))
    }

    /// This replica's own changes that the history of `heads` lacks (for a client: its edits a
    /// node has not acknowledged).
    pub fn own_changes_outside(&self, heads: &[ChangeHash]) -> usize {
        let known: Vec<ChangeHash> = heads
            .iter()
            .filter(|h| self.am.get_change_meta_by_hash(h).is_some())
            .copied()
            .collect();
        let me = self.am.get_actor();
        self.am
            .get_changes_meta(&known)
            .iter()
            .filter(|m| m.actor.as_ref() == me)
            .count()
    }

    /// The raw bytes of one change.
    pub fn change_bytes(&self, hash: &ChangeHash) -> Option<Vec<u8>> {
        self.am
            .get_change_by_hash(hash)
            .map(|c| c.raw_bytes().to_vec())
    }

    /// The stamps of the node changes among `hashes`, in that order (client changes have none).
    pub fn node_stamps(&self, hashes: &[ChangeHash]) -> Vec<Timestamp> {
        order::metas(&self.am, hashes)
            .into_iter()
            .filter_map(|m| m.stamp)
            .collect()
    }

    /// The automerge document, for tests that craft changes no edit makes.
    #[cfg(test)]
    pub(crate) fn am_mut(&mut self) -> &mut Automerge {
        self.touched();
        &mut self.am
    }

    /// True if some client change here has not been stamped by a node yet.
    pub fn has_unstamped_changes(&self) -> bool {
        self.adopted.any_pending()
    }
}

/// Whether `am` holds a document.
fn state_of(am: &Automerge) -> State {
    if am.get_heads() == [genesis_hash()] {
        return State::Absent;
    }
    // Delete wins: if any concurrent value of the flag is `true`, the document is deleted.
    // A write that saw the delete overwrites every value of the flag with `false`.
    let deleted =
        am.get_all(ROOT, DELETED).unwrap_or_default().iter().any(
            |(v, _)| matches!(v, AmValue::Scalar(s) if s.as_ref() == &ScalarValue::Boolean(true)),
        );
    if deleted {
        State::Deleted
    } else {
        State::Live
    }
}

/// The user's JSON object in `am`, winners chosen with `adopted`.
fn value_of(am: &Automerge, adopted: &Adopted) -> Value {
    Renderer::new(am, Ranker::new(adopted), false).object(&user_obj(am), automerge::ObjType::Map)
}

/// A counter to create first: its map and key.
type Creation = (automerge::ObjId, String);

/// Runs `edit` in one transaction of `am`: the new change (or `None`: nothing changed), or the
/// counters to create before it can run (nothing written then). A result that breaks
/// `contract` is rolled back and refused.
fn write_edit(
    am: &mut Automerge,
    adopted: &Adopted,
    edit: &Edit,
    before: State,
    contract: Option<&dyn Contract>,
    plain: &[(automerge::ObjId, String)],
    opts: &dyn Fn() -> CommitOptions,
) -> Result<(Option<ChangeHash>, Vec<Creation>)> {
    let user = user_obj(am);
    let mut tx = am.transaction();
    let mut w = writer::Writer::new(&mut tx, adopted, contract);
    w.plain_counters = plain;
    let result = w.edit(&user, before, edit);
    let creations = std::mem::take(&mut w.creations);
    if !creations.is_empty() {
        tx.rollback();
        return Ok((None, creations));
    }
    if let Err(e) = result {
        tx.rollback();
        return Err(e);
    }
    if let (Some(contract), false) = (contract, matches!(edit, Edit::Delete)) {
        let value =
            Renderer::new(&tx, Ranker::new(adopted), false).object(&user, automerge::ObjType::Map);
        let violations = contract.violations(&value);
        if !violations.is_empty() {
            tx.rollback();
            return Err(Error::SchemaViolation(violations));
        }
    }
    let (hash, _) = tx.commit_with(opts());
    Ok((hash, vec![]))
}

/// A node's change: its HLC stamp is the message; automerge's advisory time is its seconds.
fn stamped(stamp: &Timestamp) -> CommitOptions {
    CommitOptions::default()
        .with_message(stamp.to_string())
        .with_time(stamp.get_time().as_secs() as i64)
}

/// The version string of a set of heads.
fn version_of(heads: &[ChangeHash]) -> String {
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for head in sorted {
        h.update(head.0);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod contract_tests;
#[cfg(test)]
mod tests;
