//! Changing an inode in place: setattr (chmod, chown, truncate, utimes),
//! the commit of a write, and extended attributes.

use quizfs_proto as pb;

use super::{Ctx, change_refs, load, save};
use crate::meta::schema::{ChunkEntry, S_IFMT};
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
        if inode.is_dir() {
            return Err(Fail::Posix(libc::EISDIR));
        }
        if !inode.is_file() {
            return Err(Fail::Posix(libc::EINVAL));
        }
        if size < inode.size {
            let chunk = pb::CHUNK_SIZE as u64;
            let keep = size.div_ceil(chunk) as usize;
            if inode.chunks.len() > keep {
                let dropped: Vec<ChunkEntry> = inode.chunks.drain(keep..).collect();
                change_refs(txn, &dropped, -1)?;
            }
            if let Some(last) = inode.chunks.last_mut() {
                let start = (keep as u64 - 1) * chunk;
                last.len = last.len.min(size - start);
            }
        }
        inode.size = size;
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

/// Replaces a file's chunk list and size after its new chunks are durable.
pub(super) fn commit_write(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    c: &pb::CommitWrite,
) -> OpResult<pb::Attr> {
    let mut inode = load(txn, c.ino)?;
    if inode.is_dir() {
        return Err(Fail::Posix(libc::EISDIR));
    }
    if !inode.is_file() {
        return Err(Fail::Posix(libc::EINVAL));
    }
    let mut given = Vec::with_capacity(c.chunks.len());
    for r in &c.chunks {
        let hash = if r.hash.is_empty() {
            None
        } else {
            Some(<[u8; 32]>::try_from(r.hash.as_slice()).map_err(|_| Fail::Posix(libc::EINVAL))?)
        };
        given.push(ChunkEntry { hash, len: r.len });
    }
    let mut chunks = if c.indices.is_empty() {
        given
    } else {
        let mut list = inode.chunks.clone();
        for (&i, entry) in c.indices.iter().zip(given) {
            let i = usize::try_from(i).map_err(|_| Fail::Posix(libc::EINVAL))?;
            if list.len() <= i {
                list.resize(i + 1, ChunkEntry::default());
            }
            list[i] = entry;
        }
        list
    };
    cut_to_size(&mut chunks, c.size);
    change_refs(txn, &chunks, 1)?;
    change_refs(txn, &inode.chunks, -1)?;
    inode.chunks = chunks;
    inode.size = c.size;
    inode.mtime_ns = c.mtime_ns.unwrap_or(ctx.now_ns);
    inode.ctime_ns = ctx.now_ns;
    save(txn, c.ino, &inode);
    Ok(inode.attr(c.ino))
}

/// Drops the chunks that start at or past `size` and shortens the one
/// that crosses it.
fn cut_to_size(chunks: &mut Vec<ChunkEntry>, size: u64) {
    let chunk = pb::CHUNK_SIZE as u64;
    chunks.truncate(size.div_ceil(chunk) as usize);
    for (i, c) in chunks.iter_mut().enumerate() {
        c.len = c.len.min(size.saturating_sub(i as u64 * chunk));
    }
    while chunks.last().is_some_and(|c| c.hash.is_none()) {
        chunks.pop();
    }
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
