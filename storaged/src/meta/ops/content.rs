//! Changing a file's content: the commit of writes, a new size, fallocate
//! and copy_file_range. Each one edits the file's extent map with the
//! shared rules of `quizfs_proto::extent` and keeps the chunk reference
//! counts exact: a chunk's count is the number of extents, over every
//! file, that use it.

use quizfs_proto::extent::ExtentMap;
use quizfs_proto::{self as pb, ChunkHash};

use super::{Ctx, change_refs, load, save};
use crate::meta::schema::Inode;
use crate::meta::txn::{Fail, OpResult, Txn};
use crate::meta::validate::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE};

/// A regular file's content can change: EISDIR for a directory, EINVAL
/// for anything else.
fn check_file(inode: &Inode) -> OpResult<()> {
    if inode.is_dir() {
        return Err(Fail::Posix(libc::EISDIR));
    }
    if !inode.is_file() {
        return Err(Fail::Posix(libc::EINVAL));
    }
    Ok(())
}

/// Loads a regular file (see [`check_file`]).
fn load_file(txn: &Txn<'_>, ino: u64) -> OpResult<Inode> {
    let inode = load(txn, ino)?;
    check_file(&inode)?;
    Ok(inode)
}

/// Gives the inode new content and moves the reference counts from the
/// old extents to the new ones.
fn set_content(
    txn: &mut Txn<'_>,
    inode: &mut Inode,
    extents: ExtentMap<ChunkHash>,
) -> OpResult<()> {
    change_refs(txn, &inode.extents.refs(), &extents.refs())?;
    inode.extents = extents;
    inode.content_version += 1;
    Ok(())
}

/// Sets a file's size (truncate): content past it is cut.
pub(super) fn resize(txn: &mut Txn<'_>, inode: &mut Inode, size: u64) -> OpResult<()> {
    check_file(inode)?;
    let mut extents = inode.extents.clone();
    extents.cut(size);
    set_content(txn, inode, extents)?;
    inode.size = size;
    Ok(())
}

/// Splices the extents of durable writes into a file and sets its size.
pub(super) fn commit_write(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    c: &pb::CommitWrite,
) -> OpResult<pb::Attr> {
    let mut inode = load_file(txn, c.ino)?;
    if c.if_version.is_some_and(|v| v != inode.content_version) {
        return Err(Fail::Posix(libc::ESTALE));
    }
    let given = ExtentMap::from_wire(&c.extents, c.size).map_err(|_| Fail::Posix(libc::EINVAL))?;
    let mut extents = inode.extents.clone();
    if let Some(cut) = c.cut {
        extents.cut(cut);
    }
    extents.overlay(&given);
    extents.cut(c.size);
    set_content(txn, &mut inode, extents)?;
    inode.size = c.size;
    inode.mtime_ns = c.mtime_ns.unwrap_or(ctx.now_ns);
    inode.ctime_ns = ctx.now_ns;
    save(txn, c.ino, &inode);
    Ok(inode.attr(c.ino))
}

/// fallocate: allocation changes only the size (quizfs stores no zeros),
/// a punch or a zeroed range becomes a hole. The mode was checked by
/// `validate::op` (before the command was proposed and again here).
pub(super) fn fallocate(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::Fallocate) -> OpResult<pb::Attr> {
    let mut inode = load_file(txn, c.ino)?;
    let end = c
        .offset
        .checked_add(c.len)
        .filter(|&e| e <= pb::MAX_FILE_SIZE)
        .ok_or(Fail::Posix(libc::EFBIG))?;
    let keep_size = c.mode & FALLOC_FL_KEEP_SIZE != 0;
    let punch = c.mode & FALLOC_FL_PUNCH_HOLE != 0;
    let zero = c.mode & FALLOC_FL_ZERO_RANGE != 0;
    if punch || zero {
        let mut extents = inode.extents.clone();
        extents.punch(c.offset, end);
        set_content(txn, &mut inode, extents)?;
        inode.mtime_ns = ctx.now_ns;
    }
    if !keep_size && end > inode.size {
        inode.size = end;
        inode.mtime_ns = ctx.now_ns;
        if !(punch || zero) {
            inode.content_version += 1;
        }
    }
    inode.ctime_ns = ctx.now_ns;
    save(txn, c.ino, &inode);
    Ok(inode.attr(c.ino))
}

/// copy_file_range: shares the source's extents into the destination.
/// The range is copied as the source holds it when the command applies;
/// the destination grows to cover it.
/// Returns the destination's attributes and the bytes copied.
pub(super) fn copy_range(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    c: &pb::CopyRange,
) -> OpResult<(pb::Attr, u64)> {
    let src = load_file(txn, c.src)?;
    let mut dst = if c.dst == c.src {
        src.clone()
    } else {
        load_file(txn, c.dst)?
    };
    let dst_end = c
        .dst_offset
        .checked_add(c.len)
        .filter(|&e| e <= pb::MAX_FILE_SIZE)
        .ok_or(Fail::Posix(libc::EFBIG))?;
    if c.src == c.dst && c.src_offset.abs_diff(c.dst_offset) < c.len {
        return Err(Fail::Posix(libc::EINVAL));
    }
    // Bytes past the source's end are not copied (a short copy).
    let len = c.len.min(src.size.saturating_sub(c.src_offset));
    let mut extents = dst.extents.clone();
    extents.copy_from(&src.extents, c.src_offset, c.dst_offset, len);
    set_content(txn, &mut dst, extents)?;
    if len > 0 {
        dst.size = dst.size.max(dst_end.min(c.dst_offset + len));
        dst.mtime_ns = ctx.now_ns;
    }
    dst.ctime_ns = ctx.now_ns;
    save(txn, c.dst, &dst);
    Ok((dst.attr(c.dst), len))
}
