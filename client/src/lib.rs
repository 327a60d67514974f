//! A Rust client for Meridian.
//!
//! - [`Client`]: the HTTP API, typed, with the session token kept and merged across regions,
//!   an idempotency key per logical write reused on every retry, retries with exponential
//!   backoff and jitter that honour `Retry-After`, and failover along a list of regions; an API
//!   key on every request, and `https://` regions with the cluster's CA (or the public ones).
//! - [`Replicas`] and [`LocalDoc`]: offline replicas kept on disk, read and edited as JSON with
//!   the same meaning as the HTTP API, that survive an app restart.
//! - [`Syncer`]: syncs the replicas with a node over `/v1/sync` (automerge-repo's protocol
//!   "1") whenever one is reachable, registering documents created offline.
//!
//! ```no_run
//! # async fn example() -> meridian_client::Result<()> {
//! use meridian_client::{Client, Replicas, Syncer};
//! use serde_json::json;
//!
//! let client = Client::new(["http://127.0.0.1:7001", "http://127.0.0.1:7002"])?;
//! client.put("users", "alice", &json!({"name": "Alice"})).await?;
//!
//! let replicas = Replicas::open("./replicas")?;
//! let alice = replicas.open_doc("users", "alice")?;
//! alice.patch(&json!({"bio": "written offline"}))?; // on disk at once
//! let syncer = Syncer::start(replicas.clone(), client.clone());
//! alice.acknowledged().await; // durable on a node
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `http`: [`Client`].
//! - `replica`: [`Replicas`], [`LocalDoc`], [`SyncStatus`].
//! - `file`: one replica on disk.
//! - `sync`: [`Syncer`], [`Connector`], [`WsConnector`].
//! - `error`: [`Error`].
#![warn(unreachable_pub, missing_debug_implementations)]

mod error;
mod file;
mod http;
mod replica;
mod sync;

pub use error::{Error, Result};
pub use http::{Client, ClientBuilder, Deleted, Doc, Item, Page, Retry, TokenProvider, Written};
pub use replica::{LocalDoc, Replicas, SyncStatus};
pub use sync::{Connector, Link, Syncer, WsConnector};

pub use meridian_crdt::{ChangeHash, Conflict, ConflictValue, DocKey, DocumentId, State};
pub use meridian_sync::SessionToken;
