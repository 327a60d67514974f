//! Group commit: many writers, one flush.
//!
//! A writer applies its sled batch under [`GroupCommit::apply`], which hands out a sequence
//! number, and then waits for the durable watermark to reach it. A single flusher thread flushes
//! whenever something was applied since the last flush and then publishes the watermark, so all
//! writers that arrived during one flush share the next one.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Default)]
struct Watermark {
    seq: u64,
    failed: Option<String>,
}

#[derive(Debug, Default)]
struct Applied {
    seq: u64,
    /// Writers between [`GroupCommit::begin`] and their apply: the flusher waits a little for
    /// them so that one flush covers them too.
    in_progress: usize,
    shutdown: bool,
}

/// The longest a flush waits for writers still in progress. A lone writer never waits.
const MAX_COMMIT_DELAY: Duration = Duration::from_micros(1500);

/// Marks a writer in progress until dropped.
#[derive(Debug)]
pub(crate) struct InProgress<'a>(&'a GroupCommit);

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.shared.applied.lock().in_progress -= 1;
        self.0.shared.wake.notify_one();
    }
}

#[derive(Debug)]
struct Shared {
    db: sled::Db,
    /// sled's log file. sled's flush ends in `sync_file_range`, which neither flushes the disk's
    /// write cache nor covers file metadata; an `fdatasync` of the log after each flush makes an
    /// acknowledged write survive power loss too, not only a process crash.
    log: Option<std::fs::File>,
    applied: Mutex<Applied>,
    wake: Condvar,
    durable: watch::Sender<Watermark>,
    flushes: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    pub(crate) fn start(db: sled::Db, log: Option<std::fs::File>) -> Self {
        let shared = Arc::new(Shared {
            db,
            log,
            applied: Mutex::new(Applied::default()),
            wake: Condvar::new(),
            durable: watch::Sender::new(Watermark::default()),
            flushes: Default::default(),
        });
        let s = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("meridian-flush".into())
            .spawn(move || flush_loop(&s))
            .expect("spawn the flusher thread");
        GroupCommit {
            shared,
            flusher: Mutex::new(Some(flusher)),
        }
    }

    /// Announces a writer that will call [`GroupCommit::apply`] soon.
    pub(crate) fn begin(&self) -> InProgress<'_> {
        self.shared.applied.lock().in_progress += 1;
        InProgress(self)
    }

    /// Runs `write` (which applies a sled batch) with the next sequence number, serialized with
    /// every other write so that sequence order is log order.
    pub(crate) fn apply<T>(&self, write: impl FnOnce(u64) -> Result<T>) -> Result<(u64, T)> {
        self.check()?;
        let mut applied = self.shared.applied.lock();
        let seq = applied.seq + 1;
        let out = write(seq)?;
        applied.seq = seq;
        drop(applied);
        self.shared.wake.notify_one();
        Ok((seq, out))
    }

    /// Waits until everything up to `seq` is on disk.
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

    /// Fails once a flush has failed: after that nothing can be acknowledged.
    pub(crate) fn check(&self) -> Result<()> {
        match &self.shared.durable.borrow().failed {
            Some(e) => Err(Error::Unavailable(e.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn flushes(&self) -> u64 {
        self.shared
            .flushes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Flushes what is left and stops the flusher.
    pub(crate) fn stop(&self) {
        self.shared.applied.lock().shutdown = true;
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

fn flush_loop(s: &Shared) {
    let mut flushed = 0;
    loop {
        let (target, shutdown) = {
            let mut a = s.applied.lock();
            while a.seq == flushed && !a.shutdown {
                s.wake.wait(&mut a);
            }
            let deadline = Instant::now() + MAX_COMMIT_DELAY;
            while a.in_progress > 0
                && !a.shutdown
                && !s.wake.wait_until(&mut a, deadline).timed_out()
            {}
            (a.seq, a.shutdown)
        };
        if target > flushed {
            let flushed_and_synced = s.db.flush().and_then(|n| match &s.log {
                Some(f) => f.sync_data().map(|_| n).map_err(sled::Error::from),
                None => Ok(n),
            });
            match flushed_and_synced {
                Ok(_) => {
                    flushed = target;
                    s.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    s.durable.send_modify(|w| w.seq = target);
                }
                Err(e) => {
                    tracing::error!(error = %e, "flush failed; refusing writes until restart");
                    s.durable
                        .send_modify(|w| w.failed = Some(format!("flush failed: {e}")));
                    return;
                }
            }
        }
        if shutdown {
            return;
        }
    }
}
