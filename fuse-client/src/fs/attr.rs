//! Attributes as the kernel sees them: the cluster's, with the size and
//! mtime of writes this mount has not committed yet; getattr (with the
//! last attributes of an open file when the cluster cannot answer) and
//! setattr (a truncation through a descriptor waits for the commit).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};
use quizfs_proto::{self as pb, meta_op::Op};

use super::errno::{err, errno};
use super::open::Handle_;
use super::{Inner, OpResult, lock};
use crate::client::ClientError;

/// Most directories whose attributes are kept.
const MAX_DIRS: usize = 4096;

/// A directory's attributes from the cluster, kept for the kernel's next
/// GETATTR of it: the kernel drops its copy after every create in the
/// directory and asks again at the next path walk through it (an upload
/// each). Answered here only while younger than the attribute timeout
/// (the staleness the kernel's own cache allows) and while this mount
/// has changed no name or attribute since, except by early creates,
/// which set the directory's times as the cluster will.
#[derive(Debug, Clone, Copy)]
pub(super) struct DirSeen {
    at: Instant,
    changes: u64,
    attr: pb::Attr,
}

/// Block size reported to applications (stdio and cp size buffers by it).
const BLKSIZE: u32 = 1 << 20;

/// A time of the cluster's (ns since the epoch) as the kernel's.
fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// A time of the kernel's as ns since the epoch.
fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

/// The file type in a mode.
pub fn kind_of(mode: u32) -> FileType {
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

/// A time setattr was given, as the cluster takes it.
pub fn set_time(t: Option<TimeOrNow>) -> Option<pb::SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => pb::SetTime { now: true, ns: 0 },
        TimeOrNow::SpecificTime(t) => pb::SetTime {
            now: false,
            ns: ns_of(t),
        },
    })
}

/// Attributes that say only the inode and its kind.
pub fn placeholder_attr(ino: u64, kind: FileType) -> FileAttr {
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

/// Checks `mask` (R_OK 4, W_OK 2, X_OK 1) against an inode's mode for a
/// caller, the way the kernel's generic permission check does.
pub fn may_access(a: &pb::Attr, uid: u32, gid: u32, mask: u32) -> bool {
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

impl Inner {
    /// The attributes the kernel gets: the cluster's, with the size and
    /// mtime of writes this mount has not committed yet. Every attribute
    /// reply goes through here, so the open file's last attributes and the
    /// extended-attribute cache learn from it.
    pub(super) fn file_attr(&self, a: &pb::Attr) -> FileAttr {
        let mut size = a.size;
        let mut mtime = a.mtime_ns;
        if let Some(f) = self.open_file(a.ino) {
            *lock(&f.last_attr) = Some(*a);
            if f.changed.load(Ordering::Relaxed) {
                size = f.local_size.load(Ordering::Relaxed);
                mtime = mtime.max(f.local_mtime.load(Ordering::Relaxed));
            }
        }
        self.note_xattrs(a);
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

    /// An attribute reply: how long the kernel may keep it, and what it is.
    pub(super) fn attr_reply(&self, a: &pb::Attr) -> (Duration, FileAttr) {
        (self.opts.attr_timeout, self.file_attr(a))
    }

    /// getattr. For a file open on this mount, the cluster gets its
    /// patience (see `ClusterClient::patience`) to answer; if it cannot
    /// (or fails), the attributes last seen are answered, so that reading
    /// a file opened before two nodes failed goes on (the kernel asks for
    /// the size at end of file). Other inodes wait for the cluster as every
    /// metadata read does. `pid` is the asking thread (see `open`).
    pub(super) async fn getattr(&self, ino: u64, pid: u32) -> OpResult<(Duration, FileAttr)> {
        if let Some(a) = self.kept_dir(ino) {
            return Ok(self.attr_reply(&a));
        }
        let answer = match self.open_file(ino) {
            None => {
                let since = self.changes();
                let r = self.client().getattr(ino).await;
                if let Ok(a) = &r {
                    self.saw_dir(a, since);
                }
                Some(r)
            }
            Some(f) => {
                let patience = self.client().patience();
                let r = tokio::time::timeout(patience, self.client().getattr(ino)).await;
                let last = *lock(&f.last_attr);
                match r {
                    // Deleted on another mount while open here: as on a
                    // local filesystem, the descriptor's file has no link
                    // (the kernel asks at every read at the end).
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
                                ino,
                                "no answer from the cluster; last attributes of the open file"
                            );
                            Some(Ok(a))
                        }
                        None => r.ok(),
                    },
                }
            }
        };
        match answer.ok_or_else(|| err(libc::ETIMEDOUT))? {
            Ok(a) => Ok(self.attr_reply(&a)),
            Err(ClientError::Posix {
                errno: libc::ENOENT,
                ..
            }) => {
                // In the kernel's retry of an open (see `open_ino`), the
                // inode the fresh lookup found may be deleted in turn
                // before its attributes are asked for: its tombstone
                // answers, as the open will.
                if self.retrying(pid, ino) {
                    if let Ok((a, _)) = self.client().layout(ino).await {
                        return Ok(self.attr_reply(&a));
                    }
                }
                tracing::debug!(ino, "getattr of a deleted inode: ESTALE");
                Err(err(libc::ESTALE))
            }
            Err(e) => Err(errno(e)),
        }
    }

    /// The count of this mount's changes to names and attributes.
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Counts a change to names or attributes: called before it is sent
    /// and after it is answered, so that no directory attributes read
    /// meanwhile are kept.
    pub(super) fn changing(&self) {
        self.changes.fetch_add(1, Ordering::SeqCst);
    }

    /// Keeps `a` if it is a directory's, from a reply to a request sent
    /// when the change count was `since`.
    pub(super) fn saw_dir(&self, a: &pb::Attr, since: u64) {
        if a.mode & libc::S_IFMT != libc::S_IFDIR || self.opts.attr_timeout.is_zero() {
            return;
        }
        let mut dirs = lock(&self.dirs);
        if self.changes() != since {
            return;
        }
        if dirs.len() >= MAX_DIRS {
            dirs.clear();
        }
        dirs.insert(
            a.ino,
            DirSeen {
                at: Instant::now(),
                changes: since,
                attr: *a,
            },
        );
    }

    /// An early create in `dir` at `now_ns`: the kept attributes take the
    /// times the cluster sets.
    pub(super) fn dir_gained(&self, dir: u64, now_ns: i64) {
        if let Some(d) = lock(&self.dirs).get_mut(&dir) {
            d.attr.mtime_ns = now_ns;
            d.attr.ctime_ns = now_ns;
        }
    }

    /// The kept attributes of directory `ino`, while they may be answered.
    fn kept_dir(&self, ino: u64) -> Option<pb::Attr> {
        let mut dirs = lock(&self.dirs);
        let d = *dirs.get(&ino)?;
        if d.changes == self.changes() && d.at.elapsed() < self.opts.attr_timeout {
            Some(d.attr)
        } else {
            dirs.remove(&ino);
            None
        }
    }

    /// setattr. ftruncate or open(O_TRUNC) on a descriptor of this file,
    /// changing nothing but the size (and the mtime to now), is held with
    /// the pending writes until the commit. Anything else goes now, after
    /// the pending writes.
    pub(super) async fn setattr(
        &self,
        ino: u64,
        set: pb::SetAttr,
        fh: Option<u64>,
    ) -> OpResult<(Duration, FileAttr)> {
        self.writable()?;
        let open = self.open_file(ino);
        tracing::trace!(ino, ?set, ?fh, open = open.is_some(), "setattr");
        let (Some(f), Some(size)) = (open, set.size) else {
            let a = self.apply_attr("setattr", Op::SetAttr(set)).await?;
            return Ok(self.attr_reply(&a));
        };
        let by_descriptor = fh.is_some_and(
            |fh| matches!(lock(&self.handles).get(&fh), Some(Handle_::File(h)) if h.ino == ino),
        );
        let only_size = set.mode.is_none()
            && set.uid.is_none()
            && set.gid.is_none()
            && set.atime.is_none()
            && set.mtime.as_ref().is_none_or(|t| t.now);
        let last = *lock(&f.last_attr);
        let a = match (last, fh) {
            (Some(mut a), Some(fh)) if by_descriptor && only_size => {
                let now = pb::now_ns();
                f.truncate(fh, size, now).await;
                a.ctime_ns = now;
                a
            }
            _ => f.truncate_now(&self.io, set).await.map_err(errno)?,
        };
        Ok(self.attr_reply(&a))
    }
}
