//! What every handler shares: the store, replication, the sync hub, limits and metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_crdt::Store;
use meridian_sync::repo::{Hub, SyncLimits};
use meridian_sync::{Peer, Replica, ReplicationConfig, Workers};

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
    /// Whether the node is draining before it stops (`crate::drain`).
    pub drain: Arc<crate::drain::Drain>,
}

/// What an [`AppState`] is made of, for [`AppState::build`].
#[derive(Debug)]
pub struct Options {
    pub region: String,
    pub limits: Limits,
    pub replication: ReplicationConfig,
    /// Required on `/internal/`; `None` refuses every internal request.
    pub cluster_secret: Option<String>,
    pub peer_tls: PeerTls,
    pub client_limits: SyncLimits,
    pub stream_limits: StreamLimits,
    pub auth: Auth,
    /// This node serves HTTPS (what `/v1/status` says).
    pub tls: bool,
    /// Where clients reach other nodes (`--peer-public-url`), when not at their peer URLs.
    pub public_urls: Vec<Peer>,
    /// `/internal/faults` exists (demos and tests only).
    pub fault_controls: bool,
}

impl Options {
    /// A node of `region` without peers, keys or TLS, with default limits.
    pub fn new(region: &str) -> Self {
        Options {
            region: region.to_owned(),
            limits: Limits::default(),
            replication: ReplicationConfig::new(vec![]),
            cluster_secret: None,
            peer_tls: PeerTls::default(),
            client_limits: SyncLimits::default(),
            stream_limits: StreamLimits::default(),
            auth: Auth::open(),
            tls: false,
            public_urls: Vec::new(),
            fault_controls: false,
        }
    }
}

impl AppState {
    /// Builds the node's state, starting each part once: the replica (not yet following its
    /// peers: see `Replica::start`), the client-sync hub and the change streams, on one
    /// [`Workers`]. Needs a tokio runtime.
    pub fn build(store: Store, o: Options) -> anyhow::Result<Self> {
        let faults = Arc::new(Faults::default());
        let workers = Workers::new();
        let schemas = Arc::new(meridian_schema::Compiler::default());
        store.set_contracts(schemas.clone());
        let transport = HttpTransport::new(
            o.cluster_secret.as_deref().unwrap_or(""),
            store.node_id().as_str(),
            faults.clone(),
            &o.peer_tls,
        )
        .map_err(anyhow::Error::msg)?;
        let public_urls = o
            .public_urls
            .iter()
            .map(|p| (p.id.as_str().to_owned(), p.addr.clone()))
            .collect();
        Ok(AppState(Arc::new(Shared {
            peer_tls: Arc::new(o.peer_tls),
            tls: o.tls,
            schemas,
            public_urls: Arc::new(public_urls),
            drain: Arc::default(),
            faults,
            fault_controls: o.fault_controls,
            replica: Replica::new(store.clone(), transport, o.replication, &workers)?,
            hub: Hub::start(store.clone(), o.client_limits, &workers),
            changes: ChangeStreams::start(store.clone(), o.stream_limits, &workers),
            workers,
            store,
            cluster_secret: o.cluster_secret.map(Into::into),
            region: o.region.into(),
            limits: Arc::new(o.limits),
            metrics: Arc::new(Metrics::default()),
            auth: Arc::new(o.auth),
        })))
    }

    /// A node without peers.
    pub fn new(store: Store, region: &str, limits: Limits) -> Self {
        Self::build(
            store,
            Options {
                limits,
                ..Options::new(region)
            },
        )
        .expect("a node without peers has no bookkeeping to fail on")
    }

    /// A node with peers over plain HTTP (replication is started by the node, `meridian-node`,
    /// or by the caller).
    pub fn clustered(
        store: Store,
        region: &str,
        limits: Limits,
        sync: ReplicationConfig,
        secret: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::build(
            store,
            Options {
                limits,
                replication: sync,
                cluster_secret: secret.map(Into::into),
                ..Options::new(region)
            },
        )
    }

    /// The same node with these API keys.
    pub fn with_auth(mut self, auth: Auth) -> Self {
        self.shared().auth = Arc::new(auth);
        self
    }

    /// For the builder above, before the state is shared.
    fn shared(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }

    /// Starts draining: `/readyz` goes 503, sync connections are told to go and change streams
    /// end, and new ones are refused naming a peer. `false` if it had started already.
    pub fn start_drain(&self) -> bool {
        if !self.drain.start() {
            return false;
        }
        tracing::info!("draining: sync clients and change streams are sent to other regions");
        self.hub.shutdown();
        self.changes.shutdown();
        true
    }

    /// 503 `draining`, naming where to go instead (if the node has peers).
    pub(crate) fn draining_error(&self) -> crate::ApiError {
        let node = self.replica.elsewhere();
        let url = node.as_deref().and_then(|n| self.peer_url(n));
        crate::ApiError::Draining { node, url }
    }

    /// The URL of a peer, to tell a client where the data is: its public URL if one is set,
    /// else the one this node reaches it at.
    pub(crate) fn peer_url(&self, id: &str) -> Option<String> {
        let public = self.public_urls.get(id).cloned();
        public.or_else(|| self.replica.peer_url(id))
    }
}
