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
//! `(seq, [(key, Some(value) | None)])`. A torn or corrupt record with nothing intact after it
//! ends the last segment (a write cut short by a crash, never acknowledged). A damaged record
//! that intact records follow, or any damage in an earlier segment, is corruption: those later
//! records were acknowledged, and recovery refuses to start rather than drop them.

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

/// How a segment's records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// After the last record.
    Clean,
    /// In a record that is cut short or fails its checksum, with nothing intact after it:
    /// the tail of a write that crashed before its sync, never acknowledged.
    Torn { at: usize },
    /// In a damaged record that intact records follow (from `next`): those were acknowledged,
    /// so this is damage, not a crash.
    Damaged { at: usize, next: usize },
}

/// The record at the start of `bytes`, and its length, if it is whole and intact.
fn record_at(bytes: &[u8]) -> Option<(Batch, usize)> {
    let len = u32::from_le_bytes(bytes.get(0..4)?.try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().expect("4 bytes"));
    let payload = bytes.get(8..8usize.checked_add(len)?)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    Some((record::decode::<Batch>(payload).ok()?, 8 + len))
}

/// Decodes the records of one segment, and how it ends: the intact records before the first
/// bad byte.
pub(crate) fn decode_all(bytes: &[u8]) -> (Vec<Batch>, End) {
    let (records, bad) = salvage(bytes);
    let Some(first) = bad.first() else {
        return (records.into_iter().map(|(_, b)| b).collect(), End::Clean);
    };
    let before = records
        .into_iter()
        .take_while(|(at, _)| *at < first.start)
        .map(|(_, b)| b)
        .collect();
    let end = if first.end == bytes.len() {
        End::Torn { at: first.start }
    } else {
        End::Damaged {
            at: first.start,
            next: first.end,
        }
    };
    (before, end)
}

/// Every intact record of a segment with its offset, reading past damage, and the byte ranges
/// that are not intact records. Past a bad byte, the next intact record is the first one with a
/// later sequence number than the last good one: a checksum and a decodable batch with a later
/// sequence number by chance are vanishingly unlikely.
pub(crate) fn salvage(bytes: &[u8]) -> (Vec<(usize, Batch)>, Vec<std::ops::Range<usize>>) {
    let mut out: Vec<(usize, Batch)> = Vec::new();
    let mut bad = vec![];
    let mut at = 0;
    while at < bytes.len() {
        match record_at(&bytes[at..]) {
            Some((b, len)) => {
                out.push((at, b));
                at += len;
            }
            None => {
                let last = out.last().map_or(0, |(_, b)| b.seq);
                let next = (at + 1..bytes.len())
                    .find(|&i| record_at(&bytes[i..]).is_some_and(|(b, _)| b.seq > last))
                    .unwrap_or(bytes.len());
                bad.push(at..next);
                at = next;
            }
        }
    }
    (out, bad)
}

/// The segment files of `dir`, in order.
pub(crate) fn segment_files(dir: &Path) -> Result<Vec<PathBuf>> {
    segments(dir)
}

/// Replaces `dir`'s segments with one segment holding `batches` (in order), synced.
pub(crate) fn rewrite(dir: &Path, batches: &[Batch]) -> Result<()> {
    let old = segments(dir)?;
    let first = batches.first().map_or(1, |b| b.seq);
    let mut bytes = Vec::new();
    for b in batches {
        encode_into(&mut bytes, b);
    }
    let tmp = dir.join("repair.tmp");
    let mut f = File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    for p in &old {
        std::fs::remove_file(p).map_err(io)?;
    }
    std::fs::rename(&tmp, segment_path(dir, first)).map_err(io)?;
    sync_dir(dir)
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
        let (batches, end) = decode_all(&bytes);
        match end {
            End::Clean => {}
            End::Torn { at } if i + 1 == paths.len() => {
                tracing::info!(segment = %p.display(), at, "dropped the torn tail of the write-ahead log (a write cut short by a crash, never acknowledged)");
            }
            End::Torn { at } | End::Damaged { at, .. } => {
                let after = match end {
                    End::Damaged { next, .. } => {
                        format!(", and intact records follow from byte {next}")
                    }
                    _ => ", and it is not the last segment".into(),
                };
                return Err(Error::Corrupt(format!(
                    "write-ahead log segment {} is damaged at byte {at}{after}: writes \
                     acknowledged after the damage would be lost, so the node does not start. \
                     Keep a copy of the data dir; in a cluster, start on a fresh data dir under \
                     a new node id (anti-entropy copies every document back from the peers); \
                     alone, restore a backup",
                    p.display()
                )));
            }
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
        let (all, end) = decode_all(&buf);
        assert_eq!(end, End::Clean);
        assert_eq!(all.iter().map(|b| b.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(all[1].ops, batch(2).ops);
        for cut in 1..20 {
            let (some, end) = decode_all(&buf[..buf.len() - cut]);
            assert!(matches!(end, End::Torn { .. }), "cut {cut}: {end:?}");
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
        // zeros after the last record (a file extended but not written) are a torn tail too
        let mut zeros = buf.clone();
        zeros.extend([0; 64]);
        let (all, end) = decode_all(&zeros);
        assert_eq!((all.len(), end), (3, End::Torn { at: buf.len() }));
    }

    #[test]
    fn a_damaged_record_with_intact_records_after_it_is_damage_not_a_torn_tail() {
        let mut buf = Vec::new();
        let mut starts = vec![];
        for s in 1..=5 {
            starts.push(buf.len());
            encode_into(&mut buf, &batch(s));
        }
        // damage inside the second record's payload, and in its length
        for offset in [starts[1] + 10, starts[1]] {
            let mut bad = buf.clone();
            for b in &mut bad[offset..offset + 4] {
                *b = !*b;
            }
            let (some, end) = decode_all(&bad);
            assert_eq!(some.iter().map(|b| b.seq).collect::<Vec<_>>(), [1]);
            assert_eq!(
                end,
                End::Damaged {
                    at: starts[1],
                    next: starts[2]
                },
                "offset {offset}"
            );
        }
        // damage in the last record only: a torn tail
        let mut bad = buf.clone();
        let last = starts[4] + 12;
        bad[last] ^= 0xff;
        assert_eq!(decode_all(&bad).1, End::Torn { at: starts[4] });

        // and recovery refuses the damaged last segment, naming it and the offset
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = buf.clone();
        damaged[starts[2] + 9] ^= 0xff;
        std::fs::write(dir.path().join(format!("{:020}.wal", 1)), &damaged).unwrap();
        let err = recover(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "00000000000000000001.wal is damaged at byte {}",
                starts[2]
            )),
            "{err}"
        );
        assert!(err.contains("intact records follow"), "{err}");
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
