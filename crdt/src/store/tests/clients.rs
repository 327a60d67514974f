//! Client sync: client changes checked, stamped and durable; document ids.

use super::*;

/// A client replica and its sync state with one node.
struct Phone {
    doc: crate::Document,
    state: crate::SyncState,
    node_state: crate::SyncState,
}

impl Phone {
    fn new() -> Phone {
        let mut actor = rand::random::<[u8; 16]>();
        actor[0] = 0xfe;
        Phone {
            doc: crate::Document::new(crate::ActorId::from(actor.as_slice())),
            state: Default::default(),
            node_state: Default::default(),
        }
    }

    /// Runs the sync protocol with the node until neither side has anything to say; returns
    /// how many of the phone's changes the node accepted.
    async fn sync(&mut self, s: &Store, k: &DocKey) -> Result<usize> {
        let mut accepted = 0;
        let mut reply = s.client_sync(k, &mut self.node_state, None).await?.reply;
        for _ in 0..20 {
            if let Some(r) = reply.take() {
                let m = automerge::sync::Message::decode(&r).unwrap();
                self.doc.receive_sync(&mut self.state, m).unwrap();
            }
            let Some(out) = self.doc.generate_sync(&mut self.state) else {
                return Ok(accepted);
            };
            let r = s.client_sync(k, &mut self.node_state, Some(&out)).await?;
            accepted += r.accepted;
            reply = r.reply;
        }
        panic!("the sync did not settle")
    }
}

/// Every change of `s`'s feed, as a peer receives them.
fn feed_of(s: &Store) -> Vec<RemoteChange> {
    s.feed(None, 100)
        .unwrap()
        .entries
        .iter()
        .map(|(_, e)| remote(&e.change))
        .collect()
}

#[tokio::test]
async fn a_client_edit_is_durable_stamped_and_in_the_feed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let k = key("c1");
    let mut events = s.watch();
    s.write(&k, Edit::Put(obj(json!({"name": "http"}))), None)
        .await
        .unwrap();
    assert_eq!(events.next().await, Some(Ok(k.clone())));

    // --- the phone fetches the document, edits it, syncs
    let mut phone = Phone::new();
    assert_eq!(phone.sync(&s, &k).await.unwrap(), 0);
    assert_eq!(phone.doc.value(), json!({"name": "http"}));
    phone
        .doc
        .apply_unstamped(&Edit::Patch(obj(json!({"bio": "from the phone"}))))
        .unwrap();
    assert_eq!(phone.sync(&s, &k).await.unwrap(), 1);
    assert_eq!(events.next().await, Some(Ok(k.clone())));
    let want = json!({"name": "http", "bio": "from the phone"});
    assert_eq!(get_json(&s, "c1").await, Some(want.clone()));
    // the phone holds what the node holds: its own change, stamped
    assert_eq!(phone.doc.heads(), s.read_state(&k).unwrap().unwrap().heads);
    assert!(!phone.doc.has_unstamped_changes());

    // --- the feed holds the local write, the client's change and the stamp change, in order
    let feed = s.feed(None, 100).unwrap();
    assert_eq!(feed.entries.len(), 3);
    let stamp_change = RemoteChange::parse(feed.entries[2].1.change.clone()).unwrap();
    assert_eq!(stamp_change.node.as_deref(), Some("n1"));
    assert_eq!(stamp_change.stamp, Some(feed.entries[2].0));
    assert_eq!(
        RemoteChange::parse(feed.entries[1].1.change.clone())
            .unwrap()
            .node,
        None
    );
    assert_eq!(s.last_local_stamp(), Some(feed.entries[2].0));

    // --- durable: a reopened store has it, and the id still resolves
    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(get_json(&s, "c1").await, Some(want));
    assert_eq!(
        s.resolve(&crate::DocumentId::of(&k)).unwrap(),
        Some(k.clone())
    );
}

#[tokio::test]
async fn a_client_change_whose_dependency_the_node_lacks_is_asked_for_again() {
    // node n1 (s) and node n2 (t) share a document; n2 then changes it, and n1 has not seen it
    let (ds, dt) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = open(ds.path());
    let mut ct = StoreConfig::new(dt.path());
    ct.node_id = Some("n2".into());
    let t = Store::open(ct).unwrap();
    let k = key("dep");
    s.write(&k, Edit::Put(obj(json!({"a": 1}))), None)
        .await
        .unwrap();
    t.merge_remote(vec![(k.clone(), feed_of(&s))], vec![])
        .await
        .unwrap();
    t.write(&k, Edit::Patch(obj(json!({"b": 2}))), None)
        .await
        .unwrap();
    let shared = s.read_state(&k).unwrap().unwrap().heads;

    // a phone syncs with n2 (so it has n2's change) and edits on top of it
    let mut phone = Phone::new();
    phone.sync(&t, &k).await.unwrap();
    phone
        .doc
        .apply_unstamped(&Edit::Patch(obj(json!({"c": 3}))))
        .unwrap();
    let after_t = t.read_state(&k).unwrap().unwrap().heads;
    let own = phone.doc.changes_since(&after_t);
    assert_eq!(own.len(), 1);
    let theirs = t.read_state(&k).unwrap().unwrap().heads[0];
    assert!(!shared.contains(&theirs));

    // it sends n1 only its own change (as when n1's summary wrongly claimed n2's, or the phone
    // sent that earlier): n1 cannot apply it, and says so, naming the change it lacks
    let mut flags = automerge::sync::MessageFlags::new();
    flags.set(automerge::sync::MessageFlags::SUPPORTS_SYNC_RESET); // as automerge 0.12 says
    let message = automerge::sync::Message {
        heads: phone.doc.heads(),
        need: vec![],
        have: vec![],
        changes: own.into(),
        flags: Some(flags),
        version: automerge::sync::MessageVersion::V1,
    };
    let mut node_state = crate::SyncState::default();
    let r = s
        .client_sync(&k, &mut node_state, Some(&message.encode()))
        .await
        .unwrap();
    assert_eq!(r.accepted, 0);
    let reply = automerge::sync::Message::decode(&r.reply.expect("an answer")).unwrap();
    assert!(reply.need.contains(&theirs), "{:?}", reply.need);
    assert!(reply
        .flags
        .is_some_and(|f| f.contains(automerge::sync::MessageFlags::SYNC_RESET)));
    assert_eq!(get_json(&s, "dep").await, Some(json!({"a": 1})));

    // the phone answers it with what n1 lacks, n2's change among it: no client can prove a
    // node made a change, so n1 takes nothing of that message and answers nothing (answering
    // would ask for the same changes again, and again)
    phone.doc.receive_sync(&mut phone.state, reply).unwrap();
    phone.node_state = node_state;
    assert_eq!(phone.sync(&s, &k).await.unwrap(), 0);
    assert_eq!(get_json(&s, "dep").await, Some(json!({"a": 1})));

    // replication brings n2's change; n1 asks the phone again, and takes its edit
    s.merge_remote(vec![(k.clone(), feed_of(&t))], vec![])
        .await
        .unwrap();
    let ask = s.client_ask_again(&k, &mut phone.node_state).await.unwrap();
    let m = automerge::sync::Message::decode(&ask).unwrap();
    phone.doc.receive_sync(&mut phone.state, m).unwrap();
    let out = phone
        .doc
        .generate_sync(&mut phone.state)
        .expect("the phone sends again");
    let r = s
        .client_sync(&k, &mut phone.node_state, Some(&out))
        .await
        .unwrap();
    assert_eq!((r.accepted, r.waiting), (1, false));
    assert_eq!(
        get_json(&s, "dep").await,
        Some(json!({"a": 1, "b": 2, "c": 3}))
    );
}

#[tokio::test]
async fn refused_client_changes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let k = key("c2");
    s.write(&k, Edit::Put(obj(json!({"a": 1}))), None)
        .await
        .unwrap();
    let mut phone = Phone::new();
    phone.sync(&s, &k).await.unwrap();
    let before = s.read_state(&k).unwrap();
    let feed_before = s.feed(None, 100).unwrap().entries.len();

    // a change that writes another root key
    {
        use automerge::transaction::Transactable;
        let mut tx = phone.doc.am_mut().transaction();
        tx.put(automerge::ROOT, "evil", 1).unwrap();
        tx.commit();
    }
    let err = phone.sync(&s, &k).await.unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    assert_eq!(s.read_state(&k).unwrap(), before);
    assert_eq!(s.feed(None, 100).unwrap().entries.len(), feed_before);
    // garbage is refused as such
    let mut st = crate::SyncState::default();
    let err = s
        .client_sync(&k, &mut st, Some(b"\x42garbage"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err}");
    // a document never written is not found
    let err = s
        .client_sync(&key("ghost"), &mut st, None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound), "{err}");

    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.read_state(&k).unwrap(), before);
    // and the document takes writes as before
    s.write(&k, Edit::Patch(obj(json!({"b": 2}))), None)
        .await
        .unwrap();
    assert_eq!(get_json(&s, "c2").await, Some(json!({"a": 1, "b": 2})));
}

#[tokio::test]
async fn document_ids_resolve_for_merged_documents_and_after_a_restart() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path());
    let mut cb = StoreConfig::new(db.path());
    cb.node_id = Some("b".into());
    let b = Store::open(cb.clone()).unwrap();
    a.write(&key("m"), Edit::Put(obj(json!({"x": 1}))), None)
        .await
        .unwrap();
    let changes: Vec<RemoteChange> = a
        .feed(None, 10)
        .unwrap()
        .entries
        .into_iter()
        .map(|(_, e)| remote(&e.change))
        .collect();
    b.merge_remote(vec![(key("m"), changes)], vec![])
        .await
        .unwrap();
    let id = crate::DocumentId::of(&key("m"));
    assert_eq!(b.resolve(&id).unwrap(), Some(key("m")));
    assert_eq!(
        b.resolve(&crate::DocumentId::of(&key("nope"))).unwrap(),
        None
    );

    // --- after a restart the map is rebuilt from the stored documents
    b.close().unwrap();
    drop(b);
    let b = Store::open(cb).unwrap();
    assert_eq!(b.resolve(&id).unwrap(), Some(key("m")));
    assert_eq!(b.inner.doc_ids.len(), 1);
}

#[tokio::test]
async fn a_damaged_increment_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..3 {
        s.write(&key("x"), Edit::Patch(obj(json!({ "n": i }))), None)
            .await
            .unwrap();
    }
    // --- damage the last increment on disk, then read it cold
    let last = s
        .inner
        .tree
        .scan_prefix(record::doc_key(record::INCREMENT, &key("x")))
        .last()
        .unwrap()
        .unwrap();
    let mut bad = last.1.to_vec();
    let n = bad.len();
    bad[n - 3] ^= 0xff;
    s.inner.tree.insert(last.0, bad).unwrap();
    s.inner.docs.cache().invalidate(&key("x"));
    let err = s
        .write(&key("x"), Edit::Patch(obj(json!({ "n": 9 }))), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Damaged(_)), "{err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    // reads of the materialized record still answer
    assert_eq!(get_json(&s, "x").await, Some(json!({"n": 2})));
}
