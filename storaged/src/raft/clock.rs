//! The clock Raft runs on: tokio's, plus an offset that only grows.
//!
//! openraft's followers refuse to vote for anyone until the leader's lease
//! (`election_timeout_max` since its last heartbeat) has passed, so that a
//! leader that is only slow or cut off is not deposed while it may still
//! answer. When the leader's process is gone, waiting out that lease only
//! adds to the pause. A follower that has proof of it (the leader's port
//! refuses connections: see `leader_gone.rs`) moves its Raft clock forward
//! by the lease instead, which to Raft is the same as this node having
//! slept through it: safe (Raft tolerates any pause), and its vote is free
//! at once. Timers already set end later by the jump at most; nothing ends
//! early.

use std::future::Future;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::AsyncRuntime;
use openraft::async_runtime::TokioOneShotSender;

/// Microseconds the Raft clock is ahead of tokio's.
static AHEAD_US: AtomicU64 = AtomicU64::new(0);

fn ahead() -> Duration {
    Duration::from_micros(AHEAD_US.load(Ordering::Acquire))
}

/// Moves the Raft clock forward by `by`.
pub fn jump(by: Duration) {
    AHEAD_US.fetch_add(by.as_micros() as u64, Ordering::AcqRel);
}

/// A point in Raft time: tokio's clock plus the jumps so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RaftInstant(tokio::time::Instant);

impl RaftInstant {
    /// The tokio instant at which the Raft clock will read `self`, given
    /// the jumps so far (later jumps only make it come sooner to Raft).
    fn to_tokio(self) -> tokio::time::Instant {
        self.0.checked_sub(ahead()).unwrap_or(self.0)
    }
}

impl openraft::Instant for RaftInstant {
    fn now() -> Self {
        Self(tokio::time::Instant::now() + ahead())
    }
}

impl Add<Duration> for RaftInstant {
    type Output = Self;
    fn add(self, d: Duration) -> Self {
        Self(self.0 + d)
    }
}

impl AddAssign<Duration> for RaftInstant {
    fn add_assign(&mut self, d: Duration) {
        self.0 += d;
    }
}

impl Sub<Duration> for RaftInstant {
    type Output = Self;
    fn sub(self, d: Duration) -> Self {
        Self(self.0 - d)
    }
}

impl SubAssign<Duration> for RaftInstant {
    fn sub_assign(&mut self, d: Duration) {
        self.0 -= d;
    }
}

impl Sub<RaftInstant> for RaftInstant {
    type Output = Duration;
    fn sub(self, other: Self) -> Duration {
        self.0 - other.0
    }
}

/// openraft's tokio runtime with [`RaftInstant`] as its clock.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RaftRuntime;

type Tokio = openraft::TokioRuntime;

impl AsyncRuntime for RaftRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: Send + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = RaftInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + Send> = tokio::time::Timeout<T>;
    type ThreadLocalRng = <Tokio as AsyncRuntime>::ThreadLocalRng;
    type OneshotSender<T: Send> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: Send> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + Send + 'static,
        T::Output: Send + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline.to_tokio())
    }

    fn timeout<R, F: Future<Output = R> + Send>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + Send>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline.to_tokio(), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        Tokio::thread_rng()
    }

    fn oneshot<T: Send>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use openraft::Instant;

    use super::*;

    #[tokio::test]
    async fn a_jump_moves_raft_time_and_brings_deadlines_closer() {
        let before = RaftInstant::now();
        let deadline = before + Duration::from_secs(3600);
        // Small: the clock is the process's, shared with other tests.
        jump(Duration::from_millis(20));
        let after = RaftInstant::now();
        assert!(after - before >= Duration::from_millis(20));
        // An hour's deadline set before the jump is 20 ms nearer in tokio
        // time; tokio's own clock did not move.
        let real = deadline.to_tokio();
        let left = real - tokio::time::Instant::now();
        assert!(left <= Duration::from_secs(3600) - Duration::from_millis(20));
    }
}
