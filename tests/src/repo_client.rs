//! An unmodified automerge-repo implementation, samod, as a client of a real node: the
//! WebSocket dialer it needs (plain `ws://`, no TLS), genesis seeding for documents created
//! offline, and a Meridian rendering of what a samod replica holds.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use meridian_crdt::{DocKey, Document, DocumentId};
use samod::storage::{InMemoryStorage, StorageKey};
use samod::{BackoffConfig, DialError, Dialer, DialerHandle, Repo, Transport};
use tokio_tungstenite::tungstenite::Message as Ws;

/// Dials `ws://<addr>/v1/sync`.
#[derive(Debug, Clone)]
pub struct WsDialer {
    pub url: url::Url,
}

impl Dialer for WsDialer {
    type Error = std::convert::Infallible;

    fn url(&self) -> url::Url {
        self.url.clone()
    }

    fn connect(
        &self,
    ) -> futures_util::future::BoxFuture<'static, Result<Transport, DialError<Self::Error>>> {
        let url = self.url.clone();
        Box::pin(async move {
            let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
                .await
                .map_err(DialError::transient)?;
            let (sink, stream) = ws.split();
            let stream = stream.filter_map(|m| async move {
                match m {
                    Ok(Ws::Binary(b)) => Some(Ok(b.to_vec())),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            });
            let sink = sink.with(|b: Vec<u8>| async move {
                Ok::<_, tokio_tungstenite::tungstenite::Error>(Ws::Binary(b.into()))
            });
            Ok(Transport::new(Box::pin(stream), Box::pin(sink)))
        })
    }
}

/// A samod repo with in-memory storage (kept, so a test can seed it and restart the repo).
pub async fn repo(storage: InMemoryStorage) -> Repo {
    Repo::build_tokio().with_storage(storage).load().await
}

/// Dials the node at `addr` and waits for the handshake.
pub async fn dial(repo: &Repo, addr: &str) -> DialerHandle<std::convert::Infallible> {
    let url = url::Url::parse(&format!("ws://{addr}/v1/sync")).expect("a ws url");
    let h = repo
        .dial(BackoffConfig::default(), Arc::new(WsDialer { url }))
        .expect("the repo runs");
    h.established().await.expect("connected");
    h
}

/// samod's id of a Meridian document.
pub fn doc_id(key: &DocKey) -> samod::DocumentId {
    DocumentId::of(key)
        .to_string()
        .parse()
        .expect("a Meridian id is an automerge-repo id")
}

/// Seeds genesis under the document's id, as the layout says a client opens a document that
/// does not exist yet (never a new random document).
pub async fn seed_genesis(storage: &InMemoryStorage, key: &DocKey) {
    use automerge::ReadDoc;
    let hash = meridian_crdt::genesis_hash();
    let genesis = automerge::Automerge::load(meridian_crdt::genesis_bytes()).expect("genesis");
    let change = genesis.get_change_by_hash(&hash).expect("genesis change");
    let k = StorageKey::from_parts([
        DocumentId::of(key).to_string(),
        "incremental".to_string(),
        hash.to_string(),
    ])
    .expect("a storage key");
    samod::storage::Storage::put(storage, k, change.raw_bytes().to_vec()).await;
}

/// What a samod replica shows, rendered as Meridian renders it: the JSON of `v`, and the
/// version the HTTP API reports for the same heads.
pub fn render(am: &automerge::Automerge) -> (serde_json::Value, String) {
    let d = Document::load(automerge::ActorId::random(), Some(&am.save()), [])
        .expect("a samod replica loads");
    (d.value(), d.version())
}

/// The conflicts a samod replica holds, as `?conflicts=true` lists them.
pub fn conflicts(am: &automerge::Automerge) -> Vec<meridian_crdt::Conflict> {
    Document::load(automerge::ActorId::random(), Some(&am.save()), [])
        .expect("a samod replica loads")
        .conflicts()
}

/// The user object `v` of a samod replica, for edits.
pub fn user(am: &automerge::Automerge) -> automerge::ObjId {
    use automerge::ReadDoc;
    match am.get(automerge::ROOT, "v") {
        Ok(Some((automerge::Value::Object(automerge::ObjType::Map), id))) => id,
        other => panic!("no user object: {other:?}"),
    }
}
