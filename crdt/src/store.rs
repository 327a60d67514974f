//! The durable document store: sled underneath, a write-ahead log in front of it, a
//! byte-bounded cache of automerge documents, per-document write locks and group commit.
//!
//! A write, in order: take the idempotency-key lock (if any) and the document's lock; load the
//! document (cache or disk); apply the edit in memory (on error, roll back: nothing changed);
//! queue the change, the new materialized record, the feed entry and the idempotency record as
//! one batch; wait until its group is synced to the log and applied to sled; answer. sled only
//! ever holds durable writes, so reads take no lock and never wait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::ChangeHash;
use moka::sync::Cache;
use parking_lot::Mutex;
use uhlc::Timestamp;

use crate::commit::GroupCommit;
use crate::doc::{Applied, Conflict, Document, Edit, State};
use crate::error::{Error, Result};
use crate::hlc::{Clock, NodeId, DEFAULT_MAX_DRIFT};
use crate::key::{stripe, validate_name, DocKey};
use crate::record::{self, DocRecord, FeedEntry, IdemRecord, WriteOutcome};
use crate::wal::Op;

/// Store settings. [`StoreConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// The node id to use; `None` keeps the one in the data dir, or makes one.
    pub node_id: Option<String>,
    /// Byte budget of the document cache.
    pub cache_bytes: u64,
    /// Byte budget of sled's page cache.
    pub sled_cache_bytes: u64,
    /// Fold a document's incremental changes into a snapshot after this many.
    pub compact_every: u64,
    pub max_drift: Duration,
    /// How long idempotency keys are remembered.
    pub idempotency_ttl: Duration,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            node_id: None,
            cache_bytes: 256 << 20,
            sled_cache_bytes: 64 << 20,
            compact_every: 32,
            max_drift: DEFAULT_MAX_DRIFT,
            idempotency_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A write's idempotency key and a digest of the request, to tell a retry from a reuse.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

impl Idempotency {
    /// Keys are 1 to 255 visible ASCII characters.
    pub fn new(key: &str, fingerprint: Vec<u8>) -> Result<Self> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::bad(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(Idempotency {
            key: key.to_owned(),
            fingerprint,
        })
    }
}

/// The answer to a write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub outcome: WriteOutcome,
    /// True when this is the stored answer of an earlier request with the same key.
    pub replayed: bool,
}

/// A live document as read.
#[derive(Debug, Clone, PartialEq)]
pub struct DocView {
    pub id: String,
    /// The document's JSON, serialized.
    pub json: String,
    pub version: String,
}

/// One page of a collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<DocView>,
    /// The cursor for the next page, if there may be one.
    pub next: Option<String>,
}

/// Figures for `/v1/status` and `/metrics`.
#[derive(Debug, Clone)]
pub struct StoreStats {
    pub node_id: String,
    pub hlc: String,
    pub documents: u64,
    pub bytes_on_disk: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub cache_bytes: u64,
    /// Group commits (log syncs) since start-up.
    pub flushes: u64,
    /// Batches replayed from the write-ahead log at start-up.
    pub replayed: u64,
}

const DOC_STRIPES: usize = 4096;
const IDEM_STRIPES: usize = 1024;

/// A cached document and the record that describes it. Under the document's lock the two always
/// agree; they run ahead of sled while the document has writes queued for commit.
struct Slot {
    doc: Mutex<Document>,
    rec: Mutex<Option<DocRecord>>,
    weight: AtomicU64,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("node", &self.inner.node)
            .finish()
    }
}

struct Inner {
    tree: sled::Db,
    node: NodeId,
    clock: Clock,
    config: StoreConfig,
    cache: Cache<DocKey, Arc<Slot>>,
    /// Documents with writes queued but not yet durable, and the last such write's sequence
    /// number. Pinned here so that eviction cannot make the next writer load a stale state.
    pending: Mutex<HashMap<DocKey, (Arc<Slot>, u64)>>,
    doc_locks: Vec<tokio::sync::Mutex<()>>,
    idem_locks: Vec<tokio::sync::Mutex<()>>,
    commit: GroupCommit,
    replayed: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Store {
    /// Opens (or creates) the store in `config.path`. Fails if another process has it open.
    pub fn open(config: StoreConfig) -> Result<Store> {
        let db = sled::Config::new()
            .path(db_path(&config.path))
            .cache_capacity(config.sled_cache_bytes)
            .mode(sled::Mode::HighThroughput)
            // durability comes from the write-ahead log; sled is flushed at checkpoints
            .flush_every_ms(None)
            .open()?;

        let node = match (get_meta(&db, "node")?, &config.node_id) {
            (Some(stored), Some(wanted)) if stored != *wanted => {
                return Err(Error::bad(format!(
                    "the data dir belongs to node {stored:?}, not {wanted:?}; use another data dir"
                )))
            }
            (Some(stored), _) => NodeId::new(&stored)?,
            (None, Some(wanted)) => NodeId::new(wanted)?,
            (None, None) => NodeId::random(),
        };
        db.insert(record::meta_key("node"), node.as_str().as_bytes())?;
        let sled_log = std::fs::File::open(db_path(&config.path).join("db")).ok();
        if sled_log.is_none() {
            tracing::warn!(
                "cannot open sled's log file to sync it; checkpoints rely on sled's flush alone"
            );
        }
        let wal_dir = config.path.join("wal");
        let (seq, documents, replayed) = crate::commit::recover(&db, sled_log.as_ref(), &wal_dir)?;
        if replayed > 0 {
            tracing::info!(replayed, "recovered writes from the write-ahead log");
        }

        let clock = Clock::new(&node, config.max_drift);
        if let Some(last) = last_stamp(&db)? {
            clock.observe(&last).map_err(|_| {
                Error::Unavailable(format!(
                    "this machine's clock is behind the newest stored change ({}) by more than the \
                     maximum drift; fix the clock before starting",
                    crate::hlc::display_stamp(&last)
                ))
            })?;
        }

        let cache = Cache::builder()
            .max_capacity(config.cache_bytes)
            .weigher(|_k, slot: &Arc<Slot>| slot.weight.load(Ordering::Relaxed) as u32)
            .build();
        let blob_dir = db_path(&config.path).join("blobs");
        let commit = GroupCommit::start(db.clone(), blob_dir, sled_log, wal_dir, seq, documents)?;
        Ok(Store {
            inner: Arc::new(Inner {
                tree: db,
                node,
                clock,
                config,
                cache,
                pending: Mutex::new(HashMap::new()),
                doc_locks: (0..DOC_STRIPES).map(|_| Default::default()).collect(),
                idem_locks: (0..IDEM_STRIPES).map(|_| Default::default()).collect(),
                commit,
                replayed: replayed as u64,
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
            }),
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.node
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Ready for traffic: open, and no flush has failed.
    pub fn is_ready(&self) -> bool {
        self.inner.commit.check().is_ok()
    }

    /// Applies `edit` to a document, durably. See the module doc for the steps.
    pub async fn write(
        &self,
        key: &DocKey,
        edit: Edit,
        idem: Option<Idempotency>,
    ) -> Result<Written> {
        let inner = &*self.inner;
        inner.commit.check()?;
        let _idem_lock = match &idem {
            Some(i) => Some(inner.idem_locks[stripe(&i.key, IDEM_STRIPES)].lock().await),
            None => None,
        };
        if let Some(i) = &idem {
            if let Some(rec) = inner.idem_lookup(&i.key)? {
                if rec.fingerprint != i.fingerprint {
                    return Err(Error::unprocessable(
                        "this Idempotency-Key was already used for a different request",
                    ));
                }
                return Ok(Written {
                    outcome: rec.outcome,
                    replayed: true,
                });
            }
        }

        let doc_lock = inner.doc_locks[key.stripe(DOC_STRIPES)].lock().await;
        // Only now: a writer still waiting for the document's lock cannot join this group, and
        // the flusher must not wait for it.
        let in_progress = inner.commit.begin();
        let (slot, queued_before) = inner.current_slot(key)?;
        let prev = slot.rec.lock().clone();
        let stamp = inner.clock.now();
        let (seq, outcome) = {
            let mut doc = slot.doc.lock();
            let applied = doc.apply(&edit, &stamp)?;
            match inner.persist(key, &doc, prev, &applied, &stamp, idem.as_ref()) {
                Ok((Some(seq), outcome, weight, rec)) => {
                    *slot.rec.lock() = Some(rec);
                    slot.weight.store(weight, Ordering::Relaxed);
                    inner
                        .pending
                        .lock()
                        .insert(key.clone(), (slot.clone(), seq));
                    (Some(seq), outcome)
                }
                Ok((None, outcome, _, _)) => (None, outcome),
                Err(e) => {
                    // the edit is in the cached document but not queued: forget the document
                    drop(doc);
                    inner.forget(key);
                    return Err(e);
                }
            }
        };
        drop(in_progress);
        inner.cache.insert(key.clone(), slot);
        // The next writer of this document may build on this state right away (it is queued in
        // order behind this one); this answer waits until the state it reports is durable.
        drop(doc_lock);
        if let Some(wait) = seq.or(queued_before) {
            if let Err(e) = inner.commit.durable(wait).await {
                inner.forget(key);
                return Err(e);
            }
        }
        if let Some(seq) = seq {
            let mut pending = inner.pending.lock();
            if pending.get(key).is_some_and(|(_, s)| *s == seq) {
                pending.remove(key);
            }
        }
        // held until durable, so a retry with the same key finds the stored answer
        drop(_idem_lock);
        Ok(Written {
            outcome,
            replayed: false,
        })
    }

    /// A live document, or `None` if absent or deleted.
    pub async fn get(&self, key: &DocKey) -> Result<Option<DocView>> {
        let Some(rec) = self.inner.read_record(key)? else {
            return Ok(None);
        };
        Ok(live_view(key.id(), rec))
    }

    /// A live document and its conflicts.
    pub async fn get_with_conflicts(
        &self,
        key: &DocKey,
    ) -> Result<Option<(DocView, Vec<Conflict>)>> {
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Ok(None);
        };
        let Some(rec) = slot.rec.lock().clone() else {
            return Ok(None);
        };
        let conflicts = slot.doc.lock().conflicts();
        Ok(live_view(key.id(), rec).map(|v| (v, conflicts)))
    }

    /// Live documents of a collection in id order, after the cursor `after`.
    pub async fn list(&self, collection: &str, after: Option<&str>, limit: usize) -> Result<Page> {
        validate_name("collection", collection)?;
        let mut prefix = vec![record::DOC];
        prefix.extend_from_slice(collection.as_bytes());
        prefix.push(0);
        let mut end = prefix.clone();
        *end.last_mut().expect("non-empty") = 1;
        let start = match after {
            Some(a) => {
                validate_name("cursor", a)?;
                let mut s = prefix.clone();
                s.extend_from_slice(a.as_bytes());
                s.push(0); // just past `a` itself
                s
            }
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        let mut more = false;
        for kv in self.inner.tree.range(start..end) {
            let (k, v) = kv?;
            let rec: DocRecord = record::decode(&v)?;
            if rec.state != State::Live {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            let key = DocKey::decode(&k[1..])?;
            items.extend(live_view(key.id(), rec));
        }
        let next = if more {
            items.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// Local changes in HLC order, starting after `after`: the change feed replication reads.
    pub fn feed(
        &self,
        after: Option<&Timestamp>,
        limit: usize,
    ) -> Result<Vec<(Timestamp, FeedEntry)>> {
        let start = match after {
            Some(ts) => {
                let mut k = record::feed_key(ts);
                k.push(0);
                k
            }
            None => vec![record::FEED],
        };
        let mut out = Vec::new();
        for kv in self
            .inner
            .tree
            .range(start..vec![record::FEED + 1])
            .take(limit)
        {
            let (k, v) = kv?;
            out.push((decode_feed_key(&k)?, record::decode(&v)?));
        }
        Ok(out)
    }

    /// The raw bytes of one change of a document, found by its hash.
    pub async fn change(&self, key: &DocKey, hash: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Ok(None);
        };
        let doc = slot.doc.lock();
        Ok(doc.change_bytes(&ChangeHash(*hash)))
    }

    /// Forgets idempotency keys older than the configured TTL. Returns how many it removed.
    pub fn purge_idempotency_keys(&self) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(self.inner.config.idempotency_ttl.as_millis() as u64);
        let mut removed = 0;
        for kv in self.inner.tree.scan_prefix([record::IDEM]) {
            let (k, v) = kv?;
            let rec: IdemRecord = record::decode(&v)?;
            if rec.created_ms < cutoff {
                self.inner.tree.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    pub fn stats(&self) -> StoreStats {
        let inner = &*self.inner;
        StoreStats {
            node_id: inner.node.to_string(),
            hlc: crate::hlc::display_stamp(&inner.clock.now()),
            documents: inner.commit.documents(),
            bytes_on_disk: inner.tree.size_on_disk().unwrap_or(0),
            cache_hits: inner.hits.load(Ordering::Relaxed),
            cache_misses: inner.misses.load(Ordering::Relaxed),
            cache_bytes: inner.cache.weighted_size(),
            flushes: inner.commit.syncs(),
            replayed: inner.replayed,
        }
    }

    /// Flushes everything and stops the flusher. Writes after this fail.
    pub fn close(&self) -> Result<()> {
        self.inner.commit.stop();
        self.inner.tree.flush()?;
        Ok(())
    }
}

impl Inner {
    fn read_record(&self, key: &DocKey) -> Result<Option<DocRecord>> {
        self.tree
            .get(record::doc_key(record::DOC, key))?
            .map(|v| record::decode(&v))
            .transpose()
    }

    fn idem_lookup(&self, key: &str) -> Result<Option<IdemRecord>> {
        let Some(v) = self.tree.get(record::idem_key(key))? else {
            return Ok(None);
        };
        let rec: IdemRecord = record::decode(&v)?;
        let ttl = self.config.idempotency_ttl.as_millis() as u64;
        Ok((rec.created_ms + ttl >= now_ms()).then_some(rec))
    }

    /// The document with queued writes, the cached one, or the one on disk, and the sequence
    /// number of its last queued write. Callers hold the document's lock.
    fn current_slot(&self, key: &DocKey) -> Result<(Arc<Slot>, Option<u64>)> {
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
                Document::load(actor, snapshot, chunks)?
            }
        };
        let stored = rec.as_ref().map(|r| r.stored_bytes).unwrap_or(0);
        Ok((
            Arc::new(Slot {
                doc: Mutex::new(doc),
                rec: Mutex::new(rec),
                weight: AtomicU64::new(weight(stored)),
            }),
            None,
        ))
    }

    /// An existing document whose state is durable, with its lock held: waits for queued
    /// writes (no new ones can start while the lock is held). `None` if it was never written.
    async fn settled_slot(
        &self,
        key: &DocKey,
    ) -> Result<Option<(Arc<Slot>, tokio::sync::MutexGuard<'_, ()>)>> {
        let lock = self.doc_locks[key.stripe(DOC_STRIPES)].lock().await;
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

    /// Drops a document from memory after a failure left it ahead of what was queued.
    fn forget(&self, key: &DocKey) {
        self.cache.invalidate(key);
        self.pending.lock().remove(key);
    }

    /// Queues one applied edit as one batch. Returns its sequence number (`None` when there was
    /// nothing to write), the answer to give, and the document's new cache weight.
    fn persist(
        &self,
        key: &DocKey,
        doc: &Document,
        prev: Option<DocRecord>,
        applied: &Applied,
        stamp: &Timestamp,
        idem: Option<&Idempotency>,
    ) -> Result<(Option<u64>, WriteOutcome, u64, DocRecord)> {
        let state = doc.state();
        let value = match state {
            State::Live => serde_json::to_string(&doc.value()).expect("JSON values serialize"),
            _ => "null".to_owned(),
        };
        let version = doc.version();
        let outcome = WriteOutcome {
            created: applied.before != State::Live && state == State::Live,
            deleted: state == State::Deleted,
            value: value.clone(),
            version: version.clone(),
        };
        let was_live = prev.as_ref().is_some_and(|r| r.state == State::Live);
        let mut rec = prev.unwrap_or(DocRecord {
            state: State::Absent,
            version: String::new(),
            json: String::new(),
            heads: vec![],
            incr_base: 0,
            incr_count: 0,
            stored_bytes: 0,
        });
        let mut ops: Vec<Op> = Vec::with_capacity(5);
        let mut docs_delta = 0;
        if let Some((hash, bytes)) = &applied.change {
            if rec.incr_count + 1 >= self.config.compact_every {
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
                ops.push((
                    record::increment_key(key, rec.incr_base + rec.incr_count),
                    Some(record::wrap(bytes)),
                ));
                rec.incr_count += 1;
                rec.stored_bytes += bytes.len() as u64;
            }
            let entry = FeedEntry {
                collection: key.collection().into(),
                id: key.id().into(),
                hash: hash.0,
            };
            ops.push((record::feed_key(stamp), Some(record::encode(&entry))));
            rec.state = state;
            rec.version = version;
            rec.json = value;
            rec.heads = doc.heads().iter().map(|h| h.0).collect();
            ops.push((
                record::doc_key(record::DOC, key),
                Some(record::encode(&rec)),
            ));
            docs_delta = (state == State::Live) as i64 - was_live as i64;
        }
        if let Some(i) = idem {
            let r = IdemRecord {
                fingerprint: i.fingerprint.clone(),
                created_ms: now_ms(),
                outcome: outcome.clone(),
            };
            ops.push((record::idem_key(&i.key), Some(record::encode(&r))));
        }
        let weight = weight(rec.stored_bytes);
        if ops.is_empty() {
            return Ok((None, outcome, weight, rec));
        }
        let seq = self.commit.submit(docs_delta, |_| ops)?;
        Ok((Some(seq), outcome, weight, rec))
    }
}

/// Estimated memory of a cached document. Measured: a fresh automerge document with one small
/// change takes about 8 KiB of heap for 226 bytes saved; ops expand in memory to a multiple of
/// their compressed size.
fn weight(stored_bytes: u64) -> u64 {
    8192 + stored_bytes * 24
}

fn live_view(id: &str, rec: DocRecord) -> Option<DocView> {
    (rec.state == State::Live).then(|| DocView {
        id: id.to_owned(),
        json: rec.json,
        version: rec.version,
    })
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("db")
}

fn get_meta(db: &sled::Db, name: &str) -> Result<Option<String>> {
    Ok(db
        .get(record::meta_key(name))?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

fn last_stamp(db: &sled::Db) -> Result<Option<Timestamp>> {
    match db.scan_prefix([record::FEED]).next_back() {
        Some(kv) => Ok(Some(decode_feed_key(&kv?.0)?)),
        None => Ok(None),
    }
}

fn decode_feed_key(k: &[u8]) -> Result<Timestamp> {
    if k.len() != 1 + 8 + 16 {
        return Err(Error::Corrupt("feed key of the wrong length".into()));
    }
    let time = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
    let id = u128::from_le_bytes(k[9..25].try_into().expect("16 bytes"));
    let id = uhlc::ID::try_from(id)
        .map_err(|_| Error::Corrupt("feed key with a zero clock id".into()))?;
    Ok(Timestamp::new(uhlc::NTP64(time), id))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
