//! The protocol's rules as exact step sequences, with no store: each test plays the store's
//! part by answering the store work the protocol asks for.

use std::sync::Arc;

use automerge::sync::SyncDoc;
use meridian_crdt::{DocKey, DocumentId};

use super::*;

const ME: &str = "node-eu";
const PEER: &str = "client-1";

/// Reads `users`, writes nothing.
#[derive(Debug)]
struct ReadOnly;

impl Access for ReadOnly {
    fn read(&self, key: &DocKey) -> Result<(), String> {
        match key.collection() {
            "users" => Ok(()),
            c => Err(format!("this key may not read {c}")),
        }
    }
    fn write(&self, key: &DocKey) -> Result<(), String> {
        Err(format!("this key may not write {}", key.collection()))
    }
}

fn protocol_as(access: Arc<dyn Access>, documents: usize) -> Protocol {
    let bounds = Bounds {
        message_bytes: 1 << 20,
        documents,
        ephemeral_bytes: 64,
    };
    Protocol::new(7, ME.into(), bounds, access)
}

fn key(id: &str) -> DocKey {
    DocKey::new("users", id).unwrap()
}

fn doc(id: &str) -> DocumentId {
    DocumentId::of(&key(id))
}

fn join_frame(sender: &str, version: &str) -> Vec<u8> {
    Message::Join {
        sender: sender.into(),
        versions: vec![version.into()],
        metadata: None,
    }
    .encode()
}

fn request(doc: DocumentId, data: &[u8]) -> Vec<u8> {
    Message::Request {
        sender: PEER.into(),
        target: ME.into(),
        doc,
        data: data.to_vec(),
    }
    .encode()
}

/// A protocol whose client joined.
fn joined(access: Arc<dyn Access>, documents: usize) -> Protocol {
    let mut p = protocol_as(access, documents);
    p.receive(&join_frame(PEER, PROTOCOL));
    p
}

fn refused(message: &str) -> Vec<Step> {
    refused_leaving(message, vec![])
}

fn refused_leaving(message: &str, keys: Vec<DocKey>) -> Vec<Step> {
    vec![
        Step::Send(Message::Error {
            message: message.into(),
        }),
        Step::Disconnect(keys),
        Step::Close(Close::Refused(message.into())),
    ]
}

fn unavailable(doc: DocumentId) -> Step {
    Step::Send(Message::DocUnavailable {
        sender: ME.into(),
        target: PEER.into(),
        doc,
    })
}

/// An automerge sync message that carries one change: a client's answer to a node with an
/// empty document (a first message carries only heads).
fn message_with_a_change() -> Vec<u8> {
    use automerge::transaction::Transactable;
    let mut client = automerge::AutoCommit::new();
    client.put(automerge::ROOT, "name", "ada").unwrap();
    let mut node = automerge::AutoCommit::new();
    let (mut at_client, mut at_node) =
        (automerge::sync::State::new(), automerge::sync::State::new());
    let hello = node.sync().generate_sync_message(&mut at_node).unwrap();
    client
        .sync()
        .receive_sync_message(&mut at_client, hello)
        .unwrap();
    let message = client.sync().generate_sync_message(&mut at_client).unwrap();
    assert!(!message.changes.is_empty());
    message.encode()
}

/// An automerge sync message that carries no change (a client with an empty document).
fn message_without_changes() -> Vec<u8> {
    let mut d = automerge::AutoCommit::new();
    let mut state = automerge::sync::State::new();
    let message = d.sync().generate_sync_message(&mut state).unwrap();
    message.encode()
}

#[test]
fn a_join_is_answered_with_peer_and_anything_before_it_is_refused() {
    let mut p = protocol_as(Arc::new(crate::repo::Open), 10);
    assert_eq!(
        p.receive(&join_frame(PEER, PROTOCOL)),
        vec![
            Step::Joined(PEER.into()),
            Step::Send(Message::Peer {
                sender: ME.into(),
                target: PEER.into(),
                version: PROTOCOL.into(),
                metadata: Some(PeerMetadata::default()),
            }),
        ]
    );

    let mut p = protocol_as(Arc::new(crate::repo::Open), 10);
    assert_eq!(
        p.receive(&request(doc("ada"), b"")),
        refused("expected a join message")
    );
    assert!(p.is_closed());
    assert_eq!(
        p.receive(&join_frame(PEER, PROTOCOL)),
        vec![],
        "closed stays closed"
    );

    let mut p = protocol_as(Arc::new(crate::repo::Open), 10);
    let steps = p.receive(&join_frame(PEER, "2"));
    assert!(
        matches!(&steps[0], Step::Send(Message::Error { message }) if message.contains("unsupported protocol")),
        "{steps:?}"
    );
}

#[test]
fn a_known_document_is_resolved_followed_then_synced_and_the_reply_sent() {
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    let data = message_without_changes();
    assert_eq!(
        p.receive(&request(doc("ada"), &data)),
        vec![Step::Resolve(doc("ada"))]
    );
    assert_eq!(
        p.resolved(doc("ada"), Ok(Some(key("ada")))),
        vec![
            Step::Follow(key("ada")),
            Step::Sync {
                doc: doc("ada"),
                key: key("ada"),
                data: Some(data),
            },
        ]
    );
    assert!(p.sync_state(doc("ada")).is_some());
    assert_eq!(
        p.synced(doc("ada"), Ok(Some(b"reply".to_vec()))),
        vec![Step::Send(Message::Sync {
            sender: ME.into(),
            target: PEER.into(),
            doc: doc("ada"),
            data: b"reply".to_vec(),
        })]
    );
    // nothing to say: nothing sent
    assert_eq!(p.synced(doc("ada"), Ok(None)), vec![]);
    // a change notice for it is a round without a client message; for another, nothing
    assert_eq!(
        p.changed(&key("ada")),
        vec![Step::Sync {
            doc: doc("ada"),
            key: key("ada"),
            data: None,
        }]
    );
    assert_eq!(p.changed(&key("bob")), vec![]);
    // the client leaves: its documents are unfollowed
    let leave = Message::Leave {
        sender: PEER.into(),
    }
    .encode();
    assert_eq!(
        p.receive(&leave),
        vec![
            Step::Disconnect(vec![key("ada")]),
            Step::Close(Close::Normal("the client left".into())),
        ]
    );
}

#[test]
fn an_unknown_document_is_unavailable_and_the_connection_stays_open() {
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    assert_eq!(
        p.receive(&request(doc("nobody"), b"")),
        vec![Step::Resolve(doc("nobody"))]
    );
    assert_eq!(
        p.resolved(doc("nobody"), Ok(None)),
        vec![unavailable(doc("nobody"))]
    );
    assert!(!p.is_closed());
    assert_eq!(p.open_documents(), 0);
    // an answer nobody asked for changes nothing
    assert_eq!(p.resolved(doc("ada"), Ok(Some(key("ada")))), vec![]);
    assert_eq!(p.open_documents(), 0);
}

#[test]
fn a_lookup_that_fails_ends_the_connection_naming_the_document() {
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    p.receive(&request(doc("ada"), b""));
    let message = format!("document {}: cannot look it up: disk on fire", doc("ada"));
    assert_eq!(
        p.resolved(doc("ada"), Err("disk on fire".into())),
        refused(&message)
    );
}

#[test]
fn a_document_the_client_may_not_read_is_unavailable_to_it_and_the_connection_goes_on() {
    let mut p = joined(Arc::new(ReadOnly), 10);
    let secret = DocKey::new("secrets", "x").unwrap();
    let id = DocumentId::of(&secret);
    assert_eq!(p.receive(&request(id, b"")), vec![Step::Resolve(id)]);
    assert_eq!(
        p.resolved(id, Ok(Some(secret))),
        vec![Step::Send(Message::DocUnavailable {
            sender: ME.into(),
            target: PEER.into(),
            doc: id,
        })]
    );
    // not followed, and the connection still opens the documents it may read
    assert!(!p.is_closed());
    p.receive(&request(doc("ada"), &message_without_changes()));
    let steps = p.resolved(doc("ada"), Ok(Some(key("ada"))));
    assert!(
        matches!(steps.first(), Some(Step::Follow(k)) if *k == key("ada")),
        "{steps:?}"
    );
}

#[test]
fn changes_from_a_client_that_may_not_write_are_refused_before_any_store_work() {
    let mut p = joined(Arc::new(ReadOnly), 10);
    // reading is allowed: a message without changes syncs
    let quiet = message_without_changes();
    p.receive(&request(doc("ada"), &quiet));
    let steps = p.resolved(doc("ada"), Ok(Some(key("ada"))));
    assert!(matches!(steps.last(), Some(Step::Sync { .. })), "{steps:?}");
    // a message with a change is refused, and the document unfollowed with the connection
    let frame = Message::Sync {
        sender: PEER.into(),
        target: ME.into(),
        doc: doc("ada"),
        data: message_with_a_change(),
    }
    .encode();
    let message = format!("document {}: this key may not write users", doc("ada"));
    assert_eq!(
        p.receive(&frame),
        refused_leaving(&message, vec![key("ada")])
    );
}

#[test]
fn refused_changes_end_the_connection_and_a_vanished_document_is_unavailable() {
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    for id in ["ada", "bob"] {
        p.receive(&request(doc(id), b""));
        p.resolved(doc(id), Ok(Some(key(id))));
    }
    // the store no longer has bob: unfollowed and unavailable, the connection goes on
    assert_eq!(
        p.synced(doc("bob"), Err(meridian_crdt::Error::NotFound)),
        vec![Step::Unfollow(key("bob")), unavailable(doc("bob"))]
    );
    assert_eq!(p.open_documents(), 1);
    // the store refused ada's changes: nothing applied, the connection ends
    let message = format!(
        "document {}: a bad change; nothing of this message was applied",
        doc("ada")
    );
    assert_eq!(
        p.synced(
            doc("ada"),
            Err(meridian_crdt::Error::Refused("a bad change".into()))
        ),
        refused_leaving(&message, vec![key("ada")])
    );
}

#[test]
fn limits_and_identities_are_kept() {
    // one document at most
    let mut p = joined(Arc::new(crate::repo::Open), 1);
    p.receive(&request(doc("ada"), b""));
    p.resolved(doc("ada"), Ok(Some(key("ada"))));
    let message = format!(
        "document {}: this connection already has 1 documents open, the limit",
        doc("bob")
    );
    assert_eq!(
        p.receive(&request(doc("bob"), b"")),
        refused_leaving(&message, vec![key("ada")])
    );

    // another sender than the one that joined
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    let frame = Message::Request {
        sender: "mallory".into(),
        target: ME.into(),
        doc: doc("ada"),
        data: vec![],
    }
    .encode();
    let steps = p.receive(&frame);
    assert!(
        matches!(&steps[0], Step::Send(Message::Error { message }) if message.contains("\"mallory\" is not the peer that joined")),
        "{steps:?}"
    );

    // another target than this node
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    let frame = Message::Request {
        sender: PEER.into(),
        target: "node-us".into(),
        doc: doc("ada"),
        data: vec![],
    }
    .encode();
    let steps = p.receive(&frame);
    assert!(
        matches!(&steps[0], Step::Send(Message::Error { message }) if message.contains("\"node-us\" is not this node")),
        "{steps:?}"
    );

    // a frame over the size limit, and one that is not a message at all
    let mut p = protocol_as(Arc::new(crate::repo::Open), 10);
    assert_eq!(
        p.receive(&vec![0; (1 << 20) + 1]),
        refused("a message of 1048577 bytes is over the limit of 1048576")
    );
    let mut p = protocol_as(Arc::new(crate::repo::Open), 10);
    assert!(matches!(
        p.receive(b"\xff\x00")[0],
        Step::Send(Message::Error { .. })
    ));
}

#[test]
fn ephemeral_messages_are_relayed_for_open_documents_only_and_within_their_size() {
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    p.receive(&request(doc("ada"), b""));
    p.resolved(doc("ada"), Ok(Some(key("ada"))));
    let eph = |doc: DocumentId, data: &[u8]| {
        Message::Ephemeral {
            sender: "someone-else".into(),
            target: ME.into(),
            count: 3,
            session: "s".into(),
            doc,
            data: data.to_vec(),
        }
        .encode()
    };
    let note = EphemeralNote {
        sender: "someone-else".into(),
        count: 3,
        session: "s".into(),
        data: b"here".to_vec(),
    };
    assert_eq!(
        p.receive(&eph(doc("ada"), b"here")),
        vec![Step::Relay(key("ada"), note.clone())]
    );
    assert_eq!(
        p.receive(&eph(doc("bob"), b"here")),
        vec![],
        "not open here"
    );
    assert_eq!(
        p.receive(&eph(doc("ada"), &[0; 65])),
        vec![],
        "over 64 bytes"
    );
    // another client's note for an open document reaches this client, under its peer id
    assert_eq!(
        p.ephemeral(vec![(key("ada"), note.clone()), (key("bob"), note)]),
        vec![Step::Send(Message::Ephemeral {
            sender: "someone-else".into(),
            target: PEER.into(),
            count: 3,
            session: "s".into(),
            doc: doc("ada"),
            data: b"here".to_vec(),
        })]
    );
}

#[test]
fn shutting_down_unfollows_everything_once() {
    let mut p = joined(Arc::new(crate::repo::Open), 10);
    p.receive(&request(doc("ada"), b""));
    p.resolved(doc("ada"), Ok(Some(key("ada"))));
    assert_eq!(
        p.going_away(),
        vec![
            Step::Disconnect(vec![key("ada")]),
            Step::Close(Close::GoingAway)
        ]
    );
    assert_eq!(p.close(), vec![], "a second close does nothing");
    assert_eq!(p.synced(doc("ada"), Ok(Some(vec![1]))), vec![]);
}
