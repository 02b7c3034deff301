//! `quizfs`: the command line of the quizfs client: `mount`, `umount`,
//! `status`, `heal info`; also `mount.quizfs`, the helper mount(8) runs for `-t quizfs`.

mod mount;

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
    /// Show every node: address, up/down, role, term, applied index, chunks,
    /// bytes and heal backlog. Exits 1 when the cluster has no leader.
    Status {
        /// Any storage node, host[:port].
        host: String,
        /// How long to wait for each node.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Self-heal: what each node still has to fetch.
    Heal {
        #[command(subcommand)]
        cmd: HealCmd,
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
        Cmd::Status { .. } | Cmd::Heal { .. } => {}
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
        Cmd::Status { host, timeout_ms } => status(&host, Duration::from_millis(timeout_ms)).await,
        Cmd::Heal {
            cmd:
                HealCmd::Info {
                    host,
                    limit,
                    timeout_ms,
                },
        } => heal_info(&host, limit, Duration::from_millis(timeout_ms)).await,
        Cmd::Mount { .. } | Cmd::Umount { .. } => Ok(ExitCode::SUCCESS),
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

/// The members of the cluster `host` belongs to, any volume.
async fn cluster_members(host: &str, timeout: Duration) -> anyhow::Result<pb::MembersReply> {
    let opts = ClientOptions {
        call_timeout: timeout,
        volume: String::new(),
        ..ClientOptions::default()
    };
    let addr = with_port(host);
    members_of(&addr, &opts)
        .await
        .with_context(|| format!("cannot reach {addr}"))
}

async fn status(host: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let members = cluster_members(host, timeout).await?;
    let asks = members.members.iter().map(|m| {
        let addr = m.addr.clone();
        async move {
            let reply = async {
                let mut rpc = ClusterRpc::new(channel(&addr).ok()?);
                tokio::time::timeout(timeout, rpc.node_status(pb::NodeStatusRequest {}))
                    .await
                    .ok()?
                    .ok()
            }
            .await;
            (addr, reply.map(|r| r.into_inner()))
        }
    });
    let mut rows = Vec::new();
    for a in asks {
        rows.push(a.await);
    }
    println!("volume {}  term {}", members.volume, members.term);
    println!(
        "{:<5} {:<22} {:<5} {:<10} {:>5} {:>9} {:>8} {:>10} {:>5}",
        "NODE", "ADDRESS", "STATE", "ROLE", "TERM", "APPLIED", "CHUNKS", "BYTES", "HEAL"
    );
    let mut leaders = 0;
    for (m, (addr, reply)) in members.members.iter().zip(rows) {
        match reply {
            Some(r) => {
                if r.role == "leader" {
                    leaders += 1;
                }
                println!(
                    "{:<5} {:<22} {:<5} {:<10} {:>5} {:>9} {:>8} {:>10} {:>5}",
                    r.node_id,
                    addr,
                    "up",
                    if m.voter {
                        r.role.clone()
                    } else {
                        format!("{}*", r.role)
                    },
                    r.term,
                    r.last_applied,
                    r.chunks,
                    human(r.chunk_bytes),
                    r.heal_backlog
                );
            }
            None => println!("{:<5} {:<22} {:<5}", m.id, addr, "down"),
        }
    }
    if leaders == 0 {
        eprintln!("quizfs: the cluster has no leader");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn heal_info(host: &str, limit: u32, timeout: Duration) -> anyhow::Result<ExitCode> {
    let members = cluster_members(host, timeout).await?;
    let mut clean = true;
    for m in &members.members {
        let reply = async {
            let mut rpc = ClusterRpc::new(channel(&m.addr).ok()?);
            tokio::time::timeout(timeout, rpc.heal_info(pb::HealInfoRequest { limit }))
                .await
                .ok()?
                .ok()
        }
        .await;
        match reply {
            None => {
                clean = false;
                println!("node {} {}: down (its backlog is unknown)", m.id, m.addr);
            }
            Some(r) => {
                let r = r.into_inner();
                if r.backlog > 0 {
                    clean = false;
                }
                println!(
                    "node {} {}: {} chunks pending, {} healed since start, scanned to index {}",
                    m.id, m.addr, r.backlog, r.healed_total, r.scanned_index
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
    }
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
