//! Writes: durability across reopen, compaction, idempotency, lists, the cache, group commit.

use super::*;

#[tokio::test]
async fn writes_survive_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let first = s
        .write(&key("a"), Edit::Put(obj(json!({"n": 0}))), None)
        .await
        .unwrap();
    assert!(first.outcome.created);
    for i in 1..=50 {
        let w = s
            .write(&key("a"), Edit::Patch(obj(json!({"n": i}))), None)
            .await
            .unwrap();
        assert!(!w.outcome.created);
    }
    let version = s.get(&key("a")).await.unwrap().unwrap().version;
    s.close().unwrap();
    drop(s);

    let s = open(dir.path());
    assert_eq!(get_json(&s, "a").await, Some(json!({"n": 50})));
    assert_eq!(s.get(&key("a")).await.unwrap().unwrap().version, version);
    // compaction keeps at most compact_every incremental records
    let increments = s.inner.tree.scan_prefix([record::INCREMENT]).count();
    assert!(increments < 8, "{increments} increments left");
    // and the reloaded document keeps accepting writes
    s.write(&key("a"), Edit::Patch(obj(json!({"m": 1}))), None)
        .await
        .unwrap();
    assert_eq!(get_json(&s, "a").await, Some(json!({"n": 50, "m": 1})));
    assert_eq!(s.stats().documents, 1);
}

#[tokio::test]
async fn a_long_history_is_compacted_less_often() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path()); // compact_every 8
    let (mut compactions, mut incr_count) = (0, 0);
    for i in 0..640 {
        s.write(&key("a"), Edit::Patch(obj(json!({"n": i}))), None)
            .await
            .unwrap();
        let rec = s.inner.read_record(&key("a")).unwrap().unwrap();
        if rec.incr_count < incr_count {
            compactions += 1;
        }
        incr_count = rec.incr_count;
        // a load reads at most a sixteenth of the history one change at a time
        assert!(
            incr_count <= 8.max((i + 3) / 16),
            "{incr_count} increments after {i}"
        );
    }
    // every 8 writes would be 80 snapshots, each of the whole history
    assert!((30..50).contains(&compactions), "{compactions} snapshots");
    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(get_json(&s, "a").await, Some(json!({"n": 639})));
}

#[tokio::test]
async fn a_failed_edit_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write(&key("a"), Edit::Put(obj(json!({"s": "text"}))), None)
        .await
        .unwrap();
    let before = s.get(&key("a")).await.unwrap();
    let ops = crate::parse_ops(json!({"ops":[
        {"op":"set","path":"/t","value":1},
        {"op":"increment","path":"/s","by":1}
    ]}))
    .unwrap();
    let err = s.write(&key("a"), Edit::Ops(ops), None).await.unwrap_err();
    assert!(matches!(err, Error::Unprocessable(_)));
    assert_eq!(s.get(&key("a")).await.unwrap(), before);
    // and the cached document was rolled back too
    s.write(&key("a"), Edit::Patch(obj(json!({"u": 2}))), None)
        .await
        .unwrap();
    assert_eq!(get_json(&s, "a").await, Some(json!({"s": "text", "u": 2})));
    // an op on a document that does not exist leaves no record behind
    let ops = crate::parse_ops(json!({"ops":[{"op":"remove","path":"/x"}]})).unwrap();
    assert!(s.write(&key("ghost"), Edit::Ops(ops), None).await.is_err());
    assert_eq!(s.get(&key("ghost")).await.unwrap(), None);
    assert_eq!(s.stats().documents, 1);
}

#[tokio::test]
async fn idempotency_keys_apply_once_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let incr = || {
        Edit::Ops(crate::parse_ops(json!({"ops":[{"op":"increment","path":"/c","by":1}]})).unwrap())
    };
    let idem = || Some(Idempotency::new("k-1", b"fingerprint".to_vec()).unwrap());
    {
        let s = open(dir.path());
        let a = s.write(&key("a"), incr(), idem()).await.unwrap();
        assert!(!a.replayed);
        let b = s.write(&key("a"), incr(), idem()).await.unwrap();
        assert!(b.replayed);
        assert_eq!(a.outcome, b.outcome);
        s.close().unwrap();
    }
    let s = open(dir.path());
    let c = s.write(&key("a"), incr(), idem()).await.unwrap();
    assert!(c.replayed);
    assert_eq!(get_json(&s, "a").await, Some(json!({"c": 1})));
    // the same key for another request is refused
    let other = Some(Idempotency::new("k-1", b"other".to_vec()).unwrap());
    assert!(matches!(
        s.write(&key("a"), incr(), other).await,
        Err(Error::Unprocessable(_))
    ));
    assert!(Idempotency::new("", vec![]).is_err());
    assert!(Idempotency::new("a b", vec![]).is_err());
    // purge keeps fresh keys
    assert_eq!(s.purge_idempotency_keys().unwrap(), 0);
}

#[tokio::test]
async fn lists_page_in_id_order_and_skip_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for id in ["c", "a", "b", "d", "e"] {
        s.write(&key(id), Edit::Put(obj(json!({"id": id}))), None)
            .await
            .unwrap();
    }
    s.write(&key("b"), Edit::Delete, None).await.unwrap();
    assert!(matches!(
        s.write(&key("b"), Edit::Delete, None).await,
        Err(Error::NotFound)
    ));
    // another collection with a name that is a prefix must not leak in
    s.write(
        &DocKey::new("user", "zz").unwrap(),
        Edit::Put(obj(json!({}))),
        None,
    )
    .await
    .unwrap();
    let p1 = s.list("users", None, 2).await.unwrap();
    let ids: Vec<_> = p1.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["a", "c"]);
    assert_eq!(p1.next.as_deref(), Some("c"));
    let p2 = s.list("users", Some("c"), 2).await.unwrap();
    let ids: Vec<_> = p2.items.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["d", "e"]);
    assert_eq!(p2.next, None);
    assert_eq!(s.stats().documents, 5);
    // a write after the delete re-creates it
    let w = s
        .write(&key("b"), Edit::Patch(obj(json!({"x": 1}))), None)
        .await
        .unwrap();
    assert!(w.outcome.created);
    assert_eq!(get_json(&s, "b").await, Some(json!({"x": 1})));
}

#[tokio::test]
async fn every_change_can_be_found_by_its_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..5 {
        s.write(
            &key(&format!("d{i}")),
            Edit::Put(obj(json!({"i": i}))),
            None,
        )
        .await
        .unwrap();
    }
    let page = s.feed(None, 100).unwrap();
    assert!(!page.more);
    let feed = page.entries;
    assert_eq!(feed.len(), 5);
    assert!(
        feed.windows(2).all(|w| w[0].0 < w[1].0),
        "feed is in HLC order"
    );
    let (stamp, entry) = &feed[2];
    assert_eq!(entry.id, "d2");
    let rest = s.feed(Some(stamp), 100).unwrap().entries;
    assert_eq!(rest.len(), 2);
    let limited = s.feed(None, 2).unwrap();
    assert!(limited.more);
    assert_eq!(limited.upto, Some(limited.entries[1].0));
    // the entry carries the change itself, stamped with the entry's key
    let change = automerge::Change::from_bytes(entry.change.clone()).unwrap();
    assert_eq!(change.message().unwrap(), &stamp.to_string());
    assert_eq!(change.hash().0, entry.hash);
}

#[tokio::test]
async fn a_small_cache_still_serves_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.cache_bytes = 64 << 10; // three documents
    let s = Store::open(c).unwrap();
    for round in 0..3 {
        for i in 0..40 {
            s.write(
                &key(&format!("d{i}")),
                Edit::Patch(obj(json!({"r": round}))),
                None,
            )
            .await
            .unwrap();
        }
    }
    s.inner.docs.cache().run_pending_tasks();
    assert!(s.stats().cache_bytes <= 64 << 10);
    assert!(s.stats().cache_misses > 40);
    for i in 0..40 {
        assert_eq!(get_json(&s, &format!("d{i}")).await, Some(json!({"r": 2})));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut tasks = vec![];
    for t in 0..32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10 {
                s.write(
                    &key(&format!("t{t}")),
                    Edit::Patch(obj(json!({"i": i}))),
                    None,
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let flushes = s.stats().flushes;
    assert!(flushes < 320, "{flushes} flushes for 320 writes");
}

#[test]
fn a_data_dir_in_use_or_of_another_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert!(Store::open(StoreConfig::new(dir.path())).is_err());
    s.close().unwrap();
    drop(s);
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("other".into());
    let err = Store::open(c).unwrap_err().to_string();
    assert!(err.contains("belongs to node"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_of_one_document_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let mut tasks = vec![];
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let ops = crate::parse_ops(json!({"ops":[{"op":"increment","path":"/n","by":1}]}))
                    .unwrap();
                s.write(&key("hot"), Edit::Ops(ops), None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(get_json(&s, "hot").await, Some(json!({"n": 160})));
    s.close().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(get_json(&s, "hot").await, Some(json!({"n": 160})));
}

#[tokio::test]
async fn large_documents_and_expired_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    // long enough that a loaded machine (CI runs the tests in parallel) does not expire the key
    // between the two writes that must share it: 50 ms did, once
    c.idempotency_ttl = Duration::from_millis(1000);
    let s = Store::open(c.clone()).unwrap();
    // a document well over sled's blob threshold
    let big: Vec<String> = (0..4000)
        .map(|i| format!("entry number {i} with some padding text"))
        .collect();
    s.write(&key("big"), Edit::Put(obj(json!({"items": big}))), None)
        .await
        .unwrap();
    // an idempotency key is forgotten after its TTL: a retry then applies again
    let incr = || {
        Edit::Ops(crate::parse_ops(json!({"ops":[{"op":"increment","path":"/c","by":1}]})).unwrap())
    };
    let idem = || Some(Idempotency::new("short-lived", b"f".to_vec()).unwrap());
    s.write(&key("ttl"), incr(), idem()).await.unwrap();
    assert!(s.write(&key("ttl"), incr(), idem()).await.unwrap().replayed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.purge_idempotency_keys().unwrap(), 1);
    assert!(!s.write(&key("ttl"), incr(), idem()).await.unwrap().replayed);
    assert_eq!(get_json(&s, "ttl").await, Some(json!({"c": 2})));
    s.close().unwrap();
    drop(s);
    // sled keeps that page in a blob file, which the checkpoint synced
    let blobs = std::fs::read_dir(dir.path().join("db").join("blobs"))
        .unwrap()
        .count();
    assert!(
        blobs > 0,
        "expected sled to store the large document as a blob"
    );
    let s = Store::open(c).unwrap();
    let v = get_json(&s, "big").await.unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 4000);
    assert_eq!(v["items"][3999], json!(big[3999]));
}
