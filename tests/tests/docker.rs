//! The multi-region docker demo (`web-demo/docker/`) end to end: up.sh builds the image from
//! the release binary and starts us, eu, ap and the page as containers; a write in us is read
//! in ap; partition.sh cuts eu off the network between regions for real; writes on both sides;
//! a session read on eu is refused while a tokenless one is served; heal.sh; convergence; a
//! `docker kill` of a container right after acknowledged writes and a restart lose nothing; a
//! fourth region's container joins the running cluster by `meridian region add` (join.sh) and
//! converges; down.sh leaves nothing behind. The regions serve HTTPS only and replicate over mutual TLS
//! (certificates from `meridian cert`, made by up.sh).
//!
//! Needs Docker with docker-compose (v1) (`.ci/run` makes sure of both). It uses the docker
//! demo's own names (containers `meridian-demo-*`, project `meridian-demo`) and host ports
//! 27000-27004, and removes a docker demo left over from an earlier run first. Every wait is
//! bounded; the whole test takes well under a minute once the release binary is built.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use meridian_tests::{eventually, http_client};
use serde_json::{json, Value};

const PORTS: [(&str, u16); 5] = [
    ("PAGE", 27000),
    ("US", 27001),
    ("EU", 27002),
    ("AP", 27003),
    ("SA", 27004),
];

fn script(name: &str, args: &[&str]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = root.join("web-demo/docker").join(name);
    let mut cmd = Command::new(&path);
    cmd.args(args);
    for (name, port) in PORTS {
        cmd.env(format!("MERIDIAN_DEMO_{name}_PORT"), port.to_string());
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{name} {args:?} failed:\n{text}");
    text
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn url(region: &str, path: &str) -> String {
    let port = match region {
        "us" => 27001,
        "eu" => 27002,
        "ap" => 27003,
        "sa" => 27004,
        _ => 27000,
    };
    // the regions speak HTTPS only; the page server is plain HTTP on the host's loopback
    let scheme = if port == 27000 { "http" } else { "https" };
    format!("{scheme}://127.0.0.1:{port}{path}")
}

/// A client that trusts the demo's development CA (made by up.sh) and nothing else.
fn demo_client() -> reqwest::Client {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let pem = std::fs::read(root.join("web-demo/docker/.tls/ca.pem")).expect("up.sh made the CA");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// What the docker demo leaves on the machine: containers, networks, volumes, images.
fn leftovers() -> Vec<String> {
    let mut out = vec![];
    for args in [
        &["ps", "-a", "--format", "{{.Names}}"][..],
        &["network", "ls", "--format", "{{.Name}}"],
        &["volume", "ls", "--format", "{{.Name}}"],
        &["images", "--format", "{{.Repository}}"],
    ] {
        out.extend(
            docker(args)
                .lines()
                .filter(|l| l.starts_with("meridian-demo"))
                .map(str::to_owned),
        );
    }
    out
}

async fn get(c: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = c.get(url);
    if let Some(t) = token {
        req = req
            .header("meridian-session", t)
            .header("meridian-max-wait-ms", "300");
    }
    match req.send().await {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// A merge patch, answered 2xx; returns the session token.
async fn patch(c: &reqwest::Client, url: &str, body: Value) -> String {
    let r = c
        .patch(url)
        .header("content-type", "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.headers()["meridian-session"].to_str().unwrap().to_owned()
}

async fn eu_cut_off_for(c: &reqwest::Client, node: &str) -> bool {
    let (_, r) = get(c, &url(node, "/v1/cluster"), None).await;
    r["peers"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["id"] == "eu" && p["reachable"] == false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_demo_partitions_heals_survives_a_kill_and_cleans_up() {
    script("down.sh", &[]);
    assert_eq!(leftovers(), Vec::<String>::new());
    let t0 = Instant::now();
    script("up.sh", &[]);
    let c = demo_client();
    // HTTPS only: plain HTTP to a region gets no answer
    let plain = http_client();
    assert!(plain
        .get("http://127.0.0.1:27001/healthz")
        .send()
        .await
        .is_err());
    eprintln!("up.sh: {:?}", t0.elapsed());
    let names = docker(&["ps", "--format", "{{.Names}}"]);
    for n in ["us", "eu", "ap", "page"] {
        assert!(names.contains(&format!("meridian-demo-{n}")), "{names}");
    }
    eventually("all regions up", Duration::from_secs(30), || async {
        for r in ["us", "eu", "ap"] {
            if get(&c, &url(r, "/readyz"), None).await.0 != 200 {
                return false;
            }
        }
        true
    })
    .await;

    // a write in us is read in ap, and through the page
    patch(&c, &url("us", "/v1/users/ada"), json!({"name": "Ada"})).await;
    eventually("ada in ap", Duration::from_secs(10), || async {
        get(&c, &url("ap", "/v1/users/ada"), None).await.1["value"]["name"] == "Ada"
    })
    .await;
    eventually("ada through the page", Duration::from_secs(10), || async {
        get(&c, &url("page", "/api/eu/v1/users/ada"), None).await.0 == 200
    })
    .await;

    // partition eu for real: the others see it unreachable, it still answers its users
    script("partition.sh", &["eu"]);
    let cut = Instant::now();
    eventually(
        "eu unreachable for us and ap",
        Duration::from_secs(2),
        || async { eu_cut_off_for(&c, "us").await && eu_cut_off_for(&c, "ap").await },
    )
    .await;
    eprintln!("partition → unreachable: {:?}", cut.elapsed());
    let token = patch(&c, &url("us", "/v1/users/ada"), json!({"city": "Lisbon"})).await;
    patch(&c, &url("eu", "/v1/users/ada"), json!({"city": "Osaka"})).await;
    let (s, v) = get(&c, &url("eu", "/v1/users/ada"), Some(&token)).await;
    assert_eq!(
        (s, &v["error"]["code"]),
        (503, &json!("session_unavailable")),
        "{v}"
    );
    assert_eq!(v["error"]["region"], "us");
    // named as a client on the host reaches it, not as the regions do
    assert_eq!(v["error"]["url"], url("us", ""), "{v}");
    let (s, v) = get(&c, &url("eu", "/v1/users/ada"), None).await;
    assert_eq!((s, &v["value"]["city"]), (200, &json!("Osaka")));
    assert_eq!(
        get(&c, &url("us", "/v1/users/ada"), None).await.1["value"]["city"],
        "Lisbon"
    );

    // heal: one value and the same conflict everywhere, and the session is served on eu
    script("heal.sh", &["eu"]);
    eventually(
        "converged after the heal",
        Duration::from_secs(30),
        || async {
            let mut seen = vec![];
            for r in ["us", "eu", "ap"] {
                let (_, v) = get(&c, &url(r, "/v1/users/ada?conflicts=true"), None).await;
                seen.push((v["value"].clone(), v["conflicts"].clone()));
            }
            seen.windows(2).all(|w| w[0] == w[1])
                && seen[0]
                    .1
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k["path"] == "/city"))
        },
    )
    .await;
    assert_eq!(
        get(&c, &url("eu", "/v1/users/ada"), Some(&token)).await.0,
        200
    );

    // docker kill right after acknowledged writes, then a restart: nothing acknowledged is lost
    for i in 0..200 {
        patch(&c, &url("us", &format!("/v1/bulk/d{i}")), json!({"i": i})).await;
    }
    docker(&["kill", "meridian-demo-us"]);
    docker(&["start", "meridian-demo-us"]);
    eventually("us back", Duration::from_secs(30), || async {
        get(&c, &url("us", "/readyz"), None).await.0 == 200
    })
    .await;
    for i in 0..200 {
        let (s, v) = get(&c, &url("us", &format!("/v1/bulk/d{i}")), None).await;
        assert_eq!(
            (s, &v["value"]["i"]),
            (200, &json!(i)),
            "d{i} lost by the kill"
        );
    }
    eventually("the writes reach ap", Duration::from_secs(30), || async {
        get(&c, &url("ap", "/v1/bulk/d199"), None).await.0 == 200
    })
    .await;

    // a fourth region joins the running cluster (join.sh: its container, seeded with us alone,
    // added by `meridian region add`): it converges, and its writes reach every region
    script("join.sh", &[]);
    eventually(
        "sa holds what the others hold",
        Duration::from_secs(30),
        || async {
            get(&c, &url("sa", "/v1/bulk/d199"), None).await.0 == 200
                && get(&c, &url("sa", "/v1/users/ada"), None).await.1["value"]["name"] == "Ada"
        },
    )
    .await;
    let token = patch(&c, &url("sa", "/v1/users/sam"), json!({"name": "Sam"})).await;
    for r in ["us", "eu", "ap"] {
        eventually("sa's write everywhere", Duration::from_secs(10), || async {
            get(&c, &url(r, "/v1/users/sam"), Some(&token)).await.0 == 200
        })
        .await;
        let (_, regions) = get(&c, &url(r, "/v1/_regions"), None).await;
        assert!(
            regions["following"]
                .as_array()
                .is_some_and(|f| f.iter().any(|p| p["id"] == "sa")),
            "{r}: {regions}"
        );
    }

    // down.sh leaves nothing behind
    script("down.sh", &[]);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(
        !root.join("web-demo/docker/.tls").exists(),
        "down.sh removes the certificates"
    );
    assert_eq!(leftovers(), Vec::<String>::new());
}
