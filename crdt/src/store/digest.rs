//! The anti-entropy digest, in two levels: document keys fall into `DIGEST_BUCKETS` buckets of
//! `LEAVES_PER_BUCKET` leaves each; a leaf's digest is the XOR of a digest of each of its
//! documents' key and version, a bucket's is the XOR of its leaves'. Both are kept up to date by
//! every write and equal on two nodes when (barring hash collisions) they hold the same
//! versions of the same documents. Two nodes compare buckets, then the leaves of the buckets
//! that differ, then the documents of the leaves that differ (listed by the `docids` module), so a
//! pass costs in proportion to the differences, not to the number of documents.

use std::collections::{BTreeSet, HashMap};

use automerge::ChangeHash;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::scrub::Damage;
use super::Store;
use crate::error::Result;
use crate::key::DocKey;
use crate::record::{self, DocRecord};

/// How many buckets the anti-entropy digest has.
pub const DIGEST_BUCKETS: usize = 1024;
/// How many leaves each bucket has (about 15 documents a leaf at 1,000,000 documents).
pub const LEAVES_PER_BUCKET: usize = 64;
/// Leaves in all: a leaf is numbered `bucket * LEAVES_PER_BUCKET + i`.
pub const DIGEST_LEAVES: usize = DIGEST_BUCKETS * LEAVES_PER_BUCKET;

/// The digest leaf of a document key (stable across nodes and versions).
pub(super) fn leaf_of(key: &DocKey) -> usize {
    let h = Sha256::digest(key.encode());
    let bucket = u16::from_be_bytes([h[0], h[1]]) as usize % DIGEST_BUCKETS;
    bucket * LEAVES_PER_BUCKET + h[2] as usize % LEAVES_PER_BUCKET
}

/// The digest bucket of a document key.
#[cfg(test)]
pub(super) fn bucket_of(key: &DocKey) -> usize {
    leaf_of(key) / LEAVES_PER_BUCKET
}

/// One document's part of its leaf's digest.
fn doc_digest(key: &DocKey, version: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(key.encode());
    h.update([0]);
    h.update(version.as_bytes());
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// Per digest leaf, the XOR of a digest of each of its documents' key and version; and the
/// same per collection, for the leaves where it has documents, so that a digest can leave out
/// the collections two regions do not both hold (placement) without a scan.
#[derive(Debug)]
pub(super) struct Digests(Mutex<Leaves>);

#[derive(Debug)]
struct Leaves {
    all: Vec<u64>,
    by_collection: HashMap<String, HashMap<u32, u64>>,
}

impl Leaves {
    fn toggle(&mut self, key: &DocKey, leaf: usize, d: u64) {
        self.all[leaf] ^= d;
        // looked up before an entry is made: no allocation per write
        if !self.by_collection.contains_key(key.collection()) {
            self.by_collection
                .insert(key.collection().to_owned(), HashMap::new());
        }
        let of = self
            .by_collection
            .get_mut(key.collection())
            .expect("just made");
        let e = of.entry(leaf as u32).or_insert(0);
        *e ^= d;
        if *e == 0 {
            of.remove(&(leaf as u32));
        }
    }

    /// The per-leaf parts of the collections `without`, to XOR out of `all`.
    fn without<'a>(&'a self, without: &[&str]) -> impl Iterator<Item = (usize, u64)> + 'a {
        let parts: Vec<&HashMap<u32, u64>> = without
            .iter()
            .filter_map(|c| self.by_collection.get(*c))
            .collect();
        parts
            .into_iter()
            .flat_map(|m| m.iter().map(|(l, d)| (*l as usize, *d)))
    }
}

impl Digests {
    /// A document's version changed from `old` (if it had one) to `new`.
    pub(super) fn replace(&self, key: &DocKey, old: Option<&str>, new: &str) {
        let leaf = leaf_of(key);
        let mut leaves = self.0.lock();
        if let Some(old) = old.filter(|v| !v.is_empty()) {
            leaves.toggle(key, leaf, doc_digest(key, old));
        }
        leaves.toggle(key, leaf, doc_digest(key, new));
    }

    /// One value per bucket, leaving out the collections `without`.
    fn buckets(&self, without: &[&str]) -> Vec<u64> {
        let leaves = self.0.lock();
        let mut out: Vec<u64> = leaves
            .all
            .chunks(LEAVES_PER_BUCKET)
            .map(|c| c.iter().fold(0, |a, d| a ^ d))
            .collect();
        for (leaf, d) in leaves.without(without) {
            out[leaf / LEAVES_PER_BUCKET] ^= d;
        }
        out
    }

    /// The leaves of `buckets`, in that order, leaving out the collections `without`; `None`
    /// if a bucket is out of range.
    fn leaves_of(&self, buckets: &[u32], without: &[&str]) -> Option<Vec<u64>> {
        let leaves = self.0.lock();
        let mut out = Vec::with_capacity(buckets.len() * LEAVES_PER_BUCKET);
        let mut at: HashMap<usize, usize> = HashMap::new();
        for b in buckets {
            let first = (*b as usize).checked_mul(LEAVES_PER_BUCKET)?;
            at.entry(*b as usize).or_insert(out.len());
            out.extend_from_slice(leaves.all.get(first..first + LEAVES_PER_BUCKET)?);
        }
        if !without.is_empty() {
            for (leaf, d) in leaves.without(without) {
                if let Some(start) = at.get(&(leaf / LEAVES_PER_BUCKET)) {
                    out[start + leaf % LEAVES_PER_BUCKET] ^= d;
                }
            }
        }
        Some(out)
    }
}

/// The leaf digests of everything stored (at start-up), calling `each` with every document's
/// key and leaf on the way (one scan serves every map built at open). A damaged record is
/// marked and left out of its leaf's digest until it is healed.
pub(super) fn initial(
    db: &sled::Db,
    damage: &Damage,
    mut each: impl FnMut(&DocKey, usize),
) -> Result<Digests> {
    let mut leaves = Leaves {
        all: vec![0u64; DIGEST_LEAVES],
        by_collection: HashMap::new(),
    };
    for kv in db.scan_prefix([record::DOC]) {
        let (k, v) = kv?;
        let key = DocKey::decode(&k[1..])?;
        let leaf = leaf_of(&key);
        each(&key, leaf);
        if let Ok(rec) = damage.check(&key, record::decode::<DocRecord>(&v)) {
            leaves.toggle(&key, leaf, doc_digest(&key, &rec.version));
        }
    }
    Ok(Digests(Mutex::new(leaves)))
}

impl Store {
    /// The anti-entropy digest, one value per bucket.
    pub fn digests(&self) -> Vec<u64> {
        self.inner.digests.buckets(&[])
    }

    /// The anti-entropy digest of what this node and `peer` should both hold (placement leaves
    /// out the collections either is outside of), one value per bucket.
    pub fn digests_with(&self, peer: &str) -> Vec<u64> {
        let placement = self.placement();
        let without = placement.not_shared(self.inner.node.as_str(), peer);
        self.inner.digests.buckets(&without)
    }

    /// The leaf digests of the given buckets, `LEAVES_PER_BUCKET` per bucket in the order
    /// asked. `None` if a bucket is out of range.
    pub fn leaf_digests(&self, buckets: &[u32]) -> Option<Vec<u64>> {
        self.inner.digests.leaves_of(buckets, &[])
    }

    /// [`Store::leaf_digests`] of what this node and `peer` should both hold.
    pub fn leaf_digests_with(&self, buckets: &[u32], peer: &str) -> Option<Vec<u64>> {
        let placement = self.placement();
        let without = placement.not_shared(self.inner.node.as_str(), peer);
        self.inner.digests.leaves_of(buckets, &without)
    }

    /// The heads of every stored document in the given leaves: one lookup per document in
    /// them, whatever the number of documents stored.
    pub fn leaf_heads(&self, leaves: &BTreeSet<u32>) -> Result<Vec<(DocKey, Vec<ChangeHash>)>> {
        self.leaf_heads_where(leaves, |_| true)
    }

    /// [`Store::leaf_heads`] of the documents this node and `peer` should both hold.
    pub fn leaf_heads_with(
        &self,
        leaves: &BTreeSet<u32>,
        peer: &str,
    ) -> Result<Vec<(DocKey, Vec<ChangeHash>)>> {
        let placement = self.placement();
        let me = self.inner.node.as_str();
        self.leaf_heads_where(leaves, |key| placement.shares(key.collection(), me, peer))
    }

    fn leaf_heads_where(
        &self,
        leaves: &BTreeSet<u32>,
        keep: impl Fn(&DocKey) -> bool,
    ) -> Result<Vec<(DocKey, Vec<ChangeHash>)>> {
        let mut out = Vec::new();
        for leaf in leaves {
            for key in self.inner.doc_ids.in_leaf(*leaf as usize) {
                if !keep(&key) {
                    continue;
                }
                // listed as its first write is queued: not in sled until that is durable
                // a damaged one is being healed: it has no heads to offer
                let Ok(Some(rec)) = self.inner.read_record(&key) else {
                    continue;
                };
                out.push((key, rec.heads.into_iter().map(ChangeHash).collect()));
            }
        }
        Ok(out)
    }
}
