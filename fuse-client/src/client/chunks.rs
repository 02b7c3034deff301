//! Chunk transfer. A write sends the chunk to its R holders at once
//! (`quizfs_proto::placement`: chosen from the hash and the membership) and
//! returns when a majority of them has it durably; the other uploads finish
//! in the background (a holder that misses one gets it from its healer).
//! Holders the heartbeats mark down are replaced by the next nodes in
//! placement order while enough others are up (their healers move the
//! chunk to its holders later), and holders with all of this client's
//! upload slots taken ([`pb::MAX_UPLOADS_PER_CLIENT`]) are skipped while
//! a majority has a free one, so no upload waits behind a node that is not
//! keeping up. A read asks one holder, and is hedged: if that node has not
//! answered within a few times the usual chunk latency (or fails, or is
//! marked down), the next node in placement order is asked as well, and
//! the first verified copy wins. A copy whose content does not match its
//! hash is never returned.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quizfs_proto::{self as pb, Bytes, ChunkHash, PIECE_SIZE, chunks_client::ChunksClient, range};
use tokio::sync::OwnedSemaphorePermit;
use tonic::transport::Channel;

use super::call::Retry;
use super::{ClientError, ClusterClient, NodeHandle};

/// Shortest wait before a chunk read is also asked of another node.
const HEDGE_MIN: Duration = Duration::from_millis(30);
/// Longest wait before a chunk read is also asked of another node.
const HEDGE_MAX: Duration = Duration::from_millis(200);

/// Reads a chunk from `node`, giving up when the node is marked down.
async fn read_one(
    node: Arc<NodeHandle>,
    hash: ChunkHash,
    deadline: Duration,
) -> (String, Result<Vec<u8>, String>) {
    let r = tokio::select! {
        r = get_from(node.channel.clone(), hash, deadline) => r,
        _ = node.liveness.down() => Err("node stopped answering heartbeats".into()),
    };
    (node.addr.clone(), r)
}

/// Time allowed per MiB on top of the call timeout for a chunk transfer.
const PER_MIB: Duration = Duration::from_millis(250);

fn transfer_deadline(base: Duration, len: usize) -> Duration {
    base + PER_MIB * (len / (1024 * 1024)) as u32
}

/// A chunk buffer shared with the cache, as the owner of the `Bytes` that
/// the uploads slice.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Why one node did not take a chunk; `fatal` holds the errno when
/// retrying cannot help (the node refused the content, or its disk is full).
#[derive(Debug)]
struct PutFailure {
    fatal: Option<i32>,
    message: String,
}

/// Uploads a chunk to `node` within `deadline`, in one of its upload
/// slots: `slot` when the caller took one, else the first to come free.
async fn put_to(
    node: &NodeHandle,
    hash: ChunkHash,
    data: Bytes,
    deadline: Duration,
    slot: Option<OwnedSemaphorePermit>,
) -> Result<(), PutFailure> {
    let began = Instant::now();
    let _slot = match slot {
        Some(slot) => slot,
        None => match tokio::time::timeout(deadline, node.uploads.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            _ => {
                return Err(PutFailure {
                    fatal: None,
                    message: "no upload slot in time".into(),
                });
            }
        },
    };
    let deadline = deadline.saturating_sub(began.elapsed());
    let channel = node.channel.clone();
    let pieces = data.len().div_ceil(PIECE_SIZE).max(1);
    let stream = tokio_stream::iter((0..pieces).map(move |i| pb::PutPiece {
        hash: if i == 0 { hash.0.to_vec() } else { Vec::new() },
        data: data.slice(i * PIECE_SIZE..((i + 1) * PIECE_SIZE).min(data.len())),
    }));
    let mut client = ChunksClient::new(channel).max_decoding_message_size(pb::MAX_MESSAGE_BYTES);
    match tokio::time::timeout(deadline, client.put(stream)).await {
        Err(_) => Err(PutFailure {
            fatal: None,
            message: "timed out".into(),
        }),
        Ok(Err(s)) => Err(PutFailure {
            // A full disk, a refusal, or content the node rejected: no
            // other try or node changes these.
            fatal: matches!(
                s.code(),
                tonic::Code::ResourceExhausted
                    | tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
            )
            .then(|| super::error::errno_of_code(s.code())),
            message: format!("{:?}: {}", s.code(), s.message()),
        }),
        Ok(Ok(_)) => Ok(()),
    }
}

async fn get_from(
    channel: Channel,
    hash: ChunkHash,
    deadline: Duration,
) -> Result<Vec<u8>, String> {
    let mut client = ChunksClient::new(channel).max_decoding_message_size(pb::MAX_MESSAGE_BYTES);
    let fut = async {
        let mut stream = client
            .get(pb::GetChunkRequest {
                hash: hash.0.to_vec(),
            })
            .await?
            .into_inner();
        let mut data = Vec::new();
        while let Some(p) = stream.message().await? {
            if data.len() + p.data.len() > pb::CHUNK_SIZE {
                return Err(tonic::Status::out_of_range("node sent more than a chunk"));
            }
            data.extend_from_slice(&p.data);
        }
        Ok(data)
    };
    let data = match tokio::time::timeout(deadline, fut).await {
        Err(_) => return Err("timed out".into()),
        Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(d)) => d,
    };
    if ChunkHash::of(&data) != hash {
        return Err("content does not match the hash".into());
    }
    Ok(data)
}

/// Asks one node for a verified range (see `ClusterClient::get_range`).
async fn range_from(
    channel: Channel,
    hash: ChunkHash,
    from: u64,
    to: u64,
    wait: Duration,
) -> Result<(u64, Vec<u8>), String> {
    let mut c = ChunksClient::new(channel).max_decoding_message_size(pb::MAX_MESSAGE_BYTES);
    let req = pb::GetRangeRequest {
        hash: hash.0.to_vec(),
        offset: from,
        len: u32::try_from(to.saturating_sub(from)).unwrap_or(u32::MAX),
    };
    let r = match tokio::time::timeout(wait, c.get_range(req)).await {
        Err(_) => return Err(format!("no range within {wait:?}")),
        Ok(Err(s)) => return Err(format!("{:?}: {}", s.code(), s.message())),
        Ok(Ok(r)) => r.into_inner(),
    };
    let proof: Option<Vec<[u8; 32]>> = r
        .proof
        .iter()
        .map(|p| <[u8; 32]>::try_from(p.as_slice()).ok())
        .collect();
    if !proof.is_some_and(|p| range::verify(&hash.0, r.chunk_len, r.start, &r.data, &p)) {
        tracing::warn!(hash = ?hash, "a range does not match its chunk's hash; not used");
        return Err("range does not match the chunk's hash".into());
    }
    if r.start > from || r.start.saturating_add(r.data.len() as u64) < to {
        return Err(format!("range does not cover [{from}, {to})"));
    }
    Ok((r.start, r.data))
}

impl ClusterClient {
    /// Stores a chunk on a majority of nodes; returns its hash.
    pub async fn put_chunk(&self, data: Arc<Vec<u8>>) -> Result<ChunkHash, ClientError> {
        let hash = ChunkHash::of(&data);
        // Every node's upload slices this one buffer; none copies it.
        let data = Bytes::from_owner(Shared(data));
        let deadline = transfer_deadline(self.inner.opts.call_timeout, data.len());
        let mut retry = Retry::new(self.inner.opts.op_timeout);
        let mut detail = Vec::new();
        loop {
            let (placed, r) = self.placed(&hash);
            let needed = r / 2 + 1;
            let holders = &placed[..r.min(placed.len())];
            // Holders that are up, then (in placement order) enough other
            // nodes that are up to make R; all holders when too few are up.
            let mut nodes: Vec<_> = holders.iter().filter(|n| n.is_up()).cloned().collect();
            let fill = r.saturating_sub(nodes.len());
            nodes.extend(
                placed[holders.len()..]
                    .iter()
                    .filter(|n| n.is_up() && !n.draining.load(Ordering::Relaxed))
                    .take(fill)
                    .cloned(),
            );
            if nodes.len() < needed {
                nodes = holders.to_vec();
            }
            // Nodes with a free upload slot take the chunk now. A node
            // without one (slow, or just thawed) is left out when the
            // others make a majority: its heal copies the chunk later, and
            // no upload queues behind a node that is not keeping up.
            let (free, busy): (Vec<_>, Vec<_>) = nodes
                .iter()
                .map(|n| (n, n.uploads.clone().try_acquire_owned().ok()))
                .partition(|(_, slot)| slot.is_some());
            let mut targets = free;
            if targets.len() >= needed {
                for (n, _) in &busy {
                    tracing::debug!(node = %n.addr, ?hash, "node busy; its heal will copy the chunk");
                }
            } else {
                targets.extend(busy);
            }
            let (tx, mut rx) = tokio::sync::mpsc::channel(targets.len().max(1));
            let sent = targets.len();
            for (node, slot) in targets {
                let (tx, node, data) = (tx.clone(), node.clone(), data.clone());
                // Spawned, so the uploads beyond the majority go on after
                // this call has returned.
                tokio::spawn(async move {
                    let began = Instant::now();
                    let r = put_to(&node, hash, data, deadline, slot).await;
                    if let Err(e) = &r {
                        tracing::debug!(node = %node.addr, took = ?began.elapsed(), error = %e.message, "chunk upload failed");
                    }
                    let _ = tx.send((node.addr.clone(), r)).await;
                });
            }
            drop(tx);
            let (mut ok, mut failed) = (0, 0);
            while let Some((addr, r)) = rx.recv().await {
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        detail.push(format!("{addr}: {}", e.message));
                        if let Some(errno) = e.fatal {
                            return Err(ClientError::ChunkNotDurable {
                                hash,
                                detail: detail.join("; "),
                                errno,
                            });
                        }
                    }
                }
                if ok >= needed {
                    return Ok(hash);
                }
                if failed + needed > sent {
                    break;
                }
            }
            if retry.expired() {
                return Err(ClientError::ChunkNotDurable {
                    hash,
                    detail: detail.join("; "),
                    errno: libc::ETIMEDOUT,
                });
            }
            retry.backoff().await;
        }
    }

    /// How long a chunk read may take before another node is asked too.
    fn hedge_delay(&self) -> Duration {
        let ewma = Duration::from_micros(self.inner.read_ewma_us.load(Ordering::Relaxed));
        (ewma * 3).clamp(HEDGE_MIN, HEDGE_MAX)
    }

    fn record_read(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.inner.read_ewma_us.load(Ordering::Relaxed);
        self.inner
            .read_ewma_us
            .store((old * 7 + us) / 8, Ordering::Relaxed);
    }

    /// Reads and verifies a chunk: hedged over the nodes, as the module doc
    /// says.
    pub async fn get_chunk(&self, hash: ChunkHash) -> Result<Vec<u8>, ClientError> {
        let deadline = transfer_deadline(self.inner.opts.call_timeout, pb::CHUNK_SIZE);
        let mut retry = Retry::new(self.inner.opts.op_timeout);
        let mut detail = Vec::new();
        loop {
            let (mut nodes, r) = self.placed(&hash);
            // Holders first, starting at a rotating one to spread reads,
            // then the others in placement order; up nodes before down.
            let start = self.inner.next_reader.fetch_add(1, Ordering::Relaxed) as usize;
            let r = r.min(nodes.len()).max(1);
            if nodes.len() >= r {
                nodes[..r].rotate_left(start % r);
            }
            nodes.sort_by_key(|x| !x.is_up());
            let mut queue = nodes.into_iter();
            let mut running = tokio::task::JoinSet::new();
            let started = tokio::time::Instant::now();
            loop {
                if running.is_empty() {
                    let Some(node) = queue.next() else { break };
                    running.spawn(read_one(node, hash, deadline));
                }
                let hedge = tokio::time::sleep(self.hedge_delay());
                tokio::select! {
                    done = running.join_next() => match done {
                        Some(Ok((_, Ok(d)))) => {
                            self.record_read(started.elapsed());
                            return Ok(d);
                        }
                        Some(Ok((addr, Err(e)))) => {
                            tracing::debug!(hash = ?hash, node = %addr, error = %e, "chunk read failed; trying another node");
                            detail.push(format!("{addr}: {e}"));
                            if let Some(node) = queue.next() {
                                running.spawn(read_one(node, hash, deadline));
                            }
                        }
                        Some(Err(_)) | None => {}
                    },
                    _ = hedge => {
                        if let Some(node) = queue.next() {
                            tracing::debug!(hash = ?hash, node = %node.addr, "chunk read slow; hedging");
                            running.spawn(read_one(node, hash, deadline));
                        }
                    }
                }
            }
            if retry.expired() {
                return Err(ClientError::ChunkUnavailable {
                    hash,
                    detail: detail.join("; "),
                });
            }
            retry.backoff().await;
        }
    }

    /// Reads bytes `[from, to)` of chunk `hash` (which has at least `to`
    /// bytes) from one node that is up, checked against the hash with the
    /// node's proof (`quizfs_proto::range`). Returns where the bytes start
    /// in the chunk; they cover `[from, to)`. One node and one try, within
    /// twice the hedge delay: the caller falls back to the hedged read of
    /// the whole chunk.
    pub async fn get_range(
        &self,
        hash: ChunkHash,
        from: u64,
        to: u64,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let (mut nodes, r) = self.placed(&hash);
        let r = r.min(nodes.len()).max(1);
        if nodes.len() >= r {
            nodes[..r]
                .rotate_left(self.inner.next_reader.fetch_add(1, Ordering::Relaxed) as usize % r);
        }
        let Some(node) = nodes.into_iter().find(|x| x.is_up()) else {
            return Err(ClientError::ChunkUnavailable {
                hash,
                detail: "no node is up".into(),
            });
        };
        range_from(node.channel.clone(), hash, from, to, self.hedge_delay() * 2)
            .await
            .map_err(|detail| ClientError::ChunkUnavailable {
                hash,
                detail: format!("{}: {detail}", node.addr),
            })
    }

    /// [`Self::get_range`] from one given node (for checks and tests).
    pub async fn get_range_from(
        &self,
        addr: &str,
        hash: ChunkHash,
        from: u64,
        to: u64,
    ) -> Result<(u64, Vec<u8>), ClientError> {
        let channel = match self.node(addr) {
            Some(n) => n.channel.clone(),
            None => super::membership::channel(addr, &self.inner.opts.transport)?,
        };
        range_from(channel, hash, from, to, self.inner.opts.call_timeout)
            .await
            .map_err(|detail| ClientError::ChunkUnavailable {
                hash,
                detail: format!("{addr}: {detail}"),
            })
    }

    /// Reads a chunk from one given node, verified (for checks and tests).
    pub async fn get_chunk_from(
        &self,
        addr: &str,
        hash: ChunkHash,
    ) -> Result<Vec<u8>, ClientError> {
        let channel = match self.node(addr) {
            Some(n) => n.channel.clone(),
            None => super::membership::channel(addr, &self.inner.opts.transport)?,
        };
        get_from(
            channel,
            hash,
            transfer_deadline(self.inner.opts.call_timeout, pb::CHUNK_SIZE),
        )
        .await
        .map_err(|detail| ClientError::ChunkUnavailable {
            hash,
            detail: format!("{addr}: {detail}"),
        })
    }
}
