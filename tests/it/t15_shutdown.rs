//! SIGTERM stops a node cleanly (exit 0, within the drain deadline, data
//! flushed), and it rejoins on restart with everything it had.

use std::time::Duration;

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, chunk_hashes, pattern, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_restart_keeps_data() {
    let mut cluster = Cluster::start(3, &[]).await;
    let c = cluster.client().await;
    let f = c
        .create_file(ROOT_INO, b"before.jpg", &pattern(5, 200_000))
        .await
        .unwrap();
    let hash = chunk_hashes(&c, f.ino).await[0];
    let victim = 2;
    wait_until(Duration::from_secs(20), "the chunk on nas3", || async {
        if cluster.has_good_chunk(victim, &hash) {
            Ok(())
        } else {
            Err("absent".into())
        }
    })
    .await;
    let applied = cluster.status(victim).await.unwrap().last_applied;
    let status = cluster.terminate(victim, Duration::from_secs(10)).await;
    assert!(status.success(), "storaged exited with {status}");
    assert!(
        cluster.log_tail(victim, 5).contains("stopped"),
        "{}",
        cluster.log_tail(victim, 5)
    );
    // Writes go on with two nodes.
    c.create_file(ROOT_INO, b"during.jpg", b"x").await.unwrap();
    cluster.spawn(victim);
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let s = cluster.status(victim).await.unwrap();
    assert!(s.last_applied > applied, "{s:?}");
    assert!(cluster.has_good_chunk(victim, &hash));
    assert_eq!(c.readdir_all(ROOT_INO).await.unwrap().len(), 2);
}
