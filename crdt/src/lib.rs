//! Meridian's document model: JSON documents as automerge CRDTs, stored durably in sled.
//!
//! Nothing here knows about HTTP; the server maps [`Error`] to statuses in one place.
//!
//! # Layout
//! - `key`: validated collection names and document ids.
//! - `docid`: the automerge-repo id of every document.
//! - `json`: parsing client JSON (depth limit, integer range).
//! - `pointer`: JSON Pointers for the ops API.
//! - `placement`: collections limited to a set of regions.
//! - `hlc`: node ids and the hybrid logical clock that stamps every change.
//! - `contract`: what a collection's schema asks of a document (merge policy per field, the
//!   rules it breaks); the server builds contracts from JSON Schemas.
//! - `doc`: one document: its public layout (genesis, `v`, `d`), edits (PUT, merge patch, ops,
//!   delete), client changes, rendering with HLC-ordered conflict resolution.
//! - `record`: on-disk record formats and key layout.
//! - `wal`: the write-ahead log (records, segments, recovery).
//! - `dbs`: the two sled databases (documents; the trimmed feed and events) and what routes a
//!   record to one.
//! - `commit`: group commit (one log sync for many writers) and checkpoints.
//! - `store`: the durable store: one commit path for local writes, merges and client changes;
//!   cache, reads that never see undurable writes, the feed, change events (the live change
//!   feed's store), digests, idempotency keys, document ids.
//!
//! The last four are the `store` feature (on by default); clients use the document model only.
#![warn(unreachable_pub, missing_debug_implementations)]

#[cfg(feature = "store")]
mod commit;
mod contract;
#[cfg(feature = "store")]
mod dbs;
mod doc;
mod docid;
mod error;
mod hlc;
pub mod json;
mod key;
mod placement;
pub mod pointer;
#[cfg(feature = "store")]
mod record;
#[cfg(feature = "store")]
mod store;
#[cfg(feature = "store")]
mod wal;

pub use contract::{Contract, Merge, Violation};
pub use doc::{
    genesis_bytes, genesis_hash, parse_ops, sync_message_carries_changes, Applied, ClientChanges,
    ClientCheck, Conflict, ConflictValue, Document, Edit, Op, RemoteChange, State, SyncState,
};
pub use docid::{BadDocumentId, DocumentId};
pub use error::{Error, Result};
pub use hlc::{display_stamp, parse_stamp, Clock, NodeId, DEFAULT_MAX_DRIFT};
pub use key::{validate_name, DocKey, MAX_NAME_LEN};
pub use placement::{Placement, PLACEMENT_COLLECTION, PLACEMENT_DOC};
#[cfg(feature = "store")]
pub use record::{ChangeEvent, FeedEntry, WriteOutcome};
#[cfg(feature = "store")]
pub use store::{
    backup_format, check_log, repair_log, repair_log_accepting_loss, BackupPage, ClientSynced,
    Contracts, DocEvents, DocState, DocView, EventBounds, EventWatch, FeedPage, Finding,
    HealSources, Healed, Idempotency, LogReport, Merged, Missed, Page, Progress, ScrubBatch,
    ScrubStatus, SegmentReport, Storage, StorageProblem, Store, StoreConfig, StoreStats, Written,
    DEFAULT_FLOOR_BYTES, DIGEST_BUCKETS, DIGEST_LEAVES, LEAVES_PER_BUCKET, SCHEMAS,
};

pub use automerge::{ActorId, ChangeHash};
pub use uhlc::Timestamp;
