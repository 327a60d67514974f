//! Store tests: durability across reopen, compaction, idempotency, lists, the feed.

use super::*;
use crate::{Edit, RemoteChange};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn open(dir: &Path) -> Store {
    let mut c = StoreConfig::new(dir);
    c.node_id = Some("n1".into());
    c.compact_every = 8;
    // sled's own flusher thread lets go of the directory's lock a moment after the last handle
    // is dropped: a reopen in the same process may find it still held (a restarted process
    // never does)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(c.clone()) {
            Err(Error::InUse) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
}

fn key(id: &str) -> DocKey {
    DocKey::new("users", id).unwrap()
}

async fn get_json(s: &Store, id: &str) -> Option<Value> {
    s.get(&key(id))
        .await
        .unwrap()
        .map(|v| serde_json::from_str(&v.json).unwrap())
}

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
    s.inner.cache.run_pending_tasks();
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Both sled databases of a data dir as they are now (as of start-up: the last checkpoint).
fn sled_image(dir: &Path, image: &Path) {
    for name in ["db", "streams"] {
        copy_dir(&dir.join(name), &image.join(name));
    }
}

/// What power loss can leave behind: sled as of its last checkpoint (here, start-up) and the
/// write-ahead log as synced. Every acknowledged write must come back from the log.
#[tokio::test]
async fn a_crash_image_recovers_every_acknowledged_write_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let image = tempfile::tempdir().unwrap();
    sled_image(dir.path(), image.path());
    for i in 0..30 {
        s.write(
            &key(&format!("d{i}")),
            Edit::Put(obj(json!({"i": i}))),
            None,
        )
        .await
        .unwrap();
        s.write(&key("hot"), Edit::Patch(obj(json!({"n": i}))), None)
            .await
            .unwrap();
    }
    s.write(&key("d3"), Edit::Delete, None).await.unwrap();
    let incr = Edit::Ops(
        crate::parse_ops(json!({"ops":[{"op":"increment","path":"/c","by":1}]})).unwrap(),
    );
    let idem = Some(Idempotency::new("k", b"f".to_vec()).unwrap());
    s.write(&key("counter"), incr.clone(), idem.clone())
        .await
        .unwrap();
    copy_dir(&dir.path().join("wal"), &image.path().join("wal"));

    let replica = open(image.path());
    assert_eq!(replica.stats().replayed, 62);
    for i in 0..30 {
        let want = if i == 3 { None } else { Some(json!({"i": i})) };
        assert_eq!(get_json(&replica, &format!("d{i}")).await, want, "d{i}");
    }
    assert_eq!(get_json(&replica, "hot").await, Some(json!({"n": 29})));
    assert_eq!(replica.stats().documents, 31);
    // the idempotency record came back too, and history continues where it stopped
    assert!(
        replica
            .write(&key("counter"), incr, idem)
            .await
            .unwrap()
            .replayed
    );
    replica
        .write(&key("hot"), Edit::Patch(obj(json!({"m": 1}))), None)
        .await
        .unwrap();
    assert_eq!(
        get_json(&replica, "hot").await,
        Some(json!({"n": 29, "m": 1}))
    );
    let feed = replica.feed(None, 1000).unwrap().entries;
    // the first increment of /c is two changes: the counter's creation and the increment
    assert_eq!(feed.len(), 30 + 30 + 1 + 2 + 1);
}

#[tokio::test]
async fn a_torn_log_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write(&key("a"), Edit::Put(obj(json!({"v": 1}))), None)
        .await
        .unwrap();
    let image = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), image.path());
    // append half a record to the newest segment
    let mut segs: Vec<_> = std::fs::read_dir(image.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(last, bytes).unwrap();
    let replica = open(image.path());
    assert_eq!(get_json(&replica, "a").await, Some(json!({"v": 1})));
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

mod crash_images {
    //! Property: whatever sequence of writes ran, sled as of start-up plus the log as synced
    //! recovers exactly the state the live store answered with.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum W {
        Put(u8, i64),
        Patch(u8, i64),
        Incr(u8, Option<u8>),
        Delete(u8),
    }

    fn arb_w() -> impl Strategy<Value = W> {
        prop_oneof![
            (0u8..6, any::<i64>()).prop_map(|(d, v)| W::Put(d, v)),
            (0u8..6, any::<i64>()).prop_map(|(d, v)| W::Patch(d, v)),
            (0u8..6, prop::option::of(0u8..4)).prop_map(|(d, k)| W::Incr(d, k)),
            (0u8..6).prop_map(W::Delete),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn recovery_reproduces_the_live_state(ws in prop::collection::vec(arb_w(), 1..40)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let s = open(dir.path());
                let image = tempfile::tempdir().unwrap();
                super::sled_image(dir.path(), image.path());
                for w in &ws {
                    let (d, edit, idem) = match w {
                        W::Put(d, v) => (d, Edit::Put(obj(json!({"v": v, "d": d}))), None),
                        W::Patch(d, v) => (d, Edit::Patch(obj(json!({"p": v}))), None),
                        W::Incr(d, k) => (
                            d,
                            Edit::Ops(crate::parse_ops(json!({"ops":[{"op":"increment","path":"/c","by":1}]})).unwrap()),
                            k.map(|k| Idempotency::new(&format!("key-{k}"), vec![*d]).unwrap()),
                        ),
                        W::Delete(d) => (d, Edit::Delete, None),
                    };
                    // refusals (delete of nothing, a reused key) change nothing
                    let _ = s.write(&key(&format!("d{d}")), edit, idem).await;
                }
                super::copy_dir(&dir.path().join("wal"), &image.path().join("wal"));
                let replica = open(image.path());
                for d in 0..6 {
                    let k = key(&format!("d{d}"));
                    assert_eq!(replica.get(&k).await.unwrap(), s.get(&k).await.unwrap(), "d{d}");
                }
                assert_eq!(replica.stats().documents, s.stats().documents);
                assert_eq!(replica.feed(None, 10_000).unwrap().entries, s.feed(None, 10_000).unwrap().entries);
            });
        }
    }
}

#[tokio::test]
async fn large_documents_and_expired_idempotency_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.idempotency_ttl = Duration::from_millis(50);
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
    tokio::time::sleep(Duration::from_millis(80)).await;
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

/// Writers of one document pipeline (each builds on the previous, still queued, state); the
/// log keeps them in order, so a crash image recovers every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_to_one_document_recover_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let image = tempfile::tempdir().unwrap();
    sled_image(dir.path(), image.path());
    let mut tasks = vec![];
    for t in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let ops = crate::parse_ops(json!({"ops":[
                    {"op":"increment","path":"/n","by":1},
                    {"op":"set","path":format!("/t{t}"),"value":i}
                ]}))
                .unwrap();
                s.write(&key("hot"), Edit::Ops(ops), None).await.unwrap();
                // a conflicts read waits for queued writes and sees a consistent state
                let (view, _) = s.get_with_conflicts(&key("hot")).await.unwrap().unwrap();
                let v: Value = serde_json::from_str(&view.json).unwrap();
                assert!(v["n"].as_i64().unwrap() >= 1);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let live = s.get(&key("hot")).await.unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(&live.json).unwrap()["n"], 320);
    copy_dir(&dir.path().join("wal"), &image.path().join("wal"));
    let replica = open(image.path());
    assert_eq!(replica.get(&key("hot")).await.unwrap(), Some(live));
}

// --- replication support

fn remote(bytes: &[u8]) -> RemoteChange {
    RemoteChange::parse(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn the_feed_stops_below_a_write_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.write(&key("a"), Edit::Put(obj(json!({"v": 1}))), None)
        .await
        .unwrap();
    let idle = s.feed(None, 100).unwrap();
    assert_eq!(idle.entries.len(), 1);
    assert!(
        idle.upto.unwrap() > idle.entries[0].0,
        "idle: upto is the clock"
    );
    // a write that has its stamp but is not durable yet
    let guard = s.inner.stamps(1);
    s.write(&key("b"), Edit::Put(obj(json!({"v": 2}))), None)
        .await
        .unwrap();
    let page = s.feed(None, 100).unwrap();
    assert_eq!(
        page.entries.len(),
        1,
        "b is stamped after the write in flight"
    );
    assert_eq!(page.upto, Some(page.entries[0].0));
    assert!(page.upto.unwrap() < guard.all()[0]);
    drop(guard);
    assert_eq!(s.feed(None, 100).unwrap().entries.len(), 2);
}

#[tokio::test]
async fn merged_changes_are_durable_and_digests_agree() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut ca = StoreConfig::new(da.path());
    ca.node_id = Some("a".into());
    let mut cb = StoreConfig::new(db.path());
    cb.node_id = Some("b".into());
    let (a, b) = (Store::open(ca).unwrap(), Store::open(cb.clone()).unwrap());
    for i in 0..40 {
        a.write(
            &key(&format!("d{}", i % 7)),
            Edit::Patch(obj(json!({"a": i}))),
            None,
        )
        .await
        .unwrap();
    }
    b.write(&key("d1"), Edit::Patch(obj(json!({"b": 1}))), None)
        .await
        .unwrap();
    assert_ne!(a.digests(), b.digests());
    // b merges a's feed, twice (duplicates are harmless), with bookkeeping after it
    let page = a.feed(None, 1000).unwrap();
    let docs: Vec<(DocKey, Vec<RemoteChange>)> = page
        .entries
        .iter()
        .map(|(_, e)| {
            (
                DocKey::new(&e.collection, &e.id).unwrap(),
                vec![remote(&e.change)],
            )
        })
        .collect();
    let merged = b
        .merge_remote(docs.clone(), vec![("sync/x".into(), b"1".to_vec())])
        .await
        .unwrap();
    assert_eq!(merged.changes, 40);
    assert_eq!(merged.documents, 7);
    assert!(merged.missing_deps.is_empty());
    assert_eq!(b.merge_remote(docs, vec![]).await.unwrap().changes, 0);
    assert!(
        b.feed(None, 1000).unwrap().entries.len() == 1,
        "merges are not local changes"
    );
    // a takes b's one change; now both hold the same history
    let back = b
        .changes_since(
            &key("d1"),
            &a.read_state(&key("d1")).unwrap().unwrap().heads,
        )
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    a.merge_remote(
        vec![(key("d1"), back.iter().map(|c| remote(c)).collect())],
        vec![],
    )
    .await
    .unwrap();
    assert_eq!(a.digests(), b.digests());
    for i in 0..7 {
        let k = key(&format!("d{i}"));
        assert_eq!(a.read_state(&k).unwrap(), b.read_state(&k).unwrap());
    }
    // everything, bookkeeping included, survives a restart (digests are rebuilt from disk)
    let digests = b.digests();
    b.close().unwrap();
    drop(b);
    let b = Store::open(cb).unwrap();
    assert_eq!(b.digests(), digests);
    assert_eq!(
        b.meta_scan("sync/").unwrap(),
        vec![("sync/x".into(), b"1".to_vec())]
    );
    assert_eq!(get_json(&b, "d1").await, get_json(&a, "d1").await);
    // only the leaves asked for are listed
    let all: BTreeSet<u32> = (0..DIGEST_LEAVES as u32).collect();
    assert_eq!(b.leaf_heads(&all).unwrap().len(), 7);
    let one: BTreeSet<u32> = [digest::leaf_of(&key("d3")) as u32].into();
    let listed = b.leaf_heads(&one).unwrap();
    assert!(listed.iter().any(|(k, _)| k == &key("d3")));
    assert!(listed.len() < 7);
    // a bucket's digest is its leaves' folded; leaves of a bucket out of range are refused
    let bucket = digest::bucket_of(&key("d3"));
    let leaves = b.leaf_digests(&[bucket as u32]).unwrap();
    assert_eq!(leaves.len(), LEAVES_PER_BUCKET);
    assert_eq!(leaves.iter().fold(0, |x, d| x ^ d), b.digests()[bucket]);
    assert_eq!(b.leaf_digests(&[DIGEST_BUCKETS as u32]), None);
}

#[tokio::test]
async fn a_change_with_a_missing_dependency_waits_and_garbage_is_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(da.path()), open(db.path()));
    for i in 0..2 {
        a.write(&key("d"), Edit::Patch(obj(json!({"i": i}))), None)
            .await
            .unwrap();
    }
    let feed = a.feed(None, 10).unwrap().entries;
    let second = vec![(key("d"), vec![remote(&feed[1].1.change)])];
    let merged = b.merge_remote(second, vec![]).await.unwrap();
    assert_eq!(merged.changes, 0);
    assert_eq!(merged.missing_deps, vec![key("d")]);
    assert_eq!(b.read_state(&key("d")).unwrap(), None);
    let first = vec![(key("d"), vec![remote(&feed[0].1.change)])];
    assert_eq!(b.merge_remote(first, vec![]).await.unwrap().changes, 2);
    assert_eq!(get_json(&b, "d").await, Some(json!({"i": 1})));
    let err = RemoteChange::parse(b"garbage".to_vec()).unwrap_err();
    assert!(err.to_string().contains("undecodable change"), "{err}");
}

// --- clients (automerge sync)

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
    let from_s: Vec<RemoteChange> = s
        .feed(None, 100)
        .unwrap()
        .entries
        .iter()
        .map(|(_, e)| remote(&e.change))
        .collect();
    t.merge_remote(vec![(k.clone(), from_s)], vec![])
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

    // the phone answers it with what n1 lacks, and n1 takes both changes
    phone.doc.receive_sync(&mut phone.state, reply).unwrap();
    phone.node_state = node_state;
    assert_eq!(phone.sync(&s, &k).await.unwrap(), 1);
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
    s.inner.cache.invalidate(&key("x"));
    let err = s
        .write(&key("x"), Edit::Patch(obj(json!({ "n": 9 }))), None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    // reads of the materialized record still answer
    assert_eq!(get_json(&s, "x").await, Some(json!({"n": 2})));
}

#[tokio::test]
async fn change_events_follow_every_change_in_order_and_survive_reopen() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(da.path());
    let mut cb = StoreConfig::new(db.path());
    cb.node_id = Some("n2".into());
    let b = Store::open(cb).unwrap();
    for i in 1..=3 {
        a.write(&key("x"), Edit::Patch(obj(json!({"n": i}))), None)
            .await
            .unwrap();
    }
    a.write(&key("x"), Edit::Delete, None).await.unwrap();
    let bounds = a.event_bounds();
    let events = a.events(0, bounds.visible, 100).unwrap().unwrap();
    let values: Vec<(crate::State, String)> = events
        .iter()
        .map(|(_, e)| (e.state, e.json.clone()))
        .collect();
    assert_eq!(
        values[..3].iter().map(|v| v.1.as_str()).collect::<Vec<_>>(),
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
    assert_eq!(values[3].0, crate::State::Deleted);
    assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(events
        .iter()
        .all(|(_, e)| e.stamps.len() == 1 && e.stamps[0].0 == "n1"));
    // a page stops at its limit; a read past the end is empty
    assert_eq!(a.events(0, bounds.visible, 2).unwrap().unwrap().len(), 2);
    assert!(a
        .events(bounds.visible, u64::MAX, 10)
        .unwrap()
        .unwrap()
        .is_empty());

    // merged on b: one event for the whole batch, naming a's stamps in order
    let page = a.feed(None, 1000).unwrap();
    let changes: Vec<RemoteChange> = page
        .entries
        .iter()
        .map(|(_, e)| remote(&e.change))
        .collect();
    b.merge_remote(vec![(key("x"), changes)], vec![])
        .await
        .unwrap();
    let on_b = b.events(0, u64::MAX, 100).unwrap().unwrap();
    assert_eq!(on_b.len(), 1);
    assert_eq!(on_b[0].1.state, crate::State::Deleted);
    let want: Vec<String> = events.iter().map(|(_, e)| e.stamps[0].1.clone()).collect();
    let got: Vec<String> = on_b[0].1.stamps.iter().map(|s| s.1.clone()).collect();
    assert_eq!(got, want);
    assert!(on_b[0].1.stamps.iter().all(|s| s.0 == "n1"));

    // the epoch and the events survive a reopen; trimming leaves a mark readers see
    let epoch = a.event_epoch().to_owned();
    a.close().unwrap();
    drop(a);
    let a = open(da.path());
    assert_eq!(a.event_epoch(), epoch);
    assert_eq!(a.events(0, u64::MAX, 100).unwrap().unwrap(), events);
    assert_eq!(a.trim_events(2).unwrap(), 2);
    assert_eq!(a.event_bounds().trimmed, bounds.visible - 2);
    assert_eq!(
        a.events(0, u64::MAX, 100).unwrap(),
        None,
        "a cursor before the trim"
    );
    assert_eq!(
        a.events(bounds.visible - 2, u64::MAX, 100)
            .unwrap()
            .unwrap(),
        events[2..]
    );
    assert_eq!(a.trim_events(2).unwrap(), 0);
    a.close().unwrap();
    drop(a);
    let a = open(da.path());
    assert_eq!(a.event_bounds().trimmed, bounds.visible - 2);
    assert_ne!(b.event_epoch(), epoch, "every data dir its own epoch");
}

/// A contract named by its schema document: `{"schema": "<text>"}` gives a contract that
/// reports `<text>` as the one violation of every document (enough to tell versions apart).
#[derive(Debug)]
struct Named(String);

impl crate::Contract for Named {
    fn merge_at(&self, _: &[String]) -> crate::Merge {
        crate::Merge::Lww
    }
    fn violations(&self, _: &Value) -> Vec<crate::Violation> {
        vec![crate::Violation {
            path: String::new(),
            message: self.0.clone(),
        }]
    }
    fn counter_fields(&self) -> usize {
        0
    }
}

#[derive(Debug)]
struct NamedCompiler;

impl Contracts for NamedCompiler {
    fn compile(&self, _: &str, _: &str, json: &str) -> Option<Arc<dyn crate::Contract>> {
        let v: Value = serde_json::from_str(json).ok()?;
        Some(Arc::new(Named(v["schema"].as_str()?.to_owned())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_schema_is_in_force_once_its_write_returns_even_under_concurrent_reads() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.set_contracts(Arc::new(NamedCompiler));
    let schema = DocKey::new(SCHEMAS, "users").unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // readers that keep asking for the contract while schemas change (each ask may cache)
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (s, stop) = (s.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = s.contract_of("users");
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for i in 0..200 {
        let name = format!("v{i}");
        s.write(&schema, Edit::Put(obj(json!({"schema": name}))), None)
            .await
            .unwrap();
        let now = s.contract_of("users").expect("a contract");
        assert_eq!(
            now.violations(&json!({}))[0].message,
            name,
            "after write {i}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn a_trimmed_feed_says_so_to_older_cursors_and_keeps_its_mark_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for i in 0..6 {
        s.write(
            &key(&format!("d{i}")),
            Edit::Put(obj(json!({"i": i}))),
            None,
        )
        .await
        .unwrap();
    }
    let feed = s.feed(None, 100).unwrap().entries;
    let (third, fourth) = (feed[2].0, feed[3].0);
    // nothing older than the oldest entry: nothing to trim
    assert_eq!(
        s.trim_feed(&uhlc::Timestamp::new(uhlc::NTP64(1), *third.get_id()))
            .unwrap(),
        0
    );
    assert_eq!(s.trim_feed(&third).unwrap(), 3);
    assert_eq!(s.trim_feed(&third).unwrap(), 0, "trimming is idempotent");
    // a cursor at or after the mark reads on as before
    let page = s.feed(Some(&third), 100).unwrap();
    assert!(!page.trimmed);
    assert_eq!(page.entries.len(), 3);
    assert_eq!(page.entries[0].0, fourth);
    // an older cursor, or none, is told to repair and where to go on from
    for after in [None, Some(feed[1].0)] {
        let page = s.feed(after.as_ref(), 100).unwrap();
        assert!(page.trimmed && page.entries.is_empty());
        assert!(page.upto >= Some(feed[5].0), "{page:?}");
    }
    // the documents keep every change
    assert_eq!(get_json(&s, "d0").await, Some(json!({"i": 0})));
    // trimmed whole, the newest stamp survives a restart in the mark
    let last = s.last_local_stamp();
    assert_eq!(s.trim_feed(&s.clock().now()).unwrap(), 3);
    assert!(s.feed(Some(&feed[5].0), 100).unwrap().entries.is_empty());
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.last_local_stamp(), last);
    assert!(s.feed(Some(&third), 100).unwrap().trimmed);
    let page = s.feed(Some(&feed[5].0), 100).unwrap();
    assert!(!page.trimmed && page.entries.is_empty());
    s.write(&key("d9"), Edit::Put(obj(json!({"i": 9}))), None)
        .await
        .unwrap();
    let page = s.feed(Some(&feed[5].0), 100).unwrap();
    assert_eq!(page.entries.len(), 1);
    assert!(
        page.entries[0].0 > feed[5].0,
        "new stamps follow the trimmed ones"
    );
}

#[tokio::test]
async fn a_data_dir_from_before_the_streams_database_moves_its_feed_and_events_over() {
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
    assert_eq!(s.trim_events(3).unwrap(), 2);
    let feed = s.feed(None, 100).unwrap().entries;
    let bounds = s.event_bounds();
    let events = s
        .events(bounds.trimmed, bounds.visible, 100)
        .unwrap()
        .unwrap();
    assert_eq!(events.len(), 3);
    s.close().unwrap();
    drop(s);
    // --- the layout of earlier releases: feed, events and their marks in `db`, no `streams`
    let raw = |name: &str| loop {
        match sled::open(dir.path().join(name)) {
            Ok(db) => break db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    };
    {
        let (main, streams) = (raw("db"), raw("streams"));
        for kv in streams.iter() {
            let (k, v) = kv.unwrap();
            if k.as_ref() != record::meta_key("seq").as_slice() {
                main.insert(k, v).unwrap();
            }
        }
        main.flush().unwrap();
    }
    std::fs::remove_dir_all(dir.path().join("streams")).unwrap();
    // --- opened by this release: everything moved over, nothing left behind
    let s = open(dir.path());
    assert_eq!(s.feed(None, 100).unwrap().entries, feed);
    assert_eq!(s.event_bounds(), bounds);
    assert_eq!(
        s.events(bounds.trimmed, bounds.visible, 100).unwrap(),
        Some(events)
    );
    assert!(
        s.events(0, bounds.visible, 100).unwrap().is_none(),
        "the trim mark moved too"
    );
    let left = s.inner.tree.iter().keys().filter(|k| {
        let k = k.as_ref().unwrap();
        crate::dbs::Dbs::in_streams(k)
            || k.as_ref() == record::meta_key(record::EVENTS_TRIMMED).as_slice()
    });
    assert_eq!(left.count(), 0);
    // and goes on: a new write lands in the feed after the old ones
    s.write(&key("new"), Edit::Put(obj(json!({"i": 9}))), None)
        .await
        .unwrap();
    let now = s.feed(None, 100).unwrap().entries;
    assert_eq!(now.len(), 6);
    assert_eq!(now[..5], feed[..]);
    // --- a crash after the copy but before the removal leaves copies in `db`: dropped at open
    s.close().unwrap();
    drop(s);
    {
        let (main, streams) = (raw("db"), raw("streams"));
        for kv in streams.scan_prefix([record::FEED]) {
            let (k, v) = kv.unwrap();
            main.insert(k, v).unwrap();
        }
        main.flush().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.feed(None, 100).unwrap().entries, now);
    assert_eq!(
        s.inner.tree.scan_prefix([record::FEED]).count(),
        0,
        "the leftover copies are gone"
    );
}
