//! `quizfs-bench`: measures quizfs.
//!
//! - `client`: a running cluster through the cluster client library (no
//!   mount): image-sized uploads and reads, and one large sequential write
//!   and read. Every figure is the median of `--reps` runs, with min and
//!   max.
//! - `failover`: starts its own cluster (nodes in network namespaces, so
//!   needs root) and a mount, and kills, freezes and cuts a follower and the
//!   leader under the application load; prints failed operations, longest
//!   pause and heal time in one table.
//! - `run`: the throughput workloads on any mounted directory.
//! - `oplat`: each operation's latency on any mounted directory.
//! - `logflush`: a durable append on a disk, into a growing file and into
//!   zeros written first.
//! - `compare`: local disk, bindfs, quizfs and GlusterFS side by side;
//!   writes BENCHMARKS.md's comparison section, JSON and charts.
//! - `scale`: how uploads, metadata and sequential throughput change with
//!   the number of files in the volume and the file size; writes
//!   BENCHMARKS.md's scaling section and JSON.
//! - `rebalance`: adds two nodes to a cluster of three holding data;
//!   prints the rebalance time and a writer's throughput before and
//!   during it.

mod cmd;

use clap::Parser;
use cmd::args::{
    Args, CompareArgs, FailoverArgs, LogflushArgs, OplatArgs, RebalanceArgs, RunArgs, ScaleArgs,
};
use cmd::bench::{failover_bench, logflush_bench, oplat_bench, run_bench, scale_bench};
use cmd::client::client_bench;
use cmd::compare::compare_bench;

#[derive(Debug, Parser)]
#[command(name = "quizfs-bench", about = "Measure quizfs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Uploads, reads and a sequential file through the client library,
    /// against a running cluster.
    Client(Args),
    /// Kill, freeze and cut a follower and the leader of a cluster this
    /// command starts (root: network namespaces), under the application
    /// load on a mount; print one table.
    Failover(FailoverArgs),
    /// The whole comparison: local disk, bindfs, quizfs and GlusterFS
    /// replica 3 (each started here, in network namespaces; root), every
    /// workload and the failover cases; writes the JSON, the charts and the
    /// comparison section of BENCHMARKS.md.
    Compare(CompareArgs),
    /// Run the throughput workloads in a mounted directory (any
    /// filesystem); print a table and optionally write JSON.
    Run(RunArgs),
    /// Each operation's latency through a mount, one at a time: a
    /// negative lookup, create, chmod, an upload's open, write and close,
    /// stat, rename, unlink; prints p50/p90/p99/max and optionally JSON.
    Oplat(OplatArgs),
    /// What a durable append (`pwrite`, `fdatasync`) costs on the disk
    /// holding a directory: into a file that grows, and into zeros written
    /// first (how the Raft log's segments start); p50/p90/p99/max.
    Logflush(LogflushArgs),
    /// The scaling table: uploads and metadata with 1, 10 and 100 thousand
    /// files in the volume, sequential throughput at 64 MiB, 1 GiB and
    /// 4 GiB; on a quizfs cluster this command starts (root), or on --dir.
    Scale(ScaleArgs),
    /// Adds two nodes (`storaged --join`, `quizfs node add`) to a cluster
    /// of three it starts and fills (on 127.0.0.21-25); prints the
    /// rebalance time and a writer's throughput before and during it.
    Rebalance(RebalanceArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = async {
        match Cli::parse().cmd {
            Cmd::Client(args) => client_bench(args).await,
            Cmd::Failover(args) => failover_bench(args).await,
            Cmd::Run(args) => run_bench(args).await,
            Cmd::Oplat(args) => oplat_bench(args),
            Cmd::Logflush(args) => logflush_bench(args),
            Cmd::Compare(args) => compare_bench(args).await,
            Cmd::Scale(args) => scale_bench(args).await,
            Cmd::Rebalance(args) => cmd::rebalance::rebalance_bench(args).await,
        }
    };
    // On Ctrl-C the work is dropped, and with it every process, mount and
    // namespace it made.
    tokio::select! {
        r = work => r,
        _ = tokio::signal::ctrl_c() => {
            // The work (and with it every process, mount and namespace it
            // made) was dropped when select! returned. A workload thread
            // may still be in a system call on the gone mount; the runtime
            // would wait for it, so exit here.
            eprintln!("interrupted; cleaned up");
            std::process::exit(130);
        }
    }
}
