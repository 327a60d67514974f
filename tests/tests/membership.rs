//! Regions joining and leaving while every node runs, against real processes: a cluster grown
//! from one node by `meridian region add` (the second region started with one seed, the third
//! with a seed the change did not go through), under writes in every region; the new region
//! converges and serves sessions; a region removed online stops being followed everywhere, is
//! refused when added back, refuses writes itself, and the two that stay keep replicating.
//! Nobody is restarted. Bad changes are refused with a clear error and change nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_tests::{eventually, get_json, get_text, http_client, run_to_exit, Process};
use parking_lot::Mutex;
use serde_json::Value;

const SECRET: &str = "membership-test-secret";

fn start(dir: &std::path::Path, id: &str, seeds: &[(&str, &Process)]) -> Process {
    let mut args = vec![
        "--node-id".to_string(),
        id.into(),
        "--region".into(),
        id.into(),
        "--cluster-secret".into(),
        SECRET.into(),
    ];
    for (sid, p) in seeds {
        args.push("--peer".into());
        args.push(format!("{sid}=http://{}", p.addr));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::start(&dir.join(id), &args)
}

/// `meridian region ARGS --node URL`: (exit code, stdout as JSON or Null, stderr).
fn region(node: &Process, args: &[&str]) -> (i32, String) {
    let url = format!("http://{}", node.addr);
    let mut all = vec!["region"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--node", &url]);
    run_to_exit(&all, &[])
}

async fn following(c: &reqwest::Client, node: &Process) -> Vec<String> {
    let r = get_json(c, node.url("/v1/_regions")).await;
    r["following"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

/// What each writer had acknowledged: document id -> (value, the session token it came with).
type Acked = Arc<Mutex<BTreeMap<String, (u64, String)>>>;

/// Writes `w-<name>-<i>` documents to `node` until `stop`; every acknowledged one is recorded.
fn writer(name: &'static str, url: String, stop: Arc<AtomicBool>, acked: Acked) {
    tokio::spawn(async move {
        let c = http_client();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let id = format!("w-{name}-{}", i % 50);
            let r = c
                .patch(format!("{url}/v1/users/{id}"))
                .header("content-type", "application/merge-patch+json")
                .body(format!("{{\"n\":{i}}}"))
                .send()
                .await;
            if let Ok(r) = r {
                if r.status().is_success() {
                    let token = r.headers()["meridian-session"].to_str().unwrap().to_owned();
                    acked.lock().insert(id, (i, token));
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
}

async fn value_of(c: &reqwest::Client, node: &Process, id: &str) -> Option<u64> {
    let r = c
        .get(node.url(&format!("/v1/users/{id}")))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json::<Value>().await.ok()?["value"]["n"].as_u64()
}

/// Every acknowledged write is on `node` (a later one may have replaced it: values only grow).
async fn holds_all(c: &reqwest::Client, node: &Process, acked: &Acked) -> bool {
    let want: Vec<(String, u64)> = acked.lock().iter().map(|(k, v)| (k.clone(), v.0)).collect();
    for (id, n) in want {
        if value_of(c, node, &id).await.is_none_or(|got| got < n) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_join_and_leave_while_every_node_runs_under_writes() {
    let dir = tempfile::tempdir().unwrap();
    let c = http_client();
    // one region, alone; then a second, started with it as its seed and added through it
    let us = start(dir.path(), "us", &[]);
    let eu = start(dir.path(), "eu", &[("us", &us)]);
    let (code, err) = region(&us, &["add", "eu", &format!("http://{}", eu.addr)]);
    assert_eq!(code, 0, "{err}");
    eventually("us follows eu", Duration::from_secs(5), || async {
        following(&c, &us).await == ["eu"]
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let stop_eu = Arc::new(AtomicBool::new(false));
    let (on_us, on_eu, on_ap): (Acked, Acked, Acked) = Default::default();
    writer(
        "us",
        format!("http://{}", us.addr),
        stop.clone(),
        on_us.clone(),
    );
    writer(
        "eu",
        format!("http://{}", eu.addr),
        stop_eu.clone(),
        on_eu.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // a third region, seeded with eu only, added through us: it learns of us from the set
    let ap = start(dir.path(), "ap", &[("eu", &eu)]);
    let (code, err) = region(&us, &["add", "ap", &format!("http://{}", ap.addr)]);
    assert_eq!(code, 0, "{err}");
    for (node, others) in [
        (&us, ["ap", "eu"]),
        (&eu, ["ap", "us"]),
        (&ap, ["eu", "us"]),
    ] {
        eventually(
            "every node follows the other two",
            Duration::from_secs(10),
            || async { following(&c, node).await == others },
        )
        .await;
    }
    writer(
        "ap",
        format!("http://{}", ap.addr),
        stop.clone(),
        on_ap.clone(),
    );
    // the new region converges with what the others acknowledged before and since it joined
    eventually(
        "ap holds every write of us and eu",
        Duration::from_secs(20),
        || async { holds_all(&c, &ap, &on_us).await && holds_all(&c, &ap, &on_eu).await },
    )
    .await;
    // and serves sessions: a write just acknowledged in us is read in ap with its token
    let (id, (n, token)) = on_us
        .lock()
        .iter()
        .next_back()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let r = c
        .get(ap.url(&format!("/v1/users/{id}")))
        .header("meridian-session", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.json::<Value>().await.unwrap()["value"]["n"]
            .as_u64()
            .unwrap()
            >= n
    );

    // eu stops taking writes (as a drain would), then is removed through ap
    stop_eu.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let eu_token = on_eu
        .lock()
        .values()
        .map(|v| v.1.clone())
        .next_back()
        .unwrap();
    let (code, err) = region(&ap, &["remove", "eu"]);
    assert_eq!(code, 0, "{err}");
    for node in [&us, &ap] {
        eventually(
            "eu is followed by nobody",
            Duration::from_secs(10),
            || async { !following(&c, node).await.contains(&"eu".to_string()) },
        )
        .await;
    }
    // eu learns it: it follows nobody, says it is not ready, and refuses writes
    eventually(
        "eu knows it was removed",
        Duration::from_secs(10),
        || async { c.get(eu.url("/readyz")).send().await.unwrap().status() == 503 },
    )
    .await;
    assert!(following(&c, &eu).await.is_empty());
    let r = c
        .put(eu.url("/v1/users/late"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "region_removed", "{e}");
    // adding it back is refused, saying why
    let (code, err) = region(&us, &["add", "eu", &format!("http://{}", eu.addr)]);
    assert_ne!(code, 0);
    assert!(
        err.contains("409") && err.contains("sequence numbers"),
        "{err}"
    );

    // what eu acknowledged stays, and its sessions are answered from what was merged of it
    assert!(holds_all(&c, &us, &on_eu).await && holds_all(&c, &ap, &on_eu).await);
    let r = c
        .get(us.url("/v1/users/w-eu-1"))
        .header("meridian-session", &eu_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // a token naming eu past what anyone merged of it can no longer be covered: 410
    let mut beyond = meridian_sync::SessionToken::parse(&eu_token).unwrap();
    beyond.observe("eu", u64::MAX / 2);
    let r = c
        .get(us.url("/v1/users/w-eu-1"))
        .header("meridian-session", beyond.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 410);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "session_region_removed", "{e}");
    assert_eq!(e["error"]["region"], "eu");

    // the two that stay keep replicating both ways
    let mark = (on_us.lock().len(), on_ap.lock().len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(on_us.lock().len() >= mark.0 && on_ap.lock().len() >= mark.1);
    eventually(
        "us and ap hold each other's writes",
        Duration::from_secs(20),
        || async { holds_all(&c, &us, &on_ap).await && holds_all(&c, &ap, &on_us).await },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_membership_changes_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = http_client();
    let us = start(dir.path(), "us", &[]);
    let before = get_text(&c, us.url("/v1/_regions")).await;
    let cases: [(&[&str], &str); 6] = [
        (&["add", "eu", "ftp://x"], "400"),
        (&["add", "eu", "http://x/path"], "400"),
        (&["add", "bad id!", "http://x"], "400"),
        (&["add", "us", "http://x"], "400"),
        (&["remove", "nowhere"], "404"),
        (&["remove", "us"], "400"),
    ];
    for (args, status) in cases {
        let (code, err) = region(&us, args);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains(status), "{args:?}: {err}");
    }
    for body in [
        "{}",
        "{\"id\":\"eu\"}",
        "{\"id\":\"eu\",\"url\":\"http://x\",\"z\":1}",
        "[]",
    ] {
        let r = c
            .post(us.url("/v1/_regions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
    }
    let after = get_text(&c, us.url("/v1/_regions")).await;
    assert_eq!(before, after);
    // a region that cannot be read to the end first is removed only by force: whatever it
    // acknowledged that nobody pulled would be lost
    let eu = start(dir.path(), "eu", &[("us", &us)]);
    let (code, err) = region(&us, &["add", "eu", &format!("http://{}", eu.addr)]);
    assert_eq!(code, 0, "{err}");
    eu.kill9();
    let (code, err) = region(&us, &["remove", "eu"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("409") && err.contains("region_not_caught_up"),
        "{err}"
    );
    assert_eq!(following(&c, &us).await, ["eu"], "nothing changed");
    let (code, err) = region(&us, &["remove", "eu", "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(following(&c, &us).await.is_empty());
    // a node without a cluster secret cannot replicate: adding a region to it is refused
    let alone = Process::start(&dir.path().join("alone"), &["--node-id", "alone"]);
    let (code, err) = region(&alone, &["add", "eu", "http://127.0.0.1:1"]);
    assert_ne!(code, 0);
    assert!(err.contains("cluster-secret"), "{err}");
}
