//! A running node: open the store and bind ([`Node::open`]), then serve until told to stop
//! ([`Node::serve`]). `meridian serve` runs one until SIGINT or SIGTERM; `meridian demo` runs
//! three in one process, each with its own store, clock and listener.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_crdt::Store;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::state::AppState;

/// A node whose store is open and whose port is bound, not yet serving.
#[derive(Debug)]
pub struct Node {
    settings: Settings,
    store: Store,
    listener: TcpListener,
    state: AppState,
}

/// Opens the store, binds, and serves until SIGINT or SIGTERM; then finishes in-flight
/// requests, closes sync sockets and flushes.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    Node::open(settings)
        .await?
        .serve(crate::shutdown_signal())
        .await
}

impl Node {
    /// Opens the data dir and binds the listen address; errors say which failed and why.
    pub async fn open(settings: Settings) -> anyhow::Result<Node> {
        let data_dir = &settings.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create the data dir {}: {e}", data_dir.display())
        })?;
        let store = Store::open(settings.store()).map_err(|e| open_error(data_dir, e))?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
        let mut state = AppState::clustered(
            store.clone(),
            &settings.region,
            settings.limits(),
            settings.replication(),
            settings.cluster_secret.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("cannot load replication state: {e}"))?
        .with_client_limits(settings.clients())
        .with_feed_limits(settings.feed());
        if settings.fault_controls {
            tracing::warn!(
                "fault controls are on: /internal/faults can cut links and pause this node"
            );
            state = state.with_fault_controls();
        }
        Ok(Node {
            settings,
            store,
            listener,
            state,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves; then finishes in-flight requests, closes sync sockets
    /// and change streams, and flushes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Node {
            settings,
            store,
            listener,
            state,
        } = self;
        let replica = state.replica.clone();
        let hub = state.hub.clone();
        let changes = state.changes.clone();
        replica.start();
        tracing::info!(
            node = %store.node_id(),
            region = %settings.region,
            listen = %listener.local_addr()?,
            data_dir = %settings.data_dir.display(),
            peers = settings.peers.len(),
            "meridian is serving"
        );
        let purge = spawn_purge(store.clone());
        let trim = spawn_trim(store.clone(), settings.feed().retention);

        let stop = replica.clone();
        let stop_clients = hub.clone();
        let stop_changes = changes.clone();
        // Without TCP_NODELAY a feed frame can sit in the kernel for a delayed-ACK round (tens
        // of milliseconds) behind the previous one: Nagle's algorithm holds small writes back.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, crate::app(state))
            .with_graceful_shutdown(async move {
                shutdown.await;
                // ends the long polls peers are waiting on, so the shutdown does not wait
                stop.stop();
                stop_clients.shutdown();
                stop_changes.shutdown();
            })
            .await?;
        replica.stop();
        hub.shutdown();
        purge.abort();
        trim.abort();
        store
            .close()
            .map_err(|e| anyhow::anyhow!("final flush failed: {e}"))?;
        tracing::info!(node = %store.node_id(), "stopped cleanly");
        Ok(())
    }
}

/// Forgets idempotency keys past their TTL, off the request path.
fn spawn_purge(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(600));
        loop {
            every.tick().await;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.purge_idempotency_keys()).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(removed = n, "expired idempotency keys"),
                Ok(Err(e)) => tracing::warn!(error = %e, "idempotency key purge failed"),
                _ => {}
            }
        }
    })
}

/// Keeps the change events of the last `retention` batches, for streams that resume: trims
/// once before serving (so that a stream never resumes from what is due to go), then every
/// 10 s.
fn spawn_trim(store: Store, retention: u64) -> tokio::task::JoinHandle<()> {
    if let Err(e) = store.trim_events(retention) {
        tracing::warn!(error = %e, "trimming change events failed");
    }
    tokio::spawn(async move {
        let period = Duration::from_secs(10);
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            every.tick().await;
            let s = store.clone();
            match tokio::task::spawn_blocking(move || s.trim_events(retention)).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "trimming change events failed"),
                Ok(Ok(n)) if n > 0 => tracing::debug!(removed = n, "trimmed change events"),
                _ => {}
            }
        }
    })
}

fn open_error(dir: &std::path::Path, e: meridian_crdt::Error) -> anyhow::Error {
    match e {
        meridian_crdt::Error::InUse => anyhow::anyhow!(
            "the data dir {} is in use by another process",
            dir.display()
        ),
        e => anyhow::anyhow!("cannot open the data dir {}: {e}", dir.display()),
    }
}
