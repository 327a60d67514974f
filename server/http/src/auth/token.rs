//! Scoped tokens: JSON Web Tokens (RFC 7519) that the app's backend mints for its users'
//! devices, verified here, and what they grant, per document. Pure functions of the auth file,
//! the token and the clock, tested without a server. `docs/security.md` is the contract.
//!
//! ```toml
//! [tokens]
//! audience = "my-app"                 # the token's aud must name it
//! leeway_secs = 0                     # allowed clock skew on exp and nbf
//!
//! [[tokens.keys]]
//! alg = "HS256"                       # or EdDSA / ES256 with public_key (PEM)
//! secret = "at least 32 bytes of the app's secret"
//!
//! [[tokens.rules]]                    # granted to every valid token, over its claims
//! collection = "users"
//! id = "{sub}"
//! access = "write"
//! ```
//!
//! A token's own grant is its `meridian` claim:
//! `{"grants": [{"collection": "notes", "prefix": "alice:", "access": "read"}]}`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;

use super::access::Access;

/// The `[tokens]` section of the auth file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Section {
    audience: String,
    #[serde(default)]
    leeway_secs: u64,
    keys: Vec<KeyEntry>,
    #[serde(default)]
    rules: Vec<RuleEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    kid: Option<String>,
    alg: String,
    secret: Option<String>,
    public_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    collection: String,
    id: Option<String>,
    prefix: Option<String>,
    access: Access,
}

/// Which documents of a collection an entry covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Id(String),
    /// Every id that starts with it (`""`: the whole collection).
    Prefix(String),
}

impl Target {
    fn covers(&self, id: &str) -> bool {
        match self {
            Target::Id(i) => i == id,
            Target::Prefix(p) => id.starts_with(p.as_str()),
        }
    }
}

/// One grant: `access` to the documents `target` covers in `collection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub collection: String,
    pub target: Target,
    pub access: Access,
}

/// Why a token is refused (for a 401 with its code).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRefusal {
    /// It does not verify: signature, alg, audience, claims.
    Invalid(String),
    /// It verifies but is past its `exp`, or before its `nbf`.
    Expired(String),
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenRefusal::Invalid(m) | TokenRefusal::Expired(m) => f.write_str(m),
        }
    }
}

/// A verified token: who it speaks for, until when, and what it may touch.
#[derive(Debug, Clone)]
pub struct Token {
    pub sub: String,
    pub jti: Option<String>,
    /// Seconds since the epoch.
    pub exp: u64,
    nbf: Option<u64>,
    /// The token's own grants and the file's rules over its claims.
    pub grants: Vec<Entry>,
}

impl Token {
    /// The highest level any grant gives on `collection/id`.
    pub fn level(&self, collection: &str, id: &str) -> Option<Access> {
        self.grants
            .iter()
            .filter(|g| g.collection == collection && g.target.covers(id))
            .map(|g| g.access)
            .max()
    }

    /// The highest level any grant gives on some document of `collection`.
    pub fn level_in(&self, collection: &str) -> Option<Access> {
        self.grants
            .iter()
            .filter(|g| g.collection == collection)
            .map(|g| g.access)
            .max()
    }

    /// Whether the token is in force at `now` (seconds since the epoch).
    pub(super) fn current(&self, now: u64, leeway: u64) -> Result<(), String> {
        if now >= self.exp.saturating_add(leeway) {
            return Err(format!(
                "the token of {:?} expired at {}",
                self.sub,
                rfc3339(self.exp)
            ));
        }
        if let Some(nbf) = self.nbf.filter(|n| now.saturating_add(leeway) < *n) {
            return Err(format!(
                "the token of {:?} is not valid before {}",
                self.sub,
                rfc3339(nbf)
            ));
        }
        Ok(())
    }
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // never the key material
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

/// A rule: a grant every valid token gets, with `{claim}` replaced by the token's claim.
#[derive(Debug, Clone)]
struct Rule {
    collection: String,
    target: Target,
    access: Access,
}

/// How tokens are checked: the keys that verify them, the audience, the rules, and the tokens
/// already verified (a signature is checked once per token, not per request: EdDSA and ES256
/// cost tens of microseconds).
#[derive(Debug)]
pub struct Tokens {
    audience: String,
    pub(super) leeway: u64,
    keys: Vec<VerifyKey>,
    rules: Vec<Rule>,
    /// By the whole token: a hit is the very string that was verified (SipHash, keyed per
    /// process, picks the bucket; equality decides).
    verified: Mutex<HashMap<Box<str>, Arc<Token>>>,
}

/// Verified tokens kept; past it the cache starts again (a token is verified again at most
/// once per 10,000 others).
const CACHE: usize = 10_000;
/// Named documents one token may carry (a bound on what one request's check costs).
const MAX_GRANTS: usize = 256;

/// The `meridian` claim.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MeridianClaim {
    #[serde(default)]
    grants: Vec<GrantClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantClaim {
    collection: String,
    #[serde(default)]
    ids: Vec<String>,
    prefix: Option<String>,
    access: Access,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<u64>,
    jti: Option<String>,
    meridian: Option<serde_json::Value>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_json::Value>,
}

impl Tokens {
    pub(super) fn parse(s: Section) -> Result<Tokens, String> {
        if s.audience.is_empty() {
            return Err("tokens: audience is empty".into());
        }
        if s.keys.is_empty() {
            return Err(
                "tokens: no keys (add [[tokens.keys]] with alg and secret or public_key)".into(),
            );
        }
        let mut keys = Vec::new();
        for (i, k) in s.keys.into_iter().enumerate() {
            let at = |m: String| format!("tokens.keys[{i}]: {m}");
            let (alg, key) = match (k.alg.as_str(), &k.secret, &k.public_key) {
                ("HS256", Some(secret), None) => {
                    if secret.len() < 32 {
                        return Err(at("an HS256 secret must be at least 32 bytes".into()));
                    }
                    (Algorithm::HS256, DecodingKey::from_secret(secret.as_bytes()))
                }
                ("EdDSA", None, Some(pem)) => (
                    Algorithm::EdDSA,
                    DecodingKey::from_ed_pem(pem.as_bytes())
                        .map_err(|e| at(format!("public_key is not an Ed25519 PEM key: {e}")))?,
                ),
                ("ES256", None, Some(pem)) => (
                    Algorithm::ES256,
                    DecodingKey::from_ec_pem(pem.as_bytes())
                        .map_err(|e| at(format!("public_key is not a P-256 PEM key: {e}")))?,
                ),
                ("HS256", _, _) => return Err(at("HS256 takes a secret, and no public_key".into())),
                ("EdDSA" | "ES256", _, _) => {
                    return Err(at(format!(
                        "{} takes a public_key (PEM), and no secret: the node never holds the private key",
                        k.alg
                    )))
                }
                (other, _, _) => {
                    return Err(at(format!("alg {other:?} must be HS256, EdDSA or ES256")))
                }
            };
            keys.push(VerifyKey {
                kid: k.kid,
                alg,
                key,
            });
        }
        let mut rules = Vec::new();
        for (i, r) in s.rules.into_iter().enumerate() {
            let at = |m: String| format!("tokens.rules[{i}]: {m}");
            meridian_crdt::validate_name("collection", &r.collection)
                .map_err(|e| at(e.to_string()))?;
            if r.access == Access::Admin {
                return Err(at("a token rule grants read or write, never admin".into()));
            }
            let target = match (r.id, r.prefix) {
                (Some(id), None) => Target::Id(id),
                (None, Some(p)) => Target::Prefix(p),
                _ => {
                    return Err(at(
                        "give id or prefix (templates such as \"{sub}\"), not both".into(),
                    ))
                }
            };
            let template = match &target {
                Target::Id(t) | Target::Prefix(t) => t,
            };
            check_template(template).map_err(at)?;
            rules.push(Rule {
                collection: r.collection,
                target,
                access: r.access,
            });
        }
        Ok(Tokens {
            audience: s.audience,
            leeway: s.leeway_secs,
            keys,
            rules,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Verifies `token` (signature, audience, claims; cached), then checks it is in force at
    /// `now` (seconds since the epoch). `Err` says why, for a 401.
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Token>, TokenRefusal> {
        let cached = self.verified.lock().get(token).cloned();
        let t = match cached {
            Some(t) => t,
            None => {
                let t = Arc::new(self.verify_signed(token).map_err(TokenRefusal::Invalid)?);
                let mut v = self.verified.lock();
                if v.len() >= CACHE {
                    v.clear();
                }
                v.insert(token.into(), t.clone());
                t
            }
        };
        t.current(now, self.leeway).map_err(TokenRefusal::Expired)?;
        Ok(t)
    }

    fn verify_signed(&self, token: &str) -> Result<Token, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            format!("not a token this node accepts (a JWT signed with HS256, EdDSA or ES256): {e}")
        })?;
        let mut candidates = self
            .keys
            .iter()
            .filter(|k| k.alg == header.alg)
            .filter(|k| header.kid.is_none() || k.kid.is_none() || k.kid == header.kid)
            .peekable();
        if candidates.peek().is_none() {
            return Err(format!(
                "no key of this node verifies a token signed with {:?}{}",
                header.alg,
                header
                    .kid
                    .map(|k| format!(" (kid {k:?})"))
                    .unwrap_or_default()
            ));
        }
        let mut v = Validation::new(header.alg);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["aud"]);
        // exp and nbf are checked against the caller's clock, on every use of a cached token
        v.validate_exp = false;
        v.validate_nbf = false;
        for k in candidates {
            match jsonwebtoken::decode::<Claims>(token, &k.key, &v) {
                Ok(data) => return self.token_of(data.claims),
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => continue,
                Err(e) => return Err(describe(e.kind(), &self.audience)),
            }
        }
        Err("the token's signature does not verify".into())
    }

    fn token_of(&self, c: Claims) -> Result<Token, String> {
        let sub = match c.sub {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            Some(_) => return Err("the token's sub must be a non-empty string".into()),
            None => return Err("the token has no sub (required)".into()),
        };
        let exp = match c.exp {
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .ok_or("the token's exp must be whole seconds since the epoch")?,
            Some(_) => return Err("the token's exp must be whole seconds since the epoch".into()),
            None => return Err("the token has no exp (required)".into()),
        };
        let mut grants = Vec::new();
        if let Some(m) = c.meridian {
            let m: MeridianClaim = serde_json::from_value(m)
                .map_err(|e| format!("the token's meridian claim is malformed: {e}"))?;
            for g in m.grants {
                grants.extend(grant_entries(g)?);
            }
            if grants.len() > MAX_GRANTS {
                return Err(format!(
                    "the token grants {} documents; at most {MAX_GRANTS} (use a prefix)",
                    grants.len()
                ));
            }
        }
        let mut claims: BTreeMap<&str, &str> = c
            .rest
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
            .collect();
        claims.insert("sub", &sub);
        if let Some(j) = &c.jti {
            claims.insert("jti", j);
        }
        for r in &self.rules {
            let expanded = match &r.target {
                Target::Id(t) => expand(t, &claims)
                    .filter(|id| meridian_crdt::validate_name("id", id).is_ok())
                    .map(Target::Id),
                Target::Prefix(t) => expand(t, &claims).map(Target::Prefix),
            };
            // a claim the token lacks, or one that makes no valid id: the rule grants nothing
            if let Some(target) = expanded {
                grants.push(Entry {
                    collection: r.collection.clone(),
                    target,
                    access: r.access,
                });
            }
        }
        Ok(Token {
            sub,
            jti: c.jti,
            exp,
            nbf: c.nbf,
            grants,
        })
    }
}

fn describe(kind: &ErrorKind, audience: &str) -> String {
    match kind {
        ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => {
            format!("the token's aud must name this deployment ({audience:?})")
        }
        ErrorKind::InvalidAlgorithm => "the token's alg does not match its key".into(),
        ErrorKind::Json(e) => format!("the token's claims are malformed: {e}"),
        other => format!("invalid token: {other:?}"),
    }
}

fn grant_entries(g: GrantClaim) -> Result<Vec<Entry>, String> {
    meridian_crdt::validate_name("collection", &g.collection)
        .map_err(|e| format!("the token's grant: {e}"))?;
    if g.access == Access::Admin {
        return Err("a token grants read or write, never admin".into());
    }
    let mut out = Vec::new();
    for id in g.ids {
        meridian_crdt::validate_name("id", &id).map_err(|e| format!("the token's grant: {e}"))?;
        out.push(Target::Id(id));
    }
    if let Some(p) = g.prefix {
        out.push(Target::Prefix(p));
    }
    if out.is_empty() {
        return Err(format!(
            "the token's grant on {:?} names no ids and no prefix",
            g.collection
        ));
    }
    Ok(out
        .into_iter()
        .map(|target| Entry {
            collection: g.collection.clone(),
            target,
            access: g.access,
        })
        .collect())
}

/// A template's placeholders are `{name}` with a claim's name; braces otherwise are refused.
fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("template {t:?}: an unclosed {{"))?;
        let name = &rest[open + 1..open + close];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("template {t:?}: {{{name}}} is not a claim name"));
        }
        rest = &rest[open + close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("template {t:?}: a }} without {{"));
    }
    Ok(())
}

/// `t` with each `{claim}` replaced; `None` when a claim is absent or empty (an empty `{sub}`
/// would widen `{sub}:` to every id starting with `:`).
fn expand(t: &str, claims: &BTreeMap<&str, &str>) -> Option<String> {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open + rest[open..].find('}')?;
        let value = claims
            .get(&rest[open + 1..close])
            .filter(|v| !v.is_empty())?;
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
