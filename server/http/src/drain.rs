//! Draining: a node about to stop (SIGTERM with `--drain-secs`, or `POST /v1/_drain`) turns
//! clients away before it goes. `/readyz` answers 503 so load balancers stop sending; sync
//! connections are closed with "going away" and change streams end, so their clients reconnect
//! elsewhere; new ones are refused with 503 `draining` naming a peer; plain requests are served
//! on. The node stops once nothing has come for a while, or at the deadline (`meridian-node`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Whether this node drains, and when it last saw a request.
#[derive(Debug)]
pub struct Drain {
    on: watch::Sender<bool>,
    born: Instant,
    /// Milliseconds since `born` of the last request that arrived.
    last_request: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            on: watch::Sender::new(false),
            born: Instant::now(),
            last_request: AtomicU64::new(0),
        }
    }
}

impl Drain {
    /// Starts draining; `false` if it had started already.
    pub fn start(&self) -> bool {
        self.on.send_if_modified(|on| !std::mem::replace(on, true))
    }

    pub fn is_on(&self) -> bool {
        *self.on.borrow()
    }

    /// Resolves once draining has started.
    pub async fn started(&self) {
        let mut rx = self.on.subscribe();
        // the sender lives as long as `self`
        let _ = rx.wait_for(|on| *on).await;
    }

    /// A request arrived.
    pub(crate) fn touch(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.last_request.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last request arrived.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_request.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn draining_starts_once_and_wakes_who_waits() {
        let d = std::sync::Arc::new(Drain::default());
        let waiter = tokio::spawn({
            let d = d.clone();
            async move { d.started().await }
        });
        assert!(!d.is_on());
        assert!(d.start());
        assert!(!d.start(), "once");
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        d.touch();
        assert!(d.quiet_for() < Duration::from_millis(100));
    }
}
