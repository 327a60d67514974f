//! Meridian's HTTP/JSON API and the `meridian` binary's wiring.
//!
//! # Layout
//! - `config`: command line, environment and config file; the one [`Settings`] struct.
//! - `node`: a running node: open, bind, serve until told to stop.
//! - `demo`: `meridian demo`: three regions and the web page's server.
//! - `auth`: API keys, access per collection, failed-authentication limits.
//! - `tls`: HTTPS (rustls), certificates re-read on SIGHUP, TLS and mutual TLS between regions.
//! - `cert`: `meridian cert`, a development CA and node certificates.
//! - `state`: [`AppState`], what every handler shares, and the request [`Limits`].
//! - `error`: [`ApiError`], the one mapping from errors to HTTP statuses and codes.
//! - `extract`: path, body, query and header parsing with the project's error format.
//! - `api`: the `/v1` document handlers.
//! - `session`: session tokens in and out of `/v1` requests.
//! - `changes`: the live change feed (Server-Sent Events on the document routes).
//! - `clients`: `/v1/sync`, the WebSocket automerge-repo clients sync over.
//! - `cluster`: the HTTP transport between nodes, `/internal/rpc`, `/v1/cluster`.
//! - `faults`: cut links and pause the node, for demos and tests (`--fault-controls` only).
//! - `metrics`: Prometheus metrics and the request-tracking middleware.
//! - `openapi`: the OpenAPI description served at `/openapi.json`.
//!
//! [`app`] builds the router from an [`AppState`], so tests drive it without sockets;
//! [`run`] opens the store, binds and serves until SIGINT or SIGTERM.
#![warn(unreachable_pub, missing_debug_implementations)]

mod api;
pub mod auth;
pub mod cert;
mod changes;
mod clients;
mod cluster;
pub mod config;
pub mod demo;
mod error;
mod extract;
mod faults;
mod metrics;
mod node;
mod openapi;
pub mod schema;
mod session;
mod state;
pub mod tls;

use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Json, Router};
use tower::ServiceBuilder;

pub use changes::{ChangeFeed, FeedLimits, FeedStats};
pub use cluster::HttpTransport;
pub use config::{ServeArgs, Settings};
pub use error::ApiError;
pub use faults::{FaultState, Faults};
pub use metrics::Metrics;
pub use node::{run, Node};
pub use state::{AppState, Limits, Shared};

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
        .route(
            "/v1/_schemas/{collection}",
            g(schema::api::get_schema)
                .put(schema::api::put_schema)
                .delete(schema::api::delete_schema),
        )
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
        ))
        .route("/metrics", get(metrics_text))
        // outermost: a request without the access it needs learns nothing, not even a token
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ));

    let mut router = Router::new().merge(v1);
    if state.fault_controls {
        router = router
            .route("/internal/faults", get(faults::show).post(faults::change))
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                faults::gate,
            ));
    }
    router
        .route("/internal/rpc", post(cluster::rpc))
        .route("/internal/subscribe", post(cluster::subscribe))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(ready))
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
        "auth": st.auth.describe(),
        "tls": st.tls,
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a node that says it is serving must already catch the
/// signal (the default action would kill it without a flush).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{signal, SignalKind};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    async move {
        let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! { _ = wait(int) => {}, _ = wait(term) => {} }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}
