//! openraft wiring: the type configuration and the persistent stores.

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
    /// The prost-encoded `MetaOp`.
    pub op: Vec<u8>,
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
    openraft::StorageIOError::new(
        subject,
        openraft::ErrorVerb::Read,
        openraft::AnyError::new(e),
    )
    .into()
}

/// Wraps an error as a storage write error, for openraft.
pub fn write_err(
    subject: openraft::ErrorSubject<NodeId>,
    e: &(impl std::error::Error + 'static),
) -> StorageError {
    openraft::StorageIOError::new(
        subject,
        openraft::ErrorVerb::Write,
        openraft::AnyError::new(e),
    )
    .into()
}
