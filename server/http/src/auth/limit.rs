//! Failed authentication, limited per client address: a token bucket of `burst` failures that
//! refills at `per_second`. While an address's bucket is empty, every request from it that
//! needs a key gets 429, whatever key it holds: answering a right key differently would let a
//! guesser go on guessing. Addresses that fail nothing cost nothing; the table is bounded.
//! And [`RateLimiter`]: requests per token `sub` and per API key.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

#[derive(Debug)]
pub struct FailureLimiter {
    burst: f64,
    per_second: f64,
    max_addresses: usize,
    buckets: Mutex<HashMap<Option<IpAddr>, Bucket>>,
    /// No address has failed lately: every request passes without taking the lock.
    empty: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// Said once per episode in the log, not per refused request.
    logged: bool,
}

impl Default for FailureLimiter {
    /// 20 failures at once, then one every 2 s.
    fn default() -> Self {
        FailureLimiter::new(20, 0.5)
    }
}

impl FailureLimiter {
    pub fn new(burst: u32, per_second: f64) -> Self {
        FailureLimiter {
            burst: burst as f64,
            per_second,
            max_addresses: 100_000,
            buckets: Mutex::new(HashMap::new()),
            empty: AtomicBool::new(true),
        }
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_second)
            .min(self.burst)
    }

    /// `Some(wait)` while `addr` has failed too often; `first` is true the first time in an
    /// episode (to log it once).
    pub fn blocked(&self, addr: Option<IpAddr>, now: Instant) -> Option<(Duration, bool)> {
        if self.empty.load(Ordering::Relaxed) {
            return None;
        }
        let mut buckets = self.buckets.lock();
        let b = buckets.get_mut(&addr)?;
        let tokens = self.refilled(b, now);
        if tokens >= 1.0 {
            return None;
        }
        let first = !b.logged;
        b.logged = true;
        let wait = Duration::from_secs_f64((1.0 - tokens) / self.per_second);
        Some((wait, first))
    }

    /// Counts one failure from `addr`.
    pub fn fail(&self, addr: Option<IpAddr>, now: Instant) {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= self.max_addresses && !buckets.contains_key(&addr) {
            // forget the addresses that have refilled: they are as good as new
            buckets.retain(|_, b| self.refilled(b, now) < self.burst);
        }
        self.empty.store(false, Ordering::Relaxed);
        let b = buckets.entry(addr).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            logged: false,
        });
        let tokens = self.refilled(b, now);
        *b = Bucket {
            tokens: (tokens - 1.0).max(0.0),
            at: now,
            logged: b.logged && tokens < 1.0,
        };
    }

    pub fn addresses(&self) -> usize {
        self.buckets.lock().len()
    }
}

/// Requests per principal (a token's `sub`, an API key's name): a token bucket each, so that
/// one device or one key cannot starve the node. Sharded so that requests of different
/// principals rarely meet on a lock; idle principals are forgotten when a shard fills.
#[derive(Debug)]
pub struct RateLimiter {
    shards: Vec<Mutex<HashMap<String, Bucket>>>,
    max_per_shard: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter {
            shards: (0..16).map(|_| Mutex::new(HashMap::new())).collect(),
            max_per_shard: 20_000,
        }
    }
}

impl RateLimiter {
    /// Takes one request of `who` at `rate`; `Err(wait)` when its bucket is empty.
    pub fn take(&self, who: &str, rate: super::keys::Rate, now: Instant) -> Result<(), Duration> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(who);
        let mut shard = self.shards[hash as usize % self.shards.len()].lock();
        let burst = f64::from(rate.burst);
        if shard.len() >= self.max_per_shard && !shard.contains_key(who) {
            shard.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate.per_second
                    < burst
            });
        }
        if !shard.contains_key(who) {
            // the key is allocated once per principal, not per request
            let fresh = Bucket {
                tokens: burst,
                at: now,
                logged: false,
            };
            shard.insert(who.to_owned(), fresh);
        }
        let b = shard.get_mut(who).expect("just inserted");
        let tokens = (b.tokens
            + now.saturating_duration_since(b.at).as_secs_f64() * rate.per_second)
            .min(burst);
        b.at = now;
        if tokens >= 1.0 {
            b.tokens = tokens - 1.0;
            Ok(())
        } else {
            b.tokens = tokens;
            Err(Duration::from_secs_f64((1.0 - tokens) / rate.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_burst_and_others_are_not() {
        let l = FailureLimiter::new(3, 1.0);
        let t0 = Instant::now();
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        for _ in 0..3 {
            assert!(l.blocked(a, t0).is_none());
            l.fail(a, t0);
        }
        let (wait, first) = l.blocked(a, t0).unwrap();
        assert!(first && wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(!l.blocked(a, t0).unwrap().1, "logged once per episode");
        assert!(l.blocked(b, t0).is_none());
        // a second later one more attempt is allowed, and no more
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.blocked(a, t1).is_none());
        l.fail(a, t1);
        assert!(l.blocked(a, t1).is_some());
        // after a long quiet the whole burst is back
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(l.blocked(a, t2).is_none());
            l.fail(a, t2);
        }
        assert!(l.blocked(a, t2).is_some());
    }

    #[test]
    fn each_principal_has_its_own_rate() {
        let l = RateLimiter::default();
        let rate = super::super::keys::Rate {
            per_second: 10.0,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("sub:alice", rate, t0).is_ok());
        }
        let wait = l.take("sub:alice", rate, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(l.take("sub:bob", rate, t0).is_ok(), "bob is not alice");
        assert!(l
            .take("sub:alice", rate, t0 + Duration::from_millis(100))
            .is_ok());
        assert!(l
            .take("sub:alice", rate, t0 + Duration::from_millis(100))
            .is_err());
    }

    #[test]
    fn the_table_forgets_refilled_addresses_when_full() {
        let mut l = FailureLimiter::new(2, 1.0);
        l.max_addresses = 10;
        let t0 = Instant::now();
        for i in 0..10u8 {
            l.fail(Some(IpAddr::from([10, 0, 0, i])), t0);
        }
        assert_eq!(l.addresses(), 10);
        l.fail(
            Some(IpAddr::from([10, 0, 1, 0])),
            t0 + Duration::from_secs(5),
        );
        assert_eq!(l.addresses(), 1);
    }
}
