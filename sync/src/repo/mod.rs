//! The automerge-repo sync server (protocol "1"), so that automerge-repo clients (JS
//! `@automerge/automerge-repo` 2.x, samod, Meridian's client library) sync Meridian documents
//! unchanged. `docs/sync.md` describes the contract.
//!
//! # Layout
//! - `message`: the CBOR messages.
//! - `connection`: one client connection: frames in, frames out.
//! - `hub`: the node's connections, which documents each has open, change notices, limits.

#[cfg(feature = "node")]
mod connection;
#[cfg(feature = "node")]
mod hub;
mod message;

#[cfg(feature = "node")]
pub use connection::{Close, Connection, Notices, Output};
#[cfg(feature = "node")]
pub use hub::{Full, Hub, SyncLimits, SyncStats};
pub use message::{BadMessage, Message, PeerMetadata, PROTOCOL};

#[cfg(all(test, feature = "node"))]
mod tests;
