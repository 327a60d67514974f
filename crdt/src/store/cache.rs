//! Cached documents. A document with writes queued but not yet durable is pinned (in
//! `Inner::pending`), so that eviction cannot make its next writer load a stale state from sled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Inner, DOC_STRIPES};
use crate::doc::Document;
use crate::error::{Error, Result};
use crate::key::DocKey;
use crate::record::{self, DocRecord};

/// A cached document and the record that describes it. Under the document's lock the two always
/// agree; they run ahead of sled while the document has writes queued for commit.
pub(super) struct Slot {
    pub(super) doc: Mutex<Document>,
    pub(super) rec: Mutex<Option<DocRecord>>,
    pub(super) weight: AtomicU64,
}

/// Estimated memory of a cached document: its automerge state and the record's JSON. Measured
/// with automerge 0.12 (`crdt/examples/docmem.rs`): 10 to 17 KiB for a new document, 350 to
/// 390 bytes more per change, plus its values (a string's bytes, a text's characters at about
/// a byte each); the record holds the JSON a second time. The estimate errs a little high. Sized from
/// what is in memory rather than from the stored bytes: a snapshot compresses a hundred changes
/// to 1 KB that take 40 KB in memory, an increment takes about its own size.
pub(super) fn weight(doc: &Document, json_bytes: usize) -> u64 {
    (18 << 10) + 400 * doc.change_count() + 2 * json_bytes as u64
}

impl Inner {
    pub(super) fn read_record(&self, key: &DocKey) -> Result<Option<DocRecord>> {
        self.tree
            .get(record::doc_key(record::DOC, key))?
            .map(|v| record::decode(&v))
            .transpose()
    }

    /// The document with queued writes, the cached one, or the one on disk, and the sequence
    /// number of its last queued write. Callers hold the document's lock.
    pub(super) fn current_slot(&self, key: &DocKey) -> Result<(Arc<Slot>, Option<u64>)> {
        if let Some((slot, seq)) = self.pending.lock().get(key).cloned() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((slot, Some(seq)));
        }
        if let Some(slot) = self.cache.get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((slot, None));
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let rec = self.read_record(key)?;
        let actor = self.node.actor();
        let doc = match &rec {
            None => Document::new(actor),
            Some(r) => {
                let snapshot = self.tree.get(record::doc_key(record::SNAPSHOT, key))?;
                let snapshot = snapshot.as_deref().map(record::strip_format).transpose()?;
                let mut increments = Vec::with_capacity(r.incr_count as usize);
                for n in r.incr_base..r.incr_base + r.incr_count {
                    let chunk = self
                        .tree
                        .get(record::increment_key(key, n))?
                        .ok_or_else(|| {
                            Error::Corrupt(format!("{key}: incremental change {n} is missing"))
                        })?;
                    increments.push(chunk);
                }
                let chunks = increments
                    .iter()
                    .map(|c| record::strip_format(c))
                    .collect::<Result<Vec<_>>>()?;
                let doc = Document::load(actor, snapshot, chunks)?;
                // automerge skips a damaged chunk quietly; the record says what must be there
                let mut want: Vec<[u8; 32]> = r.heads.clone();
                let mut have: Vec<[u8; 32]> = doc.heads().iter().map(|h| h.0).collect();
                want.sort();
                have.sort();
                if want != have {
                    return Err(Error::Corrupt(format!(
                        "{key}: the stored history does not reach the recorded heads"
                    )));
                }
                doc
            }
        };
        let weight = weight(&doc, rec.as_ref().map_or(0, |r| r.json.len()));
        Ok((
            Arc::new(Slot {
                doc: Mutex::new(doc),
                rec: Mutex::new(rec),
                weight: AtomicU64::new(weight),
            }),
            None,
        ))
    }

    /// An existing document whose state is durable, with its lock held: waits for queued
    /// writes (no new ones can start while the lock is held). `None` if it was never written.
    pub(super) async fn settled_slot(
        &self,
        key: &DocKey,
    ) -> Result<Option<(Arc<Slot>, tokio::sync::MutexGuard<'_, ()>)>> {
        let lock = self.doc_lock(key).await;
        let (slot, queued) = self.current_slot(key)?;
        if let Some(seq) = queued {
            self.commit.durable(seq).await?;
        }
        if slot.rec.lock().is_none() {
            return Ok(None);
        }
        self.cache.insert(key.clone(), slot.clone());
        Ok(Some((slot, lock)))
    }

    pub(super) async fn doc_lock(&self, key: &DocKey) -> tokio::sync::MutexGuard<'_, ()> {
        self.doc_locks[key.stripe(DOC_STRIPES)].lock().await
    }

    /// Drops a document from memory after a failure left it ahead of what was queued.
    pub(super) fn forget(&self, key: &DocKey) {
        self.cache.invalidate(key);
        self.pending.lock().remove(key);
    }
}
