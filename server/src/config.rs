//! Configuration: flags, then environment variables, then the config file, then defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

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
    Serve(ServeArgs),
}

/// Every flag is optional here so that the config file can fill what the command line and the
/// environment leave out.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
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
    /// A TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "MERIDIAN_CONFIG")]
    pub config: Option<PathBuf>,
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
    pub peers: Vec<String>,
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
    /// Largest clock drift accepted in a peer's change stamps, in milliseconds. Default: 500.
    #[arg(long, env = "MERIDIAN_MAX_DRIFT_MS")]
    pub max_drift_ms: Option<u64>,
    /// How to follow peers' feeds: `stream` (one open answer, a frame per batch) or
    /// `long-poll` (a request per batch). Default: stream.
    #[arg(long, env = "MERIDIAN_FEED_MODE")]
    pub feed_mode: Option<String>,
}

/// The config file's keys: the same settings as the flags.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<String>,
    region: Option<String>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    cache_mb: Option<u64>,
    max_body_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    request_timeout_ms: Option<u64>,
    #[serde(default)]
    peers: Vec<String>,
    cluster_secret: Option<String>,
    session_wait_ms: Option<u64>,
    anti_entropy_secs: Option<u64>,
    max_drift_ms: Option<u64>,
    feed_mode: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: Option<String>,
    pub region: String,
    pub listen: String,
    pub data_dir: PathBuf,
    pub cache_mb: u64,
    pub max_body_bytes: usize,
    pub max_in_flight: usize,
    pub request_timeout_ms: u64,
    pub peers: Vec<meridian_sync::Peer>,
    pub cluster_secret: Option<String>,
    pub session_wait_ms: u64,
    pub anti_entropy_secs: u64,
    pub max_drift_ms: u64,
    pub feed_mode: meridian_sync::FeedMode,
}

/// `ID=URL`, with an http URL.
fn parse_peer(s: &str) -> anyhow::Result<meridian_sync::Peer> {
    let (id, url) = s
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("peer {s:?} must be ID=URL"))?;
    let id = meridian_crdt::NodeId::new(id).map_err(|e| anyhow::anyhow!("peer {s:?}: {e}"))?;
    anyhow::ensure!(
        url.starts_with("http://") && url.len() > "http://".len(),
        "peer {s:?}: the URL must start with http://"
    );
    Ok(meridian_sync::Peer {
        id,
        addr: url.trim_end_matches('/').to_owned(),
    })
}

impl ServeArgs {
    pub fn resolve(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!("cannot read config file {}: {e}", path.display())
                })?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let c = Config {
            node_id: self.node_id.or(file.node_id),
            region: self
                .region
                .or(file.region)
                .unwrap_or_else(|| "local".into()),
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:7070".into()),
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "meridian-data".into()),
            cache_mb: self.cache_mb.or(file.cache_mb).unwrap_or(256),
            max_body_bytes: self
                .max_body_bytes
                .or(file.max_body_bytes)
                .unwrap_or(1 << 20),
            max_in_flight: self.max_in_flight.or(file.max_in_flight).unwrap_or(1024),
            request_timeout_ms: self
                .request_timeout_ms
                .or(file.request_timeout_ms)
                .unwrap_or(10_000),
            peers: if self.peers.is_empty() {
                file.peers
            } else {
                self.peers
            }
            .iter()
            .map(|p| parse_peer(p))
            .collect::<anyhow::Result<_>>()?,
            cluster_secret: self.cluster_secret.or(file.cluster_secret),
            session_wait_ms: self
                .session_wait_ms
                .or(file.session_wait_ms)
                .unwrap_or(1000),
            anti_entropy_secs: self
                .anti_entropy_secs
                .or(file.anti_entropy_secs)
                .unwrap_or(30),
            max_drift_ms: self.max_drift_ms.or(file.max_drift_ms).unwrap_or(500),
            feed_mode: match self.feed_mode.or(file.feed_mode).as_deref() {
                None | Some("stream") => meridian_sync::FeedMode::Stream,
                Some("long-poll") => meridian_sync::FeedMode::LongPoll,
                Some(other) => anyhow::bail!("feed_mode {other:?} must be stream or long-poll"),
            },
        };
        if !c.peers.is_empty() {
            anyhow::ensure!(
                c.cluster_secret.as_deref().is_some_and(|s| s.len() >= 8),
                "--peer needs --cluster-secret (at least 8 characters), shared by every node"
            );
            let me = c.node_id.as_deref().ok_or_else(|| {
                anyhow::anyhow!("--peer needs --node-id: peers know this node by its id")
            })?;
            let mut ids: Vec<&str> = c.peers.iter().map(|p| p.id.as_str()).collect();
            anyhow::ensure!(!ids.contains(&me), "--peer lists this node's own id {me:?}");
            ids.sort();
            ids.dedup();
            anyhow::ensure!(ids.len() == c.peers.len(), "--peer lists a node id twice");
        }
        anyhow::ensure!(
            c.anti_entropy_secs > 0,
            "anti_entropy_secs must be at least 1"
        );
        if let Some(id) = &c.node_id {
            meridian_crdt::NodeId::new(id)?;
        }
        meridian_crdt::validate_name("region", &c.region)
            .map_err(|e| anyhow::anyhow!("invalid region: {e}"))?;
        anyhow::ensure!(c.max_in_flight > 0, "max_in_flight must be at least 1");
        anyhow::ensure!(
            c.request_timeout_ms > 0,
            "request_timeout_ms must be at least 1"
        );
        anyhow::ensure!(c.max_body_bytes > 0, "max_body_bytes must be at least 1");
        Ok(c)
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
            "region = \"eu\"\nlisten = \"127.0.0.1:1\"\ncache_mb = 8\n",
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

        std::fs::write(&path, "regoin = \"eu\"\n").unwrap();
        let err = ServeArgs {
            config: Some(path),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("invalid config file"), "{err}");
        let err = ServeArgs {
            node_id: Some("a/b".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("node id"), "{err}");
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
                "http://",
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
}
