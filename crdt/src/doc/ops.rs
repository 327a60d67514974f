//! The ops API: set, remove, increment, insert and splice at JSON Pointer paths, applied
//! atomically as one change.

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, Prop, ReadDoc, ScalarValue};
use serde::Deserialize;
use serde_json::Value;

use super::writer::{Current, Writer};
use crate::error::{Error, Result};
use crate::json::{self, MAX_DEPTH};
use crate::pointer;

/// One operation of the ops API. Paths are JSON Pointers.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Op {
    Set {
        path: String,
        value: Value,
    },
    Remove {
        path: String,
    },
    Increment {
        path: String,
        #[serde(deserialize_with = "integral")]
        by: i64,
    },
    Insert {
        path: String,
        value: Value,
    },
    Splice {
        path: String,
        #[serde(deserialize_with = "integral")]
        index: usize,
        #[serde(default, deserialize_with = "integral")]
        delete: usize,
        #[serde(default)]
        insert: String,
    },
}

/// A whole number, also when written with a fraction of zero (`2.0`): JSON does not tell the
/// two apart, and JSON Schema (the OpenAPI description) counts `2.0` as an integer.
fn integral<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    use serde::de::Error as _;
    let n = serde_json::Number::deserialize(d)?;
    let out_of_range = || D::Error::custom(format!("{n} is out of range"));
    if let Some(i) = n.as_i64() {
        return T::try_from(i).map_err(|_| out_of_range());
    }
    if let Some(u) = n.as_u64() {
        return T::try_from(u).map_err(|_| out_of_range());
    }
    match n.as_f64() {
        // the bounds are exact in f64; 2^63 itself is out of i64's range
        Some(f) if f.fract() == 0.0 && f >= -(2f64.powi(63)) && f < 2f64.powi(63) => {
            T::try_from(f as i64).map_err(|_| out_of_range())
        }
        _ => Err(D::Error::custom(format!("{n} is not a whole number"))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsBody {
    ops: Vec<Op>,
}

/// Parses `{"ops":[...]}` (already checked by [`json::parse`]).
pub fn parse_ops(body: Value) -> Result<Vec<Op>> {
    let OpsBody { ops } =
        serde_json::from_value(body).map_err(|e| Error::bad(format!("invalid ops: {e}")))?;
    if ops.is_empty() {
        return Err(Error::bad("ops must not be empty"));
    }
    for op in &ops {
        match op {
            Op::Set { path, .. }
            | Op::Remove { path }
            | Op::Increment { path, .. }
            | Op::Insert { path, .. }
            | Op::Splice { path, .. } => {
                pointer::parse(path)?;
            }
        }
    }
    Ok(ops)
}

/// Where an op's path leads: the container and the last token.
struct Target {
    /// The tokens of the parent's path.
    parents: Vec<String>,
    parent: ObjId,
    parent_type: ObjType,
    last: String,
    path: String,
}

impl Target {
    fn map_or_index(&self, w: &Writer<'_, '_>, allow_end: bool) -> Result<Prop> {
        match self.parent_type {
            ObjType::Map | ObjType::Table => Ok(Prop::Map(self.last.clone())),
            ObjType::List => {
                let len = w.tx.length(&self.parent);
                let idx = if self.last == "-" && allow_end {
                    len
                } else {
                    pointer::index(&self.last).ok_or_else(|| {
                        Error::unprocessable(format!(
                            "{}: {:?} is not a list index",
                            self.path, self.last
                        ))
                    })?
                };
                let limit = if allow_end {
                    len
                } else {
                    len.saturating_sub(1)
                };
                if idx > limit || (!allow_end && len == 0) {
                    return Err(Error::unprocessable(format!(
                        "{}: index {idx} is out of range (list length {len})",
                        self.path
                    )));
                }
                Ok(Prop::Seq(idx))
            }
            ObjType::Text => Err(Error::unprocessable(format!(
                "{}: text has no fields",
                self.path
            ))),
        }
    }
}

impl Writer<'_, '_> {
    fn resolve_target(&self, user: &ObjId, path: &str, value_depth: usize) -> Result<Target> {
        let tokens = pointer::parse(path)?;
        let Some((last, parents)) = tokens.split_last() else {
            return Err(Error::unprocessable(
                "an op cannot target the whole document; use PUT to replace it",
            ));
        };
        if tokens.len() + value_depth > MAX_DEPTH {
            return Err(Error::bad(format!(
                "JSON nesting deeper than {MAX_DEPTH} levels"
            )));
        }
        let mut obj = user.clone();
        let mut typ = ObjType::Map;
        let mut walked = String::new();
        for token in parents {
            walked.push('/');
            walked.push_str(&pointer::escape(token));
            let prop = match typ {
                ObjType::List => match pointer::index(token) {
                    Some(i) if i < self.tx.length(&obj) => Prop::Seq(i),
                    _ => return Err(Error::unprocessable(format!("{walked} does not exist"))),
                },
                _ => Prop::Map(token.clone()),
            };
            match self.current(&obj, prop) {
                Current::Object(t @ (ObjType::Map | ObjType::List | ObjType::Table), id, _) => {
                    obj = id;
                    typ = t;
                }
                Current::Absent => {
                    return Err(Error::unprocessable(format!("{walked} does not exist")))
                }
                _ => {
                    return Err(Error::unprocessable(format!(
                        "{walked} is not an object or array"
                    )))
                }
            }
        }
        Ok(Target {
            parents: parents.to_vec(),
            parent: obj,
            parent_type: typ,
            last: last.clone(),
            path: path.to_owned(),
        })
    }

    pub(crate) fn apply_op(&mut self, user: &ObjId, op: &Op) -> Result<()> {
        match op {
            Op::Set { path, value } => {
                let t = self.resolve_target(user, path, json::depth(value))?;
                let prop = t.map_or_index(self, false)?;
                if self.contract.is_some() {
                    self.path = t.parents.clone();
                }
                self.assign(&t.parent, prop, value)
            }
            Op::Remove { path } => {
                let t = self.resolve_target(user, path, 0)?;
                let prop = t.map_or_index(self, false)?;
                if matches!(self.current(&t.parent, prop.clone()), Current::Absent) {
                    return Err(Error::unprocessable(format!("{path} does not exist")));
                }
                Ok(self.tx.delete(&t.parent, prop)?)
            }
            Op::Increment { path, by } => {
                let t = self.resolve_target(user, path, 0)?;
                let prop = t.map_or_index(self, false)?;
                match (self.current(&t.parent, prop.clone()), prop.clone()) {
                    // created at zero alike on every replica, so that concurrent first
                    // increments add up instead of conflicting (see `counter`)
                    (Current::Absent, Prop::Map(key)) => {
                        self.create_counter(&t.parent, &key, *by)?
                    }
                    (Current::Absent, Prop::Seq(_)) => {
                        self.tx.put(&t.parent, prop, ScalarValue::counter(*by))?
                    }
                    (Current::Scalar(ScalarValue::Counter(c), _), _) => {
                        i64::from(&c).checked_add(*by).ok_or_else(|| {
                            Error::unprocessable(format!("{path}: counter overflow"))
                        })?;
                        self.tx.increment(&t.parent, prop, *by)?
                    }
                    // The first increment of a plain integer turns it into a counter (a set);
                    // from then on increments commute.
                    (Current::Scalar(ScalarValue::Int(i), _), _) => {
                        let n = i.checked_add(*by).ok_or_else(|| {
                            Error::unprocessable(format!("{path}: counter overflow"))
                        })?;
                        self.tx.put(&t.parent, prop, ScalarValue::counter(n))?
                    }
                    _ => {
                        return Err(Error::unprocessable(format!(
                            "{path}: increment needs a counter or an integer"
                        )))
                    }
                }
                Ok(())
            }
            Op::Insert { path, value } => {
                let t = self.resolve_target(user, path, json::depth(value))?;
                if t.parent_type != ObjType::List {
                    return Err(Error::unprocessable(format!("{path}: insert needs a list")));
                }
                let Prop::Seq(idx) = t.map_or_index(self, true)? else {
                    unreachable!("a list target resolves to an index")
                };
                self.insert_json(&t.parent, idx, value)
            }
            Op::Splice {
                path,
                index,
                delete,
                insert,
            } => {
                let t = self.resolve_target(user, path, 0)?;
                let prop = t.map_or_index(self, false)?;
                let text = match self.current(&t.parent, prop.clone()) {
                    Current::Object(ObjType::Text, id, _) => id,
                    Current::Absent => self.tx.put_object(&t.parent, prop, ObjType::Text)?,
                    Current::Scalar(ScalarValue::Str(s), _) => {
                        let id = self.tx.put_object(&t.parent, prop, ObjType::Text)?;
                        self.tx.splice_text(&id, 0, 0, &s)?;
                        id
                    }
                    _ => {
                        return Err(Error::unprocessable(format!(
                            "{path}: splice needs a string"
                        )))
                    }
                };
                let len = self.tx.length(&text);
                if *index > len || delete > &(len - index) {
                    return Err(Error::unprocessable(format!(
                        "{path}: splice at {index} deleting {delete} is outside the text (length {len})"
                    )));
                }
                let del =
                    isize::try_from(*delete).map_err(|_| Error::bad("delete is too large"))?;
                Ok(self.tx.splice_text(&text, *index, del, insert)?)
            }
        }
    }
}
