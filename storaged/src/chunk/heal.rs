//! Healing: this node fetches, from its peers, every chunk that its metadata
//! references and its disk lacks (missed while it was down, lost with its
//! disk, or quarantined as corrupt).
//!
//! A scan runs every interval. A chunk missing in two scans in a row is
//! fetched (the first sighting is often an upload still on its way); one
//! reported corrupt is fetched at once. Healing is throttled so that client
//! I/O keeps its speed: at most [`HEAL_PARALLELISM`] fetches at a time and
//! at most the configured bytes per second.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quizfs_proto::{CHUNK_SIZE, ChunkHash, GetChunkRequest, chunks_client::ChunksClient};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::rate::RateLimit;
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
    rate: RateLimit,
    backlog: AtomicU64,
    scanned_index: AtomicU64,
    healed_total: AtomicU64,
    healed_bytes: AtomicU64,
    pending: Mutex<HashSet<ChunkHash>>,
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
    /// A healer for `store`, scanning every `interval` and fetching at
    /// most `rate` bytes per second (0: unlimited).
    pub fn new(
        store: Arc<ChunkStore>,
        reader: MetaReader,
        pool: PeerPool,
        raft: Raft,
        self_id: NodeId,
        interval: Duration,
        rate: u64,
    ) -> Self {
        Self {
            store,
            reader,
            pool,
            raft,
            self_id,
            interval,
            rate: RateLimit::new(rate),
            backlog: AtomicU64::new(0),
            scanned_index: AtomicU64::new(0),
            healed_total: AtomicU64::new(0),
            healed_bytes: AtomicU64::new(0),
            pending: Mutex::new(HashSet::new()),
            urgent: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }

    /// Referenced chunks missing from this node at the last scan, less
    /// those fetched since.
    pub fn backlog(&self) -> u64 {
        self.backlog.load(Ordering::Relaxed)
    }

    /// The applied index the last completed scan saw.
    pub fn scanned_index(&self) -> u64 {
        self.scanned_index.load(Ordering::Relaxed)
    }

    /// Chunks fetched from peers since start.
    pub fn healed_total(&self) -> u64 {
        self.healed_total.load(Ordering::Relaxed)
    }

    /// Bytes of the chunks fetched from peers since start.
    pub fn healed_bytes(&self) -> u64 {
        self.healed_bytes.load(Ordering::Relaxed)
    }

    /// The fetch limit in bytes per second (0: none).
    pub fn rate_limit(&self) -> u64 {
        self.rate.bytes_per_sec()
    }

    /// Up to `limit` of the chunks still missing.
    pub fn pending(&self, limit: usize) -> Vec<ChunkHash> {
        let p = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        p.iter().take(limit).copied().collect()
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
        // Charged after the fetch, at its real size: the next fetch waits.
        self.rate.take(data.len() as u64).await;
        if ChunkHash::of(&data) != hash {
            return Err("peer sent content that does not match the hash".into());
        }
        Ok(data)
    }

    /// Fetches one chunk from the first peer that has it; its size, or
    /// `None` when no peer could give it.
    async fn heal_one(&self, hash: ChunkHash) -> Option<u64> {
        for addr in self.peers() {
            match self.fetch_from(&addr, hash).await {
                Ok(data) => match self.store.put(hash, &data).await {
                    Ok(_) => {
                        tracing::debug!(hash = ?hash, from = %addr, "chunk healed");
                        return Some(data.len() as u64);
                    }
                    Err(e) => {
                        tracing::warn!(hash = ?hash, error = %e, "storing healed chunk failed");
                        return None;
                    }
                },
                Err(e) => {
                    tracing::debug!(hash = ?hash, peer = %addr, error = %e, "heal fetch failed")
                }
            }
        }
        None
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
            let applied = self
                .raft
                .metrics()
                .borrow()
                .last_applied
                .map_or(0, |l| l.index);
            let me = self.clone();
            let Ok(missing) = tokio::task::spawn_blocking(move || me.missing()).await else {
                continue;
            };
            *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = missing.clone();
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
                    Some(Ok((h, Some(bytes)))) => {
                        healed.insert(h);
                        self.backlog.fetch_sub(1, Ordering::Relaxed);
                        self.healed_total.fetch_add(1, Ordering::Relaxed);
                        self.healed_bytes.fetch_add(bytes, Ordering::Relaxed);
                        self.pending
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&h);
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
            self.scanned_index.store(applied, Ordering::Relaxed);
        }
    }
}
