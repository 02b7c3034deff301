//! SIGKILL of the leader in the middle of a stream of writes: every
//! acknowledged write survives, writes go on through the new leader with no
//! failed call, and the killed node comes back and catches up.

use std::time::Duration;

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, Writer, verify_files, wait_node_has_all_chunks};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    let writer = Writer::start(client.clone(), ROOT_INO, "up");
    writer.wait_more(10, Duration::from_secs(30)).await;
    let leader = cluster.leader().await.expect("a leader");
    println!("--- kill leader nas{}", leader + 1);
    cluster.kill(leader);
    writer.wait_more(20, Duration::from_secs(60)).await;
    let (longest, files) = writer.stop().await;
    println!("pause_max_ms: {}", longest.as_millis());
    let new_leader = cluster.leader().await.expect("a new leader");
    assert_ne!(new_leader, leader);
    verify_files(&client, &files).await;

    println!("--- restart nas{}", leader + 1);
    cluster.spawn(leader);
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let inodes: Vec<u64> = files.iter().map(|(_, ino, _)| *ino).collect();
    wait_node_has_all_chunks(&cluster, &client, leader, &inodes).await;
}
