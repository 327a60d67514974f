//! One automerge-repo protocol client over a raw socket, for measuring the node's side alone.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use meridian_crdt::{ActorId, Document, DocumentId, SyncState};
use meridian_sync::repo::Message;
use tokio_tungstenite::tungstenite::Message as Ws;

use super::Socket;

/// One protocol client: a socket, and per document a replica and its sync state.
pub(crate) struct Peer {
    pub(crate) ws: Socket,
    pub(crate) me: String,
    pub(crate) node: String,
    pub(crate) docs: HashMap<DocumentId, (Document, SyncState)>,
}

impl Peer {
    /// Connects to `addr`'s `/v1/sync` with `bearer` (a key or a token) if there is one.
    pub(crate) async fn connect(addr: &str, me: String, bearer: Option<&str>) -> Peer {
        let query = bearer
            .map(|b| format!("?access_token={b}"))
            .unwrap_or_default();
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sync{query}"))
            .await
            .expect("connect");
        let join = Message::Join {
            sender: me.clone(),
            versions: vec!["1".into()],
            metadata: None,
        };
        ws.send(Ws::Binary(join.encode().into()))
            .await
            .expect("join");
        let node = loop {
            match ws.next().await {
                Some(Ok(Ws::Binary(b))) => match Message::decode(&b).expect("a message") {
                    Message::Peer { sender, .. } => break sender,
                    other => panic!("expected peer, got {other:?}"),
                },
                Some(Ok(_)) => continue,
                other => panic!("no peer message: {other:?}"),
            }
        };
        Peer {
            ws,
            me,
            node,
            docs: HashMap::new(),
        }
    }

    pub(crate) fn replica(&mut self, doc: DocumentId) -> &mut (Document, SyncState) {
        self.docs.entry(doc).or_insert_with(|| {
            let mut a = rand::random::<[u8; 16]>();
            a[0] |= 0x80;
            (Document::new(ActorId::from(a.as_slice())), SyncState::new())
        })
    }

    /// Sends this peer's next sync message for `doc`, if it has one.
    pub(crate) async fn offer(&mut self, doc: DocumentId) {
        let (me, node) = (self.me.clone(), self.node.clone());
        let (d, st) = self.replica(doc);
        if let Some(data) = d.generate_sync(st) {
            let m = Message::Sync {
                sender: me,
                target: node,
                doc,
                data,
            };
            self.ws
                .send(Ws::Binary(m.encode().into()))
                .await
                .expect("send");
        }
    }

    /// Takes one frame; returns the document it was about.
    pub(crate) async fn take(&mut self, frame: &[u8]) -> Option<DocumentId> {
        match Message::decode(frame).expect("a message") {
            Message::Sync { doc, data, .. } => {
                let msg = automerge::sync::Message::decode(&data).expect("a sync message");
                let (d, st) = self.replica(doc);
                d.receive_sync(st, msg).expect("applies");
                self.offer(doc).await;
                Some(doc)
            }
            Message::Error { message } => panic!("the node refused: {message}"),
            _ => None,
        }
    }

    pub(crate) async fn next_frame(&mut self, wait: Duration) -> Option<Vec<u8>> {
        loop {
            match tokio::time::timeout(wait, self.ws.next()).await {
                Ok(Some(Ok(Ws::Binary(b)))) => return Some(b.to_vec()),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("the socket ended: {other:?}"),
                Err(_) => return None,
            }
        }
    }

    /// In sync on `doc`: the node's last heads are this replica's heads.
    pub(crate) fn in_sync(&self, doc: &DocumentId) -> bool {
        self.docs
            .get(doc)
            .is_some_and(|(d, st)| st.their_heads.as_deref() == Some(&d.heads()[..]))
    }
}
