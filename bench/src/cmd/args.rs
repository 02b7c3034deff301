//! The subcommands' flags.

use quizfs_bench::workloads::{Sizes, Workload};

#[derive(Debug, clap::Args)]
pub(crate) struct ScaleArgs {
    /// Measure this mounted directory (and remove what was made there)
    /// instead of a quizfs cluster started for the run.
    #[arg(long)]
    pub(crate) dir: Option<std::path::PathBuf>,
    /// Files in the volume at which uploads and metadata are measured.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub(crate) levels: Vec<usize>,
    /// Sequential file sizes, MiB.
    #[arg(long, value_delimiter = ',', default_value = "64,1024,4096")]
    pub(crate) seq_mib: Vec<u64>,
    /// Files per upload and metadata probe.
    #[arg(long, default_value_t = 500)]
    pub(crate) probe: usize,
    /// Repetitions of each probe and file size.
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
    /// Threads that fill the volume.
    #[arg(long, default_value_t = 4)]
    pub(crate) fillers: usize,
    /// The Markdown file whose scaling section is rewritten (between
    /// `<!-- scale:begin -->` and `<!-- scale:end -->`).
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub(crate) markdown: std::path::PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results/scale.json")]
    pub(crate) json: std::path::PathBuf,
    /// The command line to print in BENCHMARKS.md.
    #[arg(long)]
    pub(crate) command: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RebalanceArgs {
    /// GiB in the volume before the two nodes are added (one more is
    /// written during the rebalance).
    #[arg(long, default_value_t = 10)]
    pub(crate) gib: u64,
    /// Every node's `--heal-rate-mib` (0: no limit; storaged's default
    /// is 64).
    #[arg(long, default_value_t = 64)]
    pub(crate) rate_mib: u64,
    /// Give up when the rebalance has not ended after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub(crate) timeout_secs: u64,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CompareArgs {
    /// Systems, comma-separated: local, bindfs, quizfs, gluster.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "local,bindfs,quizfs,gluster"
    )]
    pub(crate) systems: Vec<String>,
    #[command(flatten)]
    pub(crate) work: WorkloadArgs,
    /// Failover faults, comma-separated (kill, freeze, cut); "none" skips
    /// the failover cases.
    #[arg(long, value_delimiter = ',', default_value = "kill,freeze,cut")]
    pub(crate) faults: Vec<String>,
    /// Seconds a failed node stays failed (longer than GlusterFS's
    /// ping-timeout of 5 s, so its pause shows).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) down_secs: f64,
    /// Where the local-disk and bindfs directories go (the disk under test).
    #[arg(long, default_value = "/var/tmp")]
    pub(crate) scratch: std::path::PathBuf,
    /// The Markdown file whose comparison section is rewritten.
    #[arg(long, default_value = "BENCHMARKS.md")]
    pub(crate) markdown: std::path::PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results/compare.json")]
    pub(crate) json: std::path::PathBuf,
    /// Directory for the SVG charts (relative to the Markdown file's
    /// directory in the links).
    #[arg(long, default_value = "bench/charts")]
    pub(crate) charts: std::path::PathBuf,
    /// The command line to print in BENCHMARKS.md (set by the script that
    /// wraps this command).
    #[arg(long)]
    pub(crate) command: Option<String>,
}

/// Which workloads, at which sizes: shared by `run` and `compare`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkloadArgs {
    /// Workloads, comma-separated: seq, uploads, uploads3, uploads16, meta, ls, random,
    /// sqlite, dbench.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "seq,uploads,uploads3,uploads16,meta,ls,random,sqlite,dbench"
    )]
    pub(crate) workloads: Vec<String>,
    /// Seconds-long sizes (for CI) instead of the full ones.
    #[arg(long)]
    pub(crate) short: bool,
    /// Repetitions (default: 3, or 1 with --short).
    #[arg(long)]
    pub(crate) reps: Option<usize>,
}

impl WorkloadArgs {
    /// The workloads and sizes the flags ask for.
    pub(crate) fn resolve(&self) -> anyhow::Result<(Vec<Workload>, Sizes)> {
        let workloads = parse_workloads(&self.workloads)?;
        let mut sizes = if self.short {
            Sizes::short()
        } else {
            Sizes::full()
        };
        if let Some(r) = self.reps {
            anyhow::ensure!(r > 0, "--reps must be at least 1");
            sizes.reps = r;
        }
        Ok((workloads, sizes))
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The directory to measure (a fresh subdirectory is used and removed).
    pub(crate) dir: std::path::PathBuf,
    /// Name of the system, for the table and the JSON.
    #[arg(long, default_value = "system")]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) work: WorkloadArgs,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct FailoverArgs {
    /// Faults to apply, comma-separated: kill, freeze, cut.
    #[arg(long, value_delimiter = ',', default_value = "kill,freeze,cut")]
    pub(crate) faults: Vec<String>,
    /// Seconds the node stays failed, under load.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) down_secs: f64,
    /// Seconds of load before each fault.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) before_secs: f64,
    /// Extra mount options, e.g. ping_timeout=2 (default: none, the
    /// defaults are measured).
    #[arg(long, default_value = "")]
    pub(crate) mount_options: String,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Storage nodes to contact, comma-separated host[:port].
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.21,127.0.0.22,127.0.0.23"
    )]
    pub(crate) servers: Vec<String>,
    /// Files per upload run.
    #[arg(long, default_value_t = 500)]
    pub(crate) files: usize,
    /// Size of each uploaded file in KiB.
    #[arg(long, default_value_t = 100)]
    pub(crate) file_kib: usize,
    /// Size of the sequential file in MiB.
    #[arg(long, default_value_t = 256)]
    pub(crate) big_mib: u64,
    /// Repetitions of each workload.
    #[arg(long, default_value_t = 3)]
    pub(crate) reps: usize,
}

#[derive(Debug, clap::Args)]
pub(crate) struct OplatArgs {
    /// Times each operation is made.
    #[arg(long, default_value_t = 300)]
    pub(crate) count: usize,
    /// Also write every sample as JSON here.
    #[arg(long)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// Metrics addresses of the cluster's nodes (`storaged
    /// --metrics-listen`), comma-separated: read before and after, to
    /// print where each node spent the time (the mean of every latency
    /// histogram that moved: Raft proposals, log flushes, applies, RPCs).
    #[arg(long, value_delimiter = ',')]
    pub(crate) metrics: Vec<String>,
    /// A mounted directory (any filesystem).
    pub(crate) dir: std::path::PathBuf,
}

/// Arguments of `quizfs-bench logflush`.
#[derive(Debug, clap::Args)]
pub(crate) struct LogflushArgs {
    /// Appends of each kind.
    #[arg(long, default_value_t = 300)]
    pub(crate) count: usize,
    /// Bytes per append (a 100 KiB upload carried in its commit, by
    /// default).
    #[arg(long, default_value_t = 102_400)]
    pub(crate) size: usize,
    /// A directory on the disk to measure (a node's data directory).
    pub(crate) dir: std::path::PathBuf,
}

/// Parses workload names.
pub(crate) fn parse_workloads(names: &[String]) -> anyhow::Result<Vec<Workload>> {
    names
        .iter()
        .map(|n| {
            Workload::parse(n).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown workload {n:?}: use seq, uploads, uploads3, uploads16, meta, ls, random, sqlite or dbench"
                )
            })
        })
        .collect()
}
