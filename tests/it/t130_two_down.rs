//! Two of three nodes down: a file already open keeps reading from the node
//! that is left (its layout was read under a majority and its chunks are
//! immutable); anything that needs the metadata majority (create, a stat
//! the kernel has not cached, open) waits `op_timeout` and then fails with
//! ETIMEDOUT, never hangs; once a second node is back, writes work again.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, Mount, pattern, wait_node_has_all_chunks, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_down_reads_go_on_writes_fail_in_bounded_time() {
    let mut cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    // 12 MiB: three chunks, written through the client library so that the
    // mount's page cache does not hold it.
    let data = pattern(77, 12 << 20);
    let attr = client
        .create_file(ROOT_INO, b"held-open.bin", &data)
        .await
        .expect("write the file");
    let leader = cluster.leader().await.expect("a leader");
    let survivor = leader;
    wait_node_has_all_chunks(&cluster, &client, survivor, &[attr.ino]).await;

    let mount = Mount::new(
        &cluster,
        survivor,
        "op_timeout=3,attr_timeout=0,entry_timeout=0",
    )
    .await;
    let mut held =
        std::fs::File::open(mount.join("held-open.bin")).expect("open before the failure");

    let others: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();
    println!(
        "--- kill nas{} and nas{}; nas{} (leader) is left",
        others[0] + 1,
        others[1] + 1,
        survivor + 1
    );
    for &i in &others {
        cluster.kill(i);
    }

    // Reads through the handle opened before: every byte, from the survivor.
    let t = Instant::now();
    let mut back = Vec::new();
    held.seek(SeekFrom::Start(0)).expect("seek");
    held.read_to_end(&mut back)
        .expect("read the open file with one node left");
    assert!(back == data, "the open file read back different bytes");
    println!("read 12 MiB from the open file in {:?}", t.elapsed());

    // A create needs a majority: bounded failure with ETIMEDOUT.
    let t = Instant::now();
    let err =
        std::fs::write(mount.join("new.jpg"), b"x").expect_err("a write without a majority fails");
    let took = t.elapsed();
    println!("create without a majority: {err} after {took:?}");
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(8),
        "{took:?}"
    );

    // So does a lookup the kernel has not cached.
    let t = Instant::now();
    let err =
        std::fs::metadata(mount.join("never-seen")).expect_err("a lookup without a majority fails");
    println!("lookup without a majority: {err} after {:?}", t.elapsed());
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    assert!(t.elapsed() < Duration::from_secs(8));

    // A majority again: writes work.
    println!("--- restart nas{}", others[0] + 1);
    cluster.spawn(others[0]);
    let path = mount.join("after.jpg");
    let content = pattern(78, 100 * 1024);
    wait_until(
        Duration::from_secs(30),
        "a write to succeed with two nodes up",
        || {
            let r = std::fs::write(&path, &content);
            async move { r.map_err(|e| e.to_string()) }
        },
    )
    .await;
    assert!(std::fs::read(&path).expect("read back") == content);
    let mut again = Vec::new();
    held.seek(SeekFrom::Start(0)).expect("seek");
    held.read_to_end(&mut again).expect("read again");
    assert!(again == data);
}
