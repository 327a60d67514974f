//! `meridian region add ID URL`, `meridian region remove ID`, `meridian region list`: change or
//! show the cluster's membership through any running node (`/v1/_regions`, admin).

use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum RegionCommand {
    /// Add a region (or move one to a new URL); every node follows it once the change reaches
    /// it. Start the new region first, with a --peer naming a region already in the cluster.
    Add {
        /// The new region's node id.
        id: String,
        /// Where the other regions reach it, for example http://10.0.0.7:7070.
        url: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Remove a region for good: nobody follows it any more; its id cannot be added again.
    Remove {
        /// The region's node id.
        id: String,
        /// Remove it even if its feed cannot be read to the end first (it is down for good):
        /// what it acknowledged that no region pulled is then lost to the cluster.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show the regions a node follows and the ones removed.
    List {
        #[command(flatten)]
        node: NodeArgs,
    },
}

/// The node the command goes through.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Any running node's base URL.
    #[arg(long, env = "MERIDIAN_NODE", default_value = "http://127.0.0.1:7070")]
    pub node: String,
    #[command(flatten)]
    pub admin: crate::admin::Admin,
}

impl RegionCommand {
    /// The node's answer (the membership as it sees it after the change), or why there was none.
    pub async fn run(self) -> anyhow::Result<String> {
        use reqwest::Method;
        let (method, path, node, body) = match &self {
            RegionCommand::Add { id, url, node } => (
                Method::POST,
                "/v1/_regions".to_owned(),
                node,
                Some(serde_json::json!({"id": id, "url": url})),
            ),
            RegionCommand::Remove { id, force, node } => (
                Method::DELETE,
                format!(
                    "/v1/_regions/{id}{}",
                    if *force { "?force=true" } else { "" }
                ),
                node,
                None,
            ),
            RegionCommand::List { node } => (Method::GET, "/v1/_regions".to_owned(), node, None),
        };
        let (url, mut req) = crate::admin::request(method, &node.node, &path, &node.admin)?;
        if let Some(body) = body {
            req = req.json(&body);
        }
        // a removal first reads the region's feed to its end (up to 5 s)
        crate::admin::send(&url, req, Duration::from_secs(30)).await
    }
}
