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
        "storage": storage(&s.storage),
        "scrub": scrub(&s.scrub),
        "auth": st.auth.describe(),
        "tls": st.tls,
    }))
}

/// The storage part of `/v1/status`: free space, the floor, and the problem if there is one.
fn storage(s: &meridian_crdt::Storage) -> serde_json::Value {
    use meridian_crdt::StorageProblem;
    let (state, problem) = match &s.problem {
        None => ("ok", None),
        Some(StorageProblem::LowSpace(m)) => ("low_space", Some(m)),
        Some(StorageProblem::Failed(m)) => ("failed", Some(m)),
        Some(StorageProblem::Recovering(m)) => ("recovering", Some(m)),
        Some(StorageProblem::Retired(m)) => ("removed", Some(m)),
    };
    serde_json::json!({
        "state": state,
        "problem": problem,
        "free_bytes": s.free_bytes,
        "floor_bytes": s.floor_bytes,
        "ballast_bytes": s.ballast_bytes,
    })
}

/// The scrub's part of `/v1/status`: its progress, and the documents damaged now.
fn scrub(s: &meridian_crdt::ScrubStatus) -> serde_json::Value {
    let damaged: Vec<serde_json::Value> = s
        .damaged
        .iter()
        .map(|f| {
            serde_json::json!({
                "collection": f.collection,
                "id": f.id,
                "what": f.what,
                "found_ms": f.found_ms,
                "heal_error": f.heal_error,
            })
        })
        .collect();
    serde_json::json!({
        "passes": s.passes,
        "checked": s.checked,
        "of": s.of,
        "checked_total": s.checked_total,
        "last_pass_ms": s.last_pass_ms,
        "found": s.found,
        "healed": s.healed,
        "damaged_count": s.damaged_count,
        "damaged": damaged,
    })
}

/// 200 when the node takes writes; else 503 naming why (a balancer then sends writes to
/// another region; reads here still work).
pub(crate) async fn ready(State(st): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    use meridian_crdt::StorageProblem;
    if st.drain.is_on() {
        return Err(st.draining_error());
    }
    match st.store.storage().problem {
        None => Ok(Json(serde_json::json!({"ready": true}))),
        Some(StorageProblem::LowSpace(m)) => Err(ApiError::NotReady(format!(
            "low on disk space, writes refused: {m}"
        ))),
        Some(StorageProblem::Failed(m)) => Err(ApiError::NotReady(format!(
            "{m}; writes are refused until the node is restarted (reads go on)"
        ))),
        Some(StorageProblem::Recovering(m)) => Err(ApiError::NotReady(format!(
            "{m}; writes are refused until every peer has given back what it holds (reads go on)"
        ))),
        Some(StorageProblem::Retired(m)) => Err(ApiError::NotReady(m)),
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

/// `POST /v1/_auth/reload` (admin): re-reads the auth file, as SIGHUP does. A broken file keeps
/// the keys in force and answers 422 saying why; open connections and change streams whose
/// credentials the new file revokes or removes end within a second.
pub(crate) async fn reload_auth(
    State(st): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match st.auth.reload() {
        Ok(n) => {
            tracing::info!(keys = n, "admin request: reloaded the auth file");
            Ok(Json(serde_json::json!({"reloaded": true, "keys": n})))
        }
        Err(e) => {
            tracing::warn!(error = %e, "admin request: the auth file is broken; the keys in force stay");
            Err(ApiError::Unprocessable(format!(
                "{e}; the keys in force stay"
            )))
        }
    }
}

/// `POST /v1/_drain` (admin): starts draining, as SIGTERM does; the node stops once quiet, or
/// at its drain deadline (`--drain-secs`).
pub(crate) async fn drain(State(st): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let started = st.start_drain();
    tracing::info!(started, "admin request: drain");
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"draining": true, "started_now": started})),
    )
}
