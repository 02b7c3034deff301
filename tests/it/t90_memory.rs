//! 1,000 small files and one 200 MiB file, streamed: the peak memory of each
//! daemon and of the client stays under 256 MiB.

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, HashSink, PatternReader, pattern, peak_rss_kib};

const LIMIT_KIB: u64 = 256 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_large_and_many_files() {
    let cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    let dir = client.mkdir(ROOT_INO, b"many", 0o755).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8u64 {
        let c = client.clone();
        tasks.spawn(async move {
            for i in (w..1000).step_by(8) {
                c.create_file(
                    dir.ino,
                    format!("img{i:04}.jpg").as_bytes(),
                    &pattern(i, 4096),
                )
                .await
                .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let size = 200u64 * 1024 * 1024;
    let big = client
        .create(ROOT_INO, b"big.iso", 0o644, true)
        .await
        .unwrap();
    let mut src = PatternReader::new(99, size);
    let started = std::time::Instant::now();
    let attr = client.write_from(big.ino, &mut src).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!("write_200mib_mib_s: {:.1}", 200.0 / secs);
    assert_eq!(attr.size, size);
    let mut sink = HashSink::default();
    let read = client.read_to(big.ino, &mut sink).await.unwrap();
    assert_eq!(read, size);
    assert_eq!(
        sink.hasher.finalize(),
        src.hash(),
        "200 MiB file reads back identical"
    );
    assert_eq!(client.readdir_all(dir.ino).await.unwrap().len(), 1000);
    for (i, n) in cluster.nodes.iter().enumerate() {
        let kib = peak_rss_kib(n.pid());
        println!("peak_rss_nas{}_mib: {}", i + 1, kib / 1024);
        assert!(
            kib > 0 && kib < LIMIT_KIB,
            "nas{} peaked at {kib} KiB",
            i + 1
        );
    }
    let me = peak_rss_kib(std::process::id());
    println!("peak_rss_client_mib: {}", me / 1024);
    assert!(me < LIMIT_KIB, "the client peaked at {me} KiB");
}
