//! Creating and removing names: create/mknod, mkdir, unlink, rmdir, link,
//! symlink.

use quizfs_proto as pb;

use super::{
    Ctx, add_entry, alloc_ino, drop_link, entry, load, load_dir, remove_entry, remove_inode, save,
};
use crate::meta::schema::{
    DirEntryRec, Inode, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, S_ISGID, inode_key, orphan_key,
};
use crate::meta::txn::{Fail, OpResult, Txn};

/// The group and the set-group-id bit a new inode inherits from a
/// set-group-id directory.
fn inherit_gid(parent: &Inode, gid: u32) -> (u32, bool) {
    if parent.mode & S_ISGID != 0 {
        (parent.gid, true)
    } else {
        (gid, false)
    }
}

fn new_inode(ctx: &Ctx, mode: u32, uid: u32, gid: u32) -> Inode {
    Inode {
        mode,
        uid,
        gid,
        nlink: 1,
        atime_ns: ctx.now_ns,
        mtime_ns: ctx.now_ns,
        ctime_ns: ctx.now_ns,
        ..Inode::default()
    }
}

/// Gives `inode` a number (`chosen`, or a fresh one for 0; see
/// [`alloc_ino`]) and links it into `parent` as `name`.
fn insert_new(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    parent: u64,
    name: &[u8],
    inode: &Inode,
    chosen: u64,
) -> OpResult<pb::Attr> {
    let ino = alloc_ino(txn, chosen)?;
    save(txn, ino, inode);
    add_entry(
        txn,
        ctx,
        parent,
        name,
        DirEntryRec {
            ino,
            kind: inode.mode & S_IFMT,
        },
    )?;
    Ok(inode.attr(ino))
}

/// Creates a regular file, FIFO, socket or device node.
pub(super) fn create(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::Create) -> OpResult<pb::Attr> {
    let parent = load_dir(txn, c.parent)?;
    let kind = match c.mode & S_IFMT {
        0 => S_IFREG,
        k if k == S_IFREG
            || k == libc::S_IFIFO
            || k == libc::S_IFSOCK
            || k == libc::S_IFCHR
            || k == libc::S_IFBLK =>
        {
            k
        }
        _ => return Err(Fail::Posix(libc::EINVAL)),
    };
    if let Some(existing) = entry(txn, c.parent, &c.name)? {
        // A create with its number was answered as a new file already.
        if c.exclusive || kind != S_IFREG || c.ino != 0 {
            return Err(Fail::Posix(libc::EEXIST));
        }
        if existing.kind == S_IFDIR {
            return Err(Fail::Posix(libc::EISDIR));
        }
        return Ok(load(txn, existing.ino)?.attr(existing.ino));
    }
    let (gid, _) = inherit_gid(&parent, c.gid);
    let mut inode = new_inode(ctx, kind | (c.mode & 0o7777), c.uid, gid);
    inode.rdev = c.rdev;
    insert_new(txn, ctx, c.parent, &c.name, &inode, c.ino)
}

/// Creates a directory.
pub(super) fn mkdir(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::Mkdir) -> OpResult<pb::Attr> {
    let parent = load_dir(txn, c.parent)?;
    if entry(txn, c.parent, &c.name)?.is_some() {
        return Err(Fail::Posix(libc::EEXIST));
    }
    let (gid, setgid) = inherit_gid(&parent, c.gid);
    let mut mode = S_IFDIR | (c.mode & 0o7777);
    if setgid {
        mode |= S_ISGID;
    }
    let mut inode = new_inode(ctx, mode, c.uid, gid);
    inode.nlink = 2;
    inode.parent = c.parent;
    insert_new(txn, ctx, c.parent, &c.name, &inode, 0)
}

/// Removes a non-directory name.
pub(super) fn unlink(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::Unlink) -> OpResult<()> {
    load_dir(txn, c.parent)?;
    let e = entry(txn, c.parent, &c.name)?.ok_or(Fail::Posix(libc::ENOENT))?;
    if e.kind == S_IFDIR {
        return Err(Fail::Posix(libc::EISDIR));
    }
    remove_entry(txn, ctx, c.parent, &c.name, e.kind)?;
    drop_link(txn, ctx, e.ino, c.keep_open_ino)
}

/// Removes an orphan (an inode kept after its last unlink while open) once
/// its holder closed it. Anything else is left alone: the inode may have
/// gone already (a retried release) and a linked inode is not an orphan.
pub(super) fn release_orphan(txn: &mut Txn<'_>, ino: u64) -> OpResult<()> {
    let key = orphan_key(ino);
    if txn.get_u64(&key)? == 0 {
        return Ok(());
    }
    txn.remove(&key);
    match txn.get::<Inode>(&inode_key(ino))? {
        Some(inode) if inode.nlink == 0 => remove_inode(txn, ino, &inode),
        _ => Ok(()),
    }
}

/// Removes every orphan whose holder's session is gone (expired, or never
/// recorded: markers written before orphans named their holder).
pub(super) fn release_unheld_orphans(txn: &mut Txn<'_>) -> OpResult<u64> {
    let mut released = 0;
    for key in txn.keys_with_prefix(&[crate::meta::schema::PREFIX_ORPHAN])? {
        let holder = txn.get_u64(&key)?;
        if txn
            .get_raw(&crate::meta::schema::session_key(holder))?
            .is_some()
        {
            continue;
        }
        let Ok(ino) = <[u8; 8]>::try_from(&key[1..]).map(u64::from_be_bytes) else {
            continue;
        };
        release_orphan(txn, ino)?;
        released += 1;
    }
    Ok(released)
}

/// Removes an empty directory.
pub(super) fn rmdir(txn: &mut Txn<'_>, ctx: &Ctx, parent: u64, name: &[u8]) -> OpResult<()> {
    load_dir(txn, parent)?;
    let e = entry(txn, parent, name)?.ok_or(Fail::Posix(libc::ENOENT))?;
    if e.kind != S_IFDIR {
        return Err(Fail::Posix(libc::ENOTDIR));
    }
    if load(txn, e.ino)?.entries > 0 {
        return Err(Fail::Posix(libc::ENOTEMPTY));
    }
    remove_entry(txn, ctx, parent, name, S_IFDIR)?;
    drop_link(txn, ctx, e.ino, 0)
}

/// Adds a hard link to a non-directory.
pub(super) fn link(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::Link) -> OpResult<pb::Attr> {
    let mut inode = load(txn, c.ino)?;
    if inode.is_dir() {
        return Err(Fail::Posix(libc::EPERM));
    }
    if inode.nlink == 0 {
        // An orphan: open somewhere, but deleted.
        return Err(Fail::Posix(libc::ENOENT));
    }
    load_dir(txn, c.new_parent)?;
    if entry(txn, c.new_parent, &c.new_name)?.is_some() {
        return Err(Fail::Posix(libc::EEXIST));
    }
    if inode.nlink >= u32::MAX - 1 {
        return Err(Fail::Posix(libc::EMLINK));
    }
    inode.nlink += 1;
    inode.ctime_ns = ctx.now_ns;
    save(txn, c.ino, &inode);
    let kind = inode.mode & S_IFMT;
    add_entry(
        txn,
        ctx,
        c.new_parent,
        &c.new_name,
        DirEntryRec { ino: c.ino, kind },
    )?;
    Ok(inode.attr(c.ino))
}

/// Creates a symbolic link.
pub(super) fn symlink(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::Symlink) -> OpResult<pb::Attr> {
    let parent = load_dir(txn, c.parent)?;
    if entry(txn, c.parent, &c.name)?.is_some() {
        return Err(Fail::Posix(libc::EEXIST));
    }
    let (gid, _) = inherit_gid(&parent, c.gid);
    let mut inode = new_inode(ctx, S_IFLNK | 0o777, c.uid, gid);
    inode.target = c.target.clone();
    inode.size = c.target.len() as u64;
    insert_new(txn, ctx, c.parent, &c.name, &inode, 0)
}
