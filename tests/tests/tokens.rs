//! Scoped tokens against the real binary (`docs/security.md`): a token reaches its own
//! documents only, on every HTTP route, in lists, change streams and `/v1/sync`; bad tokens are
//! 401 with a clear code; revocation and expiry end open connections within 2 s; rates per
//! `sub`; the client library's token provider; and no sync client can forge a node's change.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use meridian_crdt::{DocKey, DocumentId};
use meridian_sync::repo::Message;
use meridian_tests::sse::EventStream;
use meridian_tests::tokens::{mint, now, token};
use meridian_tests::{create_key, eventually, http_client, Process};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as Ws;

fn tokens_section() -> String {
    meridian_tests::tokens::section("users")
}

/// A node whose auth file holds an admin key, the `[tokens]` section and `extra`.
struct Node {
    _dir: tempfile::TempDir,
    p: Process,
    admin: String,
    admin_entry: String,
    file: PathBuf,
}

fn write_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn start(extra: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("auth.toml");
    let (admin, admin_entry) = create_key("admin", "admin", "*");
    write_file(&file, &format!("{admin_entry}{}{extra}", tokens_section()));
    let p = Process::start(
        &dir.path().join("data"),
        &["--auth-file", file.to_str().unwrap()],
    );
    Node {
        _dir: dir,
        p,
        admin,
        admin_entry,
        file,
    }
}

impl Node {
    async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let c = http_client();
        let mut req = c
            .request(method.parse().unwrap(), self.p.url(path))
            .bearer_auth(bearer);
        if let Some(b) = body {
            req = meridian_tests::json_body(req, method, &b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Rewrites the auth file with `extra` and reloads it through the admin endpoint.
    async fn reload_with(&self, extra: &str) {
        write_file(
            &self.file,
            &format!("{}{}{extra}", self.admin_entry, tokens_section()),
        );
        let (s, v) = self
            .call("POST", "/v1/_auth/reload", &self.admin, None)
            .await;
        assert_eq!(s, 200, "{v}");
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A raw automerge-repo client over `/v1/sync`, to see each message the node sends.
struct RawSync {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    node: String,
}

const ME: &str = "device-1";

impl RawSync {
    async fn connect(addr: &str, bearer: &str) -> RawSync {
        let url = format!("ws://{addr}/v1/sync?access_token={bearer}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let join = Message::Join {
            sender: ME.into(),
            versions: vec!["1".into()],
            metadata: None,
        };
        ws.send(Ws::Binary(join.encode().into())).await.unwrap();
        let mut s = RawSync {
            ws,
            node: String::new(),
        };
        match s.recv().await {
            Some(Message::Peer { sender, .. }) => s.node = sender,
            other => panic!("expected peer, got {other:?}"),
        }
        s
    }

    /// The next message; `None` once the node has closed the socket.
    async fn recv(&mut self) -> Option<Message> {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), self.ws.next()).await {
                Ok(Some(Ok(Ws::Binary(b)))) => return Some(Message::decode(&b).unwrap()),
                Ok(Some(Ok(Ws::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
                Err(_) => panic!("no message from the node in 10 s"),
            }
        }
    }

    async fn send_sync(&mut self, doc: DocumentId, data: Vec<u8>, first: bool) {
        let m = if first {
            Message::Request {
                sender: ME.into(),
                target: self.node.clone(),
                doc,
                data,
            }
        } else {
            Message::Sync {
                sender: ME.into(),
                target: self.node.clone(),
                doc,
                data,
            }
        };
        self.ws.send(Ws::Binary(m.encode().into())).await.unwrap();
    }

    /// Syncs `am` with the node's copy of `doc` until the node has nothing more to say.
    async fn pull(
        &mut self,
        doc: DocumentId,
        am: &mut automerge::Automerge,
        state: &mut automerge::sync::State,
        first: bool,
    ) {
        use automerge::sync::SyncDoc;
        let Some(out) = am.generate_sync_message(state) else {
            return;
        };
        self.send_sync(doc, out.encode(), first).await;
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_millis(500), self.recv()).await {
                Ok(Some(Message::Sync { data, .. })) => {
                    let m = automerge::sync::Message::decode(&data).unwrap();
                    am.receive_sync_message(state, m).unwrap();
                    if let Some(next) = am.generate_sync_message(state) {
                        self.send_sync(doc, next.encode(), false).await;
                    }
                }
                Ok(other) => panic!("while syncing: {other:?}"),
                Err(_) => return,
            }
        }
    }
}

/// A sync message that carries `am`'s last local change by name (a generated one could leave it
/// out, when the node's bloom filter wrongly claims to have it).
fn last_change_message(am: &mut automerge::Automerge) -> Vec<u8> {
    let change = am
        .get_last_local_change()
        .expect("a local change")
        .raw_bytes()
        .to_vec();
    automerge::sync::Message {
        heads: am.get_heads(),
        need: vec![],
        have: vec![],
        changes: automerge::sync::ChunkList::from(vec![change]),
        flags: None,
        version: automerge::sync::MessageVersion::V1,
    }
    .encode()
}

fn doc(collection: &str, id: &str) -> DocumentId {
    DocumentId::of(&DocKey::new(collection, id).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reaches_its_own_documents_only_on_every_route_list_stream_and_sync() {
    let n = start("");
    for (path, body) in [
        ("/v1/users/bob", json!({"name": "Bob"})),
        ("/v1/notes/n1", json!({"t": 1})),
        ("/v1/notes/n2", json!({"t": 2})),
        ("/v1/settings/s", json!({"x": 1})),
    ] {
        let (s, v) = n.call("PUT", path, &n.admin, Some(body)).await;
        assert!(s == 200 || s == 201, "{path}: {s} {v}");
    }
    let alice = token(
        "alice",
        json!({"meridian": {"grants": [{"collection": "notes", "ids": ["n1"], "access": "read"}]}}),
    );

    // --- its own document, on every route
    let ops = json!({"ops": [{"op": "increment", "path": "/visits", "by": 1}]});
    for (method, path, body, wanted) in [
        (
            "PUT",
            "/v1/users/alice",
            Some(json!({"name": "Alice"})),
            201,
        ),
        ("PATCH", "/v1/users/alice", Some(json!({"bio": "hi"})), 200),
        ("POST", "/v1/users/alice/ops", Some(ops.clone()), 200),
        ("GET", "/v1/users/alice", None, 200),
        ("GET", "/v1/users/alice?conflicts=true", None, 200),
        ("GET", "/v1/notes/n1", None, 200),
    ] {
        let (s, v) = n.call(method, path, &alice, body).await;
        assert_eq!(s, wanted, "{method} {path}: {v}");
    }
    // --- someone else's, on every route: 403, and nothing changes
    for (method, path, body) in [
        ("GET", "/v1/users/bob", None),
        ("GET", "/v1/users/bob?conflicts=true", None),
        ("PUT", "/v1/users/bob", Some(json!({"name": "Mallory"}))),
        ("PATCH", "/v1/users/bob", Some(json!({"name": "Mallory"}))),
        ("POST", "/v1/users/bob/ops", Some(ops.clone())),
        ("DELETE", "/v1/users/bob", None),
        ("PATCH", "/v1/notes/n1", Some(json!({"t": 9}))),
        ("GET", "/v1/notes/n2", None),
        ("GET", "/v1/settings", None),
        ("GET", "/v1/settings/s", None),
        ("PUT", "/v1/_schemas/users", Some(json!({"type": "object"}))),
        ("GET", "/v1/status", None),
        ("POST", "/v1/_auth/reload", None),
    ] {
        let (s, v) = n.call(method, path, &alice, body).await;
        assert_eq!(s, 403, "{method} {path}: {v}");
        assert_eq!(code(&v), "forbidden", "{v}");
    }
    let (_, bob) = n.call("GET", "/v1/users/bob", &n.admin, None).await;
    assert_eq!(bob["value"], json!({"name": "Bob"}));
    let (_, note) = n.call("GET", "/v1/notes/n1", &n.admin, None).await;
    assert_eq!(note["value"], json!({"t": 1}));

    // --- lists hold only what the token may read
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (s, v) = n.call("GET", "/v1/users", &alice, None).await;
    assert_eq!((s, ids(&v)), (200, vec!["alice".to_string()]), "{v}");
    let (_, v) = n.call("GET", "/v1/notes?limit=1", &alice, None).await;
    assert_eq!(ids(&v), vec!["n1".to_string()], "{v}");

    // --- a collection stream carries alice's changes only
    let c = http_client();
    let auth = format!("Bearer {alice}");
    let mut stream = EventStream::open(&c, &n.p.url("/v1/users"), &[("authorization", &auth)])
        .await
        .unwrap_or_else(|r| panic!("{}", r.status()));
    n.call("PATCH", "/v1/users/bob", &n.admin, Some(json!({"seen": 1})))
        .await;
    n.call(
        "PATCH",
        "/v1/users/alice",
        &n.admin,
        Some(json!({"seen": 2})),
    )
    .await;
    let ev = stream
        .next_within(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(ev.json()["id"], "alice", "{:?}", ev.json());

    // --- sync: alice's document syncs, bob's is unavailable, and the connection goes on
    let mut sync = RawSync::connect(&n.p.addr, &alice).await;
    let empty = automerge::sync::SyncDoc::generate_sync_message(
        &automerge::Automerge::new(),
        &mut automerge::sync::State::new(),
    )
    .unwrap()
    .encode();
    sync.send_sync(doc("users", "bob"), empty.clone(), true)
        .await;
    match sync.recv().await {
        Some(Message::DocUnavailable { doc: d, .. }) => assert_eq!(d, doc("users", "bob")),
        other => panic!("expected doc-unavailable for bob, got {other:?}"),
    }
    let mut am = automerge::Automerge::new();
    let mut state = automerge::sync::State::new();
    sync.pull(doc("users", "alice"), &mut am, &mut state, true)
        .await;
    let (value, _) = meridian_tests::repo_client::render(&am);
    assert_eq!(
        value["name"], "Alice",
        "alice's document synced on the same connection"
    );

    // --- a read grant syncs down, and a change it sends is refused with nothing applied
    let mut note_am = automerge::Automerge::new();
    let mut note_state = automerge::sync::State::new();
    sync.pull(doc("notes", "n1"), &mut note_am, &mut note_state, true)
        .await;
    assert_eq!(
        meridian_tests::repo_client::render(&note_am).0,
        json!({"t": 1})
    );
    {
        use automerge::transaction::Transactable;
        note_am.set_actor(automerge::ActorId::from([0xfeu8; 16].as_slice()));
        let user = meridian_tests::repo_client::user(&note_am);
        let mut tx = note_am.transaction();
        tx.put(&user, "t", 99).unwrap();
        tx.commit();
    }
    sync.send_sync(doc("notes", "n1"), last_change_message(&mut note_am), false)
        .await;
    match sync.recv().await {
        Some(Message::Error { message }) => assert!(message.contains("read"), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let (_, note) = n.call("GET", "/v1/notes/n1", &n.admin, None).await;
    assert_eq!(
        note["value"],
        json!({"t": 1}),
        "the read token's edit changed nothing"
    );
}

#[tokio::test]
async fn bad_tokens_are_401_with_a_clear_code_and_touch_nothing() {
    let n = start("");
    n.call("PUT", "/v1/users/alice", &n.admin, Some(json!({"n": 1})))
        .await;
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let good = token("alice", json!({}));
    let parts: Vec<&str> = good.split('.').collect();
    let other_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "aud": "app", "exp": now() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret, also 32 bytes or more"),
    )
    .unwrap();
    let cases = [
        (
            "expired",
            mint(json!({"sub": "alice", "aud": "app", "exp": now() - 5})),
            "token_expired",
        ),
        (
            "not yet valid",
            mint(json!({"sub": "alice", "aud": "app", "exp": now() + 60, "nbf": now() + 30})),
            "token_expired",
        ),
        (
            "wrong audience",
            mint(json!({"sub": "alice", "aud": "other-app", "exp": now() + 60})),
            "invalid_token",
        ),
        (
            "no exp",
            mint(json!({"sub": "alice", "aud": "app"})),
            "invalid_token",
        ),
        ("wrong signature", other_key, "invalid_token"),
        (
            "alg none",
            format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), parts[1]),
            "invalid_token",
        ),
        (
            "tampered claims",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&format!(
                    r#"{{"sub":"alice","aud":"app","exp":{},"meridian":{{"grants":[{{"collection":"users","prefix":"","access":"write"}}]}}}}"#,
                    now() + 60
                )),
                parts[2]
            ),
            "invalid_token",
        ),
    ];
    for (what, t, wanted) in cases {
        let (s, v) = n
            .call("PATCH", "/v1/users/alice", &t, Some(json!({"n": 2})))
            .await;
        assert_eq!((s, code(&v)), (401, wanted), "{what}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(!msg.is_empty(), "{what}: a reason is given");
    }
    let (_, v) = n.call("GET", "/v1/users/alice", &n.admin, None).await;
    assert_eq!(v["value"], json!({"n": 1}), "nothing was touched");
    // the good one works
    let (s, _) = n
        .call("PATCH", "/v1/users/alice", &good, Some(json!({"n": 3})))
        .await;
    assert_eq!(s, 200);
}

/// Waits for the socket to be closed by the node; the time it took.
async fn closed_within(sync: &mut RawSync, limit: Duration) -> Duration {
    let t0 = Instant::now();
    tokio::time::timeout(limit, async { while sync.recv().await.is_some() {} })
        .await
        .unwrap_or_else(|_| panic!("the sync connection is still open after {limit:?}"));
    t0.elapsed()
}

async fn stream_ended_within(s: &mut EventStream, limit: Duration) -> Vec<String> {
    let mut kinds = vec![];
    tokio::time::timeout(limit, async {
        while let Some(ev) = s.next().await {
            kinds.push(ev.event.clone());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the change stream is still open after {limit:?}: {kinds:?}"));
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_expiry_end_open_sync_connections_and_streams_within_2_s() {
    let n = start("");
    for id in ["alice", "bob", "carol"] {
        n.call(
            "PUT",
            &format!("/v1/users/{id}"),
            &n.admin,
            Some(json!({"n": 1})),
        )
        .await;
    }
    let c = http_client();
    let open_stream = |t: String, id: &'static str| {
        let c = c.clone();
        let url = n.p.url(&format!("/v1/users/{id}"));
        async move {
            let auth = format!("Bearer {t}");
            let mut s = EventStream::open(&c, &url, &[("authorization", &auth)])
                .await
                .unwrap_or_else(|r| panic!("{}", r.status()));
            assert_eq!(s.next().await.unwrap().event, "document");
            s
        }
    };

    // --- alice's sub is revoked through the admin endpoint
    let alice = token("alice", json!({}));
    let mut sync = RawSync::connect(&n.p.addr, &alice).await;
    let mut am = automerge::Automerge::new();
    let mut state = automerge::sync::State::new();
    sync.pull(doc("users", "alice"), &mut am, &mut state, true)
        .await;
    let mut stream = open_stream(alice.clone(), "alice").await;
    let t0 = Instant::now();
    n.reload_with("\n[revoked]\nsub = [\"alice\"]\n").await;
    let took = closed_within(&mut sync, Duration::from_secs(2) - t0.elapsed()).await;
    let kinds = stream_ended_within(&mut stream, Duration::from_secs(2) - t0.elapsed()).await;
    assert_eq!(kinds, vec!["closed".to_string()]);
    eprintln!("revoked: the sync connection closed {took:?} after the reload");
    let (s, v) = n.call("GET", "/v1/users/alice", &alice, None).await;
    assert_eq!((s, code(&v)), (401, "token_revoked"), "{v}");

    // --- one token of bob's, by jti, through SIGHUP; his other tokens go on
    let bob1 = token("bob", json!({"jti": "bob-phone"}));
    let bob2 = token("bob", json!({"jti": "bob-laptop"}));
    let mut s1 = open_stream(bob1.clone(), "bob").await;
    let t0 = Instant::now();
    write_file(
        &n.file,
        &format!(
            "{}{}\n[revoked]\nsub = [\"alice\"]\njti = [\"bob-phone\"]\n",
            n.admin_entry,
            tokens_section()
        ),
    );
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(n.p.pid(), libc::SIGHUP) };
    stream_ended_within(&mut s1, Duration::from_secs(2)).await;
    eprintln!(
        "revoked by SIGHUP: the stream ended {:?} after the signal",
        t0.elapsed()
    );
    assert_eq!(n.call("GET", "/v1/users/bob", &bob1, None).await.0, 401);
    assert_eq!(n.call("GET", "/v1/users/bob", &bob2, None).await.0, 200);

    // --- carol's token expires while her socket and stream are open
    let exp = now() + 3;
    let carol = mint(json!({"sub": "carol", "aud": "app", "exp": exp}));
    let mut sync = RawSync::connect(&n.p.addr, &carol).await;
    let mut am = automerge::Automerge::new();
    let mut state = automerge::sync::State::new();
    sync.pull(doc("users", "carol"), &mut am, &mut state, true)
        .await;
    let mut stream = open_stream(carol.clone(), "carol").await;
    let until_exp =
        Duration::from_secs(exp) - SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    closed_within(&mut sync, until_exp + Duration::from_secs(2)).await;
    stream_ended_within(&mut stream, Duration::from_secs(2)).await;
    let late = SystemTime::now().duration_since(UNIX_EPOCH).unwrap() - Duration::from_secs(exp);
    assert!(late <= Duration::from_secs(2), "ended {late:?} after exp");
    let (s, v) = n.call("GET", "/v1/users/carol", &carol, None).await;
    assert_eq!((s, code(&v)), (401, "token_expired"), "{v}");
}

#[tokio::test]
async fn a_sub_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let n = start("\n[rate_limit]\nper_sub = { per_second = 1.0, burst = 5 }\n");
    let c = http_client();
    let alice = token("alice", json!({}));
    let bob = token("bob", json!({}));
    let get = |t: &str| {
        c.get(n.p.url("/v1/users/alice"))
            .bearer_auth(t.to_owned())
            .send()
    };
    for i in 0..5 {
        assert_eq!(get(&alice).await.unwrap().status(), 404, "request {i}");
    }
    let r = get(&alice).await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(code(&v), "rate_limited", "{v}");
    // another sub is not slowed down, nor is the admin key (keys are unlimited by default)
    assert_eq!(get(&bob).await.unwrap().status(), 403);
    for _ in 0..20 {
        assert_eq!(get(&n.admin).await.unwrap().status(), 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_fetches_tokens_and_refreshes_a_revoked_one_keeping_its_edits() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let n = start("");
    n.call(
        "PUT",
        "/v1/users/alice",
        &n.admin,
        Some(json!({"name": "Alice"})),
    )
    .await;
    let minted = Arc::new(AtomicUsize::new(0));
    let m2 = minted.clone();
    let provider = move || -> futures_util::future::BoxFuture<'static, Result<String, String>> {
        let i = m2.fetch_add(1, Ordering::SeqCst);
        let t = token("alice", json!({"jti": format!("t{i}")}));
        Box::pin(async move { Ok(t) })
    };
    let client = meridian_client::Client::builder([format!("http://{}", n.p.addr)])
        .token_provider(provider)
        .build()
        .unwrap();
    meridian_tests::replica_round_trip(&client).await;
    assert_eq!(
        minted.load(Ordering::SeqCst),
        1,
        "one token serves while it is valid"
    );

    // the token in use is revoked: HTTP and sync fetch a new one, and an edit made meanwhile
    // is acknowledged
    let device = tempfile::tempdir().unwrap();
    let replicas = meridian_client::Replicas::open(device.path()).unwrap();
    let replica = replicas.open_doc("users", "alice").unwrap();
    let _syncer = meridian_client::Syncer::start(replicas.clone(), client.clone());
    eventually("the replica syncs", Duration::from_secs(10), || {
        let v = replica.value();
        async move { v.is_some_and(|v| v["name"] == "Alice") }
    })
    .await;
    n.reload_with("\n[revoked]\njti = [\"t0\"]\n").await;
    replica
        .patch(&json!({"bio": "written while revoked"}))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(15), replica.acknowledged())
        .await
        .expect("the edit is acknowledged over a fresh token");
    let doc = client.get("users", "alice").await.unwrap().unwrap();
    assert_eq!(doc.value["bio"], "written while revoked");
    assert!(minted.load(Ordering::SeqCst) >= 2);
}

/// A sync client forges a change under another region's node actor with the next sequence
/// number that node will use. Nothing of its message applies anywhere, and the impersonated
/// region's own next write replicates to every region.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_node_change_from_a_sync_client_is_refused_and_replication_goes_on() {
    use automerge::transaction::Transactable;
    let mesh = meridian_tests::mesh::Mesh::start(&[]).await;
    let (a, b) = (mesh.node("a"), mesh.node("b"));
    let c = http_client();
    let put = |p: &Process, body: Value| {
        c.patch(p.url("/v1/users/victim"))
            .header("content-type", "application/merge-patch+json")
            .body(body.to_string())
            .send()
    };
    assert!(put(b, json!({"by": "b"}))
        .await
        .unwrap()
        .status()
        .is_success());
    let value_on = |p: &Process| {
        let (c, url) = (c.clone(), p.url("/v1/users/victim"));
        async move {
            let r = c.get(url).send().await.unwrap();
            if r.status() != 200 {
                return Value::Null;
            }
            r.json::<Value>().await.unwrap()["value"].clone()
        }
    };
    for p in [a, &mesh.nodes["c"]] {
        eventually(
            "b's write reaches every region",
            Duration::from_secs(10),
            || {
                let v = value_on(p);
                async move { v.await == json!({"by": "b"}) }
            },
        )
        .await;
    }

    // the forger syncs the document from a, then writes as node "b", with b's stamp format
    let mut sync = RawSync::connect(&a.addr, "unused").await;
    let mut am = automerge::Automerge::new();
    let mut state = automerge::sync::State::new();
    sync.pull(doc("users", "victim"), &mut am, &mut state, true)
        .await;
    let b_actor = automerge::ActorId::from(b"b".as_slice());
    let stamp = am
        .get_changes(&[])
        .iter()
        .rev()
        .find(|ch| ch.actor_id() == &b_actor)
        .and_then(|ch| ch.message().map(str::to_owned))
        .expect("b's change carries its stamp");
    am.set_actor(b_actor.clone());
    let user = meridian_tests::repo_client::user(&am);
    let mut tx = am.transaction();
    tx.put(&user, "forged", true).unwrap();
    tx.commit_with(automerge::transaction::CommitOptions::default().with_message(stamp));
    sync.send_sync(doc("users", "victim"), last_change_message(&mut am), false)
        .await;
    // the node answers nothing for that message (it waits for b's changes to come from b), and
    // the connection stays open; a sync message may come if the document changes meanwhile
    match tokio::time::timeout(Duration::from_secs(1), sync.recv()).await {
        Err(_) | Ok(Some(Message::Sync { .. })) => {}
        Ok(other) => panic!("unexpected answer: {other:?}"),
    }

    // b writes next: its own sequence number, the one the forger took
    assert!(put(b, json!({"after": "b"}))
        .await
        .unwrap()
        .status()
        .is_success());
    for (name, p) in [("a", a), ("b", b), ("c", &mesh.nodes["c"])] {
        eventually(
            &format!("b's next write reaches {name}"),
            Duration::from_secs(15),
            || {
                let v = value_on(p);
                async move { v.await == json!({"by": "b", "after": "b"}) }
            },
        )
        .await;
    }
    // and a's write replicates too: the document's replication goes on in every direction
    assert!(put(a, json!({"from_a": 1}))
        .await
        .unwrap()
        .status()
        .is_success());
    for p in [b, &mesh.nodes["c"]] {
        eventually(
            "a's write reaches the others",
            Duration::from_secs(15),
            || {
                let v = value_on(p);
                async move { v.await["from_a"] == 1 }
            },
        )
        .await;
    }
    for p in [a, b, &mesh.nodes["c"]] {
        assert!(
            value_on(p).await.get("forged").is_none(),
            "the forged change applied"
        );
    }
    let metrics = meridian_tests::get_text(&c, a.url("/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("meridian_sync_messages_waiting_total ") && !l.ends_with(" 0")),
        "{}",
        meridian_tests::metric_lines(&metrics, "sync")
    );
}
