//! The auth file: named API keys, stored as hashes, each with an access level per collection
//! pattern and an optional expiry. Parsing and every check are pure functions of the file and
//! the clock, tested without a server.
//!
//! ```toml
//! # keys that may read /metrics without admin access (optional)
//! metrics_keys = ["prometheus"]
//!
//! [[keys]]
//! name = "web"
//! hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! access = { users = "write", settings = "write", "*" = "read" }
//! expires = "2027-06-30T00:00:00Z"   # optional, RFC 3339
//! ```
//!
//! Keys are 256 random bits ([`generate`]), not passwords: one SHA-256 is enough to keep them
//! out of the file (a slow password hash would cost every request milliseconds and buy nothing
//! against a key nobody can guess).

use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use super::access::Access;

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// `level` on one collection (a list, a collection's change stream): a token passes with
    /// a grant on some document of it, and the handler keeps only those.
    Collection(Access, String),
    /// `level` on one document.
    Document(Access, String, String),
    /// Admin on `*`: a node-wide route.
    Node,
    /// `/metrics`: admin on `*`, or a key the file names in `metrics_keys`.
    Metrics,
    /// Any valid key; the handler checks each document (`/v1/sync`).
    AnyKey,
}

/// One key of the file.
#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    hash: [u8; 32],
    /// Exact collection names; `*` is `any`.
    exact: BTreeMap<String, Access>,
    any: Option<Access>,
    pub expires: Option<SystemTime>,
    metrics: bool,
    /// Requests per second this key may make (`None`: the file's default for keys).
    pub rate: Option<Rate>,
}

/// A request rate: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

/// Tokens and subjects refused although they verify (`[revoked]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    #[serde(default)]
    pub jti: HashSet<String>,
    #[serde(default)]
    pub sub: HashSet<String>,
}

/// `[failed_auth]`: how many failed authentications an address may make (a token bucket).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedAuth {
    pub burst: u32,
    pub per_second: f64,
}

impl Default for FailedAuth {
    /// 20 at once, then one every 2 s.
    fn default() -> Self {
        FailedAuth {
            burst: 20,
            per_second: 0.5,
        }
    }
}

/// `[rate_limit]`: the rates each token's `sub` and each API key get.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Each `sub` (all its tokens and devices together).
    #[serde(default = "RateLimits::default_per_sub")]
    pub per_sub: Option<Rate>,
    /// Each API key without a `rate` of its own (`None`: unlimited; keys are the app's servers).
    #[serde(default)]
    pub per_key: Option<Rate>,
}

impl RateLimits {
    fn default_per_sub() -> Option<Rate> {
        Some(Rate {
            per_second: 100.0,
            burst: 200,
        })
    }
}

impl Default for RateLimits {
    /// 100 requests per second per `sub` (200 at once); API keys unlimited.
    fn default() -> Self {
        RateLimits {
            per_sub: RateLimits::default_per_sub(),
            per_key: None,
        }
    }
}

impl Key {
    /// The level this key has on `collection`: an exact entry wins over `*`, so that a key can
    /// be narrowed for one collection as well as widened.
    pub fn level(&self, collection: &str) -> Option<Access> {
        self.exact.get(collection).copied().or(self.any)
    }

    /// `Err(why)` (for a 403) when the key lacks what `need` asks.
    pub fn allows(&self, need: &Need) -> Result<(), String> {
        let node_admin = self.any == Some(Access::Admin);
        match need {
            Need::AnyKey => Ok(()),
            Need::Node if node_admin => Ok(()),
            Need::Node => Err(format!(
                "key {:?} needs admin access on \"*\" for this node-wide route",
                self.name
            )),
            Need::Metrics if node_admin || self.metrics => Ok(()),
            Need::Metrics => Err(format!(
                "key {:?} needs admin access on \"*\", or to be listed in metrics_keys",
                self.name
            )),
            Need::Collection(want, c) | Need::Document(want, c, _) => match self.level(c) {
                Some(have) if have >= *want => Ok(()),
                Some(have) => Err(format!(
                    "key {:?} needs {want} access to collection {c:?}; it has {have}",
                    self.name
                )),
                None => Err(format!(
                    "key {:?} needs {want} access to collection {c:?}; it has none",
                    self.name
                )),
            },
        }
    }

    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// The keys of one version of the file.
#[derive(Debug, Default)]
pub struct KeyRing {
    keys: Vec<std::sync::Arc<Key>>,
    /// `[tokens]`: scoped tokens, if the file accepts them.
    pub tokens: Option<super::token::Tokens>,
    pub revoked: Revoked,
    pub rates: RateLimits,
    /// Read when the node starts (a reload keeps the limiter it has).
    pub failed_auth: FailedAuth,
}

/// How a presented key fared.
#[derive(Debug)]
pub enum Lookup<'a> {
    Valid(&'a std::sync::Arc<Key>),
    Expired(&'a std::sync::Arc<Key>),
    Unknown,
}

impl KeyRing {
    /// Finds the key whose hash matches, comparing against every entry in constant time.
    pub fn lookup(&self, presented: &str, now: SystemTime) -> Lookup<'_> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if same_digest(&k.hash, &hash) {
                found = Some(k);
            }
        }
        match found {
            Some(k) if k.expired(now) => Lookup::Expired(k),
            Some(k) => Lookup::Valid(k),
            None => Lookup::Unknown,
        }
    }

    /// Whether `key` is still one of this file's keys (after a reload).
    pub fn has(&self, key: &Key) -> bool {
        self.keys
            .iter()
            .any(|k| k.name == key.name && k.hash == key.hash)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Parses and checks a whole file; any mistake refuses all of it, with the entry named.
    pub fn parse(text: &str) -> Result<KeyRing, String> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            metrics_keys: Vec<String>,
            #[serde(default)]
            keys: Vec<Entry>,
            tokens: Option<super::token::Section>,
            #[serde(default)]
            revoked: Revoked,
            #[serde(default)]
            rate_limit: RateLimits,
            #[serde(default)]
            failed_auth: FailedAuth,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            name: String,
            hash: String,
            access: BTreeMap<String, Access>,
            expires: Option<String>,
            rate: Option<Rate>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        let mut keys = Vec::with_capacity(file.keys.len());
        for e in file.keys {
            let at = |m: String| format!("key {:?}: {m}", e.name);
            validate_key_name(&e.name)?;
            if !names.insert(e.name.clone()) {
                return Err(at("the name is used twice".into()));
            }
            let hash = parse_hash(&e.hash).map_err(at)?;
            if !hashes.insert(hash) {
                return Err(at("the same hash as another key".into()));
            }
            if e.access.is_empty() {
                return Err(at(
                    "access names no collection (e.g. access = { users = \"read\" })".into(),
                ));
            }
            let mut exact = BTreeMap::new();
            let mut any = None;
            for (pattern, level) in e.access {
                if pattern == "*" {
                    any = Some(level);
                } else {
                    meridian_crdt::validate_name("collection", &pattern)
                        .map_err(|err| at(format!("access: {err}")))?;
                    exact.insert(pattern, level);
                }
            }
            let expires = e
                .expires
                .as_deref()
                .map(|s| {
                    humantime::parse_rfc3339_weak(s).map_err(|err| {
                        at(format!(
                            "expires {s:?} is not an RFC 3339 time such as 2027-01-31T00:00:00Z: {err}"
                        ))
                    })
                })
                .transpose()?;
            keys.push(std::sync::Arc::new(Key {
                metrics: file.metrics_keys.contains(&e.name),
                name: e.name,
                hash,
                exact,
                any,
                expires,
                rate: e.rate,
            }));
        }
        for m in &file.metrics_keys {
            if !names.contains(m) {
                return Err(format!(
                    "metrics_keys names {m:?}, which is not a key of the file"
                ));
            }
        }
        let rates = file.rate_limit;
        for r in [rates.per_sub, rates.per_key]
            .into_iter()
            .chain(keys.iter().map(|k| k.rate))
            .flatten()
        {
            if !(r.per_second > 0.0 && r.per_second.is_finite()) || r.burst == 0 {
                return Err(format!(
                    "a rate needs per_second > 0 and burst >= 1, not {r:?}"
                ));
            }
        }
        let f = file.failed_auth;
        if f.burst == 0 || !(f.per_second > 0.0 && f.per_second.is_finite()) {
            return Err(format!(
                "failed_auth needs burst >= 1 and per_second > 0, not {f:?}"
            ));
        }
        let tokens = file.tokens.map(super::token::Tokens::parse).transpose()?;
        Ok(KeyRing {
            keys,
            tokens,
            revoked: file.revoked,
            rates,
            failed_auth: f,
        })
    }
}

/// Compares two digests without a branch on their bytes: the words' differences are folded
/// together and only the result is tested, once, through `subtle` (so the compiler cannot turn
/// the fold into an early exit). Byte-by-byte `ct_eq` costs 32 opaque reads per key.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let word = |d: &[u8; 32], i: usize| {
        u64::from_ne_bytes(d[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    };
    let diff = (0..4).fold(0u64, |acc, i| acc | (word(a, i) ^ word(b, i)));
    bool::from(diff.ct_eq(&0))
}

/// 1-64 of A-Z a-z 0-9 . _ - (it is logged and printed).
pub fn validate_key_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key name {name:?} must be 1-64 of A-Z a-z 0-9 . _ -"
        ))
    }
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let hex_part = s
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("hash {s:?} must be sha256:<64 hex digits>"))?;
    let bytes = hex::decode(hex_part).map_err(|_| format!("hash {s:?} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| format!("hash {s:?} must have 64 hex digits"))
}

/// A new random key (`mdk_` and 64 hex digits: 256 bits) and its hash as the file stores it.
pub fn generate() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let key = format!("mdk_{}", hex::encode(bytes));
    let hash = hash_of(&key);
    (key, hash)
}

/// `sha256:<hex>` of a key.
pub fn hash_of(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;
