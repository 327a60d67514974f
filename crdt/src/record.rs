//! On-disk records. Every value starts with a format byte. Format 2 (what this version writes)
//! follows it with a CRC-32 of the body, checked on every read, so that a damaged document is
//! found on load (and by the scrub) rather than served; format 1 (0.1's) has no checksum and is
//! still read. The body is postcard, or automerge's own bytes for snapshots and increments.
//!
//! # Keys (one sled tree, one-byte prefixes)
//! | key                               | value                                    |
//! |-----------------------------------|------------------------------------------|
//! | `D` collection NUL id             | [`DocRecord`]: state, version, JSON      |
//! | `S` collection NUL id             | automerge snapshot (whole history)       |
//! | `I` collection NUL id NUL n (u64) | one automerge change saved after it      |
//! | `F` hlc time (u64 BE) hlc id      | [`FeedEntry`]: the local change with that stamp |
//! | `K` idempotency key               | [`IdemRecord`]                           |
//! | `E` batch seq (u64 BE)            | [`ChangeEvent`]: a document's change as it became visible here |
//! | `Q` collection NUL id NUL hash    | a change held for a damaged document until it is healed |
//! | `M` name                          | node id, last batch seq, document count; |
//! |                                   | replication bookkeeping under `M sync/…` |

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uhlc::Timestamp;

use crate::doc::State;
use crate::error::{Error, Result};
use crate::key::DocKey;

/// Format of every record this version writes: the format byte, the body's CRC-32 (LE), the body.
pub(crate) const FORMAT: u8 = 2;
/// 0.1's format: the format byte, then the body.
const FORMAT_UNCHECKED: u8 = 1;

pub(crate) const DOC: u8 = b'D';
pub(crate) const SNAPSHOT: u8 = b'S';
pub(crate) const INCREMENT: u8 = b'I';
pub(crate) const FEED: u8 = b'F';
pub(crate) const IDEM: u8 = b'K';
pub(crate) const META: u8 = b'M';
pub(crate) const EVENT: u8 = b'E';
pub(crate) const HELD: u8 = b'Q';

/// `M/feed-trimmed` (in `streams`): the feed key of the newest feed entry trimmed.
pub(crate) const FEED_TRIMMED: &str = "feed-trimmed";
/// `M/events-trimmed` (in `streams`): every event at or below this sequence number is gone.
pub(crate) const EVENTS_TRIMMED: &str = "events-trimmed";

pub(crate) fn doc_key(prefix: u8, key: &DocKey) -> Vec<u8> {
    let mut k = vec![prefix];
    k.extend_from_slice(&key.encode());
    k
}

pub(crate) fn increment_key(key: &DocKey, n: u64) -> Vec<u8> {
    let mut k = increment_prefix(key);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// The prefix of a document's increments (and of no other document's).
pub(crate) fn increment_prefix(key: &DocKey) -> Vec<u8> {
    let mut k = doc_key(INCREMENT, key);
    k.push(0);
    k
}

/// `F`, the stamp's time (big-endian, so keys sort in HLC order), its id.
pub(crate) fn feed_key(ts: &Timestamp) -> Vec<u8> {
    let mut k = vec![FEED];
    k.extend_from_slice(&ts.get_time().as_u64().to_be_bytes());
    k.extend_from_slice(&ts.get_id().to_le_bytes());
    k
}

/// The stamp a feed key was made from.
pub(crate) fn feed_stamp(k: &[u8]) -> Result<Timestamp> {
    if k.len() != 1 + 8 + 16 || k[0] != FEED {
        return Err(Error::Corrupt("feed key of the wrong shape".into()));
    }
    let time = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
    let id = u128::from_le_bytes(k[9..25].try_into().expect("16 bytes"));
    let id = uhlc::ID::try_from(id)
        .map_err(|_| Error::Corrupt("feed key with a zero clock id".into()))?;
    Ok(Timestamp::new(uhlc::NTP64(time), id))
}

/// The first feed key after `after` (the whole feed for `None`).
pub(crate) fn feed_start(after: Option<&Timestamp>) -> Vec<u8> {
    match after {
        Some(ts) => {
            let mut k = feed_key(ts);
            k.push(0);
            k
        }
        None => vec![FEED],
    }
}

/// Just past the last feed key.
pub(crate) fn feed_end() -> Vec<u8> {
    vec![FEED + 1]
}

/// `E`, then the sequence number of the batch that made the change visible (big-endian, so
/// keys sort in the order changes became visible).
pub(crate) fn event_key(seq: u64) -> Vec<u8> {
    let mut k = vec![EVENT];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number an event key was made from.
pub(crate) fn event_seq(k: &[u8]) -> Result<u64> {
    match k.split_first() {
        Some((&EVENT, rest)) if rest.len() == 8 => {
            Ok(u64::from_be_bytes(rest.try_into().expect("8 bytes")))
        }
        _ => Err(Error::Corrupt("event key of the wrong shape".into())),
    }
}

/// `Q`, the document's key, NUL, the change's hash.
pub(crate) fn held_key(key: &DocKey, hash: &[u8; 32]) -> Vec<u8> {
    let mut k = doc_key(HELD, key);
    k.push(0);
    k.extend_from_slice(hash);
    k
}

/// The prefix of a document's held changes.
pub(crate) fn held_prefix(key: &DocKey) -> Vec<u8> {
    let mut k = doc_key(HELD, key);
    k.push(0);
    k
}

pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub(crate) fn idem_key(key: &str) -> Vec<u8> {
    let mut k = vec![IDEM];
    k.extend_from_slice(key.as_bytes());
    k
}

/// Encodes a record: the format byte, the checksum, then postcard.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    wrap(&postcard::to_stdvec(value).expect("records serialize"))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let body = strip_format(bytes)?;
    postcard::from_bytes(body).map_err(|e| Error::Corrupt(format!("undecodable record: {e}")))
}

/// Wraps raw bytes (automerge's) with the format byte and the checksum.
pub(crate) fn wrap(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 5);
    out.push(FORMAT);
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(raw);
    out
}

/// The body of a record, once its format is known and its checksum (if it has one) holds.
pub(crate) fn strip_format(bytes: &[u8]) -> Result<&[u8]> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) if rest.len() >= 4 => {
            let (crc, body) = rest.split_at(4);
            let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
            if crc32fast::hash(body) != crc {
                return Err(Error::Corrupt("the record fails its checksum".into()));
            }
            Ok(body)
        }
        Some((&FORMAT, _)) => Err(Error::Corrupt("a record too short for its checksum".into())),
        Some((&FORMAT_UNCHECKED, rest)) => Ok(rest),
        Some((v, _)) => Err(Error::Corrupt(format!(
            "record format {v} is not known to this version (it writes {FORMAT})"
        ))),
        None => Err(Error::Corrupt("empty record".into())),
    }
}

/// The materialized state of one document, kept beside its CRDT history so that reads and
/// lists need not load automerge at all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DocRecord {
    pub state: State,
    pub version: String,
    /// The user's JSON, serialized (`null` when deleted).
    pub json: String,
    pub heads: Vec<[u8; 32]>,
    /// Incremental changes `I … n` for n in `incr_base .. incr_base + incr_count`.
    pub incr_base: u64,
    pub incr_count: u64,
    /// Bytes of snapshot plus increments stored (the cache weighs what is in memory instead).
    pub stored_bytes: u64,
}

impl DocRecord {
    /// The record of a document never written.
    pub(crate) fn absent() -> DocRecord {
        DocRecord {
            state: State::Absent,
            version: String::new(),
            json: String::new(),
            heads: vec![],
            incr_base: 0,
            incr_count: 0,
            stored_bytes: 0,
        }
    }
}

/// One entry of the local change feed: the change stamped with the key's HLC timestamp. The
/// change's bytes are kept here too, so that serving the feed to a peer never loads documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEntry {
    pub collection: String,
    pub id: String,
    pub hash: [u8; 32],
    pub change: Vec<u8>,
}

/// A document's change as it became visible on this node (a local write, a client's change, or
/// changes merged from a peer: one event per document per batch), with the document as it was
/// right after, for the live change feed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub collection: String,
    pub id: String,
    pub state: State,
    /// The document's JSON after the change, serialized (`null` unless live).
    pub json: String,
    pub version: String,
    /// The node and HLC stamp (as shown to clients) of each node change in the batch, in the
    /// order applied; a client's changes count through the stamp change that accepted them.
    pub stamps: Vec<(String, String)>,
}

/// What a write answered, kept so that a retry with the same idempotency key gets it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// The write made a document exist that did not (201 for PUT/PATCH/ops).
    pub created: bool,
    pub deleted: bool,
    /// The document's JSON after the write, serialized (`null` after a delete).
    pub value: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct IdemRecord {
    /// Digest of the request that used the key first (method, path, body).
    pub fingerprint: Vec<u8>,
    pub created_ms: u64,
    pub outcome: WriteOutcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_format_is_refused() {
        let mut bytes = encode(&WriteOutcome {
            created: true,
            deleted: false,
            value: "{}".into(),
            version: "v".into(),
        });
        assert!(decode::<WriteOutcome>(&bytes).is_ok());
        bytes[0] = 3;
        let err = decode::<WriteOutcome>(&bytes).unwrap_err().to_string();
        assert!(err.contains("format 3"), "{err}");
        assert!(decode::<WriteOutcome>(&[]).is_err());
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum_and_unchecked_records_still_read() {
        let outcome = WriteOutcome {
            created: false,
            deleted: false,
            value: "{\"a\":1}".into(),
            version: "v".into(),
        };
        let good = encode(&outcome);
        for i in 1..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            let err = decode::<WriteOutcome>(&bad).unwrap_err().to_string();
            assert!(err.contains("checksum"), "byte {i}: {err}");
        }
        assert!(strip_format(&[FORMAT, 1, 2]).is_err());
        // 0.1 wrote the body straight after format byte 1
        let mut old = vec![FORMAT_UNCHECKED];
        old.extend(postcard::to_stdvec(&outcome).unwrap());
        assert_eq!(decode::<WriteOutcome>(&old).unwrap(), outcome);
    }

    #[test]
    fn event_keys_sort_by_seq_and_decode() {
        assert!(event_key(255) < event_key(256));
        assert_eq!(event_seq(&event_key(1 << 40)).unwrap(), 1 << 40);
        assert!(event_seq(&event_key(7)[..8]).is_err());
        assert!(event_seq(&feed_key(&Timestamp::new(
            uhlc::NTP64(1),
            uhlc::ID::try_from(b"n1".as_slice()).unwrap()
        )))
        .is_err());
    }

    #[test]
    fn feed_keys_sort_by_stamp_and_decode() {
        let id = uhlc::ID::try_from(b"n1".as_slice()).unwrap();
        let a = Timestamp::new(uhlc::NTP64(5), id);
        let b = Timestamp::new(uhlc::NTP64(256), id);
        assert!(feed_key(&a) < feed_key(&b));
        assert!(feed_start(Some(&a)) > feed_key(&a) && feed_start(Some(&a)) < feed_key(&b));
        assert_eq!(feed_stamp(&feed_key(&b)).unwrap(), b);
        assert!(feed_stamp(&feed_key(&b)[..20]).is_err());
        assert!(feed_key(&b) < feed_end());
    }
}
