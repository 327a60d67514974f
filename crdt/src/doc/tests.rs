//! Document-level tests: JSON round trips, RFC 7396, ops, and the CRDT merge laws.

use super::*;
use proptest::prelude::*;
use serde_json::json;
use serde_json::Map;

fn stamp_clock(node: &str) -> crate::hlc::Clock {
    crate::hlc::Clock::new(
        &crate::hlc::NodeId::new(node).unwrap(),
        crate::hlc::DEFAULT_MAX_DRIFT,
    )
}

/// A document plus the clock of the node that edits it.
struct Node {
    doc: Document,
    clock: crate::hlc::Clock,
}

impl Node {
    fn new(name: &str) -> Self {
        Node {
            doc: Document::new(ActorId::from(name.as_bytes())),
            clock: stamp_clock(name),
        }
    }
    fn edit(&mut self, e: Edit) -> Result<Applied> {
        self.doc.apply(&e, &self.clock.now())
    }
    fn put(&mut self, v: Value) {
        self.edit(Edit::Put(v.as_object().unwrap().clone()))
            .unwrap();
    }
    fn patch(&mut self, v: Value) {
        self.edit(Edit::Patch(v.as_object().unwrap().clone()))
            .unwrap();
    }
    fn ops(&mut self, v: Value) -> Result<Applied> {
        self.edit(Edit::Ops(parse_ops(json!({ "ops": v }))?))
    }
    /// Receives every change `other` has (duplicates included).
    fn pull(&mut self, other: &Node) {
        let changes = other.doc.changes_since(&[]);
        self.doc
            .merge_changes(changes.iter().map(|c| c.as_slice()))
            .unwrap();
    }
}

fn snapshot(d: &Document) -> (Value, String, Vec<Conflict>, State) {
    (d.value(), d.version(), d.conflicts(), d.state())
}

// --- JSON round trip ------------------------------------------------------------------------

fn arb_json(depth: u32) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(-1i64), Just(0)].prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite() && f.fract() != 0.0)
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn arb_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("\\PC{0,8}", arb_json(6), 0..6)
        .prop_map(|m| m.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn put_then_read_returns_exactly_the_json(obj in arb_object()) {
        let mut n = Node::new("a");
        n.edit(Edit::Put(obj.clone())).unwrap();
        prop_assert_eq!(n.doc.value(), Value::Object(obj.clone()));
        // and through the JSON text a client sends
        let text = serde_json::to_string(&obj).unwrap();
        prop_assert_eq!(crate::json::parse(text.as_bytes()).unwrap(), Value::Object(obj));
    }

    #[test]
    fn put_survives_save_and_load(a in arb_object(), b in arb_object()) {
        let mut n = Node::new("a");
        n.edit(Edit::Put(a)).unwrap();
        n.edit(Edit::Put(b.clone())).unwrap();
        let loaded = Document::load(ActorId::from(&b"a"[..]), Some(&n.doc.save()), []).unwrap();
        prop_assert_eq!(snapshot(&loaded), snapshot(&n.doc));
        prop_assert_eq!(loaded.value(), Value::Object(b));
    }

    #[test]
    fn put_over_put_is_minimal_and_exact(a in arb_object(), b in arb_object()) {
        let mut n = Node::new("a");
        n.edit(Edit::Put(a)).unwrap();
        n.edit(Edit::Put(b.clone())).unwrap();
        prop_assert_eq!(n.doc.value(), Value::Object(b.clone()));
        // writing the same object again changes nothing at all
        let again = n.edit(Edit::Put(b)).unwrap();
        prop_assert!(again.change.is_none());
    }
}

#[test]
fn numbers_keep_their_kind() {
    let mut n = Node::new("a");
    n.put(
        json!({"i": 1, "f": 1.5, "one": 1.0, "big": i64::MAX, "neg": i64::MIN, "u": "日本語 🎉"}),
    );
    let v = n.doc.value();
    assert_eq!(
        serde_json::to_string(&v).unwrap(),
        r#"{"big":9223372036854775807,"f":1.5,"i":1,"neg":-9223372036854775808,"one":1.0,"u":"日本語 🎉"}"#
    );
}

// --- RFC 7396 -------------------------------------------------------------------------------

#[test]
fn rfc7396_appendix_a_examples() {
    // (original, patch, result); rows whose target or patch is not an object are refused by the
    // API before they reach a document, since documents are objects.
    let rows = [
        (json!({"a":"b"}), json!({"a":"c"}), json!({"a":"c"})),
        (json!({"a":"b"}), json!({"b":"c"}), json!({"a":"b","b":"c"})),
        (json!({"a":"b"}), json!({"a":null}), json!({})),
        (
            json!({"a":"b","b":"c"}),
            json!({"a":null}),
            json!({"b":"c"}),
        ),
        (json!({"a":["b"]}), json!({"a":"c"}), json!({"a":"c"})),
        (json!({"a":"c"}), json!({"a":["b"]}), json!({"a":["b"]})),
        (
            json!({"a":{"b":"c"}}),
            json!({"a":{"b":"d","c":null}}),
            json!({"a":{"b":"d"}}),
        ),
        (json!({"a":[{"b":"c"}]}), json!({"a":[1]}), json!({"a":[1]})),
        (json!({"e":null}), json!({"a":1}), json!({"e":null,"a":1})),
        (
            json!({}),
            json!({"a":{"bb":{"ccc":null}}}),
            json!({"a":{"bb":{}}}),
        ),
    ];
    for (orig, patch, want) in rows {
        let mut n = Node::new("a");
        n.put(orig.clone());
        n.patch(patch.clone());
        assert_eq!(n.doc.value(), want, "{orig} + {patch}");
    }
    // rows with a non-object patch: ["c"], null, "bar" as whole patches
    for patch in [json!(["c"]), json!(null), json!("bar")] {
        let err = crate::json::parse_object(patch.to_string().as_bytes()).unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)));
    }
}

#[test]
fn a_patch_touching_one_field_emits_ops_for_that_field_only() {
    let mut n = Node::new("a");
    n.put(json!({"name":"x","bio":"y","tags":[1,2,3],"deep":{"a":{"b":1}}}));
    let applied = n
        .edit(Edit::Patch(json!({"bio":"z"}).as_object().unwrap().clone()))
        .unwrap();
    let (_, bytes) = applied.change.unwrap();
    let change = automerge::Change::from_bytes(bytes).unwrap();
    assert_eq!(change.len(), 1, "one op for one field");
}

// --- Ops ------------------------------------------------------------------------------------

#[test]
fn ops_apply_atomically() {
    let mut n = Node::new("a");
    n.put(json!({"name":"x","list":[1,2]}));
    n.ops(json!([
        {"op":"set","path":"/name","value":"y"},
        {"op":"increment","path":"/visits","by":2},
        {"op":"increment","path":"/visits","by":3},
        {"op":"insert","path":"/list/-","value":3},
        {"op":"insert","path":"/list/0","value":{"zero":true}},
        {"op":"remove","path":"/list/1"},
        {"op":"splice","path":"/bio","index":0,"insert":"héllo"},
        {"op":"splice","path":"/bio","index":5,"insert":" world"},
        {"op":"splice","path":"/name","index":0,"delete":1,"insert":"Y"},
        {"op":"set","path":"/a~1b","value":{"c":[]}},
    ]))
    .unwrap();
    assert_eq!(
        n.doc.value(),
        json!({
            "name":"Y","visits":5,"list":[{"zero":true},2,3],"bio":"héllo world","a/b":{"c":[]}
        })
    );
    let before = snapshot(&n.doc);
    for bad in [
        json!([{"op":"set","path":"/name","value":"s"},{"op":"increment","path":"/name","by":1}]),
        json!([{"op":"insert","path":"/list/9","value":1}]),
        json!([{"op":"set","path":"/list/3","value":1}]),
        json!([{"op":"remove","path":"/nope"}]),
        json!([{"op":"set","path":"/missing/x","value":1}]),
        json!([{"op":"insert","path":"/name/0","value":1}]),
        json!([{"op":"splice","path":"/bio","index":12,"insert":"x"}]),
        json!([{"op":"splice","path":"/bio","index":10,"delete":2}]),
        json!([{"op":"increment","path":"/visits","by":i64::MAX}]),
        json!([{"op":"set","path":"","value":{}}]),
    ] {
        let err = n.ops(bad.clone()).unwrap_err();
        assert!(matches!(err, Error::Unprocessable(_)), "{bad}: {err:?}");
        assert_eq!(snapshot(&n.doc), before, "{bad} changed the document");
    }
    for bad in [
        json!([{"op":"frobnicate","path":"/x"}]),
        json!([{"op":"set","path":"x","value":1}]),
        json!([{"op":"set","path":"/a~2","value":1}]),
        json!([{"op":"increment","path":"/v","by":1.5}]),
        json!([{"op":"set","path":"/v"}]),
        json!([]),
    ] {
        assert!(
            matches!(n.ops(bad.clone()), Err(Error::BadRequest(_))),
            "{bad}"
        );
    }
}

#[test]
fn increment_turns_a_plain_integer_into_a_counter() {
    let mut n = Node::new("a");
    n.put(json!({"visits": 5}));
    n.ops(json!([{"op":"increment","path":"/visits","by":1}]))
        .unwrap();
    // a PUT of the same value keeps the counter
    n.put(json!({"visits": 6}));
    let mut m = Node::new("b");
    m.pull(&n);
    n.ops(json!([{"op":"increment","path":"/visits","by":10}]))
        .unwrap();
    m.ops(json!([{"op":"increment","path":"/visits","by":100}]))
        .unwrap();
    n.pull(&m);
    m.pull(&n);
    assert_eq!(n.doc.value(), json!({"visits": 116}));
    assert_eq!(snapshot(&n.doc), snapshot(&m.doc));
}

// --- Conflicts and deletes ------------------------------------------------------------------

#[test]
fn concurrent_writes_to_a_field_resolve_to_the_later_hlc_everywhere() {
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    a.put(json!({"bio":"base"}));
    b.pull(&a);
    b.patch(json!({"bio":"from b (earlier)"}));
    std::thread::sleep(std::time::Duration::from_millis(2));
    a.patch(json!({"bio":"from a (later)"}));
    a.pull(&b);
    b.pull(&a);
    assert_eq!(a.doc.value(), json!({"bio":"from a (later)"}));
    assert_eq!(snapshot(&a.doc), snapshot(&b.doc));
    let conflicts = a.doc.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].path, "/bio");
    let values: Vec<_> = conflicts[0]
        .values
        .iter()
        .map(|v| (v.value.clone(), v.node.clone()))
        .collect();
    assert_eq!(
        values,
        vec![
            (json!("from a (later)"), "a".into()),
            (json!("from b (earlier)"), "b".into())
        ]
    );
    // a later write resolves the conflict
    b.patch(json!({"bio":"settled"}));
    a.pull(&b);
    assert!(a.doc.conflicts().is_empty());
    assert_eq!(a.doc.value(), json!({"bio":"settled"}));
}

#[test]
fn concurrent_patches_to_different_fields_both_survive() {
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    // both create the same document concurrently: genesis makes it one shared object
    a.patch(json!({"name":"Ada"}));
    b.patch(json!({"email":"ada@example.com"}));
    a.pull(&b);
    b.pull(&a);
    assert_eq!(
        a.doc.value(),
        json!({"name":"Ada","email":"ada@example.com"})
    );
    assert_eq!(snapshot(&a.doc), snapshot(&b.doc));
}

#[test]
fn delete_wins_over_a_concurrent_update_and_a_later_write_recreates() {
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    a.put(json!({"name":"x","bio":"y"}));
    b.pull(&a);
    a.edit(Edit::Delete).unwrap();
    b.patch(json!({"bio":"concurrent"}));
    a.pull(&b);
    b.pull(&a);
    assert_eq!(a.doc.state(), State::Deleted);
    assert_eq!(snapshot(&a.doc), snapshot(&b.doc));
    assert!(matches!(a.edit(Edit::Delete), Err(Error::NotFound)));
    // a write made after seeing the delete starts from an empty document
    b.patch(json!({"name":"new"}));
    a.pull(&b);
    assert_eq!(a.doc.state(), State::Live);
    assert_eq!(a.doc.value(), json!({"name":"new"}));
}

// --- Merge laws -----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum RandomEdit {
    Patch(String, Value),
    Put(Map<String, Value>),
    Incr(i64),
    Push(i64),
    Delete,
}

fn arb_edit() -> impl Strategy<Value = RandomEdit> {
    let field = prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(str::to_owned);
    prop_oneof![
        4 => (field, arb_json(2)).prop_map(|(f, v)| RandomEdit::Patch(f, v)),
        1 => prop::collection::btree_map(prop_oneof![Just("a".to_owned()), Just("b".to_owned())], arb_json(2), 0..3)
            .prop_map(|m| RandomEdit::Put(m.into_iter().collect())),
        2 => (-5i64..5).prop_map(RandomEdit::Incr),
        2 => (0i64..100).prop_map(RandomEdit::Push),
        1 => Just(RandomEdit::Delete),
    ]
}

fn apply_random(n: &mut Node, e: &RandomEdit) {
    let r = match e {
        RandomEdit::Patch(f, v) => {
            n.edit(Edit::Patch([(f.clone(), v.clone())].into_iter().collect()))
        }
        RandomEdit::Put(m) => n.edit(Edit::Put(m.clone())),
        RandomEdit::Incr(by) => n.ops(json!([{"op":"increment","path":"/n","by":by}])),
        RandomEdit::Push(x) => n
            .ops(json!([{"op":"insert","path":"/l/-","value":x}]))
            .or_else(|_| n.ops(json!([{"op":"set","path":"/l","value":[x]}]))),
        RandomEdit::Delete => n.edit(Edit::Delete),
    };
    // refusals (increment on a non-counter, delete of a deleted doc) change nothing
    let _ = r;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Three nodes edit concurrently; exchanging changes in any order, any number of times,
    /// gives identical JSON, versions, conflicts and state.
    #[test]
    fn merge_is_commutative_associative_and_idempotent(
        edits in prop::collection::vec((0usize..3, arb_edit()), 1..24),
        order in Just(()).prop_perturb(|_, mut rng| {
            let mut o: Vec<usize> = (0..3).collect();
            for i in (1..3).rev() { o.swap(i, (rng.next_u32() as usize) % (i + 1)); }
            o
        }),
        sync_every in 1usize..8,
    ) {
        let mut nodes = [Node::new("n0"), Node::new("n1"), Node::new("n2")];
        for (i, (who, e)) in edits.iter().enumerate() {
            apply_random(&mut nodes[*who], e);
            if i % sync_every == 0 {
                // a partial exchange mid-way
                let (x, y) = (order[0], order[1]);
                let src = nodes[x].doc.clone();
                nodes[y].doc.merge_changes(src.changes_since(&[]).iter().map(|c| c.as_slice())).unwrap();
            }
        }
        let all: Vec<Vec<Vec<u8>>> = nodes.iter().map(|n| n.doc.changes_since(&[])).collect();
        // each node receives the others' changes in a different order, twice
        for (k, n) in nodes.iter_mut().enumerate() {
            for round in 0..2 {
                for j in 0..3 {
                    let from = order[(j + k + round) % 3];
                    n.doc.merge_changes(all[from].iter().rev().map(|c| c.as_slice())).unwrap();
                }
            }
        }
        let first = snapshot(&nodes[0].doc);
        for n in &nodes[1..] {
            prop_assert_eq!(&snapshot(&n.doc), &first);
        }
        // and a fresh node that loads everything agrees too
        let mut fresh = Node::new("fresh");
        for c in all.iter().flatten() {
            fresh.doc.merge_changes([c.as_slice()]).unwrap();
        }
        prop_assert_eq!(snapshot(&fresh.doc), first);
    }
}

#[test]
fn genesis_is_the_documented_change() {
    // docs/sync.md publishes this hash: clients seed it under a document's id. It must never
    // change, or documents created on either side of the change would stop sharing their root.
    assert_eq!(
        genesis_hash().to_string(),
        "7ffabf88754c88dba826bb0e63599194694b1fc8ec012f58ca9b56498ba6de77"
    );
}

#[test]
fn whole_numbers_in_ops_may_be_written_with_a_zero_fraction_and_nothing_else_passes() {
    let by = |v: Value| parse_ops(json!({"ops": [{"op": "increment", "path": "/n", "by": v}]}));
    for (given, wanted) in [
        (json!(2), 2),
        (json!(2.0), 2),
        (json!(-3.0), -3),
        (json!(0.0), 0),
    ] {
        match &by(given.clone()).unwrap()[0] {
            Op::Increment { by, .. } => assert_eq!(*by, wanted, "{given}"),
            other => panic!("{other:?}"),
        }
    }
    for bad in [
        json!(2.5),
        json!(1e19),
        json!(9223372036854775808u64),
        json!("2"),
    ] {
        assert!(by(bad.clone()).is_err(), "{bad}");
    }
    let splice = |index: Value| {
        parse_ops(json!({"ops": [{"op": "splice", "path": "/t", "index": index, "delete": 1.0}]}))
    };
    match &splice(json!(3.0)).unwrap()[0] {
        Op::Splice { index, delete, .. } => assert_eq!((*index, *delete), (3, 1)),
        other => panic!("{other:?}"),
    }
    for bad in [json!(-1), json!(-1.0), json!(0.5)] {
        assert!(splice(bad.clone()).is_err(), "{bad}");
    }
}
