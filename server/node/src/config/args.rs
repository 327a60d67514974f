//! The command line, the environment and the config file, as given, and how they resolve into
//! [`Settings`]: the flag, else the file, else the default.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use meridian_sync::{FeedMode, Peer};
use serde::Deserialize;

use super::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "meridian",
    version,
    about = "A geo-replicated CRDT document database"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines are written to stderr: `text`, or `json` (one object per line, with the
    /// request's trace_id and span_id; see docs/design.md, Tracing).
    #[arg(
        long,
        global = true,
        env = "MERIDIAN_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// Export each request's span over OTLP/HTTP to this collector (for example
    /// http://127.0.0.1:4318); off when absent. See docs/replication.md, Tracing.
    #[arg(long, global = true, env = "MERIDIAN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
    /// Check a stopped node's write-ahead log, and repair it when that loses nothing.
    Repair(crate::repair::RepairArgs),
    /// Tell a running node to drain (send its clients to other regions) and stop.
    Drain(crate::drain::DrainArgs),
    /// Copy a running node's documents to a directory, while it serves.
    Backup(crate::backup::BackupArgs),
    /// Make a new node's data dir from a backup, under a new node id.
    Restore(crate::backup::RestoreArgs),
    /// Add or remove a region while every node runs, or list them.
    #[command(subcommand)]
    Region(crate::region::RegionCommand),
    /// Limit a collection to some regions, or show where collections live.
    #[command(subcommand)]
    Placement(crate::placement::PlacementCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random key (once) and the entry to add to the auth file.
    Create(crate::keys::KeyArgs),
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
    /// MiB kept free on the data dir's filesystem: below it new data is refused (507) until
    /// space is freed. Default: the smaller of 256 MiB and 5% of the filesystem.
    #[arg(long, env = "MERIDIAN_MIN_FREE_MB")]
    pub min_free_mb: Option<u64>,
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
    /// Documents the background scrub checks per second at most, from disk, against their
    /// checksums (0: no scrub; damage is still found when a document is loaded). Default: 100.
    #[arg(long, env = "MERIDIAN_SCRUB_PER_SECOND")]
    pub scrub_per_second: Option<u32>,
    /// Seconds from the start of one scrub pass over every document to the next. Default: 3600.
    #[arg(long, env = "MERIDIAN_SCRUB_EVERY_SECS")]
    pub scrub_every_secs: Option<u64>,
    /// Seconds a node that is told to stop (SIGTERM, `POST /v1/_drain`) drains first: ready goes
    /// 503, sync clients and change streams are sent to other regions, requests are served on;
    /// it stops once no request has come for a second, or at this deadline. Default: 0 (stop at
    /// once).
    #[arg(long, env = "MERIDIAN_DRAIN_SECS")]
    pub drain_secs: Option<u64>,
    /// The newest replication protocol version this node speaks (2 or 3): 2 keeps it on the
    /// previous release's protocol (what its peers see of it is then exactly what that release
    /// sends). Default: 3, the newest; links to older peers use the newest both speak anyway.
    #[arg(long, env = "MERIDIAN_PROTOCOL_MAX")]
    pub protocol_max: Option<u8>,
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
            min_free_mb: self.min_free_mb.or(file.min_free_mb),
            max_body_bytes: pick!(max_body_bytes),
            max_in_flight: pick!(max_in_flight),
            request_timeout_ms: pick!(request_timeout_ms),
            session_wait_ms: pick!(session_wait_ms),
            anti_entropy_secs: pick!(anti_entropy_secs),
            scrub_per_second: pick!(scrub_per_second),
            scrub_every_secs: pick!(scrub_every_secs),
            drain_secs: pick!(drain_secs),
            protocol_max: pick!(protocol_max),
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
