//! `seq`: one large file written and read back warm and cold.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Instant;

use super::{Bound, MIB, Report, Sizes, drop_caches, io};
use crate::load::{close, content};

pub(super) fn seq(
    dir: &Path,
    sizes: &Sizes,
    bound: &Bound,
    report: &mut Report,
) -> Result<(), String> {
    let path = dir.join("seq.bin");
    let block = content(sizes.seq_mib, MIB);
    let salt = crate::load::fresh_seed();
    let mib = sizes.seq_mib as f64;
    let t = Instant::now();
    let mut f = io("create seq.bin", File::create(&path))?;
    for i in 0..sizes.seq_mib {
        bound.check()?;
        // Vary the first bytes so no system can deduplicate the blocks,
        // within this run or with an earlier repetition's.
        let mut b = block.clone();
        b[..8].copy_from_slice(&(salt ^ i).to_le_bytes());
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
    for (key, temp) in [("seq_read_warm", "warm"), ("seq_read_cold", "cold")] {
        if temp == "cold" {
            drop_caches()?;
        }
        let figure = read(bound)?;
        let label = format!("seq read {} MiB, {temp}", sizes.seq_mib);
        report.add(key, &label, "MiB/s", true, figure);
    }
    io("remove seq.bin", std::fs::remove_file(&path))
}
