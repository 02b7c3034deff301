//! Key layout of the state machine tree and the records stored in it.
//!
//! One sled tree holds the whole state machine; every apply's writes,
//! `last_applied` and the session table commit atomically (see
//! `state_machine.rs`).
//!
//! | key | value |
//! | --- | --- |
//! | `A` | applied state: last applied log id and membership |
//! | `N` + name | counters: next inode, next client id, next node id, inode count |
//! | `i` + ino (8, BE) | [`Inode`] |
//! | `d` + parent (8, BE) + name | [`DirEntryRec`] |
//! | `c` + hash (32) | chunk reference count (8, BE) |
//! | `s` + client (8, BE) | [`sessions::Session`](super::sessions::Session) |
//! | `l` + ino (8, BE) | [`LockTable`](super::locks::LockTable) |
//! | `m` + node address | [`NodeRecord`]: admitted or draining |

use std::collections::BTreeMap;

use quizfs_proto::extent::ExtentMap;
use quizfs_proto::{self as pb, ChunkHash};
use serde::{Deserialize, Serialize};

/// Key of the applied state.
pub const KEY_APPLIED: &[u8] = b"A";
/// Key of the next inode number.
pub const KEY_NEXT_INO: &[u8] = b"Nino";
/// Key of the next client id.
pub const KEY_NEXT_CLIENT: &[u8] = b"Nclient";
/// Key of the next node id.
pub const KEY_NEXT_NODE: &[u8] = b"Nnode";
/// Key of the copies of each chunk (R), set by the first `InitVolume`
/// that gives it (absent: [`quizfs_proto::placement::REPLICAS`]).
pub const KEY_REPLICAS: &[u8] = b"Nreplicas";
/// Key of the number of inodes.
pub const KEY_INODE_COUNT: &[u8] = b"Ninodes";
/// Prefix of inode records.
pub const PREFIX_INODE: u8 = b'i';
/// Prefix of directory entries.
pub const PREFIX_DIRENT: u8 = b'd';
/// Prefix of chunk reference counts.
pub const PREFIX_CHUNK: u8 = b'c';
/// Prefix of client sessions.
pub const PREFIX_SESSION: u8 = b's';
/// Prefix of orphan markers: inodes without links kept while a client
/// holds them open.
pub const PREFIX_ORPHAN: u8 = b'o';
/// Prefix of lock tables: the file locks of an inode (`crate::meta::locks`).
pub const PREFIX_LOCK: u8 = b'l';
/// Prefix of node records: what the operator decided about a storage
/// node (`quizfs node add/remove/replace`), by its address.
pub const PREFIX_NODE: u8 = b'm';
/// Prefix of the tombstone queue: inodes whose last link went, in the
/// order it went, each kept readable for [`TOMBSTONE_NS`].
pub const PREFIX_TOMB: u8 = b't';
/// Key of the position of the oldest tombstone in the queue.
pub const KEY_TOMB_HEAD: &[u8] = b"Ntombhead";
/// Key of the position after the newest tombstone in the queue.
pub const KEY_TOMB_TAIL: &[u8] = b"Ntombtail";
/// How long the record of an inode whose last link went (and that no
/// mount said it holds open) stays, by the command clock, for a layout
/// read: a mount that looked the name up just before the unlink or
/// rename-over can still open what it found (the kernel's retry of an
/// open after a fresh lookup; see `QuizFs::open_ino`). Longer than any
/// stall of one open (a leader election, a retried call). Its chunk
/// references go at once, so its chunks last as long as the garbage
/// collector's grace (600 s by default).
pub const TOMBSTONE_NS: i64 = 60_000_000_000;
/// Tombstones past their time that one command removes at most.
pub const MAX_REAP: usize = 64;

/// First node id handed out to nodes that join after the bootstrap (the
/// bootstrap members are 1..=N in `--peers` order).
pub const FIRST_JOINED_NODE_ID: u64 = 101;

/// What the operator decided about one storage node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `pb::NodeRecordState` as a number (admitted or draining).
    pub state: i32,
    /// With admitted: the member this node replaces when it joins.
    pub replaces: String,
    /// When the record was set, by the command clock (ns since the epoch).
    pub since_ns: i64,
}

impl NodeRecord {
    /// Whether `quizfs node remove` is draining the node.
    pub fn draining(&self) -> bool {
        self.state == pb::NodeRecordState::NodeDraining as i32
    }
}

/// Key of the record of the node at `addr`.
pub fn node_key(addr: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + addr.len());
    k.push(PREFIX_NODE);
    k.extend_from_slice(addr.as_bytes());
    k
}

/// File type bits of a mode.
pub const S_IFMT: u32 = libc::S_IFMT;
/// Directory type.
pub const S_IFDIR: u32 = libc::S_IFDIR;
/// Regular file type.
pub const S_IFREG: u32 = libc::S_IFREG;
/// Symlink type.
pub const S_IFLNK: u32 = libc::S_IFLNK;
/// Set-group-id bit.
pub const S_ISGID: u32 = libc::S_ISGID;

/// One inode: POSIX attributes plus what the inode's type needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inode {
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (symlinks: target length).
    pub size: u64,
    /// Link count (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Access time, ns since the epoch.
    pub atime_ns: i64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Change time, ns since the epoch.
    pub ctime_ns: i64,
    /// Device number of device nodes.
    pub rdev: u32,
    /// Directories: the parent directory (the root is its own parent).
    pub parent: u64,
    /// Directories: number of entries, so rmdir needs no scan.
    pub entries: u64,
    /// Symlinks: the target.
    pub target: Vec<u8>,
    /// Regular files: the content, as extents of chunks.
    pub extents: ExtentMap<ChunkHash>,
    /// Regular files: changes to the content so far (see `Attr`).
    pub content_version: u64,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Inode {
    /// Whether the inode is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }

    /// Whether the inode is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }

    /// The attributes as they go on the wire.
    pub fn attr(&self, ino: u64) -> pb::Attr {
        pb::Attr {
            ino,
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            size: self.size,
            nlink: self.nlink,
            atime_ns: self.atime_ns,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            rdev: self.rdev,
            generation: 0,
            has_xattrs: !self.xattrs.is_empty(),
            content_version: self.content_version,
        }
    }
}

/// A directory entry: the child and its type bits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct DirEntryRec {
    /// The child's inode.
    pub ino: u64,
    /// The child's file type bits.
    pub kind: u32,
}

/// A one-byte prefix and a big-endian number: the keys of records per
/// inode, directory, session, tombstone or orphan.
fn prefixed(prefix: u8, n: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Key of an inode record.
pub fn inode_key(ino: u64) -> [u8; 9] {
    prefixed(PREFIX_INODE, ino)
}

/// Key prefix of all entries of a directory.
pub fn dir_prefix(parent: u64) -> [u8; 9] {
    prefixed(PREFIX_DIRENT, parent)
}

/// Key of one directory entry.
pub fn dirent_key(parent: u64, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + name.len());
    k.extend_from_slice(&dir_prefix(parent));
    k.extend_from_slice(name);
    k
}

/// Key of a chunk's reference count.
pub fn chunk_key(hash: &[u8; 32]) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[0] = PREFIX_CHUNK;
    k[1..].copy_from_slice(hash);
    k
}

/// Key of a client session.
pub fn session_key(client: u64) -> [u8; 9] {
    prefixed(PREFIX_SESSION, client)
}

/// One entry of the tombstone queue.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Tombstone {
    /// The inode.
    pub ino: u64,
    /// When its last link went (the command's time).
    pub at_ns: i64,
}

/// Key of position `seq` of the tombstone queue.
pub fn tomb_key(seq: u64) -> [u8; 9] {
    prefixed(PREFIX_TOMB, seq)
}

/// Key of an orphan marker.
pub fn orphan_key(ino: u64) -> [u8; 9] {
    prefixed(PREFIX_ORPHAN, ino)
}
