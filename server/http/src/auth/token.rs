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
use super::grant::{check_template, expand, grant_entries, MeridianClaim, MAX_GRANTS};
pub use super::grant::{Entry, Target, Token};

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

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
