//! Changes to the namespace and lookups: every one is a metadata command
//! or query; removing the last name of a file open here keeps it readable
//! until its last close (an orphan).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quizfs_proto::{self as pb, meta_op::Op};

use super::errno::{err, errno};
use super::reply::{Created, Entry};
use super::{Inner, OpResult, lock};

/// How long a lookup's "no such name" may start an early create.
const MISSING_FRESH: Duration = Duration::from_secs(1);
/// Most missing names remembered.
const MAX_MISSING: usize = 4096;

impl Inner {
    /// A name's entry for the kernel.
    pub(super) fn entry(&self, a: &pb::Attr) -> Entry {
        Entry {
            ttl: self.opts.entry_timeout,
            attr: self.file_attr(a),
            generation: a.generation,
        }
    }

    /// Applies a command whose reply carries the inode's attributes.
    pub(super) async fn apply_attr(&self, name: &'static str, op: Op) -> OpResult<pb::Attr> {
        self.changing();
        let r = self.client().apply_attr(name, op).await.map_err(errno);
        self.changing();
        r
    }

    /// Applies a command whose reply carries only an errno.
    async fn apply_unit(&self, name: &'static str, op: Op) -> OpResult<()> {
        self.changing();
        let r = self.client().apply_unit(name, op).await.map_err(errno);
        self.changing();
        r
    }

    /// Applies a command that makes a name (mknod, mkdir, symlink).
    pub(super) async fn new_entry(&self, name: &'static str, op: Op) -> OpResult<Entry> {
        self.writable()?;
        let a = self.apply_attr(name, op).await?;
        Ok(self.entry(&a))
    }

    /// lookup(2) by thread `pid` (see `open` for why the thread matters).
    pub(super) async fn lookup(&self, parent: u64, name: &[u8], pid: u32) -> OpResult<Entry> {
        let since = self.changes();
        let r = match self.client().lookup_or_dir(parent, name).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(dir)) => {
                self.saw_dir(&dir, since);
                self.note_missing(parent, name, dir);
                Err(err(libc::ENOENT))
            }
            Err(e) => Err(errno(e)),
        };
        tracing::trace!(parent, name = %String::from_utf8_lossy(name), ino = ?r.as_ref().map(|a| a.ino), "lookup");
        self.looked_up(pid, r.as_ref().ok().map(|a| a.ino));
        Ok(self.entry(&r?))
    }

    /// Records that `parent` had no `name` just now, and its attributes.
    fn note_missing(&self, parent: u64, name: &[u8], dir: pb::Attr) {
        if !self.opts.early_create || self.opts.read_only {
            return;
        }
        let mut missing = lock(&self.missing);
        if missing.len() >= MAX_MISSING {
            missing.retain(|_, (t, _)| t.elapsed() < MISSING_FRESH);
        }
        if missing.len() < MAX_MISSING {
            missing.insert((parent, name.to_vec()), (Instant::now(), dir));
        }
    }

    /// The attributes of `parent` if a lookup found it without `name` just
    /// now (the record is used up).
    fn just_missing(&self, parent: u64, name: &[u8]) -> Option<pb::Attr> {
        let (t, dir) = lock(&self.missing).remove(&(parent, name.to_vec()))?;
        (t.elapsed() < MISSING_FRESH).then_some(dir)
    }

    /// create(2), opening the file: by thread `pid`, with open `flags`.
    /// A create of a name a lookup just found missing (not `O_EXCL`) is
    /// answered at once and committed in the background, before any later
    /// command of this mount and before the file's close returns (see
    /// `client::creates`).
    pub(super) async fn create(&self, op: pb::Create, flags: i32, pid: u32) -> OpResult<Created> {
        self.writable()?;
        if !op.exclusive {
            if let Some(dir) = self.just_missing(op.parent, &op.name) {
                return self.create_early(op, dir, pid).await;
            }
        }
        let attr = self.apply_attr("create", Op::Create(op)).await?;
        // A new file has no chunks; an existing one (no O_EXCL) is read.
        let fresh = (attr.size == 0).then_some(attr);
        let (fh, _) = self.open_ino(attr.ino, fresh, pid).await?;
        // O_TRUNC on a file that existed after all.
        if flags & libc::O_TRUNC != 0 && attr.size > 0 {
            self.truncate_at_open(fh).await;
        }
        Ok(Created {
            entry: self.entry(&attr),
            fh,
        })
    }

    /// The early create: the new file's attributes as the cluster will
    /// make them (a set-group-id directory gives its group), from a
    /// number this client reserved.
    async fn create_early(&self, op: pb::Create, dir: pb::Attr, pid: u32) -> OpResult<Created> {
        let now = pb::now_ns();
        let gid = if dir.mode & libc::S_ISGID != 0 {
            dir.gid
        } else {
            op.gid
        };
        let mut attr = pb::Attr {
            mode: op.mode,
            uid: op.uid,
            gid,
            nlink: 1,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            ..Default::default()
        };
        let parent = op.parent;
        attr.ino = self.client().create_early(op).await.map_err(errno)?;
        self.dir_gained(parent, now);
        let (fh, _) = self.open_ino(attr.ino, Some(attr), pid).await?;
        Ok(Created {
            entry: self.entry(&attr),
            fh,
        })
    }

    /// link(2).
    pub(super) async fn link(&self, ino: u64, new_parent: u64, new_name: &[u8]) -> OpResult<Entry> {
        self.writable()?;
        self.changing();
        let a = self.client().link(ino, new_parent, new_name).await;
        self.changing();
        Ok(self.entry(&a.map_err(errno)?))
    }

    /// unlink(2).
    pub(super) async fn unlink(&self, parent: u64, name: Vec<u8>) -> OpResult<()> {
        self.writable()?;
        let keep = self.open_target(parent, &name).await;
        let op = Op::Unlink(pb::Unlink {
            parent,
            name,
            keep_open_ino: keep,
        });
        self.apply_unit("unlink", op).await?;
        self.mark_orphan(keep);
        Ok(())
    }

    /// rmdir(2).
    pub(super) async fn rmdir(&self, parent: u64, name: &[u8]) -> OpResult<()> {
        self.writable()?;
        self.changing();
        let r = self.client().rmdir(parent, name).await.map_err(errno);
        self.changing();
        r
    }

    /// rename(2) with its flags (RENAME_WHITEOUT is not supported).
    pub(super) async fn rename(&self, mut r: pb::Rename) -> OpResult<()> {
        self.writable()?;
        if r.flags & libc::RENAME_WHITEOUT != 0 {
            return Err(err(libc::EINVAL));
        }
        r.keep_open_ino = if r.flags & libc::RENAME_EXCHANGE != 0 {
            0
        } else {
            self.open_target(r.new_parent, &r.new_name).await
        };
        let keep = r.keep_open_ino;
        self.apply_unit("rename", Op::Rename(r)).await?;
        self.mark_orphan(keep);
        Ok(())
    }

    /// access(2) of `ino` for `uid`/`gid` with `mask`.
    pub(super) async fn access(&self, ino: u64, uid: u32, gid: u32, mask: u32) -> OpResult<()> {
        let a = self.client().getattr(ino).await.map_err(errno)?;
        if mask & 2 != 0 && self.opts.read_only {
            Err(err(libc::EROFS))
        } else if super::attr::may_access(&a, uid, gid, mask) {
            Ok(())
        } else {
            Err(err(libc::EACCES))
        }
    }

    /// The inode at `parent/name` if this mount holds it open: removing its
    /// last name must then keep it readable until close.
    async fn open_target(&self, parent: u64, name: &[u8]) -> u64 {
        if lock(&self.files).is_empty() {
            return 0;
        }
        match self.client().lookup(parent, name).await {
            Ok(a) if self.is_open(a.ino) => a.ino,
            _ => 0,
        }
    }

    /// Marks the open file `ino` (0: none) as having lost its last name.
    fn mark_orphan(&self, ino: u64) {
        if ino != 0 {
            if let Some(f) = self.open_file(ino) {
                f.orphan_of
                    .store(self.client().client_id(), Ordering::Relaxed);
            }
        }
    }
}
