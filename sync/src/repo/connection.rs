//! One client connection: runs the [`Protocol`]'s steps against the store and the hub. Frames
//! in, frames out; the caller moves them over a WebSocket (the server) or a channel (tests).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use meridian_crdt::DocKey;

use super::hub::{EphemeralNote, Full, Hub, Mailbox};
use super::protocol::{Bounds, Close, Protocol, Step};

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this frame (binary).
    Frame(Vec<u8>),
    /// Close the connection, after the frames before this.
    Close(Close),
}

/// One client's connection to this node.
#[derive(Debug)]
pub struct Connection {
    hub: Arc<Hub>,
    id: u64,
    mailbox: Arc<Mailbox>,
    protocol: Protocol,
}

impl Connection {
    /// A new connection without restrictions, or [`Full`] (answer 503 before upgrading).
    pub fn open(hub: &Arc<Hub>) -> Result<Self, Full> {
        Self::open_as(hub, Arc::new(super::Open))
    }

    /// A new connection whose client may do what `access` allows, or [`Full`].
    pub fn open_as(hub: &Arc<Hub>, access: Arc<dyn super::Access>) -> Result<Self, Full> {
        let (id, mailbox) = hub.register()?;
        let limits = hub.limits();
        let bounds = Bounds {
            message_bytes: limits.max_message_bytes,
            documents: limits.max_docs_per_connection,
            ephemeral_bytes: limits.max_ephemeral_bytes,
        };
        Ok(Connection {
            protocol: Protocol::new(id, hub.peer_id().to_owned(), bounds, access),
            hub: hub.clone(),
            id,
            mailbox,
        })
    }

    pub fn is_closed(&self) -> bool {
        self.protocol.is_closed()
    }

    /// Documents open on this connection.
    pub fn open_documents(&self) -> usize {
        self.protocol.open_documents()
    }

    /// A frame from the client.
    pub async fn receive(&mut self, frame: &[u8]) -> Vec<Output> {
        self.hub
            .counters
            .bytes_in
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        let steps = self.protocol.receive(frame);
        self.run(steps).await
    }

    /// A handle to wait on for notices, without holding the connection.
    pub fn notices(&self) -> Notices {
        Notices(self.mailbox.clone(), self.hub.clone())
    }

    /// Waits for the next notice, then does what it asks (tests; the server waits on
    /// [`Notices::ready`] beside the socket and then calls [`Connection::drain_notices`]).
    pub async fn notified(&mut self) -> Vec<Output> {
        loop {
            self.notices().ready().await;
            let out = self.drain_notices().await;
            if !out.is_empty() || self.is_closed() {
                return out;
            }
        }
    }

    /// Answers the notices waiting: a `sync` for each open document that changed, the
    /// ephemeral messages of other clients.
    pub async fn drain_notices(&mut self) -> Vec<Output> {
        if self.is_closed() {
            return vec![];
        }
        if self.hub.closing.load(Ordering::SeqCst) {
            let steps = self.protocol.going_away();
            return self.run(steps).await;
        }
        let changed: Vec<DocKey> = self.mailbox.changed.lock().drain().collect();
        let ephemeral: Vec<(DocKey, EphemeralNote)> =
            self.mailbox.ephemeral.lock().drain(..).collect();
        let mut out = vec![];
        for key in changed {
            let steps = self.protocol.changed(&key);
            out.extend(self.run(steps).await);
        }
        let steps = self.protocol.ephemeral(ephemeral);
        out.extend(self.run(steps).await);
        out
    }

    /// Ends the connection for a reason found outside the protocol (a text frame, say): an
    /// `error` message, then the close.
    pub fn refuse(&mut self, reason: &str) -> Vec<Output> {
        let steps = self.protocol.refuse(reason);
        steps.into_iter().filter_map(|s| self.apply(s)).collect()
    }

    /// Does the steps in order; store work's answers go back to the protocol, and the steps
    /// they lead to run before the rest.
    async fn run(&mut self, steps: Vec<Step>) -> Vec<Output> {
        let mut queue = VecDeque::from(steps);
        let mut out = vec![];
        while let Some(step) = queue.pop_front() {
            let next = match step {
                Step::Resolve(doc) => {
                    // a document of a collection placed elsewhere is not served here: to the
                    // client it is unavailable, as in a region that never had it
                    let store = &self.hub.store;
                    let found = store
                        .resolve(&doc)
                        .map(|k| k.filter(|k| store.holds(k.collection())))
                        .map_err(|e| e.to_string());
                    self.protocol.resolved(doc, found)
                }
                Step::Sync { doc, key, data } => {
                    let Some(state) = self.protocol.sync_state(doc) else {
                        continue;
                    };
                    let result = self
                        .hub
                        .store
                        .client_sync(&key, state, data.as_deref())
                        .await;
                    let counters = &self.hub.counters;
                    match &result {
                        Ok(r) => counters
                            .changes_accepted
                            .fetch_add(r.accepted as u64, Ordering::Relaxed),
                        Err(meridian_crdt::Error::Refused(_)) => {
                            counters.changes_refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(_) => 0,
                    };
                    if result.as_ref().is_ok_and(|r| r.waiting) {
                        counters.changes_waiting.fetch_add(1, Ordering::Relaxed);
                        self.protocol.waiting(doc);
                    }
                    self.protocol.synced(doc, result.map(|r| r.reply))
                }
                Step::AskAgain { doc, key } => {
                    let Some(state) = self.protocol.sync_state(doc) else {
                        continue;
                    };
                    let result = self.hub.store.client_ask_again(&key, state).await;
                    self.protocol.synced(doc, result.map(Some))
                }
                other => {
                    out.extend(self.apply(other));
                    continue;
                }
            };
            for s in next.into_iter().rev() {
                queue.push_front(s);
            }
        }
        out
    }

    /// A step that needs no store: an output for the caller, or the hub's bookkeeping.
    fn apply(&self, step: Step) -> Option<Output> {
        match step {
            Step::Send(m) => {
                let f = m.encode();
                self.hub
                    .counters
                    .bytes_out
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                return Some(Output::Frame(f));
            }
            Step::Close(c) => return Some(Output::Close(c)),
            Step::Joined(peer) => *self.mailbox.peer.lock() = Some(peer),
            Step::Follow(key) => self.hub.open(self.id, &key),
            Step::Unfollow(key) => self.hub.close_doc(self.id, &key),
            Step::Relay(key, note) => self.hub.relay(self.id, &key, note),
            Step::Disconnect(keys) => self.hub.disconnect(self.id, keys.into_iter()),
            Step::Resolve(_) | Step::Sync { .. } | Step::AskAgain { .. } => {
                unreachable!("store work runs in Connection::run")
            }
        }
        None
    }
}

/// Where a connection's notices arrive (see [`Connection::notices`]).
#[derive(Debug, Clone)]
pub struct Notices(Arc<Mailbox>, Arc<Hub>);

impl Notices {
    /// Returns once there is something for [`Connection::drain_notices`].
    pub async fn ready(&self) {
        loop {
            let waiting = !self.0.changed.lock().is_empty()
                || !self.0.ephemeral.lock().is_empty()
                || self.1.closing.load(Ordering::SeqCst);
            if waiting {
                return;
            }
            self.0.wake.notified().await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for step in self.protocol.close() {
            self.apply(step);
        }
    }
}
