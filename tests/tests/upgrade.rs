//! A data dir written by an earlier release opens and serves unchanged.
//!
//! `tests/fixtures/datadir-v0.1.0.tar.gz` was written by release 0.1.0 (automerge 0.6, uhlc 0.8;
//! `datadir-v0.1.0.sh` says how): documents with a compacted snapshot and increments, text,
//! counters and lists, a deleted document, changes merged from another node with a conflict, an
//! idempotency record and replication cursors. What that release answered is in
//! `datadir-v0.1.0.expected.json`; this build must answer the same.
//!
//! And a rolling upgrade of three regions under load from the previous release's protocol to
//! this one's (see docs/replication.md, Upgrades).

use std::path::Path;
use std::time::Duration;

use meridian_tests::Process;
use serde_json::{json, Value};

fn unpack(into: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/datadir-v0.1.0.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed on {}", fixture.display());
}

/// Removes the fields this build adds to document answers, so the rest can be compared with
/// what 0.1.0 answered.
fn without_additions(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("automerge_url");
        if let Some(items) = o.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                if let Some(i) = item.as_object_mut() {
                    i.remove("automerge_url");
                }
            }
        }
    }
    v
}

#[tokio::test]
async fn a_data_dir_written_by_release_0_1_0_opens_and_serves_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path());
    let data = dir.path().join("a");
    // the same node id, and its peer (unreachable here), so that its cursors load too
    let node = Process::start(
        &data,
        &[
            "--node-id",
            "fx-a",
            "--peer",
            "fx-b=http://127.0.0.1:9",
            "--cluster-secret",
            "fixture-secret",
        ],
    );
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let expected: serde_json::Map<String, Value> =
        serde_json::from_str(include_str!("../fixtures/datadir-v0.1.0.expected.json")).unwrap();

    // --- every answer is what 0.1.0 gave: values, versions, conflicts with their stamps
    for (path, want) in &expected {
        let r = c.get(node.url(&format!("/v1{path}"))).send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert_eq!(json!(status), want["status"], "{path}");
        assert_eq!(without_additions(body), want["body"], "{path}");
    }
    // the conflict made by two nodes is still there, with both stamps
    let carol = &expected["/users/carol?conflicts=true"]["body"]["conflicts"];
    assert_eq!(carol[0]["values"].as_array().unwrap().len(), 2);

    // --- and the old documents take new writes on top of their old history
    let r = c
        .post(node.url("/v1/users/alice/ops"))
        .json(&json!({"ops":[{"op":"increment","path":"/logins","by":1},
                               {"op":"splice","path":"/bio","index":0,"delete":2,"insert":"Hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["value"]["logins"], 4);
    assert_eq!(v["value"]["bio"], "Hello there ☃");
    let r = c
        .put(node.url("/v1/users/carol"))
        .json(&json!({"color":"green"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = c
        .get(node.url("/v1/users/carol?conflicts=true"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["value"], json!({"color":"green"}));
    assert_eq!(v["conflicts"], json!([]), "a later write ends the conflict");
    drop(node);
}

/// Each peer of a node's `/v1/cluster`: its id, the version this node's requests to it run in,
/// and the version of its requests here.
async fn links(c: &reqwest::Client, url: String) -> Vec<(String, Option<u64>, Option<u64>)> {
    meridian_tests::get_json(c, url).await["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|p| {
            (
                p["id"].as_str().expect("an id").to_owned(),
                p["protocol"].as_u64(),
                p["peer_protocol"].as_u64(),
            )
        })
        .collect()
}

/// A rolling upgrade of three regions under load: each node starts on the previous release's
/// protocol (`--protocol-max 2`: what its peers see of it is what the previous release sends),
/// then in turn is stopped with SIGTERM and started on this release's (the default). Every link
/// runs the newest version both ends speak throughout (2 while either end is old, then 3), no
/// acknowledged write is lost, and no read with a session token ever shows less than the
/// session wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_under_load_loses_nothing_and_keeps_sessions() {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    use meridian_tests::mesh::{Mesh, IDS};
    use meridian_tests::{eventually, http_client};

    let mut mesh = Mesh::start(&["--protocol-max", "2"]).await;
    let c = http_client();
    let addrs = || -> Vec<String> { IDS.iter().map(|id| mesh.node(id).addr.clone()).collect() };
    let addrs = Arc::new(parking_lot::Mutex::new(addrs()));
    let stop = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicU64::new(0));
    let acked: Arc<parking_lot::Mutex<BTreeMap<String, u64>>> = Default::default();
    let mut writers = vec![];
    for w in 0..3usize {
        let (c, addrs, stop, violations, acked) = (
            c.clone(),
            addrs.clone(),
            stop.clone(),
            violations.clone(),
            acked.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("w{w}-{}", n % 20);
                let (write_at, read_at) = {
                    let a = addrs.lock();
                    (a[w].clone(), a[(w + 1) % 3].clone())
                };
                let Ok(r) = c
                    .patch(format!("http://{write_at}/v1/users/{id}"))
                    .header("content-type", "application/merge-patch+json")
                    .body(format!("{{\"n\":{n}}}"))
                    .send()
                    .await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue; // the node is restarting
                };
                if !r.status().is_success() {
                    continue;
                }
                let token = r.headers()["meridian-session"].to_str().unwrap().to_owned();
                acked.lock().insert(id.clone(), n);
                // read your write in the next region: the value written, a later one, or a
                // refusal; never an older one
                if let Ok(r) = c
                    .get(format!("http://{read_at}/v1/users/{id}"))
                    .header("meridian-session", &token)
                    .send()
                    .await
                {
                    if r.status() == 200 {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if v["value"]["n"].as_u64().is_none_or(|got| got < n) {
                            eprintln!("session violation: wrote {id}={n} at {write_at}, read {v} at {read_at}");
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, id) in IDS.iter().enumerate() {
        let status = mesh.restart(id, &[]);
        assert!(status.success(), "{id} stopped on SIGTERM with {status}");
        addrs.lock()[i] = mesh.node(id).addr.clone();
        // the upgraded node runs 2 with the old ones and 3 with the upgraded ones
        let upgraded = &IDS[..=i];
        eventually(
            &format!("{id}'s links at the newest version both ends speak"),
            Duration::from_secs(15),
            || {
                let (c, url) = (c.clone(), mesh.node(id).url("/v1/cluster"));
                async move {
                    links(&c, url).await.iter().all(|(peer, ours, theirs)| {
                        let want = if upgraded.contains(&peer.as_str()) {
                            3
                        } else {
                            2
                        };
                        *ours == Some(want) && *theirs == Some(want)
                    })
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().clone();
    assert!(
        acked.len() >= 30,
        "too few writes were made: {}",
        acked.len()
    );
    for id in IDS {
        let url = mesh.node(id).url("");
        eventually(
            &format!("{id} holds every acknowledged write"),
            Duration::from_secs(20),
            || {
                let (c, url, acked) = (c.clone(), url.clone(), acked.clone());
                async move {
                    for (doc, n) in &acked {
                        let r = c.get(format!("{url}/v1/users/{doc}")).send().await;
                        let Ok(r) = r else { return false };
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if v["value"]["n"].as_u64().is_none_or(|got| got < *n) {
                            return false;
                        }
                    }
                    true
                }
            },
        )
        .await;
    }
    assert_eq!(violations.load(Ordering::Relaxed), 0, "session violations");
}
