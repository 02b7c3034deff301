//! The state of a file open on this mount, shared by every descriptor of
//! it: the chunk list it was opened with, the chunks written since (in
//! memory, uploading, or uploaded), and the size. Writes land in memory and
//! reach the cluster as whole chunks; `flush` (close, fsync) waits for every
//! chunk to be durable on a majority and commits them with one metadata
//! command, so another mount that opens the file afterwards sees all of it.
//!
//! Memory is bounded: a file keeps at most [`MAX_DIRTY`] chunks being filled
//! and [`MAX_UPLOADING`] uploading; a chunk whose last byte is written starts
//! uploading at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use quizfs_proto::{self as pb, CHUNK_SIZE, ChunkHash};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::cache::ChunkCache;
use crate::client::{ClientError, ClusterClient};

/// Chunks of one file being filled in memory before the oldest is uploaded.
pub const MAX_DIRTY: usize = 4;
/// Chunk uploads of one file in flight at once.
pub const MAX_UPLOADING: usize = 3;
/// How long a writer waits for the mount-wide write budget before it goes
/// ahead anyway (the budget is a soft bound; a stuck writer is worse).
const BUDGET_WAIT: Duration = Duration::from_secs(10);

const CS: u64 = CHUNK_SIZE as u64;

/// A chunk being filled: bytes `[index * CHUNK_SIZE, + data.len())`.
#[derive(Debug)]
struct Dirty {
    data: Vec<u8>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A chunk on its way to the nodes.
#[derive(Debug)]
struct Uploading {
    index: u64,
    data: Arc<Vec<u8>>,
    task: JoinHandle<Result<ChunkHash, ClientError>>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// Where the bytes of one chunk of a read come from.
#[derive(Debug)]
enum Source {
    Bytes(Vec<u8>),
    Chunk(pb::ChunkRef),
}

/// The mutable part of an open file.
#[derive(Debug, Default)]
pub struct FileState {
    size: u64,
    base: Vec<pb::ChunkRef>,
    dirty: BTreeMap<u64, Dirty>,
    uploading: Vec<Uploading>,
    uploaded: BTreeMap<u64, pb::ChunkRef>,
    changed: bool,
}

/// A file open on this mount.
#[derive(Debug)]
pub struct OpenFile {
    /// The inode.
    pub ino: u64,
    /// Descriptors open on it (changed under the mount's file table lock).
    pub opens: AtomicU64,
    /// Its last name was removed while open: release the orphan at close.
    pub orphan: AtomicBool,
    /// Size including writes not yet committed.
    pub local_size: AtomicU64,
    /// Has writes not yet committed.
    pub changed: AtomicBool,
    /// Time of the last local write (ns), for getattr before the commit.
    pub local_mtime: AtomicI64,
    /// The last attributes the cluster gave for it: what getattr answers
    /// when the cluster has no majority (see `QuizFs::getattr`).
    pub last_attr: std::sync::Mutex<Option<pb::Attr>>,
    /// Where the last read ended: a read that starts near it is sequential
    /// and fetches the chunks after it ahead of time.
    read_end: AtomicU64,
    /// The last read started near where the one before it ended (or at 0).
    read_near: AtomicBool,
    state: Mutex<FileState>,
}

/// Chunks fetched ahead of a sequential reader.
pub const READ_AHEAD: u64 = 3;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn chunk_ref(hash: ChunkHash, len: usize) -> pb::ChunkRef {
    pb::ChunkRef {
        hash: hash.0.to_vec(),
        len: len as u64,
    }
}

/// Cuts a chunk list to `size`, the way the state machine does.
fn cut(chunks: &mut Vec<pb::ChunkRef>, size: u64) {
    chunks.truncate(size.div_ceil(CS) as usize);
    for (i, c) in chunks.iter_mut().enumerate() {
        c.len = c.len.min(size.saturating_sub(i as u64 * CS));
    }
    while chunks.last().is_some_and(|c| c.hash.is_empty()) {
        chunks.pop();
    }
}

/// The shared tools file operations need.
#[derive(Debug, Clone)]
pub struct Io {
    /// The cluster.
    pub client: ClusterClient,
    /// The mount's chunk cache.
    pub cache: Arc<ChunkCache>,
    /// The mount-wide budget of chunk buffers.
    pub budget: Arc<Semaphore>,
}

impl Io {
    /// Bytes `[from, to)` of chunk `r` for a random read, fetched as a
    /// verified range: only when the chunk is longer than one group, the
    /// read is small and the chunk is neither cached nor coming. `None`
    /// when not wanted or when the range read fails (the caller reads the
    /// whole chunk). Bytes past the chunk's used length are left out.
    async fn read_range(&self, r: &pb::ChunkRef, from: usize, to: usize) -> Option<Vec<u8>> {
        let h = ChunkHash::from_slice(&r.hash)?;
        let wanted = r.len > quizfs_proto::range::GROUP
            && to - from <= quizfs_proto::MAX_RANGE_BYTES as usize
            && !self.cache.contains(&h);
        if !wanted {
            return None;
        }
        let to = to.min(r.len as usize);
        if from >= to {
            return Some(Vec::new());
        }
        match self.client.get_range(h, from as u64, to as u64).await {
            Ok((start, mut data)) => {
                let at = (from as u64 - start) as usize;
                data.truncate(at + (to - from));
                data.drain(..at);
                Some(data)
            }
            Err(e) => {
                tracing::debug!(error = %e, "range read failed; reading the whole chunk");
                None
            }
        }
    }

    /// The bytes of a committed chunk that the file uses (`len` of them).
    async fn chunk(&self, r: &pb::ChunkRef) -> Result<Arc<Vec<u8>>, ClientError> {
        match ChunkHash::from_slice(&r.hash) {
            None => Ok(Arc::new(Vec::new())),
            Some(h) => self.cache.get(&self.client, h).await,
        }
    }
}

impl OpenFile {
    /// A file opened with the given size and chunk list.
    pub fn new(ino: u64, size: u64, chunks: Vec<pb::ChunkRef>) -> Self {
        Self {
            ino,
            opens: AtomicU64::new(0),
            orphan: AtomicBool::new(false),
            local_size: AtomicU64::new(size),
            changed: AtomicBool::new(false),
            local_mtime: AtomicI64::new(0),
            last_attr: std::sync::Mutex::new(None),
            read_end: AtomicU64::new(0),
            read_near: AtomicBool::new(false),
            state: Mutex::new(FileState {
                size,
                base: chunks,
                ..FileState::default()
            }),
        }
    }

    /// Replaces the committed view (at open, when nothing is pending here).
    /// Returns false when local writes are pending and the view was kept.
    pub async fn refresh(&self, size: u64, chunks: Vec<pb::ChunkRef>) -> bool {
        let mut st = self.state.lock().await;
        if st.changed {
            return false;
        }
        st.size = size;
        st.base = chunks;
        self.local_size.store(size, Ordering::Relaxed);
        true
    }

    /// Writes `data` at `offset`.
    pub async fn write(&self, io: &Io, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= pb::MAX_FILE_SIZE)
            .ok_or(ClientError::Posix {
                op: "write",
                errno: libc::EFBIG,
            })?;
        let mut st = self.state.lock().await;
        let mut pos = offset;
        let mut rest = data;
        while !rest.is_empty() {
            let index = pos / CS;
            let within = (pos % CS) as usize;
            let n = rest.len().min(CHUNK_SIZE - within);
            self.ensure_dirty(io, &mut st, index, within, n).await?;
            let Some(d) = st.dirty.get_mut(&index) else {
                return Err(ClientError::Posix {
                    op: "write",
                    errno: libc::EIO,
                });
            };
            if d.data.len() < within + n {
                d.data.resize(within + n, 0);
            }
            d.data[within..within + n].copy_from_slice(&rest[..n]);
            // A writer that reached the chunk's end is most likely writing
            // sequentially: send the chunk now. A chunk that is merely full
            // because it was read in whole for a small overwrite stays in
            // memory for the next writes to it.
            let full = within + n == CHUNK_SIZE;
            pos += n as u64;
            rest = &rest[n..];
            if full {
                self.start_upload(io, &mut st, index).await?;
            }
        }
        st.size = st.size.max(end);
        st.changed = true;
        self.local_size.store(st.size, Ordering::Relaxed);
        self.local_mtime.store(now_ns(), Ordering::Relaxed);
        self.changed.store(true, Ordering::Relaxed);
        // Keep the number of partly filled chunks bounded (random writes).
        while st.dirty.len() > MAX_DIRTY {
            let Some(&oldest) = st.dirty.keys().next() else {
                break;
            };
            self.start_upload(io, &mut st, oldest).await?;
        }
        Ok(())
    }

    /// Makes sure chunk `index` has an in-memory buffer holding its current
    /// content (unless the write replaces all of it).
    async fn ensure_dirty(
        &self,
        io: &Io,
        st: &mut FileState,
        index: u64,
        within: usize,
        n: usize,
    ) -> Result<(), ClientError> {
        if st.dirty.contains_key(&index) {
            return Ok(());
        }
        // The current content: the newest upload of this chunk, else its
        // committed (or uploaded, uncommitted) blob.
        let chunk_start = index * CS;
        let valid = st.size.saturating_sub(chunk_start).min(CS) as usize;
        let mut data = if let Some(u) = st.uploading.iter().rev().find(|u| u.index == index) {
            u.data.as_ref().clone()
        } else {
            let r = st
                .uploaded
                .get(&index)
                .or_else(|| st.base.get(index as usize))
                .cloned();
            match r {
                Some(r) if !(r.hash.is_empty() || within == 0 && n >= valid) => {
                    let blob = io.chunk(&r).await?;
                    let used = (r.len as usize).min(blob.len());
                    blob[..used].to_vec()
                }
                _ => Vec::new(),
            }
        };
        data.truncate(valid);
        let permit = self.permit(io, st).await?;
        data.reserve_exact(CHUNK_SIZE.saturating_sub(data.len()).min(within + n));
        st.dirty.insert(
            index,
            Dirty {
                data,
                _permit: permit,
            },
        );
        Ok(())
    }

    /// Takes one chunk buffer from the mount-wide budget; when it is spent,
    /// first pushes this file's own buffers out, then waits a bounded time.
    async fn permit(
        &self,
        io: &Io,
        st: &mut FileState,
    ) -> Result<Option<OwnedSemaphorePermit>, ClientError> {
        if let Ok(p) = io.budget.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let own: Vec<u64> = st.dirty.keys().copied().collect();
        for index in own {
            self.start_upload(io, st, index).await?;
        }
        self.drain(st).await?;
        Ok(
            tokio::time::timeout(BUDGET_WAIT, io.budget.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        )
    }

    /// Starts uploading chunk `index` (if it is in memory), waiting for the
    /// oldest upload when too many are in flight.
    async fn start_upload(
        &self,
        io: &Io,
        st: &mut FileState,
        index: u64,
    ) -> Result<(), ClientError> {
        let Some(d) = st.dirty.remove(&index) else {
            return Ok(());
        };
        while st.uploading.len() >= MAX_UPLOADING {
            self.finish_oldest(st).await?;
        }
        let data = Arc::new(d.data);
        let client = io.client.clone();
        let cache = io.cache.clone();
        let payload = data.clone();
        let task = tokio::spawn(async move {
            let hash = client.put_chunk(payload.clone()).await?;
            cache.insert(hash, payload);
            Ok(hash)
        });
        st.uploading.push(Uploading {
            index,
            data,
            task,
            _permit: d._permit,
        });
        Ok(())
    }

    /// Waits for the oldest upload. On failure its data goes back to memory
    /// (unless newer data for that chunk is there), so nothing is lost and
    /// a later flush retries it.
    async fn finish_oldest(&self, st: &mut FileState) -> Result<(), ClientError> {
        if st.uploading.is_empty() {
            return Ok(());
        }
        let u = st.uploading.remove(0);
        let result = match u.task.await {
            Ok(r) => r,
            Err(e) => Err(ClientError::Source(std::io::Error::other(e))),
        };
        match result {
            Ok(hash) => {
                st.uploaded.insert(u.index, chunk_ref(hash, u.data.len()));
                Ok(())
            }
            Err(e) => {
                let newer = st.dirty.contains_key(&u.index)
                    || st.uploading.iter().any(|x| x.index == u.index);
                if !newer {
                    st.dirty.insert(
                        u.index,
                        Dirty {
                            data: Arc::try_unwrap(u.data).unwrap_or_else(|a| a.as_ref().clone()),
                            _permit: u._permit,
                        },
                    );
                }
                Err(e)
            }
        }
    }

    /// Waits for every upload in flight.
    async fn drain(&self, st: &mut FileState) -> Result<(), ClientError> {
        while !st.uploading.is_empty() {
            self.finish_oldest(st).await?;
        }
        Ok(())
    }

    /// Makes every write durable and commits it: the chunks on a majority of
    /// nodes, then one metadata command with the new chunks and size.
    /// Returns the attributes after the commit, `None` if nothing changed.
    pub async fn flush(&self, io: &Io) -> Result<Option<pb::Attr>, ClientError> {
        let mut st = self.state.lock().await;
        if !st.changed {
            return Ok(None);
        }
        let indices: Vec<u64> = st.dirty.keys().copied().collect();
        for index in indices {
            self.start_upload(io, &mut st, index).await?;
        }
        self.drain(&mut st).await?;
        let count = st.size.div_ceil(CS);
        let (indices, refs): (Vec<u64>, Vec<pb::ChunkRef>) = st
            .uploaded
            .iter()
            .filter(|(i, _)| **i < count)
            .map(|(i, r)| (*i, r.clone()))
            .unzip();
        tracing::debug!(ino = self.ino, ?indices, size = st.size, "commit");
        let attr = io
            .client
            .commit_chunks(self.ino, indices, refs, st.size)
            .await?;
        let uploaded = std::mem::take(&mut st.uploaded);
        for (i, r) in uploaded {
            let i = i as usize;
            if st.base.len() <= i {
                st.base.resize(i + 1, pb::ChunkRef::default());
            }
            st.base[i] = r;
        }
        let size = st.size;
        cut(&mut st.base, size);
        st.changed = false;
        self.changed.store(false, Ordering::Relaxed);
        Ok(Some(attr))
    }

    /// Forgets local state after a truncation that went to the cluster
    /// (the caller flushed first): the new committed view.
    pub async fn truncated(&self, size: u64, chunks: Vec<pb::ChunkRef>) {
        let mut st = self.state.lock().await;
        st.size = size;
        st.base = chunks;
        st.dirty.clear();
        st.uploaded.clear();
        st.changed = false;
        self.local_size.store(size, Ordering::Relaxed);
        self.changed.store(false, Ordering::Relaxed);
    }

    /// Reads up to `len` bytes at `offset`, zeros in holes.
    pub async fn read(&self, io: &Io, offset: u64, len: u32) -> Result<Vec<u8>, ClientError> {
        let (plan, next, end) = {
            let st = self.state.lock().await;
            let end = st.size.min(offset.saturating_add(u64::from(len)));
            if offset >= end {
                return Ok(Vec::new());
            }
            let mut plan = Vec::new();
            for index in offset / CS..=(end - 1) / CS {
                let start = index * CS;
                let from = (offset.max(start) - start) as usize;
                let to = (end.min(start + CS) - start) as usize;
                plan.push((from, to, Self::source(&st, index, from, to)));
            }
            let last = (end - 1) / CS;
            let next: Vec<pb::ChunkRef> = (last + 1..=last + READ_AHEAD)
                .filter_map(|i| match Self::source(&st, i, 0, 0) {
                    Some(Source::Chunk(r)) => Some(r),
                    _ => None,
                })
                .collect();
            (plan, next, end)
        };
        // Sequential: this read starts at 0, or it and the one before it
        // each started within a kernel read-ahead window (which may arrive
        // slightly out of order) of where the one before ended. Two in a
        // row, so that a random reader that lands near its last read by
        // chance (1 in 100 on a 256 MiB file) does not fetch whole chunks.
        let before = self.read_end.swap(end, Ordering::Relaxed);
        let near = offset == 0 || offset.abs_diff(before) <= 2 * u64::from(super::MAX_READ_WINDOW);
        let was_near = self.read_near.swap(near, Ordering::Relaxed);
        let sequential = offset == 0 || near && was_near;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for (from, to, source) in plan {
            let at = out.len();
            match source {
                // Already cut to [from, to), or shorter: the rest is zeros.
                Some(Source::Bytes(b)) => out.extend_from_slice(&b),
                Some(Source::Chunk(r)) => {
                    let ranged = if sequential {
                        None
                    } else {
                        io.read_range(&r, from, to).await
                    };
                    if let Some(bytes) = ranged {
                        out.extend_from_slice(&bytes);
                    } else {
                        let blob = io.chunk(&r).await?;
                        let used = (r.len as usize).min(blob.len());
                        if used > from {
                            out.extend_from_slice(&blob[from..used.min(to)]);
                        }
                    }
                }
                None => {}
            }
            out.resize(at + (to - from), 0);
        }
        // Sequential readers: fetch the next chunks while this one is used
        // (the cache joins a fetch already in flight). Random readers do
        // not, so they fetch only what they read.
        if sequential && (end % CS == 0 || end % CS > CS / 2) {
            for r in next {
                let io = io.clone();
                tokio::spawn(async move {
                    let _ = io.chunk(&r).await;
                });
            }
        }
        Ok(out)
    }

    /// Bytes `[from, to)` of chunk `index` as the file holds them now,
    /// newest first: in memory, uploading, uploaded, committed; `None` for
    /// a hole.
    fn source(st: &FileState, index: u64, from: usize, to: usize) -> Option<Source> {
        let cut = |b: &[u8]| b[from.min(b.len())..to.min(b.len())].to_vec();
        if let Some(d) = st.dirty.get(&index) {
            return Some(Source::Bytes(cut(&d.data)));
        }
        if let Some(u) = st.uploading.iter().rev().find(|u| u.index == index) {
            return Some(Source::Bytes(cut(&u.data)));
        }
        st.uploaded
            .get(&index)
            .or_else(|| st.base.get(index as usize))
            .filter(|r| !r.hash.is_empty())
            .cloned()
            .map(Source::Chunk)
    }
}
