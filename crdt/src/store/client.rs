//! Clients that sync documents with automerge's sync protocol (automerge-repo), and the notices
//! that tell their connections a document changed.
//!
//! A client's changes are checked on a copy of the document (`doc::layout`), then taken in and
//! stamped: each gets a stamp of this node for its place in the feed (so peers receive it like
//! a local write), and an empty *stamp change* carrying the last of those stamps gives them their
//! rank in conflicts (`doc::order`). All of it goes through the one commit path; the reply, whose
//! heads tell the client what this node has, is made only from durable state.

use automerge::sync;

use super::write::NewChange;
use super::{Inner, Store};
use crate::doc::{ClientCheck, SyncState};
use crate::docid::DocumentId;
use crate::error::{Error, Result};
use crate::key::DocKey;

/// What one sync message from a client did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientSynced {
    /// The automerge sync message to send back, if there is anything to say.
    pub reply: Option<Vec<u8>>,
    /// Changes of the client's that are now durable here.
    pub accepted: usize,
    /// The message relayed changes of other nodes that this node lacks, so nothing of it was
    /// taken (see [`crate::ClientCheck::Waiting`]); there is no reply. Once the document changes
    /// here, [`Store::client_ask_again`] asks the client to send again what it has.
    pub waiting: bool,
}

/// Notices of documents whose durable state changed, by any kind of write (see [`Store::watch`]).
#[derive(Debug)]
pub struct DocEvents(tokio::sync::broadcast::Receiver<DocKey>);

/// A listener fell so far behind that notices were lost: it must treat every document it follows
/// as changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Missed;

impl DocEvents {
    /// The next document that changed; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Result<DocKey, Missed>> {
        use tokio::sync::broadcast::error::RecvError;
        match self.0.recv().await {
            Ok(key) => Some(Ok(key)),
            Err(RecvError::Lagged(_)) => Some(Err(Missed)),
            Err(RecvError::Closed) => None,
        }
    }
}

impl Store {
    /// Notices of every document whose durable state changes from now on.
    pub fn watch(&self) -> DocEvents {
        DocEvents(self.inner.doc_changed.subscribe())
    }

    /// The document an automerge-repo id names, if this node has it (written here, or received
    /// from a peer).
    pub fn resolve(&self, id: &DocumentId) -> Result<Option<DocKey>> {
        Ok(self.inner.doc_ids.get(id))
    }

    /// One round of the sync protocol with a client for one document: takes in the changes of
    /// `message` (if any; checked, stamped and durable before this returns), notes what the
    /// client has, and answers from durable state. `message: None` only asks for the next message
    /// (after the document changed). `Err(Refused)`: the client's changes break the layout and
    /// nothing of them was applied. `Err(NotFound)`: no such document here.
    pub async fn client_sync(
        &self,
        key: &DocKey,
        state: &mut SyncState,
        message: Option<&[u8]>,
    ) -> Result<ClientSynced> {
        let inner = &*self.inner;
        inner.check_placed(key.collection())?;
        let message = message
            .map(|b| {
                sync::Message::decode(b)
                    .map_err(|e| Error::Refused(format!("undecodable sync message: {e}")))
            })
            .transpose()?;
        let accepted = match &message {
            Some(m) if !m.changes.is_empty() => {
                inner.space.check(super::space::Need::New)?;
                match inner.accept_client(key, m).await? {
                    Some(n) => n,
                    None => {
                        // its heads are not noted either: the client keeps what it sent, and
                        // answering its heads would ask for them, again and again
                        return Ok(ClientSynced {
                            reply: None,
                            accepted: 0,
                            waiting: true,
                        });
                    }
                }
            }
            _ => 0,
        };
        let Some((slot, _lock)) = inner.settled_slot(key).await? else {
            return Err(Error::NotFound);
        };
        let mut doc = slot.doc.lock();
        let Some(m) = message else {
            return Ok(ClientSynced {
                reply: doc.generate_sync(state),
                accepted,
                waiting: false,
            });
        };
        let (left_out, need) = doc.left_out(&m);
        doc.receive_sync_heads(state, m);
        let reply = if left_out > 0 {
            Some(doc.generate_sync_asking(state, need))
        } else {
            doc.generate_sync(state)
        };
        Ok(ClientSynced {
            reply,
            accepted,
            waiting: false,
        })
    }

    /// A message that asks the client to send again whatever this document lacks (after a
    /// message of its waited for changes of other nodes, and the document has changed since).
    pub async fn client_ask_again(&self, key: &DocKey, state: &mut SyncState) -> Result<Vec<u8>> {
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Err(Error::NotFound);
        };
        let doc = slot.doc.lock();
        Ok(doc.generate_sync_asking(state, vec![]))
    }
}

impl Inner {
    /// Checks, stamps and commits a client's changes; returns how many of its own are new, once
    /// durable, or `None` when the message relays changes of other nodes this node lacks (then
    /// nothing of it is taken: only replication brings a node's changes).
    async fn accept_client(&self, key: &DocKey, message: &sync::Message) -> Result<Option<usize>> {
        self.check_writable()?;
        if key.collection().starts_with('_') {
            return Err(Error::Refused(format!(
                "{key} is in a collection reserved for Meridian: it is written only through the HTTP API"
            )));
        }
        let mut w = self.open_write(key).await?;
        if w.prev().is_none() {
            return Err(Error::NotFound);
        }
        let contract = self.contract_of(key.collection());
        let check = w.doc().check_client(message, contract.as_deref())?;
        let checked = match check {
            ClientCheck::Changes(c) => *c,
            ClientCheck::Nothing => {
                let _ = w.unchanged();
                return Ok(Some(0));
            }
            ClientCheck::Waiting(relayed) => {
                let _ = w.unchanged();
                tracing::debug!(%key, changes = relayed.len(), "a client relays changes of other nodes this node lacks: its message waits for replication");
                return Ok(None);
            }
        };
        let n = checked.len();
        // the client's changes and the stamp change: n + 1 stamps, the last on the stamp change
        let stamps = (n > 0).then(|| self.stamps(n + 1));
        let mut own = stamps.iter().flat_map(|g| g.all().iter().copied());
        let last = stamps
            .as_ref()
            .map(|g| *g.all().last().expect("n + 1 stamps"));
        let new = w
            .doc_dirty()
            .accept_client(checked, &last.unwrap_or_else(|| self.clock.now()))?;
        let changes = new
            .into_iter()
            .map(|(hash, bytes, ours)| NewChange {
                hash,
                bytes,
                feed: if ours { own.next() } else { None },
            })
            .collect();
        w.commit(changes, |_| vec![])?.durable().await?;
        drop(stamps);
        Ok(Some(n))
    }
}
