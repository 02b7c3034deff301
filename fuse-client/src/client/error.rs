//! Errors of the cluster client. Each variant names what failed.

use std::time::Duration;

use quizfs_proto::ChunkHash;

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster answered with a POSIX error.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Posix {
        /// The operation.
        op: &'static str,
        /// The errno.
        errno: i32,
    },
    /// None of the given servers answered.
    #[error("no quizfs server reachable at {servers}: {detail}")]
    NoServer {
        /// The servers tried.
        servers: String,
        /// What each said.
        detail: String,
    },
    /// The cluster does not serve the volume.
    #[error("unknown volume {volume:?}: {detail}")]
    UnknownVolume {
        /// The volume asked for.
        volume: String,
        /// The server's message.
        detail: String,
    },
    /// Retries ran out.
    #[error("{op} did not complete within {timeout:?}; last error: {last}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// The budget.
        timeout: Duration,
        /// The last failure seen.
        last: String,
    },
    /// A node refused the request for good (not retryable).
    #[error("{op} refused by {node}: {code:?}: {message}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// The node.
        node: String,
        /// The gRPC code.
        code: tonic::Code,
        /// The node's message.
        message: String,
    },
    /// No node could serve a valid copy of a chunk.
    #[error("chunk {hash} could not be read from any node: {detail}")]
    ChunkUnavailable {
        /// The chunk.
        hash: ChunkHash,
        /// What each node said.
        detail: String,
    },
    /// A chunk could not be made durable on a majority.
    #[error("chunk {hash} could not be stored on a majority of nodes: {detail}")]
    ChunkNotDurable {
        /// The chunk.
        hash: ChunkHash,
        /// What each node said.
        detail: String,
        /// ENOSPC (a node's disk is full), EIO (a node refused the data),
        /// or ETIMEDOUT (no majority within the operation timeout).
        errno: i32,
    },
    /// A server address does not parse.
    #[error("invalid server address {0:?}")]
    BadAddress(String),
    /// Reading the data to write failed.
    #[error("reading the data to write: {0}")]
    Source(#[from] std::io::Error),
    /// A task doing part of the operation panicked or was cancelled (a
    /// bug: the log has its message).
    #[error("{op}: a task doing part of it failed: {detail}")]
    TaskFailed {
        /// The operation.
        op: &'static str,
        /// What the runtime said of the task.
        detail: String,
    },
}

impl ClientError {
    /// A task of operation `op` that panicked or was cancelled.
    pub fn task_failed(op: &'static str, e: tokio::task::JoinError) -> Self {
        Self::TaskFailed {
            op,
            detail: e.to_string(),
        }
    }

    /// The errno an application should see for this error: the one
    /// mapping, used by the mount and every other caller.
    pub fn errno(&self) -> i32 {
        match self {
            Self::Posix { errno, .. } | Self::ChunkNotDurable { errno, .. } => *errno,
            Self::Timeout { .. } | Self::NoServer { .. } => libc::ETIMEDOUT,
            Self::Refused { code, .. } => errno_of_code(*code),
            Self::UnknownVolume { .. }
            | Self::ChunkUnavailable { .. }
            | Self::BadAddress(_)
            | Self::Source(_)
            | Self::TaskFailed { .. } => libc::EIO,
        }
    }
}

/// The errno for a gRPC code a node answered with and that retrying does
/// not change. A node sends INVALID_ARGUMENT only for a request no
/// application call can make (a malformed message, content that does not
/// match its hash), so the application sees EIO, as for the node's own
/// failures; a bad name or offset comes back as a POSIX errno in the reply.
pub fn errno_of_code(code: tonic::Code) -> i32 {
    use tonic::Code;
    match code {
        Code::ResourceExhausted => libc::ENOSPC,
        Code::PermissionDenied | Code::Unauthenticated => libc::EACCES,
        Code::Ok
        | Code::Cancelled
        | Code::Unknown
        | Code::InvalidArgument
        | Code::DeadlineExceeded
        | Code::NotFound
        | Code::AlreadyExists
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => libc::EIO,
    }
}
