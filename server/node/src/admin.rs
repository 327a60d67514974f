//! Calls the one-shot commands (`meridian drain`, `meridian backup`, `meridian region`) make to
//! a running node's admin endpoints.

use std::path::PathBuf;
use std::time::Duration;

/// How a one-shot command reaches a node's admin endpoints.
#[derive(Debug, Clone, clap::Args)]
pub struct Admin {
    /// An API key with admin access on "*" (or MERIDIAN_API_KEY).
    #[arg(long, env = "MERIDIAN_API_KEY")]
    pub api_key: Option<String>,
    /// For an https:// node: the CA certificate (PEM) its certificate is checked against (or
    /// MERIDIAN_CA_CERT).
    #[arg(long, env = "MERIDIAN_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

/// A request to `base` + `path` with the admin key as the bearer (if given); also returns the
/// URL, for error messages.
pub(crate) fn request(
    method: reqwest::Method,
    base: &str,
    path: &str,
    admin: &Admin,
) -> anyhow::Result<(String, reqwest::RequestBuilder)> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    // no total timeout: a backup streams for as long as it takes
    let mut client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .use_rustls_tls();
    if let Some(ca) = &admin.ca_cert {
        let pem = std::fs::read(ca)
            .map_err(|e| anyhow::anyhow!("cannot read --ca-cert {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("--ca-cert {}: {e}", ca.display()))?;
        client = client.add_root_certificate(cert);
    }
    let mut req = client.build()?.request(method, &url);
    if let Some(k) = &admin.api_key {
        req = req.bearer_auth(k);
    }
    Ok((url, req))
}

/// Sends `req` (to `url`) within `timeout`: the answer's body on success, else an error naming
/// the URL, the status and the body.
pub(crate) async fn send(
    url: &str,
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> anyhow::Result<String> {
    let resp = req
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{url}: {status}: {body}");
    Ok(body)
}
