//! SIGKILL of a follower keeps writes going; its data directory is then
//! wiped and it comes back as a new member that replaces its old self, and
//! ends up with every chunk.

use std::time::Duration;

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, Writer, verify_files, wait_node_has_all_chunks, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_rejoins_as_new_member_and_heals() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    let leader = cluster.leader().await.expect("a leader");
    let victim = (leader + 1) % 3;
    let old_id = cluster.status(victim).await.unwrap().node_id;
    let writer = Writer::start(client.clone(), ROOT_INO, "f");
    writer.wait_more(5, Duration::from_secs(30)).await;
    println!("--- kill follower nas{}", victim + 1);
    cluster.kill(victim);
    writer.wait_more(15, Duration::from_secs(60)).await;
    let (longest, files) = writer.stop().await;
    println!("pause_max_ms: {}", longest.as_millis());
    verify_files(&client, &files).await;

    println!("--- wipe and restart nas{}", victim + 1);
    cluster.wipe(victim);
    cluster.spawn(victim);
    let addr = cluster.addr(victim);
    let new_id = wait_until(
        Duration::from_secs(60),
        "the wiped node to be a voter under a new id",
        || async {
            let m = quizfs::client::membership::members_of(&cluster.addr(leader), client.options())
                .await
                .map_err(|e| e.to_string())?;
            let me: Vec<_> = m.members.iter().filter(|x| x.addr == addr).collect();
            match me.as_slice() {
                [one] if one.voter && one.id != old_id && m.members.len() == 3 => Ok(one.id),
                _ => Err(format!("{:?}", m.members)),
            }
        },
    )
    .await;
    println!("nas{} rejoined as node {new_id} (was {old_id})", victim + 1);
    cluster.wait_healthy(Duration::from_secs(30)).await;
    let inodes: Vec<u64> = files.iter().map(|(_, ino, _)| *ino).collect();
    wait_node_has_all_chunks(&cluster, &client, victim, &inodes).await;
    // It restarts under its new identity without joining again.
    cluster.kill(victim);
    cluster.spawn(victim);
    cluster.wait_healthy(Duration::from_secs(30)).await;
    assert_eq!(cluster.status(victim).await.unwrap().node_id, new_id);
}
