//! The client library (`meridian-client`) against real `meridian` processes.

use std::time::Duration;

use meridian_client::{Client, Replicas, Syncer};
use meridian_tests::mesh::Mesh;
use meridian_tests::{eventually, Process};
use serde_json::json;

/// The README's example: an edit made offline, the reconnect, the merged result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_edit_syncs_on_reconnect_and_merges_with_http_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let client = Client::new([format!("http://{}", node.addr)]).unwrap();
    client
        .put("users", "alice", &json!({"name": "Alice", "plan": "free"}))
        .await
        .unwrap();

    // --- a replica on the device, synced once
    let device = tempfile::tempdir().unwrap();
    let replicas = Replicas::open(device.path()).unwrap();
    let alice = replicas.open_doc("users", "alice").unwrap();
    let syncer = Syncer::start(replicas.clone(), client.clone());
    eventually(
        "the replica has the document",
        Duration::from_secs(10),
        || {
            let v = alice.value();
            async move { v.is_some() }
        },
    )
    .await;

    // --- offline: the app edits; meanwhile another writer changes another field
    syncer.stop().await;
    alice.patch(&json!({"bio": "written offline"})).unwrap();
    assert_eq!(alice.status().unacknowledged, 1);
    client
        .patch("users", "alice", &json!({"plan": "pro"}))
        .await
        .unwrap();
    assert_eq!(
        alice.value().unwrap()["plan"],
        "free",
        "offline: not seen yet"
    );

    // --- the app restarts and goes back online: the edit survived, and syncs
    drop((alice, replicas));
    let replicas = Replicas::open(device.path()).unwrap();
    let alice = replicas.open_doc("users", "alice").unwrap();
    assert_eq!(alice.value().unwrap()["bio"], "written offline");
    let _syncer = Syncer::start(replicas.clone(), client.clone());
    tokio::time::timeout(Duration::from_secs(10), alice.acknowledged())
        .await
        .expect("acknowledged");
    let merged = json!({"name": "Alice", "plan": "pro", "bio": "written offline"});
    assert_eq!(
        client.get("users", "alice").await.unwrap().unwrap().value,
        merged
    );
    eventually(
        "the replica has the merged document",
        Duration::from_secs(10),
        || {
            let v = alice.value();
            let m = merged.clone();
            async move { v == Some(m) }
        },
    )
    .await;
    let doc = client.get("users", "alice").await.unwrap().unwrap();
    assert_eq!(alice.version(), doc.version);
    assert!(alice.status().last_sync.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_created_offline_appears_on_the_node_once_synced() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let client = Client::new([format!("http://{}", node.addr)]).unwrap();
    let device = tempfile::tempdir().unwrap();
    let replicas = Replicas::open(device.path()).unwrap();

    // --- offline: a new document, edited with ops
    let note = replicas.open_doc("notes", "n1").unwrap();
    note.put(&json!({"title": "groceries", "items": []}))
        .unwrap();
    note.ops(
        &json!([{"op": "insert", "path": "/items/-", "value": "milk"},
                     {"op": "increment", "path": "/count", "by": 1}]),
    )
    .unwrap();
    // opened, never edited: it stays off the node
    let untouched = replicas.open_doc("notes", "n2").unwrap();
    assert_eq!(client.get("notes", "n1").await.unwrap(), None);

    // --- online: registered over HTTP, then synced
    let _s = Syncer::start(replicas.clone(), client.clone());
    tokio::time::timeout(Duration::from_secs(10), note.acknowledged())
        .await
        .expect("acknowledged");
    let doc = client
        .get("notes", "n1")
        .await
        .unwrap()
        .expect("on the node");
    assert_eq!(
        doc.value,
        json!({"title": "groceries", "items": ["milk"], "count": 1})
    );
    assert_eq!(doc.automerge_url, note.document_id().url());
    eventually(
        "the untouched replica learns the node lacks it",
        Duration::from_secs(10),
        || {
            let s = untouched.status();
            async move { s.unavailable }
        },
    )
    .await;
    assert_eq!(client.get("notes", "n2").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_fails_over_to_the_next_region_and_still_reads_its_writes() {
    let mut mesh = Mesh::start(&[]).await;
    let urls: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| format!("http://{}", mesh.node(n).addr))
        .collect();
    let client = Client::new(urls.clone()).unwrap();
    let w = client.put("users", "gus", &json!({"n": 1})).await.unwrap();
    assert!(w.created);
    assert_eq!(client.region(), urls[0]);
    // --- b has it (replicated), then a dies
    eventually("b has the write", Duration::from_secs(10), || {
        let b = Client::new([urls[1].clone()]).unwrap();
        async move { b.get("users", "gus").await.ok().flatten().is_some() }
    })
    .await;
    mesh.nodes.remove("a").unwrap().kill9();
    // --- the next call moves to b, with the session token: it sees its write
    let doc = client
        .get("users", "gus")
        .await
        .unwrap()
        .expect("read your writes");
    assert_eq!(doc.value, json!({"n": 1}));
    assert_eq!(client.region(), urls[1]);
    let w = client
        .patch("users", "gus", &json!({"n": 2}))
        .await
        .unwrap();
    assert_eq!(w.doc.value, json!({"n": 2}));
    assert!(
        client.session().iter().any(|(n, _)| n == "a"),
        "the token still names a"
    );
}

#[tokio::test]
async fn a_session_entry_no_region_can_cover_is_dropped_and_the_call_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &["--node-id", "here"]);
    let client = Client::new([format!("http://{}", node.addr)]).unwrap();
    client.put("users", "ann", &json!({"n": 1})).await.unwrap();
    // another user's device handed over a token that names a node this cluster never had
    client.merge_session(&meridian_client::SessionToken::parse("ghost=1").unwrap());
    let t0 = std::time::Instant::now();
    let doc = client.get("users", "ann").await.unwrap().unwrap();
    assert_eq!(doc.value, json!({"n": 1}));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let session = client.session().to_string();
    assert!(
        !session.contains("ghost") && session.contains("here"),
        "{session}"
    );
}
