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

/// Version of the protocol this build speaks. A node answers a request of another version with
/// an error rather than guessing.
/// 2: two-level digests (`Leaves`, `Repair` by leaf) and trimmed feeds.
pub const WIRE_VERSION: u8 = 2;

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

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut out = vec![WIRE_VERSION];
    out.extend(postcard::to_stdvec(msg).expect("messages serialize"));
    out
}

/// Largest frame a reader accepts (a feed page is about 1 MiB at most).
pub const MAX_FRAME: usize = 64 << 20;

/// One frame of a stream: length, then the message.
pub fn frame(msg: &Response) -> Vec<u8> {
    let body = encode(msg);
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

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, crate::Error> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => postcard::from_bytes(rest)
            .map_err(|e| crate::Error::Protocol(format!("undecodable message: {e}"))),
        Some((v, _)) => Err(crate::Error::Protocol(format!(
            "protocol version {v} is not spoken here (this node speaks {WIRE_VERSION})"
        ))),
        None => Err(crate::Error::Protocol("empty message".into())),
    }
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
}
