//! Which document an automerge-repo id names. A hash cannot be reversed, so the node keeps the
//! map: in memory, rebuilt at open from the scan of every document record that the digests
//! need anyway, and extended by the commit path with every document's first record (written
//! here or received from a peer).
//!
//! Not on disk: the ids are random, and random keys in sled's log-structured tree rewrite a
//! random page per insert (1,000,000 documents measured 2,170 MiB on disk with the index in
//! sled, against 1,267 without). In memory it takes about 40 bytes a document: keys packed
//! into one arena, a map from id to offset.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::docid::DocumentId;
use crate::key::DocKey;

#[derive(Debug, Default)]
struct Inner {
    /// Id -> offset of the encoded key in `keys`.
    at: HashMap<DocumentId, u32>,
    /// Encoded keys (`collection NUL id`), each behind its length (u16, little-endian).
    keys: Vec<u8>,
}

/// The map from document ids to documents.
#[derive(Debug, Default)]
pub(super) struct DocIds(RwLock<Inner>);

impl DocIds {
    /// Notes a document (idempotent).
    pub(super) fn insert(&self, key: &DocKey) {
        let id = DocumentId::of(key);
        if self.0.read().at.contains_key(&id) {
            return;
        }
        let encoded = key.encode();
        let mut inner = self.0.write();
        let Ok(offset) = u32::try_from(inner.keys.len()) else {
            // 4 GiB of keys: past what one node is built for; the id stays unknown
            tracing::error!("the document id map is full");
            return;
        };
        inner.at.entry(id).or_insert(offset);
        inner
            .keys
            .extend_from_slice(&(encoded.len() as u16).to_le_bytes());
        inner.keys.extend_from_slice(&encoded);
    }

    pub(super) fn get(&self, id: &DocumentId) -> Option<DocKey> {
        let inner = self.0.read();
        let at = *inner.at.get(id)? as usize;
        let len = u16::from_le_bytes([inner.keys[at], inner.keys[at + 1]]) as usize;
        DocKey::decode(&inner.keys[at + 2..at + 2 + len]).ok()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.read().at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_back_to_their_documents() {
        let m = DocIds::default();
        let keys: Vec<DocKey> = (0..1000)
            .map(|i| DocKey::new("users", &format!("u{i}")).unwrap())
            .collect();
        for k in &keys {
            m.insert(k);
            m.insert(k);
        }
        assert_eq!(m.len(), 1000);
        for k in &keys {
            assert_eq!(m.get(&DocumentId::of(k)).as_ref(), Some(k));
        }
        let other = DocumentId::of(&DocKey::new("users", "nobody").unwrap());
        assert_eq!(m.get(&other), None);
    }
}
