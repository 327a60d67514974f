//! What an answer from a peer's feed means, as effects: given the cursor and what the checked
//! page holds, which bookkeeping to do and in what order. No I/O and no clock; `follow.rs`
//! checks the page (decoding, the drift check), carries the effects out and reports the
//! outcome to the [`super::engine::Follower`], which decides the next step.
//!
//! The rules:
//! - The cursor never moves past a change this node has not merged: with a refused stamp it
//!   moves to the last change accepted before it, not to the page's bound.
//! - The cursor only moves forward (a duplicate or older page merges, harmlessly, and leaves
//!   it).
//! - It is persisted in the same durable merge as the changes it covers; a page without
//!   changes moves it in memory only (after a restart, the older cursor only re-reads
//!   nothing).
//! - Seen stamps are raised in memory only once the merge is durable (a session wait must not
//!   be answered with state a crash could lose).
//! - A change whose dependencies this node lacks reached the peer by another path: the
//!   documents it is in are repaired from the peer.
//! - A trimmed answer is caught up by one anti-entropy pass: that is a step of the follower
//!   (`Step::CatchUp`), not an effect of a page.

use meridian_crdt::DocKey;
use uhlc::Timestamp;

/// What a checked feed page holds, as far as the decision needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct PageFacts {
    /// Changes accepted (in `docs` documents); changes after a refused stamp are not.
    pub(super) changes: usize,
    pub(super) docs: usize,
    /// The stamp of the last change accepted.
    pub(super) last_accepted: Option<Timestamp>,
    /// A change's stamp was refused by this node's clock; the page was cut before it.
    pub(super) refused: bool,
    /// The page's bound: every change of the peer's up to it is in this page or before.
    pub(super) upto: Option<Timestamp>,
}

/// One thing to do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Effect {
    /// Merge the accepted changes durably, with the seen stamps they raise and, if given, the
    /// new cursor in the same write.
    Merge { persist_cursor: Option<Timestamp> },
    /// Raise the seen stamps in memory (the merge is durable).
    RaiseSeen,
    /// Count the changes received from the peer.
    Count { changes: usize },
    /// Move the cursor in memory (and wake whoever waits on cursors).
    MoveCursor(Timestamp),
    /// Repair these documents from the peer.
    Repair(Vec<DocKey>),
}

/// The effects of a feed page, with the cursor at `cursor`.
pub(super) fn on_page(cursor: Option<Timestamp>, page: &PageFacts) -> Vec<Effect> {
    let to = if page.refused {
        page.last_accepted
    } else {
        page.upto.or(page.last_accepted)
    };
    let to = to.filter(|t| cursor.is_none_or(|c| *t > c));
    let mut out = Vec::new();
    if page.docs > 0 {
        out.push(Effect::Merge { persist_cursor: to });
        out.push(Effect::RaiseSeen);
        out.push(Effect::Count {
            changes: page.changes,
        });
    }
    if let Some(t) = to {
        out.push(Effect::MoveCursor(t));
    }
    out
}

/// The effects once the page's merge is done: `missing_deps`, the documents whose changes wait
/// for dependencies.
pub(super) fn after_merge(missing_deps: Vec<DocKey>) -> Vec<Effect> {
    if missing_deps.is_empty() {
        vec![]
    } else {
        vec![Effect::Repair(missing_deps)]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::engine::{Follower, Outcome, Step};
    use super::super::FeedMode;
    use super::*;
    use crate::wire;

    fn at(n: u64) -> Timestamp {
        Timestamp::new(uhlc::NTP64(n << 32), uhlc::ID::try_from(9u8).unwrap())
    }

    fn page(changes: usize, last: u64, upto: u64) -> PageFacts {
        PageFacts {
            changes,
            docs: 1,
            last_accepted: Some(at(last)),
            refused: false,
            upto: Some(at(upto)),
        }
    }

    #[test]
    fn a_page_moves_the_cursor_to_its_bound_in_the_merge_that_holds_its_changes() {
        assert_eq!(
            on_page(Some(at(1)), &(page(3, 4, 6))),
            vec![
                Effect::Merge {
                    persist_cursor: Some(at(6))
                },
                Effect::RaiseSeen,
                Effect::Count { changes: 3 },
                Effect::MoveCursor(at(6)),
            ]
        );
        // an empty page (a heartbeat with a bound) moves it in memory only
        let empty = PageFacts {
            upto: Some(at(7)),
            ..PageFacts::default()
        };
        assert_eq!(
            on_page(Some(at(6)), &(empty)),
            vec![Effect::MoveCursor(at(7))]
        );
    }

    #[test]
    fn a_page_with_a_refused_stamp_moves_the_cursor_only_to_the_last_change_accepted() {
        let cut = PageFacts {
            refused: true,
            ..page(2, 4, 9)
        };
        assert_eq!(
            on_page(Some(at(1)), &(cut)),
            vec![
                Effect::Merge {
                    persist_cursor: Some(at(4))
                },
                Effect::RaiseSeen,
                Effect::Count { changes: 2 },
                Effect::MoveCursor(at(4)),
            ]
        );
        // refused at its first change: nothing to merge, and the cursor stays
        let first = PageFacts {
            refused: true,
            upto: Some(at(9)),
            ..PageFacts::default()
        };
        assert_eq!(on_page(Some(at(1)), &(first)), vec![]);
        // and the follower backs off before asking again
        let mut f = Follower::new(FeedMode::Stream, Duration::ZERO, Duration::from_secs(1));
        f.on(
            Outcome::Merged {
                more: true,
                refused: true,
            },
            0.5,
        );
        assert!(matches!(f.next(), Step::Pause(d) if d > Duration::ZERO));
    }

    #[test]
    fn a_page_whose_change_lacks_a_dependency_repairs_that_document() {
        let effects = on_page(Some(at(1)), &(page(1, 2, 2)));
        assert_eq!(
            effects[0],
            Effect::Merge {
                persist_cursor: Some(at(2))
            }
        );
        let k = DocKey::new("users", "alice").unwrap();
        assert_eq!(after_merge(vec![k.clone()]), vec![Effect::Repair(vec![k])]);
        assert_eq!(after_merge(vec![]), vec![]);
    }

    #[test]
    fn a_duplicate_page_merges_and_leaves_the_cursor() {
        assert_eq!(
            on_page(Some(at(6)), &(page(2, 5, 6))),
            vec![
                Effect::Merge {
                    persist_cursor: None
                },
                Effect::RaiseSeen,
                Effect::Count { changes: 2 },
            ]
        );
        // an older one too
        assert_eq!(
            on_page(Some(at(6)), &(page(1, 2, 3)))[0],
            Effect::Merge {
                persist_cursor: None
            }
        );
    }

    #[test]
    fn a_trimmed_cursor_is_caught_up_by_anti_entropy() {
        let mut f = Follower::new(FeedMode::Stream, Duration::ZERO, Duration::from_secs(1));
        f.on(Outcome::Trimmed { upto: at(8) }, 0.5);
        assert_eq!(f.next(), Step::CatchUp { upto: at(8) });
        // until a catch-up is complete, the follower asks for nothing else
        f.on(Outcome::CaughtUp { complete: false }, 1.0);
        assert!(matches!(f.next(), Step::Pause(_)));
        assert_eq!(f.next(), Step::CatchUp { upto: at(8) });
        f.on(Outcome::CaughtUp { complete: true }, 1.0);
        assert_eq!(f.next(), Step::Subscribe);
    }

    #[test]
    fn a_stream_cut_mid_page_applies_no_part_of_that_page_and_resubscribes_from_the_cursor() {
        let frame = wire::frame(&crate::wire::Response::Trimmed { upto: at(3) });
        let mut r = wire::FrameReader::default();
        r.push(&frame[..frame.len() - 1]);
        // the cut: the partial frame never becomes an answer, so no effect runs
        assert!(r.next_frame().unwrap().is_none());
        // a subscription that delivered pages before the cut opens again after the shortest
        // pause, from the cursor the delivered pages left
        let mut f = Follower::new(FeedMode::Stream, Duration::ZERO, Duration::from_secs(1));
        f.on(Outcome::Failed { progressed: true }, 1.0);
        assert_eq!(f.next(), Step::Pause(Duration::from_millis(100)));
        assert_eq!(f.next(), Step::Subscribe);
    }
}
