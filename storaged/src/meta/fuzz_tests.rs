//! Property tests of the metadata state machine: arbitrary sequences of
//! commands (well-formed ones over a small namespace, hostile ones, and raw
//! bytes that are no command at all) go through the real `apply` of
//! [`StateMachine`], and after every command the whole state is checked:
//!
//! - no dangling entry: every entry's directory and child exist, and the
//!   entry's type is the child's;
//! - link counts: a file's or symlink's `nlink` is the number of entries
//!   naming it (0 only for an orphan kept open or a tombstone); a directory has exactly
//!   one entry, `2 + subdirectories` links, `entries` equal to its entries,
//!   and `parent` equal to the directory holding it;
//! - every orphan's holder is a session that exists (an expired
//!   session's orphans go with it);
//! - chunk reference counts equal the extents of all inodes (tombstones
//!   aside) that use each chunk, no extent reaches past its file's size, and the
//!   inode count equals the inode records; every inode's number was
//!   handed out (counted or reserved) before it was used;
//! - file locks: every lock and queued request belongs to a session that
//!   exists, two owners never hold conflicting locks, one owner's locks
//!   never overlap and are merged where they touch, and every queued
//!   request waits for a held lock it conflicts with;
//!
//! and two replicas that apply the same log, one command per batch on one
//! and the whole log in one batch on the other, end byte-identical.
//! Failing cases are kept by proptest in `proptest-regressions/` and
//! replayed first on every run.

use std::collections::{BTreeMap, HashMap};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use proptest::prelude::*;
use prost::Message;
use quizfs_proto::{self as pb, meta_op::Op};

use super::locks::LockTable;
use super::schema::{
    self, DirEntryRec, Inode, KEY_INODE_COUNT, KEY_NEXT_INO, PREFIX_CHUNK, PREFIX_DIRENT,
    PREFIX_INODE, PREFIX_LOCK, PREFIX_ORPHAN, PREFIX_SESSION, PREFIX_TOMB, Tombstone,
};
use super::state_machine::StateMachine;
use crate::raft::{Cmd, Entry};

/// A few names, some of them invalid.
fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::sample::select(vec!["", ".", "..", "x/y", "nul\0"]).prop_map(|s| s.as_bytes().to_vec()),
        1 => Just(vec![b'n'; 256]),
    ]
}

/// Inode numbers: the root, the first few allocated, an unknown one.
fn ino() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => Just(pb::ROOT_INO),
        6 => 2u64..12,
        1 => Just(999_999u64),
    ]
}

/// Extents over chunk hashes from a pool of three, so references are
/// shared, some of them malformed (short hash, empty, past the chunk).
fn extent() -> impl Strategy<Value = pb::Extent> {
    prop_oneof![
        6 => (0u8..3, 0u64..16, 1u64..=6, 0u64..4).prop_map(|(h, offset, len, at)| pb::Extent {
            offset, len, hash: vec![h + 1; 32], at,
        }),
        1 => Just(pb::Extent { offset: 0, len: 0, hash: vec![1; 32], at: 0 }),
        1 => Just(pb::Extent { offset: 0, len: 4, hash: vec![7; 5], at: 0 }),
        1 => Just(pb::Extent { offset: 0, len: 4, hash: vec![1; 32], at: (4 << 20) - 2 }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            ino(),
            name(),
            prop::bool::ANY,
            prop_oneof![3 => Just(0u64), 1 => ino()]
        )
            .prop_map(|(parent, name, exclusive, ino)| Op::Create(pb::Create {
                parent,
                name,
                mode: schema::S_IFREG | 0o644,
                exclusive,
                ino,
                ..Default::default()
            })),
        (0u32..5).prop_map(|count| Op::ReserveInodes(pb::ReserveInodes { count })),
        (ino(), name()).prop_map(|(parent, name)| Op::Mkdir(pb::Mkdir {
            parent,
            name,
            mode: 0o755,
            ..Default::default()
        })),
        (ino(), name(), prop_oneof![Just(0u64), ino()]).prop_map(
            |(parent, name, keep_open_ino)| {
                Op::Unlink(pb::Unlink {
                    parent,
                    name,
                    keep_open_ino,
                })
            }
        ),
        (ino(), name()).prop_map(|(parent, name)| Op::Rmdir(pb::Rmdir { parent, name })),
        (
            ino(),
            name(),
            ino(),
            name(),
            0u32..4,
            prop_oneof![Just(0u64), ino()]
        )
            .prop_map(
                |(parent, name, new_parent, new_name, flags, keep_open_ino)| Op::Rename(
                    pb::Rename {
                        parent,
                        name,
                        new_parent,
                        new_name,
                        flags,
                        keep_open_ino,
                    }
                )
            ),
        (ino(), ino(), name()).prop_map(|(ino, new_parent, new_name)| Op::Link(pb::Link {
            ino,
            new_parent,
            new_name,
        })),
        (ino(), name()).prop_map(|(parent, name)| Op::Symlink(pb::Symlink {
            parent,
            name,
            target: b"t".to_vec(),
            ..Default::default()
        })),
        (ino(), prop::option::of(0u64..20)).prop_map(|(ino, size)| Op::SetAttr(pb::SetAttr {
            ino,
            size,
            mode: Some(0o600),
            ..Default::default()
        })),
        (
            ino(),
            prop::collection::vec(extent(), 0..4),
            0u64..24,
            any::<bool>(),
        )
            .prop_map(|(ino, mut extents, size, cut)| {
                // Mostly in order, as a mount sends them; the rest tests
                // the refusal of overlapping lists.
                if size % 4 != 0 {
                    extents.sort_by_key(|e| e.offset);
                }
                Op::CommitWrite(pb::CommitWrite {
                    ino,
                    extents,
                    size,
                    mtime_ns: None,
                    if_version: (size % 3 == 0).then_some(size),
                    // Past the size now and then: refused.
                    cut: cut.then_some(size / 2 + size % 5),
                    chunks: Vec::new(),
                    // Now and then the file's early create comes along.
                    create: (size % 5 == 1).then(|| pb::Create {
                        parent: pb::ROOT_INO,
                        name: format!("c{ino}").into_bytes(),
                        mode: schema::S_IFREG | 0o644,
                        ino,
                        ..Default::default()
                    }),
                })
            }),
        (
            ino(),
            0u64..20,
            0u64..10,
            prop::sample::select(vec![0u32, 1, 2, 3, 0x10, 0x11])
        )
            .prop_map(|(ino, offset, len, mode)| Op::Fallocate(pb::Fallocate {
                ino,
                offset,
                len,
                mode
            })),
        (ino(), 0u64..20, ino(), 0u64..20, 0u64..10).prop_map(
            |(src, src_offset, dst, dst_offset, len)| Op::CopyRange(pb::CopyRange {
                src,
                src_offset,
                dst,
                dst_offset,
                len,
            })
        ),
        (ino(), name(), 0u32..3).prop_map(|(ino, name, flags)| Op::SetXattr(pb::SetXattr {
            ino,
            name: [b"user.".as_slice(), &name].concat(),
            value: b"v".to_vec(),
            flags,
        })),
        (ino(), name()).prop_map(|(ino, name)| Op::RemoveXattr(pb::RemoveXattr {
            ino,
            name: [b"user.".as_slice(), &name].concat(),
        })),
        ino().prop_map(|ino| Op::ReleaseOrphan(pb::ReleaseOrphan { ino })),
        Just(Op::RegisterClient(pb::RegisterClient {})),
        prop::collection::vec(0u64..4, 0..3)
            .prop_map(|clients| Op::ExpireSessions(pb::ExpireSessions { clients })),
        Just(Op::TouchSession(pb::TouchSession {})),
        (
            ino(),
            0u64..3,
            0u64..20,
            prop_oneof![1u64..8, Just(u64::MAX)],
            0i32..4,
            any::<bool>()
        )
            .prop_map(
                |(ino, owner, start, len, kind, wait)| Op::SetLock(pb::SetLock {
                    ino,
                    owner,
                    pid: 7,
                    start,
                    end: start.saturating_add(len - 1),
                    kind,
                    wait,
                })
            ),
        (ino(), 0u64..6).prop_map(|(ino, id)| Op::CancelLockWait(pb::CancelLockWait { ino, id })),
    ]
}

/// One log entry's command: a well-formed operation, possibly a retry
/// under a session, or raw bytes.
fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        9 => (op(), prop_oneof![Just((0u64, 0u64)), (1u64..3, 1u64..6)]).prop_map(|(op, (client_id, seq))| Cmd {
            client_id,
            seq,
            acked_below: 0,
            now_ns: 1_000,
            op: pb::MetaOp { op: Some(op) }.encode_to_vec(),
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|op| Cmd {
            client_id: 0,
            seq: 0,
            acked_below: 0,
            now_ns: 1_000,
            op,
        }),
    ]
}

/// Log entry `index`; its command is stamped 20 s after the one before,
/// so tombstones go after a few commands.
fn entry(index: u64, mut cmd: Cmd) -> Entry {
    cmd.now_ns = index as i64 * 20_000_000_000;
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn open() -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = crate::db::Db::open(&dir.path().join("meta"), 8 << 20).expect("open sled");
    let sm = StateMachine::open(&db, &dir.path().join("snapshots")).expect("state machine");
    (dir, sm)
}

/// Every key and value of the state machine.
fn dump(sm: &StateMachine) -> Vec<(Vec<u8>, Vec<u8>)> {
    sm.tree()
        .iter()
        .map(|kv| {
            let (k, v) = kv.expect("read");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

fn u64_of(v: &[u8]) -> u64 {
    u64::from_be_bytes(v.try_into().expect("8-byte counter"))
}

/// The lock tables: every lock and request belongs to a session that
/// exists; held locks of two owners never conflict; one owner's locks
/// never overlap and are merged where they touch in one kind; every
/// queued request waits for a held lock; no empty table is stored.
fn check_locks(tables: &[LockTable], sessions: &[u64]) -> Result<(), String> {
    for t in tables {
        if t.is_empty() {
            return Err("an empty lock table is stored".into());
        }
        let owners = t
            .held
            .iter()
            .map(|l| l.who)
            .chain(t.queue.iter().map(|q| q.lock.who));
        if let Some(o) = owners.into_iter().find(|o| !sessions.contains(&o.client)) {
            return Err(format!(
                "a lock of session {}, which does not exist",
                o.client
            ));
        }
        for (i, a) in t.held.iter().enumerate() {
            for b in &t.held[i + 1..] {
                if a.conflicts(b) {
                    return Err(format!("two owners hold conflicting locks: {a:?} {b:?}"));
                }
                let touch = a.end.checked_add(1).is_none_or(|n| n >= b.start)
                    && b.end.checked_add(1).is_none_or(|n| n >= a.start);
                if a.who == b.who
                    && touch
                    && (a.write == b.write || (a.start <= b.end && b.start <= a.end))
                {
                    return Err(format!(
                        "one owner's locks overlap or are not merged: {a:?} {b:?}"
                    ));
                }
            }
        }
        if let Some(q) = t.queue.iter().find(|q| t.conflict(&q.lock).is_none()) {
            return Err(format!("a request waits for nothing: {q:?}"));
        }
    }
    Ok(())
}

/// Checks the invariants listed at the top; `Err` says which broke.
fn check(sm: &StateMachine) -> Result<(), String> {
    let mut inodes: BTreeMap<u64, Inode> = BTreeMap::new();
    let mut entries: Vec<(u64, Vec<u8>, DirEntryRec)> = Vec::new();
    let mut refs: HashMap<[u8; 32], u64> = HashMap::new();
    let mut orphans = Vec::new();
    let mut holders = Vec::new();
    let mut sessions = Vec::new();
    let mut tombs = Vec::new();
    let mut tables: Vec<LockTable> = Vec::new();
    let mut inode_count = 0;
    let mut next_ino = 0;
    for (k, v) in dump(sm) {
        match k.first() {
            Some(&PREFIX_INODE) => {
                let ino = u64_of(&k[1..]);
                inodes.insert(
                    ino,
                    bincode::deserialize(&v).map_err(|e| format!("inode {ino}: {e}"))?,
                );
            }
            Some(&PREFIX_DIRENT) => {
                let parent = u64_of(&k[1..9]);
                let rec = bincode::deserialize(&v).map_err(|e| format!("entry: {e}"))?;
                entries.push((parent, k[9..].to_vec(), rec));
            }
            Some(&PREFIX_CHUNK) => {
                let n = u64_of(&v);
                if n == 0 {
                    return Err("a chunk count of 0 is stored".into());
                }
                refs.insert(k[1..].try_into().expect("32-byte hash"), n);
            }
            Some(&PREFIX_ORPHAN) => {
                orphans.push(u64_of(&k[1..]));
                holders.push(u64_of(&v));
            }
            Some(&PREFIX_SESSION) => sessions.push(u64_of(&k[1..])),
            Some(&PREFIX_LOCK) => {
                let t: LockTable =
                    bincode::deserialize(&v).map_err(|e| format!("lock table: {e}"))?;
                tables.push(t);
            }
            Some(&PREFIX_TOMB) => {
                let t: Tombstone =
                    bincode::deserialize(&v).map_err(|e| format!("tombstone: {e}"))?;
                tombs.push(t.ino);
            }
            _ if k == KEY_INODE_COUNT => inode_count = u64_of(&v),
            _ if k == KEY_NEXT_INO => next_ino = u64_of(&v),
            _ => {}
        }
    }
    // An orphan is held by a session that exists: it goes with it.
    if let Some(h) = holders.iter().find(|h| !sessions.contains(h)) {
        return Err(format!(
            "an orphan is held by session {h}, which does not exist"
        ));
    }
    check_locks(&tables, &sessions)?;
    if inodes.is_empty() {
        return Ok(()); // nothing applied yet
    }
    // Every number in use was handed out (a reserved one only once).
    if let Some(ino) = inodes.keys().find(|&&i| i != pb::ROOT_INO && i >= next_ino) {
        return Err(format!("inode {ino} in use, next number {next_ino}"));
    }
    if inode_count != inodes.len() as u64 {
        return Err(format!(
            "inode count {inode_count}, {} inode records",
            inodes.len()
        ));
    }
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut holder: HashMap<u64, u64> = HashMap::new();
    let mut in_dir: HashMap<u64, u64> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    for (parent, name, rec) in &entries {
        let dir = inodes
            .get(parent)
            .ok_or_else(|| format!("entry {name:?} in missing directory {parent}"))?;
        if !dir.is_dir() {
            return Err(format!("entry {name:?} in non-directory {parent}"));
        }
        let child = inodes
            .get(&rec.ino)
            .ok_or_else(|| format!("entry {name:?} in {parent} names missing inode {}", rec.ino))?;
        if child.mode & schema::S_IFMT != rec.kind {
            return Err(format!("entry {name:?} in {parent} has the wrong type"));
        }
        *links.entry(rec.ino).or_default() += 1;
        *in_dir.entry(*parent).or_default() += 1;
        if child.is_dir() {
            holder.insert(rec.ino, *parent);
            *subdirs.entry(*parent).or_default() += 1;
        }
    }
    let mut want_refs: HashMap<[u8; 32], u64> = HashMap::new();
    for (ino, inode) in &inodes {
        let n = links.get(ino).copied().unwrap_or(0);
        if inode.is_dir() {
            let (want_parent, want_links) = if *ino == pb::ROOT_INO {
                (pb::ROOT_INO, 0)
            } else {
                (
                    *holder
                        .get(ino)
                        .ok_or(format!("directory {ino} has no entry"))?,
                    1,
                )
            };
            if n != want_links || inode.parent != want_parent {
                return Err(format!(
                    "directory {ino}: {n} entries name it, parent {}",
                    inode.parent
                ));
            }
            let sub = subdirs.get(ino).copied().unwrap_or(0);
            if inode.nlink != 2 + sub {
                return Err(format!(
                    "directory {ino}: nlink {} with {sub} subdirectories",
                    inode.nlink
                ));
            }
            let count = in_dir.get(ino).copied().unwrap_or(0);
            if inode.entries != count {
                return Err(format!(
                    "directory {ino}: entries {} but {count} stored",
                    inode.entries
                ));
            }
        } else if inode.nlink != n {
            return Err(format!(
                "inode {ino}: nlink {} but {n} entries",
                inode.nlink
            ));
        } else if n == 0 && !orphans.contains(ino) && !tombs.contains(ino) {
            return Err(format!(
                "inode {ino} has no link and is no orphan or tombstone"
            ));
        }
        if inode.extents.end() > inode.size {
            return Err(format!(
                "inode {ino}: an extent ends at {} past the size {}",
                inode.extents.end(),
                inode.size
            ));
        }
        // A tombstone's references went with its last link.
        if n == 0 && !inode.is_dir() && !orphans.contains(ino) {
            continue;
        }
        for (h, n) in inode.extents.refs() {
            *want_refs.entry(h.0).or_default() += n;
        }
    }
    if refs != want_refs {
        return Err(format!("chunk counts {refs:?}, references {want_refs:?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    })]

    /// Any command sequence keeps the namespace consistent, and applying
    /// it in different batches on two replicas gives identical state.
    #[test]
    fn any_command_sequence_keeps_the_invariants_and_replicas_agree(
        cmds in prop::collection::vec(cmd(), 1..48)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (_a_dir, mut a) = open();
        let (_b_dir, mut b) = open();
        for (i, c) in cmds.iter().enumerate() {
            rt.block_on(a.apply(vec![entry(i as u64 + 1, c.clone())])).expect("apply");
            if let Err(e) = check(&a) {
                prop_assert!(false, "after command {i} ({:?}): {e}", pb::MetaOp::decode(c.op.as_slice()));
            }
        }
        let all: Vec<Entry> = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| entry(i as u64 + 1, c.clone()))
            .collect();
        rt.block_on(b.apply(all)).expect("apply");
        prop_assert!(dump(&a) == dump(&b), "replicas differ");
    }

    /// Arbitrary bytes never make a request decoder panic.
    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let b = bytes.as_slice();
        let _ = pb::MetaRequest::decode(b);
        let _ = pb::MetaOp::decode(b);
        let _ = pb::LookupRequest::decode(b);
        let _ = pb::InodeRequest::decode(b);
        let _ = pb::ReadDirRequest::decode(b);
        let _ = pb::GetXattrRequest::decode(b);
        let _ = pb::StatFsRequest::decode(b);
        let _ = pb::PutPiece::decode(b);
        let _ = pb::GetChunkRequest::decode(b);
        let _ = pb::GetRangeRequest::decode(b);
        let _ = pb::RangeReply::decode(b);
        let _ = pb::MembersRequest::decode(b);
        let _ = pb::PingRequest::decode(b);
        let _ = pb::ProbeRequest::decode(b);
        let _ = pb::JoinRequest::decode(b);
        let _ = pb::HealInfoRequest::decode(b);
        let _ = pb::NodeStatusRequest::decode(b);
        let _ = pb::RaftBytes::decode(b);
        // The Raft payloads inside RaftBytes are bincode: a hostile payload
        // is an error, not a panic or a huge allocation.
        use crate::raft::{NodeId, TypeConfig, decode};
        let _ = decode::<openraft::raft::AppendEntriesRequest<TypeConfig>>(b);
        let _ = decode::<openraft::raft::VoteRequest<NodeId>>(b);
        let _ = decode::<openraft::raft::InstallSnapshotRequest<TypeConfig>>(b);
    }

    /// A range reply made up by a hostile node (any length, place, bytes
    /// and proof) never panics the reader and is never taken as the chunk's.
    #[test]
    fn any_range_reply_is_refused(
        len in prop_oneof![0..40_000u64, any::<u64>()],
        start in prop_oneof![0..40_000u64, any::<u64>()],
        data in prop::collection::vec(any::<u8>(), 0..40_000),
        proof in prop::collection::vec(any::<[u8; 32]>(), 0..12),
    ) {
        let hash = *blake3::hash(b"a chunk none of these bytes are").as_bytes();
        prop_assert!(!quizfs_proto::range::verify(&hash, len, start, &data, &proof));
    }
}

/// A file whose last link goes gives up its chunk references at once and
/// keeps its record (for a layout read at open) for `TOMBSTONE_NS`; the
/// first burial after that removes it. Commands treat it as gone.
#[test]
fn a_tombstone_stays_readable_for_its_time_and_then_goes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (_dir, mut sm) = open();
    let hash = [7u8; 32];
    let cmd = |op: Op| Cmd {
        client_id: 0,
        seq: 0,
        acked_below: 0,
        now_ns: 0,
        op: pb::MetaOp { op: Some(op) }.encode_to_vec(),
    };
    let create = |name: &str| {
        cmd(Op::Create(pb::Create {
            parent: pb::ROOT_INO,
            name: name.as_bytes().to_vec(),
            mode: libc::S_IFREG | 0o644,
            ..Default::default()
        }))
    };
    let unlink = |name: &str| {
        cmd(Op::Unlink(pb::Unlink {
            parent: pb::ROOT_INO,
            name: name.as_bytes().to_vec(),
            keep_open_ino: 0,
        }))
    };
    let ino = 2; // the first inode after the root
    let write = cmd(Op::CommitWrite(pb::CommitWrite {
        ino,
        size: 10,
        extents: vec![pb::Extent {
            offset: 0,
            len: 10,
            hash: hash.to_vec(),
            at: 0,
        }],
        ..Default::default()
    }));
    // Entry i is stamped i * 20 s (see `entry`).
    let mut index = 0;
    let mut run = |sm: &mut StateMachine, c: Cmd| {
        index += 1;
        rt.block_on(sm.apply(vec![entry(index, c)])).expect("apply");
    };
    let inode = |sm: &StateMachine| -> Option<Inode> {
        dump(sm)
            .into_iter()
            .find(|(k, _)| k.first() == Some(&PREFIX_INODE) && u64_of(&k[1..]) == ino)
            .map(|(_, v)| bincode::deserialize(&v).expect("inode"))
    };
    let refs = |sm: &StateMachine| {
        dump(sm)
            .into_iter()
            .filter(|(k, _)| k.first() == Some(&PREFIX_CHUNK))
            .count()
    };
    run(&mut sm, create("photo"));
    run(&mut sm, write.clone());
    assert_eq!(refs(&sm), 1);
    run(&mut sm, unlink("photo")); // buried at 60 s
    assert_eq!(refs(&sm), 0, "the references go with the last link");
    // Writing to it fails as for a deleted file, and changes nothing.
    run(&mut sm, write);
    assert_eq!(refs(&sm), 0);
    // Other files come and go; the record stays until its 60 s are over.
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        run(&mut sm, create(name));
        run(&mut sm, unlink(name));
        let now = (4 + 2 * (i as i64 + 1)) * 20_000_000_000;
        let kept = inode(&sm);
        if now < 60_000_000_000 + schema::TOMBSTONE_NS {
            let kept = kept.expect("the tombstone is readable within its time");
            assert_eq!((kept.nlink, kept.size, kept.extents.len()), (0, 10, 1));
        } else {
            assert!(kept.is_none(), "the tombstone went after its time");
        }
        check(&sm).expect("invariants");
    }
    assert!(inode(&sm).is_none(), "the loop reached past its time");
}

/// A session's orphan lives as long as the session: expiring another
/// session leaves it, expiring its holder removes it with its chunk
/// references, and a request in an expired session is refused as
/// expired, never applied.
#[test]
fn an_expired_session_takes_its_orphans_and_is_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let (_dir, mut sm) = open();
    let cmd = |client_id: u64, seq: u64, op: Op| Cmd {
        client_id,
        seq,
        acked_below: 0,
        now_ns: 0,
        op: pb::MetaOp { op: Some(op) }.encode_to_vec(),
    };
    let mut index = 0;
    let mut run = |sm: &mut StateMachine, c: Cmd| -> pb::MetaReply {
        index += 1;
        let r = rt.block_on(sm.apply(vec![entry(index, c)])).expect("apply");
        pb::MetaReply::decode(r[0].0.as_slice()).expect("reply")
    };
    let count = |sm: &StateMachine, prefix: u8| {
        dump(sm)
            .into_iter()
            .filter(|(k, _)| k.first() == Some(&prefix))
            .count()
    };
    let register = cmd(0, 0, Op::RegisterClient(pb::RegisterClient {}));
    let (a, b) = (
        run(&mut sm, register.clone()).value,
        run(&mut sm, register).value,
    );
    assert_eq!(count(&sm, PREFIX_SESSION), 2);
    // A creates a file with one chunk and unlinks it, keeping it open.
    let created = run(
        &mut sm,
        cmd(
            a,
            1,
            Op::Create(pb::Create {
                parent: pb::ROOT_INO,
                name: b"held".to_vec(),
                mode: libc::S_IFREG | 0o644,
                ..Default::default()
            }),
        ),
    );
    let ino = created.attr.expect("attr").ino;
    let write = Op::CommitWrite(pb::CommitWrite {
        ino,
        size: 10,
        extents: vec![pb::Extent {
            offset: 0,
            len: 10,
            hash: vec![9; 32],
            at: 0,
        }],
        ..Default::default()
    });
    assert_eq!(run(&mut sm, cmd(a, 2, write)).errno, 0);
    let unlink = Op::Unlink(pb::Unlink {
        parent: pb::ROOT_INO,
        name: b"held".to_vec(),
        keep_open_ino: ino,
    });
    assert_eq!(run(&mut sm, cmd(a, 3, unlink)).errno, 0);
    assert_eq!(count(&sm, PREFIX_ORPHAN), 1);
    assert_eq!(count(&sm, PREFIX_CHUNK), 1);
    let expire = |clients: Vec<u64>| cmd(0, 0, Op::ExpireSessions(pb::ExpireSessions { clients }));
    // B goes: A's orphan stays.
    assert_eq!(run(&mut sm, expire(vec![b, 12345])).value, 1);
    assert_eq!(count(&sm, PREFIX_SESSION), 1);
    assert_eq!(count(&sm, PREFIX_ORPHAN), 1);
    // A goes: its orphan, the inode and its chunk reference go too.
    assert_eq!(run(&mut sm, expire(vec![a])).value, 1);
    assert_eq!(count(&sm, PREFIX_SESSION), 0);
    assert_eq!(count(&sm, PREFIX_ORPHAN), 0);
    assert_eq!(count(&sm, PREFIX_CHUNK), 0);
    assert!(
        !dump(&sm)
            .iter()
            .any(|(k, _)| k.first() == Some(&PREFIX_INODE) && u64_of(&k[1..]) == ino)
    );
    // A request in A now is refused, and applies nothing.
    let before = dump(&sm);
    let r = run(
        &mut sm,
        cmd(
            a,
            4,
            Op::Mkdir(pb::Mkdir {
                parent: pb::ROOT_INO,
                name: b"late".to_vec(),
                mode: 0o755,
                ..Default::default()
            }),
        ),
    );
    assert!(r.session_expired);
    assert_eq!(r.errno, libc::ESTALE);
    let after: Vec<_> = dump(&sm)
        .into_iter()
        .filter(|(k, _)| k.as_slice() != schema::KEY_APPLIED)
        .collect();
    let before: Vec<_> = before
        .into_iter()
        .filter(|(k, _)| k.as_slice() != schema::KEY_APPLIED)
        .collect();
    assert_eq!(before, after);
}

/// A crash in the middle of an apply: sled kept the apply's redo record
/// and only some of its writes (here: none of the tree's). Opening the
/// state machine again writes the rest: the state is the whole apply's.
#[test]
fn an_apply_cut_short_by_a_crash_is_finished_at_start() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let db = crate::db::Db::open(&dir.path().join("meta"), 8 << 20).expect("open sled");
    let snaps = dir.path().join("snapshots");
    let mut sm = StateMachine::open(&db, &snaps).expect("state machine");
    let create = |name: &str| Cmd {
        client_id: 0,
        seq: 0,
        acked_below: 0,
        now_ns: 0,
        op: pb::MetaOp {
            op: Some(Op::Create(pb::Create {
                parent: pb::ROOT_INO,
                name: name.as_bytes().to_vec(),
                mode: libc::S_IFREG | 0o644,
                ..Default::default()
            })),
        }
        .encode_to_vec(),
    };
    rt.block_on(sm.apply(vec![entry(1, create("a"))]))
        .expect("apply");
    rt.block_on(sm.apply(vec![entry(2, create("b"))]))
        .expect("apply");
    let whole = dump(&sm);
    // Undo the tree's half of the second apply: its keys as after the first.
    let raft_meta = db.sled().open_tree("raft_meta").expect("tree");
    let redo = raft_meta
        .get(super::state_machine::KEY_REDO)
        .expect("read")
        .expect("a redo record");
    let writes: super::txn::Writes = crate::raft::decode(&redo).expect("decode");
    assert!(writes.keys().any(|k| k.ends_with(b"b")), "the entry of b");
    let (_d1, first) = {
        let (d, mut one) = open();
        rt.block_on(one.apply(vec![entry(1, create("a"))]))
            .expect("apply");
        (d, dump(&one))
    };
    for k in writes.keys() {
        match first.iter().find(|(fk, _)| fk == k) {
            Some((_, v)) => sm.tree().insert(k, v.clone()).map(|_| ()),
            None => sm.tree().remove(k).map(|_| ()),
        }
        .expect("write");
    }
    assert_ne!(dump(&sm), whole, "the crash took the second apply's writes");
    drop(sm);
    let sm = StateMachine::open(&db, &snaps).expect("state machine");
    assert_eq!(dump(&sm), whole);
}
