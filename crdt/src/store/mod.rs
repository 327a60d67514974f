//! The durable document store: sled underneath, a write-ahead log in front of it, a
//! byte-bounded cache of automerge documents, per-document write locks and group commit.
//!
//! Every change reaches a document the same way (`write`): take the document's lock; load it
//! (cache or disk); change it in memory (on error, nothing changed); queue the new changes, the
//! new materialized record, their feed entries and any idempotency record as one batch; wait
//! until its group is synced to the log and applied to sled; then announce the change. Local
//! writes, changes merged from peers and changes accepted from clients differ only in how they
//! change the document. sled only ever holds durable writes, so reads take no lock and never
//! wait.
//!
//! # Layout
//! - `cache`: cached documents, pinned while they have writes queued.
//! - `write`: the one commit path, and local writes on it (traced: `traces`).
//! - `merge`: changes merged from peers, on the same path.
//! - `traces`: the trace id each recent local change was made under, for the feed.
//! - `client`: automerge sync messages from and to clients.
//! - `contracts`: each collection's contract, from its schema document.
//! - `docids`: every document held: by automerge-repo id, and by digest leaf.
//! - `read`: reads of documents and collections.
//! - `feed`: the stamps of local changes, in flight and durable; the feed peers pull.
//! - `events`: change events, as they became visible here, for the live change feed.
//! - `digest`: the anti-entropy digest.
//! - `idempotency`: idempotency keys.
//! - `scrub`: checksums checked on load, damaged documents, the background scrub.
//! - `heal`: rebuilding a damaged document from its intact pieces and the peers' copies.

mod backup;
mod cache;
mod client;
mod contracts;
mod digest;
mod docids;
mod events;
mod feed;
mod heal;
mod idempotency;
mod merge;
mod placed;
mod read;
mod repair;
mod scrub;
mod space;
mod traces;
mod write;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::ChangeHash;
use parking_lot::Mutex;
use uhlc::Timestamp;

use crate::commit::GroupCommit;
use crate::error::{Error, Result};
use crate::hlc::{Clock, NodeId, DEFAULT_MAX_DRIFT};
use crate::key::DocKey;
use crate::record::{self, FeedEntry, WriteOutcome};

pub use backup::{format as backup_format, BackupPage};
pub use client::{ClientSynced, DocEvents, Missed};
pub use contracts::{Contracts, SCHEMAS};
pub use digest::{DIGEST_BUCKETS, DIGEST_LEAVES, LEAVES_PER_BUCKET};
pub use events::{EventBounds, EventWatch};
pub use feed::Progress;
pub use heal::{HealSources, Healed};
pub use idempotency::Idempotency;
pub use repair::{check_log, repair_log, repair_log_accepting_loss, LogReport, SegmentReport};
pub use scrub::{Finding, ScrubBatch, ScrubStatus};
pub use space::DEFAULT_FLOOR_BYTES;

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
    /// Bytes to keep free on the data dir's filesystem (see `space`); `None`: the smaller of
    /// [`DEFAULT_FLOOR_BYTES`] and 5% of the filesystem.
    pub min_free_bytes: Option<u64>,
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
            min_free_bytes: None,
        }
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
    pub state: crate::doc::State,
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
    /// `after` is older than the oldest entry the feed keeps (see [`Store::trim_feed`]): the
    /// page is empty, and a reader holding everything this node held when it answered may go
    /// on from `upto` (which every durable local change is at or before).
    pub trimmed: bool,
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
    /// Changes held for damaged documents until they are healed.
    pub held: usize,
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
    pub storage: Storage,
    pub scrub: ScrubStatus,
}

/// How the store's storage stands (`/readyz`, `/v1/status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    /// Free bytes on the data dir's filesystem, and the floor kept free.
    pub free_bytes: u64,
    pub floor_bytes: u64,
    /// The ballast file's size while it is in place (see `space`), else 0.
    pub ballast_bytes: u64,
    pub problem: Option<StorageProblem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageProblem {
    /// Below the floor: new data is refused until space is freed; reads go on.
    LowSpace(String),
    /// A log sync, sled write or checkpoint failed (its cause named): writes are refused until
    /// the node is restarted.
    Failed(String),
    /// Batches were lost in a log repair (see `repair`): local writes are refused until a
    /// complete anti-entropy pass with every peer ([`Store::recovered`]).
    Recovering(String),
    /// The node was removed from the cluster ([`Store::retire`]): it takes no local write.
    Retired(String),
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
    /// Documents and bookkeeping.
    tree: sled::Db,
    /// The feed and change events (see [`crate::dbs`]).
    streams: sled::Db,
    node: NodeId,
    clock: Clock,
    config: StoreConfig,
    /// Documents in memory: the cache, pinned documents, per-document locks (see `cache`).
    docs: cache::DocCache,
    idem: idempotency::IdemKeys,
    commit: GroupCommit,
    feed: feed::FeedState,
    /// Every document whose durable state changed (any kind of write), for sync connections.
    doc_changed: tokio::sync::broadcast::Sender<DocKey>,
    digests: digest::Digests,
    doc_ids: docids::DocIds,
    contracts: Mutex<contracts::Registry>,
    events: events::EventLog,
    space: space::Space,
    /// Documents found damaged (see `scrub`).
    damage: scrub::Damage,
    /// Why local writes wait for the peers after a log repair that lost batches.
    recovering: Mutex<Option<String>>,
    /// Set once the node is removed from the cluster: local writes are refused.
    retired: Mutex<Option<String>>,
    traces: traces::Traces,
    /// Where placed collections live (see `placed`).
    placement: parking_lot::RwLock<Arc<crate::placement::Placement>>,
    replayed: u64,
}

/// How many document-change notices a slow listener may fall behind before it is told it
/// missed some (see [`DocEvents`]).
const DOC_EVENTS: usize = 16_384;

impl Store {
    /// Opens (or creates) the store in `config.path`. Fails if another process has it open.
    pub fn open(config: StoreConfig) -> Result<Store> {
        // first: on a nearly full disk, the ballast is released before sled needs the room
        let space = space::Space::new(config.path.clone(), config.min_free_bytes)?;
        let dbs = crate::dbs::Dbs::open(&config.path, config.sled_cache_bytes)?;
        let db = dbs.main.clone();

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
        let wal_dir = config.path.join("wal");
        let (seq, documents, replayed) = crate::commit::recover(&dbs, &wal_dir)?;
        if replayed > 0 {
            tracing::info!(replayed, "recovered writes from the write-ahead log");
        }

        let clock = Clock::with_physical(&node, config.max_drift, config.physical_clock);
        let feed_trimmed = feed::trimmed(&dbs.streams)?;
        // the feed may be trimmed whole: its mark still holds the newest stamp it had
        let last = feed::last_stamp(&dbs.streams)?.max(feed_trimmed);
        if let Some(last) = last {
            clock.observe(&last).map_err(|_| {
                Error::Unavailable(format!(
                    "this machine's clock is behind the newest stored change ({}) by more than the \
                     maximum drift; fix the clock before starting",
                    crate::hlc::display_stamp(&last)
                ))
            })?;
        }

        let docs = cache::DocCache::new(config.cache_bytes);
        let doc_ids = docids::DocIds::default();
        let damage = scrub::Damage::default();
        // changes kept for their documents (a log repair, a merge into a damaged one)
        for k in db.scan_prefix([record::HELD]).keys() {
            let k = k?;
            if let Ok(key) = DocKey::decode(&k[1..k.len().saturating_sub(33)]) {
                damage.mark(&key, "it has changes held for it, to merge");
            }
        }
        let recovering = get_meta(&db, repair::RECOVERING)?;
        let digests = digest::initial(&db, &damage, |key, leaf| doc_ids.insert_in(key, leaf))?;
        let events = events::EventLog::open(&config.path, dbs.streams.clone())?;
        let idem = idempotency::IdemKeys::new(db.clone(), config.idempotency_ttl);
        let streams = dbs.streams.clone();
        let commit = GroupCommit::start(dbs, wal_dir, seq, documents)?;
        let placement = placed::of_record(
            db.get(record::doc_key(
                record::DOC,
                &crate::placement::Placement::key(),
            ))?
            .map(|v| record::decode::<record::DocRecord>(&v))
            .transpose()
            .ok()
            .flatten()
            .as_ref(),
        );
        Ok(Store {
            inner: Arc::new(Inner {
                tree: db,
                streams,
                node,
                clock,
                config,
                docs,
                idem,
                commit,
                feed: feed::FeedState::new(last, feed_trimmed),
                doc_changed: tokio::sync::broadcast::Sender::new(DOC_EVENTS),
                digests,
                doc_ids,
                contracts: Mutex::default(),
                events,
                space,
                damage,
                recovering: Mutex::new(recovering),
                retired: Mutex::new(None),
                traces: Default::default(),
                placement: parking_lot::RwLock::new(Arc::new(placement)),
                replayed: replayed as u64,
            }),
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.inner.node
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Ready for traffic: open, no flush has failed, and space for writes.
    pub fn is_ready(&self) -> bool {
        self.storage().problem.is_none()
    }

    /// Free space, the floor, and what keeps writes from being taken, if anything.
    pub fn storage(&self) -> Storage {
        let space = &self.inner.space;
        let problem = match (self.inner.commit.check(), space.check(space::Need::New)) {
            (Err(e), _) => Some(StorageProblem::Failed(e.to_string())),
            (Ok(()), Err(e)) => Some(StorageProblem::LowSpace(e.to_string())),
            (Ok(()), Ok(())) => match self.inner.retired.lock().clone() {
                Some(why) => Some(StorageProblem::Retired(why)),
                None => self
                    .inner
                    .recovering
                    .lock()
                    .clone()
                    .map(StorageProblem::Recovering),
            },
        };
        Storage {
            free_bytes: space.free(),
            floor_bytes: space.floor,
            ballast_bytes: space.ballast_bytes(),
            problem,
        }
    }

    pub fn stats(&self) -> StoreStats {
        let inner = &*self.inner;
        let (cache_hits, cache_misses, cache_bytes) = inner.docs.stats();
        StoreStats {
            node_id: inner.node.to_string(),
            hlc: crate::hlc::display_stamp(&inner.clock.now()),
            documents: inner.commit.documents(),
            bytes_on_disk: inner.tree.size_on_disk().unwrap_or(0)
                + inner.streams.size_on_disk().unwrap_or(0),
            cache_hits,
            cache_misses,
            cache_bytes,
            flushes: inner.commit.syncs(),
            replayed: inner.replayed,
            storage: self.storage(),
            scrub: self.scrub_status(),
        }
    }

    /// From now on local writes are refused with `why` ([`Error::Retired`]): the node was
    /// removed from the cluster, so a change made here would reach no other region. Merges
    /// from peers go on.
    pub fn retire(&self, why: String) {
        *self.inner.retired.lock() = Some(why);
    }

    /// Why local writes are refused after a log repair that lost batches, if they are.
    pub fn recovering(&self) -> Option<String> {
        self.inner.recovering.lock().clone()
    }

    /// Every peer has given back what it holds: local writes resume (durably).
    pub async fn recovered(&self) -> Result<()> {
        let seq = self
            .inner
            .commit
            .submit(0, |_| vec![(record::meta_key(repair::RECOVERING), None)])?;
        self.inner.commit.durable(seq).await?;
        if let Some(why) = self.inner.recovering.lock().take() {
            tracing::info!(
                why,
                "every peer gave back what it holds; local writes resume"
            );
        }
        Ok(())
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

    /// Flushes everything and stops the flusher. Writes after this fail.
    pub fn close(&self) -> Result<()> {
        self.inner.commit.stop();
        self.inner.tree.flush()?;
        self.inner.streams.flush()?;
        Ok(())
    }
}

fn get_meta(db: &sled::Db, name: &str) -> Result<Option<String>> {
    Ok(db
        .get(record::meta_key(name))?
        .map(|v| String::from_utf8_lossy(&v).into_owned()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
