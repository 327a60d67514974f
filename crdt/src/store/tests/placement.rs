//! Placement in the store: a collection placed elsewhere is refused here (reads, writes, sync
//! clients), a placement arriving by merge holds at once and survives a restart, and digests
//! between two nodes leave out what they do not both hold.

use super::*;
use crate::placement::Placement;
use crate::SyncState;

fn node(dir: &Path, id: &str) -> Store {
    let mut c = StoreConfig::new(dir);
    c.node_id = Some(id.into());
    Store::open(c).unwrap()
}

fn regions(r: &[&str]) -> BTreeSet<String> {
    r.iter().map(|s| s.to_string()).collect()
}

/// Everything `from` made, merged into `to` (as a peer's feed would bring it).
async fn take_feed(from: &Store, to: &Store) {
    let page = from.feed(None, 1000).unwrap();
    let docs: Vec<(DocKey, Vec<RemoteChange>)> = page
        .entries
        .iter()
        .map(|(_, e)| {
            (
                DocKey::new(&e.collection, &e.id).unwrap(),
                vec![RemoteChange::parse(e.change.clone()).unwrap()],
            )
        })
        .collect();
    to.merge_remote(docs, vec![]).await.unwrap();
}

#[tokio::test]
async fn a_collection_placed_elsewhere_is_refused_here_and_left_out_of_digests() {
    let (du, da) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let us = node(du.path(), "us");
    let ap = node(da.path(), "ap");
    let pk = crate::placement::Placement::key();
    us.write(
        &pk,
        Edit::Patch(Placement::patch("users", &regions(&["us"]))),
        None,
    )
    .await
    .unwrap();
    assert!(us.holds("users") && us.holds("settings"));
    let settings = DocKey::new("settings", "s1").unwrap();
    us.write(&key("u1"), Edit::Put(obj(json!({"email": "a@b.c"}))), None)
        .await
        .unwrap();
    us.write(&settings, Edit::Put(obj(json!({"theme": "dark"}))), None)
        .await
        .unwrap();

    // --- ap takes us's feed whole, users included (as from a peer that ignored placement)
    take_feed(&us, &ap).await;
    assert_eq!(ap.placement().regions_of("users"), Some(&regions(&["us"])));
    assert!(!ap.holds("users") && ap.holds("settings"));
    // both hold every document, so the whole digests agree; ap's copy of users/u1 is what a
    // region keeps from before it learned the placement
    assert_eq!(us.digests(), ap.digests());

    // --- ap refuses the collection on every surface, naming where it lives
    let elsewhere = |r: Result<()>| match r {
        Err(Error::Elsewhere {
            collection,
            regions,
        }) => assert_eq!(
            (collection.as_str(), regions),
            ("users", vec!["us".to_owned()])
        ),
        other => panic!("not refused as placed elsewhere: {other:?}"),
    };
    elsewhere(
        ap.write(&key("u2"), Edit::Put(obj(json!({}))), None)
            .await
            .map(|_| ()),
    );
    elsewhere(ap.get(&key("u1")).await.map(|_| ()));
    elsewhere(ap.get_with_conflicts(&key("u1")).await.map(|_| ()));
    elsewhere(ap.list("users", None, 10).await.map(|_| ()));
    elsewhere(
        ap.client_sync(&key("u1"), &mut SyncState::new(), None)
            .await
            .map(|_| ()),
    );
    assert!(ap.get(&settings).await.unwrap().is_some());

    // --- digests between us and ap leave users out, on both sides alike
    us.write(&key("u3"), Edit::Put(obj(json!({"email": "d@e.f"}))), None)
        .await
        .unwrap();
    assert_ne!(us.digests(), ap.digests());
    assert_eq!(us.digests_with("ap"), ap.digests_with("us"));
    let all: Vec<u32> = (0..DIGEST_BUCKETS as u32).collect();
    assert_eq!(
        us.leaf_digests_with(&all, "ap"),
        ap.leaf_digests_with(&all, "us")
    );
    let leaves: BTreeSet<u32> = (0..DIGEST_LEAVES as u32).collect();
    let listed = |s: &Store, peer: &str| -> Vec<DocKey> {
        s.leaf_heads_with(&leaves, peer)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    };
    assert!(listed(&us, "ap").iter().all(|k| k.collection() != "users"));
    assert_eq!(
        us.leaf_heads(&leaves)
            .unwrap()
            .iter()
            .filter(|(k, _)| k.collection() == "users")
            .count(),
        2
    );
    // what us compares with a region that holds users is everything
    assert_eq!(us.digests_with("us"), us.digests());

    // --- the placement holds across a restart
    ap.close().unwrap();
    drop(ap);
    let ap = node(da.path(), "ap");
    assert!(!ap.holds("users"));

    // --- cleared: everywhere again, and the digests compare everything
    us.write(
        &pk,
        Edit::Patch(Placement::patch("users", &BTreeSet::new())),
        None,
    )
    .await
    .unwrap();
    assert!(us.placement().is_empty());
    assert_eq!(us.digests_with("ap"), us.digests());
    take_feed(&us, &ap).await;
    assert!(ap.holds("users"));
    assert!(ap.get(&key("u3")).await.unwrap().is_some());
}
