//! Backups at scale, and what one costs the writers, in one run. Node `a` (the release binary)
//! holds `--docs` profile documents (written into its data dir by this process before it
//! starts). Measured:
//!
//! - `meridian backup URL --to DIR` of the idle node, unpaced and at `--backup-mb-per-sec`:
//!   wall time, and the backup's size;
//! - `meridian restore --from DIR --data-dir NEW --node-id r`: wall time; then `r` is started
//!   on it and must hold as many documents as `a` (the time to its first answer is the rest of
//!   an RTO);
//! - PATCH throughput and p99 (`--clients` keep-alive clients on 1,000 of the documents, for
//!   `--secs` after a one-second warm-up), in `--rounds` interleaved pairs: without a backup,
//!   and while `meridian backup --max-mb-per-sec R` runs back to back (each into a fresh
//!   directory); with the median ratio.
//!
//! `cargo build --release --workspace --bins && target/release/bench_backup [--docs N]`

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_tests::load::{dir_bytes, drive, fill_store, Req, Target};
use meridian_tests::{binary, get_json, http_client, Process};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    docs: usize,
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    #[arg(long, default_value_t = 8)]
    secs: u64,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// The pace of the backups that run beside the writers, MiB/s (`meridian backup`'s
    /// default; 0: unpaced).
    #[arg(long, default_value_t = 4)]
    backup_mb_per_sec: u32,
    /// Only the writers' rounds (no idle backup and restore).
    #[arg(long)]
    writers_only: bool,
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(args));
}

/// Runs a `meridian` command to its end; panics with its stderr if it fails.
fn meridian(args: &[&str]) -> Duration {
    let t0 = Instant::now();
    let out = std::process::Command::new(binary())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run meridian");
    assert!(
        out.status.success(),
        "meridian {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t0.elapsed()
}

async fn documents(c: &reqwest::Client, node: &Process) -> u64 {
    get_json(c, node.url("/v1/status")).await["documents"]
        .as_u64()
        .expect("a count")
}

/// Backs `url` up into fresh directories under `dir`, one after another, until `stop`;
/// counts the backups that finished.
fn backups_back_to_back(
    url: String,
    rate: u32,
    dir: &Path,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let dir = dir.to_path_buf();
    std::thread::spawn(move || {
        let mut done = 0;
        while !stop.load(Ordering::Relaxed) {
            let to = dir.join(format!("loop-{done}"));
            let mut child = std::process::Command::new(binary())
                .args([
                    "backup",
                    &url,
                    "--max-mb-per-sec",
                    &rate.to_string(),
                    "--to",
                ])
                .arg(&to)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start a backup");
            loop {
                if let Some(status) = child.try_wait().expect("wait") {
                    assert!(status.success(), "a backup failed");
                    done += 1;
                    break;
                }
                if stop.load(Ordering::Relaxed) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = std::fs::remove_dir_all(&to);
        }
        done
    })
}

async fn run(args: Args) {
    let c = http_client();
    let dir = tempfile::tempdir().expect("temp dir");
    fill_store(&dir.path().join("a"), "a", args.docs).await;
    let a = Process::start(&dir.path().join("a"), &["--node-id", "a"]);
    let url = format!("http://{}", a.addr);
    let want = documents(&c, &a).await;
    let data = dir_bytes(&dir.path().join("a"));

    if !args.writers_only {
        copy_and_restore(&c, &url, dir.path(), want, data, args.backup_mb_per_sec).await;
    }

    // --- writers without a backup, and while backups run back to back, interleaved
    let target = Target::plain(&a.addr);
    // each phase writes 1,000 documents of its own, fresh (a document's write cost grows with
    // its history: phases sharing documents would favour the earlier one), and the order
    // alternates (without first in odd rounds, during first in even ones)
    let hot = 1000u64;
    let phases = (2 * args.rounds) as u64;
    assert!(
        args.docs as u64 >= hot * phases,
        "--docs too few for the rounds"
    );
    let patch_from = move |base: u64| {
        move |i: u64| {
            Req::patch(
                format!("/v1/users/u{:07}", base + (i * 7919) % hot),
                format!("{{\"n\":{i}}}"),
            )
        }
    };
    let dur = Duration::from_secs(args.secs);
    let mut ratios = vec![];
    println!();
    println!("| round | PATCH/s without | p99 | CPU per PATCH | PATCH/s during backups | p99 | CPU per PATCH | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut phase = 0u64;
    for round in 1..=args.rounds {
        let mut without = None;
        let mut during = None;
        for backing_up in if round % 2 == 1 {
            [false, true]
        } else {
            [true, false]
        } {
            let patch = patch_from(phase * hot);
            phase += 1;
            let cpu0 = a.cpu_secs();
            let stop = Arc::new(AtomicBool::new(false));
            let looping = backing_up.then(|| {
                backups_back_to_back(
                    url.clone(),
                    args.backup_mb_per_sec,
                    dir.path(),
                    stop.clone(),
                )
            });
            if looping.is_some() {
                // the backup is under way before the writers start
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let p = drive("PATCH", &target, args.clients, dur, patch).await;
            stop.store(true, Ordering::Relaxed);
            if let Some(l) = looping {
                l.join().expect("the backup loop");
            }
            assert_eq!(p.errors, 0, "failed requests");
            // the node's CPU over the phase (the backup's share included), per PATCH
            let cpu_us = (a.cpu_secs() - cpu0) * 1e6 / (p.rps * (args.secs + 1) as f64);
            if backing_up {
                during = Some((p, cpu_us));
            } else {
                without = Some((p, cpu_us));
            }
        }
        let ((w, wc), (d, dc)) = (without.unwrap(), during.unwrap());
        let ratio = d.rps / w.rps;
        ratios.push(ratio);
        println!(
            "| {round} | {:.0} | {:.1} ms | {wc:.0} µs | {:.0} | {:.1} ms | {dc:.0} µs | {ratio:.2}x |",
            w.rps, w.p99_ms, d.rps, d.p99_ms
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = if ratios.len() % 2 == 1 {
        ratios[ratios.len() / 2]
    } else {
        (ratios[ratios.len() / 2 - 1] + ratios[ratios.len() / 2]) / 2.0
    };
    println!(
        "\nPATCH during backups / without: median {median:.2}x over {} rounds",
        args.rounds
    );
}

/// The idle node backed up (unpaced, then at `rate` MiB/s) and restored; prints the table.
async fn copy_and_restore(
    c: &reqwest::Client,
    url: &str,
    dir: &Path,
    want: u64,
    data: u64,
    rate: u32,
) {
    // --- an idle node backed up (unpaced, then paced) and restored
    let copy = dir.join("copy");
    let paced_copy = dir.join("paced");
    let rate = rate.to_string();
    let took = meridian(&[
        "backup",
        url,
        "--max-mb-per-sec",
        "0",
        "--to",
        copy.to_str().unwrap(),
    ]);
    let paced = meridian(&[
        "backup",
        url,
        "--max-mb-per-sec",
        &rate,
        "--to",
        paced_copy.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&paced_copy);
    let size = dir_bytes(&copy);
    let restored = dir.join("r");
    let restore = meridian(&[
        "restore",
        "--from",
        copy.to_str().unwrap(),
        "--data-dir",
        restored.to_str().unwrap(),
        "--node-id",
        "r",
    ]);
    let t0 = Instant::now();
    let r = Process::start(&restored, &["--node-id", "r"]);
    let got = documents(c, &r).await;
    let start = t0.elapsed();
    assert_eq!(got, want, "the restored node holds every document");
    drop(r);
    println!(
        "| documents | data dir | backup, unpaced | backup at {rate} MiB/s | backup size | restore | restored node's first answer |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {want} | {:.0} MiB | {:.1} s | {:.1} s | {:.0} MiB | {:.1} s | {:.1} s |",
        data as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        paced.as_secs_f64(),
        size as f64 / (1 << 20) as f64,
        restore.as_secs_f64(),
        start.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&copy);
    let _ = std::fs::remove_dir_all(&restored);
}
