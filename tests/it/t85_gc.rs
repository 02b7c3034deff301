//! Chunks that no file references any more are deleted after the grace
//! period, on every node; referenced chunks stay.

use std::time::Duration;

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, chunk_hashes, pattern, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_chunks_are_collected_after_grace() {
    let cluster = Cluster::start(3, &["--gc-grace-secs", "1", "--gc-interval-secs", "1"]).await;
    let c = cluster.client().await;
    let keep = c
        .create_file(ROOT_INO, b"keep.jpg", &pattern(1, 50_000))
        .await
        .unwrap();
    let gone = c
        .create_file(ROOT_INO, b"gone.jpg", &pattern(2, 50_000))
        .await
        .unwrap();
    let keep_h = chunk_hashes(&c, keep.ino).await[0];
    let gone_h = chunk_hashes(&c, gone.ino).await[0];
    wait_until(
        Duration::from_secs(20),
        "both chunks on every node",
        || async {
            let ok = (0..3)
                .all(|i| cluster.has_good_chunk(i, &keep_h) && cluster.has_good_chunk(i, &gone_h));
            if ok { Ok(()) } else { Err("not yet".into()) }
        },
    )
    .await;
    c.unlink(ROOT_INO, b"gone.jpg").await.unwrap();
    wait_until(
        Duration::from_secs(30),
        "the unreferenced chunk to be deleted everywhere",
        || async {
            let left: Vec<usize> = (0..3)
                .filter(|i| cluster.chunk_path(*i, &gone_h).exists())
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still on {left:?}"))
            }
        },
    )
    .await;
    for i in 0..3 {
        assert!(
            cluster.has_good_chunk(i, &keep_h),
            "a referenced chunk was collected on nas{}",
            i + 1
        );
    }
    assert!(c.read_file(keep.ino).await.unwrap() == pattern(1, 50_000));
}
