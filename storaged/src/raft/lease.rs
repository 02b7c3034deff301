//! Leader leases for reads: a leader that a majority acknowledged very
//! recently serves a linearizable read from its own state machine, without
//! the heartbeat round of a read index.
//!
//! Why it is safe: openraft's followers refuse to vote for anyone until the
//! leader lease (`election_timeout_max`) has passed since they last heard
//! from the leader, and the leader counts an acknowledgement from the time
//! it *sent* the request. So while the newest majority acknowledgement is
//! younger than [`ReadLease::limit`] (a fraction of that lease), no other
//! leader can exist. The leader must also have applied an entry of its own
//! term: then everything committed before it, including every write
//! answered by an earlier leader, is in its state machine. Writes this
//! leader answered were applied before they were answered.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::Raft;

/// Tracks when openraft last published its metrics, to age the
/// acknowledgement time they carry.
#[derive(Debug)]
pub struct ReadLease {
    limit: Duration,
    published: Mutex<Instant>,
}

impl ReadLease {
    /// A lease valid for `limit` after a majority acknowledgement.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            published: Mutex::new(Instant::now()),
        }
    }

    /// Follows `raft`'s metrics until it stops or `stop` is cancelled.
    pub async fn watch(&self, raft: Raft, stop: CancellationToken) {
        let mut rx = raft.metrics();
        loop {
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = stop.cancelled() => return,
            }
            *self.published.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }

    /// True when this node is the leader, has applied an entry of its
    /// term and a majority acknowledged it within the limit.
    pub fn holds(&self, raft: &Raft) -> bool {
        let since_published = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed();
        let m = raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
            return false;
        }
        if m.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
            return false;
        }
        let Some(acked_ms) = m.millis_since_quorum_ack else {
            return false;
        };
        // +1: the metrics round the age down to whole milliseconds.
        Duration::from_millis(acked_ms + 1) + since_published < self.limit
    }
}
