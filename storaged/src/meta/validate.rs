//! Checks on every field of a metadata request, before it is proposed to
//! Raft and again when it is applied. A request that fails gets an errno and
//! changes nothing.

use quizfs_proto::extent::ExtentMap;
use quizfs_proto::{self as pb, meta_op::Op};

/// Longest extended attribute name.
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended attribute value (Linux's XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Largest total size of the extended attributes of one inode.
pub const MAX_XATTR_TOTAL: usize = 256 * 1024;

/// Checks a file name: not empty, no `/` or NUL, not `.` or `..`, at most
/// 255 bytes.
pub fn name(name: &[u8]) -> Result<(), i32> {
    if name.len() > pb::MAX_NAME_BYTES {
        return Err(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.iter().any(|&b| b == b'/' || b == 0)
    {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// Most extents one commit may carry (a mount commits a longer list in
/// several commands).
pub const MAX_COMMIT_EXTENTS: usize = 8192;

/// Checks the extents of a commit against the size it sets.
pub fn extents(extents: &[pb::Extent], size: u64) -> Result<(), i32> {
    if size > pb::MAX_FILE_SIZE {
        return Err(libc::EFBIG);
    }
    if extents.len() > MAX_COMMIT_EXTENTS {
        return Err(libc::E2BIG);
    }
    ExtentMap::from_wire(extents, size)
        .map(|_| ())
        .map_err(|_| libc::EINVAL)
}

/// fallocate: keep the size.
pub const FALLOC_FL_KEEP_SIZE: u32 = 0x01;
/// fallocate: make a hole (only with KEEP_SIZE).
pub const FALLOC_FL_PUNCH_HOLE: u32 = 0x02;
/// fallocate: the range reads as zeros.
pub const FALLOC_FL_ZERO_RANGE: u32 = 0x10;

/// Checks a fallocate mode: allocate (0), KEEP_SIZE, PUNCH_HOLE with
/// KEEP_SIZE, ZERO_RANGE with or without KEEP_SIZE; anything else is
/// EOPNOTSUPP, as Linux filesystems answer modes they lack.
fn fallocate_mode(mode: u32) -> Result<(), i32> {
    let known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
    let punch = mode & FALLOC_FL_PUNCH_HOLE != 0;
    let zero = mode & FALLOC_FL_ZERO_RANGE != 0;
    let keep = mode & FALLOC_FL_KEEP_SIZE != 0;
    if mode & !known != 0 || punch && (zero || !keep) {
        return Err(libc::EOPNOTSUPP);
    }
    Ok(())
}

/// Checks a byte range of a file: its end is a valid file size.
fn range(offset: u64, len: u64) -> Result<(), i32> {
    match offset.checked_add(len) {
        Some(end) if end <= pb::MAX_FILE_SIZE => Ok(()),
        _ => Err(libc::EFBIG),
    }
}

/// Checks every field of an operation. Ids of inodes are checked when the
/// operation is applied (ENOENT), since only the state machine knows them.
pub fn op(op: &pb::MetaOp) -> Result<(), i32> {
    let Some(op) = &op.op else {
        return Err(libc::EINVAL);
    };
    match op {
        Op::Create(c) => name(&c.name),
        Op::Mkdir(c) => name(&c.name),
        Op::Unlink(c) => name(&c.name),
        Op::Rmdir(c) => name(&c.name),
        Op::Rename(c) => {
            name(&c.name)?;
            name(&c.new_name)?;
            if c.flags & !3 != 0 || c.flags == 3 {
                return Err(libc::EINVAL);
            }
            Ok(())
        }
        Op::Link(c) => name(&c.new_name),
        Op::Symlink(c) => {
            name(&c.name)?;
            if c.target.is_empty() || c.target.contains(&0) {
                return Err(libc::EINVAL);
            }
            if c.target.len() > pb::MAX_SYMLINK_BYTES {
                return Err(libc::ENAMETOOLONG);
            }
            Ok(())
        }
        Op::SetAttr(c) => match c.size {
            Some(s) if s > pb::MAX_FILE_SIZE => Err(libc::EFBIG),
            _ => Ok(()),
        },
        Op::CommitWrite(c) => {
            if c.cut.is_some_and(|cut| cut > c.size) {
                return Err(libc::EINVAL);
            }
            if let Some(create) = &c.create {
                name(&create.name)?;
            }
            let inline: usize = c.chunks.iter().map(Vec::len).sum();
            if inline > pb::MAX_INLINE_BYTES {
                return Err(libc::E2BIG);
            }
            if c.chunks.iter().any(Vec::is_empty) {
                return Err(libc::EINVAL);
            }
            extents(&c.extents, c.size)
        }
        Op::Fallocate(c) => {
            if c.len == 0 {
                return Err(libc::EINVAL);
            }
            fallocate_mode(c.mode)?;
            range(c.offset, c.len)
        }
        Op::CopyRange(c) => {
            range(c.src_offset, c.len)?;
            range(c.dst_offset, c.len)
        }
        Op::SetXattr(c) => {
            xattr_name(&c.name)?;
            if c.value.len() > MAX_XATTR_VALUE {
                return Err(libc::E2BIG);
            }
            if c.flags & !3 != 0 || c.flags == 3 {
                return Err(libc::EINVAL);
            }
            Ok(())
        }
        Op::RemoveXattr(c) => xattr_name(&c.name),
        Op::ReserveInodes(c) if c.count == 0 || c.count > pb::MAX_RESERVE_INODES => {
            Err(libc::EINVAL)
        }
        Op::ExpireSessions(c) if c.clients.len() > super::expiry::MAX_EXPIRE => Err(libc::EINVAL),
        Op::ExpireSessions(_) => Ok(()),
        Op::SetLock(c) => {
            super::locks::kind_of(c.kind)?;
            if c.start > c.end || c.ino == 0 {
                return Err(libc::EINVAL);
            }
            Ok(())
        }
        Op::CancelLockWait(_) => Ok(()),
        Op::InitVolume(c) => {
            let r = c.replicas as usize;
            if r != 0 && !pb::placement::REPLICAS_RANGE.contains(&r) {
                return Err(libc::EINVAL);
            }
            Ok(())
        }
        Op::SetNodeRecord(c) => {
            let state = pb::NodeRecordState::try_from(c.state).map_err(|_| libc::EINVAL)?;
            let bad_addr = |a: &str| a.is_empty() || a.len() > 255 || a.contains(['/', ' ', ',']);
            if bad_addr(&c.addr)
                || (!c.replaces.is_empty() && bad_addr(&c.replaces))
                || (!c.replaces.is_empty() && state != pb::NodeRecordState::NodeAdmitted)
            {
                return Err(libc::EINVAL);
            }
            Ok(())
        }
        Op::RegisterClient(_)
        | Op::AllocNodeId(_)
        | Op::ReleaseOrphan(_)
        | Op::TouchSession(_)
        | Op::ReserveInodes(_) => Ok(()),
    }
}

/// Checks an extended attribute name.
pub fn xattr_name(name: &[u8]) -> Result<(), i32> {
    if name.is_empty() || name.contains(&0) {
        return Err(libc::EINVAL);
    }
    if name.len() > MAX_XATTR_NAME {
        return Err(libc::ERANGE);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::name;

    #[test]
    fn names_are_checked_like_linux() {
        assert_eq!(name(b"photo.jpg"), Ok(()));
        assert_eq!(name(&[b'a'; 255]), Ok(()));
        assert_eq!(name(&[b'a'; 256]), Err(libc::ENAMETOOLONG));
        for bad in [b"".as_slice(), b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(name(bad), Err(libc::EINVAL), "{bad:?}");
        }
    }
}
