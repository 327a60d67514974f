//! Edits: PUT, RFC 7396 merge patch, ops and delete, each written by the [`Writer`] as the
//! smallest change that makes the document say what the edit says.

use automerge::transaction::Transactable;
use automerge::{ObjId, ROOT};
use serde_json::{Map, Value};

use super::layout::DELETED;
use super::ops::Op;
use super::writer::Writer;
use super::State;
use crate::contract::Contract;
use crate::error::Result;

/// A write to one document.
#[derive(Debug, Clone)]
pub enum Edit {
    /// The document becomes exactly this object.
    Put(Map<String, Value>),
    /// An RFC 7396 merge patch.
    Patch(Map<String, Value>),
    /// A list of ops applied atomically as one change.
    Ops(Vec<Op>),
    Delete,
}

impl Edit {
    /// At most how many counters the edit may create (each creation is a change of its own; see
    /// `counter`): one per increment, and one per counter field of the contract (any write that
    /// sets a counter field to zero while it is absent creates it; each field at most once).
    pub fn counter_bound(&self, contract: Option<&dyn Contract>) -> usize {
        let fields = contract.map_or(0, |c| c.counter_fields());
        match self {
            Edit::Ops(ops) => {
                fields
                    + ops
                        .iter()
                        .filter(|op| matches!(op, Op::Increment { .. }))
                        .count()
            }
            Edit::Put(_) | Edit::Patch(_) => fields,
            Edit::Delete => 0,
        }
    }
}

impl Writer<'_, '_> {
    pub(crate) fn edit(&mut self, user: &ObjId, before: State, edit: &Edit) -> Result<()> {
        if matches!(edit, Edit::Delete) {
            self.clear(user)?;
            self.tx.put(ROOT, DELETED, true)?;
            return Ok(());
        }
        match before {
            // A write that has seen the delete re-creates the document from nothing: drop what
            // concurrent updates left behind, and overwrite every value of the flag.
            State::Deleted => {
                self.clear(user)?;
                self.tx.put(ROOT, DELETED, false)?;
            }
            // Creating writes the flag too, so that even `{}` makes a change and a document.
            State::Absent => self.tx.put(ROOT, DELETED, false)?,
            State::Live => {}
        }
        match edit {
            Edit::Put(body) => self.replace_map(user, body),
            Edit::Patch(patch) => self.merge_patch(user, patch),
            Edit::Ops(ops) => ops.iter().try_for_each(|op| self.apply_op(user, op)),
            Edit::Delete => unreachable!(),
        }
    }
}
