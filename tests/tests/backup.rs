//! Online backups against the real binary: `meridian backup` of a node under writes, the node
//! killed right after, `meridian restore` under a new node id, and every write acknowledged
//! before the backup started is there; bad input to both is refused with a clear error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_tests::{binary, eventually, get_json, http_client, Process};
use parking_lot::Mutex;
use serde_json::Value;

/// `meridian restore --from FROM --data-dir DATA --node-id ID`.
fn restore(from: &std::path::Path, data: &std::path::Path, id: &str) -> (bool, String, String) {
    meridian(&[
        "restore",
        "--from",
        from.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--node-id",
        id,
    ])
}

fn meridian(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(binary())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_writes_restores_every_write_acknowledged_before_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(&dir.path().join("a"), &["--node-id", "a"]);
    let c = http_client();
    let base = format!("http://{}", node.addr);
    let put = |id: String, n: u64| {
        let (c, url) = (c.clone(), format!("{base}/v1/users/{id}"));
        async move {
            c.patch(url)
                .header("content-type", "application/merge-patch+json")
                .body(format!("{{\"n\":{n}}}"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    };
    for i in 0..300 {
        assert!(put(format!("s{i}"), i).await);
    }
    // writers go on for the whole backup; each keeps the last n the node acknowledged
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = vec![];
    for w in 0..4 {
        let (acked, stop, c, base) = (acked.clone(), stop.clone(), c.clone(), base.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let ok = c
                    .patch(format!("{base}/v1/users/w{w}"))
                    .header("content-type", "application/merge-patch+json")
                    .body(format!("{{\"n\":{n}}}"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    acked.lock().insert(format!("w{w}"), n);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: HashMap<String, u64> = acked.lock().clone();
    let to = dir.path().join("backup");
    let url = format!("http://{}", node.addr);
    let (ok, out, err) = tokio::task::spawn_blocking({
        let to = to.clone();
        move || meridian(&["backup", &url, "--to", to.to_str().unwrap()])
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    let manifest: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(manifest["end"]["documents"], 304, "{manifest}");
    assert_eq!(manifest["header"]["node"], "a");
    // the node dies right after: only the backup is left
    stop.store(true, Ordering::Relaxed);
    node.kill9();
    for w in writers {
        let _ = w.await;
    }

    // bad input changes nothing
    let data = dir.path().join("a2");
    let (ok, _, err) = restore(&to, &data, "a");
    assert!(!ok && err.contains("new node id"), "{err}");
    assert!(!data.exists(), "nothing was made");
    let (ok, _, err) = meridian(&["backup", "http://127.0.0.1:1", "--to", to.to_str().unwrap()]);
    assert!(!ok && err.contains("not empty"), "{err}");
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    let whole = std::fs::read(to.join("meridian.backup")).unwrap();
    std::fs::write(cut.join("meridian.backup"), &whole[..whole.len() - 5]).unwrap();
    std::fs::copy(to.join("manifest.json"), cut.join("manifest.json")).unwrap();
    let (ok, _, err) = restore(&cut, &dir.path().join("x"), "a3");
    assert!(!ok && err.contains("truncated"), "{err}");

    // restored under a new id, every write acknowledged before the backup began is there
    let (ok, out, err) = restore(&to, &data, "a2");
    assert!(ok, "{err}");
    assert!(out.contains("restored 304 documents"), "{out}");
    let restored = Process::start(&data, &["--node-id", "a2"]);
    let get = |id: String| {
        let (c, url) = (c.clone(), restored.url(&format!("/v1/users/{id}")));
        async move {
            let v: Value = c.get(url).send().await.unwrap().json().await.unwrap();
            v["value"]["n"].as_u64()
        }
    };
    for i in 0..300 {
        assert_eq!(get(format!("s{i}")).await, Some(i), "s{i}");
    }
    for (id, n) in &before {
        let got = get(id.clone()).await.unwrap();
        assert!(
            got >= *n,
            "{id}: {got} < {n}, acknowledged before the backup began"
        );
    }
    // and it takes writes under its own id
    let r = c
        .patch(restored.url("/v1/users/s0"))
        .header("content-type", "application/merge-patch+json")
        .body("{\"after\":true}")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
}

#[tokio::test]
async fn a_backup_needs_an_admin_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    let (admin, entry) = meridian_tests::create_key("ops", "admin", "*");
    let (writer, writer_entry) = meridian_tests::create_key("app", "write", "users");
    std::fs::write(&file, entry + &writer_entry).unwrap();
    let node = Process::start(
        &dir.path().join("data"),
        &["--auth-file", file.to_str().unwrap()],
    );
    let url = format!("http://{}", node.addr);
    let to = dir.path().join("b1");
    let (ok, _, err) = meridian(&[
        "backup",
        &url,
        "--to",
        to.to_str().unwrap(),
        "--api-key",
        &writer,
    ]);
    assert!(!ok && err.contains("403"), "{err}");
    let to = dir.path().join("b2");
    let (ok, out, err) = meridian(&[
        "backup",
        &url,
        "--to",
        to.to_str().unwrap(),
        "--api-key",
        &admin,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("\"documents\":0"), "{out}");
    // a pace that is not a whole number of MiB/s is refused
    for bad in ["fast", "-1", "1.5"] {
        let r = meridian_tests::http_client()
            .get(node.url(&format!("/v1/_backup?max_mb_per_sec={bad}")))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
}

/// A node of a two-region cluster is backed up, then lost; it comes back from the backup under
/// a new id, joins through the surviving region (`meridian region add`, the lost id removed by
/// force), and converges: what it wrote before the backup, what reached the survivor from it
/// after, and what the survivor wrote meanwhile, in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_node_rejoins_under_a_new_id_and_converges_with_its_peer() {
    const SECRET: &str = "backup-rejoin-secret";
    let dir = tempfile::tempdir().unwrap();
    let c = http_client();
    let b = Process::start(
        &dir.path().join("b"),
        &["--node-id", "b", "--cluster-secret", SECRET],
    );
    let seed = format!("b=http://{}", b.addr);
    let a = Process::start(
        &dir.path().join("a"),
        &[
            "--node-id",
            "a",
            "--cluster-secret",
            SECRET,
            "--peer",
            &seed,
        ],
    );
    let region = |args: &[&str]| {
        let mut all = vec!["region"];
        all.extend_from_slice(args);
        let (ok, out, err) = meridian(&all);
        assert!(ok, "{args:?}: {err}");
        out
    };
    region(&[
        "add",
        "a",
        &format!("http://{}", a.addr),
        "--node",
        &b.url(""),
    ]);
    let put = |node: &Process, id: &str| {
        let (c, url) = (c.clone(), node.url(&format!("/v1/users/{id}")));
        async move {
            let r = c
                .put(url)
                .header("content-type", "application/json")
                .body(r#"{"v":1}"#)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    put(&a, "before").await;
    let to = dir.path().join("backup");
    let (ok, _, err) = meridian(&["backup", &a.url(""), "--to", to.to_str().unwrap()]);
    assert!(ok, "{err}");
    put(&a, "after-backup").await;
    put(&b, "from-b").await;
    let has = |node: &Process, id: &str| {
        let (c, url) = (c.clone(), node.url(&format!("/v1/users/{id}")));
        async move { c.get(url).send().await.is_ok_and(|r| r.status() == 200) }
    };
    eventually(
        "a's write after the backup reaches b",
        Duration::from_secs(10),
        || has(&b, "after-backup"),
    )
    .await;
    a.kill9();

    // back under a new id, seeded with b and added through it; the lost id removed for good
    let data = dir.path().join("a2");
    let (ok, _, err) = restore(&to, &data, "a2");
    assert!(ok, "{err}");
    let a2 = Process::start(
        &data,
        &[
            "--node-id",
            "a2",
            "--cluster-secret",
            SECRET,
            "--peer",
            &seed,
        ],
    );
    region(&["remove", "a", "--force", "--node", &b.url("")]);
    region(&[
        "add",
        "a2",
        &format!("http://{}", a2.addr),
        "--node",
        &b.url(""),
    ]);
    for id in ["before", "after-backup", "from-b"] {
        eventually(
            &format!("{id} on the restored node"),
            Duration::from_secs(10),
            || has(&a2, id),
        )
        .await;
    }
    put(&a2, "from-a2").await;
    eventually(
        "the restored node's write reaches b",
        Duration::from_secs(10),
        || has(&b, "from-a2"),
    )
    .await;
    let regions = get_json(&c, a2.url("/v1/_regions")).await;
    assert_eq!(regions["following"][0]["id"], "b", "{regions}");
    assert_eq!(regions["removed"][0]["id"], "a", "{regions}");
}
