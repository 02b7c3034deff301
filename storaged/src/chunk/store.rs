//! The content-addressed chunk store on local disk.
//!
//! A chunk lives at `chunks/ab/cd/<64 hex digits>`. It is written to
//! `tmp/`, synced, renamed into place, and the directory synced, so a chunk
//! file is either absent or complete. Its hash is checked when it arrives and
//! whenever it is read; a file whose content does not match its name is moved
//! to `quarantine/` and never returned.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::SystemTime;

use quizfs_proto::range::{self, GROUP, Outboard};
use quizfs_proto::{CHUNK_SIZE, ChunkHash, PIECE_SIZE};

/// Errors of the chunk store, each naming its chunk.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// This node does not hold the chunk.
    #[error("chunk {0} is not stored on this node")]
    NotFound(ChunkHash),
    /// The stored file does not match its hash; it was quarantined.
    #[error("chunk {0} is corrupt on disk; quarantined")]
    Corrupt(ChunkHash),
    /// Received content does not match the claimed hash.
    #[error("content received for chunk {claimed} hashes to {actual}")]
    Mismatch {
        /// The hash the sender named.
        claimed: ChunkHash,
        /// The hash of what arrived.
        actual: ChunkHash,
    },
    /// Received content is larger than a chunk may be.
    #[error("chunk {0} is larger than {CHUNK_SIZE} bytes")]
    TooLarge(ChunkHash),
    /// The disk is full.
    #[error("no space left for chunk {0}")]
    NoSpace(ChunkHash),
    /// Another I/O error.
    #[error("I/O error on chunk {hash}: {source}")]
    Io {
        /// The chunk.
        hash: ChunkHash,
        /// The error.
        source: io::Error,
    },
}

impl ChunkError {
    fn io(hash: ChunkHash, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::ENOSPC) {
            Self::NoSpace(hash)
        } else {
            Self::Io { hash, source }
        }
    }
}

/// The chunk files of this node, with an in-memory index of what is present.
#[derive(Debug)]
pub struct ChunkStore {
    root: PathBuf,
    tmp: PathBuf,
    quarantine: PathBuf,
    /// Present chunks and their sizes.
    present: RwLock<HashMap<ChunkHash, u64>>,
    bytes: AtomicU64,
    tmp_seq: AtomicU64,
    /// Serialises "refresh an existing chunk's age" with garbage collection.
    gc_lock: Mutex<()>,
    /// Free bytes a new chunk must leave on the disk, so that the metadata
    /// (sled, the Raft log) can always still be written.
    reserve: u64,
    /// Outboards of chunks read by range lately (16 KiB for a 4 MiB chunk).
    outboards: Mutex<Outboards>,
    /// Fan-out directories (`chunks/ab/cd`) whose names are known to be
    /// durable: a chunk renamed into any other first syncs its parents.
    durable_dirs: Mutex<HashSet<PathBuf>>,
    /// Chunks carried in commits, served from memory until
    /// [`ChunkStore::write_carried`] has them durable on disk.
    carried: Mutex<Carried>,
    /// Told when a chunk is held.
    carried_ready: tokio::sync::Notify,
    /// Carried chunks written to disk and not yet synced.
    unsynced: Mutex<Vec<ChunkHash>>,
}

/// Chunks held in memory until written: what a node applied from the Raft
/// log (which keeps them durable meanwhile) is not written on the apply's
/// path, where file creations wait behind the log's own syncs.
#[derive(Debug, Default)]
struct Carried {
    map: HashMap<ChunkHash, std::sync::Arc<Vec<u8>>>,
    /// Held and not yet written, oldest first.
    queue: Vec<ChunkHash>,
    bytes: u64,
}

/// Outboards kept in memory at most: 64 MiB for 4 MiB chunks.
const MAX_OUTBOARDS: usize = 4096;

/// The group chaining values of recently range-read chunks, oldest first
/// out. Content-addressed, so an entry never goes stale.
#[derive(Debug, Default)]
struct Outboards {
    map: HashMap<ChunkHash, std::sync::Arc<Outboard>>,
    order: VecDeque<ChunkHash>,
}

/// Part of a chunk, checked on this node, with the proof that lets the
/// reader check it against the chunk's hash (see `quizfs_proto::range`).
#[derive(Debug)]
pub struct ChunkRange {
    /// The whole chunk's length.
    pub len: u64,
    /// Where `data` begins in the chunk.
    pub start: u64,
    /// Whole groups, or the whole chunk when it is one group.
    pub data: Vec<u8>,
    /// The proof, empty for a whole chunk.
    pub proof: Vec<[u8; 32]>,
}

impl ChunkStore {
    /// Opens (creating) the store under `data_dir`, indexing what is there.
    pub fn open(data_dir: &Path) -> io::Result<Self> {
        let root = data_dir.join("chunks");
        let tmp = data_dir.join("tmp");
        let quarantine = data_dir.join("quarantine");
        for d in [&root, &tmp, &quarantine] {
            std::fs::create_dir_all(d)?;
        }
        // Their names, durable before any chunk is written under them.
        std::fs::File::open(data_dir)?.sync_all()?;
        // Leftovers of writes interrupted by a crash.
        for e in std::fs::read_dir(&tmp)? {
            let _ = std::fs::remove_file(e?.path());
        }
        let mut present = HashMap::new();
        let mut bytes = 0;
        let mut durable_dirs = HashSet::new();
        // The fan-out directories' names are made durable once here, so a
        // directory a crash left unsynced is not taken for a durable one.
        std::fs::File::open(&root)?.sync_all()?;
        for a in std::fs::read_dir(&root)? {
            let a = a?.path();
            std::fs::File::open(&a)?.sync_all()?;
            for b in std::fs::read_dir(&a)? {
                let b = b?.path();
                for f in std::fs::read_dir(&b)? {
                    let f = f?;
                    if let Some(h) = f.file_name().to_str().and_then(ChunkHash::from_hex) {
                        let len = f.metadata()?.len();
                        bytes += len;
                        present.insert(h, len);
                    }
                }
                durable_dirs.insert(b);
            }
        }
        tracing::info!(chunks = present.len(), bytes, "chunk store opened");
        Ok(Self {
            root,
            tmp,
            quarantine,
            present: RwLock::new(present),
            bytes: AtomicU64::new(bytes),
            tmp_seq: AtomicU64::new(0),
            gc_lock: Mutex::new(()),
            reserve: 0,
            outboards: Mutex::new(Outboards::default()),
            durable_dirs: Mutex::new(durable_dirs),
            carried: Mutex::default(),
            carried_ready: tokio::sync::Notify::new(),
            unsynced: Mutex::default(),
        })
    }

    /// Refuses new chunks (with [`ChunkError::NoSpace`]) once storing one
    /// would leave less than `bytes` free on the disk.
    pub fn with_reserve(mut self, bytes: u64) -> Self {
        self.reserve = bytes;
        self
    }

    /// Whether a new chunk would eat into the reserve.
    fn short_of_space(&self) -> bool {
        if self.reserve == 0 {
            return false;
        }
        let (total, free) = crate::disk::space(&self.root);
        // total 0: statvfs failed; let the write itself find out.
        total > 0 && free < self.reserve + CHUNK_SIZE as u64
    }

    /// Path of a chunk's file.
    pub fn path(&self, hash: &ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    /// Whether the chunk is present (on disk, or held to be written).
    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.present
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(hash)
            || self.held(hash).is_some()
    }

    /// A chunk held in memory until it is written.
    fn held(&self, hash: &ChunkHash) -> Option<std::sync::Arc<Vec<u8>>> {
        self.carried
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(hash)
            .cloned()
    }

    /// For each hash, whether the chunk is on this node's disk and synced
    /// (not only held in memory, or written and not yet synced).
    pub fn durable(&self, hashes: &[ChunkHash]) -> Vec<bool> {
        let unsynced: HashSet<ChunkHash> = self
            .unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        let present = self.present.read().unwrap_or_else(|p| p.into_inner());
        hashes
            .iter()
            .map(|h| present.contains_key(h) && !unsynced.contains(h))
            .collect()
    }

    /// Number of chunks and bytes stored.
    pub fn stats(&self) -> (u64, u64) {
        let n = self.present.read().unwrap_or_else(|p| p.into_inner()).len() as u64;
        (n, self.bytes.load(Ordering::Relaxed))
    }

    /// Every present chunk.
    pub fn list(&self) -> Vec<ChunkHash> {
        self.present
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect()
    }

    /// Records a chunk now on disk; returns whether it was not before.
    fn note_present(&self, hash: ChunkHash, len: u64) -> bool {
        let newly = self
            .present
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash, len)
            .is_none();
        if newly {
            self.bytes.fetch_add(len, Ordering::Relaxed);
        }
        newly
    }

    /// Restarts the garbage-collection grace period of the chunk file at
    /// `dest`, under the lock collection holds, so a write that is about
    /// to reference it again cannot lose it; false if it is gone.
    fn refresh_age(&self, dest: &Path) -> bool {
        let _g = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::File::options()
            .write(true)
            .open(dest)
            .is_ok_and(|f| f.set_modified(SystemTime::now()).is_ok())
    }

    fn forget(&self, hash: &ChunkHash) {
        let removed = self
            .present
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
        if let Some(len) = removed {
            self.bytes.fetch_sub(len, Ordering::Relaxed);
        }
    }

    /// Starts receiving a chunk that claims to hash to `hash`.
    pub fn writer(&self, hash: ChunkHash) -> Result<ChunkWriter<'_>, ChunkError> {
        let present = self
            .present
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&hash);
        if !present && self.short_of_space() {
            return Err(ChunkError::NoSpace(hash));
        }
        Ok(ChunkWriter {
            store: self,
            hash,
            data: Vec::new(),
            hasher: blake3::Hasher::new(),
        })
    }

    /// Stores a whole chunk held in memory (used by healing).
    pub async fn put(&self, hash: ChunkHash, data: &[u8]) -> Result<bool, ChunkError> {
        let mut w = self.writer(hash)?;
        w.write(data)?;
        w.finish().await
    }

    /// Holds a chunk carried in a commit (durable in the Raft log) to be
    /// written by [`ChunkStore::write_carried`]; it is served from memory
    /// meanwhile. Returns its hash.
    pub fn hold(&self, data: Vec<u8>) -> ChunkHash {
        let hash = ChunkHash::of(&data);
        let mut c = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        if !c.map.contains_key(&hash) {
            c.bytes += data.len() as u64;
            c.map.insert(hash, std::sync::Arc::new(data));
            c.queue.push(hash);
        }
        drop(c);
        self.carried_ready.notify_one();
        hash
    }

    /// Waits until a chunk is held (at once if one was held since the
    /// last wait).
    pub async fn carried_waiting(&self) {
        self.carried_ready.notified().await;
    }

    /// Bytes of carried chunks held in memory.
    pub fn carried_bytes(&self) -> u64 {
        self.carried.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Writes every chunk held so far to disk, unsynced, and stops
    /// holding it in memory; [`ChunkStore::sync_carried`] makes it
    /// durable later. Blocking.
    pub fn write_carried(&self) -> io::Result<()> {
        let batch: Vec<(ChunkHash, std::sync::Arc<Vec<u8>>)> = {
            let mut c = self.carried.lock().unwrap_or_else(|p| p.into_inner());
            let queue = std::mem::take(&mut c.queue);
            queue
                .into_iter()
                .filter_map(|h| c.map.get(&h).map(|d| (h, d.clone())))
                .collect()
        };
        let mut done = 0;
        let mut failed = None;
        for (h, d) in &batch {
            if let Err(e) = self.write_unsynced(*h, d) {
                failed = Some(io::Error::other(e));
                break;
            }
            done += 1;
        }
        self.unsynced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(batch[..done].iter().map(|(h, _)| *h));
        let mut c = self.carried.lock().unwrap_or_else(|p| p.into_inner());
        for (h, d) in &batch[..done] {
            if c.map.remove(h).is_some() {
                c.bytes -= d.len() as u64;
            }
        }
        if let Some(e) = failed {
            // Tried again at the next write, first.
            let mut queue: Vec<ChunkHash> = batch[done..].iter().map(|(h, _)| *h).collect();
            queue.append(&mut c.queue);
            c.queue = queue;
            return Err(e);
        }
        Ok(())
    }

    /// Writes every chunk held so far and makes every carried chunk
    /// written durable: each file, then each directory it went into.
    /// Blocking.
    pub fn sync_carried(&self) -> io::Result<()> {
        self.write_carried()?;
        let written = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = self.sync_files(written.iter()) {
            // Tried again at the next sync.
            self.unsynced
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(written);
            return Err(e);
        }
        Ok(())
    }

    /// Writes a chunk whose content is checked, unsynced: to `tmp/`, then
    /// renamed into place, so a reader never meets it half written. A
    /// chunk already present only has its age refreshed.
    fn write_unsynced(&self, hash: ChunkHash, data: &[u8]) -> Result<(), ChunkError> {
        if data.len() > CHUNK_SIZE {
            return Err(ChunkError::TooLarge(hash));
        }
        let dest = self.path(&hash);
        let on_disk = self
            .present
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&hash);
        // A file collection removed meanwhile is written again.
        if on_disk && self.refresh_age(&dest) {
            return Ok(());
        }
        put_in_place(&self.tmp_path(&hash), &dest, data, false)
            .map_err(|e| ChunkError::io(hash, e))?;
        self.note_present(hash, data.len() as u64);
        Ok(())
    }

    /// A fresh name in `tmp/` for a chunk being written.
    fn tmp_path(&self, hash: &ChunkHash) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.tmp.join(format!("{}.{n}", hash.to_hex()))
    }

    /// Whether the name of fan-out directory `dir` is known durable.
    fn is_durable_dir(&self, dir: &Path) -> bool {
        self.durable_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(dir)
    }

    /// Records fan-out directories whose names were synced.
    fn note_durable_dirs(&self, dirs: impl IntoIterator<Item = PathBuf>) {
        self.durable_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(dirs);
    }

    fn sync_files<'a>(&self, written: impl Iterator<Item = &'a ChunkHash>) -> io::Result<()> {
        let files: Vec<PathBuf> = written.map(|h| self.path(h)).collect();
        let synced = in_parallel(&files, |p| match std::fs::File::open(p) {
            Ok(f) => f.sync_data().map(|()| true),
            // Collected or quarantined since: nothing to keep.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })?;
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .zip(synced)
            .filter_map(|(path, synced)| path.parent().filter(|_| synced))
            .map(Path::to_path_buf)
            .collect();
        let new_dirs: Vec<PathBuf> = dirs
            .iter()
            .filter(|d| !self.is_durable_dir(d))
            .cloned()
            .collect();
        let mut to_sync = dirs;
        for dir in &new_dirs {
            to_sync.extend(fanout_parents(dir).map(Path::to_path_buf));
        }
        let to_sync: Vec<PathBuf> = to_sync.into_iter().collect();
        in_parallel(&to_sync, |d| std::fs::File::open(d)?.sync_all())?;
        self.note_durable_dirs(new_dirs);
        Ok(())
    }

    /// Whether a chunk of up to `len` new bytes would eat into the reserve
    /// (a leader refuses a small write carried in its commit then, as a
    /// chunk upload would be refused).
    pub fn would_fill(&self, len: usize) -> bool {
        len > 0 && self.short_of_space()
    }

    /// Reads and verifies a chunk. A corrupt file is quarantined.
    pub async fn get(&self, hash: &ChunkHash) -> Result<Vec<u8>, ChunkError> {
        if let Some(d) = self.held(hash) {
            return Ok(d.to_vec());
        }
        let data = self.read_file(hash).await?;
        if ChunkHash::of(&data) != *hash {
            return Err(self.corrupt(hash).await);
        }
        Ok(data)
    }

    /// Re-reads a chunk and checks it against its name (scrubbing), off
    /// the async threads. Returns its length; a corrupt file is
    /// quarantined.
    pub async fn verify(&self, hash: &ChunkHash) -> Result<u64, ChunkError> {
        if let Some(d) = self.held(hash) {
            return Ok(d.len() as u64);
        }
        let path = self.path(hash);
        let want = *hash;
        let read = tokio::task::spawn_blocking(move || -> io::Result<(u64, bool)> {
            let data = std::fs::read(path)?;
            Ok((data.len() as u64, ChunkHash::of(&data) == want))
        })
        .await
        .map_err(|e| ChunkError::io(*hash, io::Error::other(e)))?;
        match read {
            Ok((len, true)) => Ok(len),
            Ok((_, false)) => Err(self.corrupt(hash).await),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(hash);
                Err(ChunkError::NotFound(*hash))
            }
            Err(e) => Err(ChunkError::io(*hash, e)),
        }
    }

    /// Every present chunk with its size, in hash order.
    pub fn list_sized(&self) -> Vec<(ChunkHash, u64)> {
        let mut v: Vec<(ChunkHash, u64)> = self
            .present
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(h, l)| (*h, *l))
            .collect();
        v.sort_unstable_by_key(|(h, _)| h.0);
        v
    }

    /// Reads the groups of a chunk that hold bytes `[from, to)`, checked
    /// against the chunk's outboard, which is made (from the whole chunk,
    /// verified) the first time. A corrupt file is quarantined.
    pub async fn get_range(
        &self,
        hash: &ChunkHash,
        from: u64,
        to: u64,
    ) -> Result<ChunkRange, ChunkError> {
        let cached = self
            .outboards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .get(hash)
            .cloned();
        let (ob, start, data) = match cached {
            // The first range read of this chunk here: read it whole. The
            // outboard's root is the chunk's hash, so one pass both checks
            // the chunk and makes the outboard.
            None => {
                let data = match self.held(hash) {
                    Some(d) => d.to_vec(),
                    None => self.read_file(hash).await?,
                };
                let len = data.len() as u64;
                if len <= GROUP {
                    if ChunkHash::of(&data) != *hash {
                        return Err(self.corrupt(hash).await);
                    }
                    return Ok(ChunkRange {
                        len,
                        start: 0,
                        data,
                        proof: Vec::new(),
                    });
                }
                let ob = Outboard::new(&data);
                if ob.root() != Some(hash.0) {
                    return Err(self.corrupt(hash).await);
                }
                let (start, end) = range::aligned(from, to, len);
                let part = data[start as usize..end as usize].to_vec();
                (self.keep_outboard(*hash, ob), start, part)
            }
            // Later ones read only the groups asked for, each checked
            // against the outboard.
            Some(ob) => {
                let (start, data) = self.read_groups(hash, &ob, from, to).await?;
                (ob, start, data)
            }
        };
        let end = start + data.len() as u64;
        let len = ob.len();
        let proof = ob.prove(start, end).ok_or_else(|| ChunkError::Io {
            hash: *hash,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no range [{from}, {to}) in the chunk's {len} bytes"),
            ),
        })?;
        Ok(ChunkRange {
            len,
            start,
            data,
            proof,
        })
    }

    /// Reads the groups that hold bytes `[from, to)` of a chunk whose
    /// outboard is known, checking each; returns where they start.
    async fn read_groups(
        &self,
        hash: &ChunkHash,
        ob: &Outboard,
        from: u64,
        to: u64,
    ) -> Result<(u64, Vec<u8>), ChunkError> {
        let len = ob.len();
        let (start, end) = range::aligned(from, to, len);
        let path = self.path(hash);
        // The file's length too: a file that changed length is corrupt.
        let read = tokio::task::spawn_blocking(move || -> io::Result<(u64, Vec<u8>)> {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(&path)?;
            let real = f.metadata()?.len();
            let mut buf = vec![0; end.saturating_sub(start) as usize];
            f.read_exact_at(&mut buf, start)?;
            Ok((real, buf))
        })
        .await
        .map_err(|e| ChunkError::io(*hash, io::Error::other(e)))?;
        let (real, data) = match read {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(hash);
                return Err(ChunkError::NotFound(*hash));
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(self.corrupt(hash).await);
            }
            Err(e) => return Err(ChunkError::io(*hash, e)),
        };
        let intact = real == len
            && data.chunks(GROUP as usize).enumerate().all(|(i, g)| {
                let at = start + i as u64 * GROUP;
                ob.group((at / GROUP) as usize) == Some(&range::group_cv(at, g))
            });
        if !intact {
            return Err(self.corrupt(hash).await);
        }
        Ok((start, data))
    }

    /// Keeps an outboard in memory (oldest out) and returns it shared.
    fn keep_outboard(&self, hash: ChunkHash, ob: Outboard) -> std::sync::Arc<Outboard> {
        let ob = std::sync::Arc::new(ob);
        let mut o = self.outboards.lock().unwrap_or_else(|p| p.into_inner());
        if o.map.insert(hash, ob.clone()).is_none() {
            o.order.push_back(hash);
        }
        while o.order.len() > MAX_OUTBOARDS {
            if let Some(old) = o.order.pop_front() {
                o.map.remove(&old);
            }
        }
        ob
    }

    /// Reads a chunk file whole, unchecked.
    async fn read_file(&self, hash: &ChunkHash) -> Result<Vec<u8>, ChunkError> {
        match tokio::fs::read(self.path(hash)).await {
            Ok(d) => Ok(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(hash);
                Err(ChunkError::NotFound(*hash))
            }
            Err(e) => Err(ChunkError::io(*hash, e)),
        }
    }

    /// Quarantines a chunk found corrupt; the error to return.
    async fn corrupt(&self, hash: &ChunkHash) -> ChunkError {
        self.quarantine(hash).await;
        ChunkError::Corrupt(*hash)
    }

    async fn quarantine(&self, hash: &ChunkHash) {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let to = self.quarantine.join(format!("{}.{n}", hash.to_hex()));
        match tokio::fs::rename(self.path(hash), &to).await {
            Ok(()) => {
                tracing::error!(hash = %hash, to = %to.display(), "corrupt chunk quarantined")
            }
            Err(e) => {
                tracing::error!(hash = %hash, error = %e, "corrupt chunk could not be quarantined")
            }
        }
        self.forget(hash);
        let mut o = self.outboards.lock().unwrap_or_else(|p| p.into_inner());
        if o.map.remove(hash).is_some() {
            o.order.retain(|h| h != hash);
        }
    }

    /// Deletes a chunk that placement gives to other nodes, unless it is
    /// held in memory (not yet written); whether it is gone.
    pub fn remove_surplus(&self, hash: &ChunkHash) -> io::Result<bool> {
        let _g = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.held(hash).is_some() {
            return Ok(false);
        }
        match std::fs::remove_file(self.path(hash)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.forget(hash);
        Ok(true)
    }

    /// Deletes a chunk if `still_garbage` holds for it and it is older than
    /// `grace`. Returns whether it was deleted.
    pub fn remove_if_old(
        &self,
        hash: &ChunkHash,
        grace: std::time::Duration,
        still_garbage: impl FnOnce() -> bool,
    ) -> io::Result<bool> {
        let _g = self.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.path(hash);
        let age = std::fs::metadata(&path)?
            .modified()?
            .elapsed()
            .unwrap_or_default();
        if age < grace || !still_garbage() {
            return Ok(false);
        }
        std::fs::remove_file(&path)?;
        self.forget(hash);
        Ok(true)
    }
}

/// Deletes a temporary file unless it was renamed into place.
#[derive(Debug)]
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A chunk being received: hashed as its pieces arrive and gathered in one
/// buffer (at most [`CHUNK_SIZE`]), then checked and written to disk in
/// one go.
#[derive(Debug)]
pub struct ChunkWriter<'a> {
    store: &'a ChunkStore,
    hash: ChunkHash,
    data: Vec<u8>,
    hasher: blake3::Hasher,
}

impl ChunkWriter<'_> {
    /// Appends received bytes. The buffer is sized once: a first piece
    /// shorter than [`PIECE_SIZE`] is the whole chunk, a full one may be
    /// followed by up to a chunk. (Keeping the received pieces instead
    /// would save this copy, but each can hold on to a receive buffer up
    /// to twice its size, so an upload's memory would not be bounded by
    /// its length.)
    pub fn write(&mut self, data: &[u8]) -> Result<(), ChunkError> {
        if self.data.len() + data.len() > CHUNK_SIZE {
            return Err(ChunkError::TooLarge(self.hash));
        }
        if self.data.capacity() == 0 {
            let want = if data.len() < PIECE_SIZE {
                data.len()
            } else {
                CHUNK_SIZE
            };
            self.data.reserve_exact(want);
        }
        self.hasher.update(data);
        self.data.extend_from_slice(data);
        Ok(())
    }

    /// Checks the hash and makes the chunk durable. Returns whether the chunk
    /// was already present.
    pub async fn finish(self) -> Result<bool, ChunkError> {
        let hash = self.hash;
        let actual = ChunkHash(*self.hasher.finalize().as_bytes());
        if actual != hash {
            return Err(ChunkError::Mismatch {
                claimed: hash,
                actual,
            });
        }
        let dest = self.store.path(&hash);
        // A write that found the chunk present is about to reference it
        // again.
        if self.store.contains(&hash) && self.store.refresh_age(&dest) {
            return Ok(true);
        }
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_default();
        // A fan-out directory not known durable has its own name synced
        // too; concurrent writers into a new one each sync it, so none
        // returns before its name is durable.
        let known = self.store.is_durable_dir(&dir);
        let tmp = self.store.tmp_path(&hash);
        let data = self.data;
        let len = data.len() as u64;
        let synced = dir.clone();
        // One blocking task writes, syncs and renames the whole chunk: one
        // hand-off to the blocking pool per chunk, not one per piece.
        tokio::task::spawn_blocking(move || {
            put_in_place(&tmp, &dest, &data, true)?;
            std::fs::File::open(&synced)?.sync_all()?;
            if !known {
                for up in fanout_parents(&synced) {
                    std::fs::File::open(up)?.sync_all()?;
                }
            }
            Ok::<(), io::Error>(())
        })
        .await
        .map_err(|e| ChunkError::io(hash, io::Error::other(e)))?
        .map_err(|e| ChunkError::io(hash, e))?;
        if !known {
            self.store.note_durable_dirs([dir]);
        }
        Ok(!self.store.note_present(hash, len))
    }
}

/// Writes `data` to `tmp` (synced if `sync`) and renames it to `dest`,
/// making its fan-out directory: a reader never meets a chunk half
/// written, and a failed write leaves nothing in `tmp/`.
fn put_in_place(tmp: &Path, dest: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    let mut guard = TmpGuard(Some(tmp.to_path_buf()));
    let mut file = std::fs::File::create(tmp)?;
    file.write_all(data)?;
    if sync {
        file.sync_all()?;
    }
    drop(file);
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::rename(tmp, dest)?;
    guard.0 = None;
    Ok(())
}

/// The directories whose entries make the name of fan-out directory
/// `dir` durable: chunks/ab/cd needs ab (for cd) and chunks (for ab).
fn fanout_parents(dir: &Path) -> impl Iterator<Item = &Path> {
    dir.ancestors().skip(1).take(2)
}

/// Threads that sync files at once: the disk merges the cache flushes of
/// syncs that are in flight together, where one thread would wait for
/// each in turn.
const SYNC_THREADS: usize = 8;

/// Runs `f` on every item, on up to [`SYNC_THREADS`] threads; returns the
/// results in the items' order, or the first error.
fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> io::Result<R> + Sync,
) -> io::Result<Vec<R>> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(SYNC_THREADS);
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(per)
            .map(|part| s.spawn(|| part.iter().map(&f).collect::<io::Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for p in parts {
            out.extend(
                p.join()
                    .map_err(|_| io::Error::other("a sync thread panicked"))??,
            );
        }
        Ok(out)
    })
}
