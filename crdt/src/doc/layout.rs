//! The public layout of a Meridian document, and the check that client changes keep it.
//!
//! Every document starts from the same *genesis* change (a fixed actor, time 0, no message)
//! that creates the root key `v`, the user's JSON object; so `v` has the same object id on every
//! node and client, and concurrent creations of one document edit one shared map. The root key
//! `d` is the deletion flag. Nothing else lives at the root. `docs/sync.md` publishes this for
//! automerge-repo clients.

use std::sync::OnceLock;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, Automerge, ChangeHash, LoadOptions, ObjId, ObjType, Prop, ReadDoc, ScalarValue,
    TextEncoding, Value as AmValue, ROOT,
};

use crate::json::MAX_DEPTH;

/// Root key of the user's object.
pub(crate) const USER: &str = "v";
/// Root key of the deletion flag.
pub(crate) const DELETED: &str = "d";
pub(crate) const GENESIS_ACTOR: &[u8] = b"meridian/genesis";
/// Text indexes of the ops API count Unicode code points.
pub(crate) const TEXT_ENCODING: TextEncoding = TextEncoding::UnicodeCodePoint;

/// The genesis change, saved as a document (the bytes a client seeds under a document's id).
pub fn genesis_bytes() -> &'static [u8] {
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

/// The genesis change's hash (`7ffabf88…`, pinned by a test).
pub fn genesis_hash() -> ChangeHash {
    static HASH: OnceLock<ChangeHash> = OnceLock::new();
    *HASH.get_or_init(|| {
        let am = Automerge::load(genesis_bytes()).expect("genesis loads");
        am.get_heads()[0]
    })
}

pub(crate) fn load_options() -> LoadOptions<'static> {
    LoadOptions::new().text_encoding(TEXT_ENCODING)
}

/// A document holding genesis alone, to clone: loading the bytes costs five times as much in
/// automerge 0.12 (it rebuilds its columns), and every new document starts here.
pub(crate) fn genesis_doc() -> Automerge {
    static DOC: OnceLock<Automerge> = OnceLock::new();
    DOC.get_or_init(|| {
        Automerge::load_with_options(genesis_bytes(), load_options()).expect("genesis loads")
    })
    .clone()
}

/// The user's object: the one genesis made. A document whose layout holds never has another.
pub(crate) fn user_obj<D: ReadDoc>(doc: &D) -> ObjId {
    match doc.get(ROOT, USER) {
        Ok(Some((AmValue::Object(ObjType::Map), id))) => id,
        _ => unreachable!("genesis creates the user object and the layout check keeps it"),
    }
}

/// True for the actor of a node's changes: a node id (1 to 16 of `A-Z a-z 0-9 . _ -`). Only
/// nodes write as such actors, and only their changes carry HLC stamps; a client change under
/// such an actor is refused (it could forge a stamp, or take a sequence number a node will use).
pub(crate) fn is_node_actor(actor: &[u8]) -> bool {
    std::str::from_utf8(actor).is_ok_and(|s| crate::hlc::NodeId::new(s).is_ok())
}

/// Checks that changes from a client may be accepted: the client's own are authored by client
/// actors (not a node's, not genesis's), and the document they leave is one the HTTP API renders
/// exactly. `am` is the document with the changes applied; `actors` those of the client's own.
pub(crate) fn check_client_changes(am: &Automerge, actors: &[ActorId]) -> Result<(), String> {
    for actor in actors {
        let bytes = actor.to_bytes();
        if bytes == GENESIS_ACTOR || is_node_actor(bytes) {
            return Err(format!(
                "a client change may not use actor {actor} (node ids and genesis are reserved)"
            ));
        }
    }
    check(am)
}

/// The changes in one entry of a sync message's change list: one change (sync messages v1),
/// several changes one after the other or a bundle of changes (v2; their dependencies are in
/// the receiver's document), or a whole saved document (v2, when most of it is new). Strict: an
/// entry that does not split into whole chunks, each of these kinds, is an error, never partly
/// applied.
pub(crate) fn decode_chunk(entry: &[u8]) -> Result<Vec<automerge::Change>, String> {
    let mut out = Vec::new();
    for chunk in split_chunks(entry)? {
        if let Ok(c) = change_from_bytes(chunk.to_vec()) {
            out.push(c);
            continue;
        }
        if let Ok(b) = automerge::Bundle::try_from(chunk) {
            out.extend(
                b.to_changes()
                    .map_err(|e| format!("undecodable bundle of changes: {e}"))?,
            );
            continue;
        }
        let opts = load_options().on_partial_load(automerge::OnPartialLoad::Error);
        let doc = Automerge::load_with_options(chunk, opts)
            .map_err(|e| format!("undecodable changes: {e}"))?;
        out.extend(doc.get_changes(&[]));
    }
    Ok(out)
}

/// Parses one change and checks its checksum. automerge 0.12's `Change::from_bytes` does not:
/// a flipped byte in a change's dependencies or actor parses as another change. The checksum
/// in the chunk header is the first four bytes of the change's hash.
pub(crate) fn change_from_bytes(bytes: Vec<u8>) -> Result<automerge::Change, String> {
    let checksum: [u8; 4] = bytes
        .get(4..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("undecodable change: too short for its header")?;
    let change =
        automerge::Change::from_bytes(bytes).map_err(|e| format!("undecodable change: {e}"))?;
    if change.hash().0[..4] != checksum {
        return Err("a change whose checksum does not match its contents".into());
    }
    Ok(change)
}

/// Splits bytes into automerge chunks: each is the magic bytes, a checksum, a type byte, a
/// LEB128 length and that many bytes.
fn split_chunks(mut bytes: &[u8]) -> Result<Vec<&[u8]>, String> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 10 || bytes[..4] != MAGIC {
            return Err("not an automerge chunk".into());
        }
        let (mut len, mut shift, mut at) = (0u64, 0u32, 9usize);
        loop {
            let b = *bytes.get(at).ok_or("a chunk length runs past the end")?;
            if shift >= 63 {
                return Err("a chunk length is too long".into());
            }
            len |= u64::from(b & 0x7f) << shift;
            at += 1;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| at.checked_add(l))
            .filter(|e| *e <= bytes.len())
            .ok_or("a chunk runs past the end")?;
        out.push(&bytes[..end]);
        bytes = &bytes[end..];
    }
    Ok(out)
}

/// The layout check: root keys `v` (the genesis map, one value) and `d` (booleans) only, and
/// under `v` only what JSON can say and the HTTP API renders: maps, lists, text without marks,
/// strings, integers within i64, finite floats, counters, booleans, null; nesting of at most
/// 64 levels. Every value of a conflict is checked, not only the visible one.
pub(crate) fn check(am: &Automerge) -> Result<(), String> {
    for key in am.keys(ROOT) {
        if key != USER && key != DELETED {
            return Err(format!(
                "root key {key:?} is not part of the layout (only \"v\" and \"d\")"
            ));
        }
    }
    let genesis_user = genesis_user_obj();
    let users = am.get_all(ROOT, USER).map_err(|e| e.to_string())?;
    match users.as_slice() {
        [(AmValue::Object(ObjType::Map), id)] if *id == genesis_user => {}
        _ => return Err("root key \"v\" must stay the genesis map (it was replaced)".into()),
    }
    for (v, _) in am.get_all(ROOT, DELETED).map_err(|e| e.to_string())? {
        if !matches!(v, AmValue::Scalar(ref s) if matches!(s.as_ref(), ScalarValue::Boolean(_))) {
            return Err("root key \"d\" holds only booleans".into());
        }
    }
    check_object(am, &genesis_user, ObjType::Map, "", 1)
}

fn genesis_user_obj() -> ObjId {
    static ID: OnceLock<ObjId> = OnceLock::new();
    ID.get_or_init(|| {
        let am = Automerge::load(genesis_bytes()).expect("genesis loads");
        user_obj(&am)
    })
    .clone()
}

fn check_object(
    am: &Automerge,
    obj: &ObjId,
    typ: ObjType,
    path: &str,
    depth: usize,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nesting deeper than {MAX_DEPTH} levels"));
    }
    let props: Vec<(Prop, String)> = match typ {
        ObjType::Map => am.keys(obj).map(|k| (Prop::Map(k.clone()), k)).collect(),
        ObjType::List => (0..am.length(obj))
            .map(|i| (Prop::Seq(i), i.to_string()))
            .collect(),
        ObjType::Text => {
            let marks = am.marks(obj).map_err(|e| e.to_string())?;
            if !marks.is_empty() {
                return Err(format!("{path}: text marks are not part of the layout"));
            }
            let text = am.text(obj).map_err(|e| e.to_string())?;
            // with code-point indexes, anything but characters (a block marker) adds length
            if text.chars().count() != am.length(obj) {
                return Err(format!("{path}: text may hold only characters"));
            }
            return Ok(());
        }
        ObjType::Table => return Err(format!("{path}: tables are not part of the layout")),
    };
    for (prop, token) in props {
        let here = format!("{path}/{}", crate::pointer::escape(&token));
        for (value, id) in am.get_all(obj, prop).map_err(|e| e.to_string())? {
            match value {
                AmValue::Object(t) => check_object(am, &id, t, &here, depth + 1)?,
                AmValue::Scalar(s) => check_scalar(&s, &here)?,
            }
        }
    }
    Ok(())
}

fn check_scalar(s: &ScalarValue, path: &str) -> Result<(), String> {
    let bad = match s {
        ScalarValue::Str(_)
        | ScalarValue::Int(_)
        | ScalarValue::Counter(_)
        | ScalarValue::Boolean(_)
        | ScalarValue::Null => return Ok(()),
        ScalarValue::Uint(u) if i64::try_from(*u).is_ok() => return Ok(()),
        ScalarValue::F64(f) if f.is_finite() => return Ok(()),
        ScalarValue::Uint(_) => "an integer outside i64",
        ScalarValue::F64(_) => "a number JSON cannot hold (NaN or infinite)",
        ScalarValue::Bytes(_) => "bytes",
        ScalarValue::Timestamp(_) => "a timestamp value",
        ScalarValue::Unknown { .. } => "a value of an unknown type",
    };
    Err(format!("{path}: {bad} is not part of the layout"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;

    fn doc_with_changes(n: usize) -> (Automerge, Vec<automerge::Change>) {
        let mut am = Automerge::load(genesis_bytes()).unwrap();
        am.set_actor(ActorId::from([0xf0u8; 16].as_slice()));
        let v = user_obj(&am);
        for i in 0..n {
            let mut tx = am.transaction();
            tx.put(&v, "k", i as i64).unwrap();
            tx.commit();
        }
        let changes = am.get_changes(&[genesis_hash()]);
        (am, changes)
    }

    #[test]
    fn every_kind_of_entry_decodes_and_garbage_does_not() {
        let (am, changes) = doc_with_changes(3);
        let hashes: Vec<_> = changes.iter().map(|c| c.hash()).collect();
        let decoded = |e: &[u8]| -> Vec<ChangeHash> {
            let mut h: Vec<_> = decode_chunk(e).unwrap().iter().map(|c| c.hash()).collect();
            h.retain(|x| *x != genesis_hash());
            h
        };
        // v1: one change
        assert_eq!(decoded(changes[0].raw_bytes()), hashes[..1]);
        // v2: changes one after the other in one entry (what 0.12 sends)
        let concat: Vec<u8> = changes
            .iter()
            .flat_map(|c| c.raw_bytes().to_vec())
            .collect();
        assert_eq!(decoded(&concat), hashes);
        // v2: a whole document
        assert_eq!(decoded(&am.save()), hashes);
        // a bundle
        let bundle = am.bundle(hashes.clone()).unwrap();
        assert_eq!(decoded(bundle.bytes()), hashes);
        // garbage, a torn entry, trailing bytes
        assert!(decode_chunk(b"garbage").is_err());
        assert!(decode_chunk(&concat[..concat.len() - 1]).is_err());
        let mut trailing = concat.clone();
        trailing.push(0);
        assert!(decode_chunk(&trailing).is_err());
        // a flipped byte anywhere in a change is caught (by the checksum, or the parse)
        let raw = changes[0].raw_bytes();
        for i in 0..raw.len() {
            let mut bad = raw.to_vec();
            bad[i] ^= 0xff;
            assert!(decode_chunk(&bad).is_err(), "byte {i} of {}", raw.len());
        }
    }
}
