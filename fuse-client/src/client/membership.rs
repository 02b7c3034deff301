//! The nodes a client knows: learnt from any server it is given, refreshed
//! by the heartbeat task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quizfs_proto::tls::Transport;
use quizfs_proto::{self as pb, cluster_client::ClusterClient as ClusterRpc};
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use super::liveness::Liveness;
use super::{ClientError, ClientOptions, ClusterClient};

/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// One storage node as the client sees it.
#[derive(Debug)]
pub struct NodeHandle {
    /// Raft node id.
    pub id: AtomicU64,
    /// `host:port`.
    pub addr: String,
    /// The gRPC channel (reconnects by itself).
    pub channel: Channel,
    /// Whether the node is up (written only by the heartbeats and by a
    /// call that ran out its deadline).
    pub liveness: Liveness,
    /// Slots for chunk uploads to the node: at most
    /// [`pb::MAX_UPLOADS_PER_CLIENT`] in flight, the slots it gives us.
    pub uploads: Arc<Semaphore>,
    /// The node's disk as its last heartbeat answer gave it.
    pub disk: std::sync::Mutex<Option<DiskSpace>>,
    /// Being drained (`quizfs node remove`): new chunks go elsewhere.
    pub draining: AtomicBool,
}

/// A node's data disk, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Size in bytes.
    pub total: u64,
    /// Free bytes.
    pub free: u64,
    /// Bytes chunk uploads must leave free.
    pub reserve: u64,
}

impl DiskSpace {
    /// What chunk uploads may use: total and free bytes less the reserve.
    pub fn usable(&self) -> (u64, u64) {
        (
            self.total.saturating_sub(self.reserve),
            self.free.saturating_sub(self.reserve),
        )
    }
}

impl NodeHandle {
    /// Whether the node answered its last heartbeat in time.
    pub fn is_up(&self) -> bool {
        self.liveness.is_up()
    }
}

/// Normalises `host[:port]` to `host:port`.
pub fn with_port(server: &str) -> String {
    if server.contains(':') {
        server.to_string()
    } else {
        format!("{server}:{}", pb::DEFAULT_PORT)
    }
}

/// A channel to `addr` that connects on first use, over `transport`.
pub fn channel(addr: &str, transport: &Transport) -> Result<Channel, ClientError> {
    Ok(transport
        .endpoint(addr)
        .map_err(|_| ClientError::BadAddress(addr.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Asks `addr` for the members of the cluster.
pub async fn members_of(addr: &str, opts: &ClientOptions) -> Result<pb::MembersReply, ClientError> {
    let mut rpc = ClusterRpc::new(channel(addr, &opts.transport)?);
    let req = pb::MembersRequest {
        volume: opts.volume.clone(),
    };
    match tokio::time::timeout(opts.call_timeout, rpc.members(req)).await {
        Err(_) => Err(ClientError::NoServer {
            servers: addr.into(),
            detail: "timed out".into(),
        }),
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => Err(ClientError::UnknownVolume {
            volume: opts.volume.clone(),
            detail: s.message().into(),
        }),
        Ok(Err(s)) => Err(ClientError::NoServer {
            servers: addr.into(),
            detail: status_detail(&s),
        }),
    }
}

pub use quizfs_proto::status_detail;

/// Tries each server in turn until one lists the members.
pub async fn discover(
    servers: &[String],
    opts: &ClientOptions,
) -> Result<pb::MembersReply, ClientError> {
    let mut detail = Vec::new();
    for s in servers {
        match members_of(&with_port(s), opts).await {
            Ok(m) if !m.members.is_empty() => return Ok(m),
            Ok(_) => detail.push(format!("{s}: cluster not initialized yet")),
            Err(e @ ClientError::UnknownVolume { .. }) => return Err(e),
            Err(ClientError::NoServer { detail: d, .. }) => detail.push(format!("{s}: {d}")),
            Err(e) => detail.push(format!("{s}: {e}")),
        }
    }
    Err(ClientError::NoServer {
        servers: servers.join(","),
        detail: detail.join("; "),
    })
}

impl ClusterClient {
    /// Adds nodes the client did not know and records the leader.
    pub(crate) fn update_members(&self, m: &pb::MembersReply) -> Result<(), ClientError> {
        let mut nodes = self.inner.nodes.write().unwrap_or_else(|p| p.into_inner());
        for member in &m.members {
            match nodes.iter().find(|n| n.addr == member.addr) {
                Some(n) => {
                    n.id.store(member.id, Ordering::Relaxed);
                    n.draining.store(member.draining, Ordering::Relaxed);
                }
                None => nodes.push(Arc::new(NodeHandle {
                    draining: AtomicBool::new(member.draining),
                    disk: std::sync::Mutex::new(None),
                    id: AtomicU64::new(member.id),
                    addr: member.addr.clone(),
                    channel: channel(&member.addr, &self.inner.opts.transport)?,
                    liveness: Liveness::default(),
                    uploads: Arc::new(Semaphore::new(pb::MAX_UPLOADS_PER_CLIENT)),
                })),
            }
        }
        if m.replicas > 0 {
            self.inner
                .replicas
                .store(u64::from(m.replicas), Ordering::Relaxed);
        }
        // Nodes removed from the cluster (replaced members) are dropped.
        nodes.retain(|n| m.members.iter().any(|x| x.addr == n.addr));
        let leader = m
            .members
            .iter()
            .find(|x| x.id == m.leader_id)
            .map(|x| x.addr.clone());
        drop(nodes);
        if leader.is_some() {
            self.set_leader(leader);
        }
        Ok(())
    }

    /// Every known node in the order placement asks them for `hash`
    /// (`quizfs_proto::placement`): its holders first, then the other
    /// nodes that are not draining, then the draining ones; and how many
    /// holders it has.
    pub fn placed(&self, hash: &quizfs_proto::ChunkHash) -> (Vec<Arc<NodeHandle>>, usize) {
        let mut nodes = self.nodes();
        let draining = |n: &NodeHandle| n.draining.load(Ordering::Relaxed);
        // The order of `placement::rank` (highest score, then id), with
        // the draining nodes after all others.
        nodes.sort_by_cached_key(|n| {
            let id = n.id.load(Ordering::Relaxed);
            (
                draining(n),
                std::cmp::Reverse((quizfs_proto::placement::score(hash, id), id)),
            )
        });
        let set = nodes.iter().filter(|n| !draining(n)).count();
        let replicas = self.inner.replicas.load(Ordering::Relaxed) as usize;
        (nodes, replicas.min(set).max(1))
    }

    /// The handle of the node at `addr`, if known.
    pub fn node(&self, addr: &str) -> Option<Arc<NodeHandle>> {
        self.nodes().into_iter().find(|n| n.addr == addr)
    }
}
