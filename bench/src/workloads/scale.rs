//! The scaling table: uploads and metadata as the volume fills, and
//! sequential throughput by file size.

use std::fs::File;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Bound, Progress, Report, Sizes, io, meta, seq, uploads};
use crate::load::close;

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
    let stamp = quizfs_proto::now_ns() / 1_000_000;
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
            uploads(&p, &probe, 1, false, &bound, &mut report)?;
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
