//! The Raft log in append-only segment files (`DATA/raftlog/`), and the
//! vote in sled.
//!
//! A log flush is one `fdatasync` of the segment being written: no sled
//! flush, whose buffers go out with `sync_file_range` on a pool of threads
//! that all wake for every buffer, and which would also write the state
//! machine's records on every Raft write. The state machine stays in sled
//! and is made durable where it must be: before a snapshot, which is the
//! only point the log is purged up to, so after a crash the log always
//! holds every entry the state machine on disk has not applied.
//!
//! An append returns as soon as its entries are written (readable from the
//! page cache), and a flusher thread acknowledges it once they are on disk:
//! the leader sends entries to its followers while its own flush runs, and
//! appends that arrive during a flush share the next one (group commit).
//!
//! A segment starts as a spare: a file of zeros a little longer than a
//! segment, written and synced by a thread of its own while the segment
//! before is filling (from half full on). Its
//! records overwrite the zeros, so a flush changes no file size and
//! `fdatasync` writes the data alone, without a journal commit of the
//! file system's metadata (on ext4 it halves a flush of 100 KiB, and
//! other files created meanwhile, such as chunks, no longer ride along).
//! When no spare is ready, or the disk has less than eight spares' worth
//! free, a segment starts empty and grows.
//!
//! A segment is named by the first index it was started for
//! (`00000000000000000001.seg`) and holds records
//! `[length u32][crc32 u32][index u64][bincode entry]`, little-endian, the
//! checksum over the index and the entry, then zeros to the end of the
//! spare. At start every segment is read: a torn record at the end of
//! the last segment (a crash during a write that was never acknowledged)
//! is cut off; any other bad record, or a hole in the indexes after the
//! purge point, refuses the start rather than serve a log that is not
//! what was acknowledged.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, RaftLogReader, Vote};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::oneshot;

use crate::db::Db;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig, decode, encode, read_err, write_err};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"last_purged";

/// A segment is closed and a new one started once it holds this much.
const SEGMENT_BYTES: u64 = 32 << 20;
/// Bytes before each record's entry: length, checksum, index.
const HEADER: usize = 16;
/// Bytes of zeros in a spare segment: a segment closes once it holds
/// [`SEGMENT_BYTES`], so its last batch of records fits in the rest.
const SPARE_BYTES: u64 = SEGMENT_BYTES + (4 << 20);
/// The spare segment's name in the log directory.
const SPARE_NAME: &str = "spare.tmp";
/// Free bytes a disk must have for a spare to be made: on a small or
/// nearly full disk the log grows as written, leaving the space to data.
const SPARE_MIN_FREE: u64 = 8 * SPARE_BYTES;
/// sled tree of the log before it moved to segment files (format 2).
const OLD_LOG_TREE: &str = "raft_log";

/// Work for the flusher thread.
enum Flush {
    /// Acknowledge these appended entries once they are on disk.
    Appended(LogFlushed<TypeConfig>),
    /// Answer, with the flush's outcome, once everything written before
    /// is on disk and every append sent before has been acknowledged.
    Barrier(oneshot::Sender<Result<(), String>>),
}

impl Debug for Flush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Flush::Appended(_) => "Appended",
            Flush::Barrier(_) => "Barrier",
        })
    }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes written to it.
    len: u64,
}

/// Where one entry is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// The segment: the first index it was started for.
    seg: u64,
    /// Offset of the entry's bytes (after the header).
    off: u64,
    /// Length of the entry's bytes.
    len: u32,
    log_id: LogId,
}

/// The segments and the index of every entry in them, behind one lock.
#[derive(Debug)]
struct Files {
    dir: PathBuf,
    /// By the index each segment was started for; the last is written.
    segments: BTreeMap<u64, Segment>,
    /// Every entry after the purge point.
    index: BTreeMap<u64, Loc>,
    /// Segments written since the flusher last synced them.
    dirty: Vec<Arc<File>>,
    /// A segment was created since the directory was last synced.
    dir_dirty: bool,
    /// The next append starts a new segment (the last one holds only
    /// purged entries, so it can be deleted at the next purge).
    rotate: bool,
    /// A spare segment ready to be the next (see the module's notes).
    spare: Option<File>,
    /// Asks the spare thread for a new spare.
    want_spare: Option<std::sync::mpsc::Sender<()>>,
    /// A spare was asked for since the last segment started.
    spare_asked: bool,
}

/// The Raft log in segment files, and the vote and purge point in sled.
#[derive(Debug, Clone)]
pub struct LogStore {
    files: Arc<Mutex<Files>>,
    db: Db,
    meta: sled::Tree,
    flusher: std::sync::mpsc::Sender<Flush>,
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(msg: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, msg)
}

/// Appends the record of `entry` (index `index`) to `buf`.
fn put_record(buf: &mut Vec<u8>, index: u64, body: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&index.to_le_bytes());
    crc.update(body);
    let len = u32::try_from(body.len()).expect("a Raft entry under 4 GiB");
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(body);
}

/// One record read back: the entry's index, where its bytes are, and its
/// log id.
type Record = (u64, u64, u32, LogId);

/// The records of one segment file, the length of its valid prefix, and
/// whether anything but zeros follows it. Stops at the first record that
/// is short or fails its checksum.
fn read_segment(path: &Path) -> std::io::Result<(Vec<Record>, u64, bool)> {
    let bytes = std::fs::read(path)?;
    let mut out = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= HEADER {
        let h = &bytes[pos..pos + HEADER];
        let len = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
        let index = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let start = pos + HEADER;
        if len == 0 || bytes.len() - start < len {
            break;
        }
        let body = &bytes[start..start + len];
        let mut c = crc32fast::Hasher::new();
        c.update(&index.to_le_bytes());
        c.update(body);
        if c.finalize() != crc {
            break;
        }
        let entry: Entry = decode(body).map_err(|e| {
            corrupt(format!(
                "{}: entry {index} passes its checksum but does not decode: {e}",
                path.display()
            ))
        })?;
        out.push((index, start as u64, len as u32, entry.log_id));
        pos = start + len;
    }
    let rest = bytes[pos..].iter().any(|&b| b != 0);
    Ok((out, pos as u64, rest))
}

impl Files {
    /// Reads every segment in `dir`, cutting off a torn end of the last,
    /// and indexes the entries after `purged`.
    fn recover(dir: &Path, purged: Option<u64>) -> std::io::Result<Self> {
        let mut firsts = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".seg").and_then(|n| n.parse().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut files = Files {
            dir: dir.to_path_buf(),
            segments: BTreeMap::new(),
            index: BTreeMap::new(),
            dirty: Vec::new(),
            dir_dirty: false,
            rotate: false,
            spare: None,
            want_spare: None,
            spare_asked: false,
        };
        let last_seg = firsts.last().copied();
        let mut prev: Option<u64> = None;
        for first in firsts {
            let path = segment_path(dir, first);
            let (records, valid, rest) = read_segment(&path)?;
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if rest {
                if Some(first) != last_seg {
                    return Err(corrupt(format!(
                        "{}: a bad record at byte {valid} of a closed segment",
                        path.display()
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    kept = valid,
                    "cutting off the torn end of the Raft log (a write never acknowledged)"
                );
                file.set_len(valid)?;
                file.sync_all()?;
            }
            for (index, off, len, log_id) in records {
                if let Some(p) = prev.filter(|&p| index <= p) {
                    return Err(corrupt(format!(
                        "{}: entry {index} follows entry {p}",
                        path.display()
                    )));
                }
                prev = Some(index);
                if purged.is_some_and(|p| index <= p) {
                    continue;
                }
                let expected = files
                    .index
                    .last_key_value()
                    .map_or(purged.map_or(index, |p| p + 1), |(&i, _)| i + 1);
                if index != expected {
                    return Err(corrupt(format!(
                        "{}: the Raft log has a hole: entry {index} where {expected} should be",
                        path.display()
                    )));
                }
                files.index.insert(
                    index,
                    Loc {
                        seg: first,
                        off,
                        len,
                        log_id,
                    },
                );
            }
            files.segments.insert(
                first,
                Segment {
                    file: Arc::new(file),
                    len: valid,
                },
            );
        }
        Ok(files)
    }

    /// Writes `entries` at the end of the log, starting a new segment when
    /// the last is full.
    fn append(&mut self, entries: impl Iterator<Item = Entry>) -> std::io::Result<()> {
        let mut buf = Vec::new();
        let mut locs = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let full = self.rotate
                || self
                    .segments
                    .last_key_value()
                    .is_none_or(|(_, s)| s.len + buf.len() as u64 >= SEGMENT_BYTES);
            if full {
                self.write_out(&mut buf, &mut locs)?;
                self.start_segment(index)?;
            }
            let (&seg, s) = self.segments.last_key_value().expect("a segment exists");
            let body = encode(&entry);
            let off = s.len + (buf.len() + HEADER) as u64;
            put_record(&mut buf, index, &body);
            locs.push((
                index,
                Loc {
                    seg,
                    off,
                    len: body.len() as u32,
                    log_id: entry.log_id,
                },
            ));
        }
        self.write_out(&mut buf, &mut locs)
    }

    /// Writes the records in `buf` to the last segment and indexes them.
    fn write_out(&mut self, buf: &mut Vec<u8>, locs: &mut Vec<(u64, Loc)>) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let s = self
            .segments
            .values_mut()
            .next_back()
            .expect("a segment exists");
        s.file.write_all_at(buf, s.len)?;
        s.len += buf.len() as u64;
        // The next segment's spare is made once this one is half full: a
        // small log (a test's, a new cluster's) never pays for one.
        if s.len >= SEGMENT_BYTES / 2 && !self.spare_asked {
            self.spare_asked = true;
            if let Some(tx) = &self.want_spare {
                let _ = tx.send(());
            }
        }
        if !self.dirty.iter().any(|f| Arc::ptr_eq(f, &s.file)) {
            self.dirty.push(s.file.clone());
        }
        self.index.extend(locs.drain(..));
        buf.clear();
        Ok(())
    }

    /// Closes the last segment (synced now, so only the last segment can
    /// ever end torn) and starts one for entries from `first`.
    fn start_segment(&mut self, first: u64) -> std::io::Result<()> {
        if let Some((_, s)) = self.segments.last_key_value() {
            s.file.sync_data()?;
        }
        let path = segment_path(&self.dir, first);
        let file = match self.spare.take() {
            Some(spare) => {
                std::fs::rename(self.dir.join(SPARE_NAME), &path)?;
                spare
            }
            None => OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?,
        };
        self.spare_asked = false;
        self.segments.insert(
            first,
            Segment {
                file: Arc::new(file),
                len: 0,
            },
        );
        self.dir_dirty = true;
        self.rotate = false;
        Ok(())
    }
}

/// The flusher thread: syncs the segments written for every batch of
/// appends waiting, then acknowledges them in order. Its own thread,
/// blocking in `fdatasync`, so a flush costs no hand-off between runtime
/// tasks and blocking threads. Ends when every store handle is gone.
fn flusher(
    files: Arc<Mutex<Files>>,
    rx: std::sync::mpsc::Receiver<Flush>,
    flush_seconds: Option<Histogram>,
) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let began = std::time::Instant::now();
        let res = sync_dirty(&files).map_err(|e| e.to_string());
        if let Some(h) = &flush_seconds {
            h.observe(began.elapsed().as_secs_f64());
        }
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

/// Writes a spare segment in `dir`: zeros, synced. A spare that could
/// not be made whole is removed.
fn make_spare(dir: &Path) -> std::io::Result<File> {
    let path = dir.join(SPARE_NAME);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let zeros = vec![0u8; 1 << 20];
    // Synced a MiB at a time: one sync of the whole spare held the disk
    // for 0.1 s, and every log flush waited behind it.
    let fill = || -> std::io::Result<()> {
        let mut off = 0;
        while off < SPARE_BYTES {
            file.write_all_at(&zeros, off)?;
            file.sync_data()?;
            off += zeros.len() as u64;
        }
        file.sync_all()
    };
    if let Err(e) = fill() {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    Ok(file)
}

/// The spare thread: makes a spare whenever asked and none is ready. Ends
/// when the log is gone.
fn spares(files: std::sync::Weak<Mutex<Files>>, dir: PathBuf, rx: std::sync::mpsc::Receiver<()>) {
    while rx.recv().is_ok() {
        // Only this thread writes the spare's file, and only while no
        // spare is ready: a ready one may become a segment at any time.
        match files.upgrade() {
            Some(f) if lock(&f).spare.is_none() => {}
            Some(_) => continue,
            None => return,
        }
        if crate::disk::space(&dir).1 < SPARE_MIN_FREE {
            continue;
        }
        match make_spare(&dir) {
            Ok(spare) => match files.upgrade() {
                Some(f) => lock(&f).spare = Some(spare),
                None => return,
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot prepare a Raft log segment; the next grows as written")
            }
        }
    }
}

/// Makes every segment written so far durable, and the directory when a
/// segment was created.
fn sync_dirty(files: &Mutex<Files>) -> std::io::Result<()> {
    let (dirty, dir) = {
        let mut f = lock(files);
        let dir = std::mem::take(&mut f.dir_dirty).then(|| f.dir.clone());
        (std::mem::take(&mut f.dirty), dir)
    };
    for file in &dirty {
        file.sync_data()?;
    }
    if let Some(dir) = dir {
        sync_dir(&dir)?;
    }
    Ok(())
}

fn lock(files: &Mutex<Files>) -> MutexGuard<'_, Files> {
    // A panic while holding the lock leaves the index as it was before
    // the panicking call's writes were indexed: still a valid prefix.
    files.lock().unwrap_or_else(|e| e.into_inner())
}

impl LogStore {
    /// Opens the log in `dir` and the vote in `db`, and starts the flusher
    /// thread, which puts the duration of every flush into `flush_seconds`.
    /// A log still in `db` (format 2, before segment files) moves to `dir`
    /// first.
    pub fn open(db: &Db, dir: &Path, flush_seconds: Option<Histogram>) -> std::io::Result<Self> {
        let other = std::io::Error::other;
        let meta = db.sled().open_tree("raft_meta").map_err(other)?;
        migrate(db, dir)?;
        let purged: Option<LogId> = match meta.get(KEY_PURGED).map_err(other)? {
            Some(v) => decode::<Option<LogId>>(&v).map_err(|e| corrupt(e.to_string()))?,
            None => None,
        };
        let files = Arc::new(Mutex::new(Files::recover(dir, purged.map(|p| p.index))?));
        let (tx, rx) = std::sync::mpsc::channel();
        let flushed = files.clone();
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(flushed, rx, flush_seconds))?;
        // A spare left by the last run is made again: it may be half
        // written.
        match std::fs::remove_file(dir.join(SPARE_NAME)) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let (want, asked) = std::sync::mpsc::channel();
        let weak = Arc::downgrade(&files);
        let spare_dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("raft-log-spare".into())
            .spawn(move || spares(weak, spare_dir, asked))?;
        lock(&files).want_spare = Some(want);
        Ok(Self {
            files,
            db: db.clone(),
            meta,
            flusher: tx,
        })
    }

    /// Syncs everything written so far, through the flusher thread (the
    /// one place the log is synced), and waits until every append before
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

    /// Makes the vote and purge point durable.
    async fn flush_meta(&self) -> Result<(), StorageError> {
        self.db
            .flush_async()
            .await
            .map_err(|e| write_err(ErrorSubject::Store, &e))
    }

    /// Whether this node has ever stored a vote or a log entry.
    pub fn is_empty(&self) -> Result<bool, sled::Error> {
        Ok(lock(&self.files).index.is_empty()
            && self.meta.get(KEY_VOTE)?.is_none()
            && self.meta.get(KEY_PURGED)?.is_none())
    }
}

/// Moves a log kept in sled (format 2) to segment files in `dir`, safe to
/// repeat after a crash at any point: the segment is written and synced
/// under another name, renamed into place, and only then is the sled tree
/// emptied.
fn migrate(db: &Db, dir: &Path) -> std::io::Result<()> {
    let other = std::io::Error::other;
    let old = db.sled().open_tree(OLD_LOG_TREE).map_err(other)?;
    let parent = dir.parent().unwrap_or(Path::new("."));
    let staging = dir.with_extension("new");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    if !dir.exists() {
        std::fs::create_dir_all(&staging)?;
        let mut entries = Vec::new();
        for item in old.iter() {
            let (_, v) = item.map_err(other)?;
            entries.push(decode::<Entry>(&v).map_err(|e| corrupt(e.to_string()))?);
        }
        if let Some(first) = entries.first() {
            tracing::info!(
                entries = entries.len(),
                "moving the Raft log from sled to segment files"
            );
            let mut buf = Vec::new();
            for e in &entries {
                put_record(&mut buf, e.log_id.index, &encode(e));
            }
            let f = File::create(segment_path(&staging, first.log_id.index))?;
            f.write_all_at(&buf, 0)?;
            f.sync_all()?;
        }
        sync_dir(&staging)?;
        std::fs::rename(&staging, dir)?;
        sync_dir(parent)?;
    }
    if !old.is_empty() {
        old.clear().map_err(other)?;
        db.flush()?;
    }
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let wanted: Vec<(Loc, Arc<File>)> = {
            let f = lock(&self.files);
            let r = (range.start_bound().cloned(), range.end_bound().cloned());
            f.index
                .range::<u64, (Bound<u64>, Bound<u64>)>(r)
                .map(|(_, loc)| (*loc, f.segments[&loc.seg].file.clone()))
                .collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        let mut buf = Vec::new();
        for (loc, file) in wanted {
            buf.resize(loc.len as usize, 0);
            file.read_exact_at(&mut buf, loc.off)
                .map_err(|e| read_err(ErrorSubject::Logs, &e))?;
            out.push(decode(&buf).map_err(|e| read_err(ErrorSubject::Logs, &e))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_PURGED)?.flatten();
        let last = lock(&self.files)
            .index
            .last_key_value()
            .map(|(_, l)| l.log_id)
            .or(last_purged);
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
        self.flush_meta().await
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
        lock(&self.files)
            .append(entries.into_iter())
            .map_err(|e| write_err(ErrorSubject::Logs, &e))?;
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
        let res = (|| -> std::io::Result<()> {
            let mut f = lock(&self.files);
            let Some(&at) = f.index.get(&log_id.index) else {
                return Ok(());
            };
            // Later segments go first: a crash part way leaves a prefix of
            // the log as it was, never a hole.
            let later: Vec<u64> = f
                .segments
                .range((Bound::Excluded(at.seg), Bound::Unbounded))
                .map(|(&k, _)| k)
                .collect();
            for k in &later {
                f.segments.remove(k);
                std::fs::remove_file(segment_path(&f.dir, *k))?;
            }
            if !later.is_empty() {
                sync_dir(&f.dir)?;
            }
            let s = f.segments.get_mut(&at.seg).expect("segment of an entry");
            let cut = at.off - HEADER as u64;
            s.file.set_len(cut)?;
            s.file.sync_all()?;
            s.len = cut;
            f.index.split_off(&log_id.index);
            f.dirty.clear();
            Ok(())
        })();
        res.map_err(|e| write_err(ErrorSubject::Logs, &e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.flush().await?;
        // Record the purge point first: a crash in between leaves entries
        // that are merely redundant, never a hole.
        self.put_meta(KEY_PURGED, &Some(log_id))?;
        self.flush_meta().await?;
        let res = (|| -> std::io::Result<()> {
            let mut f = lock(&self.files);
            let kept = f.index.split_off(&(log_id.index + 1));
            f.index = kept;
            // A segment goes when the next one starts at or before the
            // first entry kept: everything in it is purged.
            let firsts: Vec<u64> = f.segments.keys().copied().collect();
            let mut removed = false;
            for pair in firsts.windows(2) {
                if pair[1] <= log_id.index + 1 {
                    f.segments.remove(&pair[0]);
                    std::fs::remove_file(segment_path(&f.dir, pair[0]))?;
                    removed = true;
                }
            }
            if removed {
                sync_dir(&f.dir)?;
            }
            // The last segment holds only purged entries: start a new one
            // at the next append, so the next purge can delete it.
            if f.index.is_empty() {
                f.rotate = true;
            }
            Ok(())
        })();
        res.map_err(|e| write_err(ErrorSubject::Logs, &e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(super::super::Cmd {
                client_id: 1,
                seq: index,
                acked_below: 0,
                now_ns: 0,
                op: vec![index as u8; bytes],
            }),
        }
    }

    fn indexes(files: &Files) -> Vec<u64> {
        files.index.keys().copied().collect()
    }

    fn read_all(files: &Files) -> Vec<Entry> {
        files
            .index
            .values()
            .map(|loc| {
                let mut buf = vec![0; loc.len as usize];
                files.segments[&loc.seg]
                    .file
                    .read_exact_at(&mut buf, loc.off)
                    .unwrap();
                decode::<Entry>(&buf).unwrap()
            })
            .collect()
    }

    #[test]
    fn entries_survive_a_reopen_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Files::recover(dir.path(), None).unwrap();
        // Three segments' worth: 5 MiB entries against 32 MiB segments.
        f.append((1..=20).map(|i| entry(1, i, 5 << 20))).unwrap();
        f.append((21..=25).map(|i| entry(2, i, 10))).unwrap();
        assert!(f.segments.len() >= 3, "{} segments", f.segments.len());
        let before = read_all(&f);
        drop(f);
        let f = Files::recover(dir.path(), None).unwrap();
        assert_eq!(indexes(&f), (1..=25).collect::<Vec<_>>());
        let after = read_all(&f);
        assert_eq!(encode(&before), encode(&after));
    }

    #[test]
    fn a_torn_end_is_cut_off_and_a_bad_closed_segment_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Files::recover(dir.path(), None).unwrap();
        f.append((1..=3).map(|i| entry(1, i, 100))).unwrap();
        let seg = segment_path(dir.path(), 1);
        let whole = std::fs::metadata(&seg).unwrap().len();
        drop(f);
        // Half of the last record written.
        let file = OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(whole - 50).unwrap();
        let mut f = Files::recover(dir.path(), None).unwrap();
        assert_eq!(indexes(&f), vec![1, 2]);
        // The log goes on where the cut was.
        f.append(std::iter::once(entry(2, 3, 7))).unwrap();
        drop(f);
        let f = Files::recover(dir.path(), None).unwrap();
        assert_eq!(indexes(&f), vec![1, 2, 3]);
        assert_eq!(read_all(&f)[2].log_id.leader_id.term, 2);
        drop(f);
        // A flipped byte in a segment that is not the last refuses the
        // start.
        let mut f = Files::recover(dir.path(), None).unwrap();
        f.rotate = true;
        f.append(std::iter::once(entry(2, 4, 7))).unwrap();
        drop(f);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[HEADER + 3] ^= 1;
        std::fs::write(&seg, bytes).unwrap();
        let err = Files::recover(dir.path(), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn segments_made_from_spares_reopen_and_keep_their_checks() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Files::recover(dir.path(), None).unwrap();
        f.spare = Some(make_spare(dir.path()).unwrap());
        f.append((1..=3).map(|i| entry(1, i, 1000))).unwrap();
        let first = segment_path(dir.path(), 1);
        // The records went into the spare's zeros: the size did not move.
        assert_eq!(std::fs::metadata(&first).unwrap().len(), SPARE_BYTES);
        assert!(!dir.path().join(SPARE_NAME).exists());
        f.spare = Some(make_spare(dir.path()).unwrap());
        f.rotate = true;
        f.append((4..=5).map(|i| entry(1, i, 1000))).unwrap();
        let valid = f.segments[&1].len;
        drop(f);
        // Both segments end in zeros, the closed one and the last: read
        // as they were, and the last goes on where its records end.
        let mut f = Files::recover(dir.path(), None).unwrap();
        assert_eq!(indexes(&f), vec![1, 2, 3, 4, 5]);
        assert_eq!(read_all(&f)[4].log_id.index, 5);
        f.append(std::iter::once(entry(1, 6, 1000))).unwrap();
        drop(f);
        let f = Files::recover(dir.path(), None).unwrap();
        assert_eq!(indexes(&f), (1..=6).collect::<Vec<_>>());
        let last = segment_path(dir.path(), 4);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), SPARE_BYTES);
        drop(f);
        // A torn record inside the last segment's zeros is cut off.
        let end = Files::recover(dir.path(), None).unwrap().segments[&4].len;
        let file = OpenOptions::new().write(true).open(&last).unwrap();
        file.write_all_at(&[7; 40], end).unwrap();
        let f = Files::recover(dir.path(), None).unwrap();
        assert_eq!(indexes(&f), (1..=6).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&last).unwrap().len(), end);
        drop(f);
        // Anything but zeros after the records of a closed segment
        // refuses the start.
        let file = OpenOptions::new().write(true).open(&first).unwrap();
        file.write_all_at(&[1], valid + 1000).unwrap();
        let err = Files::recover(dir.path(), None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_log_past_half_a_segment_gets_a_spare_and_the_next_segment_uses_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta"), 8 << 20).unwrap();
        let logdir = dir.path().join("raftlog");
        std::fs::create_dir_all(&logdir).unwrap();
        // A spare a crash left half written goes at the open.
        std::fs::write(logdir.join(SPARE_NAME), b"half").unwrap();
        let store = LogStore::open(&db, &logdir, None).unwrap();
        assert!(!logdir.join(SPARE_NAME).exists());
        if crate::disk::space(&logdir).1 < SPARE_MIN_FREE + (64 << 20) {
            eprintln!(
                "skipped: the disk holding {} is too full for spares",
                logdir.display()
            );
            return;
        }
        let mut f = lock(&store.files);
        // Under half a segment: no spare is asked for.
        f.append((1..=3).map(|i| entry(1, i, 4 << 20))).unwrap();
        assert!(!f.spare_asked);
        f.append((4..=5).map(|i| entry(1, i, 4 << 20))).unwrap();
        assert!(f.spare_asked);
        drop(f);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while lock(&store.files).spare.is_none() {
            assert!(std::time::Instant::now() < deadline, "no spare was made");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut f = lock(&store.files);
        f.append((6..=9).map(|i| entry(1, i, 4 << 20))).unwrap();
        let second = *f.segments.keys().nth(1).expect("a second segment");
        assert!(f.spare.is_none() && !f.spare_asked);
        drop(f);
        let len = std::fs::metadata(segment_path(&logdir, second))
            .unwrap()
            .len();
        assert_eq!(len, SPARE_BYTES);
        // The spare thread ends with the log.
        drop(store);
    }

    #[test]
    fn a_hole_after_the_purge_point_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Files::recover(dir.path(), None).unwrap();
        f.append([1, 2, 5].into_iter().map(|i| entry(1, i, 10)))
            .unwrap();
        drop(f);
        let err = Files::recover(dir.path(), None).unwrap_err();
        assert!(err.to_string().contains("hole"), "{err}");
        // Entries up to the purge point may be anything before it.
        let f = Files::recover(dir.path(), Some(4)).unwrap();
        assert_eq!(indexes(&f), vec![5]);
    }

    #[test]
    fn a_log_kept_in_sled_moves_to_segments_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("meta"), 8 << 20).unwrap();
        let old = db.sled().open_tree(OLD_LOG_TREE).unwrap();
        let want: Vec<Entry> = (7..=40).map(|i| entry(3, i, 300)).collect();
        for e in &want {
            old.insert(e.log_id.index.to_be_bytes(), encode(e)).unwrap();
        }
        let purged = Some(LogId::new(CommittedLeaderId::new(3, 1), 6));
        db.sled()
            .open_tree("raft_meta")
            .unwrap()
            .insert(KEY_PURGED, encode(&purged))
            .unwrap();
        // A staging directory left by a crash is thrown away.
        std::fs::create_dir_all(dir.path().join("raftlog.new")).unwrap();
        for _ in 0..2 {
            let store = LogStore::open(&db, &dir.path().join("raftlog"), None).unwrap();
            let files = lock(&store.files);
            assert_eq!(indexes(&files), (7..=40).collect::<Vec<_>>());
            assert_eq!(encode(&read_all(&files)), encode(&want));
            assert!(old.is_empty());
            assert!(!dir.path().join("raftlog.new").exists());
        }
    }
}
