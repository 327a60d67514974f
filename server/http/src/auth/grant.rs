//! What a token grants: entries of a collection, by id or id prefix, at a level; the
//! `meridian` claim that carries a token's own; and the rule templates over its claims.
//! Pure functions, tested with `token.rs` (`token_tests.rs`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::access::Access;

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

/// A verified token: who it speaks for, until when, and what it may touch.
#[derive(Debug, Clone)]
pub struct Token {
    pub sub: String,
    pub jti: Option<String>,
    /// Seconds since the epoch.
    pub exp: u64,
    pub(super) nbf: Option<u64>,
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

/// Named documents one token may carry (a bound on what one request's check costs).
pub(super) const MAX_GRANTS: usize = 256;

/// The `meridian` claim.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MeridianClaim {
    #[serde(default)]
    pub(super) grants: Vec<GrantClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantClaim {
    collection: String,
    #[serde(default)]
    ids: Vec<String>,
    prefix: Option<String>,
    access: Access,
}

pub(super) fn grant_entries(g: GrantClaim) -> Result<Vec<Entry>, String> {
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
pub(super) fn check_template(t: &str) -> Result<(), String> {
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
pub(super) fn expand(t: &str, claims: &BTreeMap<&str, &str>) -> Option<String> {
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
