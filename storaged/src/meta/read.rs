//! Read queries against the applied state. The caller has already made the
//! read linearizable (read index) before calling these.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use quizfs_proto as pb;

use super::schema::{DirEntryRec, Inode, KEY_INODE_COUNT, dir_prefix, dirent_key, inode_key};
use crate::raft::decode;

/// Errors of a read: the store failed or a record is corrupt.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// sled failed.
    #[error("state machine read: {0}")]
    Sled(#[from] sled::Error),
    /// A record does not decode.
    #[error("corrupt state machine record: {0}")]
    Corrupt(#[from] bincode::Error),
}

/// Most entries one readdir reply carries.
pub const MAX_READDIR: u32 = 4096;

/// Read access to the state machine tree.
#[derive(Debug, Clone)]
pub struct MetaReader {
    tree: sled::Tree,
    /// Held for writing while an apply writes its keys: a read that looks
    /// at several keys (an entry and its inode) sees all of a command or
    /// none of it.
    applying: Arc<RwLock<()>>,
}

impl MetaReader {
    /// Reads from the state machine tree, kept out of half-applied
    /// commands by `applying`.
    pub fn new(tree: sled::Tree, applying: Arc<RwLock<()>>) -> Self {
        Self { tree, applying }
    }

    fn held(&self) -> RwLockReadGuard<'_, ()> {
        self.applying.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of every session in the session table.
    pub fn session_ids(&self) -> Result<Vec<u64>, ReadError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix([super::schema::PREFIX_SESSION]) {
            let (k, _) = item?;
            if let Ok(id) = <[u8; 8]>::try_from(&k[1..]) {
                ids.push(u64::from_be_bytes(id));
            }
        }
        Ok(ids)
    }

    /// How many inodes are kept without links for a holder (orphans).
    pub fn orphan_count(&self) -> Result<usize, ReadError> {
        let mut n = 0;
        for item in self.tree.scan_prefix([super::schema::PREFIX_ORPHAN]) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// The file locks of `ino` (an empty table when it has none).
    pub fn lock_table(&self, ino: u64) -> Result<super::locks::LockTable, ReadError> {
        let _one_state = self.held();
        Ok(match self.tree.get(super::locks::lock_key(ino))? {
            Some(v) => decode(&v)?,
            None => super::locks::LockTable::default(),
        })
    }

    /// How many locks are held, and how many requests wait, over all files.
    pub fn lock_counts(&self) -> Result<(usize, usize), ReadError> {
        let _one_state = self.held();
        let (mut held, mut queued) = (0, 0);
        for item in self.tree.scan_prefix([super::schema::PREFIX_LOCK]) {
            let (_, v) = item?;
            let t: super::locks::LockTable = decode(&v)?;
            held += t.held.len();
            queued += t.queue.len();
        }
        Ok((held, queued))
    }

    /// Whether the session `client` exists.
    pub fn has_session(&self, client: u64) -> Result<bool, ReadError> {
        Ok(self.tree.contains_key(super::schema::session_key(client))?)
    }

    /// Loads an inode.
    pub fn inode(&self, ino: u64) -> Result<Option<Inode>, ReadError> {
        let _one_state = self.held();
        self.inode_in(ino)
    }

    fn inode_in(&self, ino: u64) -> Result<Option<Inode>, ReadError> {
        Ok(self
            .inode_or_tombstone_in(ino)?
            .filter(|(_, tomb)| !tomb)
            .map(|(i, _)| i))
    }

    /// An inode record, also a tombstone's (an inode whose last link went
    /// and that nobody holds open; only a layout read at open shows it),
    /// and whether it is one.
    pub fn inode_or_tombstone(&self, ino: u64) -> Result<Option<(Inode, bool)>, ReadError> {
        let _one_state = self.held();
        self.inode_or_tombstone_in(ino)
    }

    fn inode_or_tombstone_in(&self, ino: u64) -> Result<Option<(Inode, bool)>, ReadError> {
        let Some(v) = self.tree.get(inode_key(ino))? else {
            return Ok(None);
        };
        let inode: Inode = decode(&v)?;
        let tomb = inode.nlink == 0
            && !inode.is_dir()
            && self.tree.get(super::schema::orphan_key(ino))?.is_none();
        Ok(Some((inode, tomb)))
    }

    /// Looks a name up in a directory: its attributes, or the errno and,
    /// when the directory has no such name, the directory's attributes.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<pb::AttrReply, ReadError> {
        let _one_state = self.held();
        let failed = |errno| pb::AttrReply {
            errno,
            ..Default::default()
        };
        if let Err(e) = super::validate::name(name) {
            return Ok(failed(e));
        }
        let Some(dir) = self.inode_in(parent)? else {
            return Ok(failed(libc::ENOENT));
        };
        if !dir.is_dir() {
            return Ok(failed(libc::ENOTDIR));
        }
        let found = match self.tree.get(dirent_key(parent, name))? {
            Some(v) => {
                let e: DirEntryRec = decode(&v)?;
                self.inode_in(e.ino)?.map(|i| i.attr(e.ino))
            }
            None => None,
        };
        Ok(match found {
            Some(a) => pb::AttrReply {
                errno: 0,
                attr: Some(a),
                parent: None,
            },
            None => pb::AttrReply {
                parent: Some(dir.attr(parent)),
                ..failed(libc::ENOENT)
            },
        })
    }

    /// Lists a directory after `after`, at most `limit` entries; the bool
    /// says whether more follow.
    pub fn readdir(
        &self,
        ino: u64,
        after: &[u8],
        limit: u32,
    ) -> Result<Result<(Vec<pb::DirEntry>, bool), i32>, ReadError> {
        let _one_state = self.held();
        let Some(dir) = self.inode_in(ino)? else {
            return Ok(Err(libc::ENOENT));
        };
        if !dir.is_dir() {
            return Ok(Err(libc::ENOTDIR));
        }
        let prefix = dir_prefix(ino);
        let limit = limit.clamp(1, MAX_READDIR) as usize;
        let start = dirent_key(ino, after);
        let mut out = Vec::new();
        let mut more = false;
        for item in self.tree.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            let name = &k[prefix.len()..];
            if name == after {
                continue;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            let e: DirEntryRec = decode(&v)?;
            // The attributes ride along, so a listing needs no lookup per
            // entry (the client answers readdirplus with them).
            let attr = self.inode_in(e.ino)?.map(|i| i.attr(e.ino));
            out.push(pb::DirEntry {
                name: name.to_vec(),
                ino: e.ino,
                mode: e.kind,
                attr,
            });
        }
        Ok(Ok((out, more)))
    }

    /// Number of inodes in the volume.
    pub fn inode_count(&self) -> Result<u64, ReadError> {
        Ok(self
            .tree
            .get(KEY_INODE_COUNT)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Iterates the hashes of every referenced chunk.
    pub fn referenced_chunks(&self) -> impl Iterator<Item = Result<[u8; 32], ReadError>> {
        self.tree
            .scan_prefix([super::schema::PREFIX_CHUNK])
            .map(|item| {
                let (k, _) = item?;
                let mut h = [0u8; 32];
                h.copy_from_slice(&k[1..33]);
                Ok(h)
            })
    }

    /// Copies of each chunk (R) the cluster keeps.
    pub fn replicas(&self) -> usize {
        self.tree
            .get(super::schema::KEY_REPLICAS)
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(pb::placement::REPLICAS, |v| u64::from_be_bytes(v) as usize)
    }

    /// Whether the copies of each chunk are recorded (the first start's
    /// `InitVolume` applied).
    pub fn replicas_recorded(&self) -> bool {
        self.tree
            .contains_key(super::schema::KEY_REPLICAS)
            .unwrap_or(false)
    }

    /// Every node record (`quizfs node add/remove/replace`), by address.
    pub fn node_records(
        &self,
    ) -> Result<std::collections::BTreeMap<String, super::schema::NodeRecord>, ReadError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.tree.scan_prefix([super::schema::PREFIX_NODE]) {
            let (k, v) = item?;
            let addr = String::from_utf8_lossy(&k[1..]).into_owned();
            out.insert(addr, decode(&v)?);
        }
        Ok(out)
    }

    /// The addresses of the nodes being drained.
    pub fn draining(&self) -> Result<std::collections::BTreeSet<String>, ReadError> {
        Ok(self
            .node_records()?
            .into_iter()
            .filter(|(_, r)| r.draining())
            .map(|(a, _)| a)
            .collect())
    }

    /// Whether any file references the chunk.
    pub fn is_referenced(&self, hash: &[u8; 32]) -> Result<bool, ReadError> {
        Ok(self.tree.contains_key(super::schema::chunk_key(hash))?)
    }
}
