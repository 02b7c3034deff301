//! The FUSE filesystem: kernel requests mapped onto the cluster client.
//!
//! - [`cache`]: verified chunks, bounded, shared by the mount.
//! - [`files`]: files open on this mount: write buffering, commit, reads.
//!
//! Every request runs as its own task on the tokio runtime, so a request
//! waiting on the network never holds up the others. Inode numbers are the
//! cluster's own (the root is 1, as in FUSE). The kernel checks
//! permissions itself (`default_permissions`) from the attributes we return.
//!
//! Close-to-open: `flush` (every close) commits the file's writes before it
//! returns; `open` reads the file's chunk list afresh (a linearizable read)
//! and, when the file changed since this mount last saw it, drops the
//! kernel's cached attributes and pages. An inode that no longer exists
//! answers ESTALE, so the kernel looks its name up again and finds a file
//! that replaced it by rename on another mount.

pub mod cache;
pub mod files;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenAccMode, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use quizfs_proto::{self as pb, meta_op::Op};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::client::meta::Extents;
use crate::client::{ClientError, ClusterClient};
use cache::ChunkCache;
use files::{Io, OpenFile};

/// Tunables of a mount.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// How long the kernel may cache attributes.
    pub attr_timeout: Duration,
    /// How long the kernel may cache name lookups.
    pub entry_timeout: Duration,
    /// Refuse every change with EROFS.
    pub read_only: bool,
    /// Bytes of chunk data the mount caches for reads.
    pub chunk_cache_bytes: usize,
    /// Written data all files of the mount may hold in memory before it
    /// is uploaded, in chunks (4 MiB each).
    pub write_buffers: usize,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            read_only: false,
            chunk_cache_bytes: 64 << 20,
            write_buffers: 16,
        }
    }
}

/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;
/// The kernel's read-ahead window: reads within twice this of where the
/// last one ended count as sequential.
pub const MAX_READ_WINDOW: u32 = 1 << 20;
/// Directory entries fetched per page.
const DIR_PAGE: u32 = 2048;
/// Block size reported to applications (stdio and cp size buffers by it).
const BLKSIZE: u32 = 1 << 20;

/// Longest time between an open refused with ESTALE and the kernel's
/// retry of it (a lookup and an open, which may wait out a leader change).
const RETRY_WINDOW: Duration = Duration::from_secs(30);
/// Threads remembered as retrying an open before old entries are dropped.
const MAX_ESTALE: usize = 4096;

/// Most inodes remembered as having no extended attributes before the
/// stale ones are dropped.
const MAX_BARE: usize = 1 << 16;

/// A directory being listed: the entries fetched so far, in name order.
#[derive(Debug, Default)]
struct Listing {
    entries: Vec<pb::DirEntry>,
    more: bool,
    started: bool,
}

#[derive(Debug)]
enum Handle_ {
    File(Arc<OpenFile>),
    Dir(Arc<tokio::sync::Mutex<Listing>>),
}

/// The state of one mount.
#[derive(Debug)]
struct Inner {
    io: Io,
    opts: FsOptions,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    handles: Mutex<HashMap<u64, Handle_>>,
    next_fh: AtomicU64,
    /// The content version of the pages the kernel may hold for each
    /// inode: set when an open installs a view (the kernel drops its pages
    /// unless they are of that view) and after this mount's own commit
    /// (its writes went through those pages). Attribute replies never set
    /// it: a `stat` that sees a newer version leaves the pages as they
    /// were, and an open that then kept them would read old content.
    pages: Mutex<HashMap<u64, u64>>,
    /// Threads whose open met a deleted inode, in the kernel's retry of
    /// it: when, and the inode the retry's lookup found (0 before it).
    estale: Mutex<HashMap<u32, (Instant, u64)>>,
    /// Inodes whose last attributes said they have no extended attributes,
    /// and when: within the attribute timeout, getxattr answers ENODATA
    /// here (`ls -l` asks for an ACL on every entry).
    /// (true, t): bare as of t; (false, t): this mount changed its
    /// extended attributes at t, so attributes fetched meanwhile must not
    /// mark it bare until `attr_timeout` has passed.
    bare: Mutex<HashMap<u64, (bool, Instant)>>,
    notifier: OnceLock<Notifier>,
}

/// The quizfs FUSE filesystem.
#[derive(Debug)]
pub struct QuizFs {
    inner: Arc<Inner>,
    rt: Handle,
}

type OpResult<T> = Result<T, Errno>;

fn errno(e: &ClientError) -> Errno {
    let code = e.errno();
    // EIO says nothing by itself: the log keeps why.
    if code == libc::EIO {
        tracing::warn!(error = %e, "answering EIO");
    }
    Errno::from_i32(code)
}

fn err(code: i32) -> Errno {
    Errno::from_i32(code)
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<pb::SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => pb::SetTime { now: true, ns: 0 },
        TimeOrNow::SpecificTime(t) => pb::SetTime {
            now: false,
            ns: ns_of(t),
        },
    })
}

impl QuizFs {
    /// A filesystem over `client`, running its requests on `rt`.
    pub fn new(client: ClusterClient, opts: FsOptions, rt: Handle) -> Self {
        let units = opts.write_buffers.max(1) * (pb::CHUNK_SIZE / files::BUDGET_UNIT);
        let budget_units = u32::try_from(units).unwrap_or(u32::MAX);
        let io = Io {
            client,
            cache: Arc::new(ChunkCache::new(opts.chunk_cache_bytes)),
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
        };
        Self {
            inner: Arc::new(Inner {
                io,
                opts,
                files: Mutex::new(HashMap::new()),
                handles: Mutex::new(HashMap::new()),
                next_fh: AtomicU64::new(1),
                pages: Mutex::new(HashMap::new()),
                estale: Mutex::new(HashMap::new()),
                bare: Mutex::new(HashMap::new()),
                notifier: OnceLock::new(),
            }),
            rt,
        }
    }

    /// A handle that can hand the notifier over after the session moved.
    pub fn notifier_slot(&self) -> NotifierSlot {
        NotifierSlot(self.inner.clone())
    }

    /// Runs `f` as a task; its result answers the request.
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let inner = self.inner.clone();
        self.rt.spawn(async move { f(inner).await });
    }
}

/// Lets the mount code give the filesystem its notifier after the session
/// (which owns the filesystem) is created.
#[derive(Debug)]
pub struct NotifierSlot(Arc<Inner>);

impl NotifierSlot {
    /// Stores the notifier.
    pub fn set(&self, n: Notifier) {
        let _ = self.0.notifier.set(n);
    }
}

impl Inner {
    fn client(&self) -> &ClusterClient {
        &self.io.client
    }

    fn lock_files(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<OpenFile>>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pages(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Handle_>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        self.lock_files().get(&ino).cloned()
    }

    fn writable(&self) -> OpResult<()> {
        if self.opts.read_only {
            Err(err(libc::EROFS))
        } else {
            Ok(())
        }
    }

    /// The attributes the kernel gets: the cluster's, with the size and
    /// mtime of writes this mount has not committed yet.
    fn file_attr(&self, a: &pb::Attr) -> FileAttr {
        let mut size = a.size;
        let mut mtime = a.mtime_ns;
        if let Some(f) = self.open_file(a.ino) {
            *f.last_attr.lock().unwrap_or_else(|p| p.into_inner()) = Some(*a);
            if f.changed.load(Ordering::Relaxed) {
                size = f.local_size.load(Ordering::Relaxed);
                mtime = mtime.max(f.local_mtime.load(Ordering::Relaxed));
            }
        }
        {
            let mut bare = self.bare.lock().unwrap_or_else(|p| p.into_inner());
            let ttl = self.opts.attr_timeout;
            let changed_here = matches!(bare.get(&a.ino), Some((false, t)) if t.elapsed() < ttl);
            if a.has_xattrs {
                if !changed_here {
                    bare.remove(&a.ino);
                }
            } else if !changed_here {
                if bare.len() >= MAX_BARE {
                    bare.retain(|_, (_, t)| t.elapsed() < ttl);
                }
                bare.insert(a.ino, (true, Instant::now()));
            }
        }
        FileAttr {
            ino: INodeNo(a.ino),
            size,
            blocks: size.div_ceil(512),
            atime: time_of(a.atime_ns),
            mtime: time_of(mtime),
            ctime: time_of(a.ctime_ns),
            crtime: time_of(a.ctime_ns),
            kind: kind_of(a.mode),
            perm: (a.mode & 0o7777) as u16,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: BLKSIZE,
            flags: 0,
        }
    }

    /// True when the inode's attributes, fetched within the attribute
    /// timeout, said it has no extended attributes.
    fn known_bare(&self, ino: u64) -> bool {
        let ttl = self.opts.attr_timeout;
        self.bare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .is_some_and(|&(bare, t)| bare && t.elapsed() < ttl)
    }

    /// Records that this mount is changing the inode's extended attributes.
    fn forget_bare(&self, ino: u64) {
        self.bare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino, (false, Instant::now()));
    }

    fn entry(&self, reply: ReplyEntry, r: Result<pb::Attr, ClientError>) {
        match r {
            Ok(a) => reply.entry(
                &self.opts.entry_timeout,
                &self.file_attr(&a),
                Generation(a.generation),
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    async fn apply_attr(&self, name: &'static str, op: Op) -> Result<pb::Attr, ClientError> {
        let r = self.client().apply(name, op).await?;
        if r.errno != 0 {
            return Err(ClientError::Posix {
                op: name,
                errno: r.errno,
            });
        }
        r.attr.ok_or(ClientError::Posix {
            op: name,
            errno: libc::EIO,
        })
    }

    /// Applies a command that makes a name (mknod, mkdir, symlink) and
    /// answers the kernel with its entry.
    async fn new_entry(&self, name: &'static str, op: Op, reply: ReplyEntry) {
        if let Err(e) = self.writable() {
            return reply.error(e);
        }
        let r = self.apply_attr(name, op).await;
        self.entry(reply, r);
    }

    async fn apply_unit(&self, name: &'static str, op: Op) -> Result<(), ClientError> {
        let r = self.client().apply(name, op).await?;
        if r.errno != 0 {
            return Err(ClientError::Posix {
                op: name,
                errno: r.errno,
            });
        }
        Ok(())
    }

    /// The inode at `parent/name` if this mount holds it open: removing its
    /// last name must then keep it readable until close.
    async fn open_target(&self, parent: u64, name: &[u8]) -> u64 {
        if self.lock_files().is_empty() {
            return 0;
        }
        match self.client().lookup(parent, name).await {
            Ok(a) if self.lock_files().contains_key(&a.ino) => a.ino,
            _ => 0,
        }
    }

    fn mark_orphan(&self, ino: u64) {
        if ino != 0 {
            if let Some(f) = self.open_file(ino) {
                f.orphan.store(true, Ordering::Relaxed);
            }
        }
    }

    fn add_handle(&self, h: Handle_) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.lock_handles().insert(fh, h);
        fh
    }

    /// Opens `attr.ino` on this mount: shares the state of a file already
    /// open here (and lays a newer committed view under its pending
    /// writes), else reads its layout. Returns the handle and whether the
    /// kernel's cached pages are still good.
    async fn open_ino(&self, ino: u64, fresh: Option<pb::Attr>, pid: u32) -> OpResult<(u64, bool)> {
        let (attr, extents) = match fresh {
            Some(a) => (a, Extents::new()),
            None => match self.client().layout(ino).await {
                Ok(x) => x,
                // Gone: make the kernel look the name up again.
                Err(ClientError::Posix {
                    errno: libc::ENOENT,
                    ..
                }) => return Err(self.refuse_deleted(ino, pid)),
                Err(e) => return Err(errno(&e)),
            },
        };
        if attr.mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(err(libc::EISDIR));
        }
        // An inode whose last link went elsewhere (a tombstone): the name
        // this open came by is stale, so the kernel is asked to look it up
        // again, once. The open after that fresh lookup may meet the inode
        // the lookup found deleted in turn (replaced again in between):
        // that inode was the name's content after this open began, so it
        // is opened. An inode this mount holds open is its own orphan.
        let retry = self.lock_estale().remove(&pid);
        let deleted = attr.nlink == 0 && !self.lock_files().contains_key(&ino);
        let retried = retry.is_some_and(|(t, found)| found == ino && t.elapsed() <= RETRY_WINDOW);
        if deleted && !retried {
            return Err(self.refuse_deleted(ino, pid));
        }
        let mut extents = Some(extents);
        let file = {
            let mut files = self.lock_files();
            let f = files
                .entry(ino)
                .or_insert_with(|| {
                    Arc::new(OpenFile::new(&attr, extents.take().unwrap_or_default()))
                })
                .clone();
            f.opens.fetch_add(1, Ordering::Relaxed);
            f
        };
        // A file already open here takes the view (outside the table's
        // lock) unless it holds a newer one: a view read before a commit
        // on this mount is older than the commit's.
        let view = match extents {
            Some(extents) => file.refresh(&attr, extents).await,
            None => attr.content_version,
        };
        // Reads of this handle come from `view`: the kernel's pages must be
        // of that view before the open returns.
        let keep = self.pages_of(ino, view).await;
        tracing::trace!(ino, view, keep, "open");
        self.file_attr(&attr);
        let fh = self.add_handle(Handle_::File(file));
        Ok((fh, keep))
    }

    /// open(O_TRUNC) (the kernel leaves it to the open: atomic O_TRUNC):
    /// held with the writes that follow, so the file is cut and rewritten
    /// in one commit at close.
    async fn truncate_at_open(&self, fh: u64) {
        if let Ok(f) = self.file_of(FileHandle(fh)) {
            f.truncate(0, files::now_ns()).await;
        }
    }

    /// ESTALE for an open of a deleted inode by thread `pid`, remembered so
    /// that the kernel's one retry of the open may open a tombstone.
    fn refuse_deleted(&self, ino: u64, pid: u32) -> Errno {
        tracing::debug!(ino, pid, "open of a deleted inode: ESTALE");
        let mut estale = self.lock_estale();
        if estale.len() >= MAX_ESTALE {
            estale.retain(|_, (t, _)| t.elapsed() <= RETRY_WINDOW);
        }
        estale.insert(pid, (Instant::now(), 0));
        err(libc::ESTALE)
    }

    /// True while thread `pid` is in the kernel's retry of an open that
    /// was refused with ESTALE, and its fresh lookup found `ino`.
    fn retrying(&self, pid: u32, ino: u64) -> bool {
        self.lock_estale()
            .get(&pid)
            .is_some_and(|&(t, found)| found == ino && t.elapsed() <= RETRY_WINDOW)
    }

    /// A lookup by thread `pid`: in a retry, the name now leads to `found`
    /// (the retry ends if it leads nowhere).
    fn looked_up(&self, pid: u32, found: Option<u64>) {
        let mut estale = self.lock_estale();
        if let Some(r) = estale.get_mut(&pid) {
            match found {
                Some(ino) => r.1 = ino,
                None => {
                    estale.remove(&pid);
                }
            }
        }
    }

    fn lock_estale(&self) -> std::sync::MutexGuard<'_, HashMap<u32, (Instant, u64)>> {
        self.estale.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the kernel's cached pages of `ino` those of content version
    /// `view`: kept if they are, else dropped (waiting for reads in flight
    /// to end, so none fills a page from an older view afterwards) before
    /// `view` is recorded. True when the open may tell the kernel to keep
    /// its cache; false when only the open can drop it (no notifier yet).
    async fn pages_of(&self, ino: u64, view: u64) -> bool {
        if self.lock_pages().get(&ino) == Some(&view) {
            return true;
        }
        let Some(n) = self.notifier.get().cloned() else {
            self.lock_pages().insert(ino, view);
            return false;
        };
        // The kernel may wait on reads this mount answers: off the runtime.
        let dropped = tokio::task::spawn_blocking(move || n.inval_inode(INodeNo(ino), 0, 0))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match dropped {
            // ENOENT: the kernel holds no such inode, so no pages either.
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => {
                tracing::debug!(ino, error = %e, "page invalidation failed; the open drops them");
                self.lock_pages().remove(&ino);
                return false;
            }
        }
        self.lock_pages().insert(ino, view);
        true
    }

    fn file_of(&self, fh: FileHandle) -> OpResult<Arc<OpenFile>> {
        match self.lock_handles().get(&fh.0) {
            Some(Handle_::File(f)) => Ok(f.clone()),
            Some(Handle_::Dir(_)) => Err(err(libc::EISDIR)),
            None => Err(err(libc::EBADF)),
        }
    }

    /// Commits a file's writes; the attributes the kernel sees afterwards
    /// are the committed ones.
    async fn flush_file(&self, f: &OpenFile) -> OpResult<()> {
        match f.flush(&self.io).await {
            Ok(committed) => {
                if let Some(c) = committed {
                    // This mount's writes went through the kernel's pages:
                    // they are of the new version if they were of the one
                    // the writes went on.
                    let mut pages = self.lock_pages();
                    match c.from {
                        Some(from) if pages.get(&f.ino) == Some(&from) => {
                            pages.insert(f.ino, c.view);
                        }
                        _ => {
                            pages.remove(&f.ino);
                        }
                    }
                    drop(pages);
                    self.file_attr(&c.attr);
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(ino = f.ino, error = %e, "commit failed");
                Err(errno(&e))
            }
        }
    }

    async fn release(&self, fh: u64) -> OpResult<()> {
        let Some(Handle_::File(f)) = self.lock_handles().remove(&fh) else {
            return Ok(());
        };
        let flushed = self.flush_file(&f).await;
        let last = {
            let mut files = self.lock_files();
            let last = f.opens.fetch_sub(1, Ordering::Relaxed) == 1;
            if last {
                files.remove(&f.ino);
            }
            last
        };
        if last && f.orphan.load(Ordering::Relaxed) {
            if let Err(e) = self.client().release_orphan(f.ino).await {
                tracing::warn!(ino = f.ino, error = %e, "releasing a deleted open file failed");
            }
        }
        flushed
    }

    async fn setattr(
        &self,
        ino: u64,
        set: pb::SetAttr,
        fh: Option<u64>,
    ) -> Result<pb::Attr, ClientError> {
        let open = self.open_file(ino);
        tracing::trace!(ino, ?set, ?fh, open = open.is_some(), "setattr");
        let (Some(f), Some(size)) = (open, set.size) else {
            return self.apply_attr("setattr", Op::SetAttr(set)).await;
        };
        // ftruncate or open(O_TRUNC) on a descriptor of this file, changing
        // nothing but the size (and the mtime to now): held with the
        // pending writes until the commit. Anything else goes now, after
        // the pending writes.
        let by_descriptor = fh.is_some_and(
            |fh| matches!(self.lock_handles().get(&fh), Some(Handle_::File(h)) if h.ino == ino),
        );
        let only_size = set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.atime.is_none()
            && set.mtime.as_ref().is_none_or(|t| t.now);
        let last = *f.last_attr.lock().unwrap_or_else(|p| p.into_inner());
        match last {
            Some(mut a) if by_descriptor && only_size => {
                let now = files::now_ns();
                f.truncate(size, now).await;
                a.ctime_ns = now;
                Ok(a)
            }
            _ => f.truncate_now(&self.io, set).await,
        }
    }

    /// Takes write budget for `len` bytes. When it is spent, this file's
    /// buffer and then every other file's are sent on their way, and the
    /// writer waits for their uploads to give budget back: it waits on
    /// that work, never on a timer.
    async fn reserve(
        &self,
        f: &OpenFile,
        len: usize,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ClientError> {
        let units = self.io.units(len);
        if let Ok(p) = self.io.budget.clone().try_acquire_many_owned(units) {
            return Ok(p);
        }
        f.seal(&self.io).await?;
        let others: Vec<Arc<OpenFile>> = self.lock_files().values().cloned().collect();
        for o in others.iter().filter(|o| o.ino != f.ino) {
            if let Err(e) = o.seal(&self.io).await {
                tracing::debug!(ino = o.ino, error = %e, "sending a buffer for budget failed");
            }
        }
        self.io
            .budget
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| ClientError::Posix {
                op: "write",
                errno: libc::EIO,
            })
    }

    /// Lists directory `ino` from `offset` into `add` (name, inode, kind,
    /// attributes when the listing carries them, next offset) until `add`
    /// says the reply is full. Returns an errno on failure.
    async fn list(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&[u8], u64, FileType, Option<&pb::Attr>, u64) -> bool,
    ) -> Result<(), Errno> {
        let listing = match self.lock_handles().get(&fh) {
            Some(Handle_::Dir(l)) => l.clone(),
            _ => return Err(err(libc::EBADF)),
        };
        let mut l = listing.lock().await;
        if offset == 0 || !l.started {
            *l = Listing {
                entries: Vec::new(),
                more: true,
                started: true,
            };
        }
        // Offsets: 1 after ".", 2 after "..", k + 3 after entry k.
        let mut i = offset;
        loop {
            let full = match i {
                0 => add(b".", ino, FileType::Directory, None, i + 1),
                1 => add(b"..", ino, FileType::Directory, None, i + 1),
                _ => {
                    let k = (i - 2) as usize;
                    while k >= l.entries.len() && l.more {
                        let after = l.entries.last().map(|e| e.name.clone()).unwrap_or_default();
                        let (page, more) = self
                            .client()
                            .readdir(ino, &after, DIR_PAGE)
                            .await
                            .map_err(|e| errno(&e))?;
                        l.more = more && !page.is_empty();
                        l.entries.extend(page);
                    }
                    match l.entries.get(k) {
                        Some(e) => add(&e.name, e.ino, kind_of(e.mode), e.attr.as_ref(), i + 1),
                        None => break,
                    }
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        Ok(())
    }

    async fn readdir(&self, ino: u64, fh: u64, offset: u64, mut reply: ReplyDirectory) {
        let r = self
            .list(ino, fh, offset, |name, child, kind, _, next| {
                reply.add(INodeNo(child), next, kind, OsStr::from_bytes(name))
            })
            .await;
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// readdir with each entry's attributes, so `ls -l` of a large
    /// directory costs one listing instead of a lookup per entry.
    async fn readdirplus(&self, ino: u64, fh: u64, offset: u64, mut reply: ReplyDirectoryPlus) {
        let ttl = self.opts.entry_timeout.min(self.opts.attr_timeout);
        let r = self
            .list(ino, fh, offset, |name, child, kind, attr, next| {
                // Without attributes (. and .., which the kernel does not
                // use, or an entry whose inode just went away) the entry
                // goes with a placeholder valid for no time, so the kernel
                // asks again before using it.
                let (fa, generation, t) = match attr {
                    Some(a) => (self.file_attr(a), a.generation, ttl),
                    None => (placeholder_attr(child, kind), 0, Duration::ZERO),
                };
                reply.add(
                    INodeNo(child),
                    next,
                    OsStr::from_bytes(name),
                    &t,
                    &fa,
                    Generation(generation),
                )
            })
            .await;
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

/// Extended attributes nobody asks for by name but that are read on every
/// `ls -l` entry (ACLs, the SELinux label) or every write (file
/// capabilities): for an inode known to have none, the mount answers
/// ENODATA itself.
fn implicit_xattr(name: &[u8]) -> bool {
    name.starts_with(b"system.posix_acl_")
        || name == b"security.selinux"
        || name == b"security.capability"
}

/// Attributes that say only the inode and its kind.
fn placeholder_attr(ino: u64, kind: FileType) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn reply_empty(reply: ReplyEmpty, r: OpResult<()>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn reply_xattr(reply: ReplyXattr, data: Vec<u8>, size: u32) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(err(libc::ERANGE));
    } else {
        reply.data(&data);
    }
}

/// Checks `mask` (R_OK 4, W_OK 2, X_OK 1) against an inode's mode for a
/// caller, the way the kernel's generic permission check does.
fn may_access(a: &pb::Attr, uid: u32, gid: u32, mask: u32) -> bool {
    if mask == 0 {
        return true;
    }
    if uid == 0 {
        // Root may do anything but execute a file nobody may execute.
        return mask & 1 == 0 || a.mode & libc::S_IFMT == libc::S_IFDIR || a.mode & 0o111 != 0;
    }
    let bits = if a.uid == uid {
        (a.mode >> 6) & 7
    } else if a.gid == gid {
        (a.mode >> 3) & 7
    } else {
        a.mode & 7
    };
    bits & mask == mask
}

impl Filesystem for QuizFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_READ_WINDOW);
        let _ = config.add_capabilities(
            InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_ATOMIC_O_TRUNC
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_BIG_WRITES
                | InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        Ok(())
    }

    /// The kernel dropped the inode, and with it any cached pages.
    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.inner.lock_pages().remove(&ino.0);
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        let pid = req.pid();
        self.spawn(move |fs| async move {
            let r = fs.client().lookup(parent.0, &name).await;
            tracing::trace!(parent = parent.0, name = %String::from_utf8_lossy(&name), ino = ?r.as_ref().map(|a| a.ino), "lookup");
            fs.looked_up(pid, r.as_ref().ok().map(|a| a.ino));
            fs.entry(reply, r);
        });
    }

    /// For a file open on this mount, the cluster gets a few ping timeouts
    /// to answer; if it has no majority by then (or fails), the attributes
    /// last seen are answered, so that reading a file opened before two
    /// nodes failed goes on (the kernel asks for the size at end of file).
    /// Other inodes wait for the cluster as every metadata read does.
    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let pid = req.pid();
        self.spawn(move |fs| async move {
            let open = fs.open_file(ino.0);
            let answer = match &open {
                None => Some(fs.client().getattr(ino.0).await),
                Some(f) => {
                    let patience = if fs.client().majority_up() {
                        fs.client().options().ping_timeout * 2
                    } else {
                        Duration::ZERO
                    };
                    let r = tokio::time::timeout(patience, fs.client().getattr(ino.0)).await;
                    let last = *f.last_attr.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        // Deleted on another mount while open here: as on a
                        // local filesystem, the descriptor's file has no
                        // link (the kernel asks at every read at the end).
                        Ok(Err(ClientError::Posix {
                            errno: libc::ENOENT,
                            ..
                        })) if last.is_some() => last.map(|mut a| {
                            a.nlink = 0;
                            Ok(a)
                        }),
                        Ok(Err(ClientError::Posix { .. })) | Ok(Ok(_)) => r.ok(),
                        Ok(Err(_)) | Err(_) => match last {
                            Some(a) => {
                                tracing::debug!(
                                    ino = ino.0,
                                    "no answer from the cluster; last attributes of the open file"
                                );
                                Some(Ok(a))
                            }
                            None => r.ok(),
                        },
                    }
                }
            };
            let Some(answer) = answer else {
                return reply.error(err(libc::ETIMEDOUT));
            };
            match answer {
                Ok(a) => reply.attr(&fs.opts.attr_timeout, &fs.file_attr(&a)),
                Err(ClientError::Posix {
                    errno: libc::ENOENT,
                    ..
                }) => {
                    // In the kernel's retry of an open (see `open_ino`),
                    // the inode the fresh lookup found may be deleted in
                    // turn before its attributes are asked for: its
                    // tombstone answers, as the open will.
                    if fs.retrying(pid, ino.0) {
                        if let Ok((a, _)) = fs.client().layout(ino.0).await {
                            return reply.attr(&fs.opts.attr_timeout, &fs.file_attr(&a));
                        }
                    }
                    tracing::debug!(ino = ino.0, "getattr of a deleted inode: ESTALE");
                    reply.error(err(libc::ESTALE))
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = pb::SetAttr {
            ino: ino.0,
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            match fs.setattr(ino.0, set, fh.map(|h| h.0)).await {
                Ok(a) => reply.attr(&fs.opts.attr_timeout, &fs.file_attr(&a)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(move |fs| async move {
            match fs.client().readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Create(pb::Create {
            parent: parent.0,
            name: name_bytes(name),
            mode,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            exclusive: true,
        });
        self.spawn(move |fs| async move { fs.new_entry("mknod", op, reply).await });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Mkdir(pb::Mkdir {
            parent: parent.0,
            name: name_bytes(name),
            mode,
            uid: req.uid(),
            gid: req.gid(),
        });
        self.spawn(move |fs| async move { fs.new_entry("mkdir", op, reply).await });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let keep = fs.open_target(parent.0, &name).await;
            let op = Op::Unlink(pb::Unlink {
                parent: parent.0,
                name,
                keep_open_ino: keep,
            });
            let r = fs.apply_unit("unlink", op).await;
            if r.is_ok() {
                fs.mark_orphan(keep);
            }
            reply_empty(reply, r.map_err(|e| errno(&e)));
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let r = fs.client().rmdir(parent.0, &name).await;
            reply_empty(reply, r.map_err(|e| errno(&e)));
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let op = Op::Symlink(pb::Symlink {
            parent: parent.0,
            name: name_bytes(link_name),
            target: target.as_os_str().as_bytes().to_vec(),
            uid: req.uid(),
            gid: req.gid(),
        });
        self.spawn(move |fs| async move { fs.new_entry("symlink", op, reply).await });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let name = name_bytes(name);
        let new_name = name_bytes(newname);
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            if flags.contains(RenameFlags::RENAME_WHITEOUT) {
                return reply.error(err(libc::EINVAL));
            }
            let keep = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
                0
            } else {
                fs.open_target(newparent.0, &new_name).await
            };
            let op = Op::Rename(pb::Rename {
                parent: parent.0,
                name,
                new_parent: newparent.0,
                new_name,
                flags: flags.bits(),
                keep_open_ino: keep,
            });
            let r = fs.apply_unit("rename", op).await;
            if r.is_ok() {
                fs.mark_orphan(keep);
            }
            reply_empty(reply, r.map_err(|e| errno(&e)));
        });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let new_name = name_bytes(newname);
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let r = fs.client().link(ino.0, newparent.0, &new_name).await;
            fs.entry(reply, r);
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let pid = req.pid();
        let wants_write =
            !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY) || flags.0 & libc::O_TRUNC != 0;
        self.spawn(move |fs| async move {
            if wants_write {
                if let Err(e) = fs.writable() {
                    return reply.error(e);
                }
            }
            match fs.open_ino(ino.0, None, pid).await {
                Ok((fh, keep)) => {
                    if flags.0 & libc::O_TRUNC != 0 {
                        fs.truncate_at_open(fh).await;
                    }
                    let f = if keep {
                        FopenFlags::FOPEN_KEEP_CACHE
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), f);
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(move |fs| async move {
            let f = match fs.file_of(fh) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            match f.read(&fs.io, offset, size).await {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let f = match fs.file_of(fh) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            let too_big = offset
                .checked_add(data.len() as u64)
                .is_none_or(|e| e > pb::MAX_FILE_SIZE);
            if too_big {
                return reply.error(err(libc::EFBIG));
            }
            if data.is_empty() {
                return reply.written(0);
            }
            let permit = match fs.reserve(&f, data.len()).await {
                Ok(p) => p,
                Err(e) => return reply.error(errno(&e)),
            };
            match f.write(&fs.io, offset, &data, permit).await {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            let r = match fs.file_of(fh) {
                Ok(f) => fs.flush_file(&f).await,
                Err(e) => Err(e),
            };
            reply_empty(reply, r);
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            let r = fs.release(fh.0).await;
            reply_empty(reply, r);
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.flush(_req, _ino, fh, LockOwner(0), reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let f = match fs.file_of(fh) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            let client = fs.client().clone();
            let r = f
                .change_content(&fs.io, || {
                    client.fallocate(ino.0, offset, length, mode as u32)
                })
                .await;
            match r {
                Ok(a) => {
                    fs.file_attr(&a);
                    reply.ok();
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.spawn(move |fs| async move {
            let f = match fs.file_of(fh) {
                Ok(f) => f,
                Err(e) => return reply.error(e),
            };
            let Ok(offset) = u64::try_from(offset) else {
                return reply.error(err(libc::ENXIO));
            };
            let r = match whence {
                libc::SEEK_DATA => f.seek(offset, true).await,
                libc::SEEK_HOLE => f.seek(offset, false).await,
                _ => Err(libc::EINVAL),
            };
            match r {
                Ok(o) => reply.offset(o as i64),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    /// A copy inside the volume shares the source's extents: no data
    /// moves, whatever the length.
    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let (src, dst) = match (fs.file_of(fh_in), fs.file_of(fh_out)) {
                (Ok(s), Ok(d)) => (s, d),
                (Err(e), _) | (_, Err(e)) => return reply.error(e),
            };
            // One reply carries at most u32::MAX bytes; the caller loops.
            let len = len.min(u64::from(u32::MAX) & !0xFFF);
            if let Err(e) = fs.flush_file(&src).await {
                return reply.error(e);
            }
            let client = fs.client().clone();
            let c = pb::CopyRange {
                src: ino_in.0,
                src_offset: offset_in,
                dst: ino_out.0,
                dst_offset: offset_out,
                len,
            };
            let r = dst.change_content(&fs.io, || client.copy_range(c)).await;
            match r {
                Ok((a, copied)) => {
                    fs.file_attr(&a);
                    reply.written(copied as u32);
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self
            .inner
            .add_handle(Handle_::Dir(Arc::new(tokio::sync::Mutex::new(
                Listing::default(),
            ))));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.spawn(move |fs| async move {
            fs.readdir(ino.0, fh.0, offset, reply).await;
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.spawn(move |fs| async move {
            fs.readdirplus(ino.0, fh.0, offset, reply).await;
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.inner.lock_handles().remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every metadata change is committed by Raft before it is answered.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.spawn(move |fs| async move {
            match fs.client().statfs().await {
                Ok(s) => {
                    let bs = 4096u64;
                    let free = s.free_bytes / bs;
                    reply.statfs(
                        s.total_bytes / bs,
                        free,
                        free,
                        s.files + free,
                        free,
                        bs as u32,
                        pb::MAX_NAME_BYTES as u32,
                        bs as u32,
                    );
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.inner.forget_bare(ino.0);
        let name = name_bytes(name);
        let value = value.to_vec();
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let r = fs
                .client()
                .setxattr(ino.0, &name, &value, flags as u32)
                .await;
            fs.forget_bare(ino.0);
            reply_empty(reply, r.map_err(|e| errno(&e)));
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Only the names the kernel and `ls -l` ask for implicitly, on
        // every entry or every write: any other name is read from the
        // cluster, so a setxattr on another mount shows at once.
        if implicit_xattr(name.as_bytes()) && self.inner.known_bare(ino.0) {
            return reply.error(err(libc::ENODATA));
        }
        let name = name_bytes(name);
        self.spawn(move |fs| async move {
            match fs.client().getxattr(ino.0, &name).await {
                Ok(v) => reply_xattr(reply, v, size),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(move |fs| async move {
            match fs.client().listxattr(ino.0).await {
                Ok(names) => {
                    let mut out = Vec::new();
                    for n in names {
                        out.extend_from_slice(&n);
                        out.push(0);
                    }
                    reply_xattr(reply, out, size);
                }
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.inner.forget_bare(ino.0);
        let name = name_bytes(name);
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let r = fs.client().removexattr(ino.0, &name).await;
            fs.forget_bare(ino.0);
            reply_empty(reply, r.map_err(|e| errno(&e)));
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (uid, gid) = (req.uid(), req.gid());
        let mask = mask.bits() as u32;
        self.spawn(move |fs| async move {
            match fs.client().getattr(ino.0).await {
                Ok(_) if mask & 2 != 0 && fs.opts.read_only => reply.error(err(libc::EROFS)),
                Ok(a) if may_access(&a, uid, gid, mask) => reply.ok(),
                Ok(_) => reply.error(err(libc::EACCES)),
                Err(e) => reply.error(errno(&e)),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let req_pid = req.pid();
        let op = Op::Create(pb::Create {
            parent: parent.0,
            name: name_bytes(name),
            mode: libc::S_IFREG | (mode & 0o7777),
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            exclusive: flags & libc::O_EXCL != 0,
        });
        self.spawn(move |fs| async move {
            if let Err(e) = fs.writable() {
                return reply.error(e);
            }
            let attr = match fs.apply_attr("create", op).await {
                Ok(a) => a,
                Err(e) => return reply.error(errno(&e)),
            };
            // A new file has no chunks; an existing one (no O_EXCL) is read.
            let fresh = (attr.size == 0).then_some(attr);
            match fs.open_ino(attr.ino, fresh, req_pid).await {
                Ok((fh, _)) => {
                    // O_TRUNC on a file that existed after all.
                    if flags & libc::O_TRUNC != 0 && attr.size > 0 {
                        fs.truncate_at_open(fh).await;
                    }
                    reply.created(
                        &fs.opts.entry_timeout,
                        &fs.file_attr(&attr),
                        Generation(attr.generation),
                        FileHandle(fh),
                        FopenFlags::empty(),
                    );
                }
                Err(e) => reply.error(e),
            }
        });
    }
}
