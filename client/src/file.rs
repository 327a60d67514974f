//! One replica on disk: a header naming the document, then checksummed automerge chunks (a full
//! save, then the changes after it), each appended and synced as an edit or a sync brings it.
//! A torn last chunk (a crash mid-append) is dropped; damage before it is an error. Many chunks
//! are folded into one by rewriting the file (a temporary file, synced, renamed).
//!
//! ```text
//! MERIDIAN-REPLICA 1\n  u16 len, collection  u16 len, id
//! ( u32 len  u32 crc32  chunk )*
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use meridian_crdt::DocKey;

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"MERIDIAN-REPLICA 1\n";

/// An open replica file.
#[derive(Debug)]
pub(crate) struct ReplicaFile {
    path: PathBuf,
    file: File,
    pub(crate) chunks: usize,
}

fn header(key: &DocKey) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    for part in [key.collection(), key.id()] {
        h.extend_from_slice(&(part.len() as u16).to_le_bytes());
        h.extend_from_slice(part.as_bytes());
    }
    h
}

fn frame(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + chunk.len());
    out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(chunk).to_le_bytes());
    out.extend_from_slice(chunk);
    out
}

fn corrupt(path: &Path, what: &str) -> Error {
    Error::Local(format!(
        "replica file {} is damaged: {what}",
        path.display()
    ))
}

/// Parses a file's bytes: the document it holds and its whole chunks.
fn parse(path: &Path, bytes: &[u8]) -> Result<(DocKey, Vec<Vec<u8>>)> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| corrupt(path, "not a Meridian replica"))?;
    let mut at = 0;
    let mut part = || -> Result<String> {
        let len = rest
            .get(at..at + 2)
            .ok_or_else(|| corrupt(path, "short header"))?;
        let len = u16::from_le_bytes([len[0], len[1]]) as usize;
        let s = rest
            .get(at + 2..at + 2 + len)
            .ok_or_else(|| corrupt(path, "short header"))?;
        at += 2 + len;
        String::from_utf8(s.to_vec()).map_err(|_| corrupt(path, "header is not UTF-8"))
    };
    let (collection, id) = (part()?, part()?);
    let key = DocKey::new(&collection, &id).map_err(|e| corrupt(path, &e.to_string()))?;
    let mut chunks = Vec::new();
    let mut body = &rest[at..];
    while !body.is_empty() {
        if body.len() < 8 {
            break; // torn length or checksum
        }
        let len = u32::from_le_bytes(body[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(body[4..8].try_into().expect("4 bytes"));
        let Some(chunk) = body.get(8..8 + len) else {
            break; // torn chunk
        };
        if crc32fast::hash(chunk) != crc {
            if body.len() == 8 + len {
                break; // a torn last chunk can also be a wrong one
            }
            return Err(corrupt(path, "a checksum does not match"));
        }
        chunks.push(chunk.to_vec());
        body = &body[8 + len..];
    }
    Ok((key, chunks))
}

impl ReplicaFile {
    /// Creates a file for `key` holding `first` (a full save).
    pub(crate) fn create(path: &Path, key: &DocKey, first: &[u8]) -> Result<ReplicaFile> {
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&header(key))?;
        f.write_all(&frame(first))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(path)?;
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(ReplicaFile {
            path: path.to_owned(),
            file,
            chunks: 1,
        })
    }

    /// Opens a file: the document it holds and its chunks, in order.
    pub(crate) fn open(path: &Path) -> Result<(ReplicaFile, DocKey, Vec<Vec<u8>>)> {
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        let (key, chunks) = parse(path, &bytes)?;
        let file = OpenOptions::new().append(true).open(path)?;
        let n = chunks.len();
        Ok((
            ReplicaFile {
                path: path.to_owned(),
                file,
                chunks: n,
            },
            key,
            chunks,
        ))
    }

    /// Appends a chunk durably.
    pub(crate) fn append(&mut self, chunk: &[u8]) -> Result<()> {
        self.file.write_all(&frame(chunk))?;
        self.file.sync_data()?;
        self.chunks += 1;
        Ok(())
    }

    /// Replaces every chunk with one full save.
    pub(crate) fn rewrite(&mut self, key: &DocKey, save: &[u8]) -> Result<()> {
        *self = ReplicaFile::create(&self.path, key, save)?;
        Ok(())
    }
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_survive_reopen_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.replica");
        let key = DocKey::new("users", "alice").unwrap();
        let mut f = ReplicaFile::create(&path, &key, b"first").unwrap();
        f.append(b"second").unwrap();
        f.append(b"third").unwrap();
        let (_, k, chunks) = ReplicaFile::open(&path).unwrap();
        assert_eq!(k, key);
        assert_eq!(
            chunks,
            [b"first".to_vec(), b"second".to_vec(), b"third".to_vec()]
        );

        // --- a crash mid-append: every cut of the last chunk reads as the first two
        let whole = std::fs::read(&path).unwrap();
        for cut in 1..(8 + 5) {
            std::fs::write(&path, &whole[..whole.len() - cut]).unwrap();
            let (_, _, chunks) = ReplicaFile::open(&path).unwrap();
            assert_eq!(chunks.len(), 2, "cut {cut}");
        }
        // --- damage before the tail is an error, not a silent loss
        let mut bad = whole.clone();
        let i = header(&key).len() + 9;
        bad[i] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        assert!(ReplicaFile::open(&path).is_err());
        std::fs::write(&path, b"not a replica").unwrap();
        assert!(ReplicaFile::open(&path).is_err());
    }

    #[test]
    fn a_rewrite_folds_the_chunks_into_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.replica");
        let key = DocKey::new("c", "i").unwrap();
        let mut f = ReplicaFile::create(&path, &key, b"a").unwrap();
        f.append(b"b").unwrap();
        f.rewrite(&key, b"ab").unwrap();
        f.append(b"c").unwrap();
        let (_, _, chunks) = ReplicaFile::open(&path).unwrap();
        assert_eq!(chunks, [b"ab".to_vec(), b"c".to_vec()]);
    }
}
