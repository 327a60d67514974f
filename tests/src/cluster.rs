//! A cluster of Meridian nodes in one process, over an in-memory network that can drop, delay,
//! duplicate and reorder messages, cut links (one way too), and skew clocks.
//!
//! Every fault decision comes from one seeded random generator, so a failing seed replays the
//! same schedule of faults (thread timing aside: the tests run on a current-thread runtime).
//! Each node is a real [`Store`] in a temporary directory and a real [`Replica`]; only the
//! network is simulated.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_crdt::{DocKey, NodeId, Store, StoreConfig};
use meridian_sync::{Chunks, Error as SyncError, Peer, Replica, ReplicationConfig, Transport};
use parking_lot::{Mutex, RwLock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the network does to each message.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Chance that a request, or its answer, is lost.
    pub drop: f64,
    /// Chance that a request is delivered twice.
    pub duplicate: f64,
    /// Each leg is delayed by a random time up to this (so messages overtake each other).
    pub max_delay: Duration,
}

#[derive(Debug)]
struct Net {
    nodes: RwLock<HashMap<String, Replica<SimTransport>>>,
    faults: Mutex<Faults>,
    /// Directed links that deliver nothing: (from, to).
    cut: Mutex<HashSet<(String, String)>>,
    rng: Mutex<StdRng>,
}

/// One node's view of the simulated network.
#[derive(Debug, Clone)]
pub struct SimTransport {
    net: Arc<Net>,
    me: String,
}

/// How long a lost message takes to show as an error (a real one would be a timeout).
const LOSS_NOTICED: Duration = Duration::from_millis(20);

impl Net {
    fn delivers(&self, from: &str, to: &str) -> bool {
        if self.cut.lock().contains(&(from.to_owned(), to.to_owned())) {
            return false;
        }
        let p = self.faults.lock().drop;
        !self.rng.lock().gen_bool(p)
    }

    fn delay(&self) -> Duration {
        let max = self.faults.lock().max_delay;
        if max.is_zero() {
            return Duration::ZERO;
        }
        max.mul_f64(self.rng.lock().gen_range(0.0..1.0))
    }

    fn duplicates(&self) -> bool {
        let p = self.faults.lock().duplicate;
        self.rng.lock().gen_bool(p)
    }
}

impl Transport for SimTransport {
    async fn call(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, SyncError> {
        let net = &self.net;
        let to = peer.id.as_str();
        tokio::time::sleep(net.delay()).await;
        if !net.delivers(&self.me, to) {
            tokio::time::sleep(LOSS_NOTICED.min(timeout)).await;
            return Err(SyncError::Unreachable("request lost".into()));
        }
        let target = net
            .nodes
            .read()
            .get(to)
            .cloned()
            .ok_or_else(|| SyncError::Unreachable(format!("{to} is down")))?;
        if net.duplicates() {
            let (t, b) = (target.clone(), body.clone());
            tokio::spawn(async move { t.handle(&b).await });
        }
        let answer = tokio::time::timeout(timeout, target.handle(&body))
            .await
            .map_err(|_| SyncError::Unreachable("timed out".into()))?;
        tokio::time::sleep(net.delay()).await;
        if !net.delivers(to, &self.me) {
            return Err(SyncError::Unreachable("answer lost".into()));
        }
        Ok(answer)
    }

    async fn open(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Chunks, SyncError> {
        let net = self.net.clone();
        let (me, to) = (self.me.clone(), peer.id.as_str().to_owned());
        tokio::time::sleep(net.delay()).await;
        if !net.delivers(&me, &to) {
            tokio::time::sleep(LOSS_NOTICED.min(timeout)).await;
            return Err(SyncError::Unreachable("request lost".into()));
        }
        let target = net
            .nodes
            .read()
            .get(&to)
            .cloned()
            .ok_or_else(|| SyncError::Unreachable(format!("{to} is down")))?;
        let mut frames = match target.subscribe(&body) {
            Ok(rx) => rx,
            Err(answer) => {
                return Err(SyncError::Refused(format!(
                    "refused: {} bytes",
                    answer.len()
                )))
            }
        };
        // Frames travel in order (one connection), cut into random chunks; a lost chunk, a
        // cut link or a node leaving the network breaks the stream, as a reset connection would.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while let Some(frame) = frames.recv().await {
                let mut rest = &frame[..];
                while !rest.is_empty() {
                    let n = net.rng.lock().gen_range(1..=rest.len());
                    let (chunk, tail) = rest.split_at(n);
                    rest = tail;
                    tokio::time::sleep(net.delay() / 4).await;
                    let alive = net.nodes.read().contains_key(&to) && net.delivers(&to, &me);
                    if !alive {
                        let _ = tx
                            .send(Err(SyncError::Unreachable("connection reset".into())))
                            .await;
                        return;
                    }
                    if tx.send(Ok(chunk.to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// One node of the cluster.
#[derive(Debug)]
pub struct SimNode {
    pub id: String,
    pub replica: Replica<SimTransport>,
    /// Its sync server, for clients (see [`crate::sim_client`]).
    pub hub: Arc<meridian_sync::repo::Hub>,
    /// Its background workers (the replica's loops, the hub's pump).
    pub workers: meridian_sync::Workers,
    _dir: tempfile::TempDir,
}

impl SimNode {
    pub fn store(&self) -> &Store {
        self.replica.store()
    }
}

/// A physical clock for a node's HLC.
pub type PhysicalClock = fn() -> uhlc::NTP64;

/// A cluster of nodes on one simulated network.
#[derive(Debug)]
pub struct SimCluster {
    net: Arc<Net>,
    pub nodes: Vec<SimNode>,
}

/// Replication settings scaled down for tests: short heartbeats and long polls, frequent
/// anti-entropy.
pub fn test_sync_config(peers: Vec<Peer>) -> ReplicationConfig {
    let mut c = ReplicationConfig::new(peers);
    c.feed_wait = Duration::from_millis(300);
    c.anti_entropy_every = Duration::from_millis(400);
    c.call_timeout = Duration::from_millis(500);
    c.max_backoff = Duration::from_millis(200);
    c
}

impl SimCluster {
    /// Starts nodes with the given ids and physical clocks (see [`skewed_clocks`]).
    pub fn start(seed: u64, nodes: &[(&str, PhysicalClock)]) -> SimCluster {
        Self::start_with(seed, nodes, |_| {})
    }

    /// [`SimCluster::start`] with the test settings changed by `tune` (feed mode, anti-entropy).
    pub fn start_with(
        seed: u64,
        nodes: &[(&str, PhysicalClock)],
        tune: impl Fn(&mut ReplicationConfig),
    ) -> SimCluster {
        Self::start_joining(seed, nodes, &[], tune)
    }

    /// [`SimCluster::start_with`], where the nodes named in `joining` are not (yet) members:
    /// nobody's peers name them, and their own peers are the first node only (a seed). They
    /// join once a member adds them ([`Replica::add_region`]).
    pub fn start_joining(
        seed: u64,
        nodes: &[(&str, PhysicalClock)],
        joining: &[&str],
        tune: impl Fn(&mut ReplicationConfig),
    ) -> SimCluster {
        Self::start_each(seed, nodes, joining, |_, c| tune(c))
    }

    /// [`SimCluster::start_joining`], with each node's settings tuned by `tune(id, settings)`
    /// (a node kept at an older protocol version, say).
    pub fn start_each(
        seed: u64,
        nodes: &[(&str, PhysicalClock)],
        joining: &[&str],
        tune: impl Fn(&str, &mut ReplicationConfig),
    ) -> SimCluster {
        let net = Arc::new(Net {
            nodes: RwLock::new(HashMap::new()),
            faults: Mutex::new(Faults::default()),
            cut: Mutex::new(HashSet::new()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        });
        let peers: Vec<Peer> = nodes
            .iter()
            .filter(|(id, _)| !joining.contains(id))
            .map(|(id, _)| Peer {
                id: NodeId::new(id).expect("valid node id"),
                // routed by id; a URL of the shape a real peer has
                addr: format!("http://{id}.sim"),
            })
            .collect();
        let mut out = Vec::new();
        for (id, clock) in nodes {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut cfg = StoreConfig::new(dir.path());
            cfg.node_id = Some((*id).to_owned());
            cfg.cache_bytes = 8 << 20;
            cfg.sled_cache_bytes = 4 << 20;
            cfg.physical_clock = *clock;
            let store = Store::open(cfg).expect("open store");
            let transport = SimTransport {
                net: net.clone(),
                me: (*id).to_owned(),
            };
            let seeds = if joining.contains(id) {
                peers[..1].to_vec()
            } else {
                peers.clone()
            };
            let mut config = test_sync_config(seeds);
            tune(id, &mut config);
            let workers = meridian_sync::Workers::new();
            let hub = meridian_sync::repo::Hub::start(store.clone(), Default::default(), &workers);
            let replica = Replica::new(store, transport, config, &workers).expect("replica");
            net.nodes.write().insert((*id).to_owned(), replica.clone());
            out.push(SimNode {
                id: (*id).to_owned(),
                replica,
                hub,
                workers,
                _dir: dir,
            });
        }
        for n in &out {
            n.replica.start();
        }
        SimCluster { net, nodes: out }
    }

    pub fn node(&self, id: &str) -> &SimNode {
        self.nodes.iter().find(|n| n.id == id).expect("known node")
    }

    pub fn set_faults(&self, f: Faults) {
        *self.net.faults.lock() = f;
    }

    /// Cuts the link from `from` to `to` (requests `from` makes to `to`, and answers `to` sends
    /// back to `from`, are lost).
    pub fn cut_one_way(&self, from: &str, to: &str) {
        self.net.cut.lock().insert((from.to_owned(), to.to_owned()));
    }

    pub fn cut(&self, a: &str, b: &str) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Heals both directions between `a` and `b`.
    pub fn heal(&self, a: &str, b: &str) {
        let mut cut = self.net.cut.lock();
        cut.remove(&(a.to_owned(), b.to_owned()));
        cut.remove(&(b.to_owned(), a.to_owned()));
    }

    pub fn heal_all(&self) {
        self.net.cut.lock().clear();
    }

    /// A random number from the cluster's seeded generator.
    pub fn rng(&self) -> parking_lot::MutexGuard<'_, StdRng> {
        self.net.rng.lock()
    }

    pub fn stop(&self) {
        for n in &self.nodes {
            // the hub's pump closes its connections on the signal
            n.workers.stop();
        }
        self.net.nodes.write().clear();
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

macro_rules! skewed {
    ($name:ident, $ms:expr) => {
        /// The system clock, shifted.
        pub fn $name() -> uhlc::NTP64 {
            let now = uhlc::system_time_clock();
            let shift = uhlc::NTP64::from(Duration::from_millis(($ms as i64).unsigned_abs()));
            if $ms < 0 {
                now - shift
            } else {
                now + shift
            }
        }
    };
}

skewed!(clock_exact, 0);
skewed!(clock_ahead_150ms, 150);
skewed!(clock_behind_200ms, -200);
skewed!(clock_ahead_10min, 600_000);

/// Clocks within the default maximum drift of each other, to give nodes in random tests.
pub fn skewed_clocks() -> [PhysicalClock; 3] {
    [clock_exact, clock_ahead_150ms, clock_behind_200ms]
}

/// The document `profiles/{id}`, the collection the cluster tests write.
pub fn profile(id: &str) -> DocKey {
    DocKey::new("profiles", id).expect("a valid id")
}

/// A JSON object literal as the map an edit takes.
pub fn obj(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().expect("an object").clone()
}

/// A single-threaded runtime for one scenario (the simulated network is the concurrency).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}
