//! The node's one sled database (Raft log and vote, state machine, node
//! identity) and the one way to make what was written to it durable.
//!
//! sled's own `flush` writes its buffers with `sync_file_range`, which
//! flushes neither the drive's write cache nor the file's size and block
//! map, so a power cut can take back what it acknowledged: sled calls
//! `fsync` only from a background thread, every 500 ms. The power-cut test
//! (`t155`) lost acknowledged uploads that way. [`Db::flush`] follows
//! sled's flush with `fdatasync` of sled's data file, and syncs the blob
//! files sled writes (unsynced) for values over its inline limit.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A sled database whose [`Db::flush`] is durable.
#[derive(Debug, Clone)]
pub struct Db {
    db: sled::Db,
    /// sled's data file (`DIR/db`): syncing any descriptor of it syncs it.
    file: Arc<File>,
    /// sled's blob directory.
    blobs: PathBuf,
}

impl Db {
    /// Opens (or creates) the database in `dir` with a page cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self, sled::Error> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        let file = File::open(dir.join("db"))?;
        // The files' names, as POSIX asks: a new database's directory
        // entries are durable only once their directories are synced.
        File::open(dir)?.sync_all()?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        Ok(Self {
            db,
            file: Arc::new(file),
            blobs: dir.join("blobs"),
        })
    }

    /// The database, to open trees and to read and write.
    pub fn sled(&self) -> &sled::Db {
        &self.db
    }

    /// Makes everything written so far durable: sled's flush, then
    /// `fdatasync` of its data file and of every blob file. Blobs are rare
    /// (values over sled's inline limit, about 128 KiB) and a blob being
    /// written by another thread may be met half-written, so all of them
    /// are synced each time rather than remembered.
    pub fn flush(&self) -> std::io::Result<()> {
        self.db.flush().map_err(std::io::Error::other)?;
        self.file.sync_data()?;
        self.sync_blobs()
    }

    /// [`Db::flush`] on a blocking thread.
    pub async fn flush_async(&self) -> std::io::Result<()> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(std::io::Error::other)?
    }

    fn sync_blobs(&self) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut any = false;
        for e in entries {
            match File::open(e?.path()) {
                Ok(f) => f.sync_data()?,
                // sled removed it meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            }
            any = true;
        }
        if any {
            File::open(&self.blobs)?.sync_all()?;
        }
        Ok(())
    }
}
