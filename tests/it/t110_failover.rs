//! Failover under an application load on a mount (the failover workload of
//! `quizfs-bench`): a storage node is killed, frozen and cut off the
//! network (each node in its own network namespace), first a follower and
//! then the leader. Every case must end with no failed operation, no lost
//! or corrupt upload, no single system call longer than 3 s, and the
//! returning node holding every chunk written while it was away.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use quizfs_bench::failover::{self, Fault, Plan, Quizfs, Row};
use quizfs_tests::wait_node_has_all_chunks;

/// The bound: the test fails above it (the goal is 1 s).
const MAX_PAUSE: Duration = Duration::from_secs(3);

fn plan() -> Plan {
    Plan {
        before: Duration::from_millis(1500),
        down: Duration::from_secs(4),
        after: Duration::from_millis(500),
        heal_timeout: Duration::from_secs(60),
        ..Plan::default()
    }
}

async fn check(sys: &Quizfs, row: &Row) {
    assert!(
        row.failures.is_empty(),
        "{}: {} failed operations: {:?}",
        row.case,
        row.failures.len(),
        &row.failures[..row.failures.len().min(5)]
    );
    assert!(
        row.lost.is_empty(),
        "{}: lost or corrupt: {:?}",
        row.case,
        row.lost
    );
    assert!(
        row.longest <= MAX_PAUSE,
        "{}: longest pause {:?} ({})",
        row.case,
        row.longest,
        row.longest_what
    );
    assert!(row.heal.is_some(), "{}: the node did not heal", row.case);
    assert!(
        row.uploads_while_down > 0,
        "{}: no upload while the node was away",
        row.case
    );
    // Every chunk of every upload of the case is on the returning node.
    let client = sys.cluster.client().await;
    let inodes: Vec<u64> = std::fs::read_dir(&row.dir)
        .expect("list the case's directory")
        .filter_map(Result::ok)
        .map(|e| e.metadata().expect("stat an upload").ino())
        .collect();
    wait_node_has_all_chunks(&sys.cluster, &client, row.node, &inodes).await;
}

async fn run(on_leader: bool) {
    let mut sys = Quizfs::start().await;
    let mut rows = Vec::new();
    for fault in [Fault::Kill, Fault::Freeze, Fault::Cut] {
        let row = failover::run_case(&mut sys, fault, on_leader, &plan()).await;
        println!("{}", failover::table("quizfs", std::slice::from_ref(&row)));
        println!("longest call: {} ({:?})", row.longest_what, row.longest);
        check(&sys, &row).await;
        rows.push(row);
    }
    println!("{}", failover::table("quizfs", &rows));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_killed_frozen_and_cut_costs_nothing() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_frozen_and_cut_costs_under_a_second() {
    run(true).await;
}
