//! A running node: open the store and bind ([`Node::open`]), then serve until told to stop
//! ([`Node::serve`]). `meridian serve` runs one until SIGINT or SIGTERM; `meridian demo` runs
//! three in one process, each with its own store, clock and listener.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use meridian_crdt::Store;
use meridian_sync::Workers;
use tokio::net::TcpListener;

use crate::config::Settings;
use meridian_http::auth::Auth;
use meridian_http::{AppState, Options};
use meridian_net::tls::{ConnInfo, PlainListener, ServerTls};

/// A node whose store is open and whose port is bound, not yet serving.
#[derive(Debug)]
pub struct Node {
    settings: Settings,
    store: Store,
    listener: TcpListener,
    state: AppState,
    tls: Option<ServerTls>,
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
        // a broken auth file stops the start before the data dir is touched
        let keys = match &settings.auth_file {
            Some(path) => Some(Auth::from_file(path).map_err(anyhow::Error::msg)?),
            None => None,
        };
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(
                ServerTls::new(cert, key, settings.peer_ca.as_deref())
                    .map_err(anyhow::Error::msg)?,
            ),
            _ => None,
        };
        let data_dir = &settings.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create the data dir {}: {e}", data_dir.display())
        })?;
        let store = Store::open(settings.store()).map_err(|e| open_error(data_dir, e))?;
        let listener = TcpListener::bind(&settings.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
        if settings.fault_controls {
            tracing::warn!(
                "fault controls are on: /internal/faults can cut links and pause this node"
            );
        }
        let options = Options {
            region: settings.region.clone(),
            limits: settings.limits(),
            replication: settings.replication(),
            cluster_secret: settings.cluster_secret.clone(),
            peer_tls: settings.peer_tls(),
            client_limits: settings.clients(),
            stream_limits: settings.streams(),
            auth: auth_for(&settings, keys, listener.local_addr()?)?,
            tls: tls.is_some(),
            public_urls: settings.peer_public_urls.clone(),
            fault_controls: settings.fault_controls,
        };
        let state = AppState::build(store.clone(), options)
            .map_err(|e| anyhow::anyhow!("cannot start replication: {e:#}"))?;
        Ok(Node {
            settings,
            store,
            listener,
            state,
            tls,
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
            tls,
        } = self;
        // installed before the node says it serves: SIGHUP's default action is to terminate
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let workers = state.workers.clone();
        state.replica.start();
        tracing::info!(
            node = %store.node_id(),
            region = %settings.region,
            listen = %listener.local_addr()?,
            tls = tls.is_some(),
            data_dir = %settings.data_dir.display(),
            peers = settings.peers.len(),
            "meridian is serving"
        );
        spawn_purge(&workers, store.clone());
        spawn_reload(&workers, hup, state.auth.clone(), tls.clone());
        spawn_trim(&workers, store.clone(), settings.streams().retention);

        let stop = workers.clone();
        let drain = Duration::from_secs(settings.drain_secs);
        let draining = state.clone();
        let app = meridian_http::app(state).into_make_service_with_connect_info::<ConnInfo>();
        let shutdown = async move {
            tokio::select! {
                _ = shutdown => {}
                _ = draining.drain.started() => {}
            }
            if !drain.is_zero() {
                drain_for(&draining, drain).await;
            }
            // every worker ends: the long polls peers wait on, client-sync sockets and change
            // streams close, so the shutdown does not wait on them
            stop.stop();
        };
        match &tls {
            Some(tls) => {
                axum::serve(tls.listen(listener)?, app)
                    .with_graceful_shutdown(shutdown)
                    .await?
            }
            None => {
                axum::serve(PlainListener(listener), app)
                    .with_graceful_shutdown(shutdown)
                    .await?
            }
        }
        let late = workers.join(EXIT_DEADLINE).await;
        if !late.is_empty() {
            tracing::warn!(workers = ?late, "background workers still running at the exit deadline were aborted");
        }
        if let Some(meridian_crdt::StorageProblem::Failed(cause)) = store.storage().problem {
            stop_after_storage_failure(&store, &cause);
        }
        if let Err(e) = store.close() {
            stop_after_storage_failure(&store, &format!("the final flush failed: {e}"));
        }
        tracing::info!(node = %store.node_id(), "stopped cleanly");
        Ok(())
    }
}

/// Drains (see `meridian_http::drain`): until no request has come for a second, at most
/// `deadline`.
async fn drain_for(state: &meridian_http::AppState, deadline: Duration) {
    state.start_drain();
    let t0 = std::time::Instant::now();
    tracing::info!(
        deadline_secs = deadline.as_secs(),
        "draining before stopping"
    );
    while t0.elapsed() < deadline && state.drain.quiet_for() < QUIET {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        drained_ms = t0.elapsed().as_millis() as u64,
        quiet = state.drain.quiet_for() >= QUIET,
        "drained: stopping"
    );
}

/// A draining node stops once no request has come for this long.
const QUIET: Duration = Duration::from_secs(1);

/// How long the background workers get to end after the listener has stopped, before they
/// are aborted (the store is flushed after them either way).
const EXIT_DEADLINE: Duration = Duration::from_secs(5);

/// The auth file's keys; without one, open on a loopback address only, unless
/// `--insecure-no-auth` says otherwise (and then the log says so at every start).
fn auth_for(settings: &Settings, keys: Option<Auth>, addr: SocketAddr) -> anyhow::Result<Auth> {
    if let Some(auth) = keys {
        tracing::info!(file = ?settings.auth_file, "API keys required");
        return Ok(auth);
    }
    if addr.ip().is_loopback() {
        return Ok(Auth::open());
    }
    anyhow::ensure!(
        settings.insecure_no_auth,
        "refusing to serve {addr} without API keys: anyone who reaches it could read and \
         change everything. Give --auth-file (see `meridian key create`), listen on a loopback \
         address, or say --insecure-no-auth"
    );
    tracing::warn!(
        %addr,
        "INSECURE: serving WITHOUT API KEYS on a non-loopback address (--insecure-no-auth): \
         anyone who reaches this port can read, change and delete every document"
    );
    Ok(Auth::insecure())
}

/// Re-reads the auth file and the TLS certificate on SIGHUP; a broken file keeps what is in
/// force.
fn spawn_reload(
    workers: &Workers,
    hup: std::io::Result<tokio::signal::unix::Signal>,
    auth: std::sync::Arc<Auth>,
    tls: Option<ServerTls>,
) {
    workers.spawn("SIGHUP reload", |mut stop| async move {
        let Ok(mut hup) = hup else {
            tracing::warn!(
                "cannot listen for SIGHUP: keys and certificates reload only on restart"
            );
            return;
        };
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                _ = stop.wait() => return,
            }
            match auth.reload() {
                Ok(n) if matches!(auth.mode(), meridian_http::auth::Mode::Keys(_)) => {
                    tracing::info!(keys = n, "SIGHUP: reloaded the auth file")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: the auth file is broken; the keys in force stay"
                ),
            }
            match tls.as_ref().map(ServerTls::reload) {
                Some(Ok(())) => tracing::info!("SIGHUP: reloaded the TLS certificate"),
                Some(Err(e)) => tracing::error!(
                    error = %e,
                    "SIGHUP: the TLS certificate or key is broken; the one in force stays"
                ),
                None => {}
            }
        }
    });
}

/// Forgets idempotency keys past their TTL, off the request path: at start, then every 10 min.
fn spawn_purge(workers: &Workers, store: Store) {
    let every = Duration::from_secs(600);
    workers.every(
        "idempotency purge",
        Duration::ZERO,
        every,
        move || match store.purge_idempotency_keys() {
            Ok(n) if n > 0 => tracing::info!(removed = n, "expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "idempotency key purge failed"),
            _ => {}
        },
    );
}

/// Keeps the change events of the last `retention` batches, for streams that resume: trims
/// once before serving (so that a stream never resumes from what is due to go), then every
/// 10 s.
fn spawn_trim(workers: &Workers, store: Store, retention: u64) {
    if let Err(e) = store.trim_events(retention) {
        tracing::warn!(error = %e, "trimming change events failed");
    }
    let period = Duration::from_secs(10);
    workers.every("change event trim", period, period, move || {
        match store.trim_events(retention) {
            Err(e) => tracing::warn!(error = %e, "trimming change events failed"),
            Ok(n) if n > 0 => tracing::debug!(removed = n, "trimmed change events"),
            _ => {}
        }
    });
}

/// Exits with status 1 and a last line that says why. Everything acknowledged is in the
/// write-ahead log, replayed at the next start; what is skipped is sled's own drop, which
/// unwraps the same I/O error and aborts (sled 0.34).
fn stop_after_storage_failure(store: &Store, cause: &str) -> ! {
    tracing::error!(
        node = %store.node_id(),
        %cause,
        "stopped after a storage failure: every acknowledged write is in the write-ahead log and is replayed at the next start; fix the disk, then start the node"
    );
    std::process::exit(1)
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
