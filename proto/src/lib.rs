//! The quizfs wire protocol: generated gRPC services and messages, plus the
//! few constants that both ends must agree on.

#[allow(missing_docs, unreachable_pub, unused_qualifications, clippy::all)]
mod generated {
    tonic::include_proto!("quizfs.v1");
}

pub use generated::*;
/// The buffer type of the messages' `bytes` fields that are kept without
/// copying (a chunk's pieces).
pub use prost::bytes::Bytes;

pub mod extent;
pub mod metrics_http;
pub mod placement;
pub mod range;
pub mod tls;

/// A status's message with the chain of errors under it: a transport
/// error's message alone ("transport error") does not say that, for
/// example, the other side refused a certificate.
pub fn status_detail(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Most hashes in one `Chunks/Has` request.
pub const MAX_HAS: usize = 4096;

/// Default TCP port of `storaged` when a peer is given as a bare host.
pub const DEFAULT_PORT: u16 = 7420;

/// Largest chunk a file is cut into; a chunk is also the unit of healing.
pub const CHUNK_SIZE: usize = 4 * 1024 * 1024;

/// Size of one streamed piece of a chunk in `Chunks.Put` / `Chunks.Get`.
pub const PIECE_SIZE: usize = 256 * 1024;

/// Most chunk uploads one client keeps in flight to one node, and the
/// slots a node gives each client: a client never sends an upload the
/// node would hold unread (its data would sit in the connection's flow
/// control window and stall the uploads being read, and every other call
/// on that connection).
pub const MAX_UPLOADS_PER_CLIENT: usize = 16;

/// Largest range a `Chunks.GetRange` call may ask for; a larger read
/// fetches the whole chunk.
pub const MAX_RANGE_BYTES: u32 = 256 * 1024;

/// Most chunk bytes one `CommitWrite` may carry inside the command (see
/// `CommitWrite.chunks`); a file whose uncommitted writes are larger
/// uploads them as chunks first.
pub const MAX_INLINE_BYTES: usize = 256 * 1024;

/// Largest gRPC message a client-facing service accepts.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Largest metadata reply a client accepts: a layout of about 280,000
/// extents (a mount compacts a file long before it has that many).
pub const MAX_LAYOUT_BYTES: usize = 16 * 1024 * 1024;

/// Largest gRPC message the Raft transport accepts (batches of log entries).
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Longest file name in bytes, as on Linux.
pub const MAX_NAME_BYTES: usize = 255;

/// Most inode numbers one `ReserveInodes` command may reserve.
pub const MAX_RESERVE_INODES: u32 = 65_536;

/// Longest symlink target in bytes (PATH_MAX).
pub const MAX_SYMLINK_BYTES: usize = 4096;

/// Largest file size quizfs accepts (8 TiB).
pub const MAX_FILE_SIZE: u64 = 8 << 40;

/// gRPC metadata key carrying the leader's address on a redirect.
pub const LEADER_HINT_KEY: &str = "x-quizfs-leader";

/// gRPC metadata key naming the Raft node id a Raft RPC is meant for, so a
/// node that took over an address under a new id refuses traffic meant for
/// its predecessor.
pub const RAFT_TARGET_KEY: &str = "x-quizfs-raft-target";

/// Inode number of the volume's root directory.
pub const ROOT_INO: u64 = 1;

/// A metadata read's reply: what was found, or only the errno of why not
/// (0 when found). Both ends use it: the node to answer a failed read, the
/// client to check one.
pub trait ReadReply: Default {
    /// The reply's errno.
    fn errno(&self) -> i32;
    /// A reply with only `errno`.
    fn failed(errno: i32) -> Self;
}

macro_rules! read_reply {
    ($($t:ty),*) => {
        $(impl ReadReply for $t {
            fn errno(&self) -> i32 {
                self.errno
            }
            fn failed(errno: i32) -> Self {
                Self { errno, ..Default::default() }
            }
        })*
    };
}

read_reply!(
    AttrReply,
    LayoutReply,
    ReadDirReply,
    ReadLinkReply,
    GetLockReply,
    WaitLockReply,
    GetXattrReply,
    ListXattrReply
);

/// The wall clock as the protocol carries times: nanoseconds since the
/// epoch (0 for a clock set before it).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The blake3 hash that names a chunk.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// Hashes chunk content.
    pub fn of(data: &[u8]) -> Self {
        Self(*blake3::hash(data).as_bytes())
    }

    /// Parses 32 raw bytes, as they travel in messages.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// Parses 64 lowercase hex digits, as in chunk file names.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Self(out))
    }

    /// The full hash as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex()[..12])
    }
}

impl std::fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}
