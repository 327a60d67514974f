//! How long a region takes to join a running cluster: node `a` (the release binary) holds
//! `--docs` profile documents (written into its data dir by this process, 64 writers, before it
//! starts); a new node `j`, started with `a` as its only seed, is added by
//! `meridian region add j URL --node A`. Measured from the add until `j` holds as many
//! documents as `a` (polled every 100 ms): the time, the bytes `j` received from `a`, and `j`'s
//! data dir and RSS after. Twice, each on a fresh `j`:
//!
//! - **by feed**: `a` keeps its feed (it has had a peer since it started: an unreachable
//!   placeholder), so `j` pulls it from the start;
//! - **by anti-entropy**: `a` ran alone, so it trimmed its whole feed (a node without peers needs
//!   none): `j` is answered `Trimmed` and catches up by one anti-entropy pass.
//!
//! `cargo build --release --workspace --bins && target/release/bench_join [--docs N]`

use std::time::{Duration, Instant};

use clap::Parser;
use meridian_tests::load::{dir_bytes, fill_store};
use meridian_tests::{get_json, http_client, run_to_exit, Process};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    docs: usize,
    /// Which ways to measure: `feed`, `anti-entropy`.
    #[arg(long, value_delimiter = ',', default_value = "feed,anti-entropy")]
    modes: Vec<String>,
}

const SECRET: &str = "bench-join-secret";

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(args));
}

async fn documents(c: &reqwest::Client, node: &Process) -> u64 {
    get_json(c, node.url("/v1/status")).await["documents"]
        .as_u64()
        .expect("a count")
}

async fn run(args: Args) {
    let c = http_client();
    println!("| catch-up | documents | time from the add | bytes j received | per document | j's data dir | j's RSS after |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for mode in &args.modes {
        let by_feed = match mode.as_str() {
            "feed" => true,
            "anti-entropy" => false,
            other => panic!("unknown mode {other:?}"),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        fill_store(&dir.path().join("a"), "a", args.docs).await;
        let mut a_args = vec!["--node-id", "a", "--cluster-secret", SECRET];
        if by_feed {
            // a peer it never reaches keeps the feed (the retention window: 24 h)
            a_args.extend(["--peer", "ghost=http://127.0.0.1:9"]);
        }
        let a = Process::start(&dir.path().join("a"), &a_args);
        if !by_feed {
            // one trim period: the feed of a node without peers is trimmed whole
            tokio::time::sleep(Duration::from_secs(12)).await;
        }
        let seed = format!("a=http://{}", a.addr);
        let j = Process::start(
            &dir.path().join("j"),
            &[
                "--node-id",
                "j",
                "--cluster-secret",
                SECRET,
                "--peer",
                &seed,
            ],
        );
        let t0 = Instant::now();
        let (code, err) = run_to_exit(
            &[
                "region",
                "add",
                "j",
                &format!("http://{}", j.addr),
                "--node",
                &format!("http://{}", a.addr),
            ],
            &[],
        );
        assert_eq!(code, 0, "{err}");
        let want = documents(&c, &a).await;
        while documents(&c, &j).await < want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let took = t0.elapsed();
        let cluster = get_json(&c, j.url("/v1/cluster")).await;
        let received: u64 = cluster["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| p["bytes_received"].as_u64().unwrap_or(0))
            .sum();
        let rss = j.rss_kib();
        let on_disk = dir_bytes(&dir.path().join("j"));
        println!(
            "| {} | {want} | {:.1} s | {:.1} MB | {:.0} B | {:.0} MiB | {:.0} MiB |",
            if by_feed {
                "by feed"
            } else {
                "by anti-entropy"
            },
            took.as_secs_f64(),
            received as f64 / 1e6,
            received as f64 / want as f64,
            on_disk as f64 / (1 << 20) as f64,
            rss as f64 / 1024.0
        );
        drop(j);
        drop(a);
    }
}
