//! The Raft transport's server side: decode, hand to openraft, encode.

use std::sync::Arc;

use quizfs_proto::{raft_transport_server::RaftTransport, RaftBytes};
use tonic::{Request, Response, Status};

use super::status;
use crate::node::NodeState;
use crate::raft::{decode, encode};

/// Serves Raft RPCs from peers.
#[derive(Debug, Clone)]
pub struct RaftService {
    /// The node.
    pub state: Arc<NodeState>,
}

fn bad(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let raft = self.state.raft.get().ok_or_else(status::not_ready)?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let res = raft.append_entries(rpc).await;
        Ok(Response::new(RaftBytes { data: encode(&res) }))
    }

    async fn vote(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let raft = self.state.raft.get().ok_or_else(status::not_ready)?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let res = raft.vote(rpc).await;
        Ok(Response::new(RaftBytes { data: encode(&res) }))
    }

    async fn install_snapshot(&self, req: Request<RaftBytes>) -> Result<Response<RaftBytes>, Status> {
        let raft = self.state.raft.get().ok_or_else(status::not_ready)?;
        let rpc = decode(&req.into_inner().data).map_err(bad)?;
        let res = raft.install_snapshot(rpc).await;
        Ok(Response::new(RaftBytes { data: encode(&res) }))
    }
}
