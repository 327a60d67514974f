//! `GET /v1/_backup` (admin): an online backup, streamed while writes go on. The frames are
//! `meridian_crdt::backup_format`'s; the store reads documents from disk, a page at a time, on
//! blocking threads (`docs/replication.md`, Backups).

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_crdt::backup_format::{encode, Frame};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::error::ApiError;
use crate::extract::Query;
use crate::state::AppState;

/// Documents read per page.
const PAGE: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupParams {
    /// The stream's pace, MiB/s (absent or 0: as fast as the node reads).
    max_mb_per_sec: Option<String>,
}

/// Streams the backup, at most `max_mb_per_sec` MiB/s when set: a backup runs beside the
/// writers, and unpaced it takes about a core's worth of their CPU (see docs/benchmarks.md).
pub(crate) async fn backup(
    State(st): State<AppState>,
    Query(p): Query<BackupParams>,
) -> Result<Response, ApiError> {
    let rate = match p.max_mb_per_sec.as_deref().map(str::parse::<u32>) {
        None | Some(Ok(0)) => None,
        Some(Ok(mb)) => Some(f64::from(mb) * (1 << 20) as f64),
        Some(Err(_)) => {
            return Err(ApiError::BadRequest(
                "max_mb_per_sec must be a whole number of MiB/s (0: no limit)".into(),
            ))
        }
    };
    let (tx, rx) = mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let store = st.store.clone();
    let header = serde_json::json!({
        "format": "meridian-backup",
        "version": 1,
        "node": store.node_id().as_str(),
        "region": &*st.region,
        "started_at": meridian_crdt::display_stamp(&store.clock().now()),
    });
    tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        if tx.send(Ok(encode(&Frame::Header(header)))).await.is_err() {
            return;
        }
        let (mut after, mut documents, mut skipped) = (None, 0usize, Vec::new());
        let mut sent = 0u64;
        loop {
            let s = store.clone();
            let from = after.clone();
            let page = tokio::task::spawn_blocking(move || s.backup_page(from.as_ref(), PAGE))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    // the stream ends without its trailer: the copy is known incomplete
                    tracing::error!(error = %e, "the backup failed");
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            };
            documents += page.docs.len();
            skipped.extend(page.skipped.iter().map(|k| k.to_string()));
            for (key, saved) in page.docs {
                let frame = encode(&Frame::Doc(key, saved));
                sent += frame.len() as u64;
                if tx.send(Ok(frame)).await.is_err() {
                    return; // the client went away
                }
            }
            if let Some(rate) = rate {
                let due = t0 + std::time::Duration::from_secs_f64(sent as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            match page.next {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        tracing::info!(
            documents,
            skipped = skipped.len(),
            ms = t0.elapsed().as_millis() as u64,
            "backup streamed"
        );
        let end = serde_json::json!({"documents": documents, "skipped": skipped});
        let _ = tx.send(Ok(encode(&Frame::End(end)))).await;
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}
