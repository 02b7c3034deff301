//! Membership, bootstrap probes, heartbeats, status and joining.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::ServerState;
use quizfs_proto::{self as pb, cluster_server::Cluster, meta_op::Op};
use tonic::{Request, Response, Status};

use super::status;
use crate::raft::{BasicNode, COMMIT_TIMEOUT, Proposer, Raft, propose};
use crate::state::NodeState;

/// Longest a join waits for the new member to catch up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves cluster-level requests.
#[derive(Debug, Clone)]
pub struct ClusterService {
    /// The node.
    pub state: Arc<NodeState>,
}

fn role(s: ServerState) -> &'static str {
    match s {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

impl ClusterService {
    fn raft(&self) -> Result<&Raft, Status> {
        self.state.raft.get().ok_or_else(status::not_ready)
    }

    /// Fails with a redirect unless this node leads.
    fn ensure_leader(&self) -> Result<&Raft, Status> {
        let raft = self.raft()?;
        let m = raft.metrics().borrow().clone();
        if m.state == ServerState::Leader {
            return Ok(raft);
        }
        let leader_node = m
            .current_leader
            .and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        Err(status::redirect(&openraft::error::ForwardToLeader {
            leader_id: m.current_leader,
            leader_node,
        }))
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn probe(
        &self,
        _req: Request<pb::ProbeRequest>,
    ) -> Result<Response<pb::ProbeReply>, Status> {
        let initialized = match self.state.raft.get() {
            Some(r) => r.is_initialized().await.unwrap_or(false),
            None => false,
        };
        Ok(Response::new(pb::ProbeReply {
            node_id: self.state.node_id.load(Ordering::Relaxed),
            initialized,
            addr: self.state.cfg.me().addr(),
            volume: self.state.cfg.volume.clone(),
        }))
    }

    async fn members(
        &self,
        req: Request<pb::MembersRequest>,
    ) -> Result<Response<pb::MembersReply>, Status> {
        let volume = &req.get_ref().volume;
        if !volume.is_empty() && *volume != self.state.cfg.volume {
            return Err(Status::not_found(format!(
                "no volume {volume:?} here; this cluster serves {:?}",
                self.state.cfg.volume
            )));
        }
        let m = self.raft()?.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        Ok(Response::new(pb::MembersReply {
            volume: self.state.cfg.volume.clone(),
            members,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
        }))
    }

    async fn ping(&self, req: Request<pb::PingRequest>) -> Result<Response<pb::PingReply>, Status> {
        self.state.sessions.heard(req.get_ref().client_id);
        let (leader_id, term) = match self.state.raft.get() {
            Some(r) => {
                let m = r.metrics();
                let m = m.borrow();
                (m.current_leader.unwrap_or(0), m.current_term)
            }
            None => (0, 0),
        };
        let (disk_total, disk_free) = crate::disk::space(&self.state.cfg.data_dir);
        Ok(Response::new(pb::PingReply {
            node_id: self.state.node_id.load(Ordering::Relaxed),
            leader_id,
            term,
            disk_total,
            disk_free,
            disk_reserve: self.state.cfg.reserve,
            session_timeout_ms: self.state.sessions.timeout().as_millis() as u64,
        }))
    }

    async fn node_status(
        &self,
        _req: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusReply>, Status> {
        let (chunks, chunk_bytes) = self.state.store.stats();
        let (disk_total, disk_free) = crate::disk::space(&self.state.cfg.data_dir);
        let mut reply = pb::NodeStatusReply {
            node_id: self.state.node_id.load(Ordering::Relaxed),
            addr: self.state.cfg.me().addr(),
            role: "starting".into(),
            chunks,
            chunk_bytes,
            heal_backlog: self.state.healer.get().map_or(0, |h| h.backlog()),
            heal_scanned_index: self.state.healer.get().map_or(0, |h| h.scanned_index()),
            healed_total: self.state.healer.get().map_or(0, |h| h.healed_total()),
            disk_free,
            disk_total,
            insecure: self.state.cfg.tls.is_none(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        if let Some(raft) = self.state.raft.get() {
            let m = raft.metrics().borrow().clone();
            // openraft keeps a leader that lost its majority in the Leader
            // state; it is no leader to anyone, so it is reported apart.
            let quorum_silent = m
                .millis_since_quorum_ack
                .is_none_or(|ms| ms > 2 * self.state.cfg.election.as_millis() as u64);
            reply.role = if m.state == ServerState::Leader
                && quorum_silent
                && m.membership_config.membership().voter_ids().count() > 1
            {
                "isolated".into()
            } else {
                role(m.state).into()
            };
            reply.term = m.current_term;
            reply.last_applied = m.last_applied.map_or(0, |l| l.index);
            reply.last_log = m.last_log_index.unwrap_or(0);
            reply.leader_id = m.current_leader.unwrap_or(0);
            reply.snapshot_index = m.snapshot.map_or(0, |l| l.index);
            reply.purged_index = m.purged.map_or(0, |l| l.index);
        }
        Ok(Response::new(reply))
    }

    async fn heal_info(
        &self,
        req: Request<pb::HealInfoRequest>,
    ) -> Result<Response<pb::HealInfoReply>, Status> {
        let limit = req.into_inner().limit.min(100_000) as usize;
        let Some(h) = self.state.healer.get() else {
            return Err(status::not_ready());
        };
        Ok(Response::new(pb::HealInfoReply {
            backlog: h.backlog(),
            scanned_index: h.scanned_index(),
            healed_total: h.healed_total(),
            pending: h.pending(limit).into_iter().map(|c| c.0.to_vec()).collect(),
        }))
    }

    async fn scrub_status(
        &self,
        _req: Request<pb::ScrubStatusRequest>,
    ) -> Result<Response<pb::ScrubStatusReply>, Status> {
        let Some(s) = self.state.scrubber.get() else {
            return Err(status::not_ready());
        };
        let p = s.progress();
        let c = s.counters();
        Ok(Response::new(pb::ScrubStatusReply {
            running: p.running,
            started_unix: p.started,
            finished_unix: p.finished,
            total_chunks: p.total_chunks,
            total_bytes: p.total_bytes,
            done_chunks: p.done_chunks,
            done_bytes: p.done_bytes,
            corrupt: p.corrupt,
            read_errors: p.read_errors,
            passes_total: c.passes.get(),
            corrupt_total: c.corrupt.get(),
            read_errors_total: c.read_errors.get(),
            next_due_unix: s.next_due(),
            interval_secs: s.interval().as_secs(),
            rate: s.rate_limit(),
        }))
    }

    async fn scrub_start(
        &self,
        _req: Request<pb::ScrubStartRequest>,
    ) -> Result<Response<pb::ScrubStartReply>, Status> {
        let Some(s) = self.state.scrubber.get() else {
            return Err(status::not_ready());
        };
        let started = s.start();
        if started {
            tracing::info!("scrub pass asked for");
        }
        Ok(Response::new(pb::ScrubStartReply { started }))
    }

    #[tracing::instrument(skip_all, fields(addr = %req.get_ref().addr, node = req.get_ref().node_id))]
    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let req = req.into_inner();
        if req.addr.is_empty() {
            return Err(Status::invalid_argument(
                "join needs the joining node's address",
            ));
        }
        let raft = self.ensure_leader()?;
        if req.node_id == 0 {
            let op = pb::MetaOp {
                op: Some(Op::AllocNodeId(pb::AllocNodeId {})),
            };
            let reply = propose(raft, Proposer::default(), &op, COMMIT_TIMEOUT)
                .await
                .map_err(status::propose_error)?;
            tracing::info!(node = reply.value, "allocated a node id for a joining node");
            return Ok(Response::new(pb::JoinReply {
                node_id: reply.value,
            }));
        }
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.voter_ids().any(|id| id == req.node_id) {
            return Ok(Response::new(pb::JoinReply {
                node_id: req.node_id,
            }));
        }
        tracing::info!("--- adding joining node as learner");
        let node = BasicNode {
            addr: req.addr.clone(),
        };
        tokio::time::timeout(JOIN_TIMEOUT, raft.add_learner(req.node_id, node, true))
            .await
            .map_err(|_| Status::unavailable("joining node did not catch up in time"))?
            .map_err(status::write_error)?;
        let replaced: Vec<u64> = membership
            .nodes()
            .filter(|(id, n)| n.addr == req.addr && **id != req.node_id)
            .map(|(id, _)| *id)
            .collect();
        let mut voters: BTreeSet<u64> = membership
            .voter_ids()
            .filter(|id| !replaced.contains(id))
            .collect();
        voters.insert(req.node_id);
        tracing::info!(?replaced, ?voters, "--- replacing member");
        raft.change_membership(voters, false)
            .await
            .map_err(status::write_error)?;
        Ok(Response::new(pb::JoinReply {
            node_id: req.node_id,
        }))
    }
}
