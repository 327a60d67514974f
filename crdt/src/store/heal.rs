//! Healing a damaged document: its history is rebuilt from every intact piece this node still
//! has (the cached copy, the snapshot and increments that pass their checksums, the changes held
//! for it, this node's own changes in its feed) and what the peers sent, then written whole in
//! one batch. The rebuilt history must hold every change the document's record names; a record
//! itself damaged names none, so then at least one peer must have answered. Otherwise the
//! document stays damaged (and refused), and the heal is tried again later: a change only a
//! partitioned peer holds must not be dropped, nor this node's next change reuse its sequence
//! number.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use automerge::ChangeHash;

use super::cache::{weight, Slot};
use super::{events, Store};
use crate::doc::{Document, RemoteChange, State};
use crate::error::{Error, Result};
use crate::key::DocKey;
use crate::record::{self, DocRecord, FeedEntry};
use crate::wal::Op;

/// What the peers sent for a heal.
#[derive(Debug, Default)]
pub struct HealSources {
    /// The document's changes from every peer that answered (checked by the caller).
    pub changes: Vec<RemoteChange>,
    /// Peers asked, and peers that answered.
    pub asked: usize,
    pub answered: usize,
    /// Replication bookkeeping to store with the healed document (seen stamps).
    pub meta: Vec<(String, Vec<u8>)>,
}

/// What [`Store::heal`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healed {
    /// The document is not (or no longer) damaged.
    NotDamaged,
    /// Rewritten whole; `restored` changes came from the peers.
    Healed { restored: usize },
}

impl Store {
    /// Rebuilds a damaged document (see the module docs). Fails, leaving it damaged, when the
    /// history cannot be shown whole.
    pub async fn heal(&self, key: &DocKey, from: HealSources) -> Result<Healed> {
        let inner = &*self.inner;
        inner.commit.check()?;
        let _lock = inner.doc_lock(key).await;
        if !inner.damage.is_damaged(key) {
            return Ok(Healed::NotDamaged);
        }
        let result = self.rebuild(key, from).await;
        match &result {
            Ok(_) => inner.damage.healed(key),
            Err(e) => inner.damage.heal_failed(key, &e.to_string()),
        }
        result
    }

    async fn rebuild(&self, key: &DocKey, from: HealSources) -> Result<Healed> {
        let inner = &*self.inner;
        let recorded = inner.read_record_unchecked(key).ok().flatten();
        let (mut doc, held) = self.salvage(key)?;
        let before: HashSet<ChangeHash> = doc.heads().into_iter().collect();
        let restored = doc.merge_remote(&from.changes)?.len();
        match &recorded {
            Some(rec) => {
                let wanted: Vec<ChangeHash> = rec.heads.iter().copied().map(ChangeHash).collect();
                if !doc.history_includes(&doc.heads(), &wanted) {
                    return Err(Error::Damaged(format!(
                        "{key}: neither this node's intact records nor the {} of {} peers that \
                         answered hold its whole history; it stays refused until one does",
                        from.answered, from.asked
                    )));
                }
            }
            None if from.answered == 0 && from.asked > 0 => {
                return Err(Error::Damaged(format!(
                    "{key}: its record is damaged and no peer answered; it stays refused until one does"
                )))
            }
            None => {}
        }
        // held changes still waiting for their dependencies stay held
        let mut ops: Vec<Op> = held
            .into_iter()
            .filter(|h| doc.change_bytes(h).is_some())
            .map(|h| (record::held_key(key, &h.0), None))
            .collect();
        for k in inner.tree.scan_prefix(record::increment_prefix(key)).keys() {
            ops.push((k?.to_vec(), None));
        }
        let snapshot = doc.save();
        let state = doc.state();
        let rec = DocRecord {
            state,
            version: doc.version(),
            json: match state {
                State::Live => serde_json::to_string(&doc.value()).expect("JSON values serialize"),
                _ => "null".to_owned(),
            },
            heads: doc.heads().iter().map(|h| h.0).collect(),
            incr_base: 0,
            incr_count: 0,
            stored_bytes: snapshot.len() as u64,
        };
        ops.push((
            record::doc_key(record::SNAPSHOT, key),
            Some(record::wrap(&snapshot)),
        ));
        ops.push((
            record::doc_key(record::DOC, key),
            Some(record::encode(&rec)),
        ));
        ops.extend(
            from.meta
                .into_iter()
                .map(|(name, v)| (record::meta_key(&name), Some(v))),
        );
        let new: Vec<ChangeHash> = doc
            .heads()
            .into_iter()
            .filter(|h| !before.contains(h))
            .collect();
        let event = (recorded.as_ref().map(|r| &r.heads) != Some(&rec.heads))
            .then(|| events::EventLog::encode(key, &doc, &rec, &new));
        // a record that could not be read was counted as whatever it held; assume as now
        let was_live = recorded
            .as_ref()
            .map_or(state == State::Live, |r| r.state == State::Live);
        let delta = (state == State::Live) as i64 - was_live as i64;
        let seq = inner.commit.submit(delta, |seq| {
            if let Some(event) = event {
                ops.push((record::event_key(seq), Some(event)));
            }
            ops
        })?;
        inner.digests.replace(
            key,
            recorded.as_ref().map(|r| r.version.as_str()),
            &rec.version,
        );
        inner.doc_ids.insert(key);
        let slot = Arc::new(Slot {
            weight: AtomicU64::new(weight(&doc, rec.json.len())),
            doc: parking_lot::Mutex::new(doc),
            rec: parking_lot::Mutex::new(Some(rec)),
        });
        inner.docs.forget(key);
        inner.commit.durable(seq).await?;
        inner.docs.insert(key, &slot);
        inner.schema_changed(key);
        if let Some(rec) = slot.rec.lock().as_ref() {
            inner.placement_written(key, rec);
        }
        let _ = inner.doc_changed.send(key.clone());
        tracing::info!(key = %key, restored, "healed a damaged document");
        Ok(Healed::Healed { restored })
    }

    /// Every intact piece of the document this node has, merged, and the hashes of the changes
    /// held for it.
    fn salvage(&self, key: &DocKey) -> Result<(Document, Vec<ChangeHash>)> {
        let inner = &*self.inner;
        let mut doc = Document::new(inner.node.actor());
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        if let Some(slot) = inner.docs.peek(key) {
            chunks.push(slot.doc.lock().save());
        }
        let intact = |v: sled::IVec| record::strip_format(&v).ok().map(<[u8]>::to_vec);
        if let Some(s) = inner.tree.get(record::doc_key(record::SNAPSHOT, key))? {
            chunks.extend(intact(s));
        }
        for v in inner
            .tree
            .scan_prefix(record::increment_prefix(key))
            .values()
        {
            chunks.extend(intact(v?));
        }
        let mut held = Vec::new();
        for kv in inner.tree.scan_prefix(record::held_prefix(key)) {
            let (k, v) = kv?;
            if let (Ok(hash), Some(c)) = (<[u8; 32]>::try_from(&k[k.len() - 32..]), intact(v)) {
                held.push(ChangeHash(hash));
                chunks.push(c);
            }
        }
        // this node's own changes that no peer may have read yet
        for kv in inner.streams.scan_prefix([record::FEED]) {
            let (_, v) = kv?;
            if let Ok(e) = record::decode::<FeedEntry>(&v) {
                if e.collection == key.collection() && e.id == key.id() {
                    chunks.push(e.change);
                }
            }
        }
        for c in &chunks {
            // a piece automerge refuses is one more damaged piece: the others may cover it
            if let Err(e) = doc.merge_changes([c.as_slice()]) {
                tracing::warn!(key = %key, error = %e, "a stored piece of a damaged document does not load");
            }
        }
        Ok((doc, held))
    }

    /// Holds changes that arrived for a damaged document (durably, as part of the merge's
    /// batch) until it is healed.
    pub(super) fn hold(key: &DocKey, changes: &[RemoteChange]) -> Vec<Op> {
        changes
            .iter()
            .map(|c| {
                (
                    record::held_key(key, &c.hash().0),
                    Some(record::wrap(c.bytes())),
                )
            })
            .collect()
    }
}
