//! A bounded cache of verified chunks, shared by every open file of a
//! mount. Concurrent readers of one chunk share a single download; the
//! least recently used chunks are dropped once the cache holds more than
//! its budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quizfs_proto::ChunkHash;
use tokio::sync::OnceCell;

use crate::client::{ClientError, ClusterClient};

type Slot = Arc<OnceCell<Arc<Vec<u8>>>>;

#[derive(Debug)]
struct Entry {
    slot: Slot,
    bytes: usize,
    used: u64,
}

/// Chunk cache with a byte budget.
#[derive(Debug)]
pub struct ChunkCache {
    budget: usize,
    clock: AtomicU64,
    state: Mutex<State>,
    counters: super::metrics::CacheCounters,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<ChunkHash, Entry>,
    bytes: usize,
}

impl ChunkCache {
    /// A cache holding at most `budget` bytes of chunk data (at least one
    /// chunk is always kept while in use).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            clock: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            counters: super::metrics::CacheCounters::default(),
        }
    }

    /// Its hits and misses, for the mount's metrics.
    pub fn counters(&self) -> &super::metrics::CacheCounters {
        &self.counters
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The verified content of chunk `hash`, downloaded once however many
    /// readers ask at the same time.
    pub async fn get(
        &self,
        client: &ClusterClient,
        hash: ChunkHash,
    ) -> Result<Arc<Vec<u8>>, ClientError> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let slot = {
            let mut st = self.lock();
            let e = st.entries.entry(hash).or_insert_with(|| Entry {
                slot: Arc::new(OnceCell::new()),
                bytes: 0,
                used: now,
            });
            e.used = now;
            e.slot.clone()
        };
        if slot.initialized() {
            self.counters.hits.inc();
        } else {
            self.counters.misses.inc();
        }
        let data = slot
            .get_or_try_init(|| async { client.get_chunk(hash).await.map(Arc::new) })
            .await;
        let data = match data {
            Ok(d) => d.clone(),
            Err(e) => {
                let mut st = self.lock();
                if st
                    .entries
                    .get(&hash)
                    .is_some_and(|e| Arc::ptr_eq(&e.slot, &slot))
                {
                    st.entries.remove(&hash);
                }
                return Err(e);
            }
        };
        let mut st = self.lock();
        let mut added = 0;
        if let Some(e) = st.entries.get_mut(&hash) {
            if e.bytes == 0 && Arc::ptr_eq(&e.slot, &slot) {
                e.bytes = data.len().max(1);
                added = e.bytes;
            }
        }
        st.bytes += added;
        self.evict(&mut st, hash);
        Ok(data)
    }

    /// Puts a chunk the client just wrote, so reading it back costs nothing.
    pub fn insert(&self, hash: ChunkHash, data: Arc<Vec<u8>>) {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        if st.entries.contains_key(&hash) {
            return;
        }
        let bytes = data.len().max(1);
        st.entries.insert(
            hash,
            Entry {
                slot: Arc::new(OnceCell::new_with(Some(data))),
                bytes,
                used: now,
            },
        );
        st.bytes += bytes;
        self.evict(&mut st, hash);
    }

    /// Drops least recently used chunks (never `keep`) until within budget.
    fn evict(&self, st: &mut State, keep: ChunkHash) {
        while st.bytes > self.budget {
            let victim = st
                .entries
                .iter()
                .filter(|(h, e)| **h != keep && e.bytes > 0)
                .min_by_key(|(_, e)| e.used)
                .map(|(h, _)| *h);
            let Some(v) = victim else { break };
            if let Some(e) = st.entries.remove(&v) {
                st.bytes -= e.bytes;
            }
        }
    }

    /// Whether the chunk is held or being downloaded.
    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.lock().entries.contains_key(hash)
    }

    /// Bytes currently held.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}
