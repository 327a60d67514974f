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
        };
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
}
