//! The anti-entropy benchmark: the cost of one repair pass between two nodes holding many
//! documents, of which a few differ.
//!
//! Two nodes `a` and `b` run in this process on the in-memory network of
//! `meridian_tests::cluster` (no periodic passes). `a` gets `--docs` documents by 64 concurrent
//! writers; `b` follows `a`'s feed until their digests agree. Then, for each count in
//! `--differing`, that many documents (half new, half changed) reach `a` from a node outside
//! the cluster, so they are in no feed; `b` runs one pass with `a` (`Replica::repair_with`):
//! its time, the bytes both ways, and what it compared. A pass with nothing differing is the
//! baseline of the same run. Beside each pass: how many documents the earlier protocol (one
//! digest level, every document of a differing bucket listed) would have listed, counted on
//! the same data.
//!
//! `cargo build --release --workspace --bins && target/release/bench_repair`

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use meridian_crdt::{DocKey, Edit, RemoteChange, Store, StoreConfig, LEAVES_PER_BUCKET};
use meridian_tests::cluster::{clock_exact, SimCluster};
use serde_json::json;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    docs: usize,
    /// Documents made to differ before each pass.
    #[arg(long, value_delimiter = ',', default_value = "0,100,10000")]
    differing: Vec<usize>,
}

fn key(i: usize) -> DocKey {
    DocKey::new("users", &format!("u{i:07}")).expect("valid key")
}

fn value(i: usize) -> serde_json::Map<String, serde_json::Value> {
    json!({"name": format!("user {i}"), "email": format!("u{i}@example.com"), "n": i})
        .as_object()
        .cloned()
        .expect("an object")
}

fn parse(changes: Vec<Vec<u8>>) -> Vec<RemoteChange> {
    changes
        .into_iter()
        .map(|c| RemoteChange::parse(c).expect("a change"))
        .collect()
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let c = SimCluster::start_with(1, &[("a", clock_exact), ("b", clock_exact)], |cfg| {
        cfg.anti_entropy_every = Duration::from_secs(24 * 3600);
        // the default, not the cluster tests' short one
        cfg.call_timeout = meridian_sync::ReplicationConfig::new(vec![]).call_timeout;
    });
    let (a, b) = (c.node("a"), c.node("b"));
    let t0 = Instant::now();
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = a.store().clone();
        let n = args.docs;
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(writers) {
                store
                    .write(&key(i), Edit::Put(value(i)), None)
                    .await
                    .expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let filled = t0.elapsed();
    while a.store().digests() != b.store().digests() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "{} documents: written on a in {:.1} s ({:.0}/s); on b by the feed after {:.1} s",
        args.docs,
        filled.as_secs_f64(),
        args.docs as f64 / filled.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = StoreConfig::new(dir.path());
    cfg.node_id = Some("x".into());
    let x = Arc::new(Store::open(cfg).expect("outsider store"));
    let mut next_new = args.docs;
    let mut next_changed = 0;
    println!("| differing | pass | bytes sent + received | buckets / leaves differing | documents listed | listed by one digest level | changes merged |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.differing {
        // half new documents, half changes to existing ones, made outside the cluster
        let mut docs = Vec::with_capacity(n);
        for _ in 0..n / 2 {
            let k = key(next_changed * 7919 % args.docs);
            next_changed += 1;
            let history = a.store().changes_since(&k, &[]).await.expect("history");
            x.merge_remote(vec![(k.clone(), parse(history))], vec![])
                .await
                .expect("merge");
            x.write(&k, Edit::Patch(value(next_changed)), None)
                .await
                .expect("write");
            docs.push(k);
        }
        for _ in n / 2..n {
            let k = key(next_new);
            next_new += 1;
            x.write(&k, Edit::Put(value(next_new)), None)
                .await
                .expect("write");
            docs.push(k);
        }
        let mut batch = Vec::with_capacity(n);
        for k in &docs {
            let heads = a
                .store()
                .read_state(k)
                .expect("read")
                .map(|s| s.heads)
                .unwrap_or_default();
            batch.push((
                k.clone(),
                parse(x.changes_since(k, &heads).await.expect("changes")),
            ));
        }
        a.store()
            .merge_remote(batch, vec![])
            .await
            .expect("merge on a");

        // what one digest level would have listed: every document b holds in the buckets
        // whose digests differ
        let (mine, theirs) = (b.store().digests(), a.store().digests());
        let leaves: std::collections::BTreeSet<u32> = (0..mine.len())
            .filter(|i| mine[*i] != theirs[*i])
            .flat_map(|bucket| {
                let first = (bucket * LEAVES_PER_BUCKET) as u32;
                first..first + LEAVES_PER_BUCKET as u32
            })
            .collect();
        let one_level = b.store().leaf_heads(&leaves).expect("heads").len();

        let (s0, r0) = b.replica.bytes();
        let t = Instant::now();
        let pass = b.replica.repair_with("a").await.expect("repair pass");
        let took = t.elapsed();
        let (s1, r1) = b.replica.bytes();
        assert!(pass.complete, "{pass:?}");
        assert_eq!(a.store().digests(), b.store().digests(), "converged");
        println!(
            "| {n} | {:.1} ms | {} + {} B | {} / {} | {} | {} | {} |",
            took.as_secs_f64() * 1000.0,
            s1 - s0,
            r1 - r0,
            pass.buckets,
            pass.leaves,
            pass.docs,
            one_level,
            pass.changes
        );
    }
    c.stop();
}
