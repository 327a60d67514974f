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

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Header naming the node that sends a node-to-node request, so that a cut link can be refused.
pub const FROM_HEADER: &str = "meridian-node";

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
pub struct FaultChange {
    #[serde(default)]
    pub cut: Vec<String>,
    #[serde(default)]
    pub heal: Vec<String>,
    pub pause: Option<bool>,
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

    /// Applies a change (checked by the caller) and says the state after it.
    pub fn apply(&self, change: FaultChange) -> FaultState {
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

    /// Why a node-to-node request from `from` (its [`FROM_HEADER`], empty if none) is
    /// refused, if it is: this node is paused, or the link is cut.
    pub fn refusal(&self, from: &str) -> Option<String> {
        if self.paused() {
            Some(PAUSED.into())
        } else if !from.is_empty() && self.blocks(from) {
            Some(cut_error(from))
        } else {
            None
        }
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

pub const PAUSED: &str = "the node is paused (fault control)";

/// The error of a request over a cut link.
pub fn cut_error(peer: &str) -> String {
    format!("the link to {peer} is cut (fault control)")
}
