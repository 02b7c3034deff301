//! The Raft transport's server side: decode, hand to openraft, encode.

use std::sync::Arc;

use quizfs_proto::{RaftBytes, raft_transport_server::RaftTransport};
use tonic::{Request, Response, Status};

use super::status;
use crate::raft::{decode, encode};
use crate::state::NodeState;

/// Serves Raft RPCs from peers.
#[derive(Debug, Clone)]
pub struct RaftService {
    /// The node.
    pub state: Arc<NodeState>,
}

impl RaftService {
    /// The Raft instance, if the request is meant for this node's id: a
    /// node that replaced a wiped predecessor at the same address must not
    /// answer for it (its empty log would look like a log reverting).
    fn raft_for<T>(&self, req: &Request<T>) -> Result<&crate::raft::Raft, Status> {
        let raft = self.state.raft.get().ok_or_else(status::not_ready)?;
        let me = self
            .state
            .node_id
            .load(std::sync::atomic::Ordering::Relaxed);
        let target = req
            .metadata()
            .get(quizfs_proto::RAFT_TARGET_KEY)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        match target {
            Some(t) if t != me => Err(Status::unavailable(format!(
                "this address now serves node {me}, not node {t}"
            ))),
            _ => Ok(raft),
        }
    }
}

fn bad(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let raft = self.raft_for(&req)?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let res = raft.append_entries(rpc).await;
        Ok(Response::new(RaftBytes { data: encode(&res) }))
    }

    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let raft = self.raft_for(&req)?;
        // A candidate while our leader's process is gone: free our vote
        // now rather than after the lease.
        if let Some(g) = self.state.leader_gone.get() {
            g.check(false).await;
        }
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let res = raft.vote(rpc).await;
        Ok(Response::new(RaftBytes { data: encode(&res) }))
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftBytes>,
    ) -> Result<Response<RaftBytes>, Status> {
        let raft = self.raft_for(&req)?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let res = raft.install_snapshot(rpc).await;
        Ok(Response::new(RaftBytes { data: encode(&res) }))
    }
}
