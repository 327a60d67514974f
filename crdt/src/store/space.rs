//! Free space on the data dir's filesystem, kept above a floor so that the store never meets a
//! full disk inside a write (sled and the log do not recover from ENOSPC without a restart).
//!
//! Below the floor, new data is refused (`Error::InsufficientStorage`, HTTP 507) while reads go
//! on; deletes and changes from peers, which keep regions converging, are still taken down to
//! half the floor. Writes resume by themselves once space returns: the free space is read again
//! at most every [`RECHECK`] while it is low, and every [`RECHECK_PLENTY`] otherwise.
//!
//! The floor holds against this node's own writes; another process may still fill the disk.
//! So the store also keeps a **ballast**: a file (`ballast` in the data dir) of a quarter of the
//! floor, allocated while space is plentiful and deleted once free space falls below half the
//! floor (or is that low at start-up, before sled opens), which gives the log's last syncs,
//! sled's compaction and a clean shutdown room to finish. It is allocated again once the free
//! space is back above the floor by twice its size (so that it cannot push the disk back
//! below the floor at once).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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

/// The filesystem's free space, as last read, and the ballast.
#[derive(Debug)]
pub(super) struct Space {
    dir: PathBuf,
    /// Bytes to keep free.
    pub(super) floor: u64,
    free: AtomicU64,
    read_at: Mutex<Instant>,
    ballast: Arc<Ballast>,
}

/// The ballast file: its size, whether it is in place, and whether it is being allocated.
#[derive(Debug)]
struct Ballast {
    path: PathBuf,
    size: u64,
    present: AtomicBool,
    allocating: AtomicBool,
}

/// What to do with the ballast, given the free space (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Release,
    Allocate,
}

fn ballast_step(free: u64, floor: u64, size: u64, present: bool) -> Option<Step> {
    match present {
        true if free < floor / 2 => Some(Step::Release),
        false if size > 0 && free >= floor.saturating_add(size.saturating_mul(2)) => {
            Some(Step::Allocate)
        }
        _ => None,
    }
}

impl Ballast {
    fn release(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::warn!(
                bytes = self.size,
                "the disk is nearly full: released the ballast file, to leave room for \
                 compaction and a clean shutdown"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "cannot release the ballast file"),
        }
        self.present.store(false, Ordering::Relaxed);
    }

    fn allocate(&self) -> std::io::Result<()> {
        let part = self.path.with_extension("allocating");
        let f = std::fs::File::create(&part)?;
        if rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, self.size).is_err() {
            // a filesystem without fallocate: real blocks, written
            let chunk = vec![0u8; 1 << 20];
            let mut left = self.size;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                std::io::Write::write_all(&mut &f, &chunk[..n])?;
                left -= n as u64;
            }
        }
        f.sync_all()?;
        std::fs::rename(&part, &self.path)?;
        self.present.store(true, Ordering::Relaxed);
        Ok(())
    }
}

fn statvfs(dir: &Path) -> std::io::Result<(u64, u64)> {
    let s = rustix::fs::statvfs(dir)?;
    // what an unprivileged process may use, and the whole filesystem
    Ok((s.f_bavail * s.f_frsize, s.f_blocks * s.f_frsize))
}

impl Space {
    /// `floor`: bytes to keep free, or `None` for the default. Releases the ballast if the
    /// disk is already nearly full (call before sled opens), or allocates it if missing.
    pub(super) fn new(dir: PathBuf, floor: Option<u64>) -> Result<Space> {
        std::fs::create_dir_all(&dir)?;
        let (free, total) = statvfs(&dir)?;
        let floor = floor.unwrap_or_else(|| {
            DEFAULT_FLOOR_BYTES.min((total as f64 * DEFAULT_FLOOR_SHARE) as u64)
        });
        let path = dir.join("ballast");
        let size = floor / 4;
        let present = match std::fs::metadata(&path) {
            Ok(m) if m.len() == size => true,
            // of another floor, or cut short by a crash: made again if there is room
            Ok(_) => std::fs::remove_file(&path).map(|_| false)?,
            Err(_) => false,
        };
        let ballast = Arc::new(Ballast {
            path,
            size,
            present: AtomicBool::new(present),
            allocating: AtomicBool::new(false),
        });
        let _ = std::fs::remove_file(ballast.path.with_extension("allocating"));
        match ballast_step(free, floor, size, present) {
            Some(Step::Release) => ballast.release(),
            Some(Step::Allocate) => {
                if let Err(e) = ballast.allocate() {
                    tracing::warn!(error = %e, "cannot allocate the ballast file");
                }
            }
            None => {}
        }
        Ok(Space {
            free: AtomicU64::new(statvfs(&dir)?.0),
            dir,
            floor,
            read_at: Mutex::new(Instant::now()),
            ballast,
        })
    }

    /// The ballast's size while it is in place, else 0.
    pub(super) fn ballast_bytes(&self) -> u64 {
        match self.ballast.present.load(Ordering::Relaxed) {
            true => self.ballast.size,
            false => 0,
        }
    }

    /// Releases or allocates the ballast as the free space says (allocation off the caller's
    /// thread: it may take a while).
    fn tend_ballast(&self, free: u64) {
        let b = &self.ballast;
        match ballast_step(free, self.floor, b.size, b.present.load(Ordering::Relaxed)) {
            Some(Step::Release) => b.release(),
            Some(Step::Allocate) if !b.allocating.swap(true, Ordering::AcqRel) => {
                let b = b.clone();
                std::thread::spawn(move || {
                    match b.allocate() {
                        Ok(()) => {
                            tracing::info!(bytes = b.size, "allocated the ballast file again")
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot allocate the ballast file"),
                    }
                    b.allocating.store(false, Ordering::Release);
                });
            }
            _ => {}
        }
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
                    Ok((f, _)) => {
                        self.free.store(f, Ordering::Relaxed);
                        self.tend_ballast(f);
                    }
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
    fn the_ballast_goes_below_half_the_floor_and_comes_back_with_room_to_spare() {
        let (floor, size) = (16 << 20, 4 << 20);
        assert_eq!(
            ballast_step(7 << 20, floor, size, true),
            Some(Step::Release)
        );
        assert_eq!(ballast_step(9 << 20, floor, size, true), None);
        assert_eq!(
            ballast_step(20 << 20, floor, size, false),
            None,
            "it would eat the margin"
        );
        assert_eq!(
            ballast_step(24 << 20, floor, size, false),
            Some(Step::Allocate)
        );
        assert_eq!(
            ballast_step(u64::MAX, 0, 0, false),
            None,
            "no floor, no ballast"
        );
        // allocated when there is room, of a quarter of the floor
        let dir = tempfile::tempdir().unwrap();
        let s = Space::new(dir.path().into(), Some(8 << 20)).unwrap();
        assert_eq!(s.ballast_bytes(), 2 << 20);
        let len = std::fs::metadata(dir.path().join("ballast")).unwrap().len();
        assert_eq!(len, 2 << 20);
        // a floor above what is free: not allocated (the one of the other floor is gone)
        let low = Space::new(dir.path().into(), Some(u64::MAX / 2)).unwrap();
        assert_eq!(low.ballast_bytes(), 0);
        assert!(!dir.path().join("ballast").exists());
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
