//! openraft's `RaftStateMachine` over the sled tree: apply, snapshots.
//!
//! Each `apply` call commits all its entries, their replies in the session
//! table and `last_applied` atomically, without a sled batch: it writes the
//! whole set of writes first as one redo record (one insert, in the Raft
//! meta tree), then each write as a plain insert or remove. sled recovers
//! a prefix of its writes after a crash, so if any of an apply's writes
//! survived, its redo record did, and opening the state machine writes the
//! record again (every write in it sets a key to a value: doing it twice
//! is doing it once). Readers are kept out of a half-done apply by a lock
//! ([`MetaReader`]). A sled batch did the same but wrote two of sled's IO
//! buffers per apply, on sled's IO threads: about a third of a Raft
//! write's time on the leader (BENCHMARKS.md).
//!
//! The state machine is not flushed per apply: after a crash sled recovers
//! a prefix of applies and openraft re-applies the rest from the log, which
//! is never purged past a snapshot that was first synced to disk.
//!
//! Small writes carried inside their commit (`CommitWrite.chunks`) are
//! written to the chunk store by the apply, unsynced: the Raft log holds
//! them durably. A sync of the chunk store (every second, and before every
//! snapshot, so before the log is purged) records the index it covers
//! (`KEY_INLINE_SYNCED`); at start-up [`StateMachine::rematerialize`]
//! writes again the chunks of the entries after it, since sled may have
//! kept an apply whose chunk files a crash took back.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use openraft::storage::{RaftLogReader, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorSubject, RaftSnapshotBuilder};
use prometheus_client::metrics::histogram::Histogram;
use prost::Message;
use quizfs_proto as pb;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::ops::{self, Ctx};
use super::read::MetaReader;
use super::schema::KEY_APPLIED;
use super::sessions::{self, Seen};
use super::txn::{Fail, StoreError, Txn, Writes};
use crate::chunk::store::ChunkStore;
use crate::raft::log_store::LogStore;
use crate::raft::{
    Cmd, CmdReply, Entry, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig, decode,
    encode, read_err, snapshot, write_err,
};

const CURRENT: &str = "current.snap";
/// Marker key (in the Raft meta tree) set while a snapshot is being loaded
/// into the state machine; found at start-up, the load is redone.
const KEY_INSTALLING: &[u8] = b"sm_installing";
/// Key (in the Raft meta tree) of the last apply's writes, written before
/// them, and written again at start-up.
pub(super) const KEY_REDO: &[u8] = b"sm_redo";
/// Key (in the Raft meta tree) of the log index up to which the chunks
/// carried in commits are durable in the chunk store.
const KEY_INLINE_SYNCED: &[u8] = b"sm_inline_synced";
/// Log entries read at once when start-up writes carried chunks again.
const REMATERIALIZE_BATCH: u64 = 256;

type Applied = (Option<LogId>, StoredMembership);

/// The metadata state machine.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: crate::db::Db,
    tree: sled::Tree,
    raft_meta: sled::Tree,
    dir: PathBuf,
    recv_counter: Arc<AtomicU64>,
    apply_seconds: Option<Histogram>,
    /// Held for writing while an apply writes its keys (see the readers).
    applying: Arc<RwLock<()>>,
    /// Where the chunks carried in commits go (none in unit tests).
    chunks: Option<Arc<ChunkStore>>,
    /// The last applied log index whose carried chunks are written.
    materialized: Arc<AtomicU64>,
    /// Bytes of chunks carried in commits applied since the last snapshot
    /// (the Raft log holds them until one).
    carried_since_snapshot: Arc<AtomicU64>,
    /// One [`StateMachine::sync_inline`] at a time: the index one records
    /// must not pass chunks another is still writing.
    syncing: Arc<std::sync::Mutex<()>>,
    /// Counts applies that changed a lock table (see [`StateMachine::lock_changes`]).
    lock_changes: Arc<tokio::sync::watch::Sender<u64>>,
}

/// Runs blocking file and sled work from inside openraft's tasks: on a
/// multi-threaded runtime the worker thread is handed over first; on a
/// current-thread runtime (openraft's test suite) it simply runs.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn errno_reply(errno: i32) -> Vec<u8> {
    pb::MetaReply {
        errno,
        ..Default::default()
    }
    .encode_to_vec()
}

fn store_err(e: StoreError) -> StorageError {
    write_err(ErrorSubject::StateMachine, &e)
}

fn io_err(verb_write: bool, e: std::io::Error) -> StorageError {
    if verb_write {
        write_err(ErrorSubject::Snapshot(None), &e)
    } else {
        read_err(ErrorSubject::Snapshot(None), &e)
    }
}

impl StateMachine {
    /// The duration of every apply goes into `h`.
    pub fn observe_applies(mut self, h: Histogram) -> Self {
        self.apply_seconds = Some(h);
        self
    }

    /// Chunks carried in commits are written to `store` as they apply.
    pub fn with_chunks(mut self, store: Arc<ChunkStore>) -> Self {
        self.chunks = Some(store);
        self
    }

    /// Counts the applies (and snapshot installs) that changed any file
    /// lock: what a waiter for a lock watches (`Meta/WaitLock`).
    pub fn lock_changes(&self) -> Arc<tokio::sync::watch::Sender<u64>> {
        self.lock_changes.clone()
    }

    /// Opens the state machine tree of `db`, with snapshots kept in `dir`.
    /// Finishes a snapshot load that a crash interrupted.
    pub fn open(db: &crate::db::Db, dir: &Path) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let sm = Self {
            db: db.clone(),
            tree: db.sled().open_tree("sm").map_err(std::io::Error::other)?,
            raft_meta: db
                .sled()
                .open_tree("raft_meta")
                .map_err(std::io::Error::other)?,
            dir: dir.to_path_buf(),
            recv_counter: Arc::new(AtomicU64::new(0)),
            apply_seconds: None,
            applying: Arc::default(),
            chunks: None,
            materialized: Arc::default(),
            carried_since_snapshot: Arc::default(),
            syncing: Arc::default(),
            lock_changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        if sm
            .raft_meta
            .contains_key(KEY_INSTALLING)
            .map_err(std::io::Error::other)?
        {
            tracing::warn!("finishing a snapshot install interrupted by a crash");
            sm.load_current()?;
        } else {
            sm.redo().map_err(std::io::Error::other)?;
            if sm.current_path().exists() {
                let snap = snapshot::read_meta(&sm.current_path())?.last_log_id;
                let applied = sm.applied().map_err(std::io::Error::other)?.0;
                if snap > applied {
                    tracing::warn!(
                        ?snap,
                        ?applied,
                        "state machine is behind its snapshot; reloading it"
                    );
                    sm.load_current()?;
                }
            }
        }
        Ok(sm)
    }

    /// The tree, for readers.
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// A reader of the tree that never sees half of an apply.
    pub fn reader(&self) -> MetaReader {
        MetaReader::new(self.tree.clone(), self.applying.clone())
    }

    /// Writes `writes` to the tree: its redo record first, then each key.
    fn write(&self, writes: Writes) -> Result<(), sled::Error> {
        self.raft_meta.insert(KEY_REDO, encode(&writes))?;
        let locks = [crate::meta::schema::PREFIX_LOCK];
        let locks_changed = writes
            .range(locks.to_vec()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&locks));
        {
            let _alone = self.applying.write().unwrap_or_else(|p| p.into_inner());
            for (k, v) in writes {
                match v {
                    Some(v) => self.tree.insert(k, v)?,
                    None => self.tree.remove(k)?,
                };
            }
        }
        if locks_changed {
            self.lock_changes.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Writes the last apply's redo record again: after a crash, the part
    /// of its writes that did not reach the disk.
    fn redo(&self) -> Result<(), StorageError> {
        let Some(record) = self
            .raft_meta
            .get(KEY_REDO)
            .map_err(|e| read_err(ErrorSubject::StateMachine, &e))?
        else {
            return Ok(());
        };
        let writes: Writes =
            decode(&record).map_err(|e| read_err(ErrorSubject::StateMachine, &e))?;
        tracing::debug!(
            keys = writes.len(),
            "state machine: last apply written again"
        );
        self.write(writes)
            .map_err(|e| write_err(ErrorSubject::StateMachine, &e))
    }

    fn current_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// Loads the current snapshot file into the tree, guarded by the marker.
    fn load_current(&self) -> Result<(), std::io::Error> {
        let other = std::io::Error::other;
        self.raft_meta
            .insert(KEY_INSTALLING, b"1".as_slice())
            .map_err(other)?;
        // The snapshot replaces everything an earlier apply wrote.
        self.raft_meta.remove(KEY_REDO).map_err(other)?;
        self.db.flush()?;
        let meta = snapshot::import(&self.current_path(), &self.tree)?;
        let applied: Applied = (meta.last_log_id, meta.last_membership.clone());
        self.tree
            .insert(KEY_APPLIED, encode(&applied))
            .map_err(other)?;
        self.raft_meta.remove(KEY_INSTALLING).map_err(other)?;
        self.db.flush()?;
        Ok(())
    }

    /// Writes the chunks carried in commits applied so far to disk,
    /// durably, and records the log index that covers. Blocking.
    pub fn sync_inline(&self) -> std::io::Result<()> {
        let Some(store) = &self.chunks else {
            return Ok(());
        };
        let _alone = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        let upto = self.materialized.load(Ordering::Acquire);
        store.sync_carried()?;
        self.raft_meta
            .insert(KEY_INLINE_SYNCED, &upto.to_be_bytes())
            .map_err(std::io::Error::other)?;
        Ok(())
    }

    fn inline_synced(&self) -> Result<u64, std::io::Error> {
        let v = self
            .raft_meta
            .get(KEY_INLINE_SYNCED)
            .map_err(std::io::Error::other)?;
        Ok(v.and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// At start-up: writes again the chunks carried by the applied entries
    /// after the last sync of the chunk store (a crash may have kept the
    /// apply in sled and lost the files), then syncs them. Returns how
    /// many it wrote.
    pub async fn rematerialize(&self, log: &mut LogStore) -> Result<u64, std::io::Error> {
        let Some(store) = self.chunks.clone() else {
            return Ok(0);
        };
        let applied = self
            .applied()
            .map_err(std::io::Error::other)?
            .0
            .map_or(0, |l| l.index);
        let mut from = self.inline_synced()? + 1;
        let (mut chunks, mut written) = (0u64, 0u64);
        while from <= applied {
            let to = (from + REMATERIALIZE_BATCH - 1).min(applied);
            let entries = log
                .try_get_log_entries(from..=to)
                .await
                .map_err(std::io::Error::other)?;
            for entry in entries {
                let EntryPayload::Normal(cmd) = &entry.payload else {
                    continue;
                };
                for data in carried(cmd) {
                    chunks += 1;
                    let hash = pb::ChunkHash::of(&data);
                    if store.contains(&hash) && store.verify(&hash).await.is_ok() {
                        continue;
                    }
                    store.hold(data);
                    written += 1;
                }
            }
            from = to + 1;
            // Written as it goes, so memory holds one batch at most.
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.chunks.as_ref().map(|s| s.write_carried()))
                .await
                .map_err(std::io::Error::other)?
                .transpose()?;
        }
        self.materialized.store(applied, Ordering::Release);
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.sync_inline())
            .await
            .map_err(std::io::Error::other)??;
        if chunks > 0 {
            tracing::info!(
                chunks,
                written,
                "chunks carried in unsynced commits checked"
            );
        }
        Ok(written)
    }

    /// Writes the chunks carried in commits applied so far to disk, not
    /// synced (that is [`StateMachine::sync_inline`]). Blocking.
    pub fn write_inline(&self) -> std::io::Result<()> {
        match &self.chunks {
            Some(store) => store.write_carried(),
            None => Ok(()),
        }
    }

    /// Bytes of chunks carried in commits held in memory, not written.
    pub fn carried_held(&self) -> u64 {
        self.chunks.as_ref().map_or(0, |s| s.carried_bytes())
    }

    /// Waits until a chunk carried in a commit is held to be written.
    pub async fn carried_waiting(&self) {
        match &self.chunks {
            Some(store) => store.carried_waiting().await,
            None => std::future::pending().await,
        }
    }

    /// Bytes of chunks carried in commits applied since the last snapshot.
    pub fn carried_since_snapshot(&self) -> u64 {
        self.carried_since_snapshot.load(Ordering::Relaxed)
    }

    /// Gives the chunks a command carried to the chunk store, which
    /// serves them from memory until [`StateMachine::sync_inline`].
    fn materialize(&self, carried: Vec<Vec<u8>>) {
        let Some(store) = &self.chunks else {
            return;
        };
        let bytes: usize = carried.iter().map(Vec::len).sum();
        self.carried_since_snapshot
            .fetch_add(bytes as u64, Ordering::Relaxed);
        for data in carried {
            store.hold(data);
        }
    }

    fn applied(&self) -> Result<Applied, StorageError> {
        match self
            .tree
            .get(KEY_APPLIED)
            .map_err(|e| read_err(ErrorSubject::StateMachine, &e))?
        {
            Some(v) => decode(&v).map_err(|e| read_err(ErrorSubject::StateMachine, &e)),
            None => Ok((None, StoredMembership::default())),
        }
    }

    /// Applies one command; returns its reply and the chunks it carried
    /// if it changed the state (a retry's, or a failed command's, none).
    fn apply_cmd(txn: &mut Txn<'_>, cmd: &Cmd) -> Result<(Vec<u8>, Vec<Vec<u8>>), StoreError> {
        let Ok(mut op) = pb::MetaOp::decode(cmd.op.as_slice()) else {
            return Ok((errno_reply(libc::EINVAL), Vec::new()));
        };
        if cmd.client_id != 0 {
            match sessions::seen(txn, cmd.client_id, cmd.seq)? {
                Seen::Replied(r) => return Ok((r, Vec::new())),
                Seen::Forgotten => {
                    tracing::warn!(
                        client = cmd.client_id,
                        seq = cmd.seq,
                        "retry of a forgotten request"
                    );
                    return Ok((errno_reply(libc::EIO), Vec::new()));
                }
                Seen::Expired => {
                    let r = pb::MetaReply {
                        errno: libc::ESTALE,
                        session_expired: true,
                        ..Default::default()
                    };
                    return Ok((r.encode_to_vec(), Vec::new()));
                }
                Seen::New => {}
            }
        }
        txn.begin();
        let ctx = Ctx {
            now_ns: cmd.now_ns,
            client_id: cmd.client_id,
        };
        let mut chunks = Vec::new();
        let reply = match ops::apply(txn, &ctx, &op) {
            Ok(r) => {
                txn.end();
                if let Some(pb::meta_op::Op::CommitWrite(c)) = &mut op.op {
                    chunks = std::mem::take(&mut c.chunks);
                }
                r.encode_to_vec()
            }
            Err(Fail::Posix(errno)) => {
                txn.rollback();
                errno_reply(errno)
            }
            Err(Fail::Store(e)) => return Err(e),
        };
        if cmd.client_id != 0 {
            sessions::record(txn, cmd.client_id, cmd.seq, cmd.acked_below, reply.clone())?;
        }
        Ok((reply, chunks))
    }
}

/// The chunks a logged command carries (none if it is not a commit).
fn carried(cmd: &Cmd) -> Vec<Vec<u8>> {
    match pb::MetaOp::decode(cmd.op.as_slice())
        .ok()
        .and_then(|o| o.op)
    {
        Some(pb::meta_op::Op::CommitWrite(c)) => c.chunks,
        _ => Vec::new(),
    }
}

/// Builds a snapshot from an export made while applying was paused.
#[derive(Debug)]
pub struct SnapshotBuilder {
    exported: Result<(SnapshotMeta, PathBuf), std::io::Error>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, path) =
            match std::mem::replace(&mut self.exported, Err(std::io::Error::other("used"))) {
                Ok(x) => x,
                Err(e) => return Err(io_err(true, e)),
            };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_err(false, e))?;
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(file),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<Applied, StorageError> {
        self.applied()
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CmdReply>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let began = std::time::Instant::now();
        let (mut last, mut membership) = self.applied()?;
        let mut txn = Txn::new(&self.tree);
        let mut replies = Vec::new();
        let mut carried = Vec::new();
        for entry in entries {
            last = Some(entry.log_id);
            match &entry.payload {
                EntryPayload::Blank => replies.push(CmdReply::default()),
                EntryPayload::Normal(cmd) => {
                    let (reply, chunks) = Self::apply_cmd(&mut txn, cmd).map_err(store_err)?;
                    replies.push(CmdReply(reply));
                    carried.extend(chunks);
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    replies.push(CmdReply::default());
                }
            }
        }
        let applied: Applied = (last, membership);
        txn.put(KEY_APPLIED, &applied);
        self.write(txn.into_writes())
            .map_err(|e| write_err(ErrorSubject::StateMachine, &e))?;
        // Before the replies go: a reader told of the commit finds the
        // chunks on the leader.
        self.materialize(carried);
        if let Some(l) = last {
            self.materialized.store(l.index, Ordering::Release);
        }
        if let Some(h) = &self.apply_seconds {
            h.observe(began.elapsed().as_secs_f64());
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // Exported here, where openraft does not apply concurrently, so the
        // snapshot is one consistent state; the builder only opens the file.
        let exported = blocking(|| -> Result<_, std::io::Error> {
            let (last, membership) = self.applied().map_err(std::io::Error::other)?;
            let id = format!(
                "{}-{}-{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index),
                quizfs_proto::now_ns()
            );
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id: id,
            };
            let tmp = self.dir.join(format!("build-{}.tmp", meta.snapshot_id));
            // The tree and the chunks carried in commits go to disk first:
            // the log may be purged up to this snapshot as soon as it exists.
            self.sync_inline()?;
            self.carried_since_snapshot.store(0, Ordering::Relaxed);
            self.db.flush()?;
            snapshot::export(&self.tree, &meta, &tmp)?;
            std::fs::rename(&tmp, self.current_path())?;
            File::open(&self.dir)?.sync_all()?;
            Ok((meta, self.current_path()))
        });
        SnapshotBuilder { exported }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let n = self.recv_counter.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("recv-{n}.tmp"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| io_err(true, e))?;
        // Unlinked at once: the open handle is all openraft needs, and
        // nothing is left behind if the transfer is abandoned.
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| io_err(true, e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        tracing::info!(snapshot = %meta.snapshot_id, "installing snapshot");
        let tmp = self.dir.join("install.tmp");
        {
            let mut out = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| io_err(true, e))?;
            snapshot
                .seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(|e| io_err(false, e))?;
            tokio::io::copy(&mut snapshot, &mut out)
                .await
                .map_err(|e| io_err(true, e))?;
            out.flush().await.map_err(|e| io_err(true, e))?;
            out.sync_all().await.map_err(|e| io_err(true, e))?;
        }
        let current = self.current_path();
        blocking(|| -> Result<(), std::io::Error> {
            snapshot::verify(&tmp)?;
            std::fs::rename(&tmp, &current)?;
            File::open(&self.dir)?.sync_all()?;
            self.load_current()?;
            // The received meta is authoritative for what was applied.
            let applied: Applied = (meta.last_log_id, meta.last_membership.clone());
            self.tree
                .insert(KEY_APPLIED, encode(&applied))
                .map_err(std::io::Error::other)?;
            // The chunks carried before it are not in the log here: the
            // healer fetches the ones this node lacks from its peers.
            let index = meta.last_log_id.map_or(0, |l| l.index);
            self.materialized.store(index, Ordering::Release);
            self.raft_meta
                .insert(KEY_INLINE_SYNCED, &index.to_be_bytes())
                .map_err(std::io::Error::other)?;
            self.db.flush()?;
            // The lock tables may differ: every waiter looks again.
            self.lock_changes.send_modify(|n| *n += 1);
            Ok(())
        })
        .map_err(|e| io_err(true, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.current_path();
        if !path.exists() {
            return Ok(None);
        }
        let meta = snapshot::read_meta(&path).map_err(|e| io_err(false, e))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_err(false, e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

use std::fs::File;

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::StateMachine;
    use crate::raft::log_store::LogStore;
    use crate::raft::{StorageError, TypeConfig};

    /// Fresh sled-backed stores in a temporary directory per test case.
    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let db = crate::db::Db::open(&dir.path().join("meta"), 8 << 20).expect("open sled");
            let log = LogStore::open(&db, &dir.path().join("raftlog"), None).expect("log store");
            let sm = StateMachine::open(&db, &dir.path().join("snapshots")).expect("state machine");
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite against our log store and
    /// state machine.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).expect("storage suite");
    }
}
