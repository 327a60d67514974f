//! Meridian's HTTP/JSON API: the router, its handlers and middleware. The only crate that
//! names [`AppState`]; the `meridian` binary (`meridian-node`) builds one and serves [`app`].
//!
//! # Layout
//! - `state`: [`AppState`], what every handler shares, and the request [`Limits`].
//! - `auth`: API keys, access per collection, failed-authentication limits.
//! - `error`: [`ApiError`], the one mapping from errors to HTTP statuses and codes.
//! - `extract`: path, body, query and header parsing with the project's error format.
//! - `api`: the `/v1` document handlers.
//! - `session`: session tokens in and out of `/v1` requests.
//! - `changes`: change streams (Server-Sent Events on the document routes).
//! - `clients`: `/v1/sync`, the WebSocket automerge-repo clients sync over.
//! - `schemas`: `/v1/_schemas/{collection}`, over the `meridian-schema` compiler.
//! - `internal`: the node-to-node endpoints (`/internal/rpc`, `/internal/subscribe`) and the
//!   fault controls (`/internal/faults`, `--fault-controls` only).
//! - `status`: `/v1/status`, `/v1/cluster`, `/readyz`, `/metrics`, `/v1/_auth/reload`,
//!   `/v1/_drain`.
//! - `drain`: turning clients away before the node stops.
//! - `backup`: `/v1/_backup`, an online backup streamed.
//! - `regions`: `/v1/_regions`, the cluster's membership changed at runtime.
//! - `placement`: `/v1/_placement`, where a collection lives.
//! - `metrics`: Prometheus metrics and the request-tracking middleware.
//! - `trace`: W3C trace context on every request, carried by the writes it makes.
//! - `openapi`: the OpenAPI description served at `/openapi.json`.
//!
//! [`app`] builds the router from an [`AppState`], so tests drive it without sockets.
#![warn(unreachable_pub, missing_debug_implementations)]

mod api;
pub mod auth;
mod backup;
mod changes;
mod clients;
pub mod drain;
mod error;
mod extract;
mod internal;
mod metrics;
mod openapi;
mod placement;
mod regions;
mod schemas;
mod session;
mod state;
mod status;
pub mod trace;

use axum::error_handling::HandleErrorLayer;
use axum::routing::get;
use axum::{BoxError, Json, Router};
use tower::ServiceBuilder;

pub use changes::{ChangeStreams, StreamLimits, StreamStats};
pub use error::ApiError;
pub use metrics::Metrics;
pub use state::{AppState, Limits, Options, Shared};

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
            g(schemas::get_schema)
                .put(schemas::put_schema)
                .delete(schemas::delete_schema),
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
        .route("/v1/status", get(status::status))
        .route("/v1/cluster", get(status::cluster))
        .route("/v1/_auth/reload", post(status::reload_auth))
        .route("/v1/_drain", post(status::drain))
        .route("/v1/_backup", get(backup::backup))
        .route("/v1/_regions", get(regions::list).post(regions::add))
        .route("/v1/_regions/{id}", axum::routing::delete(regions::remove))
        .route("/v1/_placement", get(placement::list))
        .route(
            "/v1/_placement/{collection}",
            axum::routing::put(placement::place).delete(placement::unplace),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::stamp,
        ))
        .route("/metrics", get(status::metrics))
        // outermost: a request without the access it needs learns nothing, not even a token
        .route_layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            auth::require,
        ));

    let mut router = Router::new().merge(v1);
    if state.fault_controls {
        router = router
            .route(
                "/internal/faults",
                get(internal::show_faults).post(internal::change_faults),
            )
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                internal::pause_gate,
            ));
    }
    router
        .route("/internal/rpc", post(internal::rpc))
        .route("/internal/subscribe", post(internal::subscribe))
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(status::ready))
        .route("/openapi.json", get(openapi::serve))
        .method_not_allowed_fallback(api::method_not_allowed)
        .fallback(api::no_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(axum::middleware::from_fn(trace::layer))
        .with_state(state)
}
