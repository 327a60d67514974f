//! The node-to-node side: the HTTP transport replication uses to reach peers, the
//! authenticated `POST /internal/rpc` endpoint that answers them, and `GET /v1/cluster`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use meridian_sync::{Chunks, ClusterReport, Error as SyncError, Peer, Transport};
use tokio_stream::StreamExt;

use crate::error::ApiError;
use crate::faults::{cut_error, Faults, FROM_HEADER};
use crate::state::AppState;
use crate::tls::{ConnInfo, PeerTls};

/// Largest node-to-node request (a repair request lists the heads of many documents).
const INTERNAL_BODY_LIMIT: usize = 64 << 20;

/// Content type of node-to-node messages (see `meridian_sync::wire`).
const RPC_TYPE: &str = "application/x-meridian-rpc";

/// Replication over HTTP/1.1 with keep-alive, one pooled client for all peers. Requests name
/// this node (`Meridian-Node`) and go nowhere over a link the fault controls cut.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    secret: String,
    me: HeaderValue,
    faults: Arc<Faults>,
}

impl HttpTransport {
    /// Errors name the TLS file that is wrong.
    pub fn new(secret: &str, me: &str, faults: Arc<Faults>, tls: &PeerTls) -> Result<Self, String> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60));
        let client = crate::tls::peer_client(builder, tls)?
            .build()
            .map_err(|e| format!("the peer client: {e}"))?;
        Ok(HttpTransport {
            client,
            secret: secret.to_owned(),
            // node ids are a header-safe alphabet (checked when the store opens)
            me: HeaderValue::from_str(me).unwrap_or(HeaderValue::from_static("")),
            faults,
        })
    }
}

impl HttpTransport {
    /// `POST <peer>/internal/<endpoint>` with the secret and a message body.
    fn post(
        &self,
        peer: &Peer,
        endpoint: &str,
        body: Vec<u8>,
    ) -> Result<(String, reqwest::RequestBuilder), SyncError> {
        if self.faults.blocks(peer.id.as_str()) {
            return Err(SyncError::Unreachable(cut_error(peer.id.as_str())));
        }
        let url = format!("{}/internal/{endpoint}", peer.addr.trim_end_matches('/'));
        let req = self
            .client
            .post(&url)
            .bearer_auth(&self.secret)
            .header(header::CONTENT_TYPE, RPC_TYPE)
            .header(FROM_HEADER, self.me.clone())
            .body(body);
        Ok((url, req))
    }
}

impl Transport for HttpTransport {
    async fn call(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, SyncError> {
        let (url, req) = self.post(peer, "rpc", body)?;
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| unreachable(&url, e))?;
        if !status.is_success() {
            return Err(SyncError::Refused(format!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )));
        }
        Ok(bytes.to_vec())
    }

    async fn open(
        &self,
        peer: &Peer,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Chunks, SyncError> {
        let (url, req) = self.post(peer, "subscribe", body)?;
        // no overall timeout: the answer is a stream; the replica notices a silent one
        let send = req.send();
        let mut resp = tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| SyncError::Unreachable(format!("{url}: timed out")))?
            .map_err(|e| unreachable(&url, e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(SyncError::Refused(format!(
                "{url}: {status}: {}",
                &text[..text.len().min(200)]
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (faults, peer) = (self.faults.clone(), peer.id.to_string());
        tokio::spawn(async move {
            // made once, not per frame: a feed stream carries a frame every heartbeat
            let cut = faults.until_blocked(&peer);
            tokio::pin!(cut);
            loop {
                let item = tokio::select! {
                    chunk = resp.chunk() => match chunk {
                        Ok(Some(c)) => Ok(c.to_vec()),
                        Ok(None) => return,
                        Err(e) => Err(unreachable(&url, e)),
                    },
                    _ = &mut cut => Err(SyncError::Unreachable(cut_error(&peer))),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

/// A request that got no answer: the URL and the reason, with the causes (a TLS refusal says
/// why only there).
fn unreachable(url: &str, e: reqwest::Error) -> SyncError {
    let mut text = format!("{url}: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text += &format!(": {c}");
        cause = c.source();
    }
    SyncError::Unreachable(text)
}

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
    crate::faults::check_incoming(st, headers)?;
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

/// `GET /v1/cluster`: this node and each peer, with reachability, lag both ways and traffic.
pub(crate) async fn report(State(st): State<AppState>) -> Json<ClusterReport> {
    let replica = st.replica.clone();
    // counting a backlog reads the feed: off the async workers
    let report = tokio::task::spawn_blocking(move || replica.report()).await;
    Json(report.unwrap_or_else(|_| st.replica.report()))
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
