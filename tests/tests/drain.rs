//! Draining before a stop, against real processes: a node told to stop (SIGTERM with
//! `--drain-secs`, or `meridian drain`) sends its sync clients and change streams to other
//! regions at once, refuses new ones with 503 `draining` naming a peer, says not ready, serves
//! plain requests on, and stops once quiet (or at the deadline).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use meridian_sync::repo::Message;
use meridian_tests::http_client;
use meridian_tests::mesh::Mesh;
use meridian_tests::sse::EventStream;
use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A sync client that has joined.
async fn joined(addr: &str) -> Socket {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sync"))
        .await
        .unwrap();
    let join = Message::Join {
        sender: "device".into(),
        versions: vec!["1".into()],
        metadata: None,
    };
    ws.send(Ws::Binary(join.encode().into())).await.unwrap();
    match ws.next().await {
        Some(Ok(Ws::Binary(b))) => assert!(matches!(Message::decode(&b), Ok(Message::Peer { .. }))),
        other => panic!("expected peer, got {other:?}"),
    }
    ws
}

/// The close code the node ends `ws` with, within `limit`.
async fn close_code(ws: &mut Socket, limit: Duration) -> Option<CloseCode> {
    tokio::time::timeout(limit, async {
        while let Some(m) = ws.next().await {
            if let Ok(Ws::Close(frame)) = m {
                return frame.map(|f| f.code);
            }
        }
        None
    })
    .await
    .expect("the node closes the sync socket in time")
}

async fn status_and_body(c: &reqwest::Client, url: String, sse: bool) -> (u16, Value) {
    let mut req = c.get(url);
    if sse {
        req = req.header("accept", "text/event-stream");
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_sends_clients_elsewhere_serves_requests_on_and_stops_when_quiet() {
    let mut mesh = Mesh::start(&["--drain-secs", "20"]).await;
    let c = http_client();
    let a = mesh.node("a");
    let (addr, url) = (a.addr.clone(), |p: &str| {
        format!("http://{}{p}", mesh.node("a").addr)
    });
    let mut ws = joined(&addr).await;
    let mut stream = EventStream::open(&c, &url("/v1/users"), &[])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status()));

    let t0 = Instant::now();
    a.signal_term();
    // the sync client is told to go ("going away"), and the change stream ends, at once
    assert_eq!(
        close_code(&mut ws, Duration::from_secs(2)).await,
        Some(CloseCode::Away)
    );
    tokio::time::timeout(Duration::from_secs(2), async {
        while stream.next().await.is_some() {}
    })
    .await
    .expect("the change stream ends");
    eprintln!(
        "sync socket and stream ended {:?} after SIGTERM",
        t0.elapsed()
    );

    // while it drains: no new sync client or stream (503 naming a peer), not ready, requests served
    let (s, v) = status_and_body(&c, url("/v1/users"), true).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("draining")),
        "{v}"
    );
    let elsewhere = v["error"]["region"].as_str().unwrap().to_owned();
    assert!(["b", "c"].contains(&elsewhere.as_str()), "{v}");
    let peer_url = v["error"]["url"].as_str().unwrap().to_owned();
    assert!(peer_url.starts_with("http://"), "{v}");
    let err = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sync"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    let (s, v) = status_and_body(&c, url("/readyz"), false).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("draining")),
        "{v}"
    );
    for i in 0..10 {
        let r = c
            .put(url(&format!("/v1/users/d{i}")))
            .header("content-type", "application/json")
            .body("{\"n\":1}")
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "a write while draining: {}",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        mesh.nodes.get_mut("a").unwrap().exited().is_none(),
        "still draining while asked"
    );

    // quiet for a second: it stops, well before the 20 s deadline, cleanly
    let quiet = Instant::now();
    let status = loop {
        if let Some(s) = mesh.nodes.get_mut("a").unwrap().exited() {
            break s;
        }
        assert!(
            quiet.elapsed() < Duration::from_secs(10),
            "the node did not stop when quiet"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
    eprintln!("stopped {:?} after the last request", quiet.elapsed());
    // what it took while draining is on the others
    let b = mesh.node("b").url("/v1/users/d9");
    meridian_tests::eventually("the last write reached b", Duration::from_secs(10), || {
        let (c, b) = (c.clone(), b.clone());
        async move { c.get(b).send().await.unwrap().status() == 200 }
    })
    .await;
}

#[tokio::test]
async fn meridian_drain_stops_a_node_through_its_admin_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    let (admin, entry) = meridian_tests::create_key("ops", "admin", "*");
    let (reader, reader_entry) = meridian_tests::create_key("reader", "read", "users");
    std::fs::write(&file, entry + &reader_entry).unwrap();
    let mut p = meridian_tests::Process::start(
        &dir.path().join("data"),
        &["--auth-file", file.to_str().unwrap(), "--drain-secs", "20"],
    );
    let base = format!("http://{}", p.addr);
    // bad input: no key, a key without admin; nothing happens
    for key in [None, Some(reader.as_str())] {
        let mut args = vec!["drain", base.as_str()];
        if let Some(k) = key {
            args.extend(["--api-key", k]);
        }
        let (code, out) = meridian_tests::run_to_exit(&args, &[]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("401") || out.contains("403"), "{out}");
    }
    assert!(p.exited().is_none());
    let out = std::process::Command::new(meridian_tests::binary())
        .args(["drain", &base, "--api-key", &admin])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("\"draining\":true"), "{said}");
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = p.exited() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the node did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", p.log_lines().join("\n"));
}
