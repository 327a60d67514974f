//! `/v1/sync` over a real socket (the router on a loopback listener): bad input, oversized and
//! text frames, a client that stops reading, a client that goes silent. Each time the node
//! answers with an error or a close, applies nothing, and serves on.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use meridian_crdt::{DocKey, DocumentId, Edit, Store, StoreConfig};
use meridian_http::{app, AppState, Options};
use meridian_sync::repo::{Message, SyncLimits};
use tokio_tungstenite::tungstenite::Message as Ws;

struct Node {
    addr: String,
    store: Store,
    _dir: tempfile::TempDir,
}

async fn node(limits: SyncLimits) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let mut c = StoreConfig::new(dir.path());
    c.node_id = Some("eu".into());
    let store = Store::open(c).unwrap();
    let options = Options {
        client_limits: limits,
        ..Options::new("eu")
    };
    let state = AppState::build(store.clone(), options).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app(state)).await.unwrap() });
    Node {
        addr,
        store,
        _dir: dir,
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(n: &Node) -> Socket {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/sync", n.addr))
        .await
        .unwrap();
    ws
}

fn join(me: &str, version: &str) -> Ws {
    Ws::Binary(
        Message::Join {
            sender: me.into(),
            versions: vec![version.into()],
            metadata: None,
        }
        .encode()
        .into(),
    )
}

/// Reads until the node closes: the protocol messages it sent, and whether a close came.
async fn until_closed(ws: &mut Socket) -> (Vec<Message>, bool) {
    let mut msgs = vec![];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Ws::Binary(b)))) => msgs.push(Message::decode(&b).unwrap()),
            Ok(Some(Ok(Ws::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return (msgs, true),
            Ok(Some(Ok(_))) => {}
            Err(_) => return (msgs, false),
        }
    }
}

async fn put(n: &Node, id: &str) {
    let k = DocKey::new("users", id).unwrap();
    n.store
        .write(
            &k,
            Edit::Patch(serde_json::json!({"a": 1}).as_object().unwrap().clone()),
            None,
        )
        .await
        .unwrap();
}

/// A client that works: join, then a request for `id` answered with a sync message.
async fn still_serves(n: &Node, id: &str) {
    let mut ws = connect(n).await;
    ws.send(join("ok", "1")).await.unwrap();
    let Some(Ok(Ws::Binary(b))) = ws.next().await else {
        panic!("no peer message")
    };
    assert!(matches!(Message::decode(&b).unwrap(), Message::Peer { .. }));
    let doc = DocumentId::of(&DocKey::new("users", id).unwrap());
    let d = meridian_crdt::Document::new(meridian_crdt::ActorId::from([0xaa; 16].as_slice()));
    let data = d.generate_sync(&mut Default::default()).unwrap();
    let req = Message::Request {
        sender: "ok".into(),
        target: "meridian-eu".into(),
        doc,
        data,
    };
    ws.send(Ws::Binary(req.encode().into())).await.unwrap();
    let Some(Ok(Ws::Binary(b))) = ws.next().await else {
        panic!("no answer")
    };
    assert!(
        matches!(Message::decode(&b).unwrap(), Message::Sync { .. }),
        "served"
    );
}

#[tokio::test]
async fn bad_input_gets_an_error_or_a_close_and_the_node_serves_on() {
    let n = node(SyncLimits {
        max_message_bytes: 4096,
        ..SyncLimits::default()
    })
    .await;
    put(&n, "alice").await;
    let before = n
        .store
        .read_state(&DocKey::new("users", "alice").unwrap())
        .unwrap();
    let doc = DocumentId::of(&DocKey::new("users", "alice").unwrap());
    let sync_for = |sender: &str| {
        Ws::Binary(
            Message::Sync {
                sender: sender.into(),
                target: "meridian-eu".into(),
                doc,
                data: vec![0x42, 1, 2, 3],
            }
            .encode()
            .into(),
        )
    };
    let cases: Vec<(&str, Vec<Ws>, Option<&str>)> = vec![
        (
            "random bytes",
            vec![Ws::Binary(vec![0xde, 0xad, 0xbe, 0xef].into())],
            Some("malformed"),
        ),
        (
            "malformed CBOR after join",
            vec![join("c", "1"), Ws::Binary(vec![0xa1, 0x64].into())],
            Some("malformed"),
        ),
        (
            "an unknown type",
            vec![
                join("c", "1"),
                Ws::Binary({
                    let mut e = minicbor::Encoder::new(Vec::new());
                    e.map(1)
                        .unwrap()
                        .str("type")
                        .unwrap()
                        .str("teleport")
                        .unwrap();
                    e.into_writer().into()
                }),
            ],
            Some("unknown message type"),
        ),
        (
            "another protocol version",
            vec![join("c", "2")],
            Some("protocol"),
        ),
        (
            "a text frame",
            vec![Ws::Text("{\"type\":\"join\"}".into())],
            Some("text frames"),
        ),
        ("a sync before join", vec![sync_for("c")], Some("join")),
        (
            "a garbage sync message",
            vec![join("c", "1"), sync_for("c")],
            Some("undecodable"),
        ),
        (
            "an oversized frame",
            vec![join("c", "1"), Ws::Binary(vec![0u8; 10_000].into())],
            None,
        ),
    ];
    for (what, frames, says) in cases {
        let mut ws = connect(&n).await;
        for f in frames {
            let _ = ws.send(f).await;
        }
        let (msgs, closed) = until_closed(&mut ws).await;
        assert!(closed, "{what}: the node closes");
        if let Some(says) = says {
            let err = msgs.iter().find_map(|m| match m {
                Message::Error { message } => Some(message.clone()),
                _ => None,
            });
            assert!(
                err.as_deref().is_some_and(|e| e.contains(says)),
                "{what}: {err:?}"
            );
        }
        assert_eq!(
            n.store
                .read_state(&DocKey::new("users", "alice").unwrap())
                .unwrap(),
            before,
            "{what}: nothing applied"
        );
    }
    still_serves(&n, "alice").await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_not_buffered() {
    let n = node(SyncLimits {
        max_queued_bytes: 64 << 10,
        ..SyncLimits::default()
    })
    .await;
    put(&n, "big").await;
    let k = DocKey::new("users", "big").unwrap();
    let mut ws = connect(&n).await;
    ws.send(join("slow", "1")).await.unwrap();
    let d = meridian_crdt::Document::new(meridian_crdt::ActorId::from([0xbb; 16].as_slice()));
    let data = d.generate_sync(&mut Default::default()).unwrap();
    let req = Message::Request {
        sender: "slow".into(),
        target: "meridian-eu".into(),
        doc: DocumentId::of(&k),
        data,
    };
    ws.send(Ws::Binary(req.encode().into())).await.unwrap();
    // --- the client reads nothing more while large writes replace one field (each push is a
    // large change; the kernel's socket buffers take a few MiB before the node's queue fills)
    let mut closed = false;
    for i in 0..400 {
        let blob = format!("{i}").repeat(32 << 10);
        let v = serde_json::json!({ "f": blob });
        n.store
            .write(&k, Edit::Patch(v.as_object().unwrap().clone()), None)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if i % 20 == 19 {
            // the node's side of the socket is gone once it gave up on the client
            let gone = n_sync_connections(&n).await == 0;
            if gone {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "the node disconnects a client that does not keep up"
    );
    still_serves(&n, "big").await;
}

async fn n_sync_connections(n: &Node) -> u64 {
    let body = reqwest::get(format!("http://{}/metrics", n.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("meridian_sync_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed() {
    let n = node(SyncLimits {
        ping_every: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..SyncLimits::default()
    })
    .await;
    // a raw TCP client that upgrades and then never reads nor answers pings
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&n.addr).await.unwrap();
    let handshake = format!(
        "GET /v1/sync HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        n.addr
    );
    tcp.write_all(handshake.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let got = tcp.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..got]).starts_with("HTTP/1.1 101"));
    assert_eq!(n_sync_connections(&n).await, 1);
    wait_for(|| async { n_sync_connections(&n).await == 0 }).await;
}

async fn wait_for<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
