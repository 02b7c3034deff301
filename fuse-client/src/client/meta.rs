//! Typed metadata operations. Writes carry this client's session and a
//! sequence number, so a retry after a lost reply is applied once.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

use quizfs_proto::extent::ExtentMap;
use quizfs_proto::{self as pb, ChunkHash, ReadReply, meta_client::MetaClient, meta_op::Op};

use tonic::transport::Channel;

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

/// The attributes a successful reply must carry.
fn attr_in(op: &'static str, attr: Option<pb::Attr>) -> Result<pb::Attr, ClientError> {
    attr.ok_or(ClientError::Posix {
        op,
        errno: libc::EIO,
    })
}

fn attr_of(op: &'static str, r: pb::MetaReply) -> Result<pb::Attr, ClientError> {
    check(op, r.errno)?;
    attr_in(op, r.attr)
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
        let mut renewed = false;
        loop {
            let attempts = AtomicU32::new(0);
            let (reply, client_id) = self.apply_once(op_name, &op, session, &attempts).await;
            match reply {
                Ok(r) if r.session_expired && session => {
                    // Sent once only: never applied, so it may go again in
                    // a new session. Sent more than once, an earlier send
                    // may have been applied before the session went.
                    if attempts.load(Ordering::Relaxed) == 1 && !renewed {
                        self.renew_session(client_id).await?;
                        renewed = true;
                        continue;
                    }
                    tracing::warn!(
                        op = op_name,
                        "the session expired while this request was being retried: its outcome is unknown"
                    );
                    return Err(ClientError::Posix {
                        op: op_name,
                        errno: libc::EIO,
                    });
                }
                other => return other,
            }
        }
    }

    /// One send of [`Self::apply_raw`]: the reply, and the session it was
    /// sent in.
    async fn apply_once(
        &self,
        op_name: &'static str,
        op: &Op,
        session: bool,
        attempts: &AtomicU32,
    ) -> (Result<pb::MetaReply, ClientError>, u64) {
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
            op: Some(pb::MetaOp {
                op: Some(op.clone()),
            }),
        };
        let res = self
            .leader_call(op_name, |ch| {
                attempts.fetch_add(1, Ordering::Relaxed);
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
        (res, client_id)
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

    /// Sends a metadata write, after the early creates sent before it (see
    /// [`super::creates`]).
    pub async fn apply(&self, op_name: &'static str, op: Op) -> Result<pb::MetaReply, ClientError> {
        self.settle_all_creates().await;
        self.apply_raw(op_name, op, true).await
    }

    /// Sends a metadata write whose reply carries only an errno.
    pub async fn apply_unit(&self, op_name: &'static str, op: Op) -> Result<(), ClientError> {
        check(op_name, self.apply(op_name, op).await?.errno)
    }

    /// Sends a metadata write whose reply carries the inode's attributes.
    pub async fn apply_attr(&self, op_name: &'static str, op: Op) -> Result<pb::Attr, ClientError> {
        attr_of(op_name, self.apply(op_name, op).await?)
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
        self.apply_attr("create", op).await
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
        self.apply_attr("mkdir", op).await
    }

    /// Removes a file.
    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), ClientError> {
        let op = Op::Unlink(pb::Unlink {
            parent,
            name: name.to_vec(),
            keep_open_ino: 0,
        });
        self.apply_unit("unlink", op).await
    }

    /// Removes an empty directory.
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), ClientError> {
        let op = Op::Rmdir(pb::Rmdir {
            parent,
            name: name.to_vec(),
        });
        self.apply_unit("rmdir", op).await
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
        self.apply_unit("rename", op).await
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
        self.apply_attr("link", op).await
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
        self.apply_attr("symlink", op).await
    }

    /// Changes attributes.
    pub async fn setattr(&self, set: pb::SetAttr) -> Result<pb::Attr, ClientError> {
        self.apply_attr("setattr", Op::SetAttr(set)).await
    }

    /// Commits extents of chunks already durable on a majority, or carried
    /// in the command (`chunks`, at most [`pb::MAX_INLINE_BYTES`]), and the
    /// file's new size; with `cut`, the content from that offset on is
    /// dropped first (`Some(0)`: they become the whole content).
    pub async fn commit_extents(
        &self,
        ino: u64,
        extents: Vec<pb::Extent>,
        size: u64,
        cut: Option<u64>,
        chunks: Vec<Vec<u8>>,
    ) -> Result<pb::Attr, ClientError> {
        let c = pb::CommitWrite {
            ino,
            extents,
            size,
            mtime_ns: None,
            if_version: None,
            cut,
            create: None,
            chunks,
        };
        self.commit("write", c).await
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
        let c = pb::CommitWrite {
            ino,
            extents,
            size,
            mtime_ns: Some(mtime_ns),
            if_version: Some(version),
            cut: None,
            create: None,
            chunks: Vec::new(),
        };
        self.commit("compact", c).await
    }

    /// Commits a change of a file's content (the one command for writes,
    /// truncation with them, and compaction). A commit waits for no other
    /// file's early create: it carries its own file's if that is still
    /// held (see [`super::creates`]), else waits for it.
    async fn commit(
        &self,
        op: &'static str,
        mut c: pb::CommitWrite,
    ) -> Result<pb::Attr, ClientError> {
        let ino = c.ino;
        let held = self.create_for_commit(ino).await?;
        c.create = held.as_ref().map(|(create, _)| create.clone());
        let r = self.apply_raw(op, Op::CommitWrite(c), true).await;
        if let Some((create, done)) = held {
            match &r {
                Ok(reply) => self.create_done(ino, done, reply.errno),
                Err(ClientError::Posix { errno, .. }) => self.create_done(ino, done, *errno),
                // Not answered: the create is held again for the next try.
                Err(_) => self.create_again(ino, create),
            }
        }
        attr_of(op, r?)
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
        self.apply_attr("fallocate", op).await
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
        self.apply_unit("release", op).await
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
        self.apply_unit("setxattr", op).await
    }

    /// Removes an extended attribute.
    pub async fn removexattr(&self, ino: u64, name: &[u8]) -> Result<(), ClientError> {
        let op = Op::RemoveXattr(pb::RemoveXattr {
            ino,
            name: name.to_vec(),
        });
        self.apply_unit("removexattr", op).await
    }

    /// Sends one metadata read to the leader (see `leader_call`) and
    /// turns the errno in its reply into an error.
    async fn query<Req, Rep, F, Fut>(
        &self,
        op: &'static str,
        req: Req,
        send: F,
    ) -> Result<Rep, ClientError>
    where
        Req: Clone,
        Rep: ReadReply,
        F: Fn(MetaClient<Channel>, Req) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Rep>, tonic::Status>>,
    {
        let r = self
            .leader_call(op, |ch| send(MetaClient::new(ch), req.clone()))
            .await?;
        check(op, r.errno())?;
        Ok(r)
    }

    /// Looks a name up.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<pb::Attr, ClientError> {
        self.lookup_or_dir(parent, name)
            .await?
            .map_err(|_| ClientError::Posix {
                op: "lookup",
                errno: libc::ENOENT,
            })
    }

    /// Looks a name up: its attributes, or, when the directory exists and
    /// has no such name, the directory's attributes (what an early create
    /// of the name needs; see [`super::creates`]).
    pub async fn lookup_or_dir(
        &self,
        parent: u64,
        name: &[u8],
    ) -> Result<Result<pb::Attr, pb::Attr>, ClientError> {
        self.settle_name(parent, name).await;
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
        match (r.errno, r.parent) {
            (libc::ENOENT, Some(dir)) => Ok(Err(dir)),
            (errno, _) => {
                check("lookup", errno)?;
                attr_in("lookup", r.attr).map(Ok)
            }
        }
    }

    /// Reads attributes.
    pub async fn getattr(&self, ino: u64) -> Result<pb::Attr, ClientError> {
        self.settle_ino(ino).await;
        let req = pb::InodeRequest { ino };
        let r = self
            .query(
                "getattr",
                req,
                |mut c, r| async move { c.get_attr(r).await },
            )
            .await?;
        attr_in("getattr", r.attr)
    }

    /// Reads attributes and the extent map (checked as the state machine
    /// checks a commit: a node that sends a malformed map gets EIO).
    pub async fn layout(&self, ino: u64) -> Result<(pb::Attr, Extents), ClientError> {
        self.settle_ino(ino).await;
        let req = pb::InodeRequest { ino };
        let r = self
            .query("layout", req, |c, r| async move {
                let mut c = c.max_decoding_message_size(pb::MAX_LAYOUT_BYTES);
                c.get_layout(r).await
            })
            .await?;
        let attr = attr_in("layout", r.attr)?;
        let extents = ExtentMap::from_wire(&r.extents, attr.size).map_err(|e| {
            tracing::warn!(ino, error = %e, "malformed layout");
            ClientError::Posix {
                op: "layout",
                errno: libc::EIO,
            }
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
        self.settle_dir(ino).await;
        let req = pb::ReadDirRequest {
            ino,
            after: after.to_vec(),
            limit,
        };
        let r = self
            .query(
                "readdir",
                req,
                |mut c, r| async move { c.read_dir(r).await },
            )
            .await?;
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
        self.settle_ino(ino).await;
        let req = pb::InodeRequest { ino };
        let r = self
            .query(
                "readlink",
                req,
                |mut c, r| async move { c.read_link(r).await },
            )
            .await?;
        Ok(r.target)
    }

    /// Reads an extended attribute.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.settle_ino(ino).await;
        let req = pb::GetXattrRequest {
            ino,
            name: name.to_vec(),
        };
        let r = self
            .query(
                "getxattr",
                req,
                |mut c, r| async move { c.get_xattr(r).await },
            )
            .await?;
        Ok(r.value)
    }

    /// Lists extended attribute names.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, ClientError> {
        self.settle_ino(ino).await;
        let req = pb::InodeRequest { ino };
        let r = self
            .query(
                "listxattr",
                req,
                |mut c, r| async move { c.list_xattr(r).await },
            )
            .await?;
        Ok(r.names)
    }

    /// Space and file count of the volume. Every node holds every chunk,
    /// so the space is the smallest of the nodes' (their disks as their
    /// last heartbeat answers gave them, less the reserve that uploads
    /// must leave): a full node shows as a full volume before writes
    /// fail. The file count is the leader's.
    pub async fn statfs(&self) -> Result<pb::StatFsReply, ClientError> {
        let mut r = self
            .leader_call("statfs", |ch| {
                let r = pb::StatFsRequest {};
                async move { MetaClient::new(ch).stat_fs(r).await }
            })
            .await?;
        let known = self
            .nodes()
            .iter()
            .filter_map(|n| *n.disk.lock().unwrap_or_else(|p| p.into_inner()))
            .map(|d| d.usable())
            .reduce(|(t, f), (t2, f2)| (t.min(t2), f.min(f2)));
        if let Some((total, free)) = known {
            r.total_bytes = total;
            r.free_bytes = free;
        }
        Ok(r)
    }
}
