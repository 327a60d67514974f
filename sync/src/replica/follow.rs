//! Following peers: the request path, each peer's feed (a subscription, or long polls), and
//! merging what arrives after checking it.

use super::engine::{Follower, Outcome, Step};
use super::page::{self, Effect, PageFacts};
use super::repair::Repaired;
use super::*;

impl<T: Transport> Replica<T> {
    pub(super) async fn call(
        &self,
        peer: &PeerState,
        req: &Request,
        extra_wait: Duration,
    ) -> Result<Response, crate::Error> {
        let body = wire::encode(req);
        let sent = body.len() as u64;
        let result = self
            .shared
            .transport
            .call(
                &peer.peer,
                body,
                self.shared.config.call_timeout + extra_wait,
            )
            .await
            .and_then(|bytes| {
                peer.status.lock().bytes_received += bytes.len() as u64;
                wire::decode::<Response>(&bytes)
            })
            .and_then(|r| match r {
                Response::Error { message } => Err(crate::Error::Refused(format!(
                    "the peer refused: {message}"
                ))),
                r => Ok(r),
            });
        let mut st = peer.status.lock();
        st.bytes_sent += sent;
        match &result {
            Ok(_) => st.succeeded(Instant::now()),
            Err(e) => st.failed(e),
        }
        result
    }

    /// Follows the peer's feed for as long as the node runs, doing what the peer's
    /// [`Follower`] decides: subscriptions (or long polls), catch-ups after a trimmed feed,
    /// pauses after failures.
    pub(super) async fn feed_loop(self, peer: Arc<PeerState>) {
        let cfg = &self.shared.config;
        let mut engine = Follower::new(cfg.feed_mode, cfg.feed_wait, cfg.max_backoff);
        while !self.stopped() {
            let outcome = match engine.next() {
                Step::Pause(d) => {
                    if self.pause(d, Some(&peer.wake)).await {
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
    }

    /// One subscription, until it ends: [`Outcome::Ended`], a refused stamp (after merging
    /// what came before it), or [`Outcome::Trimmed`]. The error says whether any page arrived
    /// first.
    pub(super) async fn follow(&self, peer: &PeerState) -> Result<Outcome, (crate::Error, bool)> {
        let cfg = &self.shared.config;
        let req = Request::Subscribe {
            from: self.shared.me.clone(),
            after: *peer.cursor.lock(),
            limit: cfg.feed_batch,
            heartbeat_ms: cfg.heartbeat.as_millis() as u32,
        };
        let body = wire::encode(&req);
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
            let chunk = match tokio::time::timeout(silence, chunks.recv()).await {
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
            let mut upto = None;
            let mut pages = 0;
            let mut trimmed = None;
            while let Some(f) = frames.next_frame().map_err(|e| fail(e, progressed))? {
                let page = wire::decode::<Response>(&f).map_err(|e| fail(e, progressed))?;
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
                    .apply_feed(peer, batch, upto)
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
        match self.call(peer, &req, wait).await? {
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
                let refused = self.apply_feed(peer, changes, upto).await?;
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
        upto: Option<Timestamp>,
    ) -> Result<bool, crate::Error> {
        let _one_at_a_time = peer.apply.lock().await;
        let checked = self.check(changes, true)?;
        let facts = PageFacts {
            changes: checked.changes,
            docs: checked.docs.len(),
            last_accepted: checked.last_stamp,
            refused: checked.refused,
            upto,
        };
        let cursor = *peer.cursor.lock();
        let mut checked = Some(checked);
        let mut missing = Vec::new();
        for effect in page::on_page(cursor, &facts) {
            match effect {
                Effect::Merge { persist_cursor } => {
                    let Some(c) = checked.as_mut() else { continue };
                    let mut meta = c.seen_meta(self);
                    if let Some(t) = persist_cursor {
                        meta.push((cursor_name(peer.peer.id.as_str()), stamp_meta(&t)));
                    }
                    let docs = std::mem::take(&mut c.docs);
                    missing = self
                        .shared
                        .store
                        .merge_remote(docs, meta)
                        .await?
                        .missing_deps;
                }
                Effect::RaiseSeen => {
                    if let Some(c) = checked.take() {
                        self.raise_seen(c.seen);
                    }
                }
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
        Ok(facts.refused)
    }

    /// Decodes and checks received changes: each must parse, and its stamp must be within the
    /// clock's maximum drift (which also moves the clock past it). `feed`: stop at the first
    /// refusal; otherwise skip the rest of that document only.
    pub(super) fn check(
        &self,
        changes: Vec<DocChanges>,
        feed: bool,
    ) -> Result<Checked, crate::Error> {
        let clock = self.shared.store.clock();
        let mut out = Checked::default();
        'docs: for dc in changes {
            let key = DocKey::new(&dc.collection, &dc.id)
                .map_err(|e| crate::Error::Protocol(e.to_string()))?;
            let mut accepted = Vec::with_capacity(dc.changes.len());
            for c in dc.changes {
                let change =
                    RemoteChange::parse(c).map_err(|e| crate::Error::Protocol(e.to_string()))?;
                if let Some(stamp) = change.stamp {
                    if let Err(e) = clock.observe(&stamp) {
                        self.shared.drift_refusals.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            key = %key, stamp = %meridian_crdt::display_stamp(&stamp), error = %e,
                            "refused a change stamped too far in the future; is that node's clock right?"
                        );
                        out.refused = true;
                        if !accepted.is_empty() {
                            out.docs.push((key.clone(), std::mem::take(&mut accepted)));
                        }
                        if feed {
                            break 'docs;
                        }
                        continue 'docs;
                    }
                    if let Some(node) = &change.node {
                        let s = out.seen.entry(node.clone()).or_insert(stamp);
                        *s = (*s).max(stamp);
                    }
                    out.last_stamp = Some(stamp);
                }
                accepted.push(change);
                out.changes += 1;
            }
            if !accepted.is_empty() {
                out.docs.push((key, accepted));
            }
        }
        Ok(out)
    }

    /// Merges checked changes durably with `meta`, then raises the seen stamps in memory.
    pub(super) async fn merge(
        &self,
        checked: Checked,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<meridian_crdt::Merged, crate::Error> {
        let merged = self.shared.store.merge_remote(checked.docs, meta).await?;
        self.raise_seen(checked.seen);
        Ok(merged)
    }

    /// Raises the seen stamps in memory, once the changes that carry them are durable.
    fn raise_seen(&self, seen: HashMap<String, Timestamp>) {
        let mut all = self.shared.seen.lock();
        for (node, ts) in seen {
            let s = all.entry(node).or_insert(ts);
            *s = (*s).max(ts);
        }
        self.shared.seen_epoch.fetch_add(1, Ordering::Release);
    }

    /// Merges changes from a repair answer (any author), with their bookkeeping.
    pub(super) async fn merge_checked(
        &self,
        peer: &PeerState,
        changes: Vec<DocChanges>,
    ) -> Result<Repaired, crate::Error> {
        let checked = self.check(changes, false)?;
        let refused = checked.refused;
        let meta = checked.seen_meta(self);
        let merged = self.merge(checked, meta).await?;
        peer.status.lock().changes_repaired += merged.changes as u64;
        Ok(Repaired {
            changes: merged.changes,
            complete: !refused && merged.missing_deps.is_empty(),
        })
    }
}

#[derive(Default)]
pub(super) struct Checked {
    docs: Vec<(DocKey, Vec<RemoteChange>)>,
    changes: usize,
    seen: HashMap<String, Timestamp>,
    last_stamp: Option<Timestamp>,
    refused: bool,
}

impl Checked {
    /// Bookkeeping for the seen stamps this batch raises.
    pub(super) fn seen_meta<T>(&self, r: &Replica<T>) -> Vec<(String, Vec<u8>)> {
        let all = r.shared.seen.lock();
        self.seen
            .iter()
            .filter(|(n, ts)| all.get(*n).is_none_or(|s| *ts > s))
            .map(|(n, ts)| (seen_name(n), stamp_meta(ts)))
            .collect()
    }
}
