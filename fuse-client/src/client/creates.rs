//! Creates answered before they are committed ("early creates").
//!
//! An upload's `open(O_CREAT)` used to wait for its own Raft write and its
//! `close` for a second one. An early create is numbered here, from a
//! range of inode numbers this client reserved, and the caller answers
//! the kernel at once. The create is held, and goes to the cluster:
//!
//! - with the file's first commit, in the same command (`CommitWrite`'s
//!   `create`): an upload is one Raft write;
//! - alone, [`HOLD`] after the open if the file has not been committed by
//!   then, so a file kept open does not stay invisible to other mounts;
//! - alone, at once, before any other metadata write of this client and
//!   before a read that names the file (its inode, its name, or a listing
//!   of its directory): the cluster sees this client's commands in the
//!   order it made them, and this client never reads the cluster without
//!   its own new file.
//!
//! The file's `close` and `fsync` wait for the create and fail with its
//! error if it failed ([`ClusterClient::created`]): durability at close is
//! unchanged.
//!
//! Only a create without `O_EXCL` is early (an exclusive create must learn
//! whether the name exists before `open` returns), and only of a name this
//! client found missing just before. If another client creates the same
//! name in between, the early create fails with EEXIST, which the file's
//! `close` reports; the other client's file stays whole.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use quizfs_proto::{self as pb, meta_op::Op};
use tokio::sync::watch;

use super::{ClientError, ClusterClient};

/// Inode numbers reserved at a time: one Raft write per this many creates.
const RESERVE: u32 = 1024;
/// How long an early create waits for its file's first commit before it
/// goes alone.
pub const HOLD: Duration = Duration::from_millis(20);

/// The early creates of one client.
#[derive(Debug, Default)]
pub(crate) struct Creates {
    /// Creates held or sent and not applied yet, and those that failed
    /// (kept until the file is forgotten, so its close reports it).
    pending: Mutex<HashMap<u64, Pending>>,
    /// Reserved inode numbers not used yet.
    pool: tokio::sync::Mutex<Range<u64>>,
}

/// One early create.
#[derive(Debug)]
struct Pending {
    parent: u64,
    name: Vec<u8>,
    state: State,
}

/// Where an early create is.
#[derive(Debug)]
enum State {
    /// Not sent yet.
    Held(pb::Create),
    /// Sent: `None` while in flight, then 0 (applied) or its errno.
    Sent(watch::Receiver<Option<i32>>),
}

/// Who answers for a sent create.
type Done = watch::Sender<Option<i32>>;

impl Creates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Marks a held create as sent; returns it and the sender of its result.
fn take(p: &mut Pending) -> Option<(pb::Create, Done)> {
    let State::Held(_) = p.state else {
        return None;
    };
    let (tx, rx) = watch::channel(None);
    let State::Held(c) = std::mem::replace(&mut p.state, State::Sent(rx)) else {
        unreachable!("checked above");
    };
    Some((c, tx))
}

/// Whether a sent create has its answer.
fn answered(rx: &watch::Receiver<Option<i32>>) -> bool {
    rx.borrow().is_some()
}

impl ClusterClient {
    /// Holds `c` (not exclusive) as an early create and returns the inode
    /// number it will have. Fails only if no number could be reserved.
    pub async fn create_early(&self, mut c: pb::Create) -> Result<u64, ClientError> {
        c.exclusive = false;
        c.ino = self.reserved_ino().await?;
        let ino = c.ino;
        let pending = Pending {
            parent: c.parent,
            name: c.name.clone(),
            state: State::Held(c),
        };
        self.inner.creates.lock().insert(ino, pending);
        let client = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HOLD).await;
            client.send_ino(ino);
        });
        Ok(ino)
    }

    /// Takes the held create of `ino` to send with the file's commit, or
    /// waits for it if it went already (Err if it failed).
    pub(crate) async fn create_for_commit(
        &self,
        ino: u64,
    ) -> Result<Option<(pb::Create, Done)>, ClientError> {
        let held = self.inner.creates.lock().get_mut(&ino).and_then(take);
        match held {
            Some(h) => Ok(Some(h)),
            None => self.created(ino).await.map(|()| None),
        }
    }

    /// Records the outcome of a create sent alone or with a commit.
    pub(crate) fn create_done(&self, ino: u64, tx: Done, errno: i32) {
        if errno == 0 {
            self.inner.creates.lock().remove(&ino);
        } else {
            tracing::warn!(ino, errno, "early create failed");
        }
        let _ = tx.send(Some(errno));
    }

    /// Holds a create again after a commit that carried it got no answer.
    pub(crate) fn create_again(&self, ino: u64, c: pb::Create) {
        if let Some(p) = self.inner.creates.lock().get_mut(&ino) {
            p.state = State::Held(c);
        }
    }

    /// Sends the held creates that `hit` selects (by inode and entry),
    /// each alone; returns the receivers of every selected create not
    /// answered yet.
    fn send_held(&self, hit: impl Fn(u64, &Pending) -> bool) -> Vec<watch::Receiver<Option<i32>>> {
        let mut waits = Vec::new();
        let mut sends = Vec::new();
        {
            let mut pending = self.inner.creates.lock();
            for (&ino, p) in pending.iter_mut().filter(|(i, p)| hit(**i, p)) {
                if let Some((c, tx)) = take(p) {
                    sends.push((ino, c, tx));
                }
                if let State::Sent(rx) = &p.state {
                    if !answered(rx) {
                        waits.push(rx.clone());
                    }
                }
            }
        }
        for (ino, c, tx) in sends {
            self.send_alone(ino, c, tx);
        }
        waits
    }

    /// The same for the create of `ino` alone, found by its key (the
    /// path of every close): its receiver, if it has a create.
    fn send_ino(&self, ino: u64) -> Option<watch::Receiver<Option<i32>>> {
        let (rx, send) = {
            let mut pending = self.inner.creates.lock();
            let p = pending.get_mut(&ino)?;
            let send = take(p);
            let State::Sent(rx) = &p.state else {
                unreachable!("a create just taken is sent");
            };
            (rx.clone(), send)
        };
        if let Some((c, tx)) = send {
            self.send_alone(ino, c, tx);
        }
        Some(rx)
    }

    /// Sends one create as its own command; `tx` gets its errno.
    fn send_alone(&self, ino: u64, c: pb::Create, tx: Done) {
        tracing::debug!(ino, "early create sent alone");
        let client = self.clone();
        tokio::spawn(async move {
            let errno = match client.apply_raw("create", Op::Create(c), true).await {
                Ok(reply) => reply.errno,
                Err(e) => e.errno(),
            };
            client.create_done(ino, tx, errno);
        });
    }

    /// Waits for the early create of `ino`, if there is one (sending it if
    /// held): Ok once it is applied (or if there was none), else the error
    /// it failed with.
    pub async fn created(&self, ino: u64) -> Result<(), ClientError> {
        let Some(mut rx) = self.send_ino(ino) else {
            return Ok(());
        };
        let errno = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(libc::EIO),
            Err(_) => libc::EIO,
        };
        if errno == 0 {
            Ok(())
        } else {
            Err(ClientError::Posix {
                op: "create",
                errno,
            })
        }
    }

    /// Forgets a failed early create of `ino` (its file was closed).
    pub fn forget_create(&self, ino: u64) {
        let mut pending = self.inner.creates.lock();
        if let Some(Pending {
            state: State::Sent(rx),
            ..
        }) = pending.get(&ino)
        {
            if answered(rx) {
                pending.remove(&ino);
            }
        }
    }

    /// Sends the held creates `hit` selects and waits for every selected
    /// one (applied or failed).
    async fn settle_creates(&self, hit: impl Fn(u64, &Pending) -> bool) {
        if self.inner.creates.lock().is_empty() {
            return;
        }
        for mut rx in self.send_held(hit) {
            // A sender dropped without an answer is a task that died:
            // there is nothing more to wait for.
            let _ = rx.wait_for(Option::is_some).await;
        }
    }

    /// Sends every held create and waits for all in flight: before any
    /// other metadata write of this client.
    pub(crate) async fn settle_all_creates(&self) {
        self.settle_creates(|_, _| true).await;
    }

    /// The same for the create of `ino`.
    pub(crate) async fn settle_ino(&self, ino: u64) {
        if let Some(mut rx) = self.send_ino(ino) {
            let _ = rx.wait_for(Option::is_some).await;
        }
    }

    /// The same for the creates in directory `dir`.
    pub(crate) async fn settle_dir(&self, dir: u64) {
        self.settle_creates(|_, p| p.parent == dir).await;
    }

    /// The same for a create of `dir/name`.
    pub(crate) async fn settle_name(&self, dir: u64, name: &[u8]) {
        self.settle_creates(|_, p| p.parent == dir && p.name == name)
            .await;
    }

    /// An inode number from this client's reserved range, reserving a new
    /// range when it is used up.
    async fn reserved_ino(&self) -> Result<u64, ClientError> {
        let mut pool = self.inner.creates.pool.lock().await;
        if pool.is_empty() {
            let op = Op::ReserveInodes(pb::ReserveInodes { count: RESERVE });
            let reply = self.apply_raw("reserve inodes", op, true).await?;
            if reply.errno != 0 || reply.value == 0 {
                let errno = if reply.errno != 0 {
                    reply.errno
                } else {
                    libc::EIO
                };
                return Err(ClientError::Posix {
                    op: "reserve inodes",
                    errno,
                });
            }
            *pool = reply.value..reply.value + u64::from(RESERVE);
        }
        Ok(pool.next().expect("a range just filled"))
    }
}
