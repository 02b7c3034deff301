//! The Raft log and vote in sled. Every append and vote is flushed to disk
//! ([`Db::flush`]: sled's flush and an `fdatasync`) before openraft is told
//! it is done: sled does not flush by itself.
//!
//! An append returns as soon as its entries are in sled's memory, and a
//! flusher thread acknowledges it once they are on disk: the leader sends
//! entries to its followers while its own flush runs, and appends that
//! arrive during a flush share the next one (group commit).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, RaftLogReader, Vote};
use tokio::sync::oneshot;

use crate::db::Db;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig, decode, encode, read_err, write_err};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// Work for the flusher thread.
enum Flush {
    /// Acknowledge these appended entries once they are on disk.
    Appended(LogFlushed<TypeConfig>),
    /// Answer, with the flush's outcome, once everything written before
    /// is on disk and every append sent before has been acknowledged.
    Barrier(oneshot::Sender<Result<(), String>>),
}

/// Log entries keyed by big-endian index, and the vote, in one sled database.
#[derive(Debug, Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    flusher: std::sync::mpsc::Sender<Flush>,
}

impl Debug for Flush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flush::Appended(_) => "Appended",
            Flush::Barrier(_) => "Barrier",
        })
    }
}

/// The flusher thread: flushes sled for every batch of appends waiting,
/// then acknowledges them in order. Its own thread, blocking in sled's
/// flush, so a flush costs no hand-off between runtime tasks and blocking
/// threads on the way (each one a thread switch per Raft write). Ends when
/// every store handle is gone.
fn flusher(db: Db, rx: std::sync::mpsc::Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let res = db.flush().map_err(|e| e.to_string());
        for w in waiting {
            match w {
                Flush::Appended(cb) => {
                    cb.log_io_completed(res.clone().map_err(std::io::Error::other));
                }
                Flush::Barrier(tx) => {
                    let _ = tx.send(res.clone());
                }
            }
        }
    }
}

impl LogStore {
    /// Opens the log trees of `db` and starts the flusher thread.
    pub fn open(db: &Db) -> Result<Self, sled::Error> {
        let (tx, rx) = std::sync::mpsc::channel();
        let flushed = db.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(flushed, rx))
            .map_err(sled::Error::Io)?;
        Ok(Self {
            log: db.sled().open_tree("raft_log")?,
            meta: db.sled().open_tree("raft_meta")?,
            flusher: tx,
        })
    }

    /// Flushes everything written so far, through the flusher thread (the
    /// one place the log is flushed), and waits until every append before
    /// has been acknowledged, so that a truncate or purge never races an
    /// acknowledgement.
    async fn flush(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        let failed = |e: String| write_err(ErrorSubject::Logs, &std::io::Error::other(e));
        let gone = || failed("log flusher stopped".into());
        self.flusher.send(Flush::Barrier(tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?.map_err(failed)
    }

    fn get_meta<T: for<'a> serde::Deserialize<'a>>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let Some(v) = self
            .meta
            .get(key)
            .map_err(|e| read_err(ErrorSubject::Store, &e))?
        else {
            return Ok(None);
        };
        decode(&v)
            .map(Some)
            .map_err(|e| read_err(ErrorSubject::Store, &e))
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        self.meta
            .insert(key, encode(value))
            .map_err(|e| write_err(ErrorSubject::Store, &e))?;
        Ok(())
    }

    /// Whether this node has ever stored a vote or a log entry.
    pub fn is_empty(&self) -> Result<bool, sled::Error> {
        Ok(self.log.is_empty()
            && self.meta.get(KEY_VOTE)?.is_none()
            && self.meta.get(KEY_PURGED)?.is_none())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, v) = item.map_err(|e| read_err(ErrorSubject::Logs, &e))?;
            out.push(decode(&v).map_err(|e| read_err(ErrorSubject::Logs, &e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?.flatten();
        let last = match self
            .log
            .last()
            .map_err(|e| read_err(ErrorSubject::Logs, &e))?
        {
            Some((_, v)) => {
                let e: Entry = decode(&v).map_err(|e| read_err(ErrorSubject::Logs, &e))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.put_meta(KEY_VOTE, vote)?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not flushed: losing it only makes a restarted node re-learn the
        // commit index from the leader.
        self.put_meta(KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Plain inserts, not a batch: a sled batch adds a manifest record,
        // one more write and sync per flush. A crash keeps a prefix of
        // sled's log, so a partial append leaves no hole, and nothing is
        // acknowledged before the flush.
        for entry in entries {
            self.log
                .insert(index_key(entry.log_id.index), encode(&entry))
                .map_err(|e| write_err(ErrorSubject::Logs, &e))?;
        }
        // The entries are readable now; the flusher acknowledges them once
        // they are on disk.
        if let Err(std::sync::mpsc::SendError(Flush::Appended(cb))) =
            self.flusher.send(Flush::Appended(callback))
        {
            cb.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.flush().await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::Logs, &e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| write_err(ErrorSubject::Logs, &e))?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.flush().await?;
        // Record the purge point first: a crash in between leaves entries
        // that are merely redundant, never a hole.
        self.put_meta(KEY_PURGED, &Some(log_id))?;
        self.flush().await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = item.map_err(|e| read_err(ErrorSubject::Logs, &e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| write_err(ErrorSubject::Logs, &e))?;
        Ok(())
    }
}
