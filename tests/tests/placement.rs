//! Placement per collection: a collection limited to some regions replicates among them only,
//! by feed and by anti-entropy alike, is refused (421) everywhere else, and its documents never
//! reach an outside region's disk.
//!
//! In process (the faulty in-memory network of `meridian_tests::cluster`), and against real
//! processes, where the outside region's data dir is read after an anti-entropy pass.

use std::collections::BTreeSet;
use std::time::Duration;

use meridian_crdt::{DocKey, Edit, Store, DIGEST_LEAVES};
use meridian_tests::cluster::{clock_exact, obj, rt, Faults, SimCluster};
use meridian_tests::eventually;
use serde_json::json;

fn user(i: usize) -> DocKey {
    DocKey::new("users", &format!("u{i}")).unwrap()
}

fn setting(i: usize) -> DocKey {
    DocKey::new("settings", &format!("s{i}")).unwrap()
}

/// Every document key a store holds, read below the API (so placement does not hide any).
fn stored(s: &Store) -> Vec<DocKey> {
    let leaves: BTreeSet<u32> = (0..DIGEST_LEAVES as u32).collect();
    s.leaf_heads(&leaves)
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn users_in(s: &Store) -> usize {
    stored(s)
        .iter()
        .filter(|k| k.collection() == "users")
        .count()
}

#[test]
fn a_placed_collection_replicates_among_its_regions_only_by_feed_and_by_repair() {
    rt().block_on(async {
        // eu runs no anti-entropy of its own, so that it learns the placement only from us
        let c = SimCluster::start_each(
            23,
            &[
                ("us", clock_exact),
                ("eu", clock_exact),
                ("ap", clock_exact),
            ],
            &[],
            |id, cfg| {
                if id == "eu" {
                    cfg.anti_entropy_every = Duration::from_secs(3600);
                }
            },
        );
        // --- eu is cut off while users is placed in us and eu; eu writes users unaware of it
        c.cut("us", "eu");
        c.cut("eu", "ap");
        let (us, eu, ap) = (c.node("us"), c.node("eu"), c.node("ap"));
        eu.store()
            .write(&user(100), Edit::Put(obj(json!({"by": "eu"}))), None)
            .await
            .unwrap();
        let report = us
            .replica
            .place("users", &["us".into(), "eu".into()])
            .await
            .unwrap();
        assert_eq!(report.collections[0].regions, vec!["eu", "us"]);
        eventually(
            "ap learns the placement",
            Duration::from_secs(10),
            || async { !ap.store().holds("users") },
        )
        .await;
        // --- writes everywhere, under loss and duplication
        c.set_faults(Faults {
            drop: 0.1,
            duplicate: 0.1,
            max_delay: Duration::from_millis(5),
        });
        for i in 0..20 {
            us.store()
                .write(
                    &user(i),
                    Edit::Put(obj(json!({"email": format!("u{i}@us")}))),
                    None,
                )
                .await
                .unwrap();
            let at = [us, eu, ap][i % 3].store();
            at.write(&setting(i), Edit::Put(obj(json!({"n": i}))), None)
                .await
                .unwrap();
        }
        match ap
            .store()
            .write(&user(50), Edit::Put(obj(json!({}))), None)
            .await
        {
            Err(meridian_crdt::Error::Elsewhere { regions, .. }) => {
                assert_eq!(regions, vec!["eu", "us"])
            }
            other => panic!("ap took a write of a collection placed elsewhere: {other:?}"),
        }
        // --- eu, still unaware, is heard by ap: ap drops what it sends of users
        c.heal("eu", "ap");
        eventually(
            "ap drops eu's users changes, by feed or by repair",
            Duration::from_secs(10),
            || async { ap.replica.report().changes_outside_placement > 0 },
        )
        .await;
        assert_eq!(users_in(ap.store()), 0);
        // --- healed: us and eu converge on users (eu's own write reaches us by its feed)
        c.heal_all();
        eventually(
            "us and eu hold every users document, everyone every setting",
            Duration::from_secs(20),
            || async {
                let users_ok = [us, eu].iter().all(|n| users_in(n.store()) == 21);
                let mut settings_ok = true;
                for n in [us, eu, ap] {
                    for i in 0..20 {
                        settings_ok &= n.store().read_state(&setting(i)).unwrap().is_some();
                    }
                }
                users_ok && settings_ok && eu.store().placement() == us.store().placement()
            },
        )
        .await;
        c.set_faults(Faults::default());
        // --- anti-entropy agrees with ap without bringing users: passes find nothing to do
        for (a, b) in [
            ("ap", "us"),
            ("ap", "eu"),
            ("us", "ap"),
            ("eu", "ap"),
            ("us", "eu"),
        ] {
            eventually(
                &format!("a pass of {a} with {b} finds no difference"),
                Duration::from_secs(10),
                || async {
                    c.node(a)
                        .replica
                        .repair_with(b)
                        .await
                        .is_ok_and(|p| p.buckets == 0)
                },
            )
            .await;
        }
        assert_eq!(users_in(ap.store()), 0, "ap holds users documents");
        assert!(matches!(
            ap.store().get(&user(1)).await,
            Err(meridian_crdt::Error::Elsewhere { .. })
        ));
        assert_eq!(us.store().digests(), eu.store().digests());
        // --- placed everywhere again: ap gets every users document by anti-entropy (its feed
        // cursors are past them)
        eu.replica.unplace("users").await.unwrap();
        eventually(
            "ap holds every users document",
            Duration::from_secs(20),
            || async { users_in(ap.store()) == 21 && ap.store().holds("users") },
        )
        .await;
        assert!(ap.store().get(&user(100)).await.unwrap().is_some());
        c.stop();
    });
}

#[test]
fn bad_placements_are_refused_and_change_nothing() {
    rt().block_on(async {
        let c = SimCluster::start(5, &[("us", clock_exact), ("eu", clock_exact)]);
        let r = &c.node("us").replica;
        let refused = |e: meridian_sync::RegionsError| e.to_string();
        for (collection, regions, says) in [
            ("users", vec![], "at least one region"),
            ("users", vec!["nowhere".to_owned()], "nowhere"),
            ("users", vec!["not an id!".to_owned()], "not an id!"),
            ("_regions", vec!["us".to_owned()], "Meridian's own"),
            ("bad name!", vec!["us".to_owned()], "collection"),
        ] {
            let e = refused(r.place(collection, &regions).await.unwrap_err());
            assert!(e.contains(says), "{collection} {regions:?}: {e}");
        }
        assert!(c.node("us").store().placement().is_empty());
        assert!(r.placement().collections.is_empty());
        c.stop();
    });
}

/// Whether any file under `dir` holds `marker`.
fn disk_holds(dir: &std::path::Path, marker: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(marker.len()).any(|w| w == marker))
            {
                return true;
            }
        }
    }
    false
}

async fn passes(c: &reqwest::Client, node: &meridian_tests::Process) -> u64 {
    let cluster = meridian_tests::get_json(c, node.url("/v1/cluster")).await;
    cluster["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["anti_entropy_passes"].as_u64().unwrap())
        .min()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placed_collection_never_reaches_an_outside_regions_disk() {
    use meridian_tests::mesh::Mesh;
    let mut m = Mesh::start(&["--anti-entropy-secs", "1"]).await;
    let c = meridian_tests::http_client();
    let (a, b) = (m.node("a").url(""), m.node("b").url(""));
    let cx = m.node("c").url("");
    // --- users lives in a and b, set through the CLI; every region learns it
    let (code, err) =
        meridian_tests::run_to_exit(&["placement", "set", "users", "a", "b", "--node", &a], &[]);
    assert_eq!(code, 0, "{err}");
    for node in [&a, &b, &cx] {
        eventually(
            "every region holds the placement",
            Duration::from_secs(10),
            || async {
                let p = meridian_tests::get_json(&c, format!("{node}/v1/_placement")).await;
                p["collections"][0]["regions"] == json!(["a", "b"])
            },
        )
        .await;
    }
    // --- writes in a and b (a marker in every document), settings written in c
    for i in 0..30 {
        let at = if i % 2 == 0 { &a } else { &b };
        let r = c
            .put(format!("{at}/v1/users/u{i}"))
            .json(&json!({"email": format!("PLACEDMARKER-{i}@example.com")}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let r = c
            .put(format!("{cx}/v1/settings/s{i}"))
            .json(&json!({"theme": "dark", "n": i}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    // --- c answers every request for users with 421 naming where it lives
    let r = c.get(format!("{cx}/v1/users/u0")).send().await.unwrap();
    assert_eq!(r.status(), 421);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "collection_elsewhere");
    assert_eq!(
        body["error"]["regions"],
        json!([{"id": "a", "url": m.links[&("c", "a")].url()}, {"id": "b", "url": m.links[&("c", "b")].url()}])
    );
    let put = c
        .put(format!("{cx}/v1/users/u99"))
        .json(&json!({"email": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 421);
    for path in ["/v1/users", "/v1/users/u1?conflicts=true"] {
        let r = c.get(format!("{cx}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 421, "{path}");
    }
    // the schema of a placed collection is Meridian's document: every region takes it
    let r = c
        .get(format!("{cx}/v1/_schemas/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "no schema yet, and not 421");
    let r = c
        .put(format!("{cx}/v1/_schemas/users"))
        .json(&json!({"type": "object", "properties": {"email": {"type": "string"}}}))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success(),
        "a schema set outside: {}",
        r.status()
    );
    eventually("the schema reaches a", Duration::from_secs(10), || async {
        c.get(format!("{a}/v1/_schemas/users"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    // --- a sync client in c: its users document is unavailable there, its settings one syncs
    let device = tempfile::tempdir().unwrap();
    let replicas = meridian_client::Replicas::open(device.path()).unwrap();
    let offline_user = replicas.open_doc("users", "offline").unwrap();
    offline_user
        .put(&json!({"email": "PLACEDMARKER-offline"}))
        .unwrap();
    let offline_setting = replicas.open_doc("settings", "offline").unwrap();
    offline_setting.put(&json!({"theme": "light"})).unwrap();
    let client = meridian_client::Client::new([cx.clone()]).unwrap();
    let syncer = meridian_client::Syncer::start(replicas.clone(), client);
    tokio::time::timeout(Duration::from_secs(10), offline_setting.acknowledged())
        .await
        .expect("the settings document syncs");
    eventually(
        "the users document is unavailable in c",
        Duration::from_secs(10),
        || {
            let s = offline_user.status();
            async move { s.unavailable && s.unacknowledged == 1 }
        },
    )
    .await;
    syncer.stop().await;
    // --- a and b hold every users document; everyone every setting
    eventually(
        "replicated where placed",
        Duration::from_secs(20),
        || async {
            let mut ok = true;
            for node in [&a, &b] {
                let list = meridian_tests::get_json(&c, format!("{node}/v1/users?limit=100")).await;
                ok &= list["items"].as_array().is_some_and(|i| i.len() == 30);
            }
            for node in [&a, &b, &cx] {
                let list =
                    meridian_tests::get_json(&c, format!("{node}/v1/settings?limit=100")).await;
                ok &= list["items"].as_array().is_some_and(|i| i.len() == 31);
            }
            ok
        },
    )
    .await;
    // --- then two more anti-entropy passes of c with each peer, and of each peer with c
    let before: Vec<u64> =
        futures_util::future::join_all(["a", "b", "c"].map(|id| passes(&c, m.node(id)))).await;
    eventually(
        "two more anti-entropy passes everywhere",
        Duration::from_secs(20),
        || async {
            let now =
                futures_util::future::join_all(["a", "b", "c"].map(|id| passes(&c, m.node(id))))
                    .await;
            now.iter().zip(&before).all(|(n, b)| *n >= b + 2)
        },
    )
    .await;
    let cluster = meridian_tests::get_json(&c, m.node("c").url("/v1/cluster")).await;
    assert_eq!(
        cluster["changes_outside_placement"], 0,
        "nobody sent c users"
    );
    // --- c's disk: no users document, no byte of one; a's disk has them (the scan works)
    m.nodes.remove("c").unwrap().terminate();
    m.nodes.remove("a").unwrap().terminate();
    assert!(disk_holds(m.data_dir("a"), b"PLACEDMARKER-0@"));
    assert!(
        !disk_holds(m.data_dir("c"), b"PLACEDMARKER"),
        "a users document reached c's disk"
    );
    let mut cfg = meridian_crdt::StoreConfig::new(m.data_dir("c"));
    cfg.node_id = Some("c".into());
    let store = Store::open(cfg).unwrap();
    assert_eq!(users_in(&store), 0);
    assert_eq!(
        stored(&store)
            .iter()
            .filter(|k| k.collection() == "settings")
            .count(),
        31
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_placement_requests_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let node = meridian_tests::Process::start(
        dir.path(),
        &["--node-id", "us", "--cluster-secret", "placement-secret"],
    );
    let c = meridian_tests::http_client();
    let put = |path: &str, body: &str| {
        c.put(node.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    for (path, body, status, code) in [
        (
            "/v1/_placement/users",
            r#"{"regions": []}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/_placement/users",
            r#"{"regions": ["zz"]}"#,
            404,
            "unknown_region",
        ),
        (
            "/v1/_placement/users",
            r#"{"regions": "us"}"#,
            400,
            "bad_request",
        ),
        (
            "/v1/_placement/users",
            r#"{"regions": ["us"], "x": 1}"#,
            400,
            "bad_request",
        ),
        ("/v1/_placement/users", "not json", 400, "bad_request"),
        (
            "/v1/_placement/_schemas",
            r#"{"regions": ["us"]}"#,
            400,
            "bad_request",
        ),
    ] {
        let r = put(path, body).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{path} {body}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{path} {body}: {v}");
    }
    let list = meridian_tests::get_json(&c, node.url("/v1/_placement")).await;
    assert_eq!(list["collections"], json!([]), "nothing changed");
    // the CLI says why, and exits 1
    let (code, err) = meridian_tests::run_to_exit(
        &["placement", "set", "users", "zz", "--node", &node.url("")],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("unknown_region"), "{err}");
    // a placement of the node itself is fine, and so is clearing it
    let r = put("/v1/_placement/users", r#"{"regions": ["us"]}"#)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .delete(node.url("/v1/_placement/users"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: serde_json::Value = r.json().await.unwrap();
    assert_eq!(list["collections"], json!([]));
}
