//! A data dir written by an earlier release opens and serves unchanged.
//!
//! `tests/fixtures/datadir-v0.1.0.tar.gz` was written by release 0.1.0 (automerge 0.6, uhlc 0.8;
//! `datadir-v0.1.0.sh` says how): documents with a compacted snapshot and increments, text,
//! counters and lists, a deleted document, changes merged from another node with a conflict, an
//! idempotency record and replication cursors. What that release answered is in
//! `datadir-v0.1.0.expected.json`; this build must answer the same.

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
