//! What API keys, scoped tokens and TLS cost: the node's GET and durable PATCH with no keys,
//! with a key on every request, with a JWT on every request, and with a key over TLS; the constant handler over plain HTTP and over TLS
//! (the node's own TLS listener) in the same run, each measured before and after the nodes.
//! The four nodes run side by side and are measured in interleaved rounds (GET on each, then
//! PATCH on each, `--rounds` times); prints each setting's median and its ratio to the ceiling
//! of the same transport and to the setting without keys.
//!
//! `cargo build --release --workspace --bins && target/release/bench_auth`

use std::process::Command;
use std::time::Duration;

use clap::Parser;
use meridian_tests::load::{drive, start_ceiling, Phase, Req, Target};
use meridian_tests::{binary, Process};

#[derive(Parser, Debug)]
struct Args {
    /// Seconds each measured phase runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Documents in the working set.
    #[arg(long, default_value_t = 10_000)]
    docs: u64,
    /// Interleaved rounds over the four settings.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// Each round's figures of one setting, with the node's CPU seconds per request.
type Runs = Vec<(Phase, f64)>;

#[tokio::main]
async fn main() {
    let a = Args::parse();
    let dur = Duration::from_secs(a.seconds);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = Command::new(binary())
        .args(["cert", "--dir", certs.to_str().unwrap(), "--node", "bench"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let (cert, key, ca) = (
        certs.join("bench.pem"),
        certs.join("bench.key"),
        certs.join("ca.pem"),
    );
    let (api_key, entry) = meridian_tests::create_key("bench", "write", "bench");
    let keys = dir.path().join("keys.toml");
    // a file of 100 keys: the lookup compares against every one
    let mut file = String::new();
    for i in 0..99 {
        let (_, e) = meridian_http::auth::generate();
        file += &format!(
            "[[keys]]\nname = \"k{i}\"\nhash = \"{e}\"\naccess = {{ bench = \"read\" }}\n"
        );
    }
    file += &entry;
    // tokens too, with a rate far above what the load makes (the limiter runs, and never
    // refuses)
    file += &meridian_tests::tokens::section("users");
    file += "\n[rate_limit]\nper_sub = { per_second = 1e9, burst = 1000000000 }\n";
    std::fs::write(&keys, file).unwrap();
    let bearer = format!("Bearer {}", api_key.trim());
    let jwt = format!(
        "Bearer {}",
        meridian_tests::tokens::token(
            "bench-device",
            serde_json::json!({"jti": "bench-1", "meridian": {"grants": [
                {"collection": "bench", "prefix": "u", "access": "write"}]}}),
        )
    );

    let ceilings = |tls: bool| {
        let (cert, key, ca) = (cert.clone(), key.clone(), ca.clone());
        async move {
            let tls_args = tls.then(|| {
                (
                    cert.to_str().unwrap().to_owned(),
                    key.to_str().unwrap().to_owned(),
                )
            });
            let (mut child, addr) =
                start_ceiling(tls_args.as_ref().map(|(c, k)| (c.as_str(), k.as_str())));
            let target = if tls {
                Target::tls(&addr, &ca)
            } else {
                Target::plain(&addr)
            };
            let p = drive("ceiling", &target, a.clients, dur, |_| Req::get("/".into())).await;
            let _ = child.kill();
            let _ = child.wait();
            p
        }
    };
    let plain_before = ceilings(false).await;
    let tls_before = ceilings(true).await;

    let docs = a.docs;
    let doc = move |i: u64| format!("/v1/bench/u{:07}", (i * 7919) % docs);
    let settings: Vec<(&str, Vec<&str>, bool)> = vec![
        ("no keys", vec![], false),
        (
            "a key on every request",
            vec!["--auth-file", keys.to_str().unwrap()],
            false,
        ),
        (
            "a JWT on every request",
            vec!["--auth-file", keys.to_str().unwrap()],
            false,
        ),
        (
            "a key, over TLS",
            vec![
                "--auth-file",
                keys.to_str().unwrap(),
                "--tls-cert",
                cert.to_str().unwrap(),
                "--tls-key",
                key.to_str().unwrap(),
            ],
            true,
        ),
    ];
    // every node starts on fresh data and fills its working set before any is measured
    let mut nodes = vec![];
    for (label, extra, tls) in &settings {
        let mut args = vec!["--node-id", "bench"];
        args.extend(extra.iter().copied());
        let data = tempfile::tempdir().unwrap();
        let node = Process::start(data.path(), &args);
        let mut target = if *tls {
            Target::tls(&node.addr, &ca)
        } else {
            Target::plain(&node.addr)
        };
        match *label {
            "no keys" => {}
            "a JWT on every request" => target = target.with_header("authorization", &jwt),
            _ => target = target.with_header("authorization", &bearer),
        }
        let fill = drive(
            "fill",
            &target,
            a.clients,
            Duration::from_secs(2),
            move |i| {
                Req::patch(
                    format!("/v1/bench/u{:07}", i % docs),
                    format!(r#"{{"n":{i}}}"#),
                )
            },
        )
        .await;
        eprintln!("{label}: fill {:.0} writes/s", fill.rps);
        nodes.push((label.to_string(), *tls, node, target, data));
    }
    // (name, over TLS, each round's figures and the node's CPU seconds per request)
    let mut rows: Vec<(String, bool, Runs)> = vec![];
    for op in ["GET", "PATCH"] {
        for (label, tls, ..) in &nodes {
            rows.push((format!("{op}, {label}"), *tls, vec![]));
        }
    }
    for _ in 0..a.rounds {
        for (k, op) in ["GET", "PATCH"].into_iter().enumerate() {
            for (n, (label, _, node, target, _)) in nodes.iter().enumerate() {
                let name = format!("{op}, {label}");
                let cpu0 = node.cpu_secs();
                let p = if op == "GET" {
                    drive(&name, target, a.clients, dur, move |i| Req::get(doc(i))).await
                } else {
                    drive(&name, target, a.clients, dur, move |i| {
                        Req::patch(doc(i), format!(r#"{{"n":{i}}}"#))
                    })
                    .await
                };
                let per_request = (node.cpu_secs() - cpu0) / (p.rps * dur.as_secs_f64()).max(1.0);
                rows[k * nodes.len() + n].2.push((p, per_request));
            }
        }
    }
    let per_op = nodes.len();
    for (_, _, node, _, _) in nodes {
        let _ = node.terminate();
    }
    let plain_after = ceilings(false).await;
    let tls_after = ceilings(true).await;
    let mean = |b: &Phase, a: &Phase| (b.rps + a.rps) / 2.0;
    let (plain, tls) = (
        mean(&plain_before, &plain_after),
        mean(&tls_before, &tls_after),
    );
    println!("ceiling (constant handler): plain {:.0} req/s (before {:.0}, after {:.0}; p99 {:.2} ms), TLS {:.0} req/s (before {:.0}, after {:.0}; p99 {:.2} ms)",
        plain, plain_before.rps, plain_after.rps, (plain_before.p99_ms + plain_after.p99_ms) / 2.0,
        tls, tls_before.rps, tls_after.rps, (tls_before.p99_ms + tls_after.p99_ms) / 2.0);
    println!();
    println!("| operation | requests/s (median of {}) | p50 ms | p99 ms | errors | vs ceiling of its transport | vs no keys | node CPU µs per request | vs no keys |", a.rounds);
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        meridian_tests::percentile(v, 0.5)
    };
    let figures: Vec<(f64, f64, f64, u64, f64)> = rows
        .iter()
        .map(|(_, _, ps)| {
            let pick = |f: fn(&(Phase, f64)) -> f64| median(&mut ps.iter().map(f).collect());
            (
                pick(|(p, _)| p.rps),
                pick(|(p, _)| p.p50_ms),
                pick(|(p, _)| p.p99_ms),
                ps.iter().map(|(p, _)| p.errors).sum(),
                pick(|(_, cpu)| *cpu * 1e6),
            )
        })
        .collect();
    // rows: the GETs of each setting, then the PATCHes; the first of each is without keys
    for (i, ((name, over_tls, _), (rps, p50, p99, errors, cpu))) in
        rows.iter().zip(&figures).enumerate()
    {
        let ceil = if *over_tls { tls } else { plain };
        let open = &figures[i / per_op * per_op];
        println!(
            "| {name} | {rps:.0} | {p50:.2} | {p99:.2} | {errors} | {:.2}x | {:.2}x | {cpu:.1} | {:.2}x |",
            rps / ceil,
            rps / open.0,
            cpu / open.4
        );
    }
}
