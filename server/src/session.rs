//! Session tokens over HTTP: `Meridian-Session` in and out, `Meridian-Max-Wait-Ms`.
//!
//! Two layers: [`stamp`] wraps every `/v1` route (refuses a malformed token, and puts this
//! node's merged token on every answer); [`wait`] wraps the document routes and holds a request
//! until this node covers the token, or answers 503 `session_unavailable`.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_sync::SessionToken;

use crate::error::ApiError;
use crate::AppState;

pub(crate) const SESSION: &str = "meridian-session";
pub(crate) const MAX_WAIT: &str = "meridian-max-wait-ms";

/// Parses the token (400 if malformed), runs the request, and answers with the request's token
/// merged with this node's.
pub(crate) async fn stamp(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = match req.headers().get(SESSION) {
        None => SessionToken::default(),
        Some(v) => match v
            .to_str()
            .map_err(|_| "not visible ASCII".to_string())
            .and_then(|s| SessionToken::parse(s.trim()).map_err(|e| e.to_string()))
        {
            Ok(t) => t,
            Err(e) => return ApiError::BadSession(e).into_response(),
        },
    };
    req.extensions_mut().insert(token.clone());
    let mut resp = next.run(req).await;
    let mut out = token;
    out.merge(&st.replica.token());
    if let Ok(v) = HeaderValue::from_str(&out.to_string()) {
        resp.headers_mut().insert(SESSION, v);
    }
    resp
}

/// Waits until this node holds everything the request's token covers (up to the configured
/// bound, or `Meridian-Max-Wait-Ms` if lower). Never lets a request see older state.
pub(crate) async fn wait(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let bound = st.limits.session_wait;
    let max_wait = match req.headers().get(MAX_WAIT) {
        None => bound,
        Some(v) => {
            let ms: u64 = v
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "{MAX_WAIT} must be a whole number of milliseconds"
                    ))
                })?;
            Duration::from_millis(ms).min(bound)
        }
    };
    let token = req
        .extensions()
        .get::<SessionToken>()
        .cloned()
        .unwrap_or_default();
    if !token.is_empty() {
        if let Err(behind) = st.replica.await_token(&token, max_wait).await {
            return Err(ApiError::SessionUnavailable {
                url: st.peer_url(&behind.node),
                node: behind.node,
                unknown: behind.unknown,
            });
        }
    }
    Ok(next.run(req).await)
}
