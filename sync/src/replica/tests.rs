//! The answering side: bad input, cut answers.

use super::*;
use crate::wire::{self, DocHeads, Request, Response};
use meridian_crdt::{DocKey, DIGEST_BUCKETS, DIGEST_LEAVES};
use proptest::prelude::*;

/// A network that reaches nobody.
#[derive(Debug)]
struct NoNet;

impl Transport for NoNet {
    async fn call(&self, _: &Peer, _: Vec<u8>, _: Duration) -> Result<Vec<u8>, crate::Error> {
        Err(crate::Error::Unreachable("no network".into()))
    }

    async fn open(&self, _: &Peer, _: Vec<u8>, _: Duration) -> Result<Chunks, crate::Error> {
        Err(crate::Error::Unreachable("no network".into()))
    }
}

fn replica(dir: &std::path::Path) -> Replica<NoNet> {
    let mut c = meridian_crdt::StoreConfig::new(dir);
    c.node_id = Some("n1".into());
    let store = Store::open(c).unwrap();
    Replica::new(
        store,
        NoNet,
        ReplicationConfig::new(vec![]),
        &crate::Workers::new(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_repair_answer_is_cut_by_time_and_still_brings_something() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = meridian_crdt::StoreConfig::new(dir.path());
    c.node_id = Some("n1".into());
    let store = Store::open(c).unwrap();
    for i in 0..200 {
        let doc: serde_json::Map<String, serde_json::Value> =
            serde_json::from_value(serde_json::json!({ "i": i })).unwrap();
        store
            .write(
                &DocKey::new("users", &format!("u{i}")).unwrap(),
                meridian_crdt::Edit::Put(doc),
                None,
            )
            .await
            .unwrap();
    }
    let mut config = ReplicationConfig::new(vec![]);
    // a budget of 250 µs: far less than 200 documents' changes take to gather
    config.call_timeout = Duration::from_millis(1);
    let r = Replica::new(store, NoNet, config, &crate::Workers::new()).unwrap();
    let ask = Request::Repair {
        from: "x".into(),
        leaves: (0..DIGEST_LEAVES as u32).collect(),
        docs: vec![],
    };
    match wire::decode::<Response>(&r.handle(&wire::encode(&ask)).await).unwrap() {
        Response::Repair { changes, more } => {
            assert!(more);
            assert!(
                !changes.is_empty() && changes.len() < 200,
                "{}",
                changes.len()
            );
        }
        other => panic!("{other:?}"),
    }
}

fn error_of(answer: &[u8]) -> Option<String> {
    match wire::decode::<Response>(answer).unwrap() {
        Response::Error { message } => Some(message),
        _ => None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn any_bytes_get_an_answer_and_change_nothing(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let r = replica(dir.path());
            let answer = r.handle(&body).await;
            // every answer decodes; garbage gets an error message
            let decoded = wire::decode::<Response>(&answer);
            prop_assert!(decoded.is_ok());
            prop_assert!(r.store().digests().iter().all(|d| *d == 0));
            prop_assert!(r.store().feed(None, 10).unwrap().entries.is_empty());
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn malformed_requests_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path());
    let bad_leaf = Request::Repair {
        from: "x".into(),
        leaves: vec![DIGEST_LEAVES as u32],
        docs: vec![],
    };
    let e = error_of(&r.handle(&wire::encode(&bad_leaf)).await).unwrap();
    assert!(e.contains("leaves"), "{e}");
    let bad_bucket = Request::Leaves {
        from: "x".into(),
        buckets: vec![3, DIGEST_BUCKETS as u32],
    };
    let e = error_of(&r.handle(&wire::encode(&bad_bucket)).await).unwrap();
    assert!(e.contains("buckets"), "{e}");
    let bad_key = Request::Repair {
        from: "x".into(),
        leaves: vec![],
        docs: vec![DocHeads {
            collection: "a/b".into(),
            id: "c".into(),
            heads: vec![],
        }],
    };
    assert!(error_of(&r.handle(&wire::encode(&bad_key)).await).is_some());
    let e = error_of(&r.handle(&[9, 0]).await).unwrap();
    assert!(e.contains("version 9"), "{e}");
    // a feed request from anyone, with nothing to send, waits no longer than asked
    let feed = Request::Feed {
        from: "x".into(),
        after: None,
        wait_ms: 50,
        limit: 10,
    };
    let t0 = Instant::now();
    let answer = wire::decode::<Response>(&r.handle(&wire::encode(&feed)).await).unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert!(
        matches!(answer, Response::Feed { ref changes, more: false, .. } if changes.is_empty())
    );
}
