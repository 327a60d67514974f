//! Schema contracts: a collection's JSON Schema (2020-12) with Meridian's `x-merge` keyword,
//! compiled into the [`Contract`] the document model enforces on every write.
//!
//! # Layout
//! - this module: parsing a schema (meta-validation, `x-merge`), the compiled [`Schema`], and
//!   the [`Compiler`] the store asks (cached per schema version).
//! - `compat`: whether a new version accepts everything the old one accepted.
//!
//! No HTTP here: `meridian-http`'s `schemas` module serves `PUT`, `GET` and
//! `DELETE /v1/_schemas/{collection}` with it.
//!
//! A schema is stored as the document `_schemas/{collection}` holding `{"schema": "<JSON
//! text>"}`: one string, so that two regions that change it concurrently end with one whole
//! version (the later), never a field-wise mix. See docs/schemas.md.

mod compat;

pub use compat::breaking;

use std::collections::HashMap;
use std::sync::Arc;

use meridian_crdt::{Contract, Contracts, Merge, Violation};
use parking_lot::Mutex;
use serde_json::Value;

/// A compiled schema: its validator and the merge policy of each field that has one.
#[derive(Debug)]
pub struct Schema {
    validator: jsonschema::Validator,
    /// Paths (`*` stands for any list index) and their policies.
    merges: Vec<(Vec<String>, Merge)>,
    /// The schema as written.
    pub source: Value,
}

impl Schema {
    /// Parses and compiles a schema; the error says what is wrong with it (a 400).
    pub fn parse(source: Value) -> Result<Schema, String> {
        if !source.is_object() {
            return Err("a schema is a JSON object".into());
        }
        jsonschema::draft202012::meta::validate(&source)
            .map_err(|e| format!("not a JSON Schema (2020-12): {e}"))?;
        let mut merges = Vec::new();
        collect_merges(&source, &mut vec![], &mut merges)?;
        let declared = count_merge_keywords(&source);
        if declared != merges.len() {
            return Err(
                "x-merge may appear only on a property schema, reached from the root through \
                 properties and items"
                    .into(),
            );
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&source)
            .map_err(|e| format!("the schema does not compile: {e}"))?;
        Ok(Schema {
            validator,
            merges,
            source,
        })
    }

    /// The stored document of this schema.
    pub fn document(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("schema".into(), Value::String(self.source.to_string()));
        m
    }

    /// The schema held by a stored schema document.
    pub fn from_document(json: &str) -> Result<Schema, String> {
        let doc: Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let text = doc["schema"]
            .as_str()
            .ok_or("a schema document without its schema")?;
        Schema::parse(serde_json::from_str(text).map_err(|e| e.to_string())?)
    }
}

fn policy(name: &str) -> Option<Merge> {
    Some(match name {
        "lww" => Merge::Lww,
        "counter" => Merge::Counter,
        "text" => Merge::Text,
        "list" => Merge::List,
        _ => return None,
    })
}

/// True if the schema's `type` is exactly `want` (or a list of just it).
fn has_type(schema: &Value, want: &str) -> bool {
    match &schema["type"] {
        Value::String(t) => t == want,
        Value::Array(ts) => ts.len() == 1 && ts[0] == want,
        _ => false,
    }
}

fn collect_merges(
    schema: &Value,
    path: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, Merge)>,
) -> Result<(), String> {
    let at = || format!("/{}", path.join("/"));
    if let Some(m) = schema.get("x-merge") {
        if path.is_empty() {
            return Err("x-merge applies to a property, not to the whole document".into());
        }
        let name = m.as_str().unwrap_or_default();
        let merge = policy(name).ok_or_else(|| {
            format!(
                "{}: unknown x-merge {m}; known are lww, counter, text, list",
                at()
            )
        })?;
        let (needs, in_list) = match merge {
            Merge::Counter => (Some("integer"), false),
            Merge::Text => (Some("string"), false),
            Merge::List => (Some("array"), true),
            Merge::Lww => (None, true),
        };
        if let Some(t) = needs {
            if !has_type(schema, t) {
                return Err(format!("{}: x-merge {name} needs \"type\": \"{t}\"", at()));
            }
        }
        if !in_list && path.iter().any(|t| t == "*") {
            return Err(format!(
                "{}: x-merge {name} cannot be used inside a list",
                at()
            ));
        }
        out.push((path.clone(), merge));
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (name, sub) in props {
            path.push(name.clone());
            collect_merges(sub, path, out)?;
            path.pop();
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        path.push("*".into());
        collect_merges(items, path, out)?;
        path.pop();
    }
    Ok(())
}

fn count_merge_keywords(v: &Value) -> usize {
    match v {
        Value::Object(m) => {
            usize::from(m.contains_key("x-merge"))
                + m.values().map(count_merge_keywords).sum::<usize>()
        }
        Value::Array(a) => a.iter().map(count_merge_keywords).sum(),
        _ => 0,
    }
}

impl Contract for Schema {
    fn merge_at(&self, path: &[String]) -> Merge {
        self.merges
            .iter()
            .find(|(p, _)| {
                p.len() == path.len()
                    && p.iter().zip(path).all(|(want, got)| {
                        want == got || (want == "*" && got.bytes().all(|b| b.is_ascii_digit()))
                    })
            })
            .map_or(Merge::Lww, |(_, m)| *m)
    }

    fn violations(&self, value: &Value) -> Vec<Violation> {
        if self.validator.is_valid(value) {
            return vec![];
        }
        self.validator
            .iter_errors(value)
            .map(|e| Violation {
                path: e.instance_path().to_string(),
                message: e.to_string(),
            })
            .collect()
    }

    fn counter_fields(&self) -> usize {
        self.merges
            .iter()
            .filter(|(_, m)| *m == Merge::Counter)
            .count()
    }
}

/// Stored JSON that does not parse: the store is damaged, not the request.
#[derive(Debug, thiserror::Error)]
#[error("stored JSON does not parse: {0}")]
pub struct StoredJsonError(#[from] serde_json::Error);

/// The rules `contract` finds broken in a stored document's JSON.
pub fn violations_of(
    contract: &dyn Contract,
    json: &str,
) -> Result<Vec<Violation>, StoredJsonError> {
    let value: Value = serde_json::from_str(json)?;
    Ok(contract.violations(&value))
}

/// Compiles schema documents for the store, once per version.
#[derive(Debug, Default)]
pub struct Compiler {
    cache: Mutex<HashMap<String, (String, Arc<Schema>)>>,
}

impl Contracts for Compiler {
    fn compile(&self, collection: &str, version: &str, json: &str) -> Option<Arc<dyn Contract>> {
        if let Some((v, s)) = self.cache.lock().get(collection) {
            if v == version {
                return Some(s.clone());
            }
        }
        match Schema::from_document(json) {
            Ok(s) => {
                let s = Arc::new(s);
                self.cache
                    .lock()
                    .insert(collection.to_owned(), (version.to_owned(), s.clone()));
                Some(s)
            }
            Err(e) => {
                // only the API writes schema documents, and it refuses bad ones: a newer node's
                // schema this one cannot read is not enforced here, loudly
                tracing::warn!(collection, version, error = %e, "a schema this node cannot enforce");
                None
            }
        }
    }
}
