//! Whether a new version of a schema accepts every document the old one accepted.
//!
//! JSON Schema inclusion is undecidable in general, so this is a structural comparison of the
//! two versions, path by path, that knows the changes the contract allows (adding optional
//! properties, widening types and enums, relaxing limits, removing a rule) and calls every
//! other change breaking, naming it. A breaking change goes through only when forced; the API
//! then also counts the stored documents the new version breaks.

use serde_json::{Map, Value};

/// Keywords that only annotate: changing them changes no document's validity.
const ANNOTATIONS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// Lower bounds (a new one must not be larger) and upper bounds (not smaller).
const LOWER: &[&str] = &[
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
];
const UPPER: &[&str] = &[
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
];

/// What makes `new` refuse documents `old` accepted; empty if nothing does.
pub fn breaking(old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    compare(old, new, "", &mut out);
    out
}

fn obj(v: &Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.clone(),
        // `true` accepts everything; `false` nothing (anything is wider)
        Value::Bool(true) => Map::new(),
        _ => Map::new(),
    }
}

fn types(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(ts) => Some(
            ts.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
        ),
        _ => None,
    }
}

fn compare(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    if old == &Value::Bool(false) || old == new {
        return;
    }
    let (o, n) = (obj(old), obj(new));
    let here = if at.is_empty() { "/" } else { at };
    for (k, nv) in &n {
        if ANNOTATIONS.contains(&k.as_str()) {
            continue;
        }
        let ov = o.get(k);
        match k.as_str() {
            "type" => {
                let (ot, nt) = (types(ov), types(Some(nv)).unwrap_or_default());
                let lost: Vec<String> = match ot {
                    None => vec!["any".into()],
                    Some(ot) => ot
                        .into_iter()
                        .filter(|t| {
                            !(nt.contains(t) || t == "integer" && nt.iter().any(|n| n == "number"))
                        })
                        .collect(),
                };
                if !lost.is_empty() {
                    out.push(format!("{here}: type no longer allows {}", lost.join(", ")));
                }
            }
            "required" => {
                let had: Vec<&Value> = ov
                    .and_then(Value::as_array)
                    .map(|a| a.iter().collect())
                    .unwrap_or_default();
                for r in nv.as_array().into_iter().flatten() {
                    if !had.contains(&r) {
                        out.push(format!("{here}: {r} becomes required"));
                    }
                }
            }
            "enum" => match ov.and_then(Value::as_array) {
                None => out.push(format!("{here}: enum added")),
                Some(had) => {
                    for v in had {
                        if !nv.as_array().is_some_and(|a| a.contains(v)) {
                            out.push(format!("{here}: enum no longer allows {v}"));
                        }
                    }
                }
            },
            k if LOWER.contains(&k) || UPPER.contains(&k) => {
                let tighter = match (ov.and_then(Value::as_f64), nv.as_f64()) {
                    (None, _) => true,
                    (Some(o), Some(n)) => {
                        if LOWER.contains(&k) {
                            n > o
                        } else {
                            n < o
                        }
                    }
                    (Some(_), None) => true,
                };
                if tighter {
                    out.push(format!("{here}: {k} tightened to {nv}"));
                }
            }
            "properties" => {
                let (op, np) = (o.get("properties").map(obj).unwrap_or_default(), obj(nv));
                for (name, nsub) in &np {
                    // a new optional property is allowed (the contract says so); a document
                    // that already held it with another shape is counted by the data check
                    if let Some(osub) = op.get(name) {
                        compare(osub, nsub, &format!("{at}/{name}"), out);
                    }
                }
            }
            "items" => compare(
                ov.unwrap_or(&Value::Bool(true)),
                nv,
                &format!("{at}/*"),
                out,
            ),
            "additionalProperties" => match (ov, nv) {
                (_, Value::Bool(true)) => {}
                (Some(Value::Bool(false)), _) => {}
                (Some(o), n) if o.is_object() => compare(o, n, &format!("{at}/(additional)"), out),
                _ => out.push(format!("{here}: additionalProperties restricted")),
            },
            "x-merge" => {
                if ov != Some(nv) {
                    out.push(format!(
                        "{here}: merge policy changes from {} to {nv} (the stored form differs)",
                        ov.cloned().unwrap_or_else(|| "lww".into())
                    ));
                }
            }
            other => {
                if ov != Some(nv) {
                    out.push(format!(
                        "{here}: {other} added or changed (not checked for compatibility)"
                    ));
                }
            }
        }
    }
    if o.contains_key("x-merge") && !n.contains_key("x-merge") {
        out.push(format!(
            "{here}: merge policy changes from {} to lww (the stored form differs)",
            o["x-merge"]
        ));
    }
    // a property dropped from `properties` under additionalProperties false is now refused
    if n.get("additionalProperties") == Some(&Value::Bool(false)) {
        let np = n.get("properties").map(obj).unwrap_or_default();
        for name in o.get("properties").map(obj).unwrap_or_default().keys() {
            if !np.contains_key(name) {
                out.push(format!("{here}: property {name:?} is no longer allowed"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::breaking;
    use serde_json::json;

    #[test]
    fn relaxing_changes_are_compatible_and_tightening_ones_are_named() {
        let old = json!({"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "maxLength": 10},
            "age": {"type": "integer", "minimum": 0},
            "role": {"enum": ["a", "b"]},
            "n": {"type": "integer", "x-merge": "counter"}}});
        let relaxed = json!({"type": "object", "required": [], "properties": {
            "name": {"type": ["string", "null"], "maxLength": 20, "title": "Name"},
            "age": {"type": "number"},
            "role": {"enum": ["a", "b", "c"]},
            "n": {"type": "integer", "x-merge": "counter"},
            "new": {"type": "string"}}});
        assert_eq!(breaking(&old, &relaxed), Vec::<String>::new());
        let cases = [
            (
                json!({"type": "object", "required": ["name", "age"]}),
                "\"age\" becomes required",
            ),
            (
                json!({"properties": {"name": {"type": "integer"}}}),
                "/name: type no longer allows string",
            ),
            (
                json!({"properties": {"name": {"type": "string", "maxLength": 5}}}),
                "/name: maxLength tightened to 5",
            ),
            (
                json!({"properties": {"age": {"type": "integer", "minimum": 1}}}),
                "/age: minimum tightened to 1",
            ),
            (
                json!({"properties": {"role": {"enum": ["a"]}}}),
                "/role: enum no longer allows \"b\"",
            ),
            (
                json!({"properties": {"name": {"type": "string", "pattern": "^a"}}}),
                "/name: pattern added or changed",
            ),
            (
                json!({"properties": {"n": {"type": "integer"}}, "additionalProperties": false}),
                "/: additionalProperties restricted",
            ),
            (
                json!({"properties": {"n": {"type": "integer", "x-merge": "lww"}}}),
                "/n: merge policy changes",
            ),
        ];
        for (new, want) in cases {
            let got = breaking(&old, &new);
            assert!(got.iter().any(|g| g.contains(want)), "{new}: {got:?}");
        }
    }
}
