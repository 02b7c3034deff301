//! Requests on an open file's content: read, write (within the mount's
//! write budget), fallocate, lseek and copy_file_range.

use std::sync::Arc;

use quizfs_proto as pb;
use tokio::sync::OwnedSemaphorePermit;

use super::errno::{err, errno};
use super::files::OpenFile;
use super::{Inner, OpResult};
use crate::client::ClientError;

impl Inner {
    /// read(2) through handle `fh`.
    pub(super) async fn read(&self, fh: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        let f = self.live_file(fh).await?;
        f.read(&self.io, offset, size).await.map_err(errno)
    }

    /// write(2) through handle `fh`: buffered, uploaded as chunks fill and
    /// committed at flush.
    pub(super) async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> OpResult<u32> {
        self.writable()?;
        let f = self.live_file(fh).await?;
        let too_big = offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > pb::MAX_FILE_SIZE);
        if too_big {
            return Err(err(libc::EFBIG));
        }
        if data.is_empty() {
            return Ok(0);
        }
        let permit = self.reserve(&f, data.len()).await.map_err(errno)?;
        f.write(&self.io, fh, offset, &data, permit)
            .await
            .map_err(errno)?;
        Ok(data.len() as u32)
    }

    /// Takes write budget for `len` bytes. When it is spent, this file's
    /// buffer and then every other file's are sent on their way, and the
    /// writer waits for their uploads to give budget back: it waits on
    /// that work, never on a timer.
    async fn reserve(&self, f: &OpenFile, len: usize) -> Result<OwnedSemaphorePermit, ClientError> {
        let units = self.io.units(len);
        if let Ok(p) = self.io.budget.clone().try_acquire_many_owned(units) {
            return Ok(p);
        }
        f.seal(&self.io).await?;
        let others: Vec<Arc<OpenFile>> = self.open_files();
        for o in others.iter().filter(|o| o.ino != f.ino) {
            if let Err(e) = o.seal(&self.io).await {
                tracing::debug!(ino = o.ino, error = %e, "sending a buffer for budget failed");
            }
        }
        self.io
            .budget
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| ClientError::Posix {
                op: "write",
                errno: libc::EIO,
            })
    }

    /// fallocate(2) through handle `fh`.
    pub(super) async fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> OpResult<()> {
        self.writable()?;
        let f = self.live_file(fh).await?;
        let client = self.client().clone();
        let a = f
            .change_content(&self.io, || {
                client.fallocate(ino, offset, length, mode as u32)
            })
            .await
            .map_err(errno)?;
        self.file_attr(&a);
        Ok(())
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE (the kernel does the others).
    pub(super) async fn lseek(&self, fh: u64, offset: i64, whence: i32) -> OpResult<u64> {
        let f = self.live_file(fh).await?;
        let Ok(offset) = u64::try_from(offset) else {
            return Err(err(libc::ENXIO));
        };
        let r = match whence {
            libc::SEEK_DATA => f.seek(offset, true).await,
            libc::SEEK_HOLE => f.seek(offset, false).await,
            _ => Err(libc::EINVAL),
        };
        r.map_err(err)
    }

    /// copy_file_range(2) inside the volume: the copy shares the source's
    /// extents, so no data moves, whatever the length.
    pub(super) async fn copy_range(
        &self,
        fh_in: u64,
        fh_out: u64,
        mut c: pb::CopyRange,
    ) -> OpResult<u32> {
        self.writable()?;
        let (src, dst) = (self.live_file(fh_in).await?, self.live_file(fh_out).await?);
        // One reply carries at most u32::MAX bytes; the caller loops.
        c.len = c.len.min(u64::from(u32::MAX) & !0xFFF);
        self.flush_file(&src, None).await?;
        let client = self.client().clone();
        let (a, copied) = dst
            .change_content(&self.io, || client.copy_range(c))
            .await
            .map_err(errno)?;
        self.file_attr(&a);
        Ok(copied as u32)
    }
}
