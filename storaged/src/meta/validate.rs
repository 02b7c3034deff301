//! Checks on every field of a metadata request, before it is proposed to
//! Raft and again when it is applied. A request that fails gets an errno and
//! changes nothing.

use quizfs_proto::{self as pb, meta_op::Op};

/// Longest extended attribute name.
pub const MAX_XATTR_NAME: usize = 255;
/// Largest extended attribute value (Linux's XATTR_SIZE_MAX).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Largest total size of the extended attributes of one inode.
pub const MAX_XATTR_TOTAL: usize = 256 * 1024;
/// Most chunks a file can have (MAX_FILE_SIZE / CHUNK_SIZE).
pub const MAX_CHUNKS: u64 = pb::MAX_FILE_SIZE / pb::CHUNK_SIZE as u64;

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

/// Checks a chunk list against the size it describes.
pub fn chunks(chunks: &[pb::ChunkRef], size: u64) -> Result<(), i32> {
    if size > pb::MAX_FILE_SIZE {
        return Err(libc::EFBIG);
    }
    let chunk = pb::CHUNK_SIZE as u64;
    if chunks.len() as u64 > size.div_ceil(chunk) {
        return Err(libc::EINVAL);
    }
    entries(chunks)
}

/// Checks each chunk reference on its own: a 32-byte hash, or a hole of
/// length 0; never longer than a chunk.
fn entries(chunks: &[pb::ChunkRef]) -> Result<(), i32> {
    let chunk = pb::CHUNK_SIZE as u64;
    for c in chunks {
        let hole = c.hash.is_empty();
        if (!hole && c.hash.len() != 32) || c.len > chunk || (hole && c.len != 0) {
            return Err(libc::EINVAL);
        }
    }
    Ok(())
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
        Op::CommitWrite(c) if c.indices.is_empty() => chunks(&c.chunks, c.size),
        Op::CommitWrite(c) => {
            if c.size > pb::MAX_FILE_SIZE {
                return Err(libc::EFBIG);
            }
            let count = c.size.div_ceil(pb::CHUNK_SIZE as u64);
            if c.indices.len() != c.chunks.len() || c.indices.iter().any(|&i| i >= count) {
                return Err(libc::EINVAL);
            }
            entries(&c.chunks)
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
        Op::RegisterClient(_) | Op::AllocNodeId(_) | Op::InitVolume(_) | Op::ReleaseOrphan(_) => {
            Ok(())
        }
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
