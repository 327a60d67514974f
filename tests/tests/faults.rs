//! Partitions as `/v1/cluster` reports them, and the fault controls `meridian demo` uses: three
//! real `meridian serve` processes on loopback, their peer traffic through proxies.

use std::time::{Duration, Instant};

use meridian_tests::mesh::{Mesh, IDS, SECRET};
use meridian_tests::{eventually, http_client, Process};
use serde_json::{json, Value};

/// The two three-node tests measure a 2 s bound: they run one at a time, so that they do not
/// share the 2 cores with each other's nine processes.
static ONE_MESH_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn get(c: &reqwest::Client, p: &Process, path: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = c.get(p.url(path));
    if let Some(t) = token {
        req = req
            .header("meridian-session", t)
            .header("meridian-max-wait-ms", "300");
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A merge patch; returns the session token of the answer.
async fn patch(c: &reqwest::Client, p: &Process, path: &str, body: Value) -> String {
    let r = c
        .patch(p.url(path))
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    r.headers()["meridian-session"].to_str().unwrap().to_owned()
}

/// `POST /internal/faults` with the secret (or `secret`), body as given.
async fn faults(c: &reqwest::Client, p: &Process, body: &str, secret: &str) -> (u16, Value) {
    let r = c
        .post(p.url("/internal/faults"))
        .bearer_auth(secret)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// `node`'s view of `peer`: reachable or not.
async fn sees(c: &reqwest::Client, cl: &Mesh, node: &str, peer: &str) -> bool {
    let (_, report) = get(c, cl.node(node), "/v1/cluster", None).await;
    report["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == peer)
        .unwrap()["reachable"]
        == true
}

async fn all_reachable(c: &reqwest::Client, cl: &Mesh) -> bool {
    for a in IDS {
        for b in IDS {
            if a != b && !sees(c, cl, a, b).await {
                return false;
            }
        }
    }
    true
}

/// Waits (at most 10 s) until every node sees every other as reachable.
async fn wait_all_reachable(c: &reqwest::Client, cl: &Mesh, what: &str) {
    eventually(what, Duration::from_secs(10), || all_reachable(c, cl)).await;
}

/// Polls until every view of `side` from the others, and `side`'s view of them, says
/// unreachable; returns how long that took.
async fn time_to_unreachable(c: &reqwest::Client, cl: &Mesh, side: &str, t0: Instant) -> Duration {
    loop {
        let mut all = true;
        for other in IDS.iter().filter(|o| **o != side) {
            all &= !sees(c, cl, other, side).await && !sees(c, cl, side, other).await;
        }
        if all {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still reachable after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_that_drops_packets_shows_as_unreachable_within_two_seconds() {
    let _one = ONE_MESH_AT_A_TIME.lock().await;
    let c = http_client();
    let cl = Mesh::start(&[]).await;
    patch(&c, cl.node("a"), "/v1/p/x", json!({"n": 1})).await;
    wait_all_reachable(&c, &cl, "all reachable").await;

    // no connection closes and no error arrives: only silence
    cl.stall("b");
    let t0 = Instant::now();
    let took = time_to_unreachable(&c, &cl, "b", t0).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // the other link stays up
    assert!(sees(&c, &cl, "a", "c").await && sees(&c, &cl, "c", "a").await);

    // writes on both sides, then the heal: reachable again and converged
    patch(&c, cl.node("a"), "/v1/p/x", json!({"a": 1})).await;
    patch(&c, cl.node("b"), "/v1/p/x", json!({"b": 1})).await;
    cl.heal();
    wait_all_reachable(&c, &cl, "all reachable after the heal").await;
    eventually("converged", Duration::from_secs(15), || async {
        let mut values = vec![];
        for id in IDS {
            values.push(get(&c, cl.node(id), "/v1/p/x", None).await.1["value"].clone());
        }
        values.iter().all(|v| *v == json!({"n": 1, "a": 1, "b": 1}))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_controls_cut_heal_and_pause_a_node_behind_the_secret() {
    let _one = ONE_MESH_AT_A_TIME.lock().await;
    let c = http_client();
    // the public URLs every node tells clients, the same list on each
    let cl = Mesh::start(&[
        "--fault-controls",
        "--peer-public-url",
        "a=https://a.example.com,b=https://b.example.com,c=https://c.example.com",
    ])
    .await;
    let (a, b) = (cl.node("a"), cl.node("b"));
    patch(&c, a, "/v1/p/x", json!({"n": 1})).await;
    wait_all_reachable(&c, &cl, "all reachable").await;

    // bad requests are refused and change nothing
    for (body, secret, status) in [
        (r#"{"cut":["a"]}"#, "wrong-secret-value", 401),
        (r#"{"cut":["zz"]}"#, SECRET, 400),
        (r#"{"cut":["a","b"]}"#, SECRET, 400), // b is the node itself, not a peer
        (r#"{"cutt":["a"]}"#, SECRET, 400),
        (r#"{"pause":"yes"}"#, SECRET, 400),
        ("not json", SECRET, 400),
    ] {
        let (s, v) = faults(&c, b, body, secret).await;
        assert_eq!(s, status, "{body}: {v}");
    }
    assert_eq!(
        faults(&c, b, "{}", SECRET).await.1,
        json!({"cut": [], "paused": false})
    );

    // cut on one side only: both sides see the partition within 2 s
    let t0 = Instant::now();
    let (s, v) = faults(&c, b, r#"{"cut":["a","c"]}"#, SECRET).await;
    assert_eq!((s, v), (200, json!({"cut": ["a", "c"], "paused": false})));
    let took = time_to_unreachable(&c, &cl, "b", t0).await;
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // writes on both sides stay where they were made; a session from a is not served on b
    let token = patch(&c, a, "/v1/p/x", json!({"side": "a"})).await;
    patch(&c, b, "/v1/p/x", json!({"side": "b"})).await;
    let (s, v) = get(&c, b, "/v1/p/x", Some(&token)).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "session_unavailable");
    // where a's data is, as clients reach it (not the peer URL b replicates over)
    assert_eq!(v["error"]["url"], "https://a.example.com", "{v}");
    let (s, v) = get(&c, b, "/v1/p/x", None).await;
    assert_eq!((s, &v["value"]["side"]), (200, &json!("b")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(&c, a, "/v1/p/x", None).await.1["value"]["side"], "a");

    // heal: one conflict, the same everywhere
    faults(&c, b, r#"{"heal":["a","c"]}"#, SECRET).await;
    wait_all_reachable(&c, &cl, "all reachable after the heal").await;
    eventually("converged", Duration::from_secs(15), || async {
        let mut seen = vec![];
        for id in IDS {
            let (_, v) = get(&c, cl.node(id), "/v1/p/x?conflicts=true", None).await;
            seen.push((v["value"].clone(), v["conflicts"].clone()));
        }
        seen.windows(2).all(|w| w[0] == w[1])
            && seen[0]
                .1
                .as_array()
                .is_some_and(|c| c.iter().any(|k| k["path"] == "/side"))
    })
    .await;
    let (s, _) = get(&c, b, "/v1/p/x", Some(&token)).await;
    assert_eq!(s, 200);

    // a paused node answers 503 unavailable, is unreachable for its peers, and comes back
    let (s, v) = faults(&c, b, r#"{"pause":true}"#, SECRET).await;
    assert_eq!((s, &v["paused"]), (200, &json!(true)));
    let (s, v) = get(&c, b, "/v1/p/x", None).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (503, &json!("unavailable")),
        "{v}"
    );
    assert_eq!(get(&c, b, "/healthz", None).await.0, 200);
    eventually(
        "b unreachable for a and c",
        Duration::from_secs(2),
        || async { !sees(&c, &cl, "a", "b").await && !sees(&c, &cl, "c", "b").await },
    )
    .await;
    faults(&c, b, r#"{"pause":false}"#, SECRET).await;
    assert_eq!(get(&c, b, "/v1/p/x", None).await.0, 200);
    wait_all_reachable(&c, &cl, "reachable after the pause").await;
}

#[tokio::test]
async fn without_the_flag_the_fault_controls_do_not_exist() {
    let c = http_client();
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(dir.path(), &["--node-id", "a", "--cluster-secret", SECRET]);
    let (s, v) = faults(&c, &p, r#"{"pause":true}"#, SECRET).await;
    assert_eq!((s, &v["error"]["code"]), (404, &json!("not_found")), "{v}");
    assert_eq!(get(&c, &p, "/v1/status", None).await.0, 200);
    // and the flag without a secret refuses to start
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = meridian_tests::run_to_exit(
        &[
            "serve",
            "--fault-controls",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--fault-controls needs --cluster-secret"),
        "{err}"
    );
}
