//! A full disk: every node's data directory is a small tmpfs. Writing
//! through a mount until the nodes refuse gives the writer ENOSPC; the
//! nodes stay up, every file written before reads back byte for byte, and
//! once files are deleted (and their chunks collected) writes work again.
//! `df` on a mount shows the fullest node's space less the reserve, so a
//! node filling up shows before writes fail.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use quizfs_tests::{Cluster, Mount, pattern, wait_until};

/// Creates `path` with `data` and fsyncs it: the error of whichever step
/// failed.
fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_enospc_keeps_reads_and_recovers() {
    let mut cluster = Cluster::start_with_small_disks(
        3,
        &[
            "--reserve-mib",
            "8",
            "--gc-grace-secs",
            "1",
            "--gc-interval-secs",
            "1",
        ],
        48,
    )
    .await;
    let m = Mount::new(&cluster, 0, "").await;
    let kept: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("keep-{i}.jpg"), pattern(i, 300_000)))
        .collect();
    for (name, data) in &kept {
        write_synced(&m.join(name), data).unwrap();
    }

    // Fill the disks with 4 MiB files until the cluster refuses.
    let mut filled = Vec::new();
    let err = loop {
        let i = filled.len() as u64;
        assert!(i < 20, "48 MiB disks took {i} files of 4 MiB");
        let name = format!("fill-{i}.bin");
        let data = pattern(100 + i, 4 << 20);
        let path = m.join(&name);
        let started = std::time::Instant::now();
        match tokio::task::spawn_blocking(move || write_synced(&path, &data))
            .await
            .unwrap()
        {
            Ok(()) => filled.push(name),
            Err(e) => {
                println!(
                    "refused after {} files of 4 MiB, in {:?}: {e}",
                    filled.len(),
                    started.elapsed()
                );
                break e;
            }
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(!filled.is_empty(), "not even one file fitted");

    // Every node is still up and still serves reads, byte for byte.
    for (i, n) in cluster.nodes.iter_mut().enumerate() {
        let exited = n.child.as_mut().unwrap().try_wait().unwrap();
        assert!(exited.is_none(), "nas{} exited: {exited:?}", i + 1);
    }
    for (name, data) in &kept {
        assert_eq!(&std::fs::read(m.join(name)).unwrap(), data, "{name}");
    }
    for (i, name) in filled.iter().enumerate() {
        let back = std::fs::read(m.join(name)).unwrap();
        assert!(back == pattern(100 + i as u64, 4 << 20), "{name} changed");
    }
    assert!(cluster.leader().await.is_some());

    // Space comes back once the files are deleted and their chunks are
    // collected: a write then succeeds and reads back.
    for name in &filled {
        std::fs::remove_file(m.join(name)).unwrap();
    }
    let after = pattern(999, 4 << 20);
    let path = m.join("after.bin");
    wait_until(Duration::from_secs(30), "a write to succeed again", || {
        let (path, after) = (path.clone(), after.clone());
        async move {
            tokio::task::spawn_blocking(move || write_synced(&path, &after))
                .await
                .unwrap()
                .map_err(|e| e.to_string())
        }
    })
    .await;
    assert!(std::fs::read(&path).unwrap() == after);
    for (name, data) in &kept {
        assert_eq!(&std::fs::read(m.join(name)).unwrap(), data, "{name}");
    }
}

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn df_on_a_mount_shows_the_fullest_node_less_the_reserve() {
    let reserve = 8 * MIB;
    let cluster = Cluster::start_with_small_disks(3, &["--reserve-mib", "8"], 64).await;
    let m = Mount::new(&cluster, 0, "").await;
    // What df must say: the smallest of every node's size and free space,
    // less the reserve, as each node's disk is now.
    let expected = || {
        (0..3)
            .map(|i| storaged::disk::space(cluster.dir(i)))
            .map(|(t, f)| (t - reserve, f.saturating_sub(reserve)))
            .reduce(|(t, f), (t2, f2)| (t.min(t2), f.min(f2)))
            .unwrap()
    };
    let df = || storaged::disk::space(&m.path);
    // Within 1 MiB: the nodes' own files (the Raft log, sled) grow a little.
    let close = |a: u64, b: u64| a.abs_diff(b) <= MIB;
    let (total, free) = df();
    println!("df: {} MiB total, {} MiB free", total / MIB, free / MIB);
    assert_eq!(total, 56 * MIB, "64 MiB disks less the 8 MiB reserve");
    assert!(close(free, expected().1), "{free} vs {:?}", expected());

    // nas2's disk fills up with something else: 40 MiB of it.
    let ballast = cluster.dir(1).join("ballast");
    std::fs::write(&ballast, vec![7u8; 40 * MIB as usize]).unwrap();
    let (_, nas2_free) = storaged::disk::space(cluster.dir(1));
    let (_, nas1_free) = storaged::disk::space(cluster.dir(0));
    assert!(nas1_free > nas2_free + 30 * MIB);
    let shown = wait_until(
        Duration::from_secs(5),
        "df to show nas2's free space",
        || async {
            let (_, free) = df();
            let want = expected().1;
            if close(free, want) {
                Ok(free)
            } else {
                Err(format!("df {free}, nodes' smallest {want}"))
            }
        },
    )
    .await;
    println!(
        "with nas2 nearly full, df: {} MiB free (nas1 has {} MiB, nas2 {} MiB before the reserve)",
        shown / MIB,
        nas1_free / MIB,
        nas2_free / MIB
    );
    assert!(shown < 20 * MIB, "{shown}");

    // Freed again, df follows.
    std::fs::remove_file(&ballast).unwrap();
    wait_until(
        Duration::from_secs(5),
        "df to show the space freed",
        || async {
            let (_, free) = df();
            if free > shown + 30 * MIB && close(free, expected().1) {
                Ok(())
            } else {
                Err(format!("df {free}, nodes' smallest {}", expected().1))
            }
        },
    )
    .await;
}
