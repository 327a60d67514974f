//! `meridian backup URL --to DIR` and `meridian restore --from DIR --data-dir D --node-id NEW`:
//! an online copy of a running node (`GET /v1/_backup`, admin), and a fresh data dir made from
//! it under a new node id, which then catches up from its peers (`docs/replication.md`,
//! Backups).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use futures_util::StreamExt;
use meridian_crdt::backup_format::{decode, Frame};
use meridian_crdt::{DocKey, Store, StoreConfig};

/// The file a backup directory holds; `manifest.json` beside it says what it holds.
const FILE: &str = "meridian.backup";

/// `meridian backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The node's base URL, for example http://127.0.0.1:7070.
    pub url: String,
    /// A directory that does not exist yet, or is empty.
    #[arg(long)]
    pub to: PathBuf,
    /// The node streams the backup at most this fast, MiB/s (0: no limit). Unpaced, a backup
    /// takes about a core's worth of CPU from the node's writers while it runs.
    #[arg(long, default_value_t = 4)]
    pub max_mb_per_sec: u32,
    #[command(flatten)]
    pub admin: crate::admin::Admin,
}

/// `meridian restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// A directory `meridian backup` wrote.
    #[arg(long)]
    pub from: PathBuf,
    /// The new node's data dir: it must not exist yet, or be empty.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new node's id: not the backed-up node's (its automerge sequence numbers are taken).
    #[arg(long)]
    pub node_id: String,
}

fn empty_dir(dir: &std::path::Path, what: &str) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("{what} {}", dir.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "{what} {} is not empty: give a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{what} {}", dir.display()))
}

impl BackupArgs {
    /// What the backup holds (the trailer), once it is whole on disk.
    pub async fn run(self) -> anyhow::Result<serde_json::Value> {
        empty_dir(&self.to, "backup directory")?;
        let path = format!("/v1/_backup?max_mb_per_sec={}", self.max_mb_per_sec);
        let (url, req) =
            crate::admin::request(reqwest::Method::GET, &self.url, &path, &self.admin)?;
        let t0 = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            anyhow::bail!("{url}: {status}: {body}");
        }
        let path = self.to.join(FILE);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        // the stream is checked as it arrives: a copy is complete only with its trailer
        let (mut buf, mut offset, mut header, mut end, mut bytes) =
            (Vec::new(), 0u64, None, None, 0u64);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| anyhow::anyhow!("{url}: the stream broke off: {e}"))?;
            file.write_all(&chunk)?;
            bytes += chunk.len() as u64;
            buf.extend_from_slice(&chunk);
            let (frames, used) = decode(&buf, offset)?;
            buf.drain(..used);
            offset += used as u64;
            for f in frames {
                match f {
                    Frame::Header(h) => header = Some(h),
                    Frame::End(e) => end = Some(e),
                    Frame::Doc(..) => {}
                }
            }
        }
        let (Some(header), Some(end)) = (header, end) else {
            anyhow::bail!(
                "{url}: the backup stream ended before its end: the copy in {} is incomplete",
                self.to.display()
            );
        };
        anyhow::ensure!(buf.is_empty(), "{url}: bytes after the backup's end");
        let file = file.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let manifest = serde_json::json!({
            "header": header,
            "end": end,
            "bytes": bytes,
            "seconds": t0.elapsed().as_secs_f64(),
        });
        std::fs::write(
            self.to.join("manifest.json"),
            serde_json::to_vec_pretty(&manifest)?,
        )?;
        std::fs::File::open(&self.to)?.sync_all()?;
        Ok(manifest)
    }
}

impl RestoreArgs {
    /// How many documents were restored.
    pub async fn run(self) -> anyhow::Result<usize> {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.from.join("manifest.json")).with_context(|| {
                format!(
                    "{} is not a complete backup (no manifest.json)",
                    self.from.display()
                )
            })?,
        )?;
        let backed_up = manifest["header"]["node"].as_str().unwrap_or_default();
        anyhow::ensure!(
            backed_up != self.node_id,
            "the backup is of node {backed_up:?}: restore it under a new node id, since the peers have seen \
             that node's automerge sequence numbers and a node reusing them would fork its documents"
        );
        meridian_crdt::NodeId::new(&self.node_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        empty_dir(&self.data_dir, "data dir")?;
        let bytes = std::fs::read(self.from.join(FILE))?;
        let (frames, used) = decode(&bytes, 0)?;
        anyhow::ensure!(
            used == bytes.len(),
            "{}: a truncated frame at byte {used}",
            FILE
        );
        anyhow::ensure!(
            matches!(frames.last(), Some(Frame::End(_))),
            "{}: the backup has no end: it is incomplete",
            FILE
        );
        let mut config = StoreConfig::new(&self.data_dir);
        config.node_id = Some(self.node_id.clone());
        let store = Store::open(config)?;
        let mut n = 0;
        let mut batch: Vec<(DocKey, Vec<u8>)> = Vec::new();
        for f in frames {
            if let Frame::Doc(k, saved) = f {
                batch.push((k, saved));
                if batch.len() == 256 {
                    n += batch.len();
                    store.restore(std::mem::take(&mut batch)).await?;
                }
            }
        }
        n += batch.len();
        store.restore(batch).await?;
        store.close()?;
        Ok(n)
    }
}
