//! Change streams: `GET /v1/{collection}/{id}` and `GET /v1/{collection}` with
//! `Accept: text/event-stream` answer a Server-Sent Events stream of every change that becomes
//! visible on this node, local or replicated (see `docs/changes.md`).
//!
//! One task (the pump) reads the store's change events in order as they become durable, renders
//! each once, and hands it to the streams that want it, each through a bounded channel: a
//! stream whose channel is full has fallen behind, is told so and closed, and never slows the
//! pump or the writers. A stream that resumes (`Last-Event-ID`) first reads what it missed from
//! the store, then continues with what the pump hands it: it registers before it reads, and the
//! pump only hands it events after the point it registered at, so nothing falls between.
//!
//! `events`: what a stream says (cursors in, SSE events and their JSON out), without I/O.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use meridian_crdt::{ChangeEvent, DocKey, Store};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::auth::Readable;
use crate::error::ApiError;

mod events;

use events::{change, cursor, render, render_state, reset};
pub(crate) use events::{requested, resume_of, Resume};

/// Bounds of the change streams.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    /// Streams open at once before the node answers 503 `overloaded`.
    pub max_streams: usize,
    /// Events a stream may fall behind before it is closed (its client resumes).
    pub buffer: usize,
    /// Batches whose events are kept for resuming streams.
    pub retention: u64,
    /// A comment this often keeps proxies from closing an idle stream.
    pub keep_alive: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_streams: 10_000,
            buffer: 1_000,
            retention: 100_000,
            keep_alive: Duration::from_secs(15),
        }
    }
}

/// What one stream follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Filter {
    Doc(DocKey),
    Collection(String),
}

impl Filter {
    fn wants(&self, e: &ChangeEvent) -> bool {
        match self {
            Filter::Doc(k) => k.collection() == e.collection && k.id() == e.id,
            Filter::Collection(c) => *c == e.collection,
        }
    }
}

/// What the caller of one stream may see, and when it must stop.
pub(crate) struct Scope {
    /// `None`: every document the filter takes; else only these (a token's collection stream).
    pub(crate) readable: Option<Readable>,
    /// Resolves when the caller's credentials are no longer in force (expired, revoked): the
    /// stream ends with a `closed` event.
    pub(crate) ended: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ApiError> + Send>>>,
}

/// An event rendered once for every stream that wants it.
#[derive(Debug)]
struct Rendered {
    seq: u64,
    filter_doc: Filter,
    data: String,
}

#[derive(Debug)]
struct Sub {
    tx: mpsc::Sender<Arc<Rendered>>,
    behind: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct Subs {
    /// Every event up to here has been handed to the streams registered then.
    position: u64,
    next_id: u64,
    streams: usize,
    by_filter: HashMap<Filter, HashMap<u64, Sub>>,
    closed: bool,
}

/// The change streams of one node. Cheap to share.
#[derive(Debug)]
pub struct ChangeStreams {
    store: Store,
    limits: StreamLimits,
    subs: Mutex<Subs>,
    sent: AtomicU64,
    cut_behind: AtomicU64,
}

/// Figures for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct StreamStats {
    pub streams: usize,
    pub events_sent: u64,
    pub streams_behind: u64,
}

impl ChangeStreams {
    /// Starts the pump on a worker of `workers` (needs a tokio runtime). It stops when the
    /// feed is dropped, the store closes, or the workers stop (which closes every stream).
    pub fn start(
        store: Store,
        limits: StreamLimits,
        workers: &meridian_sync::Workers,
    ) -> Arc<ChangeStreams> {
        let position = store.event_bounds().visible;
        let feed = Arc::new(ChangeStreams {
            store,
            limits,
            subs: Mutex::new(Subs {
                position,
                ..Default::default()
            }),
            sent: AtomicU64::new(0),
            cut_behind: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&feed);
        let watch = feed.store.watch_events();
        workers.spawn("change stream pump", move |mut stop| async move {
            tokio::select! {
                _ = pump(weak.clone(), watch, position) => {}
                _ = stop.wait() => {
                    if let Some(feed) = weak.upgrade() {
                        feed.shutdown();
                    }
                }
            }
        });
        feed
    }

    pub fn stats(&self) -> StreamStats {
        StreamStats {
            streams: self.subs.lock().streams,
            events_sent: self.sent.load(Ordering::Relaxed),
            streams_behind: self.cut_behind.load(Ordering::Relaxed),
        }
    }

    /// Ends every stream (at shutdown) and refuses new ones.
    pub fn shutdown(&self) {
        let mut s = self.subs.lock();
        s.closed = true;
        s.by_filter.clear();
        s.streams = 0;
    }

    /// Hands the events the pump read to the streams that want them.
    fn route(&self, events: Vec<(u64, ChangeEvent)>, upto: u64) {
        let mut guard = self.subs.lock();
        let s = &mut *guard;
        for (seq, e) in events {
            let Ok(key) = DocKey::new(&e.collection, &e.id) else {
                tracing::error!(seq, "a change event names an invalid document; skipped");
                continue;
            };
            let doc = Filter::Doc(key);
            let coll = Filter::Collection(e.collection.clone());
            if !s.by_filter.contains_key(&doc) && !s.by_filter.contains_key(&coll) {
                continue;
            }
            let r = Arc::new(Rendered {
                seq,
                data: render(&e),
                filter_doc: doc.clone(),
            });
            for f in [&doc, &coll] {
                let Some(subs) = s.by_filter.get_mut(f) else {
                    continue;
                };
                let before = subs.len();
                subs.retain(|_, sub| match sub.tx.try_send(r.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sub.behind.store(true, Ordering::Release);
                        self.cut_behind.fetch_add(1, Ordering::Relaxed);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                let (left, empty) = (subs.len(), subs.is_empty());
                if empty {
                    s.by_filter.remove(f);
                }
                s.streams -= before - left;
            }
        }
        s.position = s.position.max(upto);
    }

    fn unsubscribe(&self, filter: &Filter, id: u64) {
        let mut guard = self.subs.lock();
        let s = &mut *guard;
        if let Some(subs) = s.by_filter.get_mut(filter) {
            if subs.remove(&id).is_some() {
                s.streams -= 1;
            }
            if subs.is_empty() {
                s.by_filter.remove(filter);
            }
        }
    }

    /// Opens a stream of `filter`'s changes.
    pub(crate) fn open(
        self: &Arc<Self>,
        filter: Filter,
        resume: Resume,
        scope: Scope,
    ) -> Result<Response, ApiError> {
        let (tx, rx) = mpsc::channel(self.limits.buffer.max(1));
        let behind = Arc::new(AtomicBool::new(false));
        let (id, from) = {
            let mut s = self.subs.lock();
            if s.closed {
                return Err(ApiError::Unavailable("the node is shutting down".into()));
            }
            if s.streams >= self.limits.max_streams {
                return Err(ApiError::LimitReached(format!(
                    "this node serves at most {} change streams at once; retry shortly",
                    self.limits.max_streams
                )));
            }
            s.next_id += 1;
            s.streams += 1;
            let id = s.next_id;
            s.by_filter.entry(filter.clone()).or_default().insert(
                id,
                Sub {
                    tx,
                    behind: behind.clone(),
                },
            );
            (id, s.position)
        };
        let mut st = StreamState {
            feed: self.clone(),
            filter,
            id,
            rx,
            behind,
            queue: VecDeque::new(),
            backfill: None,
            skip_upto: 0,
            done: false,
            readable: scope.readable,
        };
        let epoch = self.store.event_epoch();
        match resume {
            Resume::Now => {
                if let Filter::Doc(key) = &st.filter {
                    // read after registering, so that a change after this read arrives as an
                    // event; and note how far the read reaches, so that one it already shows
                    // (made durable between the registration and the read) is not sent again
                    let (state, upto) = self.store.read_state_at(key)?;
                    st.skip_upto = upto;
                    st.queue.push_back(
                        Event::default()
                            .event("document")
                            .id(cursor(epoch, upto.max(from)))
                            .data(render_state(key, state.as_ref())),
                    );
                }
            }
            Resume::After(seq) if seq <= from => st.backfill = Some((seq, from)),
            // ahead of this node: the data dir lost its tail (restored from a backup)
            Resume::After(_) | Resume::Foreign => st.queue.push_back(reset(epoch, from)),
        }
        let stream =
            futures_util::stream::unfold((st, scope.ended), |(mut st, ended)| async move {
                let Some(mut f) = ended else {
                    let ev = st.next().await?;
                    return Some((Ok::<_, Infallible>(ev), (st, None)));
                };
                tokio::select! {
                    ev = st.next() => Some((Ok(ev?), (st, Some(f)))),
                    why = &mut f => {
                        // one last event saying why, then the end (`ended` is gone: the next poll
                        // finds the stream done)
                        st.done = true;
                        st.queue.clear();
                        st.backfill = None;
                        st.rx.close();
                        let data = serde_json::json!({"message": why.to_string()}).to_string();
                        Some((Ok(Event::default().event("closed").data(data)), (st, None)))
                    }
                }
            });
        Ok(Sse::new(stream)
            .keep_alive(KeepAlive::new().interval(self.limits.keep_alive))
            .into_response())
    }
}

/// Reads events as they become durable and routes them, until the feed or the store is gone.
async fn pump(feed: Weak<ChangeStreams>, mut watch: meridian_crdt::EventWatch, mut position: u64) {
    const PAGE: usize = 1024;
    loop {
        if !watch.after(position).await {
            return;
        }
        let Some(feed) = feed.upgrade() else { return };
        let visible = feed.store.event_bounds().visible;
        while position < visible {
            match feed.store.events(position, visible, PAGE) {
                Ok(Some(page)) => {
                    let upto = if page.len() < PAGE {
                        visible
                    } else {
                        page.last().map_or(visible, |(seq, _)| *seq)
                    };
                    feed.route(page, upto);
                    position = upto;
                }
                Ok(None) => {
                    // trimmed under the pump (it fell a whole retention behind): every stream
                    // is cut and resumes, which tells it to start over
                    tracing::warn!("change events were trimmed before the feed read them");
                    let mut s = feed.subs.lock();
                    for sub in s.by_filter.values().flat_map(HashMap::values) {
                        sub.behind.store(true, Ordering::Release);
                    }
                    s.by_filter.clear();
                    s.streams = 0;
                    s.position = visible;
                    position = visible;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read change events; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

struct StreamState {
    feed: Arc<ChangeStreams>,
    filter: Filter,
    id: u64,
    rx: mpsc::Receiver<Arc<Rendered>>,
    behind: Arc<AtomicBool>,
    queue: VecDeque<Event>,
    /// Events still to read from the store: after the first, up to the second.
    backfill: Option<(u64, u64)>,
    /// Events up to this position are already in the `document` event that opened the stream.
    skip_upto: u64,
    done: bool,
    readable: Option<Readable>,
}

impl StreamState {
    fn allowed(&self, doc: &Filter) -> bool {
        match (&self.readable, doc) {
            (Some(r), Filter::Doc(key)) => r.has(key.id()),
            _ => true,
        }
    }

    async fn next(&mut self) -> Option<Event> {
        const PAGE: usize = 512;
        let epoch = self.feed.store.event_epoch();
        loop {
            if let Some(ev) = self.queue.pop_front() {
                self.feed.sent.fetch_add(1, Ordering::Relaxed);
                return Some(ev);
            }
            if self.done {
                return None;
            }
            if let Some((after, upto)) = self.backfill {
                match self.feed.store.events(after, upto, PAGE) {
                    Ok(Some(page)) => {
                        let last = page.last().map(|(seq, _)| *seq);
                        let allowed =
                            |e: &ChangeEvent| self.readable.as_ref().is_none_or(|r| r.has(&e.id));
                        for (seq, e) in page
                            .iter()
                            .filter(|(_, e)| self.filter.wants(e) && allowed(e))
                        {
                            self.queue.push_back(change(epoch, *seq, render(e)));
                        }
                        self.backfill = match last {
                            Some(seq) if page.len() == PAGE && seq < upto => Some((seq, upto)),
                            _ => None,
                        };
                    }
                    Ok(None) => {
                        self.backfill = None;
                        self.queue.push_back(reset(epoch, upto));
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read change events for a stream");
                        self.done = true;
                    }
                }
                continue;
            }
            match self.rx.recv().await {
                Some(r) if r.seq <= self.skip_upto => {}
                Some(r) if !self.allowed(&r.filter_doc) => {}
                Some(r) => {
                    debug_assert!(
                        matches!(&self.filter, Filter::Collection(_))
                            || self.filter == r.filter_doc
                    );
                    self.queue.push_back(change(epoch, r.seq, r.data.clone()));
                }
                None => {
                    self.done = true;
                    if self.behind.load(Ordering::Acquire) {
                        self.queue.push_back(Event::default().event("behind").data(
                            r#"{"message":"this stream fell too far behind and is closed; reconnect with Last-Event-ID to resume"}"#,
                        ));
                    }
                }
            }
        }
    }
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.feed.unsubscribe(&self.filter, self.id);
    }
}
