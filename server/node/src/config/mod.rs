//! Configuration: flags, then environment variables, then the config file, then defaults.
//!
//! Every setting is one field of [`ServeArgs`], which is both the command line (flag
//! `--cache-mb`, variable `MERIDIAN_CACHE_MB`) and the config file (key `cache_mb`); and one
//! field of [`Settings`], whose defaults come from the crates that use them (the store's, the
//! replica's, the server's), so each default is written once. [`Settings::validate`] checks them
//! together; the settings of each part are derived from it in one place.
//!
//! `args`: the command line and config file as given ([`ServeArgs`]) and how they resolve;
//! this module: the resolved [`Settings`], their checks and the parts' settings.

use std::path::PathBuf;
use std::time::Duration;

use meridian_crdt::StoreConfig;
use meridian_sync::repo::SyncLimits;
use meridian_sync::{FeedMode, Peer, ReplicationConfig};

use meridian_http::Limits;
use meridian_http::StreamLimits;

mod args;

pub use args::{Cli, Command, KeyCommand, LogFormat, ServeArgs};

/// A node's settings, resolved. [`Settings::default`] holds every default.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: Option<String>,
    pub region: String,
    pub listen: String,
    pub data_dir: PathBuf,
    pub cache_mb: u64,
    /// `None`: the store's default floor.
    pub min_free_mb: Option<u64>,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub request_timeout_ms: u64,
    pub peers: Vec<Peer>,
    /// Where clients reach nodes, when not at their peer URLs.
    pub peer_public_urls: Vec<Peer>,
    pub cluster_secret: Option<String>,
    pub session_wait_ms: u64,
    pub anti_entropy_secs: u64,
    pub scrub_per_second: u32,
    pub scrub_every_secs: u64,
    /// How long a node told to stop drains first (0: it stops at once).
    pub drain_secs: u64,
    /// The newest replication protocol version this node speaks.
    pub protocol_max: u8,
    pub feed_retention_secs: u64,
    pub max_drift_ms: u64,
    pub feed_mode: FeedMode,
    pub sync_max_connections: usize,
    pub sync_max_documents: usize,
    pub sync_max_message_bytes: usize,
    pub changes_max_streams: usize,
    pub changes_buffer: usize,
    pub changes_retention: u64,
    pub changes_keep_alive_ms: u64,
    pub fault_controls: bool,
    pub auth_file: Option<PathBuf>,
    pub insecure_no_auth: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub peer_ca: Option<PathBuf>,
    pub peer_client_cert: Option<PathBuf>,
    pub peer_client_key: Option<PathBuf>,
    pub require_peer_cert: bool,
}

impl Default for Settings {
    /// The defaults of the parts, as the parts define them.
    fn default() -> Self {
        let store = StoreConfig::new("meridian-data");
        let sync = ReplicationConfig::new(vec![]);
        let limits = Limits::default();
        let clients = SyncLimits::default();
        let feed = StreamLimits::default();
        Settings {
            node_id: None,
            region: "local".into(),
            listen: "127.0.0.1:7070".into(),
            data_dir: store.path,
            cache_mb: store.cache_bytes >> 20,
            min_free_mb: None,
            max_body_bytes: limits.max_body,
            max_in_flight: limits.max_in_flight,
            request_timeout_ms: limits.request_timeout.as_millis() as u64,
            peers: vec![],
            peer_public_urls: vec![],
            cluster_secret: None,
            session_wait_ms: limits.session_wait.as_millis() as u64,
            anti_entropy_secs: sync.anti_entropy_every.as_secs(),
            scrub_per_second: sync.scrub_per_second,
            scrub_every_secs: sync.scrub_every.as_secs(),
            drain_secs: 0,
            protocol_max: sync.versions.newest,
            feed_retention_secs: sync.feed_retention.as_secs(),
            max_drift_ms: store.max_drift.as_millis() as u64,
            feed_mode: sync.feed_mode,
            sync_max_connections: clients.max_connections,
            sync_max_documents: clients.max_docs_per_connection,
            sync_max_message_bytes: clients.max_message_bytes,
            changes_max_streams: feed.max_streams,
            changes_buffer: feed.buffer,
            changes_retention: feed.retention,
            changes_keep_alive_ms: feed.keep_alive.as_millis() as u64,
            fault_controls: false,
            auth_file: None,
            insecure_no_auth: false,
            tls_cert: None,
            tls_key: None,
            peer_ca: None,
            peer_client_cert: None,
            peer_client_key: None,
            require_peer_cert: false,
        }
    }
}

impl Settings {
    /// Checks the settings together.
    pub fn validate(&self) -> anyhow::Result<()> {
        let spoken = meridian_sync::Versions::ALL;
        anyhow::ensure!(
            spoken.speaks(self.protocol_max),
            "--protocol-max {} is not a version this release speaks ({} to {})",
            self.protocol_max,
            spoken.oldest,
            spoken.newest
        );
        if !self.peers.is_empty() {
            anyhow::ensure!(
                self.cluster_secret.as_deref().is_some_and(|s| s.len() >= 8),
                "--peer needs --cluster-secret (at least 8 characters), shared by every node"
            );
            let me = self.node_id.as_deref().ok_or_else(|| {
                anyhow::anyhow!("--peer needs --node-id: peers know this node by its id")
            })?;
            let mut ids: Vec<&str> = self.peers.iter().map(|p| p.id.as_str()).collect();
            anyhow::ensure!(!ids.contains(&me), "--peer lists this node's own id {me:?}");
            ids.sort();
            ids.dedup();
            anyhow::ensure!(
                ids.len() == self.peers.len(),
                "--peer lists a node id twice"
            );
        }
        let mut named: Vec<&str> = vec![];
        for p in &self.peer_public_urls {
            let id = p.id.as_str();
            anyhow::ensure!(
                self.node_id.as_deref() == Some(id) || self.peers.iter().any(|q| q.id == p.id),
                "--peer-public-url names {id:?}, which is neither this node nor a --peer"
            );
            anyhow::ensure!(!named.contains(&id), "--peer-public-url names {id:?} twice");
            named.push(id);
        }
        anyhow::ensure!(
            !self.fault_controls || self.cluster_secret.is_some(),
            "--fault-controls needs --cluster-secret: the controls sit behind it"
        );
        anyhow::ensure!(
            !(self.insecure_no_auth && self.auth_file.is_some()),
            "--insecure-no-auth and --auth-file contradict each other; choose one"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "--tls-cert and --tls-key go together"
        );
        anyhow::ensure!(
            self.peer_client_cert.is_some() == self.peer_client_key.is_some(),
            "--peer-client-cert and --peer-client-key go together"
        );
        anyhow::ensure!(
            !self.require_peer_cert || (self.tls_cert.is_some() && self.peer_ca.is_some()),
            "--require-peer-cert needs --tls-cert and --tls-key (peers present certificates \
             in a TLS handshake) and --peer-ca (to check them against)"
        );
        anyhow::ensure!(
            self.peer_client_cert.is_none() || self.peer_ca.is_some(),
            "--peer-client-cert needs --peer-ca: mutual TLS is TLS to peers first"
        );
        if let Some(p) = self.peers.iter().find(|p| p.addr.starts_with("https://")) {
            anyhow::ensure!(
                self.peer_ca.is_some(),
                "peer {} is https: give --peer-ca, the CA its certificate chains to",
                p.id
            );
        }
        if let Some(id) = &self.node_id {
            meridian_crdt::NodeId::new(id)?;
        }
        // host:port, the host a name or an address: caught here rather than at bind time so
        // that a typo exits 2 like every other bad setting
        let port_ok = self.listen.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && !host.contains(' ') && port.parse::<u16>().is_ok()
        });
        anyhow::ensure!(
            port_ok,
            "--listen {:?} is not host:port (for example 127.0.0.1:7070 or [::]:7070)",
            self.listen
        );
        meridian_crdt::validate_name("region", &self.region)
            .map_err(|e| anyhow::anyhow!("invalid region: {e}"))?;
        for (name, value) in [
            ("anti_entropy_secs", self.anti_entropy_secs as usize),
            ("scrub_every_secs", self.scrub_every_secs as usize),
            ("feed_retention_secs", self.feed_retention_secs as usize),
            ("max_in_flight", self.max_in_flight),
            ("request_timeout_ms", self.request_timeout_ms as usize),
            ("max_body_bytes", self.max_body_bytes),
            ("sync_max_connections", self.sync_max_connections),
            ("sync_max_documents", self.sync_max_documents),
            ("sync_max_message_bytes", self.sync_max_message_bytes),
            ("changes_max_streams", self.changes_max_streams),
            ("changes_buffer", self.changes_buffer),
            ("changes_retention", self.changes_retention as usize),
            ("changes_keep_alive_ms", self.changes_keep_alive_ms as usize),
        ] {
            anyhow::ensure!(value > 0, "{name} must be at least 1");
        }
        // the HLC's 32 bits of seconds bound any window measured on it
        anyhow::ensure!(
            self.feed_retention_secs <= 10 * 365 * 86_400,
            "feed_retention_secs must be at most ten years"
        );
        Ok(())
    }

    pub fn store(&self) -> StoreConfig {
        let mut c = StoreConfig::new(&self.data_dir);
        c.node_id = self.node_id.clone();
        c.cache_bytes = self.cache_mb << 20;
        c.min_free_bytes = self.min_free_mb.map(|mb| mb << 20);
        c.max_drift = Duration::from_millis(self.max_drift_ms);
        c
    }

    pub fn replication(&self) -> ReplicationConfig {
        let mut c = ReplicationConfig::new(self.peers.clone());
        c.anti_entropy_every = Duration::from_secs(self.anti_entropy_secs);
        c.scrub_per_second = self.scrub_per_second;
        c.scrub_every = Duration::from_secs(self.scrub_every_secs);
        c.feed_retention = Duration::from_secs(self.feed_retention_secs);
        c.feed_mode = self.feed_mode;
        c.versions.newest = self.protocol_max;
        c
    }

    pub fn peer_tls(&self) -> meridian_net::tls::PeerTls {
        meridian_net::tls::PeerTls {
            ca: self.peer_ca.clone(),
            identity: self
                .peer_client_cert
                .clone()
                .zip(self.peer_client_key.clone()),
            require_cert: self.require_peer_cert,
        }
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_body: self.max_body_bytes,
            max_in_flight: self.max_in_flight,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            session_wait: Duration::from_millis(self.session_wait_ms),
        }
    }

    pub fn clients(&self) -> SyncLimits {
        SyncLimits {
            max_connections: self.sync_max_connections,
            max_docs_per_connection: self.sync_max_documents,
            max_message_bytes: self.sync_max_message_bytes,
            ..SyncLimits::default()
        }
    }

    pub fn streams(&self) -> StreamLimits {
        StreamLimits {
            max_streams: self.changes_max_streams,
            buffer: self.changes_buffer,
            retention: self.changes_retention,
            keep_alive: Duration::from_millis(self.changes_keep_alive_ms),
        }
    }
}

#[cfg(test)]
mod tests;
