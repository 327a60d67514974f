//! Who may do what: API keys from the auth file, checked on every `/v1` route, the change streams,
//! `/v1/sync` and `/metrics`. `docs/security.md` is the contract.
//!
//! - `keys`: the file (named keys stored as hashes, access per collection, expiry) and the
//!   checks, without I/O.
//! - `limit`: failed authentication limited per client address.
//!
//! [`require`] is the one layer: it takes the key from `Authorization: Bearer` (or, on GET, the
//! `access_token` query parameter, for browsers' `EventSource` and `WebSocket`, which cannot set
//! headers; removed from the request before anything else sees it), decides what the route
//! needs ([`Need`]), and answers 401, 403 or 429, or lets the request through with its
//! [`Caller`]. A node without an auth file serves only on loopback (or with
//! `--insecure-no-auth`), and then every request passes.

mod keys;
mod limit;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::RequestExt;
use parking_lot::RwLock;

pub use keys::{generate, hash_of, validate_key_name, Access, Key, KeyRing, Lookup, Need};
pub use limit::FailureLimiter;

use crate::error::ApiError;
use meridian_net::tls::ConnInfo;

/// The query parameter that may carry the key on GET (RFC 6750's name).
pub(crate) const TOKEN_PARAM: &str = "access_token";

/// How this node decides who may do what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Keys from this file.
    Keys(PathBuf),
    /// No keys: every request passes. Only on a loopback address.
    Loopback,
    /// No keys on a non-loopback address, because `--insecure-no-auth` said so.
    Insecure,
}

/// The keys in force, the failure limiter and the mode; shared by every request.
#[derive(Debug)]
pub struct Auth {
    mode: Mode,
    ring: RwLock<Arc<KeyRing>>,
    limiter: FailureLimiter,
}

impl Auth {
    /// No keys: every request passes (a loopback node, and tests of other things).
    pub fn open() -> Self {
        Auth::with_mode(Mode::Loopback, KeyRing::default())
    }

    /// No keys on a public address (`--insecure-no-auth`).
    pub fn insecure() -> Self {
        Auth::with_mode(Mode::Insecure, KeyRing::default())
    }

    /// Keys from `path`; an unreadable or broken file is an error (the node does not start).
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let ring = read_file(path)?;
        Ok(Auth::with_mode(Mode::Keys(path.to_owned()), ring))
    }

    /// Keys given directly (tests).
    pub fn from_ring(ring: KeyRing) -> Self {
        Auth::with_mode(Mode::Keys(PathBuf::new()), ring)
    }

    fn with_mode(mode: Mode, ring: KeyRing) -> Self {
        Auth {
            mode,
            ring: RwLock::new(Arc::new(ring)),
            limiter: FailureLimiter::default(),
        }
    }

    /// The same, with another failure limit (tests).
    pub fn with_limiter(mut self, limiter: FailureLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// Re-reads the file: the new keys take over whole, or, if the file is broken, the old ones
    /// stay and the error says why. `Ok(n)`: n keys in force. Without a file, nothing to do.
    pub fn reload(&self) -> Result<usize, String> {
        let Mode::Keys(path) = &self.mode else {
            return Ok(0);
        };
        let ring = read_file(path)?;
        let n = ring.len();
        *self.ring.write() = Arc::new(ring);
        Ok(n)
    }

    /// What `/v1/status` says about access.
    pub fn describe(&self) -> &'static str {
        match self.mode {
            Mode::Keys(_) => "keys",
            Mode::Loopback => "open (loopback only)",
            Mode::Insecure => "OFF: --insecure-no-auth on a non-loopback address",
        }
    }

    /// Checks one request's credentials against what it needs.
    fn check(
        &self,
        presented: Presented,
        need: &Need,
        addr: Option<IpAddr>,
        now: Instant,
    ) -> Result<Caller, Refusal> {
        if let Some((wait, first)) = self.limiter.blocked(addr, now) {
            return Err(Refusal::Limited { wait, first });
        }
        let failed = |reason: String, key: Option<String>| {
            self.limiter.fail(addr, now);
            Refusal::Unauthenticated { reason, key }
        };
        let key = match presented {
            Presented::Nothing => {
                return Err(failed(
                    "this request needs an API key: send Authorization: Bearer <key>".into(),
                    None,
                ))
            }
            Presented::Malformed(why) => return Err(failed(why.into(), None)),
            Presented::Key(k) => k,
        };
        let ring = self.ring.read().clone();
        let key = match ring.lookup(&key, SystemTime::now()) {
            Lookup::Valid(k) => k.clone(),
            Lookup::Expired(k) => {
                let when = k.expires.map(humantime::format_rfc3339_seconds);
                return Err(failed(
                    format!(
                        "the API key {:?} expired at {}",
                        k.name,
                        when.map(|w| w.to_string()).unwrap_or_default()
                    ),
                    Some(k.name.clone()),
                ));
            }
            Lookup::Unknown => return Err(failed("unknown API key".into(), None)),
        };
        key.allows(need).map_err(|reason| Refusal::Forbidden {
            reason,
            key: key.name.clone(),
        })?;
        Ok(Caller::Key(key))
    }
}

fn read_file(path: &Path) -> Result<KeyRing, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
    KeyRing::parse(&text).map_err(|e| format!("invalid auth file {}: {e}", path.display()))
}

/// Who a request comes from, for handlers that check more than the route (`/v1/sync`).
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// A node without keys.
    Anyone,
    Key(Arc<Key>),
}

impl Caller {
    /// What a sync connection of this caller may do.
    pub(crate) fn sync_access(&self) -> Arc<dyn meridian_sync::repo::Access> {
        match self {
            Caller::Anyone => Arc::new(meridian_sync::repo::Open),
            Caller::Key(k) => Arc::new(SyncAccess(k.clone())),
        }
    }
}

#[derive(Debug)]
struct SyncAccess(Arc<Key>);

impl meridian_sync::repo::Access for SyncAccess {
    fn read(&self, collection: &str) -> Result<(), String> {
        self.0
            .allows(&Need::Collection(Access::Read, collection.into()))
    }
    fn write(&self, collection: &str) -> Result<(), String> {
        self.0
            .allows(&Need::Collection(Access::Write, collection.into()))
    }
}

/// What a request presented.
#[derive(Debug)]
enum Presented {
    Nothing,
    Malformed(&'static str),
    Key(String),
}

#[derive(Debug)]
enum Refusal {
    Unauthenticated {
        reason: String,
        key: Option<String>,
    },
    Forbidden {
        reason: String,
        key: String,
    },
    Limited {
        wait: std::time::Duration,
        first: bool,
    },
}

/// Takes the credentials out of the request: the header, or `access_token` on a GET (which is
/// then removed from the URI, so that no handler, log or error repeats it).
fn take_credentials(req: &mut Request) -> Presented {
    let header = req.headers_mut().remove(header::AUTHORIZATION);
    let param = strip_token_param(req);
    if param.is_some() && req.method() != Method::GET {
        return Presented::Malformed(
            "access_token is taken on GET only; send the key in the Authorization header",
        );
    }
    match (header, param) {
        (Some(_), Some(_)) => Presented::Malformed(
            "send the key once: in the Authorization header or in access_token, not both",
        ),
        (None, None) => Presented::Nothing,
        (None, Some(k)) if k.is_empty() => Presented::Malformed("access_token is empty"),
        (None, Some(k)) => Presented::Key(k),
        (Some(h), None) => {
            let Ok(h) = h.to_str() else {
                return Presented::Malformed("the Authorization header is not ASCII");
            };
            match h.split_once(' ') {
                Some((scheme, key))
                    if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() =>
                {
                    Presented::Key(key.trim().to_owned())
                }
                _ => Presented::Malformed("malformed Authorization header: expected Bearer <key>"),
            }
        }
    }
}

/// Removes `access_token` from the query, leaving the other parameters as they were; returns
/// its (last) value.
fn strip_token_param(req: &mut Request) -> Option<String> {
    let query = req.uri().query()?;
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|segment| {
            match serde_urlencoded::from_str::<Vec<(String, String)>>(segment).as_deref() {
                Ok([(k, v)]) if k == TOKEN_PARAM => {
                    value = Some(v.clone());
                    false
                }
                _ => true,
            }
        })
        .collect();
    let value = value?;
    let path = req.uri().path();
    let pq = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    if let Ok(uri) = axum::http::Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    Some(value)
}

/// What the matched route needs.
async fn need_of(req: &mut Request) -> Need {
    let upgrade = req.headers().contains_key(header::UPGRADE);
    let fixed = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/metrics") => Some(Need::Metrics),
        Some("/v1/status" | "/v1/cluster") => Some(Need::Node),
        Some("/v1/sync") if upgrade => Some(Need::AnyKey),
        Some("/v1/sync") => Some(Need::Collection(Access::Read, "sync".into())),
        _ => None,
    };
    if let Some(need) = fixed {
        return need;
    }
    let collection = match req.extract_parts::<RawPathParams>().await {
        Ok(params) => params
            .iter()
            .find(|(k, _)| *k == "collection")
            .map(|(_, v)| v.to_owned()),
        Err(_) => None,
    };
    let schema = req
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| p.as_str() == "/v1/_schemas/{collection}");
    let level = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Access::Read
    } else if schema {
        // a collection's contract is its admins' to change
        Access::Admin
    } else {
        Access::Write
    };
    match collection {
        Some(c) => Need::Collection(level, c),
        // every keyed route names a collection; one that does not is node-wide
        None => Need::Node,
    }
}

/// The layer on every route that needs a key (see the module docs).
pub(crate) async fn require(
    State(auth): State<Arc<Auth>>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = take_credentials(&mut req);
    if !matches!(auth.mode, Mode::Keys(_)) {
        // a node without keys: nothing to decide (the credentials are still taken out)
        req.extensions_mut().insert(Caller::Anyone);
        return next.run(req).await;
    }
    let need = need_of(&mut req).await;
    let addr = req
        .extensions()
        .get::<ConnectInfo<ConnInfo>>()
        .map(|c| c.0.addr.ip());
    let (method, path) = (req.method(), req.uri().path());
    match auth.check(presented, &need, addr, Instant::now()) {
        Ok(caller) => {
            if let (Caller::Key(k), Need::Node | Need::Metrics) = (&caller, &need) {
                tracing::info!(key = %k.name, %method, path, "admin request");
            }
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(Refusal::Unauthenticated { reason, key }) => {
            tracing::info!(key = key.as_deref().unwrap_or("-"), address = ?addr, %method, path, reason, "refused: 401");
            ApiError::Unauthorized(reason).into_response()
        }
        Err(Refusal::Forbidden { reason, key }) => {
            tracing::info!(key, address = ?addr, %method, path, reason, "refused: 403");
            ApiError::Forbidden(reason).into_response()
        }
        Err(Refusal::Limited { wait, first }) => {
            if first {
                tracing::warn!(address = ?addr, "too many failed authentications: refusing this address for a while");
            }
            ApiError::TooManyRequests(wait).into_response()
        }
    }
}
