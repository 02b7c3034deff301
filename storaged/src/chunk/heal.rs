//! Healing: this node fetches, from its peers, every chunk that its metadata
//! references and its disk lacks (missed while it was down, lost with its
//! disk, or quarantined as corrupt).
//!
//! A scan runs every interval. A chunk missing in two scans in a row is
//! fetched (the first sighting is often an upload still on its way); one
//! reported corrupt is fetched at once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quizfs_proto::{CHUNK_SIZE, ChunkHash, GetChunkRequest, chunks_client::ChunksClient};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::ChunkStore;
use crate::meta::read::MetaReader;
use crate::peers::PeerPool;
use crate::raft::{NodeId, Raft};

/// Chunks fetched at once while healing, so healing leaves room for clients.
pub const HEAL_PARALLELISM: usize = 2;
/// Deadline of one chunk fetch from a peer.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The healer of one node.
pub struct Healer {
    store: Arc<ChunkStore>,
    reader: MetaReader,
    pool: PeerPool,
    raft: Raft,
    self_id: NodeId,
    interval: Duration,
    backlog: AtomicU64,
    urgent: Mutex<HashSet<ChunkHash>>,
    wake: Notify,
}

impl std::fmt::Debug for Healer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Healer")
            .field("self_id", &self.self_id)
            .field("backlog", &self.backlog())
            .finish_non_exhaustive()
    }
}

impl Healer {
    /// A healer for `store`, scanning every `interval`.
    pub fn new(
        store: Arc<ChunkStore>,
        reader: MetaReader,
        pool: PeerPool,
        raft: Raft,
        self_id: NodeId,
        interval: Duration,
    ) -> Self {
        Self {
            store,
            reader,
            pool,
            raft,
            self_id,
            interval,
            backlog: AtomicU64::new(0),
            urgent: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }

    /// Referenced chunks missing from this node at the last scan.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Asks for a chunk to be fetched again now (it was found corrupt).
    pub fn request(&self, hash: ChunkHash) {
        self.urgent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash);
        self.wake.notify_one();
    }

    fn missing(&self) -> HashSet<ChunkHash> {
        let mut out = HashSet::new();
        for h in self.reader.referenced_chunks() {
            match h {
                Ok(h) if !self.store.contains(&ChunkHash(h)) => {
                    out.insert(ChunkHash(h));
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "heal scan failed"),
            }
        }
        out
    }

    fn peers(&self) -> Vec<String> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.nodes()
            .filter(|(id, _)| **id != self.self_id)
            .map(|(_, n)| n.addr.clone())
            .collect()
    }

    async fn fetch_from(&self, addr: &str, hash: ChunkHash) -> Result<Vec<u8>, String> {
        let channel = self.pool.channel(addr).map_err(|e| e.to_string())?;
        let mut client = ChunksClient::new(channel);
        let fut = async {
            let mut stream = client
                .get(GetChunkRequest {
                    hash: hash.0.to_vec(),
                })
                .await?
                .into_inner();
            let mut data = Vec::new();
            while let Some(piece) = stream.message().await? {
                data.extend_from_slice(&piece.data);
                if data.len() > CHUNK_SIZE {
                    return Err(tonic::Status::out_of_range("chunk too large"));
                }
            }
            Ok(data)
        };
        let data = tokio::time::timeout(FETCH_TIMEOUT, fut)
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|s| s.message().to_string())?;
        if ChunkHash::of(&data) != hash {
            return Err("peer sent content that does not match the hash".into());
        }
        Ok(data)
    }

    async fn heal_one(&self, hash: ChunkHash) -> bool {
        for addr in self.peers() {
            match self.fetch_from(&addr, hash).await {
                Ok(data) => match self.store.put(hash, &data).await {
                    Ok(_) => {
                        tracing::debug!(hash = ?hash, from = %addr, "chunk healed");
                        return true;
                    }
                    Err(e) => {
                        tracing::warn!(hash = ?hash, error = %e, "storing healed chunk failed");
                        return false;
                    }
                },
                Err(e) => {
                    tracing::debug!(hash = ?hash, peer = %addr, error = %e, "heal fetch failed")
                }
            }
        }
        false
    }

    /// Runs scans until cancelled.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut seen_before: HashSet<ChunkHash> = HashSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.wake.notified() => {}
            }
            let me = self.clone();
            let Ok(missing) = tokio::task::spawn_blocking(move || me.missing()).await else {
                continue;
            };
            let urgent: HashSet<ChunkHash> =
                std::mem::take(&mut *self.urgent.lock().unwrap_or_else(|p| p.into_inner()));
            let due: Vec<ChunkHash> = missing
                .iter()
                .filter(|h| seen_before.contains(h) || urgent.contains(h))
                .copied()
                .collect();
            self.backlog.store(missing.len() as u64, Ordering::Relaxed);
            if !due.is_empty() {
                tracing::info!(due = due.len(), backlog = missing.len(), "healing");
            }
            let mut healed = HashSet::new();
            let mut queue = due.into_iter();
            let mut running = tokio::task::JoinSet::new();
            loop {
                while running.len() < HEAL_PARALLELISM {
                    let Some(h) = queue.next() else { break };
                    let me = self.clone();
                    running.spawn(async move { (h, me.heal_one(h).await) });
                }
                match running.join_next().await {
                    Some(Ok((h, true))) => {
                        healed.insert(h);
                        self.backlog.fetch_sub(1, Ordering::Relaxed);
                    }
                    Some(_) => {}
                    None => break,
                }
                if cancel.is_cancelled() {
                    running.abort_all();
                    return;
                }
            }
            seen_before = missing.difference(&healed).copied().collect();
        }
    }
}
