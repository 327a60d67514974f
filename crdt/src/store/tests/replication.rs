//! Replication support: the feed and its bound, merges and digests, missing dependencies, trimming, the streams database.

use super::*;

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
