//! One misbehaving client cannot exhaust a node: a client that opens a
//! hundred chunk uploads on every node and then stalls holds at most its
//! own share of upload slots and temp files, and another client still
//! writes and reads meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quizfs::cert::{Ca, Validity};
use quizfs::client::membership;
use quizfs_proto::tls::{Role, TlsFiles, Transport};
use quizfs_proto::{self as pb, ROOT_INO, chunks_client::ChunksClient};
use quizfs_tests::{Cluster, pattern, wait_until};

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_uploads_cannot_starve_another() {
    let cluster = Cluster::start(3, &[]).await;
    let legit = cluster.client().await;
    let ca = Ca::open(cluster.ca.as_ref().unwrap()).unwrap();
    let dir = ca
        .issue_client("flood", false, &["nas".into()], Validity::days(1))
        .unwrap();
    let hostile = Transport::Tls(Arc::new(
        TlsFiles::load(&dir, Role::Client, "-o insecure").unwrap(),
    ));
    let pids: Vec<u32> = (0..3).map(|i| cluster.nodes[i].pid()).collect();
    let before: Vec<usize> = pids.iter().map(|&p| fds(p)).collect();

    // On every node: 100 uploads that send one piece, then nothing.
    let mut held = Vec::new();
    for node in 0..3 {
        let ch = membership::channel(&cluster.addr(node), &hostile).unwrap();
        for i in 0..100u32 {
            let mut c = ChunksClient::new(ch.clone());
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut hash = vec![0u8; 32];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            hash[4] = node as u8;
            tx.send(pb::PutPiece {
                hash,
                data: vec![1; 1000],
            })
            .await
            .unwrap();
            let call = tokio::spawn(async move {
                c.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await
            });
            held.push((tx, call));
        }
    }
    // The nodes take up the flood's share of temp files.
    let share = storaged::rpc::chunk_service::MAX_UPLOADS_PER_PEER;
    wait_until(
        Duration::from_secs(10),
        "the flood's uploads to be open",
        || async {
            let open: Vec<usize> = pids.iter().map(|&p| fds(p)).collect();
            let grown = open.iter().zip(&before).all(|(o, b)| *o >= b + share);
            if grown {
                Ok(())
            } else {
                Err(format!("{open:?} from {before:?}"))
            }
        },
    )
    .await;

    // Another client writes and reads a file meanwhile, promptly.
    let data = pattern(7, 6 << 20);
    let started = Instant::now();
    let attr = legit
        .create_file(ROOT_INO, b"legit.bin", &data)
        .await
        .unwrap();
    let took = started.elapsed();
    println!("a 6 MiB upload during the flood took {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(legit.read_file(attr.ino).await.unwrap() == data);

    // Each node holds at most the flood's share of uploads open (a temp
    // file each), plus a few descriptors for the new connections.
    for (i, (&p, b)) in pids.iter().zip(&before).enumerate() {
        let open = fds(p);
        println!(
            "nas{}: {b} descriptors before the flood, {open} during it",
            i + 1
        );
        assert!(
            open <= b + share + 8,
            "nas{}: {open} open, {b} before",
            i + 1
        );
    }
    drop(held);
}
