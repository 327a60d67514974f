//! The cost of trace propagation on PATCH: nodes side by side, each with its own 1,000
//! documents, driven in interleaved rounds by 64 keep-alive clients: one of this build (the
//! release binary) sent PATCHes without a `traceparent` (a fresh trace per request), one of
//! this build sent PATCHes with one (the caller's trace continued), and optionally one of an
//! earlier build without trace context (`--baseline-bin`). Each node takes the same writes in
//! the same order (a document's cost grows with its history, so one node serving two cases
//! would favour the first). Prints each round, then the medians and their ratios to the
//! baseline (or, without one, to PATCH without a `traceparent`), with server CPU per PATCH.
//!
//! `cargo build --release --workspace --bins && target/release/bench_trace
//! [--baseline-bin path/to/older/meridian]`

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use meridian_tests::load::{drive, Req, Target};
use meridian_tests::Process;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// A `meridian` binary of a build before trace context, to compare against.
    #[arg(long)]
    baseline_bin: Option<PathBuf>,
}

const DOCS: u64 = 1_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn start(bin: Option<&PathBuf>, dir: &std::path::Path) -> Process {
    match bin {
        Some(b) => Process::try_start_bin(b, dir, &[], &[])
            .unwrap_or_else(|(code, log)| panic!("{} exited {code:?}: {log:?}", b.display())),
        None => Process::start(dir, &[]),
    }
}

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut nodes: Vec<Process> = vec![
        start(None, &dir.path().join("a")),
        start(None, &dir.path().join("b")),
    ];
    if let Some(b) = &a.baseline_bin {
        nodes.push(start(Some(b), &dir.path().join("c")));
    }
    let dur = Duration::from_secs(a.seconds);
    let patch = |i: u64| {
        Req::patch(
            format!("/v1/bench/u{:04}", i % DOCS),
            format!(r#"{{"n":{i}}}"#),
        )
    };
    for node in &nodes {
        drive(
            "fill",
            &Target::plain(&node.addr),
            a.clients,
            Duration::from_secs(2),
            patch,
        )
        .await;
    }
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut cases: Vec<(String, usize, Target)> = vec![
        (
            "PATCH, no traceparent".into(),
            0,
            Target::plain(&nodes[0].addr),
        ),
        (
            "PATCH, with a traceparent".into(),
            1,
            Target::plain(&nodes[1].addr).with_header("traceparent", traceparent),
        ),
    ];
    if nodes.len() > 2 {
        cases.push((
            "PATCH, baseline build".into(),
            2,
            Target::plain(&nodes[2].addr),
        ));
    }
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![vec![]; cases.len()];
    for round in 0..a.rounds {
        for (k, (name, n, target)) in cases.iter().enumerate() {
            let node = &nodes[*n];
            let cpu0 = node.cpu_secs();
            let p = drive(name, target, a.clients, dur, patch).await;
            let cpu = (node.cpu_secs() - cpu0) / (p.rps * dur.as_secs_f64()).max(1.0);
            println!(
                "round {round}: {name}: {:.0}/s, p99 {:.1} ms, {:.0} µs CPU per PATCH, {} errors",
                p.rps,
                p.p99_ms,
                cpu * 1e6,
                p.errors
            );
            results[k].push((p.rps, p.p99_ms, cpu));
        }
    }
    // the baseline build if there is one, else PATCH without a traceparent
    let b = if nodes.len() > 2 { cases.len() - 1 } else { 0 };
    let (base_name, base) = (
        &cases[b].0,
        median(results[b].iter().map(|r| r.0).collect()),
    );
    println!("\n| case | PATCH/s (median) | ratio to {base_name} | p99 | CPU per PATCH |");
    println!("|---|---:|---:|---:|---:|");
    for (k, (name, _, _)) in cases.iter().enumerate() {
        let rps = median(results[k].iter().map(|r| r.0).collect());
        let p99 = median(results[k].iter().map(|r| r.1).collect());
        let cpu = median(results[k].iter().map(|r| r.2).collect());
        println!(
            "| {name} | {rps:.0} | {:.2}x | {p99:.1} ms | {:.0} µs |",
            rps / base,
            cpu * 1e6
        );
    }
}
