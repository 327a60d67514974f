//! Stamps of this node's own changes, and the feed peers pull: every local change (and every
//! client change this node accepted) under `F <stamp>`, in HLC order.
//!
//! A stamp is handed out when a write starts and is *in flight* until the write is durable (or
//! has failed). The feed is served only below the smallest stamp in flight, so a peer's cursor
//! never moves past a change that becomes durable later.
//!
//! The feed is trimmed ([`Store::trim_feed`]) once every peer has read past its entries (or
//! they are older than the retention window): the change stays in its document, and a reader
//! whose cursor is older than the trimmed point is told so (the page's `trimmed`) and repairs
//! by anti-entropy instead.

use std::collections::BTreeSet;

use uhlc::Timestamp;

use parking_lot::Mutex;

use super::{FeedPage, Inner, Store};
use crate::error::Result;
use crate::hlc::Clock;
use crate::record::{self, FeedEntry};

/// Longest run of feed entries one page holds, in change bytes.
const FEED_PAGE_BYTES: usize = 1 << 20;
use record::FEED_TRIMMED as TRIMMED;

/// The feed's trimmed mark, as stored.
pub(super) fn trimmed(db: &sled::Db) -> Result<Option<Timestamp>> {
    db.get(record::meta_key(TRIMMED))?
        .map(|k| record::feed_stamp(&k))
        .transpose()
}

/// What the feed owns in memory: the stamps handed to local writes (and which are still in
/// flight), the notices of writes leaving flight, and the trimmed mark.
#[derive(Debug)]
pub(super) struct FeedState {
    stamps: Mutex<Stamps>,
    /// Bumped whenever a local write leaves flight, so feed readers can wait for news.
    moved: tokio::sync::watch::Sender<u64>,
    /// The newest feed entry trimmed: every entry at or before it is gone.
    trimmed: Mutex<Option<Timestamp>>,
    /// One trim at a time.
    trim: Mutex<()>,
}

impl FeedState {
    /// `last`: the newest stamp stored (or trimmed); `trimmed`: the stored trimmed mark.
    pub(super) fn new(last: Option<Timestamp>, trimmed: Option<Timestamp>) -> Self {
        FeedState {
            stamps: Mutex::new(Stamps::new(last)),
            moved: tokio::sync::watch::Sender::new(0),
            trimmed: Mutex::new(trimmed),
            trim: Mutex::new(()),
        }
    }

    /// `n` (at least one) consecutive stamps of `clock` for one write.
    fn stamps(&self, clock: &Clock, n: usize) -> StampGuard<'_> {
        let mut stamps = self.stamps.lock();
        let all: Vec<Timestamp> = (0..n.max(1)).map(|_| clock.now()).collect();
        // the feed bound needs only the smallest; stamps of one write leave flight together
        stamps.inflight.insert(all[0]);
        stamps.last = all.last().copied();
        StampGuard {
            feed: self,
            stamps: all,
        }
    }
}

/// Stamps handed to local writes.
#[derive(Debug, Default)]
struct Stamps {
    /// The first stamp of each write not yet durable (or failed).
    inflight: BTreeSet<Timestamp>,
    /// The newest stamp handed out (or stored, at start-up).
    last: Option<Timestamp>,
}

impl Stamps {
    fn new(last: Option<Timestamp>) -> Self {
        Stamps {
            inflight: BTreeSet::new(),
            last,
        }
    }
}

/// The stamps of one write, in flight until dropped (when the write is durable or has failed).
pub(super) struct StampGuard<'a> {
    feed: &'a FeedState,
    stamps: Vec<Timestamp>,
}

impl StampGuard<'_> {
    pub(super) fn all(&self) -> &[Timestamp] {
        &self.stamps
    }
}

impl Drop for StampGuard<'_> {
    fn drop(&mut self) {
        self.feed.stamps.lock().inflight.remove(&self.stamps[0]);
        // after the removal: a feed reader woken now sees the change
        self.feed.moved.send_modify(|n| *n += 1);
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
        self.feed.stamps(&self.clock, n)
    }
}

impl Store {
    /// Local changes in HLC order after `after`: the change feed peers pull. At most `limit`
    /// entries (and about 1 MiB of changes), only below the stamp of any local write still in
    /// flight, so a later page never holds a change stamped before this page's `upto`.
    pub fn feed(&self, after: Option<&Timestamp>, limit: usize) -> Result<FeedPage> {
        let bound = {
            let stamps = self.inner.feed.stamps.lock();
            match stamps.inflight.first() {
                Some(first) => Err(*first),
                // nothing in flight: every later local stamp is greater than this one
                None => Ok(self.inner.clock.now()),
            }
        };
        let below = match bound {
            Ok(now) | Err(now) => now,
        };
        if self.trimmed_past(after) {
            return self.trimmed_page(bound);
        }
        let mut entries = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let range = record::feed_start(after)..record::feed_key(&below);
        for kv in self.inner.streams.range(range) {
            if entries.len() >= limit || bytes >= FEED_PAGE_BYTES {
                more = true;
                break;
            }
            let (k, v) = kv?;
            let entry: FeedEntry = record::decode(&v)?;
            bytes += entry.change.len();
            entries.push((record::feed_stamp(&k)?, entry));
        }
        // checked after the read: a trim that raced it shows here
        if self.trimmed_past(after) {
            return self.trimmed_page(bound);
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
            trimmed: false,
        })
    }

    /// Whether entries after `after` were trimmed.
    fn trimmed_past(&self, after: Option<&Timestamp>) -> bool {
        match (*self.inner.feed.trimmed.lock(), after) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(mark), Some(after)) => *after < mark,
        }
    }

    /// The answer to a cursor older than the trimmed point: where to go on from after a repair.
    /// `bound` is the feed's bound (see [`Store::feed`]).
    fn trimmed_page(&self, bound: std::result::Result<Timestamp, Timestamp>) -> Result<FeedPage> {
        let upto = match bound {
            // nothing in flight: every local change stamped up to now is durable
            Ok(now) => Some(now),
            // below the first stamp in flight, the newest durable entry (or trimmed one)
            Err(first) => {
                let newest = match self
                    .inner
                    .streams
                    .range(record::feed_start(None)..record::feed_key(&first))
                    .next_back()
                {
                    Some(kv) => Some(record::feed_stamp(&kv?.0)?),
                    None => None,
                };
                newest.max(*self.inner.feed.trimmed.lock())
            }
        };
        Ok(FeedPage {
            entries: vec![],
            upto,
            more: false,
            trimmed: true,
        })
    }

    /// Removes the feed's entries stamped at or before `through` (the change stays in its
    /// document). Readers whose cursor is older than the newest entry removed are then answered
    /// `trimmed`. Returns how many entries went.
    pub fn trim_feed(&self, through: &Timestamp) -> Result<usize> {
        let inner = &*self.inner;
        let _one_at_a_time = inner.feed.trim.lock();
        let newest = match inner
            .streams
            .range(record::feed_start(None)..record::feed_start(Some(through)))
            .next_back()
        {
            Some(kv) => record::feed_stamp(&kv?.0)?,
            None => return Ok(0),
        };
        if inner.feed.trimmed.lock().is_some_and(|m| newest <= m) {
            return Ok(0);
        }
        // the mark first: a crash between leaves entries no reader will use, never a gap a
        // reader would not notice
        inner
            .streams
            .insert(record::meta_key(TRIMMED), record::feed_key(&newest))?;
        *inner.feed.trimmed.lock() = Some(newest);
        let mut n = 0;
        for kv in inner
            .streams
            .range(record::feed_start(None)..=record::feed_key(&newest))
        {
            inner.streams.remove(kv?.0)?;
            n += 1;
        }
        Ok(n)
    }

    /// The newest local change's stamp and how many local changes follow `after` (counted up
    /// to `cap`), for reporting how far behind a peer is.
    pub fn feed_backlog(
        &self,
        after: Option<&Timestamp>,
        cap: usize,
    ) -> Result<(Option<Timestamp>, usize)> {
        let latest = last_stamp(&self.inner.streams)?;
        let n = self
            .inner
            .streams
            .range(record::feed_start(after)..record::feed_end())
            .keys()
            .take(cap)
            .count();
        Ok((latest, n))
    }

    /// The newest stamp given to a local change (stored or in flight).
    pub fn last_local_stamp(&self) -> Option<Timestamp> {
        self.inner.feed.stamps.lock().last
    }

    /// Notices of local writes finishing, for serving the feed by long poll. Subscribe before
    /// reading the feed, so that nothing finishing in between is missed.
    pub fn subscribe(&self) -> Progress {
        Progress(self.inner.feed.moved.subscribe())
    }
}

/// The newest stamp in the feed.
pub(super) fn last_stamp(db: &sled::Db) -> Result<Option<Timestamp>> {
    match db.scan_prefix([record::FEED]).next_back() {
        Some(kv) => Ok(Some(record::feed_stamp(&kv?.0)?)),
        None => Ok(None),
    }
}
