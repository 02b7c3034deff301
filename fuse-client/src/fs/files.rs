//! The state of a file open on this mount: one per inode, shared by every
//! descriptor and mapping of it, so a read by any process sees every write
//! made on this mount, committed or not.
//!
//! The state is the committed content (an extent map and its version, as
//! the cluster last gave it) and, on top of it, the writes made here and
//! not committed yet: a second extent map whose sources are chunks already
//! durable on a majority or buffers still in memory. Both maps follow the
//! rules of `quizfs_proto::extent`, the ones the state machine applies.
//!
//! Writes are appended to the file's open buffer (an overwrite of bytes
//! that only that buffer holds changes them in place); a full buffer, or
//! the buffer at `flush`, becomes one chunk, so a small write costs a small
//! chunk. `flush` (close, fsync) waits for every chunk to be durable and
//! commits the pending extents with one metadata command. A small file's
//! buffer (up to the mount's `inline_max`) is not uploaded at all: it
//! travels inside that command, durable through the Raft log, so its
//! close is one metadata write. The buffers of
//! all files take their memory from the mount's write budget, which a
//! writer waits on only while uploads that give it back are under way.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use quizfs_proto::extent::{ExtentMap, Piece};
use quizfs_proto::{self as pb, CHUNK_SIZE, ChunkHash};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::cache::ChunkCache;
use crate::client::meta::Extents;
use crate::client::{ClientError, ClusterClient};

/// Chunk uploads of one file in flight at once.
pub const MAX_UPLOADING: usize = 3;
/// Pending extents after which a writer commits without waiting for
/// close, so one commit stays within a metadata command's bounds.
pub const MAX_PENDING_EXTENTS: usize = 4096;
/// Chunks fetched ahead of a sequential reader.
pub const READ_AHEAD: u64 = 3;
/// A 4 MiB window of a file with more extents than this (pieces of 4 KiB
/// on average) is rewritten as one chunk when the file is committed
/// (compaction). Random 4 KiB writes then cost about twice their bytes.
pub const COMPACT_WINDOW_EXTENTS: usize = 1024;
/// A file with more extents than this (a layout of about 3.7 MB) has its
/// most fragmented windows rewritten until it has at most half as many.
pub const COMPACT_FILE_EXTENTS: usize = 65536;
/// Windows one compaction rewrites at most (the next commit goes on).
pub const COMPACT_MAX_WINDOWS: usize = 16;
/// The write budget counts memory in units of this many bytes.
pub const BUDGET_UNIT: usize = 1024;

const CS: u64 = CHUNK_SIZE as u64;

/// Where bytes written here and not committed are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    /// In buffer number n (open, or uploading).
    Buf(u64),
    /// In a chunk durable on a majority.
    Chunk(ChunkHash),
}

/// The buffer writes are appended to.
#[derive(Debug)]
struct OpenBuf {
    id: u64,
    data: Vec<u8>,
    permit: Option<OwnedSemaphorePermit>,
}

/// A full buffer on its way to the nodes; `task` is `None` after a failed
/// upload, which the next flush starts again.
#[derive(Debug)]
struct Sealed {
    id: u64,
    data: Arc<Vec<u8>>,
    task: Option<JoinHandle<Result<ChunkHash, ClientError>>>,
}

/// One part of a read, in order.
#[derive(Debug)]
enum Part {
    Zeros(u64),
    Bytes(Vec<u8>),
    Chunk {
        hash: ChunkHash,
        at: u64,
        len: u64,
        /// Part of an extent of at least [`WHOLE_CHUNK_EXTENT`] bytes.
        large: bool,
    },
}

/// A sequential reader of an extent at least this long fetches whole
/// chunks (and the next ones ahead); smaller extents are read as verified
/// ranges, so a fragmented file does not fetch a 4 MiB chunk per piece.
pub const WHOLE_CHUNK_EXTENT: u64 = 1 << 20;

/// The mutable part of an open file.
#[derive(Debug, Default)]
pub struct FileState {
    size: u64,
    version: u64,
    base: Extents,
    pending: ExtentMap<Src>,
    open: Option<OpenBuf>,
    sealed: VecDeque<Sealed>,
    next_buf: u64,
    changed: bool,
    /// The lowest offset this mount truncated the file at since its last
    /// commit: the commit drops the content from there first, so other
    /// mounts see the truncation and the writes after it at once.
    cut: Option<u64>,
    /// The last commit found that another mount had changed the content
    /// too, and took the cluster's view.
    replaced: bool,
    /// Chunks of small writes sent inside the commit rather than uploaded
    /// (see `CommitWrite.chunks`): kept until a commit carrying them
    /// succeeds, since nothing else holds them.
    carried: Vec<(ChunkHash, Arc<Vec<u8>>)>,
    /// The handles whose writes (or truncations) are not committed yet:
    /// the close of any other handle commits nothing, so a descriptor
    /// that only read, or whose writes are committed, never publishes
    /// another descriptor's version half made.
    writers: BTreeSet<u64>,
}

/// What a flush committed.
#[derive(Debug)]
pub struct Committed {
    /// The attributes after the commit.
    pub attr: pb::Attr,
    /// The version of the view held now.
    pub view: u64,
    /// The version of the view before the commit, when the view now is
    /// exactly that one with this mount's writes on top (no other mount
    /// changed the content in between).
    pub from: Option<u64>,
}

/// A file open on this mount.
#[derive(Debug)]
pub struct OpenFile {
    /// The inode.
    pub ino: u64,
    /// Descriptors open on it (changed under the mount's file table lock).
    pub opens: AtomicU64,
    /// Its last name was removed while open: the session that holds the
    /// orphan (released at close, or gone with that session); 0: none.
    pub orphan_of: AtomicU64,
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

fn eio(op: &'static str) -> ClientError {
    ClientError::Posix {
        op,
        errno: libc::EIO,
    }
}

/// The shared tools file operations need.
#[derive(Debug, Clone)]
pub struct Io {
    /// The cluster.
    pub client: ClusterClient,
    /// The mount's chunk cache.
    pub cache: Arc<ChunkCache>,
    /// The mount-wide budget of written bytes held in memory, in
    /// [`BUDGET_UNIT`]s.
    pub budget: Arc<Semaphore>,
    /// The budget's size in units (a reservation is capped at it).
    pub budget_units: u32,
    /// Uncommitted writes of a file up to this many bytes travel inside
    /// its commit instead of as an uploaded chunk (0: never).
    pub inline_max: usize,
    /// Places for commits carrying data, on this mount (holds
    /// [`MAX_CARRYING`]).
    pub carrying: Arc<Semaphore>,
}

/// Commits that may carry data at once from one mount. Carried data all
/// goes through the leader's log; with many writers at once, uploading
/// chunks to every node in parallel measured faster (16 writers: 299
/// files/s uploading everything, 267 carrying everything, 307 with this
/// limit; BENCHMARKS.md), so a commit beyond these uploads its data.
pub const MAX_CARRYING: usize = 2;

/// A commit's place among those carrying data, and its buffer's budget,
/// both given back when the commit is done (dropped).
struct CarrySlot {
    _place: OwnedSemaphorePermit,
    _budget: Option<OwnedSemaphorePermit>,
}

impl Io {
    /// Units of budget that `len` bytes take.
    pub fn units(&self, len: usize) -> u32 {
        let units = len.div_ceil(BUDGET_UNIT).max(1);
        u32::try_from(units)
            .unwrap_or(u32::MAX)
            .min(self.budget_units)
    }

    /// `len` bytes at `at` of chunk `hash`: a verified range for a small
    /// read of a chunk that is not cached, unless `whole` (a sequential
    /// reader of a large extent), else from the whole chunk (cached, and
    /// shared with other readers).
    async fn piece(
        &self,
        hash: ChunkHash,
        at: u64,
        len: u64,
        whole: bool,
    ) -> Result<Vec<u8>, ClientError> {
        let ranged = !whole
            && len <= u64::from(quizfs_proto::MAX_RANGE_BYTES)
            && !self.cache.contains(&hash);
        if ranged {
            match self.client.get_range(hash, at, at + len).await {
                Ok((start, mut data)) => {
                    let from = (at - start) as usize;
                    if data.len() >= from + len as usize {
                        data.truncate(from + len as usize);
                        data.drain(..from);
                        return Ok(data);
                    }
                    tracing::debug!(?hash, "short range reply; reading the whole chunk");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "range read failed; reading the whole chunk");
                }
            }
        }
        let blob = self.cache.get(&self.client, hash).await?;
        blob.get(at as usize..(at + len) as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| {
                tracing::warn!(?hash, at, len, chunk = blob.len(), "extent past its chunk");
                eio("read")
            })
    }
}

impl OpenFile {
    /// A file opened with the given attributes and committed content.
    pub fn new(attr: &pb::Attr, base: Extents) -> Self {
        Self {
            ino: attr.ino,
            opens: AtomicU64::new(0),
            orphan_of: AtomicU64::new(0),
            local_size: AtomicU64::new(attr.size),
            changed: AtomicBool::new(false),
            local_mtime: AtomicI64::new(0),
            last_attr: std::sync::Mutex::new(None),
            read_end: AtomicU64::new(0),
            read_near: AtomicBool::new(false),
            state: Mutex::new(FileState {
                size: attr.size,
                version: attr.content_version,
                base,
                ..FileState::default()
            }),
        }
    }

    /// The content version of the committed view held.
    pub async fn view(&self) -> u64 {
        self.state.lock().await.version
    }

    /// Takes a newer committed view (at open). A view older than the one
    /// held is ignored: it was read before a commit this mount has seen.
    /// Writes pending here stay on top of whichever view is held. Returns
    /// the version of the view held.
    pub async fn refresh(&self, attr: &pb::Attr, base: Extents) -> u64 {
        let mut st = self.state.lock().await;
        if attr.content_version > st.version {
            Self::install(&mut st, attr, base);
            self.local_size.store(st.size, Ordering::Relaxed);
        }
        st.version
    }

    fn install(st: &mut FileState, attr: &pb::Attr, mut base: Extents) {
        st.version = attr.content_version;
        // A truncation held here stays on top of any newer view.
        if let Some(cut) = st.cut {
            base.cut(cut);
        } else {
            st.size = if st.changed {
                attr.size.max(st.pending.end())
            } else {
                attr.size
            };
        }
        st.base = base;
    }

    /// Writes `data` at `offset` through handle `fh`; `permit` is the
    /// budget for its bytes.
    pub async fn write(
        &self,
        io: &Io,
        fh: u64,
        offset: u64,
        data: &[u8],
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ClientError> {
        let end = offset + data.len() as u64;
        let mut st = self.state.lock().await;
        for span in st.pending.lookup(offset, end) {
            let from = (span.offset - offset) as usize;
            let bytes = &data[from..from + span.len as usize];
            // Bytes only the open buffer holds are changed there. (The
            // open buffer may change as appends fill it: asked each time.)
            let open_id = st.open.as_ref().map(|b| b.id);
            match (span.data, st.open.as_mut()) {
                (Some((Src::Buf(id), at)), Some(buf)) if Some(id) == open_id => {
                    buf.data[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
                }
                _ => self.append(io, &mut st, span.offset, bytes).await?,
            }
        }
        if let Some(buf) = st.open.as_mut() {
            match buf.permit.as_mut() {
                Some(p) => p.merge(permit),
                None => buf.permit = Some(permit),
            }
        }
        st.size = st.size.max(end);
        st.changed = true;
        st.writers.insert(fh);
        self.local_size.store(st.size, Ordering::Relaxed);
        self.local_mtime.store(pb::now_ns(), Ordering::Relaxed);
        self.changed.store(true, Ordering::Relaxed);
        if st.pending.len() > MAX_PENDING_EXTENTS {
            self.commit(io, &mut st).await?;
        }
        Ok(())
    }

    /// Appends `bytes` (file offset `pos`) to the open buffer, sealing it
    /// whenever it fills.
    async fn append(
        &self,
        io: &Io,
        st: &mut FileState,
        mut pos: u64,
        mut bytes: &[u8],
    ) -> Result<(), ClientError> {
        while !bytes.is_empty() {
            let buf = match &mut st.open {
                Some(b) => b,
                None => {
                    let id = st.next_buf;
                    st.next_buf += 1;
                    st.open.insert(OpenBuf {
                        id,
                        data: Vec::new(),
                        permit: None,
                    })
                }
            };
            let at = buf.data.len();
            let n = bytes.len().min(CHUNK_SIZE - at);
            // Grow by doubling, but never past one chunk.
            let want = (at + n).max((2 * at).min(CHUNK_SIZE));
            buf.data.reserve_exact(want - at);
            buf.data.extend_from_slice(&bytes[..n]);
            let piece = Piece {
                len: n as u64,
                src: Src::Buf(buf.id),
                at: at as u64,
            };
            let full = buf.data.len() == CHUNK_SIZE;
            st.pending.splice(pos, piece);
            pos += n as u64;
            bytes = &bytes[n..];
            // A full buffer goes now: a sequential writer's data streams.
            if full {
                self.seal_locked(io, st).await?;
            }
        }
        Ok(())
    }

    /// Sends the open buffer on its way (it becomes a chunk), so that its
    /// budget comes back once the upload is done.
    pub async fn seal(&self, io: &Io) -> Result<(), ClientError> {
        let mut st = self.state.lock().await;
        self.seal_locked(io, &mut st).await
    }

    async fn seal_locked(&self, io: &Io, st: &mut FileState) -> Result<(), ClientError> {
        let Some(buf) = st.open.take() else {
            return Ok(());
        };
        if buf.data.is_empty() {
            return Ok(());
        }
        while st.sealed.len() >= MAX_UPLOADING {
            self.finish_oldest(st).await?;
        }
        let data = Arc::new(buf.data);
        let task = upload(io, data.clone(), buf.permit);
        st.sealed.push_back(Sealed {
            id: buf.id,
            data,
            task: Some(task),
        });
        Ok(())
    }

    /// Waits for the oldest upload; its pending extents then name the
    /// chunk. A failed upload stays, to be sent again by the next flush.
    async fn finish_oldest(&self, st: &mut FileState) -> Result<(), ClientError> {
        let Some(mut s) = st.sealed.pop_front() else {
            return Ok(());
        };
        let result = match s.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(ClientError::task_failed("upload", e))),
            None => Err(eio("write")),
        };
        match result {
            Ok(hash) => {
                let id = s.id;
                st.pending
                    .replace_sources(|src| (*src == Src::Buf(id)).then_some(Src::Chunk(hash)));
                Ok(())
            }
            Err(e) => {
                st.sealed.push_front(s);
                Err(e)
            }
        }
    }

    /// Makes every write durable and commits it: with `by`, only if that
    /// handle has writes not committed yet (a close), else in any case
    /// (fsync, the last close). Returns what the commit did, `None` if it
    /// committed nothing.
    pub async fn flush(&self, io: &Io, by: Option<u64>) -> Result<Option<Committed>, ClientError> {
        let mut st = self.state.lock().await;
        if by.is_some_and(|fh| !st.writers.contains(&fh)) {
            drop(st);
            // A file made by an early create exists once that create is
            // applied: every close waits for it, and fails if it failed.
            io.client.created(self.ino).await?;
            return Ok(None);
        }
        let before = st.version;
        let Some(attr) = self.commit(io, &mut st).await? else {
            return Ok(None);
        };
        Ok(Some(Committed {
            attr,
            view: st.version,
            from: (!st.replaced).then_some(before),
        }))
    }

    async fn commit(&self, io: &Io, st: &mut FileState) -> Result<Option<pb::Attr>, ClientError> {
        if !st.changed {
            io.client.created(self.ino).await?;
            st.writers.clear();
            return Ok(None);
        }
        st.replaced = false;
        // A carried buffer's budget comes back once it is committed.
        let _carrying = Self::carry(io, st);
        self.seal_locked(io, st).await?;
        // Uploads that failed before are sent again.
        for s in st.sealed.iter_mut().filter(|s| s.task.is_none()) {
            s.task = Some(upload(io, s.data.clone(), None));
        }
        while !st.sealed.is_empty() {
            self.finish_oldest(st).await?;
        }
        let done = st
            .pending
            .map_sources(|s| match s {
                Src::Chunk(h) => Some(*h),
                Src::Buf(_) => None,
            })
            .ok_or_else(|| eio("write"))?;
        let wire = done.to_wire();
        // Only the carried chunks the commit still names go with it.
        st.carried
            .retain(|(h, _)| wire.iter().any(|e| e.hash == h.0));
        let mut chunks: Vec<Vec<u8>> = st.carried.iter().map(|(_, d)| d.to_vec()).collect();
        let size = st.size;
        // One command per MAX_PENDING_EXTENTS extents (and one for none).
        let batches: Vec<&[pb::Extent]> = if wire.is_empty() {
            vec![&[]]
        } else {
            wire.chunks(MAX_PENDING_EXTENTS).collect()
        };
        let mut attr = None;
        for (i, batch) in batches.iter().enumerate() {
            let cut = if i == 0 { st.cut } else { None };
            tracing::debug!(ino = self.ino, extents = batch.len(), size, ?cut, "commit");
            let carried = std::mem::take(&mut chunks);
            let committed = io
                .client
                .commit_extents(self.ino, batch.to_vec(), size, cut, carried);
            attr = Some(committed.await?);
            st.cut = None;
            st.carried.clear();
        }
        let batches = batches.len() as u64;
        let attr = attr.ok_or_else(|| eio("write"))?;
        let mut base = std::mem::take(&mut st.base);
        base.overlay(&done);
        base.cut(size);
        st.pending = ExtentMap::new();
        st.changed = false;
        st.writers.clear();
        self.changed.store(false, Ordering::Relaxed);
        self.settle(io, st, &attr, base, batches).await?;
        // The data is committed: a compaction that fails changes nothing.
        if let Err(e) = self.compact(io, st, attr.mtime_ns).await {
            tracing::debug!(ino = self.ino, error = %e, "compaction skipped");
        }
        Ok(Some(attr))
    }

    /// Turns the open buffer into a chunk carried by the commit, when no
    /// upload is under way and it fits with the ones carried already
    /// (a small file's close is then one metadata write, no upload).
    /// At most [`MAX_CARRYING`] commits of the mount carry data at once.
    /// Returns what to give back after the commit.
    fn carry(io: &Io, st: &mut FileState) -> Option<CarrySlot> {
        let carried: usize = st.carried.iter().map(|(_, d)| d.len()).sum();
        let fits = st
            .open
            .as_ref()
            .is_some_and(|b| !b.data.is_empty() && carried + b.data.len() <= io.inline_max);
        if !fits || !st.sealed.is_empty() {
            return None;
        }
        let place = io.carrying.clone().try_acquire_owned().ok()?;
        let buf = st.open.take()?;
        let data = Arc::new(buf.data);
        let hash = ChunkHash::of(&data);
        let id = buf.id;
        st.pending
            .replace_sources(|src| (*src == Src::Buf(id)).then_some(Src::Chunk(hash)));
        io.cache.insert(hash, data.clone());
        st.carried.push((hash, data));
        Some(CarrySlot {
            _place: place,
            _budget: buf.permit,
        })
    }

    /// Rewrites the most fragmented 4 MiB windows of the committed content
    /// each as one new chunk (holes stay holes), so reads do not decay and
    /// the map stays bounded. The rewrite commits only if the content is
    /// still at the version it read; otherwise it is dropped.
    async fn compact(&self, io: &Io, st: &mut FileState, mtime_ns: i64) -> Result<(), ClientError> {
        let windows = fragmented_windows(&st.base, st.size);
        if windows.is_empty() {
            return Ok(());
        }
        let mut rewritten = Extents::new();
        let mut uploads = Vec::new();
        for (start, end) in windows {
            let mut buf = Vec::new();
            let mut placed = Vec::new();
            for span in st.base.lookup(start, end) {
                if let Some((hash, at)) = span.data {
                    placed.push((span.offset, span.len, buf.len() as u64));
                    let whole = span.len >= WHOLE_CHUNK_EXTENT;
                    buf.extend_from_slice(&io.piece(hash, at, span.len, whole).await?);
                }
            }
            let data = Arc::new(buf);
            uploads.push((upload(io, data, None), placed));
        }
        for (task, placed) in uploads {
            let hash = task
                .await
                .unwrap_or_else(|e| Err(ClientError::task_failed("upload", e)))?;
            for (offset, len, at) in placed {
                rewritten.splice(offset, Piece { len, src: hash, at });
            }
        }
        let before = st.base.len();
        let attr = io
            .client
            .recommit_extents(self.ino, rewritten.to_wire(), st.size, st.version, mtime_ns)
            .await?;
        let mut base = std::mem::take(&mut st.base);
        base.overlay(&rewritten);
        self.settle(io, st, &attr, base, 1).await?;
        tracing::info!(ino = self.ino, before, after = st.base.len(), "compacted");
        Ok(())
    }

    /// After this mount's own change: `base` is the content it expects the
    /// cluster to hold now. If the cluster's version says another mount
    /// changed the file in between, the cluster's layout is read instead.
    async fn settle(
        &self,
        io: &Io,
        st: &mut FileState,
        attr: &pb::Attr,
        base: Extents,
        steps: u64,
    ) -> Result<(), ClientError> {
        if attr.content_version == st.version + steps {
            Self::install(st, attr, base);
        } else {
            st.replaced = true;
            let (a, fresh) = io.client.layout(self.ino).await?;
            Self::install(st, &a, fresh);
        }
        self.local_size.store(st.size, Ordering::Relaxed);
        Ok(())
    }

    /// A truncation (or extension) through a descriptor open here: held
    /// with the pending writes and committed with them, so other mounts
    /// see the file either as it was or as it is at the commit, never cut
    /// short in between (an `open(O_TRUNC)`, write, `close` publishes one
    /// version). `fh` is the handle it came through. Returns the size and
    /// mtime the kernel now sees.
    pub async fn truncate(&self, fh: u64, size: u64, mtime_ns: i64) -> (u64, i64) {
        let mut st = self.state.lock().await;
        st.writers.insert(fh);
        let from = st.size.min(size);
        st.cut = Some(st.cut.map_or(from, |c| c.min(from)));
        st.pending.cut(from);
        st.base.cut(from);
        st.size = size;
        st.changed = true;
        self.local_size.store(size, Ordering::Relaxed);
        self.local_mtime.store(mtime_ns, Ordering::Relaxed);
        self.changed.store(true, Ordering::Relaxed);
        (size, mtime_ns)
    }

    /// A size change that goes to the cluster now (with other attributes,
    /// or not through a descriptor): pending writes are committed first,
    /// then the cluster cuts (or extends) the file, all under the file's
    /// lock so no write slips in between.
    pub async fn truncate_now(&self, io: &Io, set: pb::SetAttr) -> Result<pb::Attr, ClientError> {
        let mut st = self.state.lock().await;
        self.commit(io, &mut st).await?;
        let size = set.size.unwrap_or(st.size);
        let attr = io.client.setattr(set).await?;
        let mut base = std::mem::take(&mut st.base);
        base.cut(size);
        self.settle(io, &mut st, &attr, base, 1).await?;
        Ok(attr)
    }

    /// Commits pending writes, runs `change` on the cluster (a fallocate
    /// or a copy into this file), then reads the file's new layout.
    pub async fn change_content<F, Fut, T>(&self, io: &Io, change: F) -> Result<T, ClientError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut st = self.state.lock().await;
        self.commit(io, &mut st).await?;
        let out = change().await?;
        let (a, fresh) = io.client.layout(self.ino).await?;
        Self::install(&mut st, &a, fresh);
        self.local_size.store(st.size, Ordering::Relaxed);
        Ok(out)
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `offset`, over this mount's
    /// view; ENXIO at or past the end, or when no data follows.
    pub async fn seek(&self, offset: u64, data: bool) -> Result<u64, i32> {
        let st = self.state.lock().await;
        if offset >= st.size {
            return Err(libc::ENXIO);
        }
        if data {
            let next = [st.pending.next_data(offset), st.base.next_data(offset)]
                .into_iter()
                .flatten()
                .min();
            return next.filter(|&d| d < st.size).ok_or(libc::ENXIO);
        }
        // A hole in both maps; each step moves past data in one of them.
        let mut pos = offset;
        loop {
            let next = st.base.next_hole(st.pending.next_hole(pos));
            if next == pos || next >= st.size {
                return Ok(next.min(st.size));
            }
            pos = next;
        }
    }

    /// Reads up to `len` bytes at `offset`, zeros in holes.
    pub async fn read(&self, io: &Io, offset: u64, len: u32) -> Result<Vec<u8>, ClientError> {
        let (parts, next, end) = {
            let st = self.state.lock().await;
            let end = st.size.min(offset.saturating_add(u64::from(len)));
            if offset >= end {
                return Ok(Vec::new());
            }
            let mut parts = Vec::new();
            for span in st.pending.lookup(offset, end) {
                match span.data {
                    Some((Src::Buf(id), at)) => {
                        let bytes = Self::buffer(&st, id)
                            .and_then(|b| b.get(at as usize..(at + span.len) as usize))
                            .ok_or_else(|| eio("read"))?;
                        parts.push(Part::Bytes(bytes.to_vec()));
                    }
                    // A carried chunk is on no node until its commit is.
                    Some((Src::Chunk(hash), at)) if st.carried.iter().any(|(h, _)| *h == hash) => {
                        let bytes = st
                            .carried
                            .iter()
                            .find(|(h, _)| *h == hash)
                            .and_then(|(_, d)| d.get(at as usize..(at + span.len) as usize))
                            .ok_or_else(|| eio("read"))?;
                        parts.push(Part::Bytes(bytes.to_vec()));
                    }
                    Some((Src::Chunk(hash), at)) => parts.push(Part::Chunk {
                        hash,
                        at,
                        len: span.len,
                        large: st
                            .pending
                            .get(span.offset)
                            .is_some_and(|(_, p)| p.len >= WHOLE_CHUNK_EXTENT),
                    }),
                    None => {
                        for s in st.base.lookup(span.offset, span.offset + span.len) {
                            parts.push(match s.data {
                                Some((hash, at)) => Part::Chunk {
                                    hash,
                                    at,
                                    len: s.len,
                                    large: st
                                        .base
                                        .get(s.offset)
                                        .is_some_and(|(_, p)| p.len >= WHOLE_CHUNK_EXTENT),
                                },
                                None => Part::Zeros(s.len),
                            });
                        }
                    }
                }
            }
            let ahead = end.saturating_add(READ_AHEAD * CS).min(st.size);
            // Only chunks behind large extents: a fragmented stretch is read
            // as ranges when it comes.
            let next: BTreeSet<ChunkHash> = st
                .base
                .lookup(end, ahead)
                .into_iter()
                .filter(|s| {
                    st.base
                        .get(s.offset)
                        .is_some_and(|(_, p)| p.len >= WHOLE_CHUNK_EXTENT)
                })
                .filter_map(|s| s.data.map(|(h, _)| h))
                .collect();
            (parts, next, end)
        };
        // Sequential: this read starts at 0, or it and the one before it
        // each started within a kernel read-ahead window (which may arrive
        // slightly out of order) of where the one before ended. Two in a
        // row, so that a random reader that lands near its last read by
        // chance does not fetch whole chunks.
        let before = self.read_end.swap(end, Ordering::Relaxed);
        let near = offset == 0 || offset.abs_diff(before) <= 2 * u64::from(super::MAX_READ_WINDOW);
        let was_near = self.read_near.swap(near, Ordering::Relaxed);
        let sequential = offset == 0 || near && was_near;
        let mut out = Vec::with_capacity((end - offset) as usize);
        for part in parts {
            match part {
                Part::Zeros(n) => out.resize(out.len() + n as usize, 0),
                Part::Bytes(b) => out.extend_from_slice(&b),
                Part::Chunk {
                    hash,
                    at,
                    len,
                    large,
                } => {
                    let whole = sequential && large;
                    out.extend_from_slice(&io.piece(hash, at, len, whole).await?);
                }
            }
        }
        // Sequential readers: fetch the next chunks while this one is used
        // (the cache joins a fetch already in flight). Random readers do
        // not, so they fetch only what they read.
        if sequential && (end % CS == 0 || end % CS > CS / 2) {
            for h in next {
                let io = io.clone();
                tokio::spawn(async move {
                    let _ = io.cache.get(&io.client, h).await;
                });
            }
        }
        Ok(out)
    }

    /// The bytes of buffer `id`, open or uploading.
    fn buffer(st: &FileState, id: u64) -> Option<&[u8]> {
        if let Some(b) = st.open.as_ref().filter(|b| b.id == id) {
            return Some(&b.data);
        }
        st.sealed
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.data.as_slice())
    }
}

/// The windows (4 MiB aligned) that compaction should rewrite: those with
/// more than [`COMPACT_WINDOW_EXTENTS`] extents, and while the file has
/// more than [`COMPACT_FILE_EXTENTS`], the most fragmented others until
/// half that would remain; at most [`COMPACT_MAX_WINDOWS`].
fn fragmented_windows(base: &Extents, size: u64) -> Vec<(u64, u64)> {
    let total = base.len();
    let few = base.len() <= COMPACT_WINDOW_EXTENTS;
    if few {
        return Vec::new();
    }
    let mut counts: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    for (offset, p) in base.iter() {
        // An extent counts in every window it touches.
        for w in offset / CS..=(offset + p.len - 1) / CS {
            *counts.entry(w).or_insert(0) += 1;
        }
    }
    let mut ranked: Vec<(usize, u64)> = counts.into_iter().map(|(w, n)| (n, w)).collect();
    ranked.sort_by(|a, b| b.cmp(a));
    let mut left = total;
    let mut out = Vec::new();
    for (n, w) in ranked {
        let wanted = n > COMPACT_WINDOW_EXTENTS
            || left > COMPACT_FILE_EXTENTS / 2 && total > COMPACT_FILE_EXTENTS;
        if !wanted || out.len() == COMPACT_MAX_WINDOWS || n <= 1 {
            break;
        }
        left = left.saturating_sub(n - 1);
        out.push((w * CS, ((w + 1) * CS).min(size)));
    }
    out
}

/// Starts uploading `data` as a chunk; the budget it held comes back when
/// the upload ends, and the chunk goes into the cache for readers.
fn upload(
    io: &Io,
    data: Arc<Vec<u8>>,
    permit: Option<OwnedSemaphorePermit>,
) -> JoinHandle<Result<ChunkHash, ClientError>> {
    let client = io.client.clone();
    let cache = io.cache.clone();
    tokio::spawn(async move {
        let hash = client.put_chunk(data.clone()).await;
        drop(permit);
        let hash = hash?;
        cache.insert(hash, data);
        Ok(hash)
    })
}
