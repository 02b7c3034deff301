//! The client's session on the cluster. The leader forgets a session it
//! has heard nothing of for its `--session-timeout` (the mount's pings
//! renew it), and with it the files the session kept open after their
//! unlink. A client that finds its session gone registers a new one and
//! carries on; only what the old session held is lost, and the file
//! system answers ESTALE for those descriptors.
//!
//! The client finds out in two ways: a request answered "session
//! expired" (sent again in the new session when it was never sent
//! before, else its outcome is unknown: EIO), and the heartbeats: a
//! leader that answers after a silence of half the timeout or more puts
//! the session in doubt, and the client asks the leader (`TouchSession`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quizfs_proto::{self as pb, meta_client::MetaClient, meta_op::Op};

use super::{ClientError, ClusterClient};

/// What the client knows of its session's lease.
#[derive(Debug, Default)]
pub struct SessionWatch {
    /// One re-registration at a time.
    renewing: tokio::sync::Mutex<()>,
    /// One check at a time.
    checking: AtomicBool,
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The cluster's session timeout, from the leader's ping answers.
    timeout: Option<Duration>,
    /// When the leader last answered a ping.
    last_ack: Option<Instant>,
    /// The leader was silent long enough that the session may be gone.
    doubt: bool,
}

impl SessionWatch {
    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a ping answer from the leader; true when the silence before
    /// it puts the session in doubt.
    pub(super) fn leader_answered(&self, timeout_ms: u64) -> bool {
        let now = Instant::now();
        let mut s = self.lock();
        if timeout_ms > 0 {
            s.timeout = Some(Duration::from_millis(timeout_ms));
        }
        if let (Some(last), Some(t)) = (s.last_ack, s.timeout) {
            if now.duration_since(last) >= t / 2 {
                s.doubt = true;
            }
        }
        s.last_ack = Some(now);
        s.doubt
    }

    /// Whether the session may have expired unseen.
    fn in_doubt(&self) -> bool {
        let s = self.lock();
        s.doubt || matches!((s.last_ack, s.timeout), (Some(l), Some(t)) if l.elapsed() >= t / 2)
    }

    fn settled(&self) {
        self.lock().doubt = false;
    }
}

impl ClusterClient {
    /// Registers a session with the cluster; returns its id.
    pub(super) async fn register(&self) -> Result<u64, ClientError> {
        let req = pb::MetaRequest {
            op: Some(pb::MetaOp {
                op: Some(Op::RegisterClient(pb::RegisterClient {})),
            }),
            ..Default::default()
        };
        let r = self
            .leader_call("register", |ch| {
                let r = req.clone();
                async move { MetaClient::new(ch).apply(r).await }
            })
            .await?;
        if r.errno != 0 {
            return Err(ClientError::Posix {
                op: "register",
                errno: r.errno,
            });
        }
        Ok(r.value)
    }

    /// Replaces the session `expired` (if it is still this client's) with
    /// a new one.
    pub(super) async fn renew_session(&self, expired: u64) -> Result<(), ClientError> {
        let _one = self.inner.session.renewing.lock().await;
        if self.client_id() != expired {
            return Ok(());
        }
        let id = self.register().await?;
        self.inner.client_id.store(id, Ordering::Relaxed);
        self.inner.counters.session_renewals.inc();
        self.inner.session.settled();
        tracing::warn!(
            expired,
            new = id,
            "this client's session expired (the leader heard nothing of it for the cluster's \
             --session-timeout); registered a new one. Files it kept open after their unlink \
             are gone: their descriptors answer ESTALE"
        );
        Ok(())
    }

    /// Makes sure the session exists when it may have expired unseen (the
    /// leader was silent for half the session timeout): asks the leader,
    /// and registers anew if it did expire. Free otherwise.
    pub async fn ensure_session(&self) -> Result<(), ClientError> {
        if self.client_id() == 0 || !self.inner.session.in_doubt() {
            return Ok(());
        }
        let _one = self.inner.session.renewing.lock().await;
        if !self.inner.session.in_doubt() {
            return Ok(());
        }
        drop(_one);
        // Bounded: without a leader the check waits no longer than one call.
        let touch = self.apply_raw("touch", Op::TouchSession(pb::TouchSession {}), true);
        let within = self.inner.opts.call_timeout;
        tokio::time::timeout(within, touch)
            .await
            .map_err(|_| ClientError::Timeout {
                op: "touch",
                timeout: within,
                last: "no answer from the leader".into(),
            })??;
        self.inner.session.settled();
        Ok(())
    }

    /// From the heartbeats: checks the session in the background when the
    /// leader's silence put it in doubt.
    pub(super) fn leader_answered(&self, timeout_ms: u64) {
        if !self.inner.session.leader_answered(timeout_ms) || self.client_id() == 0 {
            return;
        }
        if self.inner.session.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let c = self.clone();
        tokio::spawn(async move {
            if let Err(e) = c.ensure_session().await {
                tracing::debug!(error = %e, "session check failed; retried on the next heartbeat");
            }
            c.inner.session.checking.store(false, Ordering::Release);
        });
    }
}
