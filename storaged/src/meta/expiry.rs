//! Session expiry. Every node notes when it last heard of each client
//! session (a mount's pings, its metadata writes); the leader proposes
//! `ExpireSessions` for the sessions it has not heard of for
//! `--session-timeout`, which forgets them and the orphans they held.
//!
//! A node that has just become leader counts every session as heard at
//! that moment: a session expires only after a whole timeout of silence
//! seen by one leader. Every node forgets the times older than the
//! timeout, so the table stays as large as the live sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;
use prometheus_client::metrics::counter::Counter;
use quizfs_proto::{self as pb, meta_op::Op};
use tokio_util::sync::CancellationToken;

use super::read::MetaReader;
use crate::raft::{COMMIT_TIMEOUT, Proposer, Raft, propose};

/// Most sessions one `ExpireSessions` command names.
pub const MAX_EXPIRE: usize = 1024;

/// When this node last heard of each session.
#[derive(Debug)]
pub struct SessionLeases {
    timeout: Duration,
    heard: Mutex<HashMap<u64, Instant>>,
}

impl SessionLeases {
    /// Leases of `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            heard: Mutex::new(HashMap::new()),
        }
    }

    /// The session timeout (`--session-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Notes that `client` (0: no session) was heard of now.
    pub fn heard(&self, client: u64) {
        if client != 0 {
            self.lock().insert(client, Instant::now());
        }
    }

    /// How many sessions this node keeps a time for.
    pub fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.heard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the times older than the timeout (on a follower: a leader
    /// counts from its own start anyway).
    pub fn prune(&self, now: Instant) {
        self.lock()
            .retain(|_, t| now.saturating_duration_since(*t) < self.timeout);
    }

    /// Which of `sessions` nothing was heard of for the timeout, counting
    /// a session never heard of as heard at `since`. Forgets the times of
    /// sessions not in `sessions` that are older than the timeout.
    pub fn silent(&self, sessions: &[u64], since: Instant, now: Instant) -> Vec<u64> {
        let mut heard = self.lock();
        let quiet = |t: Instant| now.saturating_duration_since(t) >= self.timeout;
        let silent: Vec<u64> = sessions
            .iter()
            .copied()
            .filter(|c| quiet(heard.get(c).copied().unwrap_or(since).max(since)))
            .collect();
        let known: std::collections::HashSet<u64> = sessions.iter().copied().collect();
        heard.retain(|c, t| known.contains(c) || !quiet(*t));
        for c in &silent {
            heard.remove(c);
        }
        silent
    }
}

/// On the leader, expires silent sessions until cancelled.
pub async fn run(
    leases: std::sync::Arc<SessionLeases>,
    raft: Raft,
    reader: MetaReader,
    expired_total: Counter,
    cancel: CancellationToken,
) {
    let tick = (leases.timeout() / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    // The term this node leads in, and since when.
    let mut led: Option<(u64, Instant)> = None;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let (state, term) = {
            let m = raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            // Times older than the timeout tell nothing a leader needs.
            leases.prune(Instant::now());
            led = None;
            continue;
        }
        let now = Instant::now();
        let since = match led {
            Some((t, since)) if t == term => since,
            _ => {
                led = Some((term, now));
                now
            }
        };
        if now.duration_since(since) < leases.timeout() {
            continue;
        }
        let ids = match reader.session_ids() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list sessions");
                continue;
            }
        };
        let silent = leases.silent(&ids, since, now);
        for clients in silent.chunks(MAX_EXPIRE) {
            let op = pb::MetaOp {
                op: Some(Op::ExpireSessions(pb::ExpireSessions {
                    clients: clients.to_vec(),
                })),
            };
            match propose(&raft, Proposer::default(), &op, COMMIT_TIMEOUT).await {
                Ok(r) => {
                    expired_total.inc_by(r.value);
                    tracing::info!(
                        sessions = r.value,
                        silent_for = ?leases.timeout(),
                        "client sessions expired"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "expiring sessions failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::SessionLeases;

    #[test]
    fn only_sessions_silent_for_the_timeout_expire() {
        let l = SessionLeases::new(Duration::from_secs(10));
        let t0 = Instant::now();
        l.heard(1);
        l.heard(0);
        assert_eq!(l.tracked(), 1, "no session is not tracked");
        // Never heard of: counted from `since`.
        assert!(
            l.silent(&[1, 2], t0, t0 + Duration::from_secs(5))
                .is_empty()
        );
        let later = t0 + Duration::from_secs(11);
        assert_eq!(l.silent(&[2], t0, later), vec![2]);
        // 1 is not in the table any more and its time is old: forgotten.
        assert_eq!(l.tracked(), 0);
        // A leader since `later` waits a whole timeout from then.
        l.heard(3);
        assert!(
            l.silent(&[3, 4], later, later + Duration::from_secs(9))
                .is_empty()
        );
    }
}
