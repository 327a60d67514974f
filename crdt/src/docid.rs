//! automerge-repo document ids for Meridian documents.
//!
//! Every document (collection, id) has one DocumentId that anyone can compute offline: the first
//! 16 bytes of SHA-256 over `meridian-doc-v1`, 0x00, the collection, 0x00, the id; then byte 6
//! becomes `(b & 0x0f) | 0x80` and byte 8 `(b & 0x3f) | 0x80`, which makes it a UUIDv8 (older
//! automerge-repo clients check for a UUID). It is written as bs58check, as automerge-repo
//! writes ids, and an automerge URL is `automerge:<that>`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use crate::key::DocKey;

/// An automerge-repo document id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocumentId([u8; 16]);

/// Why a string is not a document id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an automerge document id: {0}")]
pub struct BadDocumentId(String);

impl DocumentId {
    /// The id of a Meridian document.
    pub fn of(key: &DocKey) -> DocumentId {
        let mut h = Sha256::new();
        h.update(b"meridian-doc-v1");
        h.update([0]);
        h.update(key.collection().as_bytes());
        h.update([0]);
        h.update(key.id().as_bytes());
        let digest = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        id[6] = (id[6] & 0x0f) | 0x80;
        id[8] = (id[8] & 0x3f) | 0x80;
        DocumentId(id)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<DocumentId, BadDocumentId> {
        let id: [u8; 16] = bytes
            .try_into()
            .map_err(|_| BadDocumentId(format!("{} bytes, not 16", bytes.len())))?;
        Ok(DocumentId(id))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// `automerge:<id>`.
    pub fn url(&self) -> String {
        format!("automerge:{self}")
    }
}

impl fmt::Display for DocumentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).with_check().into_string())
    }
}

impl FromStr for DocumentId {
    type Err = BadDocumentId;

    /// A bs58check id, with or without the `automerge:` prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.strip_prefix("automerge:").unwrap_or(s);
        if text.is_empty() || text.len() > 64 {
            return Err(BadDocumentId(format!("{s:?}")));
        }
        let bytes = bs58::decode(text)
            .with_check(None)
            .into_vec()
            .map_err(|e| BadDocumentId(format!("{s:?}: {e}")))?;
        DocumentId::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuidv8_bs58check_and_round_trip() {
        let key = DocKey::new("users", "alice").unwrap();
        let id = DocumentId::of(&key);
        assert_eq!(id.as_bytes()[6] >> 4, 8, "version 8");
        assert_eq!(id.as_bytes()[8] >> 6, 0b10, "RFC 4122 variant");
        let text = id.to_string();
        assert_eq!(text.parse::<DocumentId>().unwrap(), id);
        assert_eq!(id.url().parse::<DocumentId>().unwrap(), id);
        // another key, another id; the separator keeps ("a","bc") apart from ("ab","c")
        let a = DocumentId::of(&DocKey::new("a", "bc").unwrap());
        let b = DocumentId::of(&DocKey::new("ab", "c").unwrap());
        assert_ne!(a, b);
    }

    #[test]
    fn the_documented_example_holds() {
        // docs/sync.md shows this pair; a client in any language must compute the same
        let id = DocumentId::of(&DocKey::new("users", "alice").unwrap());
        assert_eq!(
            id.to_string(),
            include_str!("../../docs/users-alice.docid").trim()
        );
    }

    #[test]
    fn malformed_ids_are_refused() {
        let good = DocumentId::of(&DocKey::new("x", "y").unwrap()).to_string();
        let mut broken = good.clone();
        broken.replace_range(0..1, if good.starts_with('2') { "3" } else { "2" });
        for bad in ["", "automerge:", "0OIl", &broken, &"1".repeat(100)] {
            assert!(bad.parse::<DocumentId>().is_err(), "{bad:?}");
        }
        // a valid bs58check string of another length
        let short = bs58::encode([1u8, 2, 3]).with_check().into_string();
        assert!(short.parse::<DocumentId>().is_err());
    }
}
