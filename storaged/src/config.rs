//! The command line of `storaged`, checked: the peer list parses and holds
//! this node, the listen address resolves, the data directory is writable.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use quizfs_proto::DEFAULT_PORT;

/// `storaged` flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "storaged",
    version,
    about = "quizfs storage daemon: Raft metadata and replicated chunks"
)]
pub struct Args {
    /// Every storage node of the cluster, comma-separated, as host[:port]
    /// (default port 7420). Give every node the same list.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "join",
        conflicts_with = "join"
    )]
    pub peers: Vec<String>,
    /// Join the running cluster that HOST[:port] belongs to, as a new node
    /// (after `quizfs node add` or `quizfs node replace` admitted it),
    /// instead of starting one from --peers.
    #[arg(long, value_name = "HOST")]
    pub join: Option<String>,
    /// This node's entry in --peers (with --join: its own address as the
    /// others dial it). Default: the entry matching --listen, else the one
    /// matching the hostname.
    #[arg(long)]
    pub name: Option<String>,
    /// Address to listen on, host[:port]. Default: every interface, on this
    /// node's port from --peers.
    #[arg(long)]
    pub listen: Option<String>,
    /// Where metadata, chunks and snapshots are kept.
    #[arg(long, default_value = "/var/lib/quizfs")]
    pub data_dir: PathBuf,
    /// Name of the volume this cluster serves.
    #[arg(long, default_value = "nas")]
    pub volume: String,
    /// Log level or filter (overridden by RUST_LOG).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Take a Raft snapshot after this many log entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_logs: u64,
    /// Log entries kept after a snapshot, for followers that lag a little.
    #[arg(long, default_value_t = 1_000)]
    pub keep_logs: u64,
    /// Raft heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Raft election timeout (lower bound; the upper is 4/3 of it), ms. A
    /// follower that has heard nothing from the leader for the upper bound
    /// (the leader's lease) plus a random election timeout starts an
    /// election: 350-400 ms with the default.
    #[arg(long, default_value_t = 150)]
    pub election_ms: u64,
    /// Seconds an unreferenced chunk is kept before it is deleted.
    #[arg(long, default_value_t = 600)]
    pub gc_grace_secs: u64,
    /// Seconds between garbage collections.
    #[arg(long, default_value_t = 60)]
    pub gc_interval_secs: u64,
    /// Milliseconds between heal scans.
    #[arg(long, default_value_t = 1_000)]
    pub heal_interval_ms: u64,
    /// Most MiB per second a returning node fetches while healing, so that
    /// client I/O keeps its speed (0: no limit).
    #[arg(long, default_value_t = 64)]
    pub heal_rate_mib: u64,
    /// How often every chunk on this node is re-read and checked against
    /// its hash: a number with s, m, h or d (e.g. 7d, 12h, 30s).
    #[arg(long, default_value = "7d", value_parser = parse_interval)]
    pub scrub_interval: Duration,
    /// Most MiB per second scrubbing reads, so that client I/O keeps its
    /// speed (0: no limit). 16 MiB/s covers 9 TiB in 7 days.
    #[arg(long, default_value_t = 16)]
    pub scrub_rate_mib: u64,
    /// How long a client session lives once the leader stops hearing from
    /// its mount (a mount pings every node 10 times a second): then it is
    /// forgotten, with the files it kept open after their unlink and its
    /// file locks (so a dead mount holds locks this long at most). A
    /// number with s, m, h or d.
    #[arg(long, default_value = "1m", value_parser = parse_interval)]
    pub session_timeout: Duration,
    /// Directory with this node's TLS files: ca.crt, node.crt, node.key and
    /// optionally crl.pem (made by `quizfs cert init`).
    #[arg(long, default_value = quizfs_proto::tls::DEFAULT_TLS_DIR)]
    pub tls_dir: PathBuf,
    /// MiB that must stay free on the data directory's disk: chunk uploads
    /// are refused with ENOSPC before they would eat into it, so metadata
    /// can always be written (0: no reserve).
    #[arg(long, default_value_t = 128)]
    pub reserve_mib: u64,
    /// Address for the Prometheus metrics and the health check (HTTP:
    /// /metrics, /health), host:port, or "off". Default 127.0.0.1:7421,
    /// and left off with a warning if another process has that port (a
    /// second node on the same host). They carry no file names or data.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Copies of each chunk (R), from 2 to the number of --peers (default
    /// 3); recorded by the first start (later values, and --join nodes',
    /// are ignored).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Raft voters the cluster keeps when it has that many nodes: 3, or 5
    /// (tolerates two failures, costs a wider quorum per write). The
    /// other nodes are learners. Read by the leader when a node joins or
    /// leaves; give every node the same value.
    #[arg(long, default_value_t = 3, value_parser = parse_voters)]
    pub voters: usize,
    /// Plaintext, without certificates: for local experiments only. Anyone
    /// who can reach the port can read and change everything.
    #[arg(long)]
    pub insecure: bool,
}

/// A configuration problem, reported in one line before exiting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A peer entry does not parse.
    #[error("invalid peer {0:?}: expected host[:port]")]
    BadPeer(String),
    /// The same peer is listed twice.
    #[error("peer {0} is listed twice in --peers")]
    DuplicatePeer(String),
    /// This node is not in the peer list.
    #[error("this node ({0}) is not in --peers {1}; pass --name or --listen with its entry")]
    NotInPeers(String, String),
    /// The listen address does not resolve.
    #[error("cannot listen on {0:?}: {1}")]
    BadListen(String, String),
    /// The data directory cannot be used.
    #[error("data directory {0} is not writable: {1}")]
    DataDir(PathBuf, std::io::Error),
    /// `--metrics-listen` is neither host:port nor "off".
    #[error("invalid --metrics-listen {0:?}: expected host:port or off")]
    BadMetricsListen(String),
    /// A flag value is out of range.
    #[error("{0}")]
    BadValue(&'static str),
    /// The TLS files are missing or unreadable.
    #[error(transparent)]
    Tls(#[from] quizfs_proto::tls::TlsError),
}

/// One storage node as named in `--peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Host name or address.
    pub host: String,
    /// gRPC port.
    pub port: u16,
}

impl Peer {
    /// Parses `host[:port]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let s = s.trim();
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse().map_err(|_| ConfigError::BadPeer(s.to_string()))?,
            ),
            None => (s, DEFAULT_PORT),
        };
        if host.is_empty() || host.contains(['/', ' ', ',']) || port == 0 {
            return Err(ConfigError::BadPeer(s.to_string()));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }

    /// `host:port`, the address other nodes and clients dial.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every node, in `--peers` order (bootstrap node ids are index + 1).
    pub peers: Vec<Peer>,
    /// Index of this node in `peers`.
    pub self_index: usize,
    /// Started with `--join`: `peers` is this node and the node it joins
    /// through, and it never bootstraps a cluster.
    pub join: bool,
    /// Socket to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Volume name.
    pub volume: String,
    /// Snapshot every this many entries.
    pub snapshot_logs: u64,
    /// Entries kept after a snapshot.
    pub keep_logs: u64,
    /// Raft heartbeat.
    pub heartbeat: Duration,
    /// Raft election timeout lower bound.
    pub election: Duration,
    /// Garbage collection grace period.
    pub gc_grace: Duration,
    /// Garbage collection interval.
    pub gc_interval: Duration,
    /// Heal scan interval.
    pub heal_interval: Duration,
    /// Heal fetch limit in bytes per second (0: none).
    pub heal_rate: u64,
    /// Time between the starts of two scrub passes.
    pub scrub_interval: Duration,
    /// Scrub read limit in bytes per second (0: none).
    pub scrub_rate: u64,
    /// Silence after which the leader expires a client session.
    pub session_timeout: Duration,
    /// TLS files, or `None` with `--insecure`.
    pub tls: Option<quizfs_proto::tls::TlsFiles>,
    /// Free bytes chunk uploads must leave on the disk.
    pub reserve: u64,
    /// Where metrics and the health check are served (`None`: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Whether `--metrics-listen` was given: a port in use is then an
    /// error, not a warning.
    pub metrics_explicit: bool,
    /// Voters the cluster keeps (3 or 5).
    pub voters: usize,
    /// Copies of each chunk, recorded at the first start.
    pub replicas: usize,
}

impl Config {
    /// This node's peer entry.
    pub fn me(&self) -> &Peer {
        &self.peers[self.self_index]
    }

    /// Checks the flags.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let mut peers = Vec::new();
        let mut given = args.peers.clone();
        if let Some(target) = &args.join {
            // This node first, then the node it joins through.
            let me = match (&args.name, &args.listen) {
                (Some(n), _) => n.clone(),
                (None, Some(l)) if !l.starts_with("0.0.0.0") && !l.starts_with("[::]") => l.clone(),
                _ => hostname(),
            };
            if Peer::parse(&me).ok() == Some(Peer::parse(target)?) {
                return Err(ConfigError::BadValue(
                    "--join names this node itself; give another member's address",
                ));
            }
            given = vec![me, target.clone()];
        }
        let args = &Args {
            peers: given,
            name: if args.join.is_some() {
                None
            } else {
                args.name.clone()
            },
            ..args.clone()
        };
        for p in args.peers.iter().filter(|p| !p.trim().is_empty()) {
            let peer = Peer::parse(p)?;
            if peers.contains(&peer) {
                return Err(ConfigError::DuplicatePeer(peer.addr()));
            }
            peers.push(peer);
        }
        if peers.is_empty() {
            return Err(ConfigError::BadValue("--peers lists no node"));
        }
        let list = args.peers.join(",");
        let listen_peer =
            match &args.listen {
                Some(l) => Some(Peer::parse(l).map_err(|_| {
                    ConfigError::BadListen(l.clone(), "expected host[:port]".into())
                })?),
                None => None,
            };
        let find = |host: &str, port: Option<u16>| {
            peers
                .iter()
                .position(|p| p.host == host && port.is_none_or(|port| p.port == port))
        };
        let self_index = if args.join.is_some() {
            0
        } else if let Some(name) = &args.name {
            let n = Peer::parse(name)?;
            let port = name.contains(':').then_some(n.port);
            find(&n.host, port)
                .ok_or_else(|| ConfigError::NotInPeers(name.clone(), list.clone()))?
        } else if let Some(l) = &listen_peer {
            let port = args
                .listen
                .as_deref()
                .is_some_and(|s| s.contains(':'))
                .then_some(l.port);
            find(&l.host, port)
                .ok_or_else(|| ConfigError::NotInPeers(l.host.clone(), list.clone()))?
        } else {
            let host = hostname();
            let short = host.split('.').next().unwrap_or_default().to_string();
            find(&host, None)
                .or_else(|| find(&short, None))
                .ok_or_else(|| ConfigError::NotInPeers(format!("hostname {host}"), list.clone()))?
        };
        let me = &peers[self_index];
        let listen_str = match &listen_peer {
            Some(l) => format!(
                "{}:{}",
                l.host,
                if args.listen.as_deref().is_some_and(|s| s.contains(':')) {
                    l.port
                } else {
                    me.port
                }
            ),
            None => format!("0.0.0.0:{}", me.port),
        };
        let listen = listen_str
            .to_socket_addrs()
            .map_err(|e| ConfigError::BadListen(listen_str.clone(), e.to_string()))?
            .next()
            .ok_or_else(|| ConfigError::BadListen(listen_str.clone(), "no address".into()))?;
        check_data_dir(&args.data_dir)?;
        if args.heartbeat_ms == 0 || args.election_ms <= args.heartbeat_ms {
            return Err(ConfigError::BadValue(
                "--election-ms must be larger than --heartbeat-ms > 0",
            ));
        }
        let range = quizfs_proto::placement::REPLICAS_RANGE;
        if let Some(r) = args.replicas {
            if !range.contains(&r) || (args.join.is_none() && r > peers.len()) {
                return Err(ConfigError::BadValue(
                    "--replicas must be from 2 to 9, and at most the number of --peers",
                ));
            }
        }
        if args.snapshot_logs == 0 {
            return Err(ConfigError::BadValue("--snapshot-logs must be at least 1"));
        }
        let tls = if args.insecure {
            None
        } else {
            Some(quizfs_proto::tls::TlsFiles::load(
                &args.tls_dir,
                quizfs_proto::tls::Role::Node,
                "--insecure",
            )?)
        };
        let metrics_listen = match args.metrics_listen.as_deref() {
            Some("off") => None,
            given => {
                let a = given.unwrap_or(crate::metrics::DEFAULT_LISTEN);
                let addr = a
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut i| i.next())
                    .ok_or_else(|| ConfigError::BadMetricsListen(a.to_string()))?;
                Some(addr)
            }
        };
        Ok(Self {
            metrics_listen,
            metrics_explicit: args.metrics_listen.is_some(),
            voters: args.voters,
            replicas: args.replicas.unwrap_or(quizfs_proto::placement::REPLICAS),
            tls,
            reserve: args.reserve_mib.saturating_mul(1024 * 1024),
            peers,
            self_index,
            join: args.join.is_some(),
            listen,
            data_dir: args.data_dir.clone(),
            volume: args.volume.clone(),
            snapshot_logs: args.snapshot_logs,
            keep_logs: args.keep_logs,
            heartbeat: Duration::from_millis(args.heartbeat_ms),
            election: Duration::from_millis(args.election_ms),
            gc_grace: Duration::from_secs(args.gc_grace_secs),
            gc_interval: Duration::from_secs(args.gc_interval_secs.max(1)),
            heal_interval: Duration::from_millis(args.heal_interval_ms.max(10)),
            heal_rate: args.heal_rate_mib.saturating_mul(1024 * 1024),
            scrub_interval: args.scrub_interval,
            scrub_rate: args.scrub_rate_mib.saturating_mul(1024 * 1024),
            session_timeout: args.session_timeout,
        })
    }
}

/// Parses `--voters`: 3 or 5.
fn parse_voters(s: &str) -> Result<usize, String> {
    match s.trim() {
        "3" => Ok(3),
        "5" => Ok(5),
        other => Err(format!("{other:?}: the cluster keeps 3 or 5 voters")),
    }
}

/// Parses a time span such as `7d`, `12h`, `30m`, `45s` or `90` (seconds),
/// at least one second.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a number followed by s, m, h or d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(mult) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        Some(_) => Err("must be at least 1s".into()),
        None => Err(format!("{s:?} is too long")),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn check_data_dir(dir: &std::path::Path) -> Result<(), ConfigError> {
    let err = |e| ConfigError::DataDir(dir.to_path_buf(), e);
    std::fs::create_dir_all(dir).map_err(err)?;
    let probe = dir.join(".write-probe");
    std::fs::write(&probe, b"probe").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}
