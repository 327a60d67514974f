//! Free space on the data dir's filesystem, kept above a floor so that the store never meets a
//! full disk inside a write (sled and the log do not recover from ENOSPC without a restart).
//!
//! Below the floor, new data is refused (`Error::InsufficientStorage`, HTTP 507) while reads go
//! on; deletes and changes from peers, which keep regions converging, are still taken down to
//! half the floor. Writes resume by themselves once space returns: the free space is read again
//! at most every [`RECHECK`] while it is low, and every [`RECHECK_PLENTY`] otherwise.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};

/// The floor when none is set: the smaller of this...
pub const DEFAULT_FLOOR_BYTES: u64 = 256 << 20;
/// ...and this share of the filesystem (a 1 GiB volume keeps 51 MiB free).
const DEFAULT_FLOOR_SHARE: f64 = 0.05;
const RECHECK: Duration = Duration::from_millis(100);
const RECHECK_PLENTY: Duration = Duration::from_millis(500);

/// What a write is, for the floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// New data from this node's clients: refused below the floor.
    New,
    /// A delete, or changes from a peer: refused only below half the floor.
    Converge,
}

/// The filesystem's free space, as last read.
#[derive(Debug)]
pub(super) struct Space {
    dir: PathBuf,
    /// Bytes to keep free.
    pub(super) floor: u64,
    free: AtomicU64,
    read_at: Mutex<Instant>,
}

fn statvfs(dir: &std::path::Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(dir)?;
    // what an unprivileged process may use, and the whole filesystem
    Ok((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

impl Space {
    /// `floor`: bytes to keep free, or `None` for the default.
    pub(super) fn new(dir: PathBuf, floor: Option<u64>) -> Result<Space> {
        let (free, total) = statvfs(&dir)?;
        let floor = floor.unwrap_or_else(|| {
            DEFAULT_FLOOR_BYTES.min((total as f64 * DEFAULT_FLOOR_SHARE) as u64)
        });
        Ok(Space {
            dir,
            floor,
            free: AtomicU64::new(free),
            read_at: Mutex::new(Instant::now()),
        })
    }

    /// Free bytes, read again if the last reading is old.
    pub(super) fn free(&self) -> u64 {
        let free = self.free.load(Ordering::Relaxed);
        let every = if free < self.floor {
            RECHECK
        } else {
            RECHECK_PLENTY
        };
        // one reader refreshes; the others use the reading they have
        if let Some(mut at) = self.read_at.try_lock() {
            if at.elapsed() >= every {
                *at = Instant::now();
                match statvfs(&self.dir) {
                    Ok((f, _)) => self.free.store(f, Ordering::Relaxed),
                    Err(e) => tracing::warn!(error = %e, "cannot read the data dir's free space"),
                }
            }
        }
        self.free.load(Ordering::Relaxed)
    }

    /// Refuses a write that would take the filesystem below its floor.
    pub(super) fn check(&self, need: Need) -> Result<()> {
        let free = self.free();
        let floor = match need {
            Need::New => self.floor,
            Need::Converge => self.floor / 2,
        };
        if free >= floor {
            return Ok(());
        }
        Err(Error::InsufficientStorage(format!(
            "the data dir's filesystem has {} free, below the {} this node keeps free; \
             writes resume once space is freed (reads go on)",
            mib(free),
            mib(floor)
        )))
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_data_stops_at_the_floor_and_converging_writes_at_half_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let plenty = Space::new(dir.path().into(), Some(0)).unwrap();
        assert!(plenty.check(Need::New).is_ok());
        // a floor above what any test machine has free
        let s = Space::new(dir.path().into(), Some(u64::MAX)).unwrap();
        let err = s.check(Need::New).unwrap_err();
        assert!(matches!(err, Error::InsufficientStorage(_)), "{err}");
        assert!(
            err.to_string().contains("resume once space is freed"),
            "{err}"
        );
        let free = s.free();
        let between = Space::new(dir.path().into(), Some(free + free / 2)).unwrap();
        assert!(between.check(Need::New).is_err());
        assert!(
            between.check(Need::Converge).is_ok(),
            "half the floor is below what is free"
        );
    }

    #[test]
    fn the_default_floor_is_a_share_of_a_small_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let s = Space::new(dir.path().into(), None).unwrap();
        let (_, total) = statvfs(dir.path()).unwrap();
        assert_eq!(
            s.floor,
            DEFAULT_FLOOR_BYTES.min((total as f64 * 0.05) as u64)
        );
    }
}
