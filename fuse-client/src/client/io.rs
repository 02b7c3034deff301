//! Whole-file reads and writes on top of chunks and metadata, with bounded
//! memory: a writer holds at most a few chunks in flight, a reader one.

use std::sync::Arc;

use quizfs_proto::{self as pb, CHUNK_SIZE, ChunkHash};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{ClientError, ClusterClient};

/// Chunks uploaded at once by one writer.
pub const WRITE_PARALLELISM: usize = 3;

impl ClusterClient {
    /// Replaces the content of file `ino` with everything `src` yields;
    /// up to [`pb::MAX_INLINE_BYTES`] go inside the commit.
    pub async fn write_from<R: AsyncRead + Unpin>(
        &self,
        ino: u64,
        mut src: R,
    ) -> Result<pb::Attr, ClientError> {
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let mut running = tokio::task::JoinSet::new();
        let mut results: Vec<Option<ChunkHash>> = Vec::new();
        let mut index = 0usize;
        loop {
            let mut buf = vec![0u8; CHUNK_SIZE];
            let mut filled = 0;
            while filled < CHUNK_SIZE {
                let n = src.read(&mut buf[filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            buf.truncate(filled);
            if index == 0 && filled <= pb::MAX_INLINE_BYTES {
                // A small file travels inside its commit, as a mount's does.
                let extent = pb::Extent {
                    offset: 0,
                    len: filled as u64,
                    hash: ChunkHash::of(&buf).0.to_vec(),
                    at: 0,
                };
                let size = filled as u64;
                return self
                    .commit_extents(ino, vec![extent], size, Some(0), vec![buf])
                    .await;
            }
            size += filled as u64;
            chunks.push(filled as u64);
            results.push(None);
            while running.len() >= WRITE_PARALLELISM {
                collect(&mut running, &mut results).await?;
            }
            let client = self.clone();
            let i = index;
            running.spawn(async move { (i, client.put_chunk(Arc::new(buf)).await) });
            index += 1;
            if filled < CHUNK_SIZE {
                break;
            }
        }
        while !running.is_empty() {
            collect(&mut running, &mut results).await?;
        }
        let mut extents = Vec::with_capacity(chunks.len());
        for (i, (h, len)) in results.into_iter().zip(chunks).enumerate() {
            let Some(h) = h else {
                return Err(ClientError::Posix {
                    op: "write",
                    errno: libc::EIO,
                });
            };
            extents.push(pb::Extent {
                offset: i as u64 * CHUNK_SIZE as u64,
                len,
                hash: h.0.to_vec(),
                at: 0,
            });
        }
        self.commit_extents(ino, extents, size, Some(0), Vec::new())
            .await
    }

    /// Replaces the content of file `ino` with `data`.
    pub async fn write_bytes(&self, ino: u64, data: &[u8]) -> Result<pb::Attr, ClientError> {
        self.write_from(ino, data).await
    }

    /// Creates `parent/name` (failing if it exists) holding `data`.
    pub async fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        data: &[u8],
    ) -> Result<pb::Attr, ClientError> {
        let attr = self.create(parent, name, 0o644, true).await?;
        self.write_bytes(attr.ino, data).await
    }

    /// Streams the content of file `ino` to `dst`, one chunk in memory.
    pub async fn read_to<W: AsyncWrite + Unpin>(
        &self,
        ino: u64,
        mut dst: W,
    ) -> Result<u64, ClientError> {
        let (attr, extents) = self.layout(ino).await?;
        let zeros = vec![0u8; 64 * 1024];
        let mut last: Option<(ChunkHash, Vec<u8>)> = None;
        for span in extents.lookup(0, attr.size) {
            match span.data {
                None => {
                    let mut left = span.len;
                    while left > 0 {
                        let n = left.min(zeros.len() as u64) as usize;
                        dst.write_all(&zeros[..n]).await?;
                        left -= n as u64;
                    }
                }
                Some((hash, at)) => {
                    if last.as_ref().is_none_or(|(h, _)| *h != hash) {
                        last = Some((hash, self.get_chunk(hash).await?));
                    }
                    let Some((_, data)) = &last else { continue };
                    let piece = data.get(at as usize..(at + span.len) as usize).ok_or(
                        ClientError::Posix {
                            op: "read",
                            errno: libc::EIO,
                        },
                    )?;
                    dst.write_all(piece).await?;
                }
            }
        }
        dst.flush().await?;
        Ok(attr.size)
    }

    /// Reads a whole file into memory (for small files).
    pub async fn read_file(&self, ino: u64) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        self.read_to(ino, &mut out).await?;
        Ok(out)
    }
}

async fn collect(
    running: &mut tokio::task::JoinSet<(usize, Result<ChunkHash, ClientError>)>,
    results: &mut [Option<ChunkHash>],
) -> Result<(), ClientError> {
    match running.join_next().await {
        Some(Ok((i, Ok(h)))) => {
            results[i] = Some(h);
            Ok(())
        }
        Some(Ok((_, Err(e)))) => Err(e),
        Some(Err(e)) => Err(ClientError::task_failed("upload", e)),
        None => Ok(()),
    }
}
