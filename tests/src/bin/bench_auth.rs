//! What API keys and TLS cost: the node's GET and durable PATCH with no keys, with a key on
//! every request, and with a key over TLS; the constant handler over plain HTTP and over TLS
//! (the node's own TLS listener) in the same run, each measured before and after the nodes.
//! Prints each figure and its ratio to the ceiling of the same transport.
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
}

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
    std::fs::write(&keys, file).unwrap();
    let bearer = format!("Bearer {}", api_key.trim());

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
    let mut rows: Vec<(String, Phase, bool)> = vec![];
    for (label, extra, tls) in [
        ("no keys", vec![], false),
        (
            "a key on every request",
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
    ] {
        let mut args = vec!["--node-id", "bench"];
        args.extend(extra);
        // a fresh node each: PATCHes grow documents' histories, so a later phase on the same
        // data would pay for the earlier ones
        let data = tempfile::tempdir().unwrap();
        let node = Process::start(data.path(), &args);
        let mut target = if tls {
            Target::tls(&node.addr, &ca)
        } else {
            Target::plain(&node.addr)
        };
        if label != "no keys" {
            target = target.with_header("authorization", &bearer);
        }
        {
            // the working set
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
            eprintln!("fill: {:.0} writes/s", fill.rps);
        }
        let get = drive(
            &format!("GET, {label}"),
            &target,
            a.clients,
            dur,
            move |i| Req::get(doc(i)),
        )
        .await;
        let patch = drive(
            &format!("PATCH, {label}"),
            &target,
            a.clients,
            dur,
            move |i| Req::patch(doc(i), format!(r#"{{"n":{i}}}"#)),
        )
        .await;
        rows.push((get.name.clone(), get, tls));
        rows.push((patch.name.clone(), patch, tls));
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
    println!("| operation | requests/s | p50 ms | p99 ms | errors | vs ceiling of its transport |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, p, over_tls) in &rows {
        let ceil = if *over_tls { tls } else { plain };
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {} | {:.2}x |",
            p.rps,
            p.p50_ms,
            p.p99_ms,
            p.errors,
            p.rps / ceil
        );
    }
}
