//! Replication end to end: three real `meridian serve` processes on loopback, their peer
//! traffic routed through proxies the test can cut.

use std::time::{Duration, Instant};

use meridian_tests::mesh::{Mesh, IDS, SECRET};
use meridian_tests::{eventually, Process};
use serde_json::{json, Value};

struct Reply {
    status: u16,
    token: String,
    body: Value,
}

async fn call(
    c: &reqwest::Client,
    method: &str,
    p: &Process,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = c.request(method.parse().unwrap(), p.url(path));
    if let Some(b) = body {
        req = meridian_tests::json_body(req, method, &b);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let token = r
        .headers()
        .get("meridian-session")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Reply {
        status,
        token,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

/// A read that carries a session token.
async fn read_with(c: &reqwest::Client, p: &Process, path: &str, token: &str) -> Reply {
    call(c, "GET", p, path, None, &[("meridian-session", token)]).await
}

/// A document as every node shows it, conflicts included (`None` where it is absent).
async fn everywhere(c: &reqwest::Client, cl: &Mesh, path: &str) -> Vec<(u16, Value)> {
    let mut out = vec![];
    for id in IDS {
        let r = call(
            c,
            "GET",
            cl.node(id),
            &format!("{path}?conflicts=true"),
            None,
            &[],
        )
        .await;
        out.push((r.status, r.body));
    }
    out
}

/// How many documents a node lists in the `bulk` collection.
async fn bulk_count(c: &reqwest::Client, p: &Process) -> usize {
    let r = call(c, "GET", p, "/v1/bulk?limit=1000", None, &[]).await;
    r.body["items"].as_array().map_or(0, Vec::len)
}

async fn all_agree(c: &reqwest::Client, cl: &Mesh, path: &str) -> bool {
    let v = everywhere(c, cl, path).await;
    v.iter().all(|x| x == &v[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_replicate_partition_converge_and_survive_kill_9() {
    let c = meridian_tests::http_client();
    let mut cl = Mesh::start(&["--anti-entropy-secs", "2"]).await;

    // --- a write in one region, read with its token in another
    let w = call(
        &c,
        "PUT",
        cl.node("a"),
        "/v1/profiles/alice",
        Some(json!({"name": "Alice"})),
        &[],
    )
    .await;
    assert_eq!(w.status, 201);
    assert!(w.token.contains("a="), "{}", w.token);
    let t0 = Instant::now();
    let r = read_with(&c, cl.node("b"), "/v1/profiles/alice", &w.token).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["value"], json!({"name": "Alice"}));
    assert!(t0.elapsed() < Duration::from_secs(1));
    // the session's token now covers b's state too; c serves it as well
    let r = read_with(&c, cl.node("c"), "/v1/profiles/alice", &r.token).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // --- partition a from b and c: both sides keep accepting writes
    cl.partition("a");
    let wa = call(
        &c,
        "PATCH",
        cl.node("a"),
        "/v1/profiles/alice",
        Some(json!({"city": "Lisbon"})),
        &[],
    )
    .await;
    assert_eq!(wa.status, 200);
    let wb = call(
        &c,
        "PATCH",
        cl.node("b"),
        "/v1/profiles/alice",
        Some(json!({"city": "Osaka", "lang": "ja"})),
        &[],
    )
    .await;
    assert_eq!(wb.status, 200);
    let wb2 = call(
        &c,
        "PUT",
        cl.node("b"),
        "/v1/profiles/bob",
        Some(json!({"name": "Bob"})),
        &[],
    )
    .await;
    assert_eq!(wb2.status, 201);
    // a session that wrote on a cannot be served by b: 503 naming a, within the asked bound
    let t0 = Instant::now();
    let r = call(
        &c,
        "GET",
        cl.node("b"),
        "/v1/profiles/alice",
        None,
        &[
            ("meridian-session", &wa.token),
            ("meridian-max-wait-ms", "300"),
        ],
    )
    .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["code"], "session_unavailable");
    assert_eq!(r.body["error"]["region"], "a");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    // without a token, b answers at once from what it has
    let r = call(&c, "GET", cl.node("b"), "/v1/profiles/alice", None, &[]).await;
    assert_eq!(r.body["value"]["city"], "Osaka");
    let status = call(&c, "GET", cl.node("a"), "/v1/cluster", None, &[])
        .await
        .body;
    assert!(
        status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["reachable"] == false),
        "{status}"
    );

    // --- heal: every region converges on the same values and conflicts
    cl.heal();
    eventually("alice converges", Duration::from_secs(15), || {
        all_agree(&c, &cl, "/v1/profiles/alice")
    })
    .await;
    eventually("bob converges", Duration::from_secs(15), || {
        all_agree(&c, &cl, "/v1/profiles/bob")
    })
    .await;
    let alice = &everywhere(&c, &cl, "/v1/profiles/alice").await[0].1;
    assert_eq!(alice["value"]["lang"], "ja");
    // both cities were written concurrently: one wins everywhere, the other is a conflict
    let city = alice["value"]["city"].as_str().unwrap();
    assert!(city == "Lisbon" || city == "Osaka");
    let conflicts = alice["conflicts"].as_array().unwrap();
    assert!(conflicts.iter().any(|k| k["path"] == "/city"), "{alice}");
    // and the partitioned session is served everywhere now
    for id in IDS {
        let r = read_with(&c, cl.node(id), "/v1/profiles/alice", &wa.token).await;
        assert_eq!(r.status, 200, "{id}: {}", r.body);
    }

    // --- kill -9 b while a writes; b restarts and catches up from its cursor
    let before = call(&c, "GET", cl.node("b"), "/v1/cluster", None, &[])
        .await
        .body;
    let peer_a = |report: &Value| {
        report["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "a")
            .unwrap()
            .clone()
    };
    assert!(peer_a(&before)["changes_received"].as_u64().unwrap() >= 2);
    let writer_node = cl.node("a").url("");
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut acked = vec![];
            for i in 0..300 {
                let r = c
                    .put(format!("{writer_node}/v1/bulk/d{i}"))
                    .header("content-type", "application/json")
                    .body(json!({"i": i}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 201);
                acked.push(i);
            }
            acked
        })
    };
    // (a merge reports its changes received only once they and the cursor are durable)
    let received_before = peer_a(&before)["changes_received"].as_u64().unwrap();
    eventually(
        "b has merged some of the bulk writes",
        Duration::from_secs(20),
        || async {
            let now = call(&c, "GET", cl.node("b"), "/v1/cluster", None, &[])
                .await
                .body;
            peer_a(&now)["changes_received"].as_u64().unwrap() >= received_before + 50
        },
    )
    .await;
    let b = cl.nodes.remove("b").unwrap();
    b.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    cl.start_node("b");
    let acked = writer.await.unwrap();
    assert_eq!(acked.len(), 300);
    eventually(
        "b has every acknowledged write",
        Duration::from_secs(20),
        || async { bulk_count(&c, cl.node("b")).await == 300 },
    )
    .await;
    for i in [0, 150, 299] {
        let r = call(
            &c,
            "GET",
            cl.node("b"),
            &format!("/v1/bulk/d{i}"),
            None,
            &[],
        )
        .await;
        assert_eq!(r.body["value"], json!({"i": i}));
    }
    // it resumed from its durable cursor (after at least 50 of the 300) instead of pulling a's
    // whole feed again
    let after = call(&c, "GET", cl.node("b"), "/v1/cluster", None, &[])
        .await
        .body;
    let received = peer_a(&after)["changes_received"].as_u64().unwrap();
    assert!(
        received < 300,
        "b pulled {received} changes after its restart"
    );
    let pa = peer_a(&after);
    assert_eq!(pa["reachable"], true, "{after}");
    assert!(pa["bytes_received"].as_u64().unwrap() > 0);
    eventually(
        "the bulk writes converge on c too",
        Duration::from_secs(20),
        || async { bulk_count(&c, cl.node("c")).await == 300 },
    )
    .await;
}

#[tokio::test]
async fn peers_without_the_secret_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Process::start(
        dir.path(),
        &[
            "--node-id",
            "solo",
            "--cluster-secret",
            SECRET,
            "--peer",
            "x=http://127.0.0.1:9",
        ],
    );
    let c = meridian_tests::http_client();
    for auth in [None, Some("Bearer not-the-secret")] {
        let mut req = c.post(p.url("/internal/rpc")).body(vec![1u8, 1, 0]);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401);
    }
    // the unreachable peer shows as such, and local writes are not slowed by it
    let t0 = Instant::now();
    for i in 0..20 {
        let r = call(
            &c,
            "PUT",
            &p,
            &format!("/v1/x/d{i}"),
            Some(json!({"i": i})),
            &[],
        )
        .await;
        assert_eq!(r.status, 201);
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
    eventually(
        "the peer shows unreachable",
        Duration::from_secs(10),
        || async {
            let s = call(&c, "GET", &p, "/v1/cluster", None, &[]).await.body;
            s["peers"][0]["reachable"] == false && s["peers"][0]["last_error"].is_string()
        },
    )
    .await;
}
