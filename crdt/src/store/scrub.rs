//! Finding damage. Every document record, snapshot and increment carries a checksum
//! (`record`); a load that finds one broken, or a history that does not reach the heads its
//! record names, marks the document damaged here instead of serving it, and the document is
//! refused ([`Error::Damaged`]) until `heal` rebuilds it. The scrub walks every document from
//! disk with the same checks, a few at a time, so damage to documents nobody reads is found
//! too. Findings live in memory: after a restart the scrub (or the first load) finds them
//! again, and changes that arrived for a damaged document are held durably (`Q` records).

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::{now_ms, Inner, Store};
use crate::error::{Error, Result};
use crate::key::DocKey;
use crate::record::{self, DocRecord};

/// A damaged document, as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub collection: String,
    pub id: String,
    /// What was wrong with it.
    pub what: String,
    pub found_ms: u64,
    /// Why the last heal did not finish, if one was tried.
    pub heal_error: Option<String>,
}

/// The scrub's progress and what it found (`/v1/status`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubStatus {
    /// Passes over every document finished since start-up.
    pub passes: u64,
    /// Documents checked in the pass under way, and how many there were when it began.
    pub checked: u64,
    pub of: u64,
    /// Documents checked since start-up, by the scrub.
    pub checked_total: u64,
    /// When the last pass finished.
    pub last_pass_ms: Option<u64>,
    /// Damaged documents found since start-up (by the scrub or by a load), and healed.
    pub found: u64,
    pub healed: u64,
    /// Documents damaged now, the first few.
    pub damaged: Vec<Finding>,
    /// How many documents are damaged now.
    pub damaged_count: u64,
}

/// Documents shown in [`ScrubStatus::damaged`].
const SHOWN: usize = 20;

#[derive(Default)]
pub(super) struct Damage {
    found: Mutex<BTreeMap<DocKey, Finding>>,
    status: Mutex<ScrubStatus>,
    notify: tokio::sync::Notify,
}

impl Damage {
    /// Notes `key` as damaged (`what` says how) and returns the error to answer with (a key
    /// already noted keeps its first finding).
    pub(super) fn mark(&self, key: &DocKey, what: &str) -> Error {
        let mut found = self.found.lock();
        let what = found.get(key).map_or(what, |f| f.what.as_str()).to_owned();
        let what = what.as_str();
        if !found.contains_key(key) {
            tracing::error!(key = %key, what, "a stored document is damaged; healing it from the peers");
            found.insert(
                key.clone(),
                Finding {
                    collection: key.collection().into(),
                    id: key.id().into(),
                    what: what.into(),
                    found_ms: now_ms(),
                    heal_error: None,
                },
            );
            self.status.lock().found += 1;
            self.notify.notify_one();
        }
        Error::Damaged(format!(
            "{key} is damaged on this node ({what}); it is being fetched again from a peer region"
        ))
    }

    /// Turns the corruption of a stored document into its damage; other errors pass.
    pub(super) fn check<T>(&self, key: &DocKey, r: Result<T>) -> Result<T> {
        match r {
            Err(Error::Corrupt(what)) => Err(self.mark(key, &what)),
            other => other,
        }
    }

    pub(super) fn is_damaged(&self, key: &DocKey) -> bool {
        self.found.lock().contains_key(key)
    }

    pub(super) fn healed(&self, key: &DocKey) {
        if self.found.lock().remove(key).is_some() {
            self.status.lock().healed += 1;
        }
    }

    pub(super) fn heal_failed(&self, key: &DocKey, why: &str) {
        if let Some(f) = self.found.lock().get_mut(key) {
            f.heal_error = Some(why.into());
        }
    }
}

/// What [`Store::scrub_some`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubBatch {
    pub checked: usize,
    /// Where the next batch starts; `None` when the pass is over.
    pub next: Option<DocKey>,
}

impl Store {
    /// Checks up to `max` documents from disk, in key order after `after` (from the first for
    /// `None`, which starts a pass): record, snapshot and increments must pass their checksums
    /// and load into a history with the recorded heads. A document with writes queued is
    /// skipped (its state on disk is about to change; the next pass checks it).
    pub async fn scrub_some(&self, after: Option<&DocKey>, max: usize) -> Result<ScrubBatch> {
        let inner = &*self.inner;
        if after.is_none() {
            let mut st = inner.damage.status.lock();
            st.checked = 0;
            st.of = inner.commit.documents();
        }
        let start = match after {
            Some(k) => {
                let mut s = record::doc_key(record::DOC, k);
                s.push(0);
                s
            }
            None => vec![record::DOC],
        };
        let mut keys = Vec::with_capacity(max);
        for kv in inner
            .tree
            .range(start..vec![record::DOC + 1])
            .keys()
            .take(max)
        {
            keys.push(DocKey::decode(&kv?[1..])?);
        }
        for key in &keys {
            let _lock = inner.doc_lock(key).await;
            if inner.docs.pinned_record(key).is_some() || inner.damage.is_damaged(key) {
                continue;
            }
            if let Err(e) = inner.load_stored(key) {
                let _ = inner.damage.check(key, Err::<(), _>(e));
            }
        }
        let mut st = inner.damage.status.lock();
        st.checked += keys.len() as u64;
        st.checked_total += keys.len() as u64;
        let next = (keys.len() == max).then(|| keys.last().cloned()).flatten();
        if next.is_none() {
            st.passes += 1;
            st.last_pass_ms = Some(now_ms());
        }
        Ok(ScrubBatch {
            checked: keys.len(),
            next,
        })
    }

    pub fn scrub_status(&self) -> ScrubStatus {
        let damage = &self.inner.damage;
        let found = damage.found.lock();
        let mut st = damage.status.lock().clone();
        st.damaged = found.values().take(SHOWN).cloned().collect();
        st.damaged_count = found.len() as u64;
        st
    }

    /// The documents damaged now.
    pub fn damaged_documents(&self) -> Vec<DocKey> {
        self.inner.damage.found.lock().keys().cloned().collect()
    }

    /// Resolves when a document is newly found damaged.
    pub async fn damage_found(&self) {
        self.inner.damage.notify.notified().await
    }
}

impl Inner {
    /// The document's record and history as stored on disk (not the cache), checked: every
    /// part passes its checksum, and the history reaches the recorded heads. `None` if never
    /// written.
    pub(super) fn load_stored(
        &self,
        key: &DocKey,
    ) -> Result<Option<(DocRecord, crate::doc::Document)>> {
        let Some(rec) = self.read_record_unchecked(key)? else {
            return Ok(None);
        };
        let snapshot = self.tree.get(record::doc_key(record::SNAPSHOT, key))?;
        let snapshot = snapshot.as_deref().map(record::strip_format).transpose()?;
        let mut increments = Vec::with_capacity(rec.incr_count as usize);
        for n in rec.incr_base..rec.incr_base + rec.incr_count {
            let chunk = self
                .tree
                .get(record::increment_key(key, n))?
                .ok_or_else(|| Error::Corrupt(format!("incremental change {n} is missing")))?;
            increments.push(chunk);
        }
        let chunks = increments
            .iter()
            .map(|c| record::strip_format(c))
            .collect::<Result<Vec<_>>>()?;
        let doc =
            crate::doc::Document::load(self.node.actor(), snapshot, chunks).map_err(
                |e| match e {
                    Error::Automerge(e) => {
                        Error::Corrupt(format!("the stored history does not load: {e}"))
                    }
                    other => other,
                },
            )?;
        let mut want: Vec<[u8; 32]> = rec.heads.clone();
        let mut have: Vec<[u8; 32]> = doc.heads().iter().map(|h| h.0).collect();
        want.sort();
        have.sort();
        if want != have {
            return Err(Error::Corrupt(
                "the stored history does not reach the recorded heads".into(),
            ));
        }
        Ok(Some((rec, doc)))
    }
}
