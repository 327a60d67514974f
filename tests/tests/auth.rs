//! API keys against the real binary: `meridian key create`, rotation by SIGHUP under load, a
//! broken file that keeps the old keys, the loopback rule, failed authentication limited per
//! client address (two loopback addresses), keys kept out of the log, and `/v1/sync`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_tests::{create_key, eventually, http_client, run_to_exit, Process};

fn write_file(path: &Path, entries: &[&str]) {
    // written whole, then renamed: the node never reads half a file
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, entries.concat()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A node whose auth file holds one new key: (its directory, the node, the key); the node is
/// dropped (killed) before its directory.
fn node_with_key(
    name: &str,
    access: &str,
    collections: &str,
) -> (tempfile::TempDir, Process, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let (key, entry) = create_key(name, access, collections);
    write_file(&file, &[&entry]);
    let p = Process::start(
        &dir.path().join("data"),
        &["--auth-file", file.to_str().unwrap()],
    );
    (dir, p, key)
}

fn hup(p: &Process) {
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(p.pid(), libc::SIGHUP) };
}

async fn status_with(c: &reqwest::Client, p: &Process, key: &str, path: &str) -> u16 {
    c.get(p.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_rotate_on_sighup_without_failing_a_request_that_holds_a_key_valid_in_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let (old, old_entry) = create_key("old", "write", "users");
    let (both, both_entry) = create_key("both", "write", "users");
    let (new, new_entry) = create_key("new", "write", "users");
    write_file(&file, &[&old_entry, &both_entry]);
    let p = Process::start(
        &dir.path().join("data"),
        &["--auth-file", file.to_str().unwrap()],
    );
    let c = http_client();
    assert_eq!(status_with(&c, &p, &old, "/v1/users").await, 200);
    assert_eq!(status_with(&c, &p, &new, "/v1/users").await, 401);

    // four writers with the key that stays, for the whole rotation
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = vec![];
    for w in 0..4 {
        let (c, url, key, stop, done) = (
            c.clone(),
            p.url(&format!("/v1/users/w{w}")),
            both.clone(),
            stop.clone(),
            done.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .patch(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/merge-patch+json")
                    .body(format!("{{\"n\":{i}}}"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "write {i}: {}", r.status());
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    eventually("writes under way", Duration::from_secs(10), || {
        let d = done.load(Ordering::Relaxed);
        async move { d > 50 }
    })
    .await;

    // rotate: old goes, new comes
    write_file(&file, &[&both_entry, &new_entry]);
    hup(&p);
    eventually("the new key works", Duration::from_secs(5), || {
        let (c, p, new) = (&c, &p, &new);
        async move { status_with(c, p, new, "/v1/users").await == 200 }
    })
    .await;
    assert_eq!(status_with(&c, &p, &old, "/v1/users").await, 401);

    // a broken file keeps the keys in force, and says why
    std::fs::write(&file, "[[keys]]\nname = \"x\"\n").unwrap();
    hup(&p);
    let mut said = false;
    for _ in 0..100 {
        if p.log_lines()
            .iter()
            .any(|l| l.contains("auth file is broken"))
        {
            said = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(said, "the broken file is logged");
    assert_eq!(status_with(&c, &p, &new, "/v1/users").await, 200);

    let before = done.load(Ordering::Relaxed);
    eventually(
        "more writes after the rotations",
        Duration::from_secs(10),
        || {
            let d = done.load(Ordering::Relaxed);
            async move { d > before + 50 }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("no writer saw a failed request");
    }
}

#[tokio::test]
async fn a_public_address_without_keys_is_refused_unless_insecure_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let (code, err) = run_to_exit(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("without API keys") && err.contains("--auth-file"),
        "{err}"
    );

    let p = Process::start(&data, &["--listen", "0.0.0.0:0", "--insecure-no-auth"]);
    let log = p.log_lines().join("\n");
    assert!(log.contains("INSECURE"), "{log}");
    let port = p.addr.rsplit(':').next().unwrap();
    let status: serde_json::Value = http_client()
        .get(format!("http://127.0.0.1:{port}/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        status["auth"]
            .as_str()
            .unwrap()
            .contains("insecure-no-auth"),
        "{status}"
    );

    let (code, err) = run_to_exit(
        &[
            "serve",
            "--auth-file",
            "x.toml",
            "--insecure-no-auth",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    let (code, err) = run_to_exit(
        &[
            "serve",
            "--auth-file",
            "/nonexistent.toml",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the auth file"), "{err}");
}

/// The limit applies per client address: the node sees 127.0.0.1 and 127.0.0.2 apart.
#[tokio::test]
async fn many_wrong_keys_from_one_address_are_slowed_down_and_another_address_is_not() {
    let (_dir, p, key) = node_with_key("app", "read", "users");
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let (attacker, neighbour) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let mut statuses = vec![];
    for i in 0..40 {
        let guess = format!("mdk_{i:064x}");
        statuses.push(status_with(&attacker, &p, &guess, "/v1/users").await);
    }
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(statuses[0] == 401 && limited >= 15, "{statuses:?}");
    assert_eq!(status_with(&attacker, &p, &key, "/v1/users").await, 429);
    assert_eq!(status_with(&neighbour, &p, &key, "/v1/users").await, 200);
    // the episode is logged once, not per refused request
    let log = p.log_lines();
    let warned = log.iter().filter(|l| l.contains("too many failed")).count();
    assert_eq!(warned, 1, "{log:#?}");
}

/// Refusals are logged with the key's name; neither the header's key nor a query parameter's
/// ever reaches the log, and `/v1/sync` takes the key as a browser's WebSocket sends it.
#[tokio::test]
async fn refusals_are_logged_by_key_name_and_keys_never_reach_the_log() {
    let (_dir, p, key) = node_with_key("reader-app", "read", "users");
    let c = http_client();
    assert_eq!(status_with(&c, &p, &key, "/v1/settings").await, 403);
    let r = c
        .patch(p.url(&format!("/v1/users/a?access_token={key}")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(p.url(&format!("/v1/settings?access_token={key}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // the sync socket: no key, no upgrade; the key as a query parameter, the upgrade
    let ws = |q: &str| format!("ws://{}/v1/sync{q}", p.addr);
    let err = tokio_tungstenite::connect_async(ws("")).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    let (socket, resp) = tokio_tungstenite::connect_async(ws(&format!("?access_token={key}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    drop(socket);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = p.log_lines().join("\n");
    assert!(
        log.contains("reader-app") && log.contains("refused: 403"),
        "{log}"
    );
    assert!(!log.contains(&key), "a key reached the log:\n{log}");
    assert!(!log.contains(&key["mdk_".len()..]), "a key reached the log");
}

/// The client library sends its key on every request and on the sync socket; without one it
/// gets the node's 401, not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_carries_its_key_over_http_and_sync() {
    use meridian_client::Client;
    use serde_json::json;
    let (_dir, p, key) = node_with_key("app", "write", "users");
    let base = format!("http://{}", p.addr);

    let anonymous = Client::new([base.clone()]).unwrap();
    let err = anonymous.get("users", "alice").await.unwrap_err();
    assert_eq!(err.code(), Some("unauthorized"), "{err}");

    let client = Client::builder([base]).api_key(&key).build().unwrap();
    client
        .put("users", "alice", &json!({"name": "Alice"}))
        .await
        .unwrap();
    let err = client.put("settings", "s", &json!({})).await.unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");

    meridian_tests::replica_round_trip(&client).await;
}

/// A node catches SIGHUP (and SIGTERM) from the moment it says it serves: the signals' default
/// action would kill it. SIGHUP sent on the very line that gives the address.
#[tokio::test]
async fn a_sighup_right_after_the_start_reloads_instead_of_killing_the_node() {
    for _ in 0..5 {
        let (_dir, p, key) = node_with_key("app", "read", "users");
        hup(&p);
        assert_eq!(
            status_with(&http_client(), &p, &key, "/v1/users").await,
            200
        );
    }
}
