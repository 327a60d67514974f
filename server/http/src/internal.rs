//! The node-to-node endpoints, behind the cluster secret: `POST /internal/rpc` and
//! `/internal/subscribe` (what `meridian_net::HttpTransport` calls), and the fault controls
//! `/internal/faults` (`--fault-controls` only; see `meridian_net::faults`).

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use meridian_net::faults::{FaultChange, FaultState, FROM_HEADER, PAUSED};
use meridian_net::tls::ConnInfo;
use meridian_net::transport::RPC_TYPE;
use tokio_stream::StreamExt;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest node-to-node request (a repair request lists the heads of many documents).
const INTERNAL_BODY_LIMIT: usize = 64 << 20;

/// Compares without stopping at the first difference, so timing does not reveal the secret.
fn same_secret(given: &[u8], wanted: &[u8]) -> bool {
    given.len() == wanted.len() && given.iter().zip(wanted).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// 401 without the cluster secret (and always, on a node without one).
pub(crate) fn check_secret(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (&st.cluster_secret, given) {
        (Some(secret), Some(given)) => same_secret(given.as_bytes(), secret.as_bytes()),
        _ => false,
    };
    if !ok {
        return Err(ApiError::Unauthorized(
            "this endpoint needs the cluster secret".into(),
        ));
    }
    Ok(())
}

/// Checks the peer's certificate (with `--require-peer-cert`), the cluster secret and the fault
/// controls, then reads the body (only once authenticated).
async fn authenticated_body(
    st: &AppState,
    conn: Option<Extension<ConnectInfo<ConnInfo>>>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    if st.peer_tls.require_cert && !conn.is_some_and(|c| c.0 .0.peer_cert) {
        return Err(ApiError::Unauthorized(
            "this node requires peers to present a client certificate from its peer CA".into(),
        ));
    }
    check_secret(st, headers)?;
    check_incoming(st, headers)?;
    axum::body::to_bytes(body, INTERNAL_BODY_LIMIT)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(INTERNAL_BODY_LIMIT))
}

fn rpc_response(body: Body) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(RPC_TYPE))],
        body,
    )
        .into_response()
}

/// `POST /internal/rpc`: one replication request from a peer, one answer.
pub(crate) async fn rpc(
    State(st): State<AppState>,
    conn: Option<Extension<ConnectInfo<ConnInfo>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = authenticated_body(&st, conn, &headers, body).await?;
    Ok(rpc_response(Body::from(st.replica.handle(&body).await)))
}

/// `POST /internal/subscribe`: a peer follows this node's feed; the answer is a stream of
/// frames for as long as the subscription lives.
pub(crate) async fn subscribe(
    State(st): State<AppState>,
    conn: Option<Extension<ConnectInfo<ConnInfo>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = authenticated_body(&st, conn, &headers, body).await?;
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    Ok(match st.replica.subscribe(&body) {
        Ok(frames) => {
            // a cut ends the stream, as the partition would
            let faults = st.faults.clone();
            let cut = async move { faults.until_blocked(&from).await };
            let stream = futures_util::StreamExt::take_until(
                tokio_stream::wrappers::ReceiverStream::new(frames),
                Box::pin(cut),
            )
            .map(Ok::<_, std::convert::Infallible>);
            rpc_response(Body::from_stream(stream))
        }
        Err(answer) => rpc_response(Body::from(answer)),
    })
}

/// Refuses a node-to-node request that comes over a cut link.
fn check_incoming(st: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match st.faults.refusal(from) {
        Some(why) => Err(ApiError::Faulted(why)),
        None => Ok(()),
    }
}

/// `GET /internal/faults`.
pub(crate) async fn show_faults(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<FaultState>, ApiError> {
    check_secret(&st, &headers)?;
    Ok(Json(st.faults.state()))
}

/// `POST /internal/faults`: peers must be this node's peers; a bad request changes nothing.
pub(crate) async fn change_faults(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<FaultState>, ApiError> {
    check_secret(&st, &headers)?;
    let change: FaultChange = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid fault change: {e}")))?;
    for p in change.cut.iter().chain(&change.heal) {
        if st.replica.peer_url(p).is_none() {
            return Err(ApiError::BadRequest(format!(
                "{p:?} is not a peer of this node"
            )));
        }
    }
    let before = st.faults.state();
    let after = st.faults.apply(change);
    if after != before {
        tracing::warn!(cut = ?after.cut, paused = after.paused, "fault controls changed");
    }
    Ok(Json(after))
}

/// While paused, every request but the fault controls and health is 503 `unavailable`.
pub(crate) async fn pause_gate(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if st.faults.paused() && path != "/internal/faults" && path != "/healthz" {
        return ApiError::Faulted(PAUSED.into()).into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
