//! End-to-end tests against the real `meridian` binary: crash safety, idempotent retries across
//! restarts, graceful shutdown, command-line errors, and bad input over a real socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_tests::{run_to_exit, Process};
use serde_json::{json, Value};

async fn get(c: &reqwest::Client, p: &Process, path: &str) -> (u16, Value) {
    let r = c.get(p.url(path)).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Acknowledged state: per document, the last `seq` that was answered 2xx.
type Acked = Arc<Mutex<HashMap<String, i64>>>;

/// Starts 16 writers against `node`, each bumping its own document `{round}-w{i}` with ops that
/// set two fields at once; kill -9s the node once every writer has 20 acknowledged writes; and
/// returns the last acknowledged seq of each document.
async fn write_until_killed(
    node: Process,
    c: &reqwest::Client,
    round: u32,
) -> HashMap<String, i64> {
    let acked: Acked = Default::default();
    let mut writers = vec![];
    for w in 0..16 {
        let doc = format!("r{round}-w{w}");
        let (c, url, acked) = (
            c.clone(),
            node.url(&format!("/v1/crash/{doc}/ops")),
            acked.clone(),
        );
        writers.push(tokio::spawn(async move {
            for seq in 1.. {
                let body = json!({"ops":[
                    {"op":"set","path":"/a","value":seq},
                    {"op":"set","path":"/b","value":seq},
                    {"op":"increment","path":"/count","by":1}
                ]});
                match c.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => {
                        acked.lock().unwrap().insert(doc.clone(), seq);
                    }
                    _ => return, // the node is gone
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().values().filter(|s| **s >= 20).count() < 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writers made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let out = acked.lock().unwrap().clone();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_clients_write_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let c = meridian_tests::http_client();
    let mut acked = HashMap::new();

    // --- an idempotent increment whose answer we keep
    let node = Process::start(dir.path(), &["--node-id", "crash"]);
    let incr = json!({"ops":[{"op":"increment","path":"/n","by":1}]});
    let first = c
        .post(node.url("/v1/crash/idem/ops"))
        .header("idempotency-key", "once")
        .json(&incr)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    // --- three rounds of: write, kill -9 mid-stream, restart on the same data dir
    acked.extend(write_until_killed(node, &c, 0).await);
    for round in 1..3 {
        let node = Process::start(dir.path(), &[]);
        acked.extend(write_until_killed(node, &c, round).await);
    }

    // --- every acknowledged write is there, none half-applied
    let node = Process::start(dir.path(), &[]);
    assert_eq!(acked.len(), 48);
    for (doc, seq) in &acked {
        let (status, body) = get(&c, &node, &format!("/v1/crash/{doc}")).await;
        assert_eq!(status, 200, "{doc} lost");
        let v = &body["value"];
        let a = v["a"].as_i64().unwrap();
        assert!(a >= *seq, "{doc}: acknowledged seq {seq}, found {a}");
        assert_eq!(v["a"], v["b"], "{doc}: half of a request applied");
        assert_eq!(
            v["count"].as_i64().unwrap(),
            a,
            "{doc}: counter and seq disagree"
        );
    }
    // --- an idempotent retry after the restarts applies nothing twice
    let retry = c
        .post(node.url("/v1/crash/idem/ops"))
        .header("idempotency-key", "once")
        .json(&incr)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201, "the first answer again");
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.unwrap(), first);
    assert_eq!(
        get(&c, &node, "/v1/crash/idem").await.1["value"],
        json!({"n": 1})
    );
    // the node id was kept in the data dir
    assert_eq!(get(&c, &node, "/v1/status").await.1["node_id"], "crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_writes_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let c = meridian_tests::http_client();
    let url = node.url("/v1/t/doc");
    let mut tasks = vec![];
    for i in 0..50 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            c.patch(&url)
                .header("content-type", "application/merge-patch+json")
                .body(format!(r#"{{"f{i}":{i}}}"#))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }));
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let status = tokio::task::spawn_blocking(move || node.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let mut ok_fields = vec![];
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap() {
            ok_fields.push(format!("f{i}"));
        }
    }
    let node = Process::start(dir.path(), &[]);
    let (_, body) = get(&c, &node, "/v1/t/doc").await;
    for f in ok_fields {
        assert!(
            body["value"].get(&f).is_some(),
            "acknowledged {f} lost over a clean stop"
        );
    }
}

#[tokio::test]
async fn bad_input_over_a_real_socket_leaves_the_node_alive() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &[]);
    let c = meridian_tests::http_client();
    let put = |body: Vec<u8>| {
        c.put(node.url("/v1/x/y"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for (body, want) in [
        ("[".repeat(100_000).into_bytes(), 400),
        (b"{\"a\":\"\xff\"}".to_vec(), 400),
        (b"{\"a\":1".to_vec(), 400),
        (vec![b'x'; (1 << 20) + 16], 413),
    ] {
        let r = put(body).await.unwrap();
        assert_eq!(r.status().as_u16(), want);
        let err: Value = r.json().await.unwrap();
        assert!(err["error"]["code"].is_string());
    }
    // the node closes a connection whose oversized body it did not read: use fresh ones
    let c = meridian_tests::http_client();
    let r = c.get(node.url("/v1/x/%00")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = c
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            node.url("/v1/x/y"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(get(&c, &node, "/healthz").await.0, 200);
    assert_eq!(get(&c, &node, "/v1/x/y").await.0, 404, "nothing stored");
}

#[test]
fn command_line_errors_are_clear() {
    // a bad flag
    let (code, err) = run_to_exit(&["serve", "--no-such-flag"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    // a bad node id, from the environment
    let (code, err) = run_to_exit(&["serve"], &[("MERIDIAN_NODE_ID", "bad/id")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node id"), "{err}");
    // a data dir that cannot be created
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (code, err) = run_to_exit(
        &[
            "serve",
            "--data-dir",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("data dir"), "{err}");
    // a data dir in use by another process, and an address in use
    let running = Process::start(&dir.path().join("data"), &[]);
    let data = dir.path().join("data");
    let (code, err) = run_to_exit(
        &[
            "serve",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in use by another process"), "{err}");
    let other = dir.path().join("other");
    let (code, err) = run_to_exit(
        &[
            "serve",
            "--data-dir",
            other.to_str().unwrap(),
            "--listen",
            &running.addr,
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
    // a config file with an unknown key
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "lisen = \"x\"\n").unwrap();
    let (code, err) = run_to_exit(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid config file"), "{err}");
}
