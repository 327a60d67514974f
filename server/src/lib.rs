//! Meridian's HTTP/JSON API and the `meridian` binary's wiring.
//!
//! # Layout
//! - `config`: command line, environment and config file; the one [`Settings`] struct.
//! - `state`: [`AppState`], what every handler shares, and the request [`Limits`].
//! - `error`: [`ApiError`], the one mapping from errors to HTTP statuses and codes.
//! - `extract`: path, body, query and header parsing with the project's error format.
//! - `api`: the `/v1` document handlers.
//! - `session`: session tokens in and out of `/v1` requests.
//! - `changes`: the live change feed (Server-Sent Events on the document routes).
//! - `clients`: `/v1/sync`, the WebSocket automerge-repo clients sync over.
//! - `cluster`: the HTTP transport between nodes, `/internal/rpc`, `/v1/cluster`.
//! - `metrics`: Prometheus metrics and the request-tracking middleware.
//! - `openapi`: the OpenAPI description served at `/openapi.json`.
//!
//! [`app`] builds the router from an [`AppState`], so tests drive it without sockets;
//! [`run`] opens the store, binds and serves until SIGINT or SIGTERM.
#![warn(unreachable_pub, missing_debug_implementations)]

mod api;
mod changes;
mod clients;
mod cluster;
pub mod config;
mod error;
mod extract;
mod metrics;
mod openapi;
mod session;
mod state;

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Json, Router};
use meridian_crdt::Store;
use tower::ServiceBuilder;

pub use changes::{ChangeFeed, FeedLimits, FeedStats};
pub use cluster::HttpTransport;
pub use config::{ServeArgs, Settings};
pub use error::ApiError;
pub use metrics::Metrics;
pub use state::{AppState, Limits};

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
        // The upgrade passes the session wait and the limits like any request; the socket then
        // outlives the request (and its timeout) and is bounded by the sync limits instead.
        .route("/v1/sync", g(clients::sync_or_list))
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
    let body = st
        .metrics
        .render(&st.store.stats(), repl, st.hub.stats(), st.changes.stats());
    let ct = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response()
}

/// Opens the store, binds, and serves until SIGINT or SIGTERM; then finishes in-flight
/// requests, closes sync sockets and flushes.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let data_dir = &settings.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| anyhow::anyhow!("cannot create the data dir {}: {e}", data_dir.display()))?;
    let store = Store::open(settings.store()).map_err(|e| open_error(data_dir, e))?;
    let listener = tokio::net::TcpListener::bind(&settings.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
    let state = AppState::clustered(
        store.clone(),
        &settings.region,
        settings.limits(),
        settings.replication(),
        settings.cluster_secret.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("cannot load replication state: {e}"))?
    .with_client_limits(settings.clients())
    .with_feed_limits(settings.feed());
    let replica = state.replica.clone();
    let hub = state.hub.clone();
    let changes = state.changes.clone();
    replica.start();
    tracing::info!(
        node = %store.node_id(),
        region = %settings.region,
        listen = %listener.local_addr()?,
        data_dir = %data_dir.display(),
        peers = settings.peers.len(),
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

    // Keep the change events of the last `retention` batches, for streams that resume.
    let trim_store = store.clone();
    let retention = settings.feed().retention;
    // once before serving, so that a stream never resumes from what is due to go
    if let Err(e) = store.trim_events(retention) {
        tracing::warn!(error = %e, "trimming change events failed");
    }
    let trim = tokio::spawn(async move {
        let period = Duration::from_secs(10);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            every.tick().await;
            let s = trim_store.clone();
            match tokio::task::spawn_blocking(move || s.trim_events(retention)).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "trimming change events failed"),
                Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "trimmed change events"),
                _ => {}
            }
        }
    });

    let stop = replica.clone();
    let stop_clients = hub.clone();
    let stop_changes = changes.clone();
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
            stop_clients.shutdown();
            stop_changes.shutdown();
        })
        .await?;
    replica.stop();
    hub.shutdown();
    purge.abort();
    trim.abort();
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
