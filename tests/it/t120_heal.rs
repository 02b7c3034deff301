//! Self-heal: a node that was down while files were written comes back,
//! catches up the metadata and fetches every chunk it missed, throttled;
//! `quizfs status` shows its backlog and `quizfs heal info` lists what is
//! pending until both reach zero. Prints the heal time.

use std::time::{Duration, Instant};

use quizfs_tests::{
    Cluster, Mount, pattern, quizfs_cli as quizfs, wait_node_has_all_chunks, wait_until,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_node_heals_itself_and_status_shows_the_backlog() {
    // 4 MiB/s: slow enough that the backlog is visible for a few seconds.
    let mut cluster = Cluster::start(3, &["--heal-rate-mib", "4"]).await;
    let mount = Mount::new(&cluster, 0, "").await;
    let away = 2;
    cluster.kill(away);
    println!("--- nas3 killed; writing 40 files of 512 KiB");
    let dir = mount.join("while-away");
    std::fs::create_dir(&dir).expect("mkdir");
    for i in 0..40u64 {
        std::fs::write(dir.join(format!("img{i:02}.jpg")), pattern(i, 512 * 1024)).expect("write");
    }
    let (code, out) = quizfs(&cluster, &["heal", "info", &cluster.addr(0)]);
    assert_eq!(code, 1, "a node is down, so heal info is not clean:\n{out}");
    assert!(out.contains("down"), "{out}");

    cluster.spawn(away);
    let back = Instant::now();
    // The backlog shows in status and heal info while it drains.
    let nas3_addr = cluster.addr(away);
    let seen = wait_until(
        Duration::from_secs(30),
        "nas3 to report a heal backlog",
        || {
            let (code, out) = quizfs(
                &cluster,
                &["heal", "info", &cluster.addr(0), "--limit", "3"],
            );
            let (_, status) = quizfs(&cluster, &["status", &cluster.addr(0)]);
            let nas3_addr = nas3_addr.clone();
            async move {
                let line = out
                    .lines()
                    .find(|l| {
                        l.contains(&nas3_addr) && l.contains("pending") && !l.contains(": 0 chunks")
                    })
                    .map(String::from);
                match line {
                    Some(l) if code == 1 => Ok((l, out, status)),
                    _ => Err(out),
                }
            }
        },
    )
    .await;
    println!("heal info while healing:\n{}", seen.1);
    println!("status while healing:\n{}", seen.2);
    assert!(
        seen.1.lines().filter(|l| l.starts_with("  ")).count() >= 1,
        "hashes are listed"
    );
    let nas3 = seen
        .2
        .lines()
        .find(|l| l.contains(&cluster.addr(away)))
        .expect("nas3 in status");
    let backlog: u64 = nas3
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .expect("HEAL column");
    assert!(backlog > 0, "status shows the backlog: {nas3}");

    wait_until(
        Duration::from_secs(60),
        "heal info to come back clean",
        || {
            let (code, out) = quizfs(&cluster, &["heal", "info", &cluster.addr(0)]);
            async move { if code == 0 { Ok(()) } else { Err(out) } }
        },
    )
    .await;
    let took = back.elapsed();
    let client = cluster.client().await;
    let inodes: Vec<u64> = std::fs::read_dir(&dir)
        .expect("ls")
        .map(|e| std::os::unix::fs::MetadataExt::ino(&e.expect("entry").metadata().expect("stat")))
        .collect();
    wait_node_has_all_chunks(&cluster, &client, away, &inodes).await;
    println!(
        "heal_s {:.2} for 20 MiB at --heal-rate-mib 4",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_secs(3),
        "the rate limit held ({took:?} for 20 MiB at 4 MiB/s)"
    );
}
