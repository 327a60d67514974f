//! What every handler shares: the store, replication, the sync hub, limits and metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_crdt::Store;
use meridian_sync::repo::{Hub, SyncLimits};
use meridian_sync::{Peer, Replica, SyncConfig, Workers};

use crate::auth::Auth;
use crate::changes::{ChangeStreams, StreamLimits};
use crate::metrics::Metrics;
use meridian_net::tls::PeerTls;
use meridian_net::Faults;
use meridian_net::HttpTransport;

/// Request limits.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body: usize,
    /// Requests in flight on `/v1` before the node answers 503 `overloaded`.
    pub max_in_flight: usize,
    /// Longest a `/v1` request may take before 503 `timeout`.
    pub request_timeout: Duration,
    /// Longest a request with a session token waits for this node to catch up.
    pub session_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 1 << 20,
            max_in_flight: 1024,
            request_timeout: Duration::from_secs(10),
            session_wait: Duration::from_secs(1),
        }
    }
}

/// Everything a handler needs, behind one `Arc`: every middleware layer and extractor clones
/// the state per request, and a clone of a struct of a dozen `Arc`s cost a dozen contended
/// atomic increments and decrements each time (6% of a GET-heavy profile).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug, Clone)]
pub struct Shared {
    pub store: Store,
    /// Every background loop of the node (replication, the pumps, the node's periodic jobs),
    /// with one stop signal.
    pub workers: Workers,
    pub replica: Replica<HttpTransport>,
    /// automerge-repo clients (`/v1/sync`).
    pub hub: Arc<Hub>,
    /// The change streams (`Accept: text/event-stream`).
    pub changes: Arc<ChangeStreams>,
    /// Required on `/internal/`; `None` refuses every internal request.
    pub cluster_secret: Option<Arc<str>>,
    pub region: Arc<str>,
    /// Cut links and a pause, set only through `/internal/faults` (see `meridian_net::faults`).
    pub faults: Arc<Faults>,
    /// `/internal/faults` exists (`--fault-controls`).
    pub fault_controls: bool,
    pub limits: Arc<Limits>,
    pub metrics: Arc<Metrics>,
    /// API keys (or none: a loopback node), checked by [`crate::auth::require`].
    pub auth: Arc<Auth>,
    /// TLS between regions: how this node reaches peers, and whether they must show a
    /// certificate.
    pub peer_tls: Arc<PeerTls>,
    /// This node serves HTTPS (`--tls-cert`).
    pub tls: bool,
    /// Compiles collections' schemas for the store, once per version.
    pub schemas: Arc<meridian_schema::Compiler>,
    /// Where clients reach other nodes, by node id, when not at their peer URLs.
    pub public_urls: Arc<HashMap<String, String>>,
}

impl AppState {
    /// A node without peers.
    pub fn new(store: Store, region: &str, limits: Limits) -> Self {
        Self::clustered(store, region, limits, SyncConfig::new(vec![]), None)
            .expect("a replica without peers has no bookkeeping to fail on")
    }

    /// A node with peers over plain HTTP (replication is started by the node (`meridian-node`), or by the
    /// caller). Needs a tokio runtime: the sync hub follows the store's changes on a task.
    pub fn clustered(
        store: Store,
        region: &str,
        limits: Limits,
        sync: SyncConfig,
        secret: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::clustered_tls(store, region, limits, sync, secret, PeerTls::default())
    }

    /// The same, with TLS between regions.
    pub fn clustered_tls(
        store: Store,
        region: &str,
        limits: Limits,
        sync: SyncConfig,
        secret: Option<&str>,
        peer_tls: PeerTls,
    ) -> anyhow::Result<Self> {
        let faults = Arc::new(Faults::default());
        let workers = Workers::new();
        let schemas = Arc::new(meridian_schema::Compiler::default());
        store.set_contracts(schemas.clone());
        let transport = HttpTransport::new(
            secret.unwrap_or(""),
            store.node_id().as_str(),
            faults.clone(),
            &peer_tls,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(AppState(Arc::new(Shared {
            peer_tls: Arc::new(peer_tls),
            tls: false,
            schemas,
            public_urls: Arc::default(),
            faults,
            fault_controls: false,
            replica: Replica::new(store.clone(), transport, sync, &workers)?,
            hub: Hub::start(store.clone(), SyncLimits::default(), &workers),
            changes: ChangeStreams::start(store.clone(), StreamLimits::default(), &workers),
            workers,
            store,
            cluster_secret: secret.map(Into::into),
            region: region.into(),
            limits: Arc::new(limits),
            metrics: Arc::new(Metrics::default()),
            auth: Arc::new(Auth::open()),
        })))
    }

    /// The same node with other limits for sync clients.
    pub fn with_client_limits(mut self, limits: SyncLimits) -> Self {
        let hub = Hub::start(self.store.clone(), limits, &self.workers);
        self.shared().hub = hub;
        self
    }

    /// The same node with other limits for change streams.
    pub fn with_stream_limits(mut self, limits: StreamLimits) -> Self {
        let changes = ChangeStreams::start(self.store.clone(), limits, &self.workers);
        self.shared().changes = changes;
        self
    }

    /// The same node with these API keys.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.shared().auth = Arc::new(auth);
        self
    }

    /// The same node with `/internal/faults` (demos and tests only).
    pub fn with_fault_controls(mut self) -> Self {
        self.shared().fault_controls = true;
        self
    }

    /// The same node, serving HTTPS (what `/v1/status` says).
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.shared().tls = tls;
        self
    }

    /// The same node, telling clients these URLs (`--peer-public-url`) for other nodes.
    pub fn with_public_urls(mut self, urls: &[Peer]) -> Self {
        self.shared().public_urls = Arc::new(
            urls.iter()
                .map(|p| (p.id.as_str().to_owned(), p.addr.clone()))
                .collect(),
        );
        self
    }

    /// For the builders above, before the state is shared.
    fn shared(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// The URL of a peer, to tell a client where the data is: its public URL if one is set,
    /// else the one this node reaches it at.
    pub(crate) fn peer_url(&self, id: &str) -> Option<String> {
        let public = self.public_urls.get(id).cloned();
        public.or_else(|| self.replica.peer_url(id))
    }
}
