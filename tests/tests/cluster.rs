//! Replication in one process, over the in-memory faulty network of `meridian_tests::cluster`.
//!
//! Seeds: `MERIDIAN_SEEDS=n` runs seeds 0..n of the random test (default 16; even seeds follow
//! feeds by stream, odd ones by long poll; seeds 2, 3, 6, 7, ... run without anti-entropy);
//! `MERIDIAN_SEED=s` replays one seed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use meridian_crdt::{ChangeHash, DocKey, Edit, Op, State, Store};
use meridian_sync::{FeedMode, SessionToken};
use meridian_tests::cluster::{
    clock_ahead_10min, clock_exact, obj, profile as key, rt, skewed_clocks, Faults, SimCluster,
};
use meridian_tests::eventually;
use rand::Rng;
use serde_json::json;

/// Everything a client can see of a document on one node: state, JSON, version, conflicts.
async fn visible(store: &Store, k: &DocKey) -> (Option<(State, String, String)>, String) {
    let st = store
        .read_state(k)
        .unwrap()
        .map(|s| (s.state, s.json, s.version));
    let conflicts = store
        .get_with_conflicts(k)
        .await
        .unwrap()
        .map(|(_, c)| serde_json::to_string(&c).unwrap())
        .unwrap_or_default();
    (st, conflicts)
}

async fn converged(c: &SimCluster, keys: &[DocKey]) -> bool {
    let all: Vec<&str> = c.nodes.iter().map(|n| n.id.as_str()).collect();
    converged_among(c, &all, keys).await
}

/// The nodes `ids` hold the same documents.
async fn converged_among(c: &SimCluster, ids: &[&str], keys: &[DocKey]) -> bool {
    let first = c.node(ids[0]).store();
    for n in ids[1..].iter().map(|id| c.node(id)) {
        if n.store().digests() != first.digests() {
            return false;
        }
        for k in keys {
            if visible(n.store(), k).await != visible(first, k).await {
                return false;
            }
        }
    }
    true
}

/// One client session: its token, and per document the heads it has observed (its reads and
/// writes). Every later operation must see a state whose history includes them.
#[derive(Default)]
struct Session {
    token: SessionToken,
    seen: HashMap<DocKey, Vec<ChangeHash>>,
}

/// Runs `scenario` for each seed (see [`meridian_tests::seeds`]), naming the one that fails.
fn for_seeds<F: std::future::Future<Output = ()>>(default: u64, scenario: impl Fn(u64) -> F) {
    for seed in meridian_tests::seeds(default) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt().block_on(scenario(seed))
        }));
        if let Err(panic) = outcome {
            eprintln!("failing seed {seed}; replay with MERIDIAN_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn random_writes_during_partitions_converge_and_keep_session_guarantees() {
    for_seeds(16, random_scenario);
}

async fn random_scenario(seed: u64) {
    let clocks = skewed_clocks();
    let ids = ["a", "b", "c"];
    // Both ways of following a feed: streamed (the default) on even seeds, long polls on odd.
    // On every second pair of seeds anti-entropy is off, so that the feeds alone must bring
    // every change everywhere (anti-entropy would otherwise hide a feed that loses one).
    let mode = if seed.is_multiple_of(2) {
        FeedMode::Stream
    } else {
        FeedMode::LongPoll
    };
    let anti_entropy = seed % 4 < 2;
    let c = SimCluster::start_with(
        seed,
        &[("a", clocks[0]), ("b", clocks[1]), ("c", clocks[2])],
        |cfg| {
            cfg.feed_mode = mode;
            if !anti_entropy {
                cfg.anti_entropy_every = Duration::from_secs(3600);
            }
        },
    );
    c.set_faults(Faults {
        drop: 0.1,
        duplicate: 0.1,
        max_delay: Duration::from_millis(15),
    });
    let keys: Vec<DocKey> = (0..5).map(|i| key(&format!("u{i}"))).collect();
    let mut sessions: Vec<Session> = (0..3).map(|_| Session::default()).collect();
    let mut acked: Vec<(DocKey, Vec<ChangeHash>)> = Vec::new();
    let (mut served, mut unavailable) = (0, 0);

    for step in 0..80 {
        // --- partitions come and go
        let (p, a, b, one_way) = {
            let mut r = c.rng();
            (
                r.gen_range(0..100),
                r.gen_range(0..3),
                r.gen_range(0..3),
                r.gen_bool(0.5),
            )
        };
        if p < 8 && a != b {
            if one_way {
                c.cut_one_way(ids[a], ids[b]);
            } else {
                c.cut(ids[a], ids[b]);
            }
        } else if p < 12 {
            c.heal_all();
        }

        // --- one client operation, on a random node, with the session's token
        let (s, n, d, op, v, pause) = {
            let mut r = c.rng();
            (
                r.gen_range(0..sessions.len()),
                r.gen_range(0..3),
                r.gen_range(0..keys.len()),
                r.gen_range(0..10),
                r.gen_range(0..1000),
                r.gen_range(0..3) == 0,
            )
        };
        let node = &c.nodes[n];
        let store = node.store();
        let k = &keys[d];
        let session = &mut sessions[s];
        if node
            .replica
            .await_token(&session.token, Duration::from_millis(300))
            .await
            .is_err()
        {
            // allowed: the node says it cannot serve this session yet; it never serves stale
            unavailable += 1;
            continue;
        }
        served += 1;
        let seen = session.seen.get(k).cloned().unwrap_or_default();
        let edit = match op {
            0..=1 => Some(Edit::Put(obj(
                json!({"name": format!("n{v}"), "by": node.id}),
            ))),
            2..=4 => Some(Edit::Patch(obj(json!({format!("f{}", v % 4): v})))),
            5 => Some(Edit::Ops(vec![Op::Increment {
                path: "/visits".into(),
                by: 1,
            }])),
            6 => Some(Edit::Delete),
            _ => None,
        };
        match edit {
            Some(edit) => {
                if let Ok(w) = store.write(k, edit, None).await {
                    assert!(
                        store.history_includes(k, &w.heads, &seen).await.unwrap(),
                        "seed {seed} step {step}: a write on {} did not follow what session {s} saw",
                        node.id
                    );
                    session.seen.insert(k.clone(), w.heads.clone());
                    acked.push((k.clone(), w.heads));
                }
            }
            None => {
                let heads = store
                    .read_state(k)
                    .unwrap()
                    .map(|st| st.heads)
                    .unwrap_or_default();
                assert!(
                    store.history_includes(k, &heads, &seen).await.unwrap() || seen.is_empty(),
                    "seed {seed} step {step}: a read on {} showed less than session {s} saw",
                    node.id
                );
                session.seen.insert(k.clone(), heads);
            }
        }
        session.token.merge(&node.replica.token());
        if pause {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(
        served > 0,
        "seed {seed}: no operation was served ({unavailable} refused)"
    );

    // --- heal everything; every node converges to the same documents
    c.heal_all();
    c.set_faults(Faults::default());
    eventually(
        &format!("seed {seed}: convergence"),
        Duration::from_secs(30),
        || converged(&c, &keys),
    )
    .await;

    // --- nothing acknowledged was lost, anywhere
    for (k, heads) in &acked {
        for n in &c.nodes {
            let now = n.store().read_state(k).unwrap().unwrap().heads;
            assert!(
                n.store().history_includes(k, &now, heads).await.unwrap(),
                "seed {seed}: {} lost an acknowledged write to {k}",
                n.id
            );
        }
    }
    c.stop();
}

#[test]
fn random_membership_changes_lose_no_acknowledged_write_and_keep_sessions() {
    for_seeds(8, membership_scenario);
}

/// Three members and a fourth node that joins (seeded with `a` only, added through a random
/// member) while clients write and partitions come and go; later one of b, c, d is removed
/// through another member, once its clients have stopped (as a drain would). Checked: no
/// session sees less than it saw, the members that stay converge, every acknowledged write
/// (the removed node's too) is on each of them, and the removed node refuses writes.
async fn membership_scenario(seed: u64) {
    let clocks = skewed_clocks();
    let c = SimCluster::start_joining(
        seed,
        &[
            ("a", clocks[0]),
            ("b", clocks[1]),
            ("c", clocks[2]),
            ("d", clock_exact),
        ],
        &["d"],
        |cfg| {
            if seed % 2 == 1 {
                cfg.feed_mode = FeedMode::LongPoll;
            }
        },
    );
    c.set_faults(Faults {
        drop: 0.05,
        duplicate: 0.05,
        max_delay: Duration::from_millis(10),
    });
    let ids = ["a", "b", "c", "d"];
    let keys: Vec<DocKey> = (0..5).map(|i| key(&format!("u{i}"))).collect();
    let mut sessions: Vec<Session> = (0..3).map(|_| Session::default()).collect();
    let mut acked: Vec<(DocKey, Vec<ChangeHash>)> = Vec::new();
    let (add_at, remove_at, gone, via) = {
        let mut r = c.rng();
        (
            r.gen_range(5..25),
            r.gen_range(35..55),
            ["b", "c", "d"][r.gen_range(0..3)],
            r.gen_range(0..3),
        )
    };
    let mut members = vec!["a", "b", "c"];
    let mut removing: Option<bool> = None;
    for step in 0..80 {
        // --- partitions come and go (not while a removal waits: it needs the region's feed)
        let (p, x, y) = {
            let mut r = c.rng();
            (r.gen_range(0..100), r.gen_range(0..4), r.gen_range(0..4))
        };
        if removing.is_some() && step > remove_at + 5 {
            c.heal_all();
        } else if p < 8 && x != y {
            c.cut(ids[x], ids[y]);
        } else if p < 14 {
            c.heal_all();
        }
        // --- membership changes
        if step == add_at {
            let through = members[via];
            c.node(through)
                .replica
                .add_region("d", "http://d.sim")
                .await
                .unwrap();
            members.push("d");
        }
        if step >= remove_at && removing.is_none_or(|done| !done) {
            removing = Some(false);
            let through = members.iter().copied().find(|m| *m != gone).unwrap();
            if c.node(through)
                .replica
                .remove_region(gone, false)
                .await
                .is_ok()
            {
                removing = Some(true);
                members.retain(|m| *m != gone);
            }
        }
        // --- one client operation on a member (none on a region being removed)
        let (s, n, d, op, v) = {
            let mut r = c.rng();
            (
                r.gen_range(0..sessions.len()),
                r.gen_range(0..members.len()),
                r.gen_range(0..keys.len()),
                r.gen_range(0..8),
                r.gen_range(0..1000),
            )
        };
        let node = c.node(members[n]);
        if removing.is_some() && node.id == gone {
            continue;
        }
        let store = node.store();
        let k = &keys[d];
        let session = &mut sessions[s];
        if node
            .replica
            .await_token(&session.token, Duration::from_millis(300))
            .await
            .is_err()
        {
            continue;
        }
        let seen = session.seen.get(k).cloned().unwrap_or_default();
        let heads = match op {
            0..=4 => {
                let edit = Edit::Patch(obj(json!({format!("f{}", v % 4): v, "by": node.id})));
                match store.write(k, edit, None).await {
                    Ok(w) => {
                        acked.push((k.clone(), w.heads.clone()));
                        w.heads
                    }
                    Err(_) => continue,
                }
            }
            _ => store
                .read_state(k)
                .unwrap()
                .map(|st| st.heads)
                .unwrap_or_default(),
        };
        assert!(
            seen.is_empty() || store.history_includes(k, &heads, &seen).await.unwrap(),
            "seed {seed} step {step}: {} showed session {s} less than it saw",
            node.id
        );
        session.seen.insert(k.clone(), heads);
        session.token.merge(&node.replica.token());
    }
    assert_eq!(
        removing,
        Some(true),
        "seed {seed}: {gone} was never removed"
    );

    // --- heal; the members converge, each holds every acknowledged write
    c.heal_all();
    c.set_faults(Faults::default());
    eventually(
        &format!("seed {seed}: the members converge"),
        Duration::from_secs(30),
        || converged_among(&c, &members, &keys),
    )
    .await;
    for (k, heads) in &acked {
        for id in &members {
            let store = c.node(id).store();
            let now = store.read_state(k).unwrap().unwrap().heads;
            assert!(
                store.history_includes(k, &now, heads).await.unwrap(),
                "seed {seed}: {id} lost an acknowledged write to {k}"
            );
        }
    }
    // --- the removed node learns it, and takes no more writes
    eventually(
        &format!("seed {seed}: {gone} knows it was removed"),
        Duration::from_secs(10),
        || async { c.node(gone).replica.removed_at().is_some() },
    )
    .await;
    assert!(c
        .node(gone)
        .store()
        .write(&keys[0], Edit::Patch(obj(json!({"late": 1}))), None)
        .await
        .is_err());
    c.stop();
}

#[test]
fn a_node_of_the_previous_protocol_replicates_both_ways_with_this_one() {
    rt().block_on(async {
        // `old` speaks only version 2, as the previous release does; `new` speaks 2 and 3
        let c = SimCluster::start_each(
            5,
            &[
                ("old", clock_exact),
                ("new", clock_exact),
                ("new2", clock_exact),
            ],
            &[],
            |id, cfg| {
                if id == "old" {
                    cfg.versions.newest = meridian_sync::OLDEST_WIRE_VERSION;
                }
            },
        );
        c.set_faults(Faults {
            drop: 0.05,
            duplicate: 0.05,
            max_delay: Duration::from_millis(5),
        });
        for (i, id) in ["old", "new", "new2"].iter().enumerate() {
            c.node(id)
                .store()
                .write(
                    &key(&format!("d{i}")),
                    Edit::Put(obj(json!({"by": id}))),
                    None,
                )
                .await
                .unwrap();
        }
        let keys: Vec<DocKey> = (0..3).map(|i| key(&format!("d{i}"))).collect();
        eventually("the three converge", Duration::from_secs(20), || {
            converged(&c, &keys)
        })
        .await;
        // each link runs the newest version both ends speak, in both directions
        let link = |from: &str, to: &str| {
            let r = c.node(from).replica.report();
            let p = r.peers.iter().find(|p| p.id == to).unwrap().clone();
            (p.protocol, p.peer_protocol)
        };
        eventually("every link has run", Duration::from_secs(10), || {
            let all = [("old", "new"), ("new", "old"), ("new", "new2")]
                .iter()
                .all(|(a, b)| link(a, b).0.is_some() && link(a, b).1.is_some());
            async move { all }
        })
        .await;
        assert_eq!(link("new", "old"), (Some(2), Some(2)));
        assert_eq!(link("old", "new"), (Some(2), Some(2)));
        assert_eq!(link("new", "new2"), (Some(3), Some(3)));
        // and a session from the old node is served by a new one, and the other way
        for (from, to) in [("old", "new"), ("new", "old")] {
            let w = c
                .node(from)
                .store()
                .write(&key("s"), Edit::Patch(obj(json!({from: 1}))), None)
                .await
                .unwrap();
            let mut token = SessionToken::default();
            token.merge(&c.node(from).replica.token());
            c.node(to)
                .replica
                .await_token(&token, Duration::from_secs(5))
                .await
                .unwrap();
            let at = c.node(to).store();
            let heads = at.read_state(&key("s")).unwrap().unwrap().heads;
            assert!(at
                .history_includes(&key("s"), &heads, &w.heads)
                .await
                .unwrap());
        }
        c.stop();
    });
}

#[test]
fn a_change_relayed_by_a_third_node_is_repaired_by_anti_entropy() {
    rt().block_on(async {
        let c = SimCluster::start(
            7,
            &[("a", clock_exact), ("b", clock_exact), ("c", clock_exact)],
        );
        // --- cut a from c; a's change reaches b by a's feed, and c only through b
        c.cut("a", "c");
        c.node("a")
            .store()
            .write(&key("x"), Edit::Put(obj(json!({"from": "a"}))), None)
            .await
            .unwrap();
        eventually(
            "the change reaches c through b",
            Duration::from_secs(10),
            || async { c.node("c").store().get(&key("x")).await.unwrap().is_some() },
        )
        .await;
        assert!(c.node("c").replica.cursor("a").is_none_or(|cur| {
            // c's cursor into a's feed cannot have passed the change: a is unreachable
            cur < c.node("a").store().last_local_stamp().unwrap()
        }));
        // --- a session that saw the write at a cannot be served by c until c hears from a
        let mut token = SessionToken::default();
        token.merge(&c.node("a").replica.token());
        let t0 = Instant::now();
        let behind = c
            .node("c")
            .replica
            .await_token(&token, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(behind.node, "a");
        assert!(
            t0.elapsed() < Duration::from_millis(600),
            "waited {:?}",
            t0.elapsed()
        );
        // --- once the link heals, c catches up from its cursor and serves the session
        c.heal_all();
        c.node("c")
            .replica
            .await_token(&token, Duration::from_secs(2))
            .await
            .unwrap();
        c.stop();
    });
}

#[test]
fn a_token_naming_an_unknown_node_is_refused_at_once() {
    rt().block_on(async {
        let c = SimCluster::start(1, &[("a", clock_exact), ("b", clock_exact)]);
        let token = SessionToken::parse("zz=1").unwrap();
        let t0 = Instant::now();
        let behind = c
            .node("a")
            .replica
            .await_token(&token, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(behind.unknown);
        assert!(t0.elapsed() < Duration::from_secs(1));
        // a time no node has reached: waits the bound, then says which region to ask
        let future = SessionToken::parse(&format!("b={:x}", u64::MAX / 2)).unwrap();
        let t0 = Instant::now();
        let behind = c
            .node("a")
            .replica
            .await_token(&future, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(behind.node, "b");
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(900),
            "{waited:?}"
        );
        c.stop();
    });
}

#[test]
fn a_node_whose_clock_runs_ten_minutes_ahead_cannot_move_the_others_clocks() {
    rt().block_on(async {
        let c = SimCluster::start(
            3,
            &[
                ("a", clock_exact),
                ("b", clock_exact),
                ("fast", clock_ahead_10min),
            ],
        );
        c.node("fast")
            .store()
            .write(&key("x"), Edit::Put(obj(json!({"v": "fast"}))), None)
            .await
            .unwrap();
        c.node("a")
            .store()
            .write(&key("y"), Edit::Put(obj(json!({"v": "a"}))), None)
            .await
            .unwrap();
        // --- the others refuse fast's change (and count it), and accept each other's
        eventually("the refusal", Duration::from_secs(10), || async {
            c.node("a").replica.drift_refusals() > 0 && c.node("b").replica.drift_refusals() > 0
        })
        .await;
        eventually(
            "a's change at b and fast",
            Duration::from_secs(10),
            || async {
                c.node("b").store().get(&key("y")).await.unwrap().is_some()
                    && c.node("fast")
                        .store()
                        .get(&key("y"))
                        .await
                        .unwrap()
                        .is_some()
            },
        )
        .await;
        for id in ["a", "b"] {
            let store = c.node(id).store();
            assert!(
                store.get(&key("x")).await.unwrap().is_none(),
                "{id} took fast's change"
            );
            let hlc = store.clock().now();
            let wall = uhlc::system_time_clock();
            let ahead = hlc
                .get_time()
                .to_duration()
                .saturating_sub(wall.to_duration());
            assert!(
                ahead < Duration::from_secs(1),
                "{id}'s clock moved {ahead:?} ahead"
            );
        }
        // a write on a still stamps near real time, and wins nothing by clock games
        let w = c
            .node("a")
            .store()
            .write(&key("y"), Edit::Patch(obj(json!({"w": 1}))), None)
            .await
            .unwrap();
        assert!(!w.heads.is_empty());
        c.stop();
    });
}
