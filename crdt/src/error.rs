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
    /// The store has failed (a flush or write error) and refuses work until restarted.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded: corruption or a format from a newer version.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("automerge error: {0}")]
    Automerge(#[from] automerge::AutomergeError),
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
