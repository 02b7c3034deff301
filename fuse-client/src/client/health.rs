//! Heartbeats: every node is pinged several times per ping timeout; a node
//! that does not answer within the ping timeout is marked down, so calls
//! stop choosing it and calls waiting on it are retried elsewhere, and it is
//! marked up again as soon as it answers. Each answer also names the leader
//! the node knows and its term, which is how the client learns of an
//! election without waiting for a call to fail.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quizfs_proto::{self as pb, cluster_client::ClusterClient as ClusterRpc};

use super::{ClusterClient, Inner};

/// How often the member list is refreshed.
const MEMBERS_REFRESH: Duration = Duration::from_secs(2);

/// Runs until the client is dropped.
pub(super) async fn run(inner: Weak<Inner>) {
    let mut last_refresh = Instant::now();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let client = ClusterClient { inner: strong };
        let timeout = client.inner.opts.ping_timeout;
        // Often enough that a new leader is learnt within ~100 ms of its
        // election: a ping is a few hundred bytes.
        let interval = (timeout / 8).clamp(Duration::from_millis(50), Duration::from_millis(250));
        let pings = client.nodes().into_iter().map(|node| {
            let client = client.clone();
            async move {
                let mut rpc = ClusterRpc::new(node.channel.clone());
                let ok = match tokio::time::timeout(timeout, rpc.ping(pb::PingRequest {})).await {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        if r.leader_id != 0 {
                            if let Some(l) = client
                                .nodes()
                                .iter()
                                .find(|n| n.id.load(Ordering::Relaxed) == r.leader_id)
                            {
                                client.leader_seen(l.addr.clone(), r.term);
                            }
                        }
                        true
                    }
                    _ => false,
                };
                if node.set_up(ok) {
                    tracing::info!(node = %node.addr, up = ok, "node state changed");
                }
            }
        });
        let started = Instant::now();
        let _ = futures_all(pings).await;
        if last_refresh.elapsed() >= MEMBERS_REFRESH {
            last_refresh = Instant::now();
            if let Some(node) = client
                .nodes()
                .into_iter()
                .find(|n| n.is_up())
            {
                if let Ok(m) = super::membership::members_of(&node.addr, &client.inner.opts).await {
                    let _ = client.update_members(&m);
                }
            }
        }
        drop(client);
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

async fn futures_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
