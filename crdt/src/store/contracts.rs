//! Collections' contracts. A collection's schema is a document like any other,
//! `_schemas/{collection}`: it replicates through feeds and anti-entropy, and every node
//! enforces the version it holds. The store reads it and asks the compiler the server installed
//! ([`Contracts`]) for the contract; the answer is cached until the schema document changes.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use super::{Inner, Store};
use crate::contract::Contract;
use crate::doc::State;
use crate::key::DocKey;

/// The collection that holds the schemas, one document per collection.
pub const SCHEMAS: &str = "_schemas";

/// Turns a schema document into a contract (the server's JSON Schema compiler).
pub trait Contracts: Send + Sync + Debug {
    /// The contract of `collection` from its live schema document (its version and JSON).
    /// `None` if the document is not a schema this node can enforce (the API refuses such
    /// writes; the compiler logs any that arrives another way).
    fn compile(&self, collection: &str, version: &str, json: &str) -> Option<Arc<dyn Contract>>;
}

/// The compiler, and each collection's contract as last read (`None`: no schema).
#[derive(Debug, Default)]
pub(super) struct Registry {
    compiler: Option<Arc<dyn Contracts>>,
    known: HashMap<String, Option<Arc<dyn Contract>>>,
    /// Bumped whenever a schema document changes, so that a read that began before a change
    /// does not cache what it read.
    generation: u64,
}

impl Store {
    /// Installs the compiler of contracts (the server does, once, at start).
    pub fn set_contracts(&self, compiler: Arc<dyn Contracts>) {
        let mut r = self.inner.contracts.lock();
        r.compiler = Some(compiler);
        r.known.clear();
        r.generation += 1;
    }

    /// The contract `collection` has here now, if any.
    pub fn contract_of(&self, collection: &str) -> Option<Arc<dyn Contract>> {
        self.inner.contract_of(collection)
    }
}

impl Inner {
    pub(super) fn contract_of(&self, collection: &str) -> Option<Arc<dyn Contract>> {
        if collection.starts_with('_') {
            return None;
        }
        let (compiler, generation) = {
            let r = self.contracts.lock();
            if let Some(known) = r.known.get(collection) {
                return known.clone();
            }
            (r.compiler.clone()?, r.generation)
        };
        let key = DocKey::new(SCHEMAS, collection).ok()?;
        // the latest record: queued (not yet durable) before what sled holds, so that a read
        // after the schema's write was queued never caches the version before it
        let pending = self.docs.pinned_record(&key);
        let latest = match pending {
            Some(rec) => Ok(Some(rec)),
            None => self.read_record(&key),
        };
        let contract = match latest {
            Ok(Some(rec)) if rec.state == State::Live => {
                compiler.compile(collection, &rec.version, &rec.json)
            }
            Ok(_) => None,
            // not cached: the next write reads again
            Err(_) => return None,
        };
        let mut r = self.contracts.lock();
        if r.generation == generation {
            r.known.insert(collection.to_owned(), contract.clone());
        }
        contract
    }

    /// A schema document changed (its new record is queued): forget what was read of it.
    pub(super) fn schema_changed(&self, key: &DocKey) {
        if key.collection() == SCHEMAS {
            let mut r = self.contracts.lock();
            r.known.remove(key.id());
            r.generation += 1;
        }
    }
}
