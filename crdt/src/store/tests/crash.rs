//! Crash images: what power loss leaves (sled at its last checkpoint, the log as synced) recovers every acknowledged write.

use super::*;

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
    let last = &newest_segment(image.path());
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(last, bytes).unwrap();
    let replica = open(image.path());
    assert_eq!(get_json(&replica, "a").await, Some(json!({"v": 1})));
}

/// A damaged record that intact records follow is not a crash: the later records were
/// acknowledged, so the store refuses to open rather than serve without them.
#[tokio::test]
async fn a_damaged_log_record_with_acknowledged_ones_after_it_is_refused() {
    let (_s, _dir, image, last) = lost_batch_image().await;
    let err = Store::open(StoreConfig::new(image.path())).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    let name = last.file_name().unwrap().to_str().unwrap().to_owned();
    let message = err.to_string();
    assert!(
        message.contains(&name) && message.contains("intact records follow"),
        "{message}"
    );
}

/// Garbage in sled's settings file is named as such, not as a database from an old release.
#[tokio::test]
async fn a_damaged_sled_settings_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).close().unwrap();
    std::fs::write(dir.path().join("db").join("conf"), [0xff; 32]).unwrap();
    let err = Store::open(StoreConfig::new(dir.path())).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Corrupt(_)), "{message}");
    assert!(
        message.contains("db/conf") && message.contains("damaged"),
        "{message}"
    );
    assert!(message.contains("new node id"), "{message}");
}

/// A snapshot sled began and never finished (a full disk, a crash) does not stop the store
/// from opening: the data is intact.
#[tokio::test]
async fn an_unfinished_sled_snapshot_is_cleared_and_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.write(&key("a"), Edit::Put(obj(json!({"v": 1}))), None)
            .await
            .unwrap();
        s.close().unwrap();
    }
    for db in ["db", "streams"] {
        // newer than any real snapshot, and empty: what ENOSPC left in the field
        std::fs::write(
            dir.path().join(db).join("snap.FFFFFFFFFFFFFFF0.generating"),
            b"",
        )
        .unwrap();
    }
    let s = open(dir.path());
    assert_eq!(get_json(&s, "a").await, Some(json!({"v": 1})));
    for db in ["db", "streams"] {
        assert!(!dir
            .path()
            .join(db)
            .join("snap.FFFFFFFFFFFFFFF0.generating")
            .exists());
    }
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
