//! The leader's read lease never serves a stale read: a leader frozen
//! (SIGSTOP) while the others elect a new one and change the namespace
//! must not answer a read from its old state when it wakes up, even a read
//! that was already waiting in its socket.

use std::time::Duration;

use quizfs::client::membership;
use quizfs_proto::{self as pb, ROOT_INO, meta_client::MetaClient};
use quizfs_tests::{Cluster, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thawed_old_leader_never_answers_from_its_old_state() {
    let cluster = Cluster::start(3, &[]).await;
    let client = cluster.client().await;
    for round in 0..3 {
        let old = cluster.leader().await.unwrap();
        let name = format!("made-while-frozen-{round}");
        let mut direct =
            MetaClient::new(membership::channel(&cluster.addr(old), &cluster.transport()).unwrap());
        let lookup = pb::LookupRequest {
            parent: ROOT_INO,
            name: name.clone().into_bytes(),
        };
        // The leader answers at once while it holds the lease.
        let before = direct.lookup(lookup.clone()).await.unwrap().into_inner();
        assert_eq!(before.errno, libc::ENOENT);

        cluster.freeze(old);
        wait_until(Duration::from_secs(10), "a new leader", || async {
            match cluster.leader().await {
                Some(l) if l != old => Ok(()),
                other => Err(format!("leader {other:?}")),
            }
        })
        .await;
        client
            .mkdir(ROOT_INO, name.as_bytes(), 0o755)
            .await
            .unwrap();
        // Sent while the old leader is frozen: it waits in its socket.
        let waiting = tokio::spawn(async move { direct.lookup(lookup).await });
        // Nothing outside the frozen process shows the request queued in
        // its socket; give the send a moment (either way the check holds).
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.thaw(old);
        match tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap()
        {
            // Refused (not the leader any more, or its read check failed).
            Err(status) => assert_ne!(status.code(), tonic::Code::Ok),
            Ok(r) => {
                let r = r.into_inner();
                assert_eq!(
                    r.errno, 0,
                    "round {round}: the thawed old leader answered {} for {name}, \
                     which the new leader created",
                    r.errno
                );
            }
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
    }
}
