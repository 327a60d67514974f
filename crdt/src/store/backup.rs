//! Online backups: every document's whole history read from disk while writes go on, and a
//! restore that takes them in as from a peer. `docs/replication.md` (Backups) is the contract.
//!
//! A backup begun at T holds every write acknowledged before T: the flusher applies a group to
//! sled before it publishes the durable watermark (`crate::commit`), so a scan of sled begun
//! after T finds each such write; writes during the scan may or may not be in it. Documents are
//! read from disk, not through the cache, so the hot set stays where it is.
//!
//! [`format`] is the stream, without I/O.

use super::{DocKey, Store};
use crate::doc::RemoteChange;
use crate::error::{Error, Result};
use crate::record;

/// One page of a backup (see [`Store::backup_page`]).
#[derive(Debug, Default)]
pub struct BackupPage {
    /// Each document with its whole history (automerge's saved form).
    pub docs: Vec<(DocKey, Vec<u8>)>,
    /// Damaged here (being fetched again from a peer): not in the backup.
    pub skipped: Vec<DocKey>,
    /// Where the next page starts, if there is one.
    pub next: Option<DocKey>,
}

impl super::Inner {
    /// A document's whole history in a form automerge loads, from the stored bytes as they are,
    /// nothing parsed: its snapshot (or the genesis, before its first snapshot) followed by the
    /// increments after it. Each record's checksum is checked; a missing increment is damage.
    /// (Loading and saving each document again cost a core for the whole backup: writers got
    /// 0.68x of their throughput during one of 1,000,000 documents.)
    fn stored_history(&self, key: &DocKey) -> Result<Option<Vec<u8>>> {
        let Some(rec) = self.read_record_unchecked(key)? else {
            return Ok(None);
        };
        let mut out = match self.tree.get(record::doc_key(record::SNAPSHOT, key))? {
            Some(s) => record::strip_format(&s)?.to_vec(),
            None => crate::doc::genesis_bytes().to_vec(),
        };
        for n in rec.incr_base..rec.incr_base + rec.incr_count {
            let chunk = self
                .tree
                .get(record::increment_key(key, n))?
                .ok_or_else(|| Error::Corrupt(format!("incremental change {n} is missing")))?;
            out.extend_from_slice(record::strip_format(&chunk)?);
        }
        Ok(Some(out))
    }
}

impl Store {
    /// Up to `max` documents after `after`, in key order: live, deleted, schemas alike.
    pub fn backup_page(&self, after: Option<&DocKey>, max: usize) -> Result<BackupPage> {
        let inner = &*self.inner;
        let start = match after {
            Some(k) => {
                let mut s = record::doc_key(record::DOC, k);
                s.push(0); // just past `k`
                s
            }
            None => vec![record::DOC],
        };
        let end = vec![record::DOC + 1];
        let mut page = BackupPage::default();
        for kv in inner.tree.range(start..end) {
            let (k, _) = kv?;
            let key = DocKey::decode(&k[1..])?;
            if page.docs.len() + page.skipped.len() == max {
                page.next = page
                    .docs
                    .last()
                    .map(|(k, _)| k.clone())
                    .max(page.skipped.last().cloned());
                break;
            }
            match inner.stored_history(&key) {
                Ok(Some(history)) => page.docs.push((key, history)),
                Ok(None) => {}
                Err(Error::Corrupt(why)) => {
                    tracing::warn!(%key, %why, "a damaged document is left out of the backup");
                    page.skipped.push(key);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(page)
    }

    /// Takes in documents of a backup, as changes from a peer (a restore: the node runs under a
    /// new id, so that none of its own changes can collide with the backup's). Returns how
    /// many changes were new here.
    pub async fn restore(&self, docs: Vec<(DocKey, Vec<u8>)>) -> Result<usize> {
        let mut batch = Vec::with_capacity(docs.len());
        for (key, saved) in docs {
            let doc = crate::doc::Document::load(self.node_id().actor(), Some(&saved), [])
                .map_err(|e| Error::bad(format!("{key}: not a document's history: {e}")))?;
            let changes = doc
                .changes_since(&[])
                .into_iter()
                .map(RemoteChange::parse)
                .collect::<Result<Vec<_>>>()?;
            batch.push((key, changes));
        }
        let merged = self.merge_remote(batch, vec![]).await?;
        Ok(merged.changes)
    }
}

/// The backup stream: frames of `length (u32, big-endian) | payload | CRC-32 of the payload`.
/// A payload starts with its kind: `H` (a JSON header), `D` (a document: the collection and the
/// id, each as a u16 length and its bytes, then the saved history), `E` (a JSON trailer: how
/// many documents, which were skipped). A stream without its `E` frame is incomplete.
pub mod format {
    use crate::error::{Error, Result};
    use crate::key::DocKey;

    /// One frame's payload.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Frame {
        Header(serde_json::Value),
        Doc(DocKey, Vec<u8>),
        End(serde_json::Value),
    }

    pub fn encode(frame: &Frame) -> Vec<u8> {
        let mut payload = Vec::new();
        match frame {
            Frame::Header(v) => {
                payload.push(b'H');
                payload.extend(v.to_string().as_bytes());
            }
            Frame::End(v) => {
                payload.push(b'E');
                payload.extend(v.to_string().as_bytes());
            }
            Frame::Doc(key, saved) => {
                payload.push(b'D');
                for part in [key.collection(), key.id()] {
                    payload.extend((part.len() as u16).to_be_bytes());
                    payload.extend(part.as_bytes());
                }
                payload.extend(saved);
            }
        }
        let mut out = Vec::with_capacity(payload.len() + 8);
        out.extend((payload.len() as u32).to_be_bytes());
        out.extend(&payload);
        out.extend(crc32fast::hash(&payload).to_be_bytes());
        out
    }

    /// Frames from a byte buffer: those it holds whole, and how many bytes they took (the rest
    /// waits for more). A bad checksum or a malformed frame is an error naming the offset.
    pub fn decode(buf: &[u8], offset: u64) -> Result<(Vec<Frame>, usize)> {
        let mut frames = Vec::new();
        let mut at = 0;
        while buf.len() - at >= 4 {
            let len = u32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            if buf.len() - at < 8 + len {
                break;
            }
            let payload = &buf[at + 4..at + 4 + len];
            let crc = u32::from_be_bytes(buf[at + 4 + len..at + 8 + len].try_into().expect("4"));
            let bad = |why: &str| {
                Error::Corrupt(format!(
                    "backup frame at byte {}: {why}",
                    offset + at as u64
                ))
            };
            if crc32fast::hash(payload) != crc {
                return Err(bad("checksum mismatch"));
            }
            let json = |b: &[u8]| serde_json::from_slice(b).map_err(|e| bad(&e.to_string()));
            frames.push(match payload.first() {
                Some(b'H') => Frame::Header(json(&payload[1..])?),
                Some(b'E') => Frame::End(json(&payload[1..])?),
                Some(b'D') => {
                    let mut p = &payload[1..];
                    let mut part = || -> Result<String> {
                        if p.len() < 2 {
                            return Err(bad("truncated document key"));
                        }
                        let n = u16::from_be_bytes([p[0], p[1]]) as usize;
                        if p.len() < 2 + n {
                            return Err(bad("truncated document key"));
                        }
                        let s = String::from_utf8(p[2..2 + n].to_vec())
                            .map_err(|_| bad("a key that is not UTF-8"))?;
                        p = &p[2 + n..];
                        Ok(s)
                    };
                    let (c, i) = (part()?, part()?);
                    let key = DocKey::new(&c, &i).map_err(|e| bad(&e.to_string()))?;
                    Frame::Doc(key, p.to_vec())
                }
                _ => return Err(bad("unknown kind")),
            });
            at += 8 + len;
        }
        Ok((frames, at))
    }
}
