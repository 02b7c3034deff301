//! The namespace service. Writes go through Raft on the leader; reads are
//! made linearizable by the leader's read lease or openraft's read index.
//! Followers redirect.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use quizfs_proto::{self as pb, meta_server::Meta};
use tonic::{Request, Response, Status};

use super::status;
use crate::meta::read::MetaReader;
use crate::meta::validate;
use crate::node::NodeState;
use crate::raft::{Cmd, Raft};

/// Longest a write waits for its commit before the client is told to retry
/// (the retry is safe: it carries the same sequence number).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a read waits for its read-index check.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves metadata requests.
#[derive(Debug, Clone)]
pub struct MetaService {
    /// The node.
    pub state: Arc<NodeState>,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

impl MetaService {
    fn raft(&self) -> Result<&Raft, Status> {
        self.state.raft.get().ok_or_else(status::not_ready)
    }

    /// Waits until this node, as leader, has applied everything committed
    /// before the read arrived: at once under a read lease, else through
    /// openraft's read index.
    async fn linearize(&self) -> Result<&MetaReader, Status> {
        let raft = self.raft()?;
        if self.state.lease.holds(raft) {
            return Ok(&self.state.reader);
        }
        match tokio::time::timeout(READ_TIMEOUT, raft.ensure_linearizable()).await {
            Err(_) => Err(Status::unavailable("read index timed out")),
            Ok(Err(e)) => Err(status::read_index_error(e)),
            Ok(Ok(_)) => Ok(&self.state.reader),
        }
    }
}

fn errno_attr(r: Result<pb::Attr, i32>) -> pb::AttrReply {
    match r {
        Ok(a) => pb::AttrReply {
            errno: 0,
            attr: Some(a),
        },
        Err(errno) => pb::AttrReply { errno, attr: None },
    }
}

#[tonic::async_trait]
impl Meta for MetaService {
    #[tracing::instrument(skip_all, fields(client = req.get_ref().client_id, seq = req.get_ref().seq))]
    async fn apply(
        &self,
        req: Request<pb::MetaRequest>,
    ) -> Result<Response<pb::MetaReply>, Status> {
        let req = req.into_inner();
        let op = req
            .op
            .ok_or_else(|| Status::invalid_argument("request has no operation"))?;
        if let Err(errno) = validate::op(&op) {
            return Ok(Response::new(pb::MetaReply {
                errno,
                ..Default::default()
            }));
        }
        let cmd = Cmd {
            client_id: req.client_id,
            seq: req.seq,
            acked_below: req.acked_below,
            now_ns: now_ns(),
            op: op.encode_to_vec(),
        };
        let raft = self.raft()?;
        let resp = match tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(cmd)).await {
            Err(_) => return Err(Status::unavailable("commit timed out")),
            Ok(r) => r.map_err(status::write_error)?,
        };
        let reply = pb::MetaReply::decode(resp.data.0.as_slice())
            .map_err(|e| Status::internal(format!("undecodable reply: {e}")))?;
        Ok(Response::new(reply))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let r = self.linearize().await?;
        let req = req.into_inner();
        Ok(Response::new(errno_attr(
            r.lookup(req.parent, &req.name)
                .map_err(status::read_error)?,
        )))
    }

    async fn get_attr(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let r = self.linearize().await?;
        let ino = req.get_ref().ino;
        let inode = r.inode(ino).map_err(status::read_error)?;
        Ok(Response::new(errno_attr(
            inode.map(|i| i.attr(ino)).ok_or(libc::ENOENT),
        )))
    }

    async fn get_layout(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::LayoutReply>, Status> {
        let r = self.linearize().await?;
        let ino = req.get_ref().ino;
        // A tombstone too: the mount decides whether this open may have it.
        let found = r.inode_or_tombstone(ino).map_err(status::read_error)?;
        let reply = match found.map(|(i, _)| i) {
            None => pb::LayoutReply {
                errno: libc::ENOENT,
                ..Default::default()
            },
            Some(i) => pb::LayoutReply {
                errno: 0,
                attr: Some(i.attr(ino)),
                extents: i.extents.to_wire(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn read_dir(
        &self,
        req: Request<pb::ReadDirRequest>,
    ) -> Result<Response<pb::ReadDirReply>, Status> {
        let r = self.linearize().await?;
        let req = req.into_inner();
        let reply = match r
            .readdir(req.ino, &req.after, req.limit)
            .map_err(status::read_error)?
        {
            Ok((entries, more)) => pb::ReadDirReply {
                errno: 0,
                entries,
                more,
            },
            Err(errno) => pb::ReadDirReply {
                errno,
                ..Default::default()
            },
        };
        Ok(Response::new(reply))
    }

    async fn read_link(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::ReadLinkReply>, Status> {
        let r = self.linearize().await?;
        let reply = match r.inode(req.get_ref().ino).map_err(status::read_error)? {
            None => pb::ReadLinkReply {
                errno: libc::ENOENT,
                target: Vec::new(),
            },
            Some(i) if i.mode & libc::S_IFMT != libc::S_IFLNK => pb::ReadLinkReply {
                errno: libc::EINVAL,
                target: Vec::new(),
            },
            Some(i) => pb::ReadLinkReply {
                errno: 0,
                target: i.target,
            },
        };
        Ok(Response::new(reply))
    }

    async fn get_xattr(
        &self,
        req: Request<pb::GetXattrRequest>,
    ) -> Result<Response<pb::GetXattrReply>, Status> {
        let r = self.linearize().await?;
        let req = req.into_inner();
        let reply = match r.inode(req.ino).map_err(status::read_error)? {
            None => pb::GetXattrReply {
                errno: libc::ENOENT,
                value: Vec::new(),
            },
            Some(mut i) => match i.xattrs.remove(&req.name) {
                Some(value) => pb::GetXattrReply { errno: 0, value },
                None => pb::GetXattrReply {
                    errno: libc::ENODATA,
                    value: Vec::new(),
                },
            },
        };
        Ok(Response::new(reply))
    }

    async fn list_xattr(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::ListXattrReply>, Status> {
        let r = self.linearize().await?;
        let reply = match r.inode(req.get_ref().ino).map_err(status::read_error)? {
            None => pb::ListXattrReply {
                errno: libc::ENOENT,
                names: Vec::new(),
            },
            Some(i) => pb::ListXattrReply {
                errno: 0,
                names: i.xattrs.into_keys().collect(),
            },
        };
        Ok(Response::new(reply))
    }

    async fn stat_fs(
        &self,
        _req: Request<pb::StatFsRequest>,
    ) -> Result<Response<pb::StatFsReply>, Status> {
        let r = self.linearize().await?;
        let files = r.inode_count().map_err(status::read_error)?;
        let (total_bytes, free_bytes) = crate::node::disk_space(&self.state.cfg.data_dir);
        Ok(Response::new(pb::StatFsReply {
            total_bytes,
            free_bytes,
            files,
        }))
    }
}
