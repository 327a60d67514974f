//! The trace id (W3C trace context, 16 bytes) each recent local change was made under, so that
//! the feed can hand it to the peers and their apply is logged under the same trace. Kept in
//! memory for the newest [`KEPT`] changes only: a trace is a diagnostic, and a change a peer
//! reads later than that (or after a restart) travels without one.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;

use super::Store;

/// How many changes' trace ids are kept (about 5 MiB).
const KEPT: usize = 65_536;

#[derive(Debug, Default)]
pub(super) struct Traces(Mutex<Ring>);

#[derive(Debug, Default)]
struct Ring {
    by_change: HashMap<[u8; 32], [u8; 16]>,
    order: VecDeque<[u8; 32]>,
}

impl Traces {
    pub(super) fn note(&self, changes: impl IntoIterator<Item = [u8; 32]>, trace: [u8; 16]) {
        let mut r = self.0.lock();
        for hash in changes {
            if r.by_change.insert(hash, trace).is_none() {
                r.order.push_back(hash);
            }
            while r.order.len() > KEPT {
                if let Some(old) = r.order.pop_front() {
                    r.by_change.remove(&old);
                }
            }
        }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<[u8; 16]> {
        self.0.lock().by_change.get(hash).copied()
    }
}

impl Store {
    /// The trace id the local change `hash` was made under, if this node still knows it.
    pub fn trace_of(&self, hash: &[u8; 32]) -> Option<[u8; 16]> {
        self.inner.traces.get(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_are_kept() {
        let t = Traces::default();
        let hash = |i: usize| {
            let mut h = [0u8; 32];
            h[..8].copy_from_slice(&(i as u64).to_le_bytes());
            h
        };
        t.note((0..KEPT + 10).map(hash), [1; 16]);
        assert_eq!(t.get(&hash(0)), None, "the oldest went");
        assert_eq!(t.get(&hash(KEPT + 9)), Some([1; 16]));
        assert_eq!(t.0.lock().by_change.len(), KEPT);
    }
}
