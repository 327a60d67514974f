//! The HTTP API, typed.
//!
//! - The session token of every answer is merged into the client's (per node, the later time:
//!   Meridian's rule) and sent with every request, so reads never go back in time, whichever
//!   region answers.
//! - Every write carries an idempotency key made once per call and reused on each retry, so a
//!   retried write applies once.
//! - 503 (and 429, 500, 502, 504) and connection errors are retried with exponential backoff and
//!   jitter; a `Retry-After` is honoured. A connection error, or a region that cannot cover the
//!   session, moves the client to the next region of its list (it keeps its token, so
//!   read-your-writes holds across the move).
//!
//! `answers`: the node's answers as types; `tls`: the client's TLS roots.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_crdt::DocKey;
use meridian_sync::SessionToken;
use parking_lot::Mutex;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{http_error, unknown_session_node, Error, Result};

mod answers;
mod builder;
mod credentials;
mod tls;

pub use answers::{Deleted, Doc, Item, Page, Written};
pub use builder::ClientBuilder;
use credentials::Credentials;
pub use credentials::TokenProvider;

const SESSION: &str = "meridian-session";

/// How to retry.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Tries of one call in all (the first included).
    pub attempts: u32,
    /// The first pause; each next one doubles (with jitter), up to `max`.
    pub base: Duration,
    pub max: Duration,
    /// A `Retry-After` longer than this is cut to it.
    pub max_retry_after: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// About `base * 2^attempt`, capped, times a random factor in [0.5, 1.5).
    fn pause(&self, attempt: u32) -> Duration {
        let d = self.base.saturating_mul(1 << attempt.min(16)).min(self.max);
        d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
    }
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// Base URLs, no trailing slash.
    regions: Vec<String>,
    current: AtomicUsize,
    token: Mutex<SessionToken>,
    retry: Retry,
    /// Sent as `Authorization: Bearer` on every request and the sync socket.
    credentials: Credentials,
    /// TLS for `https://` regions (and `wss://` sync), shared with the sync socket.
    tls: Arc<rustls::ClientConfig>,
}

/// A Meridian client over HTTP. Cheap to clone; clones share the session.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// One request, as sent on every try.
struct Call {
    method: Method,
    path: String,
    body: Option<(&'static str, String)>,
    idempotency_key: Option<String>,
}

fn path(key: &DocKey) -> String {
    format!("/v1/{}/{}", key.collection(), key.id())
}

fn doc_key(collection: &str, id: &str) -> Result<DocKey> {
    Ok(DocKey::new(collection, id)?)
}

impl Client {
    /// A client of the regions at these base URLs (`http://host:port`), in order of preference.
    pub fn builder<I, S>(regions: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder::new(regions.into_iter().map(Into::into).collect())
    }

    pub fn new<I, S>(regions: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::builder(regions).build()
    }

    /// The base URL of the region the client talks to now.
    pub fn region(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed);
        &self.inner.regions[i % self.inner.regions.len()]
    }

    /// The session: what this client has read and written, per node.
    pub fn session(&self) -> SessionToken {
        self.inner.token.lock().clone()
    }

    /// Takes in a session token from elsewhere (another client of the same user, say).
    pub fn merge_session(&self, t: &SessionToken) {
        self.inner.token.lock().merge(t);
    }

    /// Moves to the next region after `from` failed (unless another caller moved already).
    pub(crate) fn fail_over(&self, from: usize) {
        let n = self.inner.regions.len();
        let _ = self.inner.current.compare_exchange(
            from,
            (from + 1) % n,
            Ordering::AcqRel,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.inner.tls.clone()
    }

    /// What to send as `Authorization: Bearer` now (a token is fetched if need be).
    pub(crate) async fn bearer(&self) -> Result<Option<String>> {
        self.inner.credentials.bearer().await
    }

    /// A node refused `used`: the next [`Client::bearer`] asks the provider for a new token.
    pub(crate) fn refused_bearer(&self, used: &str) {
        self.inner.credentials.refused(used);
    }

    pub(crate) fn current_index(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.regions.len()
    }

    pub(crate) fn region_at(&self, i: usize) -> &str {
        &self.inner.regions[i % self.inner.regions.len()]
    }

    fn observe(&self, headers: &HeaderMap) {
        let token = headers
            .get(SESSION)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| SessionToken::parse(s).ok());
        if let Some(t) = token {
            self.inner.token.lock().merge(&t);
        }
    }

    /// Sends `call`, retrying and failing over; the answer's body on success.
    async fn send(&self, call: Call) -> Result<(StatusCode, HeaderMap, bytes::Bytes)> {
        let retry = &self.inner.retry;
        let mut last = Error::Unreachable("no try was made".into());
        let mut refreshed = false;
        for attempt in 0..retry.attempts.max(1) {
            if attempt > 0 {
                let pause = match &last {
                    Error::Http {
                        retry_after: Some(ra),
                        ..
                    } => (*ra).min(retry.max_retry_after),
                    _ => retry.pause(attempt - 1),
                };
                tokio::time::sleep(pause).await;
            }
            let i = self.current_index();
            let url = format!("{}{}", self.region_at(i), call.path);
            let mut req = self.inner.http.request(call.method.clone(), &url);
            let bearer = self.bearer().await?;
            if let Some(b) = &bearer {
                req = req.bearer_auth(b);
            }
            let token = self.session();
            if !token.is_empty() {
                req = req.header(SESSION, token.to_string());
            }
            if let Some(k) = &call.idempotency_key {
                req = req.header("idempotency-key", k);
            }
            if let Some((ct, body)) = &call.body {
                req = req.header(CONTENT_TYPE, *ct).body(body.clone());
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    last = Error::Unreachable(format!("{url}: {e}"));
                    self.fail_over(i);
                    continue;
                }
            };
            self.observe(resp.headers());
            let (status, headers) = (resp.status(), resp.headers().clone());
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    last = Error::Unreachable(format!("{url}: {e}"));
                    self.fail_over(i);
                    continue;
                }
            };
            if status.is_success() {
                return Ok((status, headers, body));
            }
            let err = http_error(status, &headers, &body);
            if let Some(node) = unknown_session_node(&body) {
                // no region can ever cover it: forget it and ask again at once
                self.inner.token.lock().forget(&node);
                last = err;
                continue;
            }
            let stale = matches!(
                err.code(),
                Some("token_expired" | "token_revoked" | "invalid_token")
            );
            if stale && !refreshed {
                if let Some(b) = &bearer {
                    if self.inner.credentials.refused(b) {
                        // a fresh token, once: the provider may have a newer one
                        refreshed = true;
                        last = err;
                        continue;
                    }
                }
            }
            let retryable = matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504);
            if !retryable {
                return Err(err);
            }
            if err.code() == Some("session_unavailable") {
                // this region has not caught up with the session: another may have
                self.fail_over(i);
            }
            last = err;
        }
        Err(last)
    }

    async fn json<T: for<'de> Deserialize<'de>>(&self, call: Call) -> Result<T> {
        let (_, _, body) = self.send(call).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::Invalid(format!("an answer this client cannot read: {e}")))
    }

    /// A document, or `None` if it does not exist (or was deleted).
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<Doc>> {
        self.get_at(collection, id, "").await
    }

    /// A document with its conflicts.
    pub async fn get_with_conflicts(&self, collection: &str, id: &str) -> Result<Option<Doc>> {
        self.get_at(collection, id, "?conflicts=true").await
    }

    async fn get_at(&self, collection: &str, id: &str, query: &str) -> Result<Option<Doc>> {
        let key = doc_key(collection, id)?;
        let call = Call {
            method: Method::GET,
            path: format!("{}{query}", path(&key)),
            body: None,
            idempotency_key: None,
        };
        match self.json(call).await {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.code() == Some("not_found") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The document becomes exactly `value` (an object).
    pub async fn put(&self, collection: &str, id: &str, value: &Value) -> Result<Written> {
        self.write(Method::PUT, collection, id, "", "application/json", value)
            .await
    }

    /// An RFC 7396 merge patch (`null` removes a key); creates the document if absent.
    pub async fn patch(&self, collection: &str, id: &str, patch: &Value) -> Result<Written> {
        self.write(
            Method::PATCH,
            collection,
            id,
            "",
            "application/merge-patch+json",
            patch,
        )
        .await
    }

    /// Ops applied atomically (`[{"op":"increment","path":"/n","by":1}, …]`).
    pub async fn ops(&self, collection: &str, id: &str, ops: &Value) -> Result<Written> {
        let body = serde_json::json!({ "ops": ops });
        self.write(
            Method::POST,
            collection,
            id,
            "/ops",
            "application/json",
            &body,
        )
        .await
    }

    async fn write(
        &self,
        method: Method,
        collection: &str,
        id: &str,
        suffix: &str,
        ct: &'static str,
        body: &Value,
    ) -> Result<Written> {
        let key = doc_key(collection, id)?;
        if method != Method::POST && !body.is_object() {
            return Err(Error::Invalid("a document is a JSON object".into()));
        }
        let call = Call {
            method,
            path: format!("{}{suffix}", path(&key)),
            body: Some((ct, body.to_string())),
            idempotency_key: Some(new_key()),
        };
        let (status, headers, bytes) = self.send(call).await?;
        let doc = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Invalid(format!("an answer this client cannot read: {e}")))?;
        Ok(Written {
            doc,
            created: status == StatusCode::CREATED,
            replayed: headers.get("idempotent-replayed") == Some(&HeaderValue::from_static("true")),
        })
    }

    pub async fn delete(&self, collection: &str, id: &str) -> Result<Deleted> {
        let key = doc_key(collection, id)?;
        self.json(Call {
            method: Method::DELETE,
            path: path(&key),
            body: None,
            idempotency_key: Some(new_key()),
        })
        .await
    }

    /// Live documents of a collection in id order, `limit` (1 to 1000) at a time after `after`.
    pub async fn list(
        &self,
        collection: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Page> {
        meridian_crdt::validate_name("collection", collection)?;
        let mut q = vec![];
        if let Some(a) = after {
            meridian_crdt::validate_name("cursor", a)?;
            q.push(format!("after={a}"));
        }
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        let query = if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        };
        self.json(Call {
            method: Method::GET,
            path: format!("/v1/{collection}{query}"),
            body: None,
            idempotency_key: None,
        })
        .await
    }

    /// The region's `/v1/status`.
    pub async fn status(&self) -> Result<Value> {
        self.json(Call {
            method: Method::GET,
            path: "/v1/status".into(),
            body: None,
            idempotency_key: None,
        })
        .await
    }

    /// The region's `/v1/cluster`.
    pub async fn cluster(&self) -> Result<Value> {
        self.json(Call {
            method: Method::GET,
            path: "/v1/cluster".into(),
            body: None,
            idempotency_key: None,
        })
        .await
    }
}

/// An idempotency key: 128 random bits.
fn new_key() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}
