//! One misbehaving client cannot exhaust a node: a client that opens a
//! hundred chunk uploads on every node, sends most of a chunk on each and
//! then stalls gets at most its own share of upload slots read (and so of
//! the memory they buffer, a chunk each), and another client still writes
//! and reads meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use quizfs::cert::{Ca, Validity};
use quizfs::client::membership;
use quizfs_proto::tls::{Role, TlsFiles, Transport};
use quizfs_proto::{self as pb, ROOT_INO, chunks_client::ChunksClient};
use quizfs_tests::{Cluster, pattern, wait_until};

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
    // On every node: 100 uploads that send all of a chunk but its last
    // piece, then nothing, each on a connection of its own (so no
    // connection's flow control window stops the flood before the node's
    // limits do) and from a task of its own. An upload the node does not
    // read gets no further than its stream window (two pieces) and the
    // channel; `read[node]` counts the uploads that got all their pieces
    // out, that is the ones the node is reading and buffering.
    let piece = pb::Bytes::from(vec![1u8; pb::PIECE_SIZE]);
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let read: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
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
            let (piece, mut stop, read) = (piece.clone(), stop.subscribe(), read[node].clone());
            let sender = tokio::spawn(async move {
                for k in 0..SENT_PIECES {
                    let hash = if k == 0 { hash.clone() } else { Vec::new() };
                    let data = piece.clone();
                    if tx.send(pb::PutPiece { hash, data }).await.is_err() {
                        return;
                    }
                }
                read.fetch_add(1, Ordering::SeqCst);
                let _ = stop.recv().await;
                drop(tx);
            });
            held.push((sender, call));
        }
    }
    let counts = || {
        read.iter()
            .map(|r| r.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    };
    // Each node reads the flood's share of uploads.
    let share = storaged::rpc::chunk_service::MAX_UPLOADS_PER_PEER;
    wait_until(
        Duration::from_secs(20),
        "each node to read the flood's share of uploads",
        || async {
            let now = counts();
            if now.iter().all(|n| *n >= share) {
                Ok(())
            } else {
                Err(format!("{now:?} uploads read"))
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

    // After all that, each node still reads no more of the flood's
    // uploads than its share (without the share it would read one in
    // each of its 64 slots, and the upload above would wait for them).
    let now = counts();
    println!("uploads of the flood read by each node: {now:?} (share {share})");
    assert!(now.iter().all(|n| *n == share), "{now:?}, share {share}");
    let _ = stop.send(());
    for (sender, call) in held {
        sender.await.unwrap();
        assert!(
            call.await.unwrap().is_err(),
            "a stalled upload must not be stored"
        );
    }
}
