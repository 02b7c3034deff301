//! Healing: this node fetches, from its peers, every chunk that its metadata
//! references, placement gives to it (`quizfs_proto::placement`), and its
//! disk lacks (missed while it was down, lost with its disk, quarantined as
//! corrupt, or moved to it by a membership change). It also deletes the
//! chunks placement gives to other nodes once every one of their holders
//! has them durably (a node added or drained moves chunks this way), so a
//! chunk never has fewer copies than before the move.
//!
//! A scan runs every interval. A chunk missing in two scans in a row is
//! fetched (the first sighting is often an upload still on its way); one
//! reported corrupt is fetched at once. Healing is throttled so that client
//! I/O keeps its speed: at most [`HEAL_PARALLELISM`] fetches at a time and
//! at most the configured bytes per second.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quizfs_proto::placement;
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
    placed: AtomicU64,
    surplus: AtomicU64,
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
            placed: AtomicU64::new(0),
            surplus: AtomicU64::new(0),
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

    /// Referenced chunks that placement gives to this node, at the last
    /// scan.
    pub fn placed(&self) -> u64 {
        self.placed.load(Ordering::Relaxed)
    }

    /// Referenced chunks on this node that placement gives to others, at
    /// the last scan (deleted once their holders have them).
    pub fn surplus(&self) -> u64 {
        self.surplus.load(Ordering::Relaxed)
    }

    /// The fetch limit in bytes per second (0: none).
    pub fn rate_limit(&self) -> u64 {
        self.rate.bytes_per_sec()
    }

    /// What `Cluster/HealInfo` answers: the backlog, the index the last
    /// scan saw, the chunks healed, and up to `limit` missing hashes.
    pub fn info(&self, limit: usize) -> quizfs_proto::HealInfoReply {
        quizfs_proto::HealInfoReply {
            backlog: self.backlog(),
            scanned_index: self.scanned_index(),
            healed_total: self.healed_total(),
            pending: self
                .pending(limit)
                .into_iter()
                .map(|c| c.0.to_vec())
                .collect(),
        }
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

    /// The placement set (members that are not draining), the address of
    /// every member, and whether the membership is settled (not joint, and
    /// this node in it): surplus is deleted only then. Taken once per scan.
    fn placement(&self) -> (Vec<u64>, HashMap<u64, String>, bool) {
        let m = self.raft.metrics().borrow().membership_config.clone();
        let draining = self.reader.draining().unwrap_or_default();
        let addrs: HashMap<u64, String> = m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
        let set: Vec<u64> = addrs
            .iter()
            .filter(|(_, a)| !draining.contains(*a))
            .map(|(id, _)| *id)
            .collect();
        let settled =
            m.membership().get_joint_config().len() == 1 && addrs.contains_key(&self.self_id);
        (set, addrs, settled)
    }

    /// One scan: the chunks to fetch, and the surplus ones.
    fn scan(&self, set: &[u64]) -> (HashSet<ChunkHash>, Vec<ChunkHash>) {
        let (mut missing, mut surplus) = (HashSet::new(), Vec::new());
        let r = self.reader.replicas();
        let mut placed = 0u64;
        for h in self.reader.referenced_chunks() {
            match h {
                Ok(h) => {
                    let h = ChunkHash(h);
                    let mine = placement::holds(&h, set, r, self.self_id);
                    let here = self.store.contains(&h);
                    placed += u64::from(mine);
                    if mine && !here {
                        missing.insert(h);
                    } else if !mine && here {
                        surplus.push(h);
                    }
                }
                Err(e) => tracing::error!(error = %e, "heal scan failed"),
            }
        }
        self.placed.store(placed, Ordering::Relaxed);
        self.surplus.store(surplus.len() as u64, Ordering::Relaxed);
        (missing, surplus)
    }

    /// Every other member, those placement asks first for `hash` first.
    fn sources(&self, hash: &ChunkHash, set: &[u64], addrs: &HashMap<u64, String>) -> Vec<String> {
        let mut ids: Vec<u64> = placement::rank(hash, set);
        ids.extend(addrs.keys().filter(|id| !set.contains(id)));
        ids.into_iter()
            .filter(|id| *id != self.self_id)
            .filter_map(|id| addrs.get(&id).cloned())
            .collect()
    }

    /// Which of `hashes` the node at `addr` has durably.
    async fn durable_at(&self, addr: &str, hashes: &[ChunkHash]) -> Result<Vec<bool>, String> {
        let channel = self.pool.channel(addr).map_err(|e| e.to_string())?;
        let mut client = ChunksClient::new(channel);
        let req = quizfs_proto::HasRequest {
            hashes: hashes.iter().map(|h| h.0.to_vec()).collect(),
        };
        match tokio::time::timeout(FETCH_TIMEOUT, client.has(req)).await {
            Err(_) => Err("timed out".into()),
            Ok(Err(s)) => Err(s.message().to_string()),
            Ok(Ok(r)) if r.get_ref().present.len() == hashes.len() => Ok(r.into_inner().present),
            Ok(Ok(_)) => Err("answer does not match the question".into()),
        }
    }

    /// Deletes the surplus chunks whose every holder has them durably;
    /// returns how many.
    async fn remove_surplus(
        &self,
        surplus: &[ChunkHash],
        set: &[u64],
        addrs: &HashMap<u64, String>,
    ) -> u64 {
        let mut removed = 0;
        let r = self.reader.replicas();
        for batch in surplus.chunks(quizfs_proto::MAX_HAS) {
            // Every holder of every chunk in the batch is asked once.
            let mut asks: HashMap<u64, Vec<ChunkHash>> = HashMap::new();
            let holders: Vec<Vec<u64>> = batch
                .iter()
                .map(|h| placement::holders(h, set, r))
                .collect();
            for (h, hs) in batch.iter().zip(&holders) {
                for id in hs {
                    asks.entry(*id).or_default().push(*h);
                }
            }
            let mut have: HashMap<(u64, ChunkHash), bool> = HashMap::new();
            for (id, hashes) in &asks {
                let Some(addr) = addrs.get(id) else { continue };
                match self.durable_at(addr, hashes).await {
                    Ok(present) => {
                        for (h, p) in hashes.iter().zip(present) {
                            have.insert((*id, *h), p);
                        }
                    }
                    Err(e) => tracing::debug!(peer = %addr, error = %e, "surplus check failed"),
                }
            }
            let gone: Vec<ChunkHash> = batch
                .iter()
                .zip(&holders)
                .filter(|(h, hs)| {
                    hs.len() >= r.min(set.len())
                        && hs.iter().all(|id| have.get(&(*id, **h)) == Some(&true))
                })
                .map(|(h, _)| *h)
                .collect();
            let store = self.store.clone();
            let deleted = tokio::task::spawn_blocking(move || {
                let mut n = 0u64;
                for h in gone {
                    match store.remove_surplus(&h) {
                        Ok(true) => n += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(hash = ?h, error = %e, "deleting a surplus chunk failed")
                        }
                    }
                }
                n
            })
            .await;
            removed += deleted.unwrap_or(0);
        }
        if removed > 0 {
            self.surplus
                .fetch_sub(removed.min(self.surplus()), Ordering::Relaxed);
            tracing::info!(
                removed,
                "chunks now held by their placement nodes deleted here"
            );
        }
        removed
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
    async fn heal_one(
        &self,
        hash: ChunkHash,
        set: &[u64],
        addrs: &HashMap<u64, String>,
    ) -> Option<u64> {
        for addr in self.sources(&hash, set, addrs) {
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
            let (set, addrs, settled) = self.placement();
            let (set, addrs) = (Arc::new(set), Arc::new(addrs));
            let (me, scan_set) = (self.clone(), set.clone());
            let Ok((missing, surplus)) =
                tokio::task::spawn_blocking(move || me.scan(&scan_set)).await
            else {
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
                    let (me, set, addrs) = (self.clone(), set.clone(), addrs.clone());
                    running.spawn(async move { (h, me.heal_one(h, &set, &addrs).await) });
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
            if settled && !surplus.is_empty() {
                self.remove_surplus(&surplus, &set, &addrs).await;
            }
        }
    }
}
