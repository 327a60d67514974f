//! Replication between Meridian's regional nodes.
//!
//! Every node serves its own changes as a feed ordered by hybrid logical clock, and follows each
//! peer's feed (a subscription, or long polls) from a durable per-peer cursor; so a node gets
//! exactly the changes it lacks, promptly, and a restart or a healed partition resumes where it
//! stopped. A periodic anti-entropy pass compares two levels of digests of document versions
//! and fetches, for the documents that differ, the changes the local heads lack: it repairs
//! whatever the feeds missed (a change relayed by a third node, a lost message, a restored
//! backup), and catches a node up whose cursor a peer's trimmed feed no longer holds. Session tokens name, per node,
//! the HLC time a client's session has seen; a node answers a request only from state covering
//! its token, fetching from the named node (bounded in time) when behind.
//!
//! The decisions about each peer (what to do next, how long to back off, when to repair, whether
//! it is reachable) are pure functions and a state machine (`replica::engine`,
//! `replica::status`) that tests drive without tokio, timers or a network. Around them, tokio
//! tasks do the waiting; a [`Transport`] moves request bytes to a peer and back (HTTP in the
//! server, an in-memory faulty network in the tests), and the store does the disk work.
//!
//! The same crate serves clients that sync documents themselves (automerge-repo): see [`repo`].
//!
//! # Layout
//! - `error`: [`Error`], why an exchange with a peer failed.
//! - `token`: session tokens (parse, print, merge).
//! - `wire`: the node-to-node messages.
//! - `replica`: one node's replication, a module per concept: `engine` (per-peer decisions),
//!   `page` (what a feed page means, as effects), `link` (peer calls), `merge` (checking and
//!   merging what peers send), `serve` (answering peers), `follow` (following their feeds),
//!   `repair` (anti-entropy),
//!   `trim` (trimming this node's feed), `session` (token waits), `status` (each peer's link,
//!   the reachability rule, `/v1/cluster`), `members` and `regions` (the set of regions,
//!   changed while nodes run).
//! - `repo`: the automerge-repo sync server for clients: messages, connections, the hub.
//! - `workers`: [`Workers`], the one runner of a node's background loops, with one stop signal
//!   and an exit deadline.
//!
//! Without the `node` feature (on by default) only `token` and `repo`'s messages remain, for
//! clients.
#![warn(unreachable_pub, missing_debug_implementations)]

#[cfg(feature = "node")]
mod error;
#[cfg(feature = "node")]
mod replica;
pub mod repo;
mod token;
#[cfg(feature = "node")]
mod wire;
#[cfg(feature = "node")]
pub mod workers;

#[cfg(feature = "node")]
pub use error::{Error, Result};
#[cfg(feature = "node")]
pub use replica::{
    check_url, Behind, Chunks, ClusterReport, FeedMode, Lag, MemberError, Members, Peer,
    PeerReport, PlacedCollection, PlacementReport, Plan, RegionReport, RegionsError, RegionsReport,
    RemovedRegion, RepairPass, Replica, ReplicationConfig, Transport, MEMBERS, REGIONS,
};
pub use token::{BadToken, SessionToken, MAX_TOKEN_NODES};
#[cfg(feature = "node")]
pub use wire::{
    decode, decode_at, decode_checked, encode, encode_at, frame, frame_at, hex as trace_hex,
    spoken_by, Decoded, DocChanges, DocHeads, Extras, FrameReader, Request, Response, Undecodable,
    Versions, MAX_FRAME, OLDEST_WIRE_VERSION, WIRE_VERSION,
};
#[cfg(feature = "node")]
pub use workers::{Stop, Workers};
