//! The write-ahead log: how an acknowledged write becomes durable.
//!
//! Every write's batch is appended to the log as one record, and a write is acknowledged once
//! the record is `fdatasync`ed: one sequential append and one sync for a whole group of writers.
//! Only then is the group applied to sled, which is flushed only at checkpoints. A record
//! carries the batch's sequence number and sled stores the last applied one under `M/seq`
//! (inserted after the group's other keys), so recovery replays exactly the records sled does
//! not have yet (sled recovers a prefix of its log).
//!
//! # Format
//! Segment files `<first seq, 20 digits>.wal`, each a run of records:
//! `len: u32 LE | crc32(payload): u32 LE | payload` with payload = format byte + postcard of
//! `(seq, [(key, Some(value) | None)])`. A torn or corrupt record ends the last segment (it was
//! never acknowledged); in an earlier segment it is corruption and recovery refuses to start.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::record;

/// One key write (`Some`) or removal (`None`).
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub seq: u64,
    pub ops: Vec<Op>,
    /// How the batch changes the number of live documents (-1, 0 or 1).
    pub docs_delta: i64,
}

/// Appends `batch` as one record to `out`.
pub(crate) fn encode_into(out: &mut Vec<u8>, batch: &Batch) {
    let payload = record::encode(batch);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Decodes the records of one segment. Returns them and whether the segment ended cleanly.
pub(crate) fn decode_all(mut bytes: &[u8]) -> (Vec<Batch>, bool) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 8 {
            return (out, false);
        }
        let len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(8..8 + len) else {
            return (out, false);
        };
        if crc32fast::hash(payload) != crc {
            return (out, false);
        }
        match record::decode::<Batch>(payload) {
            Ok(b) => out.push(b),
            Err(_) => return (out, false),
        }
        bytes = &bytes[8 + len..];
    }
    (out, true)
}

/// The open log: the segment being appended to.
#[derive(Debug)]
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    /// Bytes appended to the current segment.
    pub(crate) bytes: u64,
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    Ok(out)
}

fn io(e: std::io::Error) -> Error {
    Error::from(e)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Reads every record of every segment in `dir`, in order.
pub(crate) fn recover(dir: &Path) -> Result<Vec<Batch>> {
    std::fs::create_dir_all(dir).map_err(io)?;
    let paths = segments(dir)?;
    let mut out = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let bytes = std::fs::read(p).map_err(io)?;
        let (batches, clean) = decode_all(&bytes);
        if !clean && i + 1 < paths.len() {
            return Err(Error::Corrupt(format!(
                "write-ahead log segment {} is damaged",
                p.display()
            )));
        }
        out.extend(batches);
    }
    Ok(out)
}

impl Wal {
    /// Starts a fresh segment for records from `first_seq` on, and removes every older segment:
    /// call it only once sled holds everything before `first_seq` durably.
    pub(crate) fn start(dir: &Path, first_seq: u64) -> Result<Wal> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let old = segments(dir)?;
        let path = segment_path(dir, first_seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        let mut wal = Wal {
            dir: dir.to_owned(),
            file,
            path,
            bytes: 0,
        };
        wal.bytes = wal.file.metadata().map_err(io)?.len();
        for p in old.into_iter().filter(|p| *p != wal.path) {
            std::fs::remove_file(p).map_err(io)?;
        }
        sync_dir(dir)?;
        Ok(wal)
    }

    /// Appends records and makes them durable.
    pub(crate) fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.file.sync_data()?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Switches to a new segment for records from `first_seq` on and returns the segments
    /// before it, to delete after the checkpoint that covers them.
    pub(crate) fn rotate(&mut self, first_seq: u64) -> Result<Vec<PathBuf>> {
        let old = segments(&self.dir)?;
        let path = segment_path(&self.dir, first_seq);
        if path == self.path {
            return Ok(vec![]);
        }
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        self.path = path;
        self.bytes = 0;
        sync_dir(&self.dir)?;
        Ok(old.into_iter().filter(|p| *p != self.path).collect())
    }

    pub(crate) fn remove(&self, paths: &[PathBuf]) -> Result<()> {
        for p in paths {
            std::fs::remove_file(p).map_err(io)?;
        }
        sync_dir(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(seq: u64) -> Batch {
        Batch {
            seq,
            ops: vec![
                (vec![b'k', seq as u8], Some(vec![7; 10])),
                (vec![b'x'], None),
            ],
            docs_delta: 1,
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_dropped() {
        let mut buf = Vec::new();
        for s in 1..=3 {
            encode_into(&mut buf, &batch(s));
        }
        let (all, clean) = decode_all(&buf);
        assert!(clean);
        assert_eq!(all.iter().map(|b| b.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[1].ops, batch(2).ops);
        for cut in 1..20 {
            let (some, clean) = decode_all(&buf[..buf.len() - cut]);
            assert!(!clean);
            assert_eq!(some.len(), 2, "cut {cut}");
        }
        let mut flipped = buf.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            decode_all(&flipped).0.len(),
            2,
            "a bad checksum ends the log"
        );
    }

    #[test]
    fn segments_rotate_and_recover_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::start(dir.path(), 1).unwrap();
        let mut buf = Vec::new();
        encode_into(&mut buf, &batch(1));
        encode_into(&mut buf, &batch(2));
        wal.append(&buf).unwrap();
        let old = wal.rotate(3).unwrap();
        assert_eq!(old.len(), 1);
        let mut buf = Vec::new();
        encode_into(&mut buf, &batch(3));
        wal.append(&buf).unwrap();
        let seqs: Vec<u64> = recover(dir.path()).unwrap().iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        wal.remove(&old).unwrap();
        let seqs: Vec<u64> = recover(dir.path()).unwrap().iter().map(|b| b.seq).collect();
        assert_eq!(seqs, [3]);
        // a damaged segment that is not the last one is refused
        std::fs::write(dir.path().join(format!("{:020}.wal", 0)), b"garbage!!").unwrap();
        assert!(recover(dir.path()).is_err());
    }
}
