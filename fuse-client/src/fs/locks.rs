//! File locks across mounts: `fcntl` byte-range locks (F_GETLK, F_SETLK,
//! F_SETLKW), OFD locks and `flock`, all held by the cluster (the kernel
//! sends all three here once the mount asks for POSIX and flock locks).
//!
//! - The owner of a lock is the kernel's lock owner on this mount within
//!   this mount's session: a process for `fcntl` locks, an open file
//!   description for OFD locks and `flock`. The kernel does not tell
//!   `flock` from a whole-file OFD lock here, so `flock` locks conflict
//!   with `fcntl` locks of other owners on the same file (as on NFS).
//! - A lock is released when its owner unlocks it, at `flush` for the
//!   owner that closes (POSIX: any close by the process), at `release` for
//!   every owner that locked through that handle (OFD and `flock`: the
//!   last close of the description), or when this mount's session expires.
//! - Locks are coherence points, as on NFS: taking one makes the file's
//!   view and the kernel's pages those of the newest commit; releasing one
//!   first commits this mount's writes to the file.
//! - F_SETLKW waits without polling the cluster: a long poll on the
//!   leader answers when the request leaves its queue. A signal to the
//!   waiting thread withdraws the request and answers EINTR (fuser does
//!   not pass the kernel's interrupts on, so the wait looks at the
//!   thread's pending signals in `/proc`).
//! - A mount without a session (a read-only certificate) cannot lock:
//!   ENOLCK.
//! - A lock whose session expired (this mount was cut off or frozen past
//!   `--session-timeout`) is gone: the cluster granted it to others.
//!   Every later lock operation of that owner on that file answers
//!   ENOLCK, and the log says why, until the owner closes the file.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use fuser::Errno;
use quizfs_proto as pb;

use super::errno::{err, errno};
use super::{Inner, OpResult, lock};
use crate::client::ClientError;
use crate::client::locks::{LockOutcome, WaitState};

/// How long one long poll for a queued lock request is held by the leader.
const WAIT_POLL_MS: u32 = 5_000;
/// How often a waiting request looks at its thread's pending signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(20);
/// The kernel's end of a lock that runs to the end of any file.
const OFFSET_MAX: u64 = i64::MAX as u64;

/// What this mount knows of its owners' locks.
#[derive(Debug, Default)]
pub struct LockBook {
    /// (inode, owner) that may hold locks, with the session they were
    /// taken in.
    held: HashMap<(u64, u64), u64>,
    /// The owners that took locks through each handle.
    by_handle: HashMap<u64, BTreeSet<u64>>,
    /// (inode, owner) whose locks went with an expired session.
    lost: HashSet<(u64, u64)>,
    /// Queued requests whose wait ended in an error (the cluster out of
    /// reach): they may still be granted, so the owner's close withdraws
    /// them before it unlocks.
    strays: HashMap<(u64, u64), Vec<u64>>,
}

/// The answer to F_GETLK: the blocking lock, or `typ` F_UNLCK.
#[derive(Debug, Clone, Copy)]
pub struct LockAnswer {
    /// First byte.
    pub start: u64,
    /// Last byte.
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    /// The holder's pid on this mount; 0 for a lock held through another
    /// mount.
    pub pid: u32,
}

/// One lock request from the kernel.
#[derive(Debug, Clone, Copy)]
pub struct LockReq {
    /// The inode.
    pub ino: u64,
    /// The handle it came through.
    pub fh: u64,
    /// The kernel's lock owner.
    pub owner: u64,
    /// First byte.
    pub start: u64,
    /// Last byte (OFFSET_MAX: to the end of any file).
    pub end: u64,
    /// F_RDLCK, F_WRLCK or F_UNLCK.
    pub typ: i32,
    /// The locking process.
    pub pid: u32,
}

impl LockReq {
    fn kind(&self) -> OpResult<pb::LockKind> {
        match self.typ {
            libc::F_RDLCK => Ok(pb::LockKind::LockRead),
            libc::F_WRLCK => Ok(pb::LockKind::LockWrite),
            libc::F_UNLCK => Ok(pb::LockKind::LockUnlock),
            _ => Err(err(libc::EINVAL)),
        }
    }

    /// The request as the cluster takes it.
    fn to_wire(self, kind: pb::LockKind, wait: bool) -> pb::SetLock {
        pb::SetLock {
            ino: self.ino,
            owner: self.owner,
            pid: self.pid,
            start: self.start,
            end: self.end(),
            kind: kind as i32,
            wait,
        }
    }

    /// The end as the cluster keeps it: to the end of any file is u64::MAX.
    fn end(&self) -> u64 {
        if self.end >= OFFSET_MAX {
            u64::MAX
        } else {
            self.end
        }
    }
}

/// Whether thread `tid` has a signal pending that it does not block (or
/// is gone): what would have interrupted its wait on a local file system.
fn signal_pending(tid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    (mask("SigPnd:") | mask("ShdPnd:")) & !mask("SigBlk:") != 0
}

impl Inner {
    fn book(&self) -> std::sync::MutexGuard<'_, LockBook> {
        lock(&self.locks)
    }

    /// ENOLCK if the locks of `owner` on `ino` went with an expired
    /// session (found now or before).
    fn check_not_lost(&self, ino: u64, owner: u64) -> OpResult<()> {
        let session = self.client().client_id();
        let mut book = self.book();
        if let Some(&s) = book.held.get(&(ino, owner)) {
            if s != session {
                book.held.remove(&(ino, owner));
                book.lost.insert((ino, owner));
                tracing::warn!(
                    ino,
                    owner,
                    old_session = s,
                    session,
                    "locks on this file were released by the cluster when this mount's session \
                     expired (the leader heard nothing of it for its --session-timeout); others \
                     may have taken them since. Lock operations on it answer ENOLCK until the \
                     file is closed"
                );
            }
        }
        if book.lost.contains(&(ino, owner)) {
            return Err(err(libc::ENOLCK));
        }
        Ok(())
    }

    fn note_held(&self, r: &LockReq, session: u64) {
        let mut book = self.book();
        book.held.insert((r.ino, r.owner), session);
        book.by_handle.entry(r.fh).or_default().insert(r.owner);
    }

    /// F_SETLK / F_SETLKW (`wait`) from thread `tid`.
    pub(super) async fn setlk(&self, r: LockReq, wait: bool, tid: u32) -> OpResult<()> {
        let kind = r.kind()?;
        if r.start > r.end {
            return Err(err(libc::EINVAL));
        }
        if self.client().client_id() == 0 {
            // No session (a read-only certificate): nothing to own a lock.
            return Err(err(libc::ENOLCK));
        }
        // A session that expired unseen (this mount was frozen or cut
        // off) is found before the owner's locks are trusted.
        if let Err(e) = self.client().ensure_session().await {
            tracing::debug!(error = %e, "session check before a lock failed");
        }
        self.check_not_lost(r.ino, r.owner)?;
        if kind == pb::LockKind::LockUnlock {
            return self.unlock(r).await;
        }
        // A file created here must exist in the cluster before it is
        // locked there: an early create that lost a race with another
        // mount's create of the name fails here, as its close would.
        self.client().created(r.ino).await.map_err(errno)?;
        let session = self.client().client_id();
        let had_locks = self.book().held.contains_key(&(r.ino, r.owner));
        match self
            .client()
            .set_lock(r.to_wire(kind, wait))
            .await
            .map_err(errno)?
        {
            LockOutcome::Granted(_) if had_locks && self.client().client_id() != session => {
                // Sent again in a new session: the owner's older locks
                // are gone, and this grant must not pass for them.
                self.drop_locks(r.ino, r.owner).await?;
                self.book().held.insert((r.ino, r.owner), session);
                self.check_not_lost(r.ino, r.owner)
            }
            LockOutcome::Granted(attr) => {
                self.note_held(&r, session);
                self.lock_taken(r.ino, attr).await;
                Ok(())
            }
            LockOutcome::Queued(id) => self.wait_granted(r, kind, id, session, tid).await,
        }
    }

    /// Waits for queued request `id` until it is granted, or withdraws it
    /// when the waiting thread gets a signal (EINTR). A wait that fails
    /// otherwise leaves the request a stray: the owner's close withdraws
    /// it, and unlocks in case it was granted meanwhile.
    async fn wait_granted(
        &self,
        r: LockReq,
        kind: pb::LockKind,
        id: u64,
        session: u64,
        tid: u32,
    ) -> OpResult<()> {
        match self.wait_queued(r, kind, id, tid).await {
            Ok(WaitState::Granted) => {
                self.note_held(&r, session);
                self.lock_taken(r.ino, None).await;
                Ok(())
            }
            Ok(_) => {
                tracing::warn!(
                    ino = r.ino,
                    owner = r.owner,
                    "a lock request waiting in the cluster's queue went with this mount's \
                     session (it expired): answering ENOLCK"
                );
                Err(err(libc::ENOLCK))
            }
            Err(e) if e.code() == libc::EINTR => Err(e),
            Err(e) => {
                tracing::warn!(
                    ino = r.ino,
                    owner = r.owner,
                    errno = e.code(),
                    "a wait for a lock failed; the request is withdrawn at the owner's close"
                );
                self.note_held(&r, session);
                self.book()
                    .strays
                    .entry((r.ino, r.owner))
                    .or_default()
                    .push(id);
                Err(e)
            }
        }
    }

    /// Long polls queued request `id` until it leaves the queue (Granted
    /// or Gone); EINTR once a signal to thread `tid` withdrew it.
    async fn wait_queued(
        &self,
        r: LockReq,
        kind: pb::LockKind,
        id: u64,
        tid: u32,
    ) -> OpResult<WaitState> {
        let poll = |wait_ms| pb::WaitLockRequest {
            ino: r.ino,
            client_id: 0,
            id,
            wait_ms,
            owner: r.owner,
            start: r.start,
            end: r.end(),
            kind: kind as i32,
        };
        loop {
            let long_poll = self.client().wait_lock(poll(WAIT_POLL_MS));
            tokio::pin!(long_poll);
            let state = loop {
                tokio::select! {
                    s = &mut long_poll => break s,
                    () = tokio::time::sleep(SIGNAL_CHECK) => {
                        if !signal_pending(tid) {
                            continue;
                        }
                        if self.client().cancel_lock_wait(r.ino, id).await.map_err(errno)? {
                            return Err(err(libc::EINTR));
                        }
                        // Granted (or gone) just before: see which.
                        break self.client().wait_lock(poll(0)).await;
                    }
                }
            };
            match state.map_err(errno)? {
                WaitState::Waiting => continue,
                done => return Ok(done),
            }
        }
    }

    /// Unlocks `r`'s range, after committing this mount's writes to the
    /// file (so the next holder reads them).
    async fn unlock(&self, r: LockReq) -> OpResult<()> {
        let whole = r.start == 0 && r.end() == u64::MAX;
        let known = self.book().held.contains_key(&(r.ino, r.owner));
        if !known {
            // Nothing taken here by this owner on this file: nothing to undo.
            return Ok(());
        }
        if let Some(f) = self.open_file(r.ino) {
            self.flush_file(&f, None).await?;
        }
        let req = r.to_wire(pb::LockKind::LockUnlock, false);
        self.client().set_lock(req).await.map_err(errno)?;
        if whole {
            self.book().held.remove(&(r.ino, r.owner));
        }
        Ok(())
    }

    /// A lock was taken on `ino`: the file's view and the kernel's pages
    /// become those of its newest commit (`attr`, when the grant carried
    /// it, says whether they already are).
    async fn lock_taken(&self, ino: u64, attr: Option<pb::Attr>) {
        let Some(f) = self.open_file(ino) else {
            return;
        };
        let current = lock(&self.pages).get(&ino).copied();
        if let Some(a) = &attr {
            if Some(a.content_version) == current && f.view().await >= a.content_version {
                return;
            }
        }
        match self.client().layout(ino).await {
            Ok((attr, extents)) => {
                let view = f.refresh(&attr, extents).await;
                self.pages_of(ino, view).await;
                self.file_attr(&attr);
            }
            Err(e) => {
                // The pages are dropped: reads go to the cluster.
                tracing::debug!(ino, error = %e, "no layout after a lock; dropping the pages");
                lock(&self.pages).remove(&ino);
            }
        }
    }

    /// F_GETLK.
    pub(super) async fn getlk(&self, r: LockReq) -> OpResult<LockAnswer> {
        let kind = r.kind()?;
        if kind == pb::LockKind::LockUnlock || r.start > r.end {
            return Err(err(libc::EINVAL));
        }
        self.check_not_lost(r.ino, r.owner)?;
        self.client().created(r.ino).await.map_err(errno)?;
        let found = self
            .client()
            .get_lock(pb::GetLockRequest {
                ino: r.ino,
                client_id: 0,
                owner: r.owner,
                start: r.start,
                end: r.end(),
                kind: kind as i32,
            })
            .await
            .map_err(errno)?;
        let end = |e: u64| e.min(OFFSET_MAX);
        Ok(match pb::LockKind::try_from(found.kind) {
            Ok(pb::LockKind::LockRead) | Ok(pb::LockKind::LockWrite) => LockAnswer {
                start: found.start,
                end: end(found.end),
                typ: if found.kind == pb::LockKind::LockWrite as i32 {
                    libc::F_WRLCK
                } else {
                    libc::F_RDLCK
                },
                pid: if found.same_client { found.pid } else { 0 },
            },
            _ => LockAnswer {
                start: r.start,
                end: r.end,
                typ: libc::F_UNLCK,
                pid: 0,
            },
        })
    }

    /// At a close by `owner` (flush): POSIX drops every lock the process
    /// holds on the file.
    pub(super) async fn close_owner(&self, ino: u64, owner: u64) -> OpResult<()> {
        let known = {
            let mut book = self.book();
            book.lost.remove(&(ino, owner));
            book.held.contains_key(&(ino, owner))
        };
        if known {
            self.drop_locks(ino, owner).await?;
        }
        Ok(())
    }

    /// At the last close of handle `fh` (release): drops the locks of
    /// every owner that locked through it (OFD locks, `flock`).
    pub(super) async fn close_handle(&self, ino: u64, fh: u64) {
        let owners = self.book().by_handle.remove(&fh).unwrap_or_default();
        for owner in owners {
            let known = {
                let mut book = self.book();
                book.lost.remove(&(ino, owner));
                book.held.contains_key(&(ino, owner))
            };
            if known {
                if let Err(e) = self.drop_locks(ino, owner).await {
                    tracing::warn!(ino, owner, error = ?e, "releasing locks at close failed");
                }
            }
        }
    }

    async fn drop_locks(&self, ino: u64, owner: u64) -> Result<(), Errno> {
        let strays = self.book().strays.remove(&(ino, owner)).unwrap_or_default();
        for id in strays {
            if let Err(e) = self.client().cancel_lock_wait(ino, id).await {
                tracing::warn!(ino, owner, id, error = %e, "withdrawing a stray lock request failed");
            }
        }
        let all = LockReq {
            ino,
            fh: 0,
            owner,
            start: 0,
            end: OFFSET_MAX,
            typ: libc::F_UNLCK,
            pid: 0,
        };
        let r = self
            .client()
            .set_lock(all.to_wire(pb::LockKind::LockUnlock, false))
            .await;
        self.book().held.remove(&(ino, owner));
        match r {
            Ok(_) => Ok(()),
            // Gone with the session: nothing is held any more.
            Err(ClientError::Posix { errno: e, .. }) if e == libc::ESTALE => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }
}
