//! `oplat`: what each operation costs through a mount, one at a time, so
//! that the steps of an upload and of a metadata write can be told apart:
//! a stat of a missing name (a negative lookup), an exclusive create, a
//! create as web applications open uploads (`O_CREAT|O_TRUNC`), a chmod;
//! then uploads of 100 KiB with open, write and close timed apart;
//! then stat, chmod, rename and unlink of those files, and an
//! uncontended `fcntl` lock and unlock of each (the file open already).

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::files::open_upload;
use super::{io, rank};
use crate::load::{close, content};

/// The latencies of one operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpLatency {
    /// The operation, e.g. "upload: close".
    pub op: String,
    /// Each call's latency, ms, in the order made.
    pub samples_ms: Vec<f64>,
}

impl OpLatency {
    /// The `p` quantile (0..=1) of the samples, ms.
    pub fn quantile(&self, p: f64) -> f64 {
        let mut s = self.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        rank(s.len(), p).map_or(f64::NAN, |i| s[i])
    }
}

/// Times `f`, adding its latency to `row`.
fn timed<T>(row: &mut Vec<f64>, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let t = Instant::now();
    let r = f()?;
    row.push(t.elapsed().as_secs_f64() * 1e3);
    Ok(r)
}

/// Runs every operation `n` times in a fresh directory under `dir`, which
/// it removes at the end.
pub fn oplat(dir: &Path, n: usize) -> Result<Vec<OpLatency>, String> {
    let root = dir.join(format!("oplat-{}", quizfs_proto::now_ns() / 1_000_000));
    io(
        format!("mkdir {}", root.display()),
        std::fs::create_dir(&root),
    )?;
    let r = measure(&root, n);
    let _ = std::fs::remove_dir_all(&root);
    r
}

fn measure(d: &Path, n: usize) -> Result<Vec<OpLatency>, String> {
    let mode = |m| Permissions::from_mode(m);
    let create = |p: &Path| {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map_err(|e| format!("create {}: {e}", p.display()))
    };
    let mut rows: Vec<(&str, Vec<f64>)> = [
        "negative lookup",
        "create (open O_EXCL)",
        "create (O_CREAT|O_TRUNC)",
        "chmod",
        "upload: open",
        "upload: write 100 KiB",
        "upload: close",
        "upload: total",
        "stat",
        "chmod (uploaded)",
        "rename",
        "unlink",
        "lock (whole file)",
        "unlock",
    ]
    .into_iter()
    .map(|op| (op, Vec::with_capacity(n)))
    .collect();
    for i in 0..n {
        let p = d.join(format!("n{i}"));
        timed(&mut rows[0].1, || match std::fs::metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("stat {}: {e}", p.display())),
            Ok(_) => Err(format!("{} exists", p.display())),
        })?;
        let f = timed(&mut rows[1].1, || create(&p))?;
        io("close", close(f))?;
        let m = d.join(format!("m{i}"));
        let f = timed(&mut rows[2].1, || io("create", open_upload(&m)))?;
        io("close", close(f))?;
        timed(&mut rows[3].1, || {
            io("chmod", std::fs::set_permissions(&p, mode(0o600)))
        })?;
    }
    // New bytes for every upload: see `fresh_seed`.
    let salt = crate::load::fresh_seed();
    for i in 0..n {
        let data = content(salt ^ i as u64, 100 * 1024);
        let p = d.join(format!("u{i}"));
        let t = Instant::now();
        let mut f = timed(&mut rows[4].1, || io("open", open_upload(&p)))?;
        timed(&mut rows[5].1, || io("write", f.write_all(&data)))?;
        timed(&mut rows[6].1, || io("close", close(f)))?;
        rows[7].1.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for i in 0..n {
        let p = d.join(format!("u{i}"));
        timed(&mut rows[8].1, || io("stat", std::fs::metadata(&p)))?;
    }
    for i in 0..n {
        let p = d.join(format!("u{i}"));
        timed(&mut rows[9].1, || {
            io("chmod", std::fs::set_permissions(&p, mode(0o600)))
        })?;
    }
    for i in 0..n {
        let p = d.join(format!("u{i}"));
        let f = io("open", OpenOptions::new().read(true).write(true).open(&p))?;
        timed(&mut rows[12].1, || io("lock", set_lock(&f, libc::F_WRLCK)))?;
        timed(&mut rows[13].1, || {
            io("unlock", set_lock(&f, libc::F_UNLCK))
        })?;
        io("close", close(f))?;
    }
    for i in 0..n {
        let (from, to) = (d.join(format!("u{i}")), d.join(format!("r{i}")));
        timed(&mut rows[10].1, || {
            io("rename", std::fs::rename(&from, &to))
        })?;
    }
    for i in 0..n {
        let p = d.join(format!("r{i}"));
        timed(&mut rows[11].1, || io("unlink", std::fs::remove_file(&p)))?;
    }
    Ok(rows
        .into_iter()
        .map(|(op, samples_ms)| OpLatency {
            op: op.into(),
            samples_ms,
        })
        .collect())
}

/// `fcntl(F_SETLK)` of the whole of `f` to `typ` (F_WRLCK, F_UNLCK).
fn set_lock(f: &std::fs::File, typ: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed `struct flock` is valid (whole file from offset 0).
    #[allow(unsafe_code)]
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = typ as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on an open descriptor with a valid `struct flock`.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &l) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The latencies as a table: p50, p90, p99 and max, ms.
pub fn table(rows: &[OpLatency]) -> String {
    let mut out = format!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}\n",
        "operation (ms)", "p50", "p90", "p99", "max"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<24} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            r.op,
            r.quantile(0.5),
            r.quantile(0.9),
            r.quantile(0.99),
            r.quantile(1.0)
        ));
    }
    // Uploads per second from the uploads' own count and total time.
    if let Some(r) = rows.iter().find(|r| r.op == "upload: total") {
        let total_ms: f64 = r.samples_ms.iter().sum();
        let per_s = r.samples_ms.len() as f64 / total_ms * 1e3;
        out.push_str(&format!("uploads/s, one at a time: {per_s:.1}\n"));
    }
    out
}
