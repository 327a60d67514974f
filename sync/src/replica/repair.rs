//! Anti-entropy: compare digests with a peer, level by level (buckets, then the leaves of the
//! buckets that differ), and fetch the changes of the documents in the leaves that differ
//! (whatever the feeds missed). A pass costs in proportion to the differences.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_crdt::{ChangeHash, DocKey, DIGEST_BUCKETS, LEAVES_PER_BUCKET};
use rand::Rng;

use super::engine;
use super::{PeerState, Replica, Transport, LEAF_BUCKETS, REPAIR_LEAVES};
use crate::wire::{DocHeads, Request, Response};

/// What one anti-entropy pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairPass {
    /// Buckets whose digests differed.
    pub buckets: usize,
    /// Leaves whose digests differed.
    pub leaves: usize,
    /// Documents whose heads this node sent (those it holds in the differing leaves).
    pub docs: usize,
    /// Changes merged.
    pub changes: usize,
    /// Every difference found was repaired: this node holds every change the peer held as it
    /// answered (false if a change was refused, waits for a dependency, or an answer was cut
    /// without bringing anything).
    pub complete: bool,
}

impl<T: Transport> Replica<T> {
    pub(super) async fn repair_docs(
        &self,
        peer: &PeerState,
        keys: Vec<DocKey>,
    ) -> Result<(), crate::Error> {
        let mut docs = Vec::with_capacity(keys.len());
        for key in keys {
            let heads = self
                .shared
                .store
                .read_state(&key)?
                .map(|s| s.heads)
                .unwrap_or_default();
            docs.push(doc_heads(&key, &heads));
        }
        let req = Request::Repair {
            from: self.shared.me.clone(),
            leaves: vec![],
            docs,
        };
        match self.call(peer, &req, Duration::ZERO).await? {
            Response::Repair { changes, .. } => self.merge_checked(peer, changes).await.map(|_| ()),
            other => Err(crate::Error::Protocol(format!(
                "unexpected answer to a repair request: {other:?}"
            ))),
        }
    }

    pub(super) async fn repair_loop(self, peer: Arc<PeerState>) {
        let every = self.shared.config.anti_entropy_every;
        let mut next = engine::first_repair(every, rand::thread_rng().gen());
        loop {
            if self.pause(next, Some(&peer)).await {
                return;
            }
            match self.anti_entropy(&peer).await {
                Ok(pass) if pass.changes == 0 => {}
                Ok(pass) => tracing::info!(
                    peer = %peer.peer.id, repaired = pass.changes, leaves = pass.leaves,
                    "anti-entropy repaired changes"
                ),
                Err(e) => {
                    tracing::debug!(peer = %peer.peer.id, error = %e, "anti-entropy pass failed")
                }
            }
            next = engine::next_repair(every, rand::thread_rng().gen());
        }
    }

    /// One anti-entropy pass with the peer `id`, now (for tools and tests; passes also run on
    /// their own every [`ReplicationConfig::anti_entropy_every`]).
    pub async fn repair_with(&self, id: &str) -> Result<RepairPass, crate::Error> {
        let peer = self
            .peer(id)
            .ok_or_else(|| crate::Error::Refused(format!("{id} is not a peer of this node")))?;
        self.anti_entropy(&peer).await
    }

    /// One anti-entropy pass with `peer`: compare bucket digests, then the leaves of the
    /// buckets that differ, then fetch, for the documents in the leaves that differ, the
    /// changes this node lacks.
    pub(super) async fn anti_entropy(&self, peer: &PeerState) -> Result<RepairPass, crate::Error> {
        let store = &self.shared.store;
        let req = Request::Digest {
            from: self.shared.me.clone(),
            cursor: *peer.cursor.lock(),
        };
        let theirs = match self.call(peer, &req, Duration::ZERO).await? {
            Response::Digest { buckets } if buckets.len() == DIGEST_BUCKETS => buckets,
            other => return Err(unexpected("digest", &other)),
        };
        let them = peer.peer.id.as_str();
        let mine = store.digests_with(them);
        let buckets: Vec<u32> = (0..DIGEST_BUCKETS)
            .filter(|b| mine[*b] != theirs[*b])
            .map(|b| b as u32)
            .collect();
        let mut pass = RepairPass {
            buckets: buckets.len(),
            complete: true,
            ..RepairPass::default()
        };
        let mut leaves = Vec::new();
        for chunk in buckets.chunks(LEAF_BUCKETS) {
            let req = Request::Leaves {
                from: self.shared.me.clone(),
                buckets: chunk.to_vec(),
            };
            let theirs = match self.call(peer, &req, Duration::ZERO).await? {
                Response::Leaves { digests }
                    if digests.len() == chunk.len() * LEAVES_PER_BUCKET =>
                {
                    digests
                }
                other => return Err(unexpected("leaves", &other)),
            };
            let mine = store
                .leaf_digests_with(chunk, them)
                .expect("buckets below DIGEST_BUCKETS");
            for (i, (m, t)) in mine.iter().zip(&theirs).enumerate() {
                if m != t {
                    let bucket = chunk[i / LEAVES_PER_BUCKET] as usize;
                    leaves.push((bucket * LEAVES_PER_BUCKET + i % LEAVES_PER_BUCKET) as u32);
                }
            }
        }
        pass.leaves = leaves.len();
        for chunk in leaves.chunks(REPAIR_LEAVES) {
            let set: BTreeSet<u32> = chunk.iter().copied().collect();
            loop {
                let docs: Vec<DocHeads> = store
                    .leaf_heads_with(&set, them)?
                    .iter()
                    .map(|(k, h)| doc_heads(k, h))
                    .collect();
                pass.docs += docs.len();
                let req = Request::Repair {
                    from: self.shared.me.clone(),
                    leaves: chunk.to_vec(),
                    docs,
                };
                let (changes, more) = match self.call(peer, &req, Duration::ZERO).await? {
                    Response::Repair { changes, more } => (changes, more),
                    other => return Err(unexpected("repair", &other)),
                };
                let repaired = self.merge_checked(peer, changes).await?;
                pass.changes += repaired.changes;
                pass.complete &= repaired.complete;
                if !more {
                    break;
                }
                // a cut answer that brought nothing new would repeat itself
                if repaired.changes == 0 {
                    pass.complete = false;
                    break;
                }
            }
        }
        if pass.complete {
            peer.status.lock().complete_passes += 1;
        }
        Ok(pass)
    }
}

fn unexpected(what: &str, answer: &Response) -> crate::Error {
    crate::Error::Protocol(format!("unexpected answer to a {what} request: {answer:?}"))
}

fn doc_heads(key: &DocKey, heads: &[ChangeHash]) -> DocHeads {
    DocHeads {
        collection: key.collection().into(),
        id: key.id().into(),
        heads: heads.iter().map(|h| h.0).collect(),
    }
}
