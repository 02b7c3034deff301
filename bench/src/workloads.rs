//! The throughput workloads, run against any mounted directory with plain
//! system calls, so quizfs, GlusterFS, a local disk and a FUSE passthrough
//! are measured the same way:
//!
//! - `seq`: a file written in 1 MiB blocks with an fsync at the end, then
//!   read back warm (whatever the caches hold) and cold (kernel page cache
//!   dropped first; a client's own cache is not dropped);
//! - `uploads`: image-sized files, each create + write + close (close's
//!   result checked), then read back and compared; per-file latency;
//! - `uploads3`: the same split over three concurrent writers;
//! - `meta`: empty files created, stat'ed (kernel caches dropped first),
//!   renamed and unlinked;
//! - `ls`: `ls -l` of a large directory, kernel caches dropped first;
//! - `random`: 4 KiB reads and writes at random aligned offsets of one
//!   file, one at a time and 16 in flight (threads), for a fixed time. The
//!   reads use `O_DIRECT`, so every read reaches the filesystem instead of
//!   the kernel's page cache (which holds the whole file after one pass);
//!   the writes are buffered and the phase ends with an fsync, which its
//!   time includes;
//! - `sqlite` and `dbench`: real applications (see [`crate::apps`]).
//!
//! Every figure is measured `reps` times; the report keeps every sample.
//! Every run has a time bound; a run that fails or overruns becomes an
//! error in the report instead of a figure.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::load::{close, content};

/// Sizes and repetitions of every workload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sizes {
    /// Repetitions of each workload.
    pub reps: usize,
    /// Sequential file size in MiB.
    pub seq_mib: u64,
    /// Uploaded files per run.
    pub uploads: usize,
    /// Size of one upload in KiB.
    pub upload_kib: usize,
    /// Concurrent writers in `uploads3`.
    pub writers: usize,
    /// Files per metadata run.
    pub meta_files: usize,
    /// Entries of the `ls -l` directory.
    pub ls_entries: usize,
    /// Size of the random-I/O file in MiB.
    pub rand_mib: u64,
    /// Seconds of each random-I/O phase.
    pub rand_secs: f64,
    /// Time bound of one run of one workload, in seconds.
    pub bound_secs: u64,
    /// SQLite: autocommit inserts, then the rows of one transaction.
    #[serde(default)]
    pub sqlite: (u64, u64),
    /// Seconds dbench runs.
    #[serde(default)]
    pub dbench_secs: u64,
}

impl Sizes {
    /// The sizes the comparison uses (the workloads).
    pub fn full() -> Self {
        Self {
            reps: 3,
            seq_mib: 1024,
            uploads: 2000,
            upload_kib: 100,
            writers: 3,
            meta_files: 5000,
            ls_entries: 10_000,
            rand_mib: 256,
            rand_secs: 5.0,
            bound_secs: 600,
            sqlite: (3000, 20_000),
            dbench_secs: 30,
        }
    }

    /// Seconds-long sizes, for CI.
    pub fn short() -> Self {
        Self {
            reps: 1,
            seq_mib: 32,
            uploads: 100,
            upload_kib: 100,
            writers: 3,
            meta_files: 200,
            ls_entries: 300,
            rand_mib: 16,
            rand_secs: 0.5,
            bound_secs: 120,
            sqlite: (100, 2000),
            dbench_secs: 3,
        }
    }
}

/// A workload, as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Workload {
    /// Sequential write and read.
    Seq,
    /// Uploads by one writer.
    Uploads,
    /// Uploads by concurrent writers.
    Uploads3,
    /// Create, stat, rename, unlink.
    Meta,
    /// `ls -l` of a large directory.
    Ls,
    /// Random 4 KiB reads and writes.
    Random,
    /// SQLite: autocommit inserts and one large transaction.
    Sqlite,
    /// dbench, 4 clients.
    Dbench,
}

impl Workload {
    /// Every workload, in run order.
    pub const ALL: [Workload; 8] = [
        Self::Seq,
        Self::Uploads,
        Self::Uploads3,
        Self::Meta,
        Self::Ls,
        Self::Random,
        Self::Sqlite,
        Self::Dbench,
    ];

    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seq => "seq",
            Self::Uploads => "uploads",
            Self::Uploads3 => "uploads3",
            Self::Meta => "meta",
            Self::Ls => "ls",
            Self::Random => "random",
            Self::Sqlite => "sqlite",
            Self::Dbench => "dbench",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// One measured quantity with every sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Figure {
    /// Stable key, e.g. `seq_write`.
    pub key: String,
    /// What it is, for tables.
    pub label: String,
    /// Unit, e.g. `MiB/s`.
    pub unit: String,
    /// True when more is better (throughput), false for latency and time.
    pub higher_is_better: bool,
    /// One value per repetition.
    pub samples: Vec<f64>,
}

impl Figure {
    /// The median sample.
    pub fn median(&self) -> f64 {
        let mut xs = self.samples.clone();
        xs.sort_by(f64::total_cmp);
        match xs.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => xs[n / 2],
            n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
        }
    }

    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

/// Everything one system produced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The system's name.
    pub system: String,
    /// Every figure, in workload order.
    pub figures: Vec<Figure>,
    /// Runs that failed or overran, described.
    pub errors: Vec<String>,
}

impl Report {
    /// The figure with `key`, if measured.
    pub fn figure(&self, key: &str) -> Option<&Figure> {
        self.figures.iter().find(|f| f.key == key)
    }

    pub(crate) fn add(&mut self, key: &str, label: &str, unit: &str, higher: bool, value: f64) {
        match self.figures.iter_mut().find(|f| f.key == key) {
            Some(f) => f.samples.push(value),
            None => self.figures.push(Figure {
                key: key.into(),
                label: label.into(),
                unit: unit.into(),
                higher_is_better: higher,
                samples: vec![value],
            }),
        }
    }

    /// The report as an aligned text table (median, min, max).
    pub fn table(&self) -> String {
        let mut out = format!("{}\n", self.system);
        for f in &self.figures {
            out.push_str(&format!(
                "  {:<34} {:>10.1} {:<8} (min {:.1}, max {:.1})\n",
                f.label,
                f.median(),
                f.unit,
                f.min(),
                f.max()
            ));
        }
        for e in &self.errors {
            out.push_str(&format!("  error: {e}\n"));
        }
        out
    }
}

/// Reports what is running; the command line draws it as a progress bar.
pub trait Progress: Sync {
    /// A new step (workload and repetition) begins.
    fn step(&self, what: &str);
}

impl Progress for () {
    fn step(&self, _what: &str) {}
}

/// A run's deadline.
struct Bound {
    end: Instant,
    secs: u64,
}

impl Bound {
    fn new(secs: u64) -> Self {
        Self {
            end: Instant::now() + Duration::from_secs(secs),
            secs,
        }
    }

    fn check(&self) -> Result<(), String> {
        if Instant::now() > self.end {
            Err(format!("overran its time bound of {} s", self.secs))
        } else {
            Ok(())
        }
    }
}

fn io<T>(what: impl std::fmt::Display, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// Drops the kernel's page, dentry and inode caches (needs root).
pub fn drop_caches() -> Result<(), String> {
    #[allow(unsafe_code)]
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe {
        libc::sync()
    };
    io(
        "drop caches (root needed)",
        std::fs::write("/proc/sys/vm/drop_caches", "3"),
    )
}

/// Runs `workloads` in a fresh directory under `dir`, removing it at the
/// end, and returns every figure.
pub fn run(
    system: &str,
    dir: &Path,
    sizes: &Sizes,
    workloads: &[Workload],
    progress: &dyn Progress,
) -> Report {
    let mut report = Report {
        system: system.into(),
        ..Report::default()
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let root = dir.join(format!("quizfs-bench-{stamp}"));
    if let Err(e) = std::fs::create_dir(&root) {
        report
            .errors
            .push(format!("cannot create {}: {e}", root.display()));
        return report;
    }
    for &w in workloads {
        let wdir = root.join(w.name());
        let result = io("mkdir", std::fs::create_dir(&wdir)).and_then(|()| {
            let mut prepared = None;
            for rep in 0..sizes.reps {
                progress.step(&format!("{} {}/{}", w.name(), rep + 1, sizes.reps));
                let bound = Bound::new(sizes.bound_secs);
                let rdir = wdir.join(format!("r{rep}"));
                io("mkdir", std::fs::create_dir(&rdir))?;
                match w {
                    Workload::Seq => seq(&rdir, sizes, &bound, &mut report)?,
                    Workload::Uploads => uploads(&rdir, sizes, 1, &bound, &mut report)?,
                    Workload::Uploads3 => {
                        uploads(&rdir, sizes, sizes.writers, &bound, &mut report)?;
                    }
                    Workload::Meta => meta(&rdir, sizes, &bound, &mut report)?,
                    Workload::Ls => {
                        if prepared.is_none() {
                            prepared = Some(ls_prepare(&wdir, sizes, &bound)?);
                        }
                        ls(prepared.as_deref().unwrap_or(&wdir), &bound, &mut report)?;
                    }
                    Workload::Random => {
                        if prepared.is_none() {
                            prepared = Some(random_prepare(&wdir, sizes, &bound)?);
                        }
                        random(
                            prepared.as_deref().unwrap_or(&wdir),
                            sizes,
                            &bound,
                            &mut report,
                        )?;
                    }
                    Workload::Sqlite => crate::apps::sqlite(&rdir, sizes, &mut report)?,
                    Workload::Dbench => crate::apps::dbench(&rdir, sizes, &mut report)?,
                }
                let _ = std::fs::remove_dir_all(&rdir);
            }
            Ok(())
        });
        if let Err(e) = result {
            report.errors.push(format!("{}: {e}", w.name()));
        }
        progress.step(&format!("{}: cleaning up", w.name()));
        let _ = std::fs::remove_dir_all(&wdir);
    }
    let _ = std::fs::remove_dir_all(&root);
    report
}

const MIB: usize = 1 << 20;

fn seq(dir: &Path, sizes: &Sizes, bound: &Bound, report: &mut Report) -> Result<(), String> {
    let path = dir.join("seq.bin");
    let block = content(sizes.seq_mib, MIB);
    let mib = sizes.seq_mib as f64;
    let t = Instant::now();
    let mut f = io("create seq.bin", File::create(&path))?;
    for i in 0..sizes.seq_mib {
        bound.check()?;
        // Vary the first bytes so no system can deduplicate the blocks.
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        io("write seq.bin", f.write_all(&b))?;
    }
    io("fsync seq.bin", f.sync_all())?;
    io("close seq.bin", close(f))?;
    report.add(
        "seq_write",
        &format!("seq write {} MiB (1 MiB blocks, fsync)", sizes.seq_mib),
        "MiB/s",
        true,
        mib / t.elapsed().as_secs_f64(),
    );
    let read = |bound: &Bound| -> Result<f64, String> {
        let t = Instant::now();
        let mut f = io("open seq.bin", File::open(&path))?;
        let mut buf = vec![0u8; MIB];
        let mut total = 0u64;
        loop {
            bound.check()?;
            let n = io("read seq.bin", f.read(&mut buf))?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        if total != sizes.seq_mib << 20 {
            return Err(format!("seq.bin read back {total} bytes"));
        }
        Ok(mib / t.elapsed().as_secs_f64())
    };
    let warm = read(bound)?;
    report.add(
        "seq_read_warm",
        &format!("seq read {} MiB, warm", sizes.seq_mib),
        "MiB/s",
        true,
        warm,
    );
    drop_caches()?;
    let cold = read(bound)?;
    report.add(
        "seq_read_cold",
        &format!("seq read {} MiB, cold", sizes.seq_mib),
        "MiB/s",
        true,
        cold,
    );
    io("remove seq.bin", std::fs::remove_file(&path))
}

/// One upload: create, write, close; returns its latency.
fn upload(path: &Path, data: &[u8]) -> Result<Duration, String> {
    let t = Instant::now();
    let mut f = io(
        format!("create {}", path.display()),
        OpenOptions::new().write(true).create_new(true).open(path),
    )?;
    io(format!("write {}", path.display()), f.write_all(data))?;
    io(format!("close {}", path.display()), close(f))?;
    Ok(t.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn uploads(
    dir: &Path,
    sizes: &Sizes,
    writers: usize,
    bound: &Bound,
    report: &mut Report,
) -> Result<(), String> {
    let len = sizes.upload_kib * 1024;
    let per = sizes.uploads.div_ceil(writers);
    let t = Instant::now();
    let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per);
                    for i in (w * per)..((w + 1) * per).min(sizes.uploads) {
                        bound.check()?;
                        let data = content(i as u64, len);
                        lat.push(upload(&dir.join(format!("img-{i:06}.jpg")), &data)?);
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("writer panicked".into())))
            .collect()
    });
    let wall = t.elapsed().as_secs_f64();
    let mut lat = Vec::new();
    for r in results {
        lat.extend(r?);
    }
    lat.sort();
    let n = lat.len() as f64;
    // Read back and compare, outside the timing of the writes.
    let t = Instant::now();
    for i in 0..sizes.uploads {
        bound.check()?;
        let path = dir.join(format!("img-{i:06}.jpg"));
        let got = io(format!("read {}", path.display()), std::fs::read(&path))?;
        if got != content(i as u64, len) {
            return Err(format!(
                "{} read back differs from what was written",
                path.display()
            ));
        }
    }
    let read = n / t.elapsed().as_secs_f64();
    let kib = sizes.upload_kib;
    if writers == 1 {
        report.add(
            "upload_files",
            &format!("uploads {kib} KiB, files/s"),
            "files/s",
            true,
            n / wall,
        );
        report.add(
            "upload_mib",
            &format!("uploads {kib} KiB, MiB/s"),
            "MiB/s",
            true,
            n * kib as f64 / 1024.0 / wall,
        );
        report.add(
            "upload_p50",
            "uploads, p50 latency",
            "ms",
            false,
            percentile(&lat, 0.5),
        );
        report.add(
            "upload_p99",
            "uploads, p99 latency",
            "ms",
            false,
            percentile(&lat, 0.99),
        );
        report.add(
            "upload_readback",
            "uploads read back + compared",
            "files/s",
            true,
            read,
        );
    } else {
        report.add(
            "upload3_files",
            &format!("uploads, {writers} writers, files/s"),
            "files/s",
            true,
            n / wall,
        );
        report.add(
            "upload3_p99",
            &format!("uploads, {writers} writers, p99"),
            "ms",
            false,
            percentile(&lat, 0.99),
        );
    }
    Ok(())
}

fn meta(dir: &Path, sizes: &Sizes, bound: &Bound, report: &mut Report) -> Result<(), String> {
    let n = sizes.meta_files;
    let name = |p: &str, i: usize| dir.join(format!("{p}{i:06}"));
    let mut phase = |key: &str, label: &str, f: &dyn Fn(usize) -> Result<(), String>| {
        let t = Instant::now();
        for i in 0..n {
            bound.check()?;
            f(i)?;
        }
        report.add(
            key,
            &format!("{label} {n} files"),
            "ops/s",
            true,
            n as f64 / t.elapsed().as_secs_f64(),
        );
        Ok::<(), String>(())
    };
    phase("meta_create", "create", &|i| {
        let p = name("f", i);
        let f = io(
            format!("create {}", p.display()),
            OpenOptions::new().write(true).create_new(true).open(&p),
        )?;
        io(format!("close {}", p.display()), close(f))
    })?;
    // Stat what the kernel no longer caches: the file system answers.
    drop_caches()?;
    phase("meta_stat", "stat (cold)", &|i| {
        let p = name("f", i);
        let m = io(format!("stat {}", p.display()), std::fs::metadata(&p))?;
        if m.len() != 0 || !m.is_file() {
            return Err(format!("stat {}: not an empty file", p.display()));
        }
        Ok(())
    })?;
    phase("meta_rename", "rename", &|i| {
        io(
            format!("rename f{i}"),
            std::fs::rename(name("f", i), name("g", i)),
        )
    })?;
    phase("meta_unlink", "unlink", &|i| {
        io(format!("unlink g{i}"), std::fs::remove_file(name("g", i)))
    })?;
    let left = io("readdir", std::fs::read_dir(dir))?.count();
    if left != 0 {
        return Err(format!("{left} entries left after unlinking every file"));
    }
    Ok(())
}

fn ls_prepare(dir: &Path, sizes: &Sizes, bound: &Bound) -> Result<PathBuf, String> {
    let d = dir.join("big-dir");
    io("mkdir big-dir", std::fs::create_dir(&d))?;
    for i in 0..sizes.ls_entries {
        bound.check()?;
        let p = d.join(format!("photo-{i:06}.jpg"));
        let f = io(format!("create {}", p.display()), File::create(&p))?;
        io("close", close(f))?;
    }
    Ok(d)
}

fn ls(dir: &Path, bound: &Bound, report: &mut Report) -> Result<(), String> {
    bound.check()?;
    drop_caches()?;
    let t = Instant::now();
    let out = io(
        "ls -l",
        std::process::Command::new("ls")
            .arg("-l")
            .arg("--color=never")
            .arg(dir)
            .output(),
    )?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "ls -l failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let entries = out.stdout.split(|&b| b == b'\n').count().saturating_sub(2);
    report.add(
        "ls_l",
        &format!("ls -l of {entries} entries (cold)"),
        "s",
        false,
        secs,
    );
    Ok(())
}

fn random_prepare(dir: &Path, sizes: &Sizes, bound: &Bound) -> Result<PathBuf, String> {
    let path = dir.join("random.bin");
    let mut f = io("create random.bin", File::create(&path))?;
    let mut block = content(7, MIB);
    for i in 0..sizes.rand_mib {
        bound.check()?;
        // Every block differs, so no system can store the file as one
        // deduplicated chunk and serve every read from it.
        block[..8].copy_from_slice(&i.to_le_bytes());
        io("write random.bin", f.write_all(&block))?;
    }
    io("fsync random.bin", f.sync_all())?;
    io("close random.bin", close(f))?;
    Ok(path)
}

fn random(path: &Path, sizes: &Sizes, bound: &Bound, report: &mut Report) -> Result<(), String> {
    let blocks = (sizes.rand_mib << 20) / 4096;
    let phase = Duration::from_secs_f64(sizes.rand_secs);
    for write in [false, true] {
        for qd in [1usize, 16] {
            bound.check()?;
            if !write {
                drop_caches()?;
            }
            let mut opts = OpenOptions::new();
            opts.read(true).write(true);
            if !write {
                opts.custom_flags(libc::O_DIRECT);
            }
            let f = Arc::new(io("open random.bin", opts.open(path))?);
            let ops = AtomicU64::new(0);
            let t = Instant::now();
            let results: Vec<Result<(), String>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..qd)
                    .map(|q| {
                        let f = f.clone();
                        let ops = &ops;
                        s.spawn(move || {
                            let mut x = 0x2545_F491_4F6C_DD1Du64 ^ (q as u64 + 1) << 17;
                            // O_DIRECT on a block device wants an aligned buffer.
                            let mut raw = vec![q as u8; 2 * 4096];
                            let at = raw.as_ptr().align_offset(4096);
                            let buf = &mut raw[at..at + 4096];
                            while t.elapsed() < phase {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                let off = (x % blocks) * 4096;
                                if write {
                                    buf[..8].copy_from_slice(&x.to_le_bytes());
                                    io("pwrite", f.write_all_at(buf, off))?;
                                } else {
                                    io("pread", f.read_exact_at(buf, off))?;
                                }
                                ops.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
                    .collect()
            });
            for r in results {
                r?;
            }
            if write {
                io("fsync random.bin", f.sync_all())?;
            }
            let iops = ops.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
            let (key, label) = match (write, qd) {
                (false, 1) => ("rand_read_qd1", "random 4 KiB read, QD1 (O_DIRECT)"),
                (false, _) => ("rand_read_qd16", "random 4 KiB read, QD16 (O_DIRECT)"),
                (true, 1) => ("rand_write_qd1", "random 4 KiB write, QD1 (+fsync)"),
                (true, _) => ("rand_write_qd16", "random 4 KiB write, QD16 (+fsync)"),
            };
            report.add(key, label, "IOPS", true, iops);
        }
    }
    Ok(())
}

/// What the scaling table measures: the probes at each volume size and the
/// sequential file sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleSizes {
    /// Files in the volume at which uploads and metadata are measured.
    pub levels: Vec<usize>,
    /// Sequential file sizes, MiB.
    pub seq_mib: Vec<u64>,
    /// Files per upload and metadata probe.
    pub probe: usize,
    /// Repetitions of each probe.
    pub reps: usize,
    /// Threads that fill the volume.
    pub fillers: usize,
}

/// One row of the scaling table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRow {
    /// Files in the volume (0 for the sequential rows).
    pub files: usize,
    /// File size of a sequential row, MiB (0 for the probe rows).
    pub seq_mib: u64,
    /// Seconds it took to add this level's files (0 for sequential rows).
    pub fill_secs: f64,
    /// The figures measured.
    pub report: Report,
}

/// Files per directory of the fill (an upload folder's subdirectories).
const FILL_DIR: usize = 1000;

/// Creates empty files `from..to` of the fill under `dir`, on `threads`
/// threads, each thread its own directories.
fn fill(dir: &Path, from: usize, to: usize, threads: usize) -> Result<(), String> {
    let threads = threads.max(1);
    let results: Vec<Result<(), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    for i in (from..to).filter(|i| (i / FILL_DIR) % threads == t) {
                        let d = dir.join(format!("d{:04}", i / FILL_DIR));
                        if i % FILL_DIR == 0 || i == from {
                            match std::fs::create_dir(&d) {
                                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                                    return Err(format!("mkdir {}: {e}", d.display()));
                                }
                                _ => {}
                            }
                        }
                        let p = d.join(format!("f{i:07}"));
                        let f = io(format!("create {}", p.display()), File::create(&p))?;
                        io(format!("close {}", p.display()), close(f))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("filler panicked".into())))
            .collect()
    });
    results.into_iter().collect()
}

/// The scaling table: fills the volume under `dir` to each level and
/// measures single-writer uploads and metadata operations there, then
/// sequential write and read at each file size. Removes what it made when
/// `cleanup` is set (a fill of 100,000 files takes minutes to remove).
pub fn scale(
    dir: &Path,
    s: &ScaleSizes,
    cleanup: bool,
    progress: &dyn Progress,
) -> Result<Vec<ScaleRow>, String> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let root = dir.join(format!("quizfs-scale-{stamp}"));
    let filled = root.join("fill");
    io("mkdir", std::fs::create_dir_all(&filled))?;
    let result = scale_in(&root, &filled, s, progress);
    if cleanup {
        progress.step("cleaning up");
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn scale_in(
    root: &Path,
    filled: &Path,
    s: &ScaleSizes,
    progress: &dyn Progress,
) -> Result<Vec<ScaleRow>, String> {
    let probe = Sizes {
        reps: s.reps,
        uploads: s.probe,
        meta_files: s.probe,
        writers: 1,
        bound_secs: 600,
        ..Sizes::short()
    };
    let mut rows = Vec::new();
    let mut have = 0;
    for &level in &s.levels {
        progress.step(&format!("filling the volume to {level} files"));
        let t = Instant::now();
        fill(filled, have, level.max(have), s.fillers)?;
        let fill_secs = t.elapsed().as_secs_f64();
        have = have.max(level);
        let mut report = Report {
            system: format!("{level} files"),
            ..Report::default()
        };
        for rep in 0..s.reps {
            progress.step(&format!("{level} files: probe {}/{}", rep + 1, s.reps));
            let bound = Bound::new(probe.bound_secs);
            let p = root.join(format!("probe-{level}-{rep}"));
            io("mkdir", std::fs::create_dir(&p))?;
            uploads(&p, &probe, 1, &bound, &mut report)?;
            let m = p.join("meta");
            io("mkdir", std::fs::create_dir(&m))?;
            meta(&m, &probe, &bound, &mut report)?;
            io("remove the probe", std::fs::remove_dir_all(&p))?;
        }
        rows.push(ScaleRow {
            files: level,
            seq_mib: 0,
            fill_secs,
            report,
        });
    }
    for &mib in &s.seq_mib {
        let sizes = Sizes {
            reps: s.reps,
            seq_mib: mib,
            bound_secs: 120 + mib / 4,
            ..Sizes::short()
        };
        let mut report = Report {
            system: format!("{mib} MiB"),
            ..Report::default()
        };
        for rep in 0..s.reps {
            progress.step(&format!("{mib} MiB file {}/{}", rep + 1, s.reps));
            let p = root.join(format!("seq-{mib}-{rep}"));
            io("mkdir", std::fs::create_dir(&p))?;
            seq(&p, &sizes, &Bound::new(sizes.bound_secs), &mut report)?;
            io("remove the file", std::fs::remove_dir_all(&p))?;
        }
        rows.push(ScaleRow {
            files: 0,
            seq_mib: mib,
            fill_secs: 0.0,
            report,
        });
    }
    Ok(rows)
}
