//! Typed metadata operations. Writes carry this client's session and a
//! sequence number, so a retry after a lost reply is applied once.

use std::sync::atomic::Ordering;

use quizfs_proto::extent::ExtentMap;
use quizfs_proto::{self as pb, ChunkHash, meta_client::MetaClient, meta_op::Op};

use super::{ClientError, ClusterClient};

/// A file's committed content, as the cluster's layout gives it.
pub type Extents = ExtentMap<ChunkHash>;

/// RENAME_NOREPLACE for [`ClusterClient::rename`].
pub const RENAME_NOREPLACE: u32 = 1;
/// RENAME_EXCHANGE for [`ClusterClient::rename`].
pub const RENAME_EXCHANGE: u32 = 2;

fn check(op: &'static str, errno: i32) -> Result<(), ClientError> {
    if errno == 0 {
        Ok(())
    } else {
        Err(ClientError::Posix { op, errno })
    }
}

fn attr_of(op: &'static str, r: pb::MetaReply) -> Result<pb::Attr, ClientError> {
    check(op, r.errno)?;
    r.attr.ok_or(ClientError::Posix {
        op,
        errno: libc::EIO,
    })
}

impl ClusterClient {
    /// Sends one metadata write with a fresh sequence number; `session`
    /// false sends it outside any session (registration).
    pub(crate) async fn apply_raw(
        &self,
        op_name: &'static str,
        op: Op,
        session: bool,
    ) -> Result<pb::MetaReply, ClientError> {
        let (client_id, seq) = if session {
            let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
            self.inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq);
            (self.client_id(), seq)
        } else {
            (0, 0)
        };
        let acked_below = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .copied()
            .unwrap_or(seq);
        let req = pb::MetaRequest {
            client_id,
            seq,
            acked_below,
            op: Some(pb::MetaOp { op: Some(op) }),
        };
        let res = self
            .leader_call(op_name, |ch| {
                let r = req.clone();
                async move { MetaClient::new(ch).apply(r).await }
            })
            .await;
        if session {
            self.inner
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&seq);
        }
        res
    }

    /// Sends a metadata write exactly as given, with an explicit sequence
    /// number: for tests of exactly-once retries.
    pub async fn apply_with_seq(&self, seq: u64, op: Op) -> Result<pb::MetaReply, ClientError> {
        let req = pb::MetaRequest {
            client_id: self.client_id(),
            seq,
            acked_below: 0,
            op: Some(pb::MetaOp { op: Some(op) }),
        };
        self.leader_call("apply", |ch| {
            let r = req.clone();
            async move { MetaClient::new(ch).apply(r).await }
        })
        .await
    }

    /// Sends a metadata write.
    pub async fn apply(&self, op_name: &'static str, op: Op) -> Result<pb::MetaReply, ClientError> {
        self.apply_raw(op_name, op, true).await
    }

    /// Creates a file (or with another type in `mode`, a node).
    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        exclusive: bool,
    ) -> Result<pb::Attr, ClientError> {
        let op = Op::Create(pb::Create {
            parent,
            name: name.to_vec(),
            mode,
            exclusive,
            ..Default::default()
        });
        attr_of("create", self.apply("create", op).await?)
    }

    /// Creates a directory.
    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
    ) -> Result<pb::Attr, ClientError> {
        let op = Op::Mkdir(pb::Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            ..Default::default()
        });
        attr_of("mkdir", self.apply("mkdir", op).await?)
    }

    /// Removes a file.
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), ClientError> {
        let op = Op::Unlink(pb::Unlink {
            parent,
            name: name.to_vec(),
            keep_open_ino: 0,
        });
        check("unlink", self.apply("unlink", op).await?.errno)
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), ClientError> {
        let op = Op::Rmdir(pb::Rmdir {
            parent,
            name: name.to_vec(),
        });
        check("rmdir", self.apply("rmdir", op).await?.errno)
    }

    /// Renames, with `flags` RENAME_NOREPLACE or RENAME_EXCHANGE.
    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), ClientError> {
        let op = Op::Rename(pb::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
            keep_open_ino: 0,
        });
        check("rename", self.apply("rename", op).await?.errno)
    }

    /// Adds a hard link.
    pub async fn link(
        &self,
        ino: u64,
        new_parent: u64,
        new_name: &[u8],
    ) -> Result<pb::Attr, ClientError> {
        let op = Op::Link(pb::Link {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
        });
        attr_of("link", self.apply("link", op).await?)
    }

    /// Creates a symlink.
    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<pb::Attr, ClientError> {
        let op = Op::Symlink(pb::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            ..Default::default()
        });
        attr_of("symlink", self.apply("symlink", op).await?)
    }

    /// Changes attributes.
    pub async fn setattr(&self, set: pb::SetAttr) -> Result<pb::Attr, ClientError> {
        attr_of("setattr", self.apply("setattr", Op::SetAttr(set)).await?)
    }

    /// Commits extents of chunks already durable on a majority and the
    /// file's new size; with `cut`, the content from that offset on is
    /// dropped first (`Some(0)`: they become the whole content).
    pub async fn commit_extents(
        &self,
        ino: u64,
        extents: Vec<pb::Extent>,
        size: u64,
        cut: Option<u64>,
    ) -> Result<pb::Attr, ClientError> {
        let op = Op::CommitWrite(pb::CommitWrite {
            ino,
            extents,
            size,
            mtime_ns: None,
            if_version: None,
            cut,
        });
        attr_of("write", self.apply("write", op).await?)
    }

    /// Rewrites extents of a file only if its content is still at
    /// `version` (a compaction): ESTALE when another change came first.
    /// The file's mtime is kept: the bytes do not change.
    pub async fn recommit_extents(
        &self,
        ino: u64,
        extents: Vec<pb::Extent>,
        size: u64,
        version: u64,
        mtime_ns: i64,
    ) -> Result<pb::Attr, ClientError> {
        let op = Op::CommitWrite(pb::CommitWrite {
            ino,
            extents,
            size,
            mtime_ns: Some(mtime_ns),
            if_version: Some(version),
            cut: None,
        });
        attr_of("compact", self.apply("compact", op).await?)
    }

    /// fallocate(2) on a file (see `pb::Fallocate` for the modes).
    pub async fn fallocate(
        &self,
        ino: u64,
        offset: u64,
        len: u64,
        mode: u32,
    ) -> Result<pb::Attr, ClientError> {
        let op = Op::Fallocate(pb::Fallocate {
            ino,
            offset,
            len,
            mode,
        });
        attr_of("fallocate", self.apply("fallocate", op).await?)
    }

    /// copy_file_range(2) as shared extents: returns the destination's
    /// attributes and the bytes copied.
    pub async fn copy_range(&self, c: pb::CopyRange) -> Result<(pb::Attr, u64), ClientError> {
        let r = self.apply("copy_file_range", Op::CopyRange(c)).await?;
        let copied = r.value;
        Ok((attr_of("copy_file_range", r)?, copied))
    }

    /// Removes the inode this client kept open through its last unlink.
    pub async fn release_orphan(&self, ino: u64) -> Result<(), ClientError> {
        let op = Op::ReleaseOrphan(pb::ReleaseOrphan { ino });
        check("release", self.apply("release", op).await?.errno)
    }

    /// Sets an extended attribute.
    pub async fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), ClientError> {
        let op = Op::SetXattr(pb::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        });
        check("setxattr", self.apply("setxattr", op).await?.errno)
    }

    /// Removes an extended attribute.
    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), ClientError> {
        let op = Op::RemoveXattr(pb::RemoveXattr {
            ino,
            name: name.to_vec(),
        });
        check("removexattr", self.apply("removexattr", op).await?.errno)
    }

    /// Looks a name up.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<pb::Attr, ClientError> {
        let req = pb::LookupRequest {
            parent,
            name: name.to_vec(),
        };
        let r = self
            .leader_call("lookup", |ch| {
                let r = req.clone();
                async move { MetaClient::new(ch).lookup(r).await }
            })
            .await?;
        check("lookup", r.errno)?;
        r.attr.ok_or(ClientError::Posix {
            op: "lookup",
            errno: libc::EIO,
        })
    }

    /// Reads attributes.
    pub async fn getattr(&self, ino: u64) -> Result<pb::Attr, ClientError> {
        let r = self
            .leader_call("getattr", |ch| {
                let r = pb::InodeRequest { ino };
                async move { MetaClient::new(ch).get_attr(r).await }
            })
            .await?;
        check("getattr", r.errno)?;
        r.attr.ok_or(ClientError::Posix {
            op: "getattr",
            errno: libc::EIO,
        })
    }

    /// Reads attributes and the extent map (checked as the state machine
    /// checks a commit: a node that sends a malformed map gets EIO).
    pub async fn layout(&self, ino: u64) -> Result<(pb::Attr, Extents), ClientError> {
        let r = self
            .leader_call("layout", |ch| {
                let r = pb::InodeRequest { ino };
                async move {
                    MetaClient::new(ch)
                        .max_decoding_message_size(pb::MAX_LAYOUT_BYTES)
                        .get_layout(r)
                        .await
                }
            })
            .await?;
        check("layout", r.errno)?;
        let eio = || ClientError::Posix {
            op: "layout",
            errno: libc::EIO,
        };
        let attr = r.attr.ok_or_else(eio)?;
        let extents = ExtentMap::from_wire(&r.extents, attr.size).map_err(|e| {
            tracing::warn!(ino, error = %e, "malformed layout");
            eio()
        })?;
        Ok((attr, extents))
    }

    /// Lists a directory from after `after`.
    pub async fn readdir(
        &self,
        ino: u64,
        after: &[u8],
        limit: u32,
    ) -> Result<(Vec<pb::DirEntry>, bool), ClientError> {
        let req = pb::ReadDirRequest {
            ino,
            after: after.to_vec(),
            limit,
        };
        let r = self
            .leader_call("readdir", |ch| {
                let r = req.clone();
                async move { MetaClient::new(ch).read_dir(r).await }
            })
            .await?;
        check("readdir", r.errno)?;
        Ok((r.entries, r.more))
    }

    /// Lists a whole directory, page by page.
    pub async fn readdir_all(&self, ino: u64) -> Result<Vec<pb::DirEntry>, ClientError> {
        let mut out: Vec<pb::DirEntry> = Vec::new();
        loop {
            let after = out.last().map(|e| e.name.clone()).unwrap_or_default();
            let (page, more) = self.readdir(ino, &after, 4096).await?;
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Reads a symlink.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>, ClientError> {
        let r = self
            .leader_call("readlink", |ch| {
                let r = pb::InodeRequest { ino };
                async move { MetaClient::new(ch).read_link(r).await }
            })
            .await?;
        check("readlink", r.errno)?;
        Ok(r.target)
    }

    /// Reads an extended attribute.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, ClientError> {
        let req = pb::GetXattrRequest {
            ino,
            name: name.to_vec(),
        };
        let r = self
            .leader_call("getxattr", |ch| {
                let r = req.clone();
                async move { MetaClient::new(ch).get_xattr(r).await }
            })
            .await?;
        check("getxattr", r.errno)?;
        Ok(r.value)
    }

    /// Lists extended attribute names.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, ClientError> {
        let r = self
            .leader_call("listxattr", |ch| {
                let r = pb::InodeRequest { ino };
                async move { MetaClient::new(ch).list_xattr(r).await }
            })
            .await?;
        check("listxattr", r.errno)?;
        Ok(r.names)
    }

    /// Space and file count of the volume.
    pub async fn statfs(&self) -> Result<pb::StatFsReply, ClientError> {
        self.leader_call("statfs", |ch| {
            let r = pb::StatFsRequest {};
            async move { MetaClient::new(ch).stat_fs(r).await }
        })
        .await
    }
}
