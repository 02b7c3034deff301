//! `quizfs`: the command line of the quizfs client: `mount`, `umount`,
//! `status`, `heal info`, `scrub`, `cert`; also `mount.quizfs`, the helper mount(8)
//! runs for `-t quizfs`.

mod mount;
mod node_cmd;
mod scrub;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quizfs::client::ClientOptions;
use quizfs::client::membership::{channel, members_of, with_port};
use quizfs_proto::{self as pb, cluster_client::ClusterClient as ClusterRpc};

#[derive(Debug, Parser)]
#[command(
    name = "quizfs",
    version,
    about = "quizfs client: mount a quizfs volume, unmount it, show cluster status"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Mount a volume: returns once it is usable and keeps serving in the
    /// background (-f: in the foreground).
    #[command(after_help = mount::OPTIONS_HELP)]
    Mount {
        /// SERVER:/VOLUME, e.g. nas1:/nas. SERVER is only the first contact.
        spec: String,
        /// An existing directory.
        mountpoint: PathBuf,
        /// Mount options, comma-separated (see below).
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground (for debugging and service managers).
        #[arg(short = 'f', long)]
        foreground: bool,
    },
    /// Unmount a quizfs mount (as umount or fusermount3 -u would).
    Umount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Show every node: address, up/down, Raft role, term, applied index,
    /// chunks, bytes, free disk space, version, membership (voter, learner,
    /// draining), its share of chunks by placement, surplus copies and heal
    /// backlog, and the rebalance backlog with its rate. Exits 1 when the
    /// cluster has no leader.
    Status {
        /// Any storage node, host[:port].
        host: String,
        /// How long to wait for each node.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Self-heal: what each node still has to fetch.
    Heal {
        #[command(subcommand)]
        cmd: HealCmd,
    },
    /// Scrub: every node re-reads every chunk it holds and checks it
    /// against its hash.
    Scrub {
        #[command(subcommand)]
        cmd: scrub::ScrubCmd,
    },
    /// Storage nodes: add, remove (drain first) and replace, while the
    /// volume stays mounted. Needs a read-write client certificate.
    Node {
        #[command(subcommand)]
        cmd: node_cmd::NodeCmd,
    },
    /// Certificates: the cluster's CA, node and client certificates,
    /// revocation.
    Cert {
        #[command(subcommand)]
        cmd: CertCmd,
    },
}

#[derive(Debug, Subcommand)]
enum HealCmd {
    /// List, per node, the chunks its metadata references and its disk
    /// lacks (the heal backlog). Exits 0 when every node answers and none
    /// has anything pending, 1 otherwise.
    Info {
        /// Any storage node, host[:port].
        host: String,
        /// List at most this many chunk hashes per node (the count is
        /// always exact).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// How long to wait for each node.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Keep asking for up to this many seconds until every node has
        /// nothing pending and has scanned up to the index the cluster had
        /// applied when the command started (works under steady writes).
        #[arg(long, default_value_t = 0)]
        wait: u64,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

/// How `status`, `heal` and `scrub` reach the nodes.
#[derive(Debug, clap::Args)]
struct TlsArgs {
    /// Directory with ca.crt, client.crt and client.key.
    #[arg(long, default_value = pb::tls::DEFAULT_TLS_DIR)]
    tls_dir: PathBuf,
    /// Plaintext, without certificates (only for nodes run with --insecure).
    #[arg(long)]
    insecure: bool,
}

impl TlsArgs {
    fn transport(&self) -> anyhow::Result<pb::tls::Transport> {
        if self.insecure {
            return Ok(pb::tls::Transport::Insecure);
        }
        let files = pb::tls::TlsFiles::load(&self.tls_dir, pb::tls::Role::Client, "--insecure")?;
        Ok(pb::tls::Transport::Tls(std::sync::Arc::new(files)))
    }
}

#[derive(Debug, Subcommand)]
enum CertCmd {
    /// Create the cluster's CA and a certificate for every storage node, in
    /// OUT/nodes/HOST/ (copy each to its node's --tls-dir).
    Init {
        /// Every storage node, as given to storaged --peers.
        #[arg(long, value_delimiter = ',', required = true)]
        peers: Vec<String>,
        /// The CA directory to create.
        #[arg(long, default_value = pb::tls::DEFAULT_CA_DIR)]
        out: PathBuf,
        /// Days the CA certificate is valid.
        #[arg(long, default_value_t = 3650)]
        ca_days: u32,
        /// Days the node certificates are valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a certificate for one more storage node (HOST as in --peers),
    /// in CA/nodes/HOST/.
    Node {
        /// The node's host[:port] as in --peers.
        peer: String,
        /// The CA directory.
        #[arg(long, default_value = pb::tls::DEFAULT_CA_DIR)]
        ca: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Issue a client certificate (for a web server), in CA/clients/NAME/:
    /// copy that directory to the client's /etc/quizfs.
    Client {
        /// The client's name, e.g. s1.
        name: String,
        /// Only reads: writes are refused with EACCES.
        #[arg(long)]
        read_only: bool,
        /// Volumes the client may mount, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "nas")]
        volumes: Vec<String>,
        /// The CA directory.
        #[arg(long, default_value = pb::tls::DEFAULT_CA_DIR)]
        ca: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Revoke every certificate issued to a client: writes CA/crl.pem (and
    /// the copies in CA/nodes/*/); nodes reload it within a second of it
    /// changing in their --tls-dir.
    Revoke {
        /// The client's name.
        name: String,
        /// The CA directory.
        #[arg(long, default_value = pb::tls::DEFAULT_CA_DIR)]
        ca: PathBuf,
    },
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let helper = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n == "mount.quizfs");
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser=warn,h2=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if helper {
        return mount::helper(&args[1..]);
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Mount {
            spec,
            mountpoint,
            options,
            foreground,
        } => {
            let req = match mount::parse(&spec, &mountpoint, &options) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("quizfs: mount: {e}");
                    return ExitCode::from(2);
                }
            };
            return if foreground {
                mount::mount_foreground(req)
            } else {
                mount::mount_background(&req)
            };
        }
        Cmd::Umount { mountpoint } => return mount::umount(&mountpoint),
        Cmd::Cert { cmd } => {
            return match cert(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("quizfs: cert: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Cmd::Status { .. } | Cmd::Heal { .. } | Cmd::Scrub { .. } | Cmd::Node { .. } => {}
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quizfs: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quizfs: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Status {
            host,
            timeout_ms,
            tls,
        } => status(&host, Duration::from_millis(timeout_ms), &tls.transport()?).await,
        Cmd::Heal {
            cmd:
                HealCmd::Info {
                    host,
                    limit,
                    timeout_ms,
                    wait,
                    tls,
                },
        } => {
            heal_info(
                &host,
                limit,
                Duration::from_millis(timeout_ms),
                Duration::from_secs(wait),
                &tls.transport()?,
            )
            .await
        }
        Cmd::Scrub { cmd } => scrub::run(cmd).await,
        Cmd::Node { cmd } => node_cmd::run(cmd).await,
        Cmd::Mount { .. } | Cmd::Umount { .. } | Cmd::Cert { .. } => Ok(ExitCode::SUCCESS),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `quizfs cert ...`.
fn cert(cmd: CertCmd) -> Result<(), quizfs::cert::CertError> {
    use quizfs::cert::{Ca, Validity};
    match cmd {
        CertCmd::Init {
            peers,
            out,
            ca_days,
            days,
        } => {
            let dirs = quizfs::cert::init(&out, &peers, ca_days, days)?;
            println!("created the cluster CA in {}", out.display());
            println!(
                "keep {} secret: whoever holds it can make certificates for this cluster",
                out.join(pb::tls::CA_KEY).display()
            );
            for d in dirs {
                println!(
                    "node certificate: {} (copy to that node's --tls-dir, default {})",
                    d.display(),
                    pb::tls::DEFAULT_TLS_DIR
                );
            }
        }
        CertCmd::Node { peer, ca, days } => {
            let d = Ca::open(&ca)?.issue_node(&peer, Validity::days(days))?;
            println!(
                "node certificate: {} (copy to that node's --tls-dir)",
                d.display()
            );
        }
        CertCmd::Client {
            name,
            read_only,
            volumes,
            ca,
            days,
        } => {
            let d =
                Ca::open(&ca)?.issue_client(&name, read_only, &volumes, Validity::days(days))?;
            println!(
                "client certificate for {name} ({}, volumes {}): {} (copy to the client's {} or pass -o tls_dir=DIR)",
                if read_only { "read-only" } else { "read-write" },
                volumes.join(","),
                d.display(),
                pb::tls::DEFAULT_TLS_DIR
            );
        }
        CertCmd::Revoke { name, ca } => {
            let ca = Ca::open(&ca)?;
            let n = ca.revoke_client(&name)?;
            let files = ca.write_crl()?;
            println!("revoked {n} certificate(s) of {name}; revocation list written to:");
            for f in files {
                println!("  {}", f.display());
            }
            println!("copy crl.pem to every node's --tls-dir: nodes reload it within a second");
        }
    }
    Ok(())
}

/// Asks every member, one after another, with `call` on its own channel,
/// each within `timeout`: its answer, or why there is none.
async fn ask_each<T, F, Fut>(
    members: &pb::MembersReply,
    timeout: Duration,
    transport: &pb::tls::Transport,
    call: F,
) -> Vec<(pb::Member, Result<T, String>)>
where
    F: Fn(ClusterRpc<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut out = Vec::new();
    for m in &members.members {
        let reply = async {
            let rpc = ClusterRpc::new(channel(&m.addr, transport).map_err(|e| e.to_string())?);
            match tokio::time::timeout(timeout, call(rpc)).await {
                Err(_) => Err(format!("no answer within {timeout:?}")),
                Ok(Err(s)) => Err(s.message().to_string()),
                Ok(Ok(r)) => Ok(r.into_inner()),
            }
        }
        .await;
        out.push((m.clone(), reply));
    }
    out
}

/// The members of the cluster `host` belongs to, any volume.
async fn cluster_members(
    host: &str,
    timeout: Duration,
    transport: &pb::tls::Transport,
) -> anyhow::Result<pb::MembersReply> {
    let opts = ClientOptions {
        call_timeout: timeout,
        volume: String::new(),
        transport: transport.clone(),
        ..ClientOptions::default()
    };
    let addr = with_port(host);
    members_of(&addr, &opts)
        .await
        .with_context(|| format!("cannot reach {addr}"))
}

async fn status(
    host: &str,
    timeout: Duration,
    transport: &pb::tls::Transport,
) -> anyhow::Result<ExitCode> {
    let members = cluster_members(host, timeout, transport).await?;
    let rows = ask_each(&members, timeout, transport, |mut rpc| async move {
        rpc.node_status(pb::NodeStatusRequest {}).await
    })
    .await;
    println!(
        "volume {}  term {}  copies {}",
        members.volume, members.term, members.replicas
    );
    println!(
        "{:<5} {:<22} {:<5} {:<10} {:>5} {:>9} {:>8} {:>10} {:>10} {:>8} {:<8} {:>8} {:>8} {:>5}",
        "NODE",
        "ADDRESS",
        "STATE",
        "ROLE",
        "TERM",
        "APPLIED",
        "CHUNKS",
        "BYTES",
        "FREE",
        "VERSION",
        "MEMBER",
        "SHARE",
        "SURPLUS",
        "HEAL"
    );
    let mut leaders = 0;
    let mut insecure = transport.is_insecure();
    let (mut to_copy, mut to_delete, mut healed) = (0u64, 0u64, Vec::new());
    for (m, reply) in rows {
        let addr = &m.addr;
        match reply.ok() {
            Some(r) => {
                if r.role == "leader" {
                    leaders += 1;
                }
                insecure |= r.insecure;
                to_copy += r.heal_backlog;
                to_delete += r.surplus;
                healed.push((m.addr.clone(), r.healed_total, r.healed_bytes));
                println!(
                    "{:<5} {:<22} {:<5} {:<10} {:>5} {:>9} {:>8} {:>10} {:>10} {:>8} {:<8} {:>8} {:>8} {:>5}",
                    r.node_id,
                    addr,
                    "up",
                    r.role,
                    r.term,
                    r.last_applied,
                    r.chunks,
                    human(r.chunk_bytes),
                    human(r.disk_free),
                    if r.version.is_empty() {
                        "?"
                    } else {
                        &r.version
                    },
                    if m.draining {
                        "draining"
                    } else if m.voter {
                        "voter"
                    } else {
                        "learner"
                    },
                    r.placed,
                    r.surplus,
                    r.heal_backlog
                );
            }
            None => println!("{:<5} {:<22} {:<5}", m.id, addr, "down"),
        }
    }
    if to_copy + to_delete > 0 {
        // The rate: what the nodes fetched over one second, now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let again = ask_each(&members, timeout, transport, |mut rpc| async move {
            rpc.node_status(pb::NodeStatusRequest {}).await
        })
        .await;
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for (m, r) in again {
            let (Ok(r), Some((_, t, b))) = (r, healed.iter().find(|(a, _, _)| *a == m.addr)) else {
                continue;
            };
            chunks += r.healed_total.saturating_sub(*t);
            bytes += r.healed_bytes.saturating_sub(*b);
        }
        let eta = if chunks > 0 {
            format!("about {}s left", to_copy.div_ceil(chunks))
        } else {
            "no copy finished in the last second".into()
        };
        println!(
            "rebalance: {to_copy} copies to make, {to_delete} surplus copies to delete; {chunks} chunks/s ({}/s), {eta}",
            human(bytes)
        );
    }
    if insecure {
        println!(
            "WARNING: insecure: the cluster runs without TLS (--insecure); anyone on its network can read and change every file"
        );
    }
    if leaders == 0 {
        eprintln!("quizfs: the cluster has no leader");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn heal_info(
    host: &str,
    limit: u32,
    timeout: Duration,
    wait: Duration,
    transport: &pb::tls::Transport,
) -> anyhow::Result<ExitCode> {
    let members = cluster_members(host, timeout, transport).await?;
    // How far the cluster has applied now: a node whose scan has not
    // reached it may still lack chunks it does not know about yet (a node
    // just back from a cut has an empty backlog until its log catches up).
    // Fixed here, so that --wait ends under a steady stream of writes.
    let target = ask_each(&members, timeout, transport, |mut rpc| async move {
        rpc.node_status(pb::NodeStatusRequest {}).await
    })
    .await
    .into_iter()
    .filter_map(|(_, st)| st.ok().map(|st| st.last_applied))
    .max()
    .unwrap_or(0);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let replies = heal_round(&members, limit, timeout, transport).await;
        let clean = replies.iter().all(|(_, r)| {
            r.as_ref()
                .is_some_and(|r| r.backlog == 0 && r.scanned_index >= target)
        });
        if clean || tokio::time::Instant::now() >= deadline {
            print_heal(&replies, target);
            return Ok(if clean {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every member's heal state (`None`: it did not answer).
async fn heal_round(
    members: &pb::MembersReply,
    limit: u32,
    timeout: Duration,
    transport: &pb::tls::Transport,
) -> Vec<(pb::Member, Option<pb::HealInfoReply>)> {
    ask_each(members, timeout, transport, |mut rpc| async move {
        rpc.heal_info(pb::HealInfoRequest { limit }).await
    })
    .await
    .into_iter()
    .map(|(m, r)| (m, r.ok()))
    .collect()
}

fn print_heal(replies: &[(pb::Member, Option<pb::HealInfoReply>)], target: u64) {
    for (m, reply) in replies {
        let Some(r) = reply else {
            println!("node {} {}: down (its backlog is unknown)", m.id, m.addr);
            continue;
        };
        let behind = r.scanned_index < target;
        println!(
            "node {} {}: {} chunks pending, {} healed since start, scanned to index {} of {}{}",
            m.id,
            m.addr,
            r.backlog,
            r.healed_total,
            r.scanned_index,
            target,
            if behind { " (catching up)" } else { "" }
        );
        for h in &r.pending {
            match pb::ChunkHash::from_slice(h) {
                Some(h) => println!("  {}", h.to_hex()),
                None => println!("  (malformed hash)"),
            }
        }
        if (r.pending.len() as u64) < r.backlog {
            println!("  ... and {} more", r.backlog - r.pending.len() as u64);
        }
    }
}
