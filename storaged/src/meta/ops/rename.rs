//! rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, for files and
//! directories, refusing to move a directory into itself.

use quizfs_proto as pb;

use super::{Ctx, drop_link, entry, load, load_dir, save};
use crate::meta::schema::{DirEntryRec, S_IFDIR, dirent_key};
use crate::meta::txn::{Fail, OpResult, Txn};

const RENAME_NOREPLACE: u32 = 1;
const RENAME_EXCHANGE: u32 = 2;

/// Whether `dir` is `ancestor` or lies below it, following parent links.
fn is_within(txn: &Txn<'_>, mut dir: u64, ancestor: u64) -> OpResult<bool> {
    // Parent links end at the root, which is its own parent; the bound
    // guards against a corrupt loop.
    for _ in 0..100_000 {
        if dir == ancestor {
            return Ok(true);
        }
        let parent = load(txn, dir)?.parent;
        if parent == dir {
            return Ok(false);
        }
        dir = parent;
    }
    Err(Fail::Posix(libc::ELOOP))
}

/// Points a directory entry at a (possibly moved) child, fixing the moved
/// directory's parent link and the link counts of both parents.
fn place(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    rec: DirEntryRec,
    from_parent: u64,
    to_parent: u64,
    to_name: &[u8],
) -> OpResult<()> {
    txn.put(&dirent_key(to_parent, to_name), &rec);
    let mut child = load(txn, rec.ino)?;
    child.ctime_ns = ctx.now_ns;
    if rec.kind == S_IFDIR && from_parent != to_parent {
        child.parent = to_parent;
        save(txn, rec.ino, &child);
        let mut from = load(txn, from_parent)?;
        from.nlink = from.nlink.saturating_sub(1);
        save(txn, from_parent, &from);
        let mut to = load(txn, to_parent)?;
        to.nlink += 1;
        save(txn, to_parent, &to);
    } else {
        save(txn, rec.ino, &child);
    }
    Ok(())
}

fn touch_dir(txn: &mut Txn<'_>, ctx: &Ctx, ino: u64, entries_delta: i64) -> OpResult<()> {
    let mut dir = load(txn, ino)?;
    dir.entries = dir.entries.saturating_add_signed(entries_delta);
    dir.mtime_ns = ctx.now_ns;
    dir.ctime_ns = ctx.now_ns;
    save(txn, ino, &dir);
    Ok(())
}

/// Renames `parent/name` to `new_parent/new_name`.
pub(super) fn rename(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::Rename) -> OpResult<()> {
    load_dir(txn, c.parent)?;
    load_dir(txn, c.new_parent)?;
    let src = entry(txn, c.parent, &c.name)?.ok_or(Fail::Posix(libc::ENOENT))?;
    let dst = entry(txn, c.new_parent, &c.new_name)?;
    let same_name = c.parent == c.new_parent && c.name == c.new_name;

    // A directory may not move below itself (also covers new_parent == src).
    let moves_into_itself = |txn: &Txn<'_>, rec: &DirEntryRec, to: u64| -> OpResult<bool> {
        Ok(rec.kind == S_IFDIR && is_within(txn, to, rec.ino)?)
    };

    if c.flags & RENAME_EXCHANGE != 0 {
        let dst = dst.ok_or(Fail::Posix(libc::ENOENT))?;
        if same_name || src.ino == dst.ino {
            return Ok(());
        }
        if moves_into_itself(txn, &src, c.new_parent)? || moves_into_itself(txn, &dst, c.parent)? {
            return Err(Fail::Posix(libc::EINVAL));
        }
        place(txn, ctx, src, c.parent, c.new_parent, &c.new_name)?;
        place(txn, ctx, dst, c.new_parent, c.parent, &c.name)?;
        touch_dir(txn, ctx, c.parent, 0)?;
        touch_dir(txn, ctx, c.new_parent, 0)?;
        return Ok(());
    }

    if let Some(dst) = dst {
        if c.flags & RENAME_NOREPLACE != 0 {
            return Err(Fail::Posix(libc::EEXIST));
        }
        // Two names of one inode: POSIX says do nothing.
        if same_name || dst.ino == src.ino {
            return Ok(());
        }
        match (src.kind == S_IFDIR, dst.kind == S_IFDIR) {
            (true, false) => return Err(Fail::Posix(libc::ENOTDIR)),
            (false, true) => return Err(Fail::Posix(libc::EISDIR)),
            (true, true) if load(txn, dst.ino)?.entries > 0 => {
                return Err(Fail::Posix(libc::ENOTEMPTY));
            }
            _ => {}
        }
        if moves_into_itself(txn, &src, c.new_parent)? {
            return Err(Fail::Posix(libc::EINVAL));
        }
        // The replaced name goes away: its inode loses a link, and a replaced
        // directory takes its parent's link with it.
        if dst.kind == S_IFDIR {
            let mut p = load(txn, c.new_parent)?;
            p.nlink = p.nlink.saturating_sub(1);
            save(txn, c.new_parent, &p);
        }
        drop_link(txn, ctx, dst.ino, c.keep_open_ino)?;
        txn.remove(&dirent_key(c.parent, &c.name));
        place(txn, ctx, src, c.parent, c.new_parent, &c.new_name)?;
        touch_dir(txn, ctx, c.parent, -1)?;
        touch_dir(txn, ctx, c.new_parent, 0)?;
        return Ok(());
    }

    if moves_into_itself(txn, &src, c.new_parent)? {
        return Err(Fail::Posix(libc::EINVAL));
    }
    txn.remove(&dirent_key(c.parent, &c.name));
    place(txn, ctx, src, c.parent, c.new_parent, &c.new_name)?;
    touch_dir(txn, ctx, c.parent, -1)?;
    touch_dir(txn, ctx, c.new_parent, 1)?;
    Ok(())
}
