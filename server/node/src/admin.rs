//! Calls the one-shot commands (`meridian drain`, `meridian backup`) make to a running node's
//! admin endpoints.

use std::time::Duration;

/// A request to `base` + `path` with `api_key` as the bearer (if given); also returns the URL,
/// for error messages.
pub(crate) fn request(
    method: reqwest::Method,
    base: &str,
    path: &str,
    api_key: Option<&str>,
) -> anyhow::Result<(String, reqwest::RequestBuilder)> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    // no total timeout: a backup streams for as long as it takes
    let mut req = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .build()?
        .request(method, &url);
    if let Some(k) = api_key {
        req = req.bearer_auth(k);
    }
    Ok((url, req))
}
