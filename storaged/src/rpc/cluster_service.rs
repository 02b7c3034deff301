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

/// The Raft membership of this cluster.
type Membership = openraft::Membership<u64, BasicNode>;
/// Node records by address.
type NodeRecords = std::collections::BTreeMap<String, crate::meta::schema::NodeRecord>;

/// Longest one `RemoveNode` call waits for the drain before it answers
/// "draining".
const DRAIN_CHECK: Duration = Duration::from_secs(5);

/// How long after a drain starts every client has heard of it (their
/// members refresh is every 2 s).
const CLIENTS_HEAR: Duration = Duration::from_secs(5);

/// `host[:port]` checked and normalised to `host:port`.
fn node_addr(addr: &str) -> Result<String, Status> {
    crate::config::Peer::parse(addr)
        .map(|p| p.addr())
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// "voter" or "learner" when `addr` is a member.
fn member_state(raft: &Raft, addr: &str) -> Option<&'static str> {
    let m = raft.metrics().borrow().membership_config.clone();
    let m = m.membership();
    let (id, _) = m.nodes().find(|(_, n)| n.addr == addr)?;
    Some(if m.voter_ids().any(|v| v == *id) {
        "voter"
    } else {
        "learner"
    })
}

/// Takes the learners among `ids` that are still members out of the
/// cluster (a voter leaves by a new voter set instead).
async fn remove_learners(raft: &Raft, ids: &BTreeSet<u64>) -> Result<(), Status> {
    let m = raft.metrics().borrow().membership_config.clone();
    let gone: BTreeSet<u64> = ids
        .iter()
        .copied()
        .filter(|id| m.membership().get_node(id).is_some())
        .collect();
    if !gone.is_empty() {
        raft.change_membership(openraft::ChangeMembers::RemoveNodes(gone), false)
            .await
            .map_err(status::write_error)?;
    }
    Ok(())
}

impl ClusterService {
    /// The membership as `raft` sees it, and the operator's node records.
    fn view(&self, raft: &Raft) -> Result<(Membership, NodeRecords), Status> {
        let membership = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let records = self
            .state
            .reader
            .node_records()
            .map_err(status::read_error)?;
        Ok((membership, records))
    }

    /// Commits the operator's record of the node at `addr`.
    async fn set_record(
        &self,
        raft: &Raft,
        addr: &str,
        state: pb::NodeRecordState,
        replaces: &str,
    ) -> Result<(), Status> {
        let op = pb::MetaOp {
            op: Some(Op::SetNodeRecord(pb::SetNodeRecord {
                addr: addr.into(),
                state: state as i32,
                replaces: replaces.into(),
            })),
        };
        propose(raft, Proposer::default(), &op, COMMIT_TIMEOUT)
            .await
            .map_err(status::propose_error)?;
        Ok(())
    }

    /// Admits the node at `addr` (in place of the member `replaces`, if not
    /// empty) and says how to start it.
    async fn admit(
        &self,
        raft: &Raft,
        addr: &str,
        replaces: &str,
    ) -> Result<Response<pb::NodeChangeReply>, Status> {
        self.set_record(raft, addr, pb::NodeRecordState::NodeAdmitted, replaces)
            .await?;
        tracing::info!(node = %addr, replaces, "--- node admitted");
        let instead = if replaces.is_empty() {
            String::new()
        } else {
            format!(" in place of {replaces}")
        };
        Ok(Response::new(pb::NodeChangeReply {
            state: "admitted".into(),
            detail: format!(
                "{addr} may join{instead}: start `storaged --join {} --listen {addr}` there",
                self.state.cfg.me().addr()
            ),
            backlog: 0,
        }))
    }

    /// The heal state of the node at `addr` (this node's own, or a peer's).
    async fn heal_info(&self, addr: &str) -> Result<pb::HealInfoReply, String> {
        if addr == self.state.cfg.me().addr() {
            let h = self.state.healer.get().ok_or("not ready")?;
            return Ok(h.info(0));
        }
        let channel = self.state.pool.channel(addr).map_err(|e| e.to_string())?;
        let mut c = pb::cluster_client::ClusterClient::new(channel);
        match tokio::time::timeout(
            Duration::from_secs(2),
            c.heal_info(pb::HealInfoRequest { limit: 0 }),
        )
        .await
        {
            Err(_) => Err("timed out".into()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
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
        let draining = self.state.reader.draining().map_err(status::read_error)?;
        let members = membership
            .nodes()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
                draining: draining.contains(&n.addr),
            })
            .collect();
        Ok(Response::new(pb::MembersReply {
            volume: self.state.cfg.volume.clone(),
            members,
            leader_id: m.current_leader.unwrap_or(0),
            term: m.current_term,
            replicas: self.state.reader.replicas() as u32,
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
            healed_bytes: self.state.healer.get().map_or(0, |h| h.healed_bytes()),
            surplus: self.state.healer.get().map_or(0, |h| h.surplus()),
            placed: self.state.healer.get().map_or(0, |h| h.placed()),
            draining: self
                .state
                .reader
                .draining()
                .is_ok_and(|d| d.contains(&self.state.cfg.me().addr())),
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
        Ok(Response::new(h.info(limit)))
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
        let (membership, records) = self.view(raft)?;
        let record = records.get(&req.addr).cloned().unwrap_or_default();
        let known_addr = membership.nodes().any(|(_, n)| n.addr == req.addr);
        let admitted = record.state == pb::NodeRecordState::NodeAdmitted as i32;
        if req.node_id == 0 && !known_addr && !admitted {
            return Err(Status::failed_precondition(format!(
                "{} is not admitted to the cluster: run `quizfs node add {}` (or `quizfs node replace OLD {}`)",
                req.addr, req.addr, req.addr
            )));
        }
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
        if membership.nodes().any(|(id, _)| *id == req.node_id) && !admitted {
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
        // The members this node takes the place of: its old self at the
        // same address (a node that lost its data), and the one named by
        // `quizfs node replace`.
        let replaced: BTreeSet<u64> = membership
            .nodes()
            .filter(|(id, n)| {
                **id != req.node_id
                    && (n.addr == req.addr
                        || (!record.replaces.is_empty() && n.addr == record.replaces))
            })
            .map(|(id, _)| *id)
            .collect();
        let mut voters: BTreeSet<u64> = membership
            .voter_ids()
            .filter(|id| !replaced.contains(id))
            .collect();
        if voters.len() < self.state.cfg.voters {
            voters.insert(req.node_id);
        }
        tracing::info!(?replaced, ?voters, "--- new member");
        let current: BTreeSet<u64> = membership.voter_ids().collect();
        if voters != current {
            raft.change_membership(voters, false)
                .await
                .map_err(status::write_error)?;
        }
        remove_learners(raft, &replaced).await?;
        if admitted {
            self.set_record(raft, &req.addr, pb::NodeRecordState::NodeRecordNone, "")
                .await?;
        }
        if !record.replaces.is_empty() {
            self.set_record(
                raft,
                &record.replaces,
                pb::NodeRecordState::NodeRecordNone,
                "",
            )
            .await?;
        }
        Ok(Response::new(pb::JoinReply {
            node_id: req.node_id,
        }))
    }

    async fn add_node(
        &self,
        req: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::NodeChangeReply>, Status> {
        let addr = node_addr(&req.get_ref().addr)?;
        let raft = self.ensure_leader()?;
        if let Some(state) = member_state(raft, &addr) {
            return Ok(Response::new(pb::NodeChangeReply {
                detail: format!("{addr} is a member ({state})"),
                state: state.into(),
                backlog: 0,
            }));
        }
        self.admit(raft, &addr, "").await
    }

    async fn replace_node(
        &self,
        req: Request<pb::ReplaceNodeRequest>,
    ) -> Result<Response<pb::NodeChangeReply>, Status> {
        let old = node_addr(&req.get_ref().old_addr)?;
        let new = node_addr(&req.get_ref().new_addr)?;
        let raft = self.ensure_leader()?;
        if let Some(state) = member_state(raft, &new) {
            if member_state(raft, &old).is_none() || old == new {
                return Ok(Response::new(pb::NodeChangeReply {
                    detail: format!("{new} is a member ({state}); {old} is not"),
                    state: state.into(),
                    backlog: 0,
                }));
            }
            return Err(Status::failed_precondition(format!(
                "{new} is already a member; remove {old} with `quizfs node remove {old}`"
            )));
        }
        if member_state(raft, &old).is_none() {
            return Err(Status::not_found(format!(
                "{old} is not a member of the cluster"
            )));
        }
        self.admit(raft, &new, &old).await
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::NodeChangeReply>, Status> {
        let addr = node_addr(&req.get_ref().addr)?;
        let raft = self.ensure_leader()?;
        let (membership, records) = self.view(raft)?;
        let Some(id) = membership
            .nodes()
            .find(|(_, n)| n.addr == addr)
            .map(|(id, _)| *id)
        else {
            if records.contains_key(&addr) {
                self.set_record(raft, &addr, pb::NodeRecordState::NodeRecordNone, "")
                    .await?;
                return Ok(Response::new(pb::NodeChangeReply {
                    state: "removed".into(),
                    detail: format!("{addr} was admitted but had not joined; admission withdrawn"),
                    backlog: 0,
                }));
            }
            return Err(Status::not_found(format!(
                "{addr} is not a member of the cluster"
            )));
        };
        let staying = membership
            .nodes()
            .filter(|(i, n)| **i != id && !records.get(&n.addr).is_some_and(|r| r.draining()))
            .count();
        let replicas = self.state.reader.replicas();
        if staying < replicas {
            return Err(Status::failed_precondition(format!(
                "removing {addr} would leave {staying} nodes for {replicas} copies of each chunk; add a node first"
            )));
        }
        let since_ns = match records.get(&addr) {
            Some(r) if r.draining() => r.since_ns,
            _ => {
                self.set_record(raft, &addr, pb::NodeRecordState::NodeDraining, "")
                    .await?;
                tracing::info!(node = %addr, "--- draining node");
                pb::now_ns()
            }
        };
        // Clients learn of the drain from their next members refresh
        // (every 2 s): until then one may still write a chunk to the
        // draining node, so the drain is not checked before.
        let heard_at = since_ns.saturating_add(CLIENTS_HEAR.as_nanos() as i64);
        let wait = Duration::from_nanos(heard_at.saturating_sub(pb::now_ns()).max(0) as u64);
        if wait > DRAIN_CHECK {
            return Ok(Response::new(pb::NodeChangeReply {
                state: "draining".into(),
                detail: format!("{addr} is draining; waiting for clients to hear of it"),
                backlog: 0,
            }));
        }
        tokio::time::sleep(wait).await;
        // Drained once every other member has scanned past the draining
        // mark and lacks none of the chunks it holds now.
        let mark = raft.metrics().borrow().last_applied.map_or(0, |l| l.index);
        let others: Vec<String> = membership
            .nodes()
            .filter(|(i, _)| **i != id)
            .map(|(_, n)| n.addr.clone())
            .collect();
        let began = std::time::Instant::now();
        let backlog = loop {
            let mut backlog = 0;
            let mut done = true;
            for peer in &others {
                match self.heal_info(peer).await {
                    Ok(h) if h.scanned_index >= mark => backlog += h.backlog,
                    Ok(_) => done = false,
                    Err(e) => {
                        return Ok(Response::new(pb::NodeChangeReply {
                            state: "draining".into(),
                            detail: format!("waiting for {peer} to answer: {e}"),
                            backlog: 0,
                        }));
                    }
                }
            }
            if done && backlog == 0 {
                break None;
            }
            if began.elapsed() > DRAIN_CHECK {
                break Some(backlog);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        if let Some(backlog) = backlog {
            return Ok(Response::new(pb::NodeChangeReply {
                state: "draining".into(),
                detail: format!("{backlog} chunks still to copy from {addr} to the other members"),
                backlog,
            }));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            // A learner that is not draining takes the voter's place.
            let promote = membership.nodes().find(|(i, n)| {
                !voters.contains(i) && !records.get(&n.addr).is_some_and(|r| r.draining())
            });
            let mut next: BTreeSet<u64> = voters.iter().copied().filter(|v| *v != id).collect();
            if let Some((p, _)) = promote {
                next.insert(*p);
            }
            tracing::info!(node = %addr, ?next, "--- removing voter");
            raft.change_membership(next, false)
                .await
                .map_err(status::write_error)?;
        } else {
            remove_learners(raft, &BTreeSet::from([id])).await?;
        }
        // Without the membership change this node may no longer lead.
        if let Ok(raft) = self.ensure_leader() {
            self.set_record(raft, &addr, pb::NodeRecordState::NodeRecordNone, "")
                .await?;
        }
        tracing::info!(node = %addr, "--- node removed");
        Ok(Response::new(pb::NodeChangeReply {
            state: "removed".into(),
            detail: format!("{addr} left the cluster; its data directory can be deleted"),
            backlog: 0,
        }))
    }
}
