//! `meridian placement set COLLECTION REGION...`, `meridian placement clear COLLECTION`,
//! `meridian placement list`: where a collection lives, changed or shown through any running
//! node (`/v1/_placement`, admin).

use std::time::Duration;

use crate::region::NodeArgs;

#[derive(Debug, clap::Subcommand)]
pub enum PlacementCommand {
    /// Limit a collection to some regions: its documents replicate only among them, and the
    /// other regions answer its requests with 421 naming them. Set it before the collection's
    /// first write: a region outside keeps what it received before it learned the placement.
    Set {
        /// The collection.
        collection: String,
        /// The regions (node ids) it lives in: the node asked, or regions it follows.
        #[arg(required = true)]
        regions: Vec<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Send a collection to every region again (the others get its documents by anti-entropy).
    Clear {
        collection: String,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Show the placed collections (the others go to every region).
    List {
        #[command(flatten)]
        node: NodeArgs,
    },
}

impl PlacementCommand {
    /// The node's answer (the placement as it holds it after the change), or why there was none.
    pub async fn run(self) -> anyhow::Result<String> {
        use reqwest::Method;
        let (method, path, node, body) = match &self {
            PlacementCommand::Set {
                collection,
                regions,
                node,
            } => (
                Method::PUT,
                format!("/v1/_placement/{collection}"),
                node,
                Some(serde_json::json!({ "regions": regions })),
            ),
            PlacementCommand::Clear { collection, node } => (
                Method::DELETE,
                format!("/v1/_placement/{collection}"),
                node,
                None,
            ),
            PlacementCommand::List { node } => {
                (Method::GET, "/v1/_placement".to_owned(), node, None)
            }
        };
        let (url, mut req) = crate::admin::request(method, &node.node, &path, &node.admin)?;
        if let Some(body) = body {
            req = req.json(&body);
        }
        crate::admin::send(&url, req, Duration::from_secs(30)).await
    }
}
