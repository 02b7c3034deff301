//! File content as extents, through real mounts: the random-operation
//! exerciser with a model (two descriptors, two processes, a second
//! mount), the recorded sequence that lost data, SQLite with concurrent
//! readers, shared extents and exact reference counts, writers that never
//! wait on a timer for the write budget, and the metadata format check.

use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use quizfs_tests::{Cluster, Mount, bin, chunk_hashes, pattern, run_script, wait_until};

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Runs the exerciser with `args` off the runtime and prints its output.
async fn fsx(args: Vec<String>) -> String {
    let out = blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_script("fsx.py", &args)
    })
    .await;
    print!("{out}");
    out
}

/// CI runs a bounded number of operations; QUIZFS_FSX_OPS runs a soak and
/// QUIZFS_FSX_SEED replays a seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_match_the_model_across_handles_processes_and_mounts() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let ops = std::env::var("QUIZFS_FSX_OPS").unwrap_or_else(|_| "1500".into());
    let mut args = vec![
        s(&a.path),
        "--ops".into(),
        ops,
        "--other".into(),
        s(&b.path),
    ];
    if let Ok(seed) = std::env::var("QUIZFS_FSX_SEED") {
        args.extend(["--seed".into(), seed]);
    }
    let out = fsx(args).await;
    assert!(out.contains("operations ok"), "{out}");
    // Small writes into a full 8 MiB file: commits compact it while the
    // model checks every read (compaction under the exerciser).
    let small = "write=80,truncate=0,alloc=0,copy=1,punch=1,zero=1,mmap=1,fsync=3";
    let args = [
        &s(&a.path),
        "--ops",
        "4000",
        "--fill",
        "0x800000",
        "--max-size",
        "0x800000",
        "--max-op",
        "0x1000",
        "--mix",
        small,
        "--name",
        "small.bin",
        "--other",
        &s(&b.path),
    ];
    let out = fsx(args.iter().map(|x| x.to_string()).collect()).await;
    assert!(out.contains("4000 operations ok"), "{out}");
}

/// 3,000 random 4 KiB writes into an 8 MiB file (an fsync every 200)
/// would leave thousands of extents; compaction at each commit keeps every
/// 4 MiB window within its bound, and the content stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_file_is_compacted_and_reads_back() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let (pa, pb) = (a.path.clone(), b.path.clone());
    blocking(move || {
        let mut model = pattern(7, 8 << 20);
        std::fs::write(pa.join("frag.bin"), &model).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(pa.join("frag.bin"))
            .unwrap();
        let mut x = 0x9E37_79B9u64;
        for k in 0..3000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = x % ((8 << 20) - 4096);
            let piece = pattern(10_000 + k, 4096);
            f.write_all_at(&piece, off).unwrap();
            model[off as usize..off as usize + 4096].copy_from_slice(&piece);
            if k % 200 == 199 {
                f.sync_all().unwrap();
            }
        }
        drop(f);
        assert!(
            std::fs::read(pa.join("frag.bin")).unwrap() == model,
            "this mount"
        );
        assert!(
            std::fs::read(pb.join("frag.bin")).unwrap() == model,
            "the other mount"
        );
    })
    .await;
    let c = cluster.client().await;
    let frag = c.lookup(quizfs_proto::ROOT_INO, b"frag.bin").await.unwrap();
    let (_, extents) = c.layout(frag.ino).await.unwrap();
    println!("fragmented_file_extents: {}", extents.len());
    assert!(
        extents.len() <= 2 * quizfs::fs::files::COMPACT_WINDOW_EXTENTS,
        "{} extents in an 8 MiB file",
        extents.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_truncation_sequence_reads_back() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let ops = Path::new(env!("CARGO_MANIFEST_DIR")).join("posix/repro/truncate-across-chunks.ops");
    let out = fsx(vec![s(&a.path), "--replay".into(), s(&ops)]).await;
    assert!(out.contains("907 operations ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_with_readers_on_the_same_mount_stays_intact() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let (pa, pb) = (s(&a.path), s(&b.path));
    let out = blocking(move || {
        let mut out = run_script("sqlite_check.py", &[&pa, "wal", "2", "-", "300"]);
        out += &run_script("sqlite_check.py", &[&pa, "delete", "2", &pb, "300"]);
        out
    })
    .await;
    print!("{out}");
    assert!(out.contains("sqlite wal: 2 rounds ok"), "{out}");
    assert!(out.contains("sqlite delete: 2 rounds ok"), "{out}");
}

/// Chunks on one node's disk, by hash.
fn chunks_on_disk(cluster: &Cluster, i: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![cluster.dir(i).join("chunks")];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str()) {
                if name.len() == 64 {
                    out.push(name.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_extents_keep_reference_counts_exact() {
    let cluster = Cluster::start(3, &["--gc-grace-secs", "1", "--gc-interval-secs", "1"]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let b = Mount::new(&cluster, 1, "").await;
    let (pa, pb) = (a.path.clone(), b.path.clone());
    // A 24 MiB file, overwritten in small pieces across chunk boundaries,
    // copied whole (shared extents), then partly punched and overwritten.
    let expect = blocking(move || {
        let mut model = Vec::new();
        for i in 0..6u64 {
            model.extend_from_slice(&pattern(i, 4 << 20));
        }
        std::fs::write(pa.join("orig.bin"), &model).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(pa.join("orig.bin"))
            .unwrap();
        for k in 0..200u64 {
            let off = (k * 123_457) % (24 << 20);
            let piece = pattern(1000 + k, 10_000);
            f.write_all_at(&piece, off).unwrap();
            let end = (off as usize + piece.len()).min(model.len());
            model[off as usize..end].copy_from_slice(&piece[..end - off as usize]);
            if k % 50 == 0 {
                f.sync_all().unwrap();
            }
        }
        drop(f);
        let started = Instant::now();
        let src = std::fs::File::open(pa.join("orig.bin")).unwrap();
        let dst = std::fs::File::create(pa.join("copy.bin")).unwrap();
        let n = copy_range(&src, &dst, model.len());
        assert_eq!(n, model.len(), "copy_file_range copied everything");
        println!(
            "copy_file_range_24mib_ms: {}",
            started.elapsed().as_millis()
        );
        drop((src, dst));
        // The copy reads back byte for byte on the other mount.
        assert!(std::fs::read(pb.join("copy.bin")).unwrap() == model);
        model
    })
    .await;
    let c = cluster.client().await;
    let root = quizfs_proto::ROOT_INO;
    let orig = c.lookup(root, b"orig.bin").await.unwrap();
    let copy = c.lookup(root, b"copy.bin").await.unwrap();
    let mut orig_h = chunk_hashes(&c, orig.ino).await;
    let copy_h = chunk_hashes(&c, copy.ino).await;
    orig_h.sort();
    orig_h.dedup();
    let mut shared = copy_h.clone();
    shared.sort();
    shared.dedup();
    assert_eq!(orig_h, shared, "the copy shares every chunk and adds none");
    // The original goes; the copy keeps its chunks, the rest is collected.
    c.unlink(root, b"orig.bin").await.unwrap();
    let want: Vec<String> = shared.iter().map(|h| h.to_hex()).collect();
    wait_until(
        Duration::from_secs(60),
        "every node to hold exactly the copy's chunks",
        || async {
            for i in 0..3 {
                let on_disk = chunks_on_disk(&cluster, i);
                if on_disk != want {
                    return Err(format!(
                        "nas{} holds {} chunks, the copy references {}",
                        i + 1,
                        on_disk.len(),
                        want.len()
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
    let pb = b.path.clone();
    blocking(move || assert!(std::fs::read(pb.join("copy.bin")).unwrap() == expect)).await;
    // Removing the copy leaves no garbage.
    c.unlink(root, b"copy.bin").await.unwrap();
    wait_until(Duration::from_secs(60), "no chunk left", || async {
        let left: usize = (0..3).map(|i| chunks_on_disk(&cluster, i).len()).sum();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} chunks left"))
        }
    })
    .await;
}

fn copy_range(src: &std::fs::File, dst: &std::fs::File, len: usize) -> usize {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < len {
        let (mut off_in, mut off_out) = (done as i64, done as i64);
        // SAFETY: both descriptors are open for the call's duration and the
        // offsets point to live locals.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                len - done,
                0,
            )
        };
        assert!(
            n >= 0,
            "copy_file_range: {}",
            std::io::Error::last_os_error()
        );
        if n == 0 {
            break;
        }
        done += n as usize;
    }
    done
}

/// More files with unflushed writes than the write budget holds: every
/// write goes on once uploads give budget back, none waits on a timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_past_the_budget_wait_only_for_uploads() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "write_buffers=1").await;
    let p = a.path.clone();
    let (slowest, total) = blocking(move || {
        let files: Vec<std::fs::File> = (0..24)
            .map(|i| std::fs::File::create(p.join(format!("open{i}.bin"))).unwrap())
            .collect();
        let started = Instant::now();
        let mut slowest = Duration::ZERO;
        // 24 files x 16 x 64 KiB = 24 MiB against a 4 MiB budget.
        for round in 0..16u64 {
            for (i, mut f) in files.iter().enumerate() {
                let t = Instant::now();
                f.write_all(&pattern(round * 100 + i as u64, 64 << 10))
                    .unwrap();
                slowest = slowest.max(t.elapsed());
            }
        }
        for f in &files {
            f.sync_all().unwrap();
        }
        (slowest, started.elapsed())
    })
    .await;
    println!(
        "budget_writes_slowest_ms: {} total_ms: {}",
        slowest.as_millis(),
        total.as_millis()
    );
    assert!(
        slowest < Duration::from_secs(5),
        "a write waited {slowest:?}: on a timer, not on uploads"
    );
    let p = a.path.clone();
    blocking(move || {
        for i in 0..24u64 {
            let got = std::fs::read(p.join(format!("open{i}.bin"))).unwrap();
            let want: Vec<u8> = (0..16u64)
                .flat_map(|round| pattern(round * 100 + i, 64 << 10))
                .collect();
            assert!(got == want, "open{i}.bin differs");
        }
    })
    .await;
}

/// A data directory written by another metadata format is refused with
/// one line naming both versions.
#[test]
fn another_metadata_format_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("d");
    {
        let db = sled::open(dir.join("meta")).unwrap();
        db.open_tree("node")
            .unwrap()
            .insert(b"x", b"y".as_slice())
            .unwrap();
        db.flush().unwrap();
    }
    let mut child = Command::new(bin("storaged"))
        .args([
            "--insecure",
            "--peers",
            "127.0.0.21",
            "--listen",
            "127.0.0.21",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("storaged started on a data directory of another format");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    let err = err.trim();
    assert!(!status.success());
    assert!(
        err.contains("format version 1") && err.contains("reads versions 2 to 3"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// Every size-changing call past RLIMIT_FSIZE (pwrite, ftruncate,
/// fallocate, copy_file_range) gets EFBIG and SIGXFSZ and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_size_limit_holds_for_every_call() {
    let cluster = Cluster::start(3, &[]).await;
    let a = Mount::new(&cluster, 0, "").await;
    let path = s(&a.path);
    let out = blocking(move || run_script("fsize_limit.py", &[&path])).await;
    print!("{out}");
    assert!(out.contains("4 calls past RLIMIT_FSIZE"), "{out}");
}
