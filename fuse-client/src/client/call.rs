//! Deadlines, redirects and failover of calls, and the retry budget that
//! every retrying path of the client uses.
//!
//! A call goes to the leader when one is known and up, otherwise to any node
//! that is up. Each attempt has the per-call deadline, and is abandoned
//! early when the heartbeats mark its node down or learn of a new leader
//! (a hung or cut-off leader answers nothing, so waiting for the deadline
//! would be the whole pause). Retrying is safe: writes carry a session and
//! sequence number and are applied once. UNAVAILABLE with a leader hint is
//! followed at once; UNAVAILABLE without one, or a timeout, moves on to
//! another node after a short backoff that a leader change cuts short.
//! Other errors are final. The whole call gives up after the operation
//! timeout.
//!
//! [`Retry`], the budget of a retrying operation (its deadline and the
//! backoff between tries), is used by every path that tries again: calls
//! here, and the chunk transfers in `chunks.rs`, which go to every node or
//! to the next one themselves (a majority write, a hedged read) but retry
//! a failed round within the same budget.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quizfs_proto as pb;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{ClientError, ClusterClient, NodeHandle};

/// First pause between tries.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause between tries.
const BACKOFF_MAX: Duration = Duration::from_millis(200);

/// The budget of a retrying operation: a deadline, and a pause between
/// tries that doubles from `BACKOFF_MIN` to `BACKOFF_MAX`.
#[derive(Debug)]
pub(super) struct Retry {
    timeout: Duration,
    deadline: Instant,
    backoff: Duration,
}

impl Retry {
    /// A budget of `timeout` from now.
    pub(super) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadline: Instant::now() + timeout,
            backoff: BACKOFF_MIN,
        }
    }

    /// The whole budget.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the deadline has passed.
    pub(super) fn expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Time left before the deadline.
    pub(super) fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits out the backoff before the next try, never past the deadline.
    pub(super) async fn backoff(&mut self) {
        self.pause(std::future::pending()).await;
    }

    /// Waits before the next try: the backoff, never past the deadline, or
    /// until `wake` resolves (news that makes a try worth making now).
    pub(super) async fn pause(&mut self, wake: impl Future<Output = ()>) {
        tokio::select! {
            _ = tokio::time::sleep(self.backoff.min(self.left())) => {}
            _ = wake => {}
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// Whether an error is worth retrying on another node.
fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded
    ) || transport_failure(s)
}

/// Whether the status comes from the connection rather than from a node's
/// answer: tonic reports some HTTP/2 failures (a node closing its TLS
/// connections as it shuts down) as INTERNAL, with the HTTP/2 error as the
/// source. A status a node sent has no source.
fn transport_failure(s: &Status) -> bool {
    s.code() == Code::Internal && std::error::Error::source(s).is_some()
}

impl ClusterClient {
    /// The node to try next: the leader if known and up, else the next up
    /// node not to `avoid`, else any node.
    fn pick(&self, avoid: Option<&str>) -> Option<Arc<NodeHandle>> {
        let nodes = self.nodes();
        if let Some(l) = self.leader() {
            if avoid != Some(l.as_str()) {
                if let Some(n) = nodes.iter().find(|n| n.addr == l && n.is_up()) {
                    return Some(n.clone());
                }
            }
        }
        let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed) as usize;
        let len = nodes.len().max(1);
        let ordered = (0..nodes.len()).map(|i| &nodes[(start + i) % len]);
        let mut fallback = None;
        for n in ordered {
            if avoid == Some(n.addr.as_str()) {
                fallback.get_or_insert(n);
                continue;
            }
            if n.is_up() {
                return Some(n.clone());
            }
            fallback.get_or_insert(n);
        }
        fallback.cloned()
    }

    /// Runs `f` against the leader with failover, as the module doc says.
    pub async fn leader_call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, ClientError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let opts = &self.inner.opts;
        let mut retry = Retry::new(opts.op_timeout);
        let mut last = String::from("no node known");
        let mut avoid: Option<String> = None;
        loop {
            if retry.expired() {
                return Err(ClientError::Timeout {
                    op,
                    timeout: retry.timeout(),
                    last,
                });
            }
            let Some(node) = self.pick(avoid.as_deref()) else {
                return Err(ClientError::NoServer {
                    servers: String::new(),
                    detail: last,
                });
            };
            // No attempt outlives the operation's own bound.
            let budget = opts.call_timeout.min(retry.left());
            let attempt = tokio::time::timeout(budget, f(node.channel.clone()));
            let status = tokio::select! {
                r = attempt => match r {
                    Ok(Ok(r)) => {
                        tracing::trace!(op, node = %node.addr, "answered");
                        self.set_leader(Some(node.addr.clone()));
                        return Ok(r.into_inner());
                    }
                    Ok(Err(s)) => s,
                    Err(_) => Status::deadline_exceeded(format!(
                        "no answer within {budget:?}"
                    )),
                },
                why = self.abandoned(&node) => Status::unavailable(why),
            };
            last = format!("{}: {}", node.addr, status.message());
            if retryable(&status) {
                self.inner.counters.retries.inc();
            } else {
                return Err(ClientError::Refused {
                    op,
                    node: node.addr.clone(),
                    code: status.code(),
                    message: status.message().to_string(),
                });
            }
            let hint = status
                .metadata()
                .get(pb::LEADER_HINT_KEY)
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            match hint {
                Some(h) if h != node.addr => {
                    tracing::debug!(op, from = %node.addr, to = %h, "redirected to leader");
                    self.set_leader(Some(h));
                    avoid = None;
                    continue;
                }
                _ => {
                    tracing::debug!(op, node = %node.addr, error = %last, "retrying elsewhere");
                    if self.leader().as_deref() == Some(node.addr.as_str()) {
                        self.set_leader(None);
                    }
                    if status.code() == Code::DeadlineExceeded {
                        node.liveness.missed_deadline();
                    }
                    avoid = Some(node.addr.clone());
                }
            }
            // A leader learnt meanwhile (the reason this attempt was given
            // up, often) is worth trying now.
            if self
                .leader()
                .is_some_and(|l| l != node.addr && self.is_up(&l))
            {
                continue;
            }
            retry.pause(self.inner.leader_moved.notified()).await;
        }
    }

    /// Whether the node at `addr` is known and up.
    fn is_up(&self, addr: &str) -> bool {
        self.nodes().iter().any(|n| n.addr == addr && n.is_up())
    }

    /// Resolves when a call in flight to `node` should be given up: the node
    /// was marked down, or another node, up, became leader.
    async fn abandoned(&self, node: &NodeHandle) -> &'static str {
        let moved = async {
            loop {
                let moved = self.inner.leader_moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                // A leader this client has marked down is no news: the
                // call may well be what finds out who leads now.
                if self
                    .leader()
                    .is_some_and(|l| l != node.addr && self.is_up(&l))
                {
                    return;
                }
                moved.await;
            }
        };
        tokio::select! {
            _ = node.liveness.down() => "node stopped answering heartbeats",
            _ = moved => "another node became leader",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_backoff_doubles_to_its_cap_and_never_waits_past_the_deadline() {
        let mut r = Retry::new(Duration::from_secs(60));
        let mut seen = Vec::new();
        for _ in 0..7 {
            seen.push(r.backoff.as_millis());
            // News that makes a try worth making ends the pause at once.
            r.pause(std::future::ready(())).await;
        }
        assert_eq!(seen, [10, 20, 40, 80, 160, 200, 200]);
        let mut spent = Retry::new(Duration::ZERO);
        assert!(spent.expired());
        let t = Instant::now();
        spent.backoff().await;
        assert!(t.elapsed() < Duration::from_millis(10), "{:?}", t.elapsed());
    }

    #[test]
    fn connection_failures_are_retried_and_node_answers_are_not() {
        assert!(retryable(&Status::unavailable("down")));
        assert!(!retryable(&Status::internal("a node's own error")));
        assert!(!retryable(&Status::permission_denied("read-only")));
        let mut h2 = Status::internal("h2 protocol error: http2 error");
        h2.set_source(Arc::new(std::io::Error::other("connection closed")));
        assert!(retryable(&h2));
    }
}
