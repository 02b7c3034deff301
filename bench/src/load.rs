//! The web application's load on a mounted directory, independent of the
//! filesystem under it: a writer that uploads an image-sized file (write,
//! fsync, close), reads it back and compares, about every 20 ms; and
//! readers that read the files already uploaded, in a loop, and compare.
//!
//! Every system call is timed. A call that fails, or a read that returns
//! other bytes than were written, is a failed operation; the longest single
//! call is the pause the application saw.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the load does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Size of each uploaded file.
    pub file_bytes: usize,
    /// Time between the starts of two uploads.
    pub period: Duration,
    /// Reader threads.
    pub readers: usize,
    /// Pause between two reads of one reader.
    pub read_gap: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            file_bytes: 100 * 1024,
            period: Duration::from_millis(20),
            readers: 1,
            read_gap: Duration::from_millis(5),
        }
    }
}

/// What the load saw.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// System calls made.
    pub ops: u64,
    /// Uploads completed (closed and read back intact).
    pub uploads: u64,
    /// Whole-file reads by the readers.
    pub reads: u64,
    /// Every failed operation, described.
    pub failures: Vec<String>,
    /// The longest single system call.
    pub longest: Duration,
    /// Which call that was.
    pub longest_what: String,
    /// When it started.
    pub longest_at: Option<Instant>,
}

/// One uploaded file: its path and the seed of its content.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Where it is.
    pub path: PathBuf,
    /// Content seed (see [`content`]).
    pub seed: u64,
    /// Its length.
    pub len: usize,
}

/// A seed no earlier call in this process (nor, almost surely, an earlier
/// run) returned: content made from it is new to the system under test,
/// which must then store it, not find it already stored (quizfs keeps one
/// copy of equal chunks, so a repetition that wrote the same bytes again
/// would measure that instead of a write).
pub fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (now ^ (u64::from(std::process::id()) << 32))
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The content of an upload: pseudo-random bytes from `seed` (xorshift).
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    opts: LoadOptions,
    stop: AtomicBool,
    uploads: Mutex<Vec<Upload>>,
    stats: Mutex<LoadStats>,
}

impl Shared {
    fn timed<T>(&self, what: &str, f: impl FnOnce() -> std::io::Result<T>) -> Option<T> {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        let mut s = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        s.ops += 1;
        if took > s.longest {
            s.longest = took;
            s.longest_what = what.to_string();
            s.longest_at = Some(t);
        }
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                s.failures.push(format!("{what}: {e}"));
                None
            }
        }
    }

    fn fail(&self, what: String) {
        self.stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failures
            .push(what);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// close(2) on a file, reporting its error (dropping a `File` ignores it,
/// and close is where a network filesystem reports a failed flush).
pub fn close(f: File) -> std::io::Result<()> {
    let fd = f.into_raw_fd();
    #[allow(unsafe_code)]
    // SAFETY: `fd` was just released by `into_raw_fd`, so it is open and
    // owned by nothing else; it is closed exactly once here.
    let rc = unsafe { libc::close(fd) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn upload_once(sh: &Shared, n: u64) {
    let path = sh.dir.join(format!("upload-{n:06}.jpg"));
    let seed = 0x5EED_0000 + n;
    let data = content(seed, sh.opts.file_bytes);
    let name = path.display().to_string();
    let Some(mut f) = sh.timed(&format!("create {name}"), || {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
    }) else {
        return;
    };
    if sh
        .timed(&format!("write {name}"), || f.write_all(&data))
        .is_none()
        || sh
            .timed(&format!("fsync {name}"), || f.sync_all())
            .is_none()
        || sh.timed(&format!("close {name}"), || close(f)).is_none()
    {
        return;
    }
    let Some(back) = sh.timed(&format!("read back {name}"), || std::fs::read(&path)) else {
        return;
    };
    if back != data {
        sh.fail(format!("{name} read back {} bytes that differ", back.len()));
        return;
    }
    sh.uploads
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Upload {
            path,
            seed,
            len: data.len(),
        });
    sh.stats.lock().unwrap_or_else(|p| p.into_inner()).uploads += 1;
}

fn writer(sh: Arc<Shared>) {
    let mut n = 0u64;
    let mut next = Instant::now();
    while !sh.stopped() {
        upload_once(&sh, n);
        n += 1;
        next += sh.opts.period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn read_whole(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

fn reader(sh: Arc<Shared>, first: usize) {
    let mut i = first;
    while !sh.stopped() {
        let pick = {
            let u = sh.uploads.lock().unwrap_or_else(|p| p.into_inner());
            (!u.is_empty()).then(|| u[i % u.len()].clone())
        };
        if let Some(up) = pick {
            let name = up.path.display().to_string();
            if let Some(back) = sh.timed(&format!("read {name}"), || read_whole(&up.path)) {
                if back != content(up.seed, up.len) {
                    sh.fail(format!("{name}: read {} bytes that differ", back.len()));
                } else {
                    sh.stats.lock().unwrap_or_else(|p| p.into_inner()).reads += 1;
                }
            }
            i += 7;
        }
        std::thread::sleep(sh.opts.read_gap);
    }
}

/// A running load; [`Load::stop`] ends it.
#[derive(Debug)]
pub struct Load {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts the writer and the readers in `dir` (created if missing).
    pub fn start(dir: &Path, opts: LoadOptions) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            opts,
            stop: AtomicBool::new(false),
            uploads: Mutex::new(Vec::new()),
            stats: Mutex::new(LoadStats::default()),
        });
        let mut threads = Vec::new();
        let sh = shared.clone();
        threads.push(std::thread::spawn(move || writer(sh)));
        for r in 0..shared.opts.readers {
            let sh = shared.clone();
            threads.push(std::thread::spawn(move || reader(sh, r * 13)));
        }
        Ok(Self { shared, threads })
    }

    /// What the load has seen so far.
    pub fn stats(&self) -> LoadStats {
        self.shared
            .stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Uploads completed so far.
    pub fn uploads(&self) -> Vec<Upload> {
        self.shared
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the threads (each finishes the call it is in) and returns the
    /// final figures and every completed upload.
    pub fn stop(mut self) -> (LoadStats, Vec<Upload>) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            if t.join().is_err() {
                self.shared.fail("a load thread panicked".into());
            }
        }
        (self.stats(), self.uploads())
    }
}

/// Reads every upload back; returns a description of each one that is
/// missing or differs.
pub fn verify(uploads: &[Upload]) -> Vec<String> {
    let mut bad = Vec::new();
    for u in uploads {
        match read_whole(&u.path) {
            Ok(d) if d == content(u.seed, u.len) => {}
            Ok(d) => bad.push(format!(
                "{}: {} bytes that differ",
                u.path.display(),
                d.len()
            )),
            Err(e) => bad.push(format!("{}: {e}", u.path.display())),
        }
    }
    bad
}
