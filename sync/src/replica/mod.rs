//! One node's replication: the answering side (feed, digest, repair) and, per peer, a feed
//! puller and an anti-entropy worker; plus session-token waits and the cluster status.
//!
//! Bookkeeping kept durable with the merged changes (one group commit, after them):
//! - `sync/cursor/<peer>`: every change made on `peer` stamped at or before this HLC stamp is
//!   here. Advanced only from the peer's own feed, which is served in stamp order and only
//!   below any write still in flight there, so it never skips a change.
//! - `sync/seen/<node>`: the newest stamp of any change by `node` merged here, by whatever
//!   path. Session tokens name it, so a token always covers what a read showed.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_crdt::{ChangeHash, DocKey, NodeId, RemoteChange, Store, DIGEST_BUCKETS};
use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::{mpsc, watch};
use uhlc::Timestamp;

use crate::token::SessionToken;
use crate::wire::{self, DocChanges, DocHeads, Request, Response};

mod status;

use status::PeerStatus;
pub use status::{ClusterReport, Lag, PeerReport};

/// A peer: its node id and where to reach it (a base URL for HTTP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: NodeId,
    pub addr: String,
}

/// Moves one request to a peer and brings back its answer. Errors are strings: the caller
/// only logs them and retries.
pub trait Transport: Send + Sync + 'static {
    /// One request, one answer (`POST /internal/rpc`).
    fn call(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;

    /// Opens a subscription (`POST /internal/subscribe`): the answer's bytes arrive as chunks,
    /// cut anywhere; an `Err` item or the channel's end ends the stream. `timeout` bounds the
    /// opening only.
    fn open(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Chunks, String>> + Send;
}

/// The chunks of a streamed answer.
pub type Chunks = mpsc::Receiver<Result<Vec<u8>, String>>;

/// Replication settings.
#[derive(Debug, Clone)]
pub struct SyncConfig {
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
}

/// See [`SyncConfig::feed_mode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedMode {
    /// `Subscribe`: a frame per batch on one open answer (about 60 bytes of framing per batch).
    Stream,
    /// `Feed` with a wait: one HTTP request and answer per batch (about 375 bytes per batch).
    LongPoll,
}

impl SyncConfig {
    pub fn new(peers: Vec<Peer>) -> Self {
        SyncConfig {
            peers,
            feed_wait: Duration::from_secs(10),
            heartbeat: Duration::from_millis(250),
            feed_batch: 1000,
            anti_entropy_every: Duration::from_secs(30),
            call_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(500),
            feed_mode: FeedMode::Stream,
        }
    }

    /// How long a peer may be silent and still count as reachable. A stream brings a heartbeat
    /// at least every [`SyncConfig::heartbeat`]; a long poll may rightly wait `feed_wait`.
    pub fn silence_limit(&self) -> Duration {
        match self.feed_mode {
            FeedMode::Stream => self.heartbeat * 4,
            FeedMode::LongPoll => self.feed_wait + self.call_timeout,
        }
    }
}

/// Most bytes of changes one repair answer carries; the asker comes back for the rest.
const REPAIR_BYTES: usize = 4 << 20;
/// Digest buckets compared per repair request.
const REPAIR_BUCKETS: usize = 256;
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
    config: SyncConfig,
    me: String,
    peers: Vec<Arc<PeerState>>,
    seen: Mutex<HashMap<String, Timestamp>>,
    /// Bumped whenever `seen` changes, to know when [`Replica::token_text`] is stale.
    seen_epoch: AtomicU64,
    /// This node's token as text, and the (newest local stamp, seen epoch) it was made at.
    token_cache: Mutex<Option<(u64, u64, Arc<str>)>>,
    /// Bumped whenever a cursor moves, for session waits.
    cursor_moved: watch::Sender<u64>,
    drift_refusals: AtomicU64,
    shutdown: watch::Sender<bool>,
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

/// A pause of about `base * 2^failures`, capped, times a random factor in [0.5, 1.5), so that
/// nodes retrying the same peer spread out.
fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(50) * 2u32.pow(failures.min(10));
    base.min(max)
        .mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

impl<T: Transport> Replica<T> {
    /// Loads the cursors and seen stamps from the store. Call [`Replica::start`] to begin
    /// pulling from peers.
    pub fn new(store: Store, transport: T, config: SyncConfig) -> meridian_crdt::Result<Self> {
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
        let peers = config
            .peers
            .iter()
            .filter(|p| p.id.as_str() != me)
            .map(|p| {
                Arc::new(PeerState {
                    cursor: Mutex::new(cursors.get(p.id.as_str()).copied()),
                    peer: p.clone(),
                    apply: Default::default(),
                    catching_up: AtomicBool::new(false),
                    wake: tokio::sync::Notify::new(),
                    status: Default::default(),
                })
            })
            .collect();
        Ok(Replica {
            shared: Arc::new(Shared {
                store,
                transport,
                config,
                me,
                peers,
                seen: Mutex::new(seen),
                seen_epoch: AtomicU64::new(0),
                token_cache: Mutex::new(None),
                cursor_moved: watch::Sender::new(0),
                drift_refusals: AtomicU64::new(0),
                shutdown: watch::Sender::new(false),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Starts, per peer, the feed puller and the anti-entropy worker.
    pub fn start(&self) {
        for peer in &self.shared.peers {
            tokio::spawn(self.clone().feed_loop(peer.clone()));
            tokio::spawn(self.clone().repair_loop(peer.clone()));
        }
    }

    /// Stops the workers (at their next wait) and any long poll being served.
    pub fn stop(&self) {
        self.shared.shutdown.send_replace(true);
    }

    fn stopped(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    fn reachable(&self, p: &PeerState) -> bool {
        let limit = self.shared.config.silence_limit();
        p.status.lock().reachable(Instant::now(), limit)
    }

    fn peer(&self, id: &str) -> Option<&Arc<PeerState>> {
        self.shared.peers.iter().find(|p| p.peer.id.as_str() == id)
    }

    /// Sleeps, or returns early: true on shutdown, false if `wake` fires.
    async fn pause(&self, d: Duration, wake: Option<&tokio::sync::Notify>) -> bool {
        let mut rx = self.shared.shutdown.subscribe();
        if *rx.borrow() {
            return true;
        }
        let woken = async {
            match wake {
                Some(w) => w.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(d) => self.stopped(),
            _ = rx.changed() => true,
            _ = woken => self.stopped(),
        }
    }

    // --- answering peers

    /// Answers one request from a peer (the body of `POST /internal/rpc`).
    pub async fn handle(&self, body: &[u8]) -> Vec<u8> {
        let (from, resp) = match wire::decode::<Request>(body) {
            Ok(req) => {
                let from = match &req {
                    Request::Feed { from, .. }
                    | Request::Subscribe { from, .. }
                    | Request::Digest { from }
                    | Request::Repair { from, .. } => from.clone(),
                };
                if let Some(p) = self.peer(&from) {
                    if !self.reachable(p) {
                        // a partition healed: retry our side now, not after the backoff
                        p.wake.notify_one();
                    }
                }
                let resp = self.serve(req).await.unwrap_or_else(|message| {
                    tracing::warn!(peer = %from, %message, "refused a peer's request");
                    Response::Error { message }
                });
                (Some(from), resp)
            }
            Err(message) => (None, Response::Error { message }),
        };
        let out = wire::encode(&resp);
        if let Some(p) = from.as_deref().and_then(|f| self.peer(f)) {
            let mut st = p.status.lock();
            st.bytes_received += body.len() as u64;
            st.bytes_sent += out.len() as u64;
            st.heard(Instant::now());
        }
        out
    }

    async fn serve(&self, req: Request) -> Result<Response, String> {
        let store = &self.shared.store;
        let err = |e: meridian_crdt::Error| e.to_string();
        match req {
            Request::Feed {
                from,
                after,
                wait_ms,
                limit,
            } => {
                if let Some(p) = self.peer(&from) {
                    p.status.lock().their_cursor = Some(after);
                }
                let deadline =
                    Instant::now() + Duration::from_millis(wait_ms as u64).min(MAX_FEED_WAIT);
                let limit = limit.clamp(1, 10_000) as usize;
                let mut news = store.subscribe();
                let mut stop = self.shared.shutdown.subscribe();
                let page = loop {
                    let page = store.feed(after.as_ref(), limit).map_err(err)?;
                    if !page.entries.is_empty() || Instant::now() >= deadline || self.stopped() {
                        break page;
                    }
                    tokio::select! {
                        _ = news.changed() => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = stop.changed() => {}
                    }
                };
                self.feed_answer(page)
            }
            Request::Subscribe { .. } => {
                Err("a subscription is a stream: POST /internal/subscribe".into())
            }
            Request::Digest { .. } => Ok(Response::Digest {
                buckets: store.digests(),
            }),
            Request::Repair { buckets, docs, .. } => {
                if buckets.iter().any(|b| *b as usize >= DIGEST_BUCKETS) {
                    return Err(format!("buckets are numbered below {DIGEST_BUCKETS}"));
                }
                let mut theirs: HashMap<DocKey, Vec<ChangeHash>> = HashMap::new();
                for d in docs {
                    let key = DocKey::new(&d.collection, &d.id).map_err(err)?;
                    theirs.insert(key, d.heads.into_iter().map(ChangeHash).collect());
                }
                let buckets: BTreeSet<u32> = buckets.into_iter().collect();
                let mut mine: HashMap<DocKey, Vec<ChangeHash>> = if buckets.is_empty() {
                    HashMap::new()
                } else {
                    store
                        .bucket_heads(&buckets)
                        .map_err(err)?
                        .into_iter()
                        .collect()
                };
                for key in theirs.keys() {
                    if !mine.contains_key(key) {
                        if let Some(s) = store.read_state(key).map_err(err)? {
                            mine.insert(key.clone(), s.heads);
                        }
                    }
                }
                let mut keys: Vec<DocKey> = mine.keys().cloned().collect();
                keys.sort();
                let (mut changes, mut bytes, mut more) = (Vec::new(), 0, false);
                for key in keys {
                    let their_heads = theirs.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                    let mut mine_sorted = mine[&key].clone();
                    mine_sorted.sort();
                    let mut theirs_sorted = their_heads.to_vec();
                    theirs_sorted.sort();
                    if mine_sorted == theirs_sorted {
                        continue;
                    }
                    if bytes >= REPAIR_BYTES {
                        more = true;
                        break;
                    }
                    let delta = store.changes_since(&key, their_heads).await.map_err(err)?;
                    if delta.is_empty() {
                        continue;
                    }
                    bytes += delta.iter().map(Vec::len).sum::<usize>();
                    changes.push(DocChanges {
                        collection: key.collection().into(),
                        id: key.id().into(),
                        changes: delta,
                    });
                }
                Ok(Response::Repair { changes, more })
            }
        }
    }

    /// A feed page as an answer, with the backlog when the asker is behind.
    fn feed_answer(&self, page: meridian_crdt::FeedPage) -> Result<Response, String> {
        // only a node that is behind needs to know by how much
        let (latest, behind) = if page.more {
            let (latest, n) = self
                .shared
                .store
                .feed_backlog(page.upto.as_ref(), BACKLOG_CAP)
                .map_err(|e| e.to_string())?;
            (latest, n as u64)
        } else {
            (None, 0)
        };
        let mut changes: Vec<DocChanges> = Vec::new();
        for (_, e) in page.entries {
            match changes.last_mut() {
                Some(last) if last.collection == e.collection && last.id == e.id => {
                    last.changes.push(e.change)
                }
                _ => changes.push(DocChanges {
                    collection: e.collection,
                    id: e.id,
                    changes: vec![e.change],
                }),
            }
        }
        Ok(Response::Feed {
            changes,
            upto: page.upto,
            more: page.more,
            latest,
            behind,
        })
    }

    /// Answers a subscription (the body of `POST /internal/subscribe`): a stream of frames,
    /// each a feed page, sent as this node's changes become durable, with an empty page every
    /// heartbeat. `Err` holds a one-message answer for a request that is not a subscription.
    /// The stream ends when the receiver is dropped (the peer went away), at shutdown, or after
    /// [`STREAM_LIFETIME`] (the peer then opens a new one); the channel is bounded, so a slow
    /// peer slows only its own stream.
    pub fn subscribe(&self, body: &[u8]) -> Result<mpsc::Receiver<Vec<u8>>, Vec<u8>> {
        let refuse = |message: String| wire::encode(&Response::Error { message });
        let (from, mut after, limit, heartbeat) = match wire::decode::<Request>(body) {
            Ok(Request::Subscribe {
                from,
                after,
                limit,
                heartbeat_ms,
            }) => (
                from,
                after,
                limit.clamp(1, 10_000) as usize,
                Duration::from_millis(heartbeat_ms.clamp(10, 60_000) as u64),
            ),
            Ok(_) => return Err(refuse("not a subscription: POST /internal/rpc".into())),
            Err(message) => return Err(refuse(message)),
        };
        let peer = self.peer(&from).cloned();
        if let Some(p) = &peer {
            if !self.reachable(p) {
                p.wake.notify_one();
            }
            let mut st = p.status.lock();
            st.bytes_received += body.len() as u64;
            st.heard(Instant::now());
        }
        let (tx, rx) = mpsc::channel(1);
        let this = self.clone();
        tokio::spawn(async move {
            let store = &this.shared.store;
            let mut stop = this.shared.shutdown.subscribe();
            let end = Instant::now() + STREAM_LIFETIME;
            let mut last_sent: Option<Instant> = None;
            while !this.stopped() && Instant::now() < end {
                let mut news = store.subscribe();
                if let Some(p) = &peer {
                    p.status.lock().their_cursor = Some(after);
                }
                let page = match store.feed(after.as_ref(), limit) {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx
                            .send(wire::frame(&Response::Error {
                                message: e.to_string(),
                            }))
                            .await;
                        return;
                    }
                };
                let beat_due = last_sent.is_none_or(|t| t.elapsed() >= heartbeat);
                if !page.entries.is_empty() || beat_due {
                    let (more, upto) = (page.more, page.upto);
                    let Ok(answer) = this.feed_answer(page) else {
                        return;
                    };
                    let frame = wire::frame(&answer);
                    let n = frame.len() as u64;
                    if tx.send(frame).await.is_err() {
                        return; // the peer went away
                    }
                    if let Some(p) = &peer {
                        let mut st = p.status.lock();
                        st.bytes_sent += n;
                        st.delivered(Instant::now());
                    }
                    after = upto.or(after);
                    last_sent = Some(Instant::now());
                    if more {
                        continue;
                    }
                }
                let next_beat = last_sent.map_or(Instant::now(), |t| t + heartbeat);
                tokio::select! {
                    _ = news.changed() => {}
                    _ = tokio::time::sleep_until(next_beat.into()) => {}
                    _ = stop.changed() => {}
                }
            }
        });
        Ok(rx)
    }

    // --- asking peers

    async fn call(
        &self,
        peer: &PeerState,
        req: &Request,
        extra_wait: Duration,
    ) -> Result<Response, String> {
        let body = wire::encode(req);
        let sent = body.len() as u64;
        let result = self
            .shared
            .transport
            .call(
                &peer.peer,
                body,
                self.shared.config.call_timeout + extra_wait,
            )
            .await
            .and_then(|bytes| {
                peer.status.lock().bytes_received += bytes.len() as u64;
                wire::decode::<Response>(&bytes)
            })
            .and_then(|r| match r {
                Response::Error { message } => Err(format!("the peer refused: {message}")),
                r => Ok(r),
            });
        let mut st = peer.status.lock();
        st.bytes_sent += sent;
        match &result {
            Ok(_) => st.succeeded(Instant::now()),
            Err(e) => st.failed(e.clone()),
        }
        result
    }

    /// Follows the peer's feed for as long as the node runs: a subscription from the cursor,
    /// applying each page as it arrives; reopened after any failure, with backoff.
    async fn feed_loop(self, peer: Arc<PeerState>) {
        if self.shared.config.feed_mode == FeedMode::LongPoll {
            return self.poll_loop(peer).await;
        }
        let cfg = &self.shared.config;
        let mut failures = 0;
        while !self.stopped() {
            let pause = match self.follow(&peer).await {
                Ok(Followed::Ended) => None,
                // a refused stamp will not be accepted again before our clock moves on
                Ok(Followed::Refused) => Some(backoff(4, cfg.max_backoff)),
                Err((e, progressed)) => {
                    tracing::debug!(peer = %peer.peer.id, error = %e, "feed subscription failed");
                    failures = if progressed { 1 } else { failures + 1 };
                    peer.status.lock().failed(e);
                    Some(backoff(failures, cfg.max_backoff))
                }
            };
            if let Some(d) = pause {
                if self.pause(d, Some(&peer.wake)).await {
                    return;
                }
            }
        }
    }

    /// [`FeedMode::LongPoll`]: pulls the peer's feed page by page; long polls once caught up.
    async fn poll_loop(self, peer: Arc<PeerState>) {
        let cfg = &self.shared.config;
        let mut failures = 0;
        let mut caught_up = false;
        while !self.stopped() {
            let wait = if caught_up {
                cfg.feed_wait
            } else {
                Duration::ZERO
            };
            let pause = match self.pull_once(&peer, wait).await {
                Ok(Pulled { more, refused }) => {
                    failures = 0;
                    caught_up = !more;
                    refused.then(|| backoff(4, cfg.max_backoff))
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.peer.id, error = %e, "feed pull failed");
                    failures += 1;
                    caught_up = false;
                    Some(backoff(failures, cfg.max_backoff))
                }
            };
            if let Some(d) = pause {
                if self.pause(d, Some(&peer.wake)).await {
                    return;
                }
            }
        }
    }

    /// One subscription, until it ends. The error says whether any page arrived first.
    async fn follow(&self, peer: &PeerState) -> Result<Followed, (String, bool)> {
        let cfg = &self.shared.config;
        let req = Request::Subscribe {
            from: self.shared.me.clone(),
            after: *peer.cursor.lock(),
            limit: cfg.feed_batch,
            heartbeat_ms: cfg.heartbeat.as_millis() as u32,
        };
        let body = wire::encode(&req);
        let sent = body.len() as u64;
        let opened = self
            .shared
            .transport
            .open(&peer.peer, body, cfg.call_timeout)
            .await;
        peer.status.lock().bytes_sent += sent;
        let mut chunks = opened.map_err(|e| {
            peer.status.lock().last_error = Some(e.clone());
            (e, false)
        })?;
        let mut frames = wire::FrameReader::default();
        let mut progressed = false;
        let fail = |e: String, progressed: bool| {
            peer.status.lock().last_error = Some(e.clone());
            (e, progressed)
        };
        // a live stream sends at least a heartbeat per `heartbeat`; a dropped connection that
        // never errors (packets lost in a partition) is given up on after twelve
        let silence = cfg.heartbeat * 12;
        loop {
            let chunk = match tokio::time::timeout(silence, chunks.recv()).await {
                Err(_) => return Err(fail("the subscription went silent".into(), progressed)),
                // the answering node ended it (its lifetime); one that ends before its first
                // frame (a node shutting down) is a failure, retried with backoff, not at once
                Ok(None) if progressed => return Ok(Followed::Ended),
                Ok(None) => return Err(fail("the subscription ended at once".into(), false)),
                Ok(Some(Err(e))) => return Err(fail(e, progressed)),
                Ok(Some(Ok(c))) => c,
            };
            let mut received = chunk.len();
            frames.push(&chunk);
            // Take everything that has arrived and merge it as one batch: one disk sync for
            // all of it, so a follower that falls behind catches up in bigger steps.
            while let Ok(more) = chunks.try_recv() {
                match more {
                    Ok(c) => {
                        received += c.len();
                        frames.push(&c);
                    }
                    Err(e) => return Err(fail(e, progressed)),
                }
            }
            peer.status.lock().bytes_received += received as u64;
            let mut batch: Vec<DocChanges> = Vec::new();
            let mut upto = None;
            let mut pages = 0;
            while let Some(f) = frames.next_frame().map_err(|e| fail(e, progressed))? {
                let page = wire::decode::<Response>(&f).map_err(|e| fail(e, progressed))?;
                let Response::Feed {
                    changes,
                    upto: page_upto,
                    latest,
                    behind,
                    ..
                } = page
                else {
                    return Err(fail(format!("unexpected frame: {page:?}"), progressed));
                };
                let mut st = peer.status.lock();
                st.their_latest = latest;
                st.their_backlog = behind;
                st.feed_pages += 1;
                st.feed_batches += !changes.is_empty() as u64;
                batch.extend(changes);
                upto = page_upto.or(upto);
                pages += 1;
            }
            if pages == 0 {
                continue;
            }
            peer.status.lock().succeeded(Instant::now());
            if self
                .apply_feed(peer, batch, upto)
                .await
                .map_err(|e| fail(e, progressed))?
            {
                return Ok(Followed::Refused);
            }
            progressed = true;
        }
    }

    async fn pull_once(&self, peer: &PeerState, wait: Duration) -> Result<Pulled, String> {
        let req = Request::Feed {
            from: self.shared.me.clone(),
            after: *peer.cursor.lock(),
            wait_ms: wait.as_millis() as u32,
            limit: self.shared.config.feed_batch,
        };
        match self.call(peer, &req, wait).await? {
            Response::Feed {
                changes,
                upto,
                more,
                latest,
                behind,
            } => {
                {
                    let mut st = peer.status.lock();
                    st.their_latest = latest;
                    st.their_backlog = behind;
                    st.feed_pages += 1;
                    st.feed_batches += !changes.is_empty() as u64;
                }
                let refused = self.apply_feed(peer, changes, upto).await?;
                Ok(Pulled { more, refused })
            }
            other => Err(format!("unexpected answer to a feed request: {other:?}")),
        }
    }

    /// Merges one page of a peer's feed and advances the cursor with it. Stops at the first
    /// change whose stamp this node's clock refuses (the cursor stays before it). Returns true
    /// if it stopped so.
    async fn apply_feed(
        &self,
        peer: &PeerState,
        changes: Vec<DocChanges>,
        upto: Option<Timestamp>,
    ) -> Result<bool, String> {
        let _one_at_a_time = peer.apply.lock().await;
        let checked = self.check(changes, true)?;
        let cursor = if checked.refused {
            checked.last_stamp
        } else {
            upto.or(checked.last_stamp)
        };
        let old = *peer.cursor.lock();
        let cursor = cursor.filter(|c| old.is_none_or(|o| *c > o));
        let mut meta = checked.seen_meta(self);
        // An empty page moves the cursor in memory only: persisting it would cost a sync per
        // idle long poll, and after a restart the older cursor only re-reads nothing.
        if let Some(c) = cursor.as_ref().filter(|_| !checked.docs.is_empty()) {
            meta.push((cursor_name(peer.peer.id.as_str()), stamp_meta(c)));
        }
        let (n, refused) = (checked.changes, checked.refused);
        let merged = self.merge(checked, meta).await?;
        peer.status.lock().changes_received += n as u64;
        if let Some(c) = cursor {
            *peer.cursor.lock() = Some(c);
            self.shared.cursor_moved.send_modify(|n| *n += 1);
        }
        if !merged.missing_deps.is_empty() {
            // their dependencies reached the peer by another path: ask it for what we lack
            self.repair_docs(peer, merged.missing_deps).await?;
        }
        Ok(refused)
    }

    /// Decodes and checks received changes: each must parse, and its stamp must be within the
    /// clock's maximum drift (which also moves the clock past it). `feed`: stop at the first
    /// refusal; otherwise skip the rest of that document only.
    fn check(&self, changes: Vec<DocChanges>, feed: bool) -> Result<Checked, String> {
        let clock = self.shared.store.clock();
        let mut out = Checked::default();
        'docs: for dc in changes {
            let key = DocKey::new(&dc.collection, &dc.id).map_err(|e| e.to_string())?;
            let mut accepted = Vec::with_capacity(dc.changes.len());
            for c in dc.changes {
                let change = RemoteChange::parse(c).map_err(|e| e.to_string())?;
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
    async fn merge(
        &self,
        checked: Checked,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<meridian_crdt::Merged, String> {
        let merged = self
            .shared
            .store
            .merge_remote(checked.docs, meta)
            .await
            .map_err(|e| e.to_string())?;
        let mut all = self.shared.seen.lock();
        for (node, ts) in checked.seen {
            let s = all.entry(node).or_insert(ts);
            *s = (*s).max(ts);
        }
        self.shared.seen_epoch.fetch_add(1, Ordering::Release);
        Ok(merged)
    }

    /// Merges changes from a repair answer (any author), with their bookkeeping.
    async fn merge_checked(
        &self,
        peer: &PeerState,
        changes: Vec<DocChanges>,
    ) -> Result<usize, String> {
        let checked = self.check(changes, false)?;
        let meta = checked.seen_meta(self);
        let merged = self.merge(checked, meta).await?;
        peer.status.lock().changes_repaired += merged.changes as u64;
        Ok(merged.changes)
    }

    /// Asks `peer` for what the given documents lack.
    async fn repair_docs(&self, peer: &PeerState, keys: Vec<DocKey>) -> Result<(), String> {
        let mut docs = Vec::with_capacity(keys.len());
        for key in keys {
            let heads = self
                .shared
                .store
                .read_state(&key)
                .map_err(|e| e.to_string())?
                .map(|s| s.heads)
                .unwrap_or_default();
            docs.push(doc_heads(&key, &heads));
        }
        let req = Request::Repair {
            from: self.shared.me.clone(),
            buckets: vec![],
            docs,
        };
        match self.call(peer, &req, Duration::ZERO).await? {
            Response::Repair { changes, .. } => self.merge_checked(peer, changes).await.map(|_| ()),
            other => Err(format!("unexpected answer to a repair request: {other:?}")),
        }
    }

    async fn repair_loop(self, peer: Arc<PeerState>) {
        let every = self.shared.config.anti_entropy_every;
        // the first pass soon after start-up (restored backups, changes missed while down)
        let mut next = every.mul_f64(rand::thread_rng().gen_range(0.05..0.3));
        loop {
            if self.pause(next, None).await {
                return;
            }
            match self.anti_entropy(&peer).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(peer = %peer.peer.id, repaired = n, "anti-entropy repaired changes")
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.peer.id, error = %e, "anti-entropy pass failed")
                }
            }
            next = every.mul_f64(rand::thread_rng().gen_range(0.75..1.25));
        }
    }

    /// One anti-entropy pass with `peer`: compare digests, then fetch, for the documents in
    /// the buckets that differ, the changes this node lacks. Returns the changes merged.
    async fn anti_entropy(&self, peer: &PeerState) -> Result<usize, String> {
        let req = Request::Digest {
            from: self.shared.me.clone(),
        };
        let theirs = match self.call(peer, &req, Duration::ZERO).await? {
            Response::Digest { buckets } if buckets.len() == DIGEST_BUCKETS => buckets,
            other => return Err(format!("unexpected answer to a digest request: {other:?}")),
        };
        let mine = self.shared.store.digests();
        let differing: Vec<u32> = (0..DIGEST_BUCKETS)
            .filter(|b| mine[*b] != theirs[*b])
            .map(|b| b as u32)
            .collect();
        let mut merged = 0;
        for chunk in differing.chunks(REPAIR_BUCKETS) {
            loop {
                let set: BTreeSet<u32> = chunk.iter().copied().collect();
                let docs = self
                    .shared
                    .store
                    .bucket_heads(&set)
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|(k, h)| doc_heads(k, h))
                    .collect();
                let req = Request::Repair {
                    from: self.shared.me.clone(),
                    buckets: chunk.to_vec(),
                    docs,
                };
                let Response::Repair { changes, more } =
                    self.call(peer, &req, Duration::ZERO).await?
                else {
                    return Err("unexpected answer to a repair request".into());
                };
                let n = self.merge_checked(peer, changes).await?;
                merged += n;
                // stop if a cut answer brought nothing new (it would repeat itself)
                if !more || n == 0 {
                    break;
                }
            }
        }
        Ok(merged)
    }

    // --- sessions

    /// This node's part of a session token: its own newest stamp, and the newest stamp of each
    /// peer's changes merged here. It covers everything a read here can show.
    pub fn token(&self) -> SessionToken {
        let mut t = SessionToken::default();
        if let Some(ts) = self.shared.store.last_local_stamp() {
            t.observe(&self.shared.me, ts.get_time().as_u64());
        }
        let seen = self.shared.seen.lock();
        for p in &self.shared.peers {
            if let Some(ts) = seen.get(p.peer.id.as_str()) {
                t.observe(p.peer.id.as_str(), ts.get_time().as_u64());
            }
        }
        t
    }

    /// [`Replica::token`] as text, cached until it changes: every `/v1` answer carries it.
    pub fn token_text(&self) -> Arc<str> {
        let local = self
            .shared
            .store
            .last_local_stamp()
            .map_or(0, |t| t.get_time().as_u64());
        let epoch = self.shared.seen_epoch.load(Ordering::Acquire);
        let mut cache = self.shared.token_cache.lock();
        match &*cache {
            Some((l, e, text)) if *l == local && *e == epoch => text.clone(),
            _ => {
                let text: Arc<str> = self.token().to_string().into();
                *cache = Some((local, epoch, text.clone()));
                text
            }
        }
    }

    /// The first node of `token` whose changes this node may lack.
    fn uncovered(&self, token: &SessionToken) -> Option<Behind> {
        for (node, time) in token.iter() {
            let covered = if node == self.shared.me {
                time <= self.shared.store.clock().now().get_time().as_u64()
            } else if let Some(p) = self.peer(node) {
                p.cursor
                    .lock()
                    .is_some_and(|c| c.get_time().as_u64() >= time)
            } else {
                return Some(Behind {
                    node: node.to_owned(),
                    unknown: true,
                });
            };
            if !covered {
                return Some(Behind {
                    node: node.to_owned(),
                    unknown: false,
                });
            }
        }
        None
    }

    /// Waits until this node holds everything `token` covers, pulling from the nodes it names
    /// right away; gives up after `max_wait`.
    pub async fn await_token(
        &self,
        token: &SessionToken,
        max_wait: Duration,
    ) -> Result<(), Behind> {
        let deadline = Instant::now() + max_wait;
        let mut moved = self.shared.cursor_moved.subscribe();
        loop {
            let Some(behind) = self.uncovered(token) else {
                return Ok(());
            };
            if behind.unknown || Instant::now() >= deadline {
                return Err(behind);
            }
            if let Some(p) = self.peer(&behind.node) {
                self.catch_up(p.clone());
            }
            let tick = (deadline - Instant::now()).min(Duration::from_millis(50));
            tokio::select! {
                _ = moved.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
    }

    /// Pulls the peer's feed without waiting, until caught up (one such task per peer).
    fn catch_up(&self, peer: Arc<PeerState>) {
        if peer.catching_up.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Pulled {
                more: true,
                refused: false,
            }) = this.pull_once(&peer, Duration::ZERO).await
            {}
            peer.catching_up.store(false, Ordering::Release);
        });
    }

    // --- status

    pub fn report(&self) -> ClusterReport {
        let store = &self.shared.store;
        let (now, silence) = (Instant::now(), self.shared.config.silence_limit());
        let peers = self
            .shared
            .peers
            .iter()
            .map(|p| {
                let st = p.status.lock();
                let cursor = *p.cursor.lock();
                let behind_peer = match st.their_latest {
                    Some(latest) if st.their_backlog > 0 || cursor.is_none_or(|c| c < latest) => {
                        Lag {
                            seconds: secs_between(&latest, cursor.as_ref()),
                            changes: st.their_backlog.max(1),
                        }
                    }
                    _ => Lag::default(),
                };
                let peer_behind = match st.their_cursor {
                    Some(after) => match store.feed_backlog(after.as_ref(), BACKLOG_CAP) {
                        Ok((Some(latest), n)) if n > 0 => Lag {
                            seconds: secs_between(&latest, after.as_ref()),
                            changes: n as u64,
                        },
                        _ => Lag::default(),
                    },
                    None => Lag::default(),
                };
                st.report(
                    p.peer.id.to_string(),
                    p.peer.addr.clone(),
                    now,
                    silence,
                    behind_peer,
                    peer_behind,
                )
            })
            .collect();
        ClusterReport {
            node: self.shared.me.clone(),
            hlc: meridian_crdt::display_stamp(&store.clock().now()),
            clock_drift_refusals: self.shared.drift_refusals.load(Ordering::Relaxed),
            peers,
        }
    }

    /// Bytes sent to and received from all peers, both as asker and as answerer.
    pub fn bytes(&self) -> (u64, u64) {
        self.shared.peers.iter().fold((0, 0), |(s, r), p| {
            let st = p.status.lock();
            (s + st.bytes_sent, r + st.bytes_received)
        })
    }

    pub fn drift_refusals(&self) -> u64 {
        self.shared.drift_refusals.load(Ordering::Relaxed)
    }

    /// Where a peer is reached, if it is one.
    pub fn peer_url(&self, id: &str) -> Option<String> {
        self.peer(id).map(|p| p.peer.addr.clone())
    }

    /// This node's cursor into a peer's feed.
    pub fn cursor(&self, peer: &str) -> Option<Timestamp> {
        self.peer(peer).and_then(|p| *p.cursor.lock())
    }
}

enum Followed {
    /// The answering node ended the stream (its lifetime, its shutdown).
    Ended,
    /// A change's stamp was refused: stop, and come back later.
    Refused,
}

struct Pulled {
    more: bool,
    refused: bool,
}

#[derive(Default)]
struct Checked {
    docs: Vec<(DocKey, Vec<RemoteChange>)>,
    changes: usize,
    seen: HashMap<String, Timestamp>,
    last_stamp: Option<Timestamp>,
    refused: bool,
}

impl Checked {
    /// Bookkeeping for the seen stamps this batch raises.
    fn seen_meta<T>(&self, r: &Replica<T>) -> Vec<(String, Vec<u8>)> {
        let all = r.shared.seen.lock();
        self.seen
            .iter()
            .filter(|(n, ts)| all.get(*n).is_none_or(|s| *ts > s))
            .map(|(n, ts)| (seen_name(n), stamp_meta(ts)))
            .collect()
    }
}

fn doc_heads(key: &DocKey, heads: &[ChangeHash]) -> DocHeads {
    DocHeads {
        collection: key.collection().into(),
        id: key.id().into(),
        heads: heads.iter().map(|h| h.0).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A network that reaches nobody.
    #[derive(Debug)]
    struct NoNet;

    impl Transport for NoNet {
        async fn call(&self, _: &Peer, _: Vec<u8>, _: Duration) -> Result<Vec<u8>, String> {
            Err("no network".into())
        }

        async fn open(&self, _: &Peer, _: Vec<u8>, _: Duration) -> Result<Chunks, String> {
            Err("no network".into())
        }
    }

    fn replica(dir: &std::path::Path) -> Replica<NoNet> {
        let mut c = meridian_crdt::StoreConfig::new(dir);
        c.node_id = Some("n1".into());
        let store = Store::open(c).unwrap();
        Replica::new(store, NoNet, SyncConfig::new(vec![])).unwrap()
    }

    fn error_of(answer: &[u8]) -> Option<String> {
        match wire::decode::<Response>(answer).unwrap() {
            Response::Error { message } => Some(message),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn any_bytes_get_an_answer_and_change_nothing(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let dir = tempfile::tempdir().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let r = replica(dir.path());
                let answer = r.handle(&body).await;
                // every answer decodes; garbage gets an error message
                let decoded = wire::decode::<Response>(&answer);
                prop_assert!(decoded.is_ok());
                prop_assert!(r.store().digests().iter().all(|d| *d == 0));
                prop_assert!(r.store().feed(None, 10).unwrap().entries.is_empty());
                Ok(())
            })?;
        }
    }

    #[tokio::test]
    async fn malformed_requests_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path());
        let bad_bucket = Request::Repair {
            from: "x".into(),
            buckets: vec![DIGEST_BUCKETS as u32],
            docs: vec![],
        };
        let e = error_of(&r.handle(&wire::encode(&bad_bucket)).await).unwrap();
        assert!(e.contains("buckets"), "{e}");
        let bad_key = Request::Repair {
            from: "x".into(),
            buckets: vec![],
            docs: vec![DocHeads {
                collection: "a/b".into(),
                id: "c".into(),
                heads: vec![],
            }],
        };
        assert!(error_of(&r.handle(&wire::encode(&bad_key)).await).is_some());
        let e = error_of(&r.handle(&[9, 0]).await).unwrap();
        assert!(e.contains("version 9"), "{e}");
        // a feed request from anyone, with nothing to send, waits no longer than asked
        let feed = Request::Feed {
            from: "x".into(),
            after: None,
            wait_ms: 50,
            limit: 10,
        };
        let t0 = Instant::now();
        let answer = wire::decode::<Response>(&r.handle(&wire::encode(&feed)).await).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(50));
        assert!(
            matches!(answer, Response::Feed { ref changes, more: false, .. } if changes.is_empty())
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let max = Duration::from_millis(500);
        for f in 0..20 {
            let d = backoff(f, max);
            assert!(d <= max.mul_f64(1.5), "{d:?}");
            assert!(d >= Duration::from_millis(25), "{d:?}");
        }
        assert!(backoff(0, max) < Duration::from_millis(76));
    }
}
