//! The change-feed benchmark: `--streams` Server-Sent Events streams open on a release node
//! (one per document), `--rate` PATCHes per second spread over those documents for
//! `--seconds`: the time from a write's acknowledgement to its event on the document's stream
//! (p50, p99, max). Then the node's PATCH throughput with 64 clients, with no streams open and
//! with all of them open, in the same run. Build with `cargo build --release --workspace
//! --bins`, run `target/release/bench_changes`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_tests::sse::EventStream;
use meridian_tests::{percentile, Process};
use parking_lot::Mutex;
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Writes per second while measuring latency.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Seconds of each throughput phase.
    #[arg(long, default_value_t = 5)]
    throughput_seconds: u64,
}

/// When each write (document, n) was acknowledged, and when its event arrived.
#[derive(Default)]
struct Times {
    sent: HashMap<(usize, u64), Instant>,
    acked: HashMap<(usize, u64), Instant>,
    seen: HashMap<(usize, u64), Instant>,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("an HTTP client")
}

async fn patch(c: &reqwest::Client, url: &str, n: u64) -> bool {
    c.patch(url)
        .header("content-type", "application/merge-patch+json")
        .body(json!({ "n": n }).to_string())
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// PATCHes per second with 64 closed-loop clients over `docs` documents.
async fn throughput(node: &Process, docs: usize, secs: u64) -> f64 {
    let c = client();
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..64)
        .map(|w| {
            let (c, base) = (c.clone(), node.url("/v1/bench"));
            tokio::spawn(async move {
                let (mut done, mut i) = (0u64, w);
                while Instant::now() < end {
                    // a new value each time (an unchanged value is no change), and high: never
                    // confused with the latency phase's writes
                    if patch(&c, &format!("{base}/d{}", i % docs), (1 << 40) + i as u64).await {
                        done += 1;
                    }
                    i += 64;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let node = Process::start(
        dir.path(),
        &[
            "--node-id",
            "us",
            "--changes-max-streams",
            &(a.streams + 10).to_string(),
        ],
    );
    println!(
        "meridian change-feed benchmark: release node {} on loopback, 2 cores shared with the clients\n",
        node.addr
    );
    let c = client();
    for d in 0..a.streams {
        assert!(patch(&c, &node.url(&format!("/v1/bench/d{d}")), 0).await);
    }
    let without = throughput(&node, a.streams, a.throughput_seconds).await;

    let times = Arc::new(Mutex::new(Times::default()));
    let sc = reqwest::Client::new();
    let mut readers = vec![];
    for d in 0..a.streams {
        let url = node.url(&format!("/v1/bench/d{d}"));
        let mut s = EventStream::open(&sc, &url, &[]).await.expect("a stream");
        assert_eq!(s.next().await.expect("the document").event, "document");
        let times = times.clone();
        readers.push(tokio::spawn(async move {
            while let Some(ev) = s.next().await {
                if ev.event != "change" {
                    eprintln!("stream {d}: {}", ev.event);
                    continue;
                }
                let n = ev.json()["value"]["n"].as_u64().unwrap_or(0);
                times.lock().seen.insert((d, n), Instant::now());
            }
        }));
    }
    println!("{} streams open", a.streams);

    // open loop: one write every 1/rate s, spread round-robin over the documents
    let total = a.rate * a.seconds;
    let gap = Duration::from_secs_f64(1.0 / a.rate as f64);
    let start = Instant::now();
    let mut writes = vec![];
    for i in 0..total {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let (c, times) = (c.clone(), times.clone());
        let d = (i as usize) % a.streams;
        let n = i + 1;
        let url = node.url(&format!("/v1/bench/d{d}"));
        writes.push(tokio::spawn(async move {
            times.lock().sent.insert((d, n), Instant::now());
            if patch(&c, &url, n).await {
                times.lock().acked.insert((d, n), Instant::now());
            }
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    let with = throughput(&node, a.streams, a.throughput_seconds).await;

    let t = times.lock();
    let mut lat: Vec<f64> = t
        .acked
        .iter()
        .filter_map(|(k, ack)| {
            let seen = t.seen.get(k)?;
            // an event can beat the acknowledgement's arrival at the writer: count that as 0
            Some(seen.saturating_duration_since(*ack).as_secs_f64() * 1e3)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let since = |from: &HashMap<(usize, u64), Instant>, to: &HashMap<(usize, u64), Instant>| {
        let mut v: Vec<f64> = t
            .acked
            .keys()
            .filter_map(|k| {
                Some(
                    to.get(k)?
                        .saturating_duration_since(*from.get(k)?)
                        .as_secs_f64()
                        * 1e3,
                )
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let rtt = since(&t.sent, &t.acked);
    let sent_to_event = since(&t.sent, &t.seen);
    let missing = t.acked.keys().filter(|k| !t.seen.contains_key(k)).count();
    println!("| measure | value |\n|---|---:|");
    println!("| streams open | {} |", a.streams);
    println!(
        "| writes acknowledged (offered {} /s for {} s) | {} |",
        a.rate,
        a.seconds,
        t.acked.len()
    );
    println!("| events missing for acknowledged writes | {missing} |");
    println!(
        "| ack → event on the stream, p50 ms | {:.2} |",
        percentile(&lat, 0.5)
    );
    println!(
        "| ack → event on the stream, p99 ms | {:.2} |",
        percentile(&lat, 0.99)
    );
    println!(
        "| ack → event on the stream, max ms | {:.2} |",
        percentile(&lat, 1.0)
    );
    println!(
        "| write sent → event on the stream, p50 / p99 ms | {:.2} / {:.2} |",
        percentile(&sent_to_event, 0.5),
        percentile(&sent_to_event, 0.99)
    );
    println!(
        "| baseline in the same phase: PATCH round trip, p50 / p99 ms | {:.2} / {:.2} |",
        percentile(&rtt, 0.5),
        percentile(&rtt, 0.99)
    );
    println!("| PATCH/s, 64 clients, no streams open | {without:.0} |");
    println!(
        "| PATCH/s, 64 clients, {} streams open | {with:.0} |",
        a.streams
    );
    println!("| with / without | {:.2}x |", with / without);
    println!("\n(about {achieved:.0} writes/s offered in the latency phase, including the drain)");
    drop(t);
    for r in readers {
        r.abort();
    }
}
