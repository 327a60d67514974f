//! The node-to-node protocol: one request, one response, postcard-encoded behind a version
//! byte. All of it travels over a single authenticated endpoint (`POST /internal/rpc`).
//!
//! - `Subscribe`: a stream of frames, each a `Feed` answer, as the answering node's changes
//!   happen (`POST /internal/subscribe`): the steady-state path, one HTTP exchange for many
//!   batches. Frames are a u32 length (little-endian) and a message; an empty frame every
//!   `heartbeat_ms` shows the stream is alive.
//! - `Feed`: one page of the changes made on the answering node after a cursor, in HLC order
//!   (waits up to `wait_ms` for news when there is none): catching up for a session. A cursor
//!   older than what the answering node keeps is answered `Trimmed` (also as a stream's frame):
//!   the asker repairs with anti-entropy, then follows from the `upto` it names.
//! - `Digest`: the answering node's anti-entropy digest (one u64 per bucket of document keys).
//! - `Leaves`: the digests of the leaves of some buckets (`LEAVES_PER_BUCKET` per bucket).
//! - `Repair`: for the asker's documents in some leaves (and any listed documents), the
//!   changes the answering node has that the asker's heads lack.

use serde::{Deserialize, Serialize};
use uhlc::Timestamp;

/// The newest protocol version this build speaks. It also speaks every version back to
/// [`OLDEST_WIRE_VERSION`] (the previous release's), so that regions upgrade one at a time: the
/// asker picks the version per link (see `replica::link`), the answer comes in the request's
/// version, and a node answers a version it does not speak with an error naming the ones it
/// does ([`spoken_by`] reads it), rather than guessing.
/// 2: two-level digests (`Leaves`, `Repair` by leaf) and trimmed feeds.
/// 3: [`Extras`] after the message: the trace id each change was made under.
pub const WIRE_VERSION: u8 = 3;
/// The oldest version this build speaks.
pub const OLDEST_WIRE_VERSION: u8 = 2;

/// The versions a node speaks: every one from `oldest` to `newest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub oldest: u8,
    pub newest: u8,
}

impl Versions {
    /// What this build speaks.
    pub const ALL: Versions = Versions {
        oldest: OLDEST_WIRE_VERSION,
        newest: WIRE_VERSION,
    };

    pub fn speaks(&self, v: u8) -> bool {
        (self.oldest..=self.newest).contains(&v)
    }

    /// The refusal of a message of version `v`, in the words [`spoken_by`] reads (those of
    /// the previous release, which said only `(this node speaks 2)`).
    fn refusal(&self, v: u8) -> String {
        let spoken = if self.oldest == self.newest {
            self.newest.to_string()
        } else {
            format!("{}..{}", self.oldest, self.newest)
        };
        format!("protocol version {v} is not spoken here (this node speaks {spoken})")
    }
}

/// The versions a peer's refusal says it speaks, if it is a refusal of the version.
pub fn spoken_by(message: &str) -> Option<Versions> {
    let rest = message.split("this node speaks ").nth(1)?;
    let spoken = rest.split(')').next()?;
    let (oldest, newest) = match spoken.split_once("..") {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let v = spoken.parse().ok()?;
            (v, v)
        }
    };
    (oldest <= newest).then_some(Versions { oldest, newest })
}

/// What a message of version 3 or later carries after its body, for the answers that carry
/// changes (`Feed`, `Repair`): per entry of `changes`, the trace id (W3C, 16 bytes) of the
/// request that made them, where this node still knows it. Empty for other messages, and in
/// version 2 (whose peers would not read it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extras {
    pub traces: Vec<Option<[u8; 16]>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Feed {
        from: String,
        after: Option<Timestamp>,
        wait_ms: u32,
        limit: u32,
    },
    Subscribe {
        from: String,
        after: Option<Timestamp>,
        limit: u32,
        heartbeat_ms: u32,
    },
    Digest {
        from: String,
        /// The asker's cursor into the answering node's feed: it holds every change up to
        /// there (lets the feed be trimmed while a subscription stays open).
        cursor: Option<Timestamp>,
    },
    Leaves {
        from: String,
        buckets: Vec<u32>,
    },
    Repair {
        from: String,
        leaves: Vec<u32>,
        /// The asker's heads of every document it has in `leaves`, plus any it asks about.
        docs: Vec<DocHeads>,
    },
}

impl Request {
    /// The asking node.
    pub fn from(&self) -> &str {
        match self {
            Request::Feed { from, .. }
            | Request::Subscribe { from, .. }
            | Request::Digest { from, .. }
            | Request::Leaves { from, .. }
            | Request::Repair { from, .. } => from,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    Feed {
        changes: Vec<DocChanges>,
        /// Every change of the answering node stamped at or before this is delivered.
        upto: Option<Timestamp>,
        more: bool,
        /// The answering node's newest change, and how many follow `upto` (capped), for lag.
        latest: Option<Timestamp>,
        behind: u64,
    },
    Digest {
        buckets: Vec<u64>,
    },
    Leaves {
        digests: Vec<u64>,
    },
    /// The asker's cursor is older than the oldest change the feed keeps. Every change of the
    /// answering node stamped at or before `upto` was durable there when it answered: after a
    /// complete anti-entropy pass with it, the asker may follow from `upto`.
    Trimmed {
        upto: Timestamp,
    },
    Repair {
        changes: Vec<DocChanges>,
        /// The answer was cut at its size limit: ask again.
        more: bool,
    },
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocHeads {
    pub collection: String,
    pub id: String,
    pub heads: Vec<[u8; 32]>,
}

/// Raw automerge changes of one document (each change carries its own author and HLC stamp).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocChanges {
    pub collection: String,
    pub id: String,
    pub changes: Vec<Vec<u8>>,
}

/// A trace id as W3C writes it: 32 lowercase hex digits.
pub fn hex(trace: &[u8; 16]) -> String {
    ::hex::encode(trace)
}

/// A message in this build's newest version, without extras.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    encode_at(WIRE_VERSION, msg, &Extras::default())
}

/// A message in `version`: the version byte, the message, and (from version 3) the extras.
pub fn encode_at<T: Serialize>(version: u8, msg: &T, extras: &Extras) -> Vec<u8> {
    let mut out = vec![version];
    out.extend(postcard::to_stdvec(msg).expect("messages serialize"));
    if version >= 3 {
        out.extend(postcard::to_stdvec(extras).expect("extras serialize"));
    }
    out
}

/// Largest frame a reader accepts (a feed page is about 1 MiB at most).
pub const MAX_FRAME: usize = 64 << 20;

/// One frame of a stream: length, then the message (in this build's newest version).
pub fn frame(msg: &Response) -> Vec<u8> {
    frame_at(WIRE_VERSION, msg, &Extras::default())
}

/// [`frame`] in `version`, with `extras`.
pub fn frame_at(version: u8, msg: &Response, extras: &Extras) -> Vec<u8> {
    let body = encode_at(version, msg, extras);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend(body);
    out
}

/// Reassembles frames from the chunks a stream arrives in (chunk borders fall anywhere).
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame's message bytes, if one has arrived; an error for a length no
    /// sender would use.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, crate::Error> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[..4].try_into().expect("4 bytes")) as usize;
        if len > MAX_FRAME {
            return Err(crate::Error::Protocol(format!(
                "a frame of {len} bytes is over the limit"
            )));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(body))
    }
}

/// A message of any version this build speaks, without its extras.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, crate::Error> {
    decode_at(bytes, Versions::ALL).map(|d| d.message)
}

/// A decoded message: what it says, its extras (empty before version 3), and its version.
#[derive(Debug)]
pub struct Decoded<T> {
    pub message: T,
    pub extras: Extras,
    pub version: u8,
}

/// Why a message was not decoded: its version is not spoken (with the refusal to answer), or
/// it is malformed.
#[derive(Debug)]
pub enum Undecodable {
    Version { version: u8, refusal: String },
    Malformed(crate::Error),
}

impl From<Undecodable> for crate::Error {
    fn from(u: Undecodable) -> Self {
        match u {
            Undecodable::Version { refusal, .. } => crate::Error::Protocol(refusal),
            Undecodable::Malformed(e) => e,
        }
    }
}

/// A message of a version `speaks` covers.
pub fn decode_at<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    speaks: Versions,
) -> Result<Decoded<T>, crate::Error> {
    decode_checked(bytes, speaks).map_err(Into::into)
}

/// [`decode_at`], telling a version refusal apart from a malformed message.
pub fn decode_checked<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    speaks: Versions,
) -> Result<Decoded<T>, Undecodable> {
    let malformed = |e: postcard::Error| {
        Undecodable::Malformed(crate::Error::Protocol(format!("undecodable message: {e}")))
    };
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(Undecodable::Malformed(crate::Error::Protocol(
            "empty message".into(),
        )));
    };
    if !speaks.speaks(version) {
        return Err(Undecodable::Version {
            version,
            refusal: speaks.refusal(version),
        });
    }
    let (message, rest) = postcard::take_from_bytes(rest).map_err(malformed)?;
    let extras = if version >= 3 && !rest.is_empty() {
        postcard::from_bytes(rest).map_err(malformed)?
    } else {
        Extras::default()
    };
    Ok(Decoded {
        message,
        extras,
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_chunking() {
        let msgs: Vec<Response> = (0..5)
            .map(|i| Response::Error {
                message: "x".repeat(i * 100),
            })
            .collect();
        let stream: Vec<u8> = msgs.iter().flat_map(frame).collect();
        for chunk in [1, 3, 7, 64, stream.len()] {
            let mut r = FrameReader::default();
            let mut got = vec![];
            for c in stream.chunks(chunk) {
                r.push(c);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(decode::<Response>(&f).unwrap());
                }
            }
            assert_eq!(got, msgs, "chunks of {chunk}");
        }
        let mut r = FrameReader::default();
        r.push(&u32::MAX.to_le_bytes());
        assert!(r.next_frame().is_err());
    }

    #[test]
    fn messages_round_trip_and_other_versions_are_refused() {
        let r = Request::Digest {
            from: "eu".into(),
            cursor: None,
        };
        let mut bytes = encode(&r);
        assert_eq!(decode::<Request>(&bytes).unwrap(), r);
        bytes[0] = 9;
        assert!(decode::<Request>(&bytes)
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        assert!(decode::<Request>(&[]).is_err());
        assert!(decode::<Request>(&[WIRE_VERSION, 200, 1]).is_err());
    }

    #[test]
    fn each_version_round_trips_and_version_2_carries_no_extras() {
        let r = Response::Repair {
            changes: vec![DocChanges {
                collection: "users".into(),
                id: "a".into(),
                changes: vec![vec![1, 2, 3]],
            }],
            more: false,
        };
        let extras = Extras {
            traces: vec![Some([7; 16])],
        };
        let v3 = encode_at(3, &r, &extras);
        let d = decode_at::<Response>(&v3, Versions::ALL).unwrap();
        assert_eq!(
            (d.message, d.extras, d.version),
            (r.clone(), extras.clone(), 3)
        );
        // version 2 is the previous release's bytes exactly: no extras, nothing after
        let v2 = encode_at(2, &r, &extras);
        assert_eq!(v2.len(), 1 + postcard::to_stdvec(&r).unwrap().len());
        let d = decode_at::<Response>(&v2, Versions::ALL).unwrap();
        assert_eq!((d.message, d.extras, d.version), (r, Extras::default(), 2));
    }

    #[test]
    fn a_refusal_names_the_versions_spoken_in_words_the_previous_release_used() {
        let old = Versions {
            oldest: 2,
            newest: 2,
        };
        let v3 = encode(&Request::Digest {
            from: "eu".into(),
            cursor: None,
        });
        let Err(Undecodable::Version { version, refusal }) = decode_checked::<Request>(&v3, old)
        else {
            panic!("a version 2 node refuses version 3");
        };
        assert_eq!(version, 3);
        // the previous release's own words
        assert_eq!(
            refusal,
            "protocol version 3 is not spoken here (this node speaks 2)"
        );
        assert_eq!(spoken_by(&refusal), Some(old));
        assert_eq!(
            spoken_by(&Versions::ALL.refusal(9)),
            Some(Versions::ALL),
            "a range"
        );
        assert_eq!(spoken_by("the peer refused: no such document"), None);
        assert_eq!(spoken_by("this node speaks 3..2)"), None);
    }
}
