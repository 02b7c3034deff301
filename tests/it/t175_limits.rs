//! One misbehaving client cannot exhaust a node: a client that opens a
//! hundred chunk uploads on every node, sends most of a chunk on each and
//! then stalls holds at most its own share of upload slots and of the
//! memory they buffer, and another client still writes and reads
//! meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quizfs::cert::{Ca, Validity};
use quizfs::client::membership;
use quizfs_proto::tls::{Role, TlsFiles, Transport};
use quizfs_proto::{self as pb, ROOT_INO, chunks_client::ChunksClient};
use quizfs_tests::{Cluster, pattern, wait_until};

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Uploads the flood opens on each node.
const FLOOD: u32 = 100;
/// Pieces each stalled upload sends: all of a chunk but its last piece.
const SENT_PIECES: usize = pb::CHUNK_SIZE / pb::PIECE_SIZE - 1;

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
    let before: Vec<u64> = pids.iter().map(|&p| rss_mib(p)).collect();

    // On every node: 100 uploads that send all of a chunk but its last
    // piece, then nothing, each on a connection of its own (so no
    // connection's flow control window stops the flood before the node's
    // limits do) and from a task of its own.
    let piece = pb::Bytes::from(vec![1u8; pb::PIECE_SIZE]);
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut held = Vec::new();
    for node in 0..3 {
        for i in 0..FLOOD {
            let ch = membership::channel(&cluster.addr(node), &hostile).unwrap();
            let mut c = ChunksClient::new(ch);
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut hash = vec![0u8; 32];
            hash[..4].copy_from_slice(&i.to_be_bytes());
            hash[4] = node as u8;
            let call = tokio::spawn(async move {
                c.put(tokio_stream::wrappers::ReceiverStream::new(rx)).await
            });
            let (piece, mut stop) = (piece.clone(), stop.subscribe());
            let sender = tokio::spawn(async move {
                for k in 0..SENT_PIECES {
                    let hash = if k == 0 { hash.clone() } else { Vec::new() };
                    let data = piece.clone();
                    if tx.send(pb::PutPiece { hash, data }).await.is_err() {
                        return;
                    }
                }
                let _ = stop.recv().await;
                drop(tx);
            });
            held.push((sender, call));
        }
    }
    // The nodes take up the flood's share of uploads, and buffer them.
    let share = storaged::rpc::chunk_service::MAX_UPLOADS_PER_PEER as u64;
    let share_mib = (share * (SENT_PIECES * pb::PIECE_SIZE) as u64) >> 20;
    wait_until(
        Duration::from_secs(20),
        "the flood's share of uploads to be buffered",
        || async {
            let now: Vec<u64> = pids.iter().map(|&p| rss_mib(p)).collect();
            let grown = now
                .iter()
                .zip(&before)
                .all(|(n, b)| *n >= b + share_mib * 9 / 10);
            if grown {
                Ok(())
            } else {
                Err(format!("{now:?} MiB from {before:?}"))
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

    // Each node holds at most the flood's share of uploads in memory, plus
    // the stream window of each upload it is not reading and some slack;
    // without the share it would buffer an upload in every slot (64).
    let window_mib = (u64::from(FLOOD) * u64::from(storaged::node::STREAM_WINDOW)) >> 20;
    let upload_mib = (SENT_PIECES * pb::PIECE_SIZE) as u64 >> 20;
    let all_mib = storaged::rpc::chunk_service::MAX_UPLOADS as u64 * upload_mib;
    let bound = share_mib + window_mib + 40;
    assert!(
        bound < all_mib,
        "the bound must tell the share from no share"
    );
    for (i, (&p, b)) in pids.iter().zip(&before).enumerate() {
        let now = rss_mib(p);
        println!(
            "nas{}: {b} MiB resident before the flood, {now} during it (bound {b} + {bound})",
            i + 1
        );
        assert!(now <= b + bound, "nas{}: {now} MiB, {b} before", i + 1);
    }
    let _ = stop.send(());
    for (sender, call) in held {
        sender.await.unwrap();
        assert!(
            call.await.unwrap().is_err(),
            "a stalled upload must not be stored"
        );
    }
}
