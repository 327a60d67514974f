//! The durable document store: sled underneath, a write-ahead log in front of it, a
//! byte-bounded cache of automerge documents, per-document write locks and group commit.
//!
//! A write, in order: take the idempotency-key lock (if any) and the document's lock; load the
//! document (cache or disk); apply the edit in memory (on error, roll back: nothing changed);
//! queue the change, the new materialized record, the feed entry and the idempotency record as
//! one batch; wait until its group is synced to the log and applied to sled; answer. sled only
//! ever holds durable writes, so reads take no lock and never wait.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::ChangeHash;
use moka::sync::Cache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use uhlc::Timestamp;

use crate::commit::GroupCommit;
use crate::doc::{Applied, Conflict, Document, Edit, RemoteChange, State};
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
    /// The physical clock under the HLC (tests inject skewed ones).
    pub physical_clock: fn() -> uhlc::NTP64,
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
            physical_clock: uhlc::system_time_clock,
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
    /// The document's heads right after the write (empty for a replayed answer).
    pub heads: Vec<ChangeHash>,
}

/// A document's stored state, whatever it is, with the heads that name it.
#[derive(Debug, Clone, PartialEq)]
pub struct DocState {
    pub state: State,
    /// The document's JSON, serialized (`null` unless live).
    pub json: String,
    pub version: String,
    pub heads: Vec<ChangeHash>,
}

/// A page of the local change feed (see [`Store::feed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedPage {
    pub entries: Vec<(Timestamp, FeedEntry)>,
    /// Every local change stamped at or before `upto` is in `entries` or was before `after`.
    pub upto: Option<Timestamp>,
    /// The page stopped at its limit: more durable entries follow.
    pub more: bool,
}

/// What [`Store::merge_remote`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Merged {
    /// Documents that gained changes.
    pub documents: usize,
    /// Changes applied (changes already present are not counted).
    pub changes: usize,
    /// Documents holding changes whose dependencies have not arrived (not applied yet).
    pub missing_deps: Vec<DocKey>,
}

/// Notices of local writes finishing, so the feed may have grown (see [`Store::subscribe`]).
#[derive(Debug)]
pub struct Progress(tokio::sync::watch::Receiver<u64>);

impl Progress {
    /// Waits for the next local write to finish. False once the store is gone.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

/// How many buckets the anti-entropy digest has.
pub const DIGEST_BUCKETS: usize = 1024;

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
/// Longest run of feed entries one page holds, in change bytes.
const FEED_PAGE_BYTES: usize = 1 << 20;
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
    stamps: Mutex<Stamps>,
    /// Bumped whenever a local write leaves flight, so feed readers can wait for news.
    feed_moved: tokio::sync::watch::Sender<u64>,
    /// Per bucket of document keys, the XOR of a digest of each document's key and version.
    digests: Mutex<Vec<u64>>,
    replayed: u64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Stamps handed to local writes.
#[derive(Default)]
struct Stamps {
    /// Stamps of writes not yet durable (or failed). The feed is served only below the smallest,
    /// so a peer's cursor never moves past a change that becomes durable later.
    inflight: BTreeSet<Timestamp>,
    /// The newest stamp handed out (or stored, at start-up).
    last: Option<Timestamp>,
}

/// Removes a stamp from the in-flight set when the write is durable or has failed.
struct StampGuard<'a> {
    inner: &'a Inner,
    stamp: Timestamp,
}

impl Drop for StampGuard<'_> {
    fn drop(&mut self) {
        self.inner.stamps.lock().inflight.remove(&self.stamp);
        // after the removal: a feed reader woken now sees the change
        self.inner.feed_moved.send_modify(|n| *n += 1);
    }
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

        let clock = Clock::with_physical(&node, config.max_drift, config.physical_clock);
        let last = last_stamp(&db)?;
        if let Some(last) = last {
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
        let digests = initial_digests(&db)?;
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
                stamps: Mutex::new(Stamps {
                    inflight: BTreeSet::new(),
                    last,
                }),
                feed_moved: tokio::sync::watch::Sender::new(0),
                digests: Mutex::new(digests),
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
                    heads: vec![],
                });
            }
        }

        let doc_lock = inner.doc_locks[key.stripe(DOC_STRIPES)].lock().await;
        // Only now: a writer still waiting for the document's lock cannot join this group, and
        // the flusher must not wait for it.
        let in_progress = inner.commit.begin();
        let (slot, queued_before) = inner.current_slot(key)?;
        let prev = slot.rec.lock().clone();
        let stamp_guard = inner.stamp();
        let stamp = stamp_guard.stamp;
        let (seq, outcome, heads) = {
            let mut doc = slot.doc.lock();
            let applied = doc.apply(&edit, &stamp)?;
            let heads = doc.heads();
            match inner.persist(key, &doc, prev, &applied, &stamp, idem.as_ref()) {
                Ok((Some(seq), outcome, weight, rec)) => {
                    *slot.rec.lock() = Some(rec);
                    slot.weight.store(weight, Ordering::Relaxed);
                    inner
                        .pending
                        .lock()
                        .insert(key.clone(), (slot.clone(), seq));
                    (Some(seq), outcome, heads)
                }
                Ok((None, outcome, _, _)) => (None, outcome, heads),
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
        drop(stamp_guard);
        Ok(Written {
            outcome,
            replayed: false,
            heads,
        })
    }

    /// Merges changes made on other nodes (parsed and checked by [`RemoteChange::parse`]) into
    /// their documents, and stores `meta` (replication bookkeeping, under `M`) after them, all
    /// through group commit. Returns once everything is durable; the bookkeeping is durable only
    /// if every change before it is. Changes already present are ignored; changes whose
    /// dependencies are missing wait in memory (and are reported) until those arrive.
    pub async fn merge_remote(
        &self,
        docs: Vec<(DocKey, Vec<RemoteChange>)>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<Merged> {
        let inner = &*self.inner;
        inner.commit.check()?;
        // one pass per document, in the order documents first appear
        let mut order: Vec<DocKey> = Vec::new();
        let mut grouped: HashMap<DocKey, Vec<RemoteChange>> = HashMap::new();
        for (key, changes) in docs {
            match grouped.get_mut(&key) {
                Some(all) => all.extend(changes),
                None => {
                    order.push(key.clone());
                    grouped.insert(key, changes);
                }
            }
        }
        let docs = order.into_iter().map(|k| {
            let changes = grouped.remove(&k).unwrap_or_default();
            (k, changes)
        });
        let mut merged = Merged::default();
        let mut pinned: Vec<(DocKey, u64)> = Vec::new();
        let mut last_seq = None;
        for (key, changes) in docs {
            let doc_lock = inner.doc_locks[key.stripe(DOC_STRIPES)].lock().await;
            let in_progress = inner.commit.begin();
            let (slot, queued_before) = inner.current_slot(&key)?;
            last_seq = last_seq.max(queued_before);
            let prev = slot.rec.lock().clone();
            let mut doc = slot.doc.lock();
            let before = doc.heads();
            if let Err(e) = doc.merge_remote(&changes) {
                drop(doc);
                inner.forget(&key);
                return Err(e);
            }
            if doc.has_missing_deps() {
                merged.missing_deps.push(key.clone());
            }
            let new = doc.hashed_changes_since(&before);
            if new.is_empty() {
                drop(doc);
                // keep what waits for its dependencies, while the cache can
                inner.cache.insert(key.clone(), slot);
                continue;
            }
            let state = doc.state();
            let value = match state {
                State::Live => serde_json::to_string(&doc.value()).expect("JSON values serialize"),
                _ => "null".to_owned(),
            };
            let (ops, rec, docs_delta) =
                inner.record_changes(&key, &doc, prev, &new, None, state, value, doc.version());
            let seq = match inner.commit.submit(docs_delta, |_| ops) {
                Ok(seq) => seq,
                Err(e) => {
                    drop(doc);
                    inner.forget(&key);
                    return Err(e);
                }
            };
            slot.weight
                .store(weight(rec.stored_bytes), Ordering::Relaxed);
            *slot.rec.lock() = Some(rec);
            drop(doc);
            inner
                .pending
                .lock()
                .insert(key.clone(), (slot.clone(), seq));
            drop(in_progress);
            inner.cache.insert(key.clone(), slot);
            drop(doc_lock);
            merged.documents += 1;
            merged.changes += new.len();
            pinned.push((key, seq));
            last_seq = Some(seq);
        }
        if !meta.is_empty() {
            let ops = meta
                .into_iter()
                .map(|(name, v)| (record::meta_key(&name), Some(v)))
                .collect();
            last_seq = Some(inner.commit.submit(0, |_| ops)?);
        }
        if let Some(seq) = last_seq {
            inner.commit.durable(seq).await?;
        }
        let mut pending = inner.pending.lock();
        for (key, seq) in pinned {
            if pending.get(&key).is_some_and(|(_, s)| *s == seq) {
                pending.remove(&key);
            }
        }
        Ok(merged)
    }

    /// A document's stored state (durable), or `None` if it was never written.
    pub fn read_state(&self, key: &DocKey) -> Result<Option<DocState>> {
        Ok(self.inner.read_record(key)?.map(|r| DocState {
            state: r.state,
            json: if r.state == State::Live {
                r.json
            } else {
                "null".into()
            },
            version: r.version,
            heads: r.heads.into_iter().map(ChangeHash).collect(),
        }))
    }

    /// The changes of a document after `heads` (see [`Document::changes_since`]); empty if the
    /// document was never written.
    pub async fn changes_since(&self, key: &DocKey, heads: &[ChangeHash]) -> Result<Vec<Vec<u8>>> {
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Ok(vec![]);
        };
        let doc = slot.doc.lock();
        Ok(doc.changes_since(heads))
    }

    /// True if the history of `heads` holds every change in `wanted` (false if this node lacks
    /// any of them). For checking session guarantees in tests.
    pub async fn history_includes(
        &self,
        key: &DocKey,
        heads: &[ChangeHash],
        wanted: &[ChangeHash],
    ) -> Result<bool> {
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Ok(heads.is_empty() && wanted.is_empty());
        };
        let doc = slot.doc.lock();
        Ok(doc.history_includes(heads, wanted))
    }

    /// The anti-entropy digest: one value per bucket of document keys, equal on two nodes when
    /// (barring hash collisions) they hold the same versions of the same documents.
    pub fn digests(&self) -> Vec<u64> {
        self.inner.digests.lock().clone()
    }

    /// The heads of every stored document in the given buckets (a scan of all records).
    pub fn bucket_heads(&self, buckets: &BTreeSet<u32>) -> Result<Vec<(DocKey, Vec<ChangeHash>)>> {
        let mut out = Vec::new();
        for kv in self.inner.tree.scan_prefix([record::DOC]) {
            let (k, v) = kv?;
            let key = DocKey::decode(&k[1..])?;
            if !buckets.contains(&(bucket_of(&key) as u32)) {
                continue;
            }
            let rec: DocRecord = record::decode(&v)?;
            out.push((key, rec.heads.into_iter().map(ChangeHash).collect()));
        }
        Ok(out)
    }

    /// The newest stamp given to a local change (stored or in flight).
    pub fn last_local_stamp(&self) -> Option<Timestamp> {
        self.inner.stamps.lock().last
    }

    /// Notices of local writes finishing, for serving the feed by long poll. Subscribe before
    /// reading the feed, so that nothing finishing in between is missed.
    pub fn subscribe(&self) -> Progress {
        Progress(self.inner.feed_moved.subscribe())
    }

    /// Replication bookkeeping stored under `M name`, for names starting with `prefix`.
    pub fn meta_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for kv in self.inner.tree.scan_prefix(record::meta_key(prefix)) {
            let (k, v) = kv?;
            out.push((String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec()));
        }
        Ok(out)
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

    /// Local changes in HLC order after `after`: the change feed peers pull. At most `limit`
    /// entries (and about 1 MiB of changes), only below the stamp of any local write still in
    /// flight, so a later page never holds a change stamped before this page's `upto`.
    pub fn feed(&self, after: Option<&Timestamp>, limit: usize) -> Result<FeedPage> {
        let bound = {
            let stamps = self.inner.stamps.lock();
            match stamps.inflight.first() {
                Some(first) => Err(*first),
                // nothing in flight: every later local stamp is greater than this one
                None => Ok(self.inner.clock.now()),
            }
        };
        let below = match bound {
            Ok(now) | Err(now) => now,
        };
        let start = feed_start(after);
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for kv in self.inner.tree.range(start..record::feed_key(&below)) {
            if entries.len() >= limit || bytes >= FEED_PAGE_BYTES {
                more = true;
                break;
            }
            let (k, v) = kv?;
            let entry: FeedEntry = record::decode(&v)?;
            bytes += entry.change.len();
            entries.push((decode_feed_key(&k)?, entry));
        }
        let last = entries.last().map(|(ts, _)| *ts).or(after.copied());
        let upto = match bound {
            Ok(now) if !more => Some(now),
            _ => last,
        };
        Ok(FeedPage {
            entries,
            upto,
            more,
        })
    }

    /// The newest local change's stamp and how many local changes follow `after` (counted up
    /// to `cap`), for reporting how far behind a peer is.
    pub fn feed_backlog(
        &self,
        after: Option<&Timestamp>,
        cap: usize,
    ) -> Result<(Option<Timestamp>, usize)> {
        let latest = last_stamp(&self.inner.tree)?;
        let start = feed_start(after);
        let n = self
            .inner
            .tree
            .range(start..vec![record::FEED + 1])
            .keys()
            .take(cap)
            .count();
        Ok((latest, n))
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
    /// A stamp for a local write, registered as in flight until the guard drops.
    fn stamp(&self) -> StampGuard<'_> {
        let mut stamps = self.stamps.lock();
        let stamp = self.clock.now();
        stamps.inflight.insert(stamp);
        stamps.last = Some(stamp);
        StampGuard { inner: self, stamp }
    }

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
        let changes: Vec<(ChangeHash, Vec<u8>)> = applied.change.iter().cloned().collect();
        let (mut ops, rec, docs_delta) =
            self.record_changes(key, doc, prev, &changes, Some(stamp), state, value, version);
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

    /// The storage operations for new changes of a document (increments, or a snapshot every
    /// `compact_every`; the feed entry of a local change; the new record), the new record, and
    /// the change in the live-document count. Updates the anti-entropy digest.
    #[allow(clippy::too_many_arguments)]
    fn record_changes(
        &self,
        key: &DocKey,
        doc: &Document,
        prev: Option<DocRecord>,
        changes: &[(ChangeHash, Vec<u8>)],
        feed: Option<&Timestamp>,
        state: State,
        value: String,
        version: String,
    ) -> (Vec<Op>, DocRecord, i64) {
        let was_live = prev.as_ref().is_some_and(|r| r.state == State::Live);
        let old_version = prev.as_ref().map(|r| r.version.clone());
        let mut rec = prev.unwrap_or(DocRecord {
            state: State::Absent,
            version: String::new(),
            json: String::new(),
            heads: vec![],
            incr_base: 0,
            incr_count: 0,
            stored_bytes: 0,
        });
        let mut ops: Vec<Op> = Vec::with_capacity(4 + changes.len());
        if changes.is_empty() {
            return (ops, rec, 0);
        }
        if rec.incr_count + changes.len() as u64 >= self.config.compact_every {
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
            for (_, bytes) in changes {
                ops.push((
                    record::increment_key(key, rec.incr_base + rec.incr_count),
                    Some(record::wrap(bytes)),
                ));
                rec.incr_count += 1;
                rec.stored_bytes += bytes.len() as u64;
            }
        }
        if let (Some(stamp), [(hash, bytes)]) = (feed, changes) {
            let entry = FeedEntry {
                collection: key.collection().into(),
                id: key.id().into(),
                hash: hash.0,
                change: bytes.clone(),
            };
            ops.push((record::feed_key(stamp), Some(record::encode(&entry))));
        }
        {
            let mut digests = self.digests.lock();
            let b = bucket_of(key);
            if let Some(old) = old_version.filter(|v| !v.is_empty()) {
                digests[b] ^= doc_digest(key, &old);
            }
            digests[b] ^= doc_digest(key, &version);
        }
        rec.state = state;
        rec.version = version;
        rec.json = value;
        rec.heads = doc.heads().iter().map(|h| h.0).collect();
        ops.push((
            record::doc_key(record::DOC, key),
            Some(record::encode(&rec)),
        ));
        let docs_delta = (state == State::Live) as i64 - was_live as i64;
        (ops, rec, docs_delta)
    }
}

/// The digest bucket of a document key (stable across nodes and versions).
fn bucket_of(key: &DocKey) -> usize {
    let h = Sha256::digest(key.encode());
    u16::from_be_bytes([h[0], h[1]]) as usize % DIGEST_BUCKETS
}

/// One document's part of its bucket's digest.
fn doc_digest(key: &DocKey, version: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key.encode());
    h.update([0]);
    h.update(version.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

fn initial_digests(db: &sled::Db) -> Result<Vec<u64>> {
    let mut digests = vec![0u64; DIGEST_BUCKETS];
    for kv in db.scan_prefix([record::DOC]) {
        let (k, v) = kv?;
        let key = DocKey::decode(&k[1..])?;
        let rec: DocRecord = record::decode(&v)?;
        digests[bucket_of(&key)] ^= doc_digest(&key, &rec.version);
    }
    Ok(digests)
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

/// The first feed key after `after` (the whole feed for `None`).
fn feed_start(after: Option<&Timestamp>) -> Vec<u8> {
    match after {
        Some(ts) => {
            let mut k = record::feed_key(ts);
            k.push(0);
            k
        }
        None => vec![record::FEED],
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
