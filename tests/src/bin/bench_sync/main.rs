//! The sync benchmark: automerge-repo clients (protocol "1" over WebSockets) against a real
//! release node on loopback, on the same cores as the clients.
//!
//! - `push`: `--clients` clients, two per document, `--rate` edits per second spread over them
//!   for `--seconds`: the time from one client's edit to the other client of the same document
//!   seeing it (p50, p99, max), beside one HTTP PATCH round trip measured in the same run; and
//!   the node's memory per connection (RSS with every client connected, less RSS before).
//! - `fresh`: `--docs` documents of `--changes` changes each; a fresh client syncs them all over
//!   one connection: time, and bytes on the wire against the documents' saved size.
//! - `offline`: a client back with `--offline` local changes to one document: time until the
//!   node has acknowledged them, and bytes on the wire against the changes' size.
//!
//! With `--tokens`, the node has an auth file: every sync client presents its own scoped token
//! (a JWT for its document only) and the HTTP calls an admin key.
//!
//! Bytes are counted by a TCP proxy between client and node (WebSocket framing and the
//! upgrade included). Build with `cargo build --release --workspace --bins`, run
//! `target/release/bench_sync`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use meridian_crdt::{DocKey, DocumentId, Edit, SyncState};
use meridian_tests::percentile;
use meridian_tests::proxy::Proxy;
use meridian_tests::Process;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as Ws;

mod peer;
use peer::Peer;

#[derive(Parser, Debug)]
struct Args {
    /// Which parts to run (push, fresh, offline).
    #[arg(long, value_delimiter = ',', default_value = "push,fresh,offline")]
    parts: Vec<String>,
    /// Seconds the push part edits.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Edits per second in the push part.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    #[arg(long, default_value_t = 1000)]
    docs: usize,
    #[arg(long, default_value_t = 100)]
    changes: usize,
    #[arg(long, default_value_t = 1000)]
    offline: usize,
    /// Every client on its own scoped token, HTTP with an admin key.
    #[arg(long)]
    tokens: bool,
}

/// The admin key for HTTP calls, when the node has an auth file (`--tokens`).
static ADMIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn http_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(k) = ADMIN.get() {
        headers.insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// The bearer a sync client `name` of document `d{doc}` presents: its own token (`--tokens`).
fn bearer_of(doc: usize, name: &str) -> Option<String> {
    ADMIN
        .get()
        .map(|_| meridian_tests::tokens::token(&format!("d{doc}"), json!({ "jti": name })))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn key(collection: &str, i: usize) -> DocKey {
    DocKey::new(collection, &format!("d{i}")).unwrap()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// HTTP PATCHes to `collection/d{i}` for i in docs, `n` each, 32 at a time.
async fn write_docs(addr: &str, collection: &str, docs: usize, n: usize) {
    let http = http_client();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = vec![];
    for i in 0..docs {
        for j in 0..n {
            let (http, sem) = (http.clone(), sem.clone());
            let url = format!("http://{addr}/v1/{collection}/d{i}");
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let body = json!({ format!("f{}", j % 10): j }).to_string();
                let r = http
                    .patch(&url)
                    .header("content-type", "application/merge-patch+json")
                    .body(body)
                    .send()
                    .await
                    .expect("patch");
                assert!(r.status().is_success());
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// Median of a few HTTP PATCH round trips (the baseline of the push part).
async fn patch_rtt(addr: &str) -> f64 {
    let http = http_client();
    let mut lat = vec![];
    for i in 0..200 {
        let t = Instant::now();
        http.patch(format!("http://{addr}/v1/baseline/b"))
            .header("content-type", "application/merge-patch+json")
            .body(json!({ "i": i }).to_string())
            .send()
            .await
            .unwrap();
        lat.push(ms(t.elapsed()));
    }
    lat.sort_by(f64::total_cmp);
    percentile(&lat, 0.5)
}

async fn push(args: &Args, node: &Process) {
    let docs = args.clients / 2;
    write_docs(&node.addr, "push", docs, 1).await;
    let rtt = patch_rtt(&node.addr).await;
    let rss_before = node.rss_kib();

    // --- connect every client: two per document
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut edit_txs = vec![];
    let t0 = Instant::now();
    for c in 0..args.clients {
        let (tx, mut rx) = mpsc::unbounded_channel::<i64>();
        edit_txs.push(tx);
        let doc = DocumentId::of(&key("push", c / 2));
        let (addr, seen, ready) = (node.addr.clone(), seen_tx.clone(), ready_tx.clone());
        let (mine, theirs) = if c % 2 == 0 {
            ("m0", "m1")
        } else {
            ("m1", "m0")
        };
        tokio::spawn(async move {
            let name = format!("bench-{c}");
            let token = bearer_of(c / 2, &name);
            let mut p = Peer::connect(&addr, name, token.as_deref()).await;
            p.offer(doc).await;
            let mut announced = false;
            let mut last = -1i64;
            loop {
                tokio::select! {
                    f = p.ws.next() => {
                        let Some(Ok(Ws::Binary(b))) = f else { continue };
                        if p.take(&b).await.is_some() {
                            if !announced && p.in_sync(&doc) {
                                announced = true;
                                let _ = ready.send(());
                            }
                            // each side writes its own field and watches the other's
                            let m = p.replica(doc).0.value()[theirs].as_i64().unwrap_or(-1);
                            if m != last {
                                last = m;
                                let _ = seen.send((m, Instant::now()));
                            }
                        }
                    }
                    e = rx.recv() => {
                        let Some(marker) = e else { return };
                        let edit = Edit::Patch(json!({ mine: marker }).as_object().unwrap().clone());
                        p.replica(doc).0.apply_unstamped(&edit).unwrap();
                        p.offer(doc).await;
                    }
                }
            }
        });
    }
    for _ in 0..args.clients {
        ready_rx.recv().await.unwrap();
    }
    let connected = t0.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = node.rss_kib();

    // --- edits at the rate, each by a random client; the marker names the edit
    let mut sent: HashMap<i64, Instant> = HashMap::new();
    let mut lat = vec![];
    let total = args.rate * args.seconds;
    let every = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now();
    for i in 0..total as i64 {
        let due = start + every * i as u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => break,
                Some((m, at)) = seen_rx.recv() => {
                    if let Some(t) = sent.remove(&m) { lat.push(ms(at - t)); }
                }
            }
        }
        let c = rand::random::<usize>() % args.clients;
        sent.insert(i, Instant::now());
        edit_txs[c].send(i).unwrap();
    }
    let drain = Instant::now() + Duration::from_secs(5);
    while !sent.is_empty() && Instant::now() < drain {
        if let Ok(Some((m, at))) =
            tokio::time::timeout(Duration::from_millis(100), seen_rx.recv()).await
        {
            if let Some(t) = sent.remove(&m) {
                lat.push(ms(at - t));
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "## push: {} clients, {} documents, {} edits/s for {} s",
        args.clients, docs, args.rate, args.seconds
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| edits seen by the other client | {} of {} |",
        lat.len(),
        total
    );
    println!(
        "| edit to the other client, p50 ms | {:.1} |",
        percentile(&lat, 0.5)
    );
    println!(
        "| edit to the other client, p99 ms | {:.1} |",
        percentile(&lat, 0.99)
    );
    println!(
        "| edit to the other client, max ms | {:.1} |",
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!("| baseline: one HTTP PATCH round trip, p50 ms | {rtt:.2} |");
    println!("| p99 / baseline | {:.1}x |", percentile(&lat, 0.99) / rtt);
    println!(
        "| connecting and syncing all clients, s | {:.1} |",
        connected.as_secs_f64()
    );
    println!(
        "| node RSS before / with the clients, MiB | {:.0} / {:.0} |",
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0
    );
    println!(
        "| node memory per connection, KiB | {:.1} |",
        (rss_after as f64 - rss_before as f64) / args.clients as f64
    );
    println!();
}

async fn fresh(args: &Args, node: &Process) {
    let t = Instant::now();
    write_docs(&node.addr, "fresh", args.docs, args.changes).await;
    eprintln!(
        "wrote {} x {} changes in {:.1} s",
        args.docs,
        args.changes,
        t.elapsed().as_secs_f64()
    );
    let proxy = Proxy::start().await;
    proxy.set_target(&node.addr);
    let addr = proxy.addr.to_string();
    let t0 = Instant::now();
    let mut p = Peer::connect(&addr, "fresh".into(), ADMIN.get().map(String::as_str)).await;
    let ids: Vec<DocumentId> = (0..args.docs)
        .map(|i| DocumentId::of(&key("fresh", i)))
        .collect();
    for id in &ids {
        p.offer(*id).await;
    }
    let mut synced = 0;
    let mut done = std::collections::HashSet::new();
    while synced < ids.len() {
        let f = p
            .next_frame(Duration::from_secs(30))
            .await
            .expect("the node keeps sending");
        if let Some(doc) = p.take(&f).await {
            if p.in_sync(&doc)
                && p.docs[&doc].0.heads() != [meridian_crdt::genesis_hash()]
                && done.insert(doc)
            {
                synced += 1;
            }
        }
    }
    let took = t0.elapsed();
    let wire = proxy.bytes();
    let saved: usize = p.docs.values().map(|(d, _)| d.save().len()).sum();
    let changes: usize = p
        .docs
        .values()
        .map(|(d, _)| d.changes_since(&[]).iter().map(Vec::len).sum::<usize>())
        .sum();
    println!(
        "## fresh: one client syncs {} documents of {} changes",
        args.docs, args.changes
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| time to sync them all, s | {:.2} |", took.as_secs_f64());
    println!(
        "| documents per second | {:.0} |",
        args.docs as f64 / took.as_secs_f64()
    );
    println!(
        "| bytes on the wire (both ways), MiB | {:.2} |",
        wire as f64 / 1048576.0
    );
    println!(
        "| the documents saved (automerge save), MiB | {:.2} |",
        saved as f64 / 1048576.0
    );
    println!(
        "| their changes, uncompressed, MiB | {:.2} |",
        changes as f64 / 1048576.0
    );
    println!("| wire / saved size | {:.2}x |", wire as f64 / saved as f64);
    println!();
}

async fn offline(args: &Args, node: &Process) {
    write_docs(&node.addr, "offline", 1, 10).await;
    let id = DocumentId::of(&key("offline", 0));
    // --- a client syncs the document, then goes away
    let mut p = Peer::connect(
        &node.addr,
        "offline-1".into(),
        ADMIN.get().map(String::as_str),
    )
    .await;
    p.offer(id).await;
    while !p.in_sync(&id) || p.docs[&id].0.heads() == [meridian_crdt::genesis_hash()] {
        let f = p.next_frame(Duration::from_secs(10)).await.expect("synced");
        p.take(&f).await;
    }
    let (mut doc, _) = p.docs.remove(&id).unwrap();
    drop(p);
    let before = doc.heads();
    for i in 0..args.offline {
        let e = Edit::Patch(
            json!({ format!("k{}", i % 20): i })
                .as_object()
                .unwrap()
                .clone(),
        );
        doc.apply_unstamped(&e).unwrap();
    }
    let change_bytes: usize = doc.changes_since(&before).iter().map(Vec::len).sum();

    // --- back: through a counting proxy, until the node has acknowledged everything
    let proxy = Proxy::start().await;
    proxy.set_target(&node.addr);
    let t0 = Instant::now();
    let mut p = Peer::connect(
        &proxy.addr.to_string(),
        "offline-2".into(),
        ADMIN.get().map(String::as_str),
    )
    .await;
    p.docs.insert(id, (doc, SyncState::new()));
    p.offer(id).await;
    loop {
        let f = p
            .next_frame(Duration::from_secs(30))
            .await
            .expect("acknowledged");
        p.take(&f).await;
        let (d, st) = &p.docs[&id];
        if st
            .their_heads
            .as_ref()
            .is_some_and(|h| d.history_includes(h, &d.heads()))
        {
            break;
        }
    }
    let took = t0.elapsed();
    let wire = proxy.bytes();
    println!(
        "## offline: a client back with {} changes to one document",
        args.offline
    );
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| time until the node has acknowledged them, ms | {:.1} |",
        ms(took)
    );
    println!(
        "| the changes, uncompressed, KiB | {:.1} |",
        change_bytes as f64 / 1024.0
    );
    println!(
        "| bytes on the wire (both ways, upgrade included), KiB | {:.1} |",
        wire as f64 / 1024.0
    );
    println!(
        "| wire / changes | {:.2}x |",
        wire as f64 / change_bytes as f64
    );
    println!();
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node_args = vec!["--sync-max-connections".to_string(), "20000".into()];
    if args.tokens {
        let (admin, entry) = meridian_tests::create_key("bench", "admin", "*");
        let file = dir.path().join("auth.toml");
        std::fs::write(&file, entry + &meridian_tests::tokens::section("push")).unwrap();
        node_args.extend(["--auth-file".to_string(), file.to_str().unwrap().to_owned()]);
        ADMIN.set(admin).unwrap();
    }
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let node = Process::start(&dir.path().join("data"), &node_args);
    println!(
        "meridian sync benchmark: release node {} on loopback, {} cores shared with the clients{}",
        node.addr,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if args.tokens {
            "; every sync client on its own scoped token"
        } else {
            ""
        }
    );
    println!();
    for part in &args.parts {
        match part.as_str() {
            "push" => push(&args, &node).await,
            "fresh" => fresh(&args, &node).await,
            "offline" => offline(&args, &node).await,
            other => panic!("unknown part {other}"),
        }
    }
}
