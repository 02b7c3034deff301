//! Raft RPCs over tonic. Requests and responses are openraft's own types,
//! bincode-encoded into `RaftBytes`. Every call takes openraft's hard TTL as
//! its deadline; a failed connect becomes `Unreachable`, so openraft backs
//! off (one heartbeat) instead of hammering a dead node.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quizfs_proto::{MAX_RAFT_MESSAGE_BYTES, RaftBytes, raft_transport_client::RaftTransportClient};

use super::lease::{Ack, ReadLease};
use super::{BasicNode, NodeId, TypeConfig, decode, encode};
use crate::peers::PeerPool;

/// Creates connections to Raft peers.
#[derive(Debug, Clone)]
pub struct Network {
    /// This node's id, for timeout reports.
    pub self_id: NodeId,
    /// Shared channels.
    pub pool: PeerPool,
    /// Where accepted AppendEntries are recorded for the read lease.
    pub lease: Arc<ReadLease>,
    /// How soon a peer that could not be reached is tried again: the
    /// heartbeat interval (see `Connection::backoff`).
    pub retry: Duration,
}

/// A connection to one Raft peer.
#[derive(Debug)]
pub struct Connection {
    self_id: NodeId,
    target: NodeId,
    addr: String,
    pool: PeerPool,
    lease: Arc<ReadLease>,
    retry: Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            self_id: self.self_id,
            target,
            addr: node.addr.clone(),
            pool: self.pool.clone(),
            lease: self.lease.clone(),
            retry: self.retry,
        }
    }
}

type RpcErr<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Connection {
    async fn call<Req, Resp, E>(
        &self,
        action: RPCTypes,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: serde::Serialize,
        Resp: for<'a> serde::Deserialize<'a>,
        E: std::error::Error + for<'a> serde::Deserialize<'a>,
    {
        let channel = self
            .pool
            .channel(&self.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        let mut msg = tonic::Request::new(RaftBytes { data: encode(req) });
        msg.metadata_mut()
            .insert(quizfs_proto::RAFT_TARGET_KEY, self.target.into());
        let fut = async {
            match action {
                RPCTypes::AppendEntries => client.append_entries(msg).await,
                RPCTypes::Vote => client.vote(msg).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(msg).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action,
                    id: self.self_id,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                return Err(RPCError::Unreachable(Unreachable::new(&status)));
            }
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    /// A peer that could not be reached is tried again every heartbeat: a
    /// refused connection costs one packet, and a node that comes back
    /// hears from the leader well before its election timeout. (With
    /// openraft's default half second, a restarted follower stood for
    /// election first and deposed a healthy leader: a pause of 350-500 ms
    /// for every client.)
    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(self.retry))
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        let sent = Ack::sent_now(rpc.vote.leader_id.term);
        let resp = self
            .call(RPCTypes::AppendEntries, &rpc, option.hard_ttl())
            .await?;
        // Any answer but a higher vote means the follower accepted this
        // leader and restarted its leader lease.
        if rpc.vote.committed && !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.lease.acked(self.target, sent);
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(RPCTypes::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr<openraft::error::Infallible>> {
        self.call(RPCTypes::Vote, &rpc, option.hard_ttl()).await
    }
}
