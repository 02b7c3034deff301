//! `random`: 4 KiB reads and writes at random offsets of one file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Bound, MIB, Report, Sizes, drop_caches, io};
use crate::load::{close, content};

pub(super) fn random_prepare(dir: &Path, sizes: &Sizes, bound: &Bound) -> Result<PathBuf, String> {
    let path = dir.join("random.bin");
    let mut f = io("create random.bin", File::create(&path))?;
    let mut block = content(7, MIB);
    let salt = crate::load::fresh_seed();
    for i in 0..sizes.rand_mib {
        bound.check()?;
        // Every block differs, so no system can store the file as one
        // deduplicated chunk and serve every read from it.
        block[..8].copy_from_slice(&(salt ^ i).to_le_bytes());
        io("write random.bin", f.write_all(&block))?;
    }
    io("fsync random.bin", f.sync_all())?;
    io("close random.bin", close(f))?;
    Ok(path)
}

pub(super) fn random(
    path: &Path,
    sizes: &Sizes,
    bound: &Bound,
    report: &mut Report,
) -> Result<(), String> {
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
