//! The anti-entropy digest: per bucket of document keys, the XOR of a digest of each document's
//! key and version, kept up to date by every write; equal on two nodes when (barring hash
//! collisions) they hold the same versions of the same documents.

use std::collections::BTreeSet;

use automerge::ChangeHash;
use sha2::{Digest, Sha256};

use super::{Inner, Store};
use crate::error::Result;
use crate::key::DocKey;
use crate::record::{self, DocRecord};

/// How many buckets the anti-entropy digest has.
pub const DIGEST_BUCKETS: usize = 1024;

/// The digest bucket of a document key (stable across nodes and versions).
pub(super) fn bucket_of(key: &DocKey) -> usize {
    let h = Sha256::digest(key.encode());
    u16::from_be_bytes([h[0], h[1]]) as usize % DIGEST_BUCKETS
}

/// One document's part of its bucket's digest.
fn doc_digest(key: &DocKey, version: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key.encode());
    h.update([0]);
    h.update(version.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// The digests of everything stored (at start-up), calling `each` with every document's key
/// on the way (one scan serves every map built at open).
pub(super) fn initial(db: &sled::Db, mut each: impl FnMut(&DocKey)) -> Result<Vec<u64>> {
    let mut digests = vec![0u64; DIGEST_BUCKETS];
    for kv in db.scan_prefix([record::DOC]) {
        let (k, v) = kv?;
        let key = DocKey::decode(&k[1..])?;
        let rec: DocRecord = record::decode(&v)?;
        digests[bucket_of(&key)] ^= doc_digest(&key, &rec.version);
        each(&key);
    }
    Ok(digests)
}

/// A document's version changed from `old` (if it had one) to `new`.
pub(super) fn replace(inner: &Inner, key: &DocKey, old: Option<&str>, new: &str) {
    let mut digests = inner.digests.lock();
    let b = bucket_of(key);
    if let Some(old) = old.filter(|v| !v.is_empty()) {
        digests[b] ^= doc_digest(key, old);
    }
    digests[b] ^= doc_digest(key, new);
}

impl Store {
    /// The anti-entropy digest, one value per bucket.
    pub fn digests(&self) -> Vec<u64> {
        self.inner.digests.lock().clone()
    }

    /// The heads of every stored document in the given buckets (a scan of all records).
    pub fn bucket_heads(&self, buckets: &BTreeSet<u32>) -> Result<Vec<(DocKey, Vec<ChangeHash>)>> {
        let mut out = Vec::new();
        for kv in self.inner.tree.scan_prefix([record::DOC]) {
            let (k, v) = kv?;
            let key = DocKey::decode(&k[1..])?;
            if !buckets.contains(&(bucket_of(&key) as u32)) {
                continue;
            }
            let rec: DocRecord = record::decode(&v)?;
            out.push((key, rec.heads.into_iter().map(ChangeHash).collect()));
        }
        Ok(out)
    }
}
