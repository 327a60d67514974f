//! Node identity and the hybrid logical clock that stamps every change.

use std::str::FromStr;
use std::time::Duration;

use uhlc::{Timestamp, HLC, NTP64};

use crate::error::{Error, Result};

/// Default maximum drift accepted from another node's timestamp.
pub const DEFAULT_MAX_DRIFT: Duration = Duration::from_millis(500);

/// A node's identity: 1 to 16 bytes of `A-Z a-z 0-9 . _ -`. It is both the automerge actor of the
/// node's changes and the id of its hybrid logical clock, so the bytes must fit uhlc's 16-byte id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 16
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(Error::bad(format!(
                "node id {s:?} must be 1 to 16 characters of A-Z a-z 0-9 . _ -"
            )));
        }
        Ok(NodeId(s.to_owned()))
    }

    /// A fresh random id (16 hex digits), for a data dir that has none yet.
    pub fn random() -> Self {
        NodeId(format!("{:016x}", rand::random::<u64>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    #[cfg(feature = "store")]
    pub(crate) fn actor(&self) -> automerge::ActorId {
        automerge::ActorId::from(self.0.as_bytes())
    }

    fn hlc_id(&self) -> uhlc::ID {
        uhlc::ID::try_from(self.0.as_bytes()).expect("1..=16 non-zero bytes, checked in new")
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The node's hybrid logical clock. Every local change is stamped by [`Clock::now`]; stamps are
/// unique and strictly increasing on one node, and a stamp received from elsewhere moves the
/// clock forward unless it is further ahead of the physical clock than the maximum drift.
pub struct Clock {
    hlc: HLC,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("id", self.hlc.get_id())
            .finish()
    }
}

impl Clock {
    pub fn new(node: &NodeId, max_drift: Duration) -> Self {
        Self::with_physical(node, max_drift, uhlc::system_time_clock)
    }

    /// A clock over an injected physical clock, so tests control time.
    pub fn with_physical(node: &NodeId, max_drift: Duration, physical: fn() -> NTP64) -> Self {
        let hlc = uhlc::HLCBuilder::new()
            .with_id(node.hlc_id())
            .with_max_delta(max_drift)
            .with_clock(physical)
            .build();
        Clock { hlc }
    }

    pub fn now(&self) -> Timestamp {
        self.hlc.new_timestamp()
    }

    /// Moves the clock past `ts`, or refuses a stamp too far in the future.
    pub fn observe(&self, ts: &Timestamp) -> Result<()> {
        self.hlc
            .update_with_timestamp(ts)
            .map_err(|e| Error::unprocessable(format!("clock drift: {e}")))
    }
}

/// Parses the exact form stored in change messages (`time/id`).
pub fn parse_stamp(s: &str) -> Option<Timestamp> {
    Timestamp::from_str(s).ok()
}

/// The form shown to clients: RFC 3339 with nanoseconds, then the clock id.
pub fn display_stamp(ts: &Timestamp) -> String {
    format!("{ts:#}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(NodeId::new("eu-1").is_ok());
        assert!(NodeId::new(&"a".repeat(16)).is_ok());
        assert!(NodeId::new(&"a".repeat(17)).is_err());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a/b").is_err());
        assert_eq!(NodeId::random().as_str().len(), 16);
    }

    #[test]
    fn stamps_increase_and_round_trip() {
        let c = Clock::new(&NodeId::new("n1").unwrap(), DEFAULT_MAX_DRIFT);
        let a = c.now();
        let b = c.now();
        assert!(b > a);
        assert_eq!(parse_stamp(&b.to_string()), Some(b));
    }

    fn far_future() -> NTP64 {
        uhlc::system_time_clock() + NTP64::from(Duration::from_secs(600))
    }

    #[test]
    fn a_stamp_beyond_the_drift_is_refused() {
        let ahead =
            Clock::with_physical(&NodeId::new("fast").unwrap(), DEFAULT_MAX_DRIFT, far_future);
        let local = Clock::new(&NodeId::new("n1").unwrap(), DEFAULT_MAX_DRIFT);
        let before = local.now();
        assert!(local.observe(&ahead.now()).is_err());
        // the local clock did not jump ten minutes
        let after = local.now();
        assert!(after.get_diff_duration(&before) < Duration::from_secs(5));
    }
}
