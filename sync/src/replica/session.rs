//! Session tokens: this node's part of one, and waiting until this node covers a client's.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{self, CatchUp, Outcome};
use super::{Behind, PeerState, Replica, Transport};
use crate::token::SessionToken;

impl<T: Transport> Replica<T> {
    /// This node's part of a session token: its own newest stamp, and the newest stamp of each
    /// peer's changes merged here. It covers everything a read here can show.
    pub fn token(&self) -> SessionToken {
        let mut t = SessionToken::default();
        if let Some(ts) = self.shared.store.last_local_stamp() {
            t.observe(&self.shared.me, ts.get_time().as_u64());
        }
        let peers = self.peers();
        let removed: Vec<String> = self
            .shared
            .membership
            .lock()
            .removed
            .keys()
            .cloned()
            .collect();
        let seen = self.shared.seen.lock();
        for p in &peers {
            if let Some(ts) = seen.get(p.peer.id.as_str()) {
                t.observe(p.peer.id.as_str(), ts.get_time().as_u64());
            }
        }
        // a removed region's changes are named as far as a read here can show them, though no
        // cursor may ever cover that far again (`uncovered` then refuses, rather than let a
        // session see less than it saw)
        for node in removed {
            if let Some(ts) = seen.get(&node) {
                t.observe(&node, ts.get_time().as_u64());
            }
        }
        t
    }

    /// [`Replica::token`] as text, cached until it changes: every `/v1` answer carries it.
    pub fn token_text(&self) -> Arc<str> {
        let local = self
            .shared
            .store
            .last_local_stamp()
            .map_or(0, |t| t.get_time().as_u64());
        let epoch = self.shared.seen_epoch.load(Ordering::Acquire);
        let mut cache = self.shared.token_cache.lock();
        match &*cache {
            Some((l, e, text)) if *l == local && *e == epoch => text.clone(),
            _ => {
                let text: Arc<str> = self.token().to_string().into();
                *cache = Some((local, epoch, text.clone()));
                text
            }
        }
    }

    /// The first node of `token` whose changes this node may lack.
    pub(super) fn uncovered(&self, token: &SessionToken) -> Option<Behind> {
        for (node, time) in token.iter() {
            let covered = if node == self.shared.me {
                time <= self.shared.store.clock().now().get_time().as_u64()
            } else if let Some(p) = self.peer(node) {
                p.cursor
                    .lock()
                    .is_some_and(|c| c.get_time().as_u64() >= time)
            } else if self.is_removed(node) {
                let covered = self
                    .last_cursor(node)
                    .is_some_and(|c| c.get_time().as_u64() >= time);
                if !covered {
                    return Some(Behind {
                        node: node.to_owned(),
                        unknown: false,
                        removed: true,
                    });
                }
                true
            } else {
                return Some(Behind {
                    node: node.to_owned(),
                    unknown: true,
                    removed: false,
                });
            };
            if !covered {
                return Some(Behind {
                    node: node.to_owned(),
                    unknown: false,
                    removed: false,
                });
            }
        }
        None
    }

    /// Waits until this node holds everything `token` covers, pulling from the nodes it names
    /// right away; gives up after `max_wait`.
    pub async fn await_token(
        &self,
        token: &SessionToken,
        max_wait: Duration,
    ) -> Result<(), Behind> {
        let deadline = Instant::now() + max_wait;
        let mut moved = self.shared.cursor_moved.subscribe();
        loop {
            let Some(behind) = self.uncovered(token) else {
                return Ok(());
            };
            if behind.unknown || behind.removed || Instant::now() >= deadline {
                return Err(behind);
            }
            if let Some(p) = self.peer(&behind.node) {
                self.catch_up(p);
            }
            let tick = (deadline - Instant::now()).min(Duration::from_millis(50));
            tokio::select! {
                _ = moved.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Pulls the peer's feed without waiting, until caught up (one such task per peer).
    pub(super) fn catch_up(&self, peer: Arc<PeerState>) {
        if peer.catching_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut next = CatchUp::Pull;
            loop {
                let outcome = match next {
                    CatchUp::Pull => match this.pull_once(&peer, Duration::ZERO).await {
                        Ok(outcome) => outcome,
                        Err(_) => break,
                    },
                    CatchUp::Repair { upto } => {
                        let complete =
                            matches!(this.resume_after_trim(&peer, upto).await, Ok(true));
                        Outcome::CaughtUp { complete }
                    }
                    CatchUp::Done => break,
                };
                next = engine::catch_up_after(outcome);
            }
            peer.catching_up.store(false, Ordering::Release);
        });
    }
}
