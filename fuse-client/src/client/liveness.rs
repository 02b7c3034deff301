//! Whether each node is up: the one writer of that state, and the timings
//! derived from the ping timeout. The heartbeats (`health.rs`) report each
//! ping's outcome, and a call whose attempt ran out its deadline
//! (`call.rs`) reports that; everything else only reads, or waits for a
//! node to go down.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

use super::ClusterClient;

/// A node's up/down state.
#[derive(Debug)]
pub struct Liveness {
    up: AtomicBool,
    /// Woken when the node is marked down, so calls waiting on it give up.
    went_down: Notify,
}

impl Default for Liveness {
    /// A node starts up: it was just learnt from the cluster.
    fn default() -> Self {
        Self {
            up: AtomicBool::new(true),
            went_down: Notify::new(),
        }
    }
}

impl Liveness {
    /// Whether the node answered its last heartbeat in time.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// A heartbeat was answered in time (`true`) or not; returns whether
    /// that changed the node's state.
    pub fn heartbeat(&self, answered: bool) -> bool {
        self.set(answered)
    }

    /// A call to the node ran out its deadline: the node is down until a
    /// heartbeat says otherwise.
    pub fn missed_deadline(&self) {
        self.set(false);
    }

    fn set(&self, up: bool) -> bool {
        let was = self.up.swap(up, Ordering::Relaxed);
        if was && !up {
            self.went_down.notify_waiters();
        }
        was != up
    }

    /// Resolves once the node is down (at once if it is).
    pub async fn down(&self) {
        loop {
            let down = self.went_down.notified();
            tokio::pin!(down);
            down.as_mut().enable();
            if !self.is_up() {
                return;
            }
            down.await;
        }
    }
}

/// How often every node is pinged: several times per ping timeout, often
/// enough that a new leader is learnt within ~100 ms of its election (a
/// ping is a few hundred bytes).
pub fn ping_interval(ping_timeout: Duration) -> Duration {
    (ping_timeout / 10).clamp(Duration::from_millis(50), Duration::from_millis(200))
}

impl ClusterClient {
    /// How long a read that has something to fall back on (the last
    /// attributes of a file open here) waits for the cluster: two ping
    /// timeouts while the heartbeats see a majority up, else not at all.
    pub fn patience(&self) -> Duration {
        if self.majority_up() {
            self.inner.opts.ping_timeout * 2
        } else {
            Duration::ZERO
        }
    }
}
