//! A node's side of the automerge sync protocol with clients: a client's changes checked on a
//! copy (layout, counter creations, the collection's contract), then taken in and stamped;
//! heads, needs and the next message.

use automerge::sync::{self, SyncDoc};
use automerge::{Automerge, ChangeHash, ReadDoc};
use uhlc::Timestamp;

use super::order::Adopted;
use super::{counter, layout, stamped, state_of, value_of, Document, State};
use crate::contract::Contract;
use crate::error::{Error, Result};

/// A client's sync message, applied to a copy of a document and checked (see
/// [`Document::check_client`]); [`Document::accept_client`] takes it in.
#[derive(Debug)]
pub struct ClientChanges {
    am: Automerge,
    /// Changes of client actors, new here.
    client: Vec<ChangeHash>,
    /// Creation changes of counters (see `counter`), new here: checked to be genuine.
    created: Vec<ChangeHash>,
}

/// What a client's sync message comes to (see [`Document::check_client`]).
#[derive(Debug)]
pub enum ClientCheck {
    /// Nothing new here.
    Nothing,
    /// It relays changes of other nodes (it synced with them) that this node lacks. A client
    /// cannot prove a node made them, so none is taken from it (a forged one could take a
    /// sequence number that node will use, and stop that document's replication): nothing of
    /// the message applies, and it waits until replication brings those changes.
    Waiting(Vec<ChangeHash>),
    Changes(Box<ClientChanges>),
}

impl ClientChanges {
    /// How many changes of clients (and counter creations they carry) are new.
    pub fn len(&self) -> usize {
        self.client.len() + self.created.len()
    }

    pub fn is_empty(&self) -> bool {
        self.client.is_empty() && self.created.is_empty()
    }
}

/// The automerge sync protocol's per-peer state (re-exported for the sync server and clients).
pub type SyncState = sync::State;

/// Whether an automerge sync message holds changes (a server checks write access before it
/// takes them in; an undecodable message holds none, and is refused when it is taken in).
pub fn sync_message_carries_changes(data: &[u8]) -> bool {
    sync::Message::decode(data).is_ok_and(|m| !m.changes.is_empty())
}

impl Document {
    /// Applies the changes of a client's sync message to a copy of this document and checks
    /// them (`layout`): a client writes under its own actor and leaves a document the HTTP API
    /// renders; none is this node's own or genesis's; changes of other nodes it relays are taken
    /// only from replication ([`ClientCheck::Waiting`]). `Err(Refused)`: nothing may be applied.
    pub fn check_client(
        &self,
        message: &sync::Message,
        contract: Option<&dyn Contract>,
    ) -> Result<ClientCheck> {
        let refuse = |m: String| Error::Refused(m);
        let mut received = Vec::new();
        for chunk in message.changes.iter() {
            received.extend(layout::decode_chunk(chunk).map_err(refuse)?);
        }
        if received.is_empty() {
            return Ok(ClientCheck::Nothing);
        }
        let me = self.am.get_actor();
        let mut relayed: Vec<ChangeHash> = Vec::new();
        for c in &received {
            let actor = c.actor_id();
            let new = self.am.get_change_meta_by_hash(&c.hash()).is_none();
            if new && actor != me && layout::is_node_actor(actor.to_bytes()) {
                relayed.push(c.hash());
            }
        }
        if !relayed.is_empty() {
            return Ok(ClientCheck::Waiting(relayed));
        }
        let mut am = self.am.clone();
        am.apply_changes(received)
            .map_err(|e| refuse(format!("changes that do not apply: {e}")))?;
        let (mut client, mut actors, mut created) = (vec![], vec![], vec![]);
        for m in am.get_changes_meta(&self.am.get_heads()) {
            let actor = m.actor.to_bytes();
            if counter::is_counter_actor(actor) {
                let genuine = am
                    .get_change_by_hash(&m.hash)
                    .is_some_and(|c| counter::is_genuine(&am, &c));
                if !genuine {
                    return Err(refuse(format!(
                        "change {} uses a counter actor but is not a counter's creation",
                        m.hash
                    )));
                }
                created.push(m.hash);
                continue;
            }
            if actor == layout::GENESIS_ACTOR || m.actor.as_ref() == me {
                return Err(refuse(format!(
                    "a client change may not use actor {} (genesis and this node are reserved)",
                    m.actor
                )));
            }
            // a node's change new here came from this message, and was sent to wait above
            debug_assert!(!layout::is_node_actor(actor));
            client.push(m.hash);
            actors.push(m.actor.into_owned());
        }
        if client.is_empty() && created.is_empty() {
            return Ok(ClientCheck::Nothing);
        }
        layout::check_client_changes(&am, &actors).map_err(refuse)?;
        if let (Some(contract), State::Live) = (contract, state_of(&am)) {
            let violations = contract.violations(&value_of(&am, &Adopted::of(&am)));
            if !violations.is_empty() {
                return Err(Error::SchemaViolation(violations));
            }
        }
        Ok(ClientCheck::Changes(Box::new(ClientChanges {
            am,
            client,
            created,
        })))
    }

    /// Takes in a client's changes checked by [`Document::check_client`] (of this same state)
    /// and, if it wrote any of its own, stamps them with an empty change whose message is
    /// `stamp`. Returns every new change with its bytes and whether it is the client's (or the
    /// stamp change: this node's own): the client's, then the stamp change.
    pub fn accept_client(
        &mut self,
        checked: ClientChanges,
        stamp: &Timestamp,
    ) -> Result<Vec<(ChangeHash, Vec<u8>, bool)>> {
        let ClientChanges {
            am,
            client,
            created,
        } = checked;
        let actor = self.am.get_actor().clone();
        self.touched();
        self.am = am;
        self.am.set_actor(actor);
        let mut out: Vec<(ChangeHash, Vec<u8>, bool)> = Vec::new();
        for h in created.iter().chain(&client) {
            out.push((
                *h,
                self.change_bytes(h).expect("a change just applied is here"),
                true,
            ));
        }
        if !client.is_empty() {
            self.touched();
            let h = self.am.empty_commit(stamped(stamp));
            out.push((
                h,
                self.change_bytes(&h)
                    .expect("a change just committed is here"),
                true,
            ));
        }
        let hashes: Vec<ChangeHash> = out.iter().map(|(h, _, _)| *h).collect();
        self.adopted.added(&self.am, &hashes);
        Ok(out)
    }

    /// Takes note of a sync message's heads, need and have, without its changes (a node applies
    /// those through [`Document::check_client`]; a client through [`Document::receive_sync`]).
    pub fn receive_sync_heads(&mut self, state: &mut SyncState, message: sync::Message) {
        let stripped = sync::Message {
            changes: sync::ChunkList::empty(),
            ..message
        };
        // without changes, receiving only updates `state`
        self.am
            .receive_sync_message(state, stripped)
            .expect("a sync message without changes applies nothing");
    }

    /// Receives a whole sync message, changes included, unchecked (a client trusts its node).
    /// Returns the hashes of the changes applied.
    pub fn receive_sync(
        &mut self,
        state: &mut SyncState,
        message: sync::Message,
    ) -> Result<Vec<ChangeHash>> {
        let before = self.heads();
        self.touched();
        self.am.receive_sync_message(state, message)?;
        Ok(self.note_added(&before))
    }

    /// The next sync message for the peer `state` belongs to, encoded; `None` when in sync.
    pub fn generate_sync(&self, state: &mut SyncState) -> Option<Vec<u8>> {
        self.am.generate_sync_message(state).map(|m| m.encode())
    }

    /// Of the changes in a client's sync message, those this document still lacks (they could
    /// not be applied: their dependencies are missing), and those missing dependencies.
    pub fn left_out(&self, message: &sync::Message) -> (usize, Vec<ChangeHash>) {
        let received: Vec<automerge::Change> = message
            .changes
            .iter()
            .filter_map(|chunk| layout::decode_chunk(chunk).ok())
            .flatten()
            .collect();
        let hashes: std::collections::HashSet<ChangeHash> =
            received.iter().map(|c| c.hash()).collect();
        let has = |h: &ChangeHash| self.am.get_change_meta_by_hash(h).is_some();
        let pending: Vec<&automerge::Change> =
            received.iter().filter(|c| !has(&c.hash())).collect();
        let mut missing: Vec<ChangeHash> = pending
            .iter()
            .flat_map(|c| c.deps().iter().copied())
            .filter(|d| !has(d) && !hashes.contains(d))
            .collect();
        missing.sort();
        missing.dedup();
        (pending.len(), missing)
    }

    /// A sync message that asks the peer to send again everything this document lacks, and
    /// the changes `need` by name: the answer to a message whose changes could not be applied.
    /// (A node does not queue a client's changes whose dependencies it lacks, as a plain
    /// automerge peer would; without this the client, which remembers having sent them, would
    /// never send them again.)
    pub fn generate_sync_asking(&self, state: &mut SyncState, need: Vec<ChangeHash>) -> Vec<u8> {
        // the peer clears what it remembers sending, and a message goes even if nothing changed
        state.needs_reset = true;
        state.last_sent_heads.clear();
        let mut message = self
            .am
            .generate_sync_message(state)
            .unwrap_or_else(|| sync::Message {
                heads: self.am.get_heads(),
                need: vec![],
                have: vec![],
                changes: sync::ChunkList::empty(),
                flags: None,
                version: sync::MessageVersion::V1,
            });
        message.need.extend(need);
        message.need.sort();
        message.need.dedup();
        message.encode()
    }
}
