//! What tests and benchmarks look at: clients of the cluster, each node's
//! status, the leader, health and heal, chunks on disk, logs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quizfs::client::{ClientOptions, ClusterClient};
use quizfs_proto::{self as pb, ChunkHash, cluster_client::ClusterClient as ClusterRpc};

use super::{Cluster, wait_until};

impl Cluster {
    /// A client connected through nas1, with the other nodes as backups.
    pub async fn client(&self) -> ClusterClient {
        self.client_with(ClientOptions::default()).await
    }

    /// A client with the given options, and this cluster's transport.
    pub async fn client_with(&self, mut opts: ClientOptions) -> ClusterClient {
        opts.transport = self.transport();
        let servers: Vec<String> = (0..self.nodes.len()).map(|i| self.addr(i)).collect();
        ClusterClient::connect(&servers, opts)
            .await
            .expect("client connects")
    }

    /// Node `i`'s own status, if it answers within a second.
    pub async fn status(&self, i: usize) -> Option<pb::NodeStatusReply> {
        let ch = quizfs::client::membership::channel(&self.addr(i), &self.transport()).ok()?;
        let mut rpc = ClusterRpc::new(ch);
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            rpc.node_status(pb::NodeStatusRequest {}),
        )
        .await;
        r.ok()?.ok().map(|r| r.into_inner())
    }

    /// Index of the node that reports itself leader.
    pub async fn leader(&self) -> Option<usize> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].child.is_some()
                && self.status(i).await.is_some_and(|s| s.role == "leader")
            {
                return Some(i);
            }
        }
        None
    }

    /// Waits until the running nodes have one leader and have all applied
    /// the same index.
    pub async fn wait_healthy(&self, timeout: Duration) {
        wait_until(
            timeout,
            "a leader and every running node caught up",
            || async {
                let mut seen = Vec::new();
                for i in 0..self.nodes.len() {
                    if self.nodes[i].child.is_some() {
                        seen.push(self.status(i).await);
                    }
                }
                let desc = format!(
                    "{:?}",
                    seen.iter()
                        .map(|s| s.as_ref().map(|s| (s.role.clone(), s.last_applied)))
                        .collect::<Vec<_>>()
                );
                let all: Vec<_> = seen.into_iter().flatten().collect();
                let leaders = all.iter().filter(|s| s.role == "leader").count();
                let running = self.nodes.iter().filter(|n| n.child.is_some()).count();
                let applied: Vec<u64> = all.iter().map(|s| s.last_applied).collect();
                if all.len() == running
                    && leaders == 1
                    && applied.iter().all(|a| *a == applied[0] && *a > 1)
                {
                    Ok(())
                } else {
                    Err(desc)
                }
            },
        )
        .await
    }

    /// Waits until node `i` has caught up with the leader as it is now and
    /// a heal scan at or past that point left nothing missing; false if
    /// that did not happen within `timeout`.
    pub async fn wait_node_healed(&self, i: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let target = loop {
            if let Some(l) = self.leader().await {
                if let Some(s) = self.status(l).await {
                    break s.last_applied;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        while Instant::now() < deadline {
            if let Some(s) = self.status(i).await {
                if s.last_applied >= target && s.heal_scanned_index >= target && s.heal_backlog == 0
                {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Path of a chunk file on node `i`.
    pub fn chunk_path(&self, i: usize, hash: &ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.nodes[i]
            .dir
            .join("chunks")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(hex)
    }

    /// Whether node `i` holds a chunk file whose content matches its hash.
    pub fn has_good_chunk(&self, i: usize, hash: &ChunkHash) -> bool {
        std::fs::read(self.chunk_path(i, hash)).is_ok_and(|d| ChunkHash::of(&d) == *hash)
    }

    /// Last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let s = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Data directory of node `i`.
    pub fn dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }
}
