//! One node's replication: the answering side (feed, digest, repair) and, per peer, a feed
//! puller and an anti-entropy worker; plus session-token waits and the cluster status.
//!
//! Bookkeeping kept durable with the merged changes (one group commit, after them):
//! - `sync/cursor/<peer>`: every change made on `peer` stamped at or before this HLC stamp is
//!   here. Advanced only from the peer's own feed, which is served in stamp order and only
//!   below any write still in flight there, so it never skips a change.
//! - `sync/seen/<node>`: the newest stamp of any change by `node` merged here, by whatever
//!   path. Session tokens name it, so a token always covers what a read showed.
//!
//! # Layout
//! - this file: the settings, the transport a node reaches peers through, the replica's state
//!   (the peers followed now, replaced as the membership changes), start and stop;
//! - `serve`: answering peers (feed pages, digests, repairs, subscriptions);
//! - `engine`: what to do next toward a peer (subscribe, pull, catch up, pause), as a state
//!   machine without I/O or timers that tests drive step by step; and the repair schedule;
//! - `page`: what a feed page means, as effects (cursor, seen stamps, merge, repair), without
//!   I/O;
//! - `link`: calls to a peer, with its link's bookkeeping (bytes, successes, failures);
//! - `merge`: checking what peers send (parse, drift) and merging it with its bookkeeping;
//! - `follow`: following each peer's feed, carrying out the engine's steps and the page's
//!   effects (it uses `repair` for catch-ups; `repair` uses `link` and `merge`, not `follow`);
//! - `repair`: anti-entropy passes;
//! - `trim`: trimming this node's feed once every peer has read it (or past a retention window);
//! - `heal`: the store's scrub, and healing damaged documents from the peers;
//! - `session`: session tokens, and waiting until this node covers one;
//! - `status`: what this node knows of each peer's link, the reachability rule, `/v1/cluster`;
//! - `members`: the membership set (flags and the `_regions/members` document), pure;
//! - `regions`: following the set while the node runs: peers started and stopped, changes;
//! - `placing`: changing where a collection lives (the store applies it).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_crdt::{NodeId, Store};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, watch};
use uhlc::Timestamp;

mod engine;
mod follow;
mod heal;
mod link;
mod members;
mod merge;
mod page;
mod placing;
mod regions;
mod repair;
mod serve;
mod session;
mod status;
mod trim;

pub use members::{check_url, MemberError, Members, Plan, MEMBERS, REGIONS};
pub use placing::{PlacedCollection, PlacementReport};
pub use regions::{RegionReport, RegionsError, RegionsReport, RemovedRegion};
pub use repair::RepairPass;
use status::PeerStatus;
pub use status::{ClusterReport, Lag, PeerReport};

/// A peer: its node id and where to reach it (a base URL for HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

/// Moves one request to a peer and brings back its answer. A failure is
/// [`Error::Unreachable`](crate::Error::Unreachable) (no answer) or
/// [`Error::Refused`](crate::Error::Refused) (an HTTP error): the caller marks the peer
/// unreachable, logs it and retries.
pub trait Transport: Send + Sync + 'static {
    /// One request, one answer (`POST /internal/rpc`).
    fn call(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, crate::Error>> + Send;

    /// Opens a subscription (`POST /internal/subscribe`): the answer's bytes arrive as chunks,
    /// cut anywhere; an `Err` item or the channel's end ends the stream. `timeout` bounds the
    /// opening only.
    fn open(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Chunks, crate::Error>> + Send;
}

/// The chunks of a streamed answer.
pub type Chunks = mpsc::Receiver<Result<Vec<u8>, crate::Error>>;

/// Replication settings.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    pub peers: Vec<Peer>,
    /// How long a feed request waits on the peer for news (long poll).
    pub feed_wait: Duration,
    /// How often a peer streaming its feed to this node sends a frame when it has no news. A
    /// peer silent for four heartbeats is reported unreachable; for twelve, its stream is
    /// dropped and reopened.
    pub heartbeat: Duration,
    /// Most changes per feed page.
    pub feed_batch: u32,
    /// Time between anti-entropy passes with each peer (jittered).
    pub anti_entropy_every: Duration,
    /// Time limit of one request, on top of any long-poll wait.
    pub call_timeout: Duration,
    /// Longest pause between retries of a failing peer (exponential, jittered).
    pub max_backoff: Duration,
    /// How to follow a peer's feed: one long-lived streamed answer (the default), or one long
    /// poll per batch. Kept selectable so that the benchmark can compare them in one run.
    pub feed_mode: FeedMode,
    /// How long this node's feed keeps changes for a peer that has not read them. A peer away
    /// longer catches up by anti-entropy instead.
    pub feed_retention: Duration,
    /// Time between trims of this node's feed (see `trim`).
    pub trim_every: Duration,
    /// Documents the scrub checks per second at most (0: no scrub), and how often a pass over
    /// every document begins (a pass longer than that is followed at once by the next).
    pub scrub_per_second: u32,
    pub scrub_every: Duration,
    /// How long a damaged document that could not be healed waits before the next try.
    pub heal_retry: Duration,
    /// The protocol versions this node speaks (`wire::Versions::ALL`; a node kept at the
    /// previous release's version speaks only that, see `--protocol-max`).
    pub versions: crate::wire::Versions,
}

/// See [`ReplicationConfig::feed_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMode {
    /// `Subscribe`: a frame per batch on one open answer (about 60 bytes of framing per batch).
    Stream,
    /// `Feed` with a wait: one HTTP request and answer per batch (about 375 bytes per batch).
    LongPoll,
}

impl ReplicationConfig {
    pub fn new(peers: Vec<Peer>) -> Self {
        ReplicationConfig {
            peers,
            feed_wait: Duration::from_secs(10),
            heartbeat: Duration::from_millis(250),
            feed_batch: 1000,
            anti_entropy_every: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(500),
            feed_mode: FeedMode::Stream,
            feed_retention: Duration::from_secs(24 * 3600),
            trim_every: Duration::from_secs(10),
            scrub_per_second: 100,
            scrub_every: Duration::from_secs(3600),
            heal_retry: Duration::from_secs(10),
            versions: crate::wire::Versions::ALL,
        }
    }

    /// How long a peer may be silent and still count as reachable. A stream brings a heartbeat
    /// at least every [`ReplicationConfig::heartbeat`]; a long poll may rightly wait `feed_wait`.
    pub fn silence_limit(&self) -> Duration {
        match self.feed_mode {
            FeedMode::Stream => self.heartbeat * 4,
            FeedMode::LongPoll => self.feed_wait + self.call_timeout,
        }
    }
}

/// Most bytes of changes one repair answer carries (it is also cut after a quarter of the
/// call timeout); the asker comes back for the rest.
const REPAIR_BYTES: usize = 4 << 20;
/// Buckets whose leaves one request asks for (64 KiB of leaf digests).
const LEAF_BUCKETS: usize = 128;
/// Leaves whose documents one repair request lists (about 4,000 documents at 1,000,000).
const REPAIR_LEAVES: usize = 256;
/// The longest a feed request may ask the answering node to wait.
const MAX_FEED_WAIT: Duration = Duration::from_secs(30);
/// A subscription ends after this long and the peer opens a new one (so no stream lives
/// forever on a stale connection).
const STREAM_LIFETIME: Duration = Duration::from_secs(300);
/// Changes counted when reporting how far behind a node is.
const BACKLOG_CAP: usize = 100_000;

/// A request whose session token this node cannot cover (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behind {
    /// The node whose changes are missing here: the region that has the data.
    pub node: String,
    /// The node is not in this cluster at all.
    pub unknown: bool,
    /// The node was removed from the cluster: what this node merged of it is all it will get
    /// from it, and it does not cover the token.
    pub removed: bool,
}

#[derive(Debug)]
struct PeerState {
    peer: Peer,
    cursor: Mutex<Option<Timestamp>>,
    /// One merge of this peer's feed at a time, so the cursor only moves forward.
    apply: tokio::sync::Mutex<()>,
    catching_up: AtomicBool,
    /// Ends a retry pause early: the peer just reached us, so the link works again.
    wake: tokio::sync::Notify,
    status: Mutex<PeerStatus>,
    /// Set when the peer leaves the set this node follows: its loops end.
    left: watch::Sender<bool>,
}

impl PeerState {
    fn new(peer: Peer, cursor: Option<Timestamp>) -> Self {
        PeerState {
            peer,
            cursor: Mutex::new(cursor),
            apply: Default::default(),
            catching_up: AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
            status: Default::default(),
            left: watch::Sender::new(false),
        }
    }

    fn has_left(&self) -> bool {
        *self.left.borrow()
    }

    /// Resolves once the peer has left the set.
    async fn leaving(&self) {
        let _ = self.left.subscribe().wait_for(|l| *l).await;
    }
}

/// One node's replication. Cheap to clone.
#[derive(Debug)]
pub struct Replica<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Replica<T> {
    fn clone(&self) -> Self {
        Replica {
            shared: self.shared.clone(),
        }
    }
}

#[derive(Debug)]
struct Shared<T> {
    store: Store,
    transport: T,
    config: ReplicationConfig,
    me: String,
    /// The peers followed now; membership changes replace it (see `regions`).
    peers: RwLock<Vec<Arc<PeerState>>>,
    /// What this node knows of the set beyond the peers it follows (see `regions`).
    membership: Mutex<Membership>,
    /// Whether `start` ran: peers added later start their loops at once.
    started: AtomicBool,
    seen: Mutex<HashMap<String, Timestamp>>,
    /// Bumped whenever `seen` changes, to know when [`Replica::token_text`] is stale.
    seen_epoch: AtomicU64,
    /// This node's token as text, and the (newest local stamp, seen epoch) it was made at.
    token_cache: Mutex<Option<(u64, u64, Arc<str>)>>,
    /// Bumped whenever a cursor moves, for session waits.
    cursor_moved: watch::Sender<u64>,
    drift_refusals: AtomicU64,
    /// Changes received for collections placed outside this region, dropped.
    outside_placement: AtomicU64,
    /// The node's background workers: this replica's loops run there and end with them.
    workers: crate::Workers,
}

/// The part of the membership that is not a followed peer.
#[derive(Debug, Default)]
struct Membership {
    /// Removed regions and when they were removed.
    removed: std::collections::BTreeMap<String, String>,
    /// This node was removed, at that time.
    me_removed: Option<String>,
    /// The last cursor into each peer's feed this node held, kept past a peer's removal (a
    /// session token naming a removed region is covered up to it) and for a peer re-followed
    /// at a new URL.
    cursors: HashMap<String, Timestamp>,
    /// Flags naming removed regions, already warned about.
    warned: std::collections::BTreeSet<String>,
}

fn cursor_name(peer: &str) -> String {
    format!("sync/cursor/{peer}")
}

fn seen_name(node: &str) -> String {
    format!("sync/seen/{node}")
}

fn stamp_meta(ts: &Timestamp) -> Vec<u8> {
    ts.to_string().into_bytes()
}

fn parse_meta(v: &[u8]) -> Option<Timestamp> {
    meridian_crdt::parse_stamp(std::str::from_utf8(v).ok()?)
}

fn secs_between(later: &Timestamp, earlier: Option<&Timestamp>) -> f64 {
    let earlier = earlier.map(|t| t.get_time().as_secs_f64()).unwrap_or(0.0);
    (later.get_time().as_secs_f64() - earlier).max(0.0)
}

impl<T: Transport> Replica<T> {
    /// Loads the cursors and seen stamps from the store. Call [`Replica::start`] to begin
    /// pulling from peers, on `workers`.
    pub fn new(
        store: Store,
        transport: T,
        config: ReplicationConfig,
        workers: &crate::Workers,
    ) -> meridian_crdt::Result<Self> {
        let me = store.node_id().to_string();
        let mut cursors = HashMap::new();
        let mut seen = HashMap::new();
        for (name, value) in store.meta_scan("sync/")? {
            let Some(ts) = parse_meta(&value) else {
                continue;
            };
            if let Some(p) = name.strip_prefix("sync/cursor/") {
                cursors.insert(p.to_owned(), ts);
            } else if let Some(n) = name.strip_prefix("sync/seen/") {
                seen.insert(n.to_owned(), ts);
            }
        }
        let replica = Replica {
            shared: Arc::new(Shared {
                store,
                transport,
                config,
                me,
                peers: RwLock::new(Vec::new()),
                membership: Mutex::new(Membership {
                    cursors,
                    ..Membership::default()
                }),
                started: AtomicBool::new(false),
                seen: Mutex::new(seen),
                seen_epoch: AtomicU64::new(0),
                token_cache: Mutex::new(None),
                cursor_moved: watch::Sender::new(0),
                drift_refusals: AtomicU64::new(0),
                outside_placement: AtomicU64::new(0),
                workers: workers.clone(),
            }),
        };
        replica.apply_plan(&replica.plan()?);
        Ok(replica)
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Starts, per peer, the feed puller and the anti-entropy worker; and the feed trimmer,
    /// the scrub, the healer and (after a log repair that lost batches) the recovery.
    pub fn start(&self) {
        let workers = &self.shared.workers;
        let this = self.clone();
        workers.spawn("feed trim", |_| this.trim_loop());
        let this = self.clone();
        workers.spawn("scrub", |_| this.scrub_loop());
        let this = self.clone();
        workers.spawn("heal", |_| this.heal_loop());
        let this = self.clone();
        workers.spawn("recovery", |_| this.recover_loop());
        let this = self.clone();
        workers.spawn("membership", |_| this.members_loop());
        let peers = self.shared.peers.write();
        self.shared
            .started
            .store(true, std::sync::atomic::Ordering::Release);
        for peer in peers.iter() {
            self.start_peer(peer);
        }
    }

    /// Starts the feed puller and the anti-entropy worker of one peer; they end when the node
    /// stops or the peer leaves the set.
    fn start_peer(&self, peer: &Arc<PeerState>) {
        let workers = &self.shared.workers;
        let (this, p) = (self.clone(), peer.clone());
        workers.spawn("replication feed", |_| this.feed_loop(p));
        let (this, p) = (self.clone(), peer.clone());
        workers.spawn("anti-entropy", |_| this.repair_loop(p));
    }

    /// The peers followed now.
    fn peers(&self) -> Vec<Arc<PeerState>> {
        self.shared.peers.read().clone()
    }

    fn stopped(&self) -> bool {
        self.shared.workers.is_stopping()
    }

    fn reachable(&self, p: &PeerState) -> bool {
        let limit = self.shared.config.silence_limit();
        p.status.lock().reachable(Instant::now(), limit)
    }

    fn peer(&self, id: &str) -> Option<Arc<PeerState>> {
        self.shared
            .peers
            .read()
            .iter()
            .find(|p| p.peer.id.as_str() == id)
            .cloned()
    }

    /// Sleeps, or returns early: true on shutdown or once `peer` has left the set, false if
    /// the peer's wake fires.
    async fn pause(&self, d: Duration, peer: Option<&PeerState>) -> bool {
        let mut stop = self.shared.workers.stop_signal();
        let gone = || self.stopped() || peer.is_some_and(PeerState::has_left);
        if stop.is_set() || gone() {
            return true;
        }
        let woken = async {
            match peer {
                Some(p) => p.wake.notified().await,
                None => std::future::pending().await,
            }
        };
        let left = async {
            match peer {
                Some(p) => p.leaving().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(d) => gone(),
            _ = stop.wait() => true,
            _ = left => true,
            _ = woken => gone(),
        }
    }
}

#[cfg(test)]
mod tests;
