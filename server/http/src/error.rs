//! The one place where errors become HTTP statuses and error codes.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use meridian_api::Code;
use meridian_crdt::Error as CrdtError;

/// Every error the API can answer with. The body is `{"error":{"code","message"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    BadSession(String),
    /// No key, a malformed one, an unknown or expired one (or no cluster secret).
    #[error("{0}")]
    Unauthorized(String),
    /// A scoped token that does not verify; expired (or not yet valid); revoked.
    #[error("{0}")]
    InvalidToken(String),
    #[error("{0}")]
    TokenExpired(String),
    #[error("{0}")]
    TokenRevoked(String),
    /// A principal over its request rate; retry after the wait.
    #[error("{1}; retry in {secs} s", secs = retry_secs(*.0))]
    RateLimited(std::time::Duration, String),
    /// A valid key without the access the request needs.
    #[error("{0}")]
    Forbidden(String),
    /// Too many failed authentications from this address; retry after the wait.
    #[error("too many failed authentications from this address; retry in {} s", retry_secs(*.0))]
    TooManyRequests(std::time::Duration),
    #[error("{0}")]
    NotFound(String),
    /// Not a schema Meridian can enforce (not JSON Schema 2020-12, a bad `x-merge`).
    #[error("{0}")]
    InvalidSchema(String),
    /// The write would leave a document that breaks its collection's schema.
    #[error("the document would break its collection's schema ({} rule(s))", .0.len())]
    SchemaViolation(Vec<meridian_crdt::Violation>),
    /// A new schema version that would refuse documents the old one accepted.
    #[error("the new schema is not compatible with the current one: {}; send ?force=true to store it anyway", reasons.join("; "))]
    IncompatibleSchema {
        reasons: Vec<String>,
        broken: usize,
        ids: Vec<String>,
    },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// `/v1/sync` without a WebSocket upgrade.
    #[error("{0}")]
    UpgradeRequired(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("too many requests in flight; retry shortly")]
    Overloaded,
    /// A bound on open sockets or streams is reached.
    #[error("{0}")]
    LimitReached(String),
    #[error("the request took longer than the server's timeout")]
    Timeout,
    /// This node cannot cover the session token in time: `node` has the data.
    #[error("this node has not yet caught up with the session's changes from {node:?}; retry, or ask {node:?}")]
    SessionUnavailable { node: String, url: Option<String> },
    /// The node is draining before it stops: go to `node` (at `url`) instead.
    #[error("this node is draining before it stops; use another region")]
    Draining {
        node: Option<String>,
        url: Option<String>,
    },
    /// The session token names a node this cluster does not have: no region can cover it.
    #[error("the session token names node {0:?}, which is not in this cluster: no region can cover it; drop that entry from the token")]
    UnknownSessionNode(String),
    /// The session token names a removed region past what this node merged of it.
    #[error("the session token names region {0:?}, which was removed from the cluster; this node does not hold all of its changes the session has seen, and can no longer fetch them: read in a region that does, or start a new session")]
    SessionRegionRemoved(String),
    #[error("{0}")]
    UnknownRegion(String),
    /// A removed id added back, or a change on a node that was itself removed; said as it is.
    #[error("{0}")]
    RegionRemoved(String),
    #[error("{0}")]
    RegionNotCaughtUp(String),
    /// The collection is placed in other regions only: `regions` (and where clients reach them).
    #[error("collection {collection:?} lives in {} only: this region neither holds nor serves its documents; ask one of those regions", names(.regions))]
    Elsewhere {
        collection: String,
        regions: Vec<(String, Option<String>)>,
    },
    /// Storage has failed; internal details are logged, not sent.
    #[error("storage unavailable")]
    Unavailable(String),
    /// The data dir's filesystem is below the free space kept; said as it is (no secret in it).
    #[error("{0}")]
    InsufficientStorage(String),
    /// A stored document is damaged here and being healed from a peer; said as it is.
    #[error("{0}")]
    Damaged(String),
    /// Local writes wait for the peers after a log repair that lost batches; said as it is.
    #[error("{0}")]
    Recovering(String),
    /// `/readyz`: why this node should not get traffic now.
    #[error("{0}")]
    NotReady(String),
    /// The demo page could not reach a region (`meridian demo`'s proxy).
    #[error("{0}")]
    BadGateway(String),
    /// A fault control holds the request back (a cut link, a paused node); said as it is.
    #[error("{0}")]
    Faulted(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_)
            | ApiError::InvalidId(_)
            | ApiError::BadSession(_)
            | ApiError::UnknownSessionNode(_)
            | ApiError::InvalidSchema(_) => StatusCode::BAD_REQUEST,
            ApiError::SchemaViolation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IncompatibleSchema { .. } => StatusCode::CONFLICT,
            ApiError::Unauthorized(_)
            | ApiError::InvalidToken(_)
            | ApiError::TokenExpired(_)
            | ApiError::TokenRevoked(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) | ApiError::UnknownRegion(_) => StatusCode::NOT_FOUND,
            ApiError::SessionRegionRemoved(_) => StatusCode::GONE,
            ApiError::RegionRemoved(_) | ApiError::RegionNotCaughtUp(_) => StatusCode::CONFLICT,
            ApiError::Elsewhere { .. } => StatusCode::MISDIRECTED_REQUEST,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Overloaded
            | ApiError::LimitReached(_)
            | ApiError::Timeout
            | ApiError::Unavailable(_)
            | ApiError::Faulted(_)
            | ApiError::Damaged(_)
            | ApiError::Recovering(_)
            | ApiError::SessionUnavailable { .. }
            | ApiError::Draining { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }

    pub fn code(&self) -> Code {
        match self {
            ApiError::BadRequest(_) => Code::BadRequest,
            ApiError::InvalidId(_) => Code::InvalidId,
            ApiError::BadSession(_) => Code::InvalidSessionToken,
            ApiError::Unauthorized(_) => Code::Unauthorized,
            ApiError::InvalidToken(_) => Code::InvalidToken,
            ApiError::TokenExpired(_) => Code::TokenExpired,
            ApiError::TokenRevoked(_) => Code::TokenRevoked,
            ApiError::RateLimited(..) => Code::RateLimited,
            ApiError::Forbidden(_) => Code::Forbidden,
            ApiError::TooManyRequests(_) => Code::TooManyRequests,
            ApiError::SessionUnavailable { .. } => Code::SessionUnavailable,
            ApiError::Draining { .. } => Code::Draining,
            ApiError::UnknownSessionNode(_) => Code::UnknownSessionNode,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::SessionRegionRemoved(_) => Code::SessionRegionRemoved,
            ApiError::UnknownRegion(_) => Code::UnknownRegion,
            ApiError::RegionRemoved(_) => Code::RegionRemoved,
            ApiError::RegionNotCaughtUp(_) => Code::RegionNotCaughtUp,
            ApiError::Elsewhere { .. } => Code::CollectionElsewhere,
            ApiError::InvalidSchema(_) => Code::InvalidSchema,
            ApiError::SchemaViolation(_) => Code::SchemaViolation,
            ApiError::IncompatibleSchema { .. } => Code::IncompatibleSchema,
            ApiError::MethodNotAllowed => Code::MethodNotAllowed,
            ApiError::PayloadTooLarge(_) => Code::PayloadTooLarge,
            ApiError::UnsupportedMediaType(_) => Code::UnsupportedMediaType,
            ApiError::UpgradeRequired(_) => Code::UpgradeRequired,
            ApiError::Unprocessable(_) => Code::Unprocessable,
            ApiError::Overloaded | ApiError::LimitReached(_) => Code::Overloaded,
            ApiError::Timeout => Code::Timeout,
            ApiError::Unavailable(_) | ApiError::Faulted(_) | ApiError::NotReady(_) => {
                Code::Unavailable
            }
            ApiError::InsufficientStorage(_) => Code::InsufficientStorage,
            ApiError::Damaged(_) => Code::DocumentDamaged,
            ApiError::Recovering(_) => Code::Recovering,
            ApiError::Internal(_) => Code::Internal,
            ApiError::BadGateway(_) => Code::Unreachable,
        }
    }
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`).
fn names(regions: &[(String, Option<String>)]) -> String {
    regions
        .iter()
        .map(|(id, _)| id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn retry_secs(d: std::time::Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl From<CrdtError> for ApiError {
    fn from(e: CrdtError) -> Self {
        match e {
            CrdtError::BadRequest(m) => ApiError::BadRequest(m),
            CrdtError::InvalidId(m) => ApiError::InvalidId(m),
            CrdtError::NotFound => ApiError::NotFound("document not found".into()),
            CrdtError::Unprocessable(m) | CrdtError::Refused(m) => ApiError::Unprocessable(m),
            CrdtError::SchemaViolation(v) => ApiError::SchemaViolation(v),
            CrdtError::Unavailable(m) => ApiError::Unavailable(m),
            CrdtError::InsufficientStorage(m) => ApiError::InsufficientStorage(m),
            CrdtError::Damaged(m) => ApiError::Damaged(m),
            CrdtError::Recovering(m) => ApiError::Recovering(m),
            CrdtError::Retired(m) => ApiError::RegionRemoved(m),
            // a request the path check let through as the placement changed: no URLs at hand
            CrdtError::Elsewhere {
                collection,
                regions,
            } => ApiError::Elsewhere {
                collection,
                regions: regions.into_iter().map(|r| (r, None)).collect(),
            },
            CrdtError::InUse => ApiError::Unavailable("the data dir is in use".into()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<meridian_sync::RegionsError> for ApiError {
    fn from(e: meridian_sync::RegionsError) -> Self {
        use meridian_sync::{MemberError, RegionsError};
        match e {
            RegionsError::Refused(MemberError::Invalid(m)) => ApiError::BadRequest(m),
            RegionsError::Refused(e @ MemberError::Myself(_)) => {
                ApiError::BadRequest(e.to_string())
            }
            RegionsError::Refused(e @ MemberError::Unknown(_)) => {
                ApiError::UnknownRegion(e.to_string())
            }
            RegionsError::Refused(e @ MemberError::Removed { .. }) => {
                ApiError::RegionRemoved(e.to_string())
            }
            e @ RegionsError::Departed(_) => ApiError::RegionRemoved(e.to_string()),
            e @ RegionsError::NotCaughtUp { .. } => ApiError::RegionNotCaughtUp(e.to_string()),
            RegionsError::Store(e) => e.into(),
        }
    }
}

impl From<meridian_schema::StoredJsonError> for ApiError {
    fn from(e: meridian_schema::StoredJsonError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(detail) | ApiError::Unavailable(detail) => {
                tracing::error!(%status, detail, "request failed")
            }
            _ => tracing::debug!(%status, error = %self, "request refused"),
        }
        let mut error = meridian_api::Error::new(self.code(), self.to_string());
        match &self {
            ApiError::SessionUnavailable { node, url } => {
                // where the client can go instead
                error.region = Some(node.clone());
                error.url = Some(url.clone());
            }
            ApiError::Draining { node, url } => {
                error.region = node.clone();
                error.url = Some(url.clone());
            }
            ApiError::UnknownSessionNode(node) | ApiError::SessionRegionRemoved(node) => {
                error.region = Some(node.clone());
                error.url = Some(None);
            }
            ApiError::SchemaViolation(errors) => error.errors = Some(errors.clone()),
            ApiError::Elsewhere { regions, .. } => {
                error.regions = Some(
                    regions
                        .iter()
                        .map(|(id, url)| meridian_api::RegionUrl {
                            id: id.clone(),
                            url: url.clone(),
                        })
                        .collect(),
                )
            }
            ApiError::IncompatibleSchema {
                reasons,
                broken,
                ids,
            } => {
                error.reasons = Some(reasons.clone());
                error.broken = Some(meridian_api::Broken {
                    count: *broken as u64,
                    ids: ids.clone(),
                });
            }
            _ => {}
        }
        let body = meridian_api::ErrorBody { error };
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        match &self {
            ApiError::Unauthorized(_)
            | ApiError::InvalidToken(_)
            | ApiError::TokenExpired(_)
            | ApiError::TokenRevoked(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"meridian\""),
                );
            }
            ApiError::TooManyRequests(wait) | ApiError::RateLimited(wait, _) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs(*wait)));
            }
            // space comes back when someone frees it: not in a second
            ApiError::InsufficientStorage(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}
