//! Validated collection names and document ids, and the storage key they make.

use crate::error::{Error, Result};

/// Longest collection name or document id, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a collection name or document id: 1 to 200 bytes of `A-Z a-z 0-9 . _ ~ @ : -`.
/// The alphabet has no `/` and no NUL, so `collection NUL id` is an unambiguous key that sorts
/// documents of one collection together, in id order.
pub fn validate_name(what: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(Error::InvalidId(format!(
            "{what} must be 1 to {MAX_NAME_LEN} bytes long"
        )));
    }
    if let Some(c) = s.chars().find(|c| !is_name_char(*c)) {
        return Err(Error::InvalidId(format!(
            "{what} contains {c:?}; allowed are A-Z a-z 0-9 . _ ~ @ : -"
        )));
    }
    Ok(())
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '@' | ':' | '-')
}

/// The address of one document.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocKey {
    collection: String,
    id: String,
}

impl DocKey {
    pub fn new(collection: &str, id: &str) -> Result<Self> {
        validate_name("collection", collection)?;
        validate_name("document id", id)?;
        Ok(DocKey {
            collection: collection.to_owned(),
            id: id.to_owned(),
        })
    }

    pub fn collection(&self) -> &str {
        &self.collection
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// `collection NUL id`: the suffix of every per-document storage key.
    #[cfg(feature = "store")]
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.collection.len() + 1 + self.id.len());
        k.extend_from_slice(self.collection.as_bytes());
        k.push(0);
        k.extend_from_slice(self.id.as_bytes());
        k
    }

    #[cfg(feature = "store")]
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self> {
        let nul = bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| Error::Corrupt("document key without separator".into()))?;
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .map(str::to_owned)
                .map_err(|_| Error::Corrupt("document key is not UTF-8".into()))
        };
        Ok(DocKey {
            collection: text(&bytes[..nul])?,
            id: text(&bytes[nul + 1..])?,
        })
    }

    /// A stable stripe index for lock striping.
    #[cfg(feature = "store")]
    pub(crate) fn stripe(&self, n: usize) -> usize {
        stripe(self, n)
    }
}

/// Which of `n` lock stripes `value` falls in (stable within a process).
#[cfg(feature = "store")]
pub(crate) fn stripe<T: std::hash::Hash + ?Sized>(value: &T, n: usize) -> usize {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    (h.finish() as usize) % n
}

impl std::fmt::Display for DocKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.collection, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        assert!(DocKey::new("users", "a.b_c~d@e:f-G9").is_ok());
        assert!(DocKey::new(&"x".repeat(200), "y").is_ok());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in ["", "a/b", "a b", "é", "a\0b", "a%2F", "a?b", "a#b"] {
            assert!(
                matches!(DocKey::new(bad, "x"), Err(Error::InvalidId(_))),
                "{bad:?}"
            );
            assert!(
                matches!(DocKey::new("x", bad), Err(Error::InvalidId(_))),
                "{bad:?}"
            );
        }
        assert!(DocKey::new("x", &"y".repeat(201)).is_err());
    }

    #[test]
    fn encode_decode_round_trip() {
        let k = DocKey::new("users", "alice").unwrap();
        assert_eq!(DocKey::decode(&k.encode()).unwrap(), k);
    }
}
