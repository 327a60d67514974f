//! automerge-repo clients against real `meridian` processes: samod 0.16 (wire-compatible with
//! JS `@automerge/automerge-repo` 2.x), unmodified, over `ws://…/v1/sync`.

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use meridian_crdt::{DocKey, DocumentId};
use meridian_tests::mesh::Mesh;
use meridian_tests::repo_client::{conflicts, dial, doc_id, render, repo, seed_genesis, user};
use meridian_tests::{eventually, Process};
use samod::storage::InMemoryStorage;
use serde_json::{json, Value};

async fn get(c: &reqwest::Client, p: &Process, path: &str) -> (u16, Value) {
    let r = c.get(p.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn send(c: &reqwest::Client, p: &Process, method: &str, path: &str, body: Value) -> Value {
    let ct = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let r = c
        .request(method.parse().unwrap(), p.url(path))
        .header("content-type", ct)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{method} {path}: {}", r.status());
    r.json().await.unwrap()
}

fn key(id: &str) -> DocKey {
    DocKey::new("users", id).unwrap()
}

/// Sets `field` of the user object in a samod replica (a client's edit, as any automerge-repo
/// app makes it: a transaction on the document).
fn set(h: &samod::DocHandle, field: &str, value: Value) {
    h.with_document(|am| {
        let v = user(am);
        let mut tx = am.transaction();
        match value {
            Value::String(s) => tx.put(&v, field, s).unwrap(),
            Value::Number(n) => tx.put(&v, field, n.as_i64().unwrap()).unwrap(),
            other => panic!("not used here: {other}"),
        }
        tx.commit();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samod_opens_an_http_document_sees_writes_pushed_and_unknown_ids_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let c = meridian_tests::http_client();
    let w = send(
        &c,
        &node,
        "PUT",
        "/v1/users/alice",
        json!({"name": "Alice", "tags": ["a"]}),
    )
    .await;
    assert_eq!(w["automerge_url"], DocumentId::of(&key("alice")).url());

    // --- samod finds the document the HTTP API wrote
    let r = repo(InMemoryStorage::new()).await;
    dial(&r, &node.addr).await;
    let h = r.find(doc_id(&key("alice"))).await.unwrap().expect("found");
    let (value, version) = h.with_document(|am| render(am));
    assert_eq!(value, json!({"name": "Alice", "tags": ["a"]}));
    assert_eq!(version, w["version"]);

    // --- a later HTTP write is pushed to it
    let t0 = Instant::now();
    send(
        &c,
        &node,
        "PATCH",
        "/v1/users/alice",
        json!({"name": "Alice B"}),
    )
    .await;
    eventually("the write reaches samod", Duration::from_secs(5), || {
        let v = h.with_document(|am| render(am).0);
        async move { v["name"] == "Alice B" }
    })
    .await;
    eprintln!(
        "push, from the HTTP answer to samod's replica: {:?}",
        t0.elapsed()
    );

    // --- a document nobody wrote resolves as unavailable, promptly
    let t0 = Instant::now();
    let missing = tokio::time::timeout(Duration::from_secs(10), r.find(doc_id(&key("nobody"))))
        .await
        .expect("find resolves, it does not hang");
    assert!(missing.unwrap().is_none());
    eprintln!(
        "an unknown document resolved as unavailable in {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_and_http_writes_merge_to_the_same_heads_with_the_conflict_listed() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let c = meridian_tests::http_client();
    send(
        &c,
        &node,
        "PUT",
        "/v1/users/bob",
        json!({"name": "Bob", "plan": "free"}),
    )
    .await;
    let r = repo(InMemoryStorage::new()).await;
    let d = dial(&r, &node.addr).await;
    let h = r.find(doc_id(&key("bob"))).await.unwrap().expect("found");

    // --- offline: samod edits while HTTP writes the same document (one field both)
    d.close();
    eventually("the node sees samod leave", Duration::from_secs(5), || {
        let (c, url) = (c.clone(), node.url("/metrics"));
        async move {
            let m = c.get(url).send().await.unwrap().text().await.unwrap();
            m.lines().any(|l| l == "meridian_sync_connections 0")
        }
    })
    .await;
    send(
        &c,
        &node,
        "PATCH",
        "/v1/users/bob",
        json!({"plan": "pro", "city": "Oslo"}),
    )
    .await;
    set(&h, "plan", json!("team"));
    set(&h, "lang", json!("nb"));
    // many changes: samod sends them together (a v2 sync message concatenates them)
    for i in 0..20 {
        set(&h, "edits", json!(i));
    }

    // --- reconnect: both sides end with the same heads and every field
    let d = dial(&r, &node.addr).await;
    let conn = d.connection_id().expect("connected");
    tokio::time::timeout(Duration::from_secs(10), h.they_have_our_changes(conn))
        .await
        .expect("the node acknowledges the offline edits");
    let last = std::sync::Arc::new(parking_lot::Mutex::new(Value::Null));
    eventually("samod and the node agree", Duration::from_secs(10), || {
        let c = c.clone();
        let url = node.url("/v1/users/bob?conflicts=true");
        let (local, version) = h.with_document(|am| render(am));
        let last = last.clone();
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            let same = v["value"] == local && v["version"] == version;
            *last.lock() = v;
            same
        }
    })
    .await;
    let http = last.lock().clone();
    assert_eq!(
        http["value"],
        json!({"name": "Bob", "plan": "team", "city": "Oslo", "lang": "nb", "edits": 19}),
        "the offline edit, accepted after the HTTP write, is the later write"
    );
    let conflict = &http["conflicts"][0];
    assert_eq!(conflict["path"], "/plan");
    assert_eq!(
        conflict["values"][1]["value"], "pro",
        "the HTTP write is listed"
    );
    assert!(conflict["values"][0]["client"].is_string(), "{conflict}");
    // the replica lists the same conflict, ordered the same way
    let local = h.with_document(|am| conflicts(am));
    assert_eq!(serde_json::to_value(&local).unwrap(), http["conflicts"]);

    // --- online, five changes at once: one v2 sync message carries them one after the other
    // (fewer than a third of the history, or automerge would send a whole save instead)
    h.with_document(|am| {
        let v = user(am);
        for i in 0..5 {
            let mut tx = am.transaction();
            tx.put(&v, "burst", i as i64).unwrap();
            tx.commit();
        }
    });
    tokio::time::timeout(Duration::from_secs(10), h.they_have_our_changes(conn))
        .await
        .expect("the burst is acknowledged");
    let (_, v) = get(&c, &node, "/v1/users/bob").await;
    assert_eq!(v["value"]["burst"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_created_offline_is_registered_over_http_then_synced() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let c = meridian_tests::http_client();
    let k = key("carol");

    // --- offline: genesis seeded under the computed id; the app edits
    let storage = InMemoryStorage::new();
    seed_genesis(&storage, &k).await;
    let r = repo(storage).await;
    let h = r.find(doc_id(&k)).await.unwrap().expect("found in storage");
    set(&h, "name", json!("Carol"));
    set(&h, "age", json!(41));
    assert_eq!(
        h.with_document(|am| render(am).0),
        json!({"name": "Carol", "age": 41})
    );

    // --- back online: register (PATCH {} creates it empty), then sync the offline edits
    let (status, _) = get(&c, &node, "/v1/users/carol").await;
    assert_eq!(status, 404);
    send(&c, &node, "PATCH", "/v1/users/carol", json!({})).await;
    let d = dial(&r, &node.addr).await;
    let conn = d.connection_id().unwrap();
    tokio::time::timeout(Duration::from_secs(10), h.they_have_our_changes(conn))
        .await
        .expect("acknowledged");
    let (status, v) = get(&c, &node, "/v1/users/carol").await;
    assert_eq!(status, 200);
    assert_eq!(v["value"], json!({"name": "Carol", "age": 41}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_breaking_change_is_refused_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let c = meridian_tests::http_client();
    send(&c, &node, "PUT", "/v1/users/dave", json!({"n": 1})).await;
    let (good, bad) = (
        repo(InMemoryStorage::new()).await,
        repo(InMemoryStorage::new()).await,
    );
    dial(&good, &node.addr).await;
    let bad_dialer = dial(&bad, &node.addr).await;
    let hg = good.find(doc_id(&key("dave"))).await.unwrap().unwrap();
    let hb = bad.find(doc_id(&key("dave"))).await.unwrap().unwrap();

    // --- the bad client writes a root key the layout does not have
    hb.with_document(|am| {
        let mut tx = am.transaction();
        tx.put(automerge::ROOT, "x", 1).unwrap();
        tx.commit();
    });
    eventually(
        "the node closes the bad client's connection",
        Duration::from_secs(10),
        || {
            let up = bad_dialer.is_connected();
            async move { !up }
        },
    )
    .await;
    let (_, v) = get(&c, &node, "/v1/users/dave").await;
    assert_eq!(v["value"], json!({"n": 1}), "nothing of it applied");
    let metrics = meridian_tests::get_text(&c, node.url("/metrics")).await;
    assert!(
        metrics.contains("meridian_sync_changes_refused_total 1"),
        "{}",
        meridian_tests::metric_lines(&metrics, "sync")
    );

    // --- the other client goes on
    set(&hg, "m", json!(2));
    eventually(
        "the good client's edit lands",
        Duration::from_secs(10),
        || {
            let c = c.clone();
            let url = node.url("/v1/users/dave");
            async move {
                let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
                v["value"] == json!({"n": 1, "m": 2})
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_right_after_the_acknowledgement_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = meridian_tests::http_client();
    let mut node = Process::start(dir.path(), &[]);
    send(&c, &node, "PUT", "/v1/users/erin", json!({"round": 0})).await;
    for round in 1..=3 {
        let r = repo(InMemoryStorage::new()).await;
        let d = dial(&r, &node.addr).await;
        let h = r.find(doc_id(&key("erin"))).await.unwrap().unwrap();
        set(&h, "round", json!(round));
        set(&h, &format!("r{round}"), json!("kept"));
        tokio::time::timeout(
            Duration::from_secs(10),
            h.they_have_our_changes(d.connection_id().unwrap()),
        )
        .await
        .expect("acknowledged");
        // --- kill -9 at once, restart on the same data dir
        node.kill9();
        node = Process::start(dir.path(), &[]);
        let (_, v) = get(&c, &node, "/v1/users/erin").await;
        assert_eq!(v["value"]["round"], round, "round {round}: {v}");
        for k in 1..=round {
            assert_eq!(v["value"][format!("r{k}")], "kept", "round {round}: {v}");
        }
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_regions_a_client_on_a_is_read_on_b_and_concurrent_writes_pick_one_winner() {
    let mesh = Mesh::start(&["--anti-entropy-secs", "1"]).await;
    let c = meridian_tests::http_client();
    let (a, b) = (mesh.node("a"), mesh.node("b"));
    send(&c, a, "PUT", "/v1/users/fay", json!({"name": "Fay"})).await;
    eventually("b has the document", Duration::from_secs(10), || {
        let c = c.clone();
        let url = b.url("/v1/users/fay");
        async move { c.get(url).send().await.unwrap().status() == 200 }
    })
    .await;
    let r = repo(InMemoryStorage::new()).await;
    dial(&r, &a.addr).await;
    let h = r.find(doc_id(&key("fay"))).await.unwrap().unwrap();

    // --- a client on a, a reader on b
    set(&h, "bio", json!("from a client on a"));
    eventually("b shows the client's edit", Duration::from_secs(10), || {
        let c = c.clone();
        let url = b.url("/v1/users/fay");
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            v["value"]["bio"] == "from a client on a"
        }
    })
    .await;

    // --- a partition: the client on a and an HTTP writer on b change one field
    mesh.partition("a");
    set(&h, "name", json!("client"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    send(&c, b, "PATCH", "/v1/users/fay", json!({"name": "http"})).await;
    mesh.heal();
    let last = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    eventually(
        "every node shows the same winner and conflict",
        Duration::from_secs(20),
        || {
            let c = c.clone();
            let urls: Vec<String> = ["a", "b", "c"]
                .iter()
                .map(|n| mesh.node(n).url("/v1/users/fay?conflicts=true"))
                .collect();
            let last = last.clone();
            async move {
                let mut all = vec![];
                for u in urls {
                    let v: Value = c.get(u).send().await.unwrap().json().await.unwrap();
                    all.push(json!([v["value"], v["version"], v["conflicts"]]));
                }
                let done = all.windows(2).all(|w| w[0] == w[1])
                    && all[0][2].as_array().is_some_and(|c| !c.is_empty());
                *last.lock() = all;
                done
            }
        },
    )
    .await;
    let seen = last.lock().clone();
    let winner = &seen[0];
    assert_eq!(
        winner[0]["name"], "http",
        "the HTTP write on b came after a accepted the client's"
    );
    let listed: Vec<&Value> = winner[2][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| &v["value"])
        .collect();
    assert_eq!(listed, [&json!("http"), &json!("client")]);
    // and the client, synced, shows the same
    eventually("the client converges too", Duration::from_secs(10), || {
        let (value, version) = h.with_document(|am| render(am));
        let want = (winner[0].clone(), winner[1].clone());
        async move { (value, json!(version)) == want }
    })
    .await;
}
