//! Configuration: flags, then environment variables, then the config file, then defaults.
//!
//! Every setting is one field of [`ServeArgs`], which is both the command line (flag
//! `--cache-mb`, variable `MERIDIAN_CACHE_MB`) and the config file (key `cache_mb`); and one
//! field of [`Settings`], whose defaults come from the crates that use them (the store's, the
//! replica's, the server's), so each default is written once. [`Settings::validate`] checks them
//! together; the settings of each part are derived from it in one place.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use meridian_crdt::StoreConfig;
use meridian_sync::repo::SyncLimits;
use meridian_sync::{FeedMode, Peer, SyncConfig};
use serde::Deserialize;

use crate::changes::FeedLimits;
use crate::state::Limits;

#[derive(Debug, Parser)]
#[command(
    name = "meridian",
    version,
    about = "A geo-replicated CRDT document database"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Run three regions (us, eu, ap) on this machine and a web page that shows them.
    Demo(crate::demo::DemoArgs),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Make a development CA and node certificates (for tests and demos).
    Cert(crate::cert::CertArgs),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random key (once) and the entry to add to the auth file.
    Create(crate::auth::KeyArgs),
}

/// A node's settings as given. Every field is optional, so that the config file can fill what
/// the command line and the environment leave out.
#[derive(Debug, Args, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// A TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "MERIDIAN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This node's id (1-16 of A-Z a-z 0-9 . _ -). Default: generated once, kept in the data dir.
    #[arg(long, env = "MERIDIAN_NODE_ID")]
    pub node_id: Option<String>,
    /// The region this node serves. Default: local.
    #[arg(long, env = "MERIDIAN_REGION")]
    pub region: Option<String>,
    /// Address to listen on. Default: 127.0.0.1:7070.
    #[arg(long, env = "MERIDIAN_LISTEN")]
    pub listen: Option<String>,
    /// Where data lives. Default: ./meridian-data.
    #[arg(long, env = "MERIDIAN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Byte budget of the document cache, in MiB. Default: 256.
    #[arg(long, env = "MERIDIAN_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Largest request body, in bytes. Default: 1048576.
    #[arg(long, env = "MERIDIAN_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Requests in flight before 503 overloaded. Default: 1024.
    #[arg(long, env = "MERIDIAN_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Request timeout in milliseconds. Default: 10000.
    #[arg(long, env = "MERIDIAN_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// A peer node, as ID=URL (repeat for each; full mesh, static membership).
    #[arg(long = "peer", env = "MERIDIAN_PEERS", value_delimiter = ',')]
    #[serde(default)]
    pub peers: Vec<String>,
    /// Where clients reach a node, as ID=URL (repeat for each; the same list on every node may
    /// name this node too): the `url` a 503 session_unavailable names. Default: the node's
    /// --peer URL, which on a private network between regions clients cannot reach.
    #[arg(
        long = "peer-public-url",
        env = "MERIDIAN_PEER_PUBLIC_URLS",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub peer_public_urls: Vec<String>,
    /// The secret every node of the cluster shares; required with --peer.
    #[arg(long, env = "MERIDIAN_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Longest a request with a session token waits for this node to catch up, in
    /// milliseconds. Default: 1000.
    #[arg(long, env = "MERIDIAN_SESSION_WAIT_MS")]
    pub session_wait_ms: Option<u64>,
    /// Seconds between anti-entropy passes with each peer. Default: 30.
    #[arg(long, env = "MERIDIAN_ANTI_ENTROPY_SECS")]
    pub anti_entropy_secs: Option<u64>,
    /// Seconds this node's feed keeps changes a peer has not read; a peer away longer catches
    /// up by anti-entropy. Default: 86400.
    #[arg(long, env = "MERIDIAN_FEED_RETENTION_SECS")]
    pub feed_retention_secs: Option<u64>,
    /// Largest clock drift accepted in a peer's change stamps, in milliseconds. Default: 500.
    #[arg(long, env = "MERIDIAN_MAX_DRIFT_MS")]
    pub max_drift_ms: Option<u64>,
    /// How to follow peers' feeds: `stream` (one open answer, a frame per batch) or
    /// `long-poll` (a request per batch). Default: stream.
    #[arg(long, env = "MERIDIAN_FEED_MODE")]
    pub feed_mode: Option<String>,
    /// Sync (WebSocket) connections this node accepts at once. Default: 10000.
    #[arg(long, env = "MERIDIAN_SYNC_MAX_CONNECTIONS")]
    pub sync_max_connections: Option<usize>,
    /// Documents one sync connection may have open. Default: 10000.
    #[arg(long, env = "MERIDIAN_SYNC_MAX_DOCUMENTS")]
    pub sync_max_documents: Option<usize>,
    /// Largest sync message a client may send, in bytes. Default: 16777216.
    #[arg(long, env = "MERIDIAN_SYNC_MAX_MESSAGE_BYTES")]
    pub sync_max_message_bytes: Option<usize>,
    /// Change-feed (Server-Sent Events) streams this node serves at once. Default: 10000.
    #[arg(long, env = "MERIDIAN_CHANGES_MAX_STREAMS")]
    pub changes_max_streams: Option<usize>,
    /// Events a change stream may fall behind before it is closed (the client resumes).
    /// Default: 1000.
    #[arg(long, env = "MERIDIAN_CHANGES_BUFFER")]
    pub changes_buffer: Option<usize>,
    /// Write batches whose change events are kept for resuming streams. Default: 100000.
    #[arg(long, env = "MERIDIAN_CHANGES_RETENTION")]
    pub changes_retention: Option<u64>,
    /// Milliseconds between keep-alive comments on an idle change stream. Default: 15000.
    #[arg(long, env = "MERIDIAN_CHANGES_KEEP_ALIVE_MS")]
    pub changes_keep_alive_ms: Option<u64>,
    /// Serve `/internal/faults`, behind the cluster secret: cut this node's links to named
    /// peers, heal them, pause the node. For demos and tests (`meridian demo` sets it).
    /// Default: false.
    #[arg(long, env = "MERIDIAN_FAULT_CONTROLS", num_args = 0..=1, default_missing_value = "true")]
    pub fault_controls: Option<bool>,
    /// API keys and what each may do (TOML; see docs/security.md). Re-read on SIGHUP.
    /// Without it, the node serves only on a loopback address.
    #[arg(long, env = "MERIDIAN_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve without API keys on a non-loopback address: anyone who reaches the port may read,
    /// change and delete everything. Default: false.
    #[arg(long, env = "MERIDIAN_INSECURE_NO_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub insecure_no_auth: Option<bool>,
    /// This node's certificate chain (PEM): the node serves HTTPS only. Re-read on SIGHUP.
    #[arg(long, env = "MERIDIAN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM). Re-read on SIGHUP.
    #[arg(long, env = "MERIDIAN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that peers' certificates chain to: `https://` peers are verified against it,
    /// and so are the client certificates peers present.
    #[arg(long, env = "MERIDIAN_PEER_CA")]
    pub peer_ca: Option<PathBuf>,
    /// This node's client certificate (PEM) for peers: mutual TLS.
    #[arg(long, env = "MERIDIAN_PEER_CLIENT_CERT")]
    pub peer_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "MERIDIAN_PEER_CLIENT_KEY")]
    pub peer_client_key: Option<PathBuf>,
    /// Refuse peers (`/internal/`) that present no client certificate from --peer-ca.
    /// Default: false.
    #[arg(long, env = "MERIDIAN_REQUIRE_PEER_CERT", num_args = 0..=1, default_missing_value = "true")]
    pub require_peer_cert: Option<bool>,
}

/// A node's settings, resolved. [`Settings::default`] holds every default.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_id: Option<String>,
    pub region: String,
    pub listen: String,
    pub data_dir: PathBuf,
    pub cache_mb: u64,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub request_timeout_ms: u64,
    pub peers: Vec<Peer>,
    /// Where clients reach nodes, when not at their peer URLs.
    pub peer_public_urls: Vec<Peer>,
    pub cluster_secret: Option<String>,
    pub session_wait_ms: u64,
    pub anti_entropy_secs: u64,
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
        let sync = SyncConfig::new(vec![]);
        let limits = Limits::default();
        let clients = SyncLimits::default();
        let feed = FeedLimits::default();
        Settings {
            node_id: None,
            region: "local".into(),
            listen: "127.0.0.1:7070".into(),
            data_dir: store.path,
            cache_mb: store.cache_bytes >> 20,
            max_body_bytes: limits.max_body,
            max_in_flight: limits.max_in_flight,
            request_timeout_ms: limits.request_timeout.as_millis() as u64,
            peers: vec![],
            peer_public_urls: vec![],
            cluster_secret: None,
            session_wait_ms: limits.session_wait.as_millis() as u64,
            anti_entropy_secs: sync.anti_entropy_every.as_secs(),
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

/// `ID=URL`, with an http or https URL; `flag` names the setting in errors.
fn parse_peer(flag: &str, s: &str) -> anyhow::Result<Peer> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("{flag} {s:?} must be ID=URL"))?;
    let id = meridian_crdt::NodeId::new(id).map_err(|e| anyhow::anyhow!("{flag} {s:?}: {e}"))?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    anyhow::ensure!(
        rest.is_some_and(|r| !r.is_empty()),
        "{flag} {s:?}: the URL must start with http:// or https://"
    );
    Ok(Peer {
        id,
        addr: url.trim_end_matches('/').to_owned(),
    })
}

fn parse_feed_mode(s: &str) -> anyhow::Result<FeedMode> {
    match s {
        "stream" => Ok(FeedMode::Stream),
        "long-poll" => Ok(FeedMode::LongPoll),
        other => anyhow::bail!("feed_mode {other:?} must be stream or long-poll"),
    }
}

impl ServeArgs {
    /// The flags (and environment) over the config file over the defaults, validated.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        let d = Settings::default();
        // for each setting: the flag, else the file, else the default
        macro_rules! pick {
            ($field:ident) => {
                self.$field.or(file.$field).unwrap_or(d.$field)
            };
        }
        let peers = if self.peers.is_empty() {
            file.peers
        } else {
            self.peers
        };
        let public_urls = if self.peer_public_urls.is_empty() {
            file.peer_public_urls
        } else {
            self.peer_public_urls
        };
        let s = Settings {
            node_id: self.node_id.or(file.node_id),
            peer_public_urls: public_urls
                .iter()
                .map(|p| parse_peer("--peer-public-url", p))
                .collect::<anyhow::Result<_>>()?,
            cluster_secret: self.cluster_secret.or(file.cluster_secret),
            peers: peers
                .iter()
                .map(|p| parse_peer("--peer", p))
                .collect::<anyhow::Result<_>>()?,
            feed_mode: match self.feed_mode.or(file.feed_mode) {
                Some(m) => parse_feed_mode(&m)?,
                None => d.feed_mode,
            },
            region: pick!(region),
            listen: pick!(listen),
            data_dir: pick!(data_dir),
            cache_mb: pick!(cache_mb),
            max_body_bytes: pick!(max_body_bytes),
            max_in_flight: pick!(max_in_flight),
            request_timeout_ms: pick!(request_timeout_ms),
            session_wait_ms: pick!(session_wait_ms),
            anti_entropy_secs: pick!(anti_entropy_secs),
            feed_retention_secs: pick!(feed_retention_secs),
            max_drift_ms: pick!(max_drift_ms),
            sync_max_connections: pick!(sync_max_connections),
            sync_max_documents: pick!(sync_max_documents),
            sync_max_message_bytes: pick!(sync_max_message_bytes),
            changes_max_streams: pick!(changes_max_streams),
            changes_buffer: pick!(changes_buffer),
            changes_retention: pick!(changes_retention),
            changes_keep_alive_ms: pick!(changes_keep_alive_ms),
            fault_controls: pick!(fault_controls),
            auth_file: self.auth_file.or(file.auth_file),
            insecure_no_auth: pick!(insecure_no_auth),
            tls_cert: self.tls_cert.or(file.tls_cert),
            tls_key: self.tls_key.or(file.tls_key),
            peer_ca: self.peer_ca.or(file.peer_ca),
            peer_client_cert: self.peer_client_cert.or(file.peer_client_cert),
            peer_client_key: self.peer_client_key.or(file.peer_client_key),
            require_peer_cert: pick!(require_peer_cert),
        };
        s.validate()?;
        Ok(s)
    }
}

impl Settings {
    /// Checks the settings together.
    pub fn validate(&self) -> anyhow::Result<()> {
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
        meridian_crdt::validate_name("region", &self.region)
            .map_err(|e| anyhow::anyhow!("invalid region: {e}"))?;
        for (name, value) in [
            ("anti_entropy_secs", self.anti_entropy_secs as usize),
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
        c.max_drift = Duration::from_millis(self.max_drift_ms);
        c
    }

    pub fn replication(&self) -> SyncConfig {
        let mut c = SyncConfig::new(self.peers.clone());
        c.anti_entropy_every = Duration::from_secs(self.anti_entropy_secs);
        c.feed_retention = Duration::from_secs(self.feed_retention_secs);
        c.feed_mode = self.feed_mode;
        c
    }

    pub fn peer_tls(&self) -> crate::tls::PeerTls {
        crate::tls::PeerTls {
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

    pub fn feed(&self) -> FeedLimits {
        FeedLimits {
            max_streams: self.changes_max_streams,
            buffer: self.changes_buffer,
            retention: self.changes_retention,
            keep_alive: Duration::from_millis(self.changes_keep_alive_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "region = \"eu\"\nlisten = \"127.0.0.1:1\"\ncache_mb = 8\nsync_max_documents = 5\n",
        )
        .unwrap();
        let c = ServeArgs {
            config: Some(path.clone()),
            listen: Some("0.0.0.0:9".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.region, "eu");
        assert_eq!(c.listen, "0.0.0.0:9");
        assert_eq!(c.cache_mb, 8);
        assert_eq!(c.max_in_flight, 1024);
        assert_eq!(c.clients().max_docs_per_connection, 5);
        assert_eq!(c.store().cache_bytes, 8 << 20);

        std::fs::write(&path, "regoin = \"eu\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("invalid config file"), "{err}");
        // the file cannot name another config file
        std::fs::write(&path, "config = \"x.toml\"\n").unwrap();
        assert!(ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .is_err());
        let err = ServeArgs {
            node_id: Some("a/b".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("node id"), "{err}");
        let err = ServeArgs {
            sync_max_connections: Some(0),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("sync_max_connections"), "{err}");
        for bad in [0, 100 * 365 * 86_400] {
            let err = ServeArgs {
                feed_retention_secs: Some(bad),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains("feed_retention_secs"), "{err}");
        }
    }

    #[test]
    fn the_defaults_are_the_parts_defaults() {
        let s = ServeArgs::default().resolve().unwrap();
        assert_eq!(s.limits().max_body, Limits::default().max_body);
        assert_eq!(s.store().cache_bytes, StoreConfig::new("x").cache_bytes);
        assert_eq!(
            s.replication().anti_entropy_every,
            SyncConfig::new(vec![]).anti_entropy_every
        );
        assert_eq!(
            s.replication().feed_retention,
            SyncConfig::new(vec![]).feed_retention
        );
        assert_eq!(
            s.clients().max_message_bytes,
            SyncLimits::default().max_message_bytes
        );
        assert_eq!(s.listen, "127.0.0.1:7070");
    }

    #[test]
    fn peers_need_a_secret_an_id_and_valid_urls() {
        let args = |peers: &[&str], secret: Option<&str>, id: Option<&str>| ServeArgs {
            peers: peers.iter().map(|s| s.to_string()).collect(),
            cluster_secret: secret.map(str::to_owned),
            node_id: id.map(str::to_owned),
            ..Default::default()
        };
        let ok = args(
            &["us=http://127.0.0.1:1/"],
            Some("s3cret-s3cret"),
            Some("eu"),
        )
        .resolve()
        .unwrap();
        assert_eq!(ok.peers[0].addr, "http://127.0.0.1:1");
        for (a, wanted) in [
            (args(&["us=http://h"], None, Some("eu")), "cluster-secret"),
            (
                args(&["us=http://h"], Some("short"), Some("eu")),
                "cluster-secret",
            ),
            (
                args(&["us=http://h"], Some("s3cret-s3cret"), None),
                "node-id",
            ),
            (args(&["us"], Some("s3cret-s3cret"), Some("eu")), "ID=URL"),
            (
                args(&["us=ftp://h"], Some("s3cret-s3cret"), Some("eu")),
                "http:// or https://",
            ),
            (
                args(&["us=https://h"], Some("s3cret-s3cret"), Some("eu")),
                "--peer-ca",
            ),
            (
                ServeArgs {
                    tls_cert: Some("c.pem".into()),
                    ..Default::default()
                },
                "go together",
            ),
            (
                ServeArgs {
                    require_peer_cert: Some(true),
                    ..Default::default()
                },
                "--require-peer-cert needs",
            ),
            (
                ServeArgs {
                    peer_client_cert: Some("c.pem".into()),
                    peer_client_key: Some("c.key".into()),
                    ..Default::default()
                },
                "needs --peer-ca",
            ),
            (
                args(&["u/s=http://h"], Some("s3cret-s3cret"), Some("eu")),
                "node id",
            ),
            (
                args(&["eu=http://h"], Some("s3cret-s3cret"), Some("eu")),
                "own id",
            ),
            (
                args(
                    &["us=http://h", "us=http://i"],
                    Some("s3cret-s3cret"),
                    Some("eu"),
                ),
                "twice",
            ),
            (
                ServeArgs {
                    feed_mode: Some("push".into()),
                    ..Default::default()
                },
                "feed_mode",
            ),
        ] {
            let err = a.resolve().unwrap_err().to_string();
            assert!(err.contains(wanted), "{err} should mention {wanted}");
        }
    }
    #[test]
    fn public_urls_name_this_node_or_a_peer_once_each() {
        let args = |public: &[&str]| ServeArgs {
            peers: vec!["us=http://10.0.0.2:7070".into()],
            peer_public_urls: public.iter().map(|s| s.to_string()).collect(),
            cluster_secret: Some("s3cret-s3cret".into()),
            node_id: Some("eu".into()),
            ..Default::default()
        };
        // the same list on every node: this node's own entry is allowed
        let ok = args(&["us=https://us.example.com/", "eu=https://eu.example.com"])
            .resolve()
            .unwrap();
        assert_eq!(ok.peer_public_urls[0].addr, "https://us.example.com");
        assert_eq!(ok.peers[0].addr, "http://10.0.0.2:7070");
        for (public, wanted) in [
            (
                &["ap=https://ap.example.com"][..],
                "neither this node nor a --peer",
            ),
            (&["us=https://a", "us=https://b"][..], "twice"),
            (&["us=ftp://h"][..], "http:// or https://"),
            (&["us"][..], "ID=URL"),
        ] {
            let err = args(public).resolve().unwrap_err().to_string();
            assert!(err.contains(wanted), "{err} should mention {wanted}");
        }
    }
}
