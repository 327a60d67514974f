//! `meridian repair`: what a damaged write-ahead log holds, and the repairs. Every intact
//! record is read, past any damage. A record is lost only if its batch is neither intact in the
//! log nor already in sled (each database stores the last batch it applied). When nothing is
//! lost, the log is rewritten from the intact records and the node starts as after a crash.
//! When batches are lost, the report names their documents and stamps where the records after
//! them tell them, and by default nothing is changed. With the loss accepted
//! ([`repair_log_accepting_loss`]) the log keeps the batches before the first gap, every
//! change of the intact batches after it is held for its document (`Q` records, merged by the
//! heal), and the store is marked recovering: it takes no local write until a complete
//! anti-entropy pass with every peer has brought back whatever of the lost batches reached
//! them, so that no change is made again under an automerge sequence number a lost one used.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::key::DocKey;
use crate::record::{self, FeedEntry};
use crate::wal::{self, Batch};

/// What a data dir's log holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    /// Each segment: its path, intact records, and the damaged byte ranges.
    pub segments: Vec<SegmentReport>,
    /// The last batch both sled databases hold.
    pub applied: u64,
    /// Batches after `applied` that are in neither the log nor sled, as ranges of sequence
    /// numbers.
    pub lost: Vec<std::ops::RangeInclusive<u64>>,
    /// The changes of intact batches after the first lost one (they cannot be replayed
    /// without it): document and stamp.
    pub stranded: Vec<(String, String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    pub path: PathBuf,
    pub records: usize,
    pub damaged: Vec<std::ops::Range<usize>>,
}

impl LogReport {
    pub fn is_damaged(&self) -> bool {
        self.segments.iter().any(|s| !s.damaged.is_empty())
    }
}

/// Reads the log of `data_dir` and says what a repair would keep and lose. Opens sled (and so
/// fails if a node has the data dir open).
pub fn check_log(data_dir: &Path) -> Result<LogReport> {
    Ok(read(data_dir)?.0)
}

/// Rewrites the log from its intact records when that loses nothing; otherwise changes
/// nothing and fails with the report's findings.
pub fn repair_log(data_dir: &Path) -> Result<LogReport> {
    let (report, keep) = read(data_dir)?;
    if !report.lost.is_empty() {
        return Err(Error::Corrupt(format!(
            "batches {} are in neither the log nor sled: a repair would lose them, so nothing \
             was changed. Keep a copy of the data dir; in a cluster, start on a fresh data dir \
             under a new node id (anti-entropy copies every document back from the peers), or \
             accept the loss (`meridian repair --accept-loss`: the writes after the damage are \
             kept for their documents, and the node takes writes again once its peers have \
             given back what they hold); alone, restore a backup",
            ranges(&report.lost)
        )));
    }
    if report.is_damaged() {
        wal::rewrite(&data_dir.join("wal"), &keep)?;
    }
    Ok(report)
}

/// [`repair_log`], but when batches are lost, keeps what can be kept (see the module docs)
/// instead of refusing.
pub fn repair_log_accepting_loss(data_dir: &Path) -> Result<LogReport> {
    let (report, keep) = read(data_dir)?;
    let Some(first_lost) = report.lost.first().map(|r| *r.start()) else {
        return repair_log(data_dir);
    };
    let (replayable, stranded): (Vec<Batch>, Vec<Batch>) =
        keep.into_iter().partition(|b| b.seq < first_lost);
    let dbs = crate::dbs::Dbs::open(data_dir, 8 << 20)?;
    let mut held = sled::Batch::default();
    for (key, change) in stranded.iter().flat_map(held_changes) {
        held.insert(
            record::held_key(&key, &change.hash().0),
            record::wrap(change.raw_bytes()),
        );
    }
    held.insert(
        record::meta_key(RECOVERING),
        format!("batches {} were lost in a log repair", ranges(&report.lost)).into_bytes(),
    );
    dbs.main.apply_batch(held)?;
    dbs.main.flush()?;
    drop(dbs);
    wal::rewrite(&data_dir.join("wal"), &replayable)?;
    Ok(report)
}

/// `M recovering`: the store lost batches in a log repair and takes no local write until its
/// peers have given back what they hold (see the module docs).
pub(crate) const RECOVERING: &str = "recovering";

/// Every change a batch wrote into a document's history (increments, and the changes of a
/// snapshot), with its document.
fn held_changes(b: &Batch) -> Vec<(DocKey, automerge::Change)> {
    let mut out = vec![];
    for (k, v) in &b.ops {
        let (Some(&kind), Some(v)) = (k.first(), v) else {
            continue;
        };
        if kind != record::INCREMENT && kind != record::SNAPSHOT {
            continue;
        }
        let Ok(body) = record::strip_format(v) else {
            continue;
        };
        // `S collection NUL id`; `I collection NUL id NUL n`
        let doc = if kind == record::SNAPSHOT {
            &k[1..]
        } else {
            &k[1..k.len().saturating_sub(9)]
        };
        let Ok(key) = DocKey::decode(doc) else {
            continue;
        };
        if kind == record::INCREMENT {
            if let Ok(c) = automerge::Change::from_bytes(body.to_vec()) {
                out.push((key, c));
            }
        } else if let Ok(am) = automerge::Automerge::load(body) {
            out.extend(
                am.get_changes(&[])
                    .into_iter()
                    .map(|c| (key.clone(), c.clone())),
            );
        }
    }
    out
}

/// The report, and the intact batches after `applied` in order.
fn read(data_dir: &Path) -> Result<(LogReport, Vec<Batch>)> {
    let dbs = crate::dbs::Dbs::open(data_dir, 8 << 20)?;
    let (main, streams) = dbs.applied()?;
    let applied = main.min(streams);
    drop(dbs);
    let mut segments = vec![];
    let mut batches: Vec<Batch> = vec![];
    for path in wal::segment_files(&data_dir.join("wal"))? {
        let bytes = std::fs::read(&path)?;
        let (found, damaged) = wal::salvage(&bytes);
        segments.push(SegmentReport {
            path,
            records: found.len(),
            damaged,
        });
        batches.extend(found.into_iter().map(|(_, b)| b));
    }
    batches.retain(|b| b.seq > applied);
    batches.sort_by_key(|b| b.seq);
    batches.dedup_by_key(|b| b.seq);
    let mut lost = vec![];
    let mut expect = applied + 1;
    for b in &batches {
        if b.seq > expect {
            lost.push(expect..=b.seq - 1);
        }
        expect = b.seq + 1;
    }
    // a torn tail is no loss: it was never acknowledged. Only a gap with intact batches after
    // it can be told, and so counts.
    let first_lost = lost.first().map(|r| *r.start());
    let stranded = match first_lost {
        None => vec![],
        Some(first) => batches
            .iter()
            .filter(|b| b.seq > first)
            .flat_map(changes_of)
            .collect(),
    };
    let report = LogReport {
        segments,
        applied,
        lost,
        stranded,
    };
    Ok((report, batches))
}

/// The changes a batch holds, from its feed entries: (collection, id, stamp).
fn changes_of(b: &Batch) -> Vec<(String, String, String)> {
    b.ops
        .iter()
        .filter(|(k, _)| k.first() == Some(&record::FEED))
        .filter_map(|(k, v)| {
            let entry: FeedEntry = record::decode(v.as_ref()?).ok()?;
            let stamp = record::feed_stamp(k).ok()?;
            Some((
                entry.collection,
                entry.id,
                crate::hlc::display_stamp(&stamp),
            ))
        })
        .collect()
}

fn ranges(r: &[std::ops::RangeInclusive<u64>]) -> String {
    r.iter()
        .map(|r| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
