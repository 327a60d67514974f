//! Anti-entropy: compare digests with a peer and fetch the changes of the documents that
//! differ (whatever the feeds missed).

use super::*;

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
            buckets: vec![],
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
        // the first pass soon after start-up (restored backups, changes missed while down)
        let mut next = every.mul_f64(rand::thread_rng().gen_range(0.05..0.3));
        loop {
            if self.pause(next, None).await {
                return;
            }
            match self.anti_entropy(&peer).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(peer = %peer.peer.id, repaired = n, "anti-entropy repaired changes")
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.peer.id, error = %e, "anti-entropy pass failed")
                }
            }
            next = every.mul_f64(rand::thread_rng().gen_range(0.75..1.25));
        }
    }

    /// One anti-entropy pass with `peer`: compare digests, then fetch, for the documents in
    /// the buckets that differ, the changes this node lacks. Returns the changes merged.
    pub(super) async fn anti_entropy(&self, peer: &PeerState) -> Result<usize, crate::Error> {
        let req = Request::Digest {
            from: self.shared.me.clone(),
        };
        let theirs = match self.call(peer, &req, Duration::ZERO).await? {
            Response::Digest { buckets } if buckets.len() == DIGEST_BUCKETS => buckets,
            other => {
                return Err(crate::Error::Protocol(format!(
                    "unexpected answer to a digest request: {other:?}"
                )))
            }
        };
        let mine = self.shared.store.digests();
        let differing: Vec<u32> = (0..DIGEST_BUCKETS)
            .filter(|b| mine[*b] != theirs[*b])
            .map(|b| b as u32)
            .collect();
        let mut merged = 0;
        for chunk in differing.chunks(REPAIR_BUCKETS) {
            loop {
                let set: BTreeSet<u32> = chunk.iter().copied().collect();
                let docs = self
                    .shared
                    .store
                    .bucket_heads(&set)?
                    .iter()
                    .map(|(k, h)| doc_heads(k, h))
                    .collect();
                let req = Request::Repair {
                    from: self.shared.me.clone(),
                    buckets: chunk.to_vec(),
                    docs,
                };
                let Response::Repair { changes, more } =
                    self.call(peer, &req, Duration::ZERO).await?
                else {
                    return Err(crate::Error::Protocol(
                        "unexpected answer to a repair request".into(),
                    ));
                };
                let n = self.merge_checked(peer, changes).await?;
                merged += n;
                // stop if a cut answer brought nothing new (it would repeat itself)
                if !more || n == 0 {
                    break;
                }
            }
        }
        Ok(merged)
    }
}

fn doc_heads(key: &DocKey, heads: &[ChangeHash]) -> DocHeads {
    DocHeads {
        collection: key.collection().into(),
        id: key.id().into(),
        heads: heads.iter().map(|h| h.0).collect(),
    }
}
