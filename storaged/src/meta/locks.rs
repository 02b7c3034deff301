//! File locks held by the cluster: `fcntl` byte-range locks, OFD locks
//! and `flock`, one table per inode in the state machine, so every mount
//! sees the same locks, a leader change keeps them and every node grants
//! them in the same order.
//!
//! A lock belongs to an [`Owner`]: a client session (a mount) and the
//! kernel's lock owner on that mount (a process for `fcntl` locks, an
//! open file description for OFD locks and `flock`). A request that
//! conflicts waits in the table's queue if the sender asked to wait; each
//! change to the table grants, in queue order, every queued request that
//! no longer conflicts. A session that expires loses its locks and its
//! queued requests (`ExpireSessions`).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};

use quizfs_proto as pb;
use serde::{Deserialize, Serialize};

use super::ops::Ctx;
use super::schema::{self, Inode, inode_key};
use super::txn::{Fail, OpResult, Txn};

/// Key of the next id of a queued lock request.
pub const KEY_NEXT_WAIT: &[u8] = b"Nwait";
/// Most requests one inode's queue holds (ENOLCK past it).
pub const MAX_QUEUED: usize = 4096;
/// Most locks one inode's table holds (ENOLCK past it).
pub const MAX_HELD: usize = 16384;

/// Who holds a lock: a session and the kernel's lock owner on that mount.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Owner {
    /// The mount's session.
    pub client: u64,
    /// The kernel's lock owner on that mount.
    pub owner: u64,
}

/// One lock: bytes `[start, end]` (inclusive) of the file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Lock {
    /// Its owner.
    pub who: Owner,
    /// The process that took it, as its mount saw it (for F_GETLK).
    pub pid: u32,
    /// First byte.
    pub start: u64,
    /// Last byte (`u64::MAX`: to the end of any file).
    pub end: u64,
    /// Exclusive (write) rather than shared (read).
    pub write: bool,
}

impl Lock {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Whether `other` (of another owner) cannot be held with this one.
    pub fn conflicts(&self, other: &Lock) -> bool {
        self.who != other.who
            && (self.write || other.write)
            && self.overlaps(other.start, other.end)
    }
}

/// A request waiting for its lock.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Queued {
    /// Its id (the reply to the SetLock that queued it).
    pub id: u64,
    /// The lock it asks for.
    pub lock: Lock,
}

/// The locks of one inode and the requests waiting for one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockTable {
    /// Held locks, ordered by owner and start; one owner's never overlap.
    pub held: Vec<Lock>,
    /// Waiting requests, oldest first.
    pub queue: Vec<Queued>,
}

impl LockTable {
    /// The first held lock that `want` conflicts with.
    pub fn conflict(&self, want: &Lock) -> Option<&Lock> {
        self.held.iter().find(|h| h.conflicts(want))
    }

    /// The owners of the held locks that `want` conflicts with.
    fn blockers(&self, want: &Lock) -> BTreeSet<Owner> {
        self.held
            .iter()
            .filter(|h| h.conflicts(want))
            .map(|h| h.who)
            .collect()
    }

    /// Sets bytes `[start, end]` of `who` to `kind` (`None`: unlocked),
    /// replacing what `who` held there; no conflict check.
    pub fn set(&mut self, who: Owner, pid: u32, start: u64, end: u64, kind: Option<bool>) {
        let mut out = Vec::with_capacity(self.held.len() + 2);
        for l in self.held.drain(..) {
            if l.who != who || !l.overlaps(start, end) {
                out.push(l);
                continue;
            }
            if l.start < start {
                out.push(Lock {
                    end: start - 1,
                    ..l
                });
            }
            if l.end > end {
                out.push(Lock {
                    start: end + 1,
                    ..l
                });
            }
        }
        if let Some(write) = kind {
            out.push(Lock {
                who,
                pid,
                start,
                end,
                write,
            });
        }
        out.sort_by_key(|l| (l.who, l.start));
        // Merge an owner's neighbouring locks of one kind.
        let mut merged: Vec<Lock> = Vec::with_capacity(out.len());
        for l in out {
            match merged.last_mut() {
                Some(m)
                    if m.who == l.who
                        && m.write == l.write
                        && m.end.checked_add(1).is_none_or(|next| next >= l.start) =>
                {
                    m.end = m.end.max(l.end);
                    if l.who == who {
                        m.pid = pid;
                    }
                }
                _ => merged.push(l),
            }
        }
        self.held = merged;
    }

    /// Whether `who` holds all of `[start, end]` in `write` kind (or, for
    /// a read lock, either kind).
    pub fn holds(&self, who: Owner, start: u64, end: u64, write: bool) -> bool {
        let mut next = start;
        for l in self
            .held
            .iter()
            .filter(|l| l.who == who && (l.write || !write))
        {
            if l.start <= next && l.end >= next {
                match l.end.checked_add(1) {
                    Some(n) if l.end < end => next = n,
                    _ => return true,
                }
            }
        }
        false
    }

    /// Grants, oldest first, every queued request that conflicts with no
    /// held lock; returns how many.
    pub fn grant_queued(&mut self) -> usize {
        let mut granted = 0;
        let mut i = 0;
        while i < self.queue.len() {
            let q = self.queue[i];
            if self.conflict(&q.lock).is_none() {
                self.queue.remove(i);
                let l = q.lock;
                self.set(l.who, l.pid, l.start, l.end, Some(l.write));
                granted += 1;
            } else {
                i += 1;
            }
        }
        granted
    }

    /// Drops every lock and request of `clients`; true if any went.
    pub fn drop_clients(&mut self, clients: &HashSet<u64>) -> bool {
        let before = (self.held.len(), self.queue.len());
        self.held.retain(|l| !clients.contains(&l.who.client));
        self.queue.retain(|q| !clients.contains(&q.lock.who.client));
        (self.held.len(), self.queue.len()) != before
    }

    /// Whether the table holds nothing.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.queue.is_empty()
    }
}

/// Key of an inode's lock table.
pub fn lock_key(ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = schema::PREFIX_LOCK;
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

fn load(txn: &Txn<'_>, ino: u64) -> OpResult<LockTable> {
    Ok(txn.get(&lock_key(ino))?.unwrap_or_default())
}

fn save(txn: &mut Txn<'_>, ino: u64, t: &LockTable) {
    if t.is_empty() {
        txn.remove(&lock_key(ino));
    } else {
        txn.put(&lock_key(ino), t);
    }
}

/// The kind a request asks for: `None` to unlock, else whether exclusive.
pub fn kind_of(kind: i32) -> Result<Option<bool>, i32> {
    match pb::LockKind::try_from(kind) {
        Ok(pb::LockKind::LockUnlock) => Ok(None),
        Ok(pb::LockKind::LockRead) => Ok(Some(false)),
        Ok(pb::LockKind::LockWrite) => Ok(Some(true)),
        Err(_) => Err(libc::EINVAL),
    }
}

/// SetLock: see the proto.
pub fn set_lock(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::SetLock) -> OpResult<pb::MetaReply> {
    if ctx.client_id == 0 {
        return Err(Fail::Posix(libc::EINVAL));
    }
    let kind = kind_of(c.kind).map_err(Fail::Posix)?;
    let who = Owner {
        client: ctx.client_id,
        owner: c.owner,
    };
    // Only an existing inode is locked (a deleted one still open
    // somewhere keeps its record); unlocking always works.
    let inode = txn.get::<Inode>(&inode_key(c.ino))?;
    if kind.is_some() && inode.is_none() {
        return Err(Fail::Posix(libc::ENOENT));
    }
    let mut t = load(txn, c.ino)?;
    let mut reply = pb::MetaReply::default();
    let want = Lock {
        who,
        pid: c.pid,
        start: c.start,
        end: c.end,
        write: kind.unwrap_or(false),
    };
    if kind.is_some() && t.conflict(&want).is_some() {
        if !c.wait {
            return Err(Fail::Posix(libc::EAGAIN));
        }
        if t.queue.len() >= MAX_QUEUED {
            return Err(Fail::Posix(libc::ENOLCK));
        }
        if would_deadlock(txn, c.ino, &t, &want)? {
            return Err(Fail::Posix(libc::EDEADLK));
        }
        let id = txn.get_u64(KEY_NEXT_WAIT)?.max(1);
        txn.put_u64(KEY_NEXT_WAIT, id + 1);
        t.queue.push(Queued { id, lock: want });
        reply.value = id;
    } else {
        t.set(who, c.pid, c.start, c.end, kind);
        if t.held.len() > MAX_HELD {
            return Err(Fail::Posix(libc::ENOLCK));
        }
        t.grant_queued();
        if kind.is_some() {
            reply.attr = inode.map(|i| i.attr(c.ino));
        }
    }
    save(txn, c.ino, &t);
    Ok(reply)
}

/// CancelLockWait: see the proto.
pub fn cancel_wait(txn: &mut Txn<'_>, ctx: &Ctx, c: &pb::CancelLockWait) -> OpResult<u64> {
    let mut t = load(txn, c.ino)?;
    let before = t.queue.len();
    t.queue
        .retain(|q| !(q.id == c.id && q.lock.who.client == ctx.client_id));
    if t.queue.len() == before {
        return Ok(0);
    }
    save(txn, c.ino, &t);
    Ok(1)
}

/// Drops every lock and queued request of `clients`, granting what that
/// frees; returns how many tables changed.
pub fn drop_sessions(txn: &mut Txn<'_>, clients: &[u64]) -> OpResult<u64> {
    let gone: HashSet<u64> = clients.iter().copied().collect();
    let mut changed = 0;
    for key in txn.keys_with_prefix(&[schema::PREFIX_LOCK])? {
        let Some(mut t) = txn.get::<LockTable>(&key)? else {
            continue;
        };
        if t.drop_clients(&gone) {
            t.grant_queued();
            let Ok(ino) = <[u8; 8]>::try_from(&key[1..]).map(u64::from_be_bytes) else {
                continue;
            };
            save(txn, ino, &t);
            changed += 1;
        }
    }
    Ok(changed)
}

/// Whether queueing `want` on `ino` (table `t`) would make its owner wait,
/// through a chain of owners each waiting for the next, on itself.
fn would_deadlock(txn: &Txn<'_>, ino: u64, t: &LockTable, want: &Lock) -> OpResult<bool> {
    // Who each owner with a queued request waits for, over every table.
    let mut waits: BTreeMap<Owner, BTreeSet<Owner>> = BTreeMap::new();
    for key in txn.keys_with_prefix(&[schema::PREFIX_LOCK])? {
        let table = if key[..] == lock_key(ino) {
            t.clone()
        } else {
            match txn.get::<LockTable>(&key)? {
                Some(x) => x,
                None => continue,
            }
        };
        for q in &table.queue {
            waits
                .entry(q.lock.who)
                .or_default()
                .extend(table.blockers(&q.lock));
        }
    }
    let mut seen: HashSet<Owner> = HashSet::new();
    let mut todo: VecDeque<Owner> = t.blockers(want).into_iter().collect();
    while let Some(o) = todo.pop_front() {
        if o == want.who {
            return Ok(true);
        }
        if seen.insert(o) {
            if let Some(next) = waits.get(&o) {
                todo.extend(next.iter().copied());
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::{Lock, LockTable, Owner};

    const A: Owner = Owner {
        client: 1,
        owner: 10,
    };
    const B: Owner = Owner {
        client: 2,
        owner: 10,
    };

    fn ranges(t: &LockTable, who: Owner) -> Vec<(u64, u64, bool)> {
        t.held
            .iter()
            .filter(|l| l.who == who)
            .map(|l| (l.start, l.end, l.write))
            .collect()
    }

    fn want(who: Owner, start: u64, end: u64, write: bool) -> Lock {
        Lock {
            who,
            pid: 1,
            start,
            end,
            write,
        }
    }

    #[test]
    fn ranges_split_and_merge_like_posix_locks() {
        let mut t = LockTable::default();
        t.set(A, 1, 0, 99, Some(false));
        // A write lock in the middle splits the read lock in three.
        t.set(A, 1, 40, 59, Some(true));
        assert_eq!(
            ranges(&t, A),
            vec![(0, 39, false), (40, 59, true), (60, 99, false)]
        );
        // Back to read: the three merge into one.
        t.set(A, 1, 40, 59, Some(false));
        assert_eq!(ranges(&t, A), vec![(0, 99, false)]);
        // Adjacent ranges merge; unlocking the middle splits again.
        t.set(A, 1, 100, u64::MAX, Some(false));
        assert_eq!(ranges(&t, A), vec![(0, u64::MAX, false)]);
        t.set(A, 1, 10, 19, None);
        assert_eq!(ranges(&t, A), vec![(0, 9, false), (20, u64::MAX, false)]);
        assert!(t.holds(A, 20, 500, false));
        assert!(!t.holds(A, 5, 25, false));
        assert!(!t.holds(A, 20, 30, true));
        t.set(A, 1, 0, u64::MAX, None);
        assert!(t.is_empty());
    }

    #[test]
    fn only_other_owners_overlapping_with_a_writer_conflict() {
        let mut t = LockTable::default();
        t.set(A, 1, 0, 9, Some(true));
        assert!(t.conflict(&want(B, 10, 20, true)).is_none(), "disjoint");
        assert!(t.conflict(&want(B, 5, 20, false)).is_some(), "overlap");
        assert!(t.conflict(&want(A, 5, 20, true)).is_none(), "own lock");
        t.set(A, 1, 0, 9, Some(false));
        assert!(t.conflict(&want(B, 0, 9, false)).is_none(), "two readers");
        assert!(
            t.conflict(&want(B, 0, 0, true)).is_some(),
            "reader blocks writer"
        );
    }

    #[test]
    fn queued_requests_are_granted_in_order_when_nothing_conflicts() {
        let c = Owner {
            client: 3,
            owner: 7,
        };
        let mut t = LockTable::default();
        t.set(A, 1, 0, u64::MAX, Some(true));
        t.queue.push(super::Queued {
            id: 1,
            lock: want(B, 0, 9, true),
        });
        t.queue.push(super::Queued {
            id: 2,
            lock: want(c, 5, 5, false),
        });
        assert_eq!(t.grant_queued(), 0);
        t.set(A, 1, 0, u64::MAX, None);
        // B first; C's read of byte 5 then conflicts with B's write.
        assert_eq!(t.grant_queued(), 1);
        assert_eq!(t.queue.len(), 1);
        assert!(t.holds(B, 0, 9, true));
        let gone = [2].into_iter().collect();
        assert!(t.drop_clients(&gone));
        assert_eq!(t.grant_queued(), 1);
        assert!(t.holds(c, 5, 5, false));
    }

    /// Bytes modelled: ranges start below `CELLS - 1`; the last cell
    /// stands for every byte from there to u64::MAX.
    const CELLS: usize = 13;

    #[derive(Debug, Clone)]
    enum Step {
        Set {
            o: usize,
            start: u64,
            end: Option<u64>,
            kind: Option<bool>,
            wait: bool,
        },
        Cancel(usize),
        Drop(u64),
    }

    fn owner(o: usize) -> Owner {
        Owner {
            client: o as u64 % 2 + 1,
            owner: o as u64 / 2,
        }
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (0usize..4, 0u64..(CELLS as u64 - 1), prop::option::of(0u64..6), prop::option::of(any::<bool>()), any::<bool>())
                .prop_map(|(o, start, len, kind, wait)| Step::Set {
                    o,
                    start,
                    end: len.map(|l| (start + l).min(CELLS as u64 - 2)),
                    kind,
                    wait,
                }),
            1 => (0usize..8).prop_map(Step::Cancel),
            1 => (1u64..3).prop_map(Step::Drop),
        ]
    }

    /// The plain model: each owner's kind per byte, and the queue.
    #[derive(Default)]
    struct Model {
        cells: [[Option<bool>; CELLS]; 4],
        queue: Vec<(u64, usize, usize, usize, bool)>,
    }

    impl Model {
        fn conflicts(&self, o: usize, a: usize, b: usize, write: bool) -> bool {
            (0..4).any(|p| {
                p != o
                    && self.cells[p][a..=b]
                        .iter()
                        .any(|c| c.is_some_and(|w| w || write))
            })
        }

        fn grant(&mut self) {
            let mut i = 0;
            while i < self.queue.len() {
                let (_, o, a, b, w) = self.queue[i];
                if self.conflicts(o, a, b, w) {
                    i += 1;
                } else {
                    self.queue.remove(i);
                    self.cells[o][a..=b].fill(Some(w));
                }
            }
        }
    }

    /// The table's held locks as the model's cells.
    fn cells_of(t: &LockTable) -> [[Option<bool>; CELLS]; 4] {
        let mut out = [[None; CELLS]; 4];
        for l in &t.held {
            let o = (0..4).find(|&o| owner(o) == l.who).unwrap();
            let b = if l.end == u64::MAX {
                CELLS - 1
            } else {
                l.end as usize
            };
            out[o][l.start as usize..=b].fill(Some(l.write));
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn the_table_agrees_with_a_byte_model(steps in proptest::collection::vec(step(), 1..60)) {
            let mut t = LockTable::default();
            let mut m = Model::default();
            let mut next_id = 1;
            for s in steps {
                match s {
                    Step::Set { o, start, end, kind, wait } => {
                        let (a, b) = (start as usize, end.map_or(CELLS - 1, |e| e as usize));
                        let end = end.unwrap_or(u64::MAX);
                        let want = Lock { who: owner(o), pid: 1, start, end, write: kind.unwrap_or(false) };
                        match kind {
                            Some(w) if t.conflict(&want).is_some() => {
                                proptest::prop_assert!(m.conflicts(o, a, b, w));
                                if wait {
                                    t.queue.push(super::Queued { id: next_id, lock: want });
                                    m.queue.push((next_id, o, a, b, w));
                                    next_id += 1;
                                }
                            }
                            _ => {
                                if let Some(w) = kind {
                                    proptest::prop_assert!(!m.conflicts(o, a, b, w));
                                }
                                t.set(owner(o), 1, start, end, kind);
                                t.grant_queued();
                                m.cells[o][a..=b].fill(kind);
                                m.grant();
                            }
                        }
                    }
                    Step::Cancel(i) => {
                        if !t.queue.is_empty() {
                            let i = i % t.queue.len();
                            t.queue.remove(i);
                            m.queue.remove(i);
                        }
                    }
                    Step::Drop(client) => {
                        t.drop_clients(&[client].into_iter().collect());
                        t.grant_queued();
                        for o in 0..4 {
                            if owner(o).client == client {
                                m.cells[o] = [None; CELLS];
                            }
                        }
                        m.queue.retain(|q| owner(q.1).client != client);
                        m.grant();
                    }
                }
                proptest::prop_assert_eq!(cells_of(&t), m.cells);
                let ids: Vec<u64> = t.queue.iter().map(|q| q.id).collect();
                let model_ids: Vec<u64> = m.queue.iter().map(|q| q.0).collect();
                proptest::prop_assert_eq!(ids, model_ids);
                // One owner's locks: sorted, apart, merged where they touch.
                for w in t.held.windows(2) {
                    if w[0].who == w[1].who {
                        proptest::prop_assert!(w[0].end < w[1].start, "{:?}", w);
                        proptest::prop_assert!(
                            w[0].write != w[1].write || w[0].end + 1 < w[1].start,
                            "not merged: {:?}", w
                        );
                    }
                }
            }
        }
    }
}
