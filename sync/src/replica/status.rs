//! What a node knows about each peer's link, and the `/v1/cluster` report made of it.
//!
//! Reachability is a rule over this bookkeeping, not a flag some code path remembers to clear:
//! a peer is reachable while the last exchange with it succeeded *and* something was heard from
//! it within the silence limit. A partition that drops packets (no reset, no error) shows as
//! unreachable once the peer's heartbeats stop arriving, not when a timeout finally fires.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;
use uhlc::Timestamp;

use super::{secs_between, Replica, Transport, BACKLOG_CAP};

/// `GET /v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterReport {
    pub node: String,
    pub hlc: String,
    /// Changes refused because their stamp was too far ahead of this node's clock.
    pub clock_drift_refusals: u64,
    /// Changes peers sent for collections placed outside this region, dropped (see placement).
    pub changes_outside_placement: u64,
    pub peers: Vec<PeerReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub id: String,
    pub url: String,
    /// The last request to the peer succeeded and the peer was heard from within the silence
    /// limit (1 s by default: four missed heartbeats).
    pub reachable: bool,
    /// Milliseconds since the last successful exchange either way (`None`: never).
    pub last_contact_ms_ago: Option<u64>,
    /// Milliseconds since something arrived from the peer (`None`: never).
    pub last_heard_ms_ago: Option<u64>,
    pub last_error: Option<String>,
    /// How far this node is behind the peer's changes.
    pub behind_peer: Lag,
    /// How far the peer is behind this node's changes (as of its last feed request).
    pub peer_behind: Lag,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Changes taken from the peer's feed since start-up.
    pub changes_received: u64,
    /// Changes anti-entropy took from the peer since start-up (ones the feeds missed).
    pub changes_repaired: u64,
    /// Feed pages received from the peer (subscription frames and catch-up answers), and how
    /// many brought changes.
    pub feed_pages: u64,
    pub feed_batches: u64,
    /// Times this node caught up by anti-entropy because the peer's feed no longer held the
    /// changes after its cursor (it was away longer than the peer's retention window).
    pub trimmed_feed_repairs: u64,
    /// Anti-entropy passes with the peer that repaired every difference they found.
    pub anti_entropy_passes: u64,
    /// The protocol version this node's requests to the peer run in (its last answer's;
    /// `None` until one came), and the version of the peer's last request to this node.
    pub protocol: Option<u8>,
    pub peer_protocol: Option<u8>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Lag {
    pub seconds: f64,
    pub changes: u64,
}

#[derive(Debug, Default)]
pub(super) struct PeerStatus {
    /// The last exchange this node started with the peer succeeded.
    ok: bool,
    /// Something arrived from the peer: an answer, a feed frame, a request of its own.
    last_heard: Option<Instant>,
    /// Any successful exchange either way (also a frame this node sent).
    last_contact: Option<Instant>,
    pub(super) last_error: Option<String>,
    pub(super) bytes_sent: u64,
    pub(super) bytes_received: u64,
    pub(super) changes_received: u64,
    pub(super) changes_repaired: u64,
    pub(super) feed_pages: u64,
    pub(super) feed_batches: u64,
    pub(super) trim_repairs: u64,
    pub(super) complete_passes: u64,
    /// From the peer's last feed answer: its newest change and how many were still to come.
    pub(super) their_latest: Option<Timestamp>,
    pub(super) their_backlog: u64,
    /// From the peer's last feed request: its cursor into this node's feed.
    pub(super) their_cursor: Option<Option<Timestamp>>,
    /// The cursor the peer itself presented in its last feed request or subscription: it
    /// held every change of this node's feed up to there (durably, or there were none).
    pub(super) acked: Option<Option<Timestamp>>,
    /// The protocol version this node's requests to the peer go in (`None`: the newest it
    /// speaks), and the one its last answer came in (see `link`).
    pub(super) asking: Option<u8>,
    pub(super) protocol: Option<u8>,
    /// The version of the peer's last request to this node.
    pub(super) their_protocol: Option<u8>,
}

impl PeerStatus {
    /// An exchange this node started worked: the peer answered.
    pub(super) fn succeeded(&mut self, now: Instant) {
        self.ok = true;
        self.last_error = None;
        self.heard(now);
    }

    /// An exchange this node started failed; the link only if the error says so.
    pub(super) fn failed(&mut self, error: &crate::Error) {
        if error.is_link_failure() {
            self.ok = false;
            // it may come back upgraded: ask in the newest version again
            self.asking = None;
            self.protocol = None;
        }
        self.last_error = Some(error.to_string());
    }

    /// Something arrived from the peer (its own request, a frame of a stream).
    pub(super) fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
        self.last_contact = Some(now);
    }

    /// This node delivered something to the peer (which does not show the peer is alive: the
    /// bytes may sit in a buffer).
    pub(super) fn delivered(&mut self, now: Instant) {
        self.last_contact = Some(now);
    }

    /// The rule of [`PeerReport::reachable`].
    pub(super) fn reachable(&self, now: Instant, silence_limit: Duration) -> bool {
        self.ok
            && self
                .last_heard
                .is_some_and(|t| now.saturating_duration_since(t) <= silence_limit)
    }

    /// The report of this peer; the lags come from the caller, which reads the store.
    pub(super) fn report(
        &self,
        id: String,
        url: String,
        now: Instant,
        silence_limit: Duration,
        behind_peer: Lag,
        peer_behind: Lag,
    ) -> PeerReport {
        let ago =
            |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        PeerReport {
            id,
            url,
            reachable: self.reachable(now, silence_limit),
            last_contact_ms_ago: ago(self.last_contact),
            last_heard_ms_ago: ago(self.last_heard),
            last_error: self.last_error.clone(),
            behind_peer,
            peer_behind,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            changes_received: self.changes_received,
            changes_repaired: self.changes_repaired,
            feed_pages: self.feed_pages,
            feed_batches: self.feed_batches,
            trimmed_feed_repairs: self.trim_repairs,
            anti_entropy_passes: self.complete_passes,
            protocol: self.protocol,
            peer_protocol: self.their_protocol,
        }
    }
}

impl<T: Transport> Replica<T> {
    pub fn report(&self) -> ClusterReport {
        let store = &self.shared.store;
        let (now, silence) = (Instant::now(), self.shared.config.silence_limit());
        let peers = self
            .peers()
            .iter()
            .map(|p| {
                let st = p.status.lock();
                let cursor = *p.cursor.lock();
                let behind_peer = match st.their_latest {
                    Some(latest) if st.their_backlog > 0 || cursor.is_none_or(|c| c < latest) => {
                        Lag {
                            seconds: secs_between(&latest, cursor.as_ref()),
                            changes: st.their_backlog.max(1),
                        }
                    }
                    _ => Lag::default(),
                };
                let peer_behind = match st.their_cursor {
                    Some(after) => match store.feed_backlog(after.as_ref(), BACKLOG_CAP) {
                        Ok((Some(latest), n)) if n > 0 => Lag {
                            seconds: secs_between(&latest, after.as_ref()),
                            changes: n as u64,
                        },
                        _ => Lag::default(),
                    },
                    None => Lag::default(),
                };
                st.report(
                    p.peer.id.to_string(),
                    p.peer.addr.clone(),
                    now,
                    silence,
                    behind_peer,
                    peer_behind,
                )
            })
            .collect();
        ClusterReport {
            node: self.shared.me.clone(),
            hlc: meridian_crdt::display_stamp(&store.clock().now()),
            clock_drift_refusals: self.shared.drift_refusals.load(Ordering::Relaxed),
            changes_outside_placement: self.shared.outside_placement.load(Ordering::Relaxed),
            peers,
        }
    }

    /// Bytes sent to and received from all peers, both as asker and as answerer.
    pub fn bytes(&self) -> (u64, u64) {
        self.peers().iter().fold((0, 0), |(s, r), p| {
            let st = p.status.lock();
            (s + st.bytes_sent, r + st.bytes_received)
        })
    }

    pub fn drift_refusals(&self) -> u64 {
        self.shared.drift_refusals.load(Ordering::Relaxed)
    }

    /// A peer to send clients to: the first one reachable now, else the first one; `None`
    /// without peers.
    pub fn elsewhere(&self) -> Option<String> {
        let (now, silence) = (Instant::now(), self.shared.config.silence_limit());
        let peers = self.peers();
        peers
            .iter()
            .find(|p| p.status.lock().reachable(now, silence))
            .or(peers.first())
            .map(|p| p.peer.id.to_string())
    }

    /// Where a peer is reached, if it is one.
    pub fn peer_url(&self, id: &str) -> Option<String> {
        self.peer(id).map(|p| p.peer.addr.clone())
    }

    /// This node's cursor into a peer's feed.
    pub fn cursor(&self, peer: &str) -> Option<Timestamp> {
        self.peer(peer).and_then(|p| *p.cursor.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(1);

    #[test]
    fn a_peer_is_reachable_only_while_it_is_heard_from() {
        let t0 = Instant::now();
        let mut st = PeerStatus::default();
        assert!(!st.reachable(t0, LIMIT), "never heard from");
        st.succeeded(t0);
        assert!(st.reachable(t0 + Duration::from_millis(999), LIMIT));
        // packets dropped: no error arrives, only silence
        assert!(!st.reachable(t0 + Duration::from_millis(1001), LIMIT));
        // what this node sends into the void does not count
        st.delivered(t0 + Duration::from_millis(1500));
        assert!(!st.reachable(t0 + Duration::from_millis(1600), LIMIT));
        // a heartbeat arrives
        st.heard(t0 + Duration::from_millis(1700));
        assert!(st.reachable(t0 + Duration::from_millis(1800), LIMIT));
    }

    #[test]
    fn a_failed_exchange_is_unreachable_at_once_until_one_succeeds() {
        let t0 = Instant::now();
        let mut st = PeerStatus::default();
        st.succeeded(t0);
        // this node's own disk failing says nothing about the link
        st.failed(&crate::Error::Store("no space left".into()));
        assert!(st.reachable(t0, LIMIT));
        st.failed(&crate::Error::Unreachable("connection refused".into()));
        assert!(!st.reachable(t0, LIMIT));
        // the peer's own requests still arrive (a one-way cut): not enough
        st.heard(t0);
        assert!(!st.reachable(t0, LIMIT));
        st.succeeded(t0);
        assert!(st.reachable(t0, LIMIT));
        let r = st.report(
            "eu".into(),
            "u".into(),
            t0,
            LIMIT,
            Lag::default(),
            Lag::default(),
        );
        assert!(r.reachable && r.last_error.is_none());
    }
}
