//! Idempotency keys: the first answer to a write with a key is stored with the write, in the
//! same batch, and a retry with the same key gets it again (for 24 hours by default).

use super::{now_ms, Store};
use crate::error::{Error, Result};
use crate::key::stripe;
use crate::record::{self, IdemRecord, WriteOutcome};
use crate::wal::Op;

const STRIPES: usize = 1024;

/// A write's idempotency key and a digest of the request, to tell a retry from a reuse.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: Vec<u8>,
}

impl Idempotency {
    /// Keys are 1 to 255 visible ASCII characters.
    pub fn new(key: &str, fingerprint: Vec<u8>) -> Result<Self> {
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::bad(
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
            ));
        }
        Ok(Idempotency {
            key: key.to_owned(),
            fingerprint,
        })
    }
}

/// The storage operation that keeps `outcome` as the answer for `idem`'s key.
pub(super) fn record(idem: &Idempotency, outcome: WriteOutcome) -> Op {
    let r = IdemRecord {
        fingerprint: idem.fingerprint.clone(),
        created_ms: now_ms(),
        outcome,
    };
    (record::idem_key(&idem.key), Some(record::encode(&r)))
}

/// The idempotency records' own state: the lock stripes and the time a record is kept.
pub(super) struct IdemKeys {
    tree: sled::Db,
    locks: Vec<tokio::sync::Mutex<()>>,
    ttl_ms: u64,
}

impl IdemKeys {
    pub(super) fn new(tree: sled::Db, ttl: std::time::Duration) -> IdemKeys {
        IdemKeys {
            tree,
            locks: (0..STRIPES).map(|_| Default::default()).collect(),
            ttl_ms: ttl.as_millis() as u64,
        }
    }

    /// Held from the lookup until the write with the key is durable, so that a concurrent retry
    /// finds the stored answer.
    pub(super) async fn lock(&self, idem: &Idempotency) -> tokio::sync::MutexGuard<'_, ()> {
        self.locks[stripe(&idem.key, STRIPES)].lock().await
    }

    /// The stored answer of an earlier request with this key (younger than the TTL); 422 if the
    /// key came with another request.
    pub(super) fn replay(&self, idem: &Idempotency) -> Result<Option<WriteOutcome>> {
        let Some(v) = self.tree.get(record::idem_key(&idem.key))? else {
            return Ok(None);
        };
        let rec: IdemRecord = record::decode(&v)?;
        if rec.created_ms + self.ttl_ms < now_ms() {
            return Ok(None);
        }
        if rec.fingerprint != idem.fingerprint {
            return Err(Error::unprocessable(
                "this Idempotency-Key was already used for a different request",
            ));
        }
        Ok(Some(rec.outcome))
    }

    /// Forgets keys older than the TTL. Returns how many it removed.
    fn purge(&self) -> Result<usize> {
        let cutoff = now_ms().saturating_sub(self.ttl_ms);
        let mut removed = 0;
        for kv in self.tree.scan_prefix([record::IDEM]) {
            let (k, v) = kv?;
            let rec: IdemRecord = record::decode(&v)?;
            if rec.created_ms < cutoff {
                self.tree.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl Store {
    /// Forgets idempotency keys older than the configured TTL. Returns how many it removed.
    pub fn purge_idempotency_keys(&self) -> Result<usize> {
        self.inner.idem.purge()
    }
}
