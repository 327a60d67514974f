//! Counters created concurrently, and edits under a contract: merge policies per field, and
//! writes that would break a rule refused with nothing changed.

use super::*;
use crate::contract::{Merge, Violation};
use crate::hlc::{Clock, NodeId, DEFAULT_MAX_DRIFT};
use serde_json::{json, Map};

#[derive(Debug)]
struct TestContract {
    merges: Vec<(&'static str, Merge)>,
    /// At most this many tags, and `name` required.
    max_tags: usize,
}

impl Contract for TestContract {
    fn merge_at(&self, path: &[String]) -> Merge {
        let p = crate::pointer::to_pointer(path);
        self.merges
            .iter()
            .find(|(m, _)| *m == p)
            .map_or(Merge::Lww, |(_, k)| *k)
    }
    fn violations(&self, value: &Value) -> Vec<Violation> {
        let mut out = vec![];
        if value.get("name").is_none() {
            out.push(Violation {
                path: "".into(),
                message: "\"name\" is a required property".into(),
            });
        }
        if value["tags"]
            .as_array()
            .is_some_and(|t| t.len() > self.max_tags)
        {
            out.push(Violation {
                path: "/tags".into(),
                message: "too many tags".into(),
            });
        }
        out
    }
    fn counter_fields(&self) -> usize {
        self.merges
            .iter()
            .filter(|(_, m)| *m == Merge::Counter)
            .count()
    }
}

fn contract() -> TestContract {
    TestContract {
        merges: vec![
            ("/visits", Merge::Counter),
            ("/stats/likes", Merge::Counter),
            ("/bio", Merge::Text),
            ("/tags", Merge::List),
        ],
        max_tags: 3,
    }
}

struct Node {
    doc: Document,
    clock: Clock,
    contract: Option<TestContract>,
}

impl Node {
    fn new(name: &str, contract: Option<TestContract>) -> Self {
        Node {
            doc: Document::new(ActorId::from(name.as_bytes())),
            clock: Clock::new(&NodeId::new(name).unwrap(), DEFAULT_MAX_DRIFT),
            contract,
        }
    }
    fn edit(&mut self, e: Edit) -> Result<Applied> {
        let c = self.contract.as_ref().map(|c| c as &dyn Contract);
        self.doc.apply_checked(&e, c, &self.clock.now())
    }
    fn put(&mut self, v: Value) -> Result<Applied> {
        self.edit(Edit::Put(v.as_object().unwrap().clone()))
    }
    fn patch(&mut self, v: Value) -> Result<Applied> {
        self.edit(Edit::Patch(v.as_object().unwrap().clone()))
    }
    fn ops(&mut self, v: Value) -> Result<Applied> {
        self.edit(Edit::Ops(parse_ops(json!({ "ops": v })).unwrap()))
    }
    fn increment(&mut self, path: &str, times: usize) {
        for _ in 0..times {
            self.ops(json!([{"op": "increment", "path": path, "by": 1}]))
                .unwrap();
        }
    }
    fn pull(&mut self, other: &Node) {
        let changes = other.doc.changes_since(&[]);
        self.doc
            .merge_changes(changes.iter().map(Vec::as_slice))
            .unwrap();
    }
}

/// Three nodes that each saw `setup` (applied on the first and pulled by the others).
fn three(setup: Value, contract: fn() -> Option<TestContract>) -> [Node; 3] {
    let mut nodes = [
        Node::new("us", contract()),
        Node::new("eu", contract()),
        Node::new("ap", contract()),
    ];
    nodes[0].put(setup).unwrap();
    let first = nodes[0].doc.changes_since(&[]);
    for n in &mut nodes[1..] {
        n.doc
            .merge_changes(first.iter().map(Vec::as_slice))
            .unwrap();
    }
    nodes
}

fn merge_all(nodes: &mut [Node; 3]) {
    for i in 0..3 {
        for j in 0..3 {
            if i != j {
                let other = Node {
                    doc: nodes[j].doc.clone(),
                    clock: Clock::new(&NodeId::new("x").unwrap(), DEFAULT_MAX_DRIFT),
                    contract: None,
                };
                nodes[i].pull(&other);
            }
        }
    }
}

#[test]
fn first_increments_in_three_regions_add_up_with_or_without_a_contract() {
    for with in [false, true] {
        let make = if with { || Some(contract()) } else { || None };
        let mut nodes = three(json!({"name": "ada"}), make);
        nodes[0].increment("/visits", 10);
        nodes[1].increment("/visits", 100);
        nodes[2].increment("/visits", 1);
        // nested: a map every region has, a counter none has yet
        nodes[0].patch(json!({"stats": {}})).unwrap();
        merge_all(&mut nodes);
        nodes[1].increment("/stats/likes", 2);
        nodes[2].increment("/stats/likes", 3);
        merge_all(&mut nodes);
        for n in &nodes {
            assert_eq!(n.doc.value()["visits"], json!(111), "with contract: {with}");
            assert_eq!(n.doc.value()["stats"]["likes"], json!(5));
            assert!(n.doc.conflicts().is_empty(), "{:?}", n.doc.conflicts());
        }
        // increments after the merge count once, on any node
        nodes[1].increment("/visits", 4);
        merge_all(&mut nodes);
        for n in &nodes {
            assert_eq!(n.doc.value()["visits"], json!(115));
            assert_eq!(n.doc.version(), nodes[0].doc.version());
        }
    }
}

#[test]
fn a_counter_removed_and_incremented_again_starts_over() {
    let mut n = Node::new("us", None);
    n.put(json!({"name": "ada"})).unwrap();
    n.increment("/visits", 3);
    n.ops(json!([{"op": "remove", "path": "/visits"}])).unwrap();
    assert_eq!(n.doc.value().get("visits"), None);
    n.increment("/visits", 2);
    assert_eq!(n.doc.value()["visits"], json!(2));
    // and the history loads again
    let again = Document::load(ActorId::from(&b"x"[..]), Some(&n.doc.save()), []).unwrap();
    assert_eq!(again.value(), n.doc.value());
}

#[test]
fn a_write_that_breaks_the_contract_is_refused_and_changes_nothing() {
    let mut n = Node::new("us", Some(contract()));
    n.put(json!({"name": "ada", "tags": ["a"]})).unwrap();
    let before = (n.doc.value(), n.doc.version());
    let cases = [
        Edit::Put(json!({"tags": []}).as_object().unwrap().clone()),
        Edit::Patch(json!({"name": null}).as_object().unwrap().clone()),
        Edit::Patch(
            json!({"tags": ["a", "b", "c", "d"]})
                .as_object()
                .unwrap()
                .clone(),
        ),
        Edit::Ops(
            parse_ops(
                json!({"ops": [{"op": "insert", "path": "/tags/-", "value": "b"},
                {"op": "insert", "path": "/tags/-", "value": "c"},
                {"op": "insert", "path": "/tags/-", "value": "d"}]}),
            )
            .unwrap(),
        ),
        // a counter is changed only by increment, also when it does not exist yet
        Edit::Patch(json!({"visits": 5}).as_object().unwrap().clone()),
        Edit::Ops(
            parse_ops(json!({"ops": [{"op": "set", "path": "/visits", "value": 1}]})).unwrap(),
        ),
    ];
    for e in cases {
        match n.edit(e.clone()) {
            Err(Error::SchemaViolation(v)) => assert!(!v.is_empty()),
            other => panic!("{e:?}: {other:?}"),
        }
        assert_eq!((n.doc.value(), n.doc.version()), before, "{e:?}");
    }
    // writing a counter's own value (absent: zero) is no change of it; delete is never refused
    n.patch(json!({"visits": 0})).unwrap();
    n.increment("/visits", 2);
    n.put(json!({"name": "ada", "visits": 2})).unwrap();
    assert_eq!(n.doc.value()["visits"], json!(2));
    n.edit(Edit::Delete).unwrap();
}

#[test]
fn text_and_list_fields_merge_concurrent_writes_element_wise() {
    let mut nodes = three(json!({"name": "ada"}), || Some(contract()));
    nodes[0]
        .patch(json!({"bio": "likes tea", "tags": ["a", "b"]}))
        .unwrap();
    merge_all(&mut nodes);
    // a whole new string and a whole new list from each side: each becomes the smallest edit
    nodes[1]
        .patch(json!({"bio": "likes green tea", "tags": ["a", "b", "c"]}))
        .unwrap();
    nodes[2]
        .patch(json!({"bio": "likes tea a lot", "tags": ["z", "a", "b"]}))
        .unwrap();
    merge_all(&mut nodes);
    for n in &nodes {
        assert_eq!(n.doc.value()["bio"], json!("likes green tea a lot"));
        assert_eq!(n.doc.value()["tags"], json!(["z", "a", "b", "c"]));
    }
    // the same writes without a contract: the later whole value wins
    let mut plain = three(json!({"name": "ada"}), || None);
    plain[0].patch(json!({"tags": ["a", "b"]})).unwrap();
    merge_all(&mut plain);
    plain[1].patch(json!({"tags": ["a", "b", "c"]})).unwrap();
    plain[2].patch(json!({"tags": ["z", "a", "b"]})).unwrap();
    merge_all(&mut plain);
    assert_eq!(plain[0].doc.value()["tags"].as_array().unwrap().len(), 3);
}

#[test]
fn concurrent_valid_writes_can_merge_into_a_document_that_breaks_a_rule_and_say_so() {
    let mut nodes = three(json!({"name": "ada", "tags": ["a"]}), || Some(contract()));
    nodes[0].patch(json!({"tags": ["a", "b", "c"]})).unwrap();
    nodes[1].patch(json!({"tags": ["a", "x", "y"]})).unwrap();
    merge_all(&mut nodes);
    let c = contract();
    for n in &nodes {
        assert_eq!(n.doc.value()["tags"].as_array().unwrap().len(), 5);
        assert_eq!(n.doc.violations(&c)[0].path, "/tags");
    }
    // the next write must repair it
    assert!(matches!(
        nodes[2].patch(json!({"name": "bea"})),
        Err(Error::SchemaViolation(_))
    ));
    nodes[2].patch(json!({"tags": ["a", "b"]})).unwrap();
    assert!(nodes[2].doc.violations(&c).is_empty());
}

#[test]
fn a_forged_change_under_a_counter_actor_is_refused_from_a_client() {
    use automerge::sync::{ChunkList, Message, MessageVersion};
    use automerge::transaction::Transactable;
    let mut node = Node::new("us", None);
    node.put(json!({"name": "ada"})).unwrap();
    // a client that pulled the node, then wrote under a counter actor
    let mut am = node.doc.am_mut().clone();
    let mut actor = b"meridian/counter/".to_vec();
    actor.extend([7u8; 16]);
    am.set_actor(ActorId::from(actor));
    let user = user_obj(&am);
    let mut tx = am.transaction();
    tx.put(&user, "name", "mallory").unwrap();
    tx.commit();
    let msg = Message {
        heads: vec![],
        need: vec![],
        have: vec![],
        changes: ChunkList::from(vec![am
            .get_last_local_change()
            .unwrap()
            .raw_bytes()
            .to_vec()]),
        flags: None,
        version: MessageVersion::V1,
    };
    assert!(matches!(
        node.doc.check_client(&msg, None),
        Err(Error::Refused(_))
    ));
    // while a genuine creation (made by a client replica's increment) is accepted
    let mut client = Document::load(
        ActorId::from(&[0xffu8, 1, 2, 3][..]),
        Some(&node.doc.save()),
        [],
    )
    .unwrap();
    client
        .apply_unstamped(&Edit::Ops(
            parse_ops(json!({"ops": [{"op": "increment", "path": "/visits", "by": 2}]})).unwrap(),
        ))
        .unwrap();
    let msg = Message {
        changes: ChunkList::from(client.changes_since(&node.doc.heads())),
        ..msg
    };
    let crate::ClientCheck::Changes(checked) = node.doc.check_client(&msg, None).unwrap() else {
        panic!("the client's own changes are taken");
    };
    node.doc.accept_client(*checked, &node.clock.now()).unwrap();
    assert_eq!(node.doc.value()["visits"], json!(2));
}

#[allow(dead_code)]
fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}
