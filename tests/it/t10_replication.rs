//! A file written through nas1 reads back byte-identical from every node,
//! and its chunk files end up on every disk; `quizfs status` reports it.

use std::process::Command;
use std::time::Duration;

use quizfs_proto::ROOT_INO;
use quizfs_tests::{Cluster, bin, chunk_hashes, pattern, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_written_via_nas1_reads_back_from_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    // One small file, one of several chunks with a short tail, one empty.
    let files = [
        (b"small.jpg".as_slice(), pattern(1, 100 * 1024)),
        (b"big.bin", pattern(2, 9 * 1024 * 1024 + 123)),
        (b"empty", Vec::new()),
    ];
    for (name, data) in &files {
        let attr = client
            .create_file(ROOT_INO, name, data)
            .await
            .expect("write");
        assert_eq!(attr.size, data.len() as u64);
        let back = client.read_file(attr.ino).await.expect("read");
        assert!(
            back == *data,
            "content of {} differs",
            String::from_utf8_lossy(name)
        );
        for hash in chunk_hashes(&client, attr.ino).await {
            let mut whole = Vec::new();
            for i in 0..3 {
                let from_node = client.get_chunk_from(&cluster.addr(i), hash).await;
                // The third copy may still be on its way: the healer or the
                // background upload brings it.
                let from_node = match from_node {
                    Ok(d) => d,
                    Err(_) => {
                        wait_until(Duration::from_secs(20), "chunk on every node", || async {
                            client
                                .get_chunk_from(&cluster.addr(i), hash)
                                .await
                                .map_err(|e| e.to_string())
                        })
                        .await
                    }
                };
                whole.push(from_node);
            }
            assert!(whole[0] == whole[1] && whole[1] == whole[2]);
            // A small file's chunk came inside its commit: each node
            // serves it from memory at once and writes it to disk within
            // its sync interval.
            for i in 0..3 {
                wait_until(Duration::from_secs(20), "chunk file on every disk", || {
                    let on_disk = cluster.has_good_chunk(i, &hash);
                    async move {
                        if on_disk {
                            Ok(())
                        } else {
                            Err(format!("chunk {hash:?} not on nas{}'s disk", i + 1))
                        }
                    }
                })
                .await;
            }
        }
    }
    let listing = client.readdir_all(ROOT_INO).await.expect("readdir");
    let names: Vec<&[u8]> = listing.iter().map(|e| e.name.as_slice()).collect();
    assert_eq!(names, vec![b"big.bin".as_slice(), b"empty", b"small.jpg"]);

    // `quizfs status` shows three nodes up and one leader, with chunks.
    let out = Command::new(bin("quizfs"))
        .args(["status", &cluster.addr(1)])
        .args(cluster.cli_tls_args())
        .output()
        .expect("run quizfs status");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "status failed: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let up: Vec<&str> = text.lines().filter(|l| l.contains(" up ")).collect();
    assert_eq!(up.len(), 3, "{text}");
    assert!(text.contains("FREE") && text.contains("VERSION"), "{text}");
    for l in up {
        assert!(l.contains(env!("CARGO_PKG_VERSION")), "version: {l}");
        assert!(l.matches("iB").count() >= 2, "bytes and free space: {l}");
    }
    assert_eq!(
        text.lines().filter(|l| l.contains("leader")).count(),
        1,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_nonzero_without_a_leader() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.kill(1);
    cluster.kill(2);
    let addr = cluster.addr(0);
    let tls = cluster.cli_tls_args();
    // Once nas1 has noticed it lost its majority, it stops leading.
    wait_until(
        Duration::from_secs(20),
        "status to report no leader",
        || async {
            let out = Command::new(bin("quizfs"))
                .args(["status", &addr])
                .args(&tls)
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.code() == Some(1)
                && text.lines().filter(|l| l.contains(" down")).count() == 2
            {
                Ok(())
            } else {
                Err(format!("exit {:?}: {text}", out.status.code()))
            }
        },
    )
    .await;
}
