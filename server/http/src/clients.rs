//! `GET /v1/sync`: the WebSocket automerge-repo clients sync over. The protocol is
//! `meridian_sync::repo`; this module moves its frames and keeps the socket honest: at most
//! `max_queued_bytes` waiting for a slow client (then it is disconnected, never buffered without
//! bound), a ping when the client is quiet and a close when it stays silent, text frames and
//! oversized messages refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as Ws, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, Uri};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use meridian_sync::repo::{Close, Connection, Output, SyncLimits};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{CollectionPath, Query};
use crate::state::AppState;

/// `GET /v1/sync`: with `Upgrade: websocket`, upgrades to the sync protocol (503 `overloaded`
/// when the node has all the connections it allows, before the upgrade); without, it is what it
/// always was, the list of the collection named `sync`.
pub(crate) async fn sync_or_list(
    State(st): State<AppState>,
    uri: Uri,
    headers: HeaderMap,
    caller: Option<axum::Extension<Caller>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if !headers.contains_key(header::UPGRADE) {
        crate::extract::placed_here(&st, "sync")?;
        let list = crate::api::list_docs(
            State(st),
            CollectionPath("sync".into()),
            Query::parse(&uri)?,
            headers,
            caller,
        );
        return list.await;
    }
    if st.drain.is_on() {
        return Err(st.draining_error());
    }
    // a full node says so before it looks at the handshake
    let caller = caller.map_or(Caller::Anyone, |c| c.0);
    let access = caller.sync_access();
    let ended: Ended = match caller {
        Caller::Anyone => Box::pin(std::future::pending()),
        _ => Box::pin(st.auth.ended(caller)),
    };
    let conn = Connection::open_as(&st.hub, access).map_err(|_| {
        ApiError::LimitReached(format!(
            "this node serves at most {} sync connections at once; retry shortly",
            st.hub.limits().max_connections
        ))
    })?;
    let ws = ws.map_err(|e| {
        ApiError::UpgradeRequired(format!(
            "/v1/sync speaks automerge-repo's protocol over a WebSocket ({})",
            e.body_text()
        ))
    })?;
    let limits = st.hub.limits().clone();
    Ok(ws
        // tungstenite's defaults (128 KiB to read into, 128 KiB gathered before a write) cost
        // a quarter MiB per socket; sync messages are mostly small and a socket mostly idle
        .read_buffer_size(8 << 10)
        .write_buffer_size(0)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| serve(socket, conn, limits, ended)))
}

fn close_frame(c: &Close) -> Ws {
    use axum::extract::ws::close_code;
    let (code, reason) = match c {
        Close::Normal(r) => (close_code::NORMAL, r.as_str()),
        Close::Refused(r) => (close_code::POLICY, r.as_str()),
        Close::GoingAway => (close_code::AWAY, "the node is shutting down"),
    };
    // a close reason is at most 123 bytes
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Ws::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Resolves when the client's credentials are no longer in force.
type Ended = std::pin::Pin<Box<dyn std::future::Future<Output = ApiError> + Send>>;

async fn serve(socket: WebSocket, mut conn: Connection, limits: SyncLimits, mut ended: Ended) {
    let (mut sink, mut stream) = socket.split();
    let queued = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Ws, usize)>();
    let drained = queued.clone();
    let writer = tokio::spawn(async move {
        while let Some((m, n)) = rx.recv().await {
            let last = matches!(m, Ws::Close(_));
            if sink.send(m).await.is_err() {
                break;
            }
            drained.fetch_sub(n, Ordering::Relaxed);
            if last {
                break;
            }
        }
        let _ = sink.close().await;
    });

    let notices = conn.notices();
    let mut heard = Instant::now();
    let mut ping = tokio::time::interval(limits.ping_every);
    ping.tick().await;
    'conn: loop {
        let outs = tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Ws::Binary(b))) => {
                    heard = Instant::now();
                    conn.receive(&b).await
                }
                Some(Ok(Ws::Text(_))) => conn.refuse("text frames are not part of the protocol; send binary CBOR"),
                Some(Ok(Ws::Ping(_) | Ws::Pong(_))) => {
                    heard = Instant::now();
                    continue;
                }
                Some(Ok(Ws::Close(_))) | None => break,
                Some(Err(e)) => {
                    // a frame over the size limit lands here too: the socket is closed
                    tracing::debug!(error = %e, "a sync socket failed");
                    break;
                }
            },
            _ = notices.ready() => conn.drain_notices().await,
            why = &mut ended => {
                tracing::info!(reason = %why, "closing a sync connection: its credentials ended");
                conn.refuse(&why.to_string())
            }
            _ = ping.tick() => {
                if heard.elapsed() > limits.idle_timeout {
                    vec![Output::Close(Close::Normal("idle for too long".into()))]
                } else {
                    let _ = tx.send((Ws::Ping(Default::default()), 0));
                    continue;
                }
            }
        };
        for o in outs {
            match o {
                Output::Frame(f) => {
                    let n = f.len();
                    if queued.load(Ordering::Relaxed) + n > limits.max_queued_bytes {
                        tracing::info!(
                            queued = queued.load(Ordering::Relaxed),
                            "disconnecting a sync client that does not keep up"
                        );
                        let slow = Close::Refused("the client does not read fast enough".into());
                        let _ = tx.send((close_frame(&slow), 0));
                        break 'conn;
                    }
                    queued.fetch_add(n, Ordering::Relaxed);
                    let _ = tx.send((Ws::Binary(f.into()), n));
                }
                Output::Close(c) => {
                    let _ = tx.send((close_frame(&c), 0));
                    break 'conn;
                }
            }
        }
    }
    drop(conn);
    drop(tx);
    // what is queued goes out, unless the client has stopped reading
    if tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .is_err()
    {
        tracing::debug!("a sync client did not take its last frames");
    }
}
