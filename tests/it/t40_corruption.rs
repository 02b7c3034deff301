//! A chunk file corrupted on disk is detected on read, never returned,
//! quarantined, and fetched again from a peer.

use std::time::Duration;

use quizfs_proto::{ChunkHash, ROOT_INO};
use quizfs_tests::{Cluster, Mount, chunk_hashes, pattern, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_chunk_is_never_served_and_is_healed() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client().await;
    let data = pattern(11, 300 * 1024);
    let attr = c.create_file(ROOT_INO, b"photo.jpg", &data).await.unwrap();
    let hash = chunk_hashes(&c, attr.ino).await[0];
    let victim = 1;
    let path = cluster.chunk_path(victim, &hash);
    wait_until(Duration::from_secs(20), "the chunk on nas2", || async {
        if cluster.has_good_chunk(victim, &hash) {
            Ok(())
        } else {
            Err("absent".into())
        }
    })
    .await;
    // Flip bytes in the middle of the stored chunk.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[1000..1010] {
        *b ^= 0xff;
    }
    std::fs::write(&path, &bytes).unwrap();

    let direct = c.get_chunk_from(&cluster.addr(victim), hash).await;
    assert!(direct.is_err(), "the corrupt copy must not be returned");
    // Reads through the client still succeed, from a good replica.
    for _ in 0..6 {
        assert!(c.read_file(attr.ino).await.unwrap() == data);
    }
    let quarantined = std::fs::read_dir(cluster.dir(victim).join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1);
    wait_until(
        Duration::from_secs(20),
        "the healer to restore the chunk on nas2",
        || async {
            if cluster.has_good_chunk(victim, &hash) {
                Ok(())
            } else {
                Err("still missing or corrupt".into())
            }
        },
    )
    .await;
    assert!(c.get_chunk_from(&cluster.addr(victim), hash).await.unwrap() == data);
}

/// Waits until node `i` holds every one of `hashes`, intact.
async fn wait_good_chunks(cluster: &Cluster, i: usize, hashes: &[ChunkHash], what: &str) {
    wait_until(Duration::from_secs(20), what, || async {
        if hashes.iter().all(|h| cluster.has_good_chunk(i, h)) {
            Ok(())
        } else {
            Err("missing or corrupt".into())
        }
    })
    .await;
}

/// Reads `len` bytes at `off` of a file with O_DIRECT, so they come from the
/// mount and not the kernel's page cache.
fn read_direct(path: &std::path::Path, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap();
    let mut raw = vec![0u8; len + 4096];
    let at = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[at..at + len];
    f.read_exact_at(buf, off).unwrap();
    buf.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_reads_are_verified_and_a_corrupt_group_is_never_served() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client().await;
    // Two chunks: 4 MiB and 100 KiB (both longer than one 16 KiB group).
    let mib4 = quizfs_proto::CHUNK_SIZE;
    let data = pattern(12, mib4 + 100 * 1024);
    let attr = c.create_file(ROOT_INO, b"big.bin", &data).await.unwrap();
    let hashes = chunk_hashes(&c, attr.ino).await;
    let (h0, h1) = (hashes[0], hashes[1]);
    for i in 0..3 {
        wait_good_chunks(&cluster, i, &[h0, h1], "every chunk on every node").await;
    }
    // Every node serves verified ranges of the 4 MiB chunk: one group, a
    // range across groups, the last bytes.
    for i in 0..3 {
        for (from, to) in [(8192, 12288), (16380, 40000), (mib4 - 4096, mib4)] {
            let (start, got) = c
                .get_range_from(&cluster.addr(i), h0, from as u64, to as u64)
                .await
                .unwrap();
            let start = start as usize;
            assert!(start <= from && start + got.len() >= to);
            assert!(
                got == data[start..start + got.len()],
                "node {i} [{from}, {to})"
            );
        }
    }
    // Random O_DIRECT reads through a mount come back byte for byte, from
    // ranges (no fallback to whole chunks logged).
    let m = Mount::new(&cluster, 0, "").await;
    let path = m.join("big.bin");
    let mut x = 0x9E37_79B9u64;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let off = (x % (mib4 as u64 / 4096)) * 4096;
        let got = read_direct(&path, off, 4096);
        assert!(
            got == data[off as usize..off as usize + 4096],
            "offset {off}"
        );
    }
    let log = m.log_tail(100_000);
    assert!(!log.contains("range read failed"), "{log}");

    // Corrupt one group of each chunk on nas2: h0's outboard is cached
    // there (the group check catches it), h1's is not (the whole-chunk check
    // that makes the outboard catches it).
    let victim = 1;
    for (hash, at) in [(h0, 2 * 1024 * 1024 + 100), (h1, 50 * 1024)] {
        let p = cluster.chunk_path(victim, &hash);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[at] ^= 0x5a;
        std::fs::write(&p, &bytes).unwrap();
    }
    let a = c
        .get_range_from(&cluster.addr(victim), h0, 2 << 20, (2 << 20) + 4096)
        .await;
    assert!(a.is_err(), "a corrupt group must not be served");
    let b = c
        .get_range_from(&cluster.addr(victim), h1, 49152, 53248)
        .await;
    assert!(b.is_err(), "a range of a corrupt chunk must not be served");
    let quarantined = std::fs::read_dir(cluster.dir(victim).join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 2);
    // The mount still reads the right bytes there, and the healer restores
    // both chunks on nas2.
    for off in [2 << 20, mib4 + 49152] {
        for _ in 0..6 {
            assert!(read_direct(&path, off as u64, 4096) == data[off..off + 4096]);
        }
    }
    wait_good_chunks(
        &cluster,
        victim,
        &[h0, h1],
        "the healer to restore both chunks",
    )
    .await;
    let (start, got) = c
        .get_range_from(&cluster.addr(victim), h0, 2 << 20, (2 << 20) + 4096)
        .await
        .unwrap();
    assert!(got == data[start as usize..start as usize + got.len()]);
}
