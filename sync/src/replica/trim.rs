//! Trimming this node's feed. An entry is needed only until every peer has read past it; a
//! peer presents its cursor with every feed request, subscription and anti-entropy pass (so at
//! least every `anti_entropy_every` while a subscription stays open), and it then holds every
//! change up to there. So the feed is trimmed through the oldest cursor all peers presented
//! since start-up, and, whatever the cursors, through the retention window: a peer away longer
//! is answered `Trimmed` and catches up by anti-entropy (see `follow::resume_after_trim`).

use std::time::Duration;

use uhlc::Timestamp;

use super::{Replica, Transport};

/// How far the feed may be trimmed, given each peer's presented cursor (`None`: it has not
/// asked since start-up, or holds nothing) and the clock's `now`: through the oldest cursor,
/// and at least through `now - retention`. A node without peers needs no feed at all.
pub(super) fn trim_point(
    acked: impl IntoIterator<Item = Option<Timestamp>>,
    now: Timestamp,
    retention: Duration,
) -> Timestamp {
    let window = uhlc::NTP64::from(retention).as_u64();
    let floor = Timestamp::new(
        uhlc::NTP64(now.get_time().as_u64().saturating_sub(window)),
        *now.get_id(),
    );
    let mut oldest = Some(now);
    for a in acked {
        oldest = oldest.min(a);
    }
    oldest.map_or(floor, |o| o.max(floor))
}

impl<T: Transport> Replica<T> {
    /// Trims the feed as far as [`trim_point`] allows. Returns the entries removed.
    pub fn trim_feed(&self) -> Result<usize, crate::Error> {
        let acked: Vec<Option<Timestamp>> = self
            .peers()
            .iter()
            .map(|p| p.status.lock().acked.flatten())
            .collect();
        let through = trim_point(
            acked,
            self.shared.store.clock().now(),
            self.shared.config.feed_retention,
        );
        Ok(self.shared.store.trim_feed(&through)?)
    }

    pub(super) async fn trim_loop(self) {
        while !self.pause(self.shared.config.trim_every, None).await {
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.trim_feed()).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(removed = n, "trimmed the feed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "trimming the feed failed"),
                Err(e) => tracing::error!(error = %e, "the feed trim panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Timestamp {
        Timestamp::new(
            uhlc::NTP64::from(Duration::from_secs(secs)),
            uhlc::ID::try_from(7u8).unwrap(),
        )
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn the_feed_is_kept_for_the_slowest_peer_within_the_window() {
        let now = at(10 * 86_400);
        // no peers: nothing needs the feed
        assert_eq!(trim_point([], now, DAY), now);
        // through the oldest presented cursor
        assert_eq!(
            trim_point([Some(at(9 * 86_400 + 5)), Some(now)], now, DAY),
            at(9 * 86_400 + 5)
        );
        // a peer that has not asked (or holds nothing) keeps everything in the window
        assert_eq!(trim_point([None, Some(now)], now, DAY), at(9 * 86_400));
        // a peer away longer than the window no longer holds the feed back
        assert_eq!(
            trim_point([Some(at(86_400)), Some(now)], now, DAY),
            at(9 * 86_400)
        );
        // a window longer than the clock's time trims nothing a cursor does not allow
        assert_eq!(trim_point([None], at(5), DAY), at(0));
    }
}
