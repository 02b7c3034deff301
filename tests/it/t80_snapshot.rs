//! Snapshots are taken and the log purged; a node that was down past the
//! purge point is caught up through the snapshot.

use std::time::Duration;

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, pattern, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_through_snapshot() {
    let mut cluster = Cluster::start(3, &["--snapshot-logs", "40", "--keep-logs", "5"]).await;
    let client = cluster.client().await;
    let leader = cluster.leader().await.expect("a leader");
    let victim = (leader + 2) % 3;
    let behind = cluster.status(victim).await.unwrap().last_applied;
    println!("--- kill nas{} at index {behind}", victim + 1);
    cluster.kill(victim);
    for i in 0..60u64 {
        client
            .create_file(ROOT_INO, format!("s{i:03}").as_bytes(), &pattern(i, 2000))
            .await
            .unwrap();
    }
    let st = wait_until(
        Duration::from_secs(30),
        "the leader to snapshot and purge",
        || async {
            let l = cluster.leader().await.ok_or("no leader")?;
            let s = cluster.status(l).await.ok_or("no status")?;
            if s.snapshot_index > behind && s.purged_index > behind {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        },
    )
    .await;
    println!(
        "leader snapshot at {} purged to {}",
        st.snapshot_index, st.purged_index
    );
    println!("--- restart nas{}", victim + 1);
    cluster.spawn(victim);
    cluster.wait_healthy(Duration::from_secs(60)).await;
    let s = cluster.status(victim).await.unwrap();
    assert!(s.snapshot_index > behind, "the node got a snapshot: {s:?}");
    // Its metadata is complete: it can lead and serve every file.
    let l = cluster.leader().await.unwrap();
    cluster.kill(l);
    let client2 = cluster.client().await;
    let all = client2.readdir_all(ROOT_INO).await.unwrap();
    assert_eq!(all.len(), 60);
    for (i, e) in all.iter().enumerate() {
        assert!(client2.read_file(e.ino).await.unwrap() == pattern(i as u64, 2000));
    }
}
