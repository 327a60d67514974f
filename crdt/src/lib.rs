//! Meridian's document model: JSON documents as automerge CRDTs, stored durably in sled.
//!
//! Nothing here knows about HTTP; the server maps [`Error`] to statuses in one place.
//!
//! # Layout
//! - `key`: validated collection names and document ids.
//! - `json`: parsing client JSON (depth limit, integer range).
//! - `pointer`: JSON Pointers for the ops API.
//! - `hlc`: node ids and the hybrid logical clock that stamps every change.
//! - `doc`: one document: genesis, edits (PUT, merge patch, ops, delete), rendering with
//!   HLC-ordered conflict resolution.
//! - `record`: on-disk record formats and key layout.
//! - `wal`: the write-ahead log (records, segments, recovery).
//! - `commit`: group commit (one log sync for many writers) and checkpoints.
//! - `store`: the durable store: cache, locks, batches, reads that never see undurable writes.
#![warn(unreachable_pub, missing_debug_implementations)]

mod commit;
mod doc;
mod error;
mod hlc;
pub mod json;
mod key;
pub mod pointer;
mod record;
mod store;
mod wal;

pub use doc::{
    parse_ops, Applied, Conflict, ConflictValue, Document, Edit, Op, RemoteChange, State,
};
pub use error::{Error, Result};
pub use hlc::{display_stamp, parse_stamp, Clock, NodeId, DEFAULT_MAX_DRIFT};
pub use key::{validate_name, DocKey, MAX_NAME_LEN};
pub use record::{FeedEntry, WriteOutcome};
pub use store::{
    DocState, DocView, FeedPage, Idempotency, Merged, Page, Progress, Store, StoreConfig,
    StoreStats, Written, DIGEST_BUCKETS,
};

pub use automerge::{ActorId, ChangeHash};
pub use uhlc::Timestamp;
