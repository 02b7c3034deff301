//! openraft wiring: the type configuration and the persistent stores.

pub mod clock;
pub mod leader_gone;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod snapshot;

pub use openraft::BasicNode;
use serde::{Deserialize, Serialize};

/// One metadata command as it sits in the Raft log.
///
/// `op` is a prost-encoded `quizfs.v1.MetaOp`; the proposer fills in the
/// time, so applying the command never reads a local clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cmd {
    /// The client that sent the command (0 for commands without a session).
    pub client_id: u64,
    /// The client's sequence number, the key of exactly-once replies.
    pub seq: u64,
    /// Every seq of this client below this one has had its reply.
    pub acked_below: u64,
    /// Time stamped by the leader when it proposed the command.
    pub now_ns: i64,
    /// The prost-encoded `MetaOp`. As bytes, not a sequence of u8: the
    /// same encoding in bincode, but written and read in one copy (a
    /// command may carry file data; see `CommitWrite.chunks`).
    #[serde(with = "serde_bytes")]
    pub op: Vec<u8>,
}

/// Longest a proposal waits for its commit before the proposer is told to
/// retry (a client's retry is safe: it carries the same sequence number).
pub const COMMIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Who proposes a command: a client's session and sequence number, or
/// nobody (commands of the cluster's own, such as creating the root).
#[derive(Debug, Clone, Copy, Default)]
pub struct Proposer {
    /// The client (0 for none).
    pub client_id: u64,
    /// The client's sequence number.
    pub seq: u64,
    /// Every seq of this client below this one has had its reply.
    pub acked_below: u64,
}

/// Why a proposed command has no reply.
// Made once per failed proposal and matched at once: boxing openraft's
// error would only add a step to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// Not committed within the time given (it may still be: a retry
    /// with the same sequence number is applied once).
    #[error("commit timed out")]
    TimedOut,
    /// Raft refused it (not the leader, or stopped).
    #[error(transparent)]
    Raft(
        #[from]
        openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, BasicNode>>,
    ),
    /// The state machine's reply does not decode (a bug).
    #[error("undecodable reply: {0}")]
    Reply(#[from] prost::DecodeError),
}

/// Proposes `op` to Raft as `who`, stamped with the leader's clock, and
/// waits up to `timeout` for its reply. The one way commands are made.
pub async fn propose(
    raft: &Raft,
    who: Proposer,
    op: &quizfs_proto::MetaOp,
    timeout: std::time::Duration,
) -> Result<quizfs_proto::MetaReply, ProposeError> {
    let cmd = Cmd {
        client_id: who.client_id,
        seq: who.seq,
        acked_below: who.acked_below,
        now_ns: quizfs_proto::now_ns(),
        op: prost::Message::encode_to_vec(op),
    };
    let resp = tokio::time::timeout(timeout, raft.client_write(cmd))
        .await
        .map_err(|_| ProposeError::TimedOut)??;
    Ok(prost::Message::decode(resp.data.0.as_slice())?)
}

/// The result of applying a [`Cmd`]: a prost-encoded `quizfs.v1.MetaReply`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CmdReply(pub Vec<u8>);

openraft::declare_raft_types!(
    /// openraft's type configuration for quizfs.
    pub TypeConfig:
        D = Cmd,
        R = CmdReply,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = clock::RaftRuntime,
);

/// Raft node id.
pub type NodeId = u64;
/// The Raft instance of a node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A Raft log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage error as openraft wants it.
pub type StorageError = openraft::StorageError<NodeId>;
/// Log id.
pub type LogId = openraft::LogId<NodeId>;
/// Stored membership.
pub type StoredMembership = openraft::StoredMembership<NodeId, BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BasicNode>;

/// Encodes a value for sled or the wire.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // bincode only fails on types that cannot be serialized (maps with
    // non-string keys in some formats, or I/O writers); ours all can.
    bincode::serialize(value).expect("bincode serialization of plain data cannot fail")
}

/// Decodes a value encoded with [`encode`].
pub fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

/// Wraps an error as a storage read error, for openraft.
pub fn read_err(
    subject: openraft::ErrorSubject<NodeId>,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    io_err(subject, openraft::ErrorVerb::Read, e)
}

/// Wraps an error as a storage write error, for openraft.
pub fn write_err(
    subject: openraft::ErrorSubject<NodeId>,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    io_err(subject, openraft::ErrorVerb::Write, e)
}

fn io_err(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(e)).into()
}
