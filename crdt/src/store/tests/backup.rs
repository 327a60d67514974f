//! Backups: pages of every document from disk, the stream format, and a restore under a new
//! node id.

use super::*;
use crate::store::backup::format::{decode, encode, Frame};

#[tokio::test]
async fn a_backup_holds_every_document_and_restores_under_a_new_node_id() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = open(d1.path());
    for i in 0..5 {
        s.write(
            &key(&format!("u{i}")),
            Edit::Put(obj(json!({"n": i}))),
            None,
        )
        .await
        .unwrap();
    }
    // many changes on one, and one deleted: both come back as they are
    for v in 0..20 {
        s.write(&key("u1"), Edit::Patch(obj(json!({"v": v}))), None)
            .await
            .unwrap();
    }
    s.write(&key("u3"), Edit::Delete, None).await.unwrap();

    // pages of two, in key order, with nothing left out or repeated
    let mut stream = encode(&Frame::Header(json!({"node": "n1"})));
    let (mut after, mut n) = (None, 0);
    loop {
        let page = s.backup_page(after.as_ref(), 2).unwrap();
        assert!(page.skipped.is_empty());
        n += page.docs.len();
        for (k, saved) in &page.docs {
            stream.extend(encode(&Frame::Doc(k.clone(), saved.clone())));
        }
        match page.next {
            Some(k) => after = Some(k),
            None => break,
        }
    }
    assert_eq!(n, 5);
    stream.extend(encode(&Frame::End(json!({"documents": n}))));

    // the stream decodes whole, also when it arrives in pieces
    let mut frames = vec![];
    let mut buf: Vec<u8> = vec![];
    let mut offset = 0;
    for piece in stream.chunks(7) {
        buf.extend(piece);
        let (got, used) = decode(&buf, offset).unwrap();
        frames.extend(got);
        buf.drain(..used);
        offset += used as u64;
    }
    assert!(buf.is_empty());
    assert!(matches!(frames.last(), Some(Frame::End(_))));
    let docs: Vec<(DocKey, Vec<u8>)> = frames
        .into_iter()
        .filter_map(|f| match f {
            Frame::Doc(k, b) => Some((k, b)),
            _ => None,
        })
        .collect();

    // restored under another node id, every document reads as it did
    let mut c = StoreConfig::new(d2.path());
    c.node_id = Some("n2".into());
    let r = Store::open(c).unwrap();
    assert!(r.restore(docs).await.unwrap() > 20);
    for i in 0..5 {
        let id = format!("u{i}");
        assert_eq!(get_json(&r, &id).await, get_json(&s, &id).await, "{id}");
        assert_eq!(
            r.read_state(&key(&id)).unwrap().map(|d| d.heads),
            s.read_state(&key(&id)).unwrap().map(|d| d.heads),
            "{id}: the same history"
        );
    }
    assert_eq!(get_json(&r, "u3").await, None, "deleted stays deleted");
}

#[test]
fn a_damaged_or_cut_stream_is_an_error_naming_where() {
    let k = DocKey::new("users", "a").unwrap();
    let mut bytes = encode(&Frame::Doc(k.clone(), vec![1, 2, 3]));
    let (frames, used) = decode(&bytes, 0).unwrap();
    assert_eq!(
        (frames, used),
        (vec![Frame::Doc(k, vec![1, 2, 3])], bytes.len())
    );
    // a cut frame waits for the rest
    assert_eq!(decode(&bytes[..bytes.len() - 1], 0).unwrap().1, 0);
    // a flipped byte is caught
    bytes[6] ^= 1;
    let err = decode(&bytes, 100).unwrap_err().to_string();
    assert!(
        err.contains("byte 100") && err.contains("checksum"),
        "{err}"
    );
}

#[tokio::test]
async fn a_damaged_document_is_left_out_and_named_the_rest_is_copied_as_stored() {
    let d = tempfile::tempdir().unwrap();
    let s = open(d.path());
    for i in 0..3 {
        s.write(
            &key(&format!("u{i}")),
            Edit::Put(obj(json!({"n": i}))),
            None,
        )
        .await
        .unwrap();
    }
    // one increment of u1 loses a byte's worth of its contents on disk
    let rec = s.inner.read_record_unchecked(&key("u1")).unwrap().unwrap();
    let at = record::increment_key(&key("u1"), rec.incr_base);
    let mut bytes = s.inner.tree.get(&at).unwrap().unwrap().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    s.inner.tree.insert(at, bytes).unwrap();
    let page = s.backup_page(None, 10).unwrap();
    assert_eq!(page.skipped, vec![key("u1")]);
    let copied: Vec<&DocKey> = page.docs.iter().map(|(k, _)| k).collect();
    assert_eq!(copied, vec![&key("u0"), &key("u2")]);
    // a document before its first snapshot is its genesis and its increments, and loads
    let (_, u0) = &page.docs[0];
    let doc = crate::doc::Document::load(s.node_id().actor(), Some(u0), []).unwrap();
    assert_eq!(doc.value(), json!({"n": 0}));
}
