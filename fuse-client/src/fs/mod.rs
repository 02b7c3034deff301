//! The FUSE filesystem: kernel requests mapped onto the cluster client.
//!
//! - [`ops`]: the FUSE callbacks, each one expression handed to
//!   [`reply`]'s helper.
//! - [`reply`]: runs a request's body as a task and answers the kernel
//!   with its result.
//! - [`errno`]: the errno the kernel gets for a client error.
//! - [`attr`]: attributes as the kernel sees them; getattr and setattr.
//! - [`open`]: the mount's open files and handles, close-to-open (the
//!   record of the kernel's pages, ESTALE retries), flush and release.
//! - [`names`]: changes to the namespace (create, link, unlink, rename).
//! - [`content`]: read, write, fallocate, lseek, copy_file_range.
//! - [`dir`]: directory listings.
//! - [`xattr`]: extended attributes and the cache of inodes without any.
//! - [`cache`]: verified chunks, bounded, shared by the mount.
//! - [`files`]: files open on this mount: write buffering, commit, reads.
//! - [`locks`]: `fcntl`, OFD and `flock` locks, held by the cluster.
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

pub mod attr;
pub mod cache;
pub mod content;
pub mod dir;
pub mod errno;
pub mod files;
pub mod locks;
pub mod metrics;
pub mod names;
pub mod open;
pub mod ops;
pub mod reply;
pub mod xattr;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use fuser::{Errno, Notifier};
use quizfs_proto as pb;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::client::ClusterClient;
use cache::ChunkCache;
use files::{Io, OpenFile};
use open::Handle_;

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
    /// Answer `open(O_CREAT)` of a name just found missing before its
    /// create is committed (see `client::creates`); false: wait for it.
    pub early_create: bool,
    /// A file's uncommitted writes up to this many bytes go inside its
    /// commit rather than as an uploaded chunk (0: never).
    pub inline_max: usize,
}

impl Default for FsOptions {
    fn default() -> Self {
        Self {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            read_only: false,
            chunk_cache_bytes: 64 << 20,
            write_buffers: 16,
            early_create: true,
            inline_max: pb::MAX_INLINE_BYTES,
        }
    }
}

/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;
/// The kernel's read-ahead window: reads within twice this of where the
/// last one ended count as sequential.
pub const MAX_READ_WINDOW: u32 = 1 << 20;

/// What a request's body answers the kernel with: a value or an errno.
type OpResult<T> = Result<T, Errno>;

/// When a lookup found a name missing, and its directory's attributes.
type MissingSince = (Instant, pb::Attr);

/// The state of one mount, shared by the tasks of its requests.
#[derive(Debug)]
struct Inner {
    io: Io,
    opts: FsOptions,
    /// One state per inode open on this mount.
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
    /// Names a lookup just found missing, with when and their directory's
    /// attributes: what an early create of that name starts from.
    missing: Mutex<HashMap<(u64, Vec<u8>), MissingSince>>,
    /// Directories' attributes as the cluster last gave them (see
    /// `attr::DirSeen`), and the count of this mount's changes to names
    /// and attributes that makes them unusable.
    dirs: Mutex<HashMap<u64, attr::DirSeen>>,
    changes: AtomicU64,
    notifier: OnceLock<Notifier>,
    /// What this mount knows of its lock owners' locks.
    locks: Mutex<locks::LockBook>,
}

/// The quizfs FUSE filesystem.
#[derive(Debug)]
pub struct QuizFs {
    inner: Arc<Inner>,
    rt: Handle,
    metrics: Arc<metrics::MountMetrics>,
}

impl QuizFs {
    /// A filesystem over `client`, running its requests on `rt`.
    pub fn new(client: ClusterClient, opts: FsOptions, rt: Handle) -> Self {
        let units = opts.write_buffers.max(1) * (pb::CHUNK_SIZE / files::BUDGET_UNIT);
        let budget_units = u32::try_from(units).unwrap_or(u32::MAX);
        let cache = ChunkCache::new(opts.chunk_cache_bytes);
        let budget = Arc::new(Semaphore::new(budget_units as usize));
        let metrics = Arc::new(metrics::MountMetrics::new(
            client.clone(),
            budget.clone(),
            u64::from(budget_units) * files::BUDGET_UNIT as u64,
            cache.counters(),
        ));
        let io = Io {
            client,
            cache: Arc::new(cache),
            budget,
            budget_units,
            inline_max: opts.inline_max,
            carrying: Arc::new(Semaphore::new(files::MAX_CARRYING)),
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
                missing: Mutex::new(HashMap::new()),
                dirs: Mutex::new(HashMap::new()),
                changes: AtomicU64::new(0),
                notifier: OnceLock::new(),
                locks: Mutex::default(),
            }),
            rt,
            metrics,
        }
    }

    /// The mount's metrics, for `-o metrics=`.
    pub fn metrics(&self) -> Arc<metrics::MountMetrics> {
        self.metrics.clone()
    }

    /// A handle that can hand the notifier over after the session moved.
    pub fn notifier_slot(&self) -> NotifierSlot {
        NotifierSlot(self.inner.clone())
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

/// Locks a mutex of the mount's tables; a panicked holder left them
/// consistent (each change is one insert or remove).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn client(&self) -> &ClusterClient {
        &self.io.client
    }

    /// EROFS on a read-only mount.
    fn writable(&self) -> OpResult<()> {
        if self.opts.read_only {
            Err(errno::err(libc::EROFS))
        } else {
            Ok(())
        }
    }
}
