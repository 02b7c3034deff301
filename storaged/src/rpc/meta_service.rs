//! The namespace service. Writes go through Raft on the leader; reads are
//! made linearizable by the leader's read lease or openraft's read index.
//! Followers redirect.

use std::sync::Arc;
use std::time::Duration;

use quizfs_proto::{self as pb, ReadReply, meta_server::Meta};
use tonic::{Request, Response, Status};

use super::status;
use crate::meta::locks;
use crate::meta::read::MetaReader;
use crate::meta::schema::Inode;
use crate::meta::validate;
use crate::raft::{COMMIT_TIMEOUT, Proposer, Raft, propose};
use crate::state::NodeState;

/// Longest a `WaitLock` call is held before it answers "still waiting".
pub const MAX_LOCK_WAIT: Duration = Duration::from_secs(10);

/// Longest a read waits for its read-index check.
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves metadata requests.
#[derive(Debug, Clone)]
pub struct MetaService {
    /// The node.
    pub state: Arc<NodeState>,
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

    /// Inode `ino` as a linearizable read finds it, or ENOENT.
    async fn inode(&self, ino: u64) -> Result<Result<Inode, i32>, Status> {
        let r = self.linearize().await?;
        Ok(r.inode(ino)
            .map_err(status::read_error)?
            .ok_or(libc::ENOENT))
    }
}

/// The response to a read: the reply, or a reply with only the errno.
fn answer<R: ReadReply>(r: Result<R, i32>) -> Result<Response<R>, Status> {
    Ok(Response::new(r.unwrap_or_else(R::failed)))
}

/// An attribute reply.
fn attr_reply(a: pb::Attr) -> pb::AttrReply {
    pb::AttrReply {
        errno: 0,
        attr: Some(a),
        parent: None,
    }
}

/// Bytes of chunks carried in commits a leader holds in memory, not yet
/// written, before it makes new ones wait.
const MAX_CARRIED_BYTES: u64 = 64 << 20;

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
        self.state.sessions.heard(req.client_id);
        // Only the leader decides which sessions are silent, node records
        // change through the Cluster RPCs that check them, and the copies
        // of each chunk are the first start's.
        if matches!(
            op.op,
            Some(
                pb::meta_op::Op::ExpireSessions(_)
                    | pb::meta_op::Op::SetNodeRecord(_)
                    | pb::meta_op::Op::InitVolume(_)
            )
        ) {
            return Ok(Response::new(pb::MetaReply {
                errno: libc::EPERM,
                ..Default::default()
            }));
        }
        if let Err(errno) = validate::op(&op) {
            return Ok(Response::new(pb::MetaReply {
                errno,
                ..Default::default()
            }));
        }
        // A write carried in its commit is refused on a full disk, as its
        // chunk upload would be.
        if let Some(pb::meta_op::Op::CommitWrite(c)) = &op.op {
            let carried = c.chunks.iter().map(Vec::len).sum();
            if self.state.store.would_fill(carried) {
                return Ok(Response::new(pb::MetaReply {
                    errno: libc::ENOSPC,
                    ..Default::default()
                }));
            }
            // Held in memory until written: a disk that does not keep up
            // slows the writers down rather than filling the memory.
            let waited = std::time::Instant::now();
            while carried > 0
                && self.state.store.carried_bytes() > MAX_CARRIED_BYTES
                && waited.elapsed() < COMMIT_TIMEOUT
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let who = Proposer {
            client_id: req.client_id,
            seq: req.seq,
            acked_below: req.acked_below,
        };
        let raft = self.raft()?;
        let began = std::time::Instant::now();
        let reply = propose(raft, who, &op, COMMIT_TIMEOUT)
            .await
            .map_err(status::propose_error)?;
        let m = &self.state.metrics;
        m.proposals.inc();
        m.propose.observe(began.elapsed().as_secs_f64());
        Ok(Response::new(reply))
    }

    async fn lookup(
        &self,
        req: Request<pb::LookupRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let r = self.linearize().await?;
        let req = req.into_inner();
        let found = r
            .lookup(req.parent, &req.name)
            .map_err(status::read_error)?;
        Ok(Response::new(found))
    }

    async fn get_attr(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::AttrReply>, Status> {
        let ino = req.get_ref().ino;
        let inode = self.inode(ino).await?;
        answer(inode.map(|i| attr_reply(i.attr(ino))))
    }

    async fn get_layout(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::LayoutReply>, Status> {
        let r = self.linearize().await?;
        let ino = req.get_ref().ino;
        // A tombstone too: the mount decides whether this open may have it.
        let found = r.inode_or_tombstone(ino).map_err(status::read_error)?;
        answer(found.ok_or(libc::ENOENT).map(|(i, _)| pb::LayoutReply {
            errno: 0,
            attr: Some(i.attr(ino)),
            extents: i.extents.to_wire(),
        }))
    }

    async fn read_dir(
        &self,
        req: Request<pb::ReadDirRequest>,
    ) -> Result<Response<pb::ReadDirReply>, Status> {
        let r = self.linearize().await?;
        let req = req.into_inner();
        let found = r
            .readdir(req.ino, &req.after, req.limit)
            .map_err(status::read_error)?;
        answer(found.map(|(entries, more)| pb::ReadDirReply {
            errno: 0,
            entries,
            more,
        }))
    }

    async fn read_link(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::ReadLinkReply>, Status> {
        let inode = self.inode(req.get_ref().ino).await?;
        answer(inode.and_then(|i| match i.mode & libc::S_IFMT {
            libc::S_IFLNK => Ok(pb::ReadLinkReply {
                errno: 0,
                target: i.target,
            }),
            _ => Err(libc::EINVAL),
        }))
    }

    async fn get_xattr(
        &self,
        req: Request<pb::GetXattrRequest>,
    ) -> Result<Response<pb::GetXattrReply>, Status> {
        let req = req.into_inner();
        let inode = self.inode(req.ino).await?;
        answer(inode.and_then(|mut i| match i.xattrs.remove(&req.name) {
            Some(value) => Ok(pb::GetXattrReply { errno: 0, value }),
            None => Err(libc::ENODATA),
        }))
    }

    async fn list_xattr(
        &self,
        req: Request<pb::InodeRequest>,
    ) -> Result<Response<pb::ListXattrReply>, Status> {
        let inode = self.inode(req.get_ref().ino).await?;
        answer(inode.map(|i| pb::ListXattrReply {
            errno: 0,
            names: i.xattrs.into_keys().collect(),
        }))
    }

    async fn stat_fs(
        &self,
        _req: Request<pb::StatFsRequest>,
    ) -> Result<Response<pb::StatFsReply>, Status> {
        let r = self.linearize().await?;
        let files = r.inode_count().map_err(status::read_error)?;
        // What chunk uploads may use: the reserve is not theirs. (A mount
        // takes the smallest of every node's, from their heartbeats.)
        let (total, free) = crate::disk::space(&self.state.cfg.data_dir);
        let reserve = self.state.cfg.reserve;
        Ok(Response::new(pb::StatFsReply {
            total_bytes: total.saturating_sub(reserve),
            free_bytes: free.saturating_sub(reserve),
            files,
        }))
    }

    async fn get_lock(
        &self,
        req: Request<pb::GetLockRequest>,
    ) -> Result<Response<pb::GetLockReply>, Status> {
        let r = self.linearize().await?;
        let req = req.into_inner();
        let Ok(Some(write)) = locks::kind_of(req.kind) else {
            return answer(Err(libc::EINVAL));
        };
        let table = r.lock_table(req.ino).map_err(status::read_error)?;
        let want = locks::Lock {
            who: locks::Owner {
                client: req.client_id,
                owner: req.owner,
            },
            pid: 0,
            start: req.start,
            end: req.end.max(req.start),
            write,
        };
        let found = table.conflict(&want).map(|l| pb::GetLockReply {
            errno: 0,
            kind: if l.write {
                pb::LockKind::LockWrite
            } else {
                pb::LockKind::LockRead
            } as i32,
            start: l.start,
            end: l.end,
            pid: l.pid,
            same_client: l.who.client == req.client_id,
        });
        answer(Ok(found.unwrap_or_default()))
    }

    async fn wait_lock(
        &self,
        req: Request<pb::WaitLockRequest>,
    ) -> Result<Response<pb::WaitLockReply>, Status> {
        let req = req.into_inner();
        self.state.sessions.heard(req.client_id);
        let Ok(Some(write)) = locks::kind_of(req.kind) else {
            return answer(Err(libc::EINVAL));
        };
        let who = locks::Owner {
            client: req.client_id,
            owner: req.owner,
        };
        let until = tokio::time::Instant::now()
            + Duration::from_millis(u64::from(req.wait_ms)).min(MAX_LOCK_WAIT);
        // Subscribed before the first look: a change after it wakes us.
        let mut changes = self.state.lock_changes.subscribe();
        let r = self.linearize().await?;
        loop {
            let table = r.lock_table(req.ino).map_err(status::read_error)?;
            let waiting = table
                .queue
                .iter()
                .any(|q| q.id == req.id && q.lock.who.client == req.client_id);
            if !waiting {
                let granted = table.holds(who, req.start, req.end, write);
                return answer(Ok(pb::WaitLockReply {
                    errno: 0,
                    waiting,
                    granted,
                }));
            }
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => {}
                // Timed out, or the state machine is gone: still waiting.
                _ => {
                    return answer(Ok(pb::WaitLockReply {
                        errno: 0,
                        waiting: true,
                        granted: false,
                    }));
                }
            }
        }
    }
}
