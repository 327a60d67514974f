//! Scrub and self-heal end to end: bytes of stored documents flipped in a stopped node's
//! database (below sled's own checksums, as a disk or memory fault that sled did not see
//! would) are found, refused while no peer can help, and healed from the peers once they can;
//! and a log damaged with acknowledged writes after the damage is repaired with the loss
//! accepted, after which the peers give every document back.

use std::process::Command;
use std::time::Duration;

use meridian_tests::eventually;
use meridian_tests::mesh::Mesh;
use serde_json::{json, Value};

async fn get(c: &reqwest::Client, url: String) -> (u16, Value, Option<String>) {
    let r = c.get(url).send().await.unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        r.status().as_u16(),
        r.json().await.unwrap_or(Value::Null),
        retry,
    )
}

async fn patch(c: &reqwest::Client, url: String, body: Value) -> u16 {
    c.patch(url)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Flips one bit in the middle of the first value under `prefix` (a record kind, then
/// `collection NUL id`), through sled, so that sled's checks pass and only Meridian's catch it.
fn flip(db: &sled::Db, prefix: &[u8]) {
    let (k, v) = db
        .scan_prefix(prefix)
        .next()
        .expect("a stored value")
        .unwrap();
    let mut v = v.to_vec();
    let middle = v.len() / 2;
    v[middle] ^= 0x08;
    db.insert(k, v).unwrap();
}

fn key(kind: u8, id: &str) -> Vec<u8> {
    let mut k = vec![kind];
    k.extend_from_slice(b"bulk\0");
    k.extend_from_slice(id.as_bytes());
    k.push(0); // increments: `I collection NUL id NUL n`
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_bytes_are_found_refused_and_healed_from_a_peer() {
    let c = meridian_tests::http_client();
    let mut cl = Mesh::start(&["--scrub-per-second", "5000", "--scrub-every-secs", "1"]).await;
    for i in 0..30 {
        for round in 0..3 {
            let url = cl.node("a").url(&format!("/v1/bulk/d{i}"));
            assert_eq!(
                patch(&c, url, json!({ "i": i, "round": round })).await / 100,
                2
            );
        }
    }
    let expected = |i: u32| json!({ "i": i, "round": 2 });
    eventually(
        "b holds every document",
        Duration::from_secs(20),
        || async {
            let (s, body, _) = get(&c, cl.node("b").url("/v1/bulk?limit=100")).await;
            s == 200 && body["items"].as_array().map_or(0, Vec::len) == 30
        },
    )
    .await;

    // --- damage b's copy: an increment of d7 (the history) and the record of d8 (the JSON)
    for id in ["a", "b", "c"] {
        assert!(cl.nodes.remove(id).unwrap().terminate().success());
    }
    {
        let db = sled::open(cl.data_dir("b").join("db")).unwrap();
        flip(&db, &key(b'I', "d7"));
        let record = key(b'D', "d8");
        flip(&db, &record[..record.len() - 1]);
        db.flush().unwrap();
    }

    // --- alone, b finds both and refuses them (no peer can make them whole), serves the rest
    cl.start_node("b");
    let b_addr = cl.node("b").addr.clone();
    let b = |path: &str| format!("http://{b_addr}{path}");
    eventually(
        "the scrub finds the damaged history",
        Duration::from_secs(20),
        || async {
            let (_, st, _) = get(&c, b("/v1/status")).await;
            st["scrub"]["damaged_count"] == 2 && st["scrub"]["passes"].as_u64() >= Some(1)
        },
    )
    .await;
    let (status, body, retry) = get(&c, b("/v1/bulk/d8")).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "document_damaged", "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(
        patch(&c, b("/v1/bulk/d7"), json!({"x": 1})).await,
        503,
        "a write to a damaged history is refused, not built on it"
    );
    let (status, body, _) = get(&c, b("/v1/bulk/d9")).await;
    assert_eq!((status, &body["value"]), (200, &expected(9)));
    let (_, st, _) = get(&c, b("/v1/status")).await;
    let damaged = st["scrub"]["damaged"].as_array().unwrap();
    let ids: Vec<&str> = damaged.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d7", "d8"], "{st}");
    assert!(
        damaged
            .iter()
            .all(|d| d["what"].as_str().unwrap().contains("checksum")),
        "{st}"
    );
    let (_, ready, _) = get(&c, b("/readyz")).await;
    assert_eq!(
        ready["ready"], true,
        "one damaged document does not take the node out"
    );

    // --- the peers come back: both are healed, served and writable again
    cl.start_node("a");
    cl.start_node("c");
    eventually("both documents healed", Duration::from_secs(40), || async {
        let (_, st, _) = get(&c, b("/v1/status")).await;
        st["scrub"]["damaged_count"] == 0 && st["scrub"]["healed"] == 2
    })
    .await;
    for i in [7, 8] {
        let (status, body, _) = get(&c, b(&format!("/v1/bulk/d{i}"))).await;
        assert_eq!((status, &body["value"]), (200, &expected(i)), "d{i}");
    }
    assert_eq!(patch(&c, b("/v1/bulk/d7"), json!({"x": 1})).await, 200);
    eventually(
        "the write after the heal replicates",
        Duration::from_secs(20),
        || async {
            let (_, body, _) = get(&c, cl.node("a").url("/v1/bulk/d7")).await;
            body["value"]["x"] == 1
        },
    )
    .await;
    let metrics = meridian_tests::get_text(&c, b("/metrics")).await;
    assert!(
        metrics.contains("meridian_damage_healed_documents_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meridian_documents_damaged 0"),
        "{metrics}"
    );
    // a full pass after the heal finds nothing
    let passes = get(&c, b("/v1/status")).await.1["scrub"]["passes"]
        .as_u64()
        .unwrap();
    eventually("a clean pass", Duration::from_secs(20), || async {
        let (_, st, _) = get(&c, b("/v1/status")).await;
        st["scrub"]["passes"].as_u64().unwrap() > passes + 1 && st["scrub"]["found"] == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_repair_that_loses_batches_gets_every_document_back_from_the_peers() {
    let c = meridian_tests::http_client();
    let mut cl = Mesh::start(&["--anti-entropy-secs", "2"]).await;
    for i in 0..40 {
        let url = cl.node("b").url(&format!("/v1/bulk/u{i}"));
        let r = c.put(url).json(&json!({ "i": i })).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    eventually("a holds b's writes", Duration::from_secs(20), || async {
        let (_, body, _) = get(&c, cl.node("a").url("/v1/bulk?limit=100")).await;
        body["items"].as_array().map_or(0, Vec::len) == 40
    })
    .await;
    // within the checkpoint interval: b's sled lacks these, only its log has them
    cl.nodes.remove("b").unwrap().kill9();
    for id in ["a", "c"] {
        assert!(cl.nodes.remove(id).unwrap().terminate().success());
    }
    meridian_tests::damage_newest_log_segment(cl.data_dir("b"));

    let repair = |extra: &[&str]| {
        let out = Command::new(meridian_tests::binary())
            .arg("repair")
            .args(extra)
            .arg(cl.data_dir("b"))
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = repair(&[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("--accept-loss"), "{text}");
    let (code, text) = repair(&["--accept-loss"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("lost on this node: bulk/u"), "{text}");
    assert!(text.contains("accepting the loss"), "{text}");

    // --- alone, b serves reads but takes no write: its lost writes may be at its peers
    cl.start_node("b");
    let b_addr = cl.node("b").addr.clone();
    let b = |path: &str| format!("http://{b_addr}{path}");
    let (status, body, _) = get(&c, b("/v1/bulk/u0")).await;
    assert_eq!((status, &body["value"]), (200, &json!({"i": 0})), "{body}");
    let r = c
        .put(b("/v1/bulk/new"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "recovering", "{body}");
    let (status, ready, _) = get(&c, b("/readyz")).await;
    assert_eq!(status, 503, "{ready}");
    let (_, st, _) = get(&c, b("/v1/status")).await;
    assert_eq!(st["storage"]["state"], "recovering", "{st}");

    // --- the peers are back: every document comes back to b, and b takes writes again
    cl.start_node("a");
    cl.start_node("c");
    eventually("b takes writes again", Duration::from_secs(40), || async {
        get(&c, b("/readyz")).await.0 == 200
    })
    .await;
    eventually(
        "b holds every document again",
        Duration::from_secs(40),
        || async {
            for i in 0..40 {
                let (status, body, _) = get(&c, b(&format!("/v1/bulk/u{i}"))).await;
                if status != 200 || body["value"] != json!({ "i": i }) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    for i in [0, 39] {
        assert_eq!(
            patch(&c, b(&format!("/v1/bulk/u{i}")), json!({"after": 1})).await,
            200
        );
    }
    eventually(
        "b's new writes replicate",
        Duration::from_secs(20),
        || async {
            let (_, body, _) = get(&c, cl.node("a").url("/v1/bulk/u39")).await;
            body["value"] == json!({"i": 39, "after": 1})
        },
    )
    .await;
}
