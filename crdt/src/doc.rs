//! One JSON document as an automerge CRDT.
//!
//! # Shape of the automerge document
//! Every document starts from the same *genesis* change, made with a fixed actor and time, so it
//! has the same hash on every node. Genesis creates the root key `v`, the user's JSON object.
//! Because `v` has the same object id everywhere, two regions that create the same document
//! concurrently edit one shared map, and their fields merge instead of one object hiding the
//! other. The root key `d` is the deletion flag (see [`Document::state`]).
//!
//! # Conflicts
//! Concurrent writes to one field leave several values. The visible one is the value whose change
//! has the latest HLC stamp (ties broken by actor, then op counter), not automerge's own op-id
//! order, so the winner is "last writer by hybrid time" on every node. All values stay readable
//! through [`Document::conflicts`].

use std::collections::HashMap;
use std::sync::OnceLock;

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{
    ActorId, Automerge, ChangeHash, LoadOptions, ObjId, ObjType, Prop, ReadDoc, ScalarValue,
    TextEncoding, Value as AmValue, ROOT,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};
use uhlc::Timestamp;

use crate::error::{Error, Result};
use crate::hlc::{display_stamp, parse_stamp};
use crate::json::{self, MAX_DEPTH};
use crate::pointer;

const USER: &str = "v";
const DELETED: &str = "d";
const GENESIS_ACTOR: &[u8] = b"meridian/genesis";
/// Text indexes of the ops API count Unicode code points.
const TEXT_ENCODING: TextEncoding = TextEncoding::UnicodeCodePoint;

/// Whether a document exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Nothing but genesis: never written.
    Absent,
    Live,
    /// Deleted, and not re-created since.
    Deleted,
}

/// A write to one document.
#[derive(Debug, Clone)]
pub enum Edit {
    /// The document becomes exactly this object.
    Put(Map<String, Value>),
    /// An RFC 7396 merge patch.
    Patch(Map<String, Value>),
    /// A list of ops applied atomically as one change.
    Ops(Vec<Op>),
    Delete,
}

/// One operation of the ops API. Paths are JSON Pointers.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Op {
    Set {
        path: String,
        value: Value,
    },
    Remove {
        path: String,
    },
    Increment {
        path: String,
        by: i64,
    },
    Insert {
        path: String,
        value: Value,
    },
    Splice {
        path: String,
        index: usize,
        #[serde(default)]
        delete: usize,
        #[serde(default)]
        insert: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpsBody {
    ops: Vec<Op>,
}

/// Parses `{"ops":[...]}` (already checked by [`json::parse`]).
pub fn parse_ops(body: Value) -> Result<Vec<Op>> {
    let OpsBody { ops } =
        serde_json::from_value(body).map_err(|e| Error::bad(format!("invalid ops: {e}")))?;
    if ops.is_empty() {
        return Err(Error::bad("ops must not be empty"));
    }
    for op in &ops {
        match op {
            Op::Set { path, .. }
            | Op::Remove { path }
            | Op::Increment { path, .. }
            | Op::Insert { path, .. }
            | Op::Splice { path, .. } => {
                pointer::parse(path)?;
            }
        }
    }
    Ok(ops)
}

/// What a successful edit did.
#[derive(Debug)]
pub struct Applied {
    /// The new change's raw bytes and hash, or `None` when the edit changed nothing.
    pub change: Option<(ChangeHash, Vec<u8>)>,
    pub before: State,
}

/// One value among the conflicting values of a field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictValue {
    pub value: Value,
    pub node: String,
    pub hlc: String,
}

/// A field with more than one value; `values[0]` is the visible winner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conflict {
    pub path: String,
    pub values: Vec<ConflictValue>,
}

/// A document: an automerge doc and the actor this node writes as.
#[derive(Debug, Clone)]
pub struct Document {
    am: Automerge,
}

fn genesis_bytes() -> &'static [u8] {
    static GENESIS: OnceLock<Vec<u8>> = OnceLock::new();
    GENESIS.get_or_init(|| {
        let mut am = Automerge::new_with_encoding(TEXT_ENCODING);
        am.set_actor(ActorId::from(GENESIS_ACTOR));
        let mut tx = am.transaction();
        tx.put_object(ROOT, USER, ObjType::Map)
            .expect("a fresh document accepts a root key");
        tx.commit_with(CommitOptions::default().with_time(0));
        am.save()
    })
}

fn genesis_hash() -> ChangeHash {
    static HASH: OnceLock<ChangeHash> = OnceLock::new();
    *HASH.get_or_init(|| {
        let am = Automerge::load(genesis_bytes()).expect("genesis loads");
        am.get_heads()[0]
    })
}

fn load_options() -> LoadOptions<'static> {
    LoadOptions::new().text_encoding(TEXT_ENCODING)
}

impl Document {
    /// A document with nothing but genesis.
    pub fn new(actor: ActorId) -> Self {
        let mut am =
            Automerge::load_with_options(genesis_bytes(), load_options()).expect("genesis loads");
        am.set_actor(actor);
        Document { am }
    }

    /// Loads a snapshot (or genesis, when `None`) and then incremental chunks in order.
    pub fn load<'a>(
        actor: ActorId,
        snapshot: Option<&[u8]>,
        increments: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Self> {
        let mut am =
            Automerge::load_with_options(snapshot.unwrap_or(genesis_bytes()), load_options())?;
        for chunk in increments {
            am.load_incremental(chunk)?;
        }
        if !am.get_missing_deps(&[]).is_empty() {
            return Err(Error::Corrupt(
                "document history has missing changes".into(),
            ));
        }
        am.set_actor(actor);
        Ok(Document { am })
    }

    /// The whole history, compressed.
    pub fn save(&self) -> Vec<u8> {
        self.am.save()
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        self.am.get_heads()
    }

    /// The opaque version string: a digest of the heads, so it changes with every change and is
    /// equal on two nodes exactly when they hold the same history.
    pub fn version(&self) -> String {
        version_of(&self.heads())
    }

    pub fn state(&self) -> State {
        if self.am.get_heads() == [genesis_hash()] {
            return State::Absent;
        }
        // Delete wins: if any concurrent value of the flag is `true`, the document is deleted.
        // A write that saw the delete overwrites every value of the flag with `false`.
        let deleted = self
            .am
            .get_all(ROOT, DELETED)
            .unwrap_or_default()
            .iter()
            .any(|(v, _)| matches!(v, AmValue::Scalar(s) if s.as_ref() == &ScalarValue::Boolean(true)));
        if deleted {
            State::Deleted
        } else {
            State::Live
        }
    }

    /// The user's JSON object (what a GET returns).
    pub fn value(&self) -> Value {
        let mut r = Renderer::new(&self.am, false);
        r.object(&user_obj(&self.am), ObjType::Map)
    }

    /// Every field with concurrent values, winner first, in document order.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let mut r = Renderer::new(&self.am, true);
        r.object(&user_obj(&self.am), ObjType::Map);
        r.conflicts
    }

    /// Applies `edit` as one change stamped `stamp` (an HLC timestamp). On error nothing changes.
    pub fn apply(&mut self, edit: &Edit, stamp: &Timestamp) -> Result<Applied> {
        let before = self.state();
        if matches!(edit, Edit::Delete) && before != State::Live {
            return Err(Error::NotFound);
        }
        let user = user_obj(&self.am);
        let mut tx = self.am.transaction();
        match edit_in(&mut tx, &user, before, edit) {
            Ok(()) => {}
            Err(e) => {
                tx.rollback();
                return Err(e);
            }
        }
        let opts = CommitOptions::default()
            .with_message(stamp.to_string())
            .with_time(stamp.get_time().as_secs() as i64);
        let (hash, _) = tx.commit_with(opts);
        let change = hash.map(|h| {
            let bytes = self
                .am
                .get_change_by_hash(&h)
                .expect("a change just committed is in the document")
                .raw_bytes()
                .to_vec();
            (h, bytes)
        });
        Ok(Applied { change, before })
    }

    /// Applies changes made elsewhere (raw change bytes). Duplicates are ignored.
    pub fn merge_changes<'a>(&mut self, changes: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        for c in changes {
            self.am.load_incremental(c)?;
        }
        Ok(())
    }

    /// Applies changes received from another node, already parsed. Duplicates are ignored;
    /// changes whose dependencies are missing wait (see [`Document::has_missing_deps`]).
    pub fn merge_remote<'a>(
        &mut self,
        changes: impl IntoIterator<Item = &'a RemoteChange>,
    ) -> Result<()> {
        let changes: Vec<automerge::Change> =
            changes.into_iter().map(|c| c.change.clone()).collect();
        self.am.apply_changes(changes)?;
        Ok(())
    }

    /// Raw bytes of every change after `heads` (all of them for `&[]`), genesis excluded.
    /// Heads this document does not know are ignored, so the answer may repeat changes the
    /// asker has: harmless, merging is idempotent.
    pub fn changes_since(&self, heads: &[ChangeHash]) -> Vec<Vec<u8>> {
        self.hashed_changes_since(heads)
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect()
    }

    /// [`Document::changes_since`] with each change's hash.
    pub fn hashed_changes_since(&self, heads: &[ChangeHash]) -> Vec<(ChangeHash, Vec<u8>)> {
        let genesis = genesis_hash();
        let known: Vec<ChangeHash> = heads
            .iter()
            .filter(|h| self.am.get_change_by_hash(h).is_some())
            .copied()
            .collect();
        self.am
            .get_changes(&known)
            .into_iter()
            .filter(|c| c.hash() != genesis)
            .map(|c| (c.hash(), c.raw_bytes().to_vec()))
            .collect()
    }

    /// True while merged changes wait for changes they depend on (they are not applied yet).
    pub fn has_missing_deps(&self) -> bool {
        !self.am.get_missing_deps(&[]).is_empty()
    }

    /// True if every change in `wanted` is in the history of `heads` (the state those heads
    /// name). For checking session guarantees.
    pub fn history_includes(&self, heads: &[ChangeHash], wanted: &[ChangeHash]) -> bool {
        if heads
            .iter()
            .any(|h| self.am.get_change_by_hash(h).is_none())
        {
            return false;
        }
        let after: std::collections::HashSet<ChangeHash> = self
            .am
            .get_changes(heads)
            .iter()
            .map(|c| c.hash())
            .collect();
        wanted
            .iter()
            .all(|w| self.am.get_change_by_hash(w).is_some() && !after.contains(w))
    }

    /// The raw bytes of one change.
    pub fn change_bytes(&self, hash: &ChangeHash) -> Option<Vec<u8>> {
        self.am
            .get_change_by_hash(hash)
            .map(|c| c.raw_bytes().to_vec())
    }
}

/// A change received from another node, parsed and checked (checksum included) once: its
/// author and HLC stamp can be read before it is merged, and merging does not parse it again.
#[derive(Debug, Clone)]
pub struct RemoteChange {
    change: automerge::Change,
    /// The node id of the author (`None` for genesis or a foreign actor).
    pub node: Option<String>,
    /// The stamp in the change's message (`None` for genesis).
    pub stamp: Option<Timestamp>,
}

impl RemoteChange {
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let change = automerge::Change::from_bytes(bytes)
            .map_err(|e| Error::bad(format!("undecodable change: {e}")))?;
        let node = std::str::from_utf8(change.actor_id().to_bytes())
            .ok()
            .filter(|s| crate::hlc::NodeId::new(s).is_ok())
            .map(str::to_owned);
        let stamp = change.message().and_then(|m| parse_stamp(m));
        Ok(RemoteChange {
            change,
            node,
            stamp,
        })
    }

    pub fn hash(&self) -> ChangeHash {
        self.change.hash()
    }
}

/// The version string of a set of heads.
fn version_of(heads: &[ChangeHash]) -> String {
    let mut sorted: Vec<&ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut h = Sha256::new();
    for head in sorted {
        h.update(head.0);
    }
    hex::encode(&h.finalize()[..16])
}

fn user_obj<D: ReadDoc>(doc: &D) -> ObjId {
    match doc.get(ROOT, USER) {
        Ok(Some((AmValue::Object(ObjType::Map), id))) => id,
        _ => unreachable!("genesis creates the user object and nothing overwrites it"),
    }
}

// ---------------------------------------------------------------------------------------------
// Conflict resolution by HLC

/// Something that can tell which change an op belongs to.
trait History: ReadDoc {
    fn change_of(&self, id: &ObjId) -> Option<ChangeHash>;
}

impl History for Automerge {
    fn change_of(&self, id: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(id)
    }
}

impl History for Transaction<'_> {
    fn change_of(&self, id: &ObjId) -> Option<ChangeHash> {
        self.hash_for_opid(id)
    }
}

/// Ordering key of one op: HLC stamp, then actor, then op counter. Genesis and ops of the
/// current transaction have no stamp and sort first; they are never in conflict with each other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct OpOrder {
    stamp: Option<Timestamp>,
    actor: Vec<u8>,
    counter: u64,
}

fn op_order<D: History>(
    doc: &D,
    id: &ObjId,
    cache: &mut HashMap<ChangeHash, Option<Timestamp>>,
) -> OpOrder {
    let (counter, actor) = match id {
        ObjId::Id(counter, actor, _) => (*counter, actor.to_bytes().to_vec()),
        ObjId::Root => (0, vec![]),
    };
    let stamp = doc.change_of(id).and_then(|h| {
        *cache.entry(h).or_insert_with(|| {
            doc.get_change_by_hash(&h)
                .and_then(|c| c.message().and_then(|m| parse_stamp(m)))
        })
    });
    OpOrder {
        stamp,
        actor,
        counter,
    }
}

/// All values of `prop` in `obj`, winner (latest HLC) first.
fn ranked<'d, D: History>(
    doc: &'d D,
    obj: &ObjId,
    prop: Prop,
    cache: &mut HashMap<ChangeHash, Option<Timestamp>>,
) -> Vec<(AmValue<'d>, ObjId)> {
    let mut all = doc.get_all(obj, prop).unwrap_or_default();
    if all.len() > 1 {
        all.sort_by_cached_key(|(_, id)| std::cmp::Reverse(op_order(doc, id, cache)));
    }
    all
}

fn scalar_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(i) => Value::from(*i),
        ScalarValue::Uint(u) => Value::from(*u),
        ScalarValue::F64(f) => Number::from_f64(*f)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        ScalarValue::Counter(c) => Value::from(i64::from(c)),
        ScalarValue::Timestamp(t) => Value::from(*t),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Bytes(b) => Value::String(hex::encode(b)),
        ScalarValue::Null | ScalarValue::Unknown { .. } => Value::Null,
    }
}

fn json_scalar(v: &Value) -> ScalarValue {
    match v {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Number(n) => match n.as_i64() {
            Some(i) => ScalarValue::Int(i),
            // json::parse refuses integers outside i64, so the rest are floats
            None => ScalarValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::Array(_) | Value::Object(_) => unreachable!("containers are not scalars"),
    }
}

/// Renders automerge objects as JSON, choosing winners by HLC, optionally collecting conflicts.
struct Renderer<'d, D: History> {
    doc: &'d D,
    stamps: HashMap<ChangeHash, Option<Timestamp>>,
    collect: bool,
    path: Vec<String>,
    conflicts: Vec<Conflict>,
}

impl<'d, D: History> Renderer<'d, D> {
    fn new(doc: &'d D, collect: bool) -> Self {
        Renderer {
            doc,
            stamps: HashMap::new(),
            collect,
            path: vec![],
            conflicts: vec![],
        }
    }

    fn object(&mut self, obj: &ObjId, typ: ObjType) -> Value {
        match typ {
            ObjType::Map | ObjType::Table => {
                let mut out = Map::new();
                for key in self.doc.keys(obj) {
                    if let Some(v) = self.field(obj, Prop::Map(key.clone()), &key) {
                        out.insert(key, v);
                    }
                }
                Value::Object(out)
            }
            ObjType::List => {
                let len = self.doc.length(obj);
                let mut out = Vec::with_capacity(len);
                for i in 0..len {
                    if let Some(v) = self.field(obj, Prop::Seq(i), &i.to_string()) {
                        out.push(v);
                    }
                }
                Value::Array(out)
            }
            ObjType::Text => Value::String(self.doc.text(obj).unwrap_or_default()),
        }
    }

    fn field(&mut self, obj: &ObjId, prop: Prop, token: &str) -> Option<Value> {
        let all = ranked(self.doc, obj, prop, &mut self.stamps);
        self.path.push(pointer::escape(token));
        let out = all.first().map(|(v, id)| self.value(v, id));
        if self.collect && all.len() > 1 {
            let values = all
                .iter()
                .map(|(v, id)| {
                    let order = op_order(self.doc, id, &mut self.stamps);
                    // losers are rendered without descending into their own conflicts
                    let value = Renderer::new(self.doc, false).value(v, id);
                    ConflictValue {
                        value,
                        node: String::from_utf8_lossy(&order.actor).into_owned(),
                        hlc: order.stamp.as_ref().map(display_stamp).unwrap_or_default(),
                    }
                })
                .collect();
            self.conflicts.push(Conflict {
                path: format!("/{}", self.path.join("/")),
                values,
            });
        }
        self.path.pop();
        out
    }

    fn value(&mut self, v: &AmValue<'_>, id: &ObjId) -> Value {
        match v {
            AmValue::Object(typ) => self.object(id, *typ),
            AmValue::Scalar(s) => scalar_json(s),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edits

/// The current winning value at `prop`, and whether it is in conflict.
enum Current {
    Absent,
    Scalar(ScalarValue, bool),
    Object(ObjType, ObjId, bool),
}

fn current(tx: &Transaction<'_>, obj: &ObjId, prop: Prop) -> Current {
    let mut cache = HashMap::new();
    let all = ranked(tx, obj, prop, &mut cache);
    let conflicted = all.len() > 1;
    match all.into_iter().next() {
        None => Current::Absent,
        Some((AmValue::Scalar(s), _)) => Current::Scalar(s.into_owned(), conflicted),
        Some((AmValue::Object(t), id)) => Current::Object(t, id, conflicted),
    }
}

fn edit_in(tx: &mut Transaction<'_>, user: &ObjId, before: State, edit: &Edit) -> Result<()> {
    if matches!(edit, Edit::Delete) {
        clear(tx, user)?;
        tx.put(ROOT, DELETED, true)?;
        return Ok(());
    }
    match before {
        // A write that has seen the delete re-creates the document from nothing: drop what
        // concurrent updates left behind, and overwrite every value of the flag.
        State::Deleted => {
            clear(tx, user)?;
            tx.put(ROOT, DELETED, false)?;
        }
        // Creating writes the flag too, so that even `{}` makes a change and a document.
        State::Absent => tx.put(ROOT, DELETED, false)?,
        State::Live => {}
    }
    match edit {
        Edit::Put(body) => replace_map(tx, user, body),
        Edit::Patch(patch) => merge_patch(tx, user, patch),
        Edit::Ops(ops) => ops.iter().try_for_each(|op| apply_op(tx, user, op)),
        Edit::Delete => unreachable!(),
    }
}

fn clear(tx: &mut Transaction<'_>, obj: &ObjId) -> Result<()> {
    let keys: Vec<String> = tx.keys(obj).collect();
    for k in keys {
        tx.delete(obj, k)?;
    }
    Ok(())
}

/// Sets `prop` to `v`, writing only what differs, so that concurrent edits of other fields
/// survive a merge.
fn assign(tx: &mut Transaction<'_>, obj: &ObjId, prop: Prop, v: &Value) -> Result<()> {
    let cur = current(tx, obj, prop.clone());
    match (v, cur) {
        (Value::Object(m), Current::Object(ObjType::Map, id, false)) => replace_map(tx, &id, m),
        (Value::Object(m), _) => {
            let id = tx.put_object(obj, prop, ObjType::Map)?;
            fill_map(tx, &id, m)
        }
        (Value::Array(a), Current::Object(ObjType::List, id, false))
            if Renderer::new(&*tx, false).object(&id, ObjType::List) == *v =>
        {
            let _ = a;
            Ok(())
        }
        (Value::Array(a), _) => {
            let id = tx.put_object(obj, prop, ObjType::List)?;
            fill_list(tx, &id, a)
        }
        (Value::String(s), Current::Object(ObjType::Text, id, false)) => {
            if tx.text(&id)? != *s {
                tx.update_text(&id, s)?;
            }
            Ok(())
        }
        (scalar, Current::Scalar(s, false)) if scalar_json(&s) == *scalar => Ok(()),
        (scalar, _) => {
            tx.put(obj, prop, json_scalar(scalar))?;
            Ok(())
        }
    }
}

fn replace_map(tx: &mut Transaction<'_>, obj: &ObjId, body: &Map<String, Value>) -> Result<()> {
    let stale: Vec<String> = tx.keys(obj).filter(|k| !body.contains_key(k)).collect();
    for k in stale {
        tx.delete(obj, k)?;
    }
    for (k, v) in body {
        assign(tx, obj, Prop::Map(k.clone()), v)?;
    }
    Ok(())
}

fn fill_map(tx: &mut Transaction<'_>, obj: &ObjId, m: &Map<String, Value>) -> Result<()> {
    for (k, v) in m {
        match v {
            Value::Object(inner) => {
                let id = tx.put_object(obj, k.as_str(), ObjType::Map)?;
                fill_map(tx, &id, inner)?;
            }
            Value::Array(inner) => {
                let id = tx.put_object(obj, k.as_str(), ObjType::List)?;
                fill_list(tx, &id, inner)?;
            }
            scalar => tx.put(obj, k.as_str(), json_scalar(scalar))?,
        }
    }
    Ok(())
}

fn fill_list(tx: &mut Transaction<'_>, list: &ObjId, items: &[Value]) -> Result<()> {
    for (i, v) in items.iter().enumerate() {
        insert_json(tx, list, i, v)?;
    }
    Ok(())
}

fn insert_json(tx: &mut Transaction<'_>, list: &ObjId, index: usize, v: &Value) -> Result<()> {
    match v {
        Value::Object(m) => {
            let id = tx.insert_object(list, index, ObjType::Map)?;
            fill_map(tx, &id, m)
        }
        Value::Array(a) => {
            let id = tx.insert_object(list, index, ObjType::List)?;
            fill_list(tx, &id, a)
        }
        scalar => Ok(tx.insert(list, index, json_scalar(scalar))?),
    }
}

/// RFC 7396: `null` removes a key, an object merges recursively, anything else replaces.
fn merge_patch(tx: &mut Transaction<'_>, obj: &ObjId, patch: &Map<String, Value>) -> Result<()> {
    for (k, v) in patch {
        let prop = Prop::Map(k.clone());
        match v {
            Value::Null => {
                if !matches!(current(tx, obj, prop), Current::Absent) {
                    tx.delete(obj, k.as_str())?;
                }
            }
            Value::Object(inner) => match current(tx, obj, prop) {
                Current::Object(ObjType::Map, id, _) => merge_patch(tx, &id, inner)?,
                _ => {
                    let id = tx.put_object(obj, k.as_str(), ObjType::Map)?;
                    merge_patch(tx, &id, inner)?;
                }
            },
            other => assign(tx, obj, prop, other)?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ops

/// Where an op's path leads: the container and the last token.
struct Target {
    parent: ObjId,
    parent_type: ObjType,
    last: String,
    path: String,
}

impl Target {
    fn map_or_index(&self, tx: &Transaction<'_>, allow_end: bool) -> Result<Prop> {
        match self.parent_type {
            ObjType::Map | ObjType::Table => Ok(Prop::Map(self.last.clone())),
            ObjType::List => {
                let len = tx.length(&self.parent);
                let idx = if self.last == "-" && allow_end {
                    len
                } else {
                    pointer::index(&self.last).ok_or_else(|| {
                        Error::unprocessable(format!(
                            "{}: {:?} is not a list index",
                            self.path, self.last
                        ))
                    })?
                };
                let limit = if allow_end {
                    len
                } else {
                    len.saturating_sub(1)
                };
                if idx > limit || (!allow_end && len == 0) {
                    return Err(Error::unprocessable(format!(
                        "{}: index {idx} is out of range (list length {len})",
                        self.path
                    )));
                }
                Ok(Prop::Seq(idx))
            }
            ObjType::Text => Err(Error::unprocessable(format!(
                "{}: text has no fields",
                self.path
            ))),
        }
    }
}

fn resolve_target(
    tx: &Transaction<'_>,
    user: &ObjId,
    path: &str,
    value_depth: usize,
) -> Result<Target> {
    let tokens = pointer::parse(path)?;
    let Some((last, parents)) = tokens.split_last() else {
        return Err(Error::unprocessable(
            "an op cannot target the whole document; use PUT to replace it",
        ));
    };
    if tokens.len() + value_depth > MAX_DEPTH {
        return Err(Error::bad(format!(
            "JSON nesting deeper than {MAX_DEPTH} levels"
        )));
    }
    let mut obj = user.clone();
    let mut typ = ObjType::Map;
    let mut walked = String::new();
    for token in parents {
        walked.push('/');
        walked.push_str(&pointer::escape(token));
        let prop = match typ {
            ObjType::List => match pointer::index(token) {
                Some(i) if i < tx.length(&obj) => Prop::Seq(i),
                _ => return Err(Error::unprocessable(format!("{walked} does not exist"))),
            },
            _ => Prop::Map(token.clone()),
        };
        match current(tx, &obj, prop) {
            Current::Object(t @ (ObjType::Map | ObjType::List | ObjType::Table), id, _) => {
                obj = id;
                typ = t;
            }
            Current::Absent => {
                return Err(Error::unprocessable(format!("{walked} does not exist")))
            }
            _ => {
                return Err(Error::unprocessable(format!(
                    "{walked} is not an object or array"
                )))
            }
        }
    }
    Ok(Target {
        parent: obj,
        parent_type: typ,
        last: last.clone(),
        path: path.to_owned(),
    })
}

fn apply_op(tx: &mut Transaction<'_>, user: &ObjId, op: &Op) -> Result<()> {
    match op {
        Op::Set { path, value } => {
            let t = resolve_target(tx, user, path, json::depth(value))?;
            let prop = t.map_or_index(tx, false)?;
            assign(tx, &t.parent, prop, value)
        }
        Op::Remove { path } => {
            let t = resolve_target(tx, user, path, 0)?;
            let prop = t.map_or_index(tx, false)?;
            if matches!(current(tx, &t.parent, prop.clone()), Current::Absent) {
                return Err(Error::unprocessable(format!("{path} does not exist")));
            }
            Ok(tx.delete(&t.parent, prop)?)
        }
        Op::Increment { path, by } => {
            let t = resolve_target(tx, user, path, 0)?;
            let prop = t.map_or_index(tx, false)?;
            match current(tx, &t.parent, prop.clone()) {
                Current::Absent => tx.put(&t.parent, prop, ScalarValue::counter(*by))?,
                Current::Scalar(ScalarValue::Counter(c), _) => {
                    i64::from(&c)
                        .checked_add(*by)
                        .ok_or_else(|| Error::unprocessable(format!("{path}: counter overflow")))?;
                    tx.increment(&t.parent, prop, *by)?
                }
                // The first increment of a plain integer turns it into a counter (a set);
                // from then on increments commute.
                Current::Scalar(ScalarValue::Int(i), _) => {
                    let n = i
                        .checked_add(*by)
                        .ok_or_else(|| Error::unprocessable(format!("{path}: counter overflow")))?;
                    tx.put(&t.parent, prop, ScalarValue::counter(n))?
                }
                _ => {
                    return Err(Error::unprocessable(format!(
                        "{path}: increment needs a counter or an integer"
                    )))
                }
            }
            Ok(())
        }
        Op::Insert { path, value } => {
            let t = resolve_target(tx, user, path, json::depth(value))?;
            if t.parent_type != ObjType::List {
                return Err(Error::unprocessable(format!("{path}: insert needs a list")));
            }
            let Prop::Seq(idx) = t.map_or_index(tx, true)? else {
                unreachable!()
            };
            insert_json(tx, &t.parent, idx, value)
        }
        Op::Splice {
            path,
            index,
            delete,
            insert,
        } => {
            let t = resolve_target(tx, user, path, 0)?;
            let prop = t.map_or_index(tx, false)?;
            let text = match current(tx, &t.parent, prop.clone()) {
                Current::Object(ObjType::Text, id, _) => id,
                Current::Absent => tx.put_object(&t.parent, prop, ObjType::Text)?,
                Current::Scalar(ScalarValue::Str(s), _) => {
                    let id = tx.put_object(&t.parent, prop, ObjType::Text)?;
                    tx.splice_text(&id, 0, 0, &s)?;
                    id
                }
                _ => {
                    return Err(Error::unprocessable(format!(
                        "{path}: splice needs a string"
                    )))
                }
            };
            let len = tx.length(&text);
            if *index > len || delete > &(len - index) {
                return Err(Error::unprocessable(format!(
                    "{path}: splice at {index} deleting {delete} is outside the text (length {len})"
                )));
            }
            let del = isize::try_from(*delete).map_err(|_| Error::bad("delete is too large"))?;
            Ok(tx.splice_text(&text, *index, del, insert)?)
        }
    }
}

#[cfg(test)]
#[path = "doc_tests.rs"]
mod tests;
