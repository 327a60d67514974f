//! `meridian drain URL`: tells a running node to drain and stop (`POST /v1/_drain`, admin), as
//! SIGTERM does where the process can be signalled.

use std::time::Duration;

/// `meridian drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node's base URL, for example http://127.0.0.1:7070.
    pub url: String,
    #[command(flatten)]
    pub admin: crate::admin::Admin,
}

impl DrainArgs {
    /// The node's answer, or why there was none.
    pub async fn run(self) -> anyhow::Result<String> {
        let (url, req) =
            crate::admin::request(reqwest::Method::POST, &self.url, "/v1/_drain", &self.admin)?;
        crate::admin::send(&url, req, Duration::from_secs(10)).await
    }
}
