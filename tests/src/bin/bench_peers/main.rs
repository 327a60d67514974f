//! Meridian beside the systems a user would pick instead, measured in one run on this machine:
//! PostgreSQL 15 (a durable `UPDATE ... jsonb_set` and a `SELECT` over TCP, with fsync and
//! synchronous_commit on, driven by `pgbench -M prepared`) and Redis 7 (`GET` with
//! `--appendonly yes --appendfsync always`, driven by `redis-benchmark`), each started by this
//! bench in a temporary directory on its own port when it is installed (`apt-get install
//! postgresql redis-server`); Meridian's durable PATCH and GET and the constant axum handler
//! (`ceiling`) driven by the workspace's load generator. Every system holds the same 1,000
//! profile documents; the phases run interleaved, `--rounds` times, and the medians and their
//! ratios are printed, with each server's CPU per request (its process and reaped children).
//!
//! Also the automerge floor: automerge on its own, single-threaded, in this process, doing what a
//! PATCH needs of it (a transaction putting one field, the commit, the change's bytes, the
//! incremental save) plus a JSON render of the document; and Meridian's CPU per PATCH against
//! (floor + the constant handler's CPU per request).
//!
//! `cargo build --release --workspace --bins && target/release/bench_peers [--seconds 8] [--rounds 3]`
//!
//! Layout: this file, the phases and the report; `postgres`, `redis`: the peers, started and
//! driven; `floor`: the automerge floor.

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use meridian_tests::load::{drive, start_ceiling, Phase, Req, Target};
use meridian_tests::{cpu_secs, Process};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Documents every system holds and the load spreads over.
    #[arg(long, default_value_t = 1000)]
    docs: usize,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(args));
}

/// CPU seconds of a process and of the children it has reaped (PostgreSQL's backends).
fn cpu_with_children(pid: u32) -> f64 {
    meridian_tests::cpu_secs_with_children(pid as i32)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("addr")
        .port()
}

fn profile(i: usize) -> serde_json::Value {
    serde_json::json!({"name": format!("user {i}"), "email": format!("u{i}@example.com"),
        "plan": "free", "n": i})
}

/// What one phase measured: throughput, p99, server CPU per request.
#[derive(Debug, Clone, Copy)]
struct Figure {
    rps: f64,
    p99_ms: f64,
    cpu_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

mod floor;
mod postgres;
mod redis;

use floor::automerge_floor;
use postgres::start_postgres;
use redis::start_redis;

// --- Meridian and the constant handler ----------------------------------------------------------

fn figure(p: &Phase, cpu: f64, secs: u64) -> Figure {
    // the phase's requests: its rate over the measured time, plus the one-second warm-up's
    let requests = p.rps * (secs + 1) as f64;
    Figure {
        rps: p.rps,
        p99_ms: p.p99_ms,
        cpu_us: cpu * 1e6 / requests,
    }
}

async fn run(args: Args) {
    let dir = tempfile::tempdir().expect("temp dir");
    let secs = args.seconds;
    let docs = args.docs;

    // --- Meridian, its documents written once
    let node = Process::start(&dir.path().join("meridian"), &["--node-id", "bench"]);
    let c = meridian_tests::http_client();
    for i in 0..docs {
        let r = c
            .put(node.url(&format!("/v1/users/u{i}")))
            .json(&profile(i))
            .send()
            .await
            .expect("put");
        assert!(r.status().is_success());
    }
    let target = Target::plain(&node.addr);
    let (mut ceiling, ceiling_addr) = start_ceiling(None);
    let ceiling_target = Target::plain(&ceiling_addr);
    let pg = start_postgres(&dir.path().join("pg"), docs);
    let redis = start_redis(&dir.path().join("redis"), docs);
    if pg.is_none() {
        eprintln!(
            "PostgreSQL is not installed (apt-get install postgresql): its phases are left out"
        );
    }
    if redis.is_none() {
        eprintln!("Redis is not installed (apt-get install redis-server): its phases are left out");
    }
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).expect("scratch");
    if unsafe { libc::geteuid() } == 0 {
        let _ = Command::new("chmod").arg("777").arg(&scratch).status();
    }
    let update = "\\set id random(0, 999)\nUPDATE profiles SET doc = jsonb_set(doc, '{n}', to_jsonb(:id::int)) WHERE id = :id;\n"
        .replace("999", &(docs - 1).to_string());
    let select = "\\set id random(0, 999)\nSELECT doc FROM profiles WHERE id = :id;\n"
        .replace("999", &(docs - 1).to_string());

    let mut rows: std::collections::BTreeMap<&str, Vec<Figure>> = Default::default();
    let mut floors = vec![];
    for round in 1..=args.rounds {
        eprintln!("round {round} of {}", args.rounds);
        let cpu0 = node.cpu_secs();
        let p = drive(
            "PATCH",
            &target,
            args.clients,
            Duration::from_secs(secs),
            move |i| {
                Req::patch(
                    format!("/v1/users/u{}", (i * 7919) % docs as u64),
                    format!("{{\"n\":{i}}}"),
                )
            },
        )
        .await;
        assert_eq!(p.errors, 0);
        rows.entry("Meridian PATCH (durable)")
            .or_default()
            .push(figure(&p, node.cpu_secs() - cpu0, secs));
        if let Some(pg) = &pg {
            rows.entry("PostgreSQL UPDATE jsonb_set (durable)")
                .or_default()
                .push(pg.pgbench(&update, args.clients, secs, &scratch));
        }
        let cpu0 = node.cpu_secs();
        let g = drive(
            "GET",
            &target,
            args.clients,
            Duration::from_secs(secs),
            move |i| Req::get(format!("/v1/users/u{}", (i * 7919) % docs as u64)),
        )
        .await;
        assert_eq!(g.errors, 0);
        rows.entry("Meridian GET")
            .or_default()
            .push(figure(&g, node.cpu_secs() - cpu0, secs));
        if let Some(r) = &redis {
            let guess = rows
                .get("Meridian GET")
                .and_then(|v| v.last())
                .map_or(50_000.0, |f| f.rps);
            rows.entry("Redis GET (AOF always)")
                .or_default()
                .push(r.bench(&["GET", "u:__rand_int__"], args.clients, secs, docs, guess));
        }
        if let Some(pg) = &pg {
            rows.entry("PostgreSQL SELECT")
                .or_default()
                .push(pg.pgbench(&select, args.clients, secs, &scratch));
        }
        let cpu0 = cpu_secs(ceiling.id() as i32);
        let k = drive(
            "ceiling",
            &ceiling_target,
            args.clients,
            Duration::from_secs(secs),
            |_| Req::get("/".into()),
        )
        .await;
        rows.entry("constant axum handler GET")
            .or_default()
            .push(figure(&k, cpu_secs(ceiling.id() as i32) - cpu0, secs));
        floors.push(automerge_floor(docs, 20_000));
    }
    let _ = ceiling.kill();

    println!("| phase ({} clients, {} docs, {} s, median of {} rounds) | req/s | p99 | server CPU per request |", args.clients, docs, secs, args.rounds);
    println!("|---|---:|---:|---:|");
    let med = |name: &str| -> Option<Figure> {
        rows.get(name).map(|v| Figure {
            rps: median(v.iter().map(|f| f.rps).collect()),
            p99_ms: median(v.iter().map(|f| f.p99_ms).collect()),
            cpu_us: median(v.iter().map(|f| f.cpu_us).collect()),
        })
    };
    for name in rows.keys() {
        let f = med(name).expect("a row");
        println!(
            "| {name} | {:.0} | {:.1} ms | {:.0} µs |",
            f.rps, f.p99_ms, f.cpu_us
        );
    }
    let floor = median(floors.clone());
    println!("| automerge alone: one write + JSON render, single-threaded | | | {floor:.1} µs |");
    println!();
    let ratio = |a: &str, b: &str| -> Option<String> {
        let (x, y) = (rows.get(a)?, rows.get(b)?);
        let per: Vec<f64> = x.iter().zip(y).map(|(x, y)| x.rps / y.rps).collect();
        Some(format!(
            "{:.2}x (rounds: {})",
            median(per.clone()),
            per.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    };
    println!("| ratio | figure | target |");
    println!("|---|---:|---:|");
    if let Some(r) = ratio(
        "Meridian PATCH (durable)",
        "PostgreSQL UPDATE jsonb_set (durable)",
    ) {
        println!("| PATCH / PostgreSQL UPDATE | {r} | >= 1.0x |");
    }
    if let Some(r) = ratio("Meridian GET", "Redis GET (AOF always)") {
        println!("| GET / Redis GET | {r} | >= 0.9x |");
    }
    if let Some(r) = ratio("Meridian GET", "PostgreSQL SELECT") {
        println!("| GET / PostgreSQL SELECT | {r} | |");
    }
    if let (Some(p), Some(k)) = (
        med("Meridian PATCH (durable)"),
        med("constant axum handler GET"),
    ) {
        println!(
            "| CPU per PATCH / (automerge floor + constant handler) | {:.2}x ({:.0} / ({floor:.1} + {:.1}) µs) | <= 3x |",
            p.cpu_us / (floor + k.cpu_us),
            p.cpu_us,
            k.cpu_us
        );
    }
    if let (Some(p), Some(q)) = (
        med("Meridian PATCH (durable)"),
        med("PostgreSQL UPDATE jsonb_set (durable)"),
    ) {
        println!(
            "| PATCH p99 / UPDATE p99 | {:.2}x ({:.1} / {:.1} ms) | <= 1.0x |",
            p.p99_ms / q.p99_ms,
            p.p99_ms,
            q.p99_ms
        );
    }
    if let (Some(g), Some(k)) = (med("Meridian GET"), med("constant axum handler GET")) {
        println!(
            "| GET p99 / constant handler p99 | {:.2}x ({:.1} / {:.1} ms) | <= 2x |",
            g.p99_ms / k.p99_ms,
            g.p99_ms,
            k.p99_ms
        );
    }
}
