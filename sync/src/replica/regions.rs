//! Following the membership set while the node runs (see `members` for the set itself): the
//! document is read at start, after every change to it (a local admin request or a merge from
//! a peer), and the peers followed are made to match: a new one starts its feed puller and
//! anti-entropy worker, a departed one's end (what they were merging is finished, nothing new
//! is asked of it), a moved one is followed at its new URL from the same cursor.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use meridian_crdt::{DocKey, Edit};
use serde::Serialize;
use serde_json::{Map, Value};

use super::members::{MemberError, Members, Plan, MEMBERS, REGIONS};
use super::{PeerState, Replica, Transport};

/// Why a membership change was not made; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RegionsError {
    #[error("{0}")]
    Refused(#[from] MemberError),
    /// This node was itself removed: a change made here would reach nobody.
    #[error(
        "this node was removed from the cluster at {0}: nobody follows it, so a change made \
         here would reach no region; change the set through a region that is in it"
    )]
    Departed(String),
    /// The region's feed could not be read to its end from here just now: what it holds that
    /// no region pulled would stay only in its store. Retry once it answers, or force.
    #[error(
        "cannot take in everything region {id} holds before removing it ({why}): what no \
         region has pulled from it would stay only in its store. Stop its writers and retry \
         once it answers, or remove it with force=true (its unreplicated writes are then lost \
         to the cluster)"
    )]
    NotCaughtUp { id: String, why: String },
    #[error(transparent)]
    Store(#[from] meridian_crdt::Error),
}

/// The membership as this node sees it (`GET /v1/_regions`).
#[derive(Debug, Clone, Serialize)]
pub struct RegionsReport {
    pub node: String,
    /// Set when this node was removed: it follows nobody and refuses writes.
    pub removed_at: Option<String>,
    /// The regions this node follows.
    pub following: Vec<RegionReport>,
    /// Regions removed, and when.
    pub removed: Vec<RemovedRegion>,
    /// `--peer` flags naming removed regions, which this node ignores.
    pub ignored_flags: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionReport {
    pub id: String,
    pub url: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemovedRegion {
    pub id: String,
    pub at: String,
}

fn members_key() -> DocKey {
    DocKey::new(REGIONS, MEMBERS).expect("a valid key")
}

impl<T: Transport> Replica<T> {
    /// What the membership document says here (empty if it was never written).
    pub fn members(&self) -> meridian_crdt::Result<Members> {
        let Some(state) = self.shared.store.read_state(&members_key())? else {
            return Ok(Members::default());
        };
        let doc: Map<String, Value> = serde_json::from_str(&state.json).unwrap_or_default();
        Ok(Members::parse(&doc))
    }

    pub(super) fn plan(&self) -> meridian_crdt::Result<Plan> {
        Ok(self
            .members()?
            .plan(&self.shared.config.peers, &self.shared.me))
    }

    /// Makes the followed peers those of `plan`, and notes what it says of the rest.
    pub(super) fn apply_plan(&self, plan: &Plan) {
        let mut peers = self.shared.peers.write();
        let mut m = self.shared.membership.lock();
        peers.retain(|p| {
            let stays = plan.follow.contains(&p.peer);
            if !stays {
                if let Some(c) = *p.cursor.lock() {
                    m.cursors.insert(p.peer.id.to_string(), c);
                }
                p.left.send_replace(true);
                tracing::info!(peer = %p.peer.id, url = %p.peer.addr, "no longer following this region");
            }
            stays
        });
        let started = self.shared.started.load(Ordering::Acquire);
        for f in &plan.follow {
            if peers.iter().any(|p| p.peer == *f) {
                continue;
            }
            let cursor = m.cursors.get(f.id.as_str()).copied();
            let p = Arc::new(PeerState::new(f.clone(), cursor));
            if started {
                tracing::info!(peer = %f.id, url = %f.addr, "following a region added to the set");
                self.start_peer(&p);
            }
            peers.push(p);
        }
        for id in &plan.ignored {
            if m.warned.insert(id.clone()) {
                tracing::warn!(peer = %id, "a --peer flag names a region removed from the cluster: it is not followed");
            }
        }
        if let (Some(at), None) = (&plan.me_removed, &m.me_removed) {
            tracing::warn!(
                at,
                "this node was removed from the cluster: it follows nobody and refuses writes"
            );
            self.shared.store.retire(format!(
                "this node was removed from the cluster at {at}: nobody follows it, so it takes \
                 no writes (a write here would reach no other region); write in a region that \
                 is in the cluster"
            ));
        }
        m.removed = plan.removed.clone();
        m.me_removed = plan.me_removed.clone();
    }

    /// Reads the set and follows it; once the document exists, adds what only this node's
    /// flags name (see [`Plan::fill`]).
    async fn refresh_members(&self) -> meridian_crdt::Result<()> {
        let plan = self.plan()?;
        self.apply_plan(&plan);
        if !plan.fill.is_empty() && plan.me_removed.is_none() {
            self.shared
                .store
                .write(&members_key(), Edit::Patch(plan.fill), None)
                .await?;
        }
        Ok(())
    }

    /// Follows the set for as long as the node runs.
    pub(super) async fn members_loop(self) {
        let mut changes = self.shared.store.watch();
        let mut stop = self.shared.workers.stop_signal();
        let key = members_key();
        let mut first = true;
        loop {
            if !first {
                tokio::select! {
                    next = changes.next() => match next {
                        None => return,
                        Some(Ok(k)) if k != key => continue,
                        // a lagging listener may have missed it: read anyway
                        Some(_) => {}
                    },
                    _ = stop.wait() => return,
                }
            }
            first = false;
            if let Err(e) = self.refresh_members().await {
                tracing::warn!(error = %e, "could not follow the membership document");
            }
        }
    }

    /// Adds region `id` at `url` to the set (or moves it there): durable here before this
    /// returns, and followed here at once; the others follow it once the change reaches them.
    pub async fn add_region(&self, id: &str, url: &str) -> Result<RegionsReport, RegionsError> {
        self.change_members(|m, current| m.add(id, url, &self.shared.me, current))
            .await
    }

    /// Removes region `id` from the set, for good (see [`MemberError::Removed`]). Unless
    /// `force`, first reads its feed to the end (so that what it acknowledged is here and
    /// spreads from here) and refuses if that fails.
    pub async fn remove_region(
        &self,
        id: &str,
        force: bool,
    ) -> Result<RegionsReport, RegionsError> {
        if let (false, Some(p)) = (force, self.peer(id)) {
            self.take_all_of(&p)
                .await
                .map_err(|why| RegionsError::NotCaughtUp {
                    id: id.to_owned(),
                    why,
                })?;
        }
        let now = meridian_crdt::display_stamp(&self.shared.store.clock().now());
        self.change_members(|m, current| m.remove(id, &self.shared.me, &now, current))
            .await
    }

    /// Pulls `peer`'s feed until it has nothing more for this node, within a few seconds.
    async fn take_all_of(&self, peer: &PeerState) -> Result<(), String> {
        use super::engine::Outcome;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            match self.pull_once(peer, std::time::Duration::ZERO).await {
                Ok(Outcome::Merged {
                    more: false,
                    refused: false,
                }) => return Ok(()),
                Ok(Outcome::Merged { refused: true, .. }) => {
                    return Err("this node's clock refused one of its changes".into())
                }
                Ok(Outcome::Merged { more: true, .. }) => continue,
                Ok(Outcome::Trimmed { upto }) => {
                    if !self
                        .resume_after_trim(peer, upto)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        return Err("the anti-entropy pass with it was incomplete".into());
                    }
                }
                Ok(other) => return Err(format!("unexpected outcome {other:?}")),
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("its feed had more after 5 s".into())
    }

    async fn change_members(
        &self,
        change: impl FnOnce(&Members, &[super::Peer]) -> Result<Option<Map<String, Value>>, MemberError>,
    ) -> Result<RegionsReport, RegionsError> {
        if let Some(at) = self.removed_at() {
            return Err(RegionsError::Departed(at));
        }
        let current: Vec<super::Peer> = self.peers().iter().map(|p| p.peer.clone()).collect();
        if let Some(patch) = change(&self.members()?, &current)? {
            self.shared
                .store
                .write(&members_key(), Edit::Patch(patch), None)
                .await?;
            self.refresh_members().await?;
        }
        Ok(self.regions())
    }

    /// When this node was removed from the set, if it was.
    pub fn removed_at(&self) -> Option<String> {
        self.shared.membership.lock().me_removed.clone()
    }

    /// Whether `node` was removed from the set.
    pub fn is_removed(&self, node: &str) -> bool {
        self.shared.membership.lock().removed.contains_key(node)
    }

    /// The last cursor into a removed (or departed) peer's feed.
    pub(super) fn last_cursor(&self, node: &str) -> Option<uhlc::Timestamp> {
        self.shared.membership.lock().cursors.get(node).copied()
    }

    pub fn regions(&self) -> RegionsReport {
        // the peers before the membership: `apply_plan` takes the locks in that order
        let peers = self.peers();
        let m = self.shared.membership.lock();
        let mut following: Vec<RegionReport> = peers
            .iter()
            .map(|p| RegionReport {
                id: p.peer.id.to_string(),
                url: p.peer.addr.clone(),
            })
            .collect();
        following.sort_by(|a, b| a.id.cmp(&b.id));
        RegionsReport {
            node: self.shared.me.clone(),
            removed_at: m.me_removed.clone(),
            following,
            removed: m
                .removed
                .iter()
                .map(|(id, at)| RemovedRegion {
                    id: id.clone(),
                    at: at.clone(),
                })
                .collect(),
            ignored_flags: m.warned.iter().cloned().collect(),
        }
    }
}
