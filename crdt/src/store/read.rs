//! Reads. GET and lists read the materialized record in sled (durable by construction) and
//! never load automerge; reads that need the automerge document first wait, holding the
//! document's lock, until its queued writes are durable.

use automerge::ChangeHash;

use super::{DocState, DocView, Page, Store};
use crate::doc::{Conflict, State};
use crate::error::Result;
use crate::key::{validate_name, DocKey};
use crate::record::{self, DocRecord};

fn live_view(id: &str, rec: DocRecord) -> Option<DocView> {
    (rec.state == State::Live).then(|| DocView {
        id: id.to_owned(),
        json: rec.json,
        version: rec.version,
    })
}

impl Store {
    /// A document's stored state (durable), or `None` if it was never written.
    pub fn read_state(&self, key: &DocKey) -> Result<Option<DocState>> {
        Ok(self.inner.read_record(key)?.map(|r| DocState {
            state: r.state,
            json: if r.state == State::Live {
                r.json
            } else {
                "null".into()
            },
            version: r.version,
            heads: r.heads.into_iter().map(ChangeHash).collect(),
        }))
    }

    /// The document's state with the change-event position it reflects exactly: every event up
    /// to the position is in the state, none after it (a stream's first `document` event).
    pub fn read_state_at(&self, key: &DocKey) -> Result<(Option<DocState>, u64)> {
        let (state, seq) = self.inner.commit.consistent(|| self.read_state(key));
        Ok((state?, seq))
    }

    /// A live document, or `None` if absent or deleted.
    pub async fn get(&self, key: &DocKey) -> Result<Option<DocView>> {
        self.inner.check_placed(key.collection())?;
        let Some(rec) = self.inner.read_record(key)? else {
            return Ok(None);
        };
        Ok(live_view(key.id(), rec))
    }

    /// A live document and its conflicts.
    pub async fn get_with_conflicts(
        &self,
        key: &DocKey,
    ) -> Result<Option<(DocView, Vec<Conflict>)>> {
        self.inner.check_placed(key.collection())?;
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Ok(None);
        };
        let Some(rec) = slot.rec.lock().clone() else {
            return Ok(None);
        };
        let conflicts = slot.doc.lock().conflicts();
        Ok(live_view(key.id(), rec).map(|v| (v, conflicts)))
    }

    /// Live documents of a collection in id order, after the cursor `after`.
    pub async fn list(&self, collection: &str, after: Option<&str>, limit: usize) -> Result<Page> {
        validate_name("collection", collection)?;
        self.inner.check_placed(collection)?;
        let mut prefix = vec![record::DOC];
        prefix.extend_from_slice(collection.as_bytes());
        prefix.push(0);
        let mut end = prefix.clone();
        *end.last_mut().expect("non-empty") = 1;
        let start = match after {
            Some(a) => {
                validate_name("cursor", a)?;
                let mut s = prefix.clone();
                s.extend_from_slice(a.as_bytes());
                s.push(0); // just past `a` itself
                s
            }
            None => prefix.clone(),
        };
        let mut items = Vec::new();
        let mut more = false;
        for kv in self.inner.tree.range(start..end) {
            let (k, v) = kv?;
            let key = DocKey::decode(&k[1..])?;
            // a damaged document fails the page: never a silent partial list
            let rec: DocRecord = self.inner.damage.check(&key, record::decode(&v))?;
            if rec.state != State::Live {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.extend(live_view(key.id(), rec));
        }
        let next = if more {
            items.last().map(|d| d.id.clone())
        } else {
            None
        };
        Ok(Page { items, next })
    }

    /// The changes of a document after `heads` (see [`crate::Document::changes_since`]); empty
    /// if the document was never written.
    pub async fn changes_since(&self, key: &DocKey, heads: &[ChangeHash]) -> Result<Vec<Vec<u8>>> {
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Ok(vec![]);
        };
        let doc = slot.doc.lock();
        Ok(doc.changes_since(heads))
    }

    /// True if the history of `heads` holds every change in `wanted` (false if this node lacks
    /// any of them). For checking session guarantees in tests.
    pub async fn history_includes(
        &self,
        key: &DocKey,
        heads: &[ChangeHash],
        wanted: &[ChangeHash],
    ) -> Result<bool> {
        let Some((slot, _lock)) = self.inner.settled_slot(key).await? else {
            return Ok(heads.is_empty() && wanted.is_empty());
        };
        let doc = slot.doc.lock();
        Ok(doc.history_includes(heads, wanted))
    }
}
