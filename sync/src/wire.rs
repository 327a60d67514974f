//! The node-to-node protocol: one request, one response, postcard-encoded behind a version
//! byte. All of it travels over a single authenticated endpoint (`POST /internal/rpc`).
//!
//! - `Feed`: the changes made on the answering node after a cursor, in HLC order (long poll:
//!   waits up to `wait_ms` for news when there is none).
//! - `Digest`: the answering node's anti-entropy digest (one u64 per bucket of document keys).
//! - `Repair`: for the asker's documents in some buckets (and any listed documents), the
//!   changes the answering node has that the asker's heads lack.

use serde::{Deserialize, Serialize};
use uhlc::Timestamp;

/// Version of the protocol this build speaks. A node answers a request of another version with
/// an error rather than guessing.
pub const WIRE_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Feed {
        from: String,
        after: Option<Timestamp>,
        wait_ms: u32,
        limit: u32,
    },
    Digest {
        from: String,
    },
    Repair {
        from: String,
        buckets: Vec<u32>,
        /// The asker's heads of every document it has in `buckets`, plus any it asks about.
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

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| format!("undecodable message: {e}"))
        }
        Some((v, _)) => Err(format!(
            "protocol version {v} is not spoken here (this node speaks {WIRE_VERSION})"
        )),
        None => Err("empty message".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_other_versions_are_refused() {
        let r = Request::Digest { from: "eu".into() };
        let mut bytes = encode(&r);
        assert_eq!(decode::<Request>(&bytes).unwrap(), r);
        bytes[0] = 9;
        assert!(decode::<Request>(&bytes).unwrap_err().contains("version 9"));
        assert!(decode::<Request>(&[]).is_err());
        assert!(decode::<Request>(&[WIRE_VERSION, 200, 1]).is_err());
    }
}
