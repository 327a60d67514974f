//! `meridian drain URL`: tells a running node to drain and stop (`POST /v1/_drain`, admin), as
//! SIGTERM does where the process can be signalled.

use std::time::Duration;

/// `meridian drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node's base URL, for example http://127.0.0.1:7070.
    pub url: String,
    /// An API key with admin access on "*" (or MERIDIAN_API_KEY).
    #[arg(long, env = "MERIDIAN_API_KEY")]
    pub api_key: Option<String>,
}

impl DrainArgs {
    /// The node's answer, or why there was none.
    pub async fn run(self) -> anyhow::Result<String> {
        let (url, req) = crate::admin::request(
            reqwest::Method::POST,
            &self.url,
            "/v1/_drain",
            self.api_key.as_deref(),
        )?;
        let resp = req
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        anyhow::ensure!(status.is_success(), "{url}: {status}: {body}");
        Ok(body)
    }
}
