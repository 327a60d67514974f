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
        let mut bytes = [0u8; 20];
        bytes[..16].copy_from_slice(&self.0);
        let check = Sha256::digest(Sha256::digest(self.0));
        bytes[16..].copy_from_slice(&check[..4]);
        f.write_str(&base58_20(&bytes))
    }
}

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Base58 of exactly 20 bytes (an id and its checksum), as the bs58 crate writes it, a few times
/// faster: three long divisions by 58^10 over 32-bit words, where bs58 converts byte by byte.
/// Every document answer writes one, and a list page a hundred.
fn base58_20(bytes: &[u8; 20]) -> String {
    const BIG: u128 = 430_804_206_899_405_824; // 58^10
    let mut words = [0u32; 5];
    for (w, c) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_be_bytes(c.try_into().expect("4 bytes"));
    }
    // base 58 digits, least significant first
    let mut digits = Vec::with_capacity(30);
    while words.iter().any(|w| *w != 0) {
        let mut rem: u128 = 0;
        for w in words.iter_mut() {
            let cur = (rem << 32) | u128::from(*w);
            *w = (cur / BIG) as u32;
            rem = cur % BIG;
        }
        for _ in 0..10 {
            digits.push((rem % 58) as u8);
            rem /= 58;
        }
    }
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char));
    out
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
    fn base58_agrees_with_the_bs58_crate() {
        let cases: Vec<[u8; 16]> = vec![
            [0; 16],
            [0xff; 16],
            {
                let mut a = [0u8; 16];
                a[15] = 1;
                a
            },
            {
                let mut a = [0u8; 16];
                a[3] = 7;
                a
            },
        ];
        let randoms = (0..2000).map(|_| rand::random::<[u8; 16]>());
        for id in cases.into_iter().chain(randoms) {
            let want = bs58::encode(id).with_check().into_string();
            assert_eq!(DocumentId(id).to_string(), want, "{id:?}");
        }
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
