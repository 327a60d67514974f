//! Building a [`Client`]: its regions, retries, timeout, credentials and TLS.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use meridian_sync::SessionToken;
use parking_lot::Mutex;

use super::credentials::{Credentials, TokenProvider};
use super::tls::tls_config;
use super::{Client, Inner, Retry};
use crate::error::{Error, Result};

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    regions: Vec<String>,
    retry: Retry,
    timeout: Duration,
    credentials: Credentials,
    ca_pem: Option<Vec<u8>>,
}

impl ClientBuilder {
    pub(super) fn new(regions: Vec<String>) -> Self {
        ClientBuilder {
            regions,
            retry: Retry::default(),
            timeout: Duration::from_secs(15),
            credentials: Credentials::None,
            ca_pem: None,
        }
    }

    pub fn retry(mut self, r: Retry) -> Self {
        self.retry = r;
        self
    }

    /// The API key for nodes that require one (`meridian key create`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.credentials = Credentials::Key(key.into());
        self
    }

    /// Scoped tokens (JWTs) from the app's backend instead of a key: `provider` is asked for
    /// one at the first request, again 30 s before each one's `exp`, and when a node refuses
    /// one (expired, revoked). A sync connection the node closes at expiry reconnects with a
    /// fresh token; unacknowledged edits stay in the replica and are sent again.
    pub fn token_provider(mut self, provider: impl TokenProvider) -> Self {
        self.credentials = Credentials::tokens(Arc::new(provider));
        self
    }

    /// Trust this CA (PEM) for `https://` regions, instead of the public CAs: a cluster with
    /// its own CA (`meridian cert` makes one for tests and demos).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The longest one try may take (default 15 s: the node's own timeout is 10 s).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn build(self) -> Result<Client> {
        if self.regions.is_empty() {
            return Err(Error::Invalid(
                "a client needs at least one region URL".into(),
            ));
        }
        let mut regions = Vec::new();
        for r in self.regions {
            let r = r.trim_end_matches('/').to_owned();
            let host = r
                .strip_prefix("http://")
                .or_else(|| r.strip_prefix("https://"));
            if host.is_none_or(str::is_empty) {
                return Err(Error::Invalid(format!(
                    "region {r:?}: an http:// or https:// URL"
                )));
            }
            regions.push(r);
        }
        let tls = Arc::new(tls_config(self.ca_pem.as_deref())?);
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(3))
            .use_preconfigured_tls(rustls::ClientConfig::clone(&tls))
            .build()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                regions,
                current: AtomicUsize::new(0),
                token: Mutex::new(SessionToken::default()),
                retry: self.retry,
                credentials: self.credentials,
                tls,
            }),
        })
    }
}
