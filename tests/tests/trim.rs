//! Feed trimming and anti-entropy cost, over the in-memory faulty network of
//! `meridian_tests::cluster`: a feed every peer has read is trimmed and replication goes on; a
//! peer away longer than the retention window catches up by anti-entropy, with its session
//! guarantees intact; a repair pass touches only the documents that differ.

use std::time::Duration;

use meridian_crdt::{DocKey, Edit, RemoteChange, Store, StoreConfig};
use meridian_sync::SessionToken;
use meridian_tests::cluster::{clock_exact, obj, profile as key, rt, SimCluster};
use meridian_tests::eventually;
use serde_json::json;

async fn put(s: &Store, k: &DocKey, i: usize) {
    s.write(
        k,
        Edit::Put(obj(json!({"name": format!("n{i}"), "i": i}))),
        None,
    )
    .await
    .unwrap();
}

fn digests_agree(c: &SimCluster) -> bool {
    let first = c.nodes[0].store().digests();
    c.nodes[1..].iter().all(|n| n.store().digests() == first)
}

/// Waits until every node holds the same versions of the same documents.
async fn converge(c: &SimCluster, what: &str, within: Duration) {
    eventually(what, within, || async { digests_agree(c) }).await
}

/// Waits until `follower`'s cursor on `leader`'s feed has passed every change `leader` made.
/// Converged is not enough: a follower's merged changes are visible before its cursor moves
/// past them, and a cursor presented in between holds back the trim.
async fn read_all(c: &SimCluster, follower: &str, leader: &str) {
    let last = c.node(leader).store().last_local_stamp();
    eventually(
        &format!("{follower} has read {leader}'s feed"),
        Duration::from_secs(10),
        || async { c.node(follower).replica.cursor(leader) >= last },
    )
    .await
}

fn parsed(changes: Vec<Vec<u8>>) -> Vec<RemoteChange> {
    changes
        .into_iter()
        .map(|b| RemoteChange::parse(b).unwrap())
        .collect()
}

#[test]
fn a_feed_every_peer_has_read_is_trimmed_and_replication_goes_on() {
    rt().block_on(async {
        let c = SimCluster::start_with(
            11,
            &[("a", clock_exact), ("b", clock_exact), ("c", clock_exact)],
            // only the feeds and explicit passes move changes, and only explicit trims trim: the
            // periodic trimmer would rightly trim what both peers have presented cursors past
            // (a stream reopened under load presents one), and the count below would not hold
            |cfg| {
                cfg.anti_entropy_every = Duration::from_secs(3600);
                cfg.trim_every = Duration::from_secs(3600);
            },
        );
        let a = c.node("a");
        for i in 0..100 {
            put(a.store(), &key(&format!("p{i}")), i).await;
        }
        converge(&c, "b and c have a's writes", Duration::from_secs(10)).await;
        read_all(&c, "b", "a").await;
        read_all(&c, "c", "a").await;
        // nothing is trimmed that a peer has not said it holds
        let held = a.store().feed(None, 1000).unwrap().entries.len();
        assert_eq!(held, 100);
        // an anti-entropy pass carries each follower's cursor
        for id in ["b", "c"] {
            let pass = c.node(id).replica.repair_with("a").await.unwrap();
            assert_eq!((pass.leaves, pass.changes), (0, 0), "{pass:?}");
        }
        assert_eq!(a.replica.trim_feed().unwrap(), 100);
        assert!(a.store().feed(None, 1000).unwrap().trimmed);
        // later writes still reach both by the feed, without a catch-up by repair
        for i in 0..20 {
            put(a.store(), &key(&format!("q{i}")), i).await;
        }
        converge(&c, "later writes replicate", Duration::from_secs(10)).await;
        for id in ["b", "c"] {
            let report = c.node(id).replica.report();
            assert_eq!(report.peers[0].id, "a");
            assert_eq!(report.peers[0].trimmed_feed_repairs, 0, "{id}");
        }
        c.stop();
    });
}

#[test]
fn the_periodic_trimmer_trims_only_what_every_peer_has_presented() {
    rt().block_on(async {
        let c = SimCluster::start_with(
            14,
            &[("a", clock_exact), ("b", clock_exact), ("c", clock_exact)],
            |cfg| {
                cfg.anti_entropy_every = Duration::from_secs(3600);
                cfg.trim_every = Duration::from_millis(50);
            },
        );
        let a = c.node("a");
        // c is cut off before a writes, so it can have presented no cursor past a's writes
        c.cut("a", "c");
        for i in 0..30 {
            put(a.store(), &key(&format!("p{i}")), i).await;
        }
        read_all(&c, "b", "a").await;
        // b presents its cursor; the trimmer keeps what c lacks however often it runs
        c.node("b").replica.repair_with("a").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.store().feed(None, 1000).unwrap().entries.len(), 30);
        c.heal_all();
        converge(&c, "c has a's writes", Duration::from_secs(10)).await;
        read_all(&c, "c", "a").await;
        // once c presents its cursor too, the trimmer empties the feed by itself
        c.node("c").replica.repair_with("a").await.unwrap();
        eventually(
            "the trimmer trims a's feed",
            Duration::from_secs(10),
            || async { a.store().feed(None, 1000).unwrap().entries.is_empty() },
        )
        .await;
        c.stop();
    });
}

#[test]
fn a_peer_away_longer_than_the_retention_window_catches_up_by_anti_entropy() {
    rt().block_on(async {
        let c = SimCluster::start_with(
            12,
            &[("a", clock_exact), ("b", clock_exact), ("c", clock_exact)],
            |cfg| {
                // no periodic pass: only the catch-up after a trimmed feed can repair c
                cfg.anti_entropy_every = Duration::from_secs(3600);
                cfg.feed_retention = Duration::from_millis(500);
            },
        );
        let (a, cn) = (c.node("a"), c.node("c"));
        for i in 0..20 {
            put(a.store(), &key(&format!("p{i}")), i).await;
        }
        converge(&c, "everyone has the first writes", Duration::from_secs(10)).await;
        // --- c is cut off while a and b write
        c.cut("a", "c");
        c.cut("b", "c");
        for i in 0..200 {
            put(a.store(), &key(&format!("p{}", i % 50)), i).await;
            put(c.node("b").store(), &key(&format!("b{}", i % 30)), i).await;
        }
        let c_cursor = cn.replica.cursor("a");
        // --- past the window, a trims what c never read
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(a.replica.trim_feed().unwrap() > 0);
        assert!(
            a.store().feed(c_cursor.as_ref(), 10).unwrap().trimmed,
            "c's cursor is older than a's feed"
        );
        let mut token = SessionToken::default();
        token.merge(&a.replica.token());
        token.merge(&c.node("b").replica.token());
        // --- healed, c learns its cursor is gone and repairs instead
        c.heal_all();
        cn.replica
            .await_token(&token, Duration::from_secs(10))
            .await
            .expect("c covers the session once it has caught up");
        converge(&c, "c converges", Duration::from_secs(10)).await;
        for k in ["p7", "b3"] {
            assert_eq!(
                cn.store().read_state(&key(k)).unwrap().map(|s| s.json),
                a.store().read_state(&key(k)).unwrap().map(|s| s.json)
            );
        }
        let report = cn.replica.report();
        let from_a = report.peers.iter().find(|p| p.id == "a").unwrap();
        assert!(from_a.trimmed_feed_repairs >= 1, "{from_a:?}");
        // --- and follows a's feed again from where the repair left it
        put(a.store(), &key("after"), 1).await;
        eventually(
            "a new write reaches c by the feed",
            Duration::from_secs(10),
            || async { cn.store().read_state(&key("after")).unwrap().is_some() },
        )
        .await;
        c.stop();
    });
}

#[test]
fn a_repair_pass_touches_only_the_documents_that_differ() {
    rt().block_on(async {
        let c = SimCluster::start_with(13, &[("a", clock_exact), ("b", clock_exact)], |cfg| {
            cfg.anti_entropy_every = Duration::from_secs(3600)
        });
        let (a, b) = (c.node("a"), c.node("b"));
        for i in 0..3000 {
            put(a.store(), &key(&format!("d{i}")), i).await;
        }
        converge(&c, "b has a's writes", Duration::from_secs(30)).await;
        // --- 10 new documents and 10 changed ones reach a from a node outside the cluster,
        // so they are in no feed: only anti-entropy can bring them to b
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(dir.path());
        cfg.node_id = Some("x".into());
        let x = Store::open(cfg).unwrap();
        let mut docs = Vec::new();
        for i in 0..10 {
            let changed = key(&format!("d{}", i * 300));
            let history = a.store().changes_since(&changed, &[]).await.unwrap();
            x.merge_remote(vec![(changed.clone(), parsed(history))], vec![])
                .await
                .unwrap();
            x.write(&changed, Edit::Patch(obj(json!({"by": "x"}))), None)
                .await
                .unwrap();
            put(&x, &key(&format!("new{i}")), i).await;
            docs.push(changed);
            docs.push(key(&format!("new{i}")));
        }
        let mut from_x = Vec::new();
        for k in &docs {
            let heads = a
                .store()
                .read_state(k)
                .unwrap()
                .map(|s| s.heads)
                .unwrap_or_default();
            let changes = x.changes_since(k, &heads).await.unwrap();
            from_x.push((k.clone(), parsed(changes)));
        }
        a.store().merge_remote(from_x, vec![]).await.unwrap();
        assert!(!digests_agree(&c));
        // --- one pass: 20 differing documents in at most 20 leaves; b lists only the few
        // documents it holds in those leaves, not the 3,000
        let (sent0, received0) = b.replica.bytes();
        let pass = b.replica.repair_with("a").await.unwrap();
        let (sent, received) = b.replica.bytes();
        assert!(pass.complete, "{pass:?}");
        assert!(pass.leaves <= 20 && pass.leaves >= 10, "{pass:?}");
        assert!(pass.docs <= 30, "b listed {} documents", pass.docs);
        assert_eq!(pass.changes, 20, "{pass:?}");
        assert!(digests_agree(&c));
        for k in &docs {
            assert_eq!(
                b.store().read_state(k).unwrap().map(|s| s.json),
                a.store().read_state(k).unwrap().map(|s| s.json)
            );
        }
        // the digests (8 KiB of buckets), leaves of the differing buckets, and the changes
        let bytes = (sent - sent0) + (received - received0);
        assert!(bytes < 40_000, "{bytes} bytes for one pass");
        // --- a second pass finds nothing
        let pass = b.replica.repair_with("a").await.unwrap();
        assert_eq!(
            (pass.buckets, pass.leaves, pass.docs, pass.changes),
            (0, 0, 0, 0)
        );
        c.stop();
    });
}
