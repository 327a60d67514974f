//! Edits: PUT, RFC 7396 merge patch, ops and delete, written as the smallest automerge change
//! that makes the document say what the edit says, so that concurrent edits of other fields
//! survive a merge.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value as AmValue, ROOT};
use serde_json::{Map, Value};

use super::layout::DELETED;
use super::ops::Op;
use super::order::{Adopted, Ranker};
use super::render::{json_scalar, scalar_json, Renderer};
use super::State;
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

/// The current winning value at a prop, and whether it is in conflict.
pub(crate) enum Current {
    Absent,
    Scalar(ScalarValue, bool),
    Object(ObjType, ObjId, bool),
}

/// An open transaction and what it needs to tell winners from losers.
pub(crate) struct Writer<'t, 'd> {
    pub(crate) tx: &'t mut Transaction<'d>,
    pub(crate) adopted: &'t Adopted,
}

impl Writer<'_, '_> {
    pub(crate) fn current(&self, obj: &ObjId, prop: Prop) -> Current {
        let mut ranker = Ranker::new(self.adopted);
        let all = ranker.ranked(&*self.tx, obj, prop);
        let conflicted = all.len() > 1;
        match all.into_iter().next() {
            None => Current::Absent,
            Some((AmValue::Scalar(s), _)) => Current::Scalar(s.into_owned(), conflicted),
            Some((AmValue::Object(t), id)) => Current::Object(t, id, conflicted),
        }
    }

    fn render(&self, obj: &ObjId, typ: ObjType) -> Value {
        Renderer::new(&*self.tx, Ranker::new(self.adopted), false).object(obj, typ)
    }

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

    fn clear(&mut self, obj: &ObjId) -> Result<()> {
        let keys: Vec<String> = self.tx.keys(obj).collect();
        for k in keys {
            self.tx.delete(obj, k)?;
        }
        Ok(())
    }

    /// Sets `prop` to `v`, writing only what differs.
    pub(crate) fn assign(&mut self, obj: &ObjId, prop: Prop, v: &Value) -> Result<()> {
        let cur = self.current(obj, prop.clone());
        match (v, cur) {
            (Value::Object(m), Current::Object(ObjType::Map, id, false)) => {
                self.replace_map(&id, m)
            }
            (Value::Object(m), _) => {
                let id = self.tx.put_object(obj, prop, ObjType::Map)?;
                self.fill_map(&id, m)
            }
            (Value::Array(_), Current::Object(ObjType::List, id, false))
                if self.render(&id, ObjType::List) == *v =>
            {
                Ok(())
            }
            (Value::Array(a), _) => {
                let id = self.tx.put_object(obj, prop, ObjType::List)?;
                self.fill_list(&id, a)
            }
            (Value::String(s), Current::Object(ObjType::Text, id, false)) => {
                if self.tx.text(&id)? != *s {
                    self.tx.update_text(&id, s)?;
                }
                Ok(())
            }
            (scalar, Current::Scalar(s, false)) if scalar_json(&s) == *scalar => Ok(()),
            (scalar, _) => {
                self.tx.put(obj, prop, json_scalar(scalar))?;
                Ok(())
            }
        }
    }

    fn replace_map(&mut self, obj: &ObjId, body: &Map<String, Value>) -> Result<()> {
        let stale: Vec<String> = self
            .tx
            .keys(obj)
            .filter(|k| !body.contains_key(k))
            .collect();
        for k in stale {
            self.tx.delete(obj, k)?;
        }
        for (k, v) in body {
            self.assign(obj, Prop::Map(k.clone()), v)?;
        }
        Ok(())
    }

    fn fill_map(&mut self, obj: &ObjId, m: &Map<String, Value>) -> Result<()> {
        for (k, v) in m {
            match v {
                Value::Object(inner) => {
                    let id = self.tx.put_object(obj, k.as_str(), ObjType::Map)?;
                    self.fill_map(&id, inner)?;
                }
                Value::Array(inner) => {
                    let id = self.tx.put_object(obj, k.as_str(), ObjType::List)?;
                    self.fill_list(&id, inner)?;
                }
                scalar => self.tx.put(obj, k.as_str(), json_scalar(scalar))?,
            }
        }
        Ok(())
    }

    fn fill_list(&mut self, list: &ObjId, items: &[Value]) -> Result<()> {
        for (i, v) in items.iter().enumerate() {
            self.insert_json(list, i, v)?;
        }
        Ok(())
    }

    pub(crate) fn insert_json(&mut self, list: &ObjId, index: usize, v: &Value) -> Result<()> {
        match v {
            Value::Object(m) => {
                let id = self.tx.insert_object(list, index, ObjType::Map)?;
                self.fill_map(&id, m)
            }
            Value::Array(a) => {
                let id = self.tx.insert_object(list, index, ObjType::List)?;
                self.fill_list(&id, a)
            }
            scalar => Ok(self.tx.insert(list, index, json_scalar(scalar))?),
        }
    }

    /// RFC 7396: `null` removes a key, an object merges recursively, anything else replaces.
    fn merge_patch(&mut self, obj: &ObjId, patch: &Map<String, Value>) -> Result<()> {
        for (k, v) in patch {
            let prop = Prop::Map(k.clone());
            match v {
                Value::Null => {
                    if !matches!(self.current(obj, prop), Current::Absent) {
                        self.tx.delete(obj, k.as_str())?;
                    }
                }
                Value::Object(inner) => match self.current(obj, prop) {
                    Current::Object(ObjType::Map, id, _) => self.merge_patch(&id, inner)?,
                    _ => {
                        let id = self.tx.put_object(obj, k.as_str(), ObjType::Map)?;
                        self.merge_patch(&id, inner)?;
                    }
                },
                other => self.assign(obj, prop, other)?,
            }
        }
        Ok(())
    }
}
