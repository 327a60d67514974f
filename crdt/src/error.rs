//! The crate's one error type. The server maps each variant to an HTTP status in one place.

/// Everything that can go wrong in the document model or its storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input is malformed (bad JSON, bad pointer, unknown op, too deep, ...). Nothing changed.
    #[error("{0}")]
    BadRequest(String),
    /// A collection name or document id outside the allowed alphabet or length.
    #[error("{0}")]
    InvalidId(String),
    /// The document does not exist, or was deleted.
    #[error("document not found")]
    NotFound,
    /// Well-formed input that does not fit the document (increment on a string, index out of
    /// range, an idempotency key reused for another request). Nothing changed.
    #[error("{0}")]
    Unprocessable(String),
    /// The write would leave a document that breaks its collection's schema. Nothing changed.
    #[error("the document would break its collection's schema: {}", summary(.0))]
    SchemaViolation(Vec<crate::contract::Violation>),
    /// A client's changes would break the document's layout (see `docs/sync.md`). Nothing of
    /// them was applied.
    #[error("{0}")]
    Refused(String),
    /// The store has failed (a flush or write error) and refuses work until restarted.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The data dir's filesystem is below the free space the store keeps; nothing changed, and
    /// writes resume once space is freed.
    #[error("insufficient storage: {0}")]
    InsufficientStorage(String),
    /// Another process has the data dir open.
    #[error("the data dir is in use by another process")]
    InUse,
    /// A stored record could not be decoded: corruption or a format from a newer version.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A stored document failed its checksums or does not load: it is refused until it is
    /// healed from the peers (see `store::scrub`); other documents are unaffected.
    #[error("{0}")]
    Damaged(String),
    /// Batches were lost in a log repair: local writes wait until the peers have given back
    /// what they hold (see `store::repair`).
    #[error("{0}")]
    Recovering(String),
    /// This node was removed from the cluster: nobody follows it, so it takes no local write.
    #[error("{0}")]
    Retired(String),
    /// The collection is placed in other regions only (see [`crate::Placement`]): this region
    /// neither holds nor serves its documents. `regions`: where it lives.
    #[error("collection {collection:?} lives in {} only: this region neither holds nor serves its documents; ask one of those regions", .regions.join(", "))]
    Elsewhere {
        collection: String,
        regions: Vec<String>,
    },
    /// The storage engine failed.
    #[error("storage error: {0}")]
    Storage(String),
    #[error("automerge error: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

fn summary(v: &[crate::contract::Violation]) -> String {
    v.iter()
        .map(|v| {
            format!(
                "{}: {}",
                if v.path.is_empty() { "/" } else { &v.path },
                v.message
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }
    pub(crate) fn unprocessable(msg: impl Into<String>) -> Self {
        Error::Unprocessable(msg.into())
    }
}

// sled stays behind the store: callers see what went wrong, not which engine said so.
#[cfg(feature = "store")]
impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock
                    || io.to_string().contains("lock") =>
            {
                Error::InUse
            }
            // a page that fails sled's own checksum: the record in it is damaged
            sled::Error::Corruption { .. } => Error::Corrupt(e.to_string()),
            other => Error::Storage(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
