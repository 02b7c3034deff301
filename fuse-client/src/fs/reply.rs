//! One way to answer the kernel: a callback hands [`QuizFs::answer`] its
//! reply and an async body returning `Result<T, Errno>`; the body runs as
//! its own task and its result becomes the reply. [`Answer`] says, for
//! each kind of reply, what value answers it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fuser::{
    Errno, FileAttr, FileHandle, FopenFlags, Generation, INodeNo, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr,
};
use quizfs_proto as pb;

use super::dir::Page;
use super::errno::err;
use super::{Inner, OpResult, QuizFs};

/// A reply to the kernel and the value that answers it.
pub trait Answer: Send + 'static {
    /// What a successful request answers with.
    type Value: Send + 'static;

    /// Answers with a value.
    fn ok(self, v: Self::Value);

    /// Answers with an errno.
    fn error(self, e: Errno);

    /// Answers with a request's result.
    fn answer(self, r: OpResult<Self::Value>)
    where
        Self: Sized,
    {
        match r {
            Ok(v) => self.ok(v),
            Err(e) => self.error(e),
        }
    }
}

impl QuizFs {
    /// Runs `body` as a task on the mount's runtime; its result answers
    /// `reply`, and its time and error are counted under `op`.
    pub(super) fn answer<R, F, Fut>(&self, op: &'static str, reply: R, body: F)
    where
        R: Answer,
        F: FnOnce(Arc<Inner>) -> Fut + Send + 'static,
        Fut: Future<Output = OpResult<R::Value>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let metrics = self.metrics.clone();
        self.rt.spawn(async move {
            let began = std::time::Instant::now();
            let r = body(inner).await;
            if let Err(e) = &r {
                // The answers a working file system gives all day are not
                // worth a line; any other error is, to find what an
                // application was told.
                if !matches!(
                    e.code(),
                    libc::ENOENT | libc::EEXIST | libc::ENODATA | libc::ENOTTY | libc::EAGAIN
                ) {
                    tracing::debug!(op, errno = e.code(), "answered an error");
                }
            }
            metrics.observe(op, began.elapsed(), r.as_ref().err().copied());
            reply.answer(r)
        });
    }
}

/// A name's inode, for lookup and the calls that make names.
#[derive(Debug)]
pub struct Entry {
    /// How long the kernel may keep the name.
    pub ttl: Duration,
    /// The inode's attributes.
    pub attr: FileAttr,
    /// The inode's generation.
    pub generation: u64,
}

/// A file made and opened by `create`.
#[derive(Debug)]
pub struct Created {
    /// The new name's inode.
    pub entry: Entry,
    /// The handle of the open.
    pub fh: u64,
}

/// Extended-attribute data and the buffer size the caller gave (0: it
/// asks for the size only).
#[derive(Debug)]
pub struct Xattr {
    /// The value, or the NUL-separated names.
    pub data: Vec<u8>,
    /// The caller's buffer.
    pub size: u32,
}

impl Answer for ReplyEmpty {
    type Value = ();
    fn ok(self, (): ()) {
        ReplyEmpty::ok(self);
    }
    fn error(self, e: Errno) {
        ReplyEmpty::error(self, e);
    }
}

impl Answer for fuser::ReplyLock {
    type Value = super::locks::LockAnswer;
    fn ok(self, l: super::locks::LockAnswer) {
        self.locked(l.start, l.end, l.typ, l.pid);
    }
    fn error(self, e: Errno) {
        fuser::ReplyLock::error(self, e);
    }
}

impl Answer for ReplyEntry {
    type Value = Entry;
    fn ok(self, e: Entry) {
        self.entry(&e.ttl, &e.attr, Generation(e.generation));
    }
    fn error(self, e: Errno) {
        ReplyEntry::error(self, e);
    }
}

impl Answer for ReplyAttr {
    type Value = (Duration, FileAttr);
    fn ok(self, (ttl, attr): (Duration, FileAttr)) {
        self.attr(&ttl, &attr);
    }
    fn error(self, e: Errno) {
        ReplyAttr::error(self, e);
    }
}

impl Answer for ReplyData {
    type Value = Vec<u8>;
    fn ok(self, d: Vec<u8>) {
        self.data(&d);
    }
    fn error(self, e: Errno) {
        ReplyData::error(self, e);
    }
}

impl Answer for ReplyOpen {
    type Value = (u64, FopenFlags);
    fn ok(self, (fh, flags): (u64, FopenFlags)) {
        self.opened(FileHandle(fh), flags);
    }
    fn error(self, e: Errno) {
        ReplyOpen::error(self, e);
    }
}

impl Answer for ReplyCreate {
    type Value = Created;
    fn ok(self, c: Created) {
        self.created(
            &c.entry.ttl,
            &c.entry.attr,
            Generation(c.entry.generation),
            FileHandle(c.fh),
            FopenFlags::empty(),
        );
    }
    fn error(self, e: Errno) {
        ReplyCreate::error(self, e);
    }
}

impl Answer for ReplyWrite {
    type Value = u32;
    fn ok(self, n: u32) {
        self.written(n);
    }
    fn error(self, e: Errno) {
        ReplyWrite::error(self, e);
    }
}

impl Answer for ReplyLseek {
    type Value = u64;
    fn ok(self, offset: u64) {
        self.offset(offset as i64);
    }
    fn error(self, e: Errno) {
        ReplyLseek::error(self, e);
    }
}

impl Answer for ReplyXattr {
    type Value = Xattr;
    fn ok(self, x: Xattr) {
        if x.size == 0 {
            self.size(x.data.len() as u32);
        } else if x.data.len() > x.size as usize {
            ReplyXattr::error(self, err(libc::ERANGE));
        } else {
            self.data(&x.data);
        }
    }
    fn error(self, e: Errno) {
        ReplyXattr::error(self, e);
    }
}

impl Answer for ReplyStatfs {
    type Value = pb::StatFsReply;
    fn ok(self, s: pb::StatFsReply) {
        let bs = 4096u64;
        let free = s.free_bytes / bs;
        self.statfs(
            s.total_bytes / bs,
            free,
            free,
            s.files + free,
            free,
            bs as u32,
            pb::MAX_NAME_BYTES as u32,
            bs as u32,
        );
    }
    fn error(self, e: Errno) {
        ReplyStatfs::error(self, e);
    }
}

impl Answer for ReplyDirectory {
    type Value = Page;
    fn ok(mut self, page: Page) {
        page.fill(|name, ino, kind, _, next| self.add(INodeNo(ino), next, kind, name));
        ReplyDirectory::ok(self);
    }
    fn error(self, e: Errno) {
        ReplyDirectory::error(self, e);
    }
}

impl Answer for ReplyDirectoryPlus {
    type Value = Page;
    fn ok(mut self, page: Page) {
        page.fill(|name, ino, kind, attr, next| {
            let (fa, generation, ttl) = page.entry_attr(ino, kind, attr);
            self.add(INodeNo(ino), next, name, &ttl, &fa, Generation(generation))
        });
        ReplyDirectoryPlus::ok(self);
    }
    fn error(self, e: Errno) {
        ReplyDirectoryPlus::error(self, e);
    }
}
