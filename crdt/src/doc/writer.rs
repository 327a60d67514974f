//! The [`Writer`]: an open transaction that writes values as the smallest automerge change
//! that makes the document say them, so that concurrent edits of other fields survive a merge.
//! PUT and merge patch are here; `edit` dispatches an [`super::Edit`], `ops` adds the ops.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value as AmValue};
use serde_json::{Map, Value};

use super::order::{Adopted, Ranker};
use super::render::{json_scalar, scalar_json, Renderer};
use crate::contract::{Contract, Merge, Violation};
use crate::error::{Error, Result};

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
    /// The collection's contract, if it has one: how each field merges.
    pub(crate) contract: Option<&'t dyn Contract>,
    /// The path of the object being written (JSON Pointer tokens), kept only with a contract.
    pub(crate) path: Vec<String>,
    /// Counters to create before the edit can be written: (map, key) of each. The edit stops at
    /// the first; the caller creates them with `counter::create` and runs the edit again.
    pub(crate) creations: Vec<(ObjId, String)>,
    /// Counters whose creation change is already in the document (created, then removed):
    /// these are created in the edit's own change.
    pub(crate) plain_counters: &'t [(ObjId, String)],
}

/// The error that stops an edit when a counter must be created first (never reaches a caller).
fn create_first() -> Error {
    Error::Unprocessable("a counter must be created first".into())
}

impl<'t, 'd> Writer<'t, 'd> {
    pub(crate) fn new(
        tx: &'t mut Transaction<'d>,
        adopted: &'t Adopted,
        contract: Option<&'t dyn Contract>,
    ) -> Self {
        Writer {
            tx,
            adopted,
            contract,
            path: vec![],
            creations: vec![],
            plain_counters: &[],
        }
    }

    /// How the field `prop` of the object at `self.path` merges.
    fn merge_of(&mut self, prop: &Prop) -> Merge {
        let Some(c) = self.contract else {
            return Merge::Lww;
        };
        self.path.push(token(prop));
        let merge = c.merge_at(&self.path);
        self.path.pop();
        merge
    }

    fn violation(&self, prop: &Prop, message: &str) -> Error {
        let mut path = self.path.clone();
        path.push(token(prop));
        Error::SchemaViolation(vec![Violation {
            path: crate::pointer::to_pointer(&path),
            message: message.into(),
        }])
    }

    /// Runs `f` with `prop` appended to the path (only tracked with a contract).
    fn nested<T>(&mut self, prop: &Prop, f: impl FnOnce(&mut Self) -> T) -> T {
        if self.contract.is_none() {
            return f(self);
        }
        self.path.push(token(prop));
        let out = f(self);
        self.path.pop();
        out
    }

    /// A counter `key` of `obj`, absent now, starts at zero: through the one creation change
    /// every replica makes alike (`counter`) when `obj` was there before this edit; else (a map
    /// this same edit makes) in this change.
    pub(crate) fn create_counter(&mut self, obj: &ObjId, key: &str, start: i64) -> Result<()> {
        let plain = self
            .plain_counters
            .iter()
            .any(|(o, k)| o == obj && k == key);
        if !plain && self.tx.hash_for_opid(obj).is_some() {
            self.creations.push((obj.clone(), key.to_owned()));
            return Err(create_first());
        }
        self.tx.put(obj, key, ScalarValue::counter(start))?;
        Ok(())
    }

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

    pub(super) fn clear(&mut self, obj: &ObjId) -> Result<()> {
        let keys: Vec<String> = self.tx.keys(obj).collect();
        for k in keys {
            self.tx.delete(obj, k)?;
        }
        Ok(())
    }

    /// Sets `prop` to `v`, writing only what differs, as the field's merge policy says.
    pub(crate) fn assign(&mut self, obj: &ObjId, prop: Prop, v: &Value) -> Result<()> {
        match self.merge_of(&prop) {
            Merge::Lww => {}
            Merge::Counter => return self.assign_counter(obj, prop, v),
            Merge::Text => {
                if let Value::String(s) = v {
                    return self.assign_text(obj, prop, s);
                }
            }
            Merge::List => {
                if let Value::Array(items) = v {
                    if let Current::Object(ObjType::List, id, false) =
                        self.current(obj, prop.clone())
                    {
                        return self.nested(&prop, |w| w.update_list(&id, items));
                    }
                }
            }
        }
        let cur = self.current(obj, prop.clone());
        let nest = prop.clone();
        match (v, cur) {
            (Value::Object(m), Current::Object(ObjType::Map, id, false)) => {
                self.nested(&nest, |w| w.replace_map(&id, m))
            }
            (Value::Object(m), _) => {
                let id = self.tx.put_object(obj, prop, ObjType::Map)?;
                self.nested(&nest, |w| w.fill_map(&id, m))
            }
            (Value::Array(_), Current::Object(ObjType::List, id, false))
                if self.render(&id, ObjType::List) == *v =>
            {
                Ok(())
            }
            (Value::Array(a), _) => {
                let id = self.tx.put_object(obj, prop, ObjType::List)?;
                self.nested(&nest, |w| w.fill_list(&id, a))
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

    /// A counter field is written only with the value it has (absent counts as zero, and then
    /// creates it); any other value is a violation: counters change by `increment`.
    fn assign_counter(&mut self, obj: &ObjId, prop: Prop, v: &Value) -> Result<()> {
        let current = match self.current(obj, prop.clone()) {
            Current::Absent => None,
            Current::Scalar(ScalarValue::Counter(c), _) => Some(i64::from(&c)),
            Current::Scalar(ScalarValue::Int(i), _) => Some(i),
            _ => {
                return Err(self.violation(
                    &prop,
                    "holds a value that is not a counter; write it with a set before the schema, or remove it",
                ))
            }
        };
        match (current, v.as_i64()) {
            (Some(c), Some(n)) if c == n => Ok(()),
            (None, Some(0)) => match prop {
                Prop::Map(key) => self.create_counter(obj, &key, 0),
                Prop::Seq(_) => Err(self.violation(&prop, "a counter cannot be a list element")),
            },
            _ => Err(self.violation(
                &prop,
                "is a counter: change it with the increment op, not by writing a value",
            )),
        }
    }

    /// A string written to a text field becomes the smallest splice of the text.
    fn assign_text(&mut self, obj: &ObjId, prop: Prop, s: &str) -> Result<()> {
        let id = match self.current(obj, prop.clone()) {
            Current::Object(ObjType::Text, id, false) => id,
            _ => self.tx.put_object(obj, prop, ObjType::Text)?,
        };
        if self.tx.text(&id)? != s {
            self.tx.update_text(&id, s)?;
        }
        Ok(())
    }

    /// Makes the list say `items` by removing and inserting only the elements between the
    /// longest common prefix and suffix, so concurrent inserts and removes elsewhere survive.
    fn update_list(&mut self, list: &ObjId, items: &[Value]) -> Result<()> {
        let old = match self.render(list, ObjType::List) {
            Value::Array(a) => a,
            _ => unreachable!("a list renders as an array"),
        };
        let prefix = old.iter().zip(items).take_while(|(a, b)| a == b).count();
        let suffix = old[prefix..]
            .iter()
            .rev()
            .zip(items[prefix..].iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        for i in (prefix..old.len() - suffix).rev() {
            self.tx.delete(list, i)?;
        }
        for (i, v) in items[prefix..items.len() - suffix].iter().enumerate() {
            let index = prefix + i;
            self.nested(&Prop::Seq(index), |w| w.insert_json(list, index, v))?;
        }
        Ok(())
    }

    pub(super) fn replace_map(&mut self, obj: &ObjId, body: &Map<String, Value>) -> Result<()> {
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
        if self.contract.is_some() {
            // the fields of a new map merge as the contract says, like any other
            for (k, v) in m {
                self.assign(obj, Prop::Map(k.clone()), v)?;
            }
            return Ok(());
        }
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
                self.nested(&Prop::Seq(index), |w| w.fill_map(&id, m))
            }
            Value::Array(a) => {
                let id = self.tx.insert_object(list, index, ObjType::List)?;
                self.nested(&Prop::Seq(index), |w| w.fill_list(&id, a))
            }
            scalar => Ok(self.tx.insert(list, index, json_scalar(scalar))?),
        }
    }

    /// RFC 7396: `null` removes a key, an object merges recursively, anything else replaces.
    pub(super) fn merge_patch(&mut self, obj: &ObjId, patch: &Map<String, Value>) -> Result<()> {
        for (k, v) in patch {
            let prop = Prop::Map(k.clone());
            match v {
                Value::Null => {
                    if !matches!(self.current(obj, prop), Current::Absent) {
                        self.tx.delete(obj, k.as_str())?;
                    }
                }
                Value::Object(inner) => match self.current(obj, prop.clone()) {
                    Current::Object(ObjType::Map, id, _) => {
                        self.nested(&prop, |w| w.merge_patch(&id, inner))?
                    }
                    _ => {
                        let id = self.tx.put_object(obj, k.as_str(), ObjType::Map)?;
                        self.nested(&prop, |w| w.merge_patch(&id, inner))?;
                    }
                },
                other => self.assign(obj, prop, other)?,
            }
        }
        Ok(())
    }
}

/// The JSON Pointer token of a prop.
fn token(prop: &Prop) -> String {
    match prop {
        Prop::Map(k) => k.clone(),
        Prop::Seq(i) => i.to_string(),
    }
}
