//! The benchmark: starts a real node and drives it over HTTP with concurrent clients, and in
//! the same run drives a constant axum handler (the machine's HTTP ceiling). Prints a markdown
//! table of requests/s and p50/p99 latency per operation, each with its ratio to the ceiling,
//! and the node's peak RSS. `--million` also stores 1,000,000 small documents and reports RSS.
//!
//! Build with `cargo build --release --workspace --bins`, run `target/release/bench`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_tests::{sibling_binary, Process};

#[derive(Parser, Debug)]
struct Args {
    /// Seconds each measured phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Documents in the working set.
    #[arg(long, default_value_t = 10_000)]
    docs: usize,
    /// Also store 1,000,000 small documents and report RSS.
    #[arg(long)]
    million: bool,
    /// How many documents `--million` stores.
    #[arg(long, default_value_t = 1_000_000)]
    million_docs: usize,
}

struct Phase {
    name: String,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Drives `make(client, i)` from `clients` tasks for `dur` after a one-second warm-up.
async fn drive<F, Fut>(name: &str, clients: usize, dur: Duration, make: F) -> Phase
where
    F: Fn(reqwest::Client, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for _ in 0..clients {
        let (client, make, errors, counter) = (
            client.clone(),
            make.clone(),
            errors.clone(),
            counter.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let now = Instant::now();
                if now - start > warmup + dur {
                    break;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let ok = make(client.clone(), i).await;
                let done = Instant::now();
                if now - start >= warmup && done - start <= warmup + dur {
                    if ok {
                        lat.push((done - now).as_micros() as u32);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Phase {
        name: name.into(),
        rps: all.len() as f64 / dur.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn start_ceiling() -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(sibling_binary("MERIDIAN_CEILING_BIN", "ceiling"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the ceiling server");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("listen=")
        .nth(1)
        .expect("ceiling address")
        .trim()
        .to_owned();
    (child, addr)
}

fn peak_rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Writes `n` small documents with `clients` concurrent writers; returns docs/s.
async fn fill(node: &Process, n: usize, clients: usize, collection: &str) -> f64 {
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = vec![];
    for _ in 0..clients {
        let (client, next, base) = (
            client.clone(),
            next.clone(),
            node.url(&format!("/v1/{collection}/")),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    break;
                }
                if i > 0 && i.is_multiple_of(100_000) {
                    eprintln!(
                        "  {i} documents written, {:.0} docs/s so far",
                        i as f64 / start.elapsed().as_secs_f64()
                    );
                }
                let body = format!(r#"{{"name":"user {i}","email":"u{i}@example.com","n":{i}}}"#);
                let r = client
                    .put(format!("{base}u{i:07}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                assert!(
                    r.map(|r| r.status().is_success()).unwrap_or(false),
                    "fill write {i} failed"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The node's `meridian_flushes_total`.
async fn flushes(node: &Process) -> f64 {
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("meridian_flushes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dur = Duration::from_secs(args.seconds);
    let docs = args.docs as u64;
    println!(
        "clients={} seconds/phase={} working set={} docs",
        args.clients, args.seconds, args.docs
    );

    // --- the ceiling
    let (mut ceiling, caddr) = start_ceiling();
    let url = format!("http://{caddr}/");
    let ceil = drive(
        "ceiling (constant handler)",
        args.clients,
        dur,
        move |c, _| {
            let url = url.clone();
            async move {
                c.get(&url)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let _ = ceiling.kill();
    let _ = ceiling.wait();

    // --- a real node
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &["--node-id", "bench"]);
    let fill_rate = fill(&node, args.docs, args.clients, "bench").await;
    println!("filled {} documents at {:.0} docs/s", args.docs, fill_rate);

    let base = node.url("/v1/bench/");
    let b = base.clone();
    let flushes_before = flushes(&node).await;
    let patch = drive(
        "PATCH one field (durable)",
        args.clients,
        dur,
        move |c, i| {
            let url = format!("{b}u{:07}", (i * 7919) % docs);
            async move {
                c.patch(&url)
                    .header("content-type", "application/merge-patch+json")
                    .body(format!(r#"{{"n":{i}}}"#))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let per_flush =
        patch.rps * (args.seconds as f64 + 1.0) / (flushes(&node).await - flushes_before).max(1.0);
    let hot_url = node.url("/v1/bench/u0000000");
    let hot = drive(
        "PATCH one hot document (durable)",
        args.clients,
        dur,
        move |c, i| {
            let url = hot_url.clone();
            async move {
                c.patch(&url)
                    .header("content-type", "application/merge-patch+json")
                    .body(format!(r#"{{"hot":{i}}}"#))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let b = base.clone();
    let get = drive("GET a document", args.clients, dur, move |c, i| {
        let url = format!("{b}u{:07}", (i * 7919) % docs);
        async move {
            c.get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    })
    .await;
    let list_url = node.url("/v1/bench");
    let list = drive("list 100 documents", args.clients, dur, move |c, i| {
        let url = format!("{list_url}?limit=100&after=u{:07}", (i * 7919) % docs);
        async move {
            c.get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    })
    .await;
    let rss = peak_rss_mib(node.pid());

    println!();
    println!("| operation | requests/s | p50 ms | p99 ms | errors | throughput vs ceiling |");
    println!("|---|---:|---:|---:|---:|---:|");
    for p in [&ceil, &patch, &hot, &get, &list] {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.2}x |",
            p.name,
            p.rps,
            p.p50_ms,
            p.p99_ms,
            p.errors,
            p.rps / ceil.rps
        );
    }
    println!();
    println!("node peak RSS: {rss:.0} MiB; about {per_flush:.1} PATCHes per flush (group commit)");
    node.kill9();

    if args.million {
        let dir = tempfile::tempdir().unwrap();
        let node = Process::start(dir.path(), &["--node-id", "million"]);
        let rate = fill(&node, args.million_docs, args.clients, "m").await;
        let status: serde_json::Value = reqwest::get(node.url("/v1/status"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        println!();
        println!(
            "stored {} documents at {:.0} docs/s; node RSS now {:.0} MiB, peak {:.0} MiB; {:.0} MiB on disk",
            status["documents"],
            rate,
            node.rss_kib() as f64 / 1024.0,
            peak_rss_mib(node.pid()),
            status["bytes_on_disk"].as_f64().unwrap_or(0.0) / (1 << 20) as f64
        );
    }
}
