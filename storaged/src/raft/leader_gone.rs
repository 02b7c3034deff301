//! A follower that learns its leader's process is gone stops waiting for
//! the leader's lease to run out.
//!
//! The proof is a refused connection: when a process dies, the kernel
//! closes its sockets and answers a connection to its port with a reset.
//! No process there means no leader that could still answer a client, so
//! the lease protects nothing. A leader that is alive but frozen (SIGSTOP)
//! still completes connections (the kernel accepts them for it), and one
//! that is cut off answers nothing: neither is a refusal, so both keep
//! today's timing. A node shutting down gives up its read lease before it
//! closes its port (`node.rs`).
//!
//! When to look: whenever a connection to this node closes (the leader's
//! own connection to each follower closes the moment its process dies),
//! and before this node answers a vote request. What it does: it moves its
//! Raft clock past the lease (`clock.rs`), so that it grants a vote at
//! once; and one follower, the one with the lowest id, stands for election
//! at once, so that the two do not split the vote.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::ServerState;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{NodeId, Raft};

/// How long a connection to the leader may take before the probe gives
/// up. On a LAN a refusal, or an accepted connection, takes well under a
/// millisecond; no answer at all means a cut or a lost packet, never proof.
/// Short, because a vote waits for it.
const PROBE_TIMEOUT: Duration = Duration::from_millis(20);

/// What a connection to a port met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// Refused: no process listens there.
    Refused,
    /// Accepted: a process (or its kernel, if frozen) is there.
    Accepted,
    /// No answer in time, or another error: nothing is known.
    Unknown,
}

/// Connects to `addr` and says what happened.
pub async fn probe(addr: &str) -> Probe {
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Probe::Accepted,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Probe::Refused,
        _ => Probe::Unknown,
    }
}

/// Watches for proof that this follower's leader is gone.
pub struct LeaderGone {
    raft: Raft,
    self_id: NodeId,
    /// The followers' lease: `election_timeout_max`.
    lease: Duration,
    /// The term whose leader was found gone (each term is acted on once).
    acted_term: AtomicU64,
}

impl std::fmt::Debug for LeaderGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderGone")
            .field("self_id", &self.self_id)
            .field("acted_term", &self.acted_term)
            .finish_non_exhaustive()
    }
}

impl LeaderGone {
    /// A watcher for `raft`, whose followers keep a lease of `lease`.
    pub fn new(raft: Raft, self_id: NodeId, lease: Duration) -> Self {
        Self {
            raft,
            self_id,
            lease,
            acted_term: AtomicU64::new(0),
        }
    }

    /// Looks at the leader's port if this node follows a leader of a term
    /// not yet acted on, and acts if it refuses. `again`: a connection
    /// just closed, so the leader may be dying: a port still accepting is
    /// looked at a few more times over 100 ms (a dying process closes its
    /// connections a moment before its listening socket). Returns whether
    /// it acted.
    pub async fn check(&self, again: bool) -> bool {
        let m = self.raft.metrics().borrow().clone();
        let term = m.current_term;
        let Some(leader) = m.current_leader else {
            return false;
        };
        if m.state != ServerState::Follower
            || leader == self.self_id
            || self.acted_term.load(Ordering::Acquire) >= term
        {
            return false;
        }
        let Some(addr) = m
            .membership_config
            .nodes()
            .find(|(id, _)| **id == leader)
            .map(|(_, n)| n.addr.clone())
        else {
            return false;
        };
        let waits: &[u64] = if again { &[0, 5, 15, 30, 50] } else { &[0] };
        let mut gone = false;
        for wait in waits {
            tokio::time::sleep(Duration::from_millis(*wait)).await;
            match probe(&addr).await {
                Probe::Refused => {
                    gone = true;
                    break;
                }
                Probe::Accepted => {}
                Probe::Unknown => break,
            }
        }
        if !gone || self.acted_term.fetch_max(term, Ordering::AcqRel).ge(&term) {
            return false;
        }
        // Past the lease: openraft refuses a vote while now <= its end.
        super::clock::jump(self.lease + Duration::from_millis(1));
        // The lowest id among the other voters stands at once; the others
        // only free their vote, and stand after an election timeout if no
        // leader shows up by then.
        let first = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != leader)
            .min();
        let stand = first == Some(self.self_id);
        tracing::warn!(
            leader,
            %addr,
            term,
            stand,
            "the leader's port refuses connections: its process is gone; not waiting out its lease"
        );
        if stand {
            if let Err(e) = self.raft.trigger().elect().await {
                tracing::warn!(error = %e, "could not start an election");
            }
        }
        true
    }

    /// Checks each time `closed` is notified (a connection to this node
    /// closed), until cancelled.
    pub async fn run(self: Arc<Self>, closed: Arc<Notify>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = closed.notified() => {}
            }
            self.check(true).await;
        }
    }
}
