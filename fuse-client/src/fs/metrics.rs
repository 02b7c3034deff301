//! The mount's Prometheus metrics (`-o metrics=HOST:PORT`): latency of
//! every FUSE operation, its errors by errno, the client's retries and
//! leader changes, each node as up or down as this mount sees it, chunk
//! cache hits and misses, and the written bytes held in memory. No file
//! names or data: only counts, sizes and latencies.

use std::sync::Arc;
use std::time::Duration;

use fuser::Errno;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use quizfs_proto::metrics_http::{self, Page};
use tokio::sync::Semaphore;

use crate::client::ClusterClient;

/// Labels of a per-operation metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    /// The FUSE operation, e.g. `lookup`, `write`.
    pub op: &'static str,
}

/// Labels of a per-operation error count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpErrno {
    /// The FUSE operation.
    pub op: &'static str,
    /// The errno's name, e.g. `ENOENT`.
    pub errno: String,
}

/// Labels of a per-node gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Node {
    /// The node's `host:port`.
    pub node: String,
}

/// Latency buckets from 50 µs to about 1.6 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Chunk cache hits and misses, shared with the cache.
#[derive(Debug, Clone, Default)]
pub struct CacheCounters {
    /// Reads of a chunk the cache held (or was already fetching).
    pub hits: Counter,
    /// Reads that fetched the chunk from a node.
    pub misses: Counter,
}

/// Every metric a mount exports.
#[derive(Debug)]
pub struct MountMetrics {
    registry: Registry,
    ops: Family<Op, Histogram, fn() -> Histogram>,
    errors: Family<OpErrno, Counter>,
    node_up: Family<Node, Gauge>,
    dirty: Gauge,
    client: ClusterClient,
    budget: Arc<Semaphore>,
    budget_bytes: u64,
}

impl MountMetrics {
    /// The metrics of a mount over `client`, whose written data is held
    /// against `budget` (of `budget_bytes`), with the cache's counters.
    pub fn new(
        client: ClusterClient,
        budget: Arc<Semaphore>,
        budget_bytes: u64,
        cache: &CacheCounters,
    ) -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("quizfs_mount"),
            ops: Family::new_with_constructor(latency as fn() -> Histogram),
            errors: Family::default(),
            node_up: Family::default(),
            dirty: Gauge::default(),
            budget,
            budget_bytes,
            client,
        };
        let c = m.client.counters().clone();
        m.registry.register(
            "op_seconds",
            "FUSE operations, from the kernel's request to the answer, per operation",
            m.ops.clone(),
        );
        m.registry.register(
            "op_errors",
            "FUSE operations answered with an error, per operation and errno",
            m.errors.clone(),
        );
        m.registry.register(
            "node_up",
            "1 when this mount sees the node answer its heartbeats",
            m.node_up.clone(),
        );
        for (name, help, counter) in [
            (
                "call_retries",
                "Calls to the cluster tried again, on another node or after a backoff",
                c.retries,
            ),
            (
                "leader_changes",
                "Times this mount learnt of another Raft leader (failovers)",
                c.leader_changes,
            ),
            (
                "session_renewals",
                "Times this mount found its session expired and registered a new one",
                c.session_renewals,
            ),
            (
                "cache_hits",
                "Chunk reads the mount's cache answered",
                cache.hits.clone(),
            ),
            (
                "cache_misses",
                "Chunk reads fetched from a node",
                cache.misses.clone(),
            ),
        ] {
            m.registry.register(name, help, counter);
        }
        m.registry.register(
            "dirty_bytes",
            "Written bytes held in memory, not yet uploaded",
            m.dirty.clone(),
        );
        m
    }

    /// Records one FUSE operation: how long it took and its error.
    pub fn observe(&self, op: &'static str, took: Duration, error: Option<Errno>) {
        self.ops
            .get_or_create(&Op { op })
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            self.errors
                .get_or_create(&OpErrno {
                    op,
                    errno: errno_name(e.code()),
                })
                .inc();
        }
    }

    /// Reads the mirrored gauges and encodes everything.
    fn render(&self) -> String {
        for n in self.client.nodes() {
            self.node_up
                .get_or_create(&Node {
                    node: n.addr.clone(),
                })
                .set(i64::from(n.is_up()));
        }
        let free = self.budget.available_permits() as u64 * crate::fs::files::BUDGET_UNIT as u64;
        self.dirty
            .set(self.budget_bytes.saturating_sub(free) as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// What `path` answers: `/metrics`, and `/health` (200 while this
    /// mount sees a majority of the nodes up and knows a leader).
    pub fn answer(&self, path: &str) -> Page {
        match path {
            "/metrics" => Page::ok(metrics_http::OPENMETRICS, self.render()),
            "/health" => {
                let nodes = self.client.nodes();
                let up = nodes.iter().filter(|n| n.is_up()).count();
                match self.client.leader() {
                    Some(l) if up * 2 > nodes.len() => Page::text(
                        200,
                        format!("ok: {up} of {} nodes up, leader {l}\n", nodes.len()),
                    ),
                    _ => Page::text(
                        503,
                        format!(
                            "{up} of {} nodes up{}: operations that need the cluster wait or fail\n",
                            nodes.len(),
                            if self.client.leader().is_none() {
                                ", no leader known"
                            } else {
                                ""
                            }
                        ),
                    ),
                }
            }
            _ => Page::text(
                404,
                "not found: this port serves /metrics and /health\n".into(),
            ),
        }
    }
}

/// The name of an errno (its number for a rare one).
fn errno_name(code: i32) -> String {
    let name = match code {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTTY => "ENOTTY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::E2BIG => "E2BIG",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ESTALE => "ESTALE",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        _ => return format!("errno {code}"),
    };
    name.to_string()
}
