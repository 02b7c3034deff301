//! Leader leases for reads: a leader that a majority acknowledged very
//! recently serves a linearizable read from its own state machine, without
//! the heartbeat round of a read index.
//!
//! Why it is safe: openraft's followers refuse to vote for anyone until the
//! leader lease (`election_timeout_max`) has passed since they last
//! accepted an AppendEntries from the leader. The Raft network records, per
//! follower, when it *sent* each AppendEntries that the follower accepted
//! (any answer but "higher vote"), with the leader's term. While this
//! leader (counting itself) has such acknowledgements younger than
//! [`ReadLease::new`]'s limit from a majority of every voter set of its
//! membership, no other leader can exist. The times are taken in this
//! process when the request leaves, so a pause of the process (SIGSTOP)
//! only makes them older. The leader must also have applied an entry of
//! its own term: then everything committed before it, including every
//! write answered by an earlier leader, is in its state machine. Writes
//! this leader answered were applied before they were answered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::{NodeId, Raft};

/// The newest accepted AppendEntries per follower, and the lease length.
#[derive(Debug)]
pub struct ReadLease {
    limit: Duration,
    /// Follower → (leader's term, when the accepted request was sent).
    acks: Mutex<HashMap<NodeId, (u64, Instant)>>,
}

impl ReadLease {
    /// A lease valid for `limit` after a majority acknowledgement.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            acks: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `follower` accepted an AppendEntries of leader term
    /// `term` that was sent at `sent`.
    pub fn acked(&self, follower: NodeId, term: u64, sent: Instant) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let e = acks.entry(follower).or_insert((term, sent));
        if (term, sent) > *e {
            *e = (term, sent);
        }
    }

    /// True when this node is the leader, has applied an entry of its
    /// term and a majority of every voter set accepted it within the limit.
    pub fn holds(&self, raft: &Raft) -> bool {
        let m = raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
            return false;
        }
        let term = m.current_term;
        if m.last_applied.map(|l| l.leader_id.term) != Some(term) {
            return false;
        }
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |n: &NodeId| {
            *n == m.id
                || acks
                    .get(n)
                    .is_some_and(|&(t, sent)| t == term && sent.elapsed() < self.limit)
        };
        m.membership_config
            .membership()
            .get_joint_config()
            .iter()
            .all(|voters| voters.iter().filter(|n| fresh(n)).count() * 2 > voters.len())
    }
}
