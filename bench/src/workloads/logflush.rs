//! `logflush`: what a durable append costs on a disk, the way a Raft log
//! makes one (`pwrite` of a record, then `fdatasync`), into a file that
//! grows with every append against one whose blocks were written with
//! zeros first (how `storaged` starts its log segments). On ext4 the first
//! commits the journal at every flush, for the file's new size; the second
//! writes the data alone.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use super::oplat::OpLatency;

/// Appends `n` records of `size` bytes to a new file in `dir`, each made
/// durable before the next; `zeros` writes the file's blocks first.
fn appends(dir: &Path, n: usize, size: usize, zeros: bool) -> Result<Vec<f64>, String> {
    let path = dir.join(format!("logflush-{}.tmp", std::process::id()));
    let ctx = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let file: File = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| ctx("create", e))?;
    let run = || -> Result<Vec<f64>, String> {
        let total = (n * size) as u64;
        if zeros {
            let block = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < total {
                file.write_all_at(&block, off)
                    .map_err(|e| ctx("write", e))?;
                off += block.len() as u64;
            }
            file.sync_all().map_err(|e| ctx("sync", e))?;
        }
        let record: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8).collect();
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let t = Instant::now();
            file.write_all_at(&record, (i * size) as u64)
                .map_err(|e| ctx("write", e))?;
            file.sync_data().map_err(|e| ctx("fdatasync", e))?;
            out.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(out)
    };
    let r = run();
    let _ = std::fs::remove_file(&path);
    r
}

/// Both kinds of append, `n` each of `size` bytes, in `dir`, alternating
/// in rounds so that a disk's changing load falls on both alike.
pub fn logflush(dir: &Path, n: usize, size: usize) -> Result<Vec<OpLatency>, String> {
    let (mut grown, mut zeroed) = (Vec::new(), Vec::new());
    let per = n.div_ceil(3).max(1);
    while grown.len() < n {
        let k = per.min(n - grown.len());
        grown.extend(appends(dir, k, size, false)?);
        zeroed.extend(appends(dir, k, size, true)?);
    }
    Ok(vec![
        OpLatency {
            op: format!("append {size} B, file grows"),
            samples_ms: grown,
        },
        OpLatency {
            op: format!("append {size} B, into zeros"),
            samples_ms: zeroed,
        },
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_are_timed_as_often_as_asked_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let rows = logflush(dir.path(), 7, 3000).unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(r.samples_ms.len(), 7, "{}", r.op);
            assert!(r.samples_ms.iter().all(|&ms| ms > 0.0), "{r:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(logflush(&dir.path().join("missing"), 1, 10).is_err());
    }
}
