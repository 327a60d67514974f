//! Session tokens: what a client's session has seen, as a map from node to HLC time.
//!
//! `eu-1=18a3f2c4d5e6f708,us-1=18a3f2c4d5e6f7a0` means: this session has read or written state
//! that includes changes made on `eu-1` up to that HLC time, and on `us-1` up to that one. A
//! node answers such a request only once it holds every change of each named node up to the
//! named time. Two tokens merge by taking, per node, the later time (a join: commutative,
//! associative, idempotent), so a client that talks to several regions keeps one token.

use std::collections::BTreeMap;
use std::fmt;

/// Most nodes a token may name: a cluster is small, and tokens travel in every request.
pub const MAX_TOKEN_NODES: usize = 64;

/// A session token. The empty token covers nothing and is satisfied everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionToken(BTreeMap<String, u64>);

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed session token: {0}")]
pub struct BadToken(pub String);

impl SessionToken {
    /// Parses the header form. Strict: anything unexpected is an error, never ignored; a node
    /// named twice is the merge of the two.
    pub fn parse(s: &str) -> Result<Self, BadToken> {
        let mut map = BTreeMap::new();
        if s.is_empty() {
            return Ok(SessionToken(map));
        }
        for part in s.split(',') {
            let (node, time) = part
                .split_once('=')
                .ok_or_else(|| BadToken(format!("{part:?} is not node=time")))?;
            meridian_crdt::NodeId::new(node).map_err(|e| BadToken(e.to_string()))?;
            if time.is_empty() || time.len() > 16 || !time.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BadToken(format!("time {time:?} is not 1 to 16 hex digits")));
            }
            let time = u64::from_str_radix(time, 16)
                .map_err(|_| BadToken(format!("time {time:?} is not hexadecimal")))?;
            // a node named twice (two tokens joined with a comma) counts with its later time:
            // that is the tokens' merge
            let t = map.entry(node.to_owned()).or_insert(time);
            *t = (*t).max(time);
        }
        if map.len() > MAX_TOKEN_NODES {
            return Err(BadToken(format!("more than {MAX_TOKEN_NODES} nodes")));
        }
        Ok(SessionToken(map))
    }

    /// Raises `node`'s time to `time` if it is later.
    pub fn observe(&mut self, node: &str, time: u64) {
        let t = self.0.entry(node.to_owned()).or_insert(0);
        *t = (*t).max(time);
    }

    /// The join of two tokens: per node, the later time.
    pub fn merge(&mut self, other: &SessionToken) {
        for (node, time) in &other.0 {
            self.observe(node, *time);
        }
    }

    /// Drops `node`'s entry (a node no region has: see `unknown_session_node`).
    pub fn forget(&mut self, node: &str) {
        self.0.remove(node);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(n, t)| (n.as_str(), *t))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (node, time)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{node}={time:x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn token() -> impl Strategy<Value = SessionToken> {
        proptest::collection::btree_map("[a-c]", any::<u64>(), 0..4).prop_map(SessionToken)
    }

    proptest! {
        #[test]
        fn round_trips(t in token()) {
            prop_assert_eq!(SessionToken::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn two_tokens_joined_with_a_comma_are_their_merge(a in token(), b in token()) {
            prop_assume!(!a.is_empty() && !b.is_empty());
            let mut m = a.clone();
            m.merge(&b);
            prop_assert_eq!(SessionToken::parse(&format!("{a},{b}")).unwrap(), m);
        }

        #[test]
        fn merge_is_a_join(a in token(), b in token(), c in token()) {
            let m = |x: &SessionToken, y: &SessionToken| { let mut r = x.clone(); r.merge(y); r };
            prop_assert_eq!(m(&a, &b), m(&b, &a));
            prop_assert_eq!(m(&m(&a, &b), &c), m(&a, &m(&b, &c)));
            prop_assert_eq!(m(&a, &a), a.clone());
            // the merge covers both
            let ab = m(&a, &b);
            for (n, t) in a.iter().chain(b.iter()) {
                prop_assert!(ab.0[n] >= t);
            }
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "eu",
            "eu=",
            "eu=xyz",
            "=1",
            "e/u=1",
            "eu=11111111111111111",
            "eu=1,",
            "eu=-1",
            "eu=+1",
        ] {
            assert!(SessionToken::parse(bad).is_err(), "{bad:?}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("n{i}=1")).collect();
        assert!(SessionToken::parse(&many.join(",")).is_err());
        assert_eq!(SessionToken::parse("").unwrap(), SessionToken::default());
        assert_eq!(
            SessionToken::parse("us=ff,eu=1").unwrap().to_string(),
            "eu=1,us=ff"
        );
    }
}
