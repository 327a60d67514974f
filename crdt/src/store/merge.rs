//! Merging changes made on other nodes: the replication feed, anti-entropy and heals all come
//! through [`Store::merge_remote`], into the same commit path as local writes (`write`).

use std::collections::HashMap;

use automerge::ChangeHash;

use super::write::NewChange;
use super::{space, Merged, Store};
use crate::doc::{Document, RemoteChange};
use crate::error::{Error, Result};
use crate::key::DocKey;
use crate::record;

impl Store {
    /// Merges changes made on other nodes (parsed and checked by [`RemoteChange::parse`]) into
    /// their documents, and stores `meta` (replication bookkeeping, under `M`) after them, all
    /// through group commit. Returns once everything is durable; the bookkeeping is durable only
    /// if every change before it is. Changes already present are ignored; changes whose
    /// dependencies are missing wait in memory (and are reported) until those arrive.
    pub async fn merge_remote(
        &self,
        docs: Vec<(DocKey, Vec<RemoteChange>)>,
        meta: Vec<(String, Vec<u8>)>,
    ) -> Result<Merged> {
        let inner = &*self.inner;
        inner.commit.check()?;
        inner.space.check(space::Need::Converge)?;
        let mut merged = Merged::default();
        let mut queued = Vec::new();
        let mut last_seq = None;
        let mut held = Vec::new();
        let result = async {
            for (key, changes) in group_by_document(docs) {
                let mut w = match inner.open_write(&key).await {
                    Ok(w) => w,
                    // kept, durably with the bookkeeping, for the heal
                    Err(Error::Damaged(_)) => {
                        merged.held += changes.len();
                        held.extend(Store::hold(&key, &changes));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                last_seq = last_seq.max(w.queued_before);
                let new = {
                    let mut doc = w.doc_dirty();
                    let hashes = doc.merge_remote(&changes)?;
                    if doc.has_missing_deps() {
                        merged.missing_deps.push(key.clone());
                    }
                    new_changes(&doc, &changes, hashes)
                };
                if new.is_empty() {
                    let _ = w.unchanged();
                    continue;
                }
                merged.documents += 1;
                merged.changes += new.len();
                let q = w.commit(new, |_| vec![])?;
                last_seq = q.seq().or(last_seq);
                queued.push(q);
            }
            if !meta.is_empty() || !held.is_empty() {
                let mut ops = std::mem::take(&mut held);
                ops.extend(
                    meta.into_iter()
                        .map(|(name, v)| (record::meta_key(&name), Some(v))),
                );
                last_seq = Some(inner.commit.submit(0, |_| ops)?);
            }
            Ok::<_, Error>(())
        }
        .await;
        // whatever happened, what was queued is waited for and unpinned
        let durable = match last_seq {
            Some(seq) => inner.commit.durable(seq).await,
            None => Ok(()),
        };
        for q in queued {
            q.done();
        }
        result?;
        durable?;
        Ok(merged)
    }
}

/// One pass per document, in the order documents first appear.
fn group_by_document(docs: Vec<(DocKey, Vec<RemoteChange>)>) -> Vec<(DocKey, Vec<RemoteChange>)> {
    let mut order: Vec<DocKey> = Vec::new();
    let mut grouped: HashMap<DocKey, Vec<RemoteChange>> = HashMap::new();
    for (key, changes) in docs {
        match grouped.get_mut(&key) {
            Some(all) => all.extend(changes),
            None => {
                order.push(key.clone());
                grouped.insert(key, changes);
            }
        }
    }
    order
        .into_iter()
        .map(|k| {
            let changes = grouped.remove(&k).unwrap_or_default();
            (k, changes)
        })
        .collect()
}

/// The merged changes just applied, with their bytes (as received: nothing is re-encoded).
fn new_changes(
    doc: &Document,
    received: &[RemoteChange],
    applied: Vec<ChangeHash>,
) -> Vec<NewChange> {
    let by_hash: HashMap<ChangeHash, &RemoteChange> =
        received.iter().map(|c| (c.hash(), c)).collect();
    applied
        .into_iter()
        .filter_map(|hash| {
            let bytes = match by_hash.get(&hash) {
                Some(c) => c.bytes().to_vec(),
                // applied from an earlier batch that waited for its dependencies
                None => doc.change_bytes(&hash)?,
            };
            Some(NewChange {
                hash,
                bytes,
                feed: None,
            })
        })
        .collect()
}
