//! The node-to-node side: the HTTP transport replication uses to reach peers, the
//! authenticated `POST /internal/rpc` endpoint that answers them, and `GET /v1/cluster`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use meridian_sync::{Chunks, ClusterReport, Peer, Transport};
use tokio_stream::StreamExt;

use crate::error::ApiError;
use crate::faults::{cut_error, Faults, FROM_HEADER};
use crate::state::AppState;

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
    pub fn new(secret: &str, me: &str, faults: Arc<Faults>) -> Self {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("an HTTP client with default TLS-less settings builds");
        HttpTransport {
            client,
            secret: secret.to_owned(),
            // node ids are a header-safe alphabet (checked when the store opens)
            me: HeaderValue::from_str(me).unwrap_or(HeaderValue::from_static("")),
            faults,
        }
    }
}

impl HttpTransport {
    /// `POST <peer>/internal/<endpoint>` with the secret and a message body.
    fn post(
        &self,
        peer: &Peer,
        endpoint: &str,
        body: Vec<u8>,
    ) -> Result<(String, reqwest::RequestBuilder), String> {
        if self.faults.blocks(peer.id.as_str()) {
            return Err(cut_error(peer.id.as_str()));
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
    async fn call(&self, peer: &Peer, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, String> {
        let (url, req) = self.post(peer, "rpc", body)?;
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            return Err(format!(
                "{url}: {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        Ok(bytes.to_vec())
    }

    async fn open(&self, peer: &Peer, body: Vec<u8>, timeout: Duration) -> Result<Chunks, String> {
        let (url, req) = self.post(peer, "subscribe", body)?;
        // no overall timeout: the answer is a stream; the replica notices a silent one
        let send = req.send();
        let mut resp = tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| format!("{url}: timed out"))?
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(format!("{url}: {status}: {}", &text[..text.len().min(200)]));
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
                        Err(e) => Err(format!("{url}: {e}")),
                    },
                    _ = &mut cut => Err(cut_error(&peer)),
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
        return Err(ApiError::Unauthorized);
    }
    Ok(())
}

/// Checks the cluster secret and the fault controls, then reads the body (only once
/// authenticated).
async fn authenticated_body(
    st: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
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
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = authenticated_body(&st, &headers, body).await?;
    Ok(rpc_response(Body::from(st.replica.handle(&body).await)))
}

/// `POST /internal/subscribe`: a peer follows this node's feed; the answer is a stream of
/// frames for as long as the subscription lives.
pub(crate) async fn subscribe(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let body = authenticated_body(&st, &headers, body).await?;
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
