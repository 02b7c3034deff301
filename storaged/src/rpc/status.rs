//! The one mapping from internal errors to gRPC status. UNAVAILABLE is used
//! only for what a client should retry (elsewhere), with the leader's
//! address attached when it is known.

use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use quizfs_proto::LEADER_HINT_KEY;
use tonic::Status;

use crate::chunk::store::ChunkError;
use crate::meta::read::ReadError;
use crate::raft::{BasicNode, NodeId, ProposeError};

/// The node has not finished starting (no Raft yet).
pub fn not_ready() -> Status {
    Status::unavailable("node is starting")
}

/// Not the leader: retry at the leader, whose address is in the metadata.
pub fn redirect(f: &ForwardToLeader<NodeId, BasicNode>) -> Status {
    let mut s = Status::unavailable(match f.leader_id {
        Some(id) => format!("not the leader; node {id} is"),
        None => "not the leader; no leader known".to_string(),
    });
    if let Some(node) = &f.leader_node {
        if let Ok(v) = node.addr.parse() {
            s.metadata_mut().insert(LEADER_HINT_KEY, v);
        }
    }
    s
}

/// A failed Raft write.
pub fn write_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => redirect(&f),
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(e.to_string())
        }
        RaftError::Fatal(f) => stopped(&f),
    }
}

/// Raft on this node has stopped: another node may serve.
fn stopped(f: &openraft::error::Fatal<NodeId>) -> Status {
    Status::unavailable(format!("raft stopped: {f}"))
}

/// A proposed command without a reply.
pub fn propose_error(e: ProposeError) -> Status {
    match e {
        ProposeError::TimedOut => Status::unavailable("commit timed out"),
        ProposeError::Raft(e) => write_error(e),
        ProposeError::Reply(e) => Status::internal(format!("undecodable reply: {e}")),
    }
}

/// A failed read-index check.
pub fn read_index_error(e: RaftError<NodeId, CheckIsLeaderError<NodeId, BasicNode>>) -> Status {
    match e {
        RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => redirect(&f),
        RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)) => {
            Status::unavailable(q.to_string())
        }
        RaftError::Fatal(f) => stopped(&f),
    }
}

/// A failed read of the state machine.
pub fn read_error(e: ReadError) -> Status {
    tracing::error!(error = %e, "metadata read failed");
    Status::internal(e.to_string())
}

/// A chunk store error.
pub fn chunk_error(e: &ChunkError) -> Status {
    let msg = e.to_string();
    match e {
        ChunkError::NotFound(_) => Status::not_found(msg),
        ChunkError::Corrupt(_) => Status::data_loss(msg),
        ChunkError::Mismatch { .. } | ChunkError::TooLarge(_) => Status::invalid_argument(msg),
        ChunkError::NoSpace(_) => Status::resource_exhausted(msg),
        ChunkError::Io { .. } => Status::internal(msg),
    }
}
