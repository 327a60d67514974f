//! The live change feed end to end, against the real binary: order and completeness per
//! document, resuming with `Last-Event-ID` across a restart, replicated changes, a consumer that
//! falls behind, keep-alives, limits and bad headers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_tests::mesh::Mesh;
use meridian_tests::sse::{EventStream, SseEvent};
use meridian_tests::{eventually, http_client, Process};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);

async fn patch(c: &reqwest::Client, p: &Process, path: &str, body: Value) -> reqwest::Response {
    let r = c
        .patch(p.url(path))
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r
}

async fn open(
    c: &reqwest::Client,
    p: &Process,
    path: &str,
    headers: &[(&str, &str)],
) -> EventStream {
    match EventStream::open(c, &p.url(path), headers).await {
        Ok(s) => s,
        Err(r) => panic!("{path}: {} {}", r.status(), r.text().await.unwrap()),
    }
}

/// Reads `n` change events (failing on anything else, or if they do not come in time).
async fn changes(s: &mut EventStream, n: usize) -> Vec<SseEvent> {
    let mut out = vec![];
    while out.len() < n {
        let ev = s
            .next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {} of {n} events came", out.len()));
        assert_eq!(ev.event, "change", "{ev:?} after {out:?}");
        out.push(ev);
    }
    out
}

fn seq(ev: &SseEvent) -> u64 {
    ev.id
        .as_deref()
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_change_arrives_once_and_in_order_per_document() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(
        dir.path(),
        &["--node-id", "us", "--changes-keep-alive-ms", "200"],
    );
    let c = http_client();
    let docs = ["alice", "bob", "carol"];
    let mut per_doc = vec![];
    for d in docs {
        let mut s = open(&c, &node, &format!("/v1/users/{d}"), &[]).await;
        // a document stream starts with the document as it is: absent here
        let first = s.next_within(WAIT).await.unwrap();
        assert_eq!(first.event, "document");
        assert_eq!(first.json()["value"], Value::Null);
        per_doc.push(s);
    }
    let mut all = open(&c, &node, "/v1/users", &[]).await;

    const N: i64 = 30;
    let writers: Vec<_> = docs
        .iter()
        .map(|d| {
            let (c, url) = (c.clone(), node.url(&format!("/v1/users/{d}")));
            tokio::spawn(async move {
                for n in 1..=N {
                    let r = c
                        .patch(&url)
                        .header("content-type", "application/merge-patch+json")
                        .body(json!({ "n": n }).to_string())
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                }
                let r = c.delete(&url).send().await.unwrap();
                assert!(r.status().is_success());
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }

    for (d, s) in docs.iter().zip(per_doc.iter_mut()) {
        let evs = changes(s, N as usize + 1).await;
        let ns: Vec<Value> = evs.iter().map(|e| e.json()["value"]["n"].clone()).collect();
        let want: Vec<Value> = (1..=N).map(Value::from).chain([Value::Null]).collect();
        assert_eq!(ns, want, "{d}: every change once, in order");
        let last = evs.last().unwrap().json();
        assert_eq!(last["deleted"], true);
        for e in &evs {
            let j = e.json();
            assert_eq!(
                (j["collection"].as_str(), j["id"].as_str()),
                (Some("users"), Some(*d))
            );
            assert_eq!(j["node"], "us");
            assert!(
                j["hlc"].as_str().is_some_and(|h| h.starts_with("20")),
                "{j}"
            );
            assert!(j["automerge_url"]
                .as_str()
                .unwrap()
                .starts_with("automerge:"));
        }
        assert!(evs.windows(2).all(|w| seq(&w[0]) < seq(&w[1])));
    }
    // the collection stream: all of them, each document's in order, cursors increasing
    let evs = changes(&mut all, docs.len() * (N as usize + 1)).await;
    assert!(evs.windows(2).all(|w| seq(&w[0]) < seq(&w[1])));
    let mut seen: HashMap<String, Vec<Value>> = HashMap::new();
    for e in &evs {
        let j = e.json();
        seen.entry(j["id"].as_str().unwrap().into())
            .or_default()
            .push(j["value"]["n"].clone());
    }
    for d in docs {
        assert_eq!(seen[d].len(), N as usize + 1);
        assert_eq!(
            seen[d][..N as usize],
            (1..=N).map(Value::from).collect::<Vec<_>>()[..]
        );
    }
    // an idle stream gets keep-alive comments, and nothing else
    let before = all.comments;
    let extra = all.idle(Duration::from_millis(700)).await;
    assert!(extra.is_empty(), "{extra:?}");
    assert!(
        all.comments >= before + 2,
        "keep-alives: {}",
        all.comments - before
    );
}

#[tokio::test]
async fn a_stream_resumes_from_last_event_id_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = http_client();
    let node = Process::start(dir.path(), &["--node-id", "us"]);
    let mut s = open(&c, &node, "/v1/users/alice", &[]).await;
    assert_eq!(s.next_within(WAIT).await.unwrap().event, "document");
    for n in 1..=5 {
        patch(&c, &node, "/v1/users/alice", json!({ "n": n })).await;
    }
    let seen = changes(&mut s, 5).await;
    let cursor = seen.last().unwrap().id.clone().unwrap();
    eprintln!("cursor {cursor}");
    drop(s);
    // missed: 6..8 before a kill -9, 9..10 after the restart
    for n in 6..=8 {
        patch(&c, &node, "/v1/users/alice", json!({ "n": n })).await;
    }
    node.kill9();
    let node = Process::start(dir.path(), &["--node-id", "us"]);
    for n in 9..=10 {
        patch(&c, &node, "/v1/users/alice", json!({ "n": n })).await;
    }
    let mut s = open(&c, &node, "/v1/users/alice", &[("last-event-id", &cursor)]).await;
    let resumed = changes(&mut s, 5).await;
    let ns: Vec<i64> = resumed
        .iter()
        .map(|e| e.json()["value"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ns,
        vec![6, 7, 8, 9, 10],
        "nothing lost, nothing repeated after {cursor}"
    );
    // live again after the backfill
    patch(&c, &node, "/v1/users/alice", json!({ "n": 11 })).await;
    assert_eq!(changes(&mut s, 1).await[0].json()["value"]["n"], 11);
    drop(s);

    // a cursor of another data dir: one reset, then live
    let mut s = open(
        &c,
        &node,
        "/v1/users",
        &[("last-event-id", "0123456789abcdef-3")],
    )
    .await;
    let ev = s.next_within(WAIT).await.unwrap();
    assert_eq!(ev.event, "reset", "{ev:?}");
    patch(&c, &node, "/v1/users/bob", json!({ "n": 1 })).await;
    assert_eq!(changes(&mut s, 1).await[0].json()["id"], "bob");
    drop(s);

    // events older than the retention are trimmed (at start-up, then every 10 s): a cursor
    // before them gets a reset
    node.terminate();
    let node = Process::start(dir.path(), &["--node-id", "us", "--changes-retention", "2"]);
    let mut s = open(&c, &node, "/v1/users/alice", &[("last-event-id", &cursor)]).await;
    let ev = s.next_within(WAIT).await.unwrap();
    assert_eq!(ev.event, "reset", "{ev:?} after {cursor}");
}

#[tokio::test]
async fn replicated_changes_appear_and_a_token_holds_the_stream_back() {
    let mesh = Mesh::start(&[]).await;
    let c = http_client();
    let (a, b) = (mesh.node("a"), mesh.node("b"));
    let mut on_b = open(&c, b, "/v1/users/alice", &[]).await;
    assert_eq!(on_b.next_within(WAIT).await.unwrap().event, "document");
    let r = patch(&c, a, "/v1/users/alice", json!({ "name": "Alice" })).await;
    let token = r.headers()["meridian-session"].to_str().unwrap().to_owned();
    let ev = changes(&mut on_b, 1).await.remove(0).json();
    assert_eq!(ev["value"]["name"], "Alice");
    assert_eq!(ev["node"], "a", "made on a, seen on b");

    // c with a's token: the stream starts only once c covers the write
    let mut on_c = open(
        &c,
        mesh.node("c"),
        "/v1/users/alice",
        &[("meridian-session", &token)],
    )
    .await;
    let first = on_c.next_within(WAIT).await.unwrap();
    assert_eq!(first.event, "document");
    assert_eq!(first.json()["value"]["name"], "Alice");

    // cut c off: a token carrying a newer write of a cannot be covered, and says so
    mesh.partition("c");
    let r = patch(&c, a, "/v1/users/alice", json!({ "name": "Alicia" })).await;
    let token = r.headers()["meridian-session"].to_str().unwrap().to_owned();
    let r = EventStream::open(
        &c,
        &mesh.node("c").url("/v1/users/alice"),
        &[
            ("meridian-session", &token),
            ("meridian-max-wait-ms", "200"),
        ],
    )
    .await
    .expect_err("c cannot cover the token");
    assert_eq!(error_of(r).await, (503, "session_unavailable".into()));
    mesh.heal();
    let ev = changes(&mut on_c, 1).await.remove(0).json();
    assert_eq!(ev["value"]["name"], "Alicia");
}

#[tokio::test]
async fn a_consumer_that_falls_behind_is_cut_off_without_slowing_writes() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &["--node-id", "us", "--changes-buffer", "8"]);
    let c = http_client();
    // opened and never read while the writes go on: the socket's buffers fill, then its queue.
    // Through a client without a total timeout: on a slow machine the writes take longer than
    // `http_client`'s 10 s, which would end the stream on the test's side, not the node's
    let slow_client = reqwest::Client::new();
    let mut slow = open(&slow_client, &node, "/v1/users", &[]).await;
    let big = "x".repeat(32 << 10);
    const N: usize = 400;
    let start = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (c, node_url, big) = (c.clone(), node.url(""), big.clone());
            tokio::spawn(async move {
                for i in (w..N).step_by(8) {
                    let r = c
                        .put(format!("{node_url}/v1/users/u{i}"))
                        .header("content-type", "application/json")
                        .body(json!({ "i": i, "pad": big }).to_string())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    eprintln!(
        "{N} writes of 32 KiB in {:?} beside a stalled stream",
        start.elapsed()
    );

    // reading now: what fit in the buffers, then `behind`, then the end
    let mut got = vec![];
    let behind = loop {
        match slow.next_within(WAIT).await {
            Some(ev) if ev.event == "change" => got.push(ev),
            Some(ev) => break ev,
            None => panic!(
                "the stream ended without saying why, after {} events",
                got.len()
            ),
        }
    };
    assert_eq!(behind.event, "behind", "{behind:?}");
    assert!(got.len() < N, "it fell behind");
    assert!(
        slow.next_within(WAIT).await.is_none(),
        "closed after `behind`"
    );
    let metrics = meridian_tests::get_text(&c, node.url("/metrics")).await;
    assert!(
        metrics.contains("meridian_change_streams_behind_total 1"),
        "{metrics}"
    );

    // resuming from the last event it got delivers the rest, once each
    let cursor = got.last().unwrap().id.clone().unwrap();
    let mut rest = open(&c, &node, "/v1/users", &[("last-event-id", &cursor)]).await;
    let more = changes(&mut rest, N - got.len()).await;
    let mut ids: Vec<i64> = got
        .iter()
        .chain(&more)
        .map(|e| e.json()["value"]["i"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..N as i64).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_headers_and_the_stream_limit_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(
        dir.path(),
        &["--node-id", "us", "--changes-max-streams", "2"],
    );
    let c = http_client();
    let refused = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let (c, url) = (c.clone(), node.url(path));
        async move {
            let r = EventStream::open(&c, &url, &headers)
                .await
                .expect_err("refused");
            error_of(r).await
        }
    };
    for cursor in [
        "",
        "42",
        "nothex0123456789-1",
        "0123456789abcdef-x",
        "0123456789abcdef",
    ] {
        let want = (400, "bad_request".to_owned());
        assert_eq!(
            refused("/v1/users/alice", vec![("last-event-id", cursor)]).await,
            want,
            "{cursor:?}"
        );
        assert_eq!(
            refused("/v1/users", vec![("last-event-id", cursor)]).await,
            want
        );
    }
    assert_eq!(
        refused("/v1/users/alice?conflicts=true", vec![]).await.0,
        400
    );
    assert_eq!(refused("/v1/users?limit=5", vec![]).await.0, 400);
    assert_eq!(refused("/v1/users?after=a", vec![]).await.0, 400);
    assert_eq!(
        refused("/v1/bad%20name", vec![]).await,
        (400, "invalid_id".into())
    );

    let one = open(&c, &node, "/v1/users", &[]).await;
    let _two = open(&c, &node, "/v1/users/alice", &[]).await;
    let r = EventStream::open(&c, &node.url("/v1/users/bob"), &[])
        .await
        .expect_err("full");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(error_of(r).await, (503, "overloaded".into()));
    // nothing of that changed anything, and a closed stream frees its slot
    assert_eq!(
        c.get(node.url("/v1/users/alice"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    drop(one);
    eventually("a slot frees up", WAIT, || {
        let (c, url) = (c.clone(), node.url("/v1/users/bob"));
        async move { EventStream::open(&c, &url, &[]).await.is_ok() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_during_writes_never_repeats_what_its_document_event_shows() {
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &["--node-id", "us"]);
    let c = http_client();
    patch(&c, &node, "/v1/users/hot", json!({ "n": 0 })).await;
    // a writer bumps n without pause while streams open: a write often becomes durable between
    // a stream's registration and its read of the document
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (c, url, writing) = (c.clone(), node.url("/v1/users/hot/ops"), writing.clone());
        tokio::spawn(async move {
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let ops = json!({"ops": [{"op": "increment", "path": "/n", "by": 1}]});
                c.post(&url).json(&ops).send().await.unwrap();
            }
        })
    };
    for _ in 0..40 {
        let mut s = open(&c, &node, "/v1/users/hot", &[]).await;
        let doc = s.next_within(WAIT).await.unwrap();
        assert_eq!(doc.event, "document");
        let shown = doc.json()["value"]["n"].as_i64().unwrap();
        let next = s.next_within(WAIT).await.unwrap();
        assert_eq!(next.event, "change");
        let n = next.json()["value"]["n"].as_i64().unwrap();
        assert!(
            n > shown,
            "the first change shows n = {n}, the document already {shown}"
        );
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
}
