//! The crate's one error type: what went wrong in an exchange with a peer, and whose fault.

/// Why an exchange with a peer failed. Every kind fails the exchange, which is retried with
/// backoff; the kind says what to look at (the network, the peer's software or configuration,
/// this node's disk) and whether the peer shows unreachable meanwhile
/// ([`Error::is_link_failure`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The peer could not be reached, did not answer in time, or the exchange broke off.
    #[error("{0}")]
    Unreachable(String),
    /// The peer answered with an HTTP error (a wrong cluster secret, a missing certificate,
    /// a fault control), said as the peer said it.
    #[error("{0}")]
    Refused(String),
    /// A peer's message (its answer, or its request) cannot be read: another version, or a bug.
    #[error("a peer's message cannot be read: {0}")]
    Protocol(String),
    /// This node's storage failed while taking the answer in.
    #[error("local storage: {0}")]
    Store(String),
}

impl Error {
    /// The link to the peer does not work (no answer, an HTTP error, an unreadable answer): the
    /// peer shows unreachable. This node's own disk failing says nothing about the link: the
    /// peer answered.
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            Error::Unreachable(_) | Error::Refused(_) | Error::Protocol(_)
        )
    }
}

impl From<meridian_crdt::Error> for Error {
    fn from(e: meridian_crdt::Error) -> Self {
        Error::Store(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
