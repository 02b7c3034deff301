//! What the services of a node share: its configuration, Raft once the
//! identity is known, the stores and the channels to peers.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use crate::chunk::heal::Healer;
use crate::chunk::scrub::Scrubber;
use crate::chunk::store::ChunkStore;
use crate::config::Config;
use crate::meta::read::MetaReader;
use crate::metrics::Metrics;
use crate::peers::PeerPool;
use crate::raft::Raft;
use crate::raft::lease::ReadLease;

/// What the services of a node share.
pub struct NodeState {
    /// Checked configuration.
    pub cfg: Config,
    /// Raft, once the identity is known.
    pub raft: OnceLock<Raft>,
    /// The healer, once Raft runs.
    pub healer: OnceLock<Arc<Healer>>,
    /// The scrubber, once Raft runs.
    pub scrubber: OnceLock<Arc<Scrubber>>,
    /// Acts on proof that this follower's leader is gone, once Raft runs.
    pub leader_gone: OnceLock<Arc<crate::raft::leader_gone::LeaderGone>>,
    /// Notified whenever a connection to this node closes.
    pub conn_closed: Arc<tokio::sync::Notify>,
    /// This node's Raft id, 0 until chosen.
    pub node_id: AtomicU64,
    /// Reads of the state machine.
    pub reader: MetaReader,
    /// The chunk store.
    pub store: Arc<ChunkStore>,
    /// Channels to peers.
    pub pool: PeerPool,
    /// Lets the leader serve reads without a read-index round.
    pub lease: Arc<ReadLease>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// Counts applies that changed a file lock (`StateMachine::lock_changes`).
    pub lock_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// When this node last heard of each client session.
    pub sessions: Arc<crate::meta::expiry::SessionLeases>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("me", &self.cfg.me())
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}
