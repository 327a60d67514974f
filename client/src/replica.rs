//! Offline replicas: documents kept on this device, read and edited as JSON while offline, with
//! the same PUT / merge patch / ops meaning as the HTTP API (they run the node's own document
//! code), and synced with a node whenever one is reachable ([`crate::Syncer`]).
//!
//! A directory holds one file per document (`file`), the actor this device writes as (made once;
//! a client actor is never a node id), and a lock: one process at a time. Every edit is on disk
//! (appended and synced) before it returns, so it survives an app restart or a crash.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use meridian_crdt::{
    ActorId, ChangeHash, Conflict, DocKey, Document, DocumentId, Edit, State, SyncState,
};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::file::ReplicaFile;

/// Fold a replica's chunks into one save after this many.
const COMPACT_EVERY: usize = 64;

/// What a replica knows of its sync with a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncStatus {
    /// Edits made here that no node has acknowledged yet (acknowledged: durable on a node).
    pub unacknowledged: usize,
    /// When a node last told this replica its state.
    pub last_sync: Option<SystemTime>,
    /// The connected node says it does not have the document (and it has nothing to send it).
    pub unavailable: bool,
}

#[derive(Debug)]
struct DocState {
    doc: Document,
    file: ReplicaFile,
    /// The heads of what was last written to the file.
    saved: Vec<ChangeHash>,
    /// The heads the node last said it has (durably).
    server_heads: Vec<ChangeHash>,
    last_sync: Option<SystemTime>,
    unavailable: bool,
}

#[derive(Debug)]
struct DocInner {
    key: DocKey,
    id: DocumentId,
    state: Mutex<DocState>,
    /// Wakes waiters on this document's sync status.
    acked: Notify,
}

/// One document's replica. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LocalDoc {
    inner: Arc<DocInner>,
    replicas: Arc<ReplicasInner>,
}

#[derive(Debug)]
pub(crate) struct ReplicasInner {
    dir: PathBuf,
    actor: ActorId,
    _lock: File,
    docs: Mutex<HashMap<DocumentId, Arc<DocInner>>>,
    /// Documents changed here (or opened) since the syncer last looked.
    pub(crate) dirty: Mutex<HashSet<DocumentId>>,
    pub(crate) wake: Notify,
}

/// A directory of replicas. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Replicas {
    inner: Arc<ReplicasInner>,
}

fn file_of(dir: &Path, id: &DocumentId) -> PathBuf {
    dir.join(format!("{id}.replica"))
}

/// An actor that no node can have: 16 random bytes, never all of a node id's alphabet.
fn client_actor() -> ActorId {
    let mut a = rand::random::<[u8; 16]>();
    a[0] |= 0x80; // not ASCII, so never a node id
    ActorId::from(a.as_slice())
}

impl Replicas {
    /// Opens (or creates) the directory, and every replica in it.
    pub fn open(dir: impl AsRef<Path>) -> Result<Replicas> {
        let dir = dir.as_ref().to_owned();
        std::fs::create_dir_all(&dir)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        lock.try_lock().map_err(|_| {
            Error::Local(format!(
                "the replica directory {} is in use by another process",
                dir.display()
            ))
        })?;
        let actor_path = dir.join("actor");
        let actor = match std::fs::read_to_string(&actor_path) {
            Ok(hex) => ActorId::from(
                hex::decode(hex.trim())
                    .map_err(|_| Error::Local(format!("{} is damaged", actor_path.display())))?
                    .as_slice(),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let a = client_actor();
                let tmp = dir.join("actor.tmp");
                std::fs::write(&tmp, a.to_hex_string())?;
                File::open(&tmp)?.sync_all()?;
                std::fs::rename(&tmp, &actor_path)?;
                File::open(&dir)?.sync_all()?;
                a
            }
            Err(e) => return Err(e.into()),
        };
        let r = Replicas {
            inner: Arc::new(ReplicasInner {
                dir: dir.clone(),
                actor,
                _lock: lock,
                docs: Mutex::new(HashMap::new()),
                dirty: Mutex::new(HashSet::new()),
                wake: Notify::new(),
            }),
        };
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "replica") {
                r.load(&path)?;
            }
        }
        Ok(r)
    }

    /// This device's actor.
    pub fn actor(&self) -> &ActorId {
        &self.inner.actor
    }

    fn load(&self, path: &Path) -> Result<LocalDoc> {
        let (file, key, chunks) = ReplicaFile::open(path)?;
        let mut doc = Document::new(self.inner.actor.clone());
        doc.merge_changes(chunks.iter().map(Vec::as_slice))?;
        Ok(self.register(key, doc, file))
    }

    fn register(&self, key: DocKey, doc: Document, file: ReplicaFile) -> LocalDoc {
        let id = DocumentId::of(&key);
        let saved = doc.heads();
        let inner = Arc::new(DocInner {
            key,
            id,
            state: Mutex::new(DocState {
                doc,
                file,
                saved,
                server_heads: vec![],
                last_sync: None,
                unavailable: false,
            }),
            acked: Notify::new(),
        });
        self.inner.docs.lock().insert(id, inner.clone());
        self.inner.changed(id);
        LocalDoc {
            inner,
            replicas: self.inner.clone(),
        }
    }

    /// The replica of (collection, id): the one on disk, or a new one seeded with genesis under
    /// the document's computed id (so it is the same document as the node's, never a new random
    /// one). A new replica shows nothing until edited or synced.
    pub fn open_doc(&self, collection: &str, id: &str) -> Result<LocalDoc> {
        let key = DocKey::new(collection, id)?;
        let docid = DocumentId::of(&key);
        if let Some(inner) = self.inner.docs.lock().get(&docid).cloned() {
            return Ok(LocalDoc {
                inner,
                replicas: self.inner.clone(),
            });
        }
        let doc = Document::new(self.inner.actor.clone());
        let file = ReplicaFile::create(&file_of(&self.inner.dir, &docid), &key, &doc.save())?;
        Ok(self.register(key, doc, file))
    }

    /// Every replica in the directory.
    pub fn docs(&self) -> Vec<LocalDoc> {
        self.inner
            .docs
            .lock()
            .values()
            .map(|inner| LocalDoc {
                inner: inner.clone(),
                replicas: self.inner.clone(),
            })
            .collect()
    }

    pub(crate) fn get(&self, id: &DocumentId) -> Option<LocalDoc> {
        self.inner.docs.lock().get(id).map(|inner| LocalDoc {
            inner: inner.clone(),
            replicas: self.inner.clone(),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<ReplicasInner> {
        &self.inner
    }
}

impl ReplicasInner {
    fn changed(&self, id: DocumentId) {
        self.dirty.lock().insert(id);
        self.wake.notify_one();
    }
}

impl LocalDoc {
    pub fn key(&self) -> &DocKey {
        &self.inner.key
    }

    pub fn document_id(&self) -> DocumentId {
        self.inner.id
    }

    /// The document's JSON, as the HTTP API would show it now; `None` while it does not exist
    /// (never written, or deleted).
    pub fn value(&self) -> Option<Value> {
        let s = self.inner.state.lock();
        (s.doc.state() == State::Live).then(|| s.doc.value())
    }

    pub fn state(&self) -> State {
        self.inner.state.lock().doc.state()
    }

    /// Fields with concurrent values, winner first. An edit of this replica not yet stamped by a
    /// node shows as the latest write (empty `node` and `hlc`).
    pub fn conflicts(&self) -> Vec<Conflict> {
        self.inner.state.lock().doc.conflicts()
    }

    /// The heads of this replica's history.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.inner.state.lock().doc.heads()
    }

    /// The opaque version, equal to the node's when both hold the same history.
    pub fn version(&self) -> String {
        self.inner.state.lock().doc.version()
    }

    /// The document becomes exactly `value` (a JSON object).
    pub fn put(&self, value: &Value) -> Result<()> {
        self.edit(Edit::Put(object(value)?))
    }

    /// An RFC 7396 merge patch.
    pub fn patch(&self, patch: &Value) -> Result<()> {
        self.edit(Edit::Patch(object(patch)?))
    }

    /// Ops (`[{"op":"increment","path":"/n","by":1}, …]`), atomically.
    pub fn ops(&self, ops: &Value) -> Result<()> {
        let ops = meridian_crdt::parse_ops(serde_json::json!({ "ops": ops }))?;
        self.edit(Edit::Ops(ops))
    }

    pub fn delete(&self) -> Result<()> {
        self.edit(Edit::Delete)
    }

    /// Applies an edit and puts it on disk; the syncer sends it when a node is reachable.
    pub fn edit(&self, edit: Edit) -> Result<()> {
        {
            let mut s = self.inner.state.lock();
            s.doc.apply_unstamped(&edit)?;
            persist(&self.inner.key, &mut s)?;
        }
        self.replicas.changed(self.inner.id);
        Ok(())
    }

    pub fn status(&self) -> SyncStatus {
        let s = self.inner.state.lock();
        SyncStatus {
            unacknowledged: s.doc.own_changes_outside(&s.server_heads),
            last_sync: s.last_sync,
            unavailable: s.unavailable,
        }
    }

    /// Waits until a node has acknowledged every edit made here so far.
    pub async fn acknowledged(&self) {
        loop {
            let wait = self.inner.acked.notified();
            tokio::pin!(wait);
            // registered before the check: `notify_waiters` wakes only futures already waiting
            wait.as_mut().enable();
            if self.status().unacknowledged == 0 {
                return;
            }
            wait.await;
        }
    }

    /// Runs `f` on the document and its sync state with a node (for the syncer), persisting
    /// what it changes.
    pub(crate) fn with_sync<R>(&self, f: impl FnOnce(&mut Document) -> Result<R>) -> Result<R> {
        let mut s = self.inner.state.lock();
        let r = f(&mut s.doc)?;
        persist(&self.inner.key, &mut s)?;
        Ok(r)
    }

    /// The node said what it has (heads from its sync message).
    pub(crate) fn node_has(&self, state: &SyncState) {
        {
            let mut s = self.inner.state.lock();
            if let Some(h) = &state.their_heads {
                s.server_heads = h.clone();
            }
            s.last_sync = Some(SystemTime::now());
            s.unavailable = false;
        }
        self.inner.acked.notify_waiters();
    }

    pub(crate) fn set_unavailable(&self) {
        self.inner.state.lock().unavailable = true;
        self.inner.acked.notify_waiters();
    }
}

fn object(v: &Value) -> Result<serde_json::Map<String, Value>> {
    v.as_object()
        .cloned()
        .ok_or_else(|| Error::Invalid("a document is a JSON object".into()))
}

/// Writes what is new since the last write (and folds the file when it has many chunks).
fn persist(key: &DocKey, s: &mut DocState) -> Result<()> {
    let heads = s.doc.heads();
    if heads == s.saved {
        return Ok(());
    }
    if s.file.chunks >= COMPACT_EVERY {
        let all = s.doc.save();
        s.file.rewrite(key, &all)?;
    } else {
        let delta = s.doc.save_after(&s.saved);
        s.file.append(&delta)?;
    }
    s.saved = heads;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edits_survive_a_restart_and_the_actor_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (actor, version) = {
            let r = Replicas::open(dir.path()).unwrap();
            let d = r.open_doc("users", "alice").unwrap();
            assert_eq!(d.value(), None, "a new replica shows nothing");
            d.put(&json!({"name": "Alice", "tags": ["a"]})).unwrap();
            d.patch(&json!({"plan": "pro"})).unwrap();
            d.ops(&json!([{"op": "increment", "path": "/logins", "by": 2},
                          {"op": "splice", "path": "/name", "index": 5, "insert": "!"}]))
                .unwrap();
            for i in 0..(COMPACT_EVERY + 5) {
                d.patch(&json!({ "n": i })).unwrap();
            }
            assert_eq!(d.status().unacknowledged, COMPACT_EVERY + 8);
            (r.actor().clone(), d.version())
        };
        let r = Replicas::open(dir.path()).unwrap();
        assert_eq!(r.actor(), &actor);
        let d = r.open_doc("users", "alice").unwrap();
        assert_eq!(d.version(), version);
        let v = d.value().unwrap();
        assert_eq!(v["name"], "Alice!");
        assert_eq!(v["logins"], 2);
        assert_eq!(v["n"], COMPACT_EVERY as i64 + 4);
        assert_eq!(r.docs().len(), 1);
    }

    #[test]
    fn the_same_edits_mean_the_same_as_on_a_node() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replicas::open(dir.path()).unwrap();
        let d = r.open_doc("users", "bob").unwrap();
        d.put(&json!({"a": {"b": 1, "c": 2}, "l": [1, 2]})).unwrap();
        d.patch(&json!({"a": {"b": null}})).unwrap();
        assert_eq!(d.value().unwrap(), json!({"a": {"c": 2}, "l": [1, 2]}));
        let err = d
            .ops(&json!([{"op": "increment", "path": "/l", "by": 1}]))
            .unwrap_err();
        assert!(err.to_string().contains("increment"), "{err}");
        assert!(d.put(&json!([1])).is_err());
        d.delete().unwrap();
        assert_eq!(d.state(), State::Deleted);
        assert!(d.delete().is_err());
        d.patch(&json!({"again": true})).unwrap();
        assert_eq!(d.value().unwrap(), json!({"again": true}));
        assert!(r.open_doc("bad/collection", "x").is_err());
    }

    #[test]
    fn one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let _r = Replicas::open(dir.path()).unwrap();
        let err = Replicas::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("in use"), "{err}");
    }
}
