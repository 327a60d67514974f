//! Syncing replicas with a node: automerge-repo's protocol "1", the client side.
//!
//! A [`Syncer`] keeps one connection to a node open while it can (reconnecting with backoff,
//! moving to the next region when one is unreachable). On every connection it offers every
//! replica; after that it sends each local edit as it is made, and takes what the node pushes.
//! A node that does not have a document answers `doc-unavailable`: if this replica holds edits
//! of its own that no node acknowledged (it was created offline), the syncer registers it over
//! HTTP (`PATCH {}` creates it empty; the layout makes that the same document) and syncs again.
//!
//! The protocol runs over a [`Connector`]: a WebSocket to `/v1/sync` in [`WsConnector`], an
//! in-memory link in tests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use meridian_crdt::{DocKey, DocumentId, SyncState};
use meridian_sync::repo::{Message, PeerMetadata, PROTOCOL};
use rand::Rng;
use tokio::sync::{mpsc, watch};

use crate::error::{Error, Result};
use crate::http::Client;
use crate::replica::Replicas;

/// A connection to a node: whole protocol frames each way. The connection has ended when `rx`
/// ends; dropping `tx` ends it from this side.
#[derive(Debug)]
pub struct Link {
    pub rx: mpsc::Receiver<Vec<u8>>,
    pub tx: mpsc::Sender<Vec<u8>>,
}

/// How a [`Syncer`] reaches a node.
pub trait Connector: Send + Sync + 'static {
    /// Opens a connection.
    fn connect(&self) -> BoxFuture<'_, Result<Link>>;
    /// Makes the node know a document created offline (`PATCH {}` over HTTP).
    fn register(&self, key: DocKey) -> BoxFuture<'_, Result<()>>;
    /// The last connection could not be made, or failed: try elsewhere next time.
    fn failed(&self) {}
}

/// Connects to `/v1/sync` of the client's current region; registers through the client.
#[derive(Debug, Clone)]
pub struct WsConnector {
    pub client: Client,
}

impl Connector for WsConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Link>> {
        Box::pin(async move {
            let base = self.client.region();
            let url = format!("ws{}/v1/sync", base.trim_start_matches("http"));
            let mut request =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                    url.as_str(),
                )
                .map_err(|e| Error::Invalid(format!("{url}: {e}")))?;
            let bearer = self.client.bearer().await?;
            if let Some(k) = &bearer {
                let v = format!("Bearer {k}").parse().map_err(|_| {
                    Error::Invalid("the key or token is not a valid header value".into())
                })?;
                request.headers_mut().insert("authorization", v);
            }
            // ws:// for http:// regions, wss:// (the client's TLS) for https:// ones
            let connector = tokio_tungstenite::Connector::Rustls(self.client.tls());
            let (ws, _) = tokio::time::timeout(
                Duration::from_secs(10),
                tokio_tungstenite::connect_async_tls_with_config(
                    request,
                    None,
                    false,
                    Some(connector),
                ),
            )
            .await
            .map_err(|_| Error::Unreachable(format!("{url}: timed out")))?
            .map_err(|e| {
                use tokio_tungstenite::tungstenite::Error as WsError;
                if let (WsError::Http(r), Some(b)) = (&e, &bearer) {
                    if r.status() == 401 {
                        // expired or revoked: the next try fetches a fresh token
                        self.client.refused_bearer(b);
                    }
                }
                Error::Unreachable(format!("{url}: {e}"))
            })?;
            Ok(pump(ws))
        })
    }

    fn register(&self, key: DocKey) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.client
                .patch(key.collection(), key.id(), &serde_json::json!({}))
                .await
                .map(|_| ())
        })
    }

    fn failed(&self) {
        self.client.fail_over(self.client.current_index());
    }
}

/// Moves frames between a WebSocket and a [`Link`].
fn pump<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> Link
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_tungstenite::tungstenite::Message as Ws;
    let (mut sink, mut stream) = ws.split();
    let (in_tx, in_rx) = mpsc::channel::<Vec<u8>>(64);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            match m {
                Ok(Ws::Binary(b)) => {
                    if in_tx.send(b.to_vec()).await.is_err() {
                        return;
                    }
                }
                Ok(Ws::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if sink.send(Ws::Binary(f.into())).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    Link {
        rx: in_rx,
        tx: out_tx,
    }
}

#[derive(Debug)]
struct Shared {
    connected: AtomicBool,
    stop: watch::Sender<bool>,
}

/// Keeps replicas in sync with a node, in the background. Stops when dropped.
#[derive(Debug)]
pub struct Syncer {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Syncer {
    /// Syncs `replicas` through the client's regions (WebSocket to `/v1/sync`).
    pub fn start(replicas: Replicas, client: Client) -> Syncer {
        Self::start_with(replicas, WsConnector { client })
    }

    /// Syncs `replicas` over any connector.
    pub fn start_with(replicas: Replicas, connector: impl Connector) -> Syncer {
        let shared = Arc::new(Shared {
            connected: AtomicBool::new(false),
            stop: watch::Sender::new(false),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move { run(replicas, connector, s).await });
        Syncer {
            shared,
            task: Some(task),
        }
    }

    /// Connected to a node now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// Stops syncing (the replicas stay; a later syncer goes on).
    pub async fn stop(mut self) {
        self.shared.stop.send_replace(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let d = Duration::from_millis(100) * 2u32.pow(failures.min(6));
    d.min(Duration::from_secs(5))
        .mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

async fn run(replicas: Replicas, connector: impl Connector, shared: Arc<Shared>) {
    let mut stop = shared.stop.subscribe();
    let mut failures = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = match connector.connect().await {
            Ok(link) => {
                shared.connected.store(true, Ordering::Release);
                let r = Session::new(&replicas, &connector)
                    .run(link, &mut stop)
                    .await;
                shared.connected.store(false, Ordering::Release);
                r
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                tracing::debug!(error = %e, "sync connection ended");
                connector.failed();
                failures += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff(failures)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// One connection's state.
struct Session<'a, C> {
    replicas: &'a Replicas,
    connector: &'a C,
    me: String,
    node: String,
    states: HashMap<DocumentId, SyncState>,
    registered: HashSet<DocumentId>,
}

impl<'a, C: Connector> Session<'a, C> {
    fn new(replicas: &'a Replicas, connector: &'a C) -> Self {
        Session {
            replicas,
            connector,
            me: format!("meridian-client-{}", hex::encode(rand::random::<[u8; 8]>())),
            node: String::new(),
            states: HashMap::new(),
            registered: HashSet::new(),
        }
    }

    async fn run(mut self, mut link: Link, stop: &mut watch::Receiver<bool>) -> Result<()> {
        let join = Message::Join {
            sender: self.me.clone(),
            versions: vec![PROTOCOL.into()],
            metadata: Some(PeerMetadata {
                storage_id: None,
                is_ephemeral: true,
            }),
        };
        send(&link, join.encode()).await?;
        let first = tokio::time::timeout(Duration::from_secs(10), link.rx.recv())
            .await
            .map_err(|_| Error::Sync("no answer to join".into()))?
            .ok_or_else(|| Error::Sync("the node closed the connection".into()))?;
        match Message::decode(&first).map_err(|e| Error::Sync(e.to_string()))? {
            Message::Peer {
                sender,
                version,
                target,
                ..
            } if version == PROTOCOL && target == self.me => self.node = sender,
            Message::Error { message } => return Err(Error::Sync(message)),
            other => return Err(Error::Sync(format!("expected peer, got {other:?}"))),
        }
        // a new connection offers every replica
        {
            let shared = self.replicas.shared();
            let mut dirty = shared.dirty.lock();
            for d in self.replicas.docs() {
                dirty.insert(d.document_id());
            }
        }
        loop {
            let dirty: Vec<DocumentId> = self.replicas.shared().dirty.lock().drain().collect();
            for id in dirty {
                self.offer(&link, id).await?;
            }
            let wake = self.replicas.shared().wake.notified();
            tokio::select! {
                frame = link.rx.recv() => match frame {
                    None => return Ok(()),
                    Some(f) => self.receive(&link, &f).await?,
                },
                _ = wake => {}
                _ = stop.changed() => return Ok(()),
            }
        }
    }

    /// Sends this replica's next sync message for `id`, if it has one.
    async fn offer(&mut self, link: &Link, id: DocumentId) -> Result<()> {
        let Some(doc) = self.replicas.get(&id) else {
            return Ok(());
        };
        let state = self.states.entry(id).or_default();
        let Some(data) = doc.with_sync(|d| Ok(d.generate_sync(state)))? else {
            return Ok(());
        };
        let m = Message::Sync {
            sender: self.me.clone(),
            target: self.node.clone(),
            doc: id,
            data,
        };
        send(link, m.encode()).await
    }

    async fn receive(&mut self, link: &Link, frame: &[u8]) -> Result<()> {
        match Message::decode(frame).map_err(|e| Error::Sync(e.to_string()))? {
            Message::Sync { doc, data, .. } | Message::Request { doc, data, .. } => {
                let Some(replica) = self.replicas.get(&doc) else {
                    return Ok(());
                };
                let msg = automerge::sync::Message::decode(&data)
                    .map_err(|e| Error::Sync(format!("undecodable sync message: {e}")))?;
                let state = self.states.entry(doc).or_default();
                replica.with_sync(|d| d.receive_sync(state, msg).map_err(Error::from))?;
                replica.node_has(state);
                self.offer(link, doc).await
            }
            Message::DocUnavailable { doc, .. } => {
                let Some(replica) = self.replicas.get(&doc) else {
                    return Ok(());
                };
                let created_here = replica.status().unacknowledged > 0;
                if created_here && self.registered.insert(doc) {
                    match self.connector.register(replica.key().clone()).await {
                        // placed in other regions: this one will never hold it (see
                        // docs/replication.md, "Placement"); the other documents sync on
                        Err(e) if e.code() == Some("collection_elsewhere") => {
                            tracing::warn!(key = %replica.key(), error = %e, "this region does not hold the document's collection");
                            replica.set_unavailable();
                            return Ok(());
                        }
                        other => other?,
                    }
                    self.states.insert(doc, SyncState::new());
                    self.offer(link, doc).await
                } else {
                    replica.set_unavailable();
                    Ok(())
                }
            }
            Message::Error { message } => Err(Error::Sync(message)),
            // presence and heads gossip are not used by this client
            _ => Ok(()),
        }
    }
}

async fn send(link: &Link, frame: Vec<u8>) -> Result<()> {
    link.tx
        .send(frame)
        .await
        .map_err(|_| Error::Sync("the connection is closed".into()))
}
