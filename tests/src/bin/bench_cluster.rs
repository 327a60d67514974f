//! The replication benchmark: three local nodes (the release binary) in a full mesh, their
//! peer traffic through counting proxies ([`meridian_tests::mesh`]). Measures, in one run:
//!
//! 1. idle CPU of the three nodes (no writes);
//! 2. replication lag (acknowledged on `a` until visible on `b` or `c`) at a steady write rate,
//!    with the round trip of one read in the same run as the baseline (the resolution);
//! 3. bytes between nodes per replicated single-field change, against the change's own size;
//! 4. the time for the three nodes to converge after a partition during which every one of
//!    `--docs` documents was changed on both sides.
//!
//! Build with `cargo build --release --workspace --bins`, run `target/release/bench_cluster`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_tests::cpu_secs;
use meridian_tests::mesh::{Mesh, IDS, SECRET};
use meridian_tests::percentile;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
struct Args {
    /// Seconds of the steady-rate lag phase (and of the idle phase).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Writes per second in the lag phase.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Documents changed on both sides of the partition.
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// Feed modes to measure, each on its own fresh mesh (`stream`, `long-poll`).
    #[arg(long, default_value = "stream,long-poll")]
    modes: String,
    /// Sequential single-field writes in the bytes phase.
    #[arg(long, default_value_t = 500)]
    changes: usize,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build()
        .expect("client")
}

async fn json_get(c: &reqwest::Client, url: &str) -> Value {
    match c.get(url).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Sum over nodes and peers of a `/v1/cluster` peer counter.
async fn counter(c: &reqwest::Client, m: &Mesh, name: &str) -> u64 {
    let mut total = 0;
    for id in IDS {
        let r = json_get(c, &m.node(id).url("/v1/cluster")).await;
        for p in r["peers"].as_array().into_iter().flatten() {
            total += p[name].as_u64().unwrap_or(0);
        }
    }
    total
}

/// Versions of every document of a collection on one node, in id order.
async fn versions(c: &reqwest::Client, node: &meridian_tests::Process, coll: &str) -> Vec<String> {
    let mut out = vec![];
    let mut after = String::new();
    loop {
        let url = node.url(&format!("/v1/{coll}?limit=1000{after}"));
        let r = json_get(c, &url).await;
        for it in r["items"].as_array().into_iter().flatten() {
            out.push(format!("{}@{}", it["id"], it["version"]));
        }
        match r["next"].as_str() {
            Some(n) => after = format!("&after={n}"),
            None => return out,
        }
    }
}

async fn put_all(
    c: &reqwest::Client,
    base: String,
    coll: &str,
    n: usize,
    patch: Option<&'static str>,
) {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..32 {
        let (c, base, next, coll) = (c.clone(), base.clone(), next.clone(), coll.to_owned());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let url = format!("{base}/v1/{coll}/d{i}");
                let r = match patch {
                    None => c
                        .put(url)
                        .header("content-type", "application/json")
                        .body(json!({"i": i}).to_string()),
                    Some(field) => c
                        .patch(url)
                        .header("content-type", "application/merge-patch+json")
                        .body(json!({ field: i }).to_string()),
                };
                let r = r.send().await.expect("write");
                assert!(r.status().is_success(), "{}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
}

/// One request over the internal protocol, as a peer would send it.
async fn rpc(
    c: &reqwest::Client,
    m: &Mesh,
    id: &str,
    req: &meridian_sync::Request,
) -> meridian_sync::Response {
    let bytes = c
        .post(m.node(id).url("/internal/rpc"))
        .bearer_auth(SECRET)
        .body(meridian_sync::encode(req))
        .send()
        .await
        .expect("rpc")
        .bytes()
        .await
        .expect("rpc body");
    meridian_sync::decode(&bytes).expect("an answer")
}

/// A node's anti-entropy digest.
async fn digest(c: &reqwest::Client, m: &Mesh, id: &str) -> Vec<u64> {
    let req = meridian_sync::Request::Digest {
        from: "bench".into(),
        cursor: None,
    };
    match rpc(c, m, id, &req).await {
        meridian_sync::Response::Digest { buckets } => buckets,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// The sizes of the last `n` changes in node `a`'s feed, read over the internal protocol.
async fn last_change_sizes(c: &reqwest::Client, m: &Mesh, n: usize) -> Vec<usize> {
    let mut sizes = vec![];
    let mut after = None;
    loop {
        let req = meridian_sync::Request::Feed {
            from: "bench".into(),
            after,
            wait_ms: 0,
            limit: 10_000,
        };
        let meridian_sync::Response::Feed {
            changes,
            upto,
            more,
            ..
        } = rpc(c, m, "a", &req).await
        else {
            panic!("unexpected answer");
        };
        for d in changes {
            sizes.extend(d.changes.iter().map(Vec::len));
        }
        if !more {
            break;
        }
        after = upto;
    }
    sizes.split_off(sizes.len().saturating_sub(n))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut columns = vec![];
    for mode in args.modes.split(',') {
        println!("--- feed mode {mode}");
        columns.push((mode.to_owned(), suite(&args, mode).await));
    }
    print!("\n| measure |");
    for (mode, _) in &columns {
        print!(" {mode} |");
    }
    print!("\n|---|");
    for _ in &columns {
        print!("---|");
    }
    println!();
    for (i, (what, _)) in columns[0].1.iter().enumerate() {
        print!("| {what} |");
        for (_, rows) in &columns {
            print!(" {} |", rows.get(i).map_or("", |r| r.1.as_str()));
        }
        println!();
    }
}

/// Every measurement, on a fresh mesh whose nodes follow feeds in `mode`.
async fn suite(args: &Args, mode: &str) -> Vec<(String, String)> {
    let c = client();
    let m = Mesh::start(&["--feed-mode", mode]).await;
    let mut rows: Vec<(String, String)> = vec![];
    tokio::time::sleep(Duration::from_secs(3)).await;

    // --- 1. idle CPU
    let pids: Vec<i32> = IDS.iter().map(|id| m.node(id).pid()).collect();
    let before: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let wire0 = m.wire_bytes();
    let idle = Duration::from_secs(args.seconds.max(10));
    tokio::time::sleep(idle).await;
    let used: f64 = pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - before;
    let idle_pct = 100.0 * used / idle.as_secs_f64();
    let idle_bytes = (m.wire_bytes() - wire0) as f64 / idle.as_secs_f64();
    println!("idle: {used:.3} CPU s over {idle:?} for 3 nodes ({idle_pct:.3}% of one core), {idle_bytes:.0} B/s between nodes");
    rows.push((
        "idle CPU, 3 nodes, no writes".into(),
        format!("{idle_pct:.3}% of one core in total; {idle_bytes:.0} bytes/s between nodes"),
    ));

    // --- 2. lag at a steady write rate: every 10th write is a probe, polled on b or c
    put_all(&c, m.node("a").url(""), "lag", 1000, None).await;
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let lag_wire0 = m.wire_bytes();
    let lag_cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let lags = Arc::new(parking_lot::Mutex::new(Vec::<f64>::new()));
    let reads = Arc::new(parking_lot::Mutex::new(Vec::<f64>::new()));
    let start = Instant::now();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = vec![];
    let a = m.node("a").url("");
    let readers = [m.node("b").url(""), m.node("c").url("")];
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(args.seconds) {
        tick.tick().await;
        i += 1;
        let (c, a, lags, reads) = (c.clone(), a.clone(), lags.clone(), reads.clone());
        let probe = i
            .is_multiple_of(10)
            .then(|| readers[(i / 10 % 2) as usize].clone());
        tasks.push(tokio::spawn(async move {
            let doc = format!("d{}", i % 1000);
            let r = c
                .patch(format!("{a}/v1/lag/{doc}"))
                .header("content-type", "application/merge-patch+json")
                .body(json!({ "n": i }).to_string())
                .send()
                .await
                .expect("write");
            assert!(r.status().is_success());
            let acked = Instant::now();
            if let Some(reader) = probe {
                loop {
                    let t = Instant::now();
                    let v = json_get(&c, &format!("{reader}/v1/lag/{doc}")).await;
                    reads.lock().push(t.elapsed().as_secs_f64() * 1000.0);
                    if v["value"]["n"].as_u64().is_some_and(|n| n >= i) {
                        lags.lock().push(acked.elapsed().as_secs_f64() * 1000.0);
                        break;
                    }
                    if acked.elapsed() > Duration::from_secs(10) {
                        lags.lock().push(f64::INFINITY);
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }));
    }
    let achieved = i as f64 / start.elapsed().as_secs_f64();
    let lag_cpu =
        (pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - lag_cpu0) / start.elapsed().as_secs_f64();
    for t in tasks {
        t.await.expect("lag task");
    }
    // the same figure as phase 3, but with changes batched the way a steady load batches them
    tokio::time::sleep(Duration::from_millis(500)).await;
    let lag_wire = (m.wire_bytes() - lag_wire0) as f64 / (2 * i) as f64;
    let mut l = lags.lock().clone();
    l.sort_by(|x, y| x.partial_cmp(y).expect("no NaN"));
    let (p50, p99) = (percentile(&l, 0.5), percentile(&l, 0.99));
    let mut r = reads.lock().clone();
    r.sort_by(|x, y| x.partial_cmp(y).expect("no NaN"));
    let read50 = percentile(&r, 0.5);
    println!("lag: {} probes at {achieved:.0} writes/s: p50 {p50:.2} ms, p99 {p99:.2} ms (one read round trip: p50 {read50:.2} ms)", l.len());
    rows.push((
        format!("replication lag at {} writes/s", args.rate),
        format!(
            "p50 {p50:.2} ms, p99 {p99:.2} ms ({} probes at {achieved:.0} writes/s; one read round trip: p50 {read50:.2} ms; the nodes used {:.0}% of one core)",
            l.len(),
            lag_cpu * 100.0
        ),
    ));

    // --- 3. bytes per replicated single-field change, one write at a time
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (w0, r0, b0) = (
        m.wire_bytes(),
        counter(&c, &m, "feed_pages").await,
        counter(&c, &m, "feed_batches").await,
    );
    for i in 0..args.changes {
        let r = c
            .patch(m.node("a").url(&format!("/v1/lag/d{}", i % 1000)))
            .header("content-type", "application/merge-patch+json")
            .body(json!({ "m": i }).to_string())
            .send()
            .await
            .expect("write");
        assert!(r.status().is_success());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let wire = (m.wire_bytes() - w0) as f64;
    let requests = counter(&c, &m, "feed_pages").await - r0;
    let batches = counter(&c, &m, "feed_batches").await - b0;
    let sizes = last_change_sizes(&c, &m, args.changes).await;
    let change = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
    let delivered = (args.changes * 2) as f64; // each change reaches two peers
    let per_change = wire / delivered;
    let per_request = (wire - delivered * change) / requests.max(1) as f64;
    println!(
        "bytes: {wire:.0} on the wire for {delivered} deliveries of {change:.0}-byte changes: \
         {per_change:.0} per delivery ({:.2}x), {requests} feed pages ({batches} with changes), \
         framing {per_request:.0} per page",
        per_change / change
    );
    rows.push((
        format!(
            "bytes between nodes per replicated change at {} writes/s",
            args.rate
        ),
        format!(
            "{lag_wire:.0} B on the wire vs {change:.0} B change ({:.2}x), probe reads excluded",
            lag_wire / change
        ),
    ));
    rows.push((
        "bytes between nodes per replicated single-field change, one write at a time".into(),
        format!(
            "{per_change:.0} B on the wire vs {change:.0} B change ({:.2}x); = change + {per_request:.0} B framing per feed page",
            per_change / change
        ),
    ));

    // --- 4. convergence after a partition with every document changed on both sides
    put_all(&c, m.node("a").url(""), "part", args.docs, None).await;
    let want = versions(&c, m.node("a"), "part").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while versions(&c, m.node("b"), "part").await != want
        || versions(&c, m.node("c"), "part").await != want
    {
        assert!(
            Instant::now() < deadline,
            "initial replication did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    m.partition("a");
    let (ua, ub) = (m.node("a").url(""), m.node("b").url(""));
    tokio::join!(
        put_all(&c, ua, "part", args.docs, Some("x")),
        put_all(&c, ub, "part", args.docs, Some("y"))
    );
    let healed = Instant::now();
    m.heal();
    // when replication resumes (the retry backoff after the partition), for the report
    let first = loop {
        let v = json_get(&c, &m.node("b").url("/v1/part/d0")).await;
        if v["value"]["x"].is_number() || healed.elapsed() > Duration::from_secs(60) {
            break healed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // digests are cheap to compare (8 KiB per node), so polling them barely disturbs the nodes
    let converged = loop {
        let d = [
            digest(&c, &m, "a").await,
            digest(&c, &m, "b").await,
            digest(&c, &m, "c").await,
        ];
        if d[0] == d[1] && d[1] == d[2] {
            break healed.elapsed();
        }
        assert!(
            healed.elapsed() < Duration::from_secs(300),
            "no convergence"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // and then check it the slow way: every document, same version everywhere
    let va = versions(&c, m.node("a"), "part").await;
    assert_eq!(va.len(), args.docs);
    assert_eq!(versions(&c, m.node("b"), "part").await, va);
    assert_eq!(versions(&c, m.node("c"), "part").await, va);
    let rate = args.docs as f64 / converged.as_secs_f64();
    println!("partition: {} documents changed on both sides converged {converged:?} after healing ({rate:.0} docs/s); the first change arrived after {first:?}", args.docs);
    rows.push((
        format!(
            "convergence after a partition, {} documents changed on both sides",
            args.docs
        ),
        format!(
            "{:.2} s after healing: {rate:.0} documents/s",
            converged.as_secs_f64()
        ),
    ));

    for id in IDS {
        let lines = m.node(id).log_lines();
        eprintln!("node {id}: {} log lines", lines.len());
        for l in lines.iter().filter(|l| !l.contains(" INFO ")).take(3) {
            eprintln!("  {l}");
        }
    }
    rows
}
