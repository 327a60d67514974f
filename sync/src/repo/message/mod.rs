//! automerge-repo's network messages (protocol "1"): one CBOR map per binary WebSocket frame,
//! with a `type` and camelCase keys, as `@automerge/automerge-repo` 2.x and samod write them.
//!
//! Decoding takes what real clients send: a document id as a bs58check string or its 16 bytes,
//! byte strings with or without a CBOR tag, numbers as integers or floats (cbor-x writes some as
//! floats), keys in any order, unknown keys ignored. It refuses anything else: a frame that is not
//! one definite-length map, a missing field, an unknown type, bytes after the map.

use meridian_crdt::DocumentId;
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

/// The protocol version this server speaks.
pub const PROTOCOL: &str = "1";

/// Who a peer is, as it says in `join` and `peer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerMetadata {
    pub storage_id: Option<String>,
    pub is_ephemeral: bool,
}

/// One message. Senders and targets are peer ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Join {
        sender: String,
        versions: Vec<String>,
        metadata: Option<PeerMetadata>,
    },
    Peer {
        sender: String,
        target: String,
        version: String,
        metadata: Option<PeerMetadata>,
    },
    Leave {
        sender: String,
    },
    /// A sync message about a document the sender does not have yet.
    Request {
        sender: String,
        target: String,
        doc: DocumentId,
        data: Vec<u8>,
    },
    /// A sync message (automerge's sync protocol) about a document.
    Sync {
        sender: String,
        target: String,
        doc: DocumentId,
        data: Vec<u8>,
    },
    DocUnavailable {
        sender: String,
        target: String,
        doc: DocumentId,
    },
    /// Presence and other data that is not stored; relayed to a document's other peers.
    Ephemeral {
        sender: String,
        target: String,
        count: u64,
        session: String,
        doc: DocumentId,
        data: Vec<u8>,
    },
    Error {
        message: String,
    },
    /// Heads gossip between storage peers; this server has no storage id and ignores both.
    RemoteSubscriptionChange {
        sender: String,
        target: String,
    },
    RemoteHeadsChanged {
        sender: String,
        target: String,
    },
}

/// Why a frame is not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct BadMessage(pub String);

impl From<minicbor::decode::Error> for BadMessage {
    fn from(e: minicbor::decode::Error) -> Self {
        BadMessage(e.to_string())
    }
}

fn bad(s: impl Into<String>) -> BadMessage {
    BadMessage(s.into())
}

/// The fields of a message, as read.
#[derive(Default)]
struct Fields {
    kind: Option<String>,
    sender: Option<String>,
    target: Option<String>,
    version: Option<String>,
    message: Option<String>,
    session: Option<String>,
    doc: Option<DocumentId>,
    versions: Option<Vec<String>>,
    data: Option<Vec<u8>>,
    count: Option<u64>,
    metadata: Option<PeerMetadata>,
}

impl Fields {
    fn take(opt: Option<String>, name: &str) -> Result<String, BadMessage> {
        opt.ok_or_else(|| bad(format!("{name} is missing")))
    }
}

/// A byte string, also behind a tag (cbor-x tags typed arrays).
fn bytes(d: &mut Decoder<'_>) -> Result<Vec<u8>, BadMessage> {
    while d.datatype()? == Type::Tag {
        d.tag()?;
    }
    Ok(d.bytes()?.to_vec())
}

/// An unsigned integer, also written as a float.
fn number(d: &mut Decoder<'_>) -> Result<u64, BadMessage> {
    match d.datatype()? {
        Type::F16 | Type::F32 | Type::F64 => {
            let f = d.f64()?;
            if f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 {
                Ok(f as u64)
            } else {
                Err(bad(format!("{f} is not a count")))
            }
        }
        _ => Ok(d.u64()?),
    }
}

fn doc_id(d: &mut Decoder<'_>) -> Result<DocumentId, BadMessage> {
    match d.datatype()? {
        Type::String => d
            .str()?
            .parse()
            .map_err(|e: meridian_crdt::BadDocumentId| bad(e.to_string())),
        _ => DocumentId::from_bytes(&bytes(d)?).map_err(|e| bad(e.to_string())),
    }
}

fn metadata(d: &mut Decoder<'_>) -> Result<PeerMetadata, BadMessage> {
    let len = d.map()?.ok_or_else(|| bad("indefinite-length metadata"))?;
    let mut m = PeerMetadata::default();
    for _ in 0..len {
        match d.str()? {
            "storageId" => match d.datatype()? {
                Type::Undefined | Type::Null => d.skip()?,
                _ => m.storage_id = Some(d.str()?.to_owned()),
            },
            "isEphemeral" => m.is_ephemeral = d.bool()?,
            _ => d.skip()?,
        }
    }
    Ok(m)
}

impl Message {
    pub fn decode(frame: &[u8]) -> Result<Message, BadMessage> {
        let mut d = Decoder::new(frame);
        let len = d.map()?.ok_or_else(|| bad("not a definite-length map"))?;
        let mut f = Fields::default();
        for _ in 0..len {
            let key = d.str()?;
            match key {
                "type" => f.kind = Some(d.str()?.to_owned()),
                "senderId" => f.sender = Some(d.str()?.to_owned()),
                "targetId" => f.target = Some(d.str()?.to_owned()),
                "selectedProtocolVersion" => f.version = Some(d.str()?.to_owned()),
                "message" => f.message = Some(d.str()?.to_owned()),
                "sessionId" => f.session = Some(d.str()?.to_owned()),
                "documentId" => f.doc = Some(doc_id(&mut d)?),
                "supportedProtocolVersions" => {
                    let n = d.array()?.ok_or_else(|| bad("indefinite-length array"))?;
                    let mut v = Vec::new();
                    for _ in 0..n {
                        v.push(d.str()?.to_owned());
                    }
                    f.versions = Some(v);
                }
                "data" => f.data = Some(bytes(&mut d)?),
                "count" => f.count = Some(number(&mut d)?),
                "peerMetadata" | "metadata" => f.metadata = Some(metadata(&mut d)?),
                _ => d.skip()?,
            }
        }
        if d.position() != frame.len() {
            return Err(bad("bytes after the message"));
        }
        let kind = Fields::take(f.kind.take(), "type")?;
        let sender = || Fields::take(f.sender.clone(), "senderId");
        let target = || Fields::take(f.target.clone(), "targetId");
        let doc = || f.doc.ok_or_else(|| bad("documentId is missing"));
        let data = || f.data.clone().ok_or_else(|| bad("data is missing"));
        Ok(match kind.as_str() {
            "join" => Message::Join {
                sender: sender()?,
                versions: f
                    .versions
                    .clone()
                    .ok_or_else(|| bad("supportedProtocolVersions is missing"))?,
                metadata: f.metadata.clone(),
            },
            "peer" => Message::Peer {
                sender: sender()?,
                target: target()?,
                version: Fields::take(f.version.clone(), "selectedProtocolVersion")?,
                metadata: f.metadata.clone(),
            },
            "leave" => Message::Leave { sender: sender()? },
            "request" => Message::Request {
                sender: sender()?,
                target: target()?,
                doc: doc()?,
                data: data()?,
            },
            "sync" => Message::Sync {
                sender: sender()?,
                target: target()?,
                doc: doc()?,
                data: data()?,
            },
            "doc-unavailable" => Message::DocUnavailable {
                sender: sender()?,
                target: target()?,
                doc: doc()?,
            },
            "ephemeral" => Message::Ephemeral {
                sender: sender()?,
                target: target()?,
                count: f.count.ok_or_else(|| bad("count is missing"))?,
                session: Fields::take(f.session.clone(), "sessionId")?,
                doc: doc()?,
                data: data()?,
            },
            "error" => Message::Error {
                message: Fields::take(f.message.clone(), "message")?,
            },
            "remote-subscription-change" => Message::RemoteSubscriptionChange {
                sender: sender()?,
                target: target()?,
            },
            "remote-heads-changed" => Message::RemoteHeadsChanged {
                sender: sender()?,
                target: target()?,
            },
            other => return Err(bad(format!("unknown message type {other:?}"))),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Vec::new());
        // writing to a Vec cannot fail
        self.encode_into(&mut e).expect("encoding into memory");
        e.into_writer()
    }

    fn encode_into(
        &self,
        e: &mut Encoder<Vec<u8>>,
    ) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
        let with_metadata = |e: &mut Encoder<Vec<u8>>, m: &PeerMetadata| {
            e.str("peerMetadata")?;
            e.map(if m.storage_id.is_some() { 2 } else { 1 })?;
            if let Some(s) = &m.storage_id {
                e.str("storageId")?.str(s)?;
            }
            e.str("isEphemeral")?.bool(m.is_ephemeral)?;
            Ok::<_, minicbor::encode::Error<std::convert::Infallible>>(())
        };
        match self {
            Message::Join {
                sender,
                versions,
                metadata,
            } => {
                e.map(3 + metadata.is_some() as u64)?;
                e.str("type")?.str("join")?;
                e.str("senderId")?.str(sender)?;
                e.str("supportedProtocolVersions")?
                    .array(versions.len() as u64)?;
                for v in versions {
                    e.str(v)?;
                }
                if let Some(m) = metadata {
                    with_metadata(e, m)?;
                }
            }
            Message::Peer {
                sender,
                target,
                version,
                metadata,
            } => {
                e.map(4 + metadata.is_some() as u64)?;
                e.str("type")?.str("peer")?;
                e.str("senderId")?.str(sender)?;
                e.str("selectedProtocolVersion")?.str(version)?;
                e.str("targetId")?.str(target)?;
                if let Some(m) = metadata {
                    with_metadata(e, m)?;
                }
            }
            Message::Leave { sender } => {
                e.map(2)?.str("type")?.str("leave")?;
                e.str("senderId")?.str(sender)?;
            }
            Message::Request {
                sender,
                target,
                doc,
                data,
            }
            | Message::Sync {
                sender,
                target,
                doc,
                data,
            } => {
                let kind = if matches!(self, Message::Request { .. }) {
                    "request"
                } else {
                    "sync"
                };
                e.map(5)?.str("type")?.str(kind)?;
                e.str("documentId")?.str(&doc.to_string())?;
                e.str("senderId")?.str(sender)?;
                e.str("targetId")?.str(target)?;
                e.str("data")?.bytes(data)?;
            }
            Message::DocUnavailable {
                sender,
                target,
                doc,
            } => {
                e.map(4)?.str("type")?.str("doc-unavailable")?;
                e.str("senderId")?.str(sender)?;
                e.str("targetId")?.str(target)?;
                e.str("documentId")?.str(&doc.to_string())?;
            }
            Message::Ephemeral {
                sender,
                target,
                count,
                session,
                doc,
                data,
            } => {
                e.map(7)?.str("type")?.str("ephemeral")?;
                e.str("senderId")?.str(sender)?;
                e.str("targetId")?.str(target)?;
                e.str("count")?.u64(*count)?;
                e.str("sessionId")?.str(session)?;
                e.str("documentId")?.str(&doc.to_string())?;
                e.str("data")?.bytes(data)?;
            }
            Message::Error { message } => {
                e.map(2)?.str("type")?.str("error")?;
                e.str("message")?.str(message)?;
            }
            Message::RemoteSubscriptionChange { sender, target } => {
                e.map(4)?.str("type")?.str("remote-subscription-change")?;
                e.str("senderId")?.str(sender)?;
                e.str("targetId")?.str(target)?;
                e.str("remove")?.array(0)?;
            }
            Message::RemoteHeadsChanged { sender, target } => {
                e.map(3)?.str("type")?.str("remote-heads-changed")?;
                e.str("senderId")?.str(sender)?;
                e.str("targetId")?.str(target)?;
            }
        }
        Ok(())
    }

    /// The sender, for messages that name one.
    pub fn sender(&self) -> Option<&str> {
        match self {
            Message::Join { sender, .. }
            | Message::Peer { sender, .. }
            | Message::Leave { sender }
            | Message::Request { sender, .. }
            | Message::Sync { sender, .. }
            | Message::DocUnavailable { sender, .. }
            | Message::Ephemeral { sender, .. }
            | Message::RemoteSubscriptionChange { sender, .. }
            | Message::RemoteHeadsChanged { sender, .. } => Some(sender),
            Message::Error { .. } => None,
        }
    }

    /// The target, for messages that name one.
    pub fn target(&self) -> Option<&str> {
        match self {
            Message::Peer { target, .. }
            | Message::Request { target, .. }
            | Message::Sync { target, .. }
            | Message::DocUnavailable { target, .. }
            | Message::Ephemeral { target, .. }
            | Message::RemoteSubscriptionChange { target, .. }
            | Message::RemoteHeadsChanged { target, .. } => Some(target),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
