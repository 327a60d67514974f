//! The load generator the benchmarks share: concurrent clients, each over its own keep-alive
//! HTTP/1.1 connection (plain or TLS), with latencies per request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a phase sends its requests, and how.
#[derive(Clone)]
pub struct Target {
    pub addr: String,
    /// TLS to the target, trusting the given CA (the server's name is `localhost`).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Sent on every request (an `Authorization` header, say).
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Target {
    pub fn plain(addr: &str) -> Target {
        Target {
            addr: addr.to_owned(),
            tls: None,
            headers: vec![],
        }
    }

    /// TLS to `addr`, trusting the CA in `ca_pem`.
    pub fn tls(addr: &str, ca_pem: &std::path::Path) -> Target {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(ca_pem).expect("CA") {
            roots.add(c.expect("a CA certificate")).expect("CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        Target {
            addr: addr.to_owned(),
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
            headers: vec![],
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Target {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// What one phase measured.
#[derive(Debug)]
pub struct Phase {
    pub name: String,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// One request of a benchmark phase.
#[derive(Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    /// Content type and body.
    pub body: Option<(&'static str, String)>,
}

impl Req {
    pub fn get(path: String) -> Req {
        Req {
            method: "GET",
            path,
            body: None,
        }
    }
    pub fn patch(path: String, body: String) -> Req {
        Req {
            method: "PATCH",
            path,
            body: Some(("application/merge-patch+json", body)),
        }
    }
}

/// Drives `make(i)` from `clients` tasks, each over its own keep-alive HTTP/1.1 connection
/// (a lean client, like wrk's, so the generator takes as little of the two cores as it can),
/// for `dur` after a one-second warm-up.
/// An HTTP/1.1 connection over `io`, driven on its own task.
async fn http1<IO>(
    io: IO,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

/// Starts the `ceiling` binary (over TLS with `Some((cert, key))`); returns it and its address.
pub fn start_ceiling(tls: Option<(&str, &str)>) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut cmd =
        std::process::Command::new(crate::sibling_binary("MERIDIAN_CEILING_BIN", "ceiling"));
    if let Some((cert, key)) = tls {
        cmd.args(["127.0.0.1:0", cert, key]);
    }
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the ceiling server");
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("listen=")
        .nth(1)
        .expect("ceiling address")
        .trim()
        .to_owned();
    (child, addr)
}

pub async fn drive<F>(name: &str, target: &Target, clients: usize, dur: Duration, make: F) -> Phase
where
    F: Fn(u64) -> Req + Send + Sync + Clone + 'static,
{
    let warmup = Duration::from_secs(1);
    let start = Instant::now();
    let errors = Arc::new(AtomicU64::new(0));
    let counter = Arc::new(AtomicU64::new(0));
    let mut tasks = vec![];
    for _ in 0..clients {
        let (make, errors, counter, target) = (
            make.clone(),
            errors.clone(),
            counter.clone(),
            target.clone(),
        );
        let addr = target.addr.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut sender = match &target.tls {
                None => http1(stream).await,
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                    http1(tls.connect(name, stream).await.expect("TLS handshake")).await
                }
            };
            loop {
                let now = Instant::now();
                if now - start > warmup + dur {
                    break;
                }
                let r = make(counter.fetch_add(1, Ordering::Relaxed));
                let mut req = hyper::Request::builder()
                    .method(r.method)
                    .uri(&r.path)
                    .header("host", &addr);
                for (k, v) in &target.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let body = match r.body {
                    Some((ct, b)) => {
                        req = req.header("content-type", ct);
                        b
                    }
                    None => String::new(),
                };
                let req = req
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .expect("request");
                let ok = match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        ok && http_body_util::BodyExt::collect(resp.into_body())
                            .await
                            .is_ok()
                    }
                    Err(_) => false,
                };
                let done = Instant::now();
                if now - start >= warmup && done - start <= warmup + dur {
                    if ok {
                        lat.push((done - now).as_micros() as u32);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !ok && sender.ready().await.is_err() {
                    break;
                }
            }
            lat
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Phase {
        name: name.into(),
        rps: all.len() as f64 / dur.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Writes `n` profile documents (`users/u0000000`...) into a fresh data dir as node `node`,
/// from 64 writers, then closes the store: a node to start on it holds them.
pub async fn fill_store(dir: &std::path::Path, node: &str, n: usize) {
    use meridian_crdt::{DocKey, Edit, Store, StoreConfig};
    let mut cfg = StoreConfig::new(dir);
    cfg.node_id = Some(node.into());
    let store = Store::open(cfg).expect("open a store");
    let t0 = Instant::now();
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(writers) {
                let key = DocKey::new("users", &format!("u{i:07}")).expect("a key");
                let value = serde_json::json!({"name": format!("user {i}"),
                    "email": format!("u{i}@example.com"), "plan": "free", "n": i});
                store
                    .write(
                        &key,
                        Edit::Put(value.as_object().cloned().expect("an object")),
                        None,
                    )
                    .await
                    .expect("write");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    store.close().expect("close");
    eprintln!(
        "filled {n} documents in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// Bytes of every file under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let m = e.metadata().expect("metadata");
        total += if m.is_dir() {
            dir_bytes(&e.path())
        } else {
            m.len()
        };
    }
    total
}
