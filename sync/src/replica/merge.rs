//! Checking and merging what peers send: each change must parse and carry a stamp within the
//! clock's drift; accepted changes merge durably with their bookkeeping, and the seen stamps
//! they raise are raised in memory only after.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use meridian_crdt::{DocKey, RemoteChange};
use uhlc::Timestamp;

use super::{seen_name, stamp_meta, PeerState, Replica, Transport};
use crate::wire::DocChanges;

/// What merging one repair answer did.
pub(super) struct Repaired {
    pub(super) changes: usize,
    pub(super) complete: bool,
}

impl<T: Transport> Replica<T> {
    /// Decodes and checks received changes: each must parse, and its stamp must be within the
    /// clock's maximum drift (which also moves the clock past it). `feed`: stop at the first
    /// refusal; otherwise skip the rest of that document only. Documents of a collection placed
    /// outside this region are dropped and counted: the sender's placement was older than ours
    /// (or its release predates placement), and this region must not hold them.
    pub(super) fn check(
        &self,
        changes: Vec<DocChanges>,
        feed: bool,
    ) -> Result<Checked, crate::Error> {
        let clock = self.shared.store.clock();
        let placement = self.shared.store.placement();
        let mut out = Checked::default();
        'docs: for dc in changes {
            let key = DocKey::new(&dc.collection, &dc.id)
                .map_err(|e| crate::Error::Protocol(e.to_string()))?;
            if !placement.holds(key.collection(), &self.shared.me) {
                self.shared
                    .outside_placement
                    .fetch_add(dc.changes.len() as u64, Ordering::Relaxed);
                tracing::debug!(key = %key, "dropped changes of a collection placed outside this region");
                continue;
            }
            let mut accepted = Vec::with_capacity(dc.changes.len());
            for c in dc.changes {
                let change =
                    RemoteChange::parse(c).map_err(|e| crate::Error::Protocol(e.to_string()))?;
                if let Some(stamp) = change.stamp {
                    if let Err(e) = clock.observe(&stamp) {
                        self.shared.drift_refusals.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            key = %key, stamp = %meridian_crdt::display_stamp(&stamp), error = %e,
                            "refused a change stamped too far in the future; is that node's clock right?"
                        );
                        out.refused = true;
                        if !accepted.is_empty() {
                            out.docs.push((key.clone(), std::mem::take(&mut accepted)));
                        }
                        if feed {
                            break 'docs;
                        }
                        continue 'docs;
                    }
                    if let Some(node) = &change.node {
                        let s = out.seen.entry(node.clone()).or_insert(stamp);
                        *s = (*s).max(stamp);
                    }
                    out.last_stamp = Some(stamp);
                }
                accepted.push(change);
                out.changes += 1;
            }
            if !accepted.is_empty() {
                out.docs.push((key, accepted));
            }
        }
        Ok(out)
    }

    /// Merges checked changes durably with `meta`, then raises the seen stamps in memory.
    pub(super) async fn merge(
        &self,
        checked: Checked,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<meridian_crdt::Merged, crate::Error> {
        let merged = self.shared.store.merge_remote(checked.docs, meta).await?;
        self.raise_seen(checked.seen);
        Ok(merged)
    }

    /// Raises the seen stamps in memory, once the changes that carry them are durable.
    pub(super) fn raise_seen(&self, seen: HashMap<String, Timestamp>) {
        let mut all = self.shared.seen.lock();
        for (node, ts) in seen {
            let s = all.entry(node).or_insert(ts);
            *s = (*s).max(ts);
        }
        self.shared.seen_epoch.fetch_add(1, Ordering::Release);
    }

    /// Merges changes from a repair answer (any author), with their bookkeeping.
    pub(super) async fn merge_checked(
        &self,
        peer: &PeerState,
        changes: Vec<DocChanges>,
    ) -> Result<Repaired, crate::Error> {
        let checked = self.check(changes, false)?;
        let refused = checked.refused;
        let meta = checked.seen_meta(self);
        let merged = self.merge(checked, meta).await?;
        peer.status.lock().changes_repaired += merged.changes as u64;
        Ok(Repaired {
            changes: merged.changes,
            complete: !refused && merged.missing_deps.is_empty(),
        })
    }
}

#[derive(Default)]
pub(super) struct Checked {
    pub(super) docs: Vec<(DocKey, Vec<RemoteChange>)>,
    pub(super) changes: usize,
    pub(super) seen: HashMap<String, Timestamp>,
    pub(super) last_stamp: Option<Timestamp>,
    pub(super) refused: bool,
}

impl Checked {
    /// Bookkeeping for the seen stamps this batch raises.
    pub(super) fn seen_meta<T>(&self, r: &Replica<T>) -> Vec<(String, Vec<u8>)> {
        let all = r.shared.seen.lock();
        self.seen
            .iter()
            .filter(|(n, ts)| all.get(*n).is_none_or(|s| *ts > s))
            .map(|(n, ts)| (seen_name(n), stamp_meta(ts)))
            .collect()
    }
}
