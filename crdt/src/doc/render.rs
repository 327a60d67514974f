//! Rendering automerge objects as JSON, each field's winner chosen by [`Ranker`], and listing
//! the fields in conflict.

use automerge::{ObjId, ObjType, Prop, ScalarValue, Value as AmValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use super::order::{History, Rank, Ranker};
use crate::hlc::display_stamp;
use crate::pointer;

/// One value among the conflicting values of a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConflictValue {
    /// Any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub value: Value,
    /// The node that wrote it, or that accepted it from a client (empty while pending).
    pub node: String,
    /// Its stamp (empty while a client's change is pending).
    pub hlc: String,
    /// For a client's change: the client's actor, in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// A field with more than one value; `values[0]` is the visible winner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conflict {
    pub path: String,
    pub values: Vec<ConflictValue>,
}

pub(crate) fn scalar_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Value::from(*t),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Bytes(b) => Value::String(hex::encode(b)),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Value::Null,
    }
}

pub(crate) fn json_scalar(v: &Value) -> ScalarValue {
    match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int(i),
            // json::parse refuses integers outside i64, so the rest are floats
            None => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::Array(_) | Value::Object(_) => unreachable!("containers are not scalars"),
    }
}

/// Renders automerge objects as JSON, choosing winners by rank, optionally collecting conflicts.
pub(crate) struct Renderer<'d, 'a, D: History> {
    doc: &'d D,
    ranker: Ranker<'a>,
    collect: bool,
    path: Vec<String>,
    pub(crate) conflicts: Vec<Conflict>,
}

impl<'d, 'a, D: History> Renderer<'d, 'a, D> {
    pub(crate) fn new(doc: &'d D, ranker: Ranker<'a>, collect: bool) -> Self {
        Renderer {
            doc,
            ranker,
            collect,
            path: vec![],
            conflicts: vec![],
        }
    }

    pub(crate) fn object(&mut self, obj: &ObjId, typ: ObjType) -> Value {
        match typ {
            ObjType::Map | ObjType::Table => {
                let mut out = Map::new();
                for key in self.doc.keys(obj) {
                    if let Some(v) = self.field(obj, Prop::Map(key.clone()), &key) {
                        out.insert(key, v);
                    }
                }
                Value::Object(out)
            }
            ObjType::List => {
                let len = self.doc.length(obj);
                let mut out = Vec::with_capacity(len);
                for i in 0..len {
                    if let Some(v) = self.field(obj, Prop::Seq(i), &i.to_string()) {
                        out.push(v);
                    }
                }
                Value::Array(out)
            }
            ObjType::Text => Value::String(self.doc.text(obj).unwrap_or_default()),
        }
    }

    fn field(&mut self, obj: &ObjId, prop: Prop, token: &str) -> Option<Value> {
        let all = self.ranker.ranked(self.doc, obj, prop);
        self.path.push(pointer::escape(token));
        let out = all.first().map(|(v, id)| self.value(v, id));
        if self.collect && all.len() > 1 {
            let values = all
                .iter()
                .map(|(v, id)| {
                    let order = self.ranker.order(self.doc, id);
                    // losers are rendered without descending into their own conflicts
                    let collect = std::mem::replace(&mut self.collect, false);
                    let path = std::mem::take(&mut self.path);
                    let value = self.value(v, id);
                    self.collect = collect;
                    self.path = path;
                    let client = (!super::layout::is_node_actor(&order.actor))
                        .then(|| hex::encode(&order.actor));
                    let (node, hlc) = match order.rank {
                        Rank::Stamped(ts) => (super::order::stamp_node(&ts), display_stamp(&ts)),
                        Rank::Genesis | Rank::Pending => (String::new(), String::new()),
                    };
                    ConflictValue {
                        value,
                        node,
                        hlc,
                        client,
                    }
                })
                .collect();
            self.conflicts.push(Conflict {
                path: format!("/{}", self.path.join("/")),
                values,
            });
        }
        self.path.pop();
        out
    }

    fn value(&mut self, v: &AmValue<'_>, id: &ObjId) -> Value {
        match v {
            AmValue::Object(typ) => self.object(id, *typ),
            AmValue::Scalar(s) => scalar_json(s),
        }
    }
}
