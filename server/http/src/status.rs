//! What a node says of itself: `/v1/status`, `/v1/cluster`, `/readyz` and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_sync::ClusterReport;

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) async fn status(State(st): State<AppState>) -> Json<serde_json::Value> {
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

pub(crate) async fn ready(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if st.store.is_ready() {
        Ok(Json(serde_json::json!({"ready": true})))
    } else {
        Err(ApiError::Unavailable(
            "storage has failed; restart the node".into(),
        ))
    }
}

pub(crate) async fn metrics(State(st): State<AppState>) -> Response {
    let (bytes_sent, bytes_received) = st.replica.bytes();
    let repl = crate::metrics::ReplicationStats {
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

/// `GET /v1/cluster`: this node and each peer, with reachability, lag both ways and traffic.
pub(crate) async fn cluster(State(st): State<AppState>) -> Json<ClusterReport> {
    let replica = st.replica.clone();
    // counting a backlog reads the feed: off the async workers
    let report = tokio::task::spawn_blocking(move || replica.report()).await;
    Json(report.unwrap_or_else(|_| st.replica.report()))
}
