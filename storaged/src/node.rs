//! A storage node: opens its stores, serves gRPC, chooses its Raft identity
//! (bootstrap or join), runs healing and garbage collection, and stops in
//! order.
//!
//! Identity. A node with no identity waits until it has heard from every
//! peer. If any peer belongs to an initialized cluster, this node lost its
//! data: it asks the leader for a fresh node id, persists it, and joins as a
//! new member that replaces its old self (never under its old id with an
//! empty log). If no peer is initialized, the bootstrap members are
//! numbered 1..=N in `--peers` order, and the first peer initializes the
//! cluster once every peer has chosen its identity.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::SnapshotPolicy;
use prometheus_client::metrics::histogram::Histogram;
use quizfs_proto::{self as pb, cluster_client::ClusterClient, meta_op::Op};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chunk::heal::Healer;
use crate::chunk::scrub::Scrubber;
use crate::chunk::store::ChunkStore;
use crate::config::Config;
use crate::meta::state_machine::StateMachine;
use crate::metrics::Metrics;
use crate::peers::PeerPool;
use crate::raft::leader_gone::LeaderGone;
use crate::raft::lease::ReadLease;
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::{BasicNode, COMMIT_TIMEOUT, NodeId, Proposer, Raft, propose};
use crate::rpc::chunk_service::ChunkService;
use crate::rpc::cluster_service::ClusterService;
use crate::rpc::meta_service::MetaService;
use crate::rpc::raft_service::RaftService;
use crate::state::NodeState;

/// sled's page cache; the metadata is small, and the daemon's memory must
/// stay bounded.
const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// How long in-flight requests get to finish at shutdown.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);
/// Deadline of a probe or join call to a peer.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between rounds of waiting for peers.
const PEER_RETRY: Duration = Duration::from_millis(300);

const KEY_NODE_ID: &[u8] = b"node_id";
const KEY_JOIN_PENDING: &[u8] = b"join_pending";

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// sled failed to open.
    #[error("cannot open the metadata database in {0}: {1}")]
    Db(String, sled::Error),
    /// A store failed to open.
    #[error("cannot open {0}: {1}")]
    Io(String, std::io::Error),
    /// The listen socket failed.
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// The metrics address given cannot be bound.
    #[error("cannot listen for metrics on {0} (--metrics-listen): {1}")]
    MetricsBind(String, std::io::Error),
    /// Raft failed to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(crate::tls::TlsSetupError),
    /// The data directory holds another metadata format.
    #[error(transparent)]
    Format(crate::meta::format::FormatError),
}

/// Most concurrent requests (HTTP/2 streams) on one connection: a client
/// asking for more waits on its side.
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
/// Requests on one connection that the caller cancelled before this node
/// took them up, after which the connection is closed as abuse (h2's
/// guard against rapid resets, 20 by default). A node frozen or cut off
/// comes back to a backlog of Raft and client calls cancelled by their
/// deadlines; every caller has a certificate, so the bound is the
/// connection's whole window of streams, not a handful.
const MAX_PENDING_RESETS: usize = MAX_STREAMS_PER_CONNECTION as usize;
/// Largest HTTP/2 frame a caller may send: a whole piece of a chunk in
/// one frame, not sixteen of the default 16 KiB.
const MAX_FRAME: u32 = quizfs_proto::PIECE_SIZE as u32;
/// Bytes a caller may send on one request before this node reads them
/// (HTTP/2 stream window): two pieces of a chunk.
pub const STREAM_WINDOW: u32 = 2 * quizfs_proto::PIECE_SIZE as u32;
/// Bytes a caller may send on one connection before this node reads them.
/// Uploads waiting for a slot hold their stream's window unread; room for
/// all a client may send at once, and more for every other call, means a
/// waiting upload never stalls the ones being read, nor a ping (with the
/// HTTP/2 default of one stream's window, a node thawed after a freeze
/// took no upload for seconds and the clients marked it down).
const CONNECTION_WINDOW: u32 =
    quizfs_proto::MAX_UPLOADS_PER_CLIENT as u32 * STREAM_WINDOW + (1 << 20);

fn raft_config(cfg: &Config) -> Result<openraft::Config, StartError> {
    let ms = |d: Duration| d.as_millis() as u64;
    openraft::Config {
        cluster_name: "quizfs".into(),
        heartbeat_interval: ms(cfg.heartbeat),
        election_timeout_min: ms(cfg.election),
        // openraft waits out the leader's lease (= this maximum) and then a
        // random election timeout before a follower stands: a narrow range
        // keeps that short, and split votes are rare with three voters.
        election_timeout_max: ms(cfg.election) * 4 / 3,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.snapshot_logs),
        max_in_snapshot_log_to_keep: cfg.keep_logs,
        snapshot_max_chunk_size: 1024 * 1024,
        // Entries may carry up to MAX_INLINE_BYTES of file data: one
        // AppendEntries stays well inside MAX_RAFT_MESSAGE_BYTES.
        max_payload_entries: 64,
        install_snapshot_timeout: 10_000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))
}

async fn probe(pool: &PeerPool, addr: &str) -> Option<pb::ProbeReply> {
    probe_or_why(pool, addr).await.ok()
}

/// Probes `addr`: its answer, or why there is none (with the chain of
/// errors under a transport error, which names a refused certificate).
async fn probe_or_why(pool: &PeerPool, addr: &str) -> Result<pb::ProbeReply, String> {
    let mut c = ClusterClient::new(pool.channel(addr).map_err(|e| e.to_string())?);
    match tokio::time::timeout(PEER_CALL_TIMEOUT, c.probe(pb::ProbeRequest {})).await {
        Err(_) => Err("no answer in time".into()),
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(pb::status_detail(&s)),
    }
}

/// Calls Join at `addr`, following leader hints a few times.
async fn join_call(pool: &PeerPool, start: &str, req: pb::JoinRequest) -> Result<u64, String> {
    let mut addr = start.to_string();
    for _ in 0..4 {
        let channel = pool.channel(&addr).map_err(|e| e.to_string())?;
        let mut c = ClusterClient::new(channel);
        match tokio::time::timeout(
            crate::rpc::cluster_service::JOIN_TIMEOUT,
            c.join(req.clone()),
        )
        .await
        {
            Err(_) => return Err(format!("join at {addr} timed out")),
            Ok(Ok(r)) => return Ok(r.into_inner().node_id),
            Ok(Err(s)) => match s
                .metadata()
                .get(pb::LEADER_HINT_KEY)
                .and_then(|v| v.to_str().ok())
            {
                Some(leader) if leader != addr => addr = leader.to_string(),
                _ => return Err(format!("join at {addr}: {}", s.message())),
            },
        }
    }
    Err("join: too many redirects".into())
}

enum Identity {
    Existing(NodeId),
    Fresh(NodeId),
    Joining(NodeId),
}

/// Decides this node's Raft id, waiting for peers as the module doc says.
async fn choose_identity(
    cfg: &Config,
    meta: &sled::Tree,
    db: &crate::db::Db,
    log: &LogStore,
    pool: &PeerPool,
    cancel: &CancellationToken,
) -> Result<Option<Identity>, StartError> {
    let db_err = |e| StartError::Db(cfg.data_dir.display().to_string(), e);
    if let Some(v) = meta.get(KEY_NODE_ID).map_err(db_err)? {
        let id = u64::from_be_bytes(v.as_ref().try_into().unwrap_or_default());
        if meta.get(KEY_JOIN_PENDING).map_err(db_err)?.is_some() {
            return Ok(Some(Identity::Joining(id)));
        }
        return Ok(Some(Identity::Existing(id)));
    }
    if !log.is_empty().map_err(db_err)? {
        return Err(StartError::Raft(
            "the Raft log exists but the node id is missing".into(),
        ));
    }
    let me = cfg.me().addr();
    let others: Vec<String> = cfg
        .peers
        .iter()
        .map(|p| p.addr())
        .filter(|a| *a != me)
        .collect();
    let mut rounds = 0u64;
    loop {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let mut answered = 0;
        let mut initialized = None;
        let mut why = Vec::new();
        for addr in &others {
            match probe_or_why(pool, addr).await {
                Ok(p) => {
                    answered += 1;
                    if p.initialized {
                        initialized = Some(addr.clone());
                    }
                }
                Err(e) => why.push(format!("{addr}: {e}")),
            }
        }
        let decided = if let Some(peer) = initialized {
            if !cfg.join || rounds.is_multiple_of(20) {
                tracing::warn!(peer = %peer, "--- empty data directory in an initialized cluster: joining as a new member");
            }
            match join_call(
                pool,
                &peer,
                pb::JoinRequest {
                    addr: me.clone(),
                    node_id: 0,
                },
            )
            .await
            {
                Ok(id) => Some(Identity::Joining(id)),
                Err(e) => {
                    if rounds.is_multiple_of(20) {
                        tracing::warn!(error = %e, "could not get a node id yet");
                    }
                    None
                }
            }
        } else if cfg.join {
            if rounds.is_multiple_of(20) {
                tracing::warn!(peers = ?others, errors = ?why, "--join: no initialized cluster answers yet");
            }
            None
        } else if answered == others.len() {
            Some(Identity::Fresh(cfg.self_index as u64 + 1))
        } else {
            None
        };
        if let Some(identity) = decided {
            let (id, joining) = match identity {
                Identity::Joining(id) => (id, true),
                Identity::Fresh(id) | Identity::Existing(id) => (id, false),
            };
            if joining {
                meta.insert(KEY_JOIN_PENDING, b"1".as_slice())
                    .map_err(db_err)?;
            }
            meta.insert(KEY_NODE_ID, id.to_be_bytes().as_slice())
                .map_err(db_err)?;
            db.flush_async()
                .await
                .map_err(|e| db_err(sled::Error::Io(e)))?;
            return Ok(Some(identity));
        }
        if rounds.is_multiple_of(20) {
            tracing::info!(
                answered,
                peers = others.len(),
                "waiting for every peer to answer before choosing an identity"
            );
        }
        rounds += 1;
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(PEER_RETRY) => {}
        }
    }
}

/// The first peer initializes the cluster once every peer has an identity
/// and none is initialized; then it creates the volume's root.
async fn bootstrap(cfg: Config, raft: Raft, pool: PeerPool, cancel: CancellationToken) {
    let me = cfg.me().addr();
    loop {
        if cancel.is_cancelled() || raft.is_initialized().await.unwrap_or(true) {
            break;
        }
        let mut ready = true;
        for p in cfg.peers.iter().filter(|p| p.addr() != me) {
            match probe(&pool, &p.addr()).await {
                Some(r) if r.initialized => return,
                Some(r) if r.node_id != 0 => {}
                _ => ready = false,
            }
        }
        if ready {
            let members: std::collections::BTreeMap<NodeId, BasicNode> = cfg
                .peers
                .iter()
                .enumerate()
                .map(|(i, p)| (i as u64 + 1, BasicNode { addr: p.addr() }))
                .collect();
            tracing::info!(?members, "--- initializing the cluster");
            if let Err(e) = raft.initialize(members).await {
                tracing::warn!(error = %e, "initialize failed");
            }
            break;
        }
        tokio::time::sleep(PEER_RETRY).await;
    }
}

/// On every node of the first start: whichever leads first creates the
/// volume's root (so the volume is usable at once) and records the copies
/// of each chunk (`--replicas`), once.
async fn init_volume(
    cfg: Config,
    raft: Raft,
    reader: crate::meta::read::MetaReader,
    cancel: CancellationToken,
) {
    let op = pb::MetaOp {
        op: Some(Op::InitVolume(pb::InitVolume {
            replicas: cfg.replicas as u32,
        })),
    };
    while !cancel.is_cancelled() && !reader.replicas_recorded() {
        if raft.metrics().borrow().state == openraft::ServerState::Leader {
            match propose(&raft, Proposer::default(), &op, COMMIT_TIMEOUT).await {
                Ok(_) => tracing::info!(replicas = cfg.replicas, "volume ready"),
                Err(e) => tracing::debug!(error = %e, "volume init retry"),
            }
        }
        tokio::time::sleep(PEER_RETRY).await;
    }
}

/// Completes a join: waits until the leader has made this node a member.
async fn finish_join(
    cfg: Config,
    id: NodeId,
    meta: sled::Tree,
    db: crate::db::Db,
    pool: PeerPool,
    cancel: CancellationToken,
) {
    let me = cfg.me().addr();
    while !cancel.is_cancelled() {
        for p in cfg.peers.iter().filter(|p| p.addr() != me) {
            match join_call(
                &pool,
                &p.addr(),
                pb::JoinRequest {
                    addr: me.clone(),
                    node_id: id,
                },
            )
            .await
            {
                Ok(_) => {
                    let _ = meta.remove(KEY_JOIN_PENDING);
                    let _ = db.flush_async().await;
                    tracing::info!(node = id, "--- joined the cluster as a new member");
                    return;
                }
                Err(e) => tracing::info!(error = %e, "join not complete yet"),
            }
        }
        tokio::time::sleep(PEER_RETRY).await;
    }
}

/// How often the chunks carried in commits are written and synced to
/// disk (the Raft log holds them meanwhile), and before every snapshot:
/// one burst of writes and syncs, not a file and a directory sync per
/// upload competing with the log's own. A restart writes again at most
/// this long of them.
const INLINE_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// Carried chunk bytes held in memory after which they are written
/// (unsynced) before the next sync, so memory holds at most about this
/// much.
const INLINE_WRITE_BYTES: u64 = 32 << 20;

/// Carried chunk bytes in the Raft log after which a snapshot is taken
/// (so the log can be purged) whatever the number of entries.
const INLINE_SNAPSHOT_BYTES: u64 = 256 << 20;

/// Writes the chunks carried in commits to disk once
/// [`INLINE_WRITE_BYTES`] are held, writes and syncs them every
/// [`INLINE_SYNC_INTERVAL`] (each node at its own phase), and asks for a
/// snapshot once
/// [`INLINE_SNAPSHOT_BYTES`] of them are in the log, so file data does not
/// fill the disk twice.
async fn sync_inline(
    sm: StateMachine,
    raft: Raft,
    id: NodeId,
    seconds: Histogram,
    stop: CancellationToken,
) {
    // Nodes sync a third of the interval apart, so that while one is in
    // its burst a Raft write still has a leader and a follower (or two
    // followers) whose log flushes do not wait behind it.
    let phase = INLINE_SYNC_INTERVAL * (id % 3) as u32 / 3;
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, INLINE_SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sync = tokio::select! {
            _ = sm.carried_waiting() => false,
            _ = tick.tick() => true,
            _ = stop.cancelled() => return,
        };
        if !sync && sm.carried_held() < INLINE_WRITE_BYTES {
            continue;
        }
        if sm.carried_since_snapshot() > INLINE_SNAPSHOT_BYTES {
            if let Err(e) = raft.trigger().snapshot().await {
                tracing::warn!(error = %e, "asking for a snapshot");
            }
        }
        let me = sm.clone();
        let began = std::time::Instant::now();
        let done = tokio::task::spawn_blocking(move || {
            if sync {
                me.sync_inline()
            } else {
                me.write_inline()
            }
        })
        .await;
        if sync {
            seconds.observe(began.elapsed().as_secs_f64());
        }
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "writing the chunks carried in commits"),
            Err(e) => tracing::warn!(error = %e, "writing the chunks carried in commits"),
        }
    }
}

/// Runs a node until `shutdown` is cancelled, then stops in order: stop
/// accepting, drain requests, stop background work, stop Raft, flush.
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), StartError> {
    let data = cfg.data_dir.clone();
    let db = crate::db::Db::open(&data.join("meta"), SLED_CACHE_BYTES)
        .map_err(|e| StartError::Db(data.display().to_string(), e))?;
    let db_err = |e| StartError::Db(data.display().to_string(), e);
    let node_meta = db.sled().open_tree("node").map_err(db_err)?;
    crate::meta::format::check(
        &node_meta,
        db.sled().was_recovered(),
        &data.display().to_string(),
    )
    .map_err(StartError::Format)?;
    // After the format check, which refuses a directory this build would
    // misread before the log is moved out of sled.
    let metrics = Arc::new(Metrics::new());
    let log = LogStore::open(&db, &data.join("raftlog"), Some(metrics.log_flush.clone()))
        .map_err(|e| StartError::Io("the Raft log".into(), e))?;
    db.flush()
        .map_err(|e| StartError::Db(data.display().to_string(), sled::Error::Io(e)))?;
    let store = Arc::new(
        ChunkStore::open(&data)
            .map_err(|e| StartError::Io("chunk store".into(), e))?
            .with_reserve(cfg.reserve),
    );
    let sm = StateMachine::open(&db, &data.join("snapshots"))
        .map_err(|e| StartError::Io("snapshots".into(), e))?
        .observe_applies(metrics.apply.clone())
        .with_chunks(store.clone());
    let rewritten = sm
        .rematerialize(&mut log.clone())
        .await
        .map_err(|e| StartError::Io("chunks carried in the Raft log".into(), e))?;
    metrics.carried_rewritten.set(rewritten as i64);
    let (transport, tls) = match &cfg.tls {
        Some(files) => {
            let tls = crate::tls::ServerTls::new(files, &cfg.volume, &cfg.me().host)
                .map_err(StartError::Tls)?;
            (
                quizfs_proto::tls::Transport::Tls(Arc::new(files.clone())),
                Some(Arc::new(tls)),
            )
        }
        None => {
            tracing::warn!(
                "--insecure: plaintext traffic, no certificates; anyone who can reach {} can read and change every file",
                cfg.listen
            );
            (quizfs_proto::tls::Transport::Insecure, None)
        }
    };
    let pool = PeerPool::new(transport);
    let state = Arc::new(NodeState {
        cfg: cfg.clone(),
        raft: OnceLock::new(),
        healer: OnceLock::new(),
        scrubber: OnceLock::new(),
        leader_gone: OnceLock::new(),
        conn_closed: Arc::new(tokio::sync::Notify::new()),
        node_id: AtomicU64::new(0),
        reader: sm.reader(),
        lock_changes: sm.lock_changes(),
        store: store.clone(),
        pool: pool.clone(),
        // Half the election timeout: well inside the followers' leader
        // lease (election_timeout_max), with room for a missed heartbeat.
        lease: Arc::new(ReadLease::new(cfg.election / 2)),
        metrics,
        sessions: Arc::new(crate::meta::expiry::SessionLeases::new(cfg.session_timeout)),
    });

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| StartError::Bind(cfg.listen, e))?;
    let metrics_listener = match crate::metrics::bind(cfg.metrics_listen).await {
        Ok(Some(l)) => {
            tracing::info!(listen = ?cfg.metrics_listen, "metrics and health served over HTTP");
            Some(l)
        }
        Ok(None) => None,
        Err(e) if !cfg.metrics_explicit => {
            tracing::warn!(
                error = %e,
                "metrics not served: cannot listen on the default {}; pass --metrics-listen HOST:PORT (or off)",
                crate::metrics::DEFAULT_LISTEN
            );
            None
        }
        Err(e) => {
            let addr = cfg.metrics_listen.map_or(String::new(), |a| a.to_string());
            return Err(StartError::MetricsBind(addr, e));
        }
    };
    tracing::info!(listen = %cfg.listen, me = %cfg.me().addr(), volume = %cfg.volume, "storaged serving");
    let server_stop = CancellationToken::new();
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch_crl(server_stop.clone()));
    }
    let incoming = crate::tls::incoming(
        accept_nodelay(listener),
        tls.clone(),
        state.conn_closed.clone(),
        server_stop.clone(),
    );
    let server = tokio::spawn(serve(state.clone(), incoming, tls, server_stop.clone()));
    if let Some(l) = metrics_listener {
        tokio::spawn(crate::metrics::serve(l, state.clone(), server_stop.clone()));
    }

    let tasks = TaskTracker::new();
    let work = CancellationToken::new();
    let identity = tokio::select! {
        r = choose_identity(&cfg, &node_meta, &db, &log, &pool, &shutdown) => r?,
        _ = shutdown.cancelled() => None,
    };
    let mut raft = None;
    if let Some(identity) = identity {
        let (id, fresh, joining) = match identity {
            Identity::Existing(id) => (id, false, false),
            Identity::Fresh(id) => (id, true, false),
            Identity::Joining(id) => (id, false, true),
        };
        state.node_id.store(id, Ordering::Relaxed);
        let network = Network {
            self_id: id,
            pool: pool.clone(),
            lease: state.lease.clone(),
            retry: cfg.heartbeat,
        };
        let r = Raft::new(
            id,
            Arc::new(raft_config(&cfg)?),
            network,
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let _ = state.raft.set(r.clone());
        tracing::info!(node = id, "raft started");
        let gone = Arc::new(LeaderGone::new(r.clone(), id, cfg.election * 4 / 3));
        let _ = state.leader_gone.set(gone.clone());
        tasks.spawn(gone.run(state.conn_closed.clone(), work.clone()));
        if joining {
            tasks.spawn(finish_join(
                cfg.clone(),
                id,
                node_meta.clone(),
                db.clone(),
                pool.clone(),
                work.clone(),
            ));
        } else if fresh {
            if cfg.self_index == 0 {
                tasks.spawn(bootstrap(
                    cfg.clone(),
                    r.clone(),
                    pool.clone(),
                    work.clone(),
                ));
            }
            tasks.spawn(init_volume(
                cfg.clone(),
                r.clone(),
                state.reader.clone(),
                work.clone(),
            ));
        }
        let healer = Arc::new(Healer::new(
            store.clone(),
            state.reader.clone(),
            pool.clone(),
            r.clone(),
            id,
            cfg.heal_interval,
            cfg.heal_rate,
        ));
        let _ = state.healer.set(healer.clone());
        tasks.spawn(healer.clone().run(work.clone()));
        let scrubber = Arc::new(Scrubber::new(
            store.clone(),
            healer,
            &cfg.data_dir,
            cfg.scrub_interval,
            cfg.scrub_rate,
            state.metrics.scrub.clone(),
        ));
        let _ = state.scrubber.set(scrubber.clone());
        tasks.spawn(scrubber.run(work.clone()));
        tasks.spawn(crate::meta::expiry::run(
            state.sessions.clone(),
            r.clone(),
            state.reader.clone(),
            state.metrics.sessions_expired.clone(),
            work.clone(),
        ));
        tasks.spawn(sync_inline(
            sm.clone(),
            r.clone(),
            id,
            state.metrics.carried_sync.clone(),
            work.clone(),
        ));
        tasks.spawn(crate::chunk::gc::run(
            store.clone(),
            state.reader.clone(),
            cfg.gc_interval,
            cfg.gc_grace,
            state.metrics.gc_deleted.clone(),
            work.clone(),
        ));
        raft = Some(r);
    }

    shutdown.cancelled().await;
    tracing::info!("--- shutting down");
    // Closing the port tells the followers this node is gone: it must not
    // answer reads from its lease after that.
    state.lease.revoke();
    server_stop.cancel();
    if tokio::time::timeout(DRAIN_DEADLINE, server).await.is_err() {
        tracing::warn!("requests still running after the drain deadline");
    }
    work.cancel();
    tasks.close();
    let _ = tokio::time::timeout(DRAIN_DEADLINE, tasks.wait()).await;
    if let Some(r) = raft {
        if let Err(e) = r.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
    if let Err(e) = tokio::task::spawn_blocking(move || sm.sync_inline()).await {
        tracing::warn!(error = %e, "syncing the chunks carried in commits");
    }
    db.flush_async()
        .await
        .map_err(|e| db_err(sled::Error::Io(e)))?;
    tracing::info!("stopped");
    Ok(())
}

/// The connections `listener` accepts, with Nagle's algorithm off.
/// tonic's `Server::tcp_nodelay` applies only to listeners it binds itself.
/// With Nagle on, a reply sent as headers then body waits out the peer's
/// delayed ACK (40 ms), which hit about one Raft round in twenty.
fn accept_nodelay(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(c) = &conn {
                let _ = c.set_nodelay(true);
            }
            conn
        },
    )
}

async fn serve(
    state: Arc<NodeState>,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<crate::tls::Conn>>,
    tls: Option<Arc<crate::tls::ServerTls>>,
    stop: CancellationToken,
) {
    use crate::tls::Authorized;
    use tonic::transport::Server;
    let max = pb::MAX_MESSAGE_BYTES;
    let metrics = state.metrics.clone();
    let raft = pb::raft_transport_server::RaftTransportServer::new(RaftService {
        state: state.clone(),
    })
    .max_decoding_message_size(pb::MAX_RAFT_MESSAGE_BYTES)
    .max_encoding_message_size(pb::MAX_RAFT_MESSAGE_BYTES);
    let cluster = pb::cluster_server::ClusterServer::new(ClusterService {
        state: state.clone(),
    })
    .max_decoding_message_size(max);
    let meta = pb::meta_server::MetaServer::new(MetaService {
        state: state.clone(),
    })
    .max_decoding_message_size(max);
    let chunks = pb::chunks_server::ChunksServer::new(ChunkService::new(state))
        .max_decoding_message_size(max);
    let res = Server::builder()
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(Some(MAX_FRAME))
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(2)))
        .add_service(Authorized::new(raft, tls.clone(), metrics.clone()))
        .add_service(Authorized::new(cluster, tls.clone(), metrics.clone()))
        .add_service(Authorized::new(meta, tls.clone(), metrics.clone()))
        .add_service(Authorized::new(chunks, tls.clone(), metrics))
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await;
    if let Err(e) = res {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every connection the node serves has Nagle's algorithm off.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        use tokio_stream::StreamExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = std::pin::pin!(accept_nodelay(listener));
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let conn = incoming.next().await.unwrap().unwrap();
        assert!(conn.nodelay().unwrap());
    }
}
