//! One client connection: the protocol's phases and what each message does. Frames in, frames
//! out; the caller moves them over a WebSocket (the server) or a channel (tests).
//!
//! - Until the client's `join` (protocol "1"), nothing else is accepted; the answer is `peer`.
//! - `request` or `sync` for a document opens it on this connection: a document this node does
//!   not know gets `doc-unavailable` at once; otherwise the client's changes are taken in
//!   (checked, stamped, durable) before the reply, whose heads include them, is sent.
//! - Every later change of an open document (any writer) is pushed as a `sync` message.
//! - `ephemeral` messages go to the document's other clients on this node.
//! - Anything malformed, addressed to someone else, or changes that break the layout: an `error`
//!   naming the problem (and the document), then the connection closes. Nothing of a refused
//!   message is applied; other connections go on.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use meridian_crdt::{DocKey, DocumentId, SyncState};

use super::hub::{EphemeralNote, Full, Hub, Mailbox};
use super::message::{Message, PeerMetadata, PROTOCOL};

/// What the caller does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this frame (binary).
    Frame(Vec<u8>),
    /// Close the connection, after the frames before this.
    Close(Close),
}

/// Why a connection ends (a WebSocket close code and reason, for the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client left, or said it failed.
    Normal(String),
    /// The client broke the protocol or its changes were refused (an `error` went first).
    Refused(String),
    /// The node is shutting down.
    GoingAway,
}

#[derive(Debug)]
enum Phase {
    WaitingForJoin,
    Open { peer: String },
    Closed,
}

#[derive(Debug)]
struct OpenDoc {
    key: DocKey,
    state: SyncState,
}

/// One client's connection to this node.
#[derive(Debug)]
pub struct Connection {
    hub: Arc<Hub>,
    id: u64,
    mailbox: Arc<Mailbox>,
    phase: Phase,
    docs: HashMap<DocumentId, OpenDoc>,
    by_key: HashMap<DocKey, DocumentId>,
    access: Arc<dyn super::Access>,
}

impl Connection {
    /// A new connection without restrictions, or [`Full`] (answer 503 before upgrading).
    pub fn open(hub: &Arc<Hub>) -> Result<Self, Full> {
        Self::open_as(hub, Arc::new(super::Open))
    }

    /// A new connection whose client may do what `access` allows, or [`Full`].
    pub fn open_as(hub: &Arc<Hub>, access: Arc<dyn super::Access>) -> Result<Self, Full> {
        let (id, mailbox) = hub.register()?;
        Ok(Connection {
            hub: hub.clone(),
            id,
            mailbox,
            phase: Phase::WaitingForJoin,
            docs: HashMap::new(),
            by_key: HashMap::new(),
            access,
        })
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Documents open on this connection.
    pub fn open_documents(&self) -> usize {
        self.docs.len()
    }

    /// A frame from the client.
    pub async fn receive(&mut self, frame: &[u8]) -> Vec<Output> {
        let hub = self.hub.clone();
        hub.counters
            .bytes_in
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if self.is_closed() {
            return vec![];
        }
        if frame.len() > hub.limits.max_message_bytes {
            let max = hub.limits.max_message_bytes;
            return self.fail(format!(
                "a message of {} bytes is over the limit of {max}",
                frame.len()
            ));
        }
        let msg = match Message::decode(frame) {
            Ok(m) => m,
            Err(e) => return self.fail(e.to_string()),
        };
        if let Err(e) = self.check_identity(&msg) {
            return self.fail(e);
        }
        match (&self.phase, msg) {
            (
                Phase::WaitingForJoin,
                Message::Join {
                    sender, versions, ..
                },
            ) => {
                if !versions.iter().any(|v| v == PROTOCOL) {
                    return self.fail(format!(
                        "unsupported protocol versions {versions:?}; this server speaks {PROTOCOL:?}"
                    ));
                }
                *self.mailbox.peer.lock() = Some(sender.clone());
                self.phase = Phase::Open {
                    peer: sender.clone(),
                };
                self.out(vec![Message::Peer {
                    sender: hub.peer_id.clone(),
                    target: sender,
                    version: PROTOCOL.into(),
                    metadata: Some(PeerMetadata::default()),
                }])
            }
            (Phase::WaitingForJoin, _) => self.fail("expected a join message".into()),
            (Phase::Open { .. }, Message::Join { .. } | Message::Peer { .. }) => {
                self.fail("unexpected join or peer message".into())
            }
            (Phase::Open { .. }, Message::Leave { .. }) => {
                self.close();
                vec![Output::Close(Close::Normal("the client left".into()))]
            }
            (
                Phase::Open { .. },
                Message::Request { doc, data, .. } | Message::Sync { doc, data, .. },
            ) => self.sync(doc, Some(&data)).await,
            (
                Phase::Open { .. },
                Message::Ephemeral {
                    sender,
                    count,
                    session,
                    doc,
                    data,
                    ..
                },
            ) => {
                if let Some(open) = self.docs.get(&doc) {
                    if data.len() <= hub.limits.max_ephemeral_bytes {
                        let note = EphemeralNote {
                            sender,
                            count,
                            session,
                            data,
                        };
                        hub.relay(self.id, &open.key, note);
                    }
                }
                vec![]
            }
            (Phase::Open { .. }, Message::Error { message }) => {
                tracing::debug!(conn = self.id, %message, "a sync client reported an error");
                self.close();
                vec![Output::Close(Close::Normal(format!(
                    "the client reported an error: {message}"
                )))]
            }
            // a client without the document, and heads gossip (no storage id here): nothing to do
            (
                Phase::Open { .. },
                Message::DocUnavailable { .. }
                | Message::RemoteSubscriptionChange { .. }
                | Message::RemoteHeadsChanged { .. },
            ) => vec![],
            (Phase::Closed, _) => vec![],
        }
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
        if self.hub.closing.load(std::sync::atomic::Ordering::SeqCst) {
            self.close();
            return vec![Output::Close(Close::GoingAway)];
        }
        let changed: Vec<DocKey> = self.mailbox.changed.lock().drain().collect();
        let ephemeral: Vec<(DocKey, EphemeralNote)> =
            self.mailbox.ephemeral.lock().drain(..).collect();
        let mut out = vec![];
        for key in changed {
            if let Some(doc) = self.by_key.get(&key).copied() {
                out.extend(self.sync(doc, None).await);
            }
        }
        let Phase::Open { peer } = &self.phase else {
            return out;
        };
        let mut frames = vec![];
        for (key, note) in ephemeral {
            if let Some(doc) = self.by_key.get(&key) {
                frames.push(Message::Ephemeral {
                    sender: note.sender,
                    target: peer.clone(),
                    count: note.count,
                    session: note.session,
                    doc: *doc,
                    data: note.data,
                });
            }
        }
        out.extend(self.out(frames));
        out
    }

    /// One round of the sync protocol for `doc`: the client's message (if any) in, the reply out.
    async fn sync(&mut self, doc: DocumentId, data: Option<&[u8]>) -> Vec<Output> {
        let hub = self.hub.clone();
        let Phase::Open { peer } = &self.phase else {
            return vec![];
        };
        let peer = peer.clone();
        let unavailable = |c: &mut Self| {
            c.out(vec![Message::DocUnavailable {
                sender: hub.peer_id.clone(),
                target: peer.clone(),
                doc,
            }])
        };
        if !self.docs.contains_key(&doc) {
            if data.is_none() {
                return vec![];
            }
            if self.docs.len() >= hub.limits.max_docs_per_connection {
                let max = hub.limits.max_docs_per_connection;
                return self.fail(format!(
                    "document {doc}: this connection already has {max} documents open, the limit"
                ));
            }
            match hub.store.resolve(&doc) {
                Ok(Some(key)) => {
                    if let Err(e) = self.access.read(key.collection()) {
                        tracing::info!(conn = self.id, %doc, reason = %e, "sync refused");
                        return self.fail(format!("document {doc}: {e}"));
                    }
                    hub.open(self.id, &key);
                    self.by_key.insert(key.clone(), doc);
                    self.docs.insert(
                        doc,
                        OpenDoc {
                            key,
                            state: SyncState::new(),
                        },
                    );
                }
                Ok(None) => return unavailable(self),
                Err(e) => return self.fail(format!("document {doc}: cannot look it up: {e}")),
            }
        }
        // the message is decoded to look for changes only when the client may not write: an
        // allowed write is decoded once, by the store
        if let Err(e) = self.access.write(self.docs[&doc].key.collection()) {
            if data.is_some_and(meridian_crdt::sync_message_carries_changes) {
                tracing::info!(conn = self.id, %doc, reason = %e, "sync refused");
                return self.fail(format!("document {doc}: {e}"));
            }
        }
        let open = self.docs.get_mut(&doc).expect("opened above");
        match hub
            .store
            .client_sync(&open.key, &mut open.state, data)
            .await
        {
            Ok(r) => {
                hub.counters
                    .changes_accepted
                    .fetch_add(r.accepted as u64, Ordering::Relaxed);
                let reply = r.reply.map(|data| Message::Sync {
                    sender: hub.peer_id.clone(),
                    target: peer.clone(),
                    doc,
                    data,
                });
                self.out(reply.into_iter().collect())
            }
            Err(meridian_crdt::Error::Refused(why)) => {
                hub.counters.changes_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn = self.id, %doc, %why, "refused a sync client's changes");
                self.fail(format!(
                    "document {doc}: {why}; nothing of this message was applied"
                ))
            }
            Err(meridian_crdt::Error::NotFound) => {
                let key = open.key.clone();
                self.forget(doc, &key);
                unavailable(self)
            }
            Err(e) => {
                tracing::warn!(conn = self.id, %doc, error = %e, "a client sync failed");
                self.fail(format!(
                    "document {doc}: this node cannot sync it now ({e})"
                ))
            }
        }
    }

    /// Every message but `join` and `error` names its sender; every message but `join`,
    /// `leave`, `error` names its target: they must be the joined client and this node.
    fn check_identity(&self, msg: &Message) -> Result<(), String> {
        if let (Phase::Open { peer }, Some(sender)) = (&self.phase, msg.sender()) {
            // an ephemeral message keeps its original author, whom this connection cannot vouch for
            if sender != peer && !matches!(msg, Message::Ephemeral { .. }) {
                return Err(format!(
                    "sender {sender:?} is not the peer that joined ({peer:?})"
                ));
            }
        }
        match msg.target() {
            Some(t) if t != self.hub.peer_id => Err(format!(
                "target {t:?} is not this node ({:?})",
                self.hub.peer_id
            )),
            _ => Ok(()),
        }
    }

    fn out(&self, msgs: Vec<Message>) -> Vec<Output> {
        msgs.into_iter()
            .map(|m| {
                let f = m.encode();
                self.hub
                    .counters
                    .bytes_out
                    .fetch_add(f.len() as u64, Ordering::Relaxed);
                Output::Frame(f)
            })
            .collect()
    }

    /// An `error` message, then the end of the connection.
    fn fail(&mut self, message: String) -> Vec<Output> {
        let mut out = self.out(vec![Message::Error {
            message: message.clone(),
        }]);
        self.close();
        out.push(Output::Close(Close::Refused(message)));
        out
    }

    /// Ends the connection for a reason found outside the protocol (a text frame, say): an
    /// `error` message, then the close.
    pub fn refuse(&mut self, reason: &str) -> Vec<Output> {
        self.fail(reason.to_owned())
    }

    fn forget(&mut self, doc: DocumentId, key: &DocKey) {
        self.docs.remove(&doc);
        self.by_key.remove(key);
        self.hub.close_doc(self.id, key);
    }

    fn close(&mut self) {
        if !self.is_closed() {
            self.phase = Phase::Closed;
            let keys: Vec<DocKey> = self.by_key.keys().cloned().collect();
            self.docs.clear();
            self.by_key.clear();
            self.hub.disconnect(self.id, keys.into_iter());
        }
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
                || self.1.closing.load(std::sync::atomic::Ordering::SeqCst);
            if waiting {
                return;
            }
            self.0.wake.notified().await;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}
