//! The sync server in one process: a real store, connections driven frame by frame.

use std::sync::Arc;
use std::time::Duration;

use meridian_crdt::{ActorId, DocKey, Document, DocumentId, Edit, Store, StoreConfig, SyncState};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

struct Node {
    store: Store,
    hub: Arc<Hub>,
    _dir: tempfile::TempDir,
}

fn node_with(limits: SyncLimits) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("eu".into());
    let store = Store::open(c).unwrap();
    let hub = Hub::start(store.clone(), limits, &crate::Workers::new());
    Node {
        store,
        hub,
        _dir: dir,
    }
}

fn node() -> Node {
    node_with(SyncLimits::default())
}

fn key(id: &str) -> DocKey {
    DocKey::new("users", id).unwrap()
}

async fn put(n: &Node, id: &str, v: Value) {
    n.store
        .write(&key(id), Edit::Put(v.as_object().unwrap().clone()), None)
        .await
        .unwrap();
}

fn frames(out: &[Output]) -> Vec<Message> {
    out.iter()
        .filter_map(|o| match o {
            Output::Frame(f) => Some(Message::decode(f).unwrap()),
            Output::Close(_) => None,
        })
        .collect()
}

fn closed(out: &[Output]) -> bool {
    matches!(out.last(), Some(Output::Close(_)))
}

/// A client: one replica per document, its sync state with the node.
struct Client {
    me: String,
    conn: Connection,
    docs: std::collections::HashMap<DocumentId, (Document, SyncState)>,
}

impl Client {
    async fn join(hub: &Arc<Hub>, me: &str) -> Client {
        Client::join_as(hub, me, Arc::new(Open)).await
    }

    async fn join_as(hub: &Arc<Hub>, me: &str, access: Arc<dyn Access>) -> Client {
        let mut conn = Connection::open_as(hub, access).unwrap();
        let out = conn
            .receive(
                &Message::Join {
                    sender: me.into(),
                    versions: vec!["1".into()],
                    metadata: None,
                }
                .encode(),
            )
            .await;
        assert!(matches!(&frames(&out)[..], [Message::Peer { target, .. }] if target == me));
        Client {
            me: me.into(),
            conn,
            docs: Default::default(),
        }
    }

    fn replica(&mut self, doc: DocumentId) -> &mut (Document, SyncState) {
        self.docs.entry(doc).or_insert_with(|| {
            let mut actor = rand::random::<[u8; 16]>();
            actor[0] = 0xfd;
            (
                Document::new(ActorId::from(actor.as_slice())),
                SyncState::new(),
            )
        })
    }

    /// Sends this client's next sync message for `doc`, if it has one.
    async fn send(&mut self, doc: DocumentId, hub: &Hub) -> Vec<Output> {
        let me = self.me.clone();
        let (d, st) = self.replica(doc);
        let Some(data) = d.generate_sync(st) else {
            return vec![];
        };
        let m = Message::Sync {
            sender: me,
            target: hub.peer_id().into(),
            doc,
            data,
        };
        self.conn.receive(&m.encode()).await
    }

    /// Sends this client's new changes for `doc` and returns the node's answer to them. A
    /// round may carry none of them (automerge's Bloom filter of what the node has can
    /// wrongly include one, about 1 round in 100), so the exchange goes on while the node
    /// answers with sync messages only.
    async fn send_changes(&mut self, doc: DocumentId, hub: &Hub) -> Vec<Output> {
        for _ in 0..5 {
            let out = self.send(doc, hub).await;
            let only_sync = frames(&out)
                .iter()
                .all(|m| matches!(m, Message::Sync { .. }));
            if out.is_empty() || closed(&out) || !only_sync {
                return out;
            }
            self.take(&out);
        }
        panic!("the node never answered the changes");
    }

    /// Applies what the node sent.
    fn take(&mut self, out: &[Output]) {
        for m in frames(out) {
            if let Message::Sync { doc, data, .. } = m {
                let (d, st) = self.replica(doc);
                let msg = automerge::sync::Message::decode(&data).unwrap();
                d.receive_sync(st, msg).unwrap();
            }
        }
    }

    /// Syncs `doc` until both sides are quiet.
    async fn sync(&mut self, doc: DocumentId, hub: &Hub) {
        for _ in 0..20 {
            let out = self.send(doc, hub).await;
            assert!(!closed(&out), "{out:?}");
            if out.is_empty() {
                return;
            }
            self.take(&out);
        }
        panic!("sync did not settle");
    }

    fn value(&mut self, doc: DocumentId) -> Value {
        self.replica(doc).0.value()
    }
}

#[tokio::test]
async fn the_handshake_comes_first_and_speaks_protocol_1() {
    let n = node();
    let mut c = Connection::open(&n.hub).unwrap();
    let doc = DocumentId::of(&key("x"));
    let sync = Message::Sync {
        sender: "c".into(),
        target: n.hub.peer_id().into(),
        doc,
        data: vec![],
    };
    let out = c.receive(&sync.encode()).await;
    assert!(matches!(&frames(&out)[..], [Message::Error { message }] if message.contains("join")));
    assert!(closed(&out) && c.is_closed());

    let mut c = Connection::open(&n.hub).unwrap();
    let join2 = Message::Join {
        sender: "c".into(),
        versions: vec!["2".into()],
        metadata: None,
    };
    let out = c.receive(&join2.encode()).await;
    assert!(
        matches!(&frames(&out)[..], [Message::Error { message }] if message.contains("protocol"))
    );
    assert!(closed(&out));
}

#[tokio::test]
async fn an_unknown_document_is_unavailable_at_once() {
    let n = node();
    let mut c = Client::join(&n.hub, "c1").await;
    let doc = DocumentId::of(&key("nobody"));
    let req = Message::Request {
        sender: "c1".into(),
        target: n.hub.peer_id().into(),
        doc,
        data: c
            .replica(doc)
            .0
            .generate_sync(&mut SyncState::new())
            .unwrap(),
    };
    let out = c.conn.receive(&req.encode()).await;
    assert!(
        matches!(&frames(&out)[..], [Message::DocUnavailable { doc: d, target, .. }] if *d == doc && target == "c1")
    );
    assert!(!c.conn.is_closed());
    assert_eq!(c.conn.open_documents(), 0);
}

#[tokio::test]
async fn a_client_syncs_edits_and_is_told_of_later_changes() {
    let n = node();
    put(&n, "alice", json!({"name": "Alice"})).await;
    let doc = DocumentId::of(&key("alice"));
    let mut c = Client::join(&n.hub, "c1").await;

    // --- the client gets the document
    c.sync(doc, &n.hub).await;
    assert_eq!(c.value(doc), json!({"name": "Alice"}));
    assert_eq!(n.hub.stats().documents_open, 1);

    // --- its edit is accepted, durable, and the reply's heads include it
    c.replica(doc)
        .0
        .apply_unstamped(&Edit::Patch(
            json!({"bio": "hi"}).as_object().unwrap().clone(),
        ))
        .unwrap();
    c.sync(doc, &n.hub).await;
    let stored = n.store.read_state(&key("alice")).unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&stored.json).unwrap(),
        json!({"name":"Alice","bio":"hi"})
    );
    assert_eq!(c.replica(doc).0.heads(), stored.heads);
    assert_eq!(n.hub.stats().changes_accepted, 1);

    // --- a write by someone else is pushed
    put(&n, "alice", json!({"name": "Alice B", "bio": "hi"})).await;
    let out = tokio::time::timeout(Duration::from_secs(2), c.conn.notified())
        .await
        .expect("pushed");
    c.take(&out);
    c.sync(doc, &n.hub).await;
    assert_eq!(c.value(doc), json!({"name": "Alice B", "bio": "hi"}));
}

#[tokio::test]
async fn ephemeral_messages_reach_the_documents_other_clients() {
    let n = node();
    put(&n, "room", json!({})).await;
    let doc = DocumentId::of(&key("room"));
    let mut a = Client::join(&n.hub, "a").await;
    let mut b = Client::join(&n.hub, "b").await;
    a.sync(doc, &n.hub).await;
    b.sync(doc, &n.hub).await;
    let eph = Message::Ephemeral {
        sender: "a".into(),
        target: n.hub.peer_id().into(),
        count: 1,
        session: "s".into(),
        doc,
        data: b"cursor at 5".to_vec(),
    };
    assert!(a.conn.receive(&eph.encode()).await.is_empty());
    let out = tokio::time::timeout(Duration::from_secs(2), b.conn.notified())
        .await
        .unwrap();
    assert!(matches!(&frames(&out)[..],
        [Message::Ephemeral { sender, target, data, .. }] if sender == "a" && target == "b" && data == b"cursor at 5"));
}

/// Reads `users` only.
#[derive(Debug)]
struct ReadUsers;

impl Access for ReadUsers {
    fn read(&self, k: &DocKey) -> Result<(), String> {
        (k.collection() == "users")
            .then_some(())
            .ok_or(format!("no read access to {}", k.collection()))
    }
    fn write(&self, k: &DocKey) -> Result<(), String> {
        Err(format!("no write access to {}", k.collection()))
    }
}

#[tokio::test]
async fn a_client_reads_and_writes_only_what_its_access_allows_and_is_told_otherwise() {
    let n = node();
    put(&n, "alice", json!({"a": 1})).await;
    let settings = DocKey::new("settings", "s1").unwrap();
    n.store
        .write(
            &settings,
            Edit::Put(json!({"s": 1}).as_object().unwrap().clone()),
            None,
        )
        .await
        .unwrap();
    let doc = DocumentId::of(&key("alice"));

    // reading a readable collection works as always
    let mut c = Client::join_as(&n.hub, "c1", Arc::new(ReadUsers)).await;
    c.sync(doc, &n.hub).await;
    assert_eq!(c.value(doc), json!({"a": 1}));

    // a change to it is refused before anything is applied: an error, then the close
    let before = n.store.read_state(&key("alice")).unwrap();
    let edit = Edit::Patch(json!({"x": 1}).as_object().unwrap().clone());
    c.replica(doc).0.apply_unstamped(&edit).unwrap();
    let out = c.send_changes(doc, &n.hub).await;
    assert!(
        matches!(&frames(&out)[..], [Message::Error { message }] if message.contains("no write access to users")),
        "{out:?}"
    );
    assert!(closed(&out));
    assert_eq!(n.store.read_state(&key("alice")).unwrap(), before);

    // a document it may not read is unavailable to it, and the connection goes on
    let mut c = Client::join_as(&n.hub, "c2", Arc::new(ReadUsers)).await;
    let other = DocumentId::of(&settings);
    let m = Message::Request {
        sender: "c2".into(),
        target: n.hub.peer_id().into(),
        doc: other,
        data: c
            .replica(other)
            .0
            .generate_sync(&mut SyncState::new())
            .unwrap(),
    };
    let out = c.conn.receive(&m.encode()).await;
    assert!(
        matches!(&frames(&out)[..], [Message::DocUnavailable { doc: d, .. }] if *d == other),
        "{out:?}"
    );
    assert!(!closed(&out));
    c.sync(doc, &n.hub).await;
    assert_eq!(c.value(doc), json!({"a": 1}));
}

#[tokio::test]
async fn messages_for_someone_else_end_the_connection() {
    let n = node();
    put(&n, "alice", json!({})).await;
    let doc = DocumentId::of(&key("alice"));
    for (sender, target) in [
        ("intruder", n.hub.peer_id().to_string()),
        ("c1", "another-node".into()),
    ] {
        let mut c = Client::join(&n.hub, "c1").await;
        let m = Message::Sync {
            sender: sender.into(),
            target,
            doc,
            data: c
                .replica(doc)
                .0
                .generate_sync(&mut SyncState::new())
                .unwrap(),
        };
        let out = c.conn.receive(&m.encode()).await;
        assert!(
            matches!(&frames(&out)[..], [Message::Error { .. }]),
            "{out:?}"
        );
        assert!(closed(&out));
    }
}

#[tokio::test]
async fn a_refused_change_ends_only_its_connection_and_applies_nothing() {
    let n = node();
    put(&n, "alice", json!({"a": 1})).await;
    let doc = DocumentId::of(&key("alice"));
    let mut good = Client::join(&n.hub, "good").await;
    let mut bad = Client::join(&n.hub, "bad").await;
    good.sync(doc, &n.hub).await;
    bad.sync(doc, &n.hub).await;
    let before = n.store.read_state(&key("alice")).unwrap();

    // the bad client replaces the whole user object (a new map at root `v`), beside a valid edit
    let edit = Edit::Patch(json!({"x": 1}).as_object().unwrap().clone());
    bad.replica(doc).0.apply_unstamped(&edit).unwrap();
    let crafted = {
        let mut am = automerge::Automerge::load(&bad.replica(doc).0.save()).unwrap();
        am.set_actor(bad.replica(doc).0.actor().clone());
        let mut tx = am.transaction();
        automerge::transaction::Transactable::put_object(
            &mut tx,
            automerge::ROOT,
            "v",
            automerge::ObjType::Map,
        )
        .unwrap();
        tx.commit();
        am.get_last_local_change().unwrap().raw_bytes().to_vec()
    };
    bad.replica(doc)
        .0
        .merge_changes([crafted.as_slice()])
        .unwrap();
    let out = bad.send_changes(doc, &n.hub).await;
    let errs = frames(&out);
    assert!(
        matches!(&errs[..], [Message::Error { message }] if message.contains(&doc.to_string()) && message.contains("nothing")),
        "{errs:?}"
    );
    assert!(closed(&out));
    assert_eq!(n.store.read_state(&key("alice")).unwrap(), before);
    assert_eq!(n.hub.stats().changes_refused, 1);

    // the other client goes on
    good.replica(doc)
        .0
        .apply_unstamped(&Edit::Patch(json!({"b": 2}).as_object().unwrap().clone()))
        .unwrap();
    good.sync(doc, &n.hub).await;
    assert_eq!(
        serde_json::from_str::<Value>(&n.store.read_state(&key("alice")).unwrap().unwrap().json)
            .unwrap(),
        json!({"a": 1, "b": 2})
    );
}

#[tokio::test]
async fn connections_and_open_documents_are_bounded() {
    let n = node_with(SyncLimits {
        max_connections: 2,
        max_docs_per_connection: 1,
        ..SyncLimits::default()
    });
    put(&n, "a", json!({})).await;
    put(&n, "b", json!({})).await;
    let mut c = Client::join(&n.hub, "c").await;
    let _second = Connection::open(&n.hub).unwrap();
    assert_eq!(Connection::open(&n.hub).unwrap_err(), Full);
    assert_eq!(n.hub.stats().connections_refused, 1);
    c.sync(DocumentId::of(&key("a")), &n.hub).await;
    let out = c.send(DocumentId::of(&key("b")), &n.hub).await;
    assert!(matches!(&frames(&out)[..], [Message::Error { message }] if message.contains("limit")));
    // closing a connection frees its place and its documents
    drop(c);
    assert_eq!(n.hub.stats().documents_open, 0);
    assert!(Connection::open(&n.hub).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random bytes, and valid messages with random fields, never panic the server or change a
    /// document; garbage gets an error and a close.
    #[test]
    fn random_frames_change_nothing(frames_in in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..6)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let n = node();
            put(&n, "alice", json!({"a": 1})).await;
            let before = n.store.read_state(&key("alice")).unwrap();
            let mut c = Client::join(&n.hub, "c").await;
            for f in &frames_in {
                let out = c.conn.receive(f).await;
                if Message::decode(f).is_err() {
                    prop_assert!(closed(&out) || c.conn.is_closed());
                }
            }
            prop_assert_eq!(n.store.read_state(&key("alice")).unwrap(), before);
            Ok(())
        })?;
    }
}
