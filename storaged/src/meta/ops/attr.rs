//! Changing an inode in place: setattr (chmod, chown, truncate, utimes)
//! and extended attributes.

use quizfs_proto as pb;

use super::{Ctx, load, save};
use crate::meta::schema::S_IFMT;
use crate::meta::txn::{Fail, OpResult, Txn};
use crate::meta::validate::MAX_XATTR_TOTAL;

const XATTR_CREATE: u32 = 1;
const XATTR_REPLACE: u32 = 2;

fn pick_time(t: &Option<pb::SetTime>, now: i64) -> Option<i64> {
    t.as_ref().map(|t| if t.now { now } else { t.ns })
}

/// Applies the fields of a setattr that are present.
pub(super) fn set_attr(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::SetAttr) -> OpResult<pb::Attr> {
    let mut inode = load(txn, c.ino)?;
    if let Some(size) = c.size {
        super::content::resize(txn, &mut inode, size)?;
        inode.mtime_ns = ctx.now_ns;
    }
    if let Some(mode) = c.mode {
        inode.mode = (inode.mode & S_IFMT) | (mode & 0o7777);
    }
    if let Some(uid) = c.uid {
        inode.uid = uid;
    }
    if let Some(gid) = c.gid {
        inode.gid = gid;
    }
    if let Some(t) = pick_time(&c.atime, ctx.now_ns) {
        inode.atime_ns = t;
    }
    if let Some(t) = pick_time(&c.mtime, ctx.now_ns) {
        inode.mtime_ns = t;
    }
    inode.ctime_ns = ctx.now_ns;
    save(txn, c.ino, &inode);
    Ok(inode.attr(c.ino))
}

/// Sets an extended attribute, honouring XATTR_CREATE and XATTR_REPLACE.
pub(super) fn set_xattr(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::SetXattr) -> OpResult<()> {
    let mut inode = load(txn, c.ino)?;
    let exists = inode.xattrs.contains_key(&c.name);
    if c.flags & XATTR_CREATE != 0 && exists {
        return Err(Fail::Posix(libc::EEXIST));
    }
    if c.flags & XATTR_REPLACE != 0 && !exists {
        return Err(Fail::Posix(libc::ENODATA));
    }
    let old = inode
        .xattrs
        .get(&c.name)
        .map_or(0, |v| c.name.len() + v.len());
    let total: usize = inode.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total - old + c.name.len() + c.value.len() > MAX_XATTR_TOTAL {
        return Err(Fail::Posix(libc::ENOSPC));
    }
    inode.xattrs.insert(c.name.clone(), c.value.clone());
    inode.ctime_ns = ctx.now_ns;
    save(txn, c.ino, &inode);
    Ok(())
}

/// Removes an extended attribute.
pub(super) fn remove_xattr(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::RemoveXattr) -> OpResult<()> {
    let mut inode = load(txn, c.ino)?;
    if inode.xattrs.remove(&c.name).is_none() {
        return Err(Fail::Posix(libc::ENODATA));
    }
    inode.ctime_ns = ctx.now_ns;
    save(txn, c.ino, &inode);
    Ok(())
}
