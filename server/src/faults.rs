//! Fault controls, for demos and tests: cut this node's links to named peers, heal them, pause
//! the node. They exist only on a node started with `--fault-controls` (which `meridian demo`
//! sets and nothing sets by default) and sit behind the cluster secret.
//!
//! A cut link behaves as a partition both ways, seen from this node: requests to the peer fail
//! at once, its requests here are refused, and the streams between the two end. Cutting the
//! link on one side is enough; the other side sees its requests refused and its streams end.
//! A paused node is cut from every peer and answers its clients 503 `unavailable`, as a region
//! that is down would.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::ApiError;
use crate::state::AppState;

/// Header naming the node that sends a node-to-node request, so that a cut link can be refused.
pub(crate) const FROM_HEADER: &str = "meridian-node";

/// The links this node has cut and whether it is paused. Cheap to query when nothing is cut.
#[derive(Debug)]
pub struct Faults {
    /// Anything cut or paused: the fast path of every check.
    active: AtomicBool,
    state: RwLock<FaultState>,
    changed: watch::Sender<u64>,
}

/// `GET /internal/faults`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct FaultState {
    pub cut: BTreeSet<String>,
    pub paused: bool,
}

/// `POST /internal/faults`: every field optional; applied together, or not at all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultChange {
    #[serde(default)]
    cut: Vec<String>,
    #[serde(default)]
    heal: Vec<String>,
    pause: Option<bool>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            active: AtomicBool::new(false),
            state: RwLock::new(FaultState::default()),
            changed: watch::channel(0).0,
        }
    }
}

impl Faults {
    /// Whether the link to (and from) `peer` is down.
    pub fn blocks(&self, peer: &str) -> bool {
        if !self.active.load(Ordering::Acquire) {
            return false;
        }
        let st = self.state.read();
        st.paused || st.cut.contains(peer)
    }

    pub fn paused(&self) -> bool {
        self.active.load(Ordering::Acquire) && self.state.read().paused
    }

    pub fn state(&self) -> FaultState {
        self.state.read().clone()
    }

    fn apply(&self, change: FaultChange) -> FaultState {
        let mut st = self.state.write();
        for p in change.heal {
            st.cut.remove(&p);
        }
        st.cut.extend(change.cut);
        if let Some(p) = change.pause {
            st.paused = p;
        }
        self.active
            .store(st.paused || !st.cut.is_empty(), Ordering::Release);
        let out = st.clone();
        drop(st);
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// Resolves once the link to `peer` is down (at once if it is).
    pub async fn until_blocked(&self, peer: &str) {
        let mut rx = self.changed.subscribe();
        while !self.blocks(peer) {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

const PAUSED: &str = "the node is paused (fault control)";

/// The error of a request over a cut link.
pub(crate) fn cut_error(peer: &str) -> String {
    format!("the link to {peer} is cut (fault control)")
}

/// Refuses a node-to-node request that comes over a cut link.
pub(crate) fn check_incoming(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if st.faults.paused() {
        return Err(ApiError::Faulted(PAUSED.into()));
    }
    if !from.is_empty() && st.faults.blocks(from) {
        return Err(ApiError::Faulted(cut_error(from)));
    }
    Ok(())
}

/// `GET /internal/faults`.
pub(crate) async fn show(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<FaultState>, ApiError> {
    crate::cluster::check_secret(&st, &headers)?;
    Ok(Json(st.faults.state()))
}

/// `POST /internal/faults`: peers must be this node's peers; a bad request changes nothing.
pub(crate) async fn change(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<FaultState>, ApiError> {
    crate::cluster::check_secret(&st, &headers)?;
    let change: FaultChange = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid fault change: {e}")))?;
    for p in change.cut.iter().chain(&change.heal) {
        if st.replica.peer_url(p).is_none() {
            return Err(ApiError::BadRequest(format!(
                "{p:?} is not a peer of this node"
            )));
        }
    }
    let before = st.faults.state();
    let after = st.faults.apply(change);
    if after != before {
        tracing::warn!(cut = ?after.cut, paused = after.paused, "fault controls changed");
    }
    Ok(Json(after))
}

/// While paused, every request but the fault controls and health is 503 `unavailable`.
pub(crate) async fn gate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    if st.faults.paused() && path != "/internal/faults" && path != "/healthz" {
        return ApiError::Faulted(PAUSED.into()).into_response();
    }
    next.run(req).await
}
