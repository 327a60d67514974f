//! TLS against the real binary: HTTPS only, certificates checked by clients (another CA, an
//! expired certificate), re-read on SIGHUP, and three regions replicating over mutual TLS that
//! refuse a peer without a certificate.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use meridian_tests::{eventually, Process};

/// `meridian cert` into `dir`: ca.pem and <node>.pem/.key.
fn make_certs(dir: &Path, nodes: &[&str]) {
    let mut args = vec!["cert", "--dir", dir.to_str().unwrap()];
    for n in nodes {
        args.extend(["--node", n]);
    }
    let (code, err) = meridian_tests::run_to_exit(&args, &[]);
    assert_eq!(code, 0, "{err}");
}

fn client(ca: &Path, identity: Option<&str>) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        b = b.identity(reqwest::Identity::from_pem(id.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn https(p: &Process, path: &str) -> String {
    format!("https://{}{path}", p.addr)
}

fn tls_args(dir: &Path, node: &str) -> Vec<String> {
    let f = |n: &str| dir.join(n).to_str().unwrap().to_owned();
    vec![
        "--tls-cert".into(),
        f(&format!("{node}.pem")),
        "--tls-key".into(),
        f(&format!("{node}.key")),
    ]
}

/// `PUT /v1/users/alice` over HTTPS; it must succeed.
async fn put_alice(c: &reqwest::Client, p: &Process) {
    let r = c
        .put(https(p, "/v1/users/alice"))
        .header("content-type", "application/json")
        .body(r#"{"name":"Alice"}"#)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

fn start(data: &Path, args: &[String]) -> Process {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Process::start(data, &args)
}

#[tokio::test]
async fn a_tls_node_serves_https_only_to_clients_that_trust_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (dir.path().join("ca1"), dir.path().join("ca2"));
    make_certs(&ca1, &["us"]);
    make_certs(&ca2, &["us"]);
    let p = start(&dir.path().join("data"), &tls_args(&ca1, "us"));
    let trusts1 = client(&ca1.join("ca.pem"), None);
    let trusts2 = client(&ca2.join("ca.pem"), None);

    put_alice(&trusts1, &p).await;
    let status: serde_json::Value = trusts1
        .get(https(&p, "/v1/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["tls"], true);

    // plain HTTP to the TLS port: no answer
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    assert!(plain.get(p.url("/healthz")).send().await.is_err());
    // a client that trusts another CA refuses the node's certificate
    let err = trusts2.get(https(&p, "/healthz")).send().await.unwrap_err();
    assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");

    // SIGHUP: the node takes the certificate of the other CA; new connections see it
    for f in ["us.pem", "us.key"] {
        std::fs::copy(ca2.join(f), ca1.join(f)).unwrap();
    }
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(p.pid(), libc::SIGHUP) };
    eventually(
        "the new certificate is served",
        Duration::from_secs(5),
        || {
            let c = client(&ca2.join("ca.pem"), None);
            let url = https(&p, "/healthz");
            async move { c.get(url).send().await.is_ok() }
        },
    )
    .await;
    let fresh = client(&ca1.join("ca.pem"), None);
    assert!(fresh.get(https(&p, "/healthz")).send().await.is_err());
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = meridian_node::cert::DevCa::new().unwrap();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let (cert, key) = ca.issue("us", &[], now - 30 * day, now - day).unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_pem = write("ca.pem", &ca.cert_pem());
    write("us.pem", &cert);
    write("us.key", &key);
    let p = start(&dir.path().join("data"), &tls_args(dir.path(), "us"));
    let err = client(&ca_pem, None)
        .get(https(&p, "/healthz"))
        .send()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("Expired"), "{err:?}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_regions_replicate_over_mutual_tls_and_refuse_a_peer_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs, &["us", "eu", "ap"]);
    let ids = ["us", "eu", "ap"];
    let ports: Vec<u16> = ids.iter().map(|_| free_port()).collect();
    let secret = "mutual-tls-secret";
    let f = |n: &str| certs.join(n).to_str().unwrap().to_owned();
    let mut nodes = vec![];
    for (i, id) in ids.iter().enumerate() {
        let mut args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{}", ports[i]),
            "--node-id".into(),
            id.to_string(),
            "--cluster-secret".into(),
            secret.into(),
            "--peer-ca".into(),
            f("ca.pem"),
            "--peer-client-cert".into(),
            f(&format!("{id}.pem")),
            "--peer-client-key".into(),
            f(&format!("{id}.key")),
            "--require-peer-cert".into(),
        ];
        args.extend(tls_args(&certs, id));
        for (j, other) in ids.iter().enumerate() {
            if j != i {
                args.extend([
                    "--peer".into(),
                    format!("{other}=https://127.0.0.1:{}", ports[j]),
                ]);
            }
        }
        nodes.push(start(&dir.path().join(id), &args));
    }
    let c = client(&certs.join("ca.pem"), None);
    put_alice(&c, &nodes[0]).await;
    for n in &nodes[1..] {
        eventually(
            "alice replicated over mutual TLS",
            Duration::from_secs(10),
            || {
                let (c, url) = (c.clone(), https(n, "/v1/users/alice"));
                async move {
                    match c.get(url).send().await {
                        Ok(r) if r.status().is_success() => {
                            let v: serde_json::Value = r.json().await.unwrap();
                            v["value"]["name"] == "Alice"
                        }
                        _ => false,
                    }
                }
            },
        )
        .await;
    }

    // a peer without a client certificate (the secret is right): refused
    let r = c
        .post(https(&nodes[0], "/internal/rpc"))
        .bearer_auth(secret)
        .body(vec![0u8])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(text.contains("client certificate"), "{text}");
    // one with a certificate from another CA cannot even finish the handshake
    let other = dir.path().join("other");
    make_certs(&other, &["us"]);
    let id = format!(
        "{}{}",
        std::fs::read_to_string(other.join("us.pem")).unwrap(),
        std::fs::read_to_string(other.join("us.key")).unwrap()
    );
    let impostor = client(&certs.join("ca.pem"), Some(&id));
    assert!(impostor
        .post(https(&nodes[0], "/internal/rpc"))
        .bearer_auth(secret)
        .body(vec![0u8])
        .send()
        .await
        .is_err());
}

/// The client library over HTTPS with the cluster's CA and a key: requests, and offline
/// replicas synced over `wss://`. Without the CA it refuses the node's certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_speaks_https_and_wss_with_the_clusters_ca() {
    use meridian_client::Client;
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    make_certs(&certs, &["us"]);
    let (key, entry) = meridian_tests::create_key("app", "write", "users");
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, entry).unwrap();
    let mut args = tls_args(&certs, "us");
    args.extend(["--auth-file".into(), keys.to_str().unwrap().into()]);
    let p = start(&dir.path().join("data"), &args);
    let base = format!("https://{}", p.addr);

    let untrusting = Client::builder([base.clone()])
        .api_key(&key)
        .retry(meridian_client::Retry {
            attempts: 1,
            ..Default::default()
        })
        .build()
        .unwrap();
    assert!(untrusting.get("users", "alice").await.is_err());

    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let client = Client::builder([base])
        .ca_pem(ca)
        .api_key(&key)
        .build()
        .unwrap();
    client
        .put("users", "alice", &json!({"name": "Alice"}))
        .await
        .unwrap();

    meridian_tests::replica_round_trip(&client).await;
}
