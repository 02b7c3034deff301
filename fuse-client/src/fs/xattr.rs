//! Extended attributes, and the cache of inodes known to have none: `ls
//! -l` asks for an ACL on every entry and every write asks for file
//! capabilities, so for an inode whose attributes said it has none, within
//! the attribute timeout, the mount answers ENODATA itself.

use std::time::Instant;

use super::errno::{err, errno};
use super::reply::Xattr;
use super::{Inner, OpResult, lock};
use quizfs_proto as pb;

/// Most inodes remembered as having no extended attributes before the
/// stale ones are dropped.
const MAX_BARE: usize = 1 << 16;

/// Extended attributes nobody asks for by name but that are read on every
/// `ls -l` entry (ACLs, the SELinux label) or every write (file
/// capabilities): for an inode known to have none, the mount answers
/// ENODATA itself.
pub fn implicit_xattr(name: &[u8]) -> bool {
    name.starts_with(b"system.posix_acl_")
        || name == b"security.selinux"
        || name == b"security.capability"
}

impl Inner {
    /// Learns from attributes whether the inode has extended attributes.
    pub(super) fn note_xattrs(&self, a: &pb::Attr) {
        let mut bare = lock(&self.bare);
        let ttl = self.opts.attr_timeout;
        let changed_here = matches!(bare.get(&a.ino), Some((false, t)) if t.elapsed() < ttl);
        if changed_here {
            return;
        }
        if a.has_xattrs {
            bare.remove(&a.ino);
        } else {
            if bare.len() >= MAX_BARE {
                bare.retain(|_, (_, t)| t.elapsed() < ttl);
            }
            bare.insert(a.ino, (true, Instant::now()));
        }
    }

    /// True when the inode's attributes, fetched within the attribute
    /// timeout, said it has no extended attributes.
    pub(super) fn known_bare(&self, ino: u64) -> bool {
        let ttl = self.opts.attr_timeout;
        lock(&self.bare)
            .get(&ino)
            .is_some_and(|&(bare, t)| bare && t.elapsed() < ttl)
    }

    /// Records that this mount is changing the inode's extended attributes.
    pub(super) fn forget_bare(&self, ino: u64) {
        lock(&self.bare).insert(ino, (false, Instant::now()));
    }

    /// setxattr; the inode is not known bare until the attribute timeout
    /// has passed since.
    pub(super) async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        self.writable()?;
        self.changing();
        let r = self.client().setxattr(ino, name, value, flags).await;
        self.changing();
        self.forget_bare(ino);
        r.map_err(errno)
    }

    /// removexattr, as setxattr.
    pub(super) async fn removexattr(&self, ino: u64, name: &[u8]) -> OpResult<()> {
        self.writable()?;
        self.changing();
        let r = self.client().removexattr(ino, name).await;
        self.changing();
        self.forget_bare(ino);
        r.map_err(errno)
    }

    /// getxattr from the cluster.
    pub(super) async fn getxattr(&self, ino: u64, name: &[u8], size: u32) -> OpResult<Xattr> {
        let data = self.client().getxattr(ino, name).await.map_err(errno)?;
        Ok(Xattr { data, size })
    }

    /// listxattr: the names, each ending in NUL.
    pub(super) async fn listxattr(&self, ino: u64, size: u32) -> OpResult<Xattr> {
        let names = self.client().listxattr(ino).await.map_err(errno)?;
        let mut data = Vec::new();
        for n in names {
            data.extend_from_slice(&n);
            data.push(0);
        }
        Ok(Xattr { data, size })
    }

    /// ENODATA without asking the cluster, when `name` is one asked for
    /// implicitly and the inode is known to have no extended attributes.
    pub(super) fn known_absent(&self, ino: u64, name: &[u8]) -> Option<fuser::Errno> {
        (implicit_xattr(name) && self.known_bare(ino)).then(|| err(libc::ENODATA))
    }
}
