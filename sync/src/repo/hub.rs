//! The server side's shared state: how many connections there are, which follow which
//! document, and the notices that reach them: a document changed (any kind of write, told by
//! [`Store::watch`]), or another client of a document sent an ephemeral message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use meridian_crdt::{DocKey, Store};

pub(super) use super::protocol::EphemeralNote;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Limits of the sync server.
#[derive(Debug, Clone)]
pub struct SyncLimits {
    /// Open connections per node; the next is refused before the upgrade.
    pub max_connections: usize,
    /// Documents one connection may have open.
    pub max_docs_per_connection: usize,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
    /// Bytes waiting to be written to one client before it is disconnected as too slow.
    pub max_queued_bytes: usize,
    /// Largest ephemeral message relayed.
    pub max_ephemeral_bytes: usize,
    /// Ephemeral messages waiting for one client before the oldest are dropped.
    pub max_ephemeral_queued: usize,
    /// A ping this often to a quiet client...
    pub ping_every: Duration,
    /// ...and a client silent this long (pongs count) is disconnected.
    pub idle_timeout: Duration,
}

impl Default for SyncLimits {
    fn default() -> Self {
        SyncLimits {
            max_connections: 10_000,
            max_docs_per_connection: 10_000,
            max_message_bytes: 16 << 20,
            max_queued_bytes: 16 << 20,
            max_ephemeral_bytes: 64 << 10,
            max_ephemeral_queued: 64,
            ping_every: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    pub connections: u64,
    pub documents_open: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub changes_accepted: u64,
    pub changes_refused: u64,
    /// Client messages that relayed other nodes' changes this node lacked, and so waited for
    /// replication (nothing of them taken).
    pub changes_waiting: u64,
    pub connections_refused: u64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) changes_accepted: AtomicU64,
    pub(super) changes_refused: AtomicU64,
    pub(super) changes_waiting: AtomicU64,
    pub(super) connections_refused: AtomicU64,
}

/// What one connection is told by the hub.
#[derive(Debug, Default)]
pub(super) struct Mailbox {
    pub(super) changed: Mutex<HashSet<DocKey>>,
    pub(super) ephemeral: Mutex<VecDeque<(DocKey, EphemeralNote)>>,
    pub(super) wake: Notify,
    /// The client's peer id, once it joined (ephemeral messages are addressed to it).
    pub(super) peer: Mutex<Option<String>>,
}

#[derive(Debug, Default)]
struct Registry {
    next: u64,
    conns: HashMap<u64, Arc<Mailbox>>,
    docs: HashMap<DocKey, HashSet<u64>>,
    open_docs: u64,
}

/// The sync server of one node. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Hub {
    pub(super) store: Store,
    pub(super) peer_id: String,
    pub(super) limits: SyncLimits,
    registry: Mutex<Registry>,
    pub(super) counters: Counters,
    pub(super) closing: std::sync::atomic::AtomicBool,
}

/// The node has as many connections as it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl Hub {
    /// A hub for `store`, following its document changes from now on, on a worker of
    /// `workers`; their stop closes every connection (see [`Hub::shutdown`]).
    pub fn start(store: Store, limits: SyncLimits, workers: &crate::Workers) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            peer_id: format!("meridian-{}", store.node_id()),
            store,
            limits,
            registry: Mutex::new(Registry::default()),
            counters: Counters::default(),
            closing: Default::default(),
        });
        let mut events = hub.store.watch();
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        workers.spawn("client sync pump", |mut stop| async move {
            loop {
                let event = tokio::select! {
                    e = events.next() => e,
                    _ = stop.wait() => {
                        if let Some(hub) = weak.upgrade() {
                            hub.shutdown();
                        }
                        return;
                    }
                };
                let Some(event) = event else { return };
                let Some(hub) = weak.upgrade() else { return };
                match event {
                    Ok(key) => hub.changed(&key),
                    // notices were lost: every connection re-checks every document it has open
                    Err(_) => hub.changed_all(),
                }
            }
        });
        hub
    }

    /// This node's peer id in the protocol.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    pub fn limits(&self) -> &SyncLimits {
        &self.limits
    }

    /// Registers a new connection's mailbox, or [`Full`] (answer 503 before upgrading).
    /// `Connection::open` calls it.
    pub(super) fn register(&self) -> Result<(u64, Arc<Mailbox>), Full> {
        let mut r = self.registry.lock();
        if r.conns.len() >= self.limits.max_connections || self.closing.load(Ordering::SeqCst) {
            self.counters
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            return Err(Full);
        }
        r.next += 1;
        let id = r.next;
        let mailbox = Arc::new(Mailbox::default());
        r.conns.insert(id, mailbox.clone());
        Ok((id, mailbox))
    }

    /// The node is shutting down: every connection closes (going away), and no new one opens.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
        for m in self.registry.lock().conns.values() {
            m.wake.notify_one();
        }
    }

    pub fn stats(&self) -> SyncStats {
        let r = self.registry.lock();
        let c = &self.counters;
        SyncStats {
            connections: r.conns.len() as u64,
            documents_open: r.open_docs,
            bytes_in: c.bytes_in.load(Ordering::Relaxed),
            bytes_out: c.bytes_out.load(Ordering::Relaxed),
            changes_accepted: c.changes_accepted.load(Ordering::Relaxed),
            changes_refused: c.changes_refused.load(Ordering::Relaxed),
            changes_waiting: c.changes_waiting.load(Ordering::Relaxed),
            connections_refused: c.connections_refused.load(Ordering::Relaxed),
        }
    }

    pub(super) fn open(&self, conn: u64, key: &DocKey) {
        let mut r = self.registry.lock();
        if r.docs.entry(key.clone()).or_default().insert(conn) {
            r.open_docs += 1;
        }
    }

    pub(super) fn close_doc(&self, conn: u64, key: &DocKey) {
        let mut r = self.registry.lock();
        let removed = match r.docs.get_mut(key) {
            Some(set) => {
                let removed = set.remove(&conn);
                if set.is_empty() {
                    r.docs.remove(key);
                }
                removed
            }
            None => false,
        };
        if removed {
            r.open_docs -= 1;
        }
    }

    pub(super) fn disconnect(&self, conn: u64, keys: impl Iterator<Item = DocKey>) {
        for key in keys {
            self.close_doc(conn, &key);
        }
        self.registry.lock().conns.remove(&conn);
    }

    fn changed(&self, key: &DocKey) {
        let r = self.registry.lock();
        for id in r.docs.get(key).into_iter().flatten() {
            if let Some(m) = r.conns.get(id) {
                m.changed.lock().insert(key.clone());
                m.wake.notify_one();
            }
        }
    }

    fn changed_all(&self) {
        let r = self.registry.lock();
        for (key, ids) in &r.docs {
            for id in ids {
                if let Some(m) = r.conns.get(id) {
                    m.changed.lock().insert(key.clone());
                    m.wake.notify_one();
                }
            }
        }
    }

    /// Hands an ephemeral message to the document's other connections on this node.
    pub(super) fn relay(&self, from: u64, key: &DocKey, note: EphemeralNote) {
        let r = self.registry.lock();
        for id in r.docs.get(key).into_iter().flatten() {
            if *id == from {
                continue;
            }
            if let Some(m) = r.conns.get(id) {
                let mut q = m.ephemeral.lock();
                if q.len() >= self.limits.max_ephemeral_queued {
                    q.pop_front(); // presence is only ever as good as its newest message
                }
                q.push_back((key.clone(), note.clone()));
                m.wake.notify_one();
            }
        }
    }
}
