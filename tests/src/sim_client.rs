//! Clients of the in-memory cluster: the client library's [`Syncer`](meridian_client::Syncer)
//! over a link that goes straight to a node's sync hub, and that a test can cut.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use meridian_client::{Connector, Error, Link, Result};
use meridian_crdt::{DocKey, Edit, Store};
use meridian_sync::repo::{Hub, Output};
use tokio::sync::{mpsc, watch};

/// A client's network to one node: up or down.
#[derive(Debug, Clone)]
pub struct SimConnector {
    hub: Arc<Hub>,
    store: Store,
    up: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl SimConnector {
    pub fn new(hub: Arc<Hub>, store: Store) -> Self {
        SimConnector {
            hub,
            store,
            up: Arc::new(AtomicBool::new(true)),
            cut: watch::Sender::new(0),
        }
    }

    /// Cuts (`false`) or restores the client's network; a cut ends the open connection.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Connector for SimConnector {
    fn connect(&self) -> BoxFuture<'_, Result<Link>> {
        Box::pin(async move {
            if !self.up.load(Ordering::SeqCst) {
                return Err(Error::Unreachable("the client is offline".into()));
            }
            let mut conn = meridian_sync::repo::Connection::open(&self.hub)
                .map_err(|_| Error::Unreachable("the node is full or stopping".into()))?;
            let (to_client, rx) = mpsc::channel::<Vec<u8>>(64);
            let (tx, mut from_client) = mpsc::channel::<Vec<u8>>(64);
            let mut cut = self.cut.subscribe();
            tokio::spawn(async move {
                let notices = conn.notices();
                loop {
                    let outs = tokio::select! {
                        f = from_client.recv() => match f {
                            Some(f) => conn.receive(&f).await,
                            None => return,
                        },
                        _ = notices.ready() => conn.drain_notices().await,
                        _ = cut.changed() => return,
                    };
                    for o in outs {
                        match o {
                            Output::Frame(f) => {
                                if to_client.send(f).await.is_err() {
                                    return;
                                }
                            }
                            Output::Close(_) => return,
                        }
                    }
                }
            });
            Ok(Link { rx, tx })
        })
    }

    fn register(&self, key: DocKey) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if !self.up.load(Ordering::SeqCst) {
                return Err(Error::Unreachable("the client is offline".into()));
            }
            // what `PATCH {}` does over HTTP
            self.store
                .write(&key, Edit::Patch(Default::default()), None)
                .await
                .map(|_| ())
                .map_err(|e| Error::Local(e.to_string()))
        })
    }
}
