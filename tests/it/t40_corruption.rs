//! A chunk file corrupted on disk is detected on read, never returned,
//! quarantined, and fetched again from a peer.

use std::time::Duration;

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, chunk_hashes, pattern, wait_until};

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
