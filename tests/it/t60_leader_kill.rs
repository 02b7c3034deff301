//! SIGKILL of the leader in the middle of a stream of writes: every
//! acknowledged write survives, writes go on through the new leader with no
//! failed call, and the killed node comes back and catches up. A killed
//! leader is replaced at once (its port refuses: no lease to wait out); a
//! frozen one only after its lease.

use std::time::{Duration, Instant};

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, Writer, verify_files, wait_node_has_all_chunks, wait_until};

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

/// Polls every node but `old` until one reports itself leader in a term
/// after `term`: that node, and the time from `since`.
async fn new_leader_after(
    cluster: &Cluster,
    old: usize,
    term: u64,
    since: Instant,
) -> (usize, Duration) {
    wait_until(Duration::from_secs(10), "a new leader", || async {
        for i in (0..cluster.nodes.len()).filter(|i| *i != old) {
            if let Some(s) = cluster.status(i).await {
                if s.role == "leader" && s.term > term {
                    return Ok((i, since.elapsed()));
                }
            }
        }
        Err("none yet".to_string())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_at_once_and_a_frozen_one_after_its_lease() {
    let mut cluster = Cluster::start(3, &[]).await;
    // Killed: its port refuses at once, which proves it holds no lease.
    let old = cluster.leader().await.expect("a leader");
    let term = cluster.status(old).await.expect("status").term;
    let t = Instant::now();
    cluster.kill(old);
    let (new, took) = new_leader_after(&cluster, old, term, t).await;
    println!(
        "killed leader nas{} replaced by nas{} in {} ms",
        old + 1,
        new + 1,
        took.as_millis()
    );
    assert!(
        took < Duration::from_millis(250),
        "the followers waited {took:?}: waiting out the lease takes 350-400 ms"
    );
    let logs: String = (0..3)
        .filter(|i| *i != old)
        .map(|i| std::fs::read_to_string(&cluster.nodes[i].log).unwrap_or_default())
        .collect();
    assert!(logs.contains("the leader's port refuses connections"));

    // Frozen: its kernel still accepts connections, so there is no proof
    // and the followers wait out its lease (200 ms with the defaults)
    // after its last heartbeat.
    cluster.spawn(old);
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let frozen = cluster.leader().await.expect("a leader");
    let term = cluster.status(frozen).await.expect("status").term;
    let t = Instant::now();
    cluster.freeze(frozen);
    let (new, took) = new_leader_after(&cluster, frozen, term, t).await;
    cluster.thaw(frozen);
    println!(
        "frozen leader nas{} replaced by nas{} after {} ms",
        frozen + 1,
        new + 1,
        took.as_millis()
    );
    assert!(
        took >= Duration::from_millis(200),
        "a frozen leader was deposed inside its lease ({took:?})"
    );
}
