//! File locks through the cluster: set, test, wait for and withdraw a
//! lock request (the state machine's `crate::meta::locks` on the nodes).

use quizfs_proto::{self as pb, ReadReply, meta_client::MetaClient, meta_op::Op};

use super::{ClientError, ClusterClient};

/// What a lock request came to.
#[derive(Debug, Clone, PartialEq)]
pub enum LockOutcome {
    /// Granted at once (or an unlock done); the file's attributes at the
    /// grant, when it exists.
    Granted(Option<pb::Attr>),
    /// Queued behind a conflicting lock: the request's id.
    Queued(u64),
}

/// Where a queued request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitState {
    /// Still queued.
    Waiting,
    /// Granted.
    Granted,
    /// No longer queued and not granted: withdrawn, or its session gone.
    Gone,
}

impl ClusterClient {
    /// Sets, changes or removes a lock (see `SetLock` in the proto). A
    /// conflict is `Posix { errno: EAGAIN }` unless `wait`; a wait that
    /// would deadlock is EDEADLK.
    pub async fn set_lock(&self, req: pb::SetLock) -> Result<LockOutcome, ClientError> {
        let r = self.apply("setlk", Op::SetLock(req)).await?;
        if r.errno != 0 {
            return Err(ClientError::Posix {
                op: "setlk",
                errno: r.errno,
            });
        }
        Ok(match r.value {
            0 => LockOutcome::Granted(r.attr),
            id => LockOutcome::Queued(id),
        })
    }

    /// Withdraws queued request `id` on `ino`: true if it was still
    /// queued, false if it was granted (or is gone) meanwhile.
    pub async fn cancel_lock_wait(&self, ino: u64, id: u64) -> Result<bool, ClientError> {
        let op = Op::CancelLockWait(pb::CancelLockWait { ino, id });
        Ok(self.apply("setlk-cancel", op).await?.value == 1)
    }

    /// The first lock, held by another owner, that `req` would conflict
    /// with (`kind` LOCK_UNLOCK when none).
    pub async fn get_lock(
        &self,
        mut req: pb::GetLockRequest,
    ) -> Result<pb::GetLockReply, ClientError> {
        req.client_id = self.client_id();
        let r = self
            .leader_call("getlk", |ch| async move {
                MetaClient::new(ch).get_lock(req).await
            })
            .await?;
        match r.errno() {
            0 => Ok(r),
            errno => Err(ClientError::Posix { op: "getlk", errno }),
        }
    }

    /// Waits (up to `req.wait_ms`, which the node may cap) for a queued
    /// request to leave the queue.
    pub async fn wait_lock(&self, mut req: pb::WaitLockRequest) -> Result<WaitState, ClientError> {
        req.client_id = self.client_id();
        // The node holds the call; it must answer well inside one call's
        // deadline.
        let half = self.options().call_timeout.as_millis() / 2;
        req.wait_ms = req.wait_ms.min(u32::try_from(half).unwrap_or(u32::MAX));
        let r = self
            .leader_call("setlkw", |ch| async move {
                MetaClient::new(ch).wait_lock(req).await
            })
            .await?;
        if r.errno != 0 {
            return Err(ClientError::Posix {
                op: "setlkw",
                errno: r.errno,
            });
        }
        Ok(if r.waiting {
            WaitState::Waiting
        } else if r.granted {
            WaitState::Granted
        } else {
            WaitState::Gone
        })
    }
}
