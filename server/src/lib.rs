//! Meridian's HTTP/JSON API and the `meridian` binary's wiring.
//!
//! # Layout
//! - `config`: command line, environment and config file.
//! - `error`: [`ApiError`], the one mapping from errors to HTTP statuses and codes.
//! - `extract`: path, body, query and header parsing with the project's error format.
//! - `api`: the `/v1` document handlers.
//! - `session`: session tokens in and out of `/v1` requests.
//! - `cluster`: the HTTP transport between nodes, `/internal/rpc`, `/v1/cluster`.
//! - `metrics`: Prometheus metrics and the request-tracking middleware.
//! - `openapi`: the OpenAPI description served at `/openapi.json`.
//!
//! [`app`] builds the router from an [`AppState`], so tests drive it without sockets;
//! [`run`] opens the store, binds and serves until SIGINT or SIGTERM.
#![warn(unreachable_pub, missing_debug_implementations)]

mod api;
mod cluster;
pub mod config;
mod error;
mod extract;
mod metrics;
mod openapi;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Json, Router};
use meridian_crdt::{Store, StoreConfig};
use meridian_sync::{Replica, SyncConfig};
use tower::ServiceBuilder;

pub use cluster::HttpTransport;
pub use config::Config;
pub use error::ApiError;
pub use metrics::Metrics;

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body: usize,
    /// Requests in flight on `/v1` before the node answers 503 `overloaded`.
    pub max_in_flight: usize,
    /// Longest a `/v1` request may take before 503 `timeout`.
    pub request_timeout: Duration,
    /// Longest a request with a session token waits for this node to catch up.
    pub session_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1 << 20,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(10),
            session_wait: Duration::from_secs(1),
        }
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Store,
    pub replica: Replica<HttpTransport>,
    /// Required on `/internal/`; `None` refuses every internal request.
    pub cluster_secret: Option<Arc<str>>,
    pub region: Arc<str>,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// A node without peers.
    pub fn new(store: Store, region: &str, limits: Limits) -> Self {
        Self::clustered(store, region, limits, SyncConfig::new(vec![]), None)
            .expect("a replica without peers has no bookkeeping to fail on")
    }

    /// A node with peers (replication is started by [`run`], or by the caller).
    pub fn clustered(
        store: Store,
        region: &str,
        limits: Limits,
        sync: SyncConfig,
        secret: Option<&str>,
    ) -> meridian_crdt::Result<Self> {
        let transport = HttpTransport::new(secret.unwrap_or(""));
        Ok(AppState {
            replica: Replica::new(store.clone(), transport, sync)?,
            store,
            cluster_secret: secret.map(Into::into),
            region: region.into(),
            limits: Arc::new(limits),
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// The URL of a peer, to tell a client where the data is.
    pub(crate) fn peer_url(&self, id: &str) -> Option<String> {
        self.replica.peer_url(id)
    }
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    use axum::routing::{get as g, post};
    // Backpressure and timeouts on the data API only: health and metrics must answer even
    // when the node is saturated. The limit is global (one semaphore for all routes).
    let guard = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|e: BoxError| async move {
            if e.is::<tower::timeout::error::Elapsed>() {
                ApiError::Timeout
            } else if e.is::<tower::load_shed::error::Overloaded>() {
                ApiError::Overloaded
            } else {
                ApiError::Internal(e.to_string())
            }
        }))
        .load_shed()
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            state.limits.max_in_flight,
        ))
        .timeout(state.limits.request_timeout);

    let v1 = Router::new()
        .route(
            "/v1/{collection}/{id}",
            g(api::get_doc)
                .put(api::put_doc)
                .patch(api::patch_doc)
                .delete(api::delete_doc),
        )
        .route("/v1/{collection}/{id}/ops", post(api::post_ops))
        .route("/v1/{collection}", g(api::list_docs))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::wait,
        ))
        .route_layer(guard)
        .route("/v1/status", get(status))
        .route("/v1/cluster", get(cluster::report))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::stamp,
        ));

    Router::new()
        .merge(v1)
        .route("/internal/rpc", post(cluster::rpc))
        .route("/internal/subscribe", post(cluster::subscribe))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi::serve))
        .method_not_allowed_fallback(api::method_not_allowed)
        .fallback(api::no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .with_state(state)
}

async fn status(State(st): State<AppState>) -> Json<serde_json::Value> {
    let s = st.store.stats();
    Json(serde_json::json!({
        "node_id": s.node_id,
        "region": &*st.region,
        "hlc": s.hlc,
        "documents": s.documents,
        "bytes_on_disk": s.bytes_on_disk,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

async fn ready(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if st.store.is_ready() {
        Ok(Json(serde_json::json!({"ready": true})))
    } else {
        Err(ApiError::Unavailable(
            "storage has failed; restart the node".into(),
        ))
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    let (bytes_sent, bytes_received) = st.replica.bytes();
    let repl = metrics::ReplicationStats {
        drift_refusals: st.replica.drift_refusals(),
        bytes_sent,
        bytes_received,
    };
    let body = st.metrics.render(&st.store.stats(), repl);
    let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response()
}

/// Opens the store, binds, and serves until SIGINT or SIGTERM; then finishes in-flight
/// requests and flushes.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data dir {}: {e}", data_dir.display()))?;
    let mut sc = StoreConfig::new(data_dir);
    sc.node_id = config.node_id.clone();
    sc.cache_bytes = config.cache_mb << 20;
    sc.max_drift = Duration::from_millis(config.max_drift_ms);
    let store = Store::open(sc).map_err(|e| open_error(data_dir, e))?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let limits = Limits {
        max_body: config.max_body_bytes,
        max_in_flight: config.max_in_flight,
        request_timeout: Duration::from_millis(config.request_timeout_ms),
        session_wait: Duration::from_millis(config.session_wait_ms),
    };
    let mut sync = SyncConfig::new(config.peers.clone());
    sync.anti_entropy_every = Duration::from_secs(config.anti_entropy_secs);
    sync.feed_mode = config.feed_mode;
    let state = AppState::clustered(
        store.clone(),
        &config.region,
        limits,
        sync,
        config.cluster_secret.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("cannot load replication state: {e}"))?;
    let replica = state.replica.clone();
    replica.start();
    tracing::info!(
        node = %store.node_id(),
        region = %config.region,
        listen = %listener.local_addr()?,
        data_dir = %data_dir.display(),
        peers = config.peers.len(),
        "meridian is serving"
    );

    // Forget idempotency keys past their TTL, off the request path.
    let purge_store = store.clone();
    let purge = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            let s = purge_store.clone();
            match tokio::task::spawn_blocking(move || s.purge_idempotency_keys()).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "expired idempotency keys"),
                Ok(Err(e)) => tracing::warn!(error = %e, "idempotency key purge failed"),
                _ => {}
            }
        }
    });

    let stop = replica.clone();
    // Without TCP_NODELAY a feed frame can sit in the kernel for a delayed-ACK round (tens of
    // milliseconds) behind the previous one: Nagle's algorithm holds small writes back.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // ends the long polls peers are waiting on, so the shutdown does not wait for them
            stop.stop();
        })
        .await?;
    replica.stop();
    purge.abort();
    store
        .close()
        .map_err(|e| anyhow::anyhow!("final flush failed: {e}"))?;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn open_error(dir: &std::path::Path, e: meridian_crdt::Error) -> anyhow::Error {
    match e {
        meridian_crdt::Error::InUse => anyhow::anyhow!(
            "the data dir {} is in use by another process",
            dir.display()
        ),
        e => anyhow::anyhow!("cannot open the data dir {}: {e}", dir.display()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing in-flight requests");
}
