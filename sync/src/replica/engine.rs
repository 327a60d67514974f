//! The decisions about one peer's feed, as a state machine: given what the last step did, what
//! to do next (subscribe, pull a page, catch up by a repair, pause). It does no I/O, reads no
//! clock and draws no random numbers (the jitter comes in with each outcome), so tests drive it
//! step by step; `follow.rs` carries the steps out. The reachability rule is the same kind of
//! pure function, in `status.rs`, and so is the anti-entropy schedule below.

use std::time::Duration;

use uhlc::Timestamp;

use super::FeedMode;

/// What to do next toward the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Open a subscription from the cursor; follow it until it ends.
    Subscribe,
    /// Ask for one page from the cursor, letting the peer wait up to `wait` for news.
    Pull { wait: Duration },
    /// The peer's feed no longer holds the cursor: run one anti-entropy pass with it and, if
    /// it was complete, move the cursor to `upto`.
    CatchUp { upto: Timestamp },
    /// Wait (a request from the peer ends the wait early), then decide again.
    Pause(Duration),
}

/// What the last step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The subscription ended after it delivered (its lifetime, the peer's shutdown).
    Ended,
    /// Pages were merged; `more`: the peer has more at once; `refused`: a change's stamp was
    /// refused by this node's clock (the cursor stays before it).
    Merged { more: bool, refused: bool },
    /// The peer's feed was trimmed past the cursor.
    Trimmed { upto: Timestamp },
    /// The catch-up repair ended, complete or not.
    CaughtUp { complete: bool },
    /// The step failed (the peer unreachable, refusing, or sending garbage); `progressed`: a
    /// subscription delivered pages first.
    Failed { progressed: bool },
}

/// One peer's feed follower.
#[derive(Debug)]
pub(super) struct Follower {
    mode: FeedMode,
    feed_wait: Duration,
    max_backoff: Duration,
    /// Failed steps in a row.
    failures: u32,
    /// The last page showed nothing more to fetch (long polls wait only then).
    caught_up: bool,
    /// Set by a trimmed answer until a complete catch-up.
    trimmed: Option<Timestamp>,
    pause: Option<Duration>,
}

/// Failures a refused stamp counts as: the clock must move on before it is accepted again.
const REFUSED: u32 = 4;

impl Follower {
    pub(super) fn new(mode: FeedMode, feed_wait: Duration, max_backoff: Duration) -> Self {
        Follower {
            mode,
            feed_wait,
            max_backoff,
            failures: 0,
            caught_up: false,
            trimmed: None,
            pause: None,
        }
    }

    /// The next step.
    pub(super) fn next(&mut self) -> Step {
        if let Some(d) = self.pause.take() {
            return Step::Pause(d);
        }
        if let Some(upto) = self.trimmed {
            return Step::CatchUp { upto };
        }
        match self.mode {
            FeedMode::Stream => Step::Subscribe,
            FeedMode::LongPoll => Step::Pull {
                wait: if self.caught_up {
                    self.feed_wait
                } else {
                    Duration::ZERO
                },
            },
        }
    }

    /// Takes in what the last step did. `jitter` (in [0.5, 1.5)) spreads the pauses of nodes
    /// retrying the same peer.
    pub(super) fn on(&mut self, outcome: Outcome, jitter: f64) {
        match outcome {
            Outcome::Ended => self.failures = 0,
            Outcome::Merged { more, refused } => {
                self.failures = 0;
                self.caught_up = !more;
                if refused {
                    self.pause = Some(self.backoff(REFUSED, jitter));
                }
            }
            Outcome::Trimmed { upto } => {
                self.trimmed = Some(self.trimmed.map_or(upto, |t| t.max(upto)));
            }
            Outcome::CaughtUp { complete: true } => {
                self.trimmed = None;
                self.failures = 0;
                self.caught_up = false;
            }
            Outcome::CaughtUp { complete: false } => self.failed(1, jitter),
            Outcome::Failed { progressed: true } => {
                // the link worked a moment ago: retry soon
                self.failures = 0;
                self.failed(1, jitter)
            }
            Outcome::Failed { progressed: false } => self.failed(1, jitter),
        }
    }

    fn failed(&mut self, n: u32, jitter: f64) {
        self.failures += n;
        self.caught_up = false;
        self.pause = Some(self.backoff(self.failures, jitter));
    }

    /// About 50 ms × 2^failures, capped, times the jitter.
    fn backoff(&self, failures: u32, jitter: f64) -> Duration {
        let base = Duration::from_millis(50) * 2u32.pow(failures.min(10));
        base.min(self.max_backoff).mul_f64(jitter)
    }
}

/// What a session wait's catch-up does after a step: the catch-up pulls the peer's feed
/// without waiting, beside the follower, until it has nothing more at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CatchUp {
    /// Pull the next page at once.
    Pull,
    /// The peer's feed was trimmed past the cursor: repair, then pull again if complete.
    Repair { upto: Timestamp },
    /// Caught up, or the link failed, or a stamp was refused: the follower takes it from here
    /// (a refused stamp needs the follower's back-off, not a busy retry).
    Done,
}

/// The catch-up's next step after `outcome` (a pull's, or the repair's after a trim).
pub(super) fn catch_up_after(outcome: Outcome) -> CatchUp {
    match outcome {
        Outcome::Merged {
            more: true,
            refused: false,
        } => CatchUp::Pull,
        Outcome::Trimmed { upto } => CatchUp::Repair { upto },
        Outcome::CaughtUp { complete: true } => CatchUp::Pull,
        _ => CatchUp::Done,
    }
}

/// When the first anti-entropy pass with a peer runs after start-up (soon: restored backups,
/// changes missed while down), for `jitter` in [0, 1).
pub(super) fn first_repair(every: Duration, jitter: f64) -> Duration {
    every.mul_f64(0.05 + 0.25 * jitter)
}

/// The pause between later passes, for `jitter` in [0, 1): the period, ±25%.
pub(super) fn next_repair(every: Duration, jitter: f64) -> Duration {
    every.mul_f64(0.75 + 0.5 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_pulls_while_there_is_more_repairs_a_trim_and_stops_otherwise() {
        let more = |more, refused| Outcome::Merged { more, refused };
        assert_eq!(catch_up_after(more(true, false)), CatchUp::Pull);
        assert_eq!(catch_up_after(more(false, false)), CatchUp::Done);
        // a refused stamp stops it even with more to read: the clock must move on first
        assert_eq!(catch_up_after(more(true, true)), CatchUp::Done);
        assert_eq!(
            catch_up_after(Outcome::Trimmed { upto: stamp(7) }),
            CatchUp::Repair { upto: stamp(7) }
        );
        // after a complete repair it reads on from the new cursor; an incomplete one stops
        assert_eq!(
            catch_up_after(Outcome::CaughtUp { complete: true }),
            CatchUp::Pull
        );
        assert_eq!(
            catch_up_after(Outcome::CaughtUp { complete: false }),
            CatchUp::Done
        );
        assert_eq!(
            catch_up_after(Outcome::Failed { progressed: false }),
            CatchUp::Done
        );
    }

    const MS: Duration = Duration::from_millis(1);

    fn stamp(t: u64) -> Timestamp {
        Timestamp::new(uhlc::NTP64(t), uhlc::ID::try_from(1u8).unwrap())
    }

    fn stream() -> Follower {
        Follower::new(FeedMode::Stream, 10_000 * MS, 500 * MS)
    }

    #[test]
    fn a_stream_is_reopened_at_once_after_it_ends_and_with_growing_pauses_after_failures() {
        let mut f = stream();
        assert_eq!(f.next(), Step::Subscribe);
        f.on(Outcome::Ended, 1.0);
        assert_eq!(f.next(), Step::Subscribe);
        let mut pauses = vec![];
        for _ in 0..5 {
            f.on(Outcome::Failed { progressed: false }, 1.0);
            match f.next() {
                Step::Pause(d) => pauses.push(d),
                other => panic!("{other:?}"),
            }
            assert_eq!(f.next(), Step::Subscribe);
        }
        assert_eq!(pauses, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        // a subscription that delivered before it broke retries soon
        f.on(Outcome::Failed { progressed: true }, 1.0);
        assert_eq!(f.next(), Step::Pause(100 * MS));
        // the jitter scales the pause
        f.on(Outcome::Failed { progressed: false }, 0.5);
        assert_eq!(f.next(), Step::Pause(100 * MS));
    }

    #[test]
    fn a_refused_stamp_waits_for_the_clock_and_a_page_resets_the_failures() {
        let mut f = stream();
        for _ in 0..3 {
            f.on(Outcome::Failed { progressed: false }, 1.0);
            f.next();
        }
        f.on(
            Outcome::Merged {
                more: false,
                refused: true,
            },
            1.0,
        );
        assert_eq!(f.next(), Step::Pause(500 * MS));
        f.on(Outcome::Failed { progressed: false }, 1.0);
        assert_eq!(
            f.next(),
            Step::Pause(100 * MS),
            "failures were reset by the page"
        );
    }

    #[test]
    fn long_polls_wait_only_once_caught_up() {
        let mut f = Follower::new(FeedMode::LongPoll, 10_000 * MS, 500 * MS);
        assert_eq!(
            f.next(),
            Step::Pull {
                wait: Duration::ZERO
            }
        );
        let page = |more| Outcome::Merged {
            more,
            refused: false,
        };
        f.on(page(true), 1.0);
        assert_eq!(
            f.next(),
            Step::Pull {
                wait: Duration::ZERO
            }
        );
        f.on(page(false), 1.0);
        assert_eq!(f.next(), Step::Pull { wait: 10_000 * MS });
        f.on(Outcome::Failed { progressed: false }, 1.0);
        assert_eq!(f.next(), Step::Pause(100 * MS));
        assert_eq!(
            f.next(),
            Step::Pull {
                wait: Duration::ZERO
            }
        );
    }

    #[test]
    fn a_trimmed_feed_is_caught_up_by_a_complete_repair_before_following_again() {
        let mut f = stream();
        f.on(Outcome::Trimmed { upto: stamp(5) }, 1.0);
        assert_eq!(f.next(), Step::CatchUp { upto: stamp(5) });
        // an incomplete repair, or a failed one, is retried after a pause: the feed is not
        // followed from a cursor the node cannot vouch for
        f.on(Outcome::CaughtUp { complete: false }, 1.0);
        assert_eq!(f.next(), Step::Pause(100 * MS));
        assert_eq!(f.next(), Step::CatchUp { upto: stamp(5) });
        f.on(Outcome::Failed { progressed: false }, 1.0);
        assert_eq!(f.next(), Step::Pause(200 * MS));
        assert_eq!(f.next(), Step::CatchUp { upto: stamp(5) });
        // a later trimmed answer (from a catch-up pull meanwhile) keeps the later bound
        f.on(Outcome::Trimmed { upto: stamp(3) }, 1.0);
        assert_eq!(f.next(), Step::CatchUp { upto: stamp(5) });
        f.on(Outcome::CaughtUp { complete: true }, 1.0);
        assert_eq!(f.next(), Step::Subscribe);
    }

    #[test]
    fn passes_are_spread_around_the_period() {
        let every = 30_000 * MS;
        assert_eq!(first_repair(every, 0.0), 1_500 * MS);
        assert!(first_repair(every, 0.999) < 9_000 * MS);
        assert_eq!(next_repair(every, 0.0), 22_500 * MS);
        assert!(next_repair(every, 0.999) < 37_500 * MS);
    }
}
