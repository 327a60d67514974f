//! Counters that two replicas create concurrently add up.
//!
//! An automerge counter is a CRDT only once it exists: two replicas that each create field
//! `n` with a counter make two conflicting values, and an increment afterwards goes to both, so
//! no rendering can recover the sum. So a counter is created by a change every replica makes
//! alike, byte for byte: authored by an actor derived from the field (`meridian/counter/` and a
//! digest of the change that made the parent object, the parent and the key), depending only on
//! that change, setting the field to a counter at zero, with time 0 and no message. Two regions
//! that both create it make the same change (same hash), which automerge keeps once; their
//! increments then all apply to that one counter.
//!
//! Such a change has no stamp: it ranks with genesis (first), so any value written to the field
//! concurrently wins over the zero. A field removed after its counter was created cannot be
//! created this way again (the change is already there); it then starts as an ordinary value.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, Change, ChangeHash, ObjId, ReadDoc, ScalarValue};
use sha2::{Digest, Sha256};

use crate::error::Result;

const PREFIX: &[u8] = b"meridian/counter/";

/// True for the actor of a counter's creation change.
pub(crate) fn is_counter_actor(actor: &[u8]) -> bool {
    actor.starts_with(PREFIX)
}

fn actor_of(origin: &ChangeHash, parent: &ObjId, key: &str) -> ActorId {
    let mut h = Sha256::new();
    h.update(origin.0);
    h.update(parent.to_string().as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    ActorId::from([PREFIX, &h.finalize()[..16]].concat())
}

/// The creation change of counter `key` in map `parent`; `None` if `parent` is not in `am`'s
/// history.
fn creation_change(am: &Automerge, parent: &ObjId, key: &str) -> Result<Option<Change>> {
    let Some(origin) = am.hash_for_opid(parent) else {
        return Ok(None);
    };
    let mut fork = am.fork_at(&[origin])?;
    fork.set_actor(actor_of(&origin, parent, key));
    let mut tx = fork.transaction();
    tx.put(parent, key, ScalarValue::counter(0))?;
    let (hash, _) = tx.commit_with(CommitOptions::default().with_time(0));
    let hash = hash.expect("a put makes a change");
    Ok(fork.get_change_by_hash(&hash))
}

/// Creates counter `key` in `parent` at zero with its creation change, and returns its hash.
/// `None` if that change is in the document already (the counter was created, then removed):
/// the caller creates it as an ordinary value.
pub(crate) fn create(am: &mut Automerge, parent: &ObjId, key: &str) -> Result<Option<ChangeHash>> {
    let Some(change) = creation_change(am, parent, key)? else {
        return Ok(None);
    };
    let hash = change.hash();
    if am.get_change_meta_by_hash(&hash).is_some() {
        return Ok(None);
    }
    am.apply_changes([change])?;
    Ok(Some(hash))
}

/// True if `change` (by a counter actor) is exactly the creation change of the counter it
/// creates, as this replica would make it: anything else under such an actor is refused.
pub(crate) fn is_genuine(am: &Automerge, change: &Change) -> bool {
    let expanded = change.decode();
    let [op] = expanded.operations.as_slice() else {
        return false;
    };
    let automerge::legacy::Key::Map(key) = &op.key else {
        return false;
    };
    let Ok((parent, _)) = am.import(&op.obj.to_string()) else {
        return false;
    };
    matches!(creation_change(am, &parent, key), Ok(Some(c)) if c.hash() == change.hash())
}
