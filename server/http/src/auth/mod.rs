//! Who may do what: API keys and scoped tokens from the auth file, checked on every `/v1` route,
//! the change streams, `/v1/sync` and `/metrics`. `docs/security.md` is the contract.
//!
//! - `keys`: the file (named keys stored as hashes, access per collection, expiry; revoked
//!   tokens; rate limits) and the checks, without I/O.
//! - `token`: scoped tokens (JWTs the app's backend mints) and their grants per document.
//! - `limit`: failed authentication limited per client address, requests per principal.
//! - `request`: what a request presents and what its route needs.
//! - `caller`: who a request comes from, and what it may touch.
//!
//! [`require`] is the one layer: it takes the key or token from `Authorization: Bearer` (or, on GET, the
//! `access_token` query parameter, for browsers' `EventSource` and `WebSocket`, which cannot set
//! headers; removed from the request before anything else sees it), decides what the route
//! needs ([`Need`]), and answers 401, 403 or 429, or lets the request through with its
//! [`Caller`]. A node without an auth file serves only on loopback (or with
//! `--insecure-no-auth`), and then every request passes.

mod access;
mod caller;
mod grant;
mod keys;
mod limit;
mod request;
mod token;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::RwLock;

pub use keys::{
    generate, hash_of, validate_key_name, Access, Key, KeyRing, Lookup, Need, Rate, RateLimits,
};
pub use limit::{FailureLimiter, RateLimiter};
pub use token::{Entry, Target, Token, TokenRefusal};

use caller::{revoked, token_allows};
pub(crate) use caller::{Caller, Readable};
use request::{need_of, take_credentials, Presented};

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
    /// Requests per token `sub`, and per API key.
    sub_rates: RateLimiter,
    key_rates: RateLimiter,
    /// Bumped at each reload: open connections and streams check their credentials again.
    generation: tokio::sync::watch::Sender<u64>,
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
        let f = ring.failed_auth;
        Ok(Auth::with_mode(Mode::Keys(path.to_owned()), ring)
            .with_limiter(FailureLimiter::new(f.burst, f.per_second)))
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
            sub_rates: RateLimiter::default(),
            key_rates: RateLimiter::default(),
            generation: tokio::sync::watch::Sender::new(0),
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
        self.replace(ring);
        Ok(n)
    }

    /// Puts `ring` in force; open connections and streams check their credentials against it.
    pub fn replace(&self, ring: KeyRing) {
        *self.ring.write() = Arc::new(ring);
        self.generation.send_modify(|g| *g += 1);
    }

    /// `Err(why)` once `caller`'s credentials are no longer in force: expired, revoked, or
    /// gone from the file.
    pub(crate) fn still_valid(&self, caller: &Caller) -> Result<(), ApiError> {
        let ring = self.ring.read().clone();
        match caller {
            Caller::Anyone => Ok(()),
            Caller::Key(k) if !ring.has(k) => Err(ApiError::Unauthorized(format!(
                "the API key {:?} is no longer in the auth file",
                k.name
            ))),
            Caller::Key(k) if k.expired(SystemTime::now()) => Err(ApiError::Unauthorized(format!(
                "the API key {:?} expired",
                k.name
            ))),
            Caller::Key(_) => Ok(()),
            Caller::Token(t) => {
                let Some(tokens) = &ring.tokens else {
                    return Err(ApiError::InvalidToken(
                        "this node no longer accepts tokens".into(),
                    ));
                };
                t.current(unix_now(), tokens.leeway)
                    .map_err(ApiError::TokenExpired)?;
                revoked(&ring, t)
            }
        }
    }

    /// Resolves, with the reason, once `caller`'s credentials are no longer in force: at a
    /// token's expiry or a key's, or at the reload that revokes or removes them. Open sync
    /// connections and change streams end on it.
    pub(crate) fn ended(
        self: &Arc<Self>,
        caller: Caller,
    ) -> impl std::future::Future<Output = ApiError> + Send + 'static {
        let auth = self.clone();
        let mut reloads = self.generation.subscribe();
        async move {
            loop {
                if let Err(e) = auth.still_valid(&caller) {
                    return e;
                }
                let expiry = caller.expiry().map(|at| {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::Instant::now() + left
                });
                tokio::select! {
                    changed = reloads.changed() => {
                        if changed.is_err() {
                            // the node is going away with its auth
                            std::future::pending::<()>().await;
                        }
                    }
                    _ = async {
                        match expiry {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                }
            }
        }
    }

    /// What `/v1/status` says about access.
    pub fn describe(&self) -> &'static str {
        match self.mode {
            Mode::Keys(_) if self.ring.read().tokens.is_some() => "keys and tokens",
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
        let key =
            match presented {
                Presented::Nothing => return Err(failed(
                    "this request needs an API key or a token: send Authorization: Bearer <key>"
                        .into(),
                    None,
                )),
                Presented::Malformed(why) => return Err(failed(why.into(), None)),
                Presented::Key(k) => k,
            };
        let ring = self.ring.read().clone();
        if looks_like_token(&key) {
            return self.check_token(&ring, &key, need, addr, now);
        }
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
        take_rate(
            &self.key_rates,
            &key.name,
            key.rate.or(ring.rates.per_key),
            now,
            || format!("API key {:?}", key.name),
        )?;
        Ok(Caller::Key(key))
    }

    fn check_token(
        &self,
        ring: &KeyRing,
        presented: &str,
        need: &Need,
        addr: Option<IpAddr>,
        now: Instant,
    ) -> Result<Caller, Refusal> {
        let Some(tokens) = &ring.tokens else {
            self.limiter.fail(addr, now);
            return Err(Refusal::Token(ApiError::InvalidToken(
                "this node accepts no tokens (its auth file has no [tokens] section)".into(),
            )));
        };
        let token = tokens.verify(presented, unix_now()).map_err(|why| {
            self.limiter.fail(addr, now);
            Refusal::Token(match why {
                TokenRefusal::Invalid(m) => ApiError::InvalidToken(m),
                TokenRefusal::Expired(m) => ApiError::TokenExpired(m),
            })
        })?;
        revoked(ring, &token).map_err(Refusal::Token)?;
        token_allows(&token, need).map_err(|reason| Refusal::Forbidden {
            reason,
            key: format!("token of {:?}", token.sub),
        })?;
        take_rate(&self.sub_rates, &token.sub, ring.rates.per_sub, now, || {
            format!("the tokens of {:?}", token.sub)
        })?;
        Ok(Caller::Token(token))
    }
}

/// One request of `who` against its `rate` (none: unlimited); `label` names it in a 429.
fn take_rate(
    limiter: &RateLimiter,
    who: &str,
    rate: Option<Rate>,
    now: Instant,
    label: impl FnOnce() -> String,
) -> Result<(), Refusal> {
    match rate {
        Some(rate) => limiter
            .take(who, rate, now)
            .map_err(|wait| Refusal::Rate { wait, who: label() }),
        None => Ok(()),
    }
}

/// A JWT is three base64url parts; an API key (`mdk_…`) has no dot.
fn looks_like_token(s: &str) -> bool {
    s.bytes().filter(|b| *b == b'.').count() == 2
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_file(path: &Path) -> Result<KeyRing, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
    KeyRing::parse(&text).map_err(|e| format!("invalid auth file {}: {e}", path.display()))
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
    /// A token that does not verify, is expired or revoked.
    Token(ApiError),
    /// A principal over its rate.
    Rate {
        wait: std::time::Duration,
        who: String,
    },
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
        Err(Refusal::Token(e)) => {
            tracing::info!(address = ?addr, %method, path, reason = %e, "refused: 401");
            e.into_response()
        }
        Err(Refusal::Rate { wait, who }) => {
            tracing::debug!(who, %method, path, "refused: 429 (rate)");
            ApiError::RateLimited(wait, format!("{who} made more requests than their rate"))
                .into_response()
        }
        Err(Refusal::Limited { wait, first }) => {
            if first {
                tracing::warn!(address = ?addr, "too many failed authentications: refusing this address for a while");
            }
            ApiError::TooManyRequests(wait).into_response()
        }
    }
}
