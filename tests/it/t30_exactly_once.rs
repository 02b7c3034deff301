//! A create and a rename retried with the same sequence number (as after a
//! lost reply) are applied once and answered with the first reply.

use quizfs_proto::{self as pb, ROOT_INO, meta_op::Op};
use quizfs_tests::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_create_and_rename_apply_once() {
    let cluster = Cluster::start(3, &[]).await;
    let c = cluster.client().await;
    let create = Op::Create(pb::Create {
        parent: ROOT_INO,
        name: b"once.jpg".to_vec(),
        mode: 0o644,
        exclusive: true,
        ..Default::default()
    });
    let first = c.apply_with_seq(1_000_000, create.clone()).await.unwrap();
    let retry = c.apply_with_seq(1_000_000, create.clone()).await.unwrap();
    assert_eq!(first.errno, 0);
    assert_eq!(retry, first, "a retry gets the first reply, not EEXIST");
    // A new request (new seq) for the same name does see EEXIST.
    assert_eq!(
        c.apply_with_seq(1_000_001, create).await.unwrap().errno,
        libc::EEXIST
    );

    let rename = Op::Rename(pb::Rename {
        parent: ROOT_INO,
        name: b"once.jpg".to_vec(),
        new_parent: ROOT_INO,
        new_name: b"moved.jpg".to_vec(),
        flags: 0,
        keep_open_ino: 0,
    });
    let r1 = c.apply_with_seq(1_000_002, rename.clone()).await.unwrap();
    let r2 = c.apply_with_seq(1_000_002, rename.clone()).await.unwrap();
    assert_eq!(r1.errno, 0);
    assert_eq!(
        r2.errno, 0,
        "the retried rename is not applied again (that would be ENOENT)"
    );
    let names = quizfs_tests::names(&c, ROOT_INO).await;
    assert_eq!(names, vec!["moved.jpg"]);
    // The retry reaches a new leader too: the session table is replicated.
    let leader = cluster.leader().await.unwrap();
    let mut cluster = cluster;
    cluster.kill(leader);
    let r3 = c.apply_with_seq(1_000_002, rename).await.unwrap();
    assert_eq!(r3.errno, 0);
}
