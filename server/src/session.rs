//! Session tokens over HTTP: `Meridian-Session` in and out, `Meridian-Max-Wait-Ms`.
//!
//! One middleware around every `/v1` route: it refuses a malformed token (400), holds a
//! document request until this node covers the token (or answers 503 `session_unavailable`),
//! and puts the request's token merged with this node's on every answer, errors included.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_sync::SessionToken;

use crate::error::ApiError;
use crate::AppState;

pub(crate) const SESSION: &str = "meridian-session";
pub(crate) const MAX_WAIT: &str = "meridian-max-wait-ms";

/// Routes that describe the node rather than serve data: never held back by a token.
const NO_WAIT: [&str; 2] = ["/v1/status", "/v1/cluster"];

pub(crate) async fn layer(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let (token, max_wait) = match (parse(req.headers()), max_wait(&st, req.headers())) {
        (Ok(t), Ok(w)) => (t, w),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    let resp = match &token {
        Some(t) if !NO_WAIT.contains(&req.uri().path()) => match wait(&st, t, max_wait).await {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        },
        _ => next.run(req).await,
    };
    stamp(&st, token, resp)
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

/// Waits until this node holds everything the token covers, at most `max_wait`. Never lets a
/// request see older state.
async fn wait(st: &AppState, token: &SessionToken, max_wait: Duration) -> Result<(), ApiError> {
    st.replica
        .await_token(token, max_wait)
        .await
        .map_err(|behind| ApiError::SessionUnavailable {
            url: st.peer_url(&behind.node),
            node: behind.node,
            unknown: behind.unknown,
        })
}

/// The answer's token: the request's merged with this node's (taken after the request ran,
/// so it covers what the request read or wrote).
fn stamp(st: &AppState, token: Option<SessionToken>, mut resp: Response) -> Response {
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
