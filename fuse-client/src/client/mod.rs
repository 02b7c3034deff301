//! The cluster client.
//!
//! - [`error`]: what a call can fail with.
//! - [`membership`]: the known nodes, learnt from any one of them.
//! - [`liveness`]: whether each node is up, and the one writer of that.
//! - [`health`]: heartbeats that report to each node's liveness.
//! - [`call`]: deadlines, redirects and failover of calls, and the retry
//!   budget every retrying path uses.
//! - [`meta`]: typed metadata operations.
//! - [`creates`]: creates answered before they are committed, and the
//!   order every later command keeps with them.
//! - [`chunks`]: chunk upload to a majority and verified download.
//! - [`io`]: whole-file reads and writes built on the two.
//! - [`session`]: the session's lease, and a new session when it expired.

pub mod call;
pub mod chunks;
pub mod creates;
pub mod error;
pub mod health;
pub mod io;
pub mod liveness;
pub mod locks;
pub mod membership;
pub mod meta;
pub mod session;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use error::ClientError;
pub use membership::NodeHandle;

/// Default heartbeat deadline: a node silent this long is treated as down.
/// Chosen by measurement (BENCHMARKS.md, "Failover"): with 0.5, 1 and 2 s
/// the longest pauses stay between 0.3 and 0.75 s, because a new leader is
/// learnt from the other nodes' pings and a slow read is hedged, neither
/// waiting for this timeout; 1 s keeps a briefly busy node from being
/// declared down while still dropping a dead one within a second.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Default bound on how long an operation waits for the cluster (a majority
/// of nodes) before it fails with ETIMEDOUT.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Tunables of a client.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Volume to use.
    pub volume: String,
    /// A node that has not answered a heartbeat for this long is down.
    pub ping_timeout: Duration,
    /// Deadline of one RPC to one node.
    pub call_timeout: Duration,
    /// Longest an operation keeps retrying before it fails (with
    /// ETIMEDOUT): the bound on how long a write waits for a majority.
    pub op_timeout: Duration,
    /// TLS with this client's certificate, or plaintext.
    pub transport: quizfs_proto::tls::Transport,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            volume: "nas".into(),
            ping_timeout: DEFAULT_PING_TIMEOUT,
            call_timeout: Duration::from_secs(6),
            op_timeout: DEFAULT_OP_TIMEOUT,
            transport: quizfs_proto::tls::Transport::Insecure,
        }
    }
}

/// A connection to a quizfs cluster; cheap to clone.
#[derive(Debug, Clone)]
pub struct ClusterClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    opts: ClientOptions,
    nodes: RwLock<Vec<Arc<NodeHandle>>>,
    leader: Mutex<Leader>,
    /// Woken whenever the believed leader changes.
    leader_moved: tokio::sync::Notify,
    /// Smoothed latency of successful chunk reads, in microseconds: sets
    /// the hedge delay.
    read_ewma_us: AtomicU64,
    /// Copies of each chunk the cluster keeps (from its members reply).
    replicas: AtomicU64,
    client_id: AtomicU64,
    next_seq: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    next_reader: AtomicU64,
    creates: creates::Creates,
    counters: ClientCounters,
    session: session::SessionWatch,
}

/// What the client counts for a mount's metrics (`quizfs::metrics`).
#[derive(Debug, Clone, Default)]
pub struct ClientCounters {
    /// Calls tried again on another node (or after a backoff).
    pub retries: prometheus_client::metrics::counter::Counter,
    /// Times the client learnt of a leader other than the one it knew
    /// (the first one counts).
    pub leader_changes: prometheus_client::metrics::counter::Counter,
    /// Times the client found its session expired and registered a new one.
    pub session_renewals: prometheus_client::metrics::counter::Counter,
}

impl ClusterClient {
    /// The client's counters (retries, leader changes).
    pub fn counters(&self) -> &ClientCounters {
        &self.inner.counters
    }

    /// Connects through the first of `servers` (`host[:port]`) that
    /// answers, learns every member, registers a session and starts
    /// heartbeats.
    pub async fn connect(servers: &[String], opts: ClientOptions) -> Result<Self, ClientError> {
        let members = membership::discover(servers, &opts).await?;
        let inner = Arc::new(Inner {
            opts,
            nodes: RwLock::new(Vec::new()),
            leader: Mutex::new(Leader::default()),
            counters: ClientCounters::default(),
            leader_moved: tokio::sync::Notify::new(),
            read_ewma_us: AtomicU64::new(20_000),
            replicas: AtomicU64::new(quizfs_proto::placement::REPLICAS as u64),
            client_id: AtomicU64::new(0),
            next_seq: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
            next_reader: AtomicU64::new(0),
            creates: creates::Creates::default(),
            session: session::SessionWatch::default(),
        });
        let client = Self { inner };
        client.update_members(&members)?;
        match client.register().await {
            Ok(id) => client.inner.client_id.store(id, Ordering::Relaxed),
            // A read-only certificate may not register a session; it needs
            // none, since it changes nothing (every change gets EACCES).
            Err(ClientError::Refused {
                code: tonic::Code::PermissionDenied,
                ..
            }) => tracing::info!("read-only certificate: reading without a session"),
            Err(e) => return Err(e),
        }
        tokio::spawn(health::run(Arc::downgrade(&client.inner)));
        Ok(client)
    }

    /// The options the client runs with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// This client's session id.
    pub fn client_id(&self) -> u64 {
        self.inner.client_id.load(Ordering::Relaxed)
    }

    /// The known nodes.
    pub fn nodes(&self) -> Vec<Arc<NodeHandle>> {
        self.inner
            .nodes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether the heartbeats see a majority of the nodes up.
    pub fn majority_up(&self) -> bool {
        let nodes = self.nodes();
        nodes.iter().filter(|n| n.is_up()).count() > nodes.len() / 2
    }

    /// Address of the node believed to lead, if any.
    pub fn leader(&self) -> Option<String> {
        self.inner
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .addr
            .clone()
    }

    /// Records `addr` as the leader without news of the term (a redirect
    /// or a successful call); `None` forgets the leader.
    fn set_leader(&self, addr: Option<String>) {
        let mut l = self.inner.leader.lock().unwrap_or_else(|p| p.into_inner());
        let moved = l.addr != addr;
        if moved && addr.is_some() {
            self.inner.counters.leader_changes.inc();
        }
        l.addr = addr;
        drop(l);
        if moved {
            self.inner.leader_moved.notify_waiters();
        }
    }

    /// Records a leader reported by a node in `term`; ignored when a later
    /// term is already known, or when it is this term's leader and the
    /// client has marked it down: a node that has not heard of an election
    /// yet cannot point the client back at a dead leader.
    fn leader_seen(&self, addr: String, term: u64, up: bool) {
        let mut l = self.inner.leader.lock().unwrap_or_else(|p| p.into_inner());
        if term < l.term || (term == l.term && !up) {
            return;
        }
        l.term = term;
        let moved = l.addr.as_deref() != Some(addr.as_str());
        if moved {
            tracing::info!(leader = %addr, term, "leader changed");
            self.inner.counters.leader_changes.inc();
        }
        l.addr = Some(addr);
        drop(l);
        if moved {
            self.inner.leader_moved.notify_waiters();
        }
    }
}

/// The leader as the client believes it.
#[derive(Debug, Default)]
struct Leader {
    addr: Option<String>,
    /// Highest Raft term any node has reported.
    term: u64,
}
