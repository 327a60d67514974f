//! Session tokens over HTTP: `Meridian-Session` in and out, `Meridian-Max-Wait-Ms`.
//!
//! Two layers. [`stamp`] wraps every `/v1` route: it refuses a malformed token (400) and puts
//! the request's token merged with this node's on every answer, errors and overload included.
//! [`wait`] wraps the document routes inside the concurrency limit (so waiting requests are
//! bounded like any other) and holds a request until this node covers its token, or answers
//! 503 `session_unavailable`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_sync::SessionToken;

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) const SESSION: &str = "meridian-session";
pub(crate) const MAX_WAIT: &str = "meridian-max-wait-ms";

/// What [`stamp`] parsed, for [`wait`].
#[derive(Debug, Clone)]
struct Session {
    token: SessionToken,
    max_wait: Duration,
}

pub(crate) async fn stamp(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let (token, max_wait) = match (parse(req.headers()), max_wait(&st, req.headers())) {
        (Ok(t), Ok(w)) => (t, w),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    if let Some(t) = &token {
        req.extensions_mut().insert(Session {
            token: t.clone(),
            max_wait,
        });
    }
    let resp = next.run(req).await;
    with_token(&st, token, resp)
}

/// Waits until this node holds everything the token covers, at most the bound (or
/// `Meridian-Max-Wait-Ms`). Never lets a request see older state.
pub(crate) async fn wait(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(s) = req.extensions().get::<Session>() {
        st.replica
            .await_token(&s.token, s.max_wait)
            .await
            .map_err(|behind| {
                if behind.unknown {
                    ApiError::UnknownSessionNode(behind.node)
                } else if behind.removed {
                    ApiError::SessionRegionRemoved(behind.node)
                } else {
                    ApiError::SessionUnavailable {
                        url: st.peer_url(&behind.node),
                        node: behind.node,
                    }
                }
            })?;
    }
    Ok(next.run(req).await)
}

/// The configured bound, or `Meridian-Max-Wait-Ms` if lower.
fn max_wait(st: &AppState, headers: &HeaderMap) -> Result<Duration, ApiError> {
    let bound = st.limits.session_wait;
    let Some(v) = headers.get(MAX_WAIT) else {
        return Ok(bound);
    };
    let ms: u64 = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::BadRequest(format!("{MAX_WAIT} must be a whole number of milliseconds"))
        })?;
    Ok(Duration::from_millis(ms).min(bound))
}

fn parse(headers: &HeaderMap) -> Result<Option<SessionToken>, ApiError> {
    let Some(v) = headers.get(SESSION) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::BadSession("the session token is not visible ASCII".into()))?;
    let t = SessionToken::parse(s.trim()).map_err(|e| ApiError::BadSession(e.to_string()))?;
    Ok((!t.is_empty()).then_some(t))
}

/// The answer's token: the request's merged with this node's (taken after the request ran,
/// so it covers what the request read or wrote).
fn with_token(st: &AppState, token: Option<SessionToken>, mut resp: Response) -> Response {
    let value = match token {
        // the common case, a client without a token: this node's, cached
        None => HeaderValue::from_str(&st.replica.token_text()),
        Some(mut t) => {
            t.merge(&st.replica.token());
            HeaderValue::from_str(&t.to_string())
        }
    };
    if let Ok(v) = value {
        resp.headers_mut().insert(SESSION, v);
    }
    resp
}
