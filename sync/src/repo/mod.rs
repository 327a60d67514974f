//! The automerge-repo sync server (protocol "1"), so that automerge-repo clients (JS
//! `@automerge/automerge-repo` 2.x, samod, Meridian's client library) sync Meridian documents
//! unchanged. `docs/sync.md` describes the contract.
//!
//! # Layout
//! - `message`: the CBOR messages.
//! - `protocol`: one client connection's protocol, without I/O: messages in, steps out (store
//!   work among them, answered by the caller).
//! - `connection`: runs a protocol's steps against the store and the hub: frames in, frames out.
//! - `hub`: the node's connections, which documents each has open, change notices, limits.
//! - [`Access`]: what a connection's client may read and write, per document, decided by the
//!   server.

#[cfg(feature = "node")]
mod connection;
#[cfg(feature = "node")]
mod hub;
mod message;
#[cfg(feature = "node")]
mod protocol;

#[cfg(feature = "node")]
pub use connection::{Connection, Notices, Output};
#[cfg(feature = "node")]
pub use hub::{Full, Hub, SyncLimits, SyncStats};
pub use message::{BadMessage, Message, PeerMetadata, PROTOCOL};
#[cfg(feature = "node")]
pub use protocol::Close;

#[cfg(all(test, feature = "node"))]
mod tests;

/// What one connection's client may do, per document; the server decides (API keys, scoped
/// tokens). A document the client may not read is answered `doc-unavailable` when it asks for
/// it, and the connection goes on with the others; changes to one it may read but not write are
/// refused before anything is applied, with an `error` naming the document and the reason, and
/// the connection closes.
pub trait Access: Send + Sync + std::fmt::Debug {
    /// `Err(reason)` when the client may not read the document `key`.
    fn read(&self, key: &meridian_crdt::DocKey) -> Result<(), String>;
    /// `Err(reason)` when the client may not change the document `key` (asked of every sync
    /// message; the connection refuses only one that carries changes, and logs that).
    fn write(&self, key: &meridian_crdt::DocKey) -> Result<(), String>;
}

/// No restriction: a node without API keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct Open;

impl Access for Open {
    fn read(&self, _: &meridian_crdt::DocKey) -> Result<(), String> {
        Ok(())
    }
    fn write(&self, _: &meridian_crdt::DocKey) -> Result<(), String> {
        Ok(())
    }
}
