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
//! - `uploads16`: the same split over 16 concurrent writers, all in one
//!   directory and then in a directory each (the issue's "16 concurrent
//!   uploaders", against `uploads` by one);
//! - `meta`: empty files created, stat'ed (kernel caches dropped first),
//!   renamed and unlinked;
//! - `ls`: `ls -l` of a large directory, kernel caches dropped first;
//! - `random`: 4 KiB reads and writes at random aligned offsets of one
//!   file, one at a time and 16 in flight (threads), for a fixed time. The
//!   reads use `O_DIRECT`, so every read reaches the filesystem instead of
//!   the kernel's page cache (which holds the whole file after one pass);
//!   the writes are buffered and the phase ends with an fsync, which its
//!   time includes;
//! - `sqlite` and `dbench`: real applications (see [`crate::apps`]);
//! - [`oplat`]: each operation's latency, one at a time (its own
//!   subcommand, `quizfs-bench oplat`).
//!
//! One file per kind: [`seq`], [`files`] (uploads, metadata, `ls -l`),
//! [`random`], and [`scale`] (the scaling table).
//!
//! Every figure is measured `reps` times; the report keeps every sample.
//! Every run has a time bound; a run that fails or overruns becomes an
//! error in the report instead of a figure.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The index of the `p` quantile (0..=1) in `len` sorted samples (the
/// nearest rank), or `None` when there are none.
pub fn rank(len: usize, p: f64) -> Option<usize> {
    (len > 0).then(|| ((len as f64 * p).ceil() as usize).clamp(1, len) - 1)
}

/// A mebibyte.
const MIB: usize = 1 << 20;

mod files;
pub mod logflush;
pub mod oplat;
mod random;
mod scale;
mod seq;

use files::{ls, ls_prepare, meta, uploads};
use random::{random, random_prepare};
pub use scale::{ScaleRow, ScaleSizes, scale};
use seq::seq;

/// Concurrent writers in `uploads16`.
pub const UPLOADERS: usize = 16;

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
    /// Uploads by 16 concurrent writers, in one directory and spread.
    Uploads16,
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
    pub const ALL: [Workload; 9] = [
        Self::Seq,
        Self::Uploads,
        Self::Uploads3,
        Self::Uploads16,
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
            Self::Uploads16 => "uploads16",
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
    let stamp = quizfs_proto::now_ns() / 1_000_000;
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
                    Workload::Uploads => uploads(&rdir, sizes, 1, false, &bound, &mut report)?,
                    Workload::Uploads3 => {
                        uploads(&rdir, sizes, sizes.writers, false, &bound, &mut report)?;
                    }
                    Workload::Uploads16 => {
                        let one = rdir.join("one");
                        let spread = rdir.join("spread");
                        for d in [&one, &spread] {
                            io("mkdir", std::fs::create_dir(d))?;
                        }
                        uploads(&one, sizes, UPLOADERS, false, &bound, &mut report)?;
                        uploads(&spread, sizes, UPLOADERS, true, &bound, &mut report)?;
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
