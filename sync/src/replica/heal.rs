//! Self-heal: the scrub walks the store at a bounded rate (finding damage nobody has read yet),
//! and every damaged document, however found, is fetched again from every peer and rebuilt by
//! the store (`Store::heal`). A document no peer can make whole stays refused and is tried
//! again; this is what a replicated database can do that a single one cannot. After a log
//! repair that lost batches, the store takes no local write until a complete anti-entropy
//! pass with every peer has brought back what of them reached the peers (`recover_loop`).

use std::time::{Duration, Instant};

use meridian_crdt::{DocKey, HealSources, Healed};

use super::{Replica, Transport};
use crate::wire::{DocHeads, Request, Response};

/// Documents the scrub checks between two looks at its rate.
const SCRUB_BATCH: usize = 32;
/// The longest wait after start-up for the first scrub pass.
const FIRST_SCRUB: Duration = Duration::from_secs(300);

impl<T: Transport> Replica<T> {
    /// Passes over every document, each at most `scrub_per_second`, a new one every
    /// `scrub_every` after the last began; the first after `scrub_every` or 5 minutes, whichever
    /// is sooner.
    pub(super) async fn scrub_loop(self) {
        let (rate, every) = (
            self.shared.config.scrub_per_second,
            self.shared.config.scrub_every,
        );
        if rate == 0 {
            return;
        }
        let store = self.shared.store.clone();
        // not at once: a node just started has catching up to do first
        if self.pause(every.min(FIRST_SCRUB), None).await {
            return;
        }
        loop {
            let began = Instant::now();
            let mut after: Option<DocKey> = None;
            let mut checked = 0usize;
            loop {
                match store.scrub_some(after.as_ref(), SCRUB_BATCH).await {
                    Ok(batch) => {
                        checked += batch.checked;
                        after = batch.next;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the scrub could not read the store");
                        after = None;
                    }
                }
                if after.is_none() {
                    break;
                }
                // ahead of the rate: wait until it is kept
                let due = Duration::from_secs_f64(checked as f64 / rate as f64);
                if self.pause(due.saturating_sub(began.elapsed()), None).await {
                    return;
                }
            }
            if self
                .pause(every.saturating_sub(began.elapsed()), None)
                .await
            {
                return;
            }
        }
    }

    /// While the store recovers from a log repair that lost batches: an anti-entropy pass with
    /// each peer until one with every peer is complete, then local writes resume.
    pub(super) async fn recover_loop(self) {
        let store = self.shared.store.clone();
        let Some(why) = store.recovering() else {
            return;
        };
        tracing::warn!(
            why,
            "recovering lost writes from the peers; local writes are refused until then"
        );
        let mut done = std::collections::HashSet::new();
        loop {
            let peers = self.peers();
            for peer in &peers {
                if done.contains(peer.peer.id.as_str()) {
                    continue;
                }
                match self.anti_entropy(peer).await {
                    Ok(pass) if pass.complete => {
                        done.insert(peer.peer.id.to_string());
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(peer = %peer.peer.id, error = %e, "a recovery pass failed")
                    }
                }
            }
            if peers.iter().all(|p| done.contains(p.peer.id.as_str())) {
                match store.recovered().await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "could not note the recovery"),
                }
            }
            if self.pause(Duration::from_secs(1), None).await {
                return;
            }
        }
    }

    /// Heals each damaged document as it is found, and tries those that could not be healed
    /// again every `heal_retry`.
    pub(super) async fn heal_loop(self) {
        let store = self.shared.store.clone();
        loop {
            for key in store.damaged_documents() {
                if self.stopped() {
                    return;
                }
                match self.heal(&key).await {
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "a damaged document could not be healed yet")
                    }
                }
            }
            let found = store.damage_found();
            tokio::select! {
                _ = found => {}
                stop = self.pause(self.shared.config.heal_retry, None) => if stop { return },
            }
        }
    }

    /// Asks every peer for the whole history of `key` and has the store rebuild it.
    pub async fn heal(&self, key: &DocKey) -> Result<Healed, crate::Error> {
        let peers = self.peers();
        let mut from = HealSources {
            asked: peers.len(),
            ..HealSources::default()
        };
        let mut seen = std::collections::HashMap::new();
        for peer in &peers {
            let req = Request::Repair {
                from: self.shared.me.clone(),
                leaves: vec![],
                docs: vec![DocHeads {
                    collection: key.collection().into(),
                    id: key.id().into(),
                    heads: vec![],
                }],
            };
            let changes = match self.call(peer, &req, Duration::ZERO).await {
                Ok(Response::Repair { changes, .. }) => changes,
                Ok(other) => {
                    tracing::debug!(peer = %peer.peer.id, answer = ?other, "a peer did not answer a heal");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.peer.id, error = %e, "a peer could not be asked for a heal");
                    continue;
                }
            };
            let checked = self.check(changes, false)?;
            from.answered += 1;
            for (k, c) in checked.docs {
                if k == *key {
                    from.changes.extend(c);
                }
            }
            for (node, ts) in checked.seen {
                let s = seen.entry(node).or_insert(ts);
                *s = (*s).max(ts);
            }
        }
        let raised = super::merge::Checked {
            seen,
            ..Default::default()
        };
        from.meta = raised.seen_meta(self);
        let healed = self.shared.store.heal(key, from).await?;
        self.raise_seen(raised.seen);
        Ok(healed)
    }
}
