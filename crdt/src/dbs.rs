//! The two sled databases of a data dir: `db` holds documents and bookkeeping; `streams` holds
//! the records that are trimmed, the feed (`F`) and change events (`E`), with their trim marks.
//!
//! Why two: sled reuses the space of a log segment only once at most half of it is live. With
//! feed entries and events interleaved with the documents they were written beside, trimming
//! them left every segment mostly live, so the file kept its size and sled's removals made it
//! grow (1,000,000 documents: 1,760 MiB with trimming against 1,672 without, and the next
//! 250,000 documents took 1,879 bytes each against 1,768). In a database of their own, trimmed
//! records free whole segments.
//!
//! Each database stores the last write-ahead-log batch it applied (`M/seq`), so recovery
//! replays into each exactly what it lacks; writes are routed by their key's prefix.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::record;

/// The sled databases, and the files a checkpoint syncs.
#[derive(Debug, Clone)]
pub(crate) struct Dbs {
    pub(crate) main: sled::Db,
    pub(crate) streams: sled::Db,
    dir: PathBuf,
    /// Each one's sled log file, synced at checkpoints.
    logs: std::sync::Arc<[Option<std::fs::File>; 2]>,
}

/// sled's page cache for `streams`: its reads are of recent records, mostly.
const STREAMS_CACHE_BYTES: u64 = 16 << 20;

fn open_one(path: PathBuf, cache_bytes: u64) -> Result<sled::Db> {
    clear_leftovers(&path)?;
    sled::Config::new()
        .path(&path)
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::HighThroughput)
        // durability comes from the write-ahead log; sled is flushed at checkpoints
        .flush_every_ms(None)
        .open()
        .map_err(|e| damaged(&path, e))
}

/// Removes what an interrupted snapshot left: sled writes `snap.<lsn>.generating`, syncs it and
/// only then renames it to `snap.<lsn>`, so a `.generating` file is never a whole snapshot. But
/// sled's own lookup skips only `*.in___motion` and opens the newest-named candidate: a full
/// disk or a crash mid-snapshot left a store that sled called corrupted although its data was
/// intact.
fn clear_leftovers(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "removing an unfinished sled snapshot");
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// sled's open error, with the database it is about and what to do: a database sled finds
/// damaged is refused, and the node's peers hold its documents.
fn damaged(path: &Path, e: sled::Error) -> crate::Error {
    const NEXT: &str = "keep a copy of the data dir, then, in a cluster, start on a fresh data \
                        dir under a new node id (anti-entropy copies every document back from \
                        the peers), or alone, restore a backup (docs/design.md, failure matrix)";
    match e {
        // sled says this of any conf it cannot parse, garbage included
        sled::Error::Unsupported(why) => crate::Error::Corrupt(format!(
            "{} (sled's settings of the database) cannot be read: sled says \"{why}\"; if this \
             data dir was not made by an old release, the file is damaged: {NEXT}",
            path.join("conf").display()
        )),
        sled::Error::Corruption { .. } => crate::Error::Corrupt(format!(
            "the database {} is damaged ({e}); {NEXT}",
            path.display()
        )),
        other => other.into(),
    }
}

fn seq_key() -> Vec<u8> {
    record::meta_key("seq")
}

pub(crate) fn read_u64(db: &sled::Db, key: &[u8]) -> Result<Option<u64>> {
    Ok(db
        .get(key)?
        .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]))))
}

impl Dbs {
    /// Opens both (fails with [`crate::Error::InUse`] if another process has them), moving
    /// the feed and events of a data dir made before `streams` existed into it.
    pub(crate) fn open(dir: &Path, cache_bytes: u64) -> Result<Dbs> {
        let main = open_one(dir.join("db"), cache_bytes)?;
        let streams = open_one(dir.join("streams"), STREAMS_CACHE_BYTES)?;
        let log = |name: &str| {
            let f = std::fs::File::open(dir.join(name).join("db")).ok();
            if f.is_none() {
                tracing::warn!(
                    "cannot open sled's log file {name}/db to sync it; checkpoints rely on sled's flush alone"
                );
            }
            f
        };
        let dbs = Dbs {
            main,
            streams,
            dir: dir.to_owned(),
            logs: std::sync::Arc::new([log("db"), log("streams")]),
        };
        if read_u64(&dbs.streams, &seq_key())?.is_none() {
            dbs.copy_streams()?;
        }
        // after the copy is durable; also what a crash midway through this left behind
        dbs.drop_copied()?;
        Ok(dbs)
    }

    /// The `F` and `E` records and their trim marks, as `db` holds them in a data dir of an
    /// earlier release.
    fn in_main(&self) -> Result<Vec<(sled::IVec, sled::IVec)>> {
        let mut found = Vec::new();
        for prefix in [[record::FEED], [record::EVENT]] {
            for kv in self.main.scan_prefix(prefix) {
                found.push(kv?);
            }
        }
        for name in [record::FEED_TRIMMED, record::EVENTS_TRIMMED] {
            let k = record::meta_key(name);
            if let Some(v) = self.main.get(&k)? {
                found.push((k.into(), v));
            }
        }
        Ok(found)
    }

    /// The first open of a data dir with `streams`: `db`'s feed, events and their marks are
    /// copied over, and `streams` starts at the batch `db` has applied; synced before anything
    /// is removed from `db` (see [`Dbs::drop_copied`]).
    fn copy_streams(&self) -> Result<()> {
        for (k, v) in self.in_main()? {
            self.streams.insert(k, v)?;
        }
        let seq = read_u64(&self.main, &seq_key())?.unwrap_or(0);
        self.streams.insert(seq_key(), &seq.to_be_bytes())?;
        self.flush_and_sync()
    }

    /// Removes from `db` what was copied to `streams`.
    fn drop_copied(&self) -> Result<()> {
        let copied = self.in_main()?;
        if copied.is_empty() {
            return Ok(());
        }
        tracing::info!(
            records = copied.len(),
            "moved the feed and change events to their own database"
        );
        for (k, _) in copied {
            self.main.remove(k)?;
        }
        self.flush_and_sync()
    }

    /// Whether a record belongs in `streams`, by its key.
    pub(crate) fn in_streams(key: &[u8]) -> bool {
        matches!(key.first(), Some(&record::FEED) | Some(&record::EVENT))
    }

    /// The last write-ahead-log batch each has applied: (main, streams).
    pub(crate) fn applied(&self) -> Result<(u64, u64)> {
        Ok((
            read_u64(&self.main, &seq_key())?.unwrap_or(0),
            read_u64(&self.streams, &seq_key())?.unwrap_or(0),
        ))
    }

    /// Notes the last batch applied to `db`.
    pub(crate) fn set_applied(db: &sled::Db, seq: u64) -> Result<()> {
        db.insert(seq_key(), &seq.to_be_bytes())?;
        Ok(())
    }

    /// Makes both durable: sled's flush, then an fsync of each one's log file (sled's flush ends
    /// in `sync_file_range`, which does not reach the disk's write cache).
    pub(crate) fn flush_and_sync(&self) -> Result<()> {
        for (db, log) in [&self.main, &self.streams]
            .into_iter()
            .zip(self.logs.iter())
        {
            db.flush()?;
            if let Some(f) = log {
                f.sync_data()?;
            }
        }
        Ok(())
    }

    /// sled's blob directories: values over about 128 KiB live there, in files sled never syncs.
    pub(crate) fn blob_dirs(&self) -> [PathBuf; 2] {
        [
            self.dir.join("db").join("blobs"),
            self.dir.join("streams").join("blobs"),
        ]
    }
}
