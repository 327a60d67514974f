//! Group commit: many writers, one log sync, one pass over sled.
//!
//! A writer queues its batch under [`GroupCommit::submit`], which hands out the next sequence
//! number. A single flusher thread takes everything queued, appends it to the write-ahead log,
//! `fdatasync`s it, and only then applies the group to sled (each record to its database, see
//! [`crate::dbs`]; then the document count under `M/count` and the group's last sequence number
//! under `M/seq` in each), and publishes the durable
//! watermark. So sled only ever holds durable writes: readers never need to wait, and sled never
//! needs to sync on the write path. Every few seconds the flusher checkpoints: it flushes
//! sled, syncs sled's log file, and drops the log segments sled now covers.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use tokio::sync::watch;

use crate::dbs::{read_u64, Dbs};
use crate::error::{Error, Result};
use crate::record;
use crate::wal::{self, Op, Wal};

/// The longest a sync waits for writers still in progress. A lone writer never waits.
const MAX_COMMIT_DELAY: Duration = Duration::from_micros(1500);
/// Checkpoint at least this often while writes come in...
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// ...or once the current log segment is this large.
const CHECKPOINT_BYTES: u64 = 64 << 20;

fn count_key() -> Vec<u8> {
    record::meta_key("count")
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Watermark {
    /// Every batch up to this one is on disk and in sled.
    pub(crate) seq: u64,
    pub(crate) failed: Option<String>,
}

#[derive(Debug, Default)]
struct Pending {
    /// The last sequence number handed out.
    seq: u64,
    batches: Vec<wal::Batch>,
    /// Writers between [`GroupCommit::begin`] and their submit.
    in_progress: usize,
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    dbs: Dbs,
    pending: Mutex<Pending>,
    wake: Condvar,
    durable: watch::Sender<Watermark>,
    /// Held (write) from applying a group to sled until its watermark is published, so that a
    /// reader can see sled and the watermark agree (see [`GroupCommit::consistent`]).
    publishing: RwLock<()>,
    documents: AtomicU64,
    syncs: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

/// Marks a writer in progress until dropped, so that the flusher waits a little for it.
#[derive(Debug)]
pub(crate) struct InProgress<'a>(&'a GroupCommit);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.shared.pending.lock().in_progress -= 1;
        self.0.shared.wake.notify_one();
    }
}

/// Applies batches to sled in sequence order, each record to its database, skipping in each
/// database the batches it has already applied (`applied`: main, streams); then the
/// bookkeeping keys (`M/count` in main, and `M/seq` last in each).
///
/// Plain inserts, not one `sled::Batch`: sled's `apply_batch` writes out an I/O buffer (with
/// `sync_file_range`) every time, which the log makes unnecessary. Atomicity still holds across
/// a crash: a group reaches sled only after its log record is synced, and sled recovers a prefix
/// of its log, so if a database's `M/seq` survived, everything before it did; if not, recovery
/// replays the whole group from the log (puts and removes of whole values, so replaying is
/// idempotent).
fn apply_group(dbs: &Dbs, batches: &[wal::Batch], count: u64, applied: (u64, u64)) -> Result<u64> {
    let mut count = count as i64;
    for batch in batches {
        for (k, v) in &batch.ops {
            let (db, done) = if Dbs::in_streams(k) {
                (&dbs.streams, applied.1)
            } else {
                (&dbs.main, applied.0)
            };
            if batch.seq <= done {
                continue;
            }
            match v {
                Some(v) => db.insert(k.as_slice(), v.as_slice())?,
                None => db.remove(k.as_slice())?,
            };
        }
        if batch.seq > applied.0 {
            count += batch.docs_delta;
        }
    }
    let count = count.max(0) as u64;
    if let Some(last) = batches.last() {
        if last.seq > applied.1 {
            Dbs::set_applied(&dbs.streams, last.seq)?;
        }
        if last.seq > applied.0 {
            dbs.main.insert(count_key(), &count.to_be_bytes())?;
            Dbs::set_applied(&dbs.main, last.seq)?;
        }
    }
    Ok(count)
}

/// Replays the log records sled lacks and makes them durable. sled recovers a prefix of its
/// batches, and each group stored its last sequence number in each database, so the records to
/// replay are exactly those after the older of the two. Returns (last sequence number,
/// document count, records replayed).
pub(crate) fn recover(dbs: &Dbs, wal_dir: &Path) -> Result<(u64, u64, usize)> {
    let applied = dbs.applied()?;
    let count = read_u64(&dbs.main, &count_key())?.unwrap_or(0);
    let mut seq = applied.0.min(applied.1);
    let mut replay = Vec::new();
    for b in wal::recover(wal_dir)? {
        if b.seq <= seq {
            continue;
        }
        if b.seq != seq + 1 {
            return Err(Error::Corrupt(format!(
                "write-ahead log jumps from batch {seq} to {}; refusing to guess",
                b.seq
            )));
        }
        seq = b.seq;
        replay.push(b);
    }
    let count = apply_group(dbs, &replay, count, applied)?;
    dbs.flush_and_sync()?;
    let replayed = replay.iter().filter(|b| b.seq > applied.0).count();
    Ok((seq.max(applied.0).max(applied.1), count, replayed))
}

impl GroupCommit {
    /// Starts the flusher with a fresh log segment, after [`recover`].
    pub(crate) fn start(dbs: Dbs, wal_dir: PathBuf, seq: u64, documents: u64) -> Result<Self> {
        let wal = Wal::start(&wal_dir, seq + 1)?;
        let shared = Arc::new(Shared {
            dbs,
            pending: Mutex::new(Pending {
                seq,
                ..Default::default()
            }),
            wake: Condvar::new(),
            durable: watch::Sender::new(Watermark { seq, failed: None }),
            publishing: RwLock::new(()),
            documents: AtomicU64::new(documents),
            syncs: Default::default(),
        });
        let s = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("meridian-flush".into())
            .spawn(move || flush_loop(&s, wal, seq))
            .expect("spawn the flusher thread");
        Ok(GroupCommit {
            shared,
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// Announces a writer that will call [`GroupCommit::submit`] soon.
    pub(crate) fn begin(&self) -> InProgress<'_> {
        self.shared.pending.lock().in_progress += 1;
        InProgress(self)
    }

    /// Queues a batch (built with its sequence number) and returns that number; the batch is
    /// durable and in sled once [`GroupCommit::durable`] returns for it.
    pub(crate) fn submit(
        &self,
        docs_delta: i64,
        build: impl FnOnce(u64) -> Vec<Op>,
    ) -> Result<u64> {
        self.check()?;
        let mut p = self.shared.pending.lock();
        if p.shutdown {
            return Err(Error::Unavailable("the store is closed".into()));
        }
        let seq = p.seq + 1;
        p.batches.push(wal::Batch {
            seq,
            ops: build(seq),
            docs_delta,
        });
        p.seq = seq;
        drop(p);
        self.shared.wake.notify_one();
        Ok(seq)
    }

    /// Waits until everything up to `seq` is on disk and in sled.
    pub(crate) async fn durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.shared.durable.subscribe();
        let w = rx
            .wait_for(|w| w.seq >= seq || w.failed.is_some())
            .await
            .map_err(|_| Error::Unavailable("the flusher stopped".into()))?;
        match &w.failed {
            Some(e) if w.seq < seq => Err(Error::Unavailable(e.clone())),
            _ => Ok(()),
        }
    }

    /// The last batch on disk and in sled.
    /// Runs a read of sled and returns it with the durable watermark it reflects exactly: no
    /// group is being applied meanwhile.
    pub(crate) fn consistent<R>(&self, read: impl FnOnce() -> R) -> (R, u64) {
        let _no_group_in_between = self.shared.publishing.read();
        (read(), self.durable_seq())
    }

    pub(crate) fn durable_seq(&self) -> u64 {
        self.shared.durable.borrow().seq
    }

    pub(crate) fn watch_durable(&self) -> watch::Receiver<Watermark> {
        self.shared.durable.subscribe()
    }

    /// Fails once a sync has failed: after that nothing can be acknowledged.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.shared.durable.borrow().failed {
            Some(e) => Err(Error::Unavailable(e.clone())),
            None => Ok(()),
        }
    }

    /// Live documents, as of the last group applied.
    pub(crate) fn documents(&self) -> u64 {
        self.shared.documents.load(Ordering::Relaxed)
    }

    /// Group commits so far (one log append and sync each).
    pub(crate) fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Commits what is queued, checkpoints, and stops the flusher. Writes after this fail.
    pub(crate) fn stop(&self) {
        self.shared.pending.lock().shutdown = true;
        self.shared.wake.notify_one();
        if let Some(h) = self.flusher.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.stop();
    }
}

fn fail(s: &Shared, what: &str, e: impl std::fmt::Display) {
    tracing::error!(error = %e, "{what} failed; refusing writes until restart");
    s.durable
        .send_modify(|w| w.failed = Some(format!("{what} failed: {e}")));
}

fn flush_loop(s: &Shared, mut wal: Wal, mut flushed: u64) {
    let mut synced_blobs = [BTreeSet::new(), BTreeSet::new()];
    let mut checkpointed = flushed;
    let mut last_checkpoint = Instant::now();
    let mut records = Vec::new();
    loop {
        let (batches, shutdown) = {
            let mut p = s.pending.lock();
            while p.batches.is_empty() && !p.shutdown {
                if checkpointed == flushed {
                    // nothing to checkpoint: sleep until a writer or shutdown wakes us (a
                    // timeout here would wake an idle node 100 times a second)
                    s.wake.wait(&mut p);
                    continue;
                }
                let timeout = CHECKPOINT_EVERY.saturating_sub(last_checkpoint.elapsed());
                if s.wake
                    .wait_for(&mut p, timeout.max(Duration::from_millis(10)))
                    .timed_out()
                {
                    break;
                }
            }
            let deadline = Instant::now() + MAX_COMMIT_DELAY;
            while p.in_progress > 0
                && !p.shutdown
                && !s.wake.wait_until(&mut p, deadline).timed_out()
            {}
            (std::mem::take(&mut p.batches), p.shutdown)
        };
        if let Some(last) = batches.last().map(|b| b.seq) {
            records.clear();
            for b in &batches {
                wal::encode_into(&mut records, b);
            }
            if let Err(e) = wal.append(&records) {
                return fail(s, "write-ahead log sync", e);
            }
            let publishing = s.publishing.write();
            match apply_group(
                &s.dbs,
                &batches,
                s.documents.load(Ordering::Relaxed),
                (0, 0),
            ) {
                Ok(count) => s.documents.store(count, Ordering::Relaxed),
                Err(e) => return fail(s, "applying a group to sled", e),
            }
            flushed = last;
            s.syncs.fetch_add(1, Ordering::Relaxed);
            s.durable.send_modify(|w| w.seq = last);
            drop(publishing);
        }
        let due = last_checkpoint.elapsed() >= CHECKPOINT_EVERY || wal.bytes >= CHECKPOINT_BYTES;
        if checkpointed < flushed && (due || shutdown) {
            if let Err(e) = checkpoint(s, &mut wal, flushed, &mut synced_blobs) {
                return fail(s, "checkpoint", e);
            }
            checkpointed = flushed;
            last_checkpoint = Instant::now();
        }
        if shutdown {
            s.durable
                .send_modify(|w| w.failed = Some("the store is closed".into()));
            return;
        }
    }
}

/// Makes sled hold everything up to `flushed` durably, then drops the log segments before it.
fn checkpoint(
    s: &Shared,
    wal: &mut Wal,
    flushed: u64,
    synced_blobs: &mut [BTreeSet<OsString>; 2],
) -> Result<()> {
    let old = wal.rotate(flushed + 1)?;
    s.dbs.flush_and_sync()?;
    for (dir, synced) in s.dbs.blob_dirs().iter().zip(synced_blobs.iter_mut()) {
        sync_new_blobs(dir, synced).map_err(Error::from)?;
    }
    wal.remove(&old)
}

/// fsyncs blob files written since the last checkpoint, and their directory.
fn sync_new_blobs(dir: &Path, synced: &mut BTreeSet<OsString>) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut present = BTreeSet::new();
    let mut any_new = false;
    for e in entries {
        let e = e?;
        let name = e.file_name();
        if !synced.contains(&name) {
            match std::fs::File::open(e.path()) {
                Ok(f) => f.sync_all()?,
                // sled removed it after the listing (its value was overwritten): nothing to keep
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                Err(err) => return Err(err),
            }
            any_new = true;
        }
        present.insert(name);
    }
    if any_new {
        std::fs::File::open(dir)?.sync_all()?;
    }
    *synced = present;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_removed_between_listing_and_sync_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1"), b"blob").unwrap();
        // listed by read_dir, gone when opened: what sled's blob removal looks like
        std::os::unix::fs::symlink(dir.path().join("removed"), dir.path().join("2")).unwrap();
        let mut synced = BTreeSet::new();
        sync_new_blobs(dir.path(), &mut synced).unwrap();
        assert!(synced.contains(std::ffi::OsStr::new("1")));
        assert!(!synced.contains(std::ffi::OsStr::new("2")));
    }
}
