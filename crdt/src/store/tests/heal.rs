//! Scrub and self-heal: a damaged record, snapshot or increment is found on load or by the
//! scrub, refused, and rebuilt from what this node still has and what a peer sends.

use super::*;

/// Flips one bit in the middle of a stored value, as a disk that returns a wrong byte would,
/// and drops the document from memory so that the next read goes to disk.
fn flip(s: &Store, prefix: u8, id: &str) {
    let k = record::doc_key(prefix, &key(id));
    let mut v = s.inner.tree.get(&k).unwrap().expect("stored").to_vec();
    let middle = v.len() / 2;
    v[middle] ^= 0x04;
    s.inner.tree.insert(k, v).unwrap();
    s.inner.docs.forget(&key(id));
}

/// Flips a bit in the snapshot and every increment of `id`: no piece of its history is intact.
fn flip_history(s: &Store, id: &str) {
    let pieces: Vec<Vec<u8>> = s
        .inner
        .tree
        .scan_prefix(record::increment_prefix(&key(id)))
        .keys()
        .map(|k| k.unwrap().to_vec())
        .chain(
            s.inner
                .tree
                .get(record::doc_key(record::SNAPSHOT, &key(id)))
                .unwrap()
                .map(|_| record::doc_key(record::SNAPSHOT, &key(id))),
        )
        .collect();
    assert!(!pieces.is_empty());
    for k in pieces {
        let mut v = s.inner.tree.get(&k).unwrap().unwrap().to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        s.inner.tree.insert(k, v).unwrap();
    }
    s.inner.docs.forget(&key(id));
}

fn store(dir: &Path, node: &str) -> Store {
    let mut c = StoreConfig::new(dir);
    c.node_id = Some(node.into());
    c.compact_every = 4;
    Store::open(c).unwrap()
}

/// Every change of `id` on `s`, as a peer would send them.
async fn all_changes(s: &Store, id: &str) -> Vec<RemoteChange> {
    s.changes_since(&key(id), &[])
        .await
        .unwrap()
        .iter()
        .map(|c| remote(c))
        .collect()
}

async fn scrub_all(s: &Store) -> u64 {
    let mut next = s.scrub_some(None, 3).await.unwrap().next;
    while let Some(after) = next {
        next = s.scrub_some(Some(&after), 3).await.unwrap().next;
    }
    s.scrub_status().damaged_count
}

fn from_peer(changes: Vec<RemoteChange>) -> HealSources {
    HealSources {
        changes,
        asked: 1,
        answered: 1,
        meta: vec![],
    }
}

#[tokio::test]
async fn a_flipped_byte_is_found_by_the_scrub_refused_and_healed_from_a_peer() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (store(da.path(), "a"), store(db.path(), "b"));
    for i in 0..10 {
        b.write(&key("p"), Edit::Patch(obj(json!({"n": i}))), None)
            .await
            .unwrap();
        b.write(
            &key(&format!("o{i}")),
            Edit::Put(obj(json!({"i": i}))),
            None,
        )
        .await
        .unwrap();
    }
    for id in ["p", "o3", "o7"] {
        a.merge_remote(vec![(key(id), all_changes(&b, id).await)], vec![])
            .await
            .unwrap();
    }
    assert_eq!(scrub_all(&a).await, 0);
    assert_eq!(a.scrub_status().passes, 1);

    // a snapshot: reads answer from the record, the scrub finds it, writes are refused
    flip(&a, record::SNAPSHOT, "p");
    assert_eq!(get_json(&a, "p").await, Some(json!({"n": 9})));
    assert_eq!(scrub_all(&a).await, 1);
    let st = a.scrub_status();
    assert_eq!((st.found, st.damaged[0].id.as_str()), (1, "p"));
    assert!(st.damaged[0].what.contains("checksum"), "{st:?}");
    let err = a
        .write(&key("p"), Edit::Patch(obj(json!({"x": 1}))), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Damaged(_)), "{err}");
    // a record: the read itself is refused, and so is a list over it
    flip(&a, record::DOC, "o3");
    assert!(matches!(a.get(&key("o3")).await, Err(Error::Damaged(_))));
    assert!(matches!(
        a.list("users", None, 10).await,
        Err(Error::Damaged(_))
    ));
    assert_eq!(a.scrub_status().damaged_count, 2);

    // a change arriving for a damaged document is held, durably, not lost or refused
    let before_late = all_changes(&b, "p").await;
    b.write(&key("p"), Edit::Patch(obj(json!({"late": true}))), None)
        .await
        .unwrap();
    let late = b.changes_since(&key("p"), &[]).await.unwrap();
    let merged = a
        .merge_remote(vec![(key("p"), vec![remote(late.last().unwrap())])], vec![])
        .await
        .unwrap();
    assert_eq!((merged.held, merged.changes), (1, 0));
    drop(a);
    let a = store(da.path(), "a");
    // after a restart the damaged record is found at open; the snapshot by the scrub
    assert_eq!(scrub_all(&a).await, 2);

    let healed = a.heal(&key("p"), from_peer(before_late)).await.unwrap();
    assert!(matches!(healed, Healed::Healed { .. }), "{healed:?}");
    assert_eq!(
        get_json(&a, "p").await,
        Some(json!({"n": 9, "late": true})),
        "the held change is in"
    );
    a.heal(&key("o3"), from_peer(all_changes(&b, "o3").await))
        .await
        .unwrap();
    assert_eq!(get_json(&a, "o3").await, Some(json!({"i": 3})));
    assert_eq!(scrub_all(&a).await, 0);
    assert_eq!(a.scrub_status().healed, 2);
    assert_eq!(a.list("users", None, 10).await.unwrap().items.len(), 3);
    assert_eq!(a.digests(), {
        let c = tempfile::tempdir().unwrap();
        let c = store(c.path(), "c");
        for id in ["p", "o3", "o7"] {
            c.merge_remote(vec![(key(id), all_changes(&b, id).await)], vec![])
                .await
                .unwrap();
        }
        c.digests()
    });
    // writes go on, and the healed document survives a restart
    a.write(&key("p"), Edit::Patch(obj(json!({"after": 1}))), None)
        .await
        .unwrap();
    drop(a);
    let a = store(da.path(), "a");
    assert_eq!(scrub_all(&a).await, 0);
    assert_eq!(
        get_json(&a, "p").await,
        Some(json!({"n": 9, "late": true, "after": 1}))
    );
}

#[tokio::test]
async fn a_heal_that_cannot_show_the_whole_history_leaves_the_document_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (store(da.path(), "a"), store(db.path(), "b"));
    b.write(&key("d"), Edit::Put(obj(json!({"v": 1}))), None)
        .await
        .unwrap();
    a.merge_remote(vec![(key("d"), all_changes(&b, "d").await)], vec![])
        .await
        .unwrap();
    let only_b = all_changes(&b, "d").await;
    // a third node's change that only `a` received
    let dc = tempfile::tempdir().unwrap();
    let c = store(dc.path(), "c");
    c.merge_remote(vec![(key("d"), all_changes(&b, "d").await)], vec![])
        .await
        .unwrap();
    c.write(&key("d"), Edit::Patch(obj(json!({"c": 1}))), None)
        .await
        .unwrap();
    a.merge_remote(vec![(key("d"), all_changes(&c, "d").await)], vec![])
        .await
        .unwrap();
    // every piece of a's history of d is damaged
    flip_history(&a, "d");
    assert_eq!(scrub_all(&a).await, 1);
    let err = a.heal(&key("d"), from_peer(only_b)).await.unwrap_err();
    assert!(err.to_string().contains("whole history"), "{err}");
    assert_eq!(a.scrub_status().damaged_count, 1);
    assert!(a.scrub_status().damaged[0].heal_error.is_some());
    assert!(a.write(&key("d"), Edit::Delete, None).await.is_err());
    // the node that holds the rest answers: healed
    a.heal(&key("d"), from_peer(all_changes(&c, "d").await))
        .await
        .unwrap();
    assert_eq!(get_json(&a, "d").await, Some(json!({"v": 1, "c": 1})));
    assert_eq!(a.scrub_status().damaged_count, 0);
}

#[tokio::test]
async fn this_nodes_own_writes_come_back_from_its_feed() {
    let da = tempfile::tempdir().unwrap();
    let a = store(da.path(), "a");
    for i in 0..6 {
        a.write(&key("mine"), Edit::Patch(obj(json!({"i": i}))), None)
            .await
            .unwrap();
    }
    // the record and every stored piece of the history
    flip(&a, record::DOC, "mine");
    flip(&a, record::SNAPSHOT, "mine");
    for k in a
        .inner
        .tree
        .scan_prefix(record::increment_prefix(&key("mine")))
        .keys()
    {
        a.inner.tree.remove(k.unwrap()).unwrap();
    }
    assert!(matches!(a.get(&key("mine")).await, Err(Error::Damaged(_))));
    // a record that cannot be read names no heads: one peer must answer (none sent anything)
    let none = HealSources {
        asked: 1,
        ..HealSources::default()
    };
    assert!(a.heal(&key("mine"), none).await.is_err());
    a.heal(&key("mine"), from_peer(vec![])).await.unwrap();
    assert_eq!(get_json(&a, "mine").await, Some(json!({"i": 5})));
    // and a healthy document is left alone
    assert_eq!(
        a.heal(&key("mine"), from_peer(vec![])).await.unwrap(),
        Healed::NotDamaged
    );
}
