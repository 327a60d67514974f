//! Change events (`E <seq>`): every change of a document as it became visible on this node, in
//! that order, whatever made it (a local write, a client, a peer), for the live change feed.
//!
//! An event is written in the same batch as the change, keyed by the batch's sequence number, so
//! events are durable exactly when their changes are, and sequence numbers only grow (also
//! across restarts). Everything at or below the durable watermark is in sled: a reader that
//! reads up to the watermark misses nothing. Old events are trimmed by count; a cursor at or
//! below the trimmed point can no longer be continued (the reader must start over). Cursors
//! carry the data dir's epoch, so a cursor of another node or of a data dir made anew is
//! recognised as foreign rather than continued from the wrong place.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Store;
use crate::error::{Error, Result};
use crate::record::{self, ChangeEvent};

use record::EVENTS_TRIMMED as TRIMMED;
/// The file in the data dir that holds its epoch.
const EPOCH_FILE: &str = "epoch";

/// Where change events stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventBounds {
    /// Every event at or below this is readable (or trimmed).
    pub visible: u64,
    /// Every event at or below this is gone.
    pub trimmed: u64,
}

/// Waits for the durable watermark to move (see [`Store::watch_events`]).
#[derive(Debug)]
pub struct EventWatch(tokio::sync::watch::Receiver<crate::commit::Watermark>);

impl EventWatch {
    /// Waits until events past `seen` may be readable. False once the store is gone.
    pub async fn after(&mut self, seen: u64) -> bool {
        self.0
            .wait_for(|w| w.seq > seen || w.failed.is_some())
            .await
            .is_ok()
            && self.0.borrow().failed.is_none()
    }
}

/// The data dir's epoch, made at its first open with this version. A file of its own, written
/// and synced before first use: sled makes nothing durable outside the write-ahead log's
/// checkpoints, and a crash must not give the data dir a new epoch.
fn epoch(dir: &Path) -> Result<String> {
    let path = dir.join(EPOCH_FILE);
    match std::fs::read_to_string(&path) {
        Ok(e) if e.trim().len() == 16 && e.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(e.trim().to_owned())
        }
        Ok(e) => return Err(Error::Corrupt(format!("{} holds {e:?}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let e = format!("{:016x}", rand::random::<u64>());
    let tmp = dir.join(format!("{EPOCH_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(e.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(e)
}

/// The event log's own state: the data dir's epoch and the trimmed mark, over the streams
/// database it shares with the replication feed.
pub(super) struct EventLog {
    db: sled::Db,
    /// This data dir's epoch, in every change-event cursor.
    epoch: String,
    /// Every change event at or below this sequence number was trimmed.
    trimmed: AtomicU64,
}

impl EventLog {
    pub(super) fn open(dir: &Path, db: sled::Db) -> Result<EventLog> {
        let trimmed = db
            .get(record::meta_key(TRIMMED))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(EventLog {
            epoch: epoch(dir)?,
            trimmed: AtomicU64::new(trimmed),
            db,
        })
    }

    fn trimmed(&self) -> u64 {
        self.trimmed.load(Ordering::Acquire)
    }

    /// Up to `max` events after `after`, up to `upto`; `None` if some of them were trimmed.
    fn read(&self, after: u64, upto: u64, max: usize) -> Result<Option<Vec<(u64, ChangeEvent)>>> {
        if after >= upto {
            return Ok(Some(vec![]));
        }
        let mut out = Vec::new();
        let range = record::event_key(after.saturating_add(1))..=record::event_key(upto);
        for kv in self.db.range(range).take(max) {
            let (k, v) = kv?;
            out.push((record::event_seq(&k)?, record::decode(&v)?));
        }
        // checked after the read: a trim that raced it shows here
        if after < self.trimmed() {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Removes every event at or below `below`. Returns how many went.
    fn trim(&self, below: u64) -> Result<usize> {
        if below <= self.trimmed() {
            return Ok(0);
        }
        // the mark first: a crash between leaves events a reader will not use, never a gap
        // a reader would not notice
        self.db
            .insert(record::meta_key(TRIMMED), &below.to_be_bytes())?;
        self.trimmed.store(below, Ordering::Release);
        let mut n = 0;
        let range = record::event_key(0)..=record::event_key(below);
        for kv in self.db.range(range) {
            let (k, _) = kv?;
            self.db.remove(k)?;
            n += 1;
        }
        Ok(n)
    }

    /// The event of a batch, encoded.
    pub(super) fn encode(
        key: &crate::key::DocKey,
        doc: &crate::doc::Document,
        rec: &record::DocRecord,
        hashes: &[automerge::ChangeHash],
    ) -> Vec<u8> {
        let stamps = doc
            .node_stamps(hashes)
            .iter()
            .map(|ts| (crate::doc::stamp_node(ts), crate::hlc::display_stamp(ts)))
            .collect();
        record::encode(&ChangeEvent {
            collection: key.collection().into(),
            id: key.id().into(),
            state: rec.state,
            json: rec.json.clone(),
            version: rec.version.clone(),
            stamps,
        })
    }
}

impl Store {
    /// This data dir's epoch: part of every cursor into its events.
    pub fn event_epoch(&self) -> &str {
        &self.inner.events.epoch
    }

    pub fn event_bounds(&self) -> EventBounds {
        EventBounds {
            visible: self.inner.commit.durable_seq(),
            trimmed: self.inner.events.trimmed(),
        }
    }

    /// Notices of the durable watermark moving.
    pub fn watch_events(&self) -> EventWatch {
        EventWatch(self.inner.commit.watch_durable())
    }

    /// Up to `max` events after `after`, up to `upto` (at most the visible bound), in order;
    /// `None` if some of them were trimmed.
    pub fn events(
        &self,
        after: u64,
        upto: u64,
        max: usize,
    ) -> Result<Option<Vec<(u64, ChangeEvent)>>> {
        let upto = upto.min(self.inner.commit.durable_seq());
        self.inner.events.read(after, upto, max)
    }

    /// Removes events so that at most the last `keep` batches' remain. Returns how many went.
    pub fn trim_events(&self, keep: u64) -> Result<usize> {
        let below = self.inner.commit.durable_seq().saturating_sub(keep);
        self.inner.events.trim(below)
    }
}
