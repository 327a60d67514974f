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
use std::fmt;
use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do to a collection; each level includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    /// Write, plus the node-wide routes when held on `*` (`/v1/status`, `/v1/cluster`,
    /// `/metrics`).
    Admin,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        })
    }
}

impl std::str::FromStr for Access {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "admin" => Ok(Access::Admin),
            other => Err(format!("access {other:?} must be read, write or admin")),
        }
    }
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// `level` on one collection.
    Collection(Access, String),
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
            Need::Collection(want, c) => match self.level(c) {
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
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            name: String,
            hash: String,
            access: BTreeMap<String, Access>,
            expires: Option<String>,
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
            }));
        }
        for m in &file.metrics_keys {
            if !names.contains(m) {
                return Err(format!(
                    "metrics_keys names {m:?}, which is not a key of the file"
                ));
            }
        }
        Ok(KeyRing { keys })
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
mod tests {
    use super::*;
    use std::time::Duration;

    fn ring(entries: &str) -> KeyRing {
        KeyRing::parse(entries).unwrap()
    }

    #[test]
    fn keys_are_found_by_hash_and_expire() {
        let (k1, h1) = generate();
        let (k2, h2) = generate();
        assert_ne!(k1, k2);
        let r = ring(&format!(
            "[[keys]]\nname = \"a\"\nhash = \"{h1}\"\naccess = {{ users = \"read\" }}\n\
             [[keys]]\nname = \"b\"\nhash = \"{h2}\"\naccess = {{ \"*\" = \"admin\" }}\n\
             expires = \"2020-01-01T00:00:00Z\"\n"
        ));
        let now = SystemTime::now();
        assert!(matches!(r.lookup(&k1, now), Lookup::Valid(k) if k.name == "a"));
        assert!(matches!(r.lookup(&k2, now), Lookup::Expired(k) if k.name == "b"));
        assert!(matches!(r.lookup("mdk_00", now), Lookup::Unknown));
        assert!(matches!(r.lookup("", now), Lookup::Unknown));
        // before the expiry, the key is valid
        let then = humantime::parse_rfc3339("2019-12-31T23:59:59Z").unwrap();
        assert!(matches!(r.lookup(&k2, then), Lookup::Valid(_)));
        assert!(matches!(
            r.lookup(&k2, then + Duration::from_secs(1)),
            Lookup::Expired(_)
        ));
    }

    #[test]
    fn access_levels_nest_and_exact_names_win_over_the_wildcard() {
        let r = ring(&format!(
            "metrics_keys = [\"m\"]\n\
             [[keys]]\nname = \"w\"\nhash = \"{}\"\naccess = {{ users = \"write\", \"*\" = \"read\", secrets = \"read\" }}\n\
             [[keys]]\nname = \"n\"\nhash = \"{}\"\naccess = {{ \"*\" = \"write\", secrets = \"read\" }}\n\
             [[keys]]\nname = \"root\"\nhash = \"{}\"\naccess = {{ \"*\" = \"admin\" }}\n\
             [[keys]]\nname = \"m\"\nhash = \"{}\"\naccess = {{ users = \"admin\" }}\n",
            hash_of("1"), hash_of("2"), hash_of("3"), hash_of("4")
        ));
        let now = SystemTime::now();
        let key = |k: &str| match r.lookup(k, now) {
            Lookup::Valid(k) => Key::clone(k),
            other => panic!("{other:?}"),
        };
        let (w, n, root, m) = (key("1"), key("2"), key("3"), key("4"));
        let c = |a, name: &str| Need::Collection(a, name.into());
        for (k, need, ok) in [
            (&w, c(Access::Read, "users"), true),
            (&w, c(Access::Write, "users"), true),
            (&w, c(Access::Admin, "users"), false),
            (&w, c(Access::Read, "other"), true),
            (&w, c(Access::Write, "other"), false),
            (&w, Need::Node, false),
            (&w, Need::Metrics, false),
            (&n, c(Access::Write, "anything"), true),
            (&n, c(Access::Write, "secrets"), false),
            (&n, c(Access::Read, "secrets"), true),
            (&root, c(Access::Admin, "x"), true),
            (&root, Need::Node, true),
            (&root, Need::Metrics, true),
            (&m, Need::Metrics, true),
            (&m, Need::Node, false),
            (&m, c(Access::Read, "settings"), false),
            (&m, c(Access::Write, "users"), true),
            (&m, Need::AnyKey, true),
        ] {
            assert_eq!(k.allows(&need).is_ok(), ok, "{} {need:?}", k.name);
        }
        let why = w.allows(&c(Access::Write, "other")).unwrap_err();
        assert!(
            why.contains("write") && why.contains("\"other\"") && why.contains("read"),
            "{why}"
        );
    }

    #[test]
    fn a_broken_file_is_refused_whole_with_the_entry_named() {
        let h = hash_of("x");
        for (text, wanted) in [
            ("[[keys]]\nname = \"a\"\n", "missing field"),
            (&format!("[[keys]]\nname = \"a b\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n") as &str, "key name"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", "md5:00"), "sha256:"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", "sha256:zz"), "not hex"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", "sha256:00"), "64 hex"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"owner\" }}\n"), "unknown variant"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{}}\n"), "names no collection"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ \"u/x\" = \"read\" }}\n"), "key \"a\": access"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\nexpires = \"soon\"\n"), "RFC 3339"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\nwho = 1\n"), "unknown field"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n[[keys]]\nname = \"a\"\nhash = \"{}\"\naccess = {{ u = \"read\" }}\n", hash_of("y")), "twice"),
            (&format!("[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n[[keys]]\nname = \"b\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n"), "same hash"),
            (&format!("metrics_keys = [\"p\"]\n[[keys]]\nname = \"a\"\nhash = \"{h}\"\naccess = {{ u = \"read\" }}\n"), "metrics_keys"),
        ] {
            let err = KeyRing::parse(text).unwrap_err();
            assert!(err.contains(wanted), "{err:?} should mention {wanted:?}");
        }
        assert!(KeyRing::parse("").unwrap().is_empty());
    }
}
