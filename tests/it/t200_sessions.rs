//! Sessions expire: a session the leader hears nothing of for
//! `--session-timeout` is forgotten, with the files it kept open after
//! their unlink. 1,000 short-lived clients come and go and the session
//! table, the orphans and every node's table of last-heard times return
//! to where they started. A mount frozen past the timeout comes back
//! with a new session: its descriptors of a file it had unlinked answer
//! ESTALE, every other descriptor and every fresh open works.

use std::io::{Read, Seek, Write};
use std::time::{Duration, Instant};

use quizfs_proto::{self as pb, ROOT_INO, meta_op::Op};
use quizfs_tests::{Cluster, Mount, node_metric, signal, wait_until};

/// The session timeout of these tests.
const TIMEOUT: &str = "2s";

/// (sessions, orphans) in the leader's state machine.
fn table(cluster: &Cluster, leader: usize) -> (f64, f64) {
    (
        node_metric(cluster, leader, "quizfs_sessions"),
        node_metric(cluster, leader, "quizfs_orphans"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_come_and_go_and_their_sessions_and_orphans_go_too() {
    let cluster = Cluster::start(3, &["--session-timeout", TIMEOUT]).await;
    let watcher = cluster.client().await;
    let leader = cluster.leader().await.expect("a leader");
    let start = table(&cluster, leader);
    // The baseline counts the watcher once every node has heard its
    // heartbeat: read before that, a node's count rose by the watcher's
    // own time and never came back to it.
    let leases: Vec<f64> = wait_until(
        Duration::from_secs(10),
        "the watcher heard by every node",
        || {
            let now: Vec<f64> = (0..3)
                .map(|i| node_metric(&cluster, i, "quizfs_session_leases"))
                .collect();
            async move {
                if now.iter().all(|&n| n >= 1.0) {
                    Ok(now)
                } else {
                    Err(format!("{now:?}"))
                }
            }
        },
    )
    .await;
    println!("at start: sessions and orphans {start:?}, last-heard times {leases:?}");

    // 20 waves of 50 clients; each client creates a file and unlinks it
    // while "holding it open", then goes away without a word.
    let servers: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
    let opts = quizfs::client::ClientOptions {
        transport: cluster.transport(),
        ..Default::default()
    };
    let began = Instant::now();
    let mut peak = start;
    for wave in 0..20 {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..50 {
            let (servers, opts) = (servers.clone(), opts.clone());
            tasks.spawn(async move {
                let c = quizfs::client::ClusterClient::connect(&servers, opts)
                    .await
                    .unwrap();
                let name = format!("w{wave}-{n}");
                let attr = c
                    .create(ROOT_INO, name.as_bytes(), 0o644, true)
                    .await
                    .unwrap();
                c.apply_unit(
                    "unlink",
                    Op::Unlink(pb::Unlink {
                        parent: ROOT_INO,
                        name: name.into_bytes(),
                        keep_open_ino: attr.ino,
                    }),
                )
                .await
                .unwrap();
                c
            });
        }
        let clients = tasks.join_all().await;
        let now = table(&cluster, leader);
        assert!(now.1 >= start.1 + 50.0, "wave {wave}: {now:?}");
        peak = (peak.0.max(now.0), peak.1.max(now.1));
        drop(clients);
    }
    println!(
        "1,000 clients came and went in {:.1} s; peak sessions and orphans {peak:?}",
        began.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster.leader().await,
        Some(leader),
        "the leader changed: the table was read from two nodes"
    );

    let gone = Instant::now();
    wait_until(Duration::from_secs(60), "sessions and orphans back", || {
        let now = table(&cluster, leader);
        async move {
            if now == start {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        }
    })
    .await;
    println!(
        "sessions and orphans back to {start:?} {:.1} s after the last client went",
        gone.elapsed().as_secs_f64()
    );
    // Every node forgets the times of sessions that went.
    wait_until(Duration::from_secs(30), "last-heard times back", || {
        let now: Vec<f64> = (0..3)
            .map(|i| node_metric(&cluster, i, "quizfs_session_leases"))
            .collect();
        let back = now.iter().zip(&leases).all(|(n, s)| n <= s);
        async move {
            if back {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        }
    })
    .await;
    let expired = node_metric(&cluster, leader, "quizfs_sessions_expired_total");
    assert!(expired >= 1000.0, "{expired} sessions expired");
    // The watcher, alive all along, kept its session.
    watcher
        .create(ROOT_INO, b"still-here", 0o644, true)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mount_back_after_its_session_expired_gets_estale_only_for_what_it_lost() {
    let cluster = Cluster::start(3, &["--session-timeout", TIMEOUT]).await;
    let leader = cluster.leader().await.expect("a leader");
    let m = Mount::new(&cluster, 0, "").await;
    std::fs::write(m.join("held.jpg"), b"kept open, then unlinked").unwrap();
    std::fs::write(m.join("kept.jpg"), b"still linked").unwrap();
    let mut held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("held.jpg"))
        .unwrap();
    let mut kept = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("kept.jpg"))
        .unwrap();
    std::fs::remove_file(m.join("held.jpg")).unwrap();
    let (sessions, orphans) = table(&cluster, leader);
    assert_eq!(orphans, 1.0, "the unlinked open file is an orphan");
    // Before the freeze the orphan works as a file does.
    let mut buf = String::new();
    held.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "kept open, then unlinked");

    signal(m.pid(), libc::SIGSTOP);
    let frozen = Instant::now();
    wait_until(
        Duration::from_secs(60),
        "the frozen mount's session gone",
        || {
            let now = table(&cluster, leader);
            async move {
                if now == (sessions - 1.0, 0.0) {
                    Ok(())
                } else {
                    Err(format!("{now:?}"))
                }
            }
        },
    )
    .await;
    println!(
        "session and orphan gone {:.1} s after the mount froze",
        frozen.elapsed().as_secs_f64()
    );
    signal(m.pid(), libc::SIGCONT);

    // The lost orphan: ESTALE, for a write and for fsync.
    let e = held.write_all(b"more").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "write: {e}");
    let e = held.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "fsync: {e}");
    // A linked file open all along keeps working.
    kept.seek(std::io::SeekFrom::End(0)).unwrap();
    kept.write_all(b", and written after").unwrap();
    kept.sync_all().unwrap();
    assert_eq!(
        std::fs::read_to_string(m.join("kept.jpg")).unwrap(),
        "still linked, and written after"
    );
    // Fresh opens work, and a new file can again be kept after its unlink.
    std::fs::write(m.join("new.jpg"), b"fresh").unwrap();
    let mut again = std::fs::File::open(m.join("new.jpg")).unwrap();
    std::fs::remove_file(m.join("new.jpg")).unwrap();
    let mut buf = String::new();
    again.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "fresh");
    assert_eq!(table(&cluster, leader), (sessions, 1.0));
    drop(again);
    wait_until(Duration::from_secs(10), "the new orphan released", || {
        let now = table(&cluster, leader);
        async move {
            if now.1 == 0.0 {
                Ok(())
            } else {
                Err(format!("{now:?}"))
            }
        }
    })
    .await;
    drop(held);
    let log = m.log_tail(200);
    assert!(log.contains("registered a new one"), "mount log:\n{log}");
}
