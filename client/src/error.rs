//! The client's one error type.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::Value;

/// What went wrong, as an application needs to tell it apart.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with an error (`{"error":{"code","message"}}`); not retried, or
    /// retried until the attempts ran out.
    #[error("{status} {code}: {message}")]
    Http {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No region could be reached (after every retry and every region).
    #[error("no region answered: {0}")]
    Unreachable(String),
    /// The input cannot be sent as it is (a bad id, JSON that is not an object, a bad op).
    #[error("{0}")]
    Invalid(String),
    /// A local replica: its file, or an edit that does not fit the document.
    #[error("{0}")]
    Local(String),
    /// The sync protocol went wrong.
    #[error("sync: {0}")]
    Sync(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error code of an HTTP error (`not_found`, `unprocessable`, …).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Http { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<meridian_crdt::Error> for Error {
    fn from(e: meridian_crdt::Error) -> Self {
        match e {
            meridian_crdt::Error::BadRequest(m) | meridian_crdt::Error::InvalidId(m) => {
                Error::Invalid(m)
            }
            other => Error::Local(other.to_string()),
        }
    }
}

/// The node an `unknown_session_node` answer names: an entry of the session no region can cover.
pub(crate) fn unknown_session_node(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    (v["error"]["code"] == "unknown_session_node")
        .then(|| v["error"]["region"].as_str().map(str::to_owned))
        .flatten()
}

/// The error an answer that is not a success carries (its body as the node wrote it).
pub(crate) fn http_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let field = |k: &str| v["error"][k].as_str().map(str::to_owned);
    Error::Http {
        status: status.as_u16(),
        code: field("code").unwrap_or_else(|| status.as_str().to_owned()),
        message: field("message")
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into()),
        retry_after: headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
    }
}
