//! Store tests, a file per concern; the helpers they share are here.

use super::*;
use crate::{Edit, RemoteChange};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;

mod backup;
mod clients;
mod contracts;
mod crash;
mod events;
mod heal;
mod placement;
mod repair;
mod replication;
mod writes;

fn obj(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn open(dir: &Path) -> Store {
    let mut c = StoreConfig::new(dir);
    c.node_id = Some("n1".into());
    c.compact_every = 8;
    // sled's own flusher thread lets go of the directory's lock a moment after the last handle
    // is dropped: a reopen in the same process may find it still held (a restarted process
    // never does)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Store::open(c.clone()) {
            Err(Error::InUse) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
}

fn key(id: &str) -> DocKey {
    DocKey::new("users", id).unwrap()
}

async fn get_json(s: &Store, id: &str) -> Option<Value> {
    s.get(&key(id))
        .await
        .unwrap()
        .map(|v| serde_json::from_str(&v.json).unwrap())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Both sled databases of a data dir as they are now (as of start-up: the last checkpoint).
fn sled_image(dir: &Path, image: &Path) {
    for name in ["db", "streams"] {
        copy_dir(&dir.join(name), &image.join(name));
    }
}

/// The write-ahead log segment being appended to.
fn newest_segment(data_dir: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// Inverts 16 bytes in the middle of the newest log segment.
fn damage_middle(data_dir: &Path) -> std::path::PathBuf {
    let last = newest_segment(data_dir);
    let mut bytes = std::fs::read(&last).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b = !*b;
    }
    std::fs::write(&last, bytes).unwrap();
    last
}

/// A crash image whose log is damaged mid-segment where sled lacks what it hid: sled as of
/// before 20 documents were written, then the log with them, damaged. Returns the store that
/// wrote them (a peer that has them all), the image's directory, and the damaged segment.
async fn lost_batch_image() -> (
    Store,
    tempfile::TempDir,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let image = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    sled_image(dir.path(), image.path());
    write_docs(&s, 20).await;
    copy_dir(&dir.path().join("wal"), &image.path().join("wal"));
    let segment = damage_middle(image.path());
    (s, dir, image, segment)
}

async fn write_docs(s: &Store, n: usize) {
    for i in 0..n {
        s.write(
            &key(&format!("d{i}")),
            Edit::Put(obj(json!({"i": i}))),
            None,
        )
        .await
        .unwrap();
    }
}

fn remote(bytes: &[u8]) -> RemoteChange {
    RemoteChange::parse(bytes.to_vec()).unwrap()
}
