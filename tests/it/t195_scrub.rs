//! Scrub: every node re-reads every chunk it holds on a timer. A byte
//! flipped on one node's disk is found within one pass, quarantined,
//! fetched again from a peer and counted in the metrics; `quizfs scrub
//! start --wait` runs a pass on every node now and `status` reports what
//! each found.

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use quizfs_bench::nodestats::http_get;
use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, chunk_hashes, pattern, quizfs_cli as quizfs, wait_until};

/// Seconds between the starts of two passes in this test.
const INTERVAL: u64 = 4;

/// The value of the unlabelled sample `name` on node `i`.
fn metric(cluster: &Cluster, i: usize, name: &str) -> f64 {
    let (code, body) = http_get(&cluster.metrics_addr(i), "/metrics").expect("metrics");
    assert_eq!(code, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} on nas{}", i + 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_finds_a_flipped_byte_within_one_pass_and_heals_it() {
    let interval = INTERVAL.to_string();
    let cluster = Cluster::start(3, &["--scrub-interval", &interval]).await;
    let c = cluster.client().await;
    let mut files = Vec::new();
    let mut hashes = Vec::new();
    for n in 0..8u64 {
        let data = pattern(500 + n, 200 * 1024 + n as usize * 1000);
        let attr = c
            .create_file(ROOT_INO, format!("img{n}.jpg").as_bytes(), &data)
            .await
            .unwrap();
        hashes.extend(chunk_hashes(&c, attr.ino).await);
        files.push((attr.ino, data));
    }
    let chunks = hashes.len() as f64;
    // Every node scrubs every chunk by itself, finding nothing.
    wait_until(
        Duration::from_secs(6 * INTERVAL),
        "every node to scrub every chunk once",
        || async {
            let seen: Vec<f64> = (0..3)
                .map(|i| metric(&cluster, i, "quizfs_scrub_checked_chunks_total"))
                .collect();
            if seen.iter().all(|n| *n >= chunks) {
                Ok(())
            } else {
                Err(format!("checked so far {seen:?} of {chunks}"))
            }
        },
    )
    .await;
    for i in 0..3 {
        assert_eq!(
            metric(&cluster, i, "quizfs_scrub_corrupt_chunks_total"),
            0.0
        );
    }

    // One byte flipped in place on nas2's disk, in a chunk nobody reads.
    let victim = 1;
    let hash = hashes[3];
    let path = cluster.chunk_path(victim, &hash);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&path)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, 4321).unwrap();
    f.write_all_at(&[byte[0] ^ 0x01], 4321).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let flipped = Instant::now();
    // Found within one pass: the next starts within INTERVAL, and a pass
    // over these few chunks takes well under a second.
    wait_until(
        Duration::from_secs(2 * INTERVAL + 5),
        "nas2's scrub to find the flipped byte",
        || async {
            match metric(&cluster, victim, "quizfs_scrub_corrupt_chunks_total") {
                n if n >= 1.0 => Ok(n),
                _ => Err("not found yet".to_string()),
            }
        },
    )
    .await;
    println!(
        "scrub found the flipped byte {:.1} s after it was flipped (passes every {INTERVAL} s)",
        flipped.elapsed().as_secs_f64()
    );
    let quarantined = std::fs::read_dir(cluster.dir(victim).join("quarantine"))
        .unwrap()
        .count();
    assert_eq!(quarantined, 1, "the corrupt copy is kept aside");
    wait_until(
        Duration::from_secs(20),
        "the healer to fetch the chunk again",
        || async {
            if cluster.has_good_chunk(victim, &hash) {
                Ok(())
            } else {
                Err("missing or corrupt".to_string())
            }
        },
    )
    .await;
    assert!(metric(&cluster, victim, "quizfs_healed_bytes") > 0.0);
    assert_eq!(
        metric(&cluster, victim, "quizfs_scrub_corrupt_chunks_total"),
        1.0,
        "counted once"
    );
    for i in [0, 2] {
        assert_eq!(
            metric(&cluster, i, "quizfs_scrub_corrupt_chunks_total"),
            0.0
        );
    }
    for (ino, data) in &files {
        assert!(c.read_file(*ino).await.unwrap() == *data);
    }

    // A pass on demand: every node finishes one more, all clean now; the
    // totals keep the one corrupt chunk.
    let (code, out) = quizfs(
        &cluster,
        &["scrub", "start", &cluster.addr(0), "--wait", "30"],
    );
    println!("{out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("found 0 corrupt, 0 unreadable").count(),
        3,
        "{out}"
    );
    let totals: Vec<&str> = out.lines().filter(|l| l.contains("since start")).collect();
    assert_eq!(totals.len(), 3, "{out}");
    assert!(totals[victim].contains(", 1 corrupt,"), "{out}");
    let (code, out) = quizfs(&cluster, &["scrub", "status", &cluster.addr(2)]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("last pass finished").count(), 3, "{out}");
}
