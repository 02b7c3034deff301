//! The FUSE callbacks. Each copies its arguments and hands an async body
//! to [`QuizFs::answer`], which runs it as a task and answers the kernel
//! with its result; the work itself is in the sibling modules.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::SystemTime;

use fuser::{
    AccessFlags, CopyFileRangeFlags, FileHandle, Filesystem, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use quizfs_proto::{self as pb, meta_op::Op};

use super::attr::set_time;
use super::errno::errno;
use super::locks::LockReq;
use super::reply::Answer;
use super::{MAX_READ_WINDOW, MAX_WRITE, QuizFs};

/// A lock request as the kernel sent it.
fn lock_req(
    ino: INodeNo,
    fh: FileHandle,
    owner: LockOwner,
    start: u64,
    end: u64,
    typ: i32,
    pid: u32,
) -> LockReq {
    LockReq {
        ino: ino.0,
        fh: fh.0,
        owner: owner.0,
        start,
        end,
        typ,
        pid,
    }
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl Filesystem for QuizFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_READ_WINDOW);
        let _ = config.add_capabilities(
            InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_ATOMIC_O_TRUNC
                | InitFlags::FUSE_CACHE_SYMLINKS
                | InitFlags::FUSE_BIG_WRITES
                | InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        // Locks held by the cluster, across mounts (see `locks`).
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        {
            tracing::warn!(
                ?missing,
                "the kernel does not pass these lock calls to file systems: such locks stay local \
                 to this mount"
            );
        }
        Ok(())
    }

    fn forget(&self, _req: &Request, ino: INodeNo, _nlookup: u64) {
        self.inner.forget(ino.0);
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (name, pid) = (name_bytes(name), req.pid());
        self.answer("lookup", reply, move |fs| async move {
            fs.lookup(parent.0, &name, pid).await
        });
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let pid = req.pid();
        self.answer("getattr", reply, move |fs| async move {
            fs.getattr(ino.0, pid).await
        });
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
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = pb::SetAttr {
            ino: ino.0,
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        self.answer("setattr", reply, move |fs| async move {
            fs.setattr(ino.0, set, fh.map(|h| h.0)).await
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.answer("readlink", reply, move |fs| async move {
            fs.client().readlink(ino.0).await.map_err(errno)
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Create(pb::Create {
            parent: parent.0,
            name: name_bytes(name),
            mode,
            uid: req.uid(),
            gid: req.gid(),
            rdev,
            exclusive: true,
            ino: 0,
        });
        self.answer("mknod", reply, move |fs| async move {
            fs.new_entry("mknod", op).await
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let op = Op::Mkdir(pb::Mkdir {
            parent: parent.0,
            name: name_bytes(name),
            mode,
            uid: req.uid(),
            gid: req.gid(),
        });
        self.answer("mkdir", reply, move |fs| async move {
            fs.new_entry("mkdir", op).await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.answer("unlink", reply, move |fs| async move {
            fs.unlink(parent.0, name).await
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.answer("rmdir", reply, move |fs| async move {
            fs.rmdir(parent.0, &name).await
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let op = Op::Symlink(pb::Symlink {
            parent: parent.0,
            name: name_bytes(link_name),
            target: target.as_os_str().as_bytes().to_vec(),
            uid: req.uid(),
            gid: req.gid(),
        });
        self.answer("symlink", reply, move |fs| async move {
            fs.new_entry("symlink", op).await
        });
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
        let r = pb::Rename {
            parent: parent.0,
            name: name_bytes(name),
            new_parent: newparent.0,
            new_name: name_bytes(newname),
            flags: flags.bits(),
            keep_open_ino: 0,
        };
        self.answer("rename", reply, move |fs| async move { fs.rename(r).await });
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let new_name = name_bytes(newname);
        self.answer("link", reply, move |fs| async move {
            fs.link(ino.0, newparent.0, &new_name).await
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let pid = req.pid();
        self.answer("open", reply, move |fs| async move {
            fs.open(ino.0, flags.0, pid).await
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.answer("read", reply, move |fs| async move {
            fs.read(fh.0, offset, size).await
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.answer("write", reply, move |fs| async move {
            fs.write(fh.0, offset, data).await
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.answer("flush", reply, move |fs| async move {
            let flushed = fs.flush(fh.0).await;
            // POSIX: any close by a process drops its locks on the file.
            let unlocked = fs.close_owner(ino.0, lock_owner.0).await;
            flushed.and(unlocked)
        });
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
        self.answer("release", reply, move |fs| async move {
            let released = fs.release(fh.0).await;
            fs.close_handle(ino.0, fh.0).await;
            released
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.answer(
            "fsync",
            reply,
            move |fs| async move { fs.fsync(fh.0).await },
        );
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
        self.answer("fallocate", reply, move |fs| async move {
            fs.fallocate(ino.0, fh.0, offset, length, mode).await
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.answer("lseek", reply, move |fs| async move {
            fs.lseek(fh.0, offset, whence).await
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let c = pb::CopyRange {
            src: ino_in.0,
            src_offset: offset_in,
            dst: ino_out.0,
            dst_offset: offset_out,
            len,
        };
        self.answer("copy_file_range", reply, move |fs| async move {
            fs.copy_range(fh_in.0, fh_out.0, c).await
        });
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.ok((self.inner.open_dir(), fuser::FopenFlags::empty()));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.answer("readdir", reply, move |fs| fs.page(ino.0, fh.0, offset));
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.answer("readdirplus", reply, move |fs| fs.page(ino.0, fh.0, offset));
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.inner.remove_handle(fh.0);
        reply.ok();
    }

    /// Every metadata change is committed by Raft before it is answered.
    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    /// No ioctl is supported: ENOTTY, what a regular file on a local
    /// file system answers to a terminal ioctl (Python's `open` asks one
    /// of every file; fuser's default logged a warning each time).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.answer("statfs", reply, move |fs| async move {
            fs.client().statfs().await.map_err(errno)
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.inner.forget_bare(ino.0);
        let (name, value) = (name_bytes(name), value.to_vec());
        self.answer("setxattr", reply, move |fs| async move {
            fs.setxattr(ino.0, &name, &value, flags as u32).await
        });
    }

    /// Only the names the kernel and `ls -l` ask for implicitly, on every
    /// entry or every write, may be answered here; any other name is read
    /// from the cluster, so a setxattr on another mount shows at once.
    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Some(e) = self.inner.known_absent(ino.0, name.as_bytes()) {
            return reply.error(e);
        }
        let name = name_bytes(name);
        self.answer("getxattr", reply, move |fs| async move {
            fs.getxattr(ino.0, &name, size).await
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.answer("listxattr", reply, move |fs| async move {
            fs.listxattr(ino.0, size).await
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.inner.forget_bare(ino.0);
        let name = name_bytes(name);
        self.answer("removexattr", reply, move |fs| async move {
            fs.removexattr(ino.0, &name).await
        });
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let (uid, gid, mask) = (req.uid(), req.gid(), mask.bits() as u32);
        self.answer("access", reply, move |fs| async move {
            fs.access(ino.0, uid, gid, mask).await
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let pid = req.pid();
        let op = pb::Create {
            parent: parent.0,
            name: name_bytes(name),
            mode: libc::S_IFREG | (mode & 0o7777),
            uid: req.uid(),
            gid: req.gid(),
            rdev: 0,
            exclusive: flags & libc::O_EXCL != 0,
            ino: 0,
        };
        self.answer("create", reply, move |fs| async move {
            fs.create(op, flags, pid).await
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let r = lock_req(ino, fh, lock_owner, start, end, typ, pid);
        self.answer("getlk", reply, move |fs| async move { fs.getlk(r).await });
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let r = lock_req(ino, fh, lock_owner, start, end, typ, pid);
        let tid = req.pid();
        self.answer("setlk", reply, move |fs| async move {
            fs.setlk(r, sleep, tid).await
        });
    }
}
