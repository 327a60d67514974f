//! The automerge floor: what a PATCH needs of automerge, alone, in this process.

use std::time::Instant;

use super::profile;

/// µs per write of automerge alone, single-threaded: one field put in a transaction, the
/// commit, the change's bytes, the incremental save, and the document rendered as JSON; over
/// `docs` documents written in turn, `writes` in all.
pub(crate) fn automerge_floor(docs: usize, writes: usize) -> f64 {
    use automerge::{
        transaction::Transactable, AutoCommit, ObjType, ReadDoc, ScalarValue, Value, ROOT,
    };
    let mut all: Vec<(AutoCommit, automerge::ObjId)> = (0..docs)
        .map(|i| {
            let mut d = AutoCommit::new();
            let user = d.put_object(ROOT, "user", ObjType::Map).expect("user");
            for (k, v) in profile(i).as_object().expect("object") {
                match v {
                    serde_json::Value::String(s) => d.put(&user, k.as_str(), s.as_str()),
                    other => d.put(&user, k.as_str(), other.as_i64().unwrap_or(0)),
                }
                .expect("put");
            }
            d.commit();
            let _ = d.save_incremental();
            (d, user)
        })
        .collect();
    let t0 = Instant::now();
    let mut bytes = 0usize;
    for i in 0..writes {
        let (d, user) = &mut all[i % docs];
        d.put(&*user, "n", (i + 1_000_000) as i64).expect("put");
        let hash = d.commit().expect("a change");
        bytes += d
            .get_change_by_hash(&hash)
            .expect("the change")
            .raw_bytes()
            .len();
        bytes += d.save_incremental().len();
        let mut json = serde_json::Map::new();
        let keys: Vec<String> = d.keys(&*user).collect();
        for k in keys {
            let v = match d.get(&*user, k.as_str()).expect("get") {
                Some((Value::Scalar(s), _)) => match s.as_ref() {
                    ScalarValue::Str(s) => serde_json::Value::from(s.as_str()),
                    ScalarValue::Int(n) => serde_json::Value::from(*n),
                    _ => serde_json::Value::Null,
                },
                _ => serde_json::Value::Null,
            };
            json.insert(k, v);
        }
        bytes += serde_json::to_string(&json).expect("json").len();
    }
    let per = t0.elapsed().as_secs_f64() * 1e6 / writes as f64;
    assert!(bytes > 0);
    per
}
