use super::*;
use proptest::prelude::*;

fn doc() -> DocumentId {
    DocumentId::of(&meridian_crdt::DocKey::new("users", "alice").unwrap())
}

fn all() -> Vec<Message> {
    let (s, t) = ("client-1".to_string(), "meridian-eu".to_string());
    vec![
        Message::Join {
            sender: s.clone(),
            versions: vec!["1".into()],
            metadata: Some(PeerMetadata {
                storage_id: Some("st".into()),
                is_ephemeral: false,
            }),
        },
        Message::Peer {
            sender: t.clone(),
            target: s.clone(),
            version: "1".into(),
            metadata: Some(PeerMetadata::default()),
        },
        Message::Leave { sender: s.clone() },
        Message::Request {
            sender: s.clone(),
            target: t.clone(),
            doc: doc(),
            data: vec![1, 2],
        },
        Message::Sync {
            sender: s.clone(),
            target: t.clone(),
            doc: doc(),
            data: vec![],
        },
        Message::DocUnavailable {
            sender: t.clone(),
            target: s.clone(),
            doc: doc(),
        },
        Message::Ephemeral {
            sender: s.clone(),
            target: t.clone(),
            count: 7,
            session: "sess".into(),
            doc: doc(),
            data: vec![9; 3],
        },
        Message::Error {
            message: "no".into(),
        },
    ]
}

#[test]
fn messages_round_trip() {
    for m in all() {
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
    }
}

/// What samod 0.16 writes (its encoder, byte for byte, for a sync message).
#[test]
fn decodes_the_layout_samod_writes() {
    let mut e = Encoder::new(Vec::new());
    e.map(5).unwrap();
    e.str("type").unwrap().str("sync").unwrap();
    e.str("documentId")
        .unwrap()
        .str(&doc().to_string())
        .unwrap();
    e.str("senderId").unwrap().str("a").unwrap();
    e.str("targetId").unwrap().str("b").unwrap();
    e.str("data").unwrap().bytes(&[0x42]).unwrap();
    let m = Message::decode(&e.into_writer()).unwrap();
    assert_eq!(
        m,
        Message::Sync {
            sender: "a".into(),
            target: "b".into(),
            doc: doc(),
            data: vec![0x42]
        }
    );
}

/// What cbor-x (JS) may write: tagged typed arrays, floats for counts, ids as bytes,
/// `undefined` storage ids, extra keys.
#[test]
fn decodes_what_js_clients_write() {
    let mut e = Encoder::new(Vec::new());
    e.map(9).unwrap();
    e.str("type").unwrap().str("ephemeral").unwrap();
    e.str("extra")
        .unwrap()
        .array(2)
        .unwrap()
        .u8(1)
        .unwrap()
        .u8(2)
        .unwrap();
    e.str("senderId").unwrap().str("a").unwrap();
    e.str("targetId").unwrap().str("b").unwrap();
    e.str("count").unwrap().f64(3.0).unwrap();
    e.str("sessionId").unwrap().str("s").unwrap();
    e.str("documentId")
        .unwrap()
        .bytes(doc().as_bytes())
        .unwrap();
    e.str("data")
        .unwrap()
        .tag(minicbor::data::Tag::new(64))
        .unwrap()
        .bytes(&[5])
        .unwrap();
    e.str("peerMetadata")
        .unwrap()
        .map(1)
        .unwrap()
        .str("storageId")
        .unwrap()
        .undefined()
        .unwrap();
    let m = Message::decode(&e.into_writer()).unwrap();
    assert_eq!(
        m,
        Message::Ephemeral {
            sender: "a".into(),
            target: "b".into(),
            count: 3,
            session: "s".into(),
            doc: doc(),
            data: vec![5]
        }
    );
}

#[test]
fn malformed_frames_are_refused() {
    let sync = all()[4].encode();
    let mut trailing = sync.clone();
    trailing.push(0);
    let mut unknown = Encoder::new(Vec::new());
    unknown
        .map(1)
        .unwrap()
        .str("type")
        .unwrap()
        .str("teleport")
        .unwrap();
    let mut no_doc = Encoder::new(Vec::new());
    no_doc
        .map(4)
        .unwrap()
        .str("type")
        .unwrap()
        .str("sync")
        .unwrap();
    no_doc.str("senderId").unwrap().str("a").unwrap();
    no_doc.str("targetId").unwrap().str("b").unwrap();
    no_doc.str("data").unwrap().bytes(&[]).unwrap();
    let mut bad_id = Encoder::new(Vec::new());
    bad_id
        .map(1)
        .unwrap()
        .str("documentId")
        .unwrap()
        .str("not-an-id")
        .unwrap();
    let nested = [vec![0x81; 100_000], vec![0x00]].concat();
    for (what, frame) in [
        ("empty", vec![]),
        ("not a map", vec![0x01]),
        ("truncated", sync[..sync.len() - 1].to_vec()),
        ("trailing bytes", trailing),
        ("unknown type", unknown.into_writer()),
        ("no document id", no_doc.into_writer()),
        ("bad document id", bad_id.into_writer()),
        ("indefinite map", vec![0xbf, 0xff]),
        ("deep nesting", [vec![0xa1, 0x61, b'x'], nested].concat()),
    ] {
        assert!(Message::decode(&frame).is_err(), "{what}");
    }
}

proptest! {
    #[test]
    fn any_bytes_decode_or_fail_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::decode(&bytes);
    }

    #[test]
    fn mutated_messages_decode_or_fail_without_panicking(i in 0usize..8, pos in any::<prop::sample::Index>(), b in any::<u8>()) {
        let mut frame = all()[i].encode();
        let p = pos.index(frame.len());
        frame[p] = b;
        let _ = Message::decode(&frame);
    }
}
