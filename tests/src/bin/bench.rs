//! The benchmark: starts a real node and drives it over HTTP with concurrent clients (one
//! keep-alive connection each), and in
//! the same run drives a constant axum handler (the machine's HTTP ceiling). Prints a markdown
//! table of requests/s and p50/p99 latency per operation, each with its ratio to the ceiling,
//! and the node's peak RSS. `--million` also stores 1,000,000 small documents and reports RSS.
//!
//! Build with `cargo build --release --workspace --bins`, run `target/release/bench`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_tests::load::{drive, start_ceiling, Phase, Req, Target};
use meridian_tests::Process;

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
    /// Which node phases to run (patch, hot, get, list, schema), e.g. to profile one. `schema`
    /// measures PATCH with a 20-field schema on the collection between two runs without one.
    #[arg(long, value_delimiter = ',', default_value = "patch,hot,get,list")]
    phases: Vec<String>,
}

/// A schema of 20 fields for the documents `fill` writes (name, email, n and 17 more).
fn twenty_field_schema() -> serde_json::Value {
    let mut props = serde_json::json!({
        "name": {"type": "string", "maxLength": 100},
        "email": {"type": "string", "format": "email"},
        "n": {"type": "integer", "minimum": 0},
    });
    for i in 0..17 {
        props[format!("f{i}")] = match i % 3 {
            0 => serde_json::json!({"type": "string", "maxLength": 50}),
            1 => serde_json::json!({"type": "integer", "minimum": 0, "maximum": 1000}),
            _ => serde_json::json!({"type": "array", "items": {"type": "string"}, "maxItems": 10}),
        };
    }
    serde_json::json!({"type": "object", "required": ["name", "n"], "properties": props})
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
/// One counter of the node's `/metrics`.
async fn metric(node: &Process, name: &str) -> f64 {
    let text = reqwest::get(node.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn flushes(node: &Process) -> f64 {
    metric(node, "meridian_flushes_total").await
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

    // --- the ceiling, measured before and after the node (the machine's speed drifts)
    let ceiling_phase = || async {
        let (mut ceiling, caddr) = start_ceiling(None);
        let p = drive(
            "ceiling (constant handler)",
            &Target::plain(&caddr),
            args.clients,
            dur,
            |_| Req::get("/".into()),
        )
        .await;
        let _ = ceiling.kill();
        let _ = ceiling.wait();
        p
    };
    let ceil_before = ceiling_phase().await;

    // --- a real node
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(dir.path(), &["--node-id", "bench"]);
    let fill_rate = fill(&node, args.docs, args.clients, "bench").await;
    println!("filled {} documents at {:.0} docs/s", args.docs, fill_rate);

    let addr = Target::plain(&node.addr);
    let doc = move |i: u64| format!("/v1/bench/u{:07}", (i * 7919) % docs);
    let run = |name: &str| args.phases.iter().any(|p| p == name);
    let flushes_before = flushes(&node).await;
    let mut measured = vec![];
    let mut per_flush = f64::NAN;
    if run("patch") {
        let patch = drive(
            "PATCH one field (durable)",
            &addr,
            args.clients,
            dur,
            move |i| Req::patch(doc(i), format!(r#"{{"n":{i}}}"#)),
        )
        .await;
        per_flush = patch.rps * (args.seconds as f64 + 1.0)
            / (flushes(&node).await - flushes_before).max(1.0);
        measured.push(patch);
    }
    if run("schema") {
        let patch = |label: &'static str| {
            drive(label, &addr, args.clients, dur, move |i| {
                Req::patch(doc(i), format!(r#"{{"n":{i}}}"#))
            })
        };
        let plain_before = patch("PATCH one field, no schema (before)").await;
        let http = reqwest::Client::new();
        let put = http
            .put(node.url("/v1/_schemas/bench"))
            .header("content-type", "application/json")
            .body(twenty_field_schema().to_string())
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.text().await.unwrap());
        let with = patch("PATCH one field, 20-field schema").await;
        let del = http
            .delete(node.url("/v1/_schemas/bench"))
            .send()
            .await
            .unwrap();
        assert!(del.status().is_success());
        let plain_after = patch("PATCH one field, no schema (after)").await;
        let plain = (plain_before.rps + plain_after.rps) / 2.0;
        println!(
            "PATCH with a 20-field schema: {:.2}x of PATCH without (p99 {:.2} ms against {:.2} / {:.2} ms)",
            with.rps / plain,
            with.p99_ms,
            plain_before.p99_ms,
            plain_after.p99_ms
        );
        measured.extend([plain_before, with, plain_after]);
    }
    if run("hot") {
        measured.push(
            drive(
                "PATCH one hot document (durable)",
                &addr,
                args.clients,
                dur,
                |i| Req::patch("/v1/bench/u0000000".into(), format!(r#"{{"hot":{i}}}"#)),
            )
            .await,
        );
    }
    if run("get") {
        measured.push(
            drive("GET a document", &addr, args.clients, dur, move |i| {
                Req::get(doc(i))
            })
            .await,
        );
    }
    if run("list") {
        measured.push(
            drive("list 100 documents", &addr, args.clients, dur, move |i| {
                Req::get(format!(
                    "/v1/bench?limit=100&after=u{:07}",
                    (i * 7919) % docs
                ))
            })
            .await,
        );
    }
    let rss = peak_rss_mib(node.pid());
    let ceil_after = ceiling_phase().await;
    let ceil = Phase {
        name: "ceiling (constant handler), mean of before and after".into(),
        rps: (ceil_before.rps + ceil_after.rps) / 2.0,
        p50_ms: (ceil_before.p50_ms + ceil_after.p50_ms) / 2.0,
        p99_ms: (ceil_before.p99_ms + ceil_after.p99_ms) / 2.0,
        errors: ceil_before.errors + ceil_after.errors,
    };
    println!(
        "ceiling before: {:.0} req/s, after: {:.0} req/s",
        ceil_before.rps, ceil_after.rps
    );

    println!();
    println!("| operation | requests/s | p50 ms | p99 ms | errors | throughput vs ceiling |");
    println!("|---|---:|---:|---:|---:|---:|");
    for p in std::iter::once(&ceil).chain(&measured) {
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
    println!(
        "document cache: {:.0} hits, {:.0} misses",
        metric(&node, "meridian_cache_hits_total").await,
        metric(&node, "meridian_cache_misses_total").await
    );
    node.kill9();

    if args.million {
        let dir = tempfile::tempdir().unwrap();
        let node = Process::start(dir.path(), &["--node-id", "million"]);
        let rate = fill(&node, args.million_docs, args.clients, "m").await;
        let status = |node: &Process| {
            let url = node.url("/v1/status");
            async move {
                let s: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
                s
            }
        };
        let mib =
            |s: &serde_json::Value| s["bytes_on_disk"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;
        let filled = status(&node).await;
        // the feed of a node without peers is trimmed every 10 s: show the disk after a trim
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
        let trimmed = status(&node).await;
        println!();
        println!(
            "stored {} documents at {:.0} docs/s; node RSS now {:.0} MiB, peak {:.0} MiB; {:.0} MiB on disk at the end of the fill, {:.0} MiB 12 s later",
            filled["documents"],
            rate,
            node.rss_kib() as f64 / 1024.0,
            peak_rss_mib(node.pid()),
            mib(&filled),
            mib(&trimmed),
        );
        // sled does not give freed space back to the file system; it reuses it. What trimming
        // saves shows in how much more disk the next documents take.
        let more = args.million_docs / 4;
        fill(&node, more, args.clients, "m2").await;
        tokio::time::sleep(std::time::Duration::from_secs(12)).await;
        let after = status(&node).await;
        println!(
            "{} more documents: {:.0} MiB on disk, {:.0} bytes more per document",
            more,
            mib(&after),
            (after["bytes_on_disk"].as_f64().unwrap_or(0.0)
                - trimmed["bytes_on_disk"].as_f64().unwrap_or(0.0))
                / more as f64
        );
    }
}
