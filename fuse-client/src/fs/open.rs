//! The mount's open files and handles, and close-to-open: an open reads
//! the file's layout afresh and makes the kernel's cached pages those of
//! that view (the `pages` record); flush commits the file's writes; an
//! open of a deleted inode answers ESTALE so the kernel looks the name up
//! again, and its one retry may open what that lookup found.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fuser::{Errno, FopenFlags, INodeNo};
use quizfs_proto as pb;

use super::dir::Listing;
use super::errno::{err, errno};
use super::files::OpenFile;
use super::{Inner, OpResult, lock};
use crate::client::ClientError;
use crate::client::meta::Extents;

/// Longest time between an open refused with ESTALE and the kernel's
/// retry of it (a lookup and an open, which may wait out a leader change).
const RETRY_WINDOW: Duration = Duration::from_secs(30);
/// Threads remembered as retrying an open before old entries are dropped.
const MAX_ESTALE: usize = 4096;

/// What a file handle refers to.
#[derive(Debug)]
pub enum Handle_ {
    /// An open file (its state is shared by every handle of the inode).
    File(Arc<OpenFile>),
    /// A directory being listed.
    Dir(Arc<tokio::sync::Mutex<Listing>>),
}

impl Inner {
    /// The state of `ino` if it is open on this mount.
    pub(super) fn open_file(&self, ino: u64) -> Option<Arc<OpenFile>> {
        lock(&self.files).get(&ino).cloned()
    }

    /// Whether this mount holds `ino` open.
    pub(super) fn is_open(&self, ino: u64) -> bool {
        lock(&self.files).contains_key(&ino)
    }

    /// Every file open on this mount.
    pub(super) fn open_files(&self) -> Vec<Arc<OpenFile>> {
        lock(&self.files).values().cloned().collect()
    }

    pub(super) fn add_handle(&self, h: Handle_) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, h);
        fh
    }

    /// Drops a handle (releasedir).
    pub(super) fn remove_handle(&self, fh: u64) {
        lock(&self.handles).remove(&fh);
    }

    /// Whether `f` was kept after its unlink by a session that expired:
    /// the cluster removed it, and its descriptors answer ESTALE.
    pub(super) fn is_stale(&self, f: &OpenFile) -> bool {
        let holder = f.orphan_of.load(Ordering::Relaxed);
        holder != 0 && holder != self.client().client_id()
    }

    /// The open file of handle `fh` for an operation on its content: for
    /// a file kept after its unlink, once the session that keeps it is
    /// known to exist (ESTALE if it expired).
    pub(super) async fn live_file(&self, fh: u64) -> OpResult<Arc<OpenFile>> {
        let f = self.file_of(fh)?;
        if f.orphan_of.load(Ordering::Relaxed) != 0 {
            if let Err(e) = self.client().ensure_session().await {
                tracing::debug!(error = %e, "session check failed");
            }
            if self.is_stale(&f) {
                return Err(err(libc::ESTALE));
            }
        }
        Ok(f)
    }

    /// The open file of handle `fh`.
    pub(super) fn file_of(&self, fh: u64) -> OpResult<Arc<OpenFile>> {
        match lock(&self.handles).get(&fh) {
            Some(Handle_::File(f)) => Ok(f.clone()),
            Some(Handle_::Dir(_)) => Err(err(libc::EISDIR)),
            None => Err(err(libc::EBADF)),
        }
    }

    /// open(2) of `ino` by thread `pid` with `flags`: the handle, and
    /// whether the kernel may keep its cached pages.
    pub(super) async fn open(&self, ino: u64, flags: i32, pid: u32) -> OpResult<(u64, FopenFlags)> {
        let wants_write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if wants_write {
            self.writable()?;
        }
        let (fh, keep) = self.open_ino(ino, None, pid).await?;
        if flags & libc::O_TRUNC != 0 {
            self.truncate_at_open(fh).await;
        }
        let f = if keep {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        Ok((fh, f))
    }

    /// Opens `attr.ino` on this mount: shares the state of a file already
    /// open here (and lays a newer committed view under its pending
    /// writes), else reads its layout. Returns the handle and whether the
    /// kernel's cached pages are still good.
    pub(super) async fn open_ino(
        &self,
        ino: u64,
        fresh: Option<pb::Attr>,
        pid: u32,
    ) -> OpResult<(u64, bool)> {
        let (attr, extents) = match fresh {
            Some(a) => (a, Extents::new()),
            None => match self.client().layout(ino).await {
                Ok(x) => x,
                // Gone: make the kernel look the name up again.
                Err(ClientError::Posix {
                    errno: libc::ENOENT,
                    ..
                }) => return Err(self.refuse_deleted(ino, pid)),
                Err(e) => return Err(errno(e)),
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
        let retry = lock(&self.estale).remove(&pid);
        let deleted = attr.nlink == 0 && !self.is_open(ino);
        let retried = retry.is_some_and(|(t, found)| found == ino && t.elapsed() <= RETRY_WINDOW);
        if deleted && !retried {
            return Err(self.refuse_deleted(ino, pid));
        }
        let mut extents = Some(extents);
        let file = {
            let mut files = lock(&self.files);
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
    pub(super) async fn truncate_at_open(&self, fh: u64) {
        if let Ok(f) = self.file_of(fh) {
            f.truncate(fh, 0, pb::now_ns()).await;
        }
    }

    /// ESTALE for an open of a deleted inode by thread `pid`, remembered so
    /// that the kernel's one retry of the open may open a tombstone.
    fn refuse_deleted(&self, ino: u64, pid: u32) -> Errno {
        tracing::debug!(ino, pid, "open of a deleted inode: ESTALE");
        let mut estale = lock(&self.estale);
        if estale.len() >= MAX_ESTALE {
            estale.retain(|_, (t, _)| t.elapsed() <= RETRY_WINDOW);
        }
        estale.insert(pid, (Instant::now(), 0));
        err(libc::ESTALE)
    }

    /// True while thread `pid` is in the kernel's retry of an open that
    /// was refused with ESTALE, and its fresh lookup found `ino`.
    pub(super) fn retrying(&self, pid: u32, ino: u64) -> bool {
        lock(&self.estale)
            .get(&pid)
            .is_some_and(|&(t, found)| found == ino && t.elapsed() <= RETRY_WINDOW)
    }

    /// A lookup by thread `pid`: in a retry, the name now leads to `found`
    /// (the retry ends if it leads nowhere).
    pub(super) fn looked_up(&self, pid: u32, found: Option<u64>) {
        let mut estale = lock(&self.estale);
        if let Some(r) = estale.get_mut(&pid) {
            match found {
                Some(ino) => r.1 = ino,
                None => {
                    estale.remove(&pid);
                }
            }
        }
    }

    /// The kernel dropped the inode, and with it any cached pages.
    pub(super) fn forget(&self, ino: u64) {
        lock(&self.pages).remove(&ino);
    }

    /// Makes the kernel's cached pages of `ino` those of content version
    /// `view`: kept if they are, else dropped (waiting for reads in flight
    /// to end, so none fills a page from an older view afterwards) before
    /// `view` is recorded. True when the open may tell the kernel to keep
    /// its cache; false when only the open can drop it (no notifier yet).
    pub(super) async fn pages_of(&self, ino: u64, view: u64) -> bool {
        if lock(&self.pages).get(&ino) == Some(&view) {
            return true;
        }
        let Some(n) = self.notifier.get().cloned() else {
            lock(&self.pages).insert(ino, view);
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
                lock(&self.pages).remove(&ino);
                return false;
            }
        }
        lock(&self.pages).insert(ino, view);
        true
    }

    /// Commits a file's writes (with `by`, only if that handle has any
    /// not committed: see `OpenFile::flush`); the attributes the kernel
    /// sees afterwards are the committed ones.
    pub(super) async fn flush_file(&self, f: &OpenFile, by: Option<u64>) -> OpResult<()> {
        let committed = f.flush(&self.io, by).await.map_err(|e| {
            tracing::warn!(ino = f.ino, error = %e, "commit failed");
            errno(e)
        })?;
        if let Some(c) = committed {
            // This mount's writes went through the kernel's pages: they
            // are of the new version if they were of the one the writes
            // went on.
            let mut pages = lock(&self.pages);
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

    /// The flush at every close of handle `fh`: commits the file's writes
    /// if some came through `fh`. A descriptor that only read, or whose
    /// writes another close or an fsync committed, publishes nothing, so
    /// it never makes another descriptor's half-made version (an
    /// `open(O_TRUNC)` and the writes after it) visible.
    pub(super) async fn flush(&self, fh: u64) -> OpResult<()> {
        let f = self.live_file(fh).await?;
        self.flush_file(&f, Some(fh)).await
    }

    /// fsync(2) of handle `fh`: commits every write of the file on this
    /// mount, through whichever descriptor (the file's data is durable
    /// when it returns, as on a local filesystem).
    pub(super) async fn fsync(&self, fh: u64) -> OpResult<()> {
        let f = self.live_file(fh).await?;
        self.flush_file(&f, None).await
    }

    /// The last close of a handle: commits its writes (all of the file's
    /// when it is the inode's last handle here), and when it was the
    /// last, drops its state (and the inode itself if it was deleted
    /// while open).
    pub(super) async fn release(&self, fh: u64) -> OpResult<()> {
        let Some(Handle_::File(f)) = lock(&self.handles).remove(&fh) else {
            return Ok(());
        };
        let only_mine = f.opens.load(Ordering::Relaxed) > 1;
        let flushed = if self.is_stale(&f) {
            // Gone with its session: nothing to commit it to.
            Err(err(libc::ESTALE))
        } else {
            self.flush_file(&f, only_mine.then_some(fh)).await
        };
        let last = {
            let mut files = lock(&self.files);
            let last = f.opens.fetch_sub(1, Ordering::Relaxed) == 1;
            if last {
                files.remove(&f.ino);
            }
            last
        };
        if last {
            self.client().forget_create(f.ino);
        }
        if last && f.orphan_of.load(Ordering::Relaxed) == self.client().client_id() {
            if let Err(e) = self.client().release_orphan(f.ino).await {
                tracing::warn!(ino = f.ino, error = %e, "releasing a deleted open file failed");
            }
        }
        flushed
    }
}
