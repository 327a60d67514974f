//! Client changes (automerge-repo sync): acceptance, stamps, the layout check, and the merge
//! laws with clients in the mix.

use automerge::sync::{ChunkList, Message, MessageVersion};
use automerge::transaction::Transactable;
use automerge::{ObjType, ScalarValue, ROOT};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::*;
use crate::hlc::{Clock, NodeId, DEFAULT_MAX_DRIFT};

fn clock(node: &str) -> Clock {
    Clock::new(&NodeId::new(node).unwrap(), DEFAULT_MAX_DRIFT)
}

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

struct Node {
    doc: Document,
    clock: Clock,
}

impl Node {
    fn new(name: &str) -> Self {
        Node {
            doc: Document::new(ActorId::from(name.as_bytes())),
            clock: clock(name),
        }
    }
    fn patch(&mut self, v: Value) {
        self.doc
            .apply(&Edit::Patch(obj(v)), &self.clock.now())
            .unwrap();
    }
    /// Takes every change `other` (a node) has.
    fn pull(&mut self, other: &Document) {
        let changes = other.changes_since(&[]);
        self.doc
            .merge_changes(changes.iter().map(Vec::as_slice))
            .unwrap();
    }
    /// Accepts what a client sends, as the store does: check, then stamp. Returns how many
    /// changes were new; a message that waits for other nodes' changes is `Err(Waiting)`.
    fn accept(&mut self, from: &Document) -> Result<usize> {
        let msg = message_with(from.changes_since(&[]));
        match self.doc.check_client(&msg, None)? {
            ClientCheck::Nothing => Ok(0),
            ClientCheck::Waiting(h) => Err(crate::Error::Refused(format!("Waiting for {h:?}"))),
            ClientCheck::Changes(c) => {
                let n = c.len();
                self.doc.accept_client(*c, &self.clock.now())?;
                Ok(n)
            }
        }
    }
}

fn message_with(changes: Vec<Vec<u8>>) -> Message {
    Message {
        heads: vec![],
        need: vec![],
        have: vec![],
        changes: ChunkList::from(changes),
        flags: None,
        version: MessageVersion::V1,
    }
}

/// A client replica: a random actor, unstamped edits.
fn client() -> Document {
    let mut actor = rand::random::<[u8; 16]>();
    actor[0] = 0xff; // never a node id
    Document::new(ActorId::from(actor.as_slice()))
}

fn client_patch(c: &mut Document, v: Value) {
    c.apply_unstamped(&Edit::Patch(obj(v))).unwrap();
}

fn view(d: &Document) -> (Value, String, Vec<Conflict>, State) {
    (d.value(), d.version(), d.conflicts(), d.state())
}

#[test]
fn a_synced_offline_edit_wins_over_earlier_writes_and_keeps_the_loser_listed() {
    let mut eu = Node::new("eu");
    eu.patch(json!({"name": "created"}));
    let mut phone = client();
    phone
        .merge_changes(eu.doc.changes_since(&[]).iter().map(Vec::as_slice))
        .unwrap();

    // --- the phone edits offline while the node takes an HTTP write to the same field
    client_patch(&mut phone, json!({"name": "offline"}));
    eu.patch(json!({"name": "http"}));
    // on the phone its own edit shows: it is the latest write it knows of
    assert_eq!(phone.value(), json!({"name": "offline"}));

    // --- the phone syncs: the node stamps its change on arrival, after the HTTP write
    assert_eq!(eu.accept(&phone).unwrap(), 1);
    assert_eq!(eu.doc.value(), json!({"name": "offline"}));
    let conflicts = eu.doc.conflicts();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let [winner, loser] = &conflicts[0].values[..] else {
        panic!("{conflicts:?}")
    };
    assert_eq!(winner.value, json!("offline"));
    assert_eq!(winner.node, "eu", "the accepting node");
    assert_eq!(
        winner.client.as_deref(),
        Some(hex::encode(phone.actor().to_bytes()).as_str())
    );
    assert!(winner.hlc > loser.hlc, "{winner:?} {loser:?}");
    assert_eq!(loser.value, json!("http"));
    assert_eq!(loser.client, None);

    // --- the phone gets everything back (with the stamp change) and renders the same
    phone
        .merge_changes(eu.doc.changes_since(&[]).iter().map(Vec::as_slice))
        .unwrap();
    assert_eq!(view(&phone), view(&eu.doc));
    assert!(!phone.has_unstamped_changes());
}

#[test]
fn a_later_write_elsewhere_beats_an_accepted_client_edit_whatever_the_client_clock_says() {
    let mut eu = Node::new("eu");
    let mut us = Node::new("us");
    eu.patch(json!({"plan": "free"}));
    us.pull(&eu.doc);
    let mut phone = client();
    phone
        .merge_changes(eu.doc.changes_since(&[]).iter().map(Vec::as_slice))
        .unwrap();

    // a client that writes an HLC-looking stamp ten minutes ahead into its change's message
    let ahead = Clock::with_physical(&NodeId::new("eu").unwrap(), DEFAULT_MAX_DRIFT, || {
        uhlc::system_time_clock() + uhlc::NTP64::from(std::time::Duration::from_secs(600))
    })
    .now();
    let user = layout::user_obj(&phone.am);
    let mut tx = phone.am.transaction();
    tx.put(&user, "plan", "pro").unwrap();
    tx.commit_with(
        automerge::transaction::CommitOptions::default().with_message(ahead.to_string()),
    );

    assert_eq!(eu.accept(&phone).unwrap(), 1);
    // us writes after eu accepted, without having seen it: concurrent, and later
    us.patch(json!({"plan": "team"}));
    eu.pull(&us.doc);
    us.pull(&eu.doc);
    assert_eq!(
        eu.doc.value()["plan"],
        "team",
        "the forged stamp counts for nothing"
    );
    assert_eq!(view(&eu.doc), view(&us.doc));
    // the client's edit is not lost: it is listed
    let c = eu.doc.conflicts();
    assert!(c[0].values.iter().any(|v| v.value == json!("pro")), "{c:?}");
}

#[test]
fn a_change_accepted_by_two_nodes_takes_the_earlier_stamp() {
    let mut eu = Node::new("eu");
    let mut us = Node::new("us");
    let mut ap = Node::new("ap");
    eu.patch(json!({"x": 0}));
    us.pull(&eu.doc);
    ap.pull(&eu.doc);
    let mut phone = client();
    phone
        .merge_changes(eu.doc.changes_since(&[]).iter().map(Vec::as_slice))
        .unwrap();
    client_patch(&mut phone, json!({"x": "phone"}));

    // --- us accepts first; ap writes; eu accepts the same change later (the phone retried)
    us.accept(&phone).unwrap();
    ap.patch(json!({"x": "ap"}));
    eu.accept(&phone).unwrap();
    // everyone gets everything
    for _ in 0..2 {
        let (a, b, c) = (eu.doc.clone(), us.doc.clone(), ap.doc.clone());
        eu.pull(&b);
        eu.pull(&c);
        us.pull(&a);
        us.pull(&c);
        ap.pull(&a);
        ap.pull(&b);
    }
    assert_eq!(view(&eu.doc), view(&us.doc));
    assert_eq!(view(&eu.doc), view(&ap.doc));
    // us's stamp (before ap's write) ranks the phone's edit, not eu's later one: ap wins
    assert_eq!(eu.doc.value()["x"], "ap");
}

#[test]
fn changes_that_break_the_layout_are_refused_and_change_nothing() {
    let mut eu = Node::new("eu");
    eu.patch(json!({"ok": 1, "t": "text"}));
    let base = {
        let mut c = client();
        c.merge_changes(eu.doc.changes_since(&[]).iter().map(Vec::as_slice))
            .unwrap();
        c
    };
    type Breaker = fn(&mut automerge::transaction::Transaction<'_>, &automerge::ObjId);
    let breakers: Vec<(&str, Breaker)> = vec![
        ("another root key", |tx, _| {
            tx.put(ROOT, "x", 1).unwrap();
        }),
        ("a new v", |tx, _| {
            tx.put_object(ROOT, "v", ObjType::Map).unwrap();
        }),
        ("v removed", |tx, _| {
            tx.delete(ROOT, "v").unwrap();
        }),
        ("d not a boolean", |tx, _| {
            tx.put(ROOT, "d", "yes").unwrap();
        }),
        ("bytes", |tx, u| {
            tx.put(u, "b", ScalarValue::Bytes(vec![1, 2])).unwrap();
        }),
        ("a timestamp", |tx, u| {
            tx.put(u, "ts", ScalarValue::Timestamp(5)).unwrap();
        }),
        ("NaN", |tx, u| {
            tx.put(u, "f", f64::NAN).unwrap();
        }),
        ("a u64 beyond i64", |tx, u| {
            tx.put(u, "n", ScalarValue::Uint(u64::MAX)).unwrap();
        }),
        ("a table", |tx, u| {
            tx.put_object(u, "tab", ObjType::Table).unwrap();
        }),
        ("too deep", |tx, u| {
            let mut o = u.clone();
            for _ in 0..70 {
                o = tx.put_object(&o, "k", ObjType::Map).unwrap();
            }
        }),
        ("a text mark", |tx, u| {
            let t = tx.put_object(u, "rich", ObjType::Text).unwrap();
            tx.splice_text(&t, 0, 0, "bold").unwrap();
            tx.mark(
                &t,
                automerge::marks::Mark::new("bold".into(), true, 0, 4),
                automerge::marks::ExpandMark::None,
            )
            .unwrap();
        }),
    ];
    for (what, breaker) in breakers {
        let mut c = base.clone();
        let user = layout::user_obj(&c.am);
        let mut tx = c.am.transaction();
        tx.put(&user, "fine", "also in the change").unwrap();
        breaker(&mut tx, &user);
        tx.commit();
        let before = view(&eu.doc);
        let err = eu.accept(&c).unwrap_err();
        assert!(matches!(err, Error::Refused(_)), "{what}: {err}");
        assert_eq!(view(&eu.doc), before, "{what}: nothing applied");
    }

    // --- a client may not write as this node or as genesis; a change as another node that
    // this node lacks waits for replication, taken from no client (it could be forged)
    for (actor, says) in [
        (b"eu".as_slice(), "reserved"),
        (b"meridian/genesis", "reserved"),
        (b"us", "Waiting"),
    ] {
        let mut c = base.clone();
        c.am.set_actor(ActorId::from(actor));
        client_patch(&mut c, json!({"forged": true}));
        let before = view(&eu.doc);
        let err = eu.accept(&c).unwrap_err();
        assert!(
            matches!(err, Error::Refused(_)) && err.to_string().contains(says),
            "{err}"
        );
        assert_eq!(view(&eu.doc), before);
    }
    // --- garbage is refused too
    let err = eu
        .doc
        .check_client(&message_with(vec![vec![1, 2, 3]]), None)
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");

    // --- and a client may delete and re-create, as the layout says
    let mut c = base.clone();
    c.apply_unstamped(&Edit::Delete).unwrap();
    eu.accept(&c).unwrap();
    assert_eq!(eu.doc.state(), State::Deleted);
    c.merge_changes(eu.doc.changes_since(&[]).iter().map(Vec::as_slice))
        .unwrap();
    client_patch(&mut c, json!({"again": 1}));
    eu.accept(&c).unwrap();
    assert_eq!(eu.doc.state(), State::Live);
    assert_eq!(eu.doc.value(), json!({"again": 1}));
}

// --- merge laws with clients ---------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// Node `n` writes field `f`.
    NodeWrite(usize, u8, i64),
    /// Client `c` writes field `f` (offline).
    ClientWrite(usize, u8, i64),
    /// Client `c` increments the shared counter (created by genesis-time node write).
    ClientIncr(usize, i64),
    /// Client `c` syncs with node `n`: sends its changes, gets the node's.
    Sync(usize, usize),
    /// Node `a` takes node `b`'s changes.
    Gossip(usize, usize),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..3usize, 0..3u8, 0..100i64).prop_map(|(n, f, v)| Step::NodeWrite(n, f, v)),
        3 => (0..2usize, 0..3u8, 0..100i64).prop_map(|(c, f, v)| Step::ClientWrite(c, f, v)),
        1 => (0..2usize, -3..4i64).prop_map(|(c, by)| Step::ClientIncr(c, by)),
        2 => (0..2usize, 0..3usize).prop_map(|(c, n)| Step::Sync(c, n)),
        2 => (0..3usize, 0..3usize).prop_map(|(a, b)| Step::Gossip(a, b)),
    ]
}

fn field(f: u8) -> String {
    format!("f{f}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Nodes and clients edit concurrently; clients sync with any node at any time; once
    /// everyone has everything, nodes and clients render identically, and no client edit that
    /// a node accepted is gone from the document (it is a value, or listed under conflicts).
    #[test]
    fn nodes_and_clients_converge(steps in prop::collection::vec(arb_step(), 1..40)) {
        let mut nodes = [Node::new("eu"), Node::new("us"), Node::new("ap")];
        nodes[0].doc.apply(&Edit::Ops(parse_ops(json!({"ops":[{"op":"increment","path":"/n","by":0}]})).unwrap()), &nodes[0].clock.now()).unwrap();
        let genesis_state = nodes[0].doc.clone();
        for n in &mut nodes[1..] { n.pull(&genesis_state); }
        let mut clients = [client(), client()];
        for c in &mut clients {
            c.merge_changes(genesis_state.changes_since(&[]).iter().map(Vec::as_slice)).unwrap();
        }
        let mut accepted: Vec<(String, i64)> = vec![];
        let mut written: Vec<Vec<(String, i64)>> = vec![vec![], vec![]];
        for step in &steps {
            match *step {
                Step::NodeWrite(n, f, v) => nodes[n].patch(json!({ field(f): v })),
                Step::ClientWrite(c, f, v) => {
                    client_patch(&mut clients[c], json!({ field(f): v }));
                    written[c].push((field(f), v));
                }
                Step::ClientIncr(c, by) => {
                    clients[c].apply_unstamped(&Edit::Ops(parse_ops(json!({"ops":[{"op":"increment","path":"/n","by":by}]})).unwrap())).unwrap();
                }
                Step::Sync(c, n) => {
                    match nodes[n].accept(&clients[c]) {
                        Ok(_) => accepted.append(&mut written[c]),
                        // it relays another node's change this one lacks: nothing taken yet
                        Err(Error::Refused(m)) if m.starts_with("Waiting") => {}
                        Err(e) => panic!("{e}"),
                    }
                    let all = nodes[n].doc.changes_since(&[]);
                    clients[c].merge_changes(all.iter().map(Vec::as_slice)).unwrap();
                }
                Step::Gossip(a, b) => {
                    let src = nodes[b].doc.clone();
                    nodes[a].pull(&src);
                }
            }
        }
        // --- everyone syncs with everyone: the nodes first, so that no client relays a node's
        // change its node lacks
        for _ in 0..2 {
            let snap: Vec<Document> = nodes.iter().map(|n| n.doc.clone()).collect();
            for n in &mut nodes { for s in &snap { n.pull(s); } }
        }
        for c in 0..2 { let n = c; nodes[n].accept(&clients[c]).unwrap(); accepted.append(&mut written[c]); }
        for _ in 0..2 {
            let snap: Vec<Document> = nodes.iter().map(|n| n.doc.clone()).collect();
            for n in &mut nodes { for s in &snap { n.pull(s); } }
        }
        for c in &mut clients {
            c.merge_changes(nodes[0].doc.changes_since(&[]).iter().map(Vec::as_slice)).unwrap();
        }
        let first = view(&nodes[0].doc);
        for n in &nodes[1..] { prop_assert_eq!(&view(&n.doc), &first); }
        for c in &clients { prop_assert_eq!(&view(c), &first); prop_assert!(!c.has_unstamped_changes()); }
        // every accepted client write is the value or a listed loser, unless a later write of
        // the same client overwrote it (clients write sequentially)
        let conflicts = nodes[0].doc.conflicts();
        let value = nodes[0].doc.value();
        let last_of: std::collections::HashMap<&str, i64> =
            accepted.iter().map(|(f, v)| (f.as_str(), *v)).collect();
        for (f, v) in last_of {
            let shown = value.get(f) == Some(&json!(v));
            let listed = conflicts.iter().any(|c| c.path == format!("/{f}") && c.values.iter().any(|x| x.value == json!(v)));
            let overwritten = value.get(f).is_some(); // another writer's later value
            prop_assert!(shown || listed || overwritten, "{f}={v} lost: {value} {conflicts:?}");
        }
    }
}
