//! Answering peers: one request at a time (`/internal/rpc`: feed pages, digests, repairs)
//! and feed subscriptions (`/internal/subscribe`).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use meridian_crdt::{ChangeHash, DocKey, DIGEST_BUCKETS, DIGEST_LEAVES};
use tokio::sync::mpsc;

use super::{Replica, Transport, BACKLOG_CAP, MAX_FEED_WAIT, REPAIR_BYTES, STREAM_LIFETIME};
use crate::wire::{self, DocChanges, Extras, Request, Response, Undecodable};

impl<T: Transport> Replica<T> {
    /// Answers one request from a peer (the body of `POST /internal/rpc`), in the request's
    /// protocol version; a version this node does not speak is refused in its oldest, naming
    /// the ones it speaks (see `wire`).
    pub async fn handle(&self, body: &[u8]) -> Vec<u8> {
        let speaks = self.shared.config.versions;
        let (from, version, resp, extras) = match wire::decode_checked::<Request>(body, speaks) {
            Ok(d) => {
                let from = d.message.from().to_owned();
                if let Some(p) = self.peer(&from) {
                    if !self.reachable(&p) {
                        // a partition healed: retry our side now, not after the backoff
                        p.wake.notify_one();
                    }
                    p.status.lock().their_protocol = Some(d.version);
                }
                let (resp, extras) = self.serve(d.message).await.unwrap_or_else(|message| {
                    tracing::warn!(peer = %from, %message, "refused a peer's request");
                    (
                        Response::Error {
                            message: message.to_string(),
                        },
                        Extras::default(),
                    )
                });
                (Some(from), d.version, resp, extras)
            }
            Err(e) => {
                let message = match e {
                    Undecodable::Version { refusal, .. } => refusal,
                    Undecodable::Malformed(e) => e.to_string(),
                };
                let version = match body.first() {
                    Some(v) if speaks.speaks(*v) => *v,
                    _ => speaks.oldest,
                };
                (
                    None,
                    version,
                    Response::Error { message },
                    Extras::default(),
                )
            }
        };
        let out = wire::encode_at(version, &resp, &extras);
        if let Some(p) = from.as_deref().and_then(|f| self.peer(f)) {
            let mut st = p.status.lock();
            st.bytes_received += body.len() as u64;
            st.bytes_sent += out.len() as u64;
            st.heard(Instant::now());
        }
        out
    }

    /// The answer to one request, and what rides with it from version 3 (see `wire::Extras`).
    pub(super) async fn serve(&self, req: Request) -> Result<(Response, Extras), crate::Error> {
        let plain = |r: Response| (r, Extras::default());
        let store = &self.shared.store;
        match req {
            Request::Feed {
                from,
                after,
                wait_ms,
                limit,
            } => {
                if let Some(p) = self.peer(&from) {
                    let mut st = p.status.lock();
                    st.their_cursor = Some(after);
                    st.acked = Some(after);
                }
                let deadline =
                    Instant::now() + Duration::from_millis(wait_ms as u64).min(MAX_FEED_WAIT);
                let limit = limit.clamp(1, 10_000) as usize;
                let mut news = store.subscribe();
                let mut stop = self.shared.workers.stop_signal();
                let page = loop {
                    let page = store.feed(after.as_ref(), limit)?;
                    if !page.entries.is_empty() || Instant::now() >= deadline || self.stopped() {
                        break page;
                    }
                    tokio::select! {
                        _ = news.changed() => {}
                        _ = tokio::time::sleep_until(deadline.into()) => {}
                        _ = stop.wait() => {}
                    }
                };
                self.feed_answer(page, &from)
            }
            Request::Subscribe { .. } => Err(crate::Error::Protocol(
                "a subscription is a stream: POST /internal/subscribe".into(),
            )),
            Request::Digest { from, cursor } => {
                if let Some(p) = self.peer(&from) {
                    p.status.lock().acked = Some(cursor);
                }
                Ok(plain(Response::Digest {
                    buckets: store.digests_with(&from),
                }))
            }
            Request::Leaves { from, buckets } => {
                if buckets.len() > DIGEST_BUCKETS {
                    return Err(crate::Error::Protocol("too many buckets".into()));
                }
                let digests = store.leaf_digests_with(&buckets, &from).ok_or_else(|| {
                    crate::Error::Protocol(format!("buckets are numbered below {DIGEST_BUCKETS}"))
                })?;
                Ok(plain(Response::Leaves { digests }))
            }
            Request::Repair { from, leaves, docs } => {
                if leaves.iter().any(|l| *l as usize >= DIGEST_LEAVES) {
                    return Err(crate::Error::Protocol(format!(
                        "leaves are numbered below {DIGEST_LEAVES}"
                    )));
                }
                // only what both should hold (placement): the asker's view of it may be older
                let placement = store.placement();
                let me = self.shared.me.as_str();
                let mut theirs: HashMap<DocKey, Vec<ChangeHash>> = HashMap::new();
                for d in docs {
                    let key = DocKey::new(&d.collection, &d.id)?;
                    if !placement.shares(key.collection(), me, &from) {
                        continue;
                    }
                    theirs.insert(key, d.heads.into_iter().map(ChangeHash).collect());
                }
                let leaves: BTreeSet<u32> = leaves.into_iter().collect();
                let mut mine: HashMap<DocKey, Vec<ChangeHash>> =
                    store.leaf_heads_with(&leaves, &from)?.into_iter().collect();
                for key in theirs.keys() {
                    if !mine.contains_key(key) {
                        // a document damaged here is being healed: nothing to offer of it
                        if let Some(s) = skip_damaged(store.read_state(key))?.flatten() {
                            mine.insert(key.clone(), s.heads);
                        }
                    }
                }
                let (started, budget) = (Instant::now(), self.shared.config.call_timeout / 4);
                let mut keys: Vec<DocKey> = mine.keys().cloned().collect();
                keys.sort();
                let (mut changes, mut bytes, mut more) = (Vec::new(), 0, false);
                for key in keys {
                    let their_heads = theirs.get(&key).map(Vec::as_slice).unwrap_or(&[]);
                    let mut mine_sorted = mine[&key].clone();
                    mine_sorted.sort();
                    let mut theirs_sorted = their_heads.to_vec();
                    theirs_sorted.sort();
                    if mine_sorted == theirs_sorted {
                        continue;
                    }
                    // cut by size and by time (after at least one document, so every answer
                    // brings something), so the asker's call does not time out on it
                    let late = !changes.is_empty() && started.elapsed() >= budget;
                    if bytes >= REPAIR_BYTES || late {
                        more = true;
                        break;
                    }
                    let delta = skip_damaged(store.changes_since(&key, their_heads).await)?
                        .unwrap_or_default();
                    if delta.is_empty() {
                        continue;
                    }
                    bytes += delta.iter().map(Vec::len).sum::<usize>();
                    changes.push(DocChanges {
                        collection: key.collection().into(),
                        id: key.id().into(),
                        changes: delta,
                    });
                }
                Ok(plain(Response::Repair { changes, more }))
            }
        }
    }

    /// A feed page as an answer to peer `to`, with the backlog when the asker is behind, and
    /// the trace id of each run of changes (one entry of `changes` per document and trace).
    /// Changes of collections `to` does not hold (placement) are left out; its cursor moves
    /// past them all the same.
    pub(super) fn feed_answer(
        &self,
        page: meridian_crdt::FeedPage,
        to: &str,
    ) -> Result<(Response, Extras), crate::Error> {
        if page.trimmed {
            let upto = page.upto.ok_or_else(|| {
                crate::Error::Protocol("a trimmed feed answer without a bound".into())
            })?;
            return Ok((Response::Trimmed { upto }, Extras::default()));
        }
        // only a node that is behind needs to know by how much
        let (latest, behind) = if page.more {
            let (latest, n) = self
                .shared
                .store
                .feed_backlog(page.upto.as_ref(), BACKLOG_CAP)?;
            (latest, n as u64)
        } else {
            (None, 0)
        };
        let mut changes: Vec<DocChanges> = Vec::new();
        let mut traces: Vec<Option<[u8; 16]>> = Vec::new();
        let placement = self.shared.store.placement();
        for (_, e) in page.entries {
            if !placement.holds(&e.collection, to) {
                continue;
            }
            let trace = self.shared.store.trace_of(&e.hash);
            match (changes.last_mut(), traces.last()) {
                (Some(last), Some(t))
                    if last.collection == e.collection && last.id == e.id && *t == trace =>
                {
                    last.changes.push(e.change)
                }
                _ => {
                    changes.push(DocChanges {
                        collection: e.collection,
                        id: e.id,
                        changes: vec![e.change],
                    });
                    traces.push(trace);
                }
            }
        }
        let extras = Extras {
            traces: if traces.iter().any(Option::is_some) {
                traces
            } else {
                vec![]
            },
        };
        Ok((
            Response::Feed {
                changes,
                upto: page.upto,
                more: page.more,
                latest,
                behind,
            },
            extras,
        ))
    }

    /// Answers a subscription (the body of `POST /internal/subscribe`): a stream of frames,
    /// each a feed page, sent as this node's changes become durable, with an empty page every
    /// heartbeat. `Err` holds a one-message answer for a request that is not a subscription.
    /// The stream ends when the receiver is dropped (the peer went away), at shutdown, or after
    /// [`STREAM_LIFETIME`] (the peer then opens a new one); the channel is bounded, so a slow
    /// peer slows only its own stream.
    pub fn subscribe(&self, body: &[u8]) -> Result<mpsc::Receiver<Vec<u8>>, Vec<u8>> {
        let speaks = self.shared.config.versions;
        let refuse = |v: u8, message: String| {
            wire::encode_at(v, &Response::Error { message }, &Extras::default())
        };
        let d = match wire::decode_checked::<Request>(body, speaks) {
            Ok(d) => d,
            Err(Undecodable::Version { refusal, .. }) => {
                return Err(refuse(speaks.oldest, refusal))
            }
            Err(Undecodable::Malformed(e)) => return Err(refuse(speaks.oldest, e.to_string())),
        };
        let version = d.version;
        let (from, mut after, limit, heartbeat) = match d.message {
            Request::Subscribe {
                from,
                after,
                limit,
                heartbeat_ms,
            } => (
                from,
                after,
                limit.clamp(1, 10_000) as usize,
                Duration::from_millis(heartbeat_ms.clamp(10, 60_000) as u64),
            ),
            _ => {
                return Err(refuse(
                    version,
                    "not a subscription: POST /internal/rpc".into(),
                ))
            }
        };
        let peer = self.peer(&from);
        if let Some(p) = &peer {
            p.status.lock().their_protocol = Some(version);
            if !self.reachable(p) {
                p.wake.notify_one();
            }
            let mut st = p.status.lock();
            st.bytes_received += body.len() as u64;
            st.heard(Instant::now());
            st.acked = Some(after);
        }
        let (tx, rx) = mpsc::channel(1);
        let this = self.clone();
        tokio::spawn(async move {
            let store = &this.shared.store;
            let mut stop = this.shared.workers.stop_signal();
            let end = Instant::now() + STREAM_LIFETIME;
            let mut last_sent: Option<Instant> = None;
            while !this.stopped() && Instant::now() < end {
                let mut news = store.subscribe();
                if let Some(p) = &peer {
                    p.status.lock().their_cursor = Some(after);
                }
                let page = match store.feed(after.as_ref(), limit) {
                    Ok(p) => p,
                    Err(e) => {
                        let error = Response::Error {
                            message: e.to_string(),
                        };
                        let _ = tx
                            .send(wire::frame_at(version, &error, &Extras::default()))
                            .await;
                        return;
                    }
                };
                let beat_due = last_sent.is_none_or(|t| t.elapsed() >= heartbeat);
                if !page.entries.is_empty() || beat_due || page.trimmed {
                    let (more, upto, trimmed) = (page.more, page.upto, page.trimmed);
                    let Ok((answer, extras)) = this.feed_answer(page, &from) else {
                        return;
                    };
                    let frame = wire::frame_at(version, &answer, &extras);
                    let n = frame.len() as u64;
                    if tx.send(frame).await.is_err() {
                        return; // the peer went away
                    }
                    if let Some(p) = &peer {
                        let mut st = p.status.lock();
                        st.bytes_sent += n;
                        st.delivered(Instant::now());
                    }
                    if trimmed {
                        return; // the peer repairs, then subscribes again from where it is told
                    }
                    after = upto.or(after);
                    last_sent = Some(Instant::now());
                    if more {
                        continue;
                    }
                }
                let next_beat = last_sent.map_or(Instant::now(), |t| t + heartbeat);
                tokio::select! {
                    _ = news.changed() => {}
                    _ = tokio::time::sleep_until(next_beat.into()) => {}
                    _ = stop.wait() => {}
                }
            }
        });
        Ok(rx)
    }
}

/// `None` for a document damaged here (the others still get an answer).
fn skip_damaged<T>(r: meridian_crdt::Result<T>) -> meridian_crdt::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(meridian_crdt::Error::Damaged(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
