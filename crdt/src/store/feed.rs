//! Stamps of this node's own changes, and the feed peers pull: every local change (and every
//! client change this node accepted) under `F <stamp>`, in HLC order.
//!
//! A stamp is handed out when a write starts and is *in flight* until the write is durable (or
//! has failed). The feed is served only below the smallest stamp in flight, so a peer's cursor
//! never moves past a change that becomes durable later.

use std::collections::BTreeSet;

use uhlc::Timestamp;

use super::{FeedPage, Inner, Store};
use crate::error::Result;
use crate::record::{self, FeedEntry};

/// Longest run of feed entries one page holds, in change bytes.
const FEED_PAGE_BYTES: usize = 1 << 20;

/// Stamps handed to local writes.
#[derive(Debug, Default)]
pub(super) struct Stamps {
    /// The first stamp of each write not yet durable (or failed).
    inflight: BTreeSet<Timestamp>,
    /// The newest stamp handed out (or stored, at start-up).
    last: Option<Timestamp>,
}

impl Stamps {
    pub(super) fn new(last: Option<Timestamp>) -> Self {
        Stamps {
            inflight: BTreeSet::new(),
            last,
        }
    }
}

/// The stamps of one write, in flight until dropped (when the write is durable or has failed).
pub(super) struct StampGuard<'a> {
    inner: &'a Inner,
    stamps: Vec<Timestamp>,
}

impl StampGuard<'_> {
    pub(super) fn all(&self) -> &[Timestamp] {
        &self.stamps
    }
}

impl Drop for StampGuard<'_> {
    fn drop(&mut self) {
        self.inner.stamps.lock().inflight.remove(&self.stamps[0]);
        // after the removal: a feed reader woken now sees the change
        self.inner.feed_moved.send_modify(|n| *n += 1);
    }
}

/// Notices of local writes finishing, so the feed may have grown (see [`Store::subscribe`]).
#[derive(Debug)]
pub struct Progress(tokio::sync::watch::Receiver<u64>);

impl Progress {
    /// Waits for the next local write to finish. False once the store is gone.
    pub async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }
}

impl Inner {
    /// `n` (at least one) consecutive stamps for one write.
    pub(super) fn stamps(&self, n: usize) -> StampGuard<'_> {
        let mut stamps = self.stamps.lock();
        let all: Vec<Timestamp> = (0..n.max(1)).map(|_| self.clock.now()).collect();
        // the feed bound needs only the smallest; stamps of one write leave flight together
        stamps.inflight.insert(all[0]);
        stamps.last = all.last().copied();
        StampGuard {
            inner: self,
            stamps: all,
        }
    }
}

impl Store {
    /// Local changes in HLC order after `after`: the change feed peers pull. At most `limit`
    /// entries (and about 1 MiB of changes), only below the stamp of any local write still in
    /// flight, so a later page never holds a change stamped before this page's `upto`.
    pub fn feed(&self, after: Option<&Timestamp>, limit: usize) -> Result<FeedPage> {
        let bound = {
            let stamps = self.inner.stamps.lock();
            match stamps.inflight.first() {
                Some(first) => Err(*first),
                // nothing in flight: every later local stamp is greater than this one
                None => Ok(self.inner.clock.now()),
            }
        };
        let below = match bound {
            Ok(now) | Err(now) => now,
        };
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let range = record::feed_start(after)..record::feed_key(&below);
        for kv in self.inner.tree.range(range) {
            if entries.len() >= limit || bytes >= FEED_PAGE_BYTES {
                more = true;
                break;
            }
            let (k, v) = kv?;
            let entry: FeedEntry = record::decode(&v)?;
            bytes += entry.change.len();
            entries.push((record::feed_stamp(&k)?, entry));
        }
        let last = entries.last().map(|(ts, _)| *ts).or(after.copied());
        let upto = match bound {
            Ok(now) if !more => Some(now),
            _ => last,
        };
        Ok(FeedPage {
            entries,
            upto,
            more,
        })
    }

    /// The newest local change's stamp and how many local changes follow `after` (counted up
    /// to `cap`), for reporting how far behind a peer is.
    pub fn feed_backlog(
        &self,
        after: Option<&Timestamp>,
        cap: usize,
    ) -> Result<(Option<Timestamp>, usize)> {
        let latest = last_stamp(&self.inner.tree)?;
        let n = self
            .inner
            .tree
            .range(record::feed_start(after)..record::feed_end())
            .keys()
            .take(cap)
            .count();
        Ok((latest, n))
    }

    /// The newest stamp given to a local change (stored or in flight).
    pub fn last_local_stamp(&self) -> Option<Timestamp> {
        self.inner.stamps.lock().last
    }

    /// Notices of local writes finishing, for serving the feed by long poll. Subscribe before
    /// reading the feed, so that nothing finishing in between is missed.
    pub fn subscribe(&self) -> Progress {
        Progress(self.inner.feed_moved.subscribe())
    }
}

/// The newest stamp in the feed.
pub(super) fn last_stamp(db: &sled::Db) -> Result<Option<Timestamp>> {
    match db.scan_prefix([record::FEED]).next_back() {
        Some(kv) => Ok(Some(record::feed_stamp(&kv?.0)?)),
        None => Ok(None),
    }
}
