//! Rolling restart: nas1, nas2 and nas3 are restarted one after another
//! (SIGTERM, start again, wait until it has healed) under the application
//! load on a mount: no operation fails and no upload is lost.

use std::time::Duration;

use quizfs_bench::load::{self, Load, LoadOptions};
use quizfs_tests::{Cluster, Mount};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_operation() {
    let mut cluster = Cluster::start(3, &[]).await;
    let servers = format!("backup_servers={},{}", cluster.addr(1), cluster.addr(2));
    let mount = Mount::new(&cluster, 0, &servers).await;
    let load = Load::start(&mount.join("rolling"), LoadOptions::default()).expect("start the load");
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..3 {
        let before = load.stats().uploads;
        println!("--- restart nas{}", i + 1);
        let status = cluster.terminate(i, Duration::from_secs(15)).await;
        assert!(status.success(), "nas{} exited with {status}", i + 1);
        cluster.spawn(i);
        assert!(
            cluster.wait_node_healed(i, Duration::from_secs(60)).await,
            "nas{} did not catch up and heal",
            i + 1
        );
        let s = load.stats();
        println!(
            "nas{} back and healed; {} uploads meanwhile, longest call so far {:?} ({})",
            i + 1,
            s.uploads - before,
            s.longest,
            s.longest_what
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stats, uploads) = tokio::task::spawn_blocking(move || load.stop())
        .await
        .expect("stop");
    let lost = tokio::task::spawn_blocking(move || load::verify(&uploads))
        .await
        .expect("verify");
    println!(
        "rolling restart: ops {} uploads {} reads {} failed {} lost {} max_pause_ms {}",
        stats.ops,
        stats.uploads,
        stats.reads,
        stats.failures.len(),
        lost.len(),
        stats.longest.as_millis()
    );
    assert!(
        stats.failures.is_empty(),
        "failed operations: {:?}",
        stats.failures
    );
    assert!(lost.is_empty(), "lost or corrupt: {lost:?}");
    assert!(
        stats.longest <= Duration::from_secs(3),
        "pause {:?}",
        stats.longest
    );
}
