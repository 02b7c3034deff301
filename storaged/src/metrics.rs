//! A node's Prometheus metrics and health check, served over plain HTTP on
//! `--metrics-listen` (loopback by default): `/metrics` in the Prometheus
//! text format and `/health` (200 when the node is in a cluster with a
//! leader, 503 with one line why otherwise). Neither carries file names or
//! data: only counts, sizes, latencies and Raft positions.
//!
//! Gauges that mirror state kept elsewhere (Raft's position, the chunk
//! store, the disk, the healer) are read when a scrape comes; counters and
//! histograms are updated where the work happens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use openraft::ServerState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use quizfs_proto::metrics_http::{self, Page};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::chunk::scrub::ScrubCounters;
use crate::state::NodeState;

/// Default `--metrics-listen`: loopback only, so nothing is exposed unless
/// asked.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7421";

/// Labels of a per-method RPC metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    /// The gRPC path, e.g. `/quizfs.v1.Meta/Create`.
    pub method: String,
}

/// Labels of a per-status RPC error count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    /// The gRPC path.
    pub method: String,
    /// The gRPC status code's name, e.g. `Unavailable`.
    pub code: String,
}

/// Latency buckets from 50 µs to about 1.6 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every metric a node exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Raft proposals (metadata writes) this node made as the leader.
    pub proposals: Counter,
    /// Seconds of each Raft log flush (one `fdatasync` of a segment).
    pub log_flush: Histogram,
    /// Seconds of each metadata write through Raft on the leader: append,
    /// replicate, commit, apply.
    pub propose: Histogram,
    /// Seconds of each state-machine apply of a batch of entries.
    pub apply: Histogram,
    /// Seconds of each periodic sync of the chunks carried in commits.
    pub carried_sync: Histogram,
    /// Seconds until each gRPC call's response headers, per method.
    pub rpc: Family<Method, Histogram, fn() -> Histogram>,
    /// gRPC calls answered with an error status at once, per method and
    /// code.
    pub rpc_errors: Family<MethodCode, Counter>,
    /// Calls refused for their certificate (missing, revoked, or not
    /// allowed the method).
    pub tls_refusals: Counter,
    /// Chunk uploads that waited because their sender had all its upload
    /// slots taken.
    pub upload_limit_hits: Counter,
    /// Chunks deleted by garbage collection.
    pub gc_deleted: Counter,
    /// Client sessions this node expired as the leader.
    pub sessions_expired: Counter,
    /// What scrubbing read and found.
    pub scrub: ScrubCounters,
    /// Chunks carried in commits that start-up wrote again from the Raft
    /// log (a crash had taken them back before they were synced).
    pub carried_rewritten: Gauge,
    carried_bytes: Gauge,
    is_leader: Gauge,
    has_leader: Gauge,
    term: Gauge,
    last_log_index: Gauge,
    applied_index: Gauge,
    chunks: Gauge,
    chunk_bytes: Gauge,
    disk_free: Gauge,
    disk_reserve: Gauge,
    heal_backlog: Gauge,
    healed_total: Gauge<u64, AtomicU64>,
    healed_bytes: Gauge<u64, AtomicU64>,
    heal_rate_limit: Gauge,
    scrub_running: Gauge,
    scrub_progress: Gauge<f64, AtomicU64>,
    scrub_last_finished: Gauge,
    scrub_last_started: Gauge,
    scrub_interval: Gauge,
    sessions: Gauge,
    orphans: Gauge,
    file_locks: Gauge,
    lock_waiters: Gauge,
    session_leases: Gauge,
    session_timeout: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered under the `quizfs_` prefix.
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("quizfs"),
            proposals: Counter::default(),
            log_flush: latency(),
            propose: latency(),
            apply: latency(),
            carried_sync: latency(),
            rpc: Family::new_with_constructor(latency as fn() -> Histogram),
            rpc_errors: Family::default(),
            tls_refusals: Counter::default(),
            upload_limit_hits: Counter::default(),
            gc_deleted: Counter::default(),
            sessions_expired: Counter::default(),
            sessions: Gauge::default(),
            carried_rewritten: Gauge::default(),
            carried_bytes: Gauge::default(),
            orphans: Gauge::default(),
            file_locks: Gauge::default(),
            lock_waiters: Gauge::default(),
            session_leases: Gauge::default(),
            session_timeout: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            term: Gauge::default(),
            last_log_index: Gauge::default(),
            applied_index: Gauge::default(),
            chunks: Gauge::default(),
            chunk_bytes: Gauge::default(),
            disk_free: Gauge::default(),
            disk_reserve: Gauge::default(),
            heal_backlog: Gauge::default(),
            healed_total: Gauge::default(),
            healed_bytes: Gauge::default(),
            heal_rate_limit: Gauge::default(),
            scrub: ScrubCounters::default(),
            scrub_running: Gauge::default(),
            scrub_progress: Gauge::default(),
            scrub_last_finished: Gauge::default(),
            scrub_last_started: Gauge::default(),
            scrub_interval: Gauge::default(),
        };
        // Each field under its name and help text (a counter's name gets
        // `_total` from the registry).
        macro_rules! register {
            ($($field:ident: $name:literal, $help:literal;)*) => {
                $(m.registry.register($name, $help, m.$field.clone());)*
            };
        }
        register! {
            proposals: "raft_proposals", "Metadata writes from clients committed by this node as leader";
            log_flush: "raft_log_flush_seconds", "Raft log flushes (fdatasync of a segment)";
            propose: "raft_propose_seconds", "Metadata writes on the leader: append, replicate, commit, apply";
            apply: "raft_apply_seconds", "State-machine applies of a batch of entries";
            carried_sync: "carried_sync_seconds", "Syncs of the chunks carried in commits (every 5 s: write what is held, sync every file and directory written)";
            is_leader: "raft_is_leader", "1 when this node is the Raft leader";
            has_leader: "raft_has_leader", "1 when this node knows a leader";
            term: "raft_term", "Current Raft term";
            last_log_index: "raft_last_log_index", "Index of the last entry in this node's log";
            applied_index: "raft_applied_index", "Index of the last entry applied to the state machine";
            rpc: "rpc_seconds", "gRPC calls until their response headers, per method";
            rpc_errors: "rpc_errors", "gRPC calls answered with an error status, per method and code";
            tls_refusals: "tls_refusals", "Calls refused for their certificate";
            upload_limit_hits: "upload_limit_hits", "Chunk uploads that waited for one of their sender's upload slots";
            gc_deleted: "gc_deleted_chunks", "Chunks deleted by garbage collection";
            chunks: "chunks", "Chunks stored";
            chunk_bytes: "chunk_bytes", "Bytes of the chunks stored";
            disk_free: "disk_free_bytes", "Free bytes on the data directory's disk";
            disk_reserve: "disk_reserve_bytes", "Bytes chunk uploads must leave free (--reserve-mib)";
            heal_backlog: "heal_backlog_chunks", "Chunks this node still has to fetch from its peers";
            healed_total: "healed_chunks", "Chunks this node has fetched from its peers since it started";
            healed_bytes: "healed_bytes", "Bytes this node has fetched from its peers since it started";
            heal_rate_limit: "heal_rate_limit_bytes_per_second", "Most bytes per second healing fetches (--heal-rate-mib; 0: no limit)";
            scrub_running: "scrub_running", "1 while a scrub pass runs";
            scrub_progress: "scrub_pass_progress_ratio", "Share of the current (or last) scrub pass's bytes read";
            scrub_last_finished: "scrub_last_pass_finished_timestamp_seconds", "When the last scrub pass finished (Unix seconds; 0: none since start)";
            scrub_last_started: "scrub_last_complete_pass_started_timestamp_seconds", "When the last complete scrub pass started (Unix seconds, kept across restarts; 0: never)";
            scrub_interval: "scrub_interval_seconds", "Time between the starts of two scrub passes (--scrub-interval)";
            sessions_expired: "sessions_expired", "Client sessions this node expired as the leader";
            sessions: "sessions", "Client sessions in the state machine's session table";
            orphans: "orphans", "Inodes without links kept for a session that holds them open";
            file_locks: "file_locks", "File locks (fcntl, OFD, flock ranges) held in the state machine";
            lock_waiters: "lock_waiters", "Lock requests queued behind a conflicting lock";
            session_leases: "session_leases", "Sessions this node keeps a last-heard time for";
            session_timeout: "session_timeout_seconds", "Silence after which the leader expires a session (--session-timeout)";
            carried_bytes: "carried_bytes", "Bytes of small writes carried in commits held in memory, not yet written to the chunk store";
            carried_rewritten: "carried_rewritten_chunks", "Chunks carried in commits that start-up wrote again from the Raft log";
        }
        let sc = m.scrub.clone();
        for (name, help, c) in [
            (
                "scrub_checked_chunks",
                "Chunks scrubbing read and found intact",
                sc.checked_chunks,
            ),
            (
                "scrub_checked_bytes",
                "Bytes of the chunks scrubbing found intact",
                sc.checked_bytes,
            ),
            (
                "scrub_corrupt_chunks",
                "Chunks scrubbing found corrupt (quarantined, fetched again from a peer)",
                sc.corrupt,
            ),
            (
                "scrub_read_errors",
                "Chunks scrubbing could not read (disk I/O errors)",
                sc.read_errors,
            ),
            ("scrub_passes", "Scrub passes completed", sc.passes),
        ] {
            m.registry.register(name, help, c);
        }
        m
    }

    /// Reads the mirrored gauges from the node and encodes everything.
    fn render(&self, node: &NodeState) -> String {
        if let Some(raft) = node.raft.get() {
            let m = raft.metrics().borrow().clone();
            self.is_leader
                .set(i64::from(m.state == ServerState::Leader));
            self.has_leader.set(i64::from(m.current_leader.is_some()));
            self.term.set(m.current_term as i64);
            self.last_log_index
                .set(m.last_log_index.unwrap_or(0) as i64);
            self.applied_index
                .set(m.last_applied.map_or(0, |l| l.index) as i64);
        }
        let (chunks, bytes) = node.store.stats();
        self.carried_bytes.set(node.store.carried_bytes() as i64);
        self.chunks.set(chunks as i64);
        self.chunk_bytes.set(bytes as i64);
        let (_, free) = crate::disk::space(&node.cfg.data_dir);
        self.disk_free.set(free as i64);
        self.disk_reserve.set(node.cfg.reserve as i64);
        if let Some(h) = node.healer.get() {
            self.heal_backlog.set(h.backlog() as i64);
            self.healed_total.set(h.healed_total());
            self.healed_bytes.set(h.healed_bytes());
            self.heal_rate_limit.set(h.rate_limit() as i64);
        }
        if let Some(s) = node.scrubber.get() {
            let p = s.progress();
            self.scrub_running.set(i64::from(p.running));
            let ratio = if p.total_bytes == 0 {
                f64::from(u8::from(p.started > 0))
            } else {
                p.done_bytes as f64 / p.total_bytes as f64
            };
            self.scrub_progress.set(ratio);
            self.scrub_last_finished.set(p.finished as i64);
            self.scrub_last_started.set(s.last_pass_start() as i64);
            self.scrub_interval.set(s.interval().as_secs() as i64);
        }
        if let Ok(ids) = node.reader.session_ids() {
            self.sessions.set(ids.len() as i64);
        }
        if let Ok(n) = node.reader.orphan_count() {
            self.orphans.set(n as i64);
        }
        if let Ok((held, queued)) = node.reader.lock_counts() {
            self.file_locks.set(held as i64);
            self.lock_waiters.set(queued as i64);
        }
        self.session_leases.set(node.sessions.tracked() as i64);
        self.session_timeout
            .set(node.sessions.timeout().as_secs() as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Records one gRPC call: its time to response headers and, when the
/// headers already carry an error status, that error.
pub fn observe_call(m: &Metrics, method: String, took: Duration, headers: &hyper::HeaderMap) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .filter(|c| *c != 0);
    // Methods that do not exist count as one, so that callers cannot
    // grow the set of series.
    let method = if code == Some(tonic::Code::Unimplemented as i32) {
        "unknown".to_string()
    } else {
        method
    };
    if let Some(c) = code {
        let code = format!("{:?}", tonic::Code::from(c));
        m.rpc_errors
            .get_or_create(&MethodCode {
                method: method.clone(),
                code,
            })
            .inc();
    }
    m.rpc
        .get_or_create(&Method { method })
        .observe(took.as_secs_f64());
}

/// The leader's id when the node is healthy (in a cluster with a leader,
/// and as the leader, heard from by a majority lately), or why not.
fn health(node: &NodeState) -> Result<u64, String> {
    let Some(raft) = node.raft.get() else {
        return Err("not started: no Raft identity yet".into());
    };
    let m = raft.metrics().borrow().clone();
    match (&m.state, m.current_leader) {
        (ServerState::Leader, _) => match m.millis_since_quorum_ack {
            Some(ms) if ms <= LEADER_QUORUM_MS => Ok(m.id),
            Some(ms) => Err(format!(
                "leader in term {} without word from a majority for {ms} ms (the other nodes may be down or cut off)",
                m.current_term
            )),
            None => Err(format!(
                "leader in term {} not yet acknowledged by a majority",
                m.current_term
            )),
        },
        (_, Some(leader)) => Ok(leader),
        (_, None) => Err(format!(
            "no leader known in term {} (a majority of the nodes may be down or cut off)",
            m.current_term
        )),
    }
}

/// Longest a leader may go without acknowledgements from a majority and
/// still call itself healthy: a few heartbeats and an election timeout.
const LEADER_QUORUM_MS: u64 = 1_000;

/// What `path` answers on this node.
fn answer(node: &NodeState, path: &str) -> Page {
    match path {
        "/metrics" => Page::ok(metrics_http::OPENMETRICS, node.metrics.render(node)),
        "/health" => match health(node) {
            Ok(leader) => Page::text(200, format!("ok: leader {leader}\n")),
            Err(why) => Page::text(503, format!("{why}\n")),
        },
        _ => Page::text(
            404,
            "not found: this port serves /metrics and /health\n".into(),
        ),
    }
}

/// Serves `/metrics` and `/health` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, node: Arc<NodeState>, stop: CancellationToken) {
    metrics_http::serve(
        listener,
        move |path| answer(&node, path),
        stop.cancelled_owned(),
    )
    .await;
}

/// Binds the metrics listener. `None` when metrics are off.
pub async fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(a) => TcpListener::bind(a).await.map(Some),
    }
}
