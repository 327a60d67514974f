//! Following each peer's feed (a subscription, or long polls) from its cursor, doing what the
//! peer's follower decides and what each page means (`engine`, `page`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use uhlc::Timestamp;

use super::engine::{Follower, Outcome, Step};
use super::merge::Checked;
use super::page::{self, Effect, PageFacts};
use super::{cursor_name, stamp_meta, PeerState, Replica, Transport};
use crate::wire::{self, DocChanges, Extras, Request, Response};

/// The trace ids of an answer's `n` entries: as sent, or none (version 2, or a sender that
/// knew none); a list of another length is ignored.
fn aligned(traces: Vec<Option<[u8; 16]>>, n: usize) -> Vec<Option<[u8; 16]>> {
    if traces.len() == n {
        traces
    } else {
        vec![None; n]
    }
}

/// How long a departing peer's feed is still pulled (see `farewell`).
const FAREWELL: Duration = Duration::from_secs(3);

impl<T: Transport> Replica<T> {
    /// Follows the peer's feed for as long as the node runs, doing what the peer's
    /// [`Follower`] decides: subscriptions (or long polls), catch-ups after a trimmed feed,
    /// pauses after failures.
    pub(super) async fn feed_loop(self, peer: Arc<PeerState>) {
        let cfg = &self.shared.config;
        let mut engine = Follower::new(cfg.feed_mode, cfg.feed_wait, cfg.max_backoff);
        while !self.stopped() && !peer.has_left() {
            let outcome = match engine.next() {
                Step::Pause(d) => {
                    if self.pause(d, Some(&peer)).await {
                        return;
                    }
                    continue;
                }
                Step::Subscribe => match self.follow(&peer).await {
                    Ok(o) => o,
                    Err((e, progressed)) => {
                        tracing::debug!(peer = %peer.peer.id, error = %e, "feed subscription failed");
                        peer.status.lock().failed(&e);
                        Outcome::Failed { progressed }
                    }
                },
                Step::Pull { wait } => self.pull_once(&peer, wait).await.unwrap_or_else(|e| {
                    tracing::debug!(peer = %peer.peer.id, error = %e, "feed pull failed");
                    Outcome::Failed { progressed: false }
                }),
                Step::CatchUp { upto } => match self.resume_after_trim(&peer, upto).await {
                    Ok(complete) => Outcome::CaughtUp { complete },
                    Err(e) => {
                        tracing::debug!(peer = %peer.peer.id, error = %e, "catching up by repair failed");
                        Outcome::Failed { progressed: false }
                    }
                },
            };
            engine.on(outcome, rand::thread_rng().gen_range(0.5..1.5));
        }
        if peer.has_left() && !self.stopped() {
            self.farewell(&peer).await;
        }
    }

    /// A peer just left the set: pull what its feed still holds for this node (briefly, if it
    /// still answers), so that what it acknowledged before it learned of its removal is not
    /// left behind; then note the cursor a session token naming it is covered to.
    async fn farewell(&self, peer: &PeerState) {
        let deadline = Instant::now() + FAREWELL;
        while Instant::now() < deadline {
            match self.pull_once(peer, Duration::ZERO).await {
                Ok(Outcome::Merged { more: true, .. }) => continue,
                _ => break,
            }
        }
        if let Some(c) = *peer.cursor.lock() {
            self.shared
                .membership
                .lock()
                .cursors
                .insert(peer.peer.id.to_string(), c);
        }
        tracing::info!(peer = %peer.peer.id, cursor = ?peer.cursor.lock().map(|c| meridian_crdt::display_stamp(&c)), "stopped following a departed region");
    }

    /// One subscription, until it ends: [`Outcome::Ended`], a refused stamp (after merging
    /// what came before it), or [`Outcome::Trimmed`]. The error says whether any page arrived
    /// first.
    pub(super) async fn follow(&self, peer: &PeerState) -> Result<Outcome, (crate::Error, bool)> {
        let cfg = &self.shared.config;
        // a stream's refusal is not a frame: the version is settled by one page first
        if peer.status.lock().protocol.is_none() {
            match self.pull_once(peer, Duration::ZERO).await {
                Ok(Outcome::Merged { refused: false, .. }) => {}
                Ok(other) => return Ok(other),
                Err(e) => return Err((e, false)),
            }
        }
        let req = Request::Subscribe {
            from: self.shared.me.clone(),
            after: *peer.cursor.lock(),
            limit: cfg.feed_batch,
            heartbeat_ms: cfg.heartbeat.as_millis() as u32,
        };
        let body = wire::encode_at(self.asking(peer), &req, &Extras::default());
        let sent = body.len() as u64;
        let opened = self
            .shared
            .transport
            .open(&peer.peer, body, cfg.call_timeout)
            .await;
        peer.status.lock().bytes_sent += sent;
        let mut chunks = opened.map_err(|e| {
            peer.status.lock().last_error = Some(e.to_string());
            (e, false)
        })?;
        let mut frames = wire::FrameReader::default();
        let mut progressed = false;
        let fail = |e: crate::Error, progressed: bool| {
            peer.status.lock().last_error = Some(e.to_string());
            (e, progressed)
        };
        // a live stream sends at least a heartbeat per `heartbeat`; a dropped connection that
        // never errors (packets lost in a partition) is given up on after twelve
        let silence = cfg.heartbeat * 12;
        loop {
            let next = tokio::select! {
                c = tokio::time::timeout(silence, chunks.recv()) => c,
                // the peer left the set: what arrived so far is merged, the rest not awaited
                _ = peer.leaving() => return Ok(Outcome::Ended),
            };
            let chunk = match next {
                Err(_) => {
                    return Err(fail(
                        crate::Error::Unreachable("the subscription went silent".into()),
                        progressed,
                    ))
                }
                // the answering node ended it (its lifetime); one that ends before its first
                // frame (a node shutting down) is a failure, retried with backoff, not at once
                Ok(None) if progressed => return Ok(Outcome::Ended),
                Ok(None) => {
                    return Err(fail(
                        crate::Error::Unreachable("the subscription ended at once".into()),
                        false,
                    ))
                }
                Ok(Some(Err(e))) => return Err(fail(e, progressed)),
                Ok(Some(Ok(c))) => c,
            };
            let mut received = chunk.len();
            frames.push(&chunk);
            // Take everything that has arrived and merge it as one batch: one disk sync for
            // all of it, so a follower that falls behind catches up in bigger steps.
            while let Ok(more) = chunks.try_recv() {
                match more {
                    Ok(c) => {
                        received += c.len();
                        frames.push(&c);
                    }
                    Err(e) => return Err(fail(e, progressed)),
                }
            }
            peer.status.lock().bytes_received += received as u64;
            let mut batch: Vec<DocChanges> = Vec::new();
            let mut traces: Vec<Option<[u8; 16]>> = Vec::new();
            let mut upto = None;
            let mut pages = 0;
            let mut trimmed = None;
            while let Some(f) = frames.next_frame().map_err(|e| fail(e, progressed))? {
                let d = wire::decode_at::<Response>(&f, cfg.versions)
                    .map_err(|e| fail(e, progressed))?;
                let page = d.message;
                if let Response::Trimmed { upto } = page {
                    trimmed = Some(upto);
                    break;
                }
                let Response::Feed {
                    changes,
                    upto: page_upto,
                    latest,
                    behind,
                    ..
                } = page
                else {
                    return Err(fail(
                        crate::Error::Protocol(format!("unexpected frame: {page:?}")),
                        progressed,
                    ));
                };
                let mut st = peer.status.lock();
                st.their_latest = latest;
                st.their_backlog = behind;
                st.feed_pages += 1;
                st.feed_batches += !changes.is_empty() as u64;
                traces.extend(aligned(d.extras.traces, changes.len()));
                batch.extend(changes);
                upto = page_upto.or(upto);
                pages += 1;
            }
            if pages == 0 && trimmed.is_none() {
                continue;
            }
            peer.status.lock().succeeded(Instant::now());
            if pages > 0
                && self
                    .apply_feed(peer, batch, traces, upto)
                    .await
                    .map_err(|e| fail(e, progressed))?
            {
                return Ok(Outcome::Merged {
                    more: false,
                    refused: true,
                });
            }
            progressed = true;
            if let Some(upto) = trimmed {
                // the answering node ends the stream after this frame
                return Ok(Outcome::Trimmed { upto });
            }
        }
    }

    /// The peer no longer keeps the feed entries after our cursor (see [`Store::trim_feed`]):
    /// take everything we lack from it by one anti-entropy pass and, if that was complete, go
    /// on from `upto`, which every change it had made when it answered is at or before.
    /// Returns whether the pass was complete (the cursor moved).
    pub(super) async fn resume_after_trim(
        &self,
        peer: &PeerState,
        upto: Timestamp,
    ) -> Result<bool, crate::Error> {
        tracing::info!(
            peer = %peer.peer.id,
            "the peer's feed no longer holds our cursor: catching up by anti-entropy"
        );
        let pass = self.anti_entropy(peer).await?;
        if !pass.complete {
            tracing::warn!(peer = %peer.peer.id, ?pass, "the repair after a trimmed feed was incomplete");
            return Ok(false);
        }
        let _one_at_a_time = peer.apply.lock().await;
        if peer.cursor.lock().is_some_and(|c| c >= upto) {
            return Ok(true);
        }
        let meta = vec![(cursor_name(peer.peer.id.as_str()), stamp_meta(&upto))];
        self.merge(Checked::default(), meta).await?;
        *peer.cursor.lock() = Some(upto);
        peer.status.lock().trim_repairs += 1;
        self.shared.cursor_moved.send_modify(|n| *n += 1);
        Ok(true)
    }

    /// One feed page from the cursor: [`Outcome::Merged`] or [`Outcome::Trimmed`].
    pub(super) async fn pull_once(
        &self,
        peer: &PeerState,
        wait: Duration,
    ) -> Result<Outcome, crate::Error> {
        let req = Request::Feed {
            from: self.shared.me.clone(),
            after: *peer.cursor.lock(),
            wait_ms: wait.as_millis() as u32,
            limit: self.shared.config.feed_batch,
        };
        let (answer, extras) = self.call_with_extras(peer, &req, wait).await?;
        match answer {
            Response::Feed {
                changes,
                upto,
                more,
                latest,
                behind,
            } => {
                {
                    let mut st = peer.status.lock();
                    st.their_latest = latest;
                    st.their_backlog = behind;
                    st.feed_pages += 1;
                    st.feed_batches += !changes.is_empty() as u64;
                }
                let traces = aligned(extras.traces, changes.len());
                let refused = self.apply_feed(peer, changes, traces, upto).await?;
                Ok(Outcome::Merged { more, refused })
            }
            Response::Trimmed { upto } => Ok(Outcome::Trimmed { upto }),
            other => Err(crate::Error::Protocol(format!(
                "unexpected answer to a feed request: {other:?}"
            ))),
        }
    }

    /// Merges one page of a peer's feed and advances the cursor with it. Stops at the first
    /// change whose stamp this node's clock refuses (the cursor stays before it). Returns true
    /// if it stopped so.
    pub(super) async fn apply_feed(
        &self,
        peer: &PeerState,
        changes: Vec<DocChanges>,
        traces: Vec<Option<[u8; 16]>>,
        upto: Option<Timestamp>,
    ) -> Result<bool, crate::Error> {
        let _one_at_a_time = peer.apply.lock().await;
        // what the apply lines name, kept only when they are logged (a page's every change
        // would otherwise copy its key on the replication path for nothing)
        let traced: Vec<_> = if tracing::enabled!(target: "meridian::apply", tracing::Level::DEBUG)
        {
            changes
                .iter()
                .zip(&traces)
                .filter_map(|(c, t)| {
                    Some((c.collection.clone(), c.id.clone(), c.changes.len(), (*t)?))
                })
                .collect()
        } else {
            vec![]
        };
        let checked = self.check(changes, true)?;
        let facts = PageFacts {
            changes: checked.changes,
            docs: checked.docs.len(),
            last_accepted: checked.last_stamp,
            refused: checked.refused,
            upto,
        };
        let cursor = *peer.cursor.lock();
        let mut seen_meta = checked.seen_meta(self);
        let (mut docs, mut seen) = (Some(checked.docs), Some(checked.seen));
        let mut missing = Vec::new();
        for effect in page::on_page(cursor, &facts) {
            match effect {
                Effect::Merge { persist_cursor } => {
                    let mut meta = std::mem::take(&mut seen_meta);
                    if let Some(t) = persist_cursor {
                        meta.push((cursor_name(peer.peer.id.as_str()), stamp_meta(&t)));
                    }
                    let docs = docs.take().unwrap_or_default();
                    let merged = self.shared.store.merge_remote(docs, meta).await?;
                    missing = merged.missing_deps;
                }
                Effect::RaiseSeen => self.raise_seen(seen.take().unwrap_or_default()),
                Effect::Count { changes } => {
                    peer.status.lock().changes_received += changes as u64;
                }
                Effect::MoveCursor(t) => {
                    *peer.cursor.lock() = Some(t);
                    self.shared.cursor_moved.send_modify(|n| *n += 1);
                }
                Effect::Repair(_) => unreachable!("a repair follows the merge"),
            }
        }
        for effect in page::after_merge(missing) {
            if let Effect::Repair(docs) = effect {
                self.repair_docs(peer, docs).await?;
            }
        }
        // under the trace of the request that made them (at debug level: one line per change)
        for (collection, id, n, trace) in traced {
            tracing::debug!(
                target: "meridian::apply",
                trace_id = %crate::wire::hex(&trace),
                peer = %peer.peer.id,
                collection,
                id,
                changes = n,
                "applied changes from a peer"
            );
        }
        Ok(facts.refused)
    }
}
