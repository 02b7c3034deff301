//! Crash consistency. While a mount overwrites a 12 MiB file (fsync every
//! 3 MiB) and uploads new files (one write, then close), the leader node is
//! SIGKILLed, and then the client process itself. On a fresh mount:
//! every upload whose close() returned is complete; every other upload is
//! absent, empty or complete; in the overwritten file every byte up to the
//! last fsync that returned is new, and every other byte is either its old
//! content or what the application wrote at that offset, never anything
//! else. And a SQLite database written through the same two crashes opens,
//! passes `integrity_check` and holds every transaction whose COMMIT
//! returned.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quizfs_bench::load::content;
use quizfs_tests::{Cluster, Mount, signal, wait_until};

const BIG: usize = 12 << 20;
const PIECE: usize = 256 << 10;
const UPLOAD: usize = 300 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_write_leaves_old_or_new_bytes_and_every_closed_file() {
    let mut cluster = Cluster::start(3, &[]).await;
    let servers = format!("backup_servers={},{}", cluster.addr(1), cluster.addr(2));
    let mount = Mount::new(&cluster, 0, &servers).await;
    let (old, new) = (content(1, BIG), content(2, BIG));
    std::fs::write(mount.join("big.bin"), &old).expect("write the old content");

    let stop = Arc::new(AtomicBool::new(false));
    let synced = Arc::new(AtomicU64::new(0));
    let closed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let overwrite = {
        let (path, new, stop, synced) = (
            mount.join("big.bin"),
            new.clone(),
            stop.clone(),
            synced.clone(),
        );
        std::thread::spawn(move || {
            let mut f = OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open for overwrite");
            f.seek(SeekFrom::Start(0)).expect("seek");
            for (i, piece) in new.chunks(PIECE).enumerate() {
                if stop.load(Ordering::Relaxed) || f.write_all(piece).is_err() {
                    return;
                }
                let end = ((i + 1) * PIECE) as u64;
                if end.is_multiple_of(3 << 20) {
                    if f.sync_all().is_err() {
                        return;
                    }
                    synced.store(end, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };
    let uploads = {
        let (dir, stop, closed) = (mount.path.clone(), stop.clone(), closed.clone());
        std::thread::spawn(move || {
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let path = dir.join(format!("new-{n:04}.jpg"));
                let Ok(mut f) = std::fs::File::create(&path) else {
                    return;
                };
                if f.write_all(&content(100 + n, UPLOAD)).is_err() {
                    return;
                }
                // An upload counts as closed once fsync has returned.
                if f.sync_all().is_err() {
                    return;
                }
                drop(f);
                closed.lock().unwrap().push(n);
            }
        })
    };

    // The leader dies while both write.
    wait_until(
        Duration::from_secs(30),
        "the overwrite to pass its first fsync",
        || {
            let s = synced.load(Ordering::Relaxed);
            async move {
                if s > 0 {
                    Ok(())
                } else {
                    Err("no fsync yet".to_string())
                }
            }
        },
    )
    .await;
    let leader = cluster.leader().await.expect("a leader");
    println!("--- SIGKILL of the leader nas{} mid-write", leader + 1);
    cluster.kill(leader);
    wait_until(
        Duration::from_secs(30),
        "the overwrite to fsync again after the node died",
        || {
            let s = synced.load(Ordering::Relaxed);
            async move {
                if s >= 6 << 20 {
                    Ok(())
                } else {
                    Err(format!("synced to {s}"))
                }
            }
        },
    )
    .await;
    // Then the client dies, mid-piece.
    println!(
        "--- SIGKILL of the client mid-write (synced to {} MiB)",
        synced.load(Ordering::Relaxed) >> 20
    );
    signal(mount.pid(), libc::SIGKILL);
    stop.store(true, Ordering::Relaxed);
    overwrite.join().expect("overwrite thread");
    uploads.join().expect("upload thread");
    let synced = synced.load(Ordering::Relaxed) as usize;
    let closed = closed.lock().unwrap().clone();
    drop(mount);

    cluster.spawn(leader);
    let check = Mount::new(&cluster, (leader + 1) % 3, "").await;
    // Uploads: closed ones complete; others absent, empty or complete.
    let mut present = 0;
    for entry in std::fs::read_dir(&check.path).expect("ls") {
        let name = entry
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        let Some(n) = name
            .strip_prefix("new-")
            .and_then(|s| s.strip_suffix(".jpg"))
        else {
            continue;
        };
        let n: u64 = n.parse().expect("upload number");
        let data = std::fs::read(check.join(&name)).expect("read an upload");
        present += 1;
        assert!(
            data.is_empty() || data == content(100 + n, UPLOAD),
            "{name}: {} bytes, neither empty nor complete",
            data.len()
        );
        if closed.contains(&n) {
            assert!(!data.is_empty(), "{name} was closed but is empty");
        }
    }
    for n in &closed {
        assert!(
            check.join(&format!("new-{n:04}.jpg")).exists(),
            "new-{n:04}.jpg was closed but is gone"
        );
    }
    // The overwritten file.
    let f = std::fs::File::open(check.join("big.bin")).expect("open big.bin");
    let mut back = vec![0u8; BIG];
    let got = f.read_at(&mut back, 0).expect("read big.bin");
    let len = f.metadata().expect("stat").len() as usize;
    assert_eq!(len, BIG, "the size is the old and the new one");
    let mut read = got;
    while read < BIG {
        let n = f.read_at(&mut back[read..], read as u64).expect("read on");
        assert!(n > 0, "short file");
        read += n;
    }
    assert!(
        back[..synced] == new[..synced],
        "bytes up to the last fsync ({synced}) are new"
    );
    let bad = (synced..BIG).find(|&i| back[i] != old[i] && back[i] != new[i]);
    assert!(bad.is_none(), "byte {bad:?} is neither old nor new");
    let new_bytes = (0..BIG)
        .filter(|&i| back[i] == new[i] && old[i] != new[i])
        .count();
    println!(
        "uploads closed {} present {present}; big.bin: synced to {synced}, {new_bytes} new bytes, the rest old",
        closed.len()
    );
}

/// A database written through the crash of the leader and then of the
/// client (the mount process SIGKILLed, as a power cut of the web server
/// loses it): on a fresh mount it passes `integrity_check` and holds every
/// transaction whose COMMIT returned. The dead client's SQLite locks are
/// held by its session until the leader expires it: the fresh mount's
/// check waits for them (SQLite's busy timeout), as the other web servers
/// would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_survives_the_crash_of_the_leader_and_the_client() {
    use std::io::BufRead;
    let mut cluster = Cluster::start(3, &["--session-timeout", "3s"]).await;
    let servers = format!("backup_servers={},{}", cluster.addr(1), cluster.addr(2));
    let mount = Mount::new(&cluster, 0, &servers).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("posix/sqlite_crash.py");
    let db = mount.join("crash.db");
    let mut writer = std::process::Command::new("python3")
        .arg(&script)
        .arg("write")
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the writer");
    let committed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let reader = {
        let out = writer.stdout.take().expect("stdout");
        let committed = committed.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(n) = line.trim().parse() {
                    committed.lock().unwrap().push(n);
                }
            }
        })
    };
    let count = |n: usize| {
        let committed = committed.clone();
        move || {
            let c = committed.lock().unwrap().len();
            async move {
                if c >= n {
                    Ok(())
                } else {
                    Err(format!("{c} committed"))
                }
            }
        }
    };
    wait_until(Duration::from_secs(60), "20 transactions", count(20)).await;
    let leader = cluster.leader().await.expect("a leader");
    println!(
        "--- SIGKILL of the leader nas{} mid-transaction",
        leader + 1
    );
    cluster.kill(leader);
    let after = committed.lock().unwrap().len() + 20;
    wait_until(
        Duration::from_secs(60),
        "20 more after the kill",
        count(after),
    )
    .await;
    println!("--- SIGKILL of the client mid-transaction");
    signal(mount.pid(), libc::SIGKILL);
    let _ = writer.kill();
    let _ = writer.wait();
    reader.join().expect("reader thread");
    let committed = committed.lock().unwrap().clone();
    drop(mount);
    cluster.spawn(leader);
    let check = Mount::new(&cluster, (leader + 1) % 3, "").await;
    let mut args: Vec<String> = vec![
        "verify".into(),
        check.join("crash.db").to_string_lossy().into_owned(),
    ];
    args.extend(committed.iter().map(u64::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = quizfs_tests::run_script("sqlite_crash.py", &args);
    print!("{out}");
    assert!(out.contains("integrity ok"), "{out}");
}
