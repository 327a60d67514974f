//! `meridian demo`: three regions (`us`, `eu`, `ap`) on this machine and the web page that
//! shows them. Each region is a real node (its own store, clock and listener) replicating over
//! HTTP as in production; the page server proxies the browser's requests to them, so the page
//! needs no cross-origin access and never sees the cluster secret, which the fault controls
//! sit behind.
//!
//! With `--region ID=URL` (repeated) the demo starts no nodes and serves the page for regions
//! that run elsewhere (the docker demo).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use clap::Args;
use futures_util::TryStreamExt;

use crate::config::Settings;
use crate::node::Node;
use meridian_http::ApiError;

/// The regions `meridian demo` starts, in the page's order.
pub const REGIONS: [&str; 3] = ["us", "eu", "ap"];

/// `meridian demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the web page is served.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub listen: String,
    /// The port of `us`; `eu` and `ap` take the next two. The regions listen on 127.0.0.1.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Where the regions keep their data (a directory per region).
    #[arg(long, default_value = "meridian-demo")]
    pub data_dir: PathBuf,
    /// Start from empty regions: remove the demo's data first.
    #[arg(long)]
    pub fresh: bool,
    /// Serve the page for regions running elsewhere, as ID=URL (repeat, or comma-separated),
    /// instead of starting them. Their fault controls need `--cluster-secret`.
    #[arg(long = "region", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// The CA (PEM) that `https://` regions' certificates chain to.
    #[arg(long)]
    pub region_ca: Option<PathBuf>,
    /// The regions' cluster secret. Default when starting them: a new random one.
    #[arg(long, env = "MERIDIAN_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
}

/// A region as the page server knows it.
#[derive(Debug, Clone, serde::Serialize)]
struct Region {
    id: String,
    url: String,
}

#[derive(Debug, Clone)]
struct Page {
    regions: Arc<Vec<Region>>,
    secret: Option<Arc<str>>,
    client: reqwest::Client,
}

/// Runs the demo until Ctrl-C (or SIGTERM), then stops every region cleanly.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut nodes = tokio::task::JoinSet::new();
    let (regions, secret) = if args.regions.is_empty() {
        let secret = args.cluster_secret.clone().unwrap_or_else(random_secret);
        let mut regions = vec![];
        let mut opened = vec![];
        for settings in node_settings(&args, &secret)? {
            let node = Node::open(settings.clone())
                .await
                .map_err(|e| anyhow::anyhow!("region {}: {e:#}", settings.region))?;
            regions.push(Region {
                id: settings.region.clone(),
                url: format!("http://{}", node.local_addr()?),
            });
            opened.push(node);
        }
        for node in opened {
            let mut rx = stop_rx.clone();
            nodes.spawn(node.serve(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }));
        }
        (regions, Some(secret))
    } else {
        let regions = args
            .regions
            .iter()
            .map(|r| {
                let (id, url) = r
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--region {r:?} must be ID=URL"))?;
                meridian_crdt::validate_name("region", id)
                    .map_err(|e| anyhow::anyhow!("--region {r:?}: {e}"))?;
                anyhow::ensure!(
                    url.starts_with("http://")
                        || (url.starts_with("https://") && args.region_ca.is_some()),
                    "--region {r:?}: the URL must start with http://, or https:// with --region-ca"
                );
                Ok(Region {
                    id: id.to_owned(),
                    url: url.trim_end_matches('/').to_owned(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        (regions, args.cluster_secret.clone())
    };

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for the page: {e}", args.listen))?;
    let page_addr = listener.local_addr()?;
    let page = Page {
        regions: Arc::new(regions),
        secret: secret.map(Into::into),
        client: meridian_net::tls::peer_client(
            reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(2))
                .tcp_nodelay(true),
            &meridian_net::tls::PeerTls {
                ca: args.region_ca.clone(),
                ..Default::default()
            },
        )
        .map_err(anyhow::Error::msg)?
        .build()?,
    };
    // caught from before the demo says it runs (see `shutdown_signal`)
    let shutdown = crate::shutdown_signal();
    println!("Meridian demo: three regions, replicating");
    for r in page.regions.iter() {
        println!("  {:<3} {}", r.id, r.url);
    }
    println!("  web page: http://{page_addr}/");
    if args.regions.is_empty() {
        println!(
            "  data: {}   (Ctrl-C stops everything)",
            args.data_dir.display()
        );
    }
    let mut rx = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, page_app(page))
            .with_graceful_shutdown(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            })
            .await
    });

    // Until Ctrl-C, or until a region fails: then stop all and report the first failure.
    let mut failure = None;
    tokio::select! {
        _ = shutdown => {}
        Some(done) = nodes.join_next() => {
            failure = Some(match done {
                Ok(Ok(())) => anyhow::anyhow!("a region stopped"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a region failed: {e}"),
            });
        }
    }
    stop_tx.send_replace(true);
    while let Some(done) = nodes.join_next().await {
        match done {
            Ok(Err(e)) if failure.is_none() => failure = Some(e),
            Err(e) if failure.is_none() => failure = Some(anyhow::anyhow!("a region failed: {e}")),
            _ => {}
        }
    }
    let _ = server.await;
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The three regions' settings: a full mesh on 127.0.0.1, fault controls on.
fn node_settings(args: &DemoArgs, secret: &str) -> anyhow::Result<Vec<Settings>> {
    if args.fresh {
        remove_demo_data(&args.data_dir)?;
    }
    let port = |i: usize| {
        args.base_port.checked_add(i as u16).ok_or_else(|| {
            anyhow::anyhow!(
                "--base-port {} leaves no room for three regions",
                args.base_port
            )
        })
    };
    let mut out = vec![];
    for (i, region) in REGIONS.iter().enumerate() {
        let mut peers = vec![];
        for (j, other) in REGIONS.iter().enumerate() {
            if i != j {
                peers.push(format!("{other}=http://127.0.0.1:{}", port(j)?));
            }
        }
        let args = crate::config::ServeArgs {
            node_id: Some(region.to_string()),
            region: Some(region.to_string()),
            listen: Some(format!("127.0.0.1:{}", port(i)?)),
            data_dir: Some(args.data_dir.join(region)),
            peers,
            cluster_secret: Some(secret.to_owned()),
            fault_controls: Some(true),
            // a short pass, so that the page shows repairs without a long wait
            anti_entropy_secs: Some(10),
            ..Default::default()
        };
        out.push(args.resolve()?);
    }
    Ok(out)
}

/// `--fresh`: removes the demo's data dir, but only if it holds nothing but region dirs (a
/// mistyped `--data-dir` must not delete someone's files).
fn remove_demo_data(dir: &Path) -> anyhow::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", dir.display()),
    };
    for entry in entries {
        let name = entry?.file_name();
        anyhow::ensure!(
            REGIONS.iter().any(|r| name == *r),
            "--fresh: {} holds {:?}, which the demo did not make; not removing it",
            dir.display(),
            name
        );
    }
    std::fs::remove_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot remove {}: {e}", dir.display()))
}

fn random_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::thread_rng().gen();
    hex::encode(bytes)
}

/// The page's files, built into the binary: the demo runs from anywhere, also from an image
/// that holds nothing but the binary.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../../web-demo/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web-demo/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web-demo/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web-demo/api.js"),
    ),
    (
        "chart.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web-demo/chart.js"),
    ),
];

fn page_app(page: Page) -> Router {
    Router::new()
        .route("/", get(|| file("index.html")))
        .route("/config.json", get(config))
        .route("/api/{region}/{*path}", any(proxy))
        .route("/{file}", get(|UrlPath(name): UrlPath<String>| file(name)))
        .with_state(page)
}

async fn file(name: impl AsRef<str>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name.as_ref()) {
        Some((_, ct, body)) => (
            [
                (header::CONTENT_TYPE, *ct),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::NotFound("no such file".into()).into_response(),
    }
}

async fn config(State(page): State<Page>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "regions": &*page.regions,
        "controls": page.secret.is_some(),
    }))
}

/// Request headers the page may send to a region, and answer headers it gets back.
const REQUEST_HEADERS: [HeaderName; 6] = [
    header::ACCEPT,
    header::CONTENT_TYPE,
    HeaderName::from_static("meridian-session"),
    HeaderName::from_static("meridian-max-wait-ms"),
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("idempotency-key"),
];
const ANSWER_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::CACHE_CONTROL,
    header::RETRY_AFTER,
    HeaderName::from_static("meridian-session"),
];

/// `/api/{region}/v1/...` to the region's `/v1/...`; `/api/{region}/faults` to its fault
/// controls, with the cluster secret. Answers (change streams too) are passed on as they come.
async fn proxy(
    State(page): State<Page>,
    UrlPath((region, path)): UrlPath<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let r = page
        .regions
        .iter()
        .find(|r| r.id == region)
        .ok_or_else(|| ApiError::NotFound(format!("no region {region:?}")))?;
    let target = if path == "faults" {
        format!("{}/internal/faults", r.url)
    } else if path.starts_with("v1/") {
        match query {
            Some(q) => format!("{}/{path}?{q}", r.url),
            None => format!("{}/{path}", r.url),
        }
    } else {
        return Err(ApiError::NotFound(
            "the page reaches only /v1 and faults".into(),
        ));
    };
    let mut req = page.client.request(method, &target);
    for h in &REQUEST_HEADERS {
        if let Some(v) = headers.get(h) {
            req = req.header(h, v);
        }
    }
    if path == "faults" {
        let secret = page
            .secret
            .as_deref()
            .ok_or_else(|| ApiError::NotFound("fault controls need --cluster-secret".into()))?;
        req = req.bearer_auth(secret);
    }
    let resp = req
        .body(body)
        .send()
        .await
        .map_err(|e| ApiError::BadGateway(format!("region {region} did not answer: {e}")))?;
    let mut out = Response::builder()
        .status(StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY));
    for h in &ANSWER_HEADERS {
        if let Some(v) = resp.headers().get(h) {
            out = out.header(h, v);
        }
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    out.body(Body::from_stream(stream))
        .map_err(|e| ApiError::Internal(e.to_string()))
}
