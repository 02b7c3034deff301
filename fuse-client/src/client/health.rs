//! Heartbeats: every node is pinged several times per ping timeout; a node
//! that does not answer within the ping timeout is marked down, so calls
//! stop choosing it and calls waiting on it are retried elsewhere, and it is
//! marked up again as soon as it answers. Each answer also names the leader
//! the node knows and its term, which is how the client learns of an
//! election without waiting for a call to fail.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use quizfs_proto::{self as pb, cluster_client::ClusterClient as ClusterRpc};

use super::{ClusterClient, Inner};

/// How often the member list is refreshed.
const MEMBERS_REFRESH: Duration = Duration::from_secs(2);

/// Runs until the client is dropped. Each round pings every node that has
/// no ping outstanding, without waiting for the answers: a hung node must
/// not delay the news from the others (that is how a new leader is learnt).
pub(super) async fn run(inner: Weak<Inner>) {
    let mut last_refresh = Instant::now();
    let outstanding: Arc<Mutex<HashSet<String>>> = Arc::default();
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let client = ClusterClient { inner: strong };
        let timeout = client.inner.opts.ping_timeout;
        let interval = super::liveness::ping_interval(timeout);
        for node in client.nodes() {
            if !lock(&outstanding).insert(node.addr.clone()) {
                continue;
            }
            let (weak, outstanding) = (Arc::downgrade(&client.inner), outstanding.clone());
            let client_id = client.client_id();
            tokio::spawn(async move {
                let mut rpc = ClusterRpc::new(node.channel.clone());
                let req = pb::PingRequest { client_id };
                let reply = tokio::time::timeout(timeout, rpc.ping(req)).await;
                lock(&outstanding).remove(&node.addr);
                let Some(inner) = weak.upgrade() else { return };
                let client = ClusterClient { inner };
                let ok = match reply {
                    Ok(Ok(r)) => {
                        let r = r.into_inner();
                        if r.disk_total > 0 {
                            *lock(&node.disk) = Some(super::membership::DiskSpace {
                                total: r.disk_total,
                                free: r.disk_free,
                                reserve: r.disk_reserve,
                            });
                        }
                        if r.leader_id != 0 && r.leader_id == r.node_id {
                            client.leader_answered(r.session_timeout_ms);
                        }
                        if r.leader_id != 0 {
                            if let Some(l) = client
                                .nodes()
                                .iter()
                                .find(|n| n.id.load(Ordering::Relaxed) == r.leader_id)
                            {
                                client.leader_seen(l.addr.clone(), r.term, l.is_up());
                            }
                        }
                        true
                    }
                    Ok(Err(s)) => {
                        tracing::debug!(node = %node.addr, code = ?s.code(), message = s.message(), "ping failed");
                        false
                    }
                    Err(_) => {
                        tracing::debug!(node = %node.addr, "ping timed out");
                        false
                    }
                };
                if node.liveness.heartbeat(ok) {
                    tracing::info!(node = %node.addr, up = ok, "node state changed");
                }
            });
        }
        if last_refresh.elapsed() >= MEMBERS_REFRESH {
            last_refresh = Instant::now();
            if let Some(node) = client.nodes().into_iter().find(|n| n.is_up()) {
                let c = client.clone();
                tokio::spawn(async move {
                    if let Ok(m) = super::membership::members_of(&node.addr, &c.inner.opts).await {
                        let _ = c.update_members(&m);
                    }
                });
            }
        }
        drop(client);
        tokio::time::sleep(interval).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
