//! The one commit path. [`Inner::open_write`] takes a document's lock and its current state; the
//! caller changes the document through the [`DocWrite`]; [`DocWrite::commit`] queues the new
//! changes with the bookkeeping they need as one batch and releases the lock (the next writer of
//! the document may build on the queued state); [`Queued::durable`] waits until the batch is
//! synced and applied, unpins the document and announces the change.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use automerge::ChangeHash;
use uhlc::Timestamp;

use super::cache::{weight, Slot};
use super::{events, idempotency, space, Inner, Store, Written};
use crate::commit::InProgress;
use crate::doc::{Applied, Document, Edit, State};
use crate::error::{Error, Result};
use crate::key::DocKey;
use crate::record::{self, DocRecord, FeedEntry, WriteOutcome};
use crate::wal::Op;

/// A change new to a document, with its stamp in this node's feed if it is one of this node's
/// own (a local write, a stamp change, a client change this node accepted).
#[derive(Debug)]
pub(super) struct NewChange {
    pub(super) hash: ChangeHash,
    pub(super) bytes: Vec<u8>,
    pub(super) feed: Option<Timestamp>,
}

/// A write to one document in progress: its lock held, its state at hand. Dropped without
/// [`DocWrite::commit`] or [`DocWrite::unchanged`] after a step that may have changed the
/// document, it forgets the document, so memory never runs ahead of what was queued.
pub(super) struct DocWrite<'a> {
    inner: &'a Inner,
    key: DocKey,
    _lock: tokio::sync::MutexGuard<'a, ()>,
    _in_progress: InProgress<'a>,
    slot: Arc<Slot>,
    prev: Option<DocRecord>,
    /// The sequence number of the document's last write still queued.
    pub(super) queued_before: Option<u64>,
    dirty: bool,
}

/// A batch queued for commit (or nothing to write), until it is durable.
#[must_use = "a queued write must be waited for (durable) or finished (done)"]
pub(super) struct Queued<'a> {
    inner: &'a Inner,
    key: DocKey,
    /// This batch's sequence number, or the document's last queued one when there was nothing
    /// to write (the answer still reports that state, so it waits for it too).
    seq: Option<u64>,
    pinned: Option<u64>,
    changed: bool,
    /// The document's record after the write.
    pub(super) rec: DocRecord,
}

impl Inner {
    /// Takes the document's lock and its current state (pending, cached, or from disk).
    pub(super) async fn open_write(&self, key: &DocKey) -> Result<DocWrite<'_>> {
        let lock = self.doc_lock(key).await;
        // Only now: a writer still waiting for the document's lock cannot join this group, and
        // the flusher must not wait for it.
        let in_progress = self.commit.begin();
        let (slot, queued_before) = self.current_slot(key)?;
        let prev = slot.rec.lock().clone();
        Ok(DocWrite {
            inner: self,
            key: key.clone(),
            _lock: lock,
            _in_progress: in_progress,
            slot,
            prev,
            queued_before,
            dirty: false,
        })
    }
}

impl<'a> DocWrite<'a> {
    pub(super) fn prev(&self) -> Option<&DocRecord> {
        self.prev.as_ref()
    }

    /// The document, to read or change with a step that leaves it unchanged on error.
    pub(super) fn doc(&self) -> parking_lot::MutexGuard<'_, Document> {
        self.slot.doc.lock()
    }

    /// The document, to change with a step that may leave it half changed on error: if the
    /// write then ends without a commit, the document is forgotten.
    pub(super) fn doc_dirty(&mut self) -> parking_lot::MutexGuard<'_, Document> {
        self.dirty = true;
        self.slot.doc.lock()
    }

    /// Queues `changes` (already in the document) with their bookkeeping and `extra` ops (which
    /// see the new record) as one batch; releases the document's lock.
    pub(super) fn commit(
        mut self,
        changes: Vec<NewChange>,
        extra: impl FnOnce(&DocRecord) -> Vec<Op>,
    ) -> Result<Queued<'a>> {
        self.dirty = true; // from here on a failure leaves the document ahead of the queue
        let (mut ops, rec, docs_delta, event, weight) = {
            let doc = self.slot.doc.lock();
            let (ops, rec, delta) =
                self.inner
                    .record_changes(&self.key, &doc, self.prev.take(), &changes);
            let hashes: Vec<ChangeHash> = changes.iter().map(|c| c.hash).collect();
            let event = (!changes.is_empty())
                .then(|| events::EventLog::encode(&self.key, &doc, &rec, &hashes));
            let weight = weight(&doc, rec.json.len());
            (ops, rec, delta, event, weight)
        };
        ops.extend(extra(&rec));
        if ops.is_empty() {
            return Ok(self.finish(None, rec, false));
        }
        let seq = self.inner.commit.submit(docs_delta, |seq| {
            if let Some(event) = event {
                ops.push((record::event_key(seq), Some(event)));
            }
            ops
        })?;
        self.slot.weight.store(weight, Ordering::Relaxed);
        *self.slot.rec.lock() = Some(rec.clone());
        self.inner.docs.pin(&self.key, &self.slot, seq);
        // only now: a contract read from here on finds the new record among the pending ones
        self.inner.schema_changed(&self.key);
        Ok(self.finish(Some(seq), rec, !changes.is_empty()))
    }

    /// Nothing to write: the document is as it was (changes waiting for their dependencies
    /// stay in memory while the cache keeps it).
    pub(super) fn unchanged(mut self) -> Queued<'a> {
        let rec = self.prev.take().unwrap_or_else(DocRecord::absent);
        self.finish(None, rec, false)
    }

    fn finish(mut self, seq: Option<u64>, rec: DocRecord, changed: bool) -> Queued<'a> {
        self.dirty = false;
        self.inner.docs.insert(&self.key, &self.slot);
        Queued {
            inner: self.inner,
            key: self.key.clone(),
            seq: seq.or(self.queued_before),
            pinned: seq,
            changed,
            rec,
        }
        // the lock and the in-progress mark go with `self`
    }
}

impl Drop for DocWrite<'_> {
    fn drop(&mut self) {
        if self.dirty {
            self.inner.forget(&self.key);
        }
    }
}

impl Queued<'_> {
    /// The sequence number to wait for, if any.
    pub(super) fn seq(&self) -> Option<u64> {
        self.seq
    }

    /// Waits until the batch (and every earlier write to the document) is durable, then
    /// finishes it.
    pub(super) async fn durable(self) -> Result<DocRecord> {
        if let Some(seq) = self.seq {
            if let Err(e) = self.inner.commit.durable(seq).await {
                self.inner.forget(&self.key);
                return Err(e);
            }
        }
        Ok(self.done())
    }

    /// After the batch is durable: unpins the document, announces the change.
    pub(super) fn done(self) -> DocRecord {
        if let Some(seq) = self.pinned {
            self.inner.docs.unpin(&self.key, seq);
        }
        if self.changed {
            self.inner.placement_written(&self.key, &self.rec);
            // nobody listening is fine
            let _ = self.inner.doc_changed.send(self.key);
        }
        self.rec
    }
}

impl Inner {
    /// The storage operations for new changes of a document (increments, or a snapshot every
    /// `compact_every`; feed entries of this node's own changes; the new record), the new record,
    /// and the change in the live-document count. Updates the anti-entropy digest, and notes a
    /// new document's id.
    fn record_changes(
        &self,
        key: &DocKey,
        doc: &Document,
        prev: Option<DocRecord>,
        changes: &[NewChange],
    ) -> (Vec<Op>, DocRecord, i64) {
        let Some(was) = prev
            .clone()
            .or_else(|| (!changes.is_empty()).then(DocRecord::absent))
        else {
            return (vec![], DocRecord::absent(), 0);
        };
        if changes.is_empty() {
            return (vec![], was, 0);
        }
        let mut ops: Vec<Op> = Vec::with_capacity(4 + 2 * changes.len());
        let mut rec = was.clone();
        if rec.incr_count + changes.len() as u64 >= compaction_due(self.config.compact_every, doc) {
            let snapshot = doc.save();
            for n in rec.incr_base..rec.incr_base + rec.incr_count {
                ops.push((record::increment_key(key, n), None));
            }
            rec.incr_base += rec.incr_count;
            rec.incr_count = 0;
            rec.stored_bytes = snapshot.len() as u64;
            ops.push((
                record::doc_key(record::SNAPSHOT, key),
                Some(record::wrap(&snapshot)),
            ));
        } else {
            for c in changes {
                ops.push((
                    record::increment_key(key, rec.incr_base + rec.incr_count),
                    Some(record::wrap(&c.bytes)),
                ));
                rec.incr_count += 1;
                rec.stored_bytes += c.bytes.len() as u64;
            }
        }
        for c in changes {
            if let Some(stamp) = &c.feed {
                let entry = FeedEntry {
                    collection: key.collection().into(),
                    id: key.id().into(),
                    hash: c.hash.0,
                    change: c.bytes.clone(),
                };
                ops.push((record::feed_key(stamp), Some(record::encode(&entry))));
            }
        }
        if prev.is_none() {
            self.doc_ids.insert(key);
        }
        let state = doc.state();
        rec.state = state;
        rec.version = doc.version();
        rec.json = match state {
            State::Live => serde_json::to_string(&doc.value()).expect("JSON values serialize"),
            _ => "null".to_owned(),
        };
        rec.heads = doc.heads().iter().map(|h| h.0).collect();
        self.digests
            .replace(key, prev.as_ref().map(|r| r.version.as_str()), &rec.version);
        ops.push((
            record::doc_key(record::DOC, key),
            Some(record::encode(&rec)),
        ));
        let docs_delta = (state == State::Live) as i64 - (was.state == State::Live) as i64;
        (ops, rec, docs_delta)
    }
}

impl Store {
    /// Applies `edit` to a document, durably: an HLC-stamped change of this node.
    pub async fn write(
        &self,
        key: &DocKey,
        edit: Edit,
        idem: Option<idempotency::Idempotency>,
    ) -> Result<Written> {
        self.write_traced(key, edit, idem, None).await
    }

    /// [`Store::write`], noting that its changes were made under `trace` (see
    /// [`Store::trace_of`]).
    pub async fn write_traced(
        &self,
        key: &DocKey,
        edit: Edit,
        idem: Option<idempotency::Idempotency>,
        trace: Option<[u8; 16]>,
    ) -> Result<Written> {
        let inner = &*self.inner;
        inner.check_writable()?;
        inner.check_placed(key.collection())?;
        let idem_lock = match &idem {
            Some(i) => Some(inner.idem.lock(i).await),
            None => None,
        };
        if let Some(i) = &idem {
            if let Some(outcome) = inner.idem.replay(i)? {
                return Ok(Written {
                    outcome,
                    replayed: true,
                    heads: vec![],
                });
            }
        }
        // after the replay: a retry of a write already taken gets its answer on a full disk
        inner.space.check(match edit {
            Edit::Delete => space::Need::Converge,
            _ => space::Need::New,
        })?;
        let contract = inner.contract_of(key.collection());
        let w = inner.open_write(key).await?;
        // a stamp for each counter the edit may create (their changes get feed entries before
        // the edit's own, which depends on them), and the last for the edit
        let bound = edit.counter_bound(contract.as_deref());
        let stamp_guard = inner.stamps(1 + bound);
        let stamps = stamp_guard.all();
        let stamp = stamps[bound];
        let Applied {
            change,
            created,
            before,
        } = w.doc().apply_checked(&edit, contract.as_deref(), &stamp)?;
        // every feed entry needs its own stamp: more creations than stamps would overwrite one
        if created.len() > bound {
            return Err(Error::Storage(format!(
                "an edit created {} counters, more than its bound of {bound}",
                created.len()
            )));
        }
        let changes: Vec<NewChange> = created
            .into_iter()
            .zip(stamps.iter().copied())
            .chain(change.map(|c| (c, stamp)))
            .map(|((hash, bytes), stamp)| NewChange {
                hash,
                bytes,
                feed: Some(stamp),
            })
            .collect();
        if let Some(t) = trace {
            // noted before the commit: a peer may read the feed entry as soon as it is durable
            inner.traces.note(changes.iter().map(|c| c.hash.0), t);
        }
        let queued = w.commit(changes, |rec| match &idem {
            Some(i) => vec![idempotency::record(i, outcome_of(before, rec))],
            None => vec![],
        })?;
        let rec = queued.durable().await?;
        // held until durable, so a retry with the same key finds the stored answer
        drop(idem_lock);
        drop(stamp_guard);
        Ok(Written {
            outcome: outcome_of(before, &rec),
            replayed: false,
            heads: rec.heads.iter().copied().map(ChangeHash).collect(),
        })
    }
}

/// How many increments a document collects before a write stores a snapshot instead:
/// `compact_every`, or a sixteenth of its history if that is more. A snapshot costs time in
/// proportion to the whole history, so a fixed count would make every write to a document with
/// a long history pay for it again and again (a document with 20,000 changes would save them
/// all every 32 writes); this way each write pays for at most 16 changes' worth, and a load
/// still reads at most a sixteenth of the history one change at a time.
fn compaction_due(compact_every: u64, doc: &Document) -> u64 {
    compact_every.max(doc.change_count() / 16)
}

/// What a write answers, from the document's state before and its record after.
fn outcome_of(before: State, rec: &DocRecord) -> WriteOutcome {
    WriteOutcome {
        created: before != State::Live && rec.state == State::Live,
        deleted: rec.state == State::Deleted,
        value: if rec.state == State::Live {
            rec.json.clone()
        } else {
            "null".into()
        },
        version: rec.version.clone(),
    }
}
