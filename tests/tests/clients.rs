//! Offline-first clients (the client library's replicas and syncer) in the in-memory cluster:
//! random edits of fields, lists, text and counters offline, random connections to random
//! nodes, writes on the nodes, partitions and lossy links. Afterwards every replica, clients'
//! and nodes', is identical, and no edit a node acknowledged is missing anywhere.
//!
//! Seeds: `MERIDIAN_SEEDS=n` runs seeds 0..n (default 8); `MERIDIAN_SEED=s` replays one.

use std::time::Duration;

use meridian_client::{LocalDoc, Replicas, Syncer};
use meridian_crdt::{ChangeHash, DocKey, Edit, Store};
use meridian_tests::cluster::{skewed_clocks, Faults, SimCluster};
use meridian_tests::eventually;
use meridian_tests::sim_client::SimConnector;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const DOCS: [&str; 3] = ["p0", "p1", "p2"];
const NODES: [&str; 3] = ["a", "b", "c"];

fn key(id: &str) -> DocKey {
    DocKey::new("profiles", id).unwrap()
}

#[test]
fn clients_nodes_and_partitions_converge_and_keep_every_acknowledged_edit() {
    // MERIDIAN_LOG=meridian_sync=debug,meridian_client=debug shows why a run did not converge
    if let Ok(filter) = std::env::var("MERIDIAN_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    for seed in meridian_tests::seeds(8) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = std::panic::catch_unwind(|| rt.block_on(scenario(seed)));
        if let Err(panic) = outcome {
            eprintln!("failing seed {seed}; replay with MERIDIAN_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

struct Client {
    replicas: Replicas,
    online: Option<(Syncer, SimConnector)>,
    _dir: tempfile::TempDir,
}

/// What a document looks like, in a form equal on every replica that holds the same history.
fn node_view(s: &Store, k: &DocKey) -> Option<(String, Value, String)> {
    let st = s.read_state(k).unwrap()?;
    let json: Value = serde_json::from_str(&st.json).unwrap();
    Some((format!("{:?}", st.state), json, st.version))
}

fn client_view(d: &LocalDoc) -> (String, Value, String) {
    (
        format!("{:?}", d.state()),
        d.value().unwrap_or(Value::Null),
        d.version(),
    )
}

/// A random edit a client makes offline; refusals (a splice past the end of a text another
/// client shortened, say) change nothing and are fine.
fn client_edit(rng: &mut StdRng, d: &LocalDoc, doc: &str) {
    let field = format!("f{}", rng.gen_range(0..3));
    let r = match rng.gen_range(0..5) {
        0 if doc != "p2" => {
            d.ops(&json!([{"op":"increment","path":"/n","by": rng.gen_range(-3..5)}]))
        }
        1 if doc != "p2" => {
            d.ops(&json!([{"op":"insert","path":"/l/-","value": rng.gen_range(0..100)}]))
        }
        2 if doc != "p2" => {
            let len = d
                .value()
                .and_then(|v| v["t"].as_str().map(|s| s.chars().count()))
                .unwrap_or(0);
            let at = rng.gen_range(0..=len);
            d.ops(&json!([{"op":"splice","path":"/t","index": at,"insert": "xy"}]))
        }
        3 => d.patch(&json!({ field: format!("c{}", rng.gen_range(0..1000)) })),
        _ => d.patch(&json!({ field: rng.gen_range(0..1000) })),
    };
    let _ = r;
}

async fn scenario(seed: u64) {
    let clocks = skewed_clocks();
    let c = SimCluster::start(
        seed,
        &[("a", clocks[0]), ("b", clocks[1]), ("c", clocks[2])],
    );
    // --- p0 and p1 exist on the nodes, with a counter, a list and a text; p2 does not
    for id in ["p0", "p1"] {
        let ops = meridian_crdt::parse_ops(json!({"ops":[
            {"op":"increment","path":"/n","by":0},
            {"op":"set","path":"/l","value":[]},
            {"op":"splice","path":"/t","index":0,"insert":"text"}
        ]}))
        .unwrap();
        c.node("a")
            .store()
            .write(&key(id), Edit::Ops(ops), None)
            .await
            .unwrap();
    }
    eventually("the nodes have p0 and p1", Duration::from_secs(10), || {
        let ok = c.nodes.iter().all(|n| {
            ["p0", "p1"]
                .iter()
                .all(|d| n.store().read_state(&key(d)).unwrap().is_some())
        });
        async move { ok }
    })
    .await;
    c.set_faults(Faults {
        drop: 0.05,
        duplicate: 0.05,
        max_delay: Duration::from_millis(10),
    });
    let mut clients: Vec<Client> = (0..3)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            Client {
                replicas: Replicas::open(dir.path()).unwrap(),
                online: None,
                _dir: dir,
            }
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_c11e);
    let mut acked: Vec<(DocKey, Vec<ChangeHash>)> = vec![];

    for _ in 0..60 {
        match rng.gen_range(0..10) {
            0..=3 => {
                let cl = &clients[rng.gen_range(0..3)];
                let doc = DOCS[rng.gen_range(0..3)];
                let d = cl.replicas.open_doc("profiles", doc).unwrap();
                client_edit(&mut rng, &d, doc);
            }
            4 => {
                let i = rng.gen_range(0..3);
                if clients[i].online.is_none() {
                    let n = &c.nodes[rng.gen_range(0..3)];
                    let conn = SimConnector::new(n.hub.clone(), n.store().clone());
                    let s = Syncer::start_with(clients[i].replicas.clone(), conn.clone());
                    clients[i].online = Some((s, conn));
                }
            }
            5 => {
                let i = rng.gen_range(0..3);
                if let Some((s, conn)) = clients[i].online.take() {
                    conn.set_up(false);
                    s.stop().await;
                }
            }
            6 | 7 => {
                let n = &c.nodes[rng.gen_range(0..3)];
                let doc = DOCS[rng.gen_range(0..3)];
                let field = format!("f{}", rng.gen_range(0..3));
                let edit = Edit::Patch(
                    json!({ field: format!("n{}", rng.gen_range(0..1000)) })
                        .as_object()
                        .unwrap()
                        .clone(),
                );
                n.store().write(&key(doc), edit, None).await.unwrap();
            }
            8 => {
                if rng.gen_bool(0.5) {
                    let (x, y) = (NODES[rng.gen_range(0..3)], NODES[rng.gen_range(0..3)]);
                    if x != y {
                        c.cut(x, y);
                    }
                } else {
                    c.heal_all();
                }
            }
            _ => tokio::time::sleep(Duration::from_millis(rng.gen_range(5..30))).await,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        // a replica with nothing unacknowledged: its whole history is durable on a node
        for cl in &clients {
            for d in cl.replicas.docs() {
                if d.status().unacknowledged == 0 && d.status().last_sync.is_some() {
                    acked.push((d.key().clone(), d.heads()));
                }
            }
        }
    }

    // --- heal; everyone online
    c.heal_all();
    c.set_faults(Faults::default());
    for (i, cl) in clients.iter_mut().enumerate() {
        if cl.online.is_none() {
            let n = &c.nodes[i % 3];
            let conn = SimConnector::new(n.hub.clone(), n.store().clone());
            cl.online = Some((Syncer::start_with(cl.replicas.clone(), conn.clone()), conn));
        }
    }
    let converged = |report: bool| {
        let mut ok = true;
        for d in DOCS {
            let k = key(d);
            let first = node_view(c.nodes[0].store(), &k);
            for n in &c.nodes {
                let v = node_view(n.store(), &k);
                if report {
                    eprintln!("  {d} node {}: {v:?}", n.id);
                }
                ok &= v == first;
            }
            for (i, cl) in clients.iter().enumerate() {
                if let Some(local) = cl.replicas.docs().into_iter().find(|x| x.key() == &k) {
                    if report {
                        eprintln!(
                            "  {d} client {i}: {:?} {:?}",
                            client_view(&local),
                            local.status()
                        );
                    }
                    ok &= local.status().unacknowledged == 0;
                    ok &= first
                        .as_ref()
                        .is_some_and(|f| client_view(&local) == f.clone());
                }
            }
        }
        ok
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !converged(false) {
        if std::time::Instant::now() > deadline {
            converged(true);
            panic!("seed {seed}: nodes and clients did not converge");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // --- conflicts are listed the same everywhere
    for d in DOCS {
        let k = key(d);
        let want = c.nodes[0]
            .store()
            .get_with_conflicts(&k)
            .await
            .unwrap()
            .map(|(_, c)| serde_json::to_value(c).unwrap());
        for n in &c.nodes[1..] {
            let got = n
                .store()
                .get_with_conflicts(&k)
                .await
                .unwrap()
                .map(|(_, c)| serde_json::to_value(c).unwrap());
            assert_eq!(got, want, "seed {seed}: {d} on {}", n.id);
        }
        for cl in &clients {
            if let Some(local) = cl.replicas.docs().into_iter().find(|x| x.key() == &k) {
                if local.value().is_some() {
                    assert_eq!(
                        Some(serde_json::to_value(local.conflicts()).unwrap()),
                        want,
                        "seed {seed}: {d}"
                    );
                }
            }
        }
    }
    // --- nothing acknowledged is missing on any node
    for (k, heads) in &acked {
        for n in &c.nodes {
            let now = n.store().read_state(k).unwrap().unwrap().heads;
            assert!(
                n.store().history_includes(k, &now, heads).await.unwrap(),
                "seed {seed}: {k} on {} lacks acknowledged changes",
                n.id
            );
        }
    }
    eprintln!("seed {seed}: {} acknowledged states checked", acked.len());
    for cl in clients {
        if let Some((s, _)) = cl.online {
            s.stop().await;
        }
    }
}
