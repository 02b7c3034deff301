//! Every metadata command as a pure function over one [`Txn`]: the same
//! command applied to the same state gives the same writes and reply on
//! every node. Times come from [`Ctx`], inode numbers from a counter in the
//! state machine.

mod attr;
mod content;
mod namespace;
mod rename;

use std::collections::{BTreeMap, BTreeSet};

use quizfs_proto::{self as pb, ChunkHash, meta_op::Op};

use super::schema::{
    self, DirEntryRec, Inode, KEY_INODE_COUNT, KEY_NEXT_CLIENT, KEY_NEXT_INO, KEY_NEXT_NODE,
    chunk_key, dirent_key, inode_key,
};
use super::sessions;
use super::txn::{Fail, OpResult, Txn};
use super::validate;

/// What a command may use besides the state: the proposer's clock and the
/// session it came in.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// The time stamped on the command by the leader that proposed it.
    pub now_ns: i64,
    /// The sender's session (0: none): the holder of an orphan it keeps.
    pub client_id: u64,
}

/// Applies one operation, returning its reply. A `Fail::Posix` result must
/// be rolled back by the caller; it becomes the reply's errno.
pub fn apply(txn: &mut Txn<'_>, ctx: &Ctx, op: &pb::MetaOp) -> OpResult<pb::MetaReply> {
    validate::op(op).map_err(Fail::Posix)?;
    let Some(op) = &op.op else {
        return Err(Fail::Posix(libc::EINVAL));
    };
    if !matches!(op, Op::AllocNodeId(_) | Op::SetNodeRecord(_)) {
        ensure_root(txn, ctx)?;
    }
    let attr = |a: pb::Attr| pb::MetaReply {
        attr: Some(a),
        ..Default::default()
    };
    let done = pb::MetaReply::default();
    Ok(match op {
        Op::Create(c) => attr(namespace::create(txn, ctx, c)?),
        Op::Mkdir(c) => attr(namespace::mkdir(txn, ctx, c)?),
        Op::Unlink(c) => namespace::unlink(txn, ctx, c).map(|()| done)?,
        Op::Rmdir(c) => namespace::rmdir(txn, ctx, c.parent, &c.name).map(|()| done)?,
        Op::Rename(c) => rename::rename(txn, ctx, c).map(|()| done)?,
        Op::Link(c) => attr(namespace::link(txn, ctx, c)?),
        Op::Symlink(c) => attr(namespace::symlink(txn, ctx, c)?),
        Op::SetAttr(c) => attr(attr::set_attr(txn, ctx, c)?),
        Op::CommitWrite(c) => {
            if let Some(create) = &c.create {
                if create.ino == 0 || create.ino != c.ino {
                    return Err(Fail::Posix(libc::EINVAL));
                }
                namespace::create(txn, ctx, create)?;
            }
            attr(content::commit_write(txn, ctx, c)?)
        }
        Op::Fallocate(c) => attr(content::fallocate(txn, ctx, c)?),
        Op::CopyRange(c) => {
            let (a, copied) = content::copy_range(txn, ctx, c)?;
            pb::MetaReply {
                value: copied,
                ..attr(a)
            }
        }
        Op::SetXattr(c) => attr::set_xattr(txn, ctx, c).map(|()| done)?,
        Op::RemoveXattr(c) => attr::remove_xattr(txn, ctx, c).map(|()| done)?,
        Op::RegisterClient(_) => {
            let id = next_counter(txn, KEY_NEXT_CLIENT, 1)?;
            sessions::create(txn, id);
            pb::MetaReply { value: id, ..done }
        }
        Op::ExpireSessions(c) => {
            let expired = sessions::expire(txn, &c.clients)?;
            namespace::release_unheld_orphans(txn)?;
            super::locks::drop_sessions(txn, &c.clients)?;
            pb::MetaReply {
                value: expired,
                ..done
            }
        }
        Op::TouchSession(_) => done,
        Op::SetLock(c) => super::locks::set_lock(txn, ctx, c)?,
        Op::CancelLockWait(c) => pb::MetaReply {
            value: super::locks::cancel_wait(txn, ctx, c)?,
            ..done
        },
        Op::AllocNodeId(_) => pb::MetaReply {
            value: next_counter(txn, KEY_NEXT_NODE, schema::FIRST_JOINED_NODE_ID)?,
            ..done
        },
        Op::ReserveInodes(c) => pb::MetaReply {
            value: take_from_counter(txn, KEY_NEXT_INO, pb::ROOT_INO + 1, c.count.into())?,
            ..done
        },
        Op::SetNodeRecord(c) => {
            let key = schema::node_key(&c.addr);
            if c.state == pb::NodeRecordState::NodeRecordNone as i32 {
                txn.remove(&key);
            } else {
                txn.put(
                    &key,
                    &schema::NodeRecord {
                        state: c.state,
                        replaces: c.replaces.clone(),
                        since_ns: ctx.now_ns,
                    },
                );
            }
            done
        }
        Op::InitVolume(c) => {
            if c.replicas > 0 && txn.get_raw(schema::KEY_REPLICAS)?.is_none() {
                txn.put_u64(schema::KEY_REPLICAS, c.replicas.into());
            }
            done
        }
        Op::ReleaseOrphan(c) => namespace::release_orphan(txn, c.ino).map(|()| done)?,
    })
}

/// Creates the root directory the first time any command is applied.
fn ensure_root(txn: &mut Txn<'_>, ctx: &Ctx) -> OpResult<()> {
    if txn.get_raw(&inode_key(pb::ROOT_INO))?.is_some() {
        return Ok(());
    }
    let root = Inode {
        mode: schema::S_IFDIR | 0o755,
        nlink: 2,
        atime_ns: ctx.now_ns,
        mtime_ns: ctx.now_ns,
        ctime_ns: ctx.now_ns,
        parent: pb::ROOT_INO,
        ..Inode::default()
    };
    txn.put(&inode_key(pb::ROOT_INO), &root);
    txn.put_u64(KEY_NEXT_INO, pb::ROOT_INO + 1);
    txn.put_u64(KEY_INODE_COUNT, 1);
    Ok(())
}

/// Returns a counter's value and advances it; `first` when it was never used.
fn next_counter(txn: &mut Txn<'_>, key: &[u8], first: u64) -> OpResult<u64> {
    take_from_counter(txn, key, first, 1)
}

/// Returns a counter's value and advances it by `n`: the values
/// `[v, v + n)` are the caller's; `first` when it was never used.
fn take_from_counter(txn: &mut Txn<'_>, key: &[u8], first: u64, n: u64) -> OpResult<u64> {
    let v = txn.get_u64(key)?.max(first);
    txn.put_u64(key, v + n);
    Ok(v)
}

/// Loads an inode, ENOENT when it does not exist.
fn load(txn: &Txn<'_>, ino: u64) -> OpResult<Inode> {
    let inode: Inode = txn.get(&inode_key(ino))?.ok_or(Fail::Posix(libc::ENOENT))?;
    // A tombstone is gone for every command: its references went with
    // its last link.
    if is_tombstone(txn, ino, &inode)? {
        return Err(Fail::Posix(libc::ENOENT));
    }
    Ok(inode)
}

/// True for an inode whose last link went and that no mount holds open.
fn is_tombstone(txn: &Txn<'_>, ino: u64, inode: &Inode) -> OpResult<bool> {
    Ok(inode.nlink == 0 && !inode.is_dir() && txn.get_u64(&schema::orphan_key(ino))? == 0)
}

/// Stores an inode.
fn save(txn: &mut Txn<'_>, ino: u64, inode: &Inode) {
    txn.put(&inode_key(ino), inode);
}

/// Loads a directory: ENOENT if missing, ENOTDIR if not a directory.
fn load_dir(txn: &Txn<'_>, ino: u64) -> OpResult<Inode> {
    let dir = load(txn, ino)?;
    if !dir.is_dir() {
        return Err(Fail::Posix(libc::ENOTDIR));
    }
    Ok(dir)
}

/// Looks up a name in a directory.
fn entry(txn: &Txn<'_>, parent: u64, name: &[u8]) -> OpResult<Option<DirEntryRec>> {
    Ok(txn.get(&dirent_key(parent, name))?)
}

/// Allocates a new inode number: `chosen` if not 0 (a number the client
/// reserved and has not used: EINVAL otherwise), else the next one.
fn alloc_ino(txn: &mut Txn<'_>, chosen: u64) -> OpResult<u64> {
    let ino = if chosen == 0 {
        next_counter(txn, KEY_NEXT_INO, pb::ROOT_INO + 1)?
    } else {
        let reserved = chosen > pb::ROOT_INO && chosen < txn.get_u64(KEY_NEXT_INO)?;
        if !reserved || txn.get_raw(&inode_key(chosen))?.is_some() {
            return Err(Fail::Posix(libc::EINVAL));
        }
        chosen
    };
    let count = txn.get_u64(KEY_INODE_COUNT)?;
    txn.put_u64(KEY_INODE_COUNT, count + 1);
    Ok(ino)
}

/// Adds an entry to a directory and updates the directory's times and
/// counts. `subdir`: the child is a directory (the parent gains a link).
fn add_entry(
    txn: &mut Txn<'_>,
    ctx: &Ctx,
    parent: u64,
    name: &[u8],
    rec: DirEntryRec,
) -> OpResult<()> {
    let mut dir = load_dir(txn, parent)?;
    dir.entries += 1;
    if rec.kind == schema::S_IFDIR {
        dir.nlink += 1;
    }
    dir.mtime_ns = ctx.now_ns;
    dir.ctime_ns = ctx.now_ns;
    save(txn, parent, &dir);
    txn.put(&dirent_key(parent, name), &rec);
    Ok(())
}

/// Removes an entry from a directory, the mirror of [`add_entry`].
fn remove_entry(txn: &mut Txn<'_>, ctx: &Ctx, parent: u64, name: &[u8], kind: u32) -> OpResult<()> {
    let mut dir = load_dir(txn, parent)?;
    dir.entries = dir.entries.saturating_sub(1);
    if kind == schema::S_IFDIR {
        dir.nlink = dir.nlink.saturating_sub(1);
    }
    dir.mtime_ns = ctx.now_ns;
    dir.ctime_ns = ctx.now_ns;
    save(txn, parent, &dir);
    txn.remove(&dirent_key(parent, name));
    Ok(())
}

/// Drops one link to an inode. A directory goes at once. When the last
/// link of another inode goes, it stays without links: as an orphan (with
/// its chunk references) until `ReleaseOrphan` (or the end of the sender's
/// session) if `keep_open` names it,
/// else as a tombstone: its references go now, its record
/// [`schema::TOMBSTONE_NS`] later.
fn drop_link(txn: &mut Txn<'_>, ctx: &Ctx, ino: u64, keep_open: u64) -> OpResult<()> {
    let mut inode = load(txn, ino)?;
    if inode.is_dir() {
        remove_inode(txn, ino, &inode)?;
    } else if inode.nlink <= 1 {
        inode.nlink = 0;
        inode.ctime_ns = ctx.now_ns;
        if ino == keep_open && ctx.client_id != 0 {
            // The marker names its holder: the orphan goes with its session.
            txn.put_u64(&schema::orphan_key(ino), ctx.client_id);
        } else {
            change_refs(txn, &inode.extents.refs(), &BTreeMap::new())?;
            bury(txn, ctx, ino)?;
        }
        save(txn, ino, &inode);
    } else {
        inode.nlink -= 1;
        inode.ctime_ns = ctx.now_ns;
        save(txn, ino, &inode);
    }
    Ok(())
}

/// Queues `ino` as a tombstone, and removes the tombstones whose time is
/// over (a few per command, oldest first; the queue is in time order as
/// long as the leaders' clocks are).
fn bury(txn: &mut Txn<'_>, ctx: &Ctx, ino: u64) -> OpResult<()> {
    let tail = txn.get_u64(schema::KEY_TOMB_TAIL)?;
    txn.put(
        &schema::tomb_key(tail),
        &schema::Tombstone {
            ino,
            at_ns: ctx.now_ns,
        },
    );
    txn.put_u64(schema::KEY_TOMB_TAIL, tail + 1);
    let mut head = txn.get_u64(schema::KEY_TOMB_HEAD)?;
    for _ in 0..schema::MAX_REAP {
        let key = schema::tomb_key(head);
        let Some(t) = txn.get::<schema::Tombstone>(&key)? else {
            break;
        };
        if t.at_ns.saturating_add(schema::TOMBSTONE_NS) > ctx.now_ns {
            break;
        }
        txn.remove(&key);
        head += 1;
        if let Some(i) = txn.get::<Inode>(&inode_key(t.ino))? {
            if is_tombstone(txn, t.ino, &i)? {
                remove_record(txn, t.ino)?;
            }
        }
    }
    txn.put_u64(schema::KEY_TOMB_HEAD, head);
    Ok(())
}

/// Deletes an inode record with its chunk references.
fn remove_inode(txn: &mut Txn<'_>, ino: u64, inode: &Inode) -> OpResult<()> {
    change_refs(txn, &inode.extents.refs(), &BTreeMap::new())?;
    remove_record(txn, ino)
}

/// Deletes an inode record (its chunk references are gone already).
fn remove_record(txn: &mut Txn<'_>, ino: u64) -> OpResult<()> {
    txn.remove(&inode_key(ino));
    let count = txn.get_u64(KEY_INODE_COUNT)?;
    txn.put_u64(KEY_INODE_COUNT, count.saturating_sub(1));
    Ok(())
}

/// Moves chunk reference counts from `old` to `new` (each a count of
/// extents per chunk); only chunks whose count changes are written.
fn change_refs(
    txn: &mut Txn<'_>,
    old: &BTreeMap<ChunkHash, u64>,
    new: &BTreeMap<ChunkHash, u64>,
) -> OpResult<()> {
    let hashes: BTreeSet<&ChunkHash> = old.keys().chain(new.keys()).collect();
    for h in hashes {
        let (was, now) = (
            old.get(h).copied().unwrap_or(0),
            new.get(h).copied().unwrap_or(0),
        );
        if was == now {
            continue;
        }
        let key = chunk_key(&h.0);
        let n = (txn.get_u64(&key)? + now).saturating_sub(was);
        txn.put_u64(&key, n);
    }
    Ok(())
}
