//! The automerge-repo protocol of one client connection, without I/O: messages in, [`Step`]s
//! out. Store work (finding a document, one round of sync) is a step too; the caller does it
//! and hands the result back ([`Protocol::resolved`], [`Protocol::synced`]), so every rule here
//! is tested without a store (`tests.rs`). `connection.rs` runs the steps against the store and
//! the hub.
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
use std::sync::Arc;

use meridian_crdt::{DocKey, DocumentId, SyncState};

use super::message::{Message, PeerMetadata, PROTOCOL};
use super::Access;

#[cfg(test)]
mod tests;

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

/// An ephemeral message to relay, from its original sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EphemeralNote {
    pub(crate) sender: String,
    pub(crate) count: u64,
    pub(crate) session: String,
    pub(crate) data: Vec<u8>,
}

/// What the caller does next, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send this message to the client.
    Send(Message),
    /// Close the connection, after the messages before this.
    Close(Close),
    /// The client joined under this peer id (ephemeral messages are addressed to it).
    Joined(String),
    /// Store work: which document is `doc`? Answer with [`Protocol::resolved`].
    Resolve(DocumentId),
    /// Store work: one round of sync for `doc` with this client message (`None`: only the next
    /// message, after the document changed), on [`Protocol::sync_state`]. Answer with
    /// [`Protocol::synced`].
    Sync {
        doc: DocumentId,
        key: DocKey,
        data: Option<Vec<u8>>,
    },
    /// Store work: a message asking the client to send again what the document lacks (its
    /// last message waited for other nodes' changes, and the document has changed since).
    /// Answer with [`Protocol::synced`].
    AskAgain { doc: DocumentId, key: DocKey },
    /// Tell this connection when `key` changes.
    Follow(DocKey),
    /// No longer.
    Unfollow(DocKey),
    /// Hand this to the document's other connections.
    Relay(DocKey, EphemeralNote),
    /// The connection is over: unfollow these and forget it.
    Disconnect(Vec<DocKey>),
}

/// Sizes a client must keep to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) message_bytes: usize,
    pub(crate) documents: usize,
    pub(crate) ephemeral_bytes: usize,
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
    /// The client's last message waited for changes of other nodes (see
    /// `meridian_crdt::ClientCheck::Waiting`): the next change here asks it to send again.
    waiting: bool,
}

/// One connection's protocol state.
#[derive(Debug)]
pub(crate) struct Protocol {
    /// For the log.
    conn: u64,
    /// This node's peer id.
    me: String,
    bounds: Bounds,
    access: Arc<dyn Access>,
    phase: Phase,
    docs: HashMap<DocumentId, OpenDoc>,
    by_key: HashMap<DocKey, DocumentId>,
    /// The message of a document being resolved, sent on once it is.
    resolving: Option<(DocumentId, Vec<u8>)>,
}

impl Protocol {
    pub(crate) fn new(conn: u64, me: String, bounds: Bounds, access: Arc<dyn Access>) -> Self {
        Protocol {
            conn,
            me,
            bounds,
            access,
            phase: Phase::WaitingForJoin,
            docs: HashMap::new(),
            by_key: HashMap::new(),
            resolving: None,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    pub(crate) fn open_documents(&self) -> usize {
        self.docs.len()
    }

    /// A frame from the client.
    pub(crate) fn receive(&mut self, frame: &[u8]) -> Vec<Step> {
        if self.is_closed() {
            return vec![];
        }
        if frame.len() > self.bounds.message_bytes {
            let max = self.bounds.message_bytes;
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
                self.phase = Phase::Open {
                    peer: sender.clone(),
                };
                vec![
                    Step::Joined(sender.clone()),
                    Step::Send(Message::Peer {
                        sender: self.me.clone(),
                        target: sender,
                        version: PROTOCOL.into(),
                        metadata: Some(PeerMetadata::default()),
                    }),
                ]
            }
            (Phase::WaitingForJoin, _) => self.fail("expected a join message".into()),
            (Phase::Open { .. }, Message::Join { .. } | Message::Peer { .. }) => {
                self.fail("unexpected join or peer message".into())
            }
            (Phase::Open { .. }, Message::Leave { .. }) => {
                let mut out = self.close();
                out.push(Step::Close(Close::Normal("the client left".into())));
                out
            }
            (
                Phase::Open { .. },
                Message::Request { doc, data, .. } | Message::Sync { doc, data, .. },
            ) => self.open_or_sync(doc, data),
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
            ) => match self.docs.get(&doc) {
                Some(open) if data.len() <= self.bounds.ephemeral_bytes => {
                    let note = EphemeralNote {
                        sender,
                        count,
                        session,
                        data,
                    };
                    vec![Step::Relay(open.key.clone(), note)]
                }
                _ => vec![],
            },
            (Phase::Open { .. }, Message::Error { message }) => {
                tracing::debug!(conn = self.conn, %message, "a sync client reported an error");
                let mut out = self.close();
                out.push(Step::Close(Close::Normal(format!(
                    "the client reported an error: {message}"
                ))));
                out
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

    /// The answer to [`Step::Resolve`]: the document's key, `None` if this node has no such
    /// document, or why it could not be looked up.
    pub(crate) fn resolved(
        &mut self,
        doc: DocumentId,
        found: Result<Option<DocKey>, String>,
    ) -> Vec<Step> {
        let Some((_, data)) = self.resolving.take().filter(|(d, _)| *d == doc) else {
            return vec![];
        };
        if self.is_closed() {
            return vec![];
        }
        match found {
            Ok(Some(key)) => {
                if let Err(e) = self.access.read(&key) {
                    // this document only: the connection goes on with the others
                    tracing::info!(conn = self.conn, %doc, reason = %e, "sync of a document refused");
                    return self.unavailable(doc);
                }
                self.by_key.insert(key.clone(), doc);
                self.docs.insert(
                    doc,
                    OpenDoc {
                        key: key.clone(),
                        state: SyncState::new(),
                        waiting: false,
                    },
                );
                let mut out = vec![Step::Follow(key)];
                out.extend(self.sync(doc, Some(data)));
                out
            }
            Ok(None) => self.unavailable(doc),
            Err(e) => self.fail(format!("document {doc}: cannot look it up: {e}")),
        }
    }

    /// The sync state [`Step::Sync`] runs on; `None` if the document is no longer open.
    pub(crate) fn sync_state(&mut self, doc: DocumentId) -> Option<&mut SyncState> {
        self.docs.get_mut(&doc).map(|d| &mut d.state)
    }

    /// The answer to [`Step::Sync`]: the reply to send (if any), or why the round failed.
    pub(crate) fn synced(
        &mut self,
        doc: DocumentId,
        result: Result<Option<Vec<u8>>, meridian_crdt::Error>,
    ) -> Vec<Step> {
        let (Phase::Open { peer }, Some(open)) = (&self.phase, self.docs.get(&doc)) else {
            return vec![];
        };
        match result {
            Ok(reply) => reply
                .map(|data| {
                    Step::Send(Message::Sync {
                        sender: self.me.clone(),
                        target: peer.clone(),
                        doc,
                        data,
                    })
                })
                .into_iter()
                .collect(),
            Err(meridian_crdt::Error::Refused(why)) => {
                tracing::info!(conn = self.conn, %doc, %why, "refused a sync client's changes");
                self.fail(format!(
                    "document {doc}: {why}; nothing of this message was applied"
                ))
            }
            Err(meridian_crdt::Error::NotFound) => {
                let key = open.key.clone();
                self.docs.remove(&doc);
                self.by_key.remove(&key);
                let mut out = vec![Step::Unfollow(key)];
                out.extend(self.unavailable(doc));
                out
            }
            Err(e) => {
                tracing::warn!(conn = self.conn, %doc, error = %e, "a client sync failed");
                self.fail(format!(
                    "document {doc}: this node cannot sync it now ({e})"
                ))
            }
        }
    }

    /// `key` changed here: a sync round if it is open on this connection (one that asks the
    /// client to send again, if its last message waited).
    pub(crate) fn changed(&mut self, key: &DocKey) -> Vec<Step> {
        let Some(doc) = self.by_key.get(key).copied() else {
            return vec![];
        };
        match self.docs.get_mut(&doc) {
            Some(open) if open.waiting => {
                open.waiting = false;
                vec![Step::AskAgain {
                    doc,
                    key: key.clone(),
                }]
            }
            _ => self.sync(doc, None),
        }
    }

    /// The client's message for `doc` waits for other nodes' changes this node lacks.
    pub(crate) fn waiting(&mut self, doc: DocumentId) {
        if let Some(open) = self.docs.get_mut(&doc) {
            open.waiting = true;
        }
    }

    /// Other clients' ephemeral messages, for the documents open here.
    pub(crate) fn ephemeral(&self, notes: Vec<(DocKey, EphemeralNote)>) -> Vec<Step> {
        let Phase::Open { peer } = &self.phase else {
            return vec![];
        };
        notes
            .into_iter()
            .filter_map(|(key, note)| {
                let doc = self.by_key.get(&key)?;
                Some(Step::Send(Message::Ephemeral {
                    sender: note.sender,
                    target: peer.clone(),
                    count: note.count,
                    session: note.session,
                    doc: *doc,
                    data: note.data,
                }))
            })
            .collect()
    }

    /// The node is shutting down.
    pub(crate) fn going_away(&mut self) -> Vec<Step> {
        let mut out = self.close();
        out.push(Step::Close(Close::GoingAway));
        out
    }

    /// Ends the connection for a reason found outside the protocol (a text frame, say): an
    /// `error` message, then the close.
    pub(crate) fn refuse(&mut self, reason: &str) -> Vec<Step> {
        self.fail(reason.to_owned())
    }

    /// The connection is over (also when the socket went away): forget its documents.
    pub(crate) fn close(&mut self) -> Vec<Step> {
        if self.is_closed() {
            return vec![];
        }
        self.phase = Phase::Closed;
        self.resolving = None;
        let keys = self.by_key.drain().map(|(k, _)| k).collect();
        self.docs.clear();
        vec![Step::Disconnect(keys)]
    }

    /// A client message for `doc`: opens it first (through [`Step::Resolve`]) if need be.
    fn open_or_sync(&mut self, doc: DocumentId, data: Vec<u8>) -> Vec<Step> {
        if self.docs.contains_key(&doc) {
            return self.sync(doc, Some(data));
        }
        if self.docs.len() >= self.bounds.documents {
            let max = self.bounds.documents;
            return self.fail(format!(
                "document {doc}: this connection already has {max} documents open, the limit"
            ));
        }
        self.resolving = Some((doc, data));
        vec![Step::Resolve(doc)]
    }

    /// A sync round for an open document, unless the client may not write and sends changes.
    fn sync(&mut self, doc: DocumentId, data: Option<Vec<u8>>) -> Vec<Step> {
        let Some(open) = self.docs.get(&doc) else {
            return vec![];
        };
        // the message is decoded to look for changes only when the client may not write: an
        // allowed write is decoded once, by the store
        if let Err(e) = self.access.write(&open.key) {
            if data
                .as_deref()
                .is_some_and(meridian_crdt::sync_message_carries_changes)
            {
                tracing::info!(conn = self.conn, %doc, reason = %e, "sync refused");
                return self.fail(format!("document {doc}: {e}"));
            }
        }
        vec![Step::Sync {
            doc,
            key: open.key.clone(),
            data,
        }]
    }

    fn unavailable(&self, doc: DocumentId) -> Vec<Step> {
        let Phase::Open { peer } = &self.phase else {
            return vec![];
        };
        vec![Step::Send(Message::DocUnavailable {
            sender: self.me.clone(),
            target: peer.clone(),
            doc,
        })]
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
            Some(t) if t != self.me => {
                Err(format!("target {t:?} is not this node ({:?})", self.me))
            }
            _ => Ok(()),
        }
    }

    /// An `error` message, then the end of the connection.
    fn fail(&mut self, message: String) -> Vec<Step> {
        let mut out = vec![Step::Send(Message::Error {
            message: message.clone(),
        })];
        out.extend(self.close());
        out.push(Step::Close(Close::Refused(message)));
        out
    }
}
