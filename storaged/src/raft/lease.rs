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
//!
//! The bound this needs (ARCHITECTURE.md, "Read lease"): the time the
//! leader measures since a send must be at least the time that passed for
//! the followers, less the margin between the limit and their lease (75 ms
//! against 200 ms by default: any real clock rate is inside it). The
//! monotonic clock stops while the machine is suspended (a laptop lid, a
//! paused VM), so each acknowledgement also carries the wall clock, and it
//! counts only while *both* clocks say it is young: a leader that wakes up
//! to find either clock past the limit, or the wall clock behind the send,
//! does not answer from the lease (the read index, a round to a majority,
//! decides instead).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use openraft::ServerState;

use super::{NodeId, Raft};

/// The newest accepted AppendEntries per follower, and the lease length.
#[derive(Debug)]
pub struct ReadLease {
    limit: Duration,
    /// Follower → the newest accepted request.
    acks: Mutex<HashMap<NodeId, Ack>>,
    /// Given up for good (the node is shutting down).
    revoked: std::sync::atomic::AtomicBool,
}

/// An AppendEntries a follower accepted: the leader's term and when the
/// request was sent, by both clocks.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    /// The leader's term.
    pub term: u64,
    /// The monotonic clock at the send.
    pub sent: Instant,
    /// The wall clock at the send.
    pub sent_wall: SystemTime,
}

impl Ack {
    /// An acknowledgement of a request of `term` sent now.
    pub fn sent_now(term: u64) -> Self {
        Self {
            term,
            sent: Instant::now(),
            sent_wall: SystemTime::now(),
        }
    }

    /// True while both clocks say it was sent less than `limit` before
    /// `now` and `now_wall` (a wall clock behind the send: not young).
    fn young(&self, limit: Duration, now: Instant, now_wall: SystemTime) -> bool {
        now.saturating_duration_since(self.sent) < limit
            && now_wall
                .duration_since(self.sent_wall)
                .is_ok_and(|d| d < limit)
    }
}

impl ReadLease {
    /// A lease valid for `limit` after a majority acknowledgement.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            acks: Mutex::new(HashMap::new()),
            revoked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Gives the lease up for good: a node about to close its port, which
    /// followers take as proof that it is gone (`leader_gone.rs`), must
    /// not answer a read from the lease after that.
    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records that `follower` accepted an AppendEntries sent as `ack`
    /// says (kept if newer than the one recorded).
    pub fn acked(&self, follower: NodeId, ack: Ack) {
        let mut acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        let e = acks.entry(follower).or_insert(ack);
        if (ack.term, ack.sent) > (e.term, e.sent) {
            *e = ack;
        }
    }

    /// True when `follower`'s newest acknowledgement is of `term` and
    /// young at `now` / `now_wall` by both clocks.
    fn fresh(&self, follower: NodeId, term: u64, now: Instant, now_wall: SystemTime) -> bool {
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        acks.get(&follower)
            .is_some_and(|a| a.term == term && a.young(self.limit, now, now_wall))
    }

    /// True when this node is the leader, has applied an entry of its
    /// term and a majority of every voter set accepted it within the limit.
    pub fn holds(&self, raft: &Raft) -> bool {
        if self.revoked.load(std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let m = raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader || m.current_leader != Some(m.id) {
            return false;
        }
        let term = m.current_term;
        if m.last_applied.map(|l| l.leader_id.term) != Some(term) {
            return false;
        }
        let (now, now_wall) = (Instant::now(), SystemTime::now());
        let fresh = |n: &NodeId| *n == m.id || self.fresh(*n, term, now, now_wall);
        m.membership_config
            .membership()
            .get_joint_config()
            .iter()
            .all(|voters| voters.iter().filter(|n| fresh(n)).count() * 2 > voters.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_millis(75);

    /// An answer in term 3 to a heartbeat sent at `sent` (wall: `wall`).
    fn ack(sent: Instant, wall: SystemTime) -> Ack {
        Ack {
            term: 3,
            sent,
            sent_wall: wall,
        }
    }

    fn lease_with(ack: Ack) -> ReadLease {
        let lease = ReadLease::new(LIMIT);
        lease.acked(2, ack);
        lease
    }

    #[test]
    fn an_ack_counts_only_while_both_clocks_say_it_is_young() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let lease = lease_with(ack(now, wall));
        assert!(lease.fresh(2, 3, now, wall));
        assert!(!lease.fresh(2, 4, now, wall), "another term");
        assert!(!lease.fresh(1, 3, now, wall), "another follower");
        // The process was paused: the monotonic clock ran past the limit.
        assert!(!lease.fresh(2, 3, now + LIMIT, wall));
        // The machine was suspended: the monotonic clock stood still, the
        // wall clock did not.
        assert!(!lease.fresh(2, 3, now, wall + Duration::from_secs(5)));
        // The wall clock went back behind the send.
        assert!(!lease.fresh(2, 3, now, wall - Duration::from_millis(1)));
    }

    #[test]
    fn the_newest_ack_is_kept() {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let old = ack(now, wall);
        let lease = lease_with(old);
        let later = now + Duration::from_millis(50);
        lease.acked(2, ack(later, wall + Duration::from_millis(50)));
        // An older answer arriving late does not replace the newer one.
        lease.acked(2, old);
        let at = later + Duration::from_millis(60);
        assert!(lease.fresh(2, 3, at, wall + Duration::from_millis(110)));
    }
}
