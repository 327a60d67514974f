//! The HTTP transport replication uses to reach peers (`POST /internal/rpc` and
//! `/internal/subscribe`, answered by `meridian-http`'s `internal` module).

use std::sync::Arc;
use std::time::Duration;

use meridian_sync::{Chunks, Error as SyncError, Peer, Transport};
use reqwest::header::{self, HeaderValue};

use crate::faults::{cut_error, Faults, FROM_HEADER};
use crate::tls::PeerTls;

/// Content type of node-to-node messages (see `meridian_sync::wire`).
pub const RPC_TYPE: &str = "application/x-meridian-rpc";

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
