//! Many small files: `uploads` (and `uploads3`, `uploads16`), `meta` and `ls`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Bound, Report, Sizes, drop_caches, io, rank};
use crate::load::{close, content, fresh_seed};

/// Opens a file for an upload as web applications do: `O_CREAT |
/// O_TRUNC`, not `O_EXCL` (PHP's `fopen(..., "wb")` behind
/// `move_uploaded_file` across filesystems, Python's `open(..., "wb")`,
/// Node's `fs.createWriteStream`, the reference deployment's `app.py`).
pub(super) fn open_upload(path: &Path) -> std::io::Result<File> {
    File::create(path)
}

/// One upload: create, write, close; returns its latency.
pub(super) fn upload(path: &Path, data: &[u8]) -> Result<Duration, String> {
    let t = Instant::now();
    let mut f = io(format!("create {}", path.display()), open_upload(path))?;
    io(format!("write {}", path.display()), f.write_all(data))?;
    io(format!("close {}", path.display()), close(f))?;
    Ok(t.elapsed())
}

/// The `p` quantile of sorted latencies, ms.
pub(super) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    rank(sorted.len(), p).map_or(f64::NAN, |i| sorted[i].as_secs_f64() * 1e3)
}

/// Where upload `i` of writer `w` goes: all in `dir`, or with `spread`
/// in a directory per writer.
fn upload_path(dir: &Path, spread: bool, w: usize, i: usize) -> PathBuf {
    let name = format!("img-{i:06}.jpg");
    if spread {
        dir.join(format!("w{w:02}")).join(name)
    } else {
        dir.join(name)
    }
}

/// `sizes.uploads` uploads split over `writers` concurrent writers, into
/// one directory or (with `spread`) a directory per writer; then read
/// back and compared.
pub(super) fn uploads(
    dir: &Path,
    sizes: &Sizes,
    writers: usize,
    spread: bool,
    bound: &Bound,
    report: &mut Report,
) -> Result<(), String> {
    let len = sizes.upload_kib * 1024;
    let per = sizes.uploads.div_ceil(writers);
    if spread {
        for w in 0..writers {
            let d = dir.join(format!("w{w:02}"));
            io(format!("mkdir {}", d.display()), std::fs::create_dir(&d))?;
        }
    }
    // New bytes for every repetition: see `fresh_seed`.
    let salt = fresh_seed();
    let t = Instant::now();
    let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per);
                    for i in (w * per)..((w + 1) * per).min(sizes.uploads) {
                        bound.check()?;
                        let data = content(salt ^ i as u64, len);
                        lat.push(upload(&upload_path(dir, spread, w, i), &data)?);
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
        let path = upload_path(dir, spread, i / per, i);
        let got = io(format!("read {}", path.display()), std::fs::read(&path))?;
        if got != content(salt ^ i as u64, len) {
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
        // upload3_*, upload16_* (one directory), upload16d_* (spread).
        let (key, place) = if spread {
            (format!("upload{writers}d"), ", a directory each")
        } else {
            (format!("upload{writers}"), "")
        };
        report.add(
            &format!("{key}_files"),
            &format!("uploads, {writers} writers{place}, files/s"),
            "files/s",
            true,
            n / wall,
        );
        report.add(
            &format!("{key}_p99"),
            &format!("uploads, {writers} writers{place}, p99"),
            "ms",
            false,
            percentile(&lat, 0.99),
        );
    }
    Ok(())
}

pub(super) fn meta(
    dir: &Path,
    sizes: &Sizes,
    bound: &Bound,
    report: &mut Report,
) -> Result<(), String> {
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

pub(super) fn ls_prepare(dir: &Path, sizes: &Sizes, bound: &Bound) -> Result<PathBuf, String> {
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

pub(super) fn ls(dir: &Path, bound: &Bound, report: &mut Report) -> Result<(), String> {
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
