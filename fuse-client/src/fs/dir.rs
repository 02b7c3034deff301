//! Directory listings: a handle's entries are fetched page by page as the
//! kernel reads on, and answered from the handle's copy, so a listing
//! continues where it stopped even while the directory changes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Duration;

use fuser::{FileAttr, FileType};
use quizfs_proto as pb;
use tokio::sync::OwnedMutexGuard;

use super::attr::{kind_of, placeholder_attr};
use super::errno::{err, errno};
use super::open::Handle_;
use super::{Inner, OpResult, lock};

/// Directory entries fetched per page.
const DIR_PAGE: u32 = 2048;
/// Entries a reply may need past its first: more than one reply to the
/// kernel holds, so a reply never stops short at the end of a page.
const DIR_AHEAD: usize = 512;

/// A directory being listed: the entries fetched so far, in name order.
#[derive(Debug, Default)]
pub struct Listing {
    entries: Vec<pb::DirEntry>,
    more: bool,
    started: bool,
}

/// The entries one reply may hold, from its offset on. Offsets: 1 after
/// ".", 2 after "..", k + 3 after entry k.
#[derive(Debug)]
pub struct Page {
    fs: Arc<Inner>,
    listing: OwnedMutexGuard<Listing>,
    ino: u64,
    offset: u64,
}

impl Page {
    /// Hands `add` (name, inode, kind, attributes when the listing carries
    /// them, next offset) each entry from the offset on, until it says the
    /// reply is full or the entries run out.
    pub fn fill(&self, mut add: impl FnMut(&OsStr, u64, FileType, Option<&pb::Attr>, u64) -> bool) {
        let mut i = self.offset;
        loop {
            let full = match i {
                0 => add(OsStr::new("."), self.ino, FileType::Directory, None, i + 1),
                1 => add(OsStr::new(".."), self.ino, FileType::Directory, None, i + 1),
                _ => match self.listing.entries.get((i - 2) as usize) {
                    Some(e) => add(
                        OsStr::from_bytes(&e.name),
                        e.ino,
                        kind_of(e.mode),
                        e.attr.as_ref(),
                        i + 1,
                    ),
                    None => return,
                },
            };
            if full {
                return;
            }
            i += 1;
        }
    }

    /// An entry's attributes for readdirplus, with their generation and how
    /// long the kernel may keep them. Without attributes (. and .., which
    /// the kernel does not use, or an entry whose inode just went away) the
    /// entry goes with a placeholder valid for no time, so the kernel asks
    /// again before using it.
    pub fn entry_attr(
        &self,
        ino: u64,
        kind: FileType,
        attr: Option<&pb::Attr>,
    ) -> (FileAttr, u64, Duration) {
        let opts = &self.fs.opts;
        match attr {
            Some(a) => (
                self.fs.file_attr(a),
                a.generation,
                opts.entry_timeout.min(opts.attr_timeout),
            ),
            None => (placeholder_attr(ino, kind), 0, Duration::ZERO),
        }
    }
}

impl Inner {
    /// A handle for listing a directory.
    pub(super) fn open_dir(&self) -> u64 {
        let listing = Arc::new(tokio::sync::Mutex::new(Listing::default()));
        self.add_handle(Handle_::Dir(listing))
    }

    /// The entries of directory `ino` from `offset` on, through handle
    /// `fh`: offset 0 starts the listing afresh.
    pub(super) async fn page(self: Arc<Self>, ino: u64, fh: u64, offset: u64) -> OpResult<Page> {
        let listing = match lock(&self.handles).get(&fh) {
            Some(Handle_::Dir(l)) => l.clone(),
            _ => return Err(err(libc::EBADF)),
        };
        let mut l = listing.lock_owned().await;
        if offset == 0 || !l.started {
            *l = Listing {
                entries: Vec::new(),
                more: true,
                started: true,
            };
        }
        let first = offset.saturating_sub(2) as usize;
        while l.more && l.entries.len() < first + DIR_AHEAD {
            let after = l.entries.last().map(|e| e.name.clone()).unwrap_or_default();
            let (page, more) = self
                .client()
                .readdir(ino, &after, DIR_PAGE)
                .await
                .map_err(errno)?;
            l.more = more && !page.is_empty();
            l.entries.extend(page);
        }
        Ok(Page {
            fs: self,
            listing: l,
            ino,
            offset,
        })
    }
}
