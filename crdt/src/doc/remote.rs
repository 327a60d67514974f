//! A change received from another node.

use automerge::ChangeHash;
use uhlc::Timestamp;

use super::{layout, order};
use crate::error::{Error, Result};

/// A change received from another node, parsed and checked (checksum included) once: its
/// author and HLC stamp can be read before it is merged, and merging does not parse it again.
#[derive(Debug, Clone)]
pub struct RemoteChange {
    pub(super) change: automerge::Change,
    /// The node id of the author (`None` for genesis or a client's change).
    pub node: Option<String>,
    /// The stamp in the change's message (`None` for genesis or a client's change).
    pub stamp: Option<Timestamp>,
}

impl RemoteChange {
    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let change = layout::change_from_bytes(bytes).map_err(Error::bad)?;
        let actor = change.actor_id().to_bytes();
        let stamp = order::node_stamp(actor, change.message());
        let node = stamp.map(|_| String::from_utf8_lossy(actor).into_owned());
        Ok(RemoteChange {
            change,
            node,
            stamp,
        })
    }

    pub fn hash(&self) -> ChangeHash {
        self.change.hash()
    }

    pub fn bytes(&self) -> &[u8] {
        self.change.raw_bytes()
    }
}
