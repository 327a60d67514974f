//! Who a request comes from, once the auth layer has let it through, and what that caller may
//! touch: per collection for a key, per document for a token.

use std::sync::Arc;
use std::time::SystemTime;

use super::keys::{Access, Key, KeyRing, Need};
use super::token::Token;
use crate::error::ApiError;

/// Who a request comes from, for handlers that check more than the route (`/v1/sync`, lists
/// and collection streams).
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// A node without keys.
    Anyone,
    Key(Arc<Key>),
    Token(Arc<Token>),
}

impl Caller {
    /// What a sync connection of this caller may do.
    pub(crate) fn sync_access(&self) -> Arc<dyn meridian_sync::repo::Access> {
        match self {
            Caller::Anyone => Arc::new(meridian_sync::repo::Open),
            _ => Arc::new(SyncAccess(self.clone())),
        }
    }

    /// Whether this caller may `want` the document `collection/id`.
    pub(crate) fn allows(&self, want: Access, collection: &str, id: &str) -> Result<(), String> {
        let need = Need::Document(want, collection.into(), id.into());
        match self {
            Caller::Anyone => Ok(()),
            Caller::Key(k) => k.allows(&need),
            Caller::Token(t) => token_allows(t, &need),
        }
    }

    /// The documents of `collection` this caller may read, when that is not all of them (a
    /// token): lists and collection streams keep only those.
    pub(crate) fn readable_in(&self, collection: &str) -> Option<Readable> {
        match self {
            Caller::Token(t) => Some(Readable {
                token: t.clone(),
                collection: collection.into(),
            }),
            _ => None,
        }
    }

    pub(super) fn expiry(&self) -> Option<SystemTime> {
        match self {
            Caller::Anyone => None,
            Caller::Key(k) => k.expires,
            Caller::Token(t) => Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.exp)),
        }
    }
}

/// The documents of one collection a token may read.
#[derive(Debug, Clone)]
pub(crate) struct Readable {
    token: Arc<Token>,
    collection: String,
}

impl Readable {
    pub(crate) fn has(&self, id: &str) -> bool {
        self.token.level(&self.collection, id).is_some()
    }
}

#[derive(Debug)]
struct SyncAccess(Caller);

impl meridian_sync::repo::Access for SyncAccess {
    fn read(&self, key: &meridian_crdt::DocKey) -> Result<(), String> {
        self.0.allows(Access::Read, key.collection(), key.id())
    }
    fn write(&self, key: &meridian_crdt::DocKey) -> Result<(), String> {
        self.0.allows(Access::Write, key.collection(), key.id())
    }
}

pub(super) fn revoked(ring: &KeyRing, t: &Token) -> Result<(), ApiError> {
    if ring.revoked.sub.contains(&t.sub) {
        return Err(ApiError::TokenRevoked(format!(
            "the tokens of {:?} are revoked",
            t.sub
        )));
    }
    if let Some(j) = t.jti.as_ref().filter(|j| ring.revoked.jti.contains(*j)) {
        return Err(ApiError::TokenRevoked(format!(
            "the token {j:?} is revoked"
        )));
    }
    Ok(())
}

/// `Err(why)` (for a 403) when `t` lacks what `need` asks. A token reaches documents only.
pub(super) fn token_allows(t: &Token, need: &Need) -> Result<(), String> {
    let sub = &t.sub;
    match need {
        Need::AnyKey => Ok(()),
        Need::Node | Need::Metrics => Err(format!(
            "the token of {sub:?} reaches documents only; this route needs an API key with admin access"
        )),
        Need::Collection(want, c) => match t.level_in(c) {
            Some(have) if have >= *want => Ok(()),
            _ => Err(format!(
                "the token of {sub:?} grants no {want} access to any document of {c:?}"
            )),
        },
        Need::Document(want, c, id) => match t.level(c, id) {
            Some(have) if have >= *want => Ok(()),
            Some(have) => Err(format!(
                "the token of {sub:?} grants {have} access to {c}/{id}, not {want}"
            )),
            None => Err(format!("the token of {sub:?} grants no access to {c}/{id}")),
        },
    }
}
