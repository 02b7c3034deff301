//! `quizfs-lazyfs BACKING MOUNTPOINT`: a disk that forgets what was not
//! synced, for the power-cut test.
//!
//! A FUSE filesystem that passes everything through to the directory
//! BACKING, except file content: writes and truncations are kept in this
//! process's memory until `fsync`/`fdatasync` of the file writes them to
//! BACKING and syncs them there. When the process dies (SIGKILL) every
//! unsynced byte is gone, as a page cache is at a power cut; what BACKING
//! holds is what a disk would hold after one. `sync_file_range` never
//! reaches a FUSE filesystem, so data made "durable" only with it is lost
//! too, as it can be on a real disk.
//!
//! Names (create, rename, unlink, mkdir) go to BACKING at once: the test
//! checks lost content, not lost directory entries.

// A test tool: a poisoned lock is a bug of this tool.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, Session,
    TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
const TTL: Duration = Duration::ZERO;

/// A file's content that is not on BACKING yet.
struct Pending {
    /// The file's size as its writers see it.
    len: u64,
    /// Bytes of BACKING at and above this offset read as zeros (the file
    /// was cut there and not synced since).
    zero_from: u64,
    /// Written pages, each `PAGE` bytes, by page number.
    pages: BTreeMap<u64, Vec<u8>>,
}

#[derive(Default)]
struct State {
    /// Path of each inode met, relative to BACKING.
    paths: HashMap<u64, PathBuf>,
    /// Unsynced content by inode.
    pending: HashMap<u64, Pending>,
    /// Open files: inode and the file on BACKING.
    handles: HashMap<u64, (u64, File)>,
    next_fh: u64,
}

struct Lazy {
    backing: PathBuf,
    /// BACKING's own inode number (reported as 1, the FUSE root).
    root: u64,
    st: Mutex<State>,
}

fn err(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Lazy {
    fn fuse_ino(&self, st_ino: u64) -> u64 {
        match st_ino {
            i if i == self.root => 1,
            1 => self.root,
            i => i,
        }
    }

    fn path(&self, st: &State, ino: u64) -> Result<PathBuf, Errno> {
        if ino == 1 {
            return Ok(self.backing.clone());
        }
        st.paths
            .get(&ino)
            .map(|p| self.backing.join(p))
            .ok_or(Errno::ESTALE)
    }

    fn child(&self, st: &State, parent: u64, name: &OsStr) -> Result<(PathBuf, PathBuf), Errno> {
        let rel = if parent == 1 {
            PathBuf::from(name)
        } else {
            st.paths.get(&parent).ok_or(Errno::ESTALE)?.join(name)
        };
        Ok((self.backing.join(&rel), rel))
    }

    fn attr(&self, st: &State, m: &std::fs::Metadata) -> FileAttr {
        let ino = self.fuse_ino(m.ino());
        let size = st.pending.get(&ino).map_or(m.len(), |p| p.len);
        let time = |s: i64, ns: i64| {
            if s >= 0 {
                UNIX_EPOCH + Duration::new(s as u64, ns as u32)
            } else {
                UNIX_EPOCH
            }
        };
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            FileType::Directory
        } else if ft.is_symlink() {
            FileType::Symlink
        } else {
            FileType::RegularFile
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: time(m.atime(), m.atime_nsec()),
            mtime: time(m.mtime(), m.mtime_nsec()),
            ctime: time(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind,
            perm: (m.mode() & 0o7777) as u16,
            nlink: m.nlink() as u32,
            uid: m.uid(),
            gid: m.gid(),
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        }
    }

    /// Looks up `rel` on BACKING, remembers its path, and returns its attributes.
    fn enter(&self, st: &mut State, full: &Path, rel: PathBuf) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(full).map_err(err)?;
        let ino = self.fuse_ino(m.ino());
        st.paths.insert(ino, rel);
        Ok(self.attr(st, &m))
    }

    /// A new inode on BACKING has no pending content, whatever an earlier
    /// inode of the same number left.
    fn fresh(&self, st: &mut State, full: &Path, rel: PathBuf) -> Result<FileAttr, Errno> {
        let m = std::fs::symlink_metadata(full).map_err(err)?;
        st.pending.remove(&self.fuse_ino(m.ino()));
        self.enter(st, full, rel)
    }

    fn any_file(&self, st: &State, ino: u64) -> Result<File, Errno> {
        if let Some((_, f)) = st.handles.values().find(|(i, _)| *i == ino) {
            return f.try_clone().map_err(err);
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(st, ino)?)
            .map_err(err)
    }

    /// The pending state of `ino`, made from BACKING's length if none.
    fn pending<'a>(st: &'a mut State, ino: u64, f: &File) -> Result<&'a mut Pending, Errno> {
        match st.pending.entry(ino) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(v) => {
                let len = f.metadata().map_err(err)?.len();
                Ok(v.insert(Pending {
                    len,
                    zero_from: len,
                    pages: BTreeMap::new(),
                }))
            }
        }
    }
}

impl Pending {
    /// Page `n` as the file reads now, from memory or BACKING.
    fn page(&self, f: &File, n: u64) -> Result<Vec<u8>, Errno> {
        if let Some(p) = self.pages.get(&n) {
            return Ok(p.clone());
        }
        let mut buf = vec![0u8; PAGE as usize];
        let start = n * PAGE;
        if start < self.zero_from {
            let want = (self.zero_from - start).min(PAGE) as usize;
            let mut got = 0;
            while got < want {
                match f.read_at(&mut buf[got..want], start + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) => return Err(err(e)),
                }
            }
        }
        Ok(buf)
    }

    fn truncate(&mut self, f: &File, len: u64) -> Result<(), Errno> {
        if len < self.len {
            let cut = len.div_ceil(PAGE);
            self.pages.retain(|n, _| *n < cut);
            if !len.is_multiple_of(PAGE) {
                let n = len / PAGE;
                let mut p = self.page(f, n)?;
                p[(len % PAGE) as usize..].fill(0);
                self.pages.insert(n, p);
            }
            self.zero_from = self.zero_from.min(len);
        }
        self.len = len;
        Ok(())
    }

    fn write(&mut self, f: &File, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let mut done = 0usize;
        while done < data.len() {
            let at = offset + done as u64;
            let n = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = (PAGE as usize - within).min(data.len() - done);
            let mut p = self.page(f, n)?;
            p[within..within + take].copy_from_slice(&data[done..done + take]);
            self.pages.insert(n, p);
            done += take;
        }
        self.len = self.len.max(offset + data.len() as u64);
        Ok(())
    }

    fn read(&self, f: &File, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let end = (offset + u64::from(size)).min(self.len);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut at = offset;
        while at < end {
            let n = at / PAGE;
            let within = (at % PAGE) as usize;
            let take = ((PAGE as usize - within) as u64).min(end - at) as usize;
            out.extend_from_slice(&self.page(f, n)?[within..within + take]);
            at += take as u64;
        }
        Ok(out)
    }

    /// Writes the content to BACKING and syncs it.
    fn sync(self, f: &File) -> std::io::Result<()> {
        if self.zero_from < f.metadata()?.len() {
            f.set_len(self.zero_from)?;
        }
        for (n, p) in &self.pages {
            let start = n * PAGE;
            if start >= self.len {
                continue;
            }
            let take = (self.len - start).min(PAGE) as usize;
            f.write_all_at(&p[..take], start)?;
        }
        f.set_len(self.len)?;
        f.sync_all()
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<FileAttr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn cstr(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

impl Filesystem for Lazy {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.st.lock().unwrap();
        let r = self
            .child(&st, parent.0, name)
            .and_then(|(full, rel)| self.enter(&mut st, &full, rel));
        reply_entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.st.lock().unwrap();
        let m = match fh.and_then(|h| st.handles.get(&h.0)) {
            Some((_, f)) => f.metadata().map_err(err),
            None => self
                .path(&st, ino.0)
                .and_then(|p| std::fs::symlink_metadata(p).map_err(err)),
        };
        match m {
            Ok(m) => reply.attr(&TTL, &self.attr(&st, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.st.lock().unwrap();
        let r = (|| {
            let path = self.path(&st, ino.0)?;
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(err)?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(err)?;
            }
            if let Some(len) = size {
                let f = self.any_file(&st, ino.0)?;
                Self::pending(&mut st, ino.0, &f)?.truncate(&f, len)?;
            }
            if atime.is_some() || mtime.is_some() {
                let f = File::open(&path).map_err(err)?;
                let t = |t: Option<TimeOrNow>| match t {
                    Some(TimeOrNow::SpecificTime(t)) => t,
                    _ => SystemTime::now(),
                };
                let times = std::fs::FileTimes::new()
                    .set_accessed(t(atime))
                    .set_modified(t(mtime));
                f.set_times(times).map_err(err)?;
            }
            let m = std::fs::symlink_metadata(&path).map_err(err)?;
            Ok(self.attr(&st, &m))
        })();
        match r {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.st.lock().unwrap();
        let r = self.child(&st, parent.0, name).and_then(|(full, rel)| {
            std::fs::create_dir(&full).map_err(err)?;
            std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode & !umask))
                .map_err(err)?;
            self.fresh(&mut st, &full, rel)
        });
        reply_entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut st = self.st.lock().unwrap();
        let r = self.child(&st, parent.0, name).and_then(|(full, _)| {
            let m = std::fs::symlink_metadata(&full).map_err(err)?;
            std::fs::remove_file(&full).map_err(err)?;
            let ino = self.fuse_ino(m.ino());
            if m.nlink() <= 1 && !st.handles.values().any(|(i, _)| *i == ino) {
                st.pending.remove(&ino);
            }
            Ok(())
        });
        reply_empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let st = self.st.lock().unwrap();
        let r = self
            .child(&st, parent.0, name)
            .and_then(|(full, _)| std::fs::remove_dir(full).map_err(err));
        reply_empty(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st.lock().unwrap();
        let r = (|| {
            let (from, from_rel) = self.child(&st, parent.0, name)?;
            let (to, to_rel) = self.child(&st, newparent.0, newname)?;
            let replaced = std::fs::symlink_metadata(&to).ok();
            let (a, b) = (cstr(&from)?, cstr(&to)?);
            // SAFETY: two NUL-terminated paths that live across the call.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    flags.bits(),
                )
            };
            if rc != 0 {
                return Err(err(std::io::Error::last_os_error()));
            }
            if let Some(m) = replaced.filter(|m| m.is_file() && m.nlink() <= 1) {
                let ino = self.fuse_ino(m.ino());
                if !st.handles.values().any(|(i, _)| *i == ino) {
                    st.pending.remove(&ino);
                }
            }
            // Paths under the old name move with it.
            for p in st.paths.values_mut() {
                if let Ok(rest) = p.strip_prefix(&from_rel) {
                    // join("") would add a trailing slash.
                    *p = if rest.as_os_str().is_empty() {
                        to_rel.clone()
                    } else {
                        to_rel.join(rest)
                    };
                }
            }
            Ok(())
        })();
        reply_empty(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.st.lock().unwrap();
        // Read-write whatever the flags (the kernel checks the access
        // mode): a sync through a read-only descriptor writes the content.
        let r = self.path(&st, ino.0).and_then(|p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .or_else(|_| File::open(&p))
                .map_err(err)
        });
        match r {
            Ok(f) => {
                st.next_fh += 1;
                let fh = st.next_fh;
                st.handles.insert(fh, (ino.0, f));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.st.lock().unwrap();
        let r = self.child(&st, parent.0, name).and_then(|(full, rel)| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .custom_flags(flags & libc::O_EXCL)
                .mode(mode & !umask)
                .open(&full)
                .map_err(err)?;
            let a = self.fresh(&mut st, &full, rel)?;
            Ok((a, f))
        });
        match r {
            Ok((a, f)) => {
                st.next_fh += 1;
                let fh = st.next_fh;
                st.handles.insert(fh, (a.ino.0, f));
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let st = self.st.lock().unwrap();
        let Some((_, f)) = st.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let r = match st.pending.get(&ino.0) {
            Some(p) => p.read(f, offset, size),
            None => {
                let mut buf = vec![0u8; size as usize];
                let mut got = 0;
                loop {
                    match f.read_at(&mut buf[got..], offset + got as u64) {
                        Ok(0) => break Ok(()),
                        Ok(k) => {
                            got += k;
                            if got == buf.len() {
                                break Ok(());
                            }
                        }
                        Err(e) => break Err(err(e)),
                    }
                }
                .map(|()| {
                    buf.truncate(got);
                    buf
                })
            }
        };
        match r {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.st.lock().unwrap();
        let Some(f) = st.handles.get(&fh.0).and_then(|(_, f)| f.try_clone().ok()) else {
            return reply.error(Errno::EBADF);
        };
        let r = Self::pending(&mut st, ino.0, &f).and_then(|p| p.write(&f, offset, data));
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st.lock().unwrap();
        if let Some((_, f)) = st.handles.remove(&fh.0) {
            let gone = f.metadata().is_ok_and(|m| m.nlink() == 0);
            if gone && !st.handles.values().any(|(i, _)| *i == ino.0) {
                st.pending.remove(&ino.0);
            }
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut st = self.st.lock().unwrap();
        let Some(f) = st.handles.get(&fh.0).and_then(|(_, f)| f.try_clone().ok()) else {
            return reply.error(Errno::EBADF);
        };
        let r = match st.pending.remove(&ino.0) {
            Some(p) => p.sync(&f).map_err(err),
            None => f.sync_all().map_err(err),
        };
        reply_empty(reply, r);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let st = self.st.lock().unwrap();
        let entries = self.path(&st, ino.0).and_then(|p| {
            let mut v = vec![
                (ino.0, FileType::Directory, OsStr::new(".").to_owned()),
                (1, FileType::Directory, OsStr::new("..").to_owned()),
            ];
            for e in std::fs::read_dir(p).map_err(err)? {
                let e = e.map_err(err)?;
                let m = e.metadata().map_err(err)?;
                let kind = if m.is_dir() {
                    FileType::Directory
                } else if m.file_type().is_symlink() {
                    FileType::Symlink
                } else {
                    FileType::RegularFile
                };
                v.push((self.fuse_ino(m.ino()), kind, e.file_name()));
            }
            Ok(v)
        });
        match entries {
            Ok(v) => {
                for (i, (ino, kind, name)) in v.into_iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let st = self.st.lock().unwrap();
        let r = self
            .path(&st, ino.0)
            .and_then(|p| File::open(p).and_then(|d| d.sync_all()).map_err(err));
        reply_empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let Ok(p) = cstr(&self.backing) else {
            return reply.error(Errno::EINVAL);
        };
        // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
        #[allow(unsafe_code)]
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        #[allow(unsafe_code)]
        let rc = unsafe { libc::statvfs(p.as_ptr(), &mut s) };
        if rc != 0 {
            return reply.error(err(std::io::Error::last_os_error()));
        }
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            s.f_namemax as u32,
            s.f_frsize as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if mode != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut st = self.st.lock().unwrap();
        let Some(f) = st.handles.get(&fh.0).and_then(|(_, f)| f.try_clone().ok()) else {
            return reply.error(Errno::EBADF);
        };
        let r = Self::pending(&mut st, ino.0, &f).and_then(|p| {
            let end = offset + length;
            if end > p.len {
                p.truncate(&f, end)?;
            }
            Ok(())
        });
        reply_empty(reply, r);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: quizfs-lazyfs BACKING MOUNTPOINT");
        std::process::exit(2);
    }
    let backing = PathBuf::from(&args[1]);
    let root = match std::fs::metadata(&backing) {
        Ok(m) if m.is_dir() => m.ino(),
        _ => {
            eprintln!("quizfs-lazyfs: {} is not a directory", backing.display());
            std::process::exit(2);
        }
    };
    let fs = Lazy {
        backing,
        root,
        st: Mutex::new(State::default()),
    };
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("lazyfs".into())];
    let session = match Session::new(fs, Path::new(&args[2]), &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("quizfs-lazyfs: cannot mount on {}: {e}", args[2]);
            std::process::exit(1);
        }
    };
    if let Err(e) = session.run() {
        eprintln!("quizfs-lazyfs: {e}");
        std::process::exit(1);
    }
}
