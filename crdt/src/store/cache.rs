//! Documents in memory: the cache, the documents pinned while they have writes queued (so that
//! eviction cannot make their next writer load a stale state from sled), the per-document
//! locks, and the hit and miss counts. [`DocCache`] owns all of it; loading a document from
//! sled is `Inner::current_slot`'s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use moka::sync::Cache;
use parking_lot::Mutex;

use super::Inner;
use crate::doc::Document;
use crate::error::Result;
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

/// Lock stripes for documents: enough that unrelated documents rarely share one.
const DOC_STRIPES: usize = 4096;

/// See the module docs.
pub(super) struct DocCache {
    cache: Cache<DocKey, Arc<Slot>>,
    /// Documents with writes queued but not yet durable, and the last such write's sequence
    /// number.
    pinned: Mutex<HashMap<DocKey, (Arc<Slot>, u64)>>,
    locks: Vec<tokio::sync::Mutex<()>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl DocCache {
    /// A cache of about `bytes` (by [`weight`]).
    pub(super) fn new(bytes: u64) -> Self {
        DocCache {
            cache: Cache::builder()
                .max_capacity(bytes)
                .weigher(|_k, slot: &Arc<Slot>| slot.weight.load(Ordering::Relaxed) as u32)
                .build(),
            pinned: Mutex::new(HashMap::new()),
            locks: (0..DOC_STRIPES).map(|_| Default::default()).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The pinned or cached document, and the sequence number of its last queued write if it
    /// is pinned; counts a hit or a miss.
    fn lookup(&self, key: &DocKey) -> Option<(Arc<Slot>, Option<u64>)> {
        // the pinned map's lock is released before the cache is asked
        let pinned = self.pinned.lock().get(key).cloned();
        let found = match pinned {
            Some((slot, seq)) => Some((slot, Some(seq))),
            None => self.cache.get(key).map(|slot| (slot, None)),
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// The pinned or cached document, without counting a hit or a miss.
    pub(super) fn peek(&self, key: &DocKey) -> Option<Arc<Slot>> {
        let pinned = self.pinned.lock().get(key).map(|(s, _)| s.clone());
        pinned.or_else(|| self.cache.get(key))
    }

    pub(super) fn insert(&self, key: &DocKey, slot: &Arc<Slot>) {
        self.cache.insert(key.clone(), slot.clone());
    }

    /// Pins `slot` with its write `seq` queued.
    pub(super) fn pin(&self, key: &DocKey, slot: &Arc<Slot>, seq: u64) {
        self.pinned.lock().insert(key.clone(), (slot.clone(), seq));
    }

    /// Unpins the document if `seq` is still its last queued write.
    pub(super) fn unpin(&self, key: &DocKey, seq: u64) {
        let mut pinned = self.pinned.lock();
        if pinned.get(key).is_some_and(|(_, s)| *s == seq) {
            pinned.remove(key);
        }
    }

    /// The record of a pinned document (ahead of sled).
    pub(super) fn pinned_record(&self, key: &DocKey) -> Option<DocRecord> {
        self.pinned
            .lock()
            .get(key)
            .and_then(|(slot, _)| slot.rec.lock().clone())
    }

    pub(super) async fn lock(&self, key: &DocKey) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks[key.stripe(DOC_STRIPES)].lock().await
    }

    /// Drops a document from memory.
    pub(super) fn forget(&self, key: &DocKey) {
        self.cache.invalidate(key);
        self.pinned.lock().remove(key);
    }

    /// Hits, misses and the cache's weight in bytes.
    pub(super) fn stats(&self) -> (u64, u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
            self.cache.weighted_size(),
        )
    }

    #[cfg(test)]
    pub(super) fn cache(&self) -> &Cache<DocKey, Arc<Slot>> {
        &self.cache
    }
}

impl Inner {
    /// Local writes (this node's own changes, a client's) are refused while the store
    /// recovers from a log repair that lost batches.
    pub(super) fn check_writable(&self) -> Result<()> {
        self.commit.check()?;
        if let Some(why) = &*self.retired.lock() {
            return Err(crate::Error::Retired(why.clone()));
        }
        match &*self.recovering.lock() {
            Some(why) => Err(crate::Error::Recovering(format!(
                "{why}: this node takes no writes until every peer has given back what it \
                 holds (anti-entropy); write in another region meanwhile"
            ))),
            None => Ok(()),
        }
    }

    /// The document's record as stored (durable), checked: a damaged one marks the document.
    pub(super) fn read_record(&self, key: &DocKey) -> Result<Option<DocRecord>> {
        match self.damage.check(key, self.read_record_unchecked(key))? {
            // held changes not merged yet: absent is not the answer
            None if self.damage.is_damaged(key) => Err(self.damage.mark(key, "")),
            found => Ok(found),
        }
    }

    /// The record, with corruption reported as [`Error::Corrupt`] (the scrub's and heal's).
    pub(super) fn read_record_unchecked(&self, key: &DocKey) -> Result<Option<DocRecord>> {
        self.tree
            .get(record::doc_key(record::DOC, key))?
            .map(|v| record::decode(&v))
            .transpose()
    }

    /// The document with queued writes, the cached one, or the one on disk, and the sequence
    /// number of its last queued write. Callers hold the document's lock. A document found
    /// damaged is refused until it is healed.
    pub(super) fn current_slot(&self, key: &DocKey) -> Result<(Arc<Slot>, Option<u64>)> {
        if let Some(found) = self.docs.lookup(key) {
            return Ok(found);
        }
        let (doc, rec) = match self.damage.check(key, self.load_stored(key))? {
            None => (Document::new(self.node.actor()), None),
            Some((rec, doc)) => (doc, Some(rec)),
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
        self.docs.insert(key, &slot);
        Ok(Some((slot, lock)))
    }

    pub(super) async fn doc_lock(&self, key: &DocKey) -> tokio::sync::MutexGuard<'_, ()> {
        self.docs.lock(key).await
    }

    /// Drops a document from memory after a failure left it ahead of what was queued.
    pub(super) fn forget(&self, key: &DocKey) {
        self.docs.forget(key);
    }
}
